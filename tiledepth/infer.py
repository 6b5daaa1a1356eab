"""Infer: read tiles, batch them, run the model, and hand predictions on.

The one place where band-first rasterio arrays ``(3, h, w)`` become the
channel-last batches ``(B, size, size, 3)`` of the model protocol. Masked
pixels never reach the model as colour: they are filled with the tile's mean
valid colour. A window smaller than the tile size (a raster smaller than one
tile) is padded by mirroring up to it and the prediction cropped back.

There is one inference loop, :func:`infer_tiles`, for every executor: it
submits batches to a pool and collects them in order. A pool of Ray actors
(:class:`tiledepth.raypool.RayModelPool`) plugs in as is; a local model becomes
a :class:`LocalPool`, a pool of one whose batches run on a background thread,
so reading and preparing the next batch on the CPU overlaps the model's work
on the current one.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from tiledepth.models.base import also_stopped_by, check_prediction, stop_event, with_torch_modes
from tiledepth.protocols import DepthModel, ModelPool
from tiledepth.tiling import Tile
from tiledepth.turns import predict_in_turn

__all__ = ["RETRY_STRIDE", "LocalPool", "as_pool", "coarse_key", "in_flight_of", "infer_tiles",
           "infer_tiles_in_flight", "is_coarse_key", "predict_image", "retry_key",
           "to_model_input"]

log = logging.getLogger(__name__)

#: Key of the coarse image in the model's per-image noise seeding (tiles use their id).
COARSE_KEY = -1
#: A tile's later calls (the engine's retry of a flagged tile) are keyed ``id + attempt *
#: RETRY_STRIDE`` (:func:`retry_key`): a model that seeds its noise per key (Marigold) draws
#: a new sample, and the store keeps the new prediction beside the first.
RETRY_STRIDE = 2**32


def coarse_key(call: int) -> int:
    """The key of the coarse image's ``call``-th model call (0: :data:`COARSE_KEY`).

    The coarse image is keyed as if it were tile ``RETRY_STRIDE - 1`` (-1 modulo the
    stride, a tile id :func:`retry_key` refuses), its later calls as that tile's later
    attempts: ``call * RETRY_STRIDE - 1``, as a tile's later calls are ``id + attempt *
    RETRY_STRIDE``. Each call's key differs, so a model that seeds its noise per key
    (Marigold) draws a new sample for each call of an anchor made of several
    (``anchor_calls``); only the first is negative, and every other is as large as a tile's
    later call's (a seeding that takes those takes these: ``np.random.default_rng(key + 1)``
    does). :func:`is_coarse_key` tells them from tiles'.

    Examples
    --------
    >>> coarse_key(0) == COARSE_KEY, coarse_key(1) == RETRY_STRIDE - 1
    (True, True)
    """
    if call < 0:
        raise ValueError(f"call must be >= 0, got {call}")
    return int(call) * RETRY_STRIDE + COARSE_KEY


def is_coarse_key(key: int) -> bool:
    """Whether ``key`` is one of the coarse image's calls (:func:`coarse_key`), not a tile's.

    Examples
    --------
    >>> is_coarse_key(coarse_key(0)), is_coarse_key(coarse_key(2)), is_coarse_key(7)
    (True, True, False)
    """
    return (int(key) - COARSE_KEY) % RETRY_STRIDE == 0


def retry_key(tile_id: int, attempt: int) -> int:
    """The key of a tile's ``attempt``-th later call (``attempt`` >= 1).

    Examples
    --------
    >>> retry_key(5, 1) - RETRY_STRIDE, retry_key(5, 1) % RETRY_STRIDE
    (5, 5)
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not 0 <= tile_id < RETRY_STRIDE - 1:  # (RETRY_STRIDE - 1: the coarse image's, coarse_key)
        raise ValueError(f"tile_id must be in [0, {RETRY_STRIDE - 1}), got {tile_id}")
    return int(tile_id) + int(attempt) * RETRY_STRIDE


def to_model_input(image: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Band-first tile to channel-last model input, masked pixels filled, padded to ``size``.

    Parameters
    ----------
    image : ndarray of shape (3, h, w), float32 in [0, 1]
    valid : ndarray of shape (h, w), bool
    size : tuple of int
        (rows, cols) the model sees; at least (h, w).

    Returns
    -------
    ndarray of shape (size[0], size[1], 3), float32

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((3, 2, 2), np.float32); img[:, 0, 0] = 1.0
    >>> valid = np.array([[False, True], [True, True]])
    >>> out = to_model_input(img, valid, (3, 2))
    >>> out.shape, float(out[0, 0, 0])
    ((3, 2, 3), 0.0)
    """
    out = np.moveaxis(image, 0, -1)  # (h, w, 3)
    if not valid.all():
        out = out.copy()
        fill = out[valid].mean(axis=0) if valid.any() else np.float32(0.5)
        out[~valid] = fill
    h, w = valid.shape
    if (h, w) != tuple(size):
        out = np.pad(out, ((0, size[0] - h), (0, size[1] - w), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(out, dtype=np.float32)


def predict_image(model: DepthModel, image: np.ndarray, valid: np.ndarray, *,
                  key: int = COARSE_KEY) -> np.ndarray:
    """Predict one whole (coarse) image: (3, h, w) in, (h, w) float32 out; ``key`` the
    call's (:func:`coarse_key`).

    The image is mirror-padded up to the model's ``min_tile`` and to a multiple
    of its ``tile_multiple`` (where it declares them), and the prediction
    cropped back: a skinny raster's coarse image may be a few pixels wide. A local
    model is called in its turn (:func:`tiledepth.turns.predict_in_turn`). The prediction
    is checked (:func:`tiledepth.models.base.check_prediction`), a pool's as a local
    model's: an array of tiledepth's own.
    """
    h, w = valid.shape
    least = getattr(model, "min_tile", None) or 1
    step = getattr(model, "tile_multiple", None) or 1
    size = tuple(-(-max(n, least) // step) * step for n in (h, w))
    batch = to_model_input(image, valid, size)[None]
    if isinstance(model, ModelPool):  # actors of a pool: each runs one call at a time
        return check_prediction(model.predict(batch, [key]), batch,
                                _name_of(model))[0][:h, :w]
    return predict_in_turn(model, batch, [key])[0][:h, :w]


class LocalPool:
    """A local model as a pool of one: its batches run, in order, on one background thread.

    ``in_flight`` is 2: one batch on the model and the next one submitted
    behind it, so the inference loop reads and prepares the batch after that
    while the device works. Each batch waits for the model's turn
    (:func:`tiledepth.turns.predict_in_turn`): another pool, or the coarse prediction,
    may share the model. :meth:`close` (at the end of the loop, also on an
    error or Ctrl-C) sets the stop event of the batches still running, which
    a long model call polls between its steps (:func:`tiledepth.models.base.check_stop`),
    drops the queued ones, and waits for the thread. The stop event of the
    submitting context, if any, stops them too.

    Parameters
    ----------
    model : DepthModel
        Anything with ``predict(batch, keys)``.

    Examples
    --------
    >>> import numpy as np
    >>> class Red:
    ...     def predict(self, batch, keys): return batch[..., 0]
    >>> pool = LocalPool(Red())
    >>> pool.result(pool.submit(np.ones((2, 4, 4, 3), np.float32), [0, 1])).shape
    (2, 4, 4)
    >>> pool.close()
    """

    in_flight = 2

    def __init__(self, model: DepthModel) -> None:
        self.model = model
        self.stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"LocalPool({self.model!r})"

    def submit(self, batch: np.ndarray, keys: Sequence[int]) -> Future:
        """Queue ``model.predict(batch, keys)`` on the pool's thread; return its future."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="tiledepth-model")
        context = contextvars.copy_context()  # the caller's context, plus our stop event
        context.run(stop_event().set, also_stopped_by(self.stop))
        # and the caller's torch grad and inference modes, which torch keeps per thread
        return self._executor.submit(context.run, with_torch_modes(predict_in_turn),
                                     self.model, batch, list(keys))

    def result(self, handle: Future) -> np.ndarray:
        """Wait for a submitted batch; return its (B, H, W) prediction or raise its error."""
        return handle.result()

    def close(self) -> None:
        """Stop the running batch at its next step, drop queued ones, wait for the thread."""
        if self._executor is None:
            return
        self.stop.set()
        try:
            self._executor.shutdown(wait=True, cancel_futures=True)
        finally:
            self._executor = None
            self.stop = threading.Event()


def as_pool(model: Any) -> tuple[Any, bool]:
    """``model`` as a pool (``submit``, ``result``, ``in_flight``), and whether it was wrapped.

    A model that is a pool already (:class:`tiledepth.raypool.RayModelPool`)
    is returned as is; any other model becomes a :class:`LocalPool`.
    """
    if isinstance(model, ModelPool):
        return model, False
    return LocalPool(model), True


def in_flight_of(pool: ModelPool) -> int:
    """How many batches to keep submitted to ``pool``: its ``in_flight``, else 2."""
    return int(getattr(pool, "in_flight", 2))


def infer_tiles(model: DepthModel, reader, tiles: Iterable[Tile], *, batch_size: int,
                workers: int = 0, stored=None, in_flight: int | None = None,
                ) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray]]:
    """Predict every tile, in batches of ``batch_size``, keeping batches in flight; in order.

    Batch k+1, ..., k+in_flight are read and submitted before batch k is
    collected, so the model (a local one on its thread, or every actor of a
    pool) stays busy while this process reads tiles and handles results. The
    same loop serves every executor, resumed runs included.

    Parameters
    ----------
    model : DepthModel or pool
        A model (run as a :class:`LocalPool`), or a pool: ``submit(batch, keys)
        -> handle`` starts a prediction of a (B, H, W, 3) batch (it may keep the
        array until its result is collected: the array is then filled again with a
        later batch), ``result(handle)`` returns its (B, H, W) depth, ``in_flight``
        says how many batches to keep submitted.
    reader : tiledepth.readers.RasterReader or ArrayReader
        Source of ``iter_tiles(windows, workers=...)``.
    tiles : iterable of Tile
    batch_size : int
    workers : int
        Threads reading and decoding tiles ahead of the model (0: none).
    stored : DiskStore, Checkpoint or MemoryStore, optional
        Tiles already in it (``tile.id in stored``) come from ``stored.get``:
        neither read nor predicted again.
    in_flight : int, optional
        Batches submitted and not yet collected, at most; default the pool's
        ``in_flight`` (2 for a local model).

    Yields
    ------
    (Tile, ndarray of shape (h, w) or None, ndarray of shape (h, w) bool)
        Each tile, in the order given, with its prediction and validity mask;
        the prediction is None for a tile whose pixels are all masked (it never
        reaches the model).

    Examples
    --------
    >>> import numpy as np
    >>> from tiledepth.readers import ArrayReader
    >>> from tiledepth.tiling import tile_grid
    >>> class Deferred:  # runs each batch when its result is asked for
    ...     def submit(self, batch, keys): return batch
    ...     def result(self, batch): return batch[..., 0]
    >>> reader = ArrayReader(np.random.default_rng(0).random((100, 100, 3)))
    >>> tiles = [t for row in tile_grid(100, 100, 64, 0.25) for t in row]
    >>> out = list(infer_tiles(Deferred(), reader, tiles, batch_size=3, in_flight=2))
    >>> [t.id for t, _, _ in out] == [t.id for t in tiles], out[0][1].shape
    (True, (64, 64))
    """
    pool, local = as_pool(model)
    if in_flight is None:
        in_flight = in_flight_of(pool)
    if in_flight < 1:
        raise ValueError(f"in_flight must be >= 1, got {in_flight}")
    tiles = list(tiles)
    todo = [t for t in tiles if stored is None or t.id not in stored]
    # no batch holds more than the tiles to predict: the batch array is not made larger
    # (a --batch-size far above the tile count allocated it whole; the same batches)
    queue = _InOrder(pool, max(1, min(batch_size, len(todo))), _name_of(model))
    reads = reader.iter_tiles([t.window for t in todo], workers=workers)
    try:
        for tile in tiles:
            if stored is not None and tile.id in stored:
                queue.submit()  # a partial batch: the same batches as a run without a store
                queue.ready(tile, *stored.get(tile.id))
            else:
                image, valid = next(reads)
                if not valid.any():
                    queue.ready(tile, None, valid)
                else:
                    queue.add(tile, to_model_input(image, valid, (tile.size, tile.size)), valid)
                del image
            yield from queue.drain(in_flight - 1)
        queue.submit()
        yield from queue.drain(0)
    finally:
        try:
            # closed now, not when the garbage collector finds it (a failed model call's
            # traceback holds this frame): its read-ahead threads end, closing their dataset
            # handles (a reader's plain iterator has nothing to close)
            close = getattr(reads, "close", None)
            if close is not None:
                close()
        finally:
            if local:
                pool.close()


class _InOrder:
    """The queue of :func:`infer_tiles`: batches in flight and ready tiles, in tile order.

    Each entry is ``("batch", items, handle, array)`` for a submitted batch or
    ``("ready", tile, pred, valid)`` for a stored or fully masked tile, which waits
    behind the batches before it.

    The batch arrays are reused: once a batch's result is collected, its array
    waits in :attr:`spare` to be filled with a later batch (its predictions are copies
    of tiledepth's own, even where the model returned a view of it): a fresh array of
    that size costs more than filling it, as the kernel maps and zeroes its pages on
    first touch.
    """

    def __init__(self, pool: ModelPool, batch_size: int, name: str = "model") -> None:
        self.pool, self.batch_size, self.name = pool, batch_size, name
        self.queue: deque[tuple] = deque()
        self.submitted = 0  # batches in the queue
        self.pending: list[tuple[Tile, np.ndarray]] = []
        self.batch: np.ndarray | None = None  # (B, size, size, 3), being filled
        self.spare: list[np.ndarray] = []  # arrays of collected batches, to fill again

    def ready(self, tile: Tile, pred: np.ndarray | None, valid: np.ndarray) -> None:
        """Queue a tile that needs no model call: stored, or all masked (``pred`` None)."""
        self.queue.append(("ready", tile, pred, valid))

    def add(self, tile: Tile, image: np.ndarray, valid: np.ndarray) -> None:
        """Add a tile's (size, size, 3) model input to the batch; submit a full batch.

        A tile of another size than the pending ones' starts a batch of its own: they are
        submitted first (the tiles of one run are all of one size).
        """
        if self.pending and self.batch.shape[1:3] != image.shape[:2]:
            self.submit()
        if not self.pending:
            self.batch = self._array((self.batch_size, tile.size, tile.size, 3))
        self.batch[len(self.pending)] = image
        self.pending.append((tile, valid))
        if len(self.pending) >= self.batch_size:
            self.submit()

    def submit(self) -> None:
        """Submit the pending tiles, if any, as one batch."""
        if not self.pending:
            return
        n = len(self.pending)
        handle = self.pool.submit(self.batch[:n], [t.id for t, _ in self.pending])
        self.queue.append(("batch", list(self.pending), handle, self.batch))
        self.submitted += 1
        self.pending.clear()
        self.batch = None

    def _array(self, shape: tuple[int, ...]) -> np.ndarray:
        """A (B, size, size, 3) float32 array to fill: a spare one of that shape, or new."""
        while self.spare:
            array = self.spare.pop()
            if array.shape == shape:
                return array
        return np.empty(shape, np.float32)

    def drain(self, keep: int) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray]]:
        """Yield what is ready at the front; collect batches until at most ``keep`` are in
        flight and at most a batch's worth of ready tiles waits behind them."""
        while self.queue and (self.queue[0][0] == "ready" or self.submitted > keep
                              or len(self.queue) - self.submitted > self.batch_size):
            entry = self.queue.popleft()
            if entry[0] == "ready":
                yield entry[1:]
                continue
            self.submitted -= 1
            _, items, handle, array = entry
            # (n, size, size), checked: a pool's actors (Ray's) call a model object as it is;
            # a local model's batch, checked in its turn already, costs a look-up
            preds = check_prediction(self.pool.result(handle), array[:len(items)], self.name)
            out = [np.ascontiguousarray(pred[:h, :w], dtype=np.float32)
                   for pred, (h, w) in zip(preds, (t.shape for t, _ in items), strict=True)]
            self.spare = [array]  # done with: filled again by a later batch
            for (tile, valid), pred in zip(items, out, strict=True):
                yield tile, pred, valid


def _name_of(model: Any) -> str:
    """The name of a model, or of the model a pool or a pool's wrapper holds, for messages."""
    for _ in range(4):  # a gate (tiledepth.stages) on a LocalPool of a model, at most
        name = getattr(model, "name", None)
        if isinstance(name, str):
            return name
        inner = getattr(model, "model", None)
        model = inner if inner is not None else getattr(model, "pool", None)
    return "model"


def infer_tiles_in_flight(model, reader, tiles: Iterable[Tile], *, batch_size: int,
                          in_flight: int, workers: int = 0,
                          ) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray]]:
    """:func:`infer_tiles` with ``in_flight`` batches submitted at once (kept for callers)."""
    return infer_tiles(model, reader, tiles, batch_size=batch_size, workers=workers,
                       in_flight=in_flight)
