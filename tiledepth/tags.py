"""The output's tags: provenance, what the values are, and the fusion's result.

Pure functions from a run's model, options and target to the GeoTIFF's tags
(``TILEDEPTH_*``), and the band descriptions; :func:`result_tags` writes the
tags only known once the fusion is done.
"""

from __future__ import annotations

from typing import Any

from tiledepth.calibrate import Calibration, Target
from tiledepth.kinds import FIT_FOR_KIND, VALUES
from tiledepth.protocols import DepthModel

__all__ = ["UNCALIBRATED_VALUES", "calibration_tags", "output_bands", "output_tags",
           "result_tags", "values_tag"]


def output_tags(model: DepthModel, target: Target, *, kind: str, output_kind: str,
                provenance: dict[str, str], version: str) -> dict[str, str]:
    """The tags a run writes first: software, model, options and what the values are.

    ``provenance``: the options as tags (:meth:`tiledepth.options.Options.provenance`).
    """
    return {
        "TIFFTAG_SOFTWARE": f"tiledepth {version}",
        "TILEDEPTH_VERSION": version,
        "TILEDEPTH_MODEL": model.name,
        **{f"TILEDEPTH_{k}": v for k, v in provenance.items()},
        # the steps the model really ran (a checkpoint's default resolved)
        **({"TILEDEPTH_STEPS": str(model.steps)} if getattr(model, "steps", None) else {}),
        "TILEDEPTH_KIND": kind,
        "TILEDEPTH_FIT": FIT_FOR_KIND[kind],
        "TILEDEPTH_VALUES": values_tag(output_kind, target, kind=kind),
    }


def output_bands(kind: str, *, output_kind: str, uncertainty: bool,
                 calibrated: bool = False) -> tuple[str, ...]:
    """The bands' descriptions: the output kind (the model's kind for depth), and the spread.

    A calibrated map is the output kind in metres whatever the model's kind
    (:mod:`tiledepth.calibrate`), so a calibrated disparity model's depth says ``depth``:
    readers of the band (``tiledepth export``'s up direction, the hillshade) take the
    description as the kind.

    Examples
    --------
    >>> output_bands("disparity", output_kind="depth", uncertainty=True)
    ('disparity', 'uncertainty')
    >>> output_bands("disparity", output_kind="depth", uncertainty=False, calibrated=True)
    ('depth',)
    """
    label = kind if output_kind == "depth" and not (calibrated and kind == "disparity") \
        else output_kind
    return (label, "uncertainty") if uncertainty else (label,)


#: ``TILEDEPTH_VALUES`` of an uncalibrated output, by (model kind, output kind): the value
#: map follows the model's space (:meth:`tiledepth.calibrate.Target.for_model`), so the
#: words do too. Output kind ``depth`` of the other kinds is the model's own values
#: (:data:`tiledepth.kinds.VALUES`).
UNCALIBRATED_VALUES: dict[tuple[str, str], str] = {
    ("depth", "depth"): "relative depth in the coarse prediction's frame",
    ("depth", "height"): "relative height: the coarse prediction's far end minus depth",
    ("disparity", "height"): "relative height: disparity minus the coarse prediction's "
                             "smallest (larger is nearer, 0 at the far end)",
    ("metric_depth", "height"): "height in metres above the coarse prediction's farthest "
                                "point (its largest depth minus depth)",
    **{(kind, "inverse-depth"): "relative inverse depth, 1 nearest, 0.5 at the far end"
       for kind in VALUES},
}


def values_tag(output_kind: str, target: Target, *, kind: str = "depth") -> str:
    """``TILEDEPTH_VALUES``: what the output's numbers are, for a model of ``kind``.

    A calibration makes metres whatever the model's kind; an uncalibrated ``depth``
    output is the model's own values (:data:`tiledepth.kinds.VALUES`), except for a
    depth model, whose words it keeps.

    Examples
    --------
    >>> from tiledepth.calibrate import Target
    >>> values_tag("inverse-depth", Target("inverse-depth"), kind="metric_depth")
    'relative inverse depth, 1 nearest, 0.5 at the far end'
    >>> values_tag("depth", Target("depth"), kind="disparity") == VALUES["disparity"]
    True
    """
    if target.calibrated:
        # depth counts from the highest height the fit keeps (Target.value_map): a
        # reference's cell, or one of the control points
        top = "point of the reference" if target.cells is not None else "control point"
        unit = "height in metres" if output_kind == "height" else \
            f"depth in metres below the highest {top} the fit keeps"
        source = "reference" if target.cells is not None else "control points"
        return f"{unit}, calibrated to the {source}"
    if (kind, output_kind) in UNCALIBRATED_VALUES:
        return UNCALIBRATED_VALUES[kind, output_kind]
    return VALUES[kind]  # output kind depth: the model's own values


def calibration_tags(cal: Calibration) -> dict[str, str]:
    """The metric fit's tags."""
    return {"TILEDEPTH_CALIBRATION": cal.source,
            "TILEDEPTH_CALIBRATION_SCALE": f"{cal.scale:.9g}",
            "TILEDEPTH_CALIBRATION_SHIFT": f"{cal.shift:.9g}",
            "TILEDEPTH_CALIBRATION_RMSE": f"{cal.rmse:.6g}",
            "TILEDEPTH_CALIBRATION_SAMPLES": str(cal.samples)}


def result_tags(sink: Any, calibration: Calibration | None, report: dict[str, Any], *,
                kind: str, output_kind: str) -> None:
    """Tag ``sink`` (a :class:`tiledepth.write.GeoTiffWriter`) with what the fusion found:
    the calibration, the units (metres for calibrated or metric output), the consistency."""
    if calibration is not None:
        sink.add_tags(calibration_tags(calibration))
    if calibration is not None or (kind == "metric_depth" and output_kind != "inverse-depth"):
        sink.set_units("metre")  # the values (and their spread) are metres
    sink.add_tags({"TILEDEPTH_CONSISTENCY": str(report["consistency"]),
                   "TILEDEPTH_FLAGGED_TILES": str(len(report["flagged"]))})
