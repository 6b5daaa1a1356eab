"""The CLI's options, defined once and shared by ``run``, ``info``, ``batch`` and ``rio depth``.

In the way of rasterio's ``rio/options.py``: every option is one entry of
:data:`OPTIONS`, and commands take them by name (:func:`options`), so the same
option reads the same in every command. Two rules keep the help true:

- Choices come from the registries the library checks against
  (:class:`RegistryChoice`), never from a list typed here.
- Defaults are printed from :class:`tiledepth.options.Options` (see
  :data:`DEFAULTS`); no help text types one in. Click's own defaults stay
  None, so that a value from ``--config`` wins over an option not given.

Only click and the light :mod:`tiledepth.options` are imported here, so that
``tiledepth --help`` stays instant; a registry in a heavy module is looked up
when its option is first shown or used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import click

from tiledepth.options import (
    ANCHORS,
    DEFAULT_ANCHOR_BLUR,
    DTYPES,
    OPTION_NAMES,
    OUTPUT_KINDS,
    Options,
    alignments,
)

__all__ = ["DEFAULTS", "INFO", "OPTIONS", "RUN", "VERBOSITY", "BatchSize", "RegistryChoice",
           "default_text", "options"]


class RegistryChoice(click.Choice):
    """A ``click.Choice`` whose values are a registry's, looked up when first needed.

    Parameters
    ----------
    registry : callable
        Returns the registry's names, e.g. ``lambda: SPACES`` or
        :func:`tiledepth.options.alignments`.
    """

    def __init__(self, registry: Callable[[], Iterable[str]]) -> None:
        self._registry = registry
        self.case_sensitive = True

    @functools.cached_property
    def choices(self) -> tuple[str, ...]:  # replaces click.Choice's attribute
        return tuple(self._registry())


class BatchSize(click.ParamType):
    """A whole number of tiles, or ``auto``."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            self.fail(f"expected a whole number or auto, got {value!r}", param, ctx)


def _bands(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected band numbers like 1,2,3, got {value!r}") from None


def _path(**kwargs: Any) -> click.Path:
    return click.Path(path_type=str, **kwargs)


#: How an option's default reads in the help; ``{}`` stands for its value in ``Options()``.
#: An option of Options left out reads as that value alone (none shown where it is None).
DEFAULTS: dict[str, str] = {
    "tile_size": "a built-in model's native resolution, else {}",
    "coarse_size": "the tile size",
    "anchor_blur": f"{DEFAULT_ANCHOR_BLUR} for a model's prediction, 0 for --anchor reference",
    "steps": "the checkpoint's",
    "bands": "the first three colour bands",
    "scratch": "the output's folder",
    "control_crs": "the input's",
    "output": "<input stem>.depth.tif beside the input",
    "bounds_crs": "the input's",
}

#: Every shared option: name -> (flags, click.option's keyword arguments). The name is the
#: parameter's; a name in Options gets its default printed (see :func:`default_text`).
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "output": (("-o", "--output"), dict(
        type=_path(), help="Output GeoTIFF.")),
    "overwrite": (("--overwrite",), dict(is_flag=True, help="Replace an existing output file.")),
    "config": (("--config",), dict(
        type=_path(), help="YAML file of options (keys = option names); flags given here win.")),
    "model": (("--model",), dict(
        help="A name from `tiledepth models`, a hub id, a local checkpoint folder, or a "
             "package.module:function callable.")),
    "tile_size": (("--tile-size",), dict(type=int, help="Tile side in pixels.")),
    "overlap": (("--overlap",), dict(
        type=float, help="Overlap between tiles, fraction of the tile in [0, 0.9).")),
    "coarse_size": (("--coarse-size",), dict(
        type=int, help="Long side of the coarse global prediction.")),
    "coarse_weight": (("--coarse-weight",), dict(
        type=float, help="Weight of the coarse prediction in the alignment, relative to tile "
                         "overlaps.")),
    "anchor_blur": (("--anchor-blur",), dict(
        type=float, help="Blur of the coarse map the tiles align to, a Gaussian's sigma in its "
                         "pixels; 0: none.")),
    "alignment": (("--alignment",), dict(
        type=RegistryChoice(alignments),
        help="Per-tile value map: one scale and shift, or both varying bilinearly across the "
             "tile; auto: bilinear where the coarse map has 12 pixels or more across a tile.")),
    "robust": (("--robust/--no-robust",), dict(
        default=None, help="Down-weight and flag tiles that disagree grossly with their "
                           "neighbours.")),
    "pyramid": (("--pyramid/--no-pyramid",), dict(
        default=None, help="With a coarse map over 10x coarser than the raster, fuse "
                           "intermediate resolutions first.")),
    "batch_size": (("--batch-size",), dict(
        type=BatchSize(), help="Tiles per model call, or auto: on CUDA the largest batch that "
                               "fits (probed once, up to 64), elsewhere 4.")),
    "device": (("--device",), dict(
        help="Device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")),
    "dtype": (("--dtype",), dict(
        type=RegistryChoice(lambda: DTYPES),
        help="Model precision; auto = fp16 on CUDA, fp32 elsewhere.")),
    "steps": (("--steps",), dict(type=int, help="Denoising steps.")),
    "ensemble": (("--ensemble",), dict(type=int, help="Predictions per tile, ensembled.")),
    "seed": (("--seed",), dict(
        type=int, help="Random seed; the same seed gives the same output.")),
    "bands": (("--bands",), dict(
        callback=_bands, help="Input bands for the model, 1 or 3 numbers, e.g. 1,2,3.")),
    "scratch": (("--scratch",), dict(
        type=_path(), help="Folder for tile predictions while running.")),
    "scale": (("--scale",), dict(
        type=float, help="Process at this fraction of the input resolution, in (0, 1], for "
                         "speed; the output is still on the input's grid.")),
    "workers": (("--workers",), dict(
        type=int, help="Background threads (read-ahead, scratch and output writes, alignment "
                       "statistics); 0 = none.")),
    "nodata": (("--nodata",), dict(
        type=float, help="The input's no-data value, instead of the one it declares (e.g. 0 "
                         "for a black collar declared as -3.4e38).")),
    "mask": (("--mask",), dict(
        type=_path(), help="Raster on the input's grid: 0 masks a pixel (on top of the "
                           "input's mask).")),
    "resume": (("--resume/--no-resume",), dict(
        default=None, help="Reuse the tile predictions an interrupted run of the same input, "
                           "model and options kept; --no-resume starts clean.")),
    "output_kind": (("--output-kind",), dict(
        type=RegistryChoice(lambda: OUTPUT_KINDS),
        help="Output values: depth, height (far minus depth, like a surface model) or "
             "inverse-depth.")),
    "reference": (("--reference",), dict(
        type=_path(), help="DEM/DSM raster of heights (any CRS and resolution): calibrate the "
                           "output to metres with a robust global scale and shift.")),
    "control": (("--control",), dict(
        type=_path(), help="CSV of control points (x, y, z columns): calibrate the output to "
                           "metres.")),
    "control_crs": (("--control-crs",), dict(
        help="CRS of the control points' x, y, e.g. EPSG:4326.")),
    "anchor": (("--anchor",), dict(
        type=RegistryChoice(lambda: ANCHORS),
        help="Global anchor of the fusion: the model's coarse prediction or the reprojected "
             "--reference.")),
    "bounds": (("--bounds",), dict(
        type=float, nargs=4, default=None, metavar="XMIN YMIN XMAX YMAX",
        help="Process only this rectangle (in the input's CRS, or --bounds-crs); the output "
             "covers it on the input's grid.")),
    "bounds_crs": (("--bounds-crs",), dict(
        help="CRS of --bounds, e.g. EPSG:4326.")),
    "aoi": (("--aoi",), dict(
        type=_path(), help="Vector file (GeoPackage, Shapefile, GeoJSON, ...) whose polygons "
                           "mask the run: pixels outside are NaN and never reach the model.")),
    "overviews": (("--overviews/--no-overviews",), dict(
        default=None, help="Build average overviews in the output.")),
    "cog": (("--cog/--no-cog",), dict(
        default=None, help="Write a Cloud Optimized GeoTIFF.")),
    "uncertainty": (("--uncertainty/--no-uncertainty",), dict(
        default=None, help="Add the ensemble's uncertainty as band 2 (Marigold with --ensemble "
                           "3 or more).")),
    "preview": (("--preview/--no-preview",), dict(
        default=None, help="Also write <output stem>.png, a colour-mapped quicklook.")),
    "hillshade": (("--hillshade/--no-hillshade",), dict(
        default=None, help="Shade the preview with a hillshade.")),
    "progress": (("--progress/--no-progress",), dict(
        default=True, show_default=True,
        help="Progress on stderr: a bar on a terminal, periodic lines otherwise.")),
    "verbose": (("-v", "--verbose"), dict(count=True, help="More log lines (-vv for debug).")),
    "quiet": (("-q", "--quiet"), dict(
        is_flag=True, help="Errors only: no progress, no summary.")),
    "debug": (("--debug",), dict(is_flag=True, help="Show tracebacks and debug logging.")),
}

#: ``-v``, ``-q`` and ``--debug``: every command that runs the library takes them.
VERBOSITY = ("verbose", "quiet", "debug")
#: ``tiledepth run``'s options (and ``rio depth``'s), in the order its help lists them.
RUN = ("output", "overwrite", "config", "model", "tile_size", "overlap", "coarse_size",
       "coarse_weight", "anchor_blur", "alignment", "robust", "pyramid", "batch_size", "device",
       "dtype", "steps", "ensemble", "seed", "bands", "scratch", "scale", "workers", "nodata",
       "mask", "resume", "output_kind", "reference", "control", "control_crs", "anchor",
       "bounds", "bounds_crs", "aoi", "overviews", "cog", "uncertainty", "preview", "hillshade",
       "progress", *VERBOSITY)
#: ``tiledepth info``'s: what shapes the plan and the estimates.
INFO = ("config", "model", "tile_size", "overlap", "coarse_size", "batch_size", "steps",
        "ensemble", *VERBOSITY)
#: ``tiledepth batch``'s engine options: run's, less one input's own (its output, area and
#: ``--resume``, which batch has with another meaning; each input's checkpoint is resumed).
BATCH = tuple(n for n in RUN if n not in ("output", "overwrite", "resume", "bounds",
                                          "bounds_crs", "aoi"))


def default_text(name: str) -> str | None:
    """How the default of option ``name`` reads in the help, from ``Options()``.

    Examples
    --------
    >>> default_text("overlap"), default_text("robust"), default_text("mask")
    ('0.25', 'on', None)
    """
    value = getattr(Options(), name) if name in OPTION_NAMES else None
    shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
    if name in DEFAULTS:
        return DEFAULTS[name].format(shown)
    return None if value is None else shown


def _option(name: str) -> Callable:
    flags, kwargs = OPTIONS[name]
    default = default_text(name)
    if default is not None:
        kwargs = {**kwargs, "help": f"{kwargs['help']} [default: {default}]"}
    return click.option(*flags, name, **kwargs)


def options(*names: str) -> Callable:
    """Decorate a command with the options ``names`` of :data:`OPTIONS`, in that order."""

    def decorate(fn: Callable) -> Callable:
        for name in reversed(names):
            fn = _option(name)(fn)
        return fn

    return decorate
