"""The interfaces the engine works through, declared once.

The engine (:mod:`tiledepth.engine`) walks its steps over four kinds of object
and knows them only by these protocols:

- a :class:`Reader` gives tiles and the coarse image of a raster
  (:class:`tiledepth.read.RasterReader`, :class:`~tiledepth.read.ArrayReader`,
  :class:`~tiledepth.read.ScaledReader`, :class:`tiledepth.aoi.AreaReader`);
- a :class:`Sink` takes the output, window by window
  (:class:`tiledepth.write.GeoTiffWriter`, :class:`~tiledepth.write.ArraySink`);
- a :class:`TileStore` holds tile predictions between inference and blending
  (:class:`tiledepth.scratch.MemoryStore`, :class:`~tiledepth.scratch.DiskStore`,
  :class:`tiledepth.checkpoint.Checkpoint`);
- a :class:`DepthModel` predicts depth for a batch of tiles
  (:mod:`tiledepth.models`); a :class:`ModelPool` runs batches of one
  asynchronously (:class:`tiledepth.infer.LocalPool`,
  :class:`tiledepth.raypool.RayModelPool`).

``DepthModel`` and ``ModelPool`` are ``runtime_checkable``: where a caller may
pass either a model or a pool, or a model object or a name, ``isinstance``
against them tells which. Nothing here imports anything heavy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from rasterio.windows import Window

__all__ = ["DepthModel", "MaskedReader", "ModelPool", "Reader", "Sink", "TileStore"]


class Reader(Protocol):
    """A source of tiles and of the coarse image: band-first float32 in [0, 1] and a
    validity mask (what :func:`tiledepth.engine.fuse` reads)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def iter_tiles(self, windows: Iterable[Window], *,
                   workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read_tile` of each window, in order (``workers`` threads reading ahead)."""
        ...

    def read_coarse(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole image at most ``long_side`` a side: (3, ch, cw) and (ch, cw) bool."""
        ...


class MaskedReader(Reader, Protocol):
    """A reader that also says which pixels of a window are valid (not the scaled one)."""

    def read_valid(self, window: Window) -> np.ndarray:
        """(h, w) bool: True where ``window``'s pixels are valid."""
        ...


class Sink(Protocol):
    """A destination of output windows."""

    def windows(self) -> Iterator[Window]:
        """The windows to write, in the order the sink wants them."""
        ...

    def write(self, window: Window, data: np.ndarray, band: int = 1) -> None:
        """Write (h, w) float32 ``data`` to ``window`` of ``band``."""
        ...

    def set_units(self, units: str) -> None:
        """Say the values' unit (``"metre"``)."""
        ...


class TileStore(Protocol):
    """Tile predictions (and the coarse prediction) between inference and blending."""

    def __contains__(self, tile_id: int) -> bool: ...

    def put(self, tile_id: int, pred: np.ndarray, valid: np.ndarray) -> None:
        """Keep tile ``tile_id``'s (h, w) float32 prediction and (h, w) bool validity."""
        ...

    def get(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The prediction and validity :meth:`put` kept."""
        ...

    def get_pred(self, tile_id: int, index: tuple[slice, slice]) -> np.ndarray:
        """Part ``pred[index]`` of one tile's prediction."""
        ...

    def put_coarse(self, coarse: np.ndarray) -> None:
        """Keep the (ch, cw) coarse prediction."""
        ...

    def get_coarse(self) -> np.ndarray | None:
        """The kept coarse prediction, or None."""
        ...

    def flush(self) -> None:
        """Wait until every tile put is kept; raise the first failure."""
        ...

    def release(self) -> None:
        """Free the memory the store can do without once every tile is kept elsewhere
        (a DiskStore's cache); the tiles stay readable."""
        ...

    def disk_bytes(self) -> int:
        """Bytes the store holds on disk now (0 in memory)."""
        ...


@runtime_checkable
class DepthModel(Protocol):
    """What the engine needs from a model backend (see :mod:`tiledepth.models.base`)."""

    #: A short human-readable name, written to the output's provenance tags.
    name: str
    #: How many images the backend wants per call; the engine batches tiles by it.
    batch_size: int

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """Predict depth for ``batch`` of shape (B, H, W, 3); return (B, H, W) float32."""
        ...


@runtime_checkable
class ModelPool(Protocol):
    """Batches predicted asynchronously: submit now, collect the result later, in order.

    A pool may say how many batches to keep submitted with an ``in_flight``
    attribute (default 2).
    """

    def submit(self, batch: np.ndarray, keys: Sequence[int]) -> Any:
        """Start predicting a (B, H, W, 3) batch; return a handle for :meth:`result`."""
        ...

    def result(self, handle: Any) -> np.ndarray:
        """Wait for a submitted batch; return its (B, H, W) prediction or raise its error."""
        ...
