"""``tiledepth eval``: score a depth GeoTIFF against a ground-truth raster.

The file side of :mod:`tiledepth.metrics`: reads the prediction, the ground
truth and an optional mask (all on one grid), the tiles' geometry from the
prediction's tags (for the seam ratio) and its sidecar (for the tiles'
consistency), and returns one flat dict. The rasters are read whole: ground
truth comes at evaluation sizes, not gigapixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth.errors import InputError, OptionError
from tiledepth.metrics import SPACES, depth_metrics, seam_ratio
from tiledepth.references import pixel_side

__all__ = ["GT_KINDS", "evaluate_files", "format_evaluation", "kind_of_raster"]

#: What a ground truth may hold (``gt_kind``): depth, or height (a DSM or CHM).
GT_KINDS = ("depth", "height")


#: What a raster's values are, from its band description or tiledepth's tags.
_DEPTH_KINDS = ("depth", "metric_depth")
_INVERSE_KINDS = ("disparity", "inverse-depth")


def _read(path: Path, what: str, onto: tuple | None = None,
          nearest: bool = False) -> tuple[np.ndarray, dict, tuple]:
    """Band 1 as float64 (NaN = no data), its tags (with the band's ``DESCRIPTION``), its grid.

    ``onto``, a grid ``(height, width, transform, crs)``: the raster is reprojected onto it
    (average where it is finer, bilinear where coarser; nearest for a mask).
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if not path.exists():
        raise InputError(f"{path}: no such file (the {what})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                tags = {**ds.tags(), "DESCRIPTION": ds.descriptions[0] or ""}
                grid = (ds.height, ds.width, ds.transform, ds.crs)
                if onto is None or onto[:2] == grid[:2] and onto[2] == grid[2]:
                    values = ds.read(1, masked=True).astype(np.float64).filled(np.nan)
                else:
                    values = _reproject(ds, onto, path, nearest)
                    grid = onto
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read it as a raster (the {what})") from exc
    return values, tags, grid


def _reproject(ds, onto: tuple, path: Path, nearest: bool) -> np.ndarray:
    """Band 1 of ``ds`` on the grid ``onto``, NaN outside it and where it has no data."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    height, width, transform, crs = onto
    if crs is None or ds.crs is None or transform.is_identity or ds.transform.is_identity:
        raise InputError(f"{path}: --resample needs both rasters georeferenced (a CRS and a "
                         "transform)")
    finer = pixel_side(ds.transform) < pixel_side(transform)
    method = (Resampling.nearest if nearest else Resampling.average if finer
              else Resampling.bilinear)
    src = ds.read(1, masked=True).astype(np.float64).filled(np.nan)
    out = np.full((height, width), np.nan)
    reproject(src, out, src_transform=ds.transform, src_crs=ds.crs, src_nodata=np.nan,
              dst_transform=transform, dst_crs=crs, dst_nodata=np.nan, resampling=method)
    return out


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


def _as_depth(values: np.ndarray, kind: str) -> np.ndarray:
    """Heights as depth below their top (plus their range, so positive); inverse depth inverted."""
    if kind == "height":
        finite = np.isfinite(values)
        if not finite.any():
            return values
        top, span = np.nanmax(values), np.nanmax(values) - np.nanmin(values)
        return np.where(finite, top + max(span, 1e-6) - values, np.nan)
    if kind in _INVERSE_KINDS:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, 1.0 / values, np.nan)
    return values


def evaluate_files(pred: str | os.PathLike, gt: str | os.PathLike, *,
                   mask: str | os.PathLike | None = None, space: str | None = None,
                   gt_kind: str | None = None, resample: bool = False) -> dict[str, Any]:
    """Metrics of a prediction raster against a ground-truth raster on the same grid.

    Parameters
    ----------
    pred : path
        A tiledepth output (band 1), or any one-band depth raster. What it holds
        (depth, height, disparity, ...) is read from its band description or
        tiledepth's tags; a height map is scored as depth below its top, inverse
        depth as its inverse.
    gt : path
        Ground truth on the same grid (or any grid with ``resample``); nodata,
        NaN and values <= 0 are ignored (as depth).
    mask : path, optional
        A raster on the prediction's grid: nonzero where the comparison counts.
    space : {'depth', 'disparity'}, optional
        Where the scale and shift are fitted (see :func:`tiledepth.metrics.align_prediction`).
        Default: disparity for a disparity prediction, else depth.
    gt_kind : {'depth', 'height'}, optional
        ``height`` (a DSM or canopy height model) is turned into depth below its
        highest point plus its range, so that every value is positive. Default:
        what the truth's band description says, else depth; required when the
        prediction is not depth and the truth does not say.
    resample : bool
        Reproject the truth (and the mask) onto the prediction's grid.

    Returns
    -------
    dict
        ``abs_rel``, ``delta1``, ``nrmse``, ``rmse``, ``scale``, ``shift``,
        ``pixels``, ``space``, ``pred_kind``, ``gt_kind``, ``seam_ratio`` (None
        without tile tags) and, from the sidecar when present, ``consistency``
        and ``flagged``.
    """
    if space is not None and space not in SPACES:
        raise OptionError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if gt_kind is not None and gt_kind not in GT_KINDS:
        raise OptionError(f"gt_kind must be {' or '.join(GT_KINDS)}, got {gt_kind!r}")
    pred, gt = Path(pred), Path(gt)
    p, tags, grid = _read(pred, "prediction")
    g, gt_tags, gt_grid = _read(gt, "ground truth", onto=grid if resample else None)
    if grid[:2] != gt_grid[:2]:
        raise InputError(f"{gt}: {gt_grid[1]} x {gt_grid[0]} px, but the prediction is "
                         f"{grid[1]} x {grid[0]}; pass --resample to put the ground truth on "
                         "the prediction's grid")
    pred_kind = kind_of_raster(tags) or "depth"
    if gt_kind is None:
        said = kind_of_raster(gt_tags)
        if said is None and pred_kind not in _DEPTH_KINDS:
            raise OptionError(f"{pred} holds {pred_kind}; say what {gt.name} holds with "
                              "--gt-kind depth or --gt-kind height")
        gt_kind = "height" if said == "height" else "depth"
    if space is None:
        space = "disparity" if pred_kind in _INVERSE_KINDS else "depth"
    p = _as_depth(p, pred_kind)
    g = _as_depth(g, gt_kind)
    m = None if mask is None else _read_mask(mask, grid, resample=resample)
    try:
        result = depth_metrics(p, g, mask=m, space=space).as_dict()
    except ValueError as exc:
        raise InputError(f"{gt}: {exc}") from exc
    result.update(pred_kind=pred_kind, gt_kind=gt_kind)
    tiles = _tiles_from_tags(tags, grid[:2])
    result["seam_ratio"] = _finite(seam_ratio(p, g, tiles, mask=m, space=space)) \
        if tiles else None
    sidecar = pred.with_name(pred.stem + ".json")
    if sidecar.exists():
        from tiledepth.report import read_sidecar

        report = read_sidecar(sidecar)
        result["consistency"] = report.get("consistency")
        result["flagged"] = len(report.get("flagged", []))
    return result


def _read_mask(mask: str | os.PathLike, grid: tuple, *, resample: bool) -> np.ndarray:
    """The (H, W) bool mask of ``mask`` on the prediction's ``grid``: nonzero and finite."""
    mv, _, mask_grid = _read(Path(mask), "mask", onto=grid if resample else None, nearest=True)
    if mask_grid[:2] != grid[:2]:
        raise InputError(f"{mask}: the mask's grid ({mask_grid[1]} x {mask_grid[0]} px) "
                         f"is not the prediction's ({grid[1]} x {grid[0]}); pass "
                         "--resample")
    return np.isfinite(mv) & (mv != 0)


def _tiles_from_tags(tags: dict, shape: tuple[int, int]) -> list:
    """The tile grid a tiledepth output was fused from (none for other rasters or --scale)."""
    from tiledepth.tiling import tile_grid

    try:
        size, overlap = int(tags["TILEDEPTH_TILE_SIZE"]), float(tags["TILEDEPTH_OVERLAP"])
    except (KeyError, ValueError):
        return []
    if float(tags.get("TILEDEPTH_SCALE", "1")) != 1.0:
        return []  # tiles were cut from a reduced grid
    return [t for row in tile_grid(*shape, size, overlap) for t in row]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def format_evaluation(result: dict[str, Any]) -> str:
    """The metrics as aligned text lines."""
    def num(key: str, fmt: str) -> str:
        v = result.get(key)
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"AbsRel       {num('abs_rel', '.4f')}",
        f"delta1       {num('delta1', '.4f')}",
        f"NRMSE        {num('nrmse', '.4f')}   (RMSE / ground truth's 2-98 % range)",
        f"RMSE         {num('rmse', '.4g')}",
        f"seam ratio   {num('seam_ratio', '.3f')}   (1.0 = seams invisible)",
        f"pixels       {result['pixels']}   (aligned in {result['space']} space: scale "
        f"{result['scale']:.6g}, shift {result['shift']:.6g})",
        f"kinds        prediction {result.get('pred_kind', 'depth')}, ground truth "
        f"{result.get('gt_kind', 'depth')}",
    ]
    if "consistency" in result:
        lines.append(f"consistency  {num('consistency', '.4f')}   (overlapping tiles, "
                     f"from the sidecar; {result['flagged']} tiles flagged)")
    return "\n".join(lines)
