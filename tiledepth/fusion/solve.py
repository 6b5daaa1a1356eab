"""Solve: every tile's value map from one global, robust, sparse least-squares problem.

The aligned tiles should agree with each other on every overlap (weight 1 per
pixel) and with the upsampled coarse prediction of the whole image (weight
``coarse_weight`` per pixel), which fixes the global frame and keeps low
frequencies right; a tiny ridge keeps flat or mostly masked tiles well-posed. All
sums are normalised by the tile area, so weights do not depend on the tile size.

With ``robust=True`` the problem is re-solved with iteratively re-weighted least
squares: every overlap and every tile's coarse term is down-weighted by a Cauchy
weight of its root-mean-square residual, so a few grossly wrong tiles (inverted,
or another scene) cannot drag their neighbours. An overlap's residual is that of
its two tiles' best agreement (:meth:`Problem.agreement`), a coarse term's that of
the tile where its neighbours alone would put it (:meth:`Problem.by_neighbours`):
a wrong tile disagrees with both, a wrong region of the anchor only with the
anchor, and there the anchor gives way rather than the tiles. Bilinear maps take their weights
from the affine problem in the same statistics (:func:`affine_stats`): a bilinear
map bends toward a wrong tile and would hide it.

With ``estimate_weights=True`` the two groups' relative weight (``coarse_weight``) is
estimated from the data (:func:`balance`, variance component estimation): each group is
weighted by the inverse of its measured mean square residual per pixel, so overlaps that
disagree more than the tiles disagree with the anchor (a warp within every call, largest at
a tile's edges) count for less.

The problem is built from :mod:`tiledepth.fusion.stats` alone, so every
re-weighting costs no pixel access, and solved with scipy's sparse direct solver.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu

from tiledepth.fusion.maps import Affine1D, AffineField
from tiledepth.fusion.stats import PairStats, PairTable, TileStats, TileTable, affine_stats

__all__ = ["Problem", "affine_sums", "anchor_bend", "balance", "flat_tiles", "reweight",
           "solve_alignment", "solve_scales", "typical"]

#: Tiles with fewer valid pixels than this do not set their own scale prior.
MIN_PIXELS = 16
#: Cauchy weight scale of the robust re-weighting, in robust standard deviations.
ROBUST_K = 3.0
#: Content varying less than this fraction of the 90th percentile counts as flat (see typical).
FLAT = 0.05
#: A tile whose prediction's standard deviation is at most this fraction of its mean's
#: magnitude is constant (:func:`flat_tiles`): a constant float32 prediction varies by
#: round-off only (about 1e-8 of its values, far less in the float64 sums), 1e-6 is about 8
#: float32 units in the last place, no relief a float32 map can hold (as
#: :data:`tiledepth.fusion.diagnosis.DEGENERATE`).
ROUNDOFF = 1e-6
#: Re-solves of the variance component estimation (:func:`balance`): the ratio moves by
#: under 3 % after the second on the fusion benchmark's models (BENCHMARKS.md, issue 17).
BALANCE_ITERATIONS = 2
#: The estimated weights stay within this factor of ``coarse_weight`` either way. The anchor
#: is the one term that holds the whole map's level: where the tiles agree almost exactly
#: (an exactly consistent model), a hundredth of it let an anchor error no check finds (the
#: rim of an inverted patch) move every tile, 14x the fixed weight's error; a tenth, 1.8x
#: (tests/test_align.py). Issue 17's family of models gives x0.4 to x7 but for the two
#: better than it (exactly consistent, quantised: down to the bound; BENCHMARKS.md,
#: "Estimated weights by default").
BALANCE_BOUND = 10.0

def solve_alignment(tiles: Iterable[TileStats], pairs: Iterable[PairStats], *,
                    tile_area: float, coarse_weight: float = 0.3, ridge: float = 1e-3,
                    fit: str = "scale_shift", robust: bool = False, smooth: float = 0.01,
                    iterations: int = 8, estimate_weights: bool = False,
                    bend_from_anchor: bool = False, return_judged: bool = False):
    """Solve all tiles' value maps at once.

    Minimises, over the tiles' parameters ``x_i`` (corner scales ``s_ik`` and
    shifts ``t_ik``; one corner for ``affine`` statistics) with ``A`` the tile
    area::

        sum_pairs  r_ij/A * sum_overlap (aligned_i - aligned_j)^2
      + sum_tiles  w r_i/A * sum_tile   (aligned_i - c)^2
      + ridge  * (scale and shift priors)
      + smooth * (corner values' spread around their mean; bilinear only)

    where ``w = coarse_weight`` and ``r`` are robust weights (1 unless
    ``robust``). The scale prior of a tile is its own least-squares fit to the
    coarse prediction, or the median of those where the tile is flat or almost
    all masked; the shift prior is the coarse mean under the tile. Both are
    weighted ``ridge`` relative to a typical tile's data term, small enough not
    to bias well-posed tiles.

    Parameters
    ----------
    tiles : iterable of TileStats, or TileTable
    pairs : iterable of PairStats, or PairTable
        The statistics; tables (as :class:`tiledepth.background.TileStatistics` gathers
        them) are used without a Python object per tile.
    tile_area : float
        Pixels in one full tile.
    coarse_weight : float
        Weight of agreement with the coarse prediction relative to agreement
        between overlapping tiles, per pixel.
    ridge : float
        Relative weight of the priors.
    fit : {'scale_shift', 'scale', 'none'}
        ``scale_shift`` (affine-invariant kinds) solves the problem above;
        ``scale`` fixes every shift at 0 and solves the same terms for
        ``s_i`` alone on the raw predictions (metric depth, see
        :func:`solve_scales`; needs ``affine`` statistics); ``none`` keeps
        every tile as predicted.
    robust : bool
        Re-weight overlaps and coarse terms by a Cauchy weight of their
        residual (iteratively re-weighted least squares), so grossly wrong
        tiles do not drag their neighbours.
    smooth : float
        Relative weight that keeps a bilinear field's corners near one value.
    iterations : int
        Most re-weightings when ``robust``.
    estimate_weights : bool
        Re-weight the coarse terms against the overlaps by the inverse of each group's
        measured noise (:func:`balance`), ``coarse_weight`` only the starting point.
    bend_from_anchor : bool
        Bilinear statistics: the anchor alone sets how a tile's map bends across it, the
        whole problem (overlaps and anchor) one scale and shift on top (:func:`anchor_bend`);
        False: every corner from the whole problem. With ``estimate_weights`` the
        weights are estimated on the whole problem first, then the tiles bent with them.
    return_judged : bool
        Also return the affine maps the robust weights of bilinear maps came
        from (for :func:`tiledepth.fusion.diagnosis.diagnose`; None unless ``robust`` with bilinear
        statistics).

    Returns
    -------
    dict of int to Affine1D or AffineField
        For each tile id, the map from its raw prediction to the fused frame:
        ``Affine1D`` for ``affine`` statistics, ``AffineField`` for ``bilinear``.
    judged : dict of int to Affine1D or None
        Only with ``return_judged``.

    Examples
    --------
    >>> import numpy as np
    >>> from tiledepth.fusion import tile_stats
    >>> c = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8); ok = np.ones((8, 8), bool)
    >>> t = tile_stats(0, 3 * c + 1, ok, c)
    >>> a = solve_alignment([t], [], tile_area=64.0)[0]
    >>> round(a.scale, 3), round(a.shift, 3)
    (0.333, -0.333)
    """
    if fit not in ("scale_shift", "scale", "none"):
        raise ValueError(f"fit must be 'scale_shift', 'scale' or 'none', got {fit!r}")
    tiles = _with_pixels(TileTable.of(tiles))
    maps, judged = _solve(tiles, PairTable.of(pairs, tiles.corners), tile_area=tile_area,
                          coarse_weight=coarse_weight, ridge=ridge, fit=fit, robust=robust,
                          smooth=smooth, iterations=iterations,
                          estimate_weights=estimate_weights, bend_from_anchor=bend_from_anchor)
    return (maps, judged) if return_judged else maps


def _with_pixels(tiles: TileTable) -> TileTable:
    """The tiles with valid pixels."""
    return tiles.take(tiles.column("n") > 0)


def _lookup(ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each of ``query`` is in ``ids``, and where (the last such row)."""
    if not len(ids):
        return np.zeros(len(query), bool), np.zeros(len(query), np.intp)
    order = np.argsort(ids, kind="stable")
    at = np.maximum(np.searchsorted(ids[order], query, side="right") - 1, 0)
    return ids[order][at] == query, order[at]


def _solve(tiles: TileTable, pairs: PairTable, *, tile_area: float,
           coarse_weight: float, ridge: float, fit: str, robust: bool, smooth: float,
           iterations: int, estimate_weights: bool = False,
           bend_from_anchor: bool = False) -> tuple[dict, dict[int, Affine1D] | None]:
    """:func:`solve_alignment` of tiles with valid pixels: the maps, and the judge's ones."""
    if not len(tiles):
        return {}, None
    if fit == "none":
        return {int(i): Affine1D(scale=1.0, shift=0.0) for i in tiles.column("id")}, None
    if fit == "scale":
        if tiles.corners != 1:
            raise ValueError("the scale-only fit needs affine statistics")
        return solve_scales(tiles, pairs, tile_area=tile_area, coarse_weight=coarse_weight,
                            ridge=ridge), None
    problem = Problem(tiles, pairs, tile_area=tile_area, coarse_weight=coarse_weight,
                      ridge=ridge, smooth=smooth)
    overlaps = problem.pair_gram.shape[0] > 0
    # Bilinear maps: the anchor alone sets how each tile bends, the joint solve its level
    # (anchor_bend), with the weights balance estimates on the full problem where asked.
    bend = bend_from_anchor and problem.k > 1 and overlaps

    def final(pair_w: np.ndarray, tile_w: np.ndarray) -> np.ndarray:
        """The parameters for these weights of the overlaps and of the coarse terms."""
        if estimate_weights:  # the groups' balance estimated on top of the given weights
            tile_w = balance(problem, pair_w, tile_w)[0]
        if bend:
            return anchor_bend(problem, pair_w, tile_w)
        return problem.solve(pair_w, tile_w)

    if not (robust and overlaps):
        return problem.maps(final(problem.ones_pairs, problem.ones_tiles)), None
    # Outliers are judged by one scale and shift per tile: a bilinear map bends part of
    # the way toward a wrong tile's content and hides it (BENCHMARKS.md, fusion quality).
    judge = problem if problem.k == 1 else Problem(
        affine_stats(tiles), affine_stats(pairs), tile_area=tile_area,
        coarse_weight=coarse_weight, ridge=ridge, smooth=smooth)
    pair_w, tile_w, x = reweight(judge, iterations=iterations)
    if judge is problem and not estimate_weights:  # the judge's solve is the answer
        return problem.maps(x), None
    return problem.maps(final(pair_w, tile_w)), None if judge is problem else judge.maps(x)


def anchor_bend(problem: Problem, pair_w: np.ndarray, tile_w: np.ndarray) -> np.ndarray:
    """Bilinear maps that bend as the anchor alone says, at the level the joint solve says.

    First each tile's bilinear map is fitted to the anchor alone (the overlaps weighted 0);
    then the whole problem, overlaps and anchor, is solved for one scale and one shift per
    tile added at all its corners (:meth:`Problem.solve` with ``bend``). The overlaps lie at
    the tiles' edges, where an error that bends within a model call (a warp, a tilt, a
    per-call power law) is largest: in the full bilinear solve they set the tiles' corners
    by it and pull their interiors off the anchor (BENCHMARKS.md, issue 17: "Why the joint
    solve lost on the full gigapixel scene"). Tiles that fit the anchor exactly keep their
    exact maps: their bent overlaps agree, nothing moves their level.

    Parameters
    ----------
    problem : Problem
        With bilinear statistics (k corners).
    pair_w : ndarray of shape (P,)
    tile_w : ndarray of shape (T,)
        The robust weights of the overlaps and of the coarse terms (ones if not robust).

    Returns
    -------
    ndarray of shape (T, 2k)
        The parameters: k scales, then k shifts per tile.
    """
    alone = problem.solve(np.zeros_like(pair_w), tile_w)
    return problem.solve(pair_w, tile_w, bend=alone)


def balance(problem: Problem, pair_w: np.ndarray, tile_w: np.ndarray, *,
            iterations: int = BALANCE_ITERATIONS) -> tuple[np.ndarray, float]:
    """The coarse terms' weights re-balanced against the overlaps' by variance component
    estimation.

    The solve weighs a pixel of overlap 1 and a pixel of the anchor ``coarse_weight``: a
    fixed ratio of the two groups' noise levels. Here the ratio is measured instead: solve,
    take each group's mean square residual per pixel (``sigma_p^2`` over the overlaps,
    ``sigma_c^2`` against the anchor, each term weighted by its robust weight), weight the
    groups by their inverses (the anchor's weight relative to the overlaps' becomes
    ``sigma_p^2 / sigma_c^2``), and solve again; ``iterations`` times. The degrees of
    freedom are taken as the pixels (each term sums hundreds to thousands of them against
    ``2k`` unknowns per tile). Where either group fits to within rounding (1e-4 of the
    anchor's spread, e.g. tiles that agree exactly with each other) there is no noise level
    to measure and the weights stay as given; the ratio stays within
    :data:`BALANCE_BOUND` of ``coarse_weight``. Without overlaps there is nothing to
    balance.

    Parameters
    ----------
    problem : Problem
    pair_w : ndarray of shape (P,)
    tile_w : ndarray of shape (T,)
        The robust weights of the overlaps and of the coarse terms (ones if not robust).
    iterations : int
        Re-solves.

    Returns
    -------
    tile_w : ndarray of shape (T,)
        The coarse terms' weights times ``factor`` (``problem.solve(pair_w, tile_w)``
        solves with them).
    factor : float
        The estimated ratio over ``coarse_weight`` (1: unchanged).

    Examples
    --------
    >>> import numpy as np
    >>> from tiledepth.fusion import tile_stats, pair_stats
    >>> c = np.linspace(0, 1, 64).reshape(8, 8); ok = np.ones((8, 8), bool)
    >>> tiles = [tile_stats(i, c + i, ok, c) for i in (0, 1)]  # exactly consistent tiles
    >>> pairs = [pair_stats(tiles[0], tiles[1], c, c + 1, ok)]
    >>> p = Problem(tiles, pairs, tile_area=64.0, coarse_weight=0.6, ridge=1e-3, smooth=0.01)
    >>> balance(p, p.ones_pairs, p.ones_tiles)[1]
    1.0
    """
    factor = 1.0
    if not len(pair_w) or iterations < 1:
        return tile_w, factor
    coarse_weight = problem.w_tile / problem.w_pair
    floor = (1e-4 * problem.spread) ** 2
    pair_n, tile_n = pair_w * problem.pair_n, tile_w * problem.tile_n
    for _ in range(iterations):
        pair_rms, tile_rms = problem.residuals(problem.solve(pair_w, factor * tile_w))
        sigma_p = float(np.nansum(pair_n * pair_rms ** 2)) / max(float(pair_n.sum()), 1e-300)
        sigma_c = float(np.nansum(tile_n * tile_rms ** 2)) / max(float(tile_n.sum()), 1e-300)
        if not (sigma_p > floor and sigma_c > floor):
            break  # a group without measurable noise: nothing to estimate
        factor = float(np.clip(sigma_p / sigma_c / coarse_weight, 1 / BALANCE_BOUND,
                               BALANCE_BOUND))
    return tile_w * factor, factor


#: The re-weighting stops when no weight moves by more than this: close to convergence,
#: so that rounding (a shift of all values, say) cannot change the number of steps and
#: with it the result by the size of a step.
REWEIGHT_TOL = 1e-5


def reweight(problem: Problem, *,
             iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iteratively re-weighted least squares with Cauchy weights of the residuals.

    Returns
    -------
    pair_w : ndarray of shape (P,)
    tile_w : ndarray of shape (T,)
        The robust weights of the overlaps and of the tiles' coarse terms.
    x : ndarray of shape (T, 2k)
        The parameters solved with them.
    """
    pair_w, tile_w = problem.ones_pairs, problem.ones_tiles
    x = problem.solve(pair_w, tile_w)
    floor = 1e-4 * problem.spread
    for k in range(iterations):
        pair_rms, tile_rms = problem.residuals(x)
        pair_c, tile_c = problem.contrast(x)
        if k == 0 and _no_outlier(pair_rms, pair_c, floor) and _no_outlier(tile_rms, tile_c,
                                                                            floor):
            break  # consistent tiles: the plain solve, untouched (issue 17)
        # An overlap is judged by whether its two tiles can agree at all (one mapped onto
        # the other as it stands), a tile's anchor term where its neighbours alone would
        # put it: a wrong patch of the anchor pulls the tiles under it, but neither makes
        # their overlaps wrong nor moves their neighbours (issue 17).
        agree = problem.agreement(x)
        anchor_rms = problem.anchor_residuals(problem.by_neighbours(x, pair_w))
        new_pair_w = _cauchy(agree, typical(agree, pair_c, floor))
        new_tile_w = _cauchy(anchor_rms, typical(anchor_rms, tile_c, floor))
        change = max(np.abs(new_pair_w - pair_w).max(initial=0),
                     np.abs(new_tile_w - tile_w).max(initial=0))
        pair_w, tile_w = new_pair_w, new_tile_w
        x = problem.solve(pair_w, tile_w)
        if change < REWEIGHT_TOL:
            break
    return pair_w, tile_w, x


def _no_outlier(rms: np.ndarray, contrast: np.ndarray, floor: float) -> bool:
    """Whether every term's residual is within :data:`ROBUST_K` typical ones (a Cauchy
    weight of at least one half): no term to down-weight, the plain solve stands."""
    r = np.nan_to_num(rms, nan=0.0)
    return not r.size or bool(r.max() <= ROBUST_K * typical(rms, contrast, floor))


def _cauchy(rms: np.ndarray, sigma: float) -> np.ndarray:
    """Cauchy weights ``1 / (1 + (r / (K sigma))^2)``."""
    return 1.0 / (1.0 + (np.nan_to_num(rms, nan=0.0) / (ROBUST_K * sigma)) ** 2)


def typical(rms: np.ndarray, contrast: np.ndarray, floor: float = 0.0) -> float:
    """The typical residual: the median over terms with texture.

    Flat content (water, a roof, a masked edge) fits almost exactly; where
    much of a raster is flat, the median over all terms would call every
    textured tile an outlier. Terms whose aligned content varies less than
    :data:`FLAT` of the 90th percentile of that variation are left out.
    """
    ok = np.isfinite(rms) & np.isfinite(contrast)
    if not ok.any():
        return floor
    textured = ok & (contrast >= FLAT * np.percentile(contrast[ok], 90))
    return max(float(np.median(rms[textured if textured.any() else ok])), floor)


def flat_tiles(var: np.ndarray, n: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(T,) bool: the tiles whose prediction is constant, its centred sum of squares ``var``
    over ``n`` pixels no more than the round-off of its ``mean`` (:data:`ROUNDOFF`).

    Such a sum is the difference of two nearly equal sums: on a constant tile it comes out
    as round-off, of either sign (1e-30 against a sum of 1e3), and a scale fitted to it, or
    a ridge taken from it, is set by that round-off.

    Examples
    --------
    >>> flat_tiles(np.array([-1e-30, 4e-31, 0.0, 2.0]), np.full(4, 1e4), np.full(4, 0.3))
    array([ True,  True,  True, False])
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return ~(var > ROUNDOFF**2 * n * np.square(mean))


class Problem:
    """The normal equations of :func:`solve_alignment`, re-weightable without pixel access."""

    def __init__(self, tiles: TileTable | list[TileStats], pairs: PairTable | list[PairStats],
                 *, tile_area: float, coarse_weight: float, ridge: float,
                 smooth: float) -> None:
        tiles = TileTable.of(tiles)
        self.tiles = tiles
        self.ids, self.mean = tiles.column("id"), tiles.column("mean")  # (T,)
        k = self.k = tiles.corners
        m = 2 * k  # unknowns per tile: k scales, then k shifts
        self.n_unknown = m * len(tiles)
        self.tile_gram = tiles.gram  # (T, m, m)
        self.tile_fc = tiles.column("fc")  # (T, m)
        self.tile_scc = tiles.column("scc")
        n = self.tile_n = tiles.column("n")
        kept = self._pairs(PairTable.of(pairs, k))

        # Priors: the tile's own affine fit to the coarse prediction (see solve_alignment).
        sqq, sq, sc, sqc = affine_sums(self.tile_gram, self.tile_fc, k)
        cov = sqc - sq * sc / n
        var = sqq - sq * sq / n
        # typical values over the tiles that are not flat: most tiles may be (black borders);
        # a constant tile's sums are round-off (flat_tiles): it sets neither a scale nor the
        # ridge, which would be round-off too (a uniform raster's system came out singular)
        self.flat = flat_tiles(var, n, self.mean)  # (T,) bool; the diagnosis reads it too
        varies = ~self.flat
        typical_var = float(np.median(var[varies] / n[varies])) if np.any(varies) else 1.0
        well_posed = (n >= MIN_PIXELS) & (var > 1e-6 * typical_var * n) & varies
        slope = np.where(well_posed, cov / np.where(var > 0, var, 1.0), np.nan)
        fallback = float(np.median(slope[well_posed])) if well_posed.any() else 1.0
        s_prior = np.where(well_posed, slope, fallback)
        t_prior = sc / n
        c_var = np.maximum(self.tile_scc / n - t_prior**2, 0)
        self.spread = float(np.sqrt(np.median(c_var))) or float(np.abs(t_prior).max()) or 1.0
        # Ridge weights: relative to a typical tile's data term, so unit-free.
        data_weight = max(coarse_weight, 1.0) / tile_area
        mu_s = ridge * data_weight * float(np.median(sqq[varies])) if np.any(varies) else ridge
        mu_t = ridge * data_weight * float(np.median(n))
        prior = np.diag(np.r_[np.full(k, mu_s / k), np.full(k, mu_t / k)])
        self.prior_rhs = np.concatenate([np.repeat((mu_s / k * s_prior)[:, None], k, 1),
                                         np.repeat((mu_t / k * t_prior)[:, None], k, 1)], 1)
        if k > 1:  # the corners' spread around their mean
            centre = np.eye(k) - 1.0 / k
            lam_s = smooth / ridge * mu_s
            lam_t = smooth / ridge * mu_t
            prior = prior + np.block([[lam_s * centre, np.zeros((k, k))],
                                      [np.zeros((k, k)), lam_t * centre]])
        self.prior = prior
        self.w_tile = coarse_weight / tile_area
        self.w_pair = 1.0 / tile_area
        self.ones_pairs = np.ones(kept)
        self.ones_tiles = np.ones(len(tiles))

        # Sparse layout: one (m, m) block per tile, one (2m, 2m) block per pair.
        base = np.arange(len(tiles))[:, None] * m + np.arange(m)  # (T, m)
        t_rows = np.repeat(base, m, axis=1)  # (T, m*m)
        t_cols = np.tile(base, (1, m))
        pidx = np.concatenate([base[self.pair_idx[:, 0]], base[self.pair_idx[:, 1]]], axis=1) \
            if kept else np.zeros((0, 2 * m), np.intp)  # (P, 2m)
        p_rows = np.repeat(pidx, 2 * m, axis=1)
        p_cols = np.tile(pidx, (1, 2 * m))
        self.rows = np.concatenate([t_rows.ravel(), p_rows.ravel()])
        self.cols = np.concatenate([t_cols.ravel(), p_cols.ravel()])

    def _pairs(self, pairs: PairTable) -> int:
        """Keep the overlaps with pixels between two of the tiles: their Gram matrices,
        pixel counts and tiles' rows. Returns how many."""
        found_i, at_i = _lookup(self.ids, pairs.column("i"))
        found_j, at_j = _lookup(self.ids, pairs.column("j"))
        keep = (pairs.column("n") > 0) & found_i & found_j
        self.pair_gram = pairs.gram if keep.all() else pairs.gram[keep]  # (P, 2m, 2m)
        self.pair_n = pairs.column("n")[keep]
        self.pair_idx = np.stack([at_i[keep], at_j[keep]], axis=1).astype(np.intp)
        return int(keep.sum())

    def solve(self, pair_w: np.ndarray, tile_w: np.ndarray, *,
              bend: np.ndarray | None = None) -> np.ndarray:
        """Parameters (T, 2k) for robust weights of the pairs (P,) and tiles (T,).

        ``bend`` (T, 2k): only each tile's level is solved for, one scale and one shift
        added to all of ``bend``'s corners (:func:`anchor_bend`).
        """
        tw = (self.w_tile * tile_w)[:, None, None]
        tile_blocks = tw * self.tile_gram + self.prior  # (T, m, m)
        pair_blocks = (self.w_pair * pair_w)[:, None, None] * self.pair_gram  # (P, 2m, 2m)
        vals = np.concatenate([tile_blocks.ravel(), pair_blocks.ravel()])
        matrix = sparse.csr_matrix((vals, (self.rows, self.cols)),
                                   shape=(self.n_unknown, self.n_unknown))
        rhs = (tw[:, :, 0] * self.tile_fc + self.prior_rhs).ravel()
        t = len(self.tiles)
        if bend is not None:  # x = bend + E y, E adding y's scale and shift at every corner
            m = 2 * self.k
            level = (2 * np.arange(t)[:, None] + np.repeat([0, 1], self.k)[None, :]).ravel()
            e = sparse.csr_matrix((np.ones(t * m), (np.arange(t * m), level)),
                                  shape=(t * m, 2 * t))
            rhs = e.T @ (rhs - matrix @ bend.ravel())
            matrix = (e.T @ matrix @ e).tocsr()
        # Symmetric diagonal scaling (Jacobi) so scales and shifts of very
        # different magnitude solve equally well (a diagonal that is not positive, which
        # the priors rule out, left unscaled: no NaN from its root).
        d = _jacobi(matrix.diagonal())
        scaled = sparse.diags(d) @ matrix @ sparse.diags(d)
        x = d * np.atleast_1d(_spsolve(scaled.tocsc(), d * rhs))
        if bend is not None:
            return bend + np.repeat(x.reshape(t, 2), self.k, axis=1)
        return x.reshape(t, -1)

    def residuals(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Root-mean-square residual of every overlap (P,) and against the coarse map (T,)."""
        xp = np.concatenate([x[self.pair_idx[:, 0]], x[self.pair_idx[:, 1]]], axis=1)
        pair_sq = np.einsum("pi,pij,pj->p", xp, self.pair_gram, xp)
        with np.errstate(invalid="ignore", divide="ignore"):
            pair_rms = np.sqrt(np.maximum(pair_sq, 0) / self.pair_n)
        return pair_rms, self.anchor_residuals(x)

    def anchor_residuals(self, x: np.ndarray) -> np.ndarray:
        """Root-mean-square residual of every tile (T,) against the coarse map."""
        tile_sq = (np.einsum("ti,tij,tj->t", x, self.tile_gram, x)
                   - 2 * np.einsum("ti,ti->t", x, self.tile_fc) + self.tile_scc)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.maximum(tile_sq, 0) / self.tile_n)

    def agreement(self, x: np.ndarray) -> np.ndarray:
        """How well the two tiles of every overlap can agree (P,): the root-mean-square
        residual of one tile's best map onto the other as it stands (``x``), the worse of
        the two ways.

        Unlike the residual at ``x`` it does not grow where a wrong anchor pulled one of
        the tiles: it grows where their contents differ (a wrong tile).
        """
        m = 2 * self.k
        if not len(self.pair_idx):
            return np.zeros(0)
        g = self.pair_gram
        worst = np.zeros(len(g))
        # One offset off every shift: an overlap's residual does not change (the corner
        # weights sum to 1 on both tiles), but its quadratic form no longer sums squares
        # of the values' level, whose rounding would decide the robust weights.
        shifts = x[:, self.k:]
        x = np.concatenate([x[:, :self.k], shifts - np.median(shifts[np.isfinite(shifts)])
                            if np.isfinite(shifts).any() else shifts], axis=1)
        for free, held, tile in ((slice(0, m), slice(m, 2 * m), 1),
                                 (slice(m, 2 * m), slice(0, m), 0)):
            xh = x[self.pair_idx[:, tile]]  # (P, m)
            gff, gfh, ghh = g[:, free, free], g[:, free, held], g[:, held, held]
            # a ridge relative to each column's own scale: the scale columns' sums scale
            # with the values, the shift columns' do not (the judgement is scale-free)
            ridge = (1e-9 * np.abs(np.einsum("pii->pi", gff)) + 1e-300)[:, :, None] * np.eye(m)
            with np.errstate(all="ignore"):
                try:
                    xf = -np.linalg.solve(gff + ridge, np.einsum("pab,pb->pa", gfh,
                                                                 xh)[:, :, None])[:, :, 0]
                except np.linalg.LinAlgError:
                    return self.residuals(x)[0]
                sq = (np.einsum("pa,pab,pb->p", xh, ghh, xh)
                      + np.einsum("pa,pab,pb->p", xf, gfh, xh))  # at the optimum of xf
            worst = np.maximum(worst, np.nan_to_num(sq, nan=0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.maximum(worst, 0) / self.pair_n)

    def by_neighbours(self, x: np.ndarray, pair_w: np.ndarray) -> np.ndarray:
        """Each tile's parameters (T, 2k) fitted to its neighbours alone (their parameters
        ``x``, the overlaps weighted ``pair_w``), with the priors; a tile without overlaps
        keeps its own.

        Where a tile's anchor term is wrong (a wrong patch of the coarse map), these are
        where the tiles around it say it belongs; where the tile itself is wrong, its
        overlaps disagree whatever its parameters.
        """
        m = 2 * self.k
        n_tiles = len(self.tiles)
        a = np.repeat(self.prior[None], n_tiles, axis=0)  # (T, m, m)
        b = self.prior_rhs.copy()  # (T, m)
        if len(self.pair_idx):
            g = (self.w_pair * pair_w)[:, None, None] * self.pair_gram  # (P, 2m, 2m)
            i, j = self.pair_idx[:, 0], self.pair_idx[:, 1]
            np.add.at(a, i, g[:, :m, :m])
            np.add.at(a, j, g[:, m:, m:])
            np.add.at(b, i, -np.einsum("pab,pb->pa", g[:, :m, m:], x[j]))
            np.add.at(b, j, -np.einsum("pab,pb->pa", g[:, m:, :m], x[i]))
        alone = np.ones(n_tiles, bool)
        alone[self.pair_idx.ravel()] = False
        out = x.copy()
        with np.errstate(all="ignore"):
            scale = np.sqrt(np.abs(np.einsum("tii->ti", a)))  # Jacobi, as in solve
            scale[scale == 0] = 1.0
            scaled = a / scale[:, :, None] / scale[:, None, :]
            try:
                fitted = np.linalg.solve(scaled[~alone], (b / scale)[~alone][:, :, None])
            except np.linalg.LinAlgError:  # a singular tile: judged where the solve put it
                return out
            out[~alone] = fitted[:, :, 0] / scale[~alone]
        return out

    def contrast(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standard deviation of the aligned content of every overlap (P,) and tile (T,)."""
        k = self.k
        scale = np.abs(x[:, :k].mean(axis=1))  # (T,)

        def std(sqq, sq, n):
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.sqrt(np.maximum(sqq / n - (sq / n) ** 2, 0))

        g = self.pair_gram  # tile i's features first: [phi q (k), phi (k)]
        pair = std(g[:, :k, :k].sum((1, 2)), g[:, :k, k:2 * k].sum((1, 2)), self.pair_n)
        t = self.tile_gram
        tile = std(t[:, :k, :k].sum((1, 2)), t[:, :k, k:].sum((1, 2)), self.tile_n)
        return pair * scale[self.pair_idx[:, 0]], tile * scale

    def maps(self, x: np.ndarray) -> dict[int, Affine1D | AffineField]:
        out: dict[int, Affine1D | AffineField] = {}
        k = self.k
        for j, (i, mean) in enumerate(zip(self.ids.tolist(), self.mean, strict=True)):
            s, tt = x[j, :k], x[j, k:]
            shift = tt - s * mean
            if k == 1:
                out[i] = Affine1D(scale=float(s[0]), shift=float(shift[0]))
            else:
                out[i] = AffineField(tuple(map(float, s)), tuple(map(float, shift)))
        return out

    def params(self, maps: dict[int, Affine1D | AffineField]) -> np.ndarray:
        """The inverse of :meth:`maps`: parameters (T, 2k)."""
        x = np.empty((len(self.tiles), 2 * self.k))
        for j, (i, mean) in enumerate(zip(self.ids.tolist(), self.mean, strict=True)):
            a = maps[i]
            s = np.atleast_1d(a.scales if isinstance(a, AffineField) else a.scale)
            sh = np.atleast_1d(a.shifts if isinstance(a, AffineField) else a.shift)
            x[j] = np.r_[s, sh + s * mean]
        return x


def affine_sums(gram: np.ndarray, fc: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each tile's affine sums ``sqq, sq, sc, sqc`` (T,) from its Gram matrix (T, 2k, 2k) and
    ``fc`` (T, 2k), as :class:`TileStats`' properties sum them (one at a time, for k > 1)."""
    if k == 1:
        return gram[:, 0, 0], gram[:, 0, 1], fc[:, 1], fc[:, 0]
    return (np.array([float(g[:k, :k].sum()) for g in gram]),
            np.array([float(g[:k, k:].sum()) for g in gram]),
            np.array([float(f[k:].sum()) for f in fc]), np.array([float(f[:k].sum()) for f in fc]))


def solve_scales(tiles: Iterable[TileStats], pairs: Iterable[PairStats], *,
                 tile_area: float, coarse_weight: float = 0.3,
                 ridge: float = 1e-3) -> dict[int, Affine1D]:
    """Solve every tile's scale alone (shift 0), for predictions that have a frame.

    Minimises, over ``s_i``, with ``p_i`` the raw predictions::

        sum_pairs  1/A  * sum_overlap (s_i p_i - s_j p_j)^2
      + sum_tiles  w/A  * sum_tile    (s_i p_i - c)^2
      + ridge * sum_tiles (s_i - prior_i)^2

    The prior is the tile's own least-squares scale to the coarse prediction
    (the median of those for tiles without enough signal). The raw sums are
    recovered from the same :class:`TileStats` and :class:`PairStats` the
    scale-and-shift problem uses.

    Parameters
    ----------
    tiles, pairs, tile_area, coarse_weight, ridge
        As in :func:`solve_alignment`.

    Returns
    -------
    dict of int to Affine1D
        Scales, all shifts 0.

    Examples
    --------
    >>> import numpy as np
    >>> from tiledepth.fusion import tile_stats
    >>> c = np.full((4, 4), 2.0, np.float32); ok = np.ones((4, 4), bool)
    >>> t = tile_stats(0, 0.5 * c, ok, c)
    >>> round(solve_scales([t], [], tile_area=16.0)[0].scale, 3)
    2.0
    """
    tiles = _with_pixels(TileTable.of(tiles))
    if not len(tiles):
        return {}
    ids, mean, n = tiles.column("id"), tiles.column("mean"), tiles.column("n")
    n_tiles = len(tiles)
    sqq, sq, sc, sqc = affine_sums(tiles.gram, tiles.column("fc"), 1)
    # Raw sums from the centred ones: p = q + mean.
    spp = sqq + 2 * mean * sq + n * mean**2
    spc = sqc + mean * sc
    well_posed = (n >= MIN_PIXELS) & (spp > 0)
    slope = np.where(well_posed, spc / np.where(spp > 0, spp, 1.0), np.nan)
    fallback = float(np.median(slope[well_posed])) if well_posed.any() else 1.0
    prior = np.where(well_posed, slope, fallback)

    w = coarse_weight / tile_area
    data_weight = max(coarse_weight, 1.0) / tile_area
    mu = ridge * data_weight * float(np.median(spp)) if np.any(spp > 0) else ridge
    diag = w * spp + mu
    rhs = w * spc + mu * prior
    pairs = PairTable.of(pairs, 1)
    found_i, ki = _lookup(ids, pairs.column("i"))
    found_j, kj = _lookup(ids, pairs.column("j"))
    keep = (pairs.column("n") != 0) & found_i & found_j
    ki, kj, pn, g = ki[keep], kj[keep], pairs.column("n")[keep], pairs.gram[keep]
    sa, sb, saa, sbb, sab = g[:, 0, 1], -g[:, 1, 2], g[:, 0, 0], g[:, 2, 2], -g[:, 0, 2]
    mi, mj = mean[ki], mean[kj]
    sii = saa + 2 * mi * sa + pn * mi**2
    sjj = sbb + 2 * mj * sb + pn * mj**2
    sij = sab + mj * sa + mi * sb + pn * mi * mj
    wp = 1.0 / tile_area
    # per overlap, its four entries in turn: the order the duplicates are summed in
    rows = [np.arange(n_tiles), np.stack([ki, kj, ki, kj], axis=1).ravel()]
    cols = [np.arange(n_tiles), np.stack([ki, kj, kj, ki], axis=1).ravel()]
    vals = [diag, (wp * np.stack([sii, sjj, -sij, -sij], axis=1)).ravel()]
    matrix = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_tiles, n_tiles),
    )
    d = _jacobi(matrix.diagonal())
    scaled = sparse.diags(d) @ matrix @ sparse.diags(d)
    x = d * np.atleast_1d(_spsolve(scaled.tocsc(), d * rhs))
    return {i: Affine1D(scale=float(x[k]), shift=0.0) for k, i in enumerate(ids.tolist())}


def _spsolve(matrix: sparse.csc_matrix, rhs: np.ndarray) -> np.ndarray:
    """``scipy.sparse.linalg.spsolve(matrix, rhs)`` (the same SuperLU factorisation, the
    same bits), NaN for a singular ``matrix`` without a ``MatrixRankWarning``: silencing
    that warning took ``warnings.catch_warnings``, which is not thread-safe (a batch solves
    in two threads)."""
    try:
        return splu(matrix).solve(rhs)
    except RuntimeError:  # "Factor is exactly singular": the callers check for finiteness
        return np.full(matrix.shape[1], np.nan)


def _jacobi(diag: np.ndarray) -> np.ndarray:
    """The symmetric diagonal scaling ``1 / sqrt(diag)`` of a system, 1 where ``diag`` is not
    positive (its root would be NaN and spoil every unknown)."""
    return 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))
