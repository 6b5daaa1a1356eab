"""Blend: weighted mean of the aligned tiles, with weights that taper at inner edges.

Each output pixel is ``sum_i w_i * a_i / sum_i w_i`` over the aligned tiles
``a_i`` covering it. A tile's weight is 1 in its interior and falls smoothly
(a smoothstep over the overlap width) toward every edge that lies inside the
raster, never toward the raster border, so the normalised weights sum to one
everywhere and no tile edge shows. Pure NumPy: arrays and windows in, arrays
out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from rasterio.windows import Window

from tiledepth.tiling import Tile

__all__ = ["OVERLAP_WEIGHTINGS", "BlendPart", "blend_lattice", "blend_points", "blend_window",
           "edge_ramp", "overlap_weights", "tile_weights"]


@dataclass(frozen=True, eq=False)
class BlendPart:
    """One tile's part in a blend: its raw prediction and the value map that aligns it.

    Attributes
    ----------
    tile : Tile
    pred : ndarray of shape (h, w)
        The tile's raw prediction.
    valid : ndarray of shape (h, w), bool
        Its validity mask.
    scale, shift : float or ndarray of shape (h, w)
        The value map, applied in the blend to the part that falls in the window only:
        floats, or arrays of the tile's shape (or objects indexed like them, e.g.
        :class:`tiledepth.fusion.maps.BilinearMap`) for a map that varies across the tile.
    weight : float
        Scales the tile's blending weight: a tile weighted 0.05 yields to its neighbours
        wherever they overlap it and fills only the pixels no other tile covers.
    """

    tile: Tile
    pred: np.ndarray
    valid: np.ndarray
    scale: Any = 1.0
    shift: Any = 0.0
    weight: float = 1.0


def edge_ramp(length: int, ramp: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """1-D weights along one tile axis: 1 inside, smoothstep down toward tapered ends.

    The weight of the pixel ``d`` pixels from a tapered end is
    ``smoothstep((d + 0.5) / ramp)``: always above zero, 1 from ``ramp`` pixels in.

    Parameters
    ----------
    length : int
        Pixels along the axis.
    ramp : int
        Taper width in pixels (the overlap); 0 disables tapering.
    taper_start, taper_end : bool
        Whether to taper toward each end.

    Returns
    -------
    ndarray of shape (length,), float32

    Examples
    --------
    >>> [round(float(v), 3) for v in edge_ramp(6, 2, True, False)]
    [0.156, 0.844, 1.0, 1.0, 1.0, 1.0]
    """
    w = np.ones(length, np.float32)
    if ramp <= 0:
        return w
    d = np.arange(length, dtype=np.float32)
    x = np.clip((d + 0.5) / ramp, 0.0, 1.0)
    smooth = x * x * (3 - 2 * x)
    if taper_start:
        w = np.minimum(w, smooth)
    if taper_end:
        w = np.minimum(w, smooth[::-1])
    return w


def tile_weights(tile: Tile, ramp: int) -> np.ndarray:
    """Blending weights of a tile, ndarray of shape (h, w), float32, in (0, 1].

    The outer product of :func:`tile_ramps`.
    """
    rows, cols = tile_ramps(tile, ramp)
    return np.outer(rows, cols)


@lru_cache(maxsize=64)
def tile_ramps(tile: Tile, ramp: int) -> tuple[np.ndarray, np.ndarray]:
    """The separable blending weights of a tile: (rows (h,), cols (w,)), read-only."""
    h, w = tile.shape
    rows = edge_ramp(h, ramp, not tile.top, not tile.bottom)
    cols = edge_ramp(w, ramp, not tile.left, not tile.right)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


#: How the overlap terms of the alignment weight an overlap's pixels (:func:`overlap_weights`):
#: each the same (``uniform``), or by how much the blend trusts both tiles there (``blend``).
OVERLAP_WEIGHTINGS = ("uniform", "blend")


def overlap_weights(a: Tile, b: Tile, where: tuple[tuple[slice, slice], tuple[slice, slice]], *,
                    ramp: int, weighting: str = "uniform") -> np.ndarray | None:
    """Weights of the pixels of the overlap of tiles ``a`` and ``b`` in its alignment terms.

    ``blend``: the product of the two tiles' blending weights (:func:`tile_weights`), highest
    in the middle of the overlap band and falling toward either tile's edge, where a
    per-call warp or tilt is largest and where the blend takes a tile least; ``uniform``:
    None (every pixel weighted 1). The weights are relative:
    :func:`tiledepth.fusion.stats.pair_stats` scales them to a mean of 1 over the overlap's
    valid pixels, so the overlap counts as much against the coarse prediction as with
    uniform weights.

    Parameters
    ----------
    a, b : Tile
    where : ((slice, slice), (slice, slice))
        The overlap in each tile, as :func:`tiledepth.tiling.overlap_slices` gives it.
    ramp : int
        The blend's taper width in pixels.
    weighting : {'uniform', 'blend'}

    Returns
    -------
    ndarray of shape (h, w), float64, or None

    Examples
    --------
    >>> from tiledepth.tiling import overlap_slices, tile_grid
    >>> g = tile_grid(8, 12, 8, 0.5)  # two tiles side by side, 4 columns shared
    >>> w = overlap_weights(g[0][0], g[0][1], overlap_slices(g[0][0], g[0][1]), ramp=4,
    ...                     weighting="blend")
    >>> [round(float(v), 3) for v in w[0]]
    [0.041, 0.216, 0.216, 0.041]
    """
    if weighting not in OVERLAP_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(OVERLAP_WEIGHTINGS)}, "
                         f"got {weighting!r}")
    if weighting == "uniform":
        return None
    (rows_a, cols_a), (rows_b, cols_b) = where
    ra, ca = tile_ramps(a, ramp)
    rb, cb = tile_ramps(b, ramp)
    # separable: (h, w); float64, as the sums it weights
    return np.outer(ra[rows_a] * rb[rows_b], (ca[cols_a] * cb[cols_b]).astype(np.float64))


def blend_window(window: Window, parts: Iterable[BlendPart], *, ramp: int) -> np.ndarray:
    """Blend aligned tiles into one output window.

    Parameters
    ----------
    window : rasterio.windows.Window
        The output window.
    parts : iterable of BlendPart
        Each tile that intersects the window (others are skipped).
    ramp : int
        Taper width in pixels.

    Returns
    -------
    ndarray of shape (window.height, window.width), float32
        NaN where no valid tile pixel covers the output pixel.
    """
    parts = list(parts)
    h, w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off), int(window.col_off)
    if h <= STRIP:
        return _blend_strip(r0, c0, h, w, parts, ramp)
    out = np.empty((h, w), np.float32)
    for s in range(0, h, STRIP):  # strips that stay in the CPU's cache
        out[s:s + STRIP] = _blend_strip(r0 + s, c0, min(STRIP, h - s), w, parts, ramp)
    return out


#: Rows blended at a time, so that a strip's sums and each tile's part stay in the CPU
#: cache (BENCHMARKS.md, hot paths).
STRIP = 128


def _blend_strip(r0: int, c0: int, h: int, w: int, parts: list[BlendPart],
                 ramp: int) -> np.ndarray:
    """:func:`blend_window` of the window at (r0, c0) of shape (h, w)."""
    # float32 sums (faster than float64): a pixel sums a few weighted values
    num = np.zeros((h, w), np.float32)
    den = np.zeros((h, w), np.float32)
    for part in parts:
        tile, pred, valid, scale, shift, weight = _fields(part)
        where = intersection(tile, r0, c0, h, w)
        if where is None:
            continue
        out, src = where
        rows, cols = tile_ramps(tile, ramp)
        wt = np.outer(rows[src[0]], cols[src[1]])  # float32
        if weight != 1:
            wt *= np.float32(weight)
        if not valid[src].all():
            wt *= valid[src]
        value = np.multiply(pred[src], _at(scale, src), dtype=np.float32)
        value += _at(shift, src)
        value *= wt
        num[out] += value
        den[out] += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        num /= den
    num[den == 0] = np.nan
    return num


def intersection(tile: Tile, r0: int, c0: int, h: int, w: int):
    """Where a tile meets the window at (r0, c0) of shape (h, w): (rows, cols) slices in
    the window and the same in the tile, or None where they do not meet."""
    tr0, tc0 = int(tile.window.row_off), int(tile.window.col_off)
    th, tw = tile.shape
    ar0, ar1 = max(r0, tr0), min(r0 + h, tr0 + th)
    ac0, ac1 = max(c0, tc0), min(c0 + w, tc0 + tw)
    if ar1 <= ar0 or ac1 <= ac0:
        return None
    return ((slice(ar0 - r0, ar1 - r0), slice(ac0 - c0, ac1 - c0)),
            (slice(ar0 - tr0, ar1 - tr0), slice(ac0 - tc0, ac1 - tc0)))


def blend_lattice(rows: np.ndarray, cols: np.ndarray, parts: Iterable[BlendPart], *,
                  ramp: int) -> np.ndarray:
    """The blended map at the pixels ``rows x cols`` only (a decimated :func:`blend_window`).

    Parameters
    ----------
    rows, cols : ndarray of int, sorted
        Pixel rows and columns of the lattice.
    parts : iterable of BlendPart
        Every tile that may cover a lattice pixel.
    ramp : int
        Taper width in pixels.

    Returns
    -------
    ndarray of shape (len(rows), len(cols)), float32
        NaN where no valid tile pixel covers the lattice pixel.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    num = np.zeros((rows.size, cols.size), np.float64)
    den = np.zeros_like(num)
    for part in parts:
        tile, pred, valid, scale, shift, weight = _fields(part)
        (tr0, tr1), (tc0, tc1) = ((tile.row_slice.start, tile.row_slice.stop),
                                  (tile.col_slice.start, tile.col_slice.stop))
        i0, i1 = np.searchsorted(rows, [tr0, tr1])
        j0, j1 = np.searchsorted(cols, [tc0, tc1])
        if i1 <= i0 or j1 <= j0:
            continue
        r, c = rows[i0:i1] - tr0, cols[j0:j1] - tc0
        ramp_rows, ramp_cols = tile_ramps(tile, ramp)
        at = np.ix_(r, c)
        wt = np.outer(ramp_rows[r], ramp_cols[c]) * valid[at] * weight
        num[i0:i1, j0:j1] += wt * (_at(scale, at) * pred[at] + _at(shift, at))
        den[i0:i1, j0:j1] += wt
    return _divide(num, den)


def blend_points(rows: np.ndarray, cols: np.ndarray, parts: Iterable[BlendPart], *,
                 ramp: int) -> np.ndarray:
    """The blended map at scattered pixels ``(rows[i], cols[i])``.

    Parameters
    ----------
    rows, cols : ndarray of int, shape (N,)
    parts : iterable of BlendPart
        Every tile that may cover a point.
    ramp : int
        Taper width in pixels.

    Returns
    -------
    ndarray of shape (N,), float32
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    num = np.zeros(rows.shape, np.float64)
    den = np.zeros_like(num)
    for part in parts:
        tile, pred, valid, scale, shift, weight = _fields(part)
        rs, cs = tile.row_slice, tile.col_slice
        (idx,) = np.nonzero((rows >= rs.start) & (rows < rs.stop)
                            & (cols >= cs.start) & (cols < cs.stop))
        if idx.size == 0:
            continue
        r, c = rows[idx] - rs.start, cols[idx] - cs.start
        ramp_rows, ramp_cols = tile_ramps(tile, ramp)
        wt = ramp_rows[r] * ramp_cols[c] * valid[r, c] * weight
        num[idx] += wt * (_at(scale, (r, c)) * pred[r, c] + _at(shift, (r, c)))
        den[idx] += wt
    return _divide(num, den)


def _fields(part: BlendPart) -> tuple:
    """(tile, pred, valid, scale, shift, weight) of a part."""
    return part.tile, part.pred, part.valid, part.scale, part.shift, part.weight


def _at(value, index):
    """A constant as is; a per-pixel map (a tile-shaped array, or anything indexed like
    one, e.g. :class:`tiledepth.fusion.maps.BilinearMap`) at ``index``."""
    return value if np.isscalar(value) else value[index]


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        result = num / den
    result[den == 0] = np.nan
    return result.astype(np.float32)
