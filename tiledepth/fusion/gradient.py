"""Gradient-domain fusion: the blended tiles' detail, the anchor's low frequencies.

Per-tile value maps (:mod:`.maps`) cannot undo an error that bends within a tile (a power
law, a smooth warp). The gradient-domain fusion keeps the blended map ``B`` (each tile
mapped, then feathered) for its gradients and takes the low frequencies from the anchor
``c``: it finds ``u`` minimising

    ``sum |grad u - grad B|^2 + lam * |K u - c|^2``

with ``K`` "as the anchor sees it" (the area average onto the anchor's cells, then the
anchor's blur, as :func:`tiledepth.fusion.coarse.as_coarse_sees`). With ``u = B + v`` and
``v`` smooth, ``v`` lives on the anchor's grid and solves the screened Poisson equation

    ``(lam G^T G - Laplacian) v = lam G^T r``,   ``r = c - K B``

(``G`` the blur), which the type-II DCT diagonalises (Neumann borders): one forward and one
inverse transform of anchor-sized arrays, O(N log N) (Kazhdan and Hoppe 2008 and Agarwala
2007 solve it streamed over gigapixels; here the solve is on the anchor's grid alone, so a
"coarse solve plus per-window corrections"). The output is then ``B + upsample(v)`` window
by window (:func:`tiledepth.fusion.resample.upsample_window`): memory stays anchor-sized.

``K B`` is taken without blending the raster twice: one pass over the mapped tiles sums
each one's pixels, weighted by its blending weight, over the anchor's cells
(:func:`anchor_cells`).

``lam`` sets the crossover wavelength in anchor cells (:func:`crossover`): longer
wavelengths of ``r`` go into ``v``, shorter ones (the anchor's noise and blur, the tiles'
detail) stay the tiles'. The anchor's blur ``G`` is measured rather than assumed where the
option leaves it automatic (:func:`estimate_blur`: the Gaussian that best turns the tiles'
cell averages into the anchor at wavelengths shorter than the tiles' own errors). Pure
NumPy/SciPy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tiledepth.fusion.blend import BlendPart, tile_ramps
from tiledepth.fusion.maps import BilinearMap, unit
from tiledepth.fusion.resample import (
    _cell_taps,
    area_matrix,
    blur_cells,
    fill_invalid,
    point_taps,
)
from tiledepth.fusion.solve import ROBUST_K
from tiledepth.tiling import Tile

__all__ = ["BLURS", "BLUR_MIN_CELLS", "BLUR_MISMATCH", "BLUR_TILES", "CROSSOVER_BLURS",
           "COVERED", "CROSSOVER_MAX_CALL", "CROSSOVER_MIN_CELLS", "CROSSOVER_TILES",
           "OUTLIER_FLOOR", "OUTLIER_K", "anchor_cells", "correction", "correction_at",
           "crossover", "estimate_blur", "gross_residuals", "screened_poisson", "weight_profiles"]

#: The crossover wavelength, in tiles: the anchor's residual at wavelengths longer than this
#: many tiles' widths goes into the correction (a bowl within a tile has about two tiles'
#: wavelength), shorter ones stay the tiles'.
CROSSOVER_TILES = 0.5
#: The most the anchor's blur may differ from what it is assumed to be (``--anchor-blur``) at
#: the crossover, as a fraction of the amplitude: a Gaussian of sigma ``s`` keeps
#: ``exp(-2 pi^2 s^2 / L^2)`` of a wave of length ``L``, so ``1 - g <= eps`` for
#: ``L >= pi s sqrt(2 / eps)``. A sharp model against the assumed blur then gains at most
#: this much of its detail's amplitude there (and less beyond).
BLUR_MISMATCH = 0.02
#: ... the crossover never below this many times the anchor's blur (sigma), so its blur (and
#: its noise) does not pass into the map: ``pi sqrt(2 / BLUR_MISMATCH)`` (31.4).
CROSSOVER_BLURS = float(np.pi * np.sqrt(2 / BLUR_MISMATCH))
#: ... nor below this many anchor cells (Nyquist and the noise of single cells).
CROSSOVER_MIN_CELLS = 4.0
#: A cell's residual is gross (the anchor wrong there) beyond this many robust standard
#: deviations (the robust solve's :data:`tiledepth.fusion.solve.ROBUST_K`) ...
OUTLIER_K = ROBUST_K
#: ... and this fraction of the value range: a tile's smooth warp stays under it.
OUTLIER_FLOOR = 0.05
#: The blurs :func:`estimate_blur` tries, in anchor cells: 0 to 8 by quarters.
BLURS = np.arange(0, 33) / 4
#: :func:`estimate_blur` compares the anchor with the tiles at wavelengths shorter than this
#: many tiles (never fewer than ``BLUR_MIN_CELLS`` cells): a tile's own errors (normalisation,
#: warps) are at longer ones, so the two differ there by the anchor's blur and noise only.
BLUR_TILES = CROSSOVER_TILES
BLUR_MIN_CELLS = 8.0
#: The anchor is trusted at wavelengths up to this fraction of the model calls it was made
#: of (an anchor's own errors, like a tile's, are at its call's scale: normalisation, warps):
#: no correction where the crossover is longer (the per-tile solve, whose overlaps average
#: the anchor's call errors, is kept there).
CROSSOVER_MAX_CALL = 0.5
#: A cell ties the correction to the anchor only where valid pixels cover at least this
#: fraction of it (:func:`anchor_cells`' ``coverage``): in a cell cut by a mask the tiles'
#: average is over its valid part only, while the anchor there is the coarse prediction of
#: the whole cell (or filled from a neighbour), so their difference is no error of the tiles.
COVERED = 0.99


def crossover(cells_per_tile: float, blur: float) -> float:
    """The crossover wavelength in anchor cells, from the geometry alone.

    ``max(CROSSOVER_TILES * cells_per_tile, CROSSOVER_BLURS * blur, CROSSOVER_MIN_CELLS)``.

    Parameters
    ----------
    cells_per_tile : float
        Anchor cells across a tile.
    blur : float
        The anchor's blur, a Gaussian's sigma in its cells.

    Examples
    --------
    >>> crossover(48.0, 0.0)
    24.0
    >>> round(crossover(48.0, 1.5), 1)
    47.1
    """
    return float(max(CROSSOVER_TILES * cells_per_tile, CROSSOVER_BLURS * blur,
                     CROSSOVER_MIN_CELLS))


def weight_profiles(grid: list[list[Tile]], full_shape: tuple[int, int],
                    ramp: int) -> tuple[np.ndarray, np.ndarray]:
    """The blend's total weight along rows and columns: ``(R (H,), C (W,))``.

    Tiles form a product grid (every row of tiles has the same columns), so the sum of
    their weights at a pixel is ``R[row] * C[col]`` (ignoring masks and yielding tiles).

    Examples
    --------
    >>> from tiledepth.tiling import tile_grid
    >>> r, c = weight_profiles(tile_grid(8, 12, 8, 0.5), (8, 12), 4)
    >>> r.tolist() == [1.0] * 8, float(c.min()) > 0.9
    (True, True)
    """
    rows, cols = np.zeros(full_shape[0]), np.zeros(full_shape[1])
    for tile in (row[0] for row in grid):
        r0 = int(tile.window.row_off)
        rows[r0:r0 + tile.shape[0]] += tile_ramps(tile, ramp)[0]
    for tile in grid[0]:
        c0 = int(tile.window.col_off)
        cols[c0:c0 + tile.shape[1]] += tile_ramps(tile, ramp)[1]
    return rows, cols


def anchor_cells(parts: Iterable[BlendPart], full_shape: tuple[int, int],
                 grid_shape: tuple[int, int], *, ramp: int,
                 profiles: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The blended map of ``parts`` averaged over the anchor's cells, from one pass over
    the tiles.

    Each mapped tile's pixels, weighted by its blending weight (:func:`tile_ramps`, its
    validity and ``part.weight``), are summed over the cells with exact area weights
    (:func:`tiledepth.fusion.resample.area_matrix`); the cell's value is the sum over the
    tiles over the sum of their weights. Where the tiles agree this is exactly the cell
    average of the blend; where they differ, the weighted mean of their cell averages.

    Parameters
    ----------
    parts : iterable of BlendPart
        Every tile's part (as :func:`tiledepth.fusion.blend_window` takes them).
    full_shape, grid_shape : tuple of int
        (H, W) of the raster and of the anchor's grid.
    ramp : int
        The blend's taper width in pixels.
    profiles : tuple of ndarray, optional
        :func:`weight_profiles` of the tiles' grid.

    Returns
    -------
    ndarray of shape grid_shape, float64
        NaN in cells no valid tile pixel covers.

    Examples
    --------
    >>> from rasterio.windows import Window
    >>> from tiledepth.tiling import tile_grid
    >>> tiles = [t for row in tile_grid(8, 8, 8, 0.0) for t in row]
    >>> part = BlendPart(tiles[0], np.arange(64.0).reshape(8, 8), np.ones((8, 8), bool))
    >>> anchor_cells([part], (8, 8), (2, 2), ramp=0).tolist()
    [[13.5, 17.5], [45.5, 49.5]]
    """
    return _anchor_pass(parts, full_shape, grid_shape, ramp=ramp, profiles=profiles)[0]


def _anchor_pass(parts: Iterable[BlendPart], full_shape: tuple[int, int],
                 grid_shape: tuple[int, int], *, ramp: int,
                 profiles: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`anchor_cells`, and the fraction of each cell that valid pixels cover (the
    same pass: the tiles' validity summed with their blending weights but not
    ``part.weight``).

    With ``profiles`` the blending weights sum to 1 at every pixel of the raster, so the
    fraction is of the cell's whole area (a cell is the same area everywhere, the raster's
    last ones included); without, of the weight of the tiles given (a pixel of no tile
    given does not count).

    Returns
    -------
    cells : ndarray of shape grid_shape, float64
        As :func:`anchor_cells`.
    coverage : ndarray of shape grid_shape, float64
        0 to 1 (to rounding); 1 in a cell every pixel of which is valid.
    """
    (h, w), (ch, cw) = full_shape, grid_shape
    num = np.zeros((ch, cw))
    den = np.zeros((ch, cw))
    valid_w = np.zeros((ch, cw))  # the valid pixels' blending weights, without part.weight
    total_w = np.zeros((ch, cw))  # every pixel's
    for part in parts:
        tile = part.tile
        th, tw = tile.shape
        r0, c0 = int(tile.window.row_off), int(tile.window.col_off)
        edges_r, edges_c = _cell_taps(r0, th, h, ch)[0], _cell_taps(c0, tw, w, cw)[0]
        fr, fc = int(r0 // (h / ch)), int(c0 // (w / cw))
        rows, cols = tile_ramps(tile, ramp)
        if profiles is not None:
            rows = rows / profiles[0][r0:r0 + th]
            cols = cols / profiles[1][c0:c0 + tw]
        a_r = area_matrix(edges_r, th).multiply(rows[None, :] * part.weight).tocsr() \
            .astype(np.float32)  # (cells, th): area and blending weights
        a_c = area_matrix(edges_c, tw).multiply(cols[None, :]).tocsr().astype(np.float32)
        cells, weight = _cell_sums(part, a_r, a_c)
        sl = (slice(fr, fr + cells.shape[0]), slice(fc, fc + cells.shape[1]))
        num[sl] += cells
        den[sl] += weight
        if part.weight > 0:
            valid_w[sl] += weight / part.weight
            if profiles is None:  # with profiles, coverage is against the cell's area
                total_w[sl] += np.outer(np.asarray(a_r.sum(axis=1)).ravel(),
                                      np.asarray(a_c.sum(axis=1)).ravel()) / part.weight
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
        coverage = valid_w / (total_w if profiles is None else (h / ch) * (w / cw))
    out[den <= 0] = np.nan
    coverage[~(den > 0)] = 0.0
    return out, coverage


def _cell_sums(part: BlendPart, a_r, a_c) -> tuple[np.ndarray, np.ndarray]:
    """A mapped tile's weighted sums over the cells, and its weights' sums:
    ``A_r (w * value) A_c^T`` and ``A_r w A_c^T`` with the weights folded into the sparse
    ``a_r`` (cells, h) and ``a_c`` (cells, w), validity as a 0/1 weight.

    The map is never evaluated on the pixels: with constants, ``value = s p + t`` gives
    ``s A_r p A_c^T + t A_r 1 A_c^T``; with bilinear fields (:class:`BilinearMap`) each
    corner's weight is a row weight times a column weight, so the sums are those of two
    row-weighted products ``(A_r diag(a)) p``, each column-weighted twice. Other fields
    (arrays of the tile's shape) are evaluated.
    """
    pred, valid = part.pred, part.valid
    everywhere = bool(valid.all())
    p = pred if everywhere else np.where(valid, pred, 0)
    ok = None if everywhere else valid.astype(np.float32)
    p = p.astype(np.float32, copy=False)
    scale, shift = part.scale, part.shift

    def sandwich(r, x, c):  # r @ x @ c.T, x dense (h, w); None: ones
        if x is None:
            return np.outer(np.asarray(r.sum(axis=1)).ravel(), np.asarray(c.sum(axis=1)).ravel())
        return (c @ np.ascontiguousarray((r @ x).T)).T

    if np.isscalar(scale) and np.isscalar(shift):
        weight = sandwich(a_r, ok, a_c)
        return float(scale) * sandwich(a_r, p, a_c) + float(shift) * weight, weight
    if isinstance(scale, BilinearMap) and isinstance(shift, BilinearMap) \
            and not (scale.absolute or shift.absolute):
        th, tw = p.shape
        u, v = unit(th).astype(np.float32), unit(tw).astype(np.float32)
        rows = [a_r.multiply(x[None, :]).tocsr() for x in (1 - u, u)]  # top, bottom
        cols = [a_c.multiply(x[None, :]).tocsr() for x in (1 - v, v)]  # left, right
        total = 0.0
        weight = 0.0
        for i, r in enumerate(rows):
            left = np.ascontiguousarray((r @ p).T)  # (w, cells)
            for j, c in enumerate(cols):
                k = 2 * i + j  # corners: top-left, top-right, bottom-left, bottom-right
                w_k = sandwich(r, ok, c)
                total = total + scale.corners[k] * (c @ left).T + shift.corners[k] * w_k
                weight = weight + w_k
        return total, weight
    value = np.multiply(p, scale if np.isscalar(scale) else scale[:, :], dtype=np.float32)
    value += shift if np.isscalar(shift) else shift[:, :]
    if ok is not None:
        value *= ok
    return sandwich(a_r, value, a_c), sandwich(a_r, ok, a_c)


def estimate_blur(seen: np.ndarray, anchor: np.ndarray, *, longest: float) -> float:
    """The anchor's blur, a Gaussian's sigma in its cells, measured against the tiles.

    The sigma of :data:`BLURS` that minimises ``sum |c_k - g_k s_k|^2`` over the type-II
    DCT coefficients ``k`` of wavelengths shorter than ``longest`` cells (``c`` the anchor,
    ``s`` the tiles' cell averages, both less their means; ``g`` the Gaussian's transfer,
    as in :func:`screened_poisson`). The sums are binned by frequency first, so each sigma
    costs a few hundred operations.

    Parameters
    ----------
    seen : ndarray of shape (h, w)
        The blend's averages over the anchor's cells (:func:`anchor_cells`), finite.
    anchor : ndarray of shape (h, w)
    longest : float
        The longest wavelength compared, in cells (shorter than the tiles' own errors).

    Returns
    -------
    float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = rng.standard_normal((96, 128))
    >>> estimate_blur(cells, blur_cells(cells, 1.5), longest=24.0)
    1.5
    >>> estimate_blur(cells, cells + 0.01 * rng.standard_normal(cells.shape), longest=24.0)
    0.0
    """
    from scipy import fft

    s = fft.dctn(seen - seen.mean(), type=2, norm="ortho")
    c = fft.dctn(anchor.astype(np.float64) - anchor.mean(), type=2, norm="ortho")
    omega = [np.pi * np.arange(n) / n for n in seen.shape]
    w2 = omega[0][:, None] ** 2 + omega[1][None, :] ** 2  # (h, w), up to 2 pi^2
    band = w2 > (2 * np.pi / longest) ** 2
    bins = np.minimum((w2[band] * (512 / (2 * np.pi ** 2))).astype(np.intp), 511)
    ss = np.bincount(bins, s[band] ** 2, minlength=512)
    cs = np.bincount(bins, c[band] * s[band], minlength=512)
    mid = (np.arange(512) + 0.5) * (2 * np.pi ** 2 / 512)  # each bin's frequency squared
    # sum |c - g s|^2 = sum c^2 - 2 g (c s) + g^2 s^2; sum c^2 does not depend on sigma
    cost = [float(np.sum(g * g * ss - 2 * g * cs))
            for g in (np.exp(-0.5 * b * b * mid) for b in BLURS)]
    return float(BLURS[int(np.argmin(cost))])


def screened_poisson(residual: np.ndarray, *, wavelength: float,
                     blur: float = 0.0) -> np.ndarray:
    """The smooth ``v`` that minimises ``lam |G v - r|^2 + |grad v|^2`` on a grid.

    Solved in the type-II DCT basis (reflecting borders), where the discrete Laplacian and
    a Gaussian blur ``G`` are both diagonal: ``v_k = lam g_k r_k / (lam g_k^2 + l_k)``,
    ``l_k`` the Laplacian's eigenvalues, ``g_k`` the blur's, ``lam = (2 pi / wavelength)^2``
    (at that wavelength the two terms weigh the same).

    Parameters
    ----------
    residual : ndarray of shape (h, w)
        ``r``, finite.
    wavelength : float
        The crossover wavelength in cells: much longer ones of ``r`` pass into ``v``,
        much shorter ones do not.
    blur : float
        ``G``'s sigma in cells; 0: none.

    Returns
    -------
    ndarray of shape (h, w), float64

    Examples
    --------
    >>> v = screened_poisson(np.full((4, 6), 2.0), wavelength=8.0)
    >>> bool(np.allclose(v, 2.0))
    True
    """
    from scipy import fft

    lam = (2 * np.pi / wavelength) ** 2
    omega = [np.pi * np.arange(n) / n for n in residual.shape]  # per axis, radians per cell
    lap = [2 - 2 * np.cos(o) for o in omega]
    ell = lap[0][:, None] + lap[1][None, :]
    g = np.exp(-0.5 * blur * blur * (omega[0][:, None] ** 2 + omega[1][None, :] ** 2))
    spectrum = fft.dctn(residual.astype(np.float64), type=2, norm="ortho")
    spectrum *= lam * g / (lam * g * g + ell)
    return fft.idctn(spectrum, type=2, norm="ortho")


def gross_residuals(residual: np.ndarray, covered: np.ndarray, *,
                    value_range: float) -> np.ndarray:
    """Cells where the anchor disagrees grossly with the tiles: ``|r - median(r)|`` beyond
    ``OUTLIER_K`` robust standard deviations (1.4826 MAD) and beyond ``OUTLIER_FLOOR`` of
    the value range. There the anchor is wrong (an inverted or misplaced patch of the
    coarse prediction), not the tiles' smooth warps: its residual is left out (the
    neighbours' is used), as the robust solve leaves out gross terms.

    Examples
    --------
    >>> r = np.zeros((4, 4)); r[1, 2] = 0.5; r[0, 0] = 0.01
    >>> gross_residuals(r, np.ones((4, 4), bool), value_range=1.0).sum()
    np.int64(1)
    """
    dev = np.abs(residual - np.median(residual[covered]))
    typical = 1.4826 * float(np.median(dev[covered]))
    return covered & (dev > max(OUTLIER_K * typical, OUTLIER_FLOOR * value_range))


def correction(parts: Iterable[BlendPart], anchor: np.ndarray, full_shape: tuple[int, int],
               *, ramp: int, cells_per_tile: float, blur: float | None = None,
               profiles: tuple[np.ndarray, np.ndarray] | None = None,
               value_range: float = 1.0) -> tuple[np.ndarray, float, float]:
    """The gradient-domain correction of a blend on the anchor's grid.

    ``v`` of :func:`screened_poisson` for ``r = anchor - K B``: ``B`` the blend of
    ``parts``, ``K B`` its cell averages (:func:`anchor_cells`) blurred as the anchor is
    (:func:`tiledepth.fusion.resample.blur_cells`), the crossover of :func:`crossover`.
    Cells no tile covers, cells a mask cuts (valid pixels cover under :data:`COVERED` of
    them; all covered cells count where no cell is whole), and cells whose residual is
    gross (:func:`gross_residuals`), take the residual of the nearest other cell. Add
    ``upsample_window(v, full_shape, window)`` to each blended window.

    Parameters
    ----------
    parts : iterable of BlendPart
    anchor : ndarray of shape (ch, cw)
        The anchor, without NaN.
    full_shape : tuple of int
        (H, W) of the raster.
    ramp : int
        The blend's taper width.
    cells_per_tile : float
        Anchor cells across a tile.
    blur : float, optional
        The anchor's blur in its cells; None: measured (:func:`estimate_blur`, at
        wavelengths under ``BLUR_TILES`` tiles).
    profiles : tuple of ndarray, optional
        :func:`weight_profiles` of the tiles' grid.
    value_range : float
        The anchor's value range (2-98 %), for :func:`gross_residuals`.

    Returns
    -------
    v : ndarray of shape (ch, cw), float32
    blur : float
        The blur used.
    wavelength : float
        The crossover used, in anchor cells.
    """
    seen, coverage = _anchor_pass(parts, full_shape, anchor.shape, ramp=ramp,
                                  profiles=profiles)  # (ch, cw)
    covered = np.isfinite(seen)
    if not covered.any():
        return np.zeros(anchor.shape, np.float32), blur or 0.0, \
            crossover(cells_per_tile, blur or 0.0)
    filled = fill_invalid(seen, covered).astype(np.float64)
    if blur is None:  # on every covered cell: where only whole cells were kept, the
        # tiles' fill would differ from the anchor's own (of its masked cells) at short
        # wavelengths, and that reads as blur
        blur = estimate_blur(filled, anchor, longest=max(BLUR_TILES * cells_per_tile,
                                                         BLUR_MIN_CELLS))
    # A cell cut by a mask compares the tiles' average over its valid part with an anchor
    # of the whole cell (or one filled from a neighbour): a false residual, which the
    # smooth correction would carry into the valid area. Such cells take the residual of
    # the nearest whole cell, as uncovered ones do; where no cell is whole (a thin strip,
    # small islands), every covered one is kept.
    whole = covered & (coverage >= COVERED)
    if whole.any() and not np.array_equal(whole, covered):
        covered = whole
        filled = fill_invalid(seen, covered).astype(np.float64)
    wavelength = crossover(cells_per_tile, blur)
    residual = anchor - blur_cells(filled, blur)  # (ch, cw)
    trusted = covered & ~gross_residuals(residual, covered, value_range=value_range)
    residual = fill_invalid(residual, trusted if trusted.any() else covered)
    v = screened_poisson(residual, wavelength=wavelength, blur=blur)
    return v.astype(np.float32), blur, wavelength


def correction_at(v: np.ndarray, full_shape: tuple[int, int], rows: np.ndarray,
                  cols: np.ndarray) -> np.ndarray:
    """The upsampled correction at scattered pixels ``(rows[i], cols[i])``, as
    :func:`tiledepth.fusion.resample.upsample_window` interpolates it.

    Returns
    -------
    ndarray of shape rows.shape, float32
    """
    (h, w), (ch, cw) = full_shape, v.shape
    r_lo, r_hi, fr = point_taps(rows, ch / h, ch)
    c_lo, c_hi, fc = point_taps(cols, cw / w, cw)
    top = v[r_lo, c_lo] * (1 - fc) + v[r_lo, c_hi] * fc
    bottom = v[r_hi, c_lo] * (1 - fc) + v[r_hi, c_hi] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)
