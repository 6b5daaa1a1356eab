"""Infer: read tiles, batch them, run the model, and hand predictions on.

The one place where band-first rasterio arrays ``(3, h, w)`` become the
channel-last batches ``(B, size, size, 3)`` of the model protocol. Masked
pixels never reach the model as colour: they are filled with the tile's mean
valid colour. A window smaller than the tile size (a raster smaller than one
tile) is padded by mirroring up to it and the prediction cropped back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from tiledepth.models.base import DepthModel
from tiledepth.tiling import Tile

__all__ = ["infer_tiles", "infer_tiles_in_flight", "predict_image", "to_model_input"]

log = logging.getLogger(__name__)

#: Key of the coarse image in the model's per-image noise seeding (tiles use their id).
COARSE_KEY = -1


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


def predict_image(model: DepthModel, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Predict one whole (coarse) image: (3, h, w) in, (h, w) float32 out.

    The image is mirror-padded up to the model's ``min_tile`` and to a multiple
    of its ``tile_multiple`` (where it declares them), and the prediction
    cropped back: a skinny raster's coarse image may be a few pixels wide.
    """
    h, w = valid.shape
    least = getattr(model, "min_tile", None) or 1
    step = getattr(model, "tile_multiple", None) or 1
    size = tuple(-(-max(n, least) // step) * step for n in (h, w))
    batch = to_model_input(image, valid, size)[None]
    return model.predict(batch, [COARSE_KEY])[0][:h, :w]


def infer_tiles(model: DepthModel, reader, tiles: Iterable[Tile], *, batch_size: int,
                workers: int = 0, stored=None,
                ) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray]]:
    """Predict every tile, in batches of ``batch_size``, in order.

    Parameters
    ----------
    model : DepthModel
    reader : tiledepth.read.RasterReader or ArrayReader
        Source of ``iter_tiles(windows, workers=...)``.
    tiles : iterable of Tile
    batch_size : int
    workers : int
        Threads reading and decoding tiles ahead of the model (0: none).
    stored : DiskStore, Checkpoint or MemoryStore, optional
        Tiles already in it (``tile.id in stored``) come from ``stored.get``:
        neither read nor predicted again.

    Yields
    ------
    (Tile, ndarray of shape (h, w) or None, ndarray of shape (h, w) bool)
        Each tile with its prediction and validity mask; the prediction is
        None for a tile whose pixels are all masked (it never reaches the model).
        A model with ``submit`` and ``result`` (a pool of workers, such as
        :class:`tiledepth.raypool.RayModelPool`) is run by
        :func:`infer_tiles_in_flight`, with several batches in flight.
    """
    if hasattr(model, "submit") and hasattr(model, "result"):
        yield from infer_tiles_in_flight(model, reader, tiles, batch_size=batch_size,
                                         in_flight=getattr(model, "in_flight", 2),
                                         workers=workers)
        return
    pending: list[tuple[Tile, np.ndarray]] = []
    batch: np.ndarray | None = None  # (B, size, size, 3), reused from batch to batch

    def flush() -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
        n = len(pending)
        preds = model.predict(batch[:n], [t.id for t, _ in pending])  # (n, size, size)
        for (tile, valid), pred in zip(pending, preds, strict=True):
            h, w = tile.shape
            yield tile, np.ascontiguousarray(pred[:h, :w], dtype=np.float32), valid
        pending.clear()

    tiles = list(tiles)
    todo = [t for t in tiles if stored is None or t.id not in stored]
    reads = reader.iter_tiles([t.window for t in todo], workers=workers)
    for tile in tiles:
        if stored is not None and tile.id in stored:
            if pending:  # keep the order
                yield from flush()
            pred, valid = stored.get(tile.id)
            yield tile, pred, valid
            continue
        image, valid = next(reads)
        if not valid.any():
            yield tile, None, valid
            continue
        if batch is None:
            batch = np.empty((batch_size, tile.size, tile.size, 3), np.float32)
        batch[len(pending)] = to_model_input(image, valid, (tile.size, tile.size))
        del image
        pending.append((tile, valid))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def infer_tiles_in_flight(model, reader, tiles: Iterable[Tile], *, batch_size: int,
                          in_flight: int, workers: int = 0,
                          ) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray]]:
    """As :func:`infer_tiles`, keeping up to ``in_flight`` batches submitted at once.

    For models that run batches elsewhere (a pool of GPU workers): batch k+1,
    ..., k+in_flight are read and submitted before batch k is collected, so
    every worker stays busy while this process reads tiles and handles
    results. Predictions come back in tile order, as from :func:`infer_tiles`.

    Parameters
    ----------
    model : object
        ``submit(batch, keys) -> handle`` starts a prediction of a (B, H, W, 3)
        batch (it may keep the array: each batch is a new one);
        ``result(handle)`` returns its (B, H, W) depth.
    reader : tiledepth.read.RasterReader or ArrayReader
    tiles : iterable of Tile
    batch_size : int
    in_flight : int
        Batches submitted and not yet collected, at most.
    workers : int
        Threads reading and decoding tiles ahead (0: none).

    Yields
    ------
    (Tile, ndarray of shape (h, w) or None, ndarray of shape (h, w) bool)

    Examples
    --------
    >>> import numpy as np
    >>> from tiledepth.read import ArrayReader
    >>> from tiledepth.tiling import tile_grid
    >>> class Deferred:  # runs each batch when its result is asked for
    ...     def submit(self, batch, keys): return batch
    ...     def result(self, batch): return batch[..., 0]
    >>> reader = ArrayReader(np.random.default_rng(0).random((100, 100, 3)))
    >>> tiles = [t for row in tile_grid(100, 100, 64, 0.25) for t in row]
    >>> out = list(infer_tiles_in_flight(Deferred(), reader, tiles, batch_size=3, in_flight=2))
    >>> [t.id for t, _, _ in out] == [t.id for t in tiles], out[0][1].shape
    (True, (64, 64))
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be >= 1, got {in_flight}")
    submitted: deque[tuple[list[tuple[Tile, np.ndarray]], object]] = deque()
    pending: list[tuple[Tile, np.ndarray]] = []
    batch: np.ndarray | None = None  # (B, size, size, 3), a new array for every submission

    def collect() -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
        items, handle = submitted.popleft()
        preds = model.result(handle)  # (n, size, size)
        for (tile, valid), pred in zip(items, preds, strict=True):
            h, w = tile.shape
            yield tile, np.ascontiguousarray(pred[:h, :w], dtype=np.float32), valid

    def submit() -> None:
        n = len(pending)
        submitted.append((list(pending), model.submit(batch[:n], [t.id for t, _ in pending])))
        pending.clear()

    tiles = list(tiles)
    reads = reader.iter_tiles([t.window for t in tiles], workers=workers)
    for tile, (image, valid) in zip(tiles, reads, strict=True):
        if not valid.any():
            yield tile, None, valid
            continue
        if not pending:
            batch = np.empty((batch_size, tile.size, tile.size, 3), np.float32)
        batch[len(pending)] = to_model_input(image, valid, (tile.size, tile.size))
        del image
        pending.append((tile, valid))
        if len(pending) >= batch_size:
            submit()
            while len(submitted) >= in_flight:
                yield from collect()
    if pending:
        submit()
    while submitted:
        yield from collect()
