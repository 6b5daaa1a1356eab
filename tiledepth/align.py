"""Align: solve every tile's value map in one global, robust least-squares problem.

An affine-invariant model returns each tile ``i`` as ``p_i`` with its own
unknown scale and shift. We look for a value map per tile, so that the aligned
tiles

* agree with each other on every overlap (weight 1 per pixel), and
* agree with the upsampled coarse prediction ``c`` of the whole image
  (weight ``coarse_weight`` per pixel), which fixes the global frame and keeps
  low frequencies right,

plus a tiny ridge that keeps flat or mostly masked tiles well-posed. All sums
are normalised by the tile area, so weights do not depend on the tile size.

Each tile meets the coarse prediction as the coarse prediction sees it
(:func:`as_coarse_sees`): averaged over the coarse cells, blurred as the model
blurred its coarse prediction (:func:`blur_cells`), upsampled the same way. For
whole tiles :func:`coarse_tile_stats` takes those sums on the cells.

Two value maps (``alignment``, see :data:`ALIGNMENTS`):

``affine``
    One scale and shift per tile: ``s_i * (p_i - m_i) + t_i`` (``m_i`` the
    tile's mean, for conditioning).
``bilinear``
    Scale and shift vary bilinearly across the tile between four corner
    values, ``sum_k phi_k(x) (s_ik (p_i - m_i) + t_ik)``, regularised toward
    one scale and shift; it absorbs smooth tilts and gains that a per-tile
    affine map leaves as seams. The engine's ``auto`` picks it where the
    anchor resolves a tile (:func:`tiledepth.engine.resolve_alignment`).

With ``robust=True`` the problem is re-solved with iteratively re-weighted
least squares: every overlap and every tile's coarse term is down-weighted by
a Cauchy weight of its root-mean-square residual, so a few grossly wrong
tiles (inverted, or another scene) cannot drag their neighbours. Bilinear
maps take their weights from the affine problem in the same statistics
(:func:`affine_stats`): a bilinear map bends toward a wrong tile and would
hide it. :func:`diagnose` then reports each tile's consistency with its
neighbours and flags the outliers.

The problem is built from per-tile and per-pair sufficient statistics (Gram
matrices of the tile's features over valid pixels), so memory grows with the
number of tiles, not of pixels, and every re-weighting costs no pixel access;
it is solved with scipy's sparse direct solver. Pure NumPy/SciPy: float32
arrays in, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window
from scipy import sparse
from scipy.sparse.linalg import spsolve

from tiledepth.read import area_matrix

__all__ = [
    "ALIGNMENTS",
    "Affine1D",
    "AffineField",
    "Diagnosis",
    "PairStats",
    "TileStats",
    "affine_stats",
    "as_coarse_sees",
    "diagnose",
    "fill_invalid",
    "pair_stats",
    "solve_alignment",
    "solve_scales",
    "tile_stats",
    "upsample_window",
]

#: Per-tile value maps (the ``alignment`` option): name -> number of corners.
ALIGNMENTS: dict[str, int] = {"affine": 1, "bilinear": 4}

#: Tiles with fewer valid pixels than this do not set their own scale prior.
MIN_PIXELS = 16
#: Cauchy weight scale of the robust re-weighting, in robust standard deviations.
ROBUST_K = 3.0
#: Flag a tile whose typical overlap residual exceeds this many robust standard deviations.
FLAG_K = 5.0
#: ... and this fraction of the value range (tiny residuals of a near-exact fusion are fine).
FLAG_FLOOR = 0.005
#: Content varying less than this fraction of the 90th percentile counts as flat (see _typical).
FLAT = 0.05


@dataclass(frozen=True)
class Affine1D:
    """A per-tile value map ``aligned = scale * prediction + shift``."""

    scale: float
    shift: float

    def apply(self, pred: np.ndarray) -> np.ndarray:
        return (pred * np.float32(self.scale) + np.float32(self.shift)).astype(np.float32)

    def maps(self, shape: tuple[int, int]) -> tuple[float, float]:
        """Scale and shift over a tile of ``shape``: here constants."""
        return self.scale, self.shift

    fields = maps  # what blending indexes: constants

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([self.scale, self.shift]).all())


@dataclass(frozen=True)
class AffineField:
    """A per-tile value map whose scale and shift vary bilinearly across the tile.

    ``scales`` and ``shifts`` hold the values at the (top-left, top-right,
    bottom-left, bottom-right) pixel centres; ``aligned = S(x) * prediction + T(x)``.
    ``scale`` and ``shift`` are their means (for reports).
    """

    scales: tuple[float, float, float, float]
    shifts: tuple[float, float, float, float]

    @property
    def scale(self) -> float:
        return float(np.mean(self.scales))

    @property
    def shift(self) -> float:
        return float(np.mean(self.shifts))

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([*self.scales, *self.shifts]).all())

    def maps(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(S, T)``, ndarrays of ``shape``, float32."""
        u, v = _unit(shape[0]), _unit(shape[1])

        def field(c: tuple[float, ...]) -> np.ndarray:
            top = c[0] * (1 - v) + c[1] * v
            bottom = c[2] * (1 - v) + c[3] * v
            return ((1 - u)[:, None] * top + u[:, None] * bottom).astype(np.float32)

        return field(self.scales), field(self.shifts)

    def fields(self, shape: tuple[int, int]) -> tuple[BilinearMap, BilinearMap]:
        """``(S, T)`` over a tile of ``shape``, evaluated only where blending indexes them."""
        return BilinearMap(self.scales, shape), BilinearMap(self.shifts, shape)

    def apply(self, pred: np.ndarray) -> np.ndarray:
        s, t = self.maps(pred.shape)
        return (s * pred + t).astype(np.float32)


class BilinearMap:
    """A field over a tile of ``shape``, bilinear between its corner values (top-left,
    top-right, bottom-left, bottom-right), computed only where it is indexed: ``m[rows,
    cols]`` with two slices (a block), an ``np.ix_`` lattice or two arrays of points;
    float32. ``abs(m)`` is its absolute value. Blending a window needs the part of each
    tile in it only: building whole-tile maps per window cost 2.8 s on 100 MP."""

    __slots__ = ("corners", "shape", "absolute")

    def __init__(self, corners: tuple[float, ...], shape: tuple[int, int],
                 absolute: bool = False) -> None:
        self.corners, self.shape, self.absolute = corners, shape, absolute

    def __getitem__(self, index) -> np.ndarray:
        rows, cols = index
        u, v = _unit(self.shape[0])[rows], _unit(self.shape[1])[cols]
        if isinstance(rows, slice) and isinstance(cols, slice):
            u = u[:, None]
        c0, c1, c2, c3 = self.corners
        # (1-u)(1-v) c0 + (1-u) v c1 + u (1-v) c2 + u v c3, as a + b v, in float32
        a = (c0 + (c2 - c0) * u).astype(np.float32)
        b = ((c1 - c0) + (c3 - c2 - c1 + c0) * u).astype(np.float32)
        out = b * v.astype(np.float32)
        out += a
        return np.abs(out, out=out) if self.absolute else out

    def __abs__(self) -> BilinearMap:
        return BilinearMap(self.corners, self.shape, absolute=True)


def _unit(n: int) -> np.ndarray:
    """Pixel centres 0 .. n-1 mapped to [0, 1]."""
    return np.arange(n, dtype=np.float64) / max(n - 1, 1)


@dataclass(frozen=True, slots=True)  # one per tile, kept to the solve: no __dict__ each
class TileStats:
    """Sufficient statistics of one tile against the coarse prediction.

    The tile's features over its valid pixels are ``F = [phi_k q, phi_k]``
    (``q = p - mean``, ``phi_k`` the corner weights: one constant corner for
    ``affine``, four bilinear ones for ``bilinear``); ``c`` is the coarse
    prediction upsampled under the tile.

    Attributes
    ----------
    gram : ndarray of shape (2K, 2K)
        ``F^T F``.
    fc : ndarray of shape (2K,)
        ``F^T c``.
    scc : float
        ``c . c``.
    """

    id: int
    mean: float
    n: float
    gram: np.ndarray = field(repr=False)
    fc: np.ndarray = field(repr=False)
    scc: float = 0.0

    @property
    def corners(self) -> int:
        return len(self.fc) // 2

    # The affine sums, whatever the corners (the corner weights sum to 1).
    @property
    def sq(self) -> float:
        k = self.corners
        return float(self.gram[:k, k:].sum())

    @property
    def sqq(self) -> float:
        k = self.corners
        return float(self.gram[:k, :k].sum())

    @property
    def sc(self) -> float:
        return float(self.fc[self.corners:].sum())

    @property
    def sqc(self) -> float:
        return float(self.fc[:self.corners].sum())


@dataclass(frozen=True, slots=True)  # about four per tile, kept to the solve
class PairStats:
    """Sufficient statistics of two tiles on their overlap.

    ``gram = G^T G`` with ``G = [F_i, -F_j]``, the two tiles' features on the
    overlap: the overlap residual of parameters ``x = [x_i, x_j]`` is ``x^T gram x``.
    """

    i: int
    j: int
    n: float
    gram: np.ndarray = field(repr=False)

    # The affine sums (a = q_i, b = q_j), for the scale-only fit.
    @property
    def sa(self) -> float:
        return float(self.gram[0, 1])

    @property
    def sb(self) -> float:
        return float(-self.gram[1, 2])

    @property
    def saa(self) -> float:
        return float(self.gram[0, 0])

    @property
    def sbb(self) -> float:
        return float(self.gram[2, 2])

    @property
    def sab(self) -> float:
        return float(-self.gram[0, 2])


Where = tuple[slice, slice, tuple[int, int]]


def tile_stats(tile_id: int, pred: np.ndarray, valid: np.ndarray, coarse: np.ndarray, *,
               alignment: str = "affine") -> TileStats:
    """Statistics of a tile prediction against the coarse prediction under it.

    Parameters
    ----------
    tile_id : int
        The tile's id.
    pred : ndarray of shape (H, W)
        The tile's prediction (the engine passes it as the coarse map sees it,
        see :func:`as_coarse_sees`).
    valid : ndarray of shape (H, W), bool
        Valid pixels; masked ones never enter the statistics.
    coarse : ndarray of shape (H, W)
        The coarse prediction upsampled to the tile's window.
    alignment : {'affine', 'bilinear'}
        The value map the statistics are for (see :data:`ALIGNMENTS`).

    Returns
    -------
    TileStats
    """
    k = _corners(alignment)
    if not valid.any():
        return TileStats(tile_id, 0.0, 0.0, np.zeros((2 * k, 2 * k)), np.zeros(2 * k), 0.0)
    p = _values(pred, valid).astype(np.float64)
    c = _values(coarse, valid).astype(np.float64)
    mean = float(p.mean())
    n = float(p.size)
    if k == 1:
        q = p - mean
        sq = float(q.sum())
        gram = np.array([[_dot(q, q), sq], [sq, n]])
        fc = np.array([_dot(q, c), float(c.sum())])
    else:  # on a lattice of at most about BILINEAR_SAMPLES pixels, scaled to all of them
        r, cc, weight = _lattice(valid, BILINEAR_SAMPLES)
        f = _features(pred[r, cc] - mean, _unit(pred.shape[0])[r], _unit(pred.shape[1])[cc])
        gram = (f.T @ f) * weight
        fc = (f.T @ coarse[r, cc].astype(np.float64)) * weight
    return TileStats(tile_id, mean, n, gram, fc, _dot(c, c))


#: Pixels a masked bilinear tile's statistics are taken on (every pixel up to this many;
#: beyond, a regular lattice of about this many, the sums scaled to every valid pixel; tiles
#: without masked pixels get exact sums on the coarse cells, see :func:`coarse_tile_stats`).
BILINEAR_SAMPLES = 2 ** 16
#: The same for an overlap's bilinear statistics: a lattice of 4096 pixels made them as
#: fast as affine ones (0.4 ms for a 768 x 192 overlap, 20x faster than 2 ** 16) with the
#: same fusion quality; a tile's sums need every pixel (on a lattice of 4096 the quarter
#: geometry's NRMSE rose from 0.0261 to 0.0279, BENCHMARKS.md).
PAIR_SAMPLES = 2 ** 12


def _lattice(valid: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Rows and columns of the valid pixels on a lattice of at most about ``samples``
    pixels, and the weight that scales their sums to all valid pixels."""
    step = max(1, round(float(np.sqrt(valid.size / samples))))
    r, c = np.nonzero(valid[::step, ::step])
    if step == 1 or r.size == 0:
        return (*np.nonzero(valid), 1.0)
    return r * step, c * step, float(np.count_nonzero(valid)) / r.size


def _values(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``a[valid]``, without the boolean gather when every pixel is valid (most tiles)."""
    return a.ravel() if valid.all() else a[valid]


def pair_stats(i: TileStats, j: TileStats, pred_i: np.ndarray, pred_j: np.ndarray,
               valid: np.ndarray, *, where_i: Where | None = None,
               where_j: Where | None = None) -> PairStats:
    """Statistics of two tile predictions over their overlap.

    Parameters
    ----------
    i, j : TileStats
        The two tiles' statistics (for their ids, means and alignment).
    pred_i, pred_j : ndarray of shape (H, W)
        Each tile's raw prediction cut to the overlap.
    valid : ndarray of shape (H, W), bool
        Valid pixels of the overlap.
    where_i, where_j : (slice, slice, (int, int)), optional
        Where the overlap lies in each tile, and the tile's shape: the (rows,
        cols) slices of :func:`tiledepth.tiling.overlap_slices`. Needed for
        ``bilinear`` statistics only.
    """
    k = i.corners
    if k == 1:
        a = _values(pred_i, valid).astype(np.float64) - i.mean
        b = _values(pred_j, valid).astype(np.float64) - j.mean
        sa, sb, n = float(a.sum()), float(b.sum()), float(a.size)
        saa, sbb, sab = _dot(a, a), _dot(b, b), _dot(a, b)
        gram = np.array([
            [saa, sa, -sab, -sa],
            [sa, n, -sb, -n],
            [-sab, -sb, sbb, sb],
            [-sa, -n, sb, n],
        ])
        return PairStats(i.id, j.id, n, gram)
    if where_i is None or where_j is None:
        raise ValueError("bilinear pair statistics need where_i and where_j")
    r, c, weight = _lattice(valid, PAIR_SAMPLES)
    a = pred_i[r, c].astype(np.float64) - i.mean
    b = pred_j[r, c].astype(np.float64) - j.mean
    g = np.concatenate([_features(a, *_positions(where_i, r, c)),
                        -_features(b, *_positions(where_j, r, c))], axis=1)
    return PairStats(i.id, j.id, float(np.count_nonzero(valid)), (g.T @ g) * weight)


def _corners(alignment: str) -> int:
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
    return ALIGNMENTS[alignment]


def _positions(where: Where, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions across the tile (0 to 1) of pixels ``(r, c)`` of a crop of it."""
    rows, cols, shape = where
    return _unit(shape[0])[rows][r], _unit(shape[1])[cols][c]


def _features(q: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[phi_k q, phi_k]`` (N, 8): bilinear corner weights at positions ``(u, v)``."""
    phi = np.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], axis=1)  # (N, 4)
    return np.concatenate([phi * q[:, None], phi], axis=1)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two 1-D arrays without BLAS.

    NumPy's einsum loop is single-threaded: BLAS ``ddot`` on long vectors starts
    threads that were measured 10x slower than it on a loaded 2-core machine.
    """
    return float(np.einsum("i,i->", a, b))


def solve_alignment(tiles: Iterable[TileStats], pairs: Iterable[PairStats], *,
                    tile_area: float, coarse_weight: float = 0.3, ridge: float = 1e-3,
                    fit: str = "scale_shift", robust: bool = False, smooth: float = 0.01,
                    iterations: int = 8, return_judged: bool = False):
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
    tiles : iterable of TileStats
    pairs : iterable of PairStats
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
    return_judged : bool
        Also return the affine maps the robust weights of bilinear maps came
        from (for :func:`diagnose`; None unless ``robust`` with bilinear
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
    >>> c = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8); ok = np.ones((8, 8), bool)
    >>> t = tile_stats(0, 3 * c + 1, ok, c)
    >>> a = solve_alignment([t], [], tile_area=64.0)[0]
    >>> round(a.scale, 3), round(a.shift, 3)
    (0.333, -0.333)
    """
    if fit not in ("scale_shift", "scale", "none"):
        raise ValueError(f"fit must be 'scale_shift', 'scale' or 'none', got {fit!r}")

    def solved(maps, judged=None):
        return (maps, judged) if return_judged else maps

    tiles = [t for t in tiles if t.n > 0]
    pairs = list(pairs)
    if not tiles:
        return solved({})
    if fit == "none":
        return solved({t.id: Affine1D(scale=1.0, shift=0.0) for t in tiles})
    if fit == "scale":
        if tiles[0].corners != 1:
            raise ValueError("the scale-only fit needs affine statistics")
        return solved(solve_scales(tiles, pairs, tile_area=tile_area,
                                   coarse_weight=coarse_weight, ridge=ridge))
    problem = _Problem(tiles, pairs, tile_area=tile_area, coarse_weight=coarse_weight,
                       ridge=ridge, smooth=smooth)
    pair_w, tile_w = problem.ones_pairs, problem.ones_tiles
    if robust and problem.pair_gram.shape[0] > 0:
        # Outliers are judged by one scale and shift per tile: a bilinear map bends part of
        # the way toward a wrong tile's content and hides it (BENCHMARKS.md, fusion quality).
        judge = problem if problem.k == 1 else _Problem(
            [affine_stats(t) for t in tiles], [affine_stats(p) for p in pairs],
            tile_area=tile_area, coarse_weight=coarse_weight, ridge=ridge, smooth=smooth)
        x = judge.solve(pair_w, tile_w)
        floor = 1e-4 * judge.spread
        for _ in range(iterations):
            pair_rms, tile_rms = judge.residuals(x)
            pair_c, tile_c = judge.contrast(x)
            new_pair_w = _cauchy(pair_rms, _typical(pair_rms, pair_c, floor))
            new_tile_w = _cauchy(tile_rms, _typical(tile_rms, tile_c, floor))
            change = max(np.abs(new_pair_w - pair_w).max(initial=0),
                         np.abs(new_tile_w - tile_w).max(initial=0))
            pair_w, tile_w = new_pair_w, new_tile_w
            x = judge.solve(pair_w, tile_w)
            if change < 1e-3:
                break
        if judge is problem:
            return solved(problem.maps(x))
        return solved(problem.maps(problem.solve(pair_w, tile_w)), judge.maps(x))
    return solved(problem.maps(problem.solve(pair_w, tile_w)))


def affine_stats(stats: TileStats | PairStats) -> TileStats | PairStats:
    """The affine statistics contained in bilinear ones (the corner weights sum to 1 at
    every pixel, so summing the corners' rows and columns of the Gram matrix leaves the
    sums of one scale and shift); affine ones as they are."""
    k = stats.corners if isinstance(stats, TileStats) else stats.gram.shape[0] // 4
    if k == 1:
        return stats
    m = stats.gram.shape[0] // k
    gram = stats.gram.reshape(m, k, m, k).sum(axis=(1, 3))
    if isinstance(stats, PairStats):
        return PairStats(stats.i, stats.j, stats.n, gram)
    return TileStats(stats.id, stats.mean, stats.n, gram, stats.fc.reshape(2, k).sum(axis=1),
                     stats.scc)


def _cauchy(rms: np.ndarray, sigma: float) -> np.ndarray:
    """Cauchy weights ``1 / (1 + (r / (K sigma))^2)``."""
    return 1.0 / (1.0 + (np.nan_to_num(rms, nan=0.0) / (ROBUST_K * sigma)) ** 2)


def _typical(rms: np.ndarray, contrast: np.ndarray, floor: float = 0.0) -> float:
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


class _Problem:
    """The normal equations of :func:`solve_alignment`, re-weightable without pixel access."""

    def __init__(self, tiles: list[TileStats], pairs: list[PairStats], *, tile_area: float,
                 coarse_weight: float, ridge: float, smooth: float) -> None:
        self.tiles = tiles
        k = self.k = tiles[0].corners
        m = 2 * k  # unknowns per tile: k scales, then k shifts
        index = {t.id: j for j, t in enumerate(tiles)}
        self.n_unknown = m * len(tiles)
        self.tile_gram = np.stack([t.gram for t in tiles])  # (T, m, m)
        self.tile_fc = np.stack([t.fc for t in tiles])  # (T, m)
        self.tile_scc = np.array([t.scc for t in tiles])
        n = self.tile_n = np.array([t.n for t in tiles])
        kept = [p for p in pairs if p.n > 0 and p.i in index and p.j in index]
        self.pair_gram = np.stack([p.gram for p in kept]) if kept else np.zeros((0, 2 * m, 2 * m))
        self.pair_n = np.array([p.n for p in kept])
        self.pair_idx = np.array([(index[p.i], index[p.j]) for p in kept], np.intp).reshape(-1, 2)

        # Priors: the tile's own affine fit to the coarse prediction (see solve_alignment).
        sqq = np.array([t.sqq for t in tiles])
        sq = np.array([t.sq for t in tiles])
        sc = np.array([t.sc for t in tiles])
        cov = np.array([t.sqc for t in tiles]) - sq * sc / n
        var = sqq - sq * sq / n
        # typical values over the tiles that are not flat: most tiles may be (black borders)
        typical_var = float(np.median(var[var > 0] / n[var > 0])) if np.any(var > 0) else 1.0
        well_posed = (n >= MIN_PIXELS) & (var > 1e-6 * typical_var * n)
        slope = np.where(well_posed, cov / np.where(var > 0, var, 1.0), np.nan)
        fallback = float(np.median(slope[well_posed])) if well_posed.any() else 1.0
        s_prior = np.where(well_posed, slope, fallback)
        t_prior = sc / n
        c_var = np.maximum(self.tile_scc / n - t_prior**2, 0)
        self.spread = float(np.sqrt(np.median(c_var))) or float(np.abs(t_prior).max()) or 1.0
        # Ridge weights: relative to a typical tile's data term, so unit-free.
        data_weight = max(coarse_weight, 1.0) / tile_area
        mu_s = ridge * data_weight * float(np.median(sqq[sqq > 0])) if np.any(sqq > 0) else ridge
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
        self.ones_pairs = np.ones(len(kept))
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

    def solve(self, pair_w: np.ndarray, tile_w: np.ndarray) -> np.ndarray:
        """Parameters (T, 2k) for robust weights of the pairs (P,) and tiles (T,)."""
        tw = (self.w_tile * tile_w)[:, None, None]
        tile_blocks = tw * self.tile_gram + self.prior  # (T, m, m)
        pair_blocks = (self.w_pair * pair_w)[:, None, None] * self.pair_gram  # (P, 2m, 2m)
        vals = np.concatenate([tile_blocks.ravel(), pair_blocks.ravel()])
        matrix = sparse.csr_matrix((vals, (self.rows, self.cols)),
                                   shape=(self.n_unknown, self.n_unknown))
        rhs = (tw[:, :, 0] * self.tile_fc + self.prior_rhs).ravel()
        # Symmetric diagonal scaling (Jacobi) so scales and shifts of very
        # different magnitude solve equally well.
        d = 1.0 / np.sqrt(matrix.diagonal())
        scaled = sparse.diags(d) @ matrix @ sparse.diags(d)
        x = d * np.atleast_1d(spsolve(scaled.tocsc(), d * rhs))
        return x.reshape(len(self.tiles), -1)

    def residuals(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Root-mean-square residual of every overlap (P,) and against the coarse map (T,)."""
        xp = np.concatenate([x[self.pair_idx[:, 0]], x[self.pair_idx[:, 1]]], axis=1)
        pair_sq = np.einsum("pi,pij,pj->p", xp, self.pair_gram, xp)
        tile_sq = (np.einsum("ti,tij,tj->t", x, self.tile_gram, x)
                   - 2 * np.einsum("ti,ti->t", x, self.tile_fc) + self.tile_scc)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.sqrt(np.maximum(pair_sq, 0) / self.pair_n),
                    np.sqrt(np.maximum(tile_sq, 0) / self.tile_n))

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
        for j, t in enumerate(self.tiles):
            s, tt = x[j, :k], x[j, k:]
            shift = tt - s * t.mean
            if k == 1:
                out[t.id] = Affine1D(scale=float(s[0]), shift=float(shift[0]))
            else:
                out[t.id] = AffineField(tuple(map(float, s)), tuple(map(float, shift)))
        return out

    def params(self, maps: dict[int, Affine1D | AffineField]) -> np.ndarray:
        """The inverse of :meth:`maps`: parameters (T, 2k)."""
        x = np.empty((len(self.tiles), 2 * self.k))
        for j, t in enumerate(self.tiles):
            a = maps[t.id]
            s = np.atleast_1d(a.scales if isinstance(a, AffineField) else a.scale)
            sh = np.atleast_1d(a.shifts if isinstance(a, AffineField) else a.shift)
            x[j] = np.r_[s, sh + s * t.mean]
        return x


@dataclass(frozen=True)
class TileReport:
    """How well one aligned tile agrees with its neighbours and the coarse map.

    Attributes
    ----------
    consistency : float
        Root-mean-square difference from its overlapping neighbours, pooled
        over its overlaps, relative to the value range (NaN without neighbours).
    coarse : float
        Root-mean-square difference from the coarse prediction under it,
        relative to the value range.
    flag : str or None
        Why the tile is an outlier (``'inconsistent'``: it disagrees with its
        neighbours far more than a typical tile does; ``'negative-scale'``:
        its prediction had to be turned upside down), or None.
    """

    consistency: float
    coarse: float
    flag: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """Consistency of an alignment, from the same statistics (no pixel access).

    Attributes
    ----------
    consistency : float
        Root-mean-square difference between overlapping aligned tiles over
        all overlaps, relative to ``value_range``.
    value_range : float
        The value range the figures are relative to.
    tiles : dict of int to TileReport
    """

    consistency: float
    value_range: float
    tiles: dict[int, TileReport]

    @property
    def flagged(self) -> dict[int, str]:
        """Flagged tile ids and why."""
        return {i: r.flag for i, r in self.tiles.items() if r.flag is not None}


def diagnose(tiles: Iterable[TileStats], pairs: Iterable[PairStats],
             maps: dict[int, Affine1D | AffineField], *, value_range: float,
             judged: dict[int, Affine1D] | None = None) -> Diagnosis:
    """Per-tile and global consistency of solved value maps; flag the outlier tiles.

    A tile is flagged ``inconsistent`` when the median root-mean-square
    residual of its overlaps, or its residual against the coarse map, exceeds
    ``FLAG_K`` times the typical one (the median over overlaps, or tiles, with
    texture: flat ones fit almost exactly) and ``FLAG_FLOOR`` of the value
    range; and ``negative-scale`` when it has texture and its scale is negative
    and not small (an inverted prediction). Bilinear maps are judged by one
    scale and shift per tile (``judged``, else each map's means, on
    :func:`affine_stats`); the reported consistency is that of the maps
    themselves.

    Parameters
    ----------
    tiles, pairs : iterables of TileStats, PairStats
        The statistics the maps were solved from.
    maps : dict of int to Affine1D or AffineField
        From :func:`solve_alignment`.
    value_range : float
        The range residuals are relative to (e.g. the 2nd to 98th percentile
        of the coarse prediction).
    judged : dict of int to Affine1D, optional
        For bilinear ``maps``: the affine maps outliers are judged by, e.g.
        those :func:`solve_alignment` took its robust weights from.

    Returns
    -------
    Diagnosis
    """
    tiles = [t for t in tiles if t.n > 0 and t.id in maps]
    if not tiles:
        return Diagnosis(float("nan"), value_range, {})
    rng = value_range if value_range > 0 else 1.0
    pairs = list(pairs)
    problem = _Problem(tiles, pairs, tile_area=1.0, coarse_weight=1.0, ridge=1e-3, smooth=0.0)
    x = problem.params(maps)
    pair_rms, tile_rms = problem.residuals(x)
    total = float((pair_rms**2 * problem.pair_n).sum())
    consistency = np.sqrt(total / problem.pair_n.sum()) / rng if len(pair_rms) else float("nan")
    per_tile: list[list[int]] = [[] for _ in tiles]
    for p, (a, b) in enumerate(problem.pair_idx):
        per_tile[a].append(p)
        per_tile[b].append(p)
    # Bilinear maps: outliers are judged by one scale and shift per tile; a bilinear map can
    # bend to fit much of a wrong tile, and its residuals would no longer show it.
    own_rms = (pair_rms, tile_rms)
    if problem.k > 1:
        problem = _Problem([affine_stats(t) for t in tiles], [affine_stats(p) for p in pairs],
                           tile_area=1.0, coarse_weight=1.0, ridge=1e-3, smooth=0.0)
        if judged is None:
            judged = {i: Affine1D(m.scale, m.shift) for i, m in maps.items()}
        x = problem.params(judged)
        pair_rms, tile_rms = problem.residuals(x)
    pair_c, tile_c = problem.contrast(x)
    pair_limit = max(FLAG_K * _typical(pair_rms, pair_c), FLAG_FLOOR * rng) \
        if len(pair_rms) else np.inf
    tile_limit = max(FLAG_K * _typical(tile_rms, tile_c), FLAG_FLOOR * rng)
    scales = np.array([maps[t.id].scale for t in tiles])
    typical_scale = float(np.median(np.abs(scales)))
    # a flat tile's scale means nothing: only textured ones can be upside down
    textured = tile_c >= FLAT * np.percentile(tile_c[np.isfinite(tile_c)], 90) \
        if np.isfinite(tile_c).any() else np.zeros(len(tiles), bool)
    out = {}
    for j, t in enumerate(tiles):
        own = per_tile[j]
        bad = tile_rms[j] > tile_limit  # far from the coarse map, as no typical tile is
        if own:
            pooled = np.sqrt((own_rms[0][own] ** 2 * problem.pair_n[own]).sum()
                             / problem.pair_n[own].sum())
            bad |= float(np.median(pair_rms[own])) > pair_limit
        else:
            pooled = float("nan")
        flag = "inconsistent" if bad else \
            "negative-scale" if textured[j] and scales[j] < -0.25 * typical_scale else None
        out[t.id] = TileReport(float(pooled / rng), float(own_rms[1][j] / rng), flag)
    return Diagnosis(float(consistency), float(value_range), out)


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
    >>> c = np.full((4, 4), 2.0, np.float32); ok = np.ones((4, 4), bool)
    >>> t = tile_stats(0, 0.5 * c, ok, c)
    >>> round(solve_scales([t], [], tile_area=16.0)[0].scale, 3)
    2.0
    """
    tiles = [t for t in tiles if t.n > 0]
    if not tiles:
        return {}
    index = {t.id: k for k, t in enumerate(tiles)}
    n_tiles = len(tiles)
    mean = np.array([t.mean for t in tiles])
    n = np.array([t.n for t in tiles])
    # Raw sums from the centred ones: p = q + mean.
    spp = np.array([t.sqq + 2 * t.mean * t.sq + t.n * t.mean**2 for t in tiles])
    spc = np.array([t.sqc + t.mean * t.sc for t in tiles])
    well_posed = (n >= MIN_PIXELS) & (spp > 0)
    slope = np.where(well_posed, spc / np.where(spp > 0, spp, 1.0), np.nan)
    fallback = float(np.median(slope[well_posed])) if well_posed.any() else 1.0
    prior = np.where(well_posed, slope, fallback)

    w = coarse_weight / tile_area
    data_weight = max(coarse_weight, 1.0) / tile_area
    mu = ridge * data_weight * float(np.median(spp)) if np.any(spp > 0) else ridge
    diag = w * spp + mu
    rhs = w * spc + mu * prior
    rows, cols, vals = [np.arange(n_tiles)], [np.arange(n_tiles)], [diag]
    wp = 1.0 / tile_area
    for p in pairs:
        if p.n == 0 or p.i not in index or p.j not in index:
            continue
        ki, kj = index[p.i], index[p.j]
        mi, mj = mean[ki], mean[kj]
        sii = p.saa + 2 * mi * p.sa + p.n * mi**2
        sjj = p.sbb + 2 * mj * p.sb + p.n * mj**2
        sij = p.sab + mj * p.sa + mi * p.sb + p.n * mi * mj
        rows.append(np.array([ki, kj, ki, kj]))
        cols.append(np.array([ki, kj, kj, ki]))
        vals.append(wp * np.array([sii, sjj, -sij, -sij]))
    matrix = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_tiles, n_tiles),
    )
    d = 1.0 / np.sqrt(matrix.diagonal())
    scaled = sparse.diags(d) @ matrix @ sparse.diags(d)
    x = d * np.atleast_1d(spsolve(scaled.tocsc(), d * rhs))
    return {t.id: Affine1D(scale=float(x[k]), shift=0.0) for k, t in enumerate(tiles)}


def as_coarse_sees(pred: np.ndarray, valid: np.ndarray, window: Window,
                   full_shape: tuple[int, int], grid_shape: tuple[int, int], *,
                   blur: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A tile prediction at the coarse prediction's resolution, back on the tile's pixels.

    The tile is averaged over the coarse grid's cells (as the coarse image was
    read: each coarse pixel the average of the full-resolution pixels under
    it), then upsampled with the bilinear taps of :func:`upsample_window`. Fitting
    this, rather than the tile itself, to the upsampled coarse prediction
    compares like with like: detail the coarse map cannot have no longer
    biases the tile's scale toward zero (regression dilution). On a 1280 px
    scene with a coarse map 32x coarser it cut the fused NRMSE by 15 %
    (BENCHMARKS.md, "Fusion quality").

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
        to the cell averages (:func:`blur_cells`); 0: none.

    Returns
    -------
    seen : ndarray of shape (h, w), float32
        ``pred`` itself where the coarse grid is not coarser than the raster.
    usable : ndarray of shape (h, w), bool
        Pixels interpolated from cells wholly inside the tile: a cell the
        tile's edge cuts does not hold the average the coarse pixel saw (all
        True when no pixel would be left).

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
    cells, (r_lo, r_hi, fr, ok_r), (c_lo, c_hi, fc, ok_c) = _tile_cells(
        pred, valid, window, full_shape, grid_shape, blur)
    seen = _bilinear(cells, r_lo, r_hi, fr, c_lo, c_hi, fc)
    usable = np.outer(ok_r, ok_c)
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
    upsampled: about 4x less work than on the pixels for 768 px tiles whose
    cells are 5 px.

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
        The whole coarse prediction, without invalid values (:func:`fill_invalid`).
    alignment : {'affine', 'bilinear'}
    blur : float
        The coarse map's own blur in its pixels (see :func:`as_coarse_sees`).

    Returns
    -------
    TileStats
    """
    (h, w), (ch, cw) = full_shape, coarse.shape
    k = _corners(alignment)
    if (ch >= h and cw >= w) or not valid.all():
        under = upsample_window(coarse, full_shape, window)  # (h, w)
        seen, usable = as_coarse_sees(pred, valid, window, full_shape, coarse.shape,
                                      blur=blur)
        return tile_stats(tile_id, seen, valid & usable, under, alignment=alignment)
    r0, c0 = int(window.row_off), int(window.col_off)
    th, tw = pred.shape
    cells, (r_lo, r_hi, fr, ok_r), (c_lo, c_hi, fc, ok_c) = _tile_cells(
        pred, valid, window, full_shape, coarse.shape, blur)  # S: the tile's cell averages
    if not (ok_r.any() and ok_c.any()):  # as_coarse_sees: then every pixel is usable
        ok_r = np.ones_like(ok_r)
        ok_c = np.ones_like(ok_c)
    rows, cols = coarse_extent(window, full_shape, coarse.shape)
    grid = coarse[rows, cols].astype(np.float64)  # C: the coarse cells in use
    R_lo, R_hi, _ = _linear_taps(r0, th, ch / h, ch)
    C_lo, C_hi, _ = _linear_taps(c0, tw, cw / w, cw)
    R_lo, R_hi, C_lo, C_hi = R_lo - rows.start, R_hi - rows.start, C_lo - cols.start, \
        C_hi - cols.start
    # the bilinear taps of the usable rows and columns: into S (seen) and into C (coarse)
    s_r = (r_lo[ok_r], r_hi[ok_r], fr[ok_r].astype(np.float64))
    c_r = (R_lo[ok_r], R_hi[ok_r], s_r[2])
    s_c = (c_lo[ok_c], c_hi[ok_c], fc[ok_c].astype(np.float64))
    c_c = (C_lo[ok_c], C_hi[ok_c], s_c[2])
    # centred cells: every pixel's weights sum to 1, so the pixels shift by the same
    s0, g0 = float(cells.mean()), float(grid.mean())
    centred, g_centred = cells - s0, grid - g0
    n = float(ok_r.sum()) * float(ok_c.sum())
    s_sum = _tap_weights(s_r, cells.shape[0]) @ centred @ _tap_weights(s_c, cells.shape[1])
    c_sum = _tap_weights(c_r, grid.shape[0]) @ g_centred @ _tap_weights(c_c, grid.shape[1])
    c_cc = _weighted_sum(g_centred, c_r, c_c, g_centred, c_r, c_c)
    mean = s_sum / n  # of the centred seen values
    scc = c_cc + 2 * g0 * c_sum + n * g0 * g0
    if k > 1:  # bilinear: the corner weights are products of linear weights along each axis
        return TileStats(tile_id, s0 + mean, n,
                         *_bilinear_sums(centred - mean, g_centred, g0, s_r, s_c, c_r, c_c,
                                         _unit(th)[ok_r], _unit(tw)[ok_c]), scc)
    s_ss = _weighted_sum(centred, s_r, s_c, centred, s_r, s_c)
    s_sc = _weighted_sum(centred, s_r, s_c, g_centred, c_r, c_c)
    sqq = s_ss - n * mean * mean
    sq = s_sum - n * mean  # 0 up to rounding, as on the pixels
    sqc = s_sc - mean * c_sum  # sum(q * c) = sum(q * (c - g0)): the q sum to 0
    sc = c_sum + n * g0
    return TileStats(tile_id, s0 + mean, n, np.array([[sqq, sq], [sq, n]]),
                     np.array([sqc, sc]), scc)


Taps = tuple[np.ndarray, np.ndarray, np.ndarray]  # lower cells, upper cells, upper weights


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
    left = _band_product(rows, b)  # (a rows, b cols)
    return float(np.einsum("ij,ij->", a, _band_product(cols, left.T).T))


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


def _bilinear_sums(q: np.ndarray, c: np.ndarray, c0: float, q_rows: Taps, q_cols: Taps,
                   c_rows: Taps, c_cols: Taps, u: np.ndarray, v: np.ndarray):
    """``gram`` and ``fc`` of bilinear :class:`TileStats` on the cells: ``q`` the centred
    values' cells, ``c`` the coarse cells less ``c0``, their taps, and the pixels'
    positions across the tile (``u`` per row, ``v`` per column).

    A corner weight is a product of a row and a column weight, (1 - u) or u times
    (1 - v) or v, so every sum over the pixels is a row- and column-weighted sum of
    interpolated cells (:func:`_tap_gram` with weights).
    """
    along_u, along_v = (1 - u, u), (1 - v, v)
    corners = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (row, column) weight of each corner
    pairs = [(0, 0), (0, 1), (1, 1)]  # the distinct products of two weights along an axis
    # q against q: sum(q * M_r q M_c^T) = sum((M_r q) * (q M_c^T)), the tap products of q
    # with itself being symmetric: each row weight and each column weight applied once
    left = {p: _band_product(_tap_gram(q_rows, q_rows, q.shape[0],
                                       along_u[p[0]] * along_u[p[1]]), q) for p in pairs}
    right = {p: _band_product(_tap_gram(q_cols, q_cols, q.shape[1],
                                        along_v[p[0]] * along_v[p[1]]), q.T).T for p in pairs}
    qq = {(pr, pc): float(np.einsum("ij,ij->", left[pr], right[pc]))
          for pr in pairs for pc in pairs}
    row_w = {p: _tap_weights(q_rows, q.shape[0], along_u[p[0]] * along_u[p[1]]) @ q
             for p in pairs}
    col_w = {p: _tap_weights(q_cols, q.shape[1], along_v[p[0]] * along_v[p[1]]) for p in pairs}
    gram = np.empty((8, 8))
    for i, (ra, ca) in enumerate(corners):
        for j, (rb, cb) in enumerate(corners[i:], start=i):
            pr, pc = (min(ra, rb), max(ra, rb)), (min(ca, cb), max(ca, cb))
            q1 = float(row_w[pr] @ col_w[pc])
            gram[i, j] = gram[j, i] = qq[pr, pc]
            gram[i, 4 + j] = gram[j, 4 + i] = gram[4 + i, j] = gram[4 + j, i] = q1
            gram[4 + i, 4 + j] = gram[4 + j, 4 + i] = float(
                (along_u[ra] * along_u[rb]).sum() * (along_v[ca] * along_v[cb]).sum())
    # q against the coarse cells, and the coarse cells alone, for each corner
    left_c = [_band_product(_tap_gram(q_rows, c_rows, q.shape[0], w), c) for w in along_u]
    cols_c = [_tap_gram(q_cols, c_cols, q.shape[1], w) for w in along_v]
    c_rows_w = [_tap_weights(c_rows, c.shape[0], w) @ c for w in along_u]
    fc = np.empty(8)
    for i, (ra, ca) in enumerate(corners):
        qc = float(np.einsum("ij,ij->", q, _band_product(cols_c[ca], left_c[ra].T).T))
        cw = float(c_rows_w[ra] @ _tap_weights(c_cols, c.shape[1], along_v[ca]))
        # c = (c - c0) + c0, and the corner weights sum to 1 at every pixel
        fc[i] = qc + c0 * gram[i, 4:].sum()
        fc[4 + i] = cw + c0 * gram[4 + i, 4:].sum()
    return gram, fc


def _band_product(bands: list[tuple[int, np.ndarray]], b: np.ndarray) -> np.ndarray:
    """``M @ b`` for ``M`` given by its diagonals (:func:`_tap_gram`)."""
    n = len(bands[0][1])
    out = np.zeros((n, b.shape[1]))
    for d, m in bands:
        i0, i1 = max(0, -d), min(n, b.shape[0] - d)
        if i1 > i0:
            out[i0:i1] += m[i0:i1, None] * b[i0 + d:i1 + d]
    return out


def _tile_cells(pred: np.ndarray, valid: np.ndarray, window: Window,
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
    num = _area_sums(_area_sums(values, er, 0), ec, 1)  # (cells, cells)
    den = np.outer(np.diff(er), np.diff(ec)) if everywhere else \
        _area_sums(_area_sums(valid.astype(np.float32), er, 0), ec, 1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a clipped cell may be empty
        cells = num / den
    cells = blur_cells(fill_invalid(cells, den > 0).astype(np.float64), blur)
    return cells, (r_lo, r_hi, fr, ok_r), (c_lo, c_hi, fc, ok_c)


def blur_cells(cells: np.ndarray, sigma: float) -> np.ndarray:
    """A tile's cell averages as a blurry coarse map sees them: a Gaussian of ``sigma``
    cells, the edge cells repeated beyond the tile (0: unchanged).

    A model's prediction is smoother than the average of the pixels under each of
    its pixels (Marigold decodes from a latent grid 8x coarser, Depth Anything from
    14 px patches). Comparing the tile with the coarse map through the same blur
    keeps detail the coarse map has lost from biasing the tile's scale. On the
    fusion benchmark a sigma of 1.5 cut the gigapixel geometry's NRMSE by a third
    (BENCHMARKS.md, "Fusion quality").

    Examples
    --------
    >>> blur_cells(np.array([[0.0, 0.0, 3.0, 0.0, 0.0]]), 1.0).round(2).tolist()
    [[0.16, 0.73, 1.2, 0.73, 0.16]]
    """
    if sigma <= 0:
        return cells
    from scipy import ndimage  # imported where needed: 0.2 s

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
    lo, hi, frac = _linear_taps(start, length, grid / full, grid)
    lo, hi = (np.clip(x, first, last) - first for x in (lo, hi))
    return np.clip(edges, 0, length), lo, hi, frac, whole[lo] & whole[hi]


def _area_sums(a: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Integrals of ``a`` (constant over each pixel) between consecutive ``edges``
    (sorted fractional pixel positions from 0 to the axis length), by a sparse
    product with :func:`tiledepth.read.area_matrix` (10x faster than ``np.add.reduceat``)."""
    m = area_matrix(edges, a.shape[axis]).astype(a.dtype, copy=False)
    return m @ a if axis == 0 else (m @ a.T).T


def fill_invalid(coarse: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of the coarse prediction with the nearest valid value.

    So that upsampling near mask edges never mixes in junk. Returns a copy.
    """
    out = np.array(coarse, dtype=np.float32)
    if valid.all() or not valid.any():
        return out
    from scipy import ndimage  # 0.2 s to import: only where a mask needs filling

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
    r_lo, r_hi, fr = _linear_taps(int(window.row_off), int(window.height), ch / h, ch)
    c_lo, c_hi, fc = _linear_taps(int(window.col_off), int(window.width), cw / w, cw)
    r_lo, r_hi = r_lo - origin[0], r_hi - origin[0]
    c_lo, c_hi = c_lo - origin[1], c_hi - origin[1]
    c0, c1 = int(c_lo.min()), int(c_hi.max()) + 1  # only the coarse columns in use
    return _bilinear(coarse[:, c0:c1], r_lo, r_hi, fr, c_lo - c0, c_hi - c0, fc)


def _bilinear(grid: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray, fr: np.ndarray,
              c_lo: np.ndarray, c_hi: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """Separable bilinear interpolation of ``grid`` at the taps of :func:`_linear_taps`:
    along rows first, then along columns; (len(r_lo), len(c_lo)) float32."""
    rows = grid[r_lo] * (1 - fr)[:, None] + grid[r_hi] * fr[:, None]
    return (rows[:, c_lo] * (1 - fc) + rows[:, c_hi] * fc).astype(np.float32)


def coarse_extent(window: Window, full_shape: tuple[int, int],
                  grid_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The (rows, cols) slices of a coarse grid that :func:`upsample_window` reads for a window."""
    (h, w), (ch, cw) = full_shape, grid_shape
    r_lo, r_hi, _ = _linear_taps(int(window.row_off), int(window.height), ch / h, ch)
    c_lo, c_hi, _ = _linear_taps(int(window.col_off), int(window.width), cw / w, cw)
    return slice(int(r_lo.min()), int(r_hi.max()) + 1), slice(int(c_lo.min()), int(c_hi.max()) + 1)


def _linear_taps(start: int, length: int, ratio: float,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper coarse indices and the upper weight for full-resolution pixels.

    Full-resolution pixel ``i`` sits at coarse coordinate ``(i + 0.5) * ratio - 0.5``,
    clamped to the coarse grid.
    """
    x = np.clip((np.arange(start, start + length) + 0.5) * ratio - 0.5, 0, size - 1)
    lo = np.minimum(np.floor(x).astype(np.intp), max(size - 2, 0))
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, (x - lo).astype(np.float32)
