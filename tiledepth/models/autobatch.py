"""Batch size ``auto``: on CUDA, the largest batch that fits, found once by probing.

``--batch-size auto`` (``batch_size="auto"``) resolves when the model is loaded:

* on a CUDA device, :func:`resolve_batch_size` runs the model on synthetic
  tiles of the run's real tile size, 1, 2, 4, ... tiles per call until a call
  runs out of memory or :data:`MAX_BATCH` is reached, then bisects between the
  last size that fitted and the first that did not. The largest size that ran
  is kept for the whole run (and said in an info line, ``-v``); a later
  out-of-memory error still halves it (:class:`~tiledepth.models.oom.Halving`);
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
from collections.abc import Callable

import numpy as np

from tiledepth.errors import ModelError
from tiledepth.models.oom import free_cached_memory, is_out_of_memory, no_halving

__all__ = ["AUTO", "DEFAULT_BATCH", "MAX_BATCH", "largest_fitting", "model_device",
           "resolve_batch_size"]

log = logging.getLogger(__name__)

#: The option value that asks for probing.
AUTO = "auto"
#: Tiles per model call that ``auto`` means where nothing is probed (CPU, MPS).
DEFAULT_BATCH = 4
#: The largest batch ``auto`` tries.
MAX_BATCH = 64


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


def resolve_batch_size(model, tile_size: int, *, cap: int = MAX_BATCH) -> int:
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
    tried: list[str] = []

    def fits(n: int) -> bool:
        batch = np.full((n, tile_size, tile_size, 3), 0.5, np.float32)  # (n, size, size, 3)
        try:
            with no_halving():
                model.predict(batch, list(range(n)))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            tried.append(f"{n} no")
            free_cached_memory()
            return False
        tried.append(str(n))
        return True

    size = largest_fitting(fits, cap=cap)
    name = getattr(model, "name", type(model).__name__)
    if size == 0:
        raise ModelError(f"model {name!r} ran out of CUDA memory on a single tile of "
                         f"{tile_size} x {tile_size} px; lower --tile-size, use --dtype fp16 "
                         "or bf16, or free the GPU")
    model.batch_size = size
    log.info("batch size auto: %d tiles of %d px per model call on %s (tried %s)", size,
             tile_size, device, ", ".join(tried))
    return size
