"""Resample: exact area averages, bilinear upsampling, and a tile's coarse cells.

The coarse prediction is read as GDAL's average resampling with exact area
weights (:func:`area_average`) and upsampled bilinearly with pixel centres aligned
(:func:`upsample_window`); a tile's own averages over the same cells
(:func:`tile_cells`) are what the coarse map would have seen of it, blurred as a
model blurs (:func:`blur_cells`). Pure NumPy/SciPy: arrays and windows in, arrays
out.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

__all__ = [
    "area_average",
    "area_matrix",
    "area_sums",
    "blur_cells",
    "cell_coverage",
    "coarse_extent",
    "fill_invalid",
    "interpolate",
    "linear_taps",
    "point_taps",
    "tile_cells",
    "upsample_window",
]

def area_matrix(edges: np.ndarray, n: int):
    """Exact area weights of ``n`` pixels in the cells between ``edges``.

    Parameters
    ----------
    edges : ndarray of shape (cells + 1,)
        Sorted cell boundaries in pixel coordinates, from 0 to ``n`` (fractional:
        a cell may cut a pixel).
    n : int
        Pixels along the axis.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (cells, n)
        The part of pixel ``[p, p + 1)`` inside cell ``k``, at ``[k, p]``; a
        product with it sums each cell's pixels (no BLAS: it starts no threads).

    Examples
    --------
    >>> area_matrix(np.array([0.0, 1.5, 3.0]), 3).toarray().tolist()
    [[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]
    """
    from scipy import sparse

    lo = np.floor(edges[:-1]).astype(np.intp)
    hi = np.minimum(np.ceil(edges[1:]).astype(np.intp), n)
    counts = np.maximum(hi - lo, 0)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cell = np.repeat(np.arange(len(counts)), counts)
    p = lo[cell] + np.arange(indptr[-1]) - indptr[:-1][cell]
    w = np.minimum(p + 1, edges[1:][cell]) - np.maximum(p, edges[:-1][cell])
    return sparse.csr_matrix((np.maximum(w, 0), p, indptr), shape=(len(counts), n))


def area_average(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel of ``shape`` the mean of the pixels of ``image`` under it.

    GDAL's average resampling, with exact area weights where a coarse pixel
    cuts full-resolution ones (what :func:`tiledepth.fusion.coarse.as_coarse_sees` assumes).

    Parameters
    ----------
    image : ndarray of shape (C, H, W)
    shape : tuple of int
        (h, w), each at most (H, W).

    Returns
    -------
    ndarray of shape (C, h, w), float32

    Examples
    --------
    >>> area_average(np.arange(8.0).reshape(1, 2, 4), (1, 2)).tolist()
    [[[2.5, 4.5]]]
    >>> area_average(np.arange(3.0).reshape(1, 1, 3), (1, 2)).astype(float).round(4).tolist()
    [[[0.3333, 1.6667]]]
    """
    (h, w), (_, big_h, big_w) = shape, image.shape
    rows, cols = (area_matrix(np.arange(k + 1) * (n / k), n).astype(np.float32) / np.float32(n / k)
                  for k, n in ((h, big_h), (w, big_w)))  # (h, H) and (w, W)
    out = np.empty((image.shape[0], h, w), np.float32)
    for band, plane in enumerate(image.astype(np.float32, copy=False)):
        out[band] = (cols @ (rows @ plane).T).T  # (h, W), then (h, w)
    return out


def tile_cells(pred: np.ndarray, valid: np.ndarray, window: Window,
               full_shape: tuple[int, int], grid_shape: tuple[int, int], blur: float):
    """A tile's averages over the coarse grid's cells (valid pixels only, exact area
    weights, empty cells filled from their neighbours, then :func:`blur_cells`), float64,
    and along rows and columns the bilinear taps back to the tile's pixels (lower and
    upper cells, upper weights) and which pixels use only cells wholly inside the tile."""
    (h, w), (ch, cw) = full_shape, grid_shape
    th, tw = pred.shape
    er, r_lo, r_hi, fr, ok_r = _cell_taps(int(window.row_off), th, h, ch)  # er: cell edges
    ec, c_lo, c_hi, fc, ok_c = _cell_taps(int(window.col_off), tw, w, cw)
    everywhere = valid.all()
    values = (pred if everywhere else np.where(valid, pred, 0)).astype(np.float32, copy=False)
    num = area_sums(area_sums(values, er, 0), ec, 1)  # (cells, cells)
    den = np.outer(np.diff(er), np.diff(ec)) if everywhere else \
        area_sums(area_sums(valid.astype(np.float32), er, 0), ec, 1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a clipped cell may be empty
        cells = num / den
    cells = blur_cells(fill_invalid(cells, den > 0).astype(np.float64), blur)
    return cells, (r_lo, r_hi, fr, ok_r), (c_lo, c_hi, fc, ok_c)


def cell_coverage(valid: np.ndarray, window: Window, full_shape: tuple[int, int],
                  grid_shape: tuple[int, int]) -> np.ndarray:
    """The fraction of each of a tile's coarse cells (as :func:`tile_cells` clips them to
    the tile) that ``valid`` pixels cover, float64 of the cells' shape: 1 where every pixel
    of the cell is valid.

    Examples
    --------
    >>> valid = np.ones((4, 4), bool); valid[0, :2] = False
    >>> cell_coverage(valid, Window(0, 0, 4, 4), (4, 4), (2, 2)).tolist()
    [[0.5, 1.0], [1.0, 1.0]]
    """
    (h, w), (ch, cw) = full_shape, grid_shape
    th, tw = valid.shape
    er = _cell_taps(int(window.row_off), th, h, ch)[0]
    ec = _cell_taps(int(window.col_off), tw, w, cw)[0]
    area = np.outer(np.diff(er), np.diff(ec))
    covered = area_sums(area_sums(valid.astype(np.float64), er, 0), ec, 1)
    return np.divide(covered, area, out=np.zeros(area.shape), where=area > 0)


def blur_cells(cells: np.ndarray, sigma: float) -> np.ndarray:
    """A tile's cell averages as a blurry coarse map sees them: a Gaussian of ``sigma``
    cells, the edge cells repeated beyond the tile (0: unchanged).

    A model's prediction is smoother than the average of the pixels under each of
    its pixels (Marigold decodes from a latent grid 8x coarser, Depth Anything from
    14 px patches). Comparing the tile with the coarse map through the same blur
    keeps detail the coarse map has lost from biasing the tile's scale
    (BENCHMARKS.md, "Fusion quality").

    Examples
    --------
    >>> blur_cells(np.array([[0.0, 0.0, 3.0, 0.0, 0.0]]), 1.0).round(2).tolist()
    [[0.16, 0.73, 1.2, 0.73, 0.16]]
    """
    if sigma <= 0:
        return cells
    from scipy import ndimage  # imported where needed (a slow import)

    return ndimage.gaussian_filter(cells, sigma, mode="nearest")


def _cell_taps(start: int, length: int, full: int, grid: int):
    """Along one axis of a tile: the coarse cells' edges in tile pixels (clipped to the
    tile), bilinear taps into those cells and their upper weights, and which pixels
    interpolate between cells wholly inside the tile only."""
    ratio = full / grid  # pixels per cell
    first = int(start // ratio)
    last = min(int(np.ceil((start + length) / ratio)) - 1, grid - 1)
    edges = np.arange(first, last + 2) * ratio - start  # cell boundaries, tile pixels
    whole = (edges[:-1] >= -1e-9) & (edges[1:] <= length + 1e-9)
    lo, hi, frac = linear_taps(start, length, grid / full, grid)
    lo, hi = (np.clip(x, first, last) - first for x in (lo, hi))
    return np.clip(edges, 0, length), lo, hi, frac, whole[lo] & whole[hi]


def area_sums(a: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Integrals of ``a`` (constant over each pixel) between consecutive ``edges``
    (sorted fractional pixel positions from 0 to the axis length), by a sparse
    product with :func:`area_matrix` (faster than ``np.add.reduceat``; BENCHMARKS.md)."""
    m = area_matrix(edges, a.shape[axis]).astype(a.dtype, copy=False)
    return m @ a if axis == 0 else (m @ a.T).T


def fill_invalid(coarse: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of the coarse prediction with the nearest valid value.

    So that upsampling near mask edges never mixes in junk. Returns a copy.
    """
    out = np.array(coarse, dtype=np.float32)
    if valid.all() or not valid.any():
        return out
    from scipy import ndimage  # slow to import: only where a mask needs filling

    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return out[tuple(idx)]


def upsample_window(coarse: np.ndarray, full_shape: tuple[int, int], window: Window, *,
                    grid_shape: tuple[int, int] | None = None,
                    origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Bilinear upsampling of the coarse map, evaluated on one full-resolution window.

    Pixel centres are aligned (half-pixel convention): full-resolution pixel
    ``r`` sits at coarse coordinate ``(r + 0.5) * ch / H - 0.5``; coordinates
    beyond the border take the border value.

    Parameters
    ----------
    coarse : ndarray of shape (ch, cw)
        The coarse prediction, without invalid values (see :func:`fill_invalid`).
    full_shape : tuple of int
        (H, W) of the full-resolution raster.
    window : rasterio.windows.Window
        The window to evaluate.
    grid_shape : tuple of int, optional
        Shape of the whole coarse grid when ``coarse`` is only a crop of it
        (default: ``coarse.shape``).
    origin : tuple of int
        (row, col) of the crop's top-left pixel in the whole coarse grid; the
        crop must hold every coarse pixel the window needs.

    Returns
    -------
    ndarray of shape (window.height, window.width), float32
    """
    ch, cw = coarse.shape if grid_shape is None else grid_shape
    h, w = full_shape
    r_lo, r_hi, fr = linear_taps(int(window.row_off), int(window.height), ch / h, ch)
    c_lo, c_hi, fc = linear_taps(int(window.col_off), int(window.width), cw / w, cw)
    r_lo, r_hi = r_lo - origin[0], r_hi - origin[0]
    c_lo, c_hi = c_lo - origin[1], c_hi - origin[1]
    c0, c1 = int(c_lo.min()), int(c_hi.max()) + 1  # only the coarse columns in use
    return interpolate(coarse[:, c0:c1], r_lo, r_hi, fr, c_lo - c0, c_hi - c0, fc)


def interpolate(grid: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray, fr: np.ndarray,
                c_lo: np.ndarray, c_hi: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """Separable bilinear interpolation of ``grid`` at the taps of :func:`linear_taps`:
    along rows first, then along columns; (len(r_lo), len(c_lo)) float32."""
    rows = grid[r_lo] * (1 - fr)[:, None] + grid[r_hi] * fr[:, None]
    return (rows[:, c_lo] * (1 - fc) + rows[:, c_hi] * fc).astype(np.float32)


def coarse_extent(window: Window, full_shape: tuple[int, int],
                  grid_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The (rows, cols) slices of a coarse grid that :func:`upsample_window` reads for a window."""
    (h, w), (ch, cw) = full_shape, grid_shape
    r_lo, r_hi, _ = linear_taps(int(window.row_off), int(window.height), ch / h, ch)
    c_lo, c_hi, _ = linear_taps(int(window.col_off), int(window.width), cw / w, cw)
    return slice(int(r_lo.min()), int(r_hi.max()) + 1), slice(int(c_lo.min()), int(c_hi.max()) + 1)


def linear_taps(start: int, length: int, ratio: float,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper coarse indices and the upper weight (float32) for the
    full-resolution pixels ``start, ..., start + length - 1``: :func:`point_taps`."""
    lo, hi, weight = point_taps(np.arange(start, start + length), ratio, size)
    return lo, hi, weight.astype(np.float32)


def point_taps(pixels: np.ndarray, ratio: float,
               size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper coarse indices and the upper weight (float64) for full-resolution
    pixel indices ``pixels``, any shape.

    Full-resolution pixel ``i`` sits at coarse coordinate ``(i + 0.5) * ratio - 0.5``,
    clamped to the coarse grid.
    """
    x = np.clip((np.asarray(pixels) + 0.5) * ratio - 0.5, 0, size - 1)
    lo = np.minimum(np.floor(x).astype(np.intp), max(size - 2, 0))
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, x - lo
