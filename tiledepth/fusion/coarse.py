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
from tiledepth.fusion.pyramid import ANCHOR_GROSS_FLOOR, ANCHOR_GROSS_K
from tiledepth.fusion.resample import (
    _cell_taps,
    blur_cells,
    cell_coverage,
    coarse_extent,
    interpolate,
    linear_taps,
    tile_cells,
    upsample_window,
)
from tiledepth.fusion.stats import TileStats, TileTable, recentred, tile_stats

__all__ = ["BLUR_CANDIDATES", "as_coarse_sees", "blurred_tile_stats", "coarse_tile_stats",
           "gross_anchor_cells", "gross_anchor_pixels", "pick_blur", "without_gross_anchor"]

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
                      alignment: str = "affine", blur: float = 0.0,
                      anchor_range: float | None = None) -> TileStats:
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
    anchor_range : float, optional
        The anchor's value range (:func:`tiledepth.metrics.value_range` of ``coarse``):
        anchor cells under the tile that disagree grossly with it
        (:func:`gross_anchor_cells`) are left out of the statistics. None: none are.

    Returns
    -------
    TileStats
    """
    return blurred_tile_stats(tile_id, pred, valid, window, full_shape, coarse,
                              alignment=alignment, blurs=(blur,),
                              anchor_range=anchor_range)[0]


def blurred_tile_stats(tile_id: int, pred: np.ndarray, valid: np.ndarray, window: Window,
                       full_shape: tuple[int, int], coarse: np.ndarray, *,
                       alignment: str = "affine",
                       blurs: Sequence[float] = BLUR_CANDIDATES,
                       anchor_range: float | None = None,
                       cells: list | None = None) -> list[TileStats]:
    """:func:`coarse_tile_stats` for each of several anchor ``blurs`` at once (the tile's cell
    averages taken once); each is the same numbers as :func:`coarse_tile_stats` of its blur
    alone. To pair any of them with overlap statistics taken with another's mean, centre it
    on that mean (:func:`tiledepth.fusion.stats.recentred`).

    ``anchor_range`` (the anchor's value range): where the tile, fitted robustly to the
    anchor cells under it (:func:`gross_anchor_cells`), finds some of them grossly wrong (an
    inverted patch of the coarse prediction), that blur's statistics are taken without the
    pixels those cells reach (:func:`without_gross_anchor`). A tile without such cells gets
    the same numbers as without ``anchor_range``. ``cells``: a list the tile's unblurred
    cell averages are appended to, where taken (to pass to :func:`without_gross_anchor`
    later).

    Returns
    -------
    list of TileStats
        One per blur, in order.
    """
    held: list[np.ndarray] = [] if cells is None else cells  # where the stats took them
    out = _blurred_tile_stats(tile_id, pred, valid, window, full_shape, coarse,
                              alignment=alignment, blurs=blurs, held=held)
    if anchor_range is None:
        return out
    return [without_gross_anchor(ts, pred, valid, window, full_shape, coarse,
                                 alignment=alignment, blur=blur, anchor_range=anchor_range,
                                 cells=held[0] if held else None)
            for ts, blur in zip(out, blurs, strict=True)]


def without_gross_anchor(stats: TileStats, pred: np.ndarray, valid: np.ndarray,
                         window: Window, full_shape: tuple[int, int], coarse: np.ndarray, *,
                         alignment: str = "affine", blur: float = 0.0, anchor_range: float,
                         cells: np.ndarray | None = None) -> TileStats:
    """A tile's statistics against the anchor (:func:`coarse_tile_stats` of ``blur``) without
    the anchor cells under it that disagree grossly with it (:func:`gross_anchor_cells`).

    ``stats`` itself where there are none (most tiles: the same numbers); else the
    statistics of the tile's pixels whose upsampled anchor reads none of those cells, on the
    masked path (:func:`tiledepth.fusion.stats.tile_stats` of :func:`as_coarse_sees`),
    centred on ``stats.mean``: the overlaps' statistics are taken with it. ``cells``: the
    tile's unblurred cell averages, where already taken (:func:`tiledepth.fusion.resample.
    tile_cells`).
    """
    (h, w), (ch, cw) = full_shape, coarse.shape
    if (ch >= h and cw >= w) or not anchor_range > 0 or not stats.n > 0:
        return stats
    if cells is None:
        cells = tile_cells(pred, valid, window, full_shape, coarse.shape, 0.0)[0]
    bad = _gross_pixels(blur_cells(cells, blur), valid, window, full_shape, coarse,
                        alignment=alignment, anchor_range=anchor_range)
    if bad is None:
        return stats
    seen, usable = as_coarse_sees(pred, valid, window, full_shape, coarse.shape, blur=blur)
    kept = valid & usable & ~bad
    if not kept.any():
        return stats
    under = upsample_window(coarse, full_shape, window)  # (h, w)
    return recentred(tile_stats(stats.id, seen, kept, under, alignment=alignment), stats.mean)


#: :func:`gross_anchor_cells`: the robust fit's rounds (each refitted on the cells within
#: ``GROSS_FIT_K`` robust standard deviations of the last, the first on the better half).
GROSS_FIT_ROUNDS = 4
GROSS_FIT_K = 3.0
#: A tile needs at least this many usable anchor cells (8 x 8) for the check: on fewer, a
#: robust fit cannot tell a wrong patch from the tile's own warp (a per-call power law's
#: tiles of 6 x 6 cells left 4-6 of them out where the relief is steep) ...
GROSS_MIN_CELLS = 64
#: ... and the anchor cells found gross are left out only while they are at most this share
#: of them: beyond, the tile is more likely the wrong one (the robust solve judges it).
GROSS_MAX_SHARE = 0.5
#: A cell is gross beyond this many robust standard deviations of the fit's inliers'
#: residuals ... (:func:`tiledepth.fusion.gradient.gross_residuals`' rule, with the constants
#: of :func:`tiledepth.fusion.pyramid.wrong_anchor_cells`: with the gradient correction's
#: own, 3 and 0.05, a tile's tone curve and the anchor's own errors made most clean tiles of
#: the fusion benchmark's per-call power law leave cells out, its clean NRMSE up 5.9 %, and
#: "wrong" tiles hid their worst cells and escaped the robust step)
GROSS_CELL_K = ANCHOR_GROSS_K
#: ... and this fraction of the anchor's value range.
GROSS_CELL_FLOOR = ANCHOR_GROSS_FLOOR
#: The gross cells are left out only where the anchor over them correlates with the tile
#: (its sign as the robust fit's scale) by at most minus this: anticorrelated, as an inverted
#: patch (-0.4 to -1.0 over the fusion benchmark's inverted patches), not the smooth
#: disagreement of a per-call tone curve at a tile's extremes (-0.4 to +0.98 over the
#: cells the rule found on its clean runs; those left out cost the per-call power law up to
#: 10 % of a scene's NRMSE).
GROSS_AGAINST = 0.5
#: Whether the fit also takes out a quadratic of the tile's values (a tone curve, as
#: :func:`tiledepth.fusion.pyramid.wrong_anchor_cells` does): off, it changed more clean
#: runs of the per-call power law than it saved.
GROSS_FIT_TONE = False
#: Found gross cells (anticorrelated with the tile) stand for a wrong patch: it is grown over
#: the robust fit's outliers (beyond ``GROSS_FIT_K`` robust SDs of its inliers) connected to
#: them, kept where the grown patch still goes against the tile and stays within
#: ``GROSS_MAX_SHARE`` (:func:`_grown_patch`). The far limit alone found 5 and 10 of the
#: 420 and 352 cells an inverted patch put under two tiles (the fusion benchmark's
#: ``current`` model, procedural scene, seed 0): the rest, off by 0.3-0.6 of the anchor's
#: range, stayed in the tiles' anchor sums.
GROSS_GROW = True
#: The check's grid has at most this many cells a side: a finer one (an anchor about as
#: sharp as the tile: a raster not much larger than a tile, a large --coarse-size) is
#: sampled every few cells first (424 512 cells of a 600 x 800 px raster's one tile took
#: 250 ms and tens of MiB, which glibc kept: 2x the run time, 2.6x the memory between runs).
GROSS_MAX_SIDE = 64


def gross_anchor_cells(cells: np.ndarray, anchor: np.ndarray, usable: np.ndarray, *,
                       alignment: str, value_range: float) -> np.ndarray:
    """The anchor cells under a tile that disagree grossly with the tile.

    The tile's cell averages ``cells`` (as the anchor sees them) are fitted to the
    ``anchor`` cells under them, with the tile's value map family (``affine``: a scale and
    a shift; ``bilinear``: both bilinear across the tile), robustly: least squares, then
    refitted on the better half of the cells, then on the cells within ``GROSS_FIT_K``
    robust standard deviations. A cell is gross where the fit's residual is beyond
    ``GROSS_CELL_K`` robust standard deviations and ``GROSS_CELL_FLOOR`` of the value range
    (the rule of :func:`tiledepth.fusion.gradient.gross_residuals`, with the constants of
    :func:`tiledepth.fusion.pyramid.wrong_anchor_cells`); such cells count only where the
    anchor over them goes against the tile (correlation at most ``-GROSS_AGAINST``: a wrong
    patch, not the tile's own tone curve). Where they do, the patch is grown over the
    robust fit's outliers connected to them (:data:`GROSS_GROW`): the far limit finds only
    the cells furthest off.

    Parameters
    ----------
    cells, anchor : ndarray of shape (r, c)
        The tile's cell averages and the anchor's cells under them.
    usable : ndarray of shape (r, c), bool
        Cells the fit may use (wholly inside the tile, covered by valid pixels).
    alignment : {'affine', 'bilinear'}
    value_range : float
        The anchor's value range.

    Returns
    -------
    ndarray of shape (r, c), bool
        The gross cells (all False when there are none, too few usable cells, more than
        ``GROSS_MAX_SHARE`` of them would be gross, or the anchor does not go against the
        tile over them); the grown patch where it too goes against the tile and stays
        within ``GROSS_MAX_SHARE``, else the cells the far limit found.

    Examples
    --------
    >>> tile = np.add.outer(np.arange(8.0), np.arange(8.0))
    >>> anchor = 2 * tile + 1; anchor[1:4, 1:4] = 29 - anchor[1:4, 1:4]
    >>> gross = gross_anchor_cells(tile, anchor, np.ones((8, 8), bool), alignment="affine",
    ...                            value_range=28.0)
    >>> int(gross.sum()), bool(gross[1:4, 1:4].all())
    (9, True)
    """
    none = np.zeros(cells.shape, bool)
    m = int(usable.sum())
    if m < GROSS_MIN_CELLS:
        return none
    rows, cols = np.nonzero(usable)
    s = cells[rows, cols].astype(np.float64)
    y = anchor[rows, cols].astype(np.float64)
    s = s - s.mean()
    if corner_count(alignment) > 1:
        u, v = unit(cells.shape[0])[rows], unit(cells.shape[1])[cols]
        phi = np.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], axis=1)
        x = np.concatenate([phi * s[:, None], phi], axis=1)
    else:
        x = np.stack([s, np.ones_like(s)], axis=1)
    if GROSS_FIT_TONE:
        z = s / max(float(np.abs(s).max()), 1e-300)
        x = np.concatenate([x, (z * z)[:, None]], axis=1)
    keep = np.ones(m, bool)
    for k in range(GROSS_FIT_ROUNDS):
        coef = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
        r = y - x @ coef
        dev = np.abs(r - _median(r[keep]))
        if k == 0:  # the better half: a wrong patch bends the first fit
            keep = dev <= _median(dev)
        else:
            sigma = 1.4826 * _median(dev[keep])
            keep = dev <= GROSS_FIT_K * max(sigma, 1e-12 * value_range)
        if keep.sum() < x.shape[1] + 1:
            return none
    found = _gross_rule(r, keep, value_range)
    if not found.any() or found.sum() > GROSS_MAX_SHARE * m:
        return none
    # A wrong patch of the anchor, not the tile's own tone curve: under the gross cells the
    # anchor goes against the tile (a tile and a monotone map of it never do), as an
    # inverted patch does.
    k = x.shape[1] // 2 if not GROSS_FIT_TONE else (x.shape[1] - 1) // 2
    sign = 1.0 if float(np.mean(coef[:k])) >= 0 else -1.0
    sg, yg = sign * s[found], y[found]
    if sg.size < 3 or not (np.ptp(sg) > 0 and np.ptp(yg) > 0):
        return none
    if not float(np.corrcoef(sg, yg)[0, 1]) <= -GROSS_AGAINST:
        return none
    gross = np.zeros(cells.shape, bool)
    gross[rows, cols] = found
    if GROSS_GROW:
        grown = _grown_patch(gross, rows, cols, ~keep)
        wide = grown[rows, cols]
        if wide.sum() > found.sum() and wide.sum() <= GROSS_MAX_SHARE * m and \
                float(np.corrcoef(sign * s[wide], y[wide])[0, 1]) <= -GROSS_AGAINST:
            return grown
    return gross


def _grown_patch(seeds: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 outliers: np.ndarray) -> np.ndarray:
    """The cells of ``seeds``' grid (r, c) in a 4-connected run of the robust fit's
    ``outliers`` (at the usable cells ``rows``, ``cols``) that holds a seed: the whole
    wrong patch, of which the gross rule's far limit finds only the cells furthest off (an
    inverted patch's cells are off by twice their distance from its mid-value)."""
    from scipy import ndimage  # slow to import: only where a tile found a wrong patch

    out = np.zeros(seeds.shape, bool)
    out[rows[outliers], cols[outliers]] = True
    labels, _ = ndimage.label(out | seeds)
    hit = np.unique(labels[seeds])
    return np.isin(labels, hit[hit > 0])


def _gross_rule(r: np.ndarray, inliers: np.ndarray, value_range: float) -> np.ndarray:
    """:func:`tiledepth.fusion.gradient.gross_residuals`' rule on residuals ``r`` (N,), with
    ``GROSS_CELL_K`` and ``GROSS_CELL_FLOOR``, the robust standard deviation that of the
    robust fit's ``inliers`` (over every cell, a patch over a third of the tile's cells
    inflated it past its own residuals)."""
    dev = np.abs(r - _median(r[inliers]))
    typical = 1.4826 * _median(dev[inliers])
    return dev > max(GROSS_CELL_K * typical, GROSS_CELL_FLOOR * value_range)


def _median(a: np.ndarray) -> float:
    """The upper median of ``a`` (1-D, not empty): one partition, no copy of NumPy's
    checks (the robust fit takes about ten a tile)."""
    k = a.size // 2
    return float(np.partition(a, k)[k])


def gross_anchor_pixels(pred: np.ndarray, valid: np.ndarray, window: Window,
                        full_shape: tuple[int, int], coarse: np.ndarray, *,
                        anchor_range: float, alignment: str = "affine") -> np.ndarray | None:
    """A tile's pixels whose upsampled anchor reads an anchor cell that goes grossly against
    the tile (:func:`gross_anchor_cells` of the tile's unblurred cell averages), bool of the
    tile's shape; None where there are none, or where the anchor is as fine as the raster.

    Examples
    --------
    >>> tile = np.add.outer(np.arange(64.0), np.arange(64.0))
    >>> anchor = tile[1::4, 1::4] + 0.5  # the 16 x 16 cell means, one patch turned over
    >>> anchor[4:8, 4:8] = 2 * anchor[4:8, 4:8].mean() - anchor[4:8, 4:8]
    >>> gross = gross_anchor_pixels(tile, np.ones((64, 64), bool), Window(0, 0, 64, 64),
    ...                             (64, 64), anchor, anchor_range=float(np.ptp(anchor)))
    >>> bool(gross[20:28, 20:28].all()), bool(gross[:8, :8].any())
    (True, False)
    """
    (h, w), (ch, cw) = full_shape, coarse.shape
    if (ch >= h and cw >= w) or not anchor_range > 0 or not valid.any():
        return None
    cells = tile_cells(pred, valid, window, full_shape, coarse.shape, 0.0)[0]
    return _gross_pixels(cells, valid, window, full_shape, coarse, alignment=alignment,
                         anchor_range=anchor_range)


def _gross_pixels(cells: np.ndarray, valid: np.ndarray, window: Window,
                  full_shape: tuple[int, int], coarse: np.ndarray, *, alignment: str,
                  anchor_range: float) -> np.ndarray | None:
    """The tile's pixels whose upsampled anchor reads a gross anchor cell
    (:func:`gross_anchor_cells` of the tile's ``cells``, :func:`tiledepth.fusion.resample.
    tile_cells`); None if none."""
    (h, w), (ch, cw) = full_shape, coarse.shape
    th, tw = valid.shape
    r0, c0 = int(window.row_off), int(window.col_off)
    er, *_ = _cell_taps(r0, th, h, ch)
    ec, *_ = _cell_taps(c0, tw, w, cw)
    first_r, first_c = int(r0 // (h / ch)), int(c0 // (w / cw))
    whole_r = np.diff(er) >= h / ch - 1e-6
    whole_c = np.diff(ec) >= w / cw - 1e-6
    usable = np.outer(whole_r, whole_c)
    if not valid.all():
        usable &= cell_coverage(valid, window, full_shape, coarse.shape) >= COVERED
    if usable.sum() < GROSS_MIN_CELLS:
        return None
    anchor = coarse[first_r:first_r + cells.shape[0], first_c:first_c + cells.shape[1]]
    f = -(-max(cells.shape) // GROSS_MAX_SIDE)
    if f > 1:  # an anchor about as sharp as the tile: the check on every f-th cell, each
        # standing for its f x f block (block means would blend a patch's edge cells with
        # their neighbours, and its anticorrelation with the tile was lost: r -0.2, not -1)
        rows, cols = cells.shape
        gross = gross_anchor_cells(cells[::f, ::f], anchor[::f, ::f], usable[::f, ::f],
                                   alignment=alignment, value_range=anchor_range)
        gross = np.kron(gross, np.ones((f, f), bool))[:rows, :cols] & usable
    else:
        gross = gross_anchor_cells(cells, anchor, usable, alignment=alignment,
                                   value_range=anchor_range)
    if not gross.any():
        return None
    # every pixel that reads one of them through the anchor's bilinear taps
    wrong = np.zeros(coarse.shape, bool)
    wrong[first_r:first_r + cells.shape[0], first_c:first_c + cells.shape[1]] = gross
    r_lo, r_hi, _ = linear_taps(r0, th, ch / h, ch)
    c_lo, c_hi, _ = linear_taps(c0, tw, cw / w, cw)
    return (wrong[np.ix_(r_lo, c_lo)] | wrong[np.ix_(r_lo, c_hi)]
            | wrong[np.ix_(r_hi, c_lo)] | wrong[np.ix_(r_hi, c_hi)])


def _blurred_tile_stats(tile_id: int, pred: np.ndarray, valid: np.ndarray, window: Window,
                        full_shape: tuple[int, int], coarse: np.ndarray, *, alignment: str,
                        blurs: Sequence[float], held: list | None = None) -> list[TileStats]:
    """:func:`blurred_tile_stats` without ``anchor_range``; the tile's cell averages, where
    taken, appended to ``held``."""
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
    if held is not None:
        held.append(unblurred)
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
