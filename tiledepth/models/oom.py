"""Out of accelerator memory: halve the batch and try again.

A batch that does not fit in GPU memory raises ``torch.OutOfMemoryError``
(``torch.cuda.OutOfMemoryError``). :class:`Halving` runs a backend's batch
function in chunks; on such an error it halves the chunk size, frees torch's
cached memory and retries the same tiles, and keeps the smaller size for the
rest of the run. It says so once on stderr (a logging warning) when a smaller
size has worked. A single tile that does not fit raises
:class:`~tiledepth.errors.ModelError`.

Inside :func:`no_halving` (batch size ``auto`` probing, see
:mod:`tiledepth.models.autobatch`) the error is raised as is instead.

torch is never imported here: an error is recognised by its type when torch is
already loaded, or by its message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

import numpy as np

from tiledepth.errors import ModelError

__all__ = ["Halving", "free_cached_memory", "is_batch_too_large", "is_out_of_memory",
           "no_halving", "one_image_too_large"]

#: Messages of errors that a smaller batch avoids though they are no out-of-memory error:
#: kernels past 32-bit indexing (large VAE decodes, around 15 tiles of 768 px) and cuDNN
#: refusing a too large convolution.
TOO_LARGE_MESSAGES = ("canuse32bitindexmath", "input tensor too large", "too large for int32",
                      "cudnn_status_not_supported", "cudnn_status_alloc_failed",
                      "cublas_status_alloc_failed", "nchw-tensor too large")

log = logging.getLogger(__name__)

#: True inside :func:`no_halving`: out-of-memory errors are raised, not halved.
_STRICT: ContextVar[bool] = ContextVar("tiledepth_no_halving", default=False)


@contextlib.contextmanager
def no_halving() -> Iterator[None]:
    """Within the block, a batch that runs out of memory raises instead of being halved.

    For probing how many tiles fit (batch size ``auto``): the probe needs the
    error, and no :class:`Halving` should remember a smaller size because of it.

    Examples
    --------
    >>> import numpy as np
    >>> def fn(batch, keys):
    ...     raise RuntimeError("CUDA out of memory")
    >>> with no_halving():
    ...     Halving()(fn, np.zeros((2, 4, 4, 3), np.float32), [0, 1], name="toy")
    Traceback (most recent call last):
    ...
    RuntimeError: CUDA out of memory
    """
    token = _STRICT.set(True)
    try:
        yield
    finally:
        _STRICT.reset(token)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an accelerator (CUDA, MPS) ran out of memory.

    Examples
    --------
    >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    >>> is_out_of_memory(RuntimeError("shape mismatch"))
    False
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
                      if isinstance(t, type))
        if types and isinstance(exc, types):
            return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_batch_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` says the batch was too large: out of memory, or a size limit of a kernel.

    Examples
    --------
    >>> is_batch_too_large(RuntimeError("Expected canUse32BitIndexMath(input) && "
    ...                                 "canUse32BitIndexMath(output) to be true, but got false."))
    True
    >>> is_batch_too_large(RuntimeError("CUDA error: device-side assert triggered"))
    False
    """
    if is_out_of_memory(exc):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in TOO_LARGE_MESSAGES)


def one_image_too_large(name: str, what: str, height: int, width: int, *, coarse: bool = False,
                        takes_dtype: bool = True) -> str:
    """The message for one image that does not fit in ``what`` (CUDA, MPS, GPU) memory.

    What to lower is the option that sizes that image: ``--coarse-size`` for the coarse
    image, ``--tile-size`` for a tile; ``--dtype`` only for a model that takes it (the
    built-in ones; a Python callable runs as it puts itself).

    Examples
    --------
    >>> print(one_image_too_large("f", "CUDA", 96, 128, coarse=True, takes_dtype=False))
    model 'f' ran out of CUDA memory on the coarse image of 96 x 128 px; lower --coarse-size,
    or free the GPU
    """
    image, option = ("the coarse image", "--coarse-size") if coarse else \
        ("a single tile", "--tile-size")
    dtype = ", use --dtype fp16 or bf16" if takes_dtype else ""
    return (f"model {name!r} ran out of {what} memory on {image} of {height} x {width} px; "
            f"lower {option}{dtype}, or free the GPU")


class Halving:
    """Run batches in chunks, halving the chunk size on out-of-memory errors.

    Parameters
    ----------
    takes_dtype : bool
        Whether the model takes ``--dtype`` (the built-in ones), for the advice when a
        single image does not fit.

    Attributes
    ----------
    limit : int or None
        The largest chunk that is tried; None until a batch ran out of memory.

    Examples
    --------
    >>> import numpy as np
    >>> def fn(batch, keys):
    ...     if len(batch) > 2:
    ...         raise RuntimeError("CUDA out of memory")
    ...     return batch[..., 0]
    >>> halving = Halving()
    >>> halving(fn, np.zeros((5, 4, 4, 3), np.float32), list(range(5)), name="toy").shape
    (5, 4, 4)
    >>> halving.limit
    2
    """

    def __init__(self, *, takes_dtype: bool = True) -> None:
        self.takes_dtype = takes_dtype
        self.what = "GPU"
        self.limit: int | None = None
        self._said: int | None = None
        self._first: int | None = None

    def __call__(self, fn: Callable[[np.ndarray, Sequence[int]], np.ndarray],
                 batch: np.ndarray, keys: Sequence[int], *, name: str) -> np.ndarray:
        """``fn(batch, keys)`` in chunks of at most :attr:`limit` tiles, concatenated."""
        n = len(batch)
        parts = []
        start = 0
        while start < n:
            size = min(self.limit or n, n - start)
            try:
                part = fn(batch[start:start + size], keys[start:start + size])
            except Exception as exc:
                if not is_batch_too_large(exc) or _STRICT.get():
                    raise
                self.what = _device_word(exc)
                if size == 1 and not is_out_of_memory(exc):
                    raise  # a kernel's limit that even one tile hits: the error as it is
                if size == 1:
                    # (imported here: tiledepth.infer imports this module through models.base)
                    from tiledepth.infer import is_coarse_key

                    raise ModelError(one_image_too_large(
                        name, self.what, batch.shape[1], batch.shape[2],
                        coarse=is_coarse_key(keys[start]), takes_dtype=self.takes_dtype,
                    )) from exc
                failed = True
            else:
                failed = False
            if failed:
                self._first = self._first or size
                self.limit = max(1, size // 2)
                free_cached_memory()
                continue
            parts.append(part)
            start += size
            if self.limit is not None and self._said != self.limit:
                self._said = self.limit
                log.warning("%s ran out of memory with %d tiles per model call; continuing with "
                            "%d (start with --batch-size %d to skip the retries)",
                            self.what, self._first, self.limit, self.limit)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def free_cached_memory() -> None:
    """Hand torch's cached accelerator memory back (best effort; nothing without torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) is not None \
                and torch.backends.mps.is_available():
            mps.empty_cache()
    except Exception:  # freeing is best effort
        log.debug("could not free cached accelerator memory", exc_info=True)


def _device_word(exc: BaseException) -> str:
    text = f"{type(exc).__module__}.{type(exc).__name__} {exc}".lower()
    return "CUDA" if "cuda" in text else "MPS" if "mps" in text else "GPU"
