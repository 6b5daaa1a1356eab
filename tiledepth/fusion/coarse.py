"""A tile as the coarse map sees it, and its statistics against the coarse map.

Each tile meets the coarse prediction as the coarse prediction sees it
(:func:`as_coarse_sees`): averaged over the coarse cells, blurred as the model
blurred its coarse prediction (:func:`tiledepth.fusion.resample.blur_cells`),
upsampled the same way. For whole tiles :func:`coarse_tile_stats` takes those sums
on the cells: both maps are bilinear interpolations of cell grids, so every sum
over the pixels is a small product of cell arrays with banded tap matrices. Pure
NumPy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rasterio.windows import Window

from tiledepth.fusion.gradient import COVERED
from tiledepth.fusion.maps import corner_count, unit
from tiledepth.fusion.resample import (
    blur_cells,
    cell_coverage,
    coarse_extent,
    interpolate,
    linear_taps,
    tile_cells,
    upsample_window,
)
from tiledepth.fusion.stats import TileStats, TileTable, tile_stats

__all__ = ["BLUR_CANDIDATES", "as_coarse_sees", "blurred_tile_stats", "coarse_tile_stats",
           "pick_blur"]

#: The anchor blurs (a Gaussian's sigma in the anchor's pixels) an automatic anchor blur
#: picks from (:func:`pick_blur`): 0 for a sharp model (or an exactly consistent one), up to
#: a heavy blur, as from a model that decodes from a coarse latent.
BLUR_CANDIDATES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: :func:`pick_blur` leaves out tiles whose own fit's mean square residual exceeds this many
#: times the median one (grossly wrong tiles, wrong patches of the anchor).
BLUR_OUTLIER = 9.0

def as_coarse_sees(pred: np.ndarray, valid: np.ndarray, window: Window,
                   full_shape: tuple[int, int], grid_shape: tuple[int, int], *,
                   blur: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A tile prediction at the coarse prediction's resolution, back on the tile's pixels.

    The tile is averaged over the coarse grid's cells (as the coarse image was
    read: each coarse pixel the average of the full-resolution pixels under
    it), then upsampled with the bilinear taps of :func:`upsample_window`. Fitting
    this, rather than the tile itself, to the upsampled coarse prediction
    compares like with like: detail the coarse map cannot have no longer
    biases the tile's scale toward zero (regression dilution; BENCHMARKS.md,
    "Fusion quality").

    Parameters
    ----------
    pred : ndarray of shape (h, w)
        The tile's raw prediction.
    valid : ndarray of shape (h, w), bool
    window : rasterio.windows.Window
        The tile's window in the full-resolution raster.
    full_shape, grid_shape : tuple of int
        (H, W) of the raster and of the coarse grid.
    blur : float
        The coarse map's own blur, a Gaussian's sigma in coarse pixels, applied
        to the cell averages (:func:`tiledepth.fusion.resample.blur_cells`); 0: none.

    Returns
    -------
    seen : ndarray of shape (h, w), float32
        ``pred`` itself where the coarse grid is not coarser than the raster.
    usable : ndarray of shape (h, w), bool
        Pixels interpolated from cells wholly inside the tile: a cell the
        tile's edge cuts does not hold the average the coarse pixel saw. Under
        a mask, also only from cells valid pixels (nearly) cover
        (:data:`tiledepth.fusion.gradient.COVERED`), where any pixel is left:
        a cell the mask cuts holds the average of its valid part, the coarse
        map there the prediction of the whole cell or one filled from a
        neighbour. All True when no pixel would be left.

    Examples
    --------
    >>> pred = np.arange(16.0).reshape(4, 4); ok = np.ones((4, 4), bool)
    >>> seen, usable = as_coarse_sees(pred, ok, Window(0, 0, 4, 4), (4, 4), (1, 1))
    >>> seen[0].tolist(), bool(usable.all())
    ([7.5, 7.5, 7.5, 7.5], True)
    """
    (h, w), (ch, cw) = full_shape, grid_shape
    if ch >= h and cw >= w:
        return pred, np.ones(pred.shape, bool)
    cells, (r_lo, r_hi, fr, ok_r), (c_lo, c_hi, fc, ok_c) = tile_cells(
        pred, valid, window, full_shape, grid_shape, blur)
    seen = interpolate(cells, r_lo, r_hi, fr, c_lo, c_hi, fc)
    usable = np.outer(ok_r, ok_c)
    if not valid.all():
        # a cell a mask cuts: the tile's average over its valid part is compared with the
        # coarse prediction of the whole cell (or one filled from the nearest valid cell),
        # a difference that is no error of the tile (as the gradient fusion's COVERED)
        whole = cell_coverage(valid, window, full_shape, grid_shape) >= COVERED
        taps_whole = (whole[np.ix_(r_lo, c_lo)] & whole[np.ix_(r_lo, c_hi)]
                      & whole[np.ix_(r_hi, c_lo)] & whole[np.ix_(r_hi, c_hi)])
        if (usable & taps_whole & valid).any():  # else as before: every cut cell counts
            usable &= taps_whole
    if not (usable & valid).any():
        usable[:] = True
    return seen, usable


def coarse_tile_stats(tile_id: int, pred: np.ndarray, valid: np.ndarray, window: Window,
                      full_shape: tuple[int, int], coarse: np.ndarray, *,
                      alignment: str = "affine", blur: float = 0.0) -> TileStats:
    """Statistics of a tile, as the coarse map sees it, against the coarse map under it.

    The same sums as ``tile_stats(seen, valid & usable, upsample_window(coarse, ...))``
    with ``seen, usable = as_coarse_sees(pred, valid, ...)`` (equal to rounding), but
    for the affine alignment of a tile without masked pixels (most tiles) they are
    taken on the coarse cells rather than on the tile's pixels. Both maps are
    bilinear interpolations of cell grids (the tile's cell averages ``S``, the
    coarse map ``C``), ``W_r S W_c^T`` and ``V_r C V_c^T``, so every sum over the
    pixels is a small product of cell arrays: ``sum(seen * c) = sum(S * (W_r^T V_r)
    C (W_c^T V_c)^T)``, with sparse tridiagonal factors. No pixel array is
    upsampled (BENCHMARKS.md, hot paths).

    Parameters
    ----------
    tile_id : int
    pred : ndarray of shape (h, w)
        The tile's raw prediction.
    valid : ndarray of shape (h, w), bool
    window : rasterio.windows.Window
        The tile's window in the full-resolution raster.
    full_shape : tuple of int
        (H, W) of the raster.
    coarse : ndarray of shape (ch, cw)
        The whole coarse prediction, without invalid values
        (:func:`tiledepth.fusion.resample.fill_invalid`).
    alignment : {'affine', 'bilinear'}
    blur : float
        The coarse map's own blur in its pixels (see :func:`as_coarse_sees`).

    Returns
    -------
    TileStats
    """
    return blurred_tile_stats(tile_id, pred, valid, window, full_shape, coarse,
                              alignment=alignment, blurs=(blur,))[0]


def blurred_tile_stats(tile_id: int, pred: np.ndarray, valid: np.ndarray, window: Window,
                       full_shape: tuple[int, int], coarse: np.ndarray, *,
                       alignment: str = "affine",
                       blurs: Sequence[float] = BLUR_CANDIDATES) -> list[TileStats]:
    """:func:`coarse_tile_stats` for each of several anchor ``blurs`` at once (the tile's cell
    averages taken once); each is the same numbers as :func:`coarse_tile_stats` of its blur
    alone. To pair any of them with overlap statistics taken with another's mean, centre it
    on that mean (:func:`tiledepth.fusion.stats.recentred`).

    Returns
    -------
    list of TileStats
        One per blur, in order.
    """
    (h, w), (ch, cw) = full_shape, coarse.shape
    k = corner_count(alignment)
    if (ch >= h and cw >= w) or not valid.all():
        under = upsample_window(coarse, full_shape, window)  # (h, w)
        out = []
        for blur in blurs:
            seen, usable = as_coarse_sees(pred, valid, window, full_shape, coarse.shape,
                                          blur=blur)
            out.append(tile_stats(tile_id, seen, valid & usable, under, alignment=alignment))
        return out
    th, tw = pred.shape
    unblurred, (r_lo, r_hi, fr, ok_r), (c_lo, c_hi, fc, ok_c) = tile_cells(
        pred, valid, window, full_shape, coarse.shape, 0.0)  # S: the tile's cell averages
    if not (ok_r.any() and ok_c.any()):  # as_coarse_sees: then every pixel is usable
        ok_r = np.ones_like(ok_r)
        ok_c = np.ones_like(ok_c)
    # the bilinear taps of the usable rows and columns: into S (seen) and into C (coarse)
    s_r = (r_lo[ok_r], r_hi[ok_r], fr[ok_r].astype(np.float64))
    s_c = (c_lo[ok_c], c_hi[ok_c], fc[ok_c].astype(np.float64))
    grid, c_r, c_c = _coarse_taps(coarse, window, full_shape, (th, tw), (ok_r, ok_c),
                                  (s_r[2], s_c[2]))  # C: the coarse cells in use
    g0 = float(grid.mean())
    g_centred = grid - g0
    n = float(ok_r.sum()) * float(ok_c.sum())
    c_sum = _tap_weights(c_r, grid.shape[0]) @ g_centred @ _tap_weights(c_c, grid.shape[1])
    c_cc = _weighted_sum(g_centred, c_r, c_c, g_centred, c_r, c_c)
    scc = c_cc + 2 * g0 * c_sum + n * g0 * g0
    # What does not depend on the blur, taken once for every blur: the taps' weights and
    # products, and the coarse cells through them.
    rows, cols = unblurred.shape
    w_r, w_c = _tap_weights(s_r, rows), _tap_weights(s_c, cols)
    if k > 1:  # bilinear: the corner weights are products of linear weights along each axis
        sums = _bilinear_sums(unblurred.shape, g_centred, g0, s_r, s_c, c_r, c_c,
                              unit(th)[ok_r], unit(tw)[ok_c])
    else:
        grams_ss = _tap_gram(s_r, s_r, rows), _tap_gram(s_c, s_c, cols)
        coarse_sc = _gram_product(_tap_gram(s_r, c_r, rows), _tap_gram(s_c, c_c, cols),
                                  g_centred)
    out = []
    for blur in blurs:
        cells = blur_cells(unblurred, blur)
        # centred cells: every pixel's weights sum to 1, so the pixels shift by the same
        s0 = float(cells.mean())
        centred = cells - s0
        s_sum = w_r @ centred @ w_c
        mean = s_sum / n  # of the centred seen values
        if k > 1:
            out.append(TileStats(tile_id, s0 + mean, n, *sums(centred - mean), scc))
            continue
        s_ss = _gram_sum(centred, *grams_ss, centred)
        s_sc = float(np.einsum("ij,ij->", centred, coarse_sc))
        # a sum of squares: never below 0, though on a flat tile the difference of two
        # equal sums can round to -1e-30, and a negative variance upsets the solve
        sqq = max(s_ss - n * mean * mean, 0.0)
        sq = s_sum - n * mean  # 0 up to rounding, as on the pixels
        sqc = s_sc - mean * c_sum  # sum(q * c) = sum(q * (c - g0)): the q sum to 0
        sc = c_sum + n * g0
        out.append(TileStats(tile_id, s0 + mean, n, np.array([[sqq, sq], [sq, n]]),
                             np.array([sqc, sc]), scc))
    return out


#: Blurs whose residual is within this fraction of the least are a tie, won by the least blur.
BLUR_TIE = 1e-3
#: ... and those whose residual is within this fraction of the anchor's variation (about
#: 0.3 % of its standard deviation): an exact fit under either.
BLUR_EXACT = 1e-5


def pick_blur(tables: Sequence[TileTable]) -> int:
    """Which of several anchor blurs' statistics of the same tiles best explain the anchor.

    For each blur, every tile's own least-squares value map to the anchor leaves a
    residual (``scc - fc^T gram^-1 fc``); the blur with the least total over the tiles
    wins (ties, within :data:`BLUR_TIE`, to the least blur, so the pick does not depend on
    rounding or on the values' scale). A tile whose best residual is far beyond the
    typical one (more than :data:`BLUR_OUTLIER` times the median mean square: a grossly
    wrong tile, or a wrong patch of the anchor) is left out. A sharp model (tiles that
    average exactly to the anchor) picks 0; a blurry one the blur its coarse map has.

    Parameters
    ----------
    tables : sequence of TileTable
        The same tiles' statistics, one table per blur (:func:`blurred_tile_stats`).

    Returns
    -------
    int
        The index of the table (blur) that wins.
    """
    rss = np.stack([_own_fit_residual(t) for t in tables], axis=1)  # (T, blurs)
    n = tables[0].column("n")
    ok = (n >= 16) & np.isfinite(rss).all(axis=1)
    if not ok.any():
        return 0
    best = rss[ok].min(axis=1) / n[ok]
    typical = float(np.median(best))
    kept = best <= BLUR_OUTLIER * typical if typical > 0 else np.ones(len(best), bool)
    totals = rss[ok][kept].sum(axis=0)
    # Ties go to the least blur: within BLUR_TIE of the least, or within BLUR_EXACT of the
    # anchor's own variation under the tiles (tiles that explain it exactly, to rounding,
    # under several blurs: which one wins there would depend on the values' scale).
    table = tables[0]
    k = table.gram.shape[1] // 2
    sum_c = table.column("fc")[:, k:].sum(axis=1)  # the shift columns' weights sum to 1
    spread = np.maximum(table.column("scc") - sum_c**2 / np.maximum(n, 1), 0.0)
    near = totals <= totals.min() * (1 + BLUR_TIE) + BLUR_EXACT * float(spread[ok][kept].sum())
    return int(np.flatnonzero(near)[0])


def _own_fit_residual(table: TileTable) -> np.ndarray:
    """Each tile's residual sum of squares (T,) after its own least-squares value map to the
    anchor, from its statistics alone."""
    gram, fc, scc = table.gram, table.column("fc"), table.column("scc")
    m = gram.shape[1]
    k = m // 2
    # The anchor centred on its mean under the tile first: the shift columns sum to one at
    # every pixel, so a constant t moves ``fc`` by ``t * gram @ [0, 1]`` and ``scc`` by
    # ``2 t sum(c) + n t^2``, and the exact residual not at all; the ridge's share of it
    # would grow with the anchor's mean squared (a map 6 units up lost a tile to
    # BLUR_OUTLIER that it kept at 0).
    n = np.maximum(table.column("n"), 1.0)
    sum_c = fc[:, k:].sum(axis=1)  # sum(c): the shift columns' features sum to 1
    t = sum_c / n
    fc = fc - t[:, None] * gram[:, :, k:].sum(axis=2)
    scc = scc - sum_c * t
    # A ridge relative to each column's own scale (the scale columns' sums scale with the
    # values, the shift columns' do not): the residuals scale exactly with the values.
    diag = np.maximum(np.abs(np.einsum("tii->ti", gram)), 1e-300)
    x = np.linalg.solve(gram + 1e-9 * diag[:, :, None] * np.eye(m), fc[:, :, None])[:, :, 0]
    return np.maximum(scc - np.einsum("ti,ti->t", fc, x), 0.0)


Taps = tuple[np.ndarray, np.ndarray, np.ndarray]  # lower cells, upper cells, upper weights


def _coarse_taps(coarse: np.ndarray, window: Window, full_shape: tuple[int, int],
                 shape: tuple[int, int], usable: tuple[np.ndarray, np.ndarray],
                 weights: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, Taps, Taps]:
    """The coarse cells a tile's ``window`` reads (float64), and the bilinear taps of its
    ``usable`` rows and columns into them (with their upper ``weights``)."""
    (h, w), (ch, cw) = full_shape, coarse.shape
    (th, tw), (ok_r, ok_c), (f_r, f_c) = shape, usable, weights
    rows, cols = coarse_extent(window, full_shape, coarse.shape)
    R_lo, R_hi, _ = linear_taps(int(window.row_off), th, ch / h, ch)
    C_lo, C_hi, _ = linear_taps(int(window.col_off), tw, cw / w, cw)
    return (coarse[rows, cols].astype(np.float64),
            (R_lo[ok_r] - rows.start, R_hi[ok_r] - rows.start, f_r),
            (C_lo[ok_c] - cols.start, C_hi[ok_c] - cols.start, f_c))


def _tap_weights(taps: Taps, cells: int, weight: np.ndarray | None = None) -> np.ndarray:
    """Each cell's total interpolation weight over the pixels (``W^T 1``; ``W^T weight``
    with a weight per pixel)."""
    lo, hi, f = taps
    w = 1.0 if weight is None else weight
    return np.bincount(lo, (1 - f) * w, minlength=cells) + \
        np.bincount(hi, f * w, minlength=cells)


def _weighted_sum(a: np.ndarray, a_rows: Taps, a_cols: Taps,
                  b: np.ndarray, b_rows: Taps, b_cols: Taps) -> float:
    """``sum((A_r a A_c^T) * (B_r b B_c^T))`` over the pixels, computed on the cells as
    ``sum(a * (A_r^T B_r) b (A_c^T B_c)^T)``; the cell-by-cell products of two tap
    matrices are banded (each pixel taps two neighbouring cells)."""
    return _gram_sum(a, _tap_gram(a_rows, b_rows, a.shape[0]),
                     _tap_gram(a_cols, b_cols, a.shape[1]), b)


def _gram_sum(a: np.ndarray, rows: list, cols: list, b: np.ndarray) -> float:
    """:func:`_weighted_sum` from the row and column tap products (:func:`_tap_gram`)."""
    return float(np.einsum("ij,ij->", a, _gram_product(rows, cols, b)))


def _gram_product(rows: list, cols: list, b: np.ndarray) -> np.ndarray:
    """``R b C^T`` (a's rows, a's columns) from the row and column tap products ``R`` and
    ``C`` (:func:`_tap_gram`): what :func:`_gram_sum` sums ``a`` against."""
    left = _band_product(rows, b)  # (a rows, b cols)
    return _band_product(cols, left.T).T


def _tap_gram(a: Taps, b: Taps, cells: int,
              weight: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """``A^T B`` (``A^T diag(weight) B`` with a weight per pixel) of two tap matrices over
    the same pixels, as its diagonals: (offset ``d``, values ``m``) with
    ``(A^T B)[i, i + d] = m[i]``."""
    (a_lo, a_hi, fa), (b_lo, b_hi, fb) = a, b
    i = np.concatenate([a_lo, a_lo, a_hi, a_hi])
    d = np.concatenate([b_lo, b_hi, b_lo, b_hi]) - i
    w = np.concatenate([(1 - fa) * (1 - fb), (1 - fa) * fb, fa * (1 - fb), fa * fb])
    if weight is not None:
        w *= np.tile(weight, 4)
    # one bincount over (cell, offset): the offsets span a few values only
    d0 = int(d.min())
    span = int(d.max()) - d0 + 1
    bands = np.bincount(i * span + (d - d0), w, minlength=cells * span).reshape(cells, span)
    return [(d0 + k, bands[:, k]) for k in range(span)]


def _bilinear_sums(shape: tuple[int, int], c: np.ndarray, c0: float, q_rows: Taps,
                   q_cols: Taps, c_rows: Taps, c_cols: Taps, u: np.ndarray,
                   v: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``gram`` and ``fc`` of bilinear :class:`TileStats` on the cells, as a function of
    ``q``, the centred values' cells of ``shape``: ``c`` the coarse cells less ``c0``, the
    taps of ``q`` and of ``c``, and the pixels' positions across the tile (``u`` per row,
    ``v`` per column). What does not depend on ``q`` is taken once, here.

    A corner weight is a product of a row and a column weight, (1 - u) or u times
    (1 - v) or v, so every sum over the pixels is a row- and column-weighted sum of
    interpolated cells (:func:`_tap_gram` with weights).
    """
    along_u, along_v = (1 - u, u), (1 - v, v)
    corners = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (row, column) weight of each corner
    pairs = [(0, 0), (0, 1), (1, 1)]  # the distinct products of two weights along an axis
    # the tap products of q with itself, symmetric: each row and column weight applied once
    q_rows_qq = {p: _tap_gram(q_rows, q_rows, shape[0], along_u[p[0]] * along_u[p[1]])
                 for p in pairs}
    q_cols_qq = {p: _tap_gram(q_cols, q_cols, shape[1], along_v[p[0]] * along_v[p[1]])
                 for p in pairs}
    row_tw = {p: _tap_weights(q_rows, shape[0], along_u[p[0]] * along_u[p[1]]) for p in pairs}
    col_w = {p: _tap_weights(q_cols, shape[1], along_v[p[0]] * along_v[p[1]]) for p in pairs}
    ones = np.empty((4, 4))  # the shift columns against each other
    for i, (ra, ca) in enumerate(corners):
        for j, (rb, cb) in enumerate(corners[i:], start=i):
            ones[i, j] = ones[j, i] = float(
                (along_u[ra] * along_u[rb]).sum() * (along_v[ca] * along_v[cb]).sum())
    # the coarse cells through the taps, for each corner: what q meets, and their sums
    left_c = [_band_product(_tap_gram(q_rows, c_rows, shape[0], w), c) for w in along_u]
    cols_c = [_tap_gram(q_cols, c_cols, shape[1], w) for w in along_v]
    c_rows_w = [_tap_weights(c_rows, c.shape[0], w) @ c for w in along_u]
    c_seen = [_band_product(cols_c[ca], left_c[ra].T).T for ra, ca in corners]
    fc_ones = np.empty(4)
    for i, (ra, ca) in enumerate(corners):
        cw = float(c_rows_w[ra] @ _tap_weights(c_cols, c.shape[1], along_v[ca]))
        # c = (c - c0) + c0, and the corner weights sum to 1 at every pixel
        fc_ones[i] = cw + c0 * ones[i].sum()

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # q against q: sum(q * M_r q M_c^T) = sum((M_r q) * (q M_c^T))
        left = {p: _band_product(q_rows_qq[p], q) for p in pairs}
        right = {p: _band_product(q_cols_qq[p], q.T).T for p in pairs}
        qq = {(pr, pc): float(np.einsum("ij,ij->", left[pr], right[pc]))
              for pr in pairs for pc in pairs}
        row_w = {p: row_tw[p] @ q for p in pairs}
        gram = np.empty((8, 8))
        for i, (ra, ca) in enumerate(corners):
            for j, (rb, cb) in enumerate(corners[i:], start=i):
                pr, pc = (min(ra, rb), max(ra, rb)), (min(ca, cb), max(ca, cb))
                q1 = float(row_w[pr] @ col_w[pc])
                gram[i, j] = gram[j, i] = qq[pr, pc]
                gram[i, 4 + j] = gram[j, 4 + i] = gram[4 + i, j] = gram[4 + j, i] = q1
        gram[4:, 4:] = ones
        for i in range(4):  # sums of squares (as products of two sums, they can round below 0)
            gram[i, i] = max(gram[i, i], 0.0)
        fc = np.empty(8)
        for i in range(4):  # q against the coarse cells (c0's part as for the shifts)
            qc = float(np.einsum("ij,ij->", q, c_seen[i]))
            fc[i] = qc + c0 * gram[i, 4:].sum()
        fc[4:] = fc_ones
        return gram, fc

    return sums


def _band_product(bands: list[tuple[int, np.ndarray]], b: np.ndarray) -> np.ndarray:
    """``M @ b`` for ``M`` given by its diagonals (:func:`_tap_gram`)."""
    n = len(bands[0][1])
    out = np.zeros((n, b.shape[1]))
    for d, m in bands:
        i0, i1 = max(0, -d), min(n, b.shape[0] - d)
        if i1 > i0:
            out[i0:i1] += m[i0:i1, None] * b[i0 + d:i1 + d]
    return out
