"""Calibrate: what the output's values are, and a metric fit to a reference or control points.

The engine fuses tiles into one map ``f`` in the frame of its global anchor (step 2):
the model's coarse prediction (relative depth, 0 near and 1 far for Marigold) or,
with ``anchor="reference"``, the reference raster in the output's units. The
output is then ``g(f)`` (step 4b):

* ``depth``: ``f`` unchanged (uncalibrated), or metres below the reference's
  highest point, ``z_top - z`` (calibrated);
* ``height``: far minus depth, ``max(coarse) - f`` (uncalibrated), or metres in
  the reference's vertical datum (calibrated);
* ``inverse-depth``: ``(far - near) / (f - 2 near + far)``, in [0.5, 1] with 1
  nearest: an affine-invariant depth has no true zero, so the near end is
  taken to be half as far as the far end. Never calibrated.

``f`` is in the model's own space (:mod:`tiledepth.kinds`: each kind is fused in
its own space), so the uncalibrated maps follow the model's kind (the target's
``model_kind``, :meth:`Target.for_model`). Depth and metric depth (larger is
farther) are mapped as above; metric depth's height stays in metres. Disparity
(larger is nearer) is not turned into depth (its unknown shift would bend it):
``depth`` keeps the disparity, ``height`` is ``f - min(coarse)`` (0 at the
farthest point, growing nearer) and ``inverse-depth`` maps ``[min, max]`` of
the coarse disparity affinely onto [0.5, 1]. A calibration fits its scale's
sign, so it needs no such care.

Calibration (``reference=`` a DEM/DSM/CHM of heights, or ``control=`` a CSV of
x, y, z points) fits one robust global scale and shift, :func:`robust_fit`,
between the fused map and the reference's heights turned into the output kind.
A raster reference is compared at the coarser of the two resolutions (cells of
``k x k`` output pixels, ``k`` the reference's pixel size in output pixels),
because a fit of a sharp map against a smooth one would shrink the scale; the
reference is reprojected onto that cell grid (at most :data:`MAX_CELLS` a side)
with GDAL's warper, which reads the reference window by window
(:mod:`tiledepth.references`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tiledepth.errors import InputError
from tiledepth.kinds import KINDS
from tiledepth.references import (
    MIN_PAIRS,
    ControlPoints,
    pixel_side,
    read_control_points,
    read_reference,
    reference_pixel_size,
)

__all__ = [
    "Calibration",
    "Target",
    "ValueMap",
    "cell_means",
    "robust_fit",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Calibration:
    """A metric calibration: ``output = scale * fused + shift``.

    Attributes
    ----------
    scale, shift : float
        The robust fit.
    rmse : float
        Root mean square residual of the fit over all ``samples``, in the
        reference's units (metres).
    samples : int
        Reference cells or control points the fit used.
    source : {'reference', 'control'}
    """

    scale: float
    shift: float
    rmse: float
    samples: int
    source: str


#: Largest side of the calibration cell grid, and of the lattice of fused samples on it.
MAX_CELLS = 1024
MAX_SAMPLES = 2048


#: An inverse-depth map whose near and far ends are at most this many float32 steps
#: apart (at their magnitude) is flat: one value, 1.0, not the round-off of the fused
#: values divided by a span of nothing (noise between 0 and 4).
FLAT_ULPS = 8


@dataclass(frozen=True)
class ValueMap:
    """The map from the fused anchor-frame values to the output's values.

    Affine kinds: ``out = scale * f + shift``. ``inverse-depth`` of depth-like values
    (``space="depth"``: depth, metric depth): ``out = (far - near) / (f - 2 * near +
    far)``; of disparity (``space="disparity"``, larger is nearer): ``out = 0.5 + 0.5
    * (f - far) / (near - far)``. ``near`` and ``far`` are the fused values at the
    nearest and the farthest point, so both give 1 at ``near`` and 0.5 at ``far``;
    values beyond them are clipped to [0.5, 1], and a flat map (``near`` and ``far``
    within :data:`FLAT_ULPS` float32 steps) is 1.0 everywhere.

    Examples
    --------
    >>> import numpy as np
    >>> ValueMap("height", scale=-1.0, shift=1.0).apply(np.array([0.0, 0.25, 1.0]))
    array([1.  , 0.75, 0.  ], dtype=float32)
    >>> ValueMap("inverse-depth", near=0.0, far=1.0).apply(np.array([0.0, 1.0]))
    array([1. , 0.5], dtype=float32)
    >>> ValueMap("inverse-depth", near=2.0, far=1.0, space="disparity").apply(
    ...     np.array([2.0, 1.5, 1.0]))
    array([1.  , 0.75, 0.5 ], dtype=float32)
    >>> ValueMap("inverse-depth", near=0.3, far=0.3).apply(np.array([0.3, 0.30000004]))
    array([1., 1.], dtype=float32)
    """

    kind: str = "depth"
    scale: float = 1.0
    shift: float = 0.0
    near: float = 0.0
    far: float = 1.0
    space: str = "depth"

    @property
    def flat(self) -> bool:
        """Whether ``near`` and ``far`` are one value, up to float32 round-off."""
        top = np.float32(max(abs(self.near), abs(self.far)))
        return bool(abs(self.far - self.near) <= FLAT_ULPS * float(np.spacing(top)))

    def apply(self, fused: np.ndarray) -> np.ndarray:
        """Output values of (h, w) fused values; NaN stays NaN."""
        if self.kind == "inverse-depth":
            f = np.asarray(fused, np.float64)
            if self.flat:  # no depth range: uniform, not round-off over a zero span
                return np.where(np.isnan(f), np.nan, 1.0).astype(np.float32)
            span = abs(self.far - self.near)
            if self.space == "disparity":
                out = 0.5 + 0.5 * (f - self.far) / span
            else:  # nearer than near (den < span) would pass 1, and den <= 0 is no depth
                out = span / np.maximum(f - 2 * self.near + self.far, span)
            return np.clip(out, 0.5, 1.0).astype(np.float32)
        if (self.scale, self.shift) == (1.0, 0.0) and getattr(fused, "dtype", None) == np.float32:
            # the identity (uncalibrated depth): the values of the line below (-0 as 0),
            # without its float64 passes (0.13-1 s of the blending thread at 67 MP)
            return np.add(fused, np.float32(0.0), dtype=np.float32)
        return (self.scale * np.asarray(fused, np.float64) + self.shift).astype(np.float32)

    def apply_uncertainty(self, fused: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """A spread (standard deviation) of the fused values, in output units."""
        u = np.abs(np.asarray(spread, np.float64))
        if self.kind == "inverse-depth":
            if self.flat:  # the output is one value
                return np.where(np.isnan(u), np.nan, 0.0).astype(np.float32)
            span = abs(self.far - self.near)
            if self.space == "disparity":
                return (0.5 * u / span).astype(np.float32)
            den = np.maximum(np.asarray(fused, np.float64) - 2 * self.near + self.far, span)
            return (u * span / den**2).astype(np.float32)
        return (abs(self.scale) * u).astype(np.float32)


def robust_fit(x: np.ndarray, y: np.ndarray, *, c: float = 1.345,
               iterations: int = 50) -> tuple[float, float, float]:
    """Robust line ``y ~ scale * x + shift``: Huber M-estimate by reweighted least squares.

    Residuals beyond ``c`` robust standard deviations (1.4826 x the median
    absolute deviation) get weight ``c sigma / |r|``, so gross outliers (a
    building missing from an old DEM, a mistyped control point) barely move
    the fit.

    Parameters
    ----------
    x, y : ndarray of shape (N,)
        Finite values, N >= 3.
    c : float
        Huber's tuning constant, in robust standard deviations.
    iterations : int
        Most reweighting rounds.

    Returns
    -------
    scale, shift, rmse : float
        The fit and the root mean square of all residuals.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(0, 1, 50); y = 3 * x - 2; y[::10] += 40  # 5 gross outliers
    >>> [round(v, 6) for v in robust_fit(x, y)[:2]]
    [3.0, -2.0]
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if x.size < MIN_PAIRS:
        raise ValueError(f"a fit needs at least {MIN_PAIRS} pairs, got {x.size}")
    if not np.ptp(x) > 0:
        raise ValueError("x is constant: no scale can be fitted")
    design = np.c_[x, np.ones_like(x)]
    w = np.ones_like(x)
    coef = np.zeros(2)
    for _ in range(iterations):
        sw = np.sqrt(w)
        new = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)[0]
        r = y - design @ new
        sigma = 1.4826 * np.median(np.abs(r - np.median(r)))
        sigma = max(sigma, 1e-12 * max(1.0, float(np.abs(y).max())))
        a = np.abs(r) / (c * sigma)
        w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-300))
        done = np.allclose(new, coef, rtol=1e-10, atol=1e-12)
        coef = new
        if done:
            break
    r = y - design @ coef
    return float(coef[0]), float(coef[1]), float(np.sqrt(np.mean(r * r)))


def cell_means(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, cell: int,
               shape: tuple[int, int], *, min_fraction: float = 0.5) -> np.ndarray:
    """Average lattice samples of a map into cells of ``cell x cell`` pixels.

    Parameters
    ----------
    values : ndarray of shape (len(rows), len(cols))
        Samples at the pixels ``rows x cols``; NaN = no value.
    rows, cols : ndarray of int
        Pixel rows and columns of the samples.
    cell : int
        Cell side in pixels; sample ``(r, c)`` falls in cell ``(r // cell, c // cell)``.
    shape : tuple of int
        (rows, cols) of the cell grid; samples beyond it are ignored.
    min_fraction : float
        A cell with fewer finite samples than this fraction of its samples is NaN.

    Returns
    -------
    ndarray of shape ``shape``, float64

    Examples
    --------
    >>> import numpy as np
    >>> v = np.arange(16, dtype=float).reshape(4, 4)
    >>> cell_means(v, np.arange(4), np.arange(4), 2, (2, 2))
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    nr, nc = shape
    ri, ci = np.asarray(rows) // cell, np.asarray(cols) // cell
    keep_r, keep_c = ri < nr, ci < nc
    v = np.asarray(values, np.float64)[np.ix_(keep_r, keep_c)]
    idx = (ri[keep_r][:, None] * nc + ci[keep_c][None, :]).ravel()
    finite = np.isfinite(v).ravel()
    total = np.bincount(idx, minlength=nr * nc)
    count = np.bincount(idx[finite], minlength=nr * nc)
    sums = np.bincount(idx[finite], weights=v.ravel()[finite], minlength=nr * nc)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / count
    out[(count == 0) | (count < min_fraction * total)] = np.nan
    return out.reshape(nr, nc)


# --------------------------------------------------------------------------- the target


class Target:
    """What the output's values are, and how to calibrate them (used by the engine).

    Build it with :meth:`for_run` (files) or ``Target(kind)`` (no calibration).

    Parameters
    ----------
    kind : {'depth', 'height', 'inverse-depth'}
        The output kind.
    model_kind : {'depth', 'disparity', 'metric_depth'}
        The space the fused map is in (the model's kind, :mod:`tiledepth.kinds`):
        the uncalibrated value maps follow it. :meth:`for_model` sets it.
    cells : ndarray of shape (nr, nc), optional
        The reference's heights on the calibration cell grid (NaN = none).
    cell : int
        Cell side in output pixels.
    points : ControlPoints, optional
    anchor_heights : ndarray of shape (ch, cw), optional
        The reference's heights on the coarse grid, for ``anchor="reference"``.
    """

    def __init__(self, kind: str = "depth", *, model_kind: str = "depth",
                 cells: np.ndarray | None = None, cell: int = 1,
                 points: ControlPoints | None = None,
                 anchor_heights: np.ndarray | None = None) -> None:
        if model_kind not in KINDS:
            raise ValueError(f"model_kind must be one of {', '.join(KINDS)}, got {model_kind!r}")
        self.kind = kind
        self.model_kind = model_kind
        self.cells = cells
        self.cell = cell
        self.points = points
        self.anchor_heights = anchor_heights
        self.top = None  # highest reference height: depth = top - height
        if cells is not None:
            if np.isfinite(cells).sum() < MIN_PAIRS:
                raise InputError(f"the reference covers fewer than 3 cells of the input "
                                 f"({cells.shape[1]} x {cells.shape[0]} cells of "
                                 f"{cell} px): check its extent and CRS, or whether its "
                                 "pixels are too coarse for this input")
            self.top = float(np.nanmax(cells))
        elif points is not None:
            self.top = float(np.max(points.z))

    @property
    def calibrated(self) -> bool:
        return self.cells is not None or self.points is not None

    def for_model(self, model_kind: str) -> Target:
        """This target for a model of ``model_kind``: the same reference, with the
        fused map read in that kind's space (``self`` when it already is).

        Examples
        --------
        >>> Target("height").for_model("disparity").model_kind
        'disparity'
        """
        if model_kind == self.model_kind:
            return self
        if model_kind not in KINDS:
            raise ValueError(f"model_kind must be one of {', '.join(KINDS)}, got {model_kind!r}")
        other = copy.copy(self)  # the reference's arrays are shared, never written
        other.model_kind = model_kind
        return other

    @classmethod
    def for_run(cls, opts, grid, coarse_shape: tuple[int, int]) -> Target:
        """The target of a run: reads ``opts.reference`` or ``opts.control`` onto ``grid``."""
        from rasterio.transform import Affine

        if opts.reference is None and opts.control is None:
            return cls(opts.output_kind)
        if grid.transform is None:
            raise InputError("calibration needs a georeferenced input (a CRS and transform); "
                             "this one has none or only GCPs")
        h, w = grid.height, grid.width
        if opts.control is not None:
            points = read_control_points(opts.control, crs=grid.crs, transform=grid.transform,
                                         height=h, width=w, points_crs=opts.control_crs)
            return cls(opts.output_kind, points=points)
        pixel = pixel_side(grid.transform)
        ratio = reference_pixel_size(opts.reference, grid.crs) / pixel
        cell = max(1, math.ceil(ratio - 1e-6), math.ceil(max(h, w) / MAX_CELLS))
        cell = min(cell, h, w)
        shape = (h // cell, w // cell)
        cells = read_reference(opts.reference, crs=grid.crs, shape=shape,
                               transform=grid.transform @ Affine.scale(cell))
        anchor = None
        if opts.anchor == "reference":
            ch, cw = coarse_shape
            finer = ratio < max(h / ch, w / cw)
            anchor = read_reference(opts.reference, crs=grid.crs, shape=coarse_shape,
                                    transform=grid.transform @ Affine.scale(w / cw, h / ch),
                                    resampling="average" if finer else "bilinear")
        log.info("reference %s: %.2f output pixels a pixel; calibrating on %d x %d cells of %d",
                 opts.reference, ratio, shape[0], shape[1], cell)
        return cls(opts.output_kind, cells=cells, cell=cell, anchor_heights=anchor)

    def to_kind(self, heights: np.ndarray) -> np.ndarray:
        """Reference heights in the output kind's sense (depth = top - height)."""
        return self.top - heights if self.kind == "depth" else heights

    def anchor(self, coarse: np.ndarray) -> np.ndarray:
        """Step 2b: the global anchor (ch, cw); the reference where ``anchor="reference"``.

        Where the reference has no data, the coarse prediction fitted to it fills in.
        """
        if self.anchor_heights is None:
            return coarse
        ref = self.to_kind(self.anchor_heights.astype(np.float64))
        ok = np.isfinite(ref)
        if ok.sum() < MIN_PAIRS:
            raise InputError("the reference covers fewer than 3 pixels of the coarse grid; "
                             "check its extent and CRS")
        if not ok.all():
            try:
                a, b, _ = robust_fit(coarse[ok], ref[ok])
            except ValueError as exc:  # (an input error: a rerun fails the same way)
                raise InputError(
                    f"the reference covers only a part of the image where the coarse "
                    f"prediction is flat ({exc}), so it cannot fill the rest; use a "
                    "reference that covers more of it, or --anchor model") from exc
            ref = np.where(ok, ref, a * coarse + b)
        return ref.astype(np.float32)

    def _relative_map(self, low: float, high: float) -> ValueMap:
        """The uncalibrated value map, from the coarse anchor's smallest and largest
        value, in the model's space: height grows and inverse depth grows nearer."""
        if self.model_kind == "disparity":  # larger is nearer: high is the near end
            if self.kind == "height":  # 0 at the farthest point, as for depth
                return ValueMap("height", scale=1.0, shift=-low)
            return ValueMap(self.kind, near=high, far=low, space="disparity")
        # depth and metric depth: larger is farther (metric height stays in metres)
        if self.kind == "height":
            return ValueMap("height", scale=-1.0, shift=high)
        return ValueMap(self.kind, near=low, far=high)

    def sample_pixels(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns where the fused map is needed (a lattice, or the points)."""
        if self.points is not None:
            return self.points.rows, self.points.cols
        nr, nc = self.cells.shape
        step = max(1, math.ceil(max(height, width) / MAX_SAMPLES))
        return (np.arange(step // 2, nr * self.cell, step),
                np.arange(step // 2, nc * self.cell, step))

    def value_map(self, coarse: np.ndarray,
                  fused_at: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                  shape: tuple[int, int]) -> tuple[ValueMap, Calibration | None]:
        """Step 4b: the map to output values, and the calibration when there is one.

        Parameters
        ----------
        coarse : ndarray of shape (ch, cw)
            The anchor (its range sets near and far when uncalibrated).
        fused_at : callable
            ``fused_at(rows, cols)`` gives the fused map at the pixels of
            :meth:`sample_pixels`: (len(rows), len(cols)) for a lattice, (N,) for points.
        shape : tuple of int
            (H, W) of the raster.
        """
        if not self.calibrated:
            return self._relative_map(float(np.nanmin(coarse)), float(np.nanmax(coarse))), None
        rows, cols = self.sample_pixels(*shape)
        fused = fused_at(rows, cols)
        if self.points is not None:
            x, y, source = fused, self.to_kind(self.points.z), "control"
        else:
            x = cell_means(fused, rows, cols, self.cell, self.cells.shape)
            y, source = self.to_kind(self.cells), "reference"
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < MIN_PAIRS:
            raise InputError(f"only {int(ok.sum())} {source} samples fall on valid output "
                             f"pixels; need {MIN_PAIRS}")
        try:
            scale, shift, rmse = robust_fit(x[ok], y[ok])
        except ValueError as exc:
            raise InputError(f"cannot calibrate to the {source}: {exc}") from exc
        cal = Calibration(scale, shift, rmse, int(ok.sum()), source)
        log.info("calibration to the %s: scale %.6g, shift %.6g, RMSE %.4g over %d samples",
                 source, scale, shift, rmse, cal.samples)
        return ValueMap(self.kind, scale=scale, shift=shift), cal
