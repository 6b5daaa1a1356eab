"""Tile: cut a raster grid into overlapping, full-size tiles.

Pure functions on integers and windows; no I/O. The grid formula lives in
:func:`tile_starts` and is property-tested in ``tests/test_tiling.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window

from tiledepth.errors import OptionError

__all__ = ["Tile", "count_tiles", "tile_grid", "tile_starts", "overlap_pixels"]


@dataclass(frozen=True)
class Tile:
    """One tile of the grid: where it reads and where it sits.

    Attributes
    ----------
    id : int
        Row-major index of the tile in the grid, ``row * n_cols + col``.
    row, col : int
        Grid position.
    window : rasterio.windows.Window
        The raster pixels the tile covers. Full tile size, except along an axis
        where the raster itself is smaller than one tile.
    size : int
        The tile size the model sees; a window smaller than ``size`` is padded
        (reflect) up to it before inference and cropped back after.
    top, bottom, left, right : bool
        Whether that edge of the tile lies on the raster border. Blending
        weights taper only toward edges that lie inside the raster.
    """

    id: int
    row: int
    col: int
    window: Window
    size: int
    top: bool
    bottom: bool
    left: bool
    right: bool

    @property
    def row_slice(self) -> slice:
        return slice(int(self.window.row_off), int(self.window.row_off + self.window.height))

    @property
    def col_slice(self) -> slice:
        return slice(int(self.window.col_off), int(self.window.col_off + self.window.width))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the tile's window."""
        return int(self.window.height), int(self.window.width)


def overlap_pixels(tile_size: int, overlap: float) -> int:
    """Overlap between neighbouring tiles in pixels: ``round(overlap * tile_size)``.

    Examples
    --------
    >>> overlap_pixels(768, 0.25)
    192
    """
    return int(round(overlap * tile_size))


def tile_starts(length: int, tile_size: int, overlap: float) -> list[int]:
    """Start offsets of tiles along one axis of ``length`` pixels.

    With ``stride = tile_size - round(overlap * tile_size)`` the tiles start at
    ``k * stride`` for ``k = 0 .. n - 1`` with ``n = ceil((length - tile_size) / stride) + 1``
    (rounded up, so the last partial tile is covered); the last start is then
    shifted inward to ``length - tile_size`` so that every tile is full size and
    the raster edge is covered exactly. A raster shorter than one tile gets one
    tile starting at 0.

    Parameters
    ----------
    length : int
        Raster size along the axis, in pixels (>= 1).
    tile_size : int
        Tile size in pixels (>= 1).
    overlap : float
        Overlap as a fraction of the tile, in [0, 1).

    Returns
    -------
    list of int
        Strictly increasing start offsets.

    Examples
    --------
    >>> tile_starts(1000, 400, 0.25)
    [0, 300, 600]
    >>> tile_starts(1001, 400, 0.25)
    [0, 300, 600, 601]
    >>> tile_starts(100, 400, 0.25)
    [0]
    """
    if length < 1:
        raise OptionError(f"raster length must be >= 1, got {length}")
    if tile_size < 1:
        raise OptionError(f"tile_size must be >= 1, got {tile_size}")
    if not 0 <= overlap < 1:
        raise OptionError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile_size:
        return [0]
    stride = max(1, tile_size - overlap_pixels(tile_size, overlap))
    n = math.ceil((length - tile_size) / stride) + 1
    return [min(k * stride, length - tile_size) for k in range(n)]


def count_tiles(height: int, width: int, tile_size: int, overlap: float) -> int:
    """How many tiles :func:`tile_grid` makes, without making them.

    Examples
    --------
    >>> count_tiles(1000, 700, 400, 0.25)
    6
    >>> count_tiles(10_000, 10_000, 768, 0.89)
    12321
    """
    return len(tile_starts(height, tile_size, overlap)) * len(tile_starts(width, tile_size,
                                                                          overlap))


def tile_grid(height: int, width: int, tile_size: int, overlap: float) -> list[list[Tile]]:
    """The tile grid of a ``height`` x ``width`` raster, as rows of tiles.

    Parameters
    ----------
    height, width : int
        Raster size in pixels.
    tile_size : int
        Tile size in pixels.
    overlap : float
        Overlap as a fraction of the tile, in [0, 1).

    Returns
    -------
    list of list of Tile
        ``grid[r][c]`` is the tile at grid row ``r``, column ``c``.

    Examples
    --------
    >>> grid = tile_grid(1000, 700, 400, 0.25)
    >>> len(grid), len(grid[0])
    (3, 2)
    >>> grid[2][1].window
    Window(col_off=300, row_off=600, width=400, height=400)
    """
    rows = tile_starts(height, tile_size, overlap)
    cols = tile_starts(width, tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    grid = []
    for r, r0 in enumerate(rows):
        line = []
        for c, c0 in enumerate(cols):
            line.append(
                Tile(
                    id=r * len(cols) + c,
                    row=r,
                    col=c,
                    window=Window(c0, r0, tw, th),
                    size=tile_size,
                    top=r0 == 0,
                    bottom=r0 + th == height,
                    left=c0 == 0,
                    right=c0 + tw == width,
                )
            )
        grid.append(line)
    return grid


def overlap_slices(a: Tile, b: Tile) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where tiles ``a`` and ``b`` overlap, as (rows, cols) slices into each tile.

    Returns None when they do not overlap.

    Examples
    --------
    >>> grid = tile_grid(100, 100, 60, 0.5)
    >>> overlap_slices(grid[0][0], grid[0][1])
    ((slice(0, 60, None), slice(30, 60, None)), (slice(0, 60, None), slice(0, 30, None)))
    """
    r0 = max(a.window.row_off, b.window.row_off)
    r1 = min(a.window.row_off + a.window.height, b.window.row_off + b.window.height)
    c0 = max(a.window.col_off, b.window.col_off)
    c1 = min(a.window.col_off + a.window.width, b.window.col_off + b.window.width)
    if r1 <= r0 or c1 <= c0:
        return None

    def local(t: Tile) -> tuple[slice, slice]:
        ro, co = int(t.window.row_off), int(t.window.col_off)
        return slice(int(r0) - ro, int(r1) - ro), slice(int(c0) - co, int(c1) - co)

    return local(a), local(b)


def earlier_neighbours(grid: list[list[Tile]], tile: Tile) -> list[Tile]:
    """Tiles that overlap ``tile`` and come before it in row-major order.

    Visiting every tile and pairing it with its earlier neighbours lists each
    overlapping pair exactly once.

    Examples
    --------
    >>> grid = tile_grid(1000, 1000, 400, 0.25)
    >>> [t.id for t in earlier_neighbours(grid, grid[1][1])]
    [0, 1, 2, 3]
    """
    out = []
    for r in range(tile.row, -1, -1):
        row_hit = False
        for cand in grid[r]:
            if cand.id >= tile.id:
                break
            if overlap_slices(cand, tile) is not None:
                out.append(cand)
                row_hit = True
        if not row_hit and r < tile.row:
            break
    return sorted(out, key=lambda t: t.id)
