"""Metrics: how good a fused depth map is, with ground truth and without.

Against ground truth (``depth_metrics``), mask-aware, after the least-squares
scale and shift alignment of the affine-invariant evaluation protocol (in depth
space, or in disparity space as an option):

* **AbsRel**: mean ``|pred - gt| / gt``;
* **delta1**: fraction of pixels with ``max(pred / gt, gt / pred) < 1.25`` (an aligned
  value at or below 0 taken as 1e-9 here, a miss; AbsRel and RMSE take it as it is);
* **NRMSE**: RMSE over the 2nd-98th percentile range of the ground truth, which
  does not depend on how far the scene is (a drone at 100 m or 1000 m).

``seam_ratio`` compares the fused map's gradient error in the tiles' overlap
bands with that in their interiors: 1.0 means the seams are invisible.

``stream_metrics`` computes both from row blocks read again for each of its
passes (the alignment's sums, then the errors, then the truth's percentiles),
so that a raster is never held whole: ``tiledepth eval`` reads files that way,
and ``depth_metrics`` and ``seam_ratio`` are the same computation on one block.

Without ground truth, ``overlap_consistency`` is the root-mean-square
difference of overlapping aligned tiles relative to the map's range: the
figure every ``tiledepth run`` reports in its sidecar (there computed from the
alignment's sufficient statistics, see :func:`tiledepth.fusion.diagnose`).

Pure NumPy on in-memory arrays (or blocks of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from tiledepth.tiling import Tile, overlap_slices

__all__ = ["MIN_PIXELS", "SPACES", "DepthMetrics", "NothingToScore", "align_prediction",
           "coverage", "depth_metrics", "fit_scale_shift", "overlap_consistency", "seam_ratio",
           "stream_metrics", "value_range"]

#: Spaces the evaluation aligns a prediction in.
SPACES = ("depth", "disparity")
#: Fewest pixels compared: a scale and shift fit any two exactly (errors 0, a perfect score).
MIN_PIXELS = 3
#: The percentiles of the ground truth whose difference NRMSE divides by.
RANGE_PERCENTILES = (2.0, 98.0)
#: Bins of each histogram that narrows a percentile down; values of one bin kept at most
#: (beyond, the bin is cut into bins again in one more pass): 512 KiB and 8 MiB.
HISTOGRAM_BINS = 1 << 16
KEPT_VALUES = 1 << 20

#: A block of rows, top to bottom: prediction and truth (as depth) and a mask or None.
Block = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


class NothingToScore(ValueError):
    """Pixels compared, but too few (under :data:`MIN_PIXELS`) or a prediction constant over
    them: the fitted scale and shift would leave a perfect score, or the ground truth's mean
    (a scale of 0), which scored as errors look like a prediction's.

    Attributes
    ----------
    pixels : int
        The pixels compared.
    constant : bool
        True for a constant prediction (over at least :data:`MIN_PIXELS` pixels).
    """

    def __init__(self, pixels: int, constant: bool) -> None:
        self.pixels, self.constant = pixels, constant
        if constant:
            text = (f"the prediction is constant over the {pixels} pixels compared: it has no "
                    "relief to score (a scale and shift fitted to it leave the ground truth's "
                    "mean)")
        else:
            text = (f"only {pixels} pixel{'s' if pixels > 1 else ''} to compare: a scale and "
                    f"shift fit {pixels} exactly; at least {MIN_PIXELS} are needed")
        super().__init__(text)


@dataclass(frozen=True)
class DepthMetrics:
    """Errors of a prediction against ground truth (see the module docstring).

    Attributes
    ----------
    abs_rel, delta1, nrmse, rmse : float
        ``rmse`` in the ground truth's unit.
    scale, shift : float
        The alignment fitted (in ``space``).
    pixels : int
        Valid pixels compared.
    space : str
    """

    abs_rel: float
    delta1: float
    nrmse: float
    rmse: float
    scale: float
    shift: float
    pixels: int
    space: str = "depth"

    def as_dict(self) -> dict:
        return asdict(self)


def value_range(values: np.ndarray) -> float:
    """The 2nd to 98th percentile range of the finite values (the full range if that is 0).

    Examples
    --------
    >>> value_range(np.arange(101.0))
    96.0
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan")
    lo, hi = np.percentile(finite, [2, 98])
    return float(hi - lo) if hi > lo else float(np.ptp(finite))


def fit_scale_shift(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(s, t)`` minimising ``sum (s * pred + t - target)^2``.

    Parameters
    ----------
    pred, target : ndarray of shape (N,)

    Returns
    -------
    tuple of float

    Examples
    --------
    >>> s, t = fit_scale_shift(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0]))
    >>> round(s, 12), round(t, 12)
    (2.0, 1.0)
    """
    p = np.asarray(pred, np.float64)
    y = np.asarray(target, np.float64)
    pm, ym = p.mean(), y.mean()
    var = float(np.dot(p - pm, p - pm))
    s = float(np.dot(p - pm, y - ym) / var) if var > 0 else 0.0
    return s, float(ym - s * pm)


def _valid(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and "
                         f"{gt.shape}")
    ok = np.isfinite(pred) & np.isfinite(gt) & (gt > 0)
    if mask is not None:
        if mask.shape != gt.shape:
            raise ValueError(f"mask must have the shape of gt {gt.shape}, got {mask.shape}")
        ok &= mask.astype(bool)
    return ok


def align_prediction(pred: np.ndarray, gt: np.ndarray, *, mask: np.ndarray | None = None,
                     space: str = "depth") -> tuple[np.ndarray, float, float]:
    """The prediction aligned to the ground truth's depth by scale and shift.

    Parameters
    ----------
    pred : ndarray of shape (H, W)
        Depth (``space='depth'``) or disparity-like values (``'disparity'``:
        affine in ``1 / depth``).
    gt : ndarray of shape (H, W)
        Ground-truth depth, > 0; NaN, inf and values <= 0 are invalid.
    mask : ndarray of shape (H, W), bool, optional
        True where the comparison counts.
    space : {'depth', 'disparity'}
        Fit ``s * pred + t`` to ``gt`` (depth), or to ``1 / gt`` and then
        invert (disparity, clipped to the ground truth's largest depth).

    Returns
    -------
    aligned : ndarray of shape (H, W), float64
        Depth; NaN outside the valid pixels.
    scale, shift : float
        The fit, in ``space``.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    ok = _valid(pred, gt, mask)
    if not ok.any():
        raise ValueError("no valid pixel to compare: the ground truth (or mask) is empty "
                         "where the prediction is finite")
    p = pred[ok].astype(np.float64)
    g = gt[ok].astype(np.float64)
    out = np.full(gt.shape, np.nan)
    if space == "depth":
        s, t = fit_scale_shift(p, g)
        out[ok] = s * p + t
    else:
        s, t = fit_scale_shift(p, 1.0 / g)
        disp = np.maximum(s * p + t, 1.0 / g.max())
        out[ok] = 1.0 / disp
    return out, s, t


def depth_metrics(pred: np.ndarray, gt: np.ndarray, *, mask: np.ndarray | None = None,
                  space: str = "depth") -> DepthMetrics:
    """AbsRel, delta1 and NRMSE of a prediction after scale-and-shift alignment.

    Parameters
    ----------
    pred, gt, mask, space
        As in :func:`align_prediction`.

    Returns
    -------
    DepthMetrics

    Raises
    ------
    ValueError
        A bad ``space``; shapes that differ; no valid pixel to compare;
        :class:`NothingToScore` where fewer than :data:`MIN_PIXELS` are, or the
        prediction is constant over them.

    Examples
    --------
    >>> gt = np.linspace(1.0, 2.0, 100).reshape(10, 10)
    >>> m = depth_metrics(3.0 * gt - 1.0, gt)
    >>> round(m.abs_rel, 9), m.delta1, round(m.nrmse, 9)
    (0.0, 1.0, 0.0)
    """
    return stream_metrics(lambda: [(pred, gt, mask)], space=space)[0]


def coverage(shape: tuple[int, int], tiles: list[Tile]) -> np.ndarray:
    """How many tiles cover each pixel, ndarray of ``shape``, int16.

    Examples
    --------
    >>> from tiledepth.tiling import tile_grid
    >>> grid = tile_grid(10, 16, 10, 0.2)
    >>> coverage((10, 16), [t for row in grid for t in row])[0].tolist()
    [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    """
    out = np.zeros(shape, np.int16)
    for t in tiles:
        out[t.row_slice, t.col_slice] += 1
    return out


def seam_ratio(pred: np.ndarray, gt: np.ndarray, tiles: list[Tile], *,
               mask: np.ndarray | None = None, space: str = "depth") -> float:
    """Mean gradient error in the tiles' overlap bands over the same in their interiors.

    The prediction is first aligned to the ground truth (:func:`align_prediction`);
    the gradient error of a pixel is ``|grad(aligned) - grad(gt)|`` with forward
    differences, over pixels whose neighbours are valid too. Bands are the
    pixels more than one tile covers; interiors those exactly one covers.

    Parameters
    ----------
    pred, gt, mask, space
        As in :func:`align_prediction`.
    tiles : list of Tile
        The tiles the prediction was fused from (:func:`tiledepth.tiling.tile_grid`).

    Returns
    -------
    float
        1.0: the seams are invisible; above 1: the overlap bands are worse.
        NaN without both bands and interiors.
    """
    return stream_metrics(lambda: [(pred, gt, mask)], space=space, tiles=tiles)[1]


def stream_metrics(blocks: Callable[[], Iterable[Block]], *, space: str = "depth",
                   tiles: list[Tile] | None = None) -> tuple[DepthMetrics, float]:
    """:func:`depth_metrics` and :func:`seam_ratio` of a map read block by block.

    Least squares are sums, so the first pass adds up the alignment's (as centred
    moments, merged block by block: raw sums of squares would cancel); the second
    adds up the errors of the aligned blocks, each block's gradients reaching into the
    next one's first row; the 2-98 % range is exact, from histograms that narrow each
    percentile to a few values (a third pass, more only for values piled into a bin).
    Only a block and these sums are held.

    Parameters
    ----------
    blocks : callable
        Returns a fresh iterable of the map's row blocks, top to bottom, each
        ``(pred, gt, mask)`` as in :func:`align_prediction` (``mask`` may be None);
        called once per pass.
    space : {'depth', 'disparity'}
        As in :func:`align_prediction`.
    tiles : list of Tile, optional
        For the seam ratio, as in :func:`seam_ratio`.

    Returns
    -------
    metrics : DepthMetrics
    seam_ratio : float
        NaN without tiles (or without both bands and interiors).

    Raises
    ------
    ValueError
        As :func:`depth_metrics`: a bad ``space``, shapes that differ, no valid pixel
        to compare, or (:class:`NothingToScore`, after the first pass) fewer than
        :data:`MIN_PIXELS` of them or a prediction constant over them.

    Examples
    --------
    >>> gt = np.linspace(1.0, 2.0, 100).reshape(10, 10)
    >>> rows = lambda: [(3.0 * gt[i:i + 3] - 1.0, gt[i:i + 3], None) for i in range(0, 10, 3)]
    >>> m, _ = stream_metrics(rows)
    >>> round(m.scale, 9), round(m.shift, 9), m.pixels
    (0.333333333, 0.333333333, 100)
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    fit = _FitSums()
    for pred, gt, mask in blocks():
        ok = _valid(pred, gt, mask)
        p, g = pred[ok].astype(np.float64), gt[ok].astype(np.float64)
        fit.add(p, g if space == "depth" else 1.0 / g, g)
    if fit.n == 0:
        raise ValueError("no valid pixel to compare: the ground truth (or mask) is empty "
                         "where the prediction is finite")
    if fit.n < MIN_PIXELS or fit.pmin == fit.pmax:
        raise NothingToScore(fit.n, constant=fit.n >= MIN_PIXELS)
    s, t = fit.fit()
    errors = _ErrorSums(fit.gmin, fit.gmax, tiles)
    for pred, gt, mask in blocks():
        errors.add(*_aligned(pred, gt, mask, s, t, space, fit.gmax))
    # the percentiles' further passes, over the truth where the comparison counted
    while not errors.truth.narrow():
        for pred, gt, mask in blocks():
            aligned, g = _aligned(pred, gt, mask, s, t, space, fit.gmax)
            errors.truth.add(g[np.isfinite(aligned)])
    return errors.metrics(s, t, space), errors.seam_ratio()


def _aligned(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None, s: float, t: float,
             space: str, gmax: float) -> tuple[np.ndarray, np.ndarray]:
    """A block's aligned depth (NaN outside the valid pixels) and its truth as float64."""
    ok = _valid(pred, gt, mask)
    p = pred[ok].astype(np.float64)
    g = gt.astype(np.float64)
    out = np.full(gt.shape, np.nan)
    if space == "depth":
        out[ok] = s * p + t
    else:
        out[ok] = 1.0 / np.maximum(s * p + t, 1.0 / gmax)  # clipped to the largest depth
    return out, g


class _FitSums:
    """The least-squares fit's sums, block by block: counts, means and centred moments
    (merged as in Chan, Golub and LeVeque's parallel variance), and the prediction's and
    the truth's extremes (a constant prediction is told by its own: its centred moment
    may be rounding noise above 0)."""

    def __init__(self) -> None:
        self.n, self.pm, self.ym, self.cpp, self.cpy = 0, 0.0, 0.0, 0.0, 0.0
        self.pmin, self.pmax = np.inf, -np.inf
        self.gmin, self.gmax = np.inf, -np.inf

    def add(self, p: np.ndarray, y: np.ndarray, g: np.ndarray) -> None:
        """Valid values of a block: prediction ``p``, target ``y`` and truth ``g`` (1-D)."""
        k = p.size
        if k == 0:
            return
        pm, ym = float(p.mean()), float(y.mean())
        dp = p - pm
        n = self.n + k
        d_p, d_y = pm - self.pm, ym - self.ym
        self.cpp += float(np.dot(dp, dp)) + d_p * d_p * self.n * k / n
        self.cpy += float(np.dot(dp, y - ym)) + d_p * d_y * self.n * k / n
        self.pm += d_p * k / n
        self.ym += d_y * k / n
        self.n = n
        self.pmin, self.pmax = min(self.pmin, float(p.min())), max(self.pmax, float(p.max()))
        self.gmin, self.gmax = min(self.gmin, float(g.min())), max(self.gmax, float(g.max()))

    def fit(self) -> tuple[float, float]:
        """``(s, t)`` as :func:`fit_scale_shift` gives them."""
        s = self.cpy / self.cpp if self.cpp > 0 else 0.0
        return s, self.ym - s * self.pm


class _ErrorSums:
    """The second pass's sums: AbsRel, delta1 and squared errors, the seam ratio's
    gradient errors in bands and interiors, and the first histogram of the truth."""

    def __init__(self, gmin: float, gmax: float, tiles: list[Tile] | None) -> None:
        self.n, self.rel, self.delta1, self.sq = 0, 0.0, 0, 0.0
        self.truth = _Percentiles(RANGE_PERCENTILES, gmin, gmax)
        self.tiles = tiles or []
        self.band, self.band_n, self.interior, self.interior_n = 0.0, 0, 0.0, 0
        self.row = 0
        self.last: tuple | None = None  # the previous block's last row: its gradients' end

    def add(self, aligned: np.ndarray, gt: np.ndarray) -> None:
        ok = np.isfinite(aligned)
        a, g = aligned[ok], gt[ok]
        self.n += a.size
        # the errors of s * pred + t as it is (a fit that goes below 0 is scored there)
        self.rel += float(np.sum(np.abs(a - g) / g))
        self.sq += float(np.sum((a - g) ** 2))
        # delta1's ratio alone needs a positive value: one at or below 0 counts as 1e-9
        # (a miss, as far from the truth as it gets)
        ratio = np.maximum(a, 1e-9)
        self.delta1 += int(np.count_nonzero(np.maximum(ratio / g, g / ratio) < 1.25))
        self.truth.add(g)
        if self.tiles:
            self._add_gradients(aligned, np.where(ok, gt, np.nan))

    def _add_gradients(self, aligned: np.ndarray, g: np.ndarray) -> None:
        """Gradient errors of the rows above this block's last (the last waits for the next
        block's first row: forward differences)."""
        rows = aligned.shape[0]
        cover = _coverage_rows(self.tiles, self.row, self.row + rows, aligned.shape[1])
        self.row += rows
        if self.last is not None:
            aligned, g, cover = (np.concatenate([a[None], b]) for a, b in
                                 zip(self.last, (aligned, g, cover), strict=True))
        self.last = aligned[-1], g[-1], cover[-1]
        if aligned.shape[0] < 2:
            return
        dr = np.diff(aligned, axis=0) - np.diff(g, axis=0)  # (h-1, W)
        dc = np.diff(aligned[:-1], axis=1) - np.diff(g[:-1], axis=1)  # (h-1, W-1)
        err = np.hypot(dr[:, :-1], dc)
        # a pixel counts where its aligned value and its neighbours' are finite (the
        # last column has no right neighbour, the map's last row is never added)
        ok = np.isfinite(aligned[:-1, :-1]) & np.isfinite(err)
        cover = cover[:-1, :-1]
        band, interior = ok & (cover > 1), ok & (cover == 1)
        self.band += float(err[band].sum())
        self.band_n += int(np.count_nonzero(band))
        self.interior += float(err[interior].sum())
        self.interior_n += int(np.count_nonzero(interior))

    def metrics(self, s: float, t: float, space: str) -> DepthMetrics:
        rmse = float(np.sqrt(self.sq / self.n))
        lo, hi = self.truth.values()
        rng = hi - lo if hi > lo else self.truth.max - self.truth.min
        return DepthMetrics(
            abs_rel=self.rel / self.n, delta1=self.delta1 / self.n,
            nrmse=rmse / rng if rng > 0 else float("nan"),
            rmse=rmse, scale=s, shift=t, pixels=self.n, space=space,
        )

    def seam_ratio(self) -> float:
        if not self.band_n or not self.interior_n:
            return float("nan")
        inner = self.interior / self.interior_n
        return (self.band / self.band_n) / inner if inner > 0 else float("nan")


def _coverage_rows(tiles: list[Tile], row0: int, row1: int, width: int) -> np.ndarray:
    """Rows ``row0:row1`` of :func:`coverage` (int16)."""
    out = np.zeros((row1 - row0, width), np.int16)
    for t in tiles:
        r0, r1 = max(t.row_slice.start, row0), min(t.row_slice.stop, row1)
        if r1 > r0:
            out[r0 - row0:r1 - row0, t.col_slice] += 1
    return out


class _Percentiles:
    """Exact percentiles (NumPy's default, linear) of values streamed in passes.

    Each pass either counts the values in a histogram, which finds the bin that holds a
    wanted rank, or keeps the values of that bin (distinct values and their counts): the
    bins are a monotonic function of the value, so a rank's bin holds exactly the values
    of the ranks around it. 65536 bins leave a few hundred values per bin of a
    25-megapixel map: one pass counts, the next keeps and sorts; values piled into one
    bin are cut into bins again, one more pass each time.

    Call :meth:`add` with every value of a pass, then :meth:`narrow`; repeat the pass
    while it returns False.
    """

    def __init__(self, percentiles: tuple[float, ...], lo: float, hi: float, *,
                 bins: int | None = None, keep: int | None = None) -> None:
        self.q = np.true_divide(np.asarray(percentiles, np.float64), 100)  # as np.percentile
        self.bins = HISTOGRAM_BINS if bins is None else bins
        self.keep = KEPT_VALUES if keep is None else keep
        self.n, self.min, self.max = 0, np.inf, -np.inf
        self.first = _Bins(lo, hi, self.bins)
        self.counts = np.zeros(self.bins, np.int64)
        self.chunks: list[np.ndarray] | None = []  # the first pass's values, while few
        self.found: dict[int, float] = {}
        #: each rank still sought: ``(path, rank)``, the ``(bins, bin)`` its values fell in,
        #: in turn, and its rank among those values; None before the first pass ends
        self.sought: dict[int, tuple] | None = None
        #: what this pass gathers for each path: ``(bins, counts)`` to count the values in,
        #: or ``(None, list)`` of their distinct values and counts
        self.gather: dict[tuple, tuple] = {}

    def add(self, values: np.ndarray) -> None:
        """Some values of this pass (1-D, finite)."""
        if self.sought is None:
            if values.size == 0:
                return
            self.n += values.size
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))
            self.counts += np.bincount(self.first.index(values), minlength=self.bins)
            if self.chunks is not None:
                self.chunks = [*self.chunks, values.copy()] if self.n <= self.keep else None
            return
        for path, (bins, acc) in self.gather.items():
            v = _follow(values, path)
            if bins is None:
                acc.append(np.unique(v, return_counts=True))
            elif v.size:
                acc += np.bincount(bins.index(v), minlength=self.bins)

    def narrow(self) -> bool:
        """End a pass: True when the percentiles are known (:meth:`values`)."""
        if self.sought is None:
            if self.n == 0:
                return True
            wanted = {r for v in (self.n - 1) * self.q for r in _neighbours(v, self.n)}
            if self.chunks is not None:  # all kept: sorted, done
                values = np.sort(np.concatenate(self.chunks))
                self.found = {r: float(values[r]) for r in wanted}
                return True
            self.chunks = None
            found = {r: (r, self.first, self.counts) for r in wanted}
            self.sought = {r: ((), r) for r in wanted}
        else:
            found = {}
            for r, (path, rank) in self.sought.items():
                bins, acc = self.gather[path]
                if bins is None:
                    self.found[r] = _ranked(acc, rank)
                else:
                    found[r] = (rank, bins, acc)
        self.gather, sought = {}, {}
        for r, (rank, bins, counts) in found.items():
            cum = np.cumsum(counts)
            b = int(np.searchsorted(cum, rank, side="right"))
            path = (*self.sought[r][0], (bins, b))
            sought[r] = (path, rank - (int(cum[b - 1]) if b else 0))
            lo, hi = bins.edges(b)
            if counts[b] <= self.keep or not lo < hi or len(path) > 8:
                # few enough to keep (or a bin that cannot be cut finer: its values are
                # one or two, and so are their distinct values)
                self.gather.setdefault(path, (None, []))
            else:
                cut = _Bins(lo, hi, self.bins)
                self.gather.setdefault(path, (cut, np.zeros(self.bins, np.int64)))
        self.sought = sought
        return not sought

    def values(self) -> tuple[float, ...]:
        """The percentiles: interpolated as :func:`numpy.percentile` does (its ``_lerp``)."""
        if self.n == 0:
            return tuple(float("nan") for _ in self.q)
        out = []
        for v in (self.n - 1) * self.q:
            a, b = (self.found[r] for r in _neighbours(v, self.n))
            gamma = v - np.floor(v)
            diff = b - a
            out.append(float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma))
        return tuple(out)


def _neighbours(v: float, n: int) -> tuple[int, int]:
    """The ranks a percentile at virtual index ``v`` interpolates between (NumPy's)."""
    if v >= n - 1:
        return n - 1, n - 1
    r = int(np.floor(v))
    return r, r + 1


def _ranked(uniques: list, rank: int) -> float:
    """The value of ``rank`` among values given as (distinct values, counts) pairs."""
    values, inverse = np.unique(np.concatenate([u for u, _ in uniques]), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([c for _, c in uniques]))
    return float(values[int(np.searchsorted(np.cumsum(counts), rank, side="right"))])


class _Bins:
    """``bins`` equal bins from ``lo`` to ``hi``; values beyond fall in the end bins."""

    def __init__(self, lo: float, hi: float, bins: int) -> None:
        self.lo, self.bins = lo, bins
        width = (hi - lo) / bins
        self.scale = 1.0 / width if width > 0 and np.isfinite(1.0 / width) else 0.0

    def index(self, values: np.ndarray) -> np.ndarray:
        # monotonic in the value (a subtraction, a product, a floor), whatever the rounding
        return np.clip(np.floor((values - self.lo) * self.scale), 0, self.bins - 1) \
            .astype(np.intp)

    def edges(self, b: int) -> tuple[float, float]:
        """About where bin ``b`` starts and ends (the next histogram's bounds: a guess,
        since values are told apart by :meth:`index`, never by these)."""
        if self.scale == 0:
            return self.lo, self.lo
        return self.lo + b / self.scale, self.lo + (b + 1) / self.scale


def _follow(values: np.ndarray, path: tuple) -> np.ndarray:
    """The values that fell in each ``(bins, bin)`` of ``path`` in turn."""
    for bins, b in path:
        values = values[bins.index(values) == b]
    return values


def overlap_consistency(tiles: list[Tile], aligned: Mapping[int, np.ndarray], *,
                        valid: Mapping[int, np.ndarray] | None = None,
                        relative_to: float | None = None) -> float:
    """Root-mean-square difference of overlapping aligned tiles, relative to the range.

    No ground truth needed: if the tiles' scales and shifts are right, they
    agree on their overlaps up to the model's own noise.

    Parameters
    ----------
    tiles : list of Tile
        The grid's tiles (only those in ``aligned`` count).
    aligned : mapping of int to ndarray of shape (h, w)
        Each tile's aligned prediction, by tile id.
    valid : mapping of int to ndarray of shape (h, w), bool, optional
        Valid pixels of each tile (default: finite values).
    relative_to : float, optional
        The range to divide by; default: the 2-98 percentile range of all tiles.

    Returns
    -------
    float
        NaN when no two tiles overlap.

    Examples
    --------
    >>> from tiledepth.tiling import tile_grid
    >>> a, b = tile_grid(4, 6, 4, 0.5)[0]
    >>> x = {a.id: np.zeros((4, 4)), b.id: np.ones((4, 4))}
    >>> overlap_consistency([a, b], x, relative_to=2.0)
    0.5
    """
    by_id = {t.id: t for t in tiles if t.id in aligned}
    ids = sorted(by_id)
    total, count = 0.0, 0
    for k, i in enumerate(ids):
        for j in ids[k + 1:]:
            sl = overlap_slices(by_id[i], by_id[j])
            if sl is None:
                continue
            a, b = aligned[i][sl[0]], aligned[j][sl[1]]
            ok = np.isfinite(a) & np.isfinite(b)
            if valid is not None:
                ok &= valid[i][sl[0]] & valid[j][sl[1]]
            d = (a[ok] - b[ok]).astype(np.float64)
            total += float(np.dot(d, d))
            count += d.size
    if count == 0:
        return float("nan")
    if relative_to is None:
        relative_to = value_range(np.concatenate([aligned[i].ravel() for i in ids]))
    return float(np.sqrt(total / count) / relative_to)
