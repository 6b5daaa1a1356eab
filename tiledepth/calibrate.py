"""Calibrate: what the output's values are, and a metric fit to a reference or control points.

The engine fuses tiles into one map ``f`` in the frame of its global anchor (step 2):
the model's coarse prediction (relative depth, 0 near and 1 far for Marigold) or,
with ``anchor="reference"``, the reference raster in the output's units. The
output is then ``g(f)`` (step 4b):

* ``depth``: ``f`` unchanged (uncalibrated), or metres below the reference's
  highest point the robust fit keeps (:func:`kept_samples`), ``z_top - z`` (calibrated);
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
Depth is measured below the highest height the fit keeps (:func:`kept_samples`):
a mistyped point or a spike in the reference is not the top.
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
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tiledepth.errors import InputError, PersistentInputError
from tiledepth.kinds import KINDS
from tiledepth.protocols import MaskedReader
from tiledepth.references import (
    MIN_PAIRS,
    ControlPoints,
    check_reference_cells,
    pixel_side,
    read_control_points,
    read_reference,
    reference_pixel_size,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "Target",
    "ValueMap",
    "cell_means",
    "kept_samples",
    "robust_fit",
]

log = logging.getLogger(__name__)


class CalibrationError(PersistentInputError):
    """The calibration cannot be fitted from the fused map and the reference: known only
    once the tiles are predicted, but a run of the same command fails the same way (the
    engine keeps the tiles without advising that)."""


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

#: Most reweighting rounds of :func:`robust_fit` (a few tens usually; gross outliers at
#: the end of the x range, mistyped control points, can take a hundred or more).
FIT_ITERATIONS = 1000
#: Samples, at most, that :func:`robust_fit`'s start is taken from (all pairs of them).
START_SAMPLES = 256
#: A sample is gross (:func:`kept_samples`) where its residual is beyond this many robust
#: standard deviations (the robust solve's :data:`tiledepth.fusion.solve.ROBUST_K`) ...
GROSS_K = 3.0
#: ... and beyond this fraction of the fitted values' range: the whole relief the fit
#: spans (all of it: a disparity's near end is a long tail, which percentiles cut off). A
#: model's misfit stays under it (a disparity model fitted to heights by a line misses the
#: highest by half the range, a model blind to trees their height), where a mistyped point
#: or a spike of a DSM passes it.
GROSS_FLOOR = 1.0


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
            f = np.asarray(fused, np.float64)
            span = abs(self.far - self.near)
            if self.space == "disparity":
                out = 0.5 + 0.5 * (f - self.far) / span
                du = 0.5 * u / span
            else:
                raw = f - 2 * self.near + self.far
                den = np.maximum(raw, span)
                out = np.where(raw < span, 2.0, span / den)  # nearer than near: clipped to 1
                du = u * span / den**2
            # a value clipped to [0.5, 1] no longer depends on the prediction: no spread
            return np.where((out < 0.5) | (out > 1.0), 0.0, du).astype(np.float32)
        return (abs(self.scale) * u).astype(np.float32)


def robust_fit(x: np.ndarray, y: np.ndarray, *, c: float = 1.345,
               iterations: int = FIT_ITERATIONS) -> tuple[float, float, float]:
    """Robust line ``y ~ scale * x + shift``: Huber M-estimate by reweighted least squares.

    It starts from Siegel's repeated-median line (:func:`_repeated_median`, of at most
    :data:`START_SAMPLES` samples spread over the input), which up to half the samples
    gross do not move, and the robust standard deviation ``sigma`` of its residuals
    (1.4826 x their median absolute deviation), kept for the whole fit. Residuals beyond
    ``c sigma`` get weight ``c sigma / |r|``, so gross outliers (a building missing from an
    old DEM, a mistyped control point) barely move the fit. The rounds go on until the fit
    changes by less than 1e-10 of itself (a warning where it has not after
    ``iterations``): from a least-squares start, with ``sigma`` taken anew each round, one
    mistyped point at the end of the x range took a hundred rounds, and the 50 there were
    stopped it with a scale 17 % off.

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
    # 1. The robust start, and the scale of its residuals (fixed: each round then lowers
    # one convex Huber loss, where a scale taken anew from each fit's residuals drifted)
    sub = np.unique(np.linspace(0, x.size - 1, min(x.size, START_SAMPLES)).round()
                    .astype(np.intp))
    coef = _repeated_median(x[sub], y[sub])
    if coef is None:  # the spread samples' x are one value: a least-squares start
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
    r = y - design @ coef
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    sigma = max(sigma, 1e-12 * max(1.0, float(np.abs(y).max())))
    # 2. Reweighted least squares to the fixed point
    change = np.full(2, np.inf)
    for _ in range(iterations):
        a = np.abs(y - design @ coef) / (c * sigma)
        w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-300))
        sw = np.sqrt(w)
        new = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)[0]
        done = np.allclose(new, coef, rtol=1e-10, atol=1e-12)
        change = np.abs(new - coef)
        coef = new
        if done:
            break
    else:
        log.warning("the robust fit of %d samples did not settle in %d rounds (its scale "
                    "still moved by %.3g, its shift by %.3g): the calibration may be off",
                    x.size, iterations, change[0], change[1])
    r = y - design @ coef
    return float(coef[0]), float(coef[1]), float(np.sqrt(np.mean(r * r)))


def _repeated_median(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Siegel's repeated-median line ``(scale, shift)``: the median over the samples of the
    median slope to every other sample, and the median of ``y - scale x``. Half the
    samples can be anything without moving it far. None where every ``x`` is one value.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(7.0); y = 2 * x + 1; y[0] = 100.0
    >>> _repeated_median(x, y).tolist()
    [2.0, 1.0]
    """
    dx = x[:, None] - x[None, :]  # (n, n)
    pair = dx != 0
    rows = pair.any(axis=1)
    if not rows.any():
        return None
    slopes = np.where(pair, (y[:, None] - y[None, :]) / np.where(pair, dx, 1.0), np.nan)
    scale = float(np.median(np.nanmedian(slopes[rows], axis=1)))
    return np.array([scale, float(np.median(y - scale * x))])


def kept_samples(x: np.ndarray, y: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """The samples a fit ``y ~ scale * x + shift`` keeps: all but the gross ones, whose
    residual ``|r - median(r)|`` is beyond :data:`GROSS_K` robust standard deviations
    (1.4826 MAD) and beyond :data:`GROSS_FLOOR` times the range of the fitted values:
    farther from the fit than the whole relief it spans.

    Parameters
    ----------
    x, y : ndarray of shape (N,)
        The fit's samples (finite).
    scale, shift : float
        The fit (:func:`robust_fit`).

    Returns
    -------
    ndarray of shape (N,), bool

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(0, 1, 6); y = 10 * x; y[2] += 50; y[4] += 5
    >>> kept_samples(x, y, 10.0, 0.0).tolist()
    [True, True, False, True, True, True]
    """
    x = np.asarray(x, np.float64)
    r = np.asarray(y, np.float64) - (scale * x + shift)
    dev = np.abs(r - np.median(r))
    typical = 1.4826 * float(np.median(dev))
    return dev <= max(GROSS_K * typical, GROSS_FLOOR * abs(scale) * float(np.ptp(x)))


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
        # the highest reference height, which depth = top - height counts from in the anchor;
        # the calibration's depth counts from the highest one its fit keeps (value_map)
        self.top = None
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
    def for_run(cls, opts, grid, coarse_shape: tuple[int, int], *, area=None,
                raster_shape: tuple[int, int] | None = None) -> Target:
        """The target of a run: reads ``opts.reference`` or ``opts.control`` onto ``grid``.

        ``coarse_shape``: the coarse map's (:func:`tiledepth.stages.coarse_image_shape`),
        which a reference anchor is read at. ``area``: the area of interest
        (:class:`tiledepth.aoi.Area`) ``grid`` is the window of, in an input of
        ``raster_shape`` (height, width): control points outside it are said to be
        outside the area, not the raster.
        """
        from rasterio.transform import Affine
        from rasterio.windows import Window

        if opts.reference is None and opts.control is None:
            return cls(opts.output_kind)
        if grid.transform is None:
            raise InputError("calibration needs a georeferenced input (a CRS and transform); "
                             "this one has none or only GCPs")
        h, w = grid.height, grid.width
        if opts.control is not None:
            # the whole input in the grid's pixels, where the grid is an area of it
            raster = None if area is None or raster_shape is None else Window(
                -area.window.col_off, -area.window.row_off, raster_shape[1], raster_shape[0])
            points = read_control_points(opts.control, crs=grid.crs, transform=grid.transform,
                                         height=h, width=w, points_crs=opts.control_crs,
                                         raster=raster)
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

    def check_points(self, reader: MaskedReader, path: str | os.PathLike | None) -> None:
        """Refuse control points of which fewer than MIN_PAIRS fall on valid pixels of
        ``reader`` (a :class:`tiledepth.protocols.MaskedReader` on the output's grid): the
        output has no value at masked ones, so the fit would fail once every tile is
        predicted. Called before the model; reads one pixel's validity a point, until
        enough are found. ``path``: the points' file, for the message."""
        from rasterio.windows import Window

        if self.points is None:
            return
        found = 0
        for row, col in zip(self.points.rows.tolist(), self.points.cols.tolist(), strict=True):
            found += bool(reader.read_valid(Window(col, row, 1, 1))[0, 0])
            if found >= MIN_PAIRS:
                return
        # (an --aoi polygon masks the pixels of its window outside it: points there too)
        raise InputError(f"{path}: only {found} of {self.points.rows.size} control points lie "
                         f"on valid pixels of the input (the others on masked, no-data or "
                         f"--mask pixels, or outside the --aoi polygons, where the output has "
                         f"no value); need {MIN_PAIRS}")

    def check_cells(self, reader: MaskedReader, path: str | os.PathLike | None) -> None:
        """Refuse a reference of which fewer than MIN_PAIRS cells with heights hold a valid
        pixel of ``reader`` (:func:`tiledepth.references.check_reference_cells`), as
        :meth:`check_points` does for control points. ``path``: the reference, for the
        message."""
        if self.cells is None:
            return
        check_reference_cells(path, self.cells, self.cell, reader)

    def to_kind(self, heights: np.ndarray) -> np.ndarray:
        """Reference heights in the output kind's sense (depth = top - height)."""
        return self.top - heights if self.kind == "depth" else heights

    def anchor(self, coarse: np.ndarray) -> np.ndarray:
        """Step 2b: the global anchor (ch, cw); the reference where ``anchor="reference"``.

        Where the reference has no data, the coarse prediction fitted to it fills in.
        """
        if self.anchor_heights is None:
            return coarse
        if self.anchor_heights.shape != coarse.shape:  # (for_run's coarse_shape is not it)
            raise CalibrationError(
                f"anchor reference: the reference was read on {self.anchor_heights.shape[1]} x "
                f"{self.anchor_heights.shape[0]} coarse pixels but the coarse map has "
                f"{coarse.shape[1]} x {coarse.shape[0]} (a tiledepth bug: please report it); "
                "use --anchor model meanwhile")
        ref = self.to_kind(self.anchor_heights.astype(np.float64))
        ok = np.isfinite(ref)
        if ok.sum() < MIN_PAIRS:
            raise CalibrationError("the reference covers fewer than 3 pixels of the coarse "
                                   "grid; check its extent and CRS")
        if not ok.all():
            try:
                a, b, _ = robust_fit(coarse[ok], ref[ok])
            except ValueError as exc:  # (an input error: a rerun fails the same way)
                raise CalibrationError(
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
            x, heights, source = fused, self.points.z, "control"
        else:
            x = cell_means(fused, rows, cols, self.cell, self.cells.shape)
            heights, source = self.cells, "reference"
        y = self.to_kind(heights)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < MIN_PAIRS:
            raise CalibrationError(f"only {int(ok.sum())} {source} samples fall on valid "
                                   f"output pixels; need {MIN_PAIRS}")
        try:
            scale, shift, rmse = robust_fit(x[ok], y[ok])
        except ValueError as exc:
            raise CalibrationError(f"cannot calibrate to the {source}: {exc}") from exc
        if self.kind == "depth":
            # metres below the highest height the fit keeps, not below a mistyped point or
            # a spike of the reference, nor one off the output: y = top - height, so a
            # lower top shifts every depth by the difference (none where it is the highest)
            top = float(np.max(heights[ok][kept_samples(x[ok], y[ok], scale, shift)]))
            if top != self.top:
                log.info("depth is measured below the highest height the calibration keeps, "
                         "%.6g (the highest given, %.6g, is gross against the fit or off "
                         "the output)", top, self.top)
                shift += top - self.top
        cal = Calibration(scale, shift, rmse, int(ok.sum()), source)
        log.info("calibration to the %s: scale %.6g, shift %.6g, RMSE %.4g over %d samples",
                 source, scale, shift, rmse, cal.samples)
        return ValueMap(self.kind, scale=scale, shift=shift), cal
