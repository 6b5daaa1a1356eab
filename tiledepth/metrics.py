"""Metrics: how good a fused depth map is, with ground truth and without.

Against ground truth (``depth_metrics``), mask-aware, after the least-squares
scale and shift alignment of the affine-invariant evaluation protocol (in depth
space, or in disparity space as an option):

* **AbsRel**: mean ``|pred - gt| / gt``;
* **delta1**: fraction of pixels with ``max(pred / gt, gt / pred) < 1.25``;
* **NRMSE**: RMSE over the 2nd-98th percentile range of the ground truth, which
  does not depend on how far the scene is (a drone at 100 m or 1000 m).

``seam_ratio`` compares the fused map's gradient error in the tiles' overlap
bands with that in their interiors: 1.0 means the seams are invisible.

Without ground truth, ``overlap_consistency`` is the root-mean-square
difference of overlapping aligned tiles relative to the map's range: the
figure every ``tiledepth run`` reports in its sidecar (there computed from the
alignment's sufficient statistics, see :func:`tiledepth.fusion.diagnose`).

Pure NumPy on in-memory arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from tiledepth.tiling import Tile, overlap_slices

__all__ = ["SPACES", "DepthMetrics", "align_prediction", "coverage", "depth_metrics",
           "fit_scale_shift", "overlap_consistency", "seam_ratio", "value_range"]

#: Spaces the evaluation aligns a prediction in.
SPACES = ("depth", "disparity")


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

    Examples
    --------
    >>> gt = np.linspace(1.0, 2.0, 100).reshape(10, 10)
    >>> m = depth_metrics(3.0 * gt - 1.0, gt)
    >>> round(m.abs_rel, 9), m.delta1, round(m.nrmse, 9)
    (0.0, 1.0, 0.0)
    """
    aligned, s, t = align_prediction(pred, gt, mask=mask, space=space)
    ok = np.isfinite(aligned)
    a = np.maximum(aligned[ok], 1e-9)
    g = gt[ok].astype(np.float64)
    rmse = float(np.sqrt(np.mean((a - g) ** 2)))
    rng = value_range(g)
    return DepthMetrics(
        abs_rel=float(np.mean(np.abs(a - g) / g)),
        delta1=float(np.mean(np.maximum(a / g, g / a) < 1.25)),
        nrmse=rmse / rng if rng > 0 else float("nan"),
        rmse=rmse, scale=s, shift=t, pixels=int(ok.sum()), space=space,
    )


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
    aligned, _, _ = align_prediction(pred, gt, mask=mask, space=space)
    g = np.where(np.isfinite(aligned), gt.astype(np.float64), np.nan)
    err = np.zeros(gt.shape)
    ok = np.isfinite(aligned)
    dr = np.diff(aligned, axis=0) - np.diff(g, axis=0)  # (H-1, W)
    dc = np.diff(aligned, axis=1) - np.diff(g, axis=1)  # (H, W-1)
    err[:-1, :-1] = np.hypot(dr[:, :-1], dc[:-1, :])
    ok[-1, :] = ok[:, -1] = False
    ok[:-1, :-1] &= np.isfinite(err[:-1, :-1])
    cover = coverage(gt.shape, tiles)
    band, interior = ok & (cover > 1), ok & (cover == 1)
    if not band.any() or not interior.any():
        return float("nan")
    inner = float(err[interior].mean())
    return float(err[band].mean()) / inner if inner > 0 else float("nan")


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
