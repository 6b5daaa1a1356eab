"""Statistics: per-tile and per-pair sufficient statistics of the alignment problem.

A tile's statistics (:class:`TileStats`) are the Gram matrix of its features
(``[phi_k q, phi_k]``: the centred prediction and the value map's corner weights)
over its valid pixels and their products with the coarse prediction under it; a
pair's (:class:`PairStats`) those of both tiles' features on their overlap. The
solver (:mod:`tiledepth.fusion.solve`) and the diagnosis
(:mod:`tiledepth.fusion.diagnosis`) need nothing else: memory grows with the number
of tiles, not of pixels. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tiledepth.fusion.maps import corner_count, unit

__all__ = ["PairStats", "TileStats", "Where", "affine_stats", "pair_stats", "tile_stats"]

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
        see :func:`tiledepth.fusion.coarse.as_coarse_sees`).
    valid : ndarray of shape (H, W), bool
        Valid pixels; masked ones never enter the statistics.
    coarse : ndarray of shape (H, W)
        The coarse prediction upsampled to the tile's window.
    alignment : {'affine', 'bilinear'}
        The value map the statistics are for (see :data:`tiledepth.fusion.maps.ALIGNMENTS`).

    Returns
    -------
    TileStats
    """
    k = corner_count(alignment)
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
        f = _features(pred[r, cc] - mean, unit(pred.shape[0])[r], unit(pred.shape[1])[cc])
        gram = (f.T @ f) * weight
        fc = (f.T @ coarse[r, cc].astype(np.float64)) * weight
    return TileStats(tile_id, mean, n, gram, fc, _dot(c, c))


#: Pixels a masked bilinear tile's statistics are taken on (every pixel up to this many;
#: beyond, a regular lattice of about this many, the sums scaled to every valid pixel; tiles
#: without masked pixels get exact sums on the coarse cells, see
#: :func:`tiledepth.fusion.coarse.coarse_tile_stats`).
BILINEAR_SAMPLES = 2 ** 16
#: The same for an overlap's bilinear statistics (a smaller lattice: an overlap's sums
#: need fewer pixels than a tile's; BENCHMARKS.md, fusion quality and hot paths).
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


def _positions(where: Where, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions across the tile (0 to 1) of pixels ``(r, c)`` of a crop of it."""
    rows, cols, shape = where
    return unit(shape[0])[rows][r], unit(shape[1])[cols][c]


def _features(q: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[phi_k q, phi_k]`` (N, 8): bilinear corner weights at positions ``(u, v)``."""
    phi = np.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], axis=1)  # (N, 4)
    return np.concatenate([phi * q[:, None], phi], axis=1)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two 1-D arrays without BLAS.

    NumPy's einsum loop is single-threaded: BLAS ``ddot`` on long vectors starts
    threads, slower than it on a loaded machine (BENCHMARKS.md, hot paths).
    """
    return float(np.einsum("i,i->", a, b))


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
