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
every command's ``--help`` stays instant. A help shows each choice's values, so
a registry that lives in a heavy module (the fusion's) has its names written out
in a light one, which tests/test_cli_help.py keeps equal to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import click

from tiledepth.options import (
    ANCHORS,
    DTYPES,
    FUSIONS,
    OPTION_NAMES,
    OUTPUT_KINDS,
    Options,
    alignments,
    overlap_weightings,
    parse_bands,
)

__all__ = ["BATCH", "DEFAULTS", "INFO", "OPTIONS", "RUN", "VERBOSITY", "Bands",
           "OrAuto", "RegistryChoice", "default_text", "options"]


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


class OrAuto(click.ParamType):
    """A number (``cast``: int or float), or ``auto``."""

    def __init__(self, cast: type) -> None:
        self.cast = cast
        self.name = f"{'INTEGER' if cast is int else 'FLOAT'}|auto"

    def convert(self, value, param, ctx):
        kinds = (int,) if self.cast is int else (float, int)
        if isinstance(value, kinds) and not isinstance(value, bool):
            return self.cast(value)
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            return self.cast(text)
        except ValueError:
            what = "a whole number" if self.cast is int else "a number"
            self.fail(f"expected {what} or auto, got {value!r}", param, ctx)


class Bands(click.ParamType):
    """Band numbers, ``1,2,3``, as a tuple of int (:func:`tiledepth.options.parse_bands`, which
    a config's ``bands: 1,2,3`` goes through too)."""

    name = "TEXT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_bands(value)
        except ValueError:
            self.fail(f"expected band numbers like 1,2,3, got {value!r}", param, ctx)


#: Kinds of option beyond a click type: an on/off pair (``--robust/--no-robust``, None when
#: not given), a flag (``--overwrite``), a count (``-vv``).
SWITCH, FLAG, COUNT = "switch", "flag", "count"
PATH = click.Path(path_type=str)
#: Short flags.
SHORT = {"output": "-o", "verbose": "-v", "quiet": "-q"}

#: How an option's default reads in the help; ``{}`` stands for its value in ``Options()``.
#: An option of Options left out reads as that value alone (none shown where it is None).
DEFAULTS: dict[str, str] = {
    "tile_size": "a built-in model's native resolution, else {}",
    "coarse_size": "the tile size",
    "anchor_blur": "auto (0 for --anchor reference)",
    "steps": "the checkpoint's",
    "bands": "the bands tagged red, green, blue, in that order, else the first three colour "
             "bands",
    "scratch": "the output's folder",
    "control_crs": "the input's",
    "output": "<input stem>.depth.tif beside the input",
    "bounds_crs": "the input's",
    "asset": "visual, else the first RGB GeoTIFF",
    "progress": "on",
}

#: Every shared option: name -> (type, help, optional more click.option arguments). The name
#: is the parameter's, with dashes the flag's (``tile_size``: ``--tile-size``); a name in
#: Options gets its default printed (see :func:`default_text`).
OPTIONS: dict[str, tuple] = {
    "output": (PATH, "Output GeoTIFF, local or s3://, gs://, az://; with --split a folder."),
    "overviews": (SWITCH, "Build average overviews in the output."),
    "cog": (SWITCH, "Write a Cloud Optimized GeoTIFF (its overviews as --overviews says)."),
    "mosaic": (FLAG, "Fuse all INPUTs (files, folders, @list.txt) as one raster: no seam "
                     "between files. They must share CRS, resolution, band count, data "
                     "type and pixel grid."),
    "asset": (str, "For a STAC item INPUT: the asset to read."),
    "split": (FLAG, "With --mosaic: one output per input in the folder -o, cut from the one "
                    "fusion."),
    "overwrite": (FLAG, "Replace an existing output file."),
    "config": (PATH, "YAML file of options (keys = option names); flags given here win."),
    "model": (str, "A name from `tiledepth models`, a hub id, a local checkpoint folder, a "
                   "package.module:function callable, or path/to/file.py:function."),
    "tile_size": (int, "Tile side in pixels."),
    "overlap": (float, "Overlap between tiles, fraction of the tile in [0, 0.9)."),
    "coarse_size": (int, "Long side of the coarse global prediction."),
    "coarse_weight": (float, "Weight of the coarse prediction in the alignment, relative to "
                             "tile overlaps; with --estimate-weights the starting point of "
                             "the estimated one."),
    "anchor_calls": (int, "Model calls of the coarse image the anchor is made of (their "
                          "robust median; at most 16): averages out part of a model's "
                          "per-call error, which every tile inherits. A model whose calls "
                          "repeat makes two; --anchor reference, one. 1: one call."),
    "anchor_blur": (OrAuto(float), "Blur of the coarse map the tiles align to, a Gaussian's "
                                  "sigma in its pixels, at most 64; 0: none; auto: estimated "
                                  "from the tiles (0 for a sharp model, more for a blurry "
                                  "one)."),
    "alignment": (RegistryChoice(alignments),
                  "Per-tile value map: one scale and shift, or both varying bilinearly across "
                  "the tile; auto: bilinear where the coarse map has 300 pixels or more across "
                  "a tile."),
    "fusion": (RegistryChoice(lambda: FUSIONS),
               "How aligned tiles become one map: blended (tiles), or blended and corrected "
               "in the gradient domain toward the coarse map's low frequencies (gradient)."),
    "robust": (SWITCH, "Down-weight and flag tiles that disagree grossly with their "
                       "neighbours."),
    "retry_flagged": (SWITCH, "Predict each tile flagged inconsistent (filled from the "
                              "coarse map) again (a new sample; twice where the first "
                              "fails too) and keep the new prediction where it is "
                              "consistent; also each tile its neighbours follow weakly, as "
                              "no typical tile, kept where they follow the new sample."),
    "estimate_weights": (SWITCH, "Estimate the coarse prediction's weight against the tile "
                                 "overlaps from their measured residuals (variance component "
                                 "estimation; off: --coarse-weight as given)."),
    "overlap_weighting": (RegistryChoice(overlap_weightings),
                          "How the alignment weights an overlap's pixels: each the same "
                          "(uniform), or by the product of the two tiles' blending weights "
                          "(blend: least at either tile's edge)."),
    "bend_from_anchor": (SWITCH, "Bilinear value maps: take how a tile bends from the coarse "
                                 "prediction alone, the overlaps set only its level."),
    "pyramid": (SWITCH, "Where the raster is 4x finer than a level 4x finer than the coarse "
                        "map (at most 2048 px): 16x the coarse map, 8192 px and up with a "
                        "768 px one; fuse that intermediate resolution first."),
    "batch_size": (OrAuto(int), "Tiles per model call, or auto: on CUDA the largest batch that "
                                "fits (probed once, up to 64), elsewhere 4."),
    "device": (str, "Device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (any "
                    "case)."),
    "dtype": (RegistryChoice(lambda: DTYPES),
              "Model precision; auto = fp16 on CUDA, fp32 elsewhere."),
    "steps": (int, "Denoising steps."),
    "ensemble": (int, "Predictions per tile, ensembled."),
    "seed": (int, "Seed of Marigold's noise; the same seed gives the same output."),
    "bands": (Bands(), "Input bands for the model, 1 or 3 numbers, e.g. 1,2,3."),
    "scratch": (PATH, "Folder for tile predictions while running."),
    "scale": (float, "Process at this fraction of the input resolution, in (0, 1], for speed; "
                     "the output is still on the input's grid (below 1 not with --reference, "
                     "--control or --uncertainty)."),
    "workers": (int, "Background threads (read-ahead, scratch and output writes, alignment "
                     "statistics); 0 = none."),
    "memory": (int, "MiB of tile predictions kept in memory until blended; beyond it they "
                    "are read back from the checkpoint folder."),
    "nodata": (float, "The input's no-data value, instead of the one it declares (e.g. 0 for "
                      "a black collar declared as -3.4e38)."),
    "mask": (PATH, "Raster on the input's grid: 0 masks a pixel (on top of the input's mask)."),
    "resume": (SWITCH, "Reuse the tile predictions an interrupted run of the same input, model "
                       "and options kept (options of the fusion and output alone may change, "
                       "--coarse-weight, --reference, --cog...); --no-resume starts clean."),
    "keep_predictions": (SWITCH, "Keep the tile predictions when the run succeeds too (about "
                                 "7.3 bytes a pixel, beside the output or in --scratch): the same "
                                 "command with --overwrite and other options of the fusion, "
                                 "calibration or writing reuses them, predicting no tile again "
                                 "(a pyramid level's few are)."),
    "output_kind": (RegistryChoice(lambda: OUTPUT_KINDS),
                    "Output values: depth, height (far minus depth, like a surface model) or "
                    "inverse-depth."),
    "reference": (PATH, "DEM/DSM raster of heights (any CRS and resolution): calibrate the "
                        "output to metres with a robust global scale and shift (--scale 1 "
                        "only)."),
    "control": (PATH, "CSV of control points (x, y, z columns): calibrate the output to "
                      "metres (--scale 1 only)."),
    "control_crs": (str, "CRS of the control points' x, y, e.g. EPSG:4326."),
    "anchor": (RegistryChoice(lambda: ANCHORS),
               "Global anchor of the fusion: the model's coarse prediction or the reprojected "
               "--reference."),
    "bounds": (float, "Process only this rectangle (in the input's CRS, or --bounds-crs); the "
                      "output covers it on the input's grid.",
               dict(nargs=4, metavar="XMIN YMIN XMAX YMAX")),
    "bounds_crs": (str, "CRS of --bounds, e.g. EPSG:4326."),
    "aoi": (PATH, "Vector file (GeoPackage, Shapefile, GeoJSON, ...) whose polygons mask the "
                  "run: pixels outside are NaN and never reach the model."),
    "uncertainty": (SWITCH, "Add the ensemble's uncertainty as band 2 (Marigold with "
                            "--ensemble 3 or more; --scale 1 only)."),
    "preview": (SWITCH, "Also write <output stem>.png, a colour-mapped quicklook."),
    "hillshade": (SWITCH, "Shade the preview with a hillshade."),
    "progress": (SWITCH, "Progress on stderr: a bar on a terminal, periodic lines otherwise.",
                 dict(default=True)),
    "verbose": (COUNT, "More log lines (-vv for debug)."),
    "quiet": (FLAG, "Errors only on stderr: no progress, no summary."),
    "debug": (FLAG, "Show tracebacks and debug logging."),
}

#: ``-v``, ``-q`` and ``--debug``: every command that runs the library takes them.
VERBOSITY = ("verbose", "quiet", "debug")
#: ``tiledepth run``'s options (and ``rio depth``'s), in the order its help lists them.
RUN = ("output", "mosaic", "split", "asset", "overwrite", "config", "model", "tile_size",
       "overlap", "coarse_size",
       "coarse_weight", "anchor_calls", "anchor_blur", "alignment", "fusion", "robust",
       "retry_flagged",
       "estimate_weights", "overlap_weighting",
       "bend_from_anchor", "pyramid", "batch_size", "device",
       "dtype", "steps", "ensemble", "seed", "bands", "scratch", "scale", "workers", "memory",
       "nodata", "mask", "resume", "keep_predictions", "output_kind", "reference", "control",
       "control_crs", "anchor",
       "bounds", "bounds_crs", "aoi", "overviews", "cog", "uncertainty", "preview", "hillshade",
       "progress", *VERBOSITY)
#: ``tiledepth info``'s: what shapes the plan and the estimates (``--scale``, ``--nodata``
#: and ``--mask`` too: the tiles planned, those masked, the scratch; a config set them anyway).
INFO = ("config", "model", "tile_size", "overlap", "coarse_size", "anchor_calls",
        "batch_size", "steps", "ensemble", "bands", "scale", "nodata", "mask", *VERBOSITY)
#: ``tiledepth batch``'s engine options: run's, less one input's own (its output, area and
#: ``--resume``, which batch has with another meaning; each input's checkpoint is resumed;
#: ``--keep-predictions``, one run's: a batch keeps an input's predictions when it fails).
BATCH = tuple(n for n in RUN if n not in ("output", "split", "asset", "overwrite", "resume",
                                          "keep_predictions", "bounds", "bounds_crs", "aoi"))


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
    """The click.option of ``name``: its flags, type and help, the default appended."""
    kind, help, *more = OPTIONS[name]
    flag = "--" + name.replace("_", "-")
    flags = (SHORT[name], flag) if name in SHORT else (flag,)
    kwargs = {SWITCH: dict(default=None), FLAG: dict(is_flag=True),
              COUNT: dict(count=True)}.get(kind, dict(type=kind))
    if kind == SWITCH:
        flags = (f"{flag}/--no-{flag[2:]}",)
    default = default_text(name)
    if default is not None:
        help = f"{help} [default: {default}]"
    return click.option(*flags, name, help=help, **{**kwargs, **(more[0] if more else {})})


def options(*names: str) -> Callable:
    """Decorate a command with the options ``names`` of :data:`OPTIONS`, in that order."""

    def decorate(fn: Callable) -> Callable:
        for name in reversed(names):
            fn = _option(name)(fn)
        return fn

    return decorate
