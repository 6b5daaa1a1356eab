"""Align: solve every tile's scale and shift in one global least-squares problem.

An affine-invariant model returns each tile ``i`` as ``p_i`` with its own
unknown scale and shift. We look for ``s_i, t_i`` so that the aligned tiles
``s_i * (p_i - m_i) + t_i`` (``m_i`` the tile's mean, for conditioning)

* agree with each other on every overlap (weight 1 per pixel), and
* agree with the upsampled coarse prediction ``c`` of the whole image
  (weight ``coarse_weight`` per pixel), which fixes the global frame and keeps
  low frequencies right,

plus a tiny ridge that keeps flat or mostly masked tiles well-posed. All sums
are normalised by the tile area, so weights do not depend on the tile size.

The problem is built from per-tile and per-pair sufficient statistics (sums of
products over valid pixels), so memory grows with the number of tiles, not of
pixels, and it is solved with scipy's sparse direct solver. Pure NumPy/SciPy:
float32 arrays in, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

__all__ = [
    "Affine1D",
    "PairStats",
    "TileStats",
    "fill_invalid",
    "pair_stats",
    "solve_alignment",
    "solve_scales",
    "tile_stats",
    "upsample_window",
]

#: Tiles with fewer valid pixels than this do not set their own scale prior.
MIN_PIXELS = 16


@dataclass(frozen=True)
class Affine1D:
    """A per-tile value map ``aligned = scale * prediction + shift``."""

    scale: float
    shift: float

    def apply(self, pred: np.ndarray) -> np.ndarray:
        return (pred * np.float32(self.scale) + np.float32(self.shift)).astype(np.float32)


@dataclass(frozen=True)
class TileStats:
    """Sufficient statistics of one tile against the coarse prediction.

    ``q = p - mean`` over the tile's valid pixels; ``c`` is the coarse
    prediction upsampled under the tile. Sums run over valid pixels.
    """

    id: int
    mean: float
    n: float
    sq: float
    sqq: float
    sc: float
    sqc: float
    scc: float


@dataclass(frozen=True)
class PairStats:
    """Sufficient statistics of two tiles on their overlap: ``a = q_i``, ``b = q_j``."""

    i: int
    j: int
    n: float
    sa: float
    sb: float
    saa: float
    sbb: float
    sab: float


def tile_stats(tile_id: int, pred: np.ndarray, valid: np.ndarray,
               coarse: np.ndarray) -> TileStats:
    """Statistics of a tile prediction against the coarse prediction under it.

    Parameters
    ----------
    tile_id : int
        The tile's id.
    pred : ndarray of shape (H, W)
        The tile's raw prediction.
    valid : ndarray of shape (H, W), bool
        Valid pixels; masked pixels never enter the statistics.
    coarse : ndarray of shape (H, W)
        The coarse prediction upsampled to the tile's window.

    Returns
    -------
    TileStats
    """
    p = pred[valid].astype(np.float64)
    c = coarse[valid].astype(np.float64)
    if p.size == 0:
        return TileStats(tile_id, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    mean = float(p.mean())
    q = p - mean
    return TileStats(tile_id, mean, float(p.size), float(q.sum()), _dot(q, q),
                     float(c.sum()), _dot(q, c), _dot(c, c))


def pair_stats(i: TileStats, j: TileStats, pred_i: np.ndarray, pred_j: np.ndarray,
               valid: np.ndarray) -> PairStats:
    """Statistics of two tile predictions over their overlap.

    Parameters
    ----------
    i, j : TileStats
        The two tiles' statistics (for their ids and means).
    pred_i, pred_j : ndarray of shape (H, W)
        Each tile's raw prediction cut to the overlap.
    valid : ndarray of shape (H, W), bool
        Valid pixels of the overlap.
    """
    a = pred_i[valid].astype(np.float64) - i.mean
    b = pred_j[valid].astype(np.float64) - j.mean
    return PairStats(i.id, j.id, float(a.size), float(a.sum()), float(b.sum()),
                     _dot(a, a), _dot(b, b), _dot(a, b))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two 1-D arrays without BLAS.

    NumPy's einsum loop is single-threaded: BLAS ``ddot`` on long vectors starts
    threads that were measured 10x slower than it on a loaded 2-core machine.
    """
    return float(np.einsum("i,i->", a, b))


def solve_alignment(tiles: Iterable[TileStats], pairs: Iterable[PairStats], *,
                    tile_area: float, coarse_weight: float = 0.1,
                    ridge: float = 1e-3, fit: str = "scale_shift") -> dict[int, Affine1D]:
    """Solve all tiles' scales and shifts at once.

    Minimises, over ``s_i, t_i`` with ``A`` the tile area::

        sum_pairs  1/A  * sum_overlap (s_i q_i + t_i - s_j q_j - t_j)^2
      + sum_tiles  w/A  * sum_tile    (s_i q_i + t_i - c)^2
      + ridge * (scale and shift priors)

    where ``w = coarse_weight``. The scale prior of a tile is its own
    least-squares fit to the coarse prediction, or the median of those where the
    tile is flat or almost all masked; the shift prior is the coarse mean under
    the tile. Both are weighted ``ridge`` relative to a typical tile's data
    term, small enough not to bias well-posed tiles.

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
        :func:`solve_scales`); ``none`` keeps every tile as predicted.

    Returns
    -------
    dict of int to Affine1D
        For each tile id, the map from its raw prediction to the fused frame.
    """
    if fit not in ("scale_shift", "scale", "none"):
        raise ValueError(f"fit must be 'scale_shift', 'scale' or 'none', got {fit!r}")
    tiles = [t for t in tiles if t.n > 0]
    pairs = list(pairs)
    if not tiles:
        return {}
    if fit == "none":
        return {t.id: Affine1D(scale=1.0, shift=0.0) for t in tiles}
    if fit == "scale":
        return solve_scales(tiles, pairs, tile_area=tile_area, coarse_weight=coarse_weight,
                            ridge=ridge)
    index = {t.id: k for k, t in enumerate(tiles)}
    n_unknown = 2 * len(tiles)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    rhs = np.zeros(n_unknown)

    def add_block(ks: list[int], block: np.ndarray) -> None:
        idx = np.array(ks)
        rows.append(np.repeat(idx, len(idx)))
        cols.append(np.tile(idx, len(idx)))
        vals.append(block.ravel())

    # Coarse term, and the per-tile priors.
    w = coarse_weight / tile_area
    n = np.array([t.n for t in tiles])
    sqq = np.array([t.sqq for t in tiles])
    cov = np.array([t.sqc - t.sq * t.sc / t.n for t in tiles])
    var = sqq - np.array([t.sq * t.sq / t.n for t in tiles])
    # typical values over the tiles that are not flat: most tiles may be (black borders)
    typical_var = float(np.median(var[var > 0] / n[var > 0])) if np.any(var > 0) else 1.0
    well_posed = (n >= MIN_PIXELS) & (var > 1e-6 * typical_var * n)
    slope = np.where(well_posed, cov / np.where(var > 0, var, 1.0), np.nan)
    fallback = float(np.median(slope[well_posed])) if well_posed.any() else 1.0
    s_prior = np.where(well_posed, slope, fallback)
    # Ridge weights: relative to a typical tile's data term, so unit-free.
    data_weight = max(coarse_weight, 1.0) / tile_area
    mu_s = ridge * data_weight * float(np.median(sqq[sqq > 0])) if np.any(sqq > 0) else ridge
    mu_t = ridge * data_weight * float(np.median(n))
    for k, t in enumerate(tiles):
        add_block([2 * k, 2 * k + 1],
                  w * np.array([[t.sqq, t.sq], [t.sq, t.n]]) + np.diag([mu_s, mu_t]))
        rhs[2 * k] += w * t.sqc + mu_s * s_prior[k]
        rhs[2 * k + 1] += w * t.sc + mu_t * (t.sc / t.n)

    # Pair terms: residual g . (s_i, t_i, s_j, t_j) with g = (a, 1, -b, -1).
    wp = 1.0 / tile_area
    for p in pairs:
        if p.n == 0 or p.i not in index or p.j not in index:
            continue
        ki, kj = index[p.i], index[p.j]
        block = np.array([
            [p.saa, p.sa, -p.sab, -p.sa],
            [p.sa, p.n, -p.sb, -p.n],
            [-p.sab, -p.sb, p.sbb, p.sb],
            [-p.sa, -p.n, p.sb, p.n],
        ])
        add_block([2 * ki, 2 * ki + 1, 2 * kj, 2 * kj + 1], wp * block)

    matrix = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_unknown, n_unknown),
    )
    # Symmetric diagonal scaling (Jacobi) so scales and shifts of very
    # different magnitude solve equally well.
    d = 1.0 / np.sqrt(matrix.diagonal())
    scaled = sparse.diags(d) @ matrix @ sparse.diags(d)
    x = d * spsolve(scaled.tocsc(), d * rhs)
    out = {}
    for k, t in enumerate(tiles):
        s, tt = float(x[2 * k]), float(x[2 * k + 1])
        out[t.id] = Affine1D(scale=s, shift=tt - s * t.mean)
    return out


def solve_scales(tiles: Iterable[TileStats], pairs: Iterable[PairStats], *,
                 tile_area: float, coarse_weight: float = 0.1,
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


def fill_invalid(coarse: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of the coarse prediction with the nearest valid value.

    So that upsampling near mask edges never mixes in junk. Returns a copy.
    """
    out = np.array(coarse, dtype=np.float32)
    if valid.all() or not valid.any():
        return out
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
    # Separable: interpolate along rows on the coarse columns in use, then along columns.
    c0, c1 = int(c_lo.min()), int(c_hi.max()) + 1
    band = coarse[:, c0:c1]
    rows = band[r_lo] * (1 - fr)[:, None] + band[r_hi] * fr[:, None]  # (h, c1 - c0)
    return (rows[:, c_lo - c0] * (1 - fc) + rows[:, c_hi - c0] * fc).astype(np.float32)


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
