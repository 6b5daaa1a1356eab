"""Batch size ``auto``: on CUDA, the largest batch that fits, found once by probing.

``--batch-size auto`` (``batch_size="auto"``) resolves when the model is loaded:

* on a CUDA device, :func:`resolve_batch_size` runs the model on synthetic
  tiles of the run's real tile size, 1, 2, 4, ... tiles per call until a call
  does not fit (out of memory, or one of the errors of a batch too large for
  a kernel, such as a VAE decode past 32-bit indexing:
  :func:`~tiledepth.models.oom.is_batch_too_large`), tiles/s stop improving
  (by :data:`MIN_GAIN`, on calls long enough to time), or :data:`MAX_BATCH` is
  reached; after a size that did not fit it bisects between the last size
  that fitted and the first that did not, and keeps :data:`HEADROOM` of it
  free (memory the run's real tiles may need beyond the mid-grey probe's).
  The size is kept for the whole run (and said in an info line, ``-v``); a
  later out-of-memory error still halves it (:class:`~tiledepth.models.oom.Halving`).
  An ensemble is probed with one member: the pipeline runs members in chunks
  of the batch size, so its memory per call is the same;
* anywhere else (CPU, MPS, a Python callable that does not say it runs on
  CUDA) it is :data:`DEFAULT_BATCH`, with no probing.

A backend says where it runs with a ``device`` attribute (``"cuda:0"``,
``"cpu"``, a ``torch.device``); a Python callable may set one too
(``depth.device = "cuda"``). The probe costs about ``2 x`` the chosen size in
tile predictions, once per run (once per ``tiledepth batch``).

The batch size never changes a tile's prediction beyond float rounding, and is
not part of the checkpoint key (:mod:`tiledepth.checkpoint`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from tiledepth.errors import ModelError
from tiledepth.models.base import CallableModel
from tiledepth.models.oom import (
    free_cached_memory,
    is_batch_too_large,
    no_halving,
    one_image_too_large,
)

__all__ = ["AUTO", "DEFAULT_BATCH", "HEADROOM", "MAX_BATCH", "MIN_GAIN", "largest_fitting",
           "model_device", "resolve_batch_size"]

log = logging.getLogger(__name__)

#: The option value that asks for probing.
AUTO = "auto"
#: Tiles per model call that ``auto`` means where nothing is probed (CPU, MPS).
DEFAULT_BATCH = 4
#: The largest batch ``auto`` tries.
MAX_BATCH = 64
#: Share of the largest fitting batch left unused when memory limited it.
HEADROOM = 0.15
#: Least gain in tiles/s for doubling the batch to be worth it.
MIN_GAIN = 0.05
#: Calls shorter than this (seconds) are not timed for the tiles/s criterion (too noisy).
MIN_TIMED_S = 0.05


def largest_fitting(fits: Callable[[int], bool], *, cap: int = MAX_BATCH) -> int:
    """The largest ``n`` in ``[1, cap]`` with ``fits(n)``, or 0 when even 1 does not fit.

    ``fits`` is assumed monotone (true up to some size, false above it). Sizes
    1, 2, 4, ... are tried until one fails or ``cap`` is reached (``cap`` itself
    is tried last), then the gap between the last size that fitted and the
    first that failed is bisected: about ``2 log2(n)`` calls in all.

    Parameters
    ----------
    fits : callable
        ``fits(n) -> bool``: whether a batch of ``n`` tiles runs.
    cap : int
        The largest size tried, >= 1.

    Returns
    -------
    int

    Examples
    --------
    >>> tried = []
    >>> def fits(n):
    ...     tried.append(n)
    ...     return n <= 6
    >>> largest_fitting(fits), tried
    (6, [1, 2, 4, 8, 6, 7])
    >>> largest_fitting(lambda n: True, cap=20)
    20
    >>> largest_fitting(lambda n: False)
    0
    """
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cap must be a whole number >= 1, got {cap!r}")
    good, bad = 0, None
    n = 1
    while bad is None:
        if fits(n):
            good = n
            if n == cap:
                return n
            n = min(2 * n, cap)
        else:
            bad = n
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def model_device(model: object) -> str:
    """Where a model runs, from its ``device`` attribute; ``"cpu"`` when it has none.

    Examples
    --------
    >>> class OnGpu:
    ...     device = "cuda:1"
    >>> model_device(OnGpu()), model_device(object())
    ('cuda:1', 'cpu')
    """
    try:
        device = getattr(model, "device", None)
    except Exception:  # a backend whose device cannot be told (no weights, say)
        device = None
    return str(device) if device is not None else "cpu"


def resolve_batch_size(model, tile_size: int, *, cap: int = MAX_BATCH,
                       headroom: float = HEADROOM,
                       clock: Callable[[], float] = time.perf_counter) -> int:
    """Resolve batch size ``auto`` for a loaded model: set ``model.batch_size``, return it.

    On CUDA the model is probed with synthetic mid-grey tiles of
    ``tile_size`` pixels (see the module docstring); elsewhere the size is
    :data:`DEFAULT_BATCH`.

    Parameters
    ----------
    model : DepthModel
        A loaded model (``predict(batch, keys)``, a settable ``batch_size``).
    tile_size : int
        The run's tile side in pixels.
    cap : int
        The largest size tried.
    headroom : float
        Share of the largest size that fits left unused, where memory limited it.
    clock : callable
        Seconds, for the tiles/s criterion (tests pass a fake).

    Returns
    -------
    int

    Raises
    ------
    ModelError
        If a single tile does not fit in the device's memory.
    """
    device = model_device(model)
    if device.split(":")[0] != "cuda":
        model.batch_size = DEFAULT_BATCH
        log.info("batch size auto: %d tiles per model call on %s (probed on CUDA only)",
                 DEFAULT_BATCH, device)
        return DEFAULT_BATCH
    ensemble = getattr(model, "ensemble", 1)
    probe = _Probe(model, tile_size, clock)
    if ensemble > 1:
        model.ensemble = 1
    try:
        size = largest_fitting(probe.worth_it, cap=cap)
    finally:
        if ensemble > 1:
            model.ensemble = ensemble
    name = getattr(model, "name", type(model).__name__)
    if size == 0:  # (a Python callable takes no --dtype: it runs as it puts itself)
        raise ModelError(one_image_too_large(name, "CUDA", tile_size, tile_size,
                                             takes_dtype=not isinstance(model, CallableModel)))
    if probe.limited:
        size = max(1, math.floor(size * (1 - headroom)))
    model.batch_size = size
    log.info("batch size auto: %d tiles of %d px per model call on %s (tried %s%s)", size,
             tile_size, device, ", ".join(probe.tried),
             f"; {headroom:.0%} kept free" if probe.limited else "")
    return size


class _Probe:
    """The trials of :func:`resolve_batch_size`: which sizes fit, and their tiles/s."""

    def __init__(self, model, tile_size: int, clock: Callable[[], float]) -> None:
        self.model, self.tile_size, self.clock = model, tile_size, clock
        self.tried: list[str] = []
        self.rates: dict[int, float] = {}  # tiles/s of the sizes timed
        self.limited = False  # whether a size did not fit
        self.plateau = False  # tiles/s stopped improving: no larger size is tried

    def fits(self, n: int) -> bool:
        """Whether a batch of ``n`` synthetic tiles runs without running out of memory."""
        size = self.tile_size
        batch = np.full((n, size, size, 3), 0.5, np.float32)  # (n, size, size, 3)
        too_large = False
        start = self.clock()
        try:
            with no_halving():
                self.model.predict(batch, list(range(n)))
        except Exception as exc:
            if not is_batch_too_large(exc):
                raise
            too_large = True
        if too_large:  # freed here, once the traceback's frames (and tensors) are gone
            self.tried.append(f"{n} no")
            self.limited = True
            free_cached_memory()
            return False
        seconds = self.clock() - start
        if seconds >= MIN_TIMED_S:
            self.rates[n] = n / seconds
        self.tried.append(str(n))
        return True

    def worth_it(self, n: int) -> bool:
        """``n`` fits, and (where timed) gives at least MIN_GAIN more tiles/s than half of it."""
        if self.plateau or not self.fits(n):
            return False
        half = n // 2
        if half in self.rates and n in self.rates \
                and self.rates[n] < self.rates[half] * (1 + MIN_GAIN):
            self.tried[-1] += " (no faster)"
            self.plateau = True
            return False
        return True
