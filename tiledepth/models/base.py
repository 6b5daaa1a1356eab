"""The model protocol every backend implements, and the plain-callable backend.

A depth model takes a batch of tiles, channel-last float32 in [0, 1], and
returns one depth map per tile at the same size::

    (B, H, W, 3) float32 in [0, 1]  ->  (B, H, W) float32

``keys`` gives one integer per tile that identifies it within the run (the
tile's index; a flagged tile's later calls ``index + attempt * 2**32``; -1 for the
coarse image, ``call * 2**32 - 1`` for its later calls, ``anchor_calls``:
:func:`tiledepth.infer.coarse_key`). Stochastic backends derive each tile's
noise from it, so a tile's prediction does not depend on the batch it was in.

A model may say what its numbers mean with a ``kind`` attribute, one of
:data:`tiledepth.kinds.KINDS` (``"depth"``, ``"disparity"``,
``"metric_depth"``); without one it is taken as affine-invariant depth. The
engine aligns each kind in its own space and records it in the output's tags.
A model that can also say how sure it is offers
``predict_with_uncertainty(batch, keys) -> (depth, uncertainty)``, both
(B, H, W), the uncertainty in the same units as the depth. A ``device``
attribute (``"cuda:0"``, ``"cpu"``) says where it runs: batch size ``auto``
probes only CUDA models (:mod:`tiledepth.models.autobatch`).

A run that ends early (Ctrl-C, SIGTERM, an error) while a batch is still on the
model sets the batch's stop event (:func:`stop_event`); a long model call
polls it with :func:`check_stop` between its steps (Marigold: between denoising
steps and between ensemble batches) and gives up within one step.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TypeVar

import numpy as np

from tiledepth.errors import ModelError, OptionError, TiledepthError
from tiledepth.kinds import check_kind
from tiledepth.models.oom import Halving, is_batch_too_large
from tiledepth.protocols import DepthModel as DepthModel  # the protocol, declared there

#: Optional attributes of a model that the engine reads, which a wrapper of it (a Ray pool,
#: the uncertainty tap) carries over where the model has them: the output kind
#: (:func:`tiledepth.kinds.kind_of`: the fit, the tags, the units) and the tile sizes it
#: takes (:func:`check_tile_size`, the coarse image's padding in
#: :func:`tiledepth.infer.predict_image`).
TRAITS = ("kind", "min_tile", "tile_multiple")

#: The arrays :func:`check_prediction` returned, by id, while they live: checked already and
#: tiledepth's own, so checking one again (a model that checks its own output, then the
#: engine where it collects predictions) is a look-up, not a second pass and copy.
_CHECKED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()

#: The event that tells a model call running in this context to stop early (None: never).
_STOP: ContextVar[threading.Event | AnyStop | None] = ContextVar("tiledepth_stop", default=None)

T = TypeVar("T")


class ModelStopped(ModelError):
    """A model call gave up between its steps because the run is ending."""


def stop_event() -> ContextVar[threading.Event | None]:
    """The context variable holding the current model call's stop event.

    :class:`tiledepth.infer.LocalPool` sets it, in the context its batches run
    in, to an event it sets when the run ends early.
    """
    return _STOP


class AnyStop:
    """Set when any of ``events`` is: a model call stops when its own run ends or when the
    run it was made for (an enclosing one) does.

    Examples
    --------
    >>> import threading
    >>> mine, outer = threading.Event(), threading.Event()
    >>> either = AnyStop(mine, outer)
    >>> either.is_set(), (outer.set(), either.is_set())[1]
    (False, True)
    """

    def __init__(self, *events) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def also_stopped_by(event: threading.Event):
    """``event``, or with an enclosing stop event in this context, either of the two."""
    outer = _STOP.get()
    return event if outer is None else AnyStop(event, outer)


def check_stop() -> None:
    """Raise :class:`ModelStopped` if the run this model call belongs to is ending.

    Cheap (no torch, no host sync): call it between the steps of a long
    prediction.

    Examples
    --------
    >>> import threading
    >>> event = threading.Event(); token = stop_event().set(event)
    >>> check_stop()  # not set: returns
    >>> event.set(); check_stop()
    Traceback (most recent call last):
    ...
    tiledepth.models.base.ModelStopped: the run is ending; model call stopped
    >>> stop_event().reset(token)
    """
    event = _STOP.get()
    if event is not None and event.is_set():
        raise ModelStopped("the run is ending; model call stopped")


def with_torch_modes(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``, to be called on another thread, under this thread's torch grad mode and
    inference mode (where torch is imported).

    torch keeps both per thread, and a new thread starts with gradients on: a model run
    inside ``with torch.no_grad():`` recorded a graph on tiledepth's model thread, and its
    ``.numpy()`` failed ("Can't call numpy() on Tensor that requires grad"). Without torch
    imported there are no modes to carry (and torch is not imported for them): ``fn``
    itself.

    Examples
    --------
    >>> with_torch_modes(len)("abc")
    3
    """
    torch = sys.modules.get("torch")
    # torch being imported by another thread meanwhile (a model thread's first call) is
    # half there: no mode of the caller's to carry (it has not imported torch itself), and
    # torch.inference_mode may not exist yet ("partially initialized module")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return fn
    modes = [getattr(torch, name, None) for name in (
        "is_grad_enabled", "is_inference_mode_enabled", "set_grad_enabled", "inference_mode")]
    if any(mode is None for mode in modes):
        return fn
    is_grad, is_inference, set_grad, inference_mode = modes
    grad, inference = is_grad(), is_inference()

    def call(*args, **kwargs):
        # inference mode first: entering it turns gradients off, set as the caller had them
        with inference_mode(inference), set_grad(grad):
            return fn(*args, **kwargs)

    return call


class CallableModel:
    """Wrap any Python callable ``f(batch (B, H, W, 3)) -> (B, H, W)`` as a model.

    The callable sees tiles at their native size (no resizing). Its output is
    checked: a wrong shape, NaN or inf raise :class:`~tiledepth.errors.ModelError`
    naming the callable and what it returned, and so does an error it raises
    (but one saying the batch is too large: a batch that runs out of GPU
    memory is split in halves, :class:`~tiledepth.models.oom.Halving`). The
    callable may declare the tile sizes it accepts as attributes ``min_tile``
    and ``tile_multiple`` (see :func:`check_tile_size`), and the device it runs
    on as ``device`` (``"cuda"``: batch size ``auto`` probes it, see
    :mod:`tiledepth.models.autobatch`).


    Its output kind is ``kind=`` if given, else the callable's own ``kind``
    attribute (``def f(batch): ...`` then ``f.kind = "disparity"``), else
    ``"depth"``.

    Examples
    --------
    >>> def inverse(batch):
    ...     return 1.0 / (1.0 + batch[..., 0])
    >>> inverse.kind = "disparity"
    >>> CallableModel(inverse).kind
    'disparity'
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 4,
                 name: str | None = None, kind: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"model must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.batch_size = batch_size
        self.name = name or _callable_name(fn)
        self.min_tile = getattr(fn, "min_tile", None)
        self.tile_multiple = getattr(fn, "tile_multiple", None)
        #: Where the callable runs, if it says (``fn.device = "cuda"``); for batch size auto.
        self.device = getattr(fn, "device", None)
        self._halving = Halving(takes_dtype=False)  # it runs as it puts itself
        self.kind = check_kind(kind if kind is not None else getattr(fn, "kind", "depth"),
                               self.name)

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        # each chunk is checked; chunks put together (after running out of memory) are a new
        # array, tiledepth's own as well
        return _checked(self._halving(self._predict, batch, keys, name=self.name))

    def _predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        try:
            out = self.fn(batch)
        except Exception as exc:
            raise _model_raised(exc, self.name) from exc
        return check_prediction(out, batch, self.name)


def _model_raised(exc: Exception, name: str) -> Exception:
    """The error to raise for ``exc``, raised by the user's callable model ``name``: a
    :class:`~tiledepth.errors.ModelError` naming the model and what it raised (the CLI
    said "unexpected ValueError: ...", tiledepth's own-bug wording, naming no model), or
    ``exc`` itself where tiledepth reads it: a batch too large (out of accelerator memory,
    or a kernel's size limit), which :class:`~tiledepth.models.oom.Halving` and the batch
    size probe need; host memory (:class:`MemoryError`, the CLI's advice); tiledepth's own
    errors (:class:`ModelStopped`, :class:`~tiledepth.errors.ModelError`).

    Examples
    --------
    >>> _model_raised(ValueError("boom"), "m.py:f")
    ModelError("model 'm.py:f' raised ValueError: boom")
    >>> error = RuntimeError("CUDA out of memory")
    >>> _model_raised(error, "m.py:f") is error
    True
    """
    if isinstance(exc, (TiledepthError, MemoryError)) or is_batch_too_large(exc):
        return exc
    text = str(exc).strip().splitlines()  # its first line, as the CLI's one line takes it
    wrapped = ModelError(f"model {name!r} raised {type(exc).__name__}"
                         + (f": {text[0]}" if text else ""))
    # (a ModelError is a RuntimeError: one whose message reads as out of memory, a
    # ValueError's "out of memory", would be halved as one; it stays as it was)
    return exc if is_batch_too_large(wrapped) else wrapped


def check_prediction(out: object, batch: np.ndarray, name: str, *,
                     fresh: bool = False) -> np.ndarray:
    """Return ``out`` as float32 (B, H, W), or raise ModelError saying what is wrong.

    A trailing singleton channel, (B, H, W, 1), is accepted and dropped. A torch
    tensor may need gradients, sit on a GPU or be bfloat16: it is read as its values.
    A NumPy masked array with masked values is refused, as NaN is (its mask would be
    dropped and the values under it taken as depth); one without is read as its values.

    The array returned is tiledepth's own: a copy of ``out``, unless reading it made
    one already (another dtype, a list, a tensor moved off a GPU) or its backend made
    it for this call alone (``fresh=True``). A model may then
    write its next batch into the array it returned (a preallocated or pinned host
    buffer) without changing the predictions kept. An array this function returned
    is returned as it is.

    Parameters
    ----------
    out : array-like or torch.Tensor
        The model's output for ``batch``.
    batch : ndarray of shape (B, H, W, 3)
        The batch it was predicted from (its shape is checked against).
    name : str
        The model's name, for the messages.
    fresh : bool
        Whether ``out`` is a new array its backend made for this call and never writes
        again (a built-in backend's ``.cpu().numpy()`` read-back, one per batch): checked,
        but kept without the copy that guards a model's reused buffer. Never for a
        buffer the model fills again, nor for a user's callable's output.

    Examples
    --------
    >>> batch = np.zeros((1, 2, 2, 3), np.float32)
    >>> buffer = np.zeros((1, 2, 2), np.float32)  # the model's, filled again for each batch
    >>> out = check_prediction(buffer, batch, "mine")
    >>> buffer[:] = 7.0
    >>> float(out.max()), check_prediction(out, batch, "mine") is out
    (0.0, True)
    >>> read_back = np.ones((1, 2, 2), np.float32)  # a backend's, new for this call
    >>> check_prediction(read_back, batch, "mine", fresh=True) is read_back
    True
    """
    expected = batch.shape[:3]
    # (an array: a missing entry is None too, which a model that forgot to return gives)
    if isinstance(out, np.ndarray) and _CHECKED.get(id(out)) is out and out.shape == expected:
        return out
    if out is None:  # NumPy would read it as one NaN
        raise ModelError(f"model {name!r} returned None, not an array; it must return "
                         f"(B, H, W) = {expected} (a function without `return` returns None)")
    if np.ma.isMaskedArray(out) and np.ma.count_masked(out):  # np.asarray drops the mask:
        # the values under it (a fill, -1000) were fused as depth; refused as NaN is
        raise ModelError(f"model {name!r} returned a masked array with "
                         f"{int(np.ma.count_masked(out))} masked values in a batch of shape "
                         f"{batch.shape}; it must return finite depth at every pixel: fill "
                         "them (np.ma.filled(out, value)); to leave pixels out, mask them in "
                         "the input")
    # the backend's own new array, or read into a new array below
    fresh = fresh or isinstance(out, (list, tuple))
    if type(out).__module__.startswith("torch") and callable(getattr(out, "detach", None)):
        held = out.detach()
        out = held.cpu()  # numpy reads neither a graph's tensor nor a GPU's
        if str(out.dtype) == "torch.bfloat16":  # nor bfloat16
            out = out.float()
        fresh = fresh or out is not held  # moved or converted: a new tensor, only ours
    try:
        raw = np.asarray(out)
        if np.iscomplexobj(raw):  # float32 of it would keep the real part without a word
            raise ModelError(f"model {name!r} returned complex values ({raw.dtype}); it must "
                             "return real depth")
        with np.errstate(over="ignore"):  # said below, as values beyond float32
            arr = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"model {name!r} returned {type(out).__name__}, not an array: {exc}"
        ) from exc
    fresh = fresh or arr is not raw  # made float32 here: a new array
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != expected:
        raise ModelError(
            f"model {name!r} returned shape {arr.shape} for a batch of shape {batch.shape}; "
            f"it must return (B, H, W) = {expected}"
        )
    if not np.isfinite(arr).all():
        if raw.dtype.kind == "f" and np.isfinite(raw).all():  # finite until made float32
            raise ModelError(
                f"model {name!r} returned {raw.dtype} values that overflow float32 (up to "
                f"{float(np.abs(raw).max()):.3g}, float32 ends at 3.4e+38) in a batch of shape "
                f"{batch.shape}; depth is kept as float32: scale it down"
            )
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ModelError(
            f"model {name!r} returned {n_nan} NaN and {n_inf} inf values in a batch of shape "
            f"{batch.shape}; it must return finite depth"
        )
    # the model's own memory (its array, a view of it, a CPU tensor's): the model may
    # write its next batch there, while the engine keeps this one until it is blended
    return _checked(arr if fresh else arr.copy())


def _checked(arr: np.ndarray) -> np.ndarray:
    """``arr``, a checked prediction of tiledepth's own, remembered as such."""
    _CHECKED[id(arr)] = arr
    return arr


def check_tile_size(model: object, tile_size: int) -> None:
    """Raise OptionError if ``model`` cannot take tiles of ``tile_size`` pixels.

    A model states its limits with two optional attributes: ``min_tile`` (the
    smallest side it accepts) and ``tile_multiple`` (sides must be a multiple
    of it, e.g. 14 for a ViT with 14-pixel patches).

    Examples
    --------
    >>> class Vit:
    ...     name, min_tile, tile_multiple = "vit", 56, 14
    >>> check_tile_size(Vit(), 100)
    Traceback (most recent call last):
    ...
    tiledepth.errors.OptionError: tile_size 100 is not a multiple of 14, which model 'vit' \
needs; use --tile-size 98 or 112
    """
    name = getattr(model, "name", type(model).__name__)
    least = getattr(model, "min_tile", None)
    if least and tile_size < least:
        raise OptionError(f"tile_size {tile_size} is below {least}, the smallest tile model "
                          f"{name!r} takes; use --tile-size {least} or more")
    step = getattr(model, "tile_multiple", None)
    if step and tile_size % step:
        lower, upper = tile_size // step * step, (tile_size // step + 1) * step
        sizes = f"{lower} or {upper}" if lower >= (least or 1) and lower > 0 else f"{upper}"
        raise OptionError(f"tile_size {tile_size} is not a multiple of {step}, which model "
                          f"{name!r} needs; use --tile-size {sizes}")


def _callable_name(fn: object) -> str:
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{qual}" if module else qual
