"""What the engine returns: :class:`RunResult` of a run, :class:`FuseResult` of a fusion."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiledepth import fusion
from tiledepth.calibrate import Calibration

__all__ = ["FuseResult", "RunResult"]


@dataclass(frozen=True)
class FuseResult:
    """What :func:`fuse` did."""

    tiles: int
    skipped: int
    affines: dict[int, fusion.Affine1D | fusion.AffineField]
    seconds: dict[str, float]
    scratch_bytes: int = 0
    calibration: Calibration | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` did.

    Attributes
    ----------
    output : pathlib.Path or str
        The GeoTIFF written (a ``str``, ``s3://...``, ``gs://...`` or ``az://...``, for a
        remote output).
    tiles : int
        Tiles fused: every tile with a valid pixel (of the reduced grid below ``scale``
        1), those reused from an interrupted run included; the model predicted the other
        ``tiles - resumed`` (and, not counted here, the pyramid levels' tiles and the
        flagged tiles predicted again).
    skipped : int
        Tiles skipped because all their pixels are masked.
    height, width : int
        Raster size.
    seconds : dict of str to float
        Wall time of each step and ``total`` (the keys: docs/gpu.md, "Where a run's time
        goes").
    resumed : int
        Tile predictions reused from an interrupted run (see :mod:`tiledepth.checkpoint`).
    calibration : Calibration or None
        The metric fit (scale, shift, residual RMSE) when calibrated.
    preview : pathlib.Path, str or None
        The quicklook PNG, when asked for (a ``str`` beside a remote output).
    sidecar : pathlib.Path, str or None
        The fusion report (JSON, see :mod:`tiledepth.report`; a ``str`` beside a remote
        output).
    consistency : float or None
        Root-mean-square difference of overlapping aligned tiles, relative to
        the value range (no ground truth needed).
    flagged : int
        Tiles flagged as outliers (listed in the sidecar).
    kept : pathlib.Path or None
        With ``keep_predictions``: the checkpoint folder kept with every prediction, for a
        rerun of the output with ``overwrite`` and other options of the fusion.
    """

    output: Path | str
    tiles: int
    skipped: int
    height: int
    width: int
    seconds: dict[str, float] = field(default_factory=dict)
    resumed: int = 0
    calibration: Calibration | None = None
    preview: Path | None = None
    sidecar: Path | None = None
    consistency: float | None = None
    flagged: int = 0
    kept: Path | None = None
