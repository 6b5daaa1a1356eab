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

__all__ = ["evaluate_files", "format_evaluation"]


def _read(path: Path, what: str) -> tuple[np.ndarray, dict, tuple]:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if not path.exists():
        raise InputError(f"{path}: no such file (the {what})")
    try:
        with warnings.catch_warnings():  # both on one grid is checked, georeferenced or not
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            data = ds.read(1, masked=True)
            tags = ds.tags()
            grid = (ds.height, ds.width, ds.transform)
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read it as a raster (the {what})") from exc
    values = data.astype(np.float64).filled(np.nan)
    return values, tags, grid


def evaluate_files(pred: str | os.PathLike, gt: str | os.PathLike, *,
                   mask: str | os.PathLike | None = None, space: str = "depth",
                   gt_kind: str = "depth") -> dict[str, Any]:
    """Metrics of a prediction raster against a ground-truth raster on the same grid.

    Parameters
    ----------
    pred : path
        A tiledepth output (band 1), or any one-band depth raster.
    gt : path
        Ground truth on the same grid; nodata, NaN and values <= 0 are ignored
        (as depth).
    mask : path, optional
        A raster on the same grid: nonzero where the comparison counts.
    space : {'depth', 'disparity'}
        Where the scale and shift are fitted (see :func:`tiledepth.metrics.align_prediction`).
    gt_kind : {'depth', 'height'}
        ``height`` (a DSM or canopy height model) is turned into depth below its
        highest point plus its range, so that every value is positive.

    Returns
    -------
    dict
        ``abs_rel``, ``delta1``, ``nrmse``, ``rmse``, ``scale``, ``shift``,
        ``pixels``, ``space``, ``seam_ratio`` (None without tile tags) and, from
        the sidecar when present, ``consistency`` and ``flagged``.
    """
    if space not in SPACES:
        raise OptionError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if gt_kind not in ("depth", "height"):
        raise OptionError(f"gt_kind must be depth or height, got {gt_kind!r}")
    pred, gt = Path(pred), Path(gt)
    p, tags, grid = _read(pred, "prediction")
    g, _, gt_grid = _read(gt, "ground truth")
    if grid[:2] != gt_grid[:2]:
        raise InputError(f"{gt}: {gt_grid[0]} x {gt_grid[1]} px, but the prediction is "
                         f"{grid[0]} x {grid[1]}; resample the ground truth onto the "
                         "prediction's grid first (e.g. gdalwarp -te ... -ts ...)")
    if gt_kind == "height":
        finite = np.isfinite(g)
        top, span = np.nanmax(g), np.nanmax(g) - np.nanmin(g)
        g = np.where(finite, top + max(span, 1e-6) - g, np.nan)
    m = None
    if mask is not None:
        mv, _, mask_grid = _read(Path(mask), "mask")
        if mask_grid[:2] != grid[:2]:
            raise InputError(f"{mask}: the mask's grid ({mask_grid[0]} x {mask_grid[1]}) is "
                             f"not the prediction's ({grid[0]} x {grid[1]})")
        m = np.isfinite(mv) & (mv != 0)
    try:
        result = depth_metrics(p, g, mask=m, space=space).as_dict()
    except ValueError as exc:
        raise InputError(f"{gt}: {exc}") from exc
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
    ]
    if "consistency" in result:
        lines.append(f"consistency  {num('consistency', '.4f')}   (overlapping tiles, "
                     f"from the sidecar; {result['flagged']} tiles flagged)")
    return "\n".join(lines)
