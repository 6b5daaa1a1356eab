"""``tiledepth eval``: score a depth GeoTIFF against a ground-truth raster.

The file side of :mod:`tiledepth.metrics`: reads the prediction, the ground
truth and an optional mask (all on one grid), the tiles' geometry from the
prediction's tags (for the seam ratio) and its sidecar (for the tiles'
consistency), and returns one flat dict. The rasters are read by blocks of rows,
once per pass of :func:`tiledepth.metrics.stream_metrics` (and once more for a
height map's range), a truth on another grid reprojected block by block: the
whole raster is never held in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth.errors import InputError, OptionError
from tiledepth.metrics import MIN_PIXELS, SPACES, NothingToScore, stream_metrics
from tiledepth.references import pixel_side, reference_pixel_size, scale_offset

__all__ = ["GT_KINDS", "disparity_like", "evaluate_files", "format_evaluation",
           "kind_of_raster"]

#: What a ground truth may be said to hold (``gt_kind``): depth, or height (a DSM or CHM).
#: A truth whose band says disparity or inverse depth is inverted (:func:`evaluate_files`).
GT_KINDS = ("depth", "height")
#: Two grids are one when their pixels' corners agree within this fraction of a pixel.
GRID_TOLERANCE = 1e-3
#: About how many pixels of each raster a block of rows holds (whole rows: at least one).
WINDOW_PIXELS = 1 << 20
#: GDAL's block cache while reading: one row of the rasters' blocks, which the blocks of
#: rows cut through, is decompressed once (the cache, not the raster, is what stays).
GDAL_CACHE = 64 * 2**20
#: Source pixels read around a block's footprint when reprojecting it: its bilinear
#: neighbours, and the warper's approximate transform, reach past its edges.
WARP_MARGIN = 4


#: What a raster's values are, from its band description or tiledepth's tags.
_DEPTH_KINDS = ("depth", "metric_depth")
_INVERSE_KINDS = ("disparity", "inverse-depth")


class _Band:
    """Band 1 of a raster, read by blocks of rows of the prediction's grid as float64 (NaN =
    no data); its tags (with the band's ``DESCRIPTION``) and its own grid.

    ``onto``, a grid ``(height, width, transform, crs)``: where the raster is on another
    one, each block is reprojected onto it from the source pixels under it (average where
    the source is finer, bilinear where coarser; nearest for a mask, which is read as
    stored). The values are the band's stored values times its scale plus its offset (a
    truth stored as centimetre counts is read in metres), as a reference is
    (:func:`tiledepth.references.read_reference`).
    """

    def __init__(self, path: Path, what: str, stack: contextlib.ExitStack,
                 onto: tuple | None = None, nearest: bool = False) -> None:
        from rasterio.errors import RasterioIOError

        from tiledepth.rasterfile import open_raster

        if not path.exists():
            raise InputError(f"{path}: no such file (the {what})")
        try:
            self.ds = stack.enter_context(open_raster(path))
        except RasterioIOError as exc:
            raise InputError(f"{path}: cannot read it as a raster (the {what})") from exc
        ds = self.ds
        self.tags = {**ds.tags(), "DESCRIPTION": ds.descriptions[0] or ""}
        self.grid = (ds.height, ds.width, ds.transform, ds.crs)
        # stored values -> values (a linear map: the same before or after resampling)
        self.scaling = (1.0, 0.0) if nearest else (ds.scales[0], ds.offsets[0])
        self.onto, self.method = None, None
        if onto is not None and _grid_differs(onto, self.grid) is not None:
            self.method = _resampling(ds, onto, path, nearest)
            self.onto = self.grid = onto

    def read(self, row0: int, row1: int) -> np.ndarray:
        """Rows ``row0:row1`` (of the prediction's grid, when reprojected)."""
        from rasterio.windows import Window

        if self.onto is None:
            window = Window(0, row0, self.ds.width, row1 - row0)
            values = self.ds.read(1, window=window, masked=True).astype(np.float64) \
                .filled(np.nan)
        else:
            values = self._reproject(row0, row1)
        return scale_offset(values, *self.scaling)

    def density(self) -> float:
        """Pixels read per pixel of the prediction's grid: more than 1 for a reprojected
        raster finer than it."""
        if self.onto is None:
            return 1.0
        window = self._source_window(0, self.onto[0])
        return 1.0 if window is None else window.width * window.height / (
            self.onto[0] * self.onto[1])

    def _source_window(self, row0: int, row1: int):
        """The window of the raster under rows ``row0:row1`` of the grid ``onto``, widened by
        WARP_MARGIN pixels and cut to the raster; None where they do not meet."""
        from rasterio.transform import array_bounds
        from rasterio.warp import transform_bounds
        from rasterio.windows import Window

        ds, (_, width, transform, crs) = self.ds, self.onto
        west, south, east, north = array_bounds(row1 - row0, width,
                                                transform @ transform.translation(0, row0))
        bounds = transform_bounds(crs, ds.crs, min(west, east), min(south, north),
                                  max(west, east), max(south, north), densify_pts=21)
        if not all(math.isfinite(v) for v in bounds):
            return Window(0, 0, ds.width, ds.height)  # a footprint the CRS cannot bound
        inv = ~ds.transform
        xs, ys = zip(*(inv @ (x, y) for x in bounds[::2] for y in bounds[1::2]), strict=True)
        c0 = max(math.floor(min(xs)) - WARP_MARGIN, 0)
        c1 = min(math.ceil(max(xs)) + WARP_MARGIN, ds.width)
        r0 = max(math.floor(min(ys)) - WARP_MARGIN, 0)
        r1 = min(math.ceil(max(ys)) + WARP_MARGIN, ds.height)
        if c1 <= c0 or r1 <= r0:
            return None
        return Window(c0, r0, c1 - c0, r1 - r0)

    def _reproject(self, row0: int, row1: int) -> np.ndarray:
        """Rows ``row0:row1`` of the grid ``onto``, NaN outside the raster and where it has
        no data: the same warp as of the whole raster, from the part under these rows."""
        from rasterio.warp import reproject

        ds, (_, width, transform, crs) = self.ds, self.onto
        out = np.full((row1 - row0, width), np.nan)
        window = self._source_window(row0, row1)
        if window is None:
            return out  # nothing of the raster under these rows
        src = ds.read(1, window=window, masked=True).astype(np.float64).filled(np.nan)
        reproject(src, out, src_transform=ds.window_transform(window), src_crs=ds.crs,
                  src_nodata=np.nan, dst_transform=transform @ transform.translation(0, row0),
                  dst_crs=crs, dst_nodata=np.nan, resampling=self.method)
        return out


def _grid_differs(grid: tuple, other: tuple) -> str | None:
    """How ``other`` is not on ``grid`` (both ``(height, width, transform, crs)``); None
    when it is: same size and, where both are georeferenced, the same CRS and pixels
    within a thousandth of a pixel (a raster without georeferencing, such as a drone
    frame's output, is compared by its size alone: nothing else places it).

    Examples
    --------
    >>> from rasterio.transform import from_origin
    >>> a = (100, 120, from_origin(500000, 5400000, 0.5, 0.5), "EPSG:32611")
    >>> _grid_differs(a, (100, 120, from_origin(500005, 5400000, 0.5, 0.5), "EPSG:32611"))
    "its pixels are shifted by 10 px, 0 px (columns, rows) from the prediction's"
    >>> _grid_differs(a, a[:3] + ("EPSG:32612",))
    "its CRS EPSG:32612 is not the prediction's EPSG:32611"
    """
    from rasterio.crs import CRS

    if grid[:2] != other[:2]:
        return (f"{other[1]} x {other[0]} px, but the prediction is {grid[1]} x {grid[0]}")
    (_, _, t, crs), (h, w, ot, ocrs) = grid, other
    if crs is None or ocrs is None or t.is_identity or ot.is_identity:
        return None
    crs, ocrs = CRS.from_user_input(crs), CRS.from_user_input(ocrs)
    if crs != ocrs:
        return f"its CRS {ocrs} is not the prediction's {crs}"
    # where the other raster's first and last corners fall in the prediction's pixels
    dx, dy = ~t @ (ot @ (0, 0))
    if abs(dx) > GRID_TOLERANCE or abs(dy) > GRID_TOLERANCE:
        return (f"its pixels are shifted by {dx + 0.0:.3g} px, {dy + 0.0:.3g} px (columns, "
                "rows) from the prediction's")  # + 0.0: no '-0'
    x, y = ~t @ (ot @ (w, h))
    if abs(x - w) > GRID_TOLERANCE or abs(y - h) > GRID_TOLERANCE:
        return "its pixel size or rotation is not the prediction's"
    return None


def _resampling(ds, onto: tuple, path: Path, nearest: bool):
    """How ``ds`` is reprojected onto the grid ``onto``: average where it is finer, bilinear
    where coarser, nearest for a mask."""
    from rasterio.enums import Resampling

    _, _, transform, crs = onto
    if crs is None or ds.crs is None or transform.is_identity or ds.transform.is_identity:
        raise InputError(f"{path}: --resample needs both rasters georeferenced (a CRS and a "
                         "transform)")
    if nearest:
        return Resampling.nearest
    # both sides in the prediction's units: a truth in degrees (0.0003 deg, about 30 m)
    # is not finer than a prediction's 2 m pixels
    finer = reference_pixel_size(path, crs) < pixel_side(transform)
    return Resampling.average if finer else Resampling.bilinear


def kind_of_raster(tags: dict) -> str | None:
    """What a raster's values are: its band description or tiledepth's tags; None if unsaid.

    Examples
    --------
    >>> kind_of_raster({"DESCRIPTION": "height"}), kind_of_raster({"DESCRIPTION": ""})
    ('height', None)
    >>> kind_of_raster({"TILEDEPTH_OUTPUT_KIND": "depth", "TILEDEPTH_KIND": "disparity"})
    'disparity'
    """
    known = ("height", *_DEPTH_KINDS, *_INVERSE_KINDS)
    if tags.get("DESCRIPTION") in known:
        return tags["DESCRIPTION"]
    kind = tags.get("TILEDEPTH_OUTPUT_KIND")
    if kind == "depth":
        kind = tags.get("TILEDEPTH_KIND", "depth")
    return kind if kind in known else None


def disparity_like(tags: dict) -> bool:
    """Whether a raster's values are affine in inverse depth (larger is nearer): disparity
    and inverse depth, and every uncalibrated output of a disparity model, whatever its
    band says (its height is the disparity minus the coarse prediction's smallest,
    :mod:`tiledepth.calibrate`; a calibration makes metres of any model's output).

    Examples
    --------
    >>> disparity_like({"DESCRIPTION": "inverse-depth"}), disparity_like({"DESCRIPTION": "height"})
    (True, False)
    >>> disparity_like({"DESCRIPTION": "height", "TILEDEPTH_KIND": "disparity"})
    True
    >>> disparity_like({"DESCRIPTION": "depth", "TILEDEPTH_KIND": "disparity",
    ...                 "TILEDEPTH_CALIBRATION": "control"})
    False
    """
    if kind_of_raster(tags) in _INVERSE_KINDS:
        return True
    return tags.get("TILEDEPTH_KIND") == "disparity" and not any(
        key.startswith("TILEDEPTH_CALIBRATION") for key in tags)


def _prediction_in(values: np.ndarray, kind: str, space: str, *, disparity: bool,
                   extent: tuple[float, float] | None = None) -> np.ndarray:
    """A block of the prediction as the metrics fit it in ``space``
    (:func:`tiledepth.metrics.align_prediction`): depth (:func:`_as_depth`), or in
    disparity space disparity-like values: a ``disparity`` prediction's own (values <= 0,
    usual for an affine-invariant disparity, included), else the inverse of its depth
    (NaN where that is <= 0).

    Examples
    --------
    >>> _prediction_in(np.array([0.5, -0.1]), "disparity", "disparity", disparity=True)
    array([ 0.5, -0.1])
    >>> _prediction_in(np.array([0.5, 4.0]), "depth", "disparity", disparity=False)
    array([2.  , 0.25])
    >>> _prediction_in(np.array([0.5, 4.0]), "disparity", "depth", disparity=True)
    array([2.  , 0.25])
    """
    if space == "disparity" and disparity:
        return values
    depth = _as_depth(values, kind, extent)
    if space == "depth":
        return depth
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(depth > 0, 1.0 / depth, np.nan)


def _as_depth(values: np.ndarray, kind: str,
              extent: tuple[float, float] | None = None) -> np.ndarray:
    """Heights as depth below their top (plus their range, so positive); inverse depth inverted.

    ``extent``: the whole height map's lowest and highest value, for a block of it
    (default: those of ``values``).
    """
    if kind == "height":
        finite = np.isfinite(values)
        low, top = _extent([values]) if extent is None else extent
        if not math.isfinite(top):
            return values
        return np.where(finite, top + max(top - low, 1e-6) - values, np.nan)
    if kind in _INVERSE_KINDS:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, 1.0 / values, np.nan)
    return values


def _extent(blocks) -> tuple[float, float]:
    """The lowest and highest finite value of some blocks (inf and -inf if none)."""
    low, top = math.inf, -math.inf
    for values in blocks:
        finite = values[np.isfinite(values)]
        if finite.size:
            low, top = min(low, float(finite.min())), max(top, float(finite.max()))
    return low, top


def _row_blocks(height: int, width: int, block_rows: int,
                scale: float = 1.0) -> list[tuple[int, int]]:
    """``(row0, row1)`` of the blocks of rows read at a time: about WINDOW_PIXELS pixels
    (``scale`` times more read from a finer truth), in whole rows of the raster's blocks
    where they fit, so that each is decompressed once."""
    rows = max(int(WINDOW_PIXELS / (width * max(scale, 1.0))), 1)
    if rows >= block_rows:
        rows -= rows % block_rows
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def evaluate_files(pred: str | os.PathLike, gt: str | os.PathLike, *,
                   mask: str | os.PathLike | None = None, space: str | None = None,
                   gt_kind: str | None = None, resample: bool = False) -> dict[str, Any]:
    """Metrics of a prediction raster against a ground-truth raster on the same grid.

    Parameters
    ----------
    pred : path
        A tiledepth output (band 1), or any one-band depth raster. What it holds
        (depth, height, disparity, ...) is read from its band description or
        tiledepth's tags. In depth space a height map is scored as depth below its
        top, inverse depth and disparity as their inverse; in disparity space
        disparity-like values (:func:`disparity_like`) as they are, others as the
        inverse of that depth.
    gt : path
        Ground truth on the same grid (or any grid with ``resample``); nodata,
        NaN and values <= 0 are ignored (as depth). Band scales and offsets apply.
    mask : path, optional
        A raster on the prediction's grid: nonzero where the comparison counts.
    space : {'depth', 'disparity'}, optional
        Where the scale and shift are fitted (see :func:`tiledepth.metrics.align_prediction`).
        Default: disparity for a disparity-like prediction (disparity, inverse
        depth, any uncalibrated output of a disparity model), else depth.
    gt_kind : {'depth', 'height'}, optional
        ``height`` (a DSM or canopy height model) is turned into depth below its
        highest point plus its range, so that every value is positive. Default:
        what the truth's band description says, else depth; required when the
        prediction is not depth and the truth does not say. A truth whose band
        says ``disparity`` or ``inverse-depth`` is scored as its inverse, 1 / value
        (values <= 0 ignored), and ``gt_kind`` in the result says so.
    resample : bool
        Reproject the truth (and the mask) onto the prediction's grid, where its
        size, CRS or transform differ; without it, one on another grid is refused
        (an InputError: same size is not the same place).

    Returns
    -------
    dict
        ``abs_rel``, ``delta1``, ``nrmse``, ``rmse``, ``scale``, ``shift``,
        ``pixels``, ``space``, ``pred_kind``, ``gt_kind``, ``seam_ratio`` (None
        without tile tags) and, from a tiledepth output's sidecar when present,
        ``consistency`` and ``flagged``. A figure that is not finite (the NRMSE
        of a truth whose range is 0) is None: the dict is valid JSON.

    Raises
    ------
    InputError
        A file missing, not a raster, or not local (a URL or GDAL ``/vsi`` path); a truth
        or mask on another grid without ``resample``; no pixel to compare (the message
        names the raster that leaves none, and why); fewer than 3 pixels to compare (a scale
        and shift fit 2 exactly: a perfect score); a prediction constant over the pixels
        compared (it has no relief: it would score as the truth's mean, delta1 often 1).
    OptionError
        A bad ``space`` or ``gt_kind``; ``gt_kind`` unsaid where it is needed.
    """
    if space is not None and space not in SPACES:
        raise OptionError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if gt_kind is not None and gt_kind not in GT_KINDS:
        raise OptionError(f"gt_kind must be {' or '.join(GT_KINDS)}, got {gt_kind!r}")
    from tiledepth.sources import check_local

    # local files only (each is read once per pass, its sidecar beside it): said before Path
    # folds a URL's // into "https:/h/p.tif: no such file"
    for path in (pred, gt, mask):
        check_local(path, "eval", "score the local copy")
    pred, gt = Path(pred), Path(gt)
    import rasterio

    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE))
        p = _Band(pred, "prediction", stack)
        tags, grid = p.tags, p.grid
        g = _Band(gt, "ground truth", stack, onto=grid if resample else None)
        # the same size is not the same grid: a truth shifted by some pixels, or in another
        # CRS, would be scored pixel by pixel against values of other places
        differs = _grid_differs(grid, g.grid)
        if differs is not None:
            raise InputError(f"{gt}: {differs}; pass --resample to put the ground truth on "
                             "the prediction's grid")
        pred_kind = kind_of_raster(tags) or "depth"
        if gt_kind is None:
            said = kind_of_raster(g.tags)
            if said is None and pred_kind not in _DEPTH_KINDS:
                raise OptionError(f"{pred} holds {pred_kind}; say what {gt.name} holds with "
                                  "--gt-kind depth or --gt-kind height")
            # a disparity or inverse depth truth (a tiledepth output of a disparity model,
            # a stereo map) is inverted by _as_depth, not scored as depth
            gt_kind = said if said in ("height", *_INVERSE_KINDS) else "depth"
        disparity = disparity_like(tags)
        if space is None:
            space = "disparity" if disparity else "depth"
        m = None if mask is None else _open_mask(mask, grid, stack, resample=resample)
        rows = _row_blocks(*grid[:2], p.ds.block_shapes[0][0],
                           max(b.density() for b in (g, m) if b is not None))
        # a height map's top and range are the whole map's: one pass before the others
        # (not for a disparity-like height fitted in disparity space: taken as it is)
        as_is = space == "disparity" and disparity
        extents = {b: _extent(b.read(*r) for r in rows) if kind == "height" else None
                   for b, kind in ((p, None if as_is else pred_kind), (g, gt_kind))}

        def scored(pred_values, gt_values):
            """A block of the prediction and the truth as the metrics take them."""
            return (_prediction_in(pred_values, pred_kind, space, disparity=disparity,
                                   extent=extents[p]),
                    _as_depth(gt_values, gt_kind, extents[g]))

        def blocks():
            for r in rows:
                yield (*scored(p.read(*r), g.read(*r)),
                       None if m is None else _mask_values(m.read(*r)))

        tiles = _tiles_from_tags(tags, grid[:2])
        try:
            metrics, seams = stream_metrics(blocks, space=space, tiles=tiles)
        except NothingToScore as exc:  # a perfect score, or the truth's mean, if scored
            raise InputError(_nothing_to_score(exc, pred, gt, mask)) from exc
        except ValueError as exc:  # no pixel compared: say which raster left none, and why
            files = _Files(pred, gt, mask, pred_kind, gt_kind, space)
            raise InputError(_nothing_compared(files, p, g, m, rows, scored)) from exc
    result = metrics.as_dict()
    result.update(pred_kind=pred_kind, gt_kind=gt_kind)
    result["seam_ratio"] = _finite(seams) if tiles else None
    result.update(_sidecar_figures(pred, tags))
    # NaN and inf are not JSON (json.dumps writes a bare NaN): a missing figure is None
    return {key: _finite(v) if isinstance(v, float) else v for key, v in result.items()}


@dataclasses.dataclass(frozen=True)
class _Files:
    """What :func:`_nothing_compared` names: the three paths, the kinds and the space."""

    pred: Path
    gt: Path
    mask: str | os.PathLike | None
    pred_kind: str
    gt_kind: str
    space: str


def _nothing_compared(files: _Files, p: _Band, g: _Band, m: _Band | None,
                      rows: list[tuple[int, int]], scored) -> str:
    """Why no pixel was compared, read in one more pass (on that error alone): the first
    of the prediction without values, the truth outside it or without values, the truth
    without a positive depth, the two without a pixel in common, the mask 0 where both
    have values. Each names its raster (the truth was named whatever the cause: an
    all-NaN prediction read "gt.tif: ... the ground truth (or mask) is empty").

    ``scored(pred_values, gt_values)``: the blocks as the metrics take them.
    """
    # finite values read: prediction, truth; then as scored: prediction, truth (> 0),
    # both, both where the mask counts
    n = np.zeros(6, np.int64)
    for r in rows:
        pv, gv = p.read(*r), g.read(*r)
        ps, gs = scored(pv, gv)
        ok_p, ok_g = np.isfinite(ps), np.isfinite(gs) & (gs > 0)
        both = ok_p & ok_g
        n += [np.isfinite(pv).sum(), np.isfinite(gv).sum(), ok_p.sum(), ok_g.sum(), both.sum(),
              (both & _mask_values(m.read(*r))).sum() if m is not None else both.sum()]
    what = "no valid pixel to compare"
    if n[0] == 0:
        return f"{files.pred}: {what}: the prediction has no value (no data everywhere)"
    if n[2] == 0:  # inverted (depth in disparity space, inverse depth in depth space)
        other = "depth" if files.space == "disparity" else "disparity"
        return (f"{files.pred}: {what}: the prediction's values are all <= 0, which have no "
                f"inverse; score it in {other} space (--space {other})")
    if n[1] == 0:
        if g.onto is not None and g._source_window(0, g.onto[0]) is None:
            return (f"{files.gt}: {what}: the ground truth does not overlap the prediction "
                    "(check the extents and CRSs of both)")
        within = " within the prediction's extent" if g.onto is not None else ""
        return f"{files.gt}: {what}: the ground truth has no value{within} (no data everywhere)"
    if n[3] == 0:
        if files.gt_kind in _INVERSE_KINDS:
            return (f"{files.gt}: {what}: the ground truth ({files.gt_kind}) has no value "
                    "above 0 (it is scored as 1 / value)")
        return (f"{files.gt}: {what}: the ground truth has no value above 0, which depth "
                "needs; for heights (a DSM, DTM or CHM) pass --gt-kind height")
    if n[4] == 0:
        return (f"{files.gt}: {what}: the ground truth has values only where the prediction "
                "has none (no data)")
    if n[5] == 0:
        return (f"{files.mask}: {what}: the mask is 0 (or no data) wherever the prediction "
                "and the ground truth both have values")
    return f"{files.gt}: {what}"  # (not reached: the metrics found none)


def _nothing_to_score(exc: NothingToScore, pred: Path, gt: Path,
                      mask: str | os.PathLike | None) -> str:
    """The line for pixels compared that cannot be scored: too few, or a constant prediction."""
    if exc.constant:
        return (f"{pred}: the prediction has no relief to score: it is constant over the "
                f"{exc.pixels} pixels compared with the ground truth (a scale and shift fitted "
                "to it leave the truth's mean); check that it is the output you meant")
    where, check = (gt.name, "the rasters' no data and extents") if mask is None else (
        f"{gt.name} under {Path(mask).name}", "the rasters' no data and the mask")
    return (f"{pred}: only {exc.pixels} pixel{'s' if exc.pixels > 1 else ''} to compare with "
            f"{where}, and a scale and shift fit 2 exactly: at least {MIN_PIXELS} are needed "
            f"(check {check})")


def _sidecar_figures(pred: Path, tags: dict) -> dict[str, Any]:
    """``consistency`` and ``flagged`` from a tiledepth output's sidecar ``<stem>.json``; none
    for another raster, or where that file is not such a report (any JSON file may sit
    beside a prediction: it is left alone, not an error that loses the metrics)."""
    sidecar = pred.with_name(pred.stem + ".json")
    if "TILEDEPTH_VERSION" not in tags or not sidecar.is_file():
        return {}
    from tiledepth.report import read_sidecar

    try:
        report = read_sidecar(sidecar)
    except (OSError, ValueError):  # unreadable, or not JSON (UnicodeDecodeError included)
        return {}
    consistency = report.get("consistency") if isinstance(report, dict) else None
    flagged = report.get("flagged") if isinstance(report, dict) else None
    if not (isinstance(flagged, list) and (consistency is None or (
            isinstance(consistency, int | float) and not isinstance(consistency, bool)))):
        return {}
    return {"consistency": consistency, "flagged": len(flagged)}


def _open_mask(mask: str | os.PathLike, grid: tuple, stack: contextlib.ExitStack, *,
               resample: bool) -> _Band:
    """The mask raster, read on the prediction's ``grid`` (:func:`_mask_values` of a block)."""
    band = _Band(Path(mask), "mask", stack, onto=grid if resample else None, nearest=True)
    differs = _grid_differs(grid, band.grid)
    if differs is not None:
        raise InputError(f"{mask}: the mask's grid is not the prediction's ({differs}); pass "
                         "--resample")
    return band


def _mask_values(values: np.ndarray) -> np.ndarray:
    """Where a mask's block counts: nonzero and finite."""
    return np.isfinite(values) & (values != 0)


def _tiles_from_tags(tags: dict, shape: tuple[int, int]) -> list:
    """The tile grid a tiledepth output was fused from (none for other rasters or --scale).

    An output cut from a mosaic (``--mosaic --split``) was fused as part of a larger
    map: its ``TILEDEPTH_FUSED_SHAPE`` and ``TILEDEPTH_TILE_ORIGIN`` tags give that
    map's size and the output's offset in it, so the fused map's tiles are rebuilt and
    shifted onto the output, cut to its edges (a grid started at the output's own
    corner would put the overlap bands elsewhere). Without them, the output's own size.

    Examples
    --------
    >>> tags = {"TILEDEPTH_TILE_SIZE": "64", "TILEDEPTH_OVERLAP": "0.25"}
    >>> sorted({t.col_slice.start for t in _tiles_from_tags(tags, (100, 150))})
    [0, 48, 86]
    >>> split = dict(tags, TILEDEPTH_FUSED_SHAPE="100,300", TILEDEPTH_TILE_ORIGIN="0,150")
    >>> sorted({(t.col_slice.start, t.col_slice.stop) for t in _tiles_from_tags(split, (100, 150))})
    [(0, 10), (0, 58), (42, 106), (86, 150)]
    """
    from rasterio.windows import Window

    from tiledepth.tiling import tile_grid

    try:
        size, overlap = int(tags["TILEDEPTH_TILE_SIZE"]), float(tags["TILEDEPTH_OVERLAP"])
    except (KeyError, ValueError):
        return []
    if float(tags.get("TILEDEPTH_SCALE", "1")) != 1.0:
        return []  # tiles were cut from a reduced grid
    placed = _place_in_fused(tags, shape)
    if placed is None:
        return [t for row in tile_grid(*shape, size, overlap) for t in row]
    (row0, col0), fused = placed
    tiles = []
    for t in (t for row in tile_grid(*fused, size, overlap) for t in row):
        r0, r1 = max(t.row_slice.start - row0, 0), min(t.row_slice.stop - row0, shape[0])
        c0, c1 = max(t.col_slice.start - col0, 0), min(t.col_slice.stop - col0, shape[1])
        if r1 > r0 and c1 > c0:  # the part of a fused map's tile on this output
            tiles.append(dataclasses.replace(t, window=Window(c0, r0, c1 - c0, r1 - r0)))
    return tiles


def _place_in_fused(tags: dict, shape: tuple[int, int]) -> tuple | None:
    """``((row, col), (height, width))``: a split output's offset in its fused map and that
    map's size, from its tags; None without them (or where they do not hold the output)."""
    try:
        row0, col0 = (int(v) for v in tags["TILEDEPTH_TILE_ORIGIN"].split(","))
        fused = tuple(int(v) for v in tags["TILEDEPTH_FUSED_SHAPE"].split(","))
    except (KeyError, ValueError):
        return None
    if len(fused) != 2 or row0 < 0 or col0 < 0 or row0 + shape[0] > fused[0] \
            or col0 + shape[1] > fused[1]:
        return None
    return (row0, col0), fused


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def format_evaluation(result: dict[str, Any]) -> str:
    """The metrics as aligned text lines."""
    def num(key: str, fmt: str) -> str:
        v = result.get(key)
        return "n/a" if v is None else format(v, fmt)

    inverted = " (scored as 1 / value)" if result.get("gt_kind") in _INVERSE_KINDS else ""
    lines = [
        f"AbsRel       {num('abs_rel', '.4f')}",
        f"delta1       {num('delta1', '.4f')}",
        f"NRMSE        {num('nrmse', '.4f')}   (RMSE / ground truth's 2-98 % range)",
        f"RMSE         {num('rmse', '.4g')}",
        f"seam ratio   {num('seam_ratio', '.3f')}   (1.0 = seams invisible)",
        f"pixels       {result['pixels']}   (aligned in {result['space']} space: scale "
        f"{num('scale', '.6g')}, shift {num('shift', '.6g')})",
        f"kinds        prediction {result.get('pred_kind', 'depth')}, ground truth "
        f"{result.get('gt_kind', 'depth')}{inverted}",
    ]
    if "consistency" in result:
        lines.append(f"consistency  {num('consistency', '.4f')}   (overlapping tiles, "
                     f"from the sidecar; {result['flagged']} tiles flagged)")
    return "\n".join(lines)
