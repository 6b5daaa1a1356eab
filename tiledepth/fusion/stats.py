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

import bisect
import functools
from dataclasses import dataclass, field

import numpy as np

from tiledepth.fusion.maps import corner_count, unit

__all__ = ["PairStats", "PairTable", "StatsTable", "TileStats", "TileTable", "Where",
           "affine_stats", "pair_stats", "recentred", "replace_rows", "tile_stats"]

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
               where_j: Where | None = None, weights: np.ndarray | None = None) -> PairStats:
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
    weights : ndarray of shape (H, W), optional
        Each pixel's weight in the sums (:func:`tiledepth.fusion.blend.overlap_weights`),
        scaled to a mean of 1 over the valid pixels (the sums of unit weights keep their
        total); None: every pixel weighted 1.

    Examples
    --------
    >>> ok = np.ones((1, 4), bool); t = TileStats(0, 0.0, 4.0, np.eye(2), np.zeros(2))
    >>> a, b = np.array([[0.0, 1, 2, 3]]), np.array([[0.0, 1, 2, 5]])
    >>> pair_stats(t, t, a, b, ok).sab, pair_stats(t, t, a, b, ok, weights=ok * 1.0).sab
    (20.0, 20.0)
    >>> w = np.array([[1.0, 1, 1, 0]])  # the last pixel left out: (0 + 1 + 4) x 4/3
    >>> round(pair_stats(t, t, a, b, ok, weights=w).sab, 4)
    6.6667
    """
    k = i.corners
    if k == 1:
        a = _values(pred_i, valid).astype(np.float64) - i.mean
        b = _values(pred_j, valid).astype(np.float64) - j.mean
        n = float(a.size)
        if weights is None:
            wa, wb, wn, unit = a, b, n, 1.0
        else:  # the sums with the weights as given, then scaled to their mean of 1
            w = _values(weights, valid)
            wa, wb, wn = w * a, w * b, float(w.sum(dtype=np.float64))
            unit = n / wn if wn > 0 else 0.0
        sa, sb = float(wa.sum()), float(wb.sum())
        saa, sbb, sab = _dot(wa, a), _dot(wb, b), _dot(wa, b)
        gram = np.array([
            [saa, sa, -sab, -sa],
            [sa, wn, -sb, -wn],
            [-sab, -sb, sbb, sb],
            [-sa, -wn, sb, wn],
        ])
        return PairStats(i.id, j.id, n, gram * unit if unit != 1.0 else gram)
    if where_i is None or where_j is None:
        raise ValueError("bilinear pair statistics need where_i and where_j")
    r, c, weight = _lattice(valid, PAIR_SAMPLES)
    a = pred_i[r, c].astype(np.float64) - i.mean
    b = pred_j[r, c].astype(np.float64) - j.mean
    g = np.empty((len(a), 16))  # [features of i, -features of j], written in place
    _features(a, *_positions(where_i, r, c), out=g[:, :8])
    np.negative(_features(b, *_positions(where_j, r, c), out=g[:, 8:]), out=g[:, 8:])
    if weights is None:
        return PairStats(i.id, j.id, float(np.count_nonzero(valid)), (g.T @ g) * weight)
    w = weights[r, c]  # (N,), scaled to a mean of 1 below
    total = float(w.sum(dtype=np.float64))
    weight = weight * len(w) / total if total > 0 else 0.0
    gram = (g * w[:, None]).T @ g  # two operands: BLAS need not give an exactly symmetric
    # product (tables pack the upper triangle and check); the mean of it and its transpose
    # is, and leaves an already symmetric matrix exactly as it is
    return PairStats(i.id, j.id, float(np.count_nonzero(valid)), ((gram + gram.T) / 2) * weight)


def _positions(where: Where, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions across the tile (0 to 1) of pixels ``(r, c)`` of a crop of it."""
    rows, cols, shape = where
    return unit(shape[0])[rows][r], unit(shape[1])[cols][c]


def _features(q: np.ndarray, u: np.ndarray, v: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """``[phi_k q, phi_k]`` (N, 8): bilinear corner weights at positions ``(u, v)``; written
    into ``out`` (N, 8) if given (no intermediate arrays joined: the same numbers)."""
    out = np.empty((len(q), 8)) if out is None else out
    phi = out[:, 4:]  # (N, 4)
    u1, v1 = 1 - u, 1 - v
    for k, (a, b) in enumerate([(u1, v1), (u1, v), (u, v1), (u, v)]):
        np.multiply(a, b, out=phi[:, k])
    np.multiply(phi, q[:, None], out=out[:, :4])
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two 1-D arrays without BLAS.

    NumPy's einsum loop is single-threaded: BLAS ``ddot`` on long vectors starts
    threads, slower than it on a loaded machine (BENCHMARKS.md, hot paths).
    """
    return float(np.einsum("i,i->", a, b))


def recentred(stats: TileStats, mean: float) -> TileStats:
    """The same sums with the prediction centred on ``mean`` instead of ``stats.mean``.

    ``q' = q + d`` with ``d = stats.mean - mean``, so the features ``[phi q', phi]`` are
    ``[phi q, phi] T`` with ``T = [[I, 0], [d I, I]]``: ``gram' = T^T gram T`` and
    ``fc' = T^T fc``. Value maps solved from either give the same aligned values.

    Examples
    --------
    >>> p = np.arange(6.0).reshape(2, 3); ok = np.ones((2, 3), bool)
    >>> a = recentred(tile_stats(0, p, ok, 2 * p), 1.0)  # q = p - 1: sums 31, 9; 80, 30
    >>> a.gram.round(6).tolist(), a.fc.round(6).tolist(), a.mean
    ([[31.0, 9.0], [9.0, 6.0]], [80.0, 30.0], 1.0)
    """
    k, d = stats.corners, stats.mean - mean
    t = np.eye(2 * k)
    t[k:, :k] = d * np.eye(k)
    gram = t.T @ stats.gram @ t
    return TileStats(stats.id, float(mean), stats.n, (gram + gram.T) / 2, t.T @ stats.fc,
                     stats.scc)


def affine_stats(stats):
    """The affine statistics contained in bilinear ones (the corner weights sum to 1 at
    every pixel, so summing the corners' rows and columns of the Gram matrix leaves the
    sums of one scale and shift); affine ones as they are. Of a :class:`TileStats`, a
    :class:`PairStats`, or a :class:`TileTable` or :class:`PairTable` of them."""
    if isinstance(stats, TileTable | PairTable):
        if stats.corners == 1:
            return stats
        k, gram = stats.corners, stats.gram  # (rows, m k, m k)
        rows, m = len(gram), gram.shape[1] // k
        out = type(stats)(1, packed=False)  # the corner sums need not be exactly symmetric
        # all rows at once: each row's sums the same, in the same order, as of its object
        columns = {name: stats.column(name).copy() for name in out.fields}
        columns["gram"] = gram.reshape(rows, m, k, m, k).sum(axis=(2, 4)).reshape(rows, m * m)
        if "fc" in columns:
            columns["fc"] = stats.column("fc").reshape(rows, 2, k).sum(axis=2)
        out.set_columns(columns)
        return out
    k = stats.corners if isinstance(stats, TileStats) else stats.gram.shape[0] // 4
    if k == 1:
        return stats
    m = stats.gram.shape[0] // k
    gram = stats.gram.reshape(m, k, m, k).sum(axis=(1, 3))
    if isinstance(stats, PairStats):
        return PairStats(stats.i, stats.j, stats.n, gram)
    return TileStats(stats.id, stats.mean, stats.n, gram, stats.fc.reshape(2, k).sum(axis=1),
                     stats.scc)


class StatsTable:
    """Rows of fixed-shape fields, kept as arrays per field (a struct of arrays).

    Rows are appended into preallocated chunks of ``chunk`` rows, so an append
    copies one row and a table costs about the bytes of its numbers, not one
    Python object per row. :meth:`column` joins the chunks into one, in place (the
    rows are not kept twice).

    Examples
    --------
    >>> t = StatsTable({"id": ((), np.int64), "v": ((2,), np.float64)}, chunk=2)
    >>> for i in range(3):
    ...     t.append(i, [i, 2 * i])
    >>> len(t), t.column("v")[:, 1].tolist()
    (3, [0.0, 2.0, 4.0])
    """

    def __init__(self, fields: dict[str, tuple[tuple[int, ...], type]], *,
                 chunk: int = 4096) -> None:
        self.fields, self.chunk = dict(fields), chunk
        self._chunks: list[dict[str, np.ndarray]] = []
        self._starts: list[int] = []  # each chunk's first row
        self._rows = self._free = 0  # rows, and free rows in the last chunk

    def __len__(self) -> int:
        return self._rows

    def append(self, *row) -> None:
        """Append one row: a value per field, in the fields' order."""
        if self._free == 0:
            self._chunks.append({name: np.empty((self.chunk, *shape), dtype)
                                 for name, (shape, dtype) in self.fields.items()})
            self._starts.append(self._rows)
            self._free = self.chunk
        at = self._rows - self._starts[-1]
        for (name, _), value in zip(self.fields.items(), row, strict=True):
            self._chunks[-1][name][at] = value
        self._rows += 1
        self._free -= 1

    def column(self, name: str) -> np.ndarray:
        """Field ``name`` of every row, ndarray of shape (rows, *shape) (not to be changed)."""
        if not self._chunks:
            shape, dtype = self.fields[name]
            return np.empty((0, *shape), dtype)
        if len(self._chunks) > 1 or self._free:  # join the chunks into one, in place
            used = self._rows - self._starts[-1]
            self._chunks = [{f: np.concatenate([c[f] for c in self._chunks[:-1]]
                                               + [self._chunks[-1][f][:used]])
                             for f in self.fields}]
            self._starts, self._free = [0], 0
        return self._chunks[0][name]

    def get(self, j: int) -> dict[str, np.ndarray]:
        """Row ``j``: a value per field (read from its chunk, no join)."""
        if not 0 <= j < self._rows:
            raise IndexError(f"row {j} of a table of {self._rows}")
        k = bisect.bisect_right(self._starts, j) - 1
        return {name: self._chunks[k][name][j - self._starts[k]] for name in self.fields}

    def take(self, keep: np.ndarray) -> StatsTable:
        """A table of the rows ``keep`` (a boolean mask or row numbers); this one where the
        mask keeps every row."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.all():
            return self
        cols = {name: self.column(name)[keep] for name in self.fields}
        out = type(self).__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.set_columns(cols)
        return out

    def set_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Make the rows of the table those of ``columns``: an array per field, each
        of shape (rows, *shape) (kept, not copied)."""
        rows = len(next(iter(columns.values())))
        self._chunks, self._starts = ([dict(columns)], [0]) if rows else ([], [])
        self._rows, self._free = rows, 0


def _pack(gram: np.ndarray, packed: bool) -> np.ndarray:
    """A Gram matrix as a table stores it: its upper triangle where ``packed`` (it must be
    exactly symmetric: checked), else all of it."""
    if not packed:
        return gram.ravel()
    if not np.array_equal(gram, gram.T, equal_nan=True):  # NaN: a singular tile, reported later
        raise ValueError("a packed statistics' Gram matrix must be exactly symmetric")
    return gram[_triu(gram.shape[0])]


@functools.lru_cache(maxsize=8)
def _triu(m: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(m)``, made once per size (read-only)."""
    r, c = np.triu_indices(m)
    r.flags.writeable = c.flags.writeable = False
    return r, c


def _unpack(stored: np.ndarray, m: int, packed: bool) -> np.ndarray:
    """Gram matrices (rows, m, m) from :func:`_pack`'s rows."""
    if not packed:
        return stored.reshape(len(stored), m, m)
    r, c = _triu(m)
    out = np.empty((len(stored), m, m))
    out[:, r, c] = stored
    out[:, c, r] = stored
    return out


def _gram_field(m: int, packed: bool) -> tuple[tuple[int], type]:
    return (m * (m + 1) // 2 if packed else m * m,), np.float64


class TileTable(StatsTable):
    """:class:`TileStats` of many tiles as a :class:`StatsTable` (the Gram matrices by their
    upper triangles); iterating gives the :class:`TileStats` back, one at a time."""

    def __init__(self, corners: int = 1, *, packed: bool = True, chunk: int = 4096) -> None:
        m = 2 * corners
        super().__init__({"id": ((), np.int32), "mean": ((), np.float64),
                          "n": ((), np.float64), "scc": ((), np.float64),
                          "gram": _gram_field(m, packed), "fc": ((m,), np.float64)},
                         chunk=chunk)
        self.corners, self.packed = corners, packed

    @classmethod
    def of(cls, tiles) -> TileTable:
        """``tiles`` as a table: a TileTable as it is, TileStats copied in."""
        if isinstance(tiles, TileTable):
            return tiles
        tiles = list(tiles)
        out = cls(tiles[0].corners if tiles else 1)
        for t in tiles:
            out.add(t)
        return out

    def add(self, t: TileStats) -> None:
        """Append one tile's statistics."""
        self.append(t.id, t.mean, t.n, t.scc, _pack(t.gram, self.packed), t.fc)

    @property
    def gram(self) -> np.ndarray:
        """ndarray of shape (T, 2K, 2K)."""
        return _unpack(self.column("gram"), 2 * self.corners, self.packed)

    def row(self, j: int) -> TileStats:
        """Row ``j`` as a :class:`TileStats`."""
        c = self.get(j)
        gram = _unpack(c["gram"][None], 2 * self.corners, self.packed)[0]
        return TileStats(int(c["id"]), float(c["mean"]), float(c["n"]), gram, c["fc"],
                         float(c["scc"]))

    def __iter__(self):
        return (self.row(j) for j in range(len(self)))


class PairTable(StatsTable):
    """:class:`PairStats` of many overlaps as a :class:`StatsTable`, as :class:`TileTable`."""

    def __init__(self, corners: int = 1, *, packed: bool = True, chunk: int = 4096) -> None:
        super().__init__({"i": ((), np.int32), "j": ((), np.int32), "n": ((), np.float64),
                          "gram": _gram_field(4 * corners, packed)}, chunk=chunk)
        self.corners, self.packed = corners, packed

    @classmethod
    def of(cls, pairs, corners: int = 1) -> PairTable:
        """``pairs`` as a table: a PairTable as it is, PairStats copied in."""
        if isinstance(pairs, PairTable):
            return pairs
        pairs = list(pairs)
        out = cls(pairs[0].gram.shape[0] // 4 if pairs else corners)
        for p in pairs:
            out.add(p)
        return out

    def add(self, p: PairStats) -> None:
        """Append one overlap's statistics."""
        self.append(p.i, p.j, p.n, _pack(p.gram, self.packed))

    @property
    def gram(self) -> np.ndarray:
        """ndarray of shape (P, 4K, 4K)."""
        return _unpack(self.column("gram"), 4 * self.corners, self.packed)

    def row(self, j: int) -> PairStats:
        """Row ``j`` as a :class:`PairStats`."""
        c = self.get(j)
        return PairStats(int(c["i"]), int(c["j"]), float(c["n"]),
                         _unpack(c["gram"][None], 4 * self.corners, self.packed)[0])

    def __iter__(self):
        return (self.row(j) for j in range(len(self)))


def replace_rows(table, rows):
    """A copy of ``table`` (a TileTable or PairTable) with some rows replaced, in place in
    the row order (a solve of the copy adds its sums in the same order as the original's).

    Parameters
    ----------
    table : TileTable or PairTable
    rows : dict of int to TileStats or PairStats
        Row number -> its new statistics.

    Examples
    --------
    >>> t = TileTable()
    >>> for i in range(3):
    ...     t.add(TileStats(i, float(i), 1.0, np.eye(2), np.zeros(2)))
    >>> u = replace_rows(t, {1: TileStats(1, 9.0, 1.0, np.eye(2), np.zeros(2))})
    >>> u.column("mean").tolist(), t.column("mean").tolist()
    ([0.0, 9.0, 2.0], [0.0, 1.0, 2.0])
    """
    if not rows:
        return table
    new = type(table)(table.corners, packed=table.packed)
    for stats in rows.values():
        new.add(stats)
    at = np.fromiter(rows, np.int64, len(rows))
    columns = {}
    for name in table.fields:
        columns[name] = table.column(name).copy()
        columns[name][at] = new.column(name)
    out = type(table)(table.corners, packed=table.packed)
    out.set_columns(columns)
    return out
