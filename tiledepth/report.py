"""The fusion report: every tile's value map and consistency, as a JSON sidecar.

Every ``tiledepth run`` writes ``<output stem>.json`` beside the output GeoTIFF
(``ortho.depth.tif`` -> ``ortho.depth.json``)::

    {
      "tiledepth": "0.1.0",
      "raster": {"height": 20000, "width": 30000},
      "alignment": "bilinear", "fit": "scale_shift", "robust": true,
      "tile_size": 768, "overlap": 0.25,
      "consistency": 0.0042,          # RMS difference of overlapping aligned tiles / range
      "value_range": 12.5,            # the range it is relative to
      "flagged": [{"id": 17, "row": 1, "col": 5, "flag": "inconsistent",
                   "window": [3840, 576, 768, 768]}],
      "tiles": [{"id": 0, "row": 0, "col": 0, "window": [0, 0, 768, 768],
                 "scale": 0.93, "shift": 1.2, "consistency": 0.0031, "coarse": 0.011,
                 "flag": null, "filled_from_coarse": false}, ...]
    }

Windows are ``[col_off, row_off, width, height]`` in pixels of the grid the
tiles were cut from (the reduced grid with ``scale`` below 1). ``consistency``
needs no ground truth: it is what every user can check (see
:func:`tiledepth.fusion.diagnose`); the sidecar is written atomically, after the
GeoTIFF.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tiledepth.fusion import Affine1D, AffineField, Diagnosis
from tiledepth.safe_write import sidecar_path  # (where every derived path is made)
from tiledepth.tiling import Tile

__all__ = ["fusion_report", "read_sidecar", "save_json", "sidecar_path", "write_sidecar"]


def fusion_report(tiles: list[Tile], maps: dict[int, Affine1D | AffineField],
                  diagnosis: Diagnosis, replaced: set[int], *, fit: str, alignment: str,
                  shape: tuple[int, int], robust: bool, tile_size: int, overlap: float,
                  coarse_weight: float, anchor_blur: float | None,
                  fusion: dict[str, Any] | None = None,
                  retried: dict[int, int] | None = None,
                  resampled: dict[int, int] | None = None) -> dict[str, Any]:
    """The sidecar's content (a JSON-ready dict) for one fusion.

    Parameters
    ----------
    tiles : list of Tile
        Every tile of the grid (skipped, all-masked tiles are listed without a map).
    maps : dict of int to Affine1D or AffineField
        The solved value maps.
    diagnosis : Diagnosis
        From :func:`tiledepth.fusion.diagnose`.
    replaced : set of int
        Tiles filled from the coarse prediction.
    fit, alignment : str
        What was solved.
    shape : tuple of int
        (height, width) of the grid the tiles were cut from.
    robust, tile_size, overlap, coarse_weight, anchor_blur
        The options of the fusion, recorded.
    fusion : dict, optional
        The gradient-domain fusion's record (method, crossover wavelength in anchor
        cells, the anchor's blur and whether it was measured, the correction's RMS over
        the anchor's range, or why it was skipped), under ``fusion``; None:
        the tiles blended (``fusion: tiles``), and no such key.
    retried : dict of int to int, optional
        The tiles predicted a second time whose new prediction was used
        (``retry_flagged``, :func:`tiledepth.stages.predict_again`), listed by id under
        ``retried`` (``flagged`` is then the diagnosis of the second solve); None or
        empty: no such key (a run with nothing retried writes the sidecar it always did).
    resampled : dict of int to int, optional
        Those of ``retried`` called again not because they were flagged but because their
        neighbours followed them weakly (:func:`tiledepth.fusion.diagnosis.tile_suspects`,
        :func:`tiledepth.stages.keep_better_samples`), listed under ``resampled``; None or
        empty: no such key.
    """
    from tiledepth import __version__

    rows = []
    for tile in tiles:
        w = tile.window
        row: dict[str, Any] = {"id": tile.id, "row": tile.row, "col": tile.col,
                               "window": [int(w.col_off), int(w.row_off), int(w.width),
                                          int(w.height)]}
        a = maps.get(tile.id)
        if a is None:
            row["skipped"] = "every pixel masked"
            rows.append(row)
            continue
        row.update(scale=_num(a.scale), shift=_num(a.shift))
        if isinstance(a, AffineField):
            row.update(corner_scales=[_num(v) for v in a.scales],
                       corner_shifts=[_num(v) for v in a.shifts])
        r = diagnosis.tiles.get(tile.id)
        if r is not None:
            row.update(consistency=_num(r.consistency), coarse=_num(r.coarse), flag=r.flag,
                       filled_from_coarse=tile.id in replaced)
        rows.append(row)
    flagged = [{k: row[k] for k in ("id", "row", "col", "window", "flag")}
               for row in rows if row.get("flag")]
    return {
        "tiledepth": __version__,
        "raster": {"height": shape[0], "width": shape[1]},
        "alignment": alignment,
        "fit": fit,
        "robust": robust,
        "tile_size": tile_size,
        "overlap": overlap,
        "coarse_weight": coarse_weight,
        "anchor_blur": anchor_blur,
        **({"fusion": fusion} if fusion is not None else {}),
        "consistency": _num(diagnosis.consistency),
        "value_range": _num(diagnosis.value_range),
        "flagged": flagged,
        **({"retried": sorted(retried)} if retried is not None else {}),
        **({"resampled": sorted(resampled)} if resampled else {}),
        "tiles": rows,
    }


def write_sidecar(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write the report as JSON, atomically (a temporary name, then a rename)."""
    from tiledepth.safe_write import temp_path

    path = Path(path)
    tmp = temp_path(path)
    try:
        save_json(tmp, report)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write the report as JSON to ``path`` itself (a temporary file of the caller's)."""
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The report written by :func:`write_sidecar`."""
    with open(path) as f:
        return json.load(f)


def _num(value: float) -> float | None:
    """A JSON number; None for NaN or infinity (JSON has neither)."""
    value = float(value)
    return round(value, 9) if math.isfinite(value) else None
