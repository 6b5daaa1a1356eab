"""The ``tiledepth`` command: parse options, call the library, map errors.

Thin by design: every command calls a library function. Heavy imports happen
inside commands, so ``tiledepth --help`` answers instantly. Errors print one
line, ``tiledepth: error: ...``, and exit 2 for bad input or options, 1 for a
failure while running (an unexpected error included), 130 when interrupted
(143 on SIGTERM); ``--debug`` shows the traceback and GDAL's own messages.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path

import click

from tiledepth import __version__
from tiledepth.errors import TiledepthError
from tiledepth.survey import DEFAULT_GLOB, EXECUTORS, MANIFEST_NAME, ON_ERROR

DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."


def _bands(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected band numbers like 1,2,3, got {value!r}") from None


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


BATCH_HELP = ("Tiles per model call, or auto: on CUDA the largest batch that fits (probed once, "
              "up to 64), elsewhere 4. [default: 4]")


def handle_errors(fn):
    """Run a command; turn errors into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.pop("debug", False)
        verbose, quiet = kwargs.pop("verbose", 0), kwargs.pop("quiet", False)
        level = (logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose
                 else logging.ERROR if quiet else logging.WARNING)
        logging.basicConfig(format="tiledepth: %(levelname)s: %(message)s")
        logging.getLogger("tiledepth").setLevel(level)
        click.get_current_context().meta["tiledepth.quiet"] = quiet
        previous = signal.signal(signal.SIGTERM, _sigterm)
        gdal_log = logging.getLogger("rasterio")
        gdal_level = gdal_log.level
        if not debug:  # GDAL's messages: every failure is reported in our one line
            gdal_log.setLevel(logging.CRITICAL)
        try:
            return fn(*args, **kwargs)
        except TiledepthError as exc:
            if debug:
                raise
            click.echo(_line(f"tiledepth: error: {exc}", exc), err=True)
            sys.exit(exc.exit_code)
        except _Terminated as exc:
            click.echo(_line("tiledepth: terminated (SIGTERM); no output was written", exc),
                       err=True)
            sys.exit(143)
        except KeyboardInterrupt as exc:
            click.echo(_line("tiledepth: interrupted; no output was written", exc), err=True)
            sys.exit(130)
        except MemoryError as exc:
            if debug:
                raise
            click.echo(_line("tiledepth: error: out of memory; lower --batch-size or "
                             "--tile-size", exc), err=True)
            sys.exit(1)
        except Exception as exc:
            if debug:
                raise
            text = str(exc).strip().splitlines()
            click.echo(_line(f"tiledepth: error: unexpected {type(exc).__name__}"
                             f"{': ' + text[0] if text else ''} (--debug shows the traceback)",
                             exc), err=True)
            sys.exit(1)
        finally:
            signal.signal(signal.SIGTERM, previous)
            gdal_log.setLevel(gdal_level)

    return wrapper


def _line(message: str, exc: BaseException) -> str:
    """``message`` with the exception's notes (what was kept for a resume) on one line."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return "; ".join([message, *notes]).replace("\n", " ")


class _Terminated(BaseException):
    pass


def _sigterm(signum, frame):
    raise _Terminated()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tiledepth")
def main():
    """Seamless, georeferenced depth maps of huge rasters.

    Cuts the raster into overlapping tiles, predicts depth per tile with a
    monocular model (Marigold by default), aligns every tile's scale and shift
    to its neighbours and to a coarse prediction of the whole image, and blends
    them into one GeoTIFF on the input's grid.
    """


@main.command()
@click.argument("input", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Output GeoTIFF, local or s3://, gs://, az://; with --split a folder. "
                   "[default: <input stem>.depth.tif beside the input]")
@click.option("--mosaic", is_flag=True,
              help="Fuse all INPUTs (files, folders, @list.txt) as one raster: no seam between "
                   "files. They must share CRS and resolution.")
@click.option("--split", is_flag=True,
              help="With --mosaic: one output per input in the folder -o, cut from the one "
                   "fusion.")
@click.option("--asset", help="For a STAC item INPUT: the asset to read. [default: visual, else "
                              "the first RGB GeoTIFF]")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--config", "config", type=click.Path(path_type=str),
              help="YAML file of options (keys = option names); flags given here win.")
@click.option("--model",
              help="A name from `tiledepth models`, a hub id, a local checkpoint folder, or a "
                   "package.module:function callable. [default: prs-eth/marigold-depth-v1-1]")
@click.option("--tile-size", type=int, help="Tile side in pixels. [default: 768]")
@click.option("--overlap", type=float,
              help="Overlap between tiles, fraction of the tile in [0, 0.9). [default: 0.25]")
@click.option("--coarse-size", type=int,
              help="Long side of the coarse global prediction. [default: tile size]")
@click.option("--coarse-weight", type=float,
              help="Weight of the coarse prediction in the alignment, relative to tile "
                   "overlaps. [default: 0.6]")
@click.option("--anchor-blur", type=float,
              help="Blur of the coarse map the tiles align to, a Gaussian's sigma in its "
                   "pixels; 0: none. [default: 1.5 for a model's prediction, 0 for "
                   "--anchor reference]")
@click.option("--alignment", type=click.Choice(["auto", "affine", "bilinear"]),
              help="Per-tile value map: one scale and shift, or both varying bilinearly "
                   "across the tile; auto: bilinear where the coarse map has 12 pixels or "
                   "more across a tile. [default: auto]")
@click.option("--robust/--no-robust", default=None,
              help="Down-weight and flag tiles that disagree grossly with their neighbours. "
                   "[default: robust]")
@click.option("--pyramid/--no-pyramid", default=None,
              help="With a coarse map over 10x coarser than the raster, fuse intermediate "
                   "resolutions first. [default: pyramid]")
@click.option("--batch-size", type=BatchSize(), help=BATCH_HELP)
@click.option("--device", help=f"Device: {DEVICE_HELP} [default: auto]")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
              help="Model precision; auto = fp16 on CUDA, fp32 elsewhere. [default: auto]")
@click.option("--steps", type=int, help="Denoising steps. [default: the checkpoint's]")
@click.option("--ensemble", type=int, help="Predictions per tile, ensembled. [default: 1]")
@click.option("--seed", type=int, help="Random seed; the same seed gives the same output. "
                                       "[default: 0]")
@click.option("--bands", callback=_bands,
              help="Input bands for the model, 1 or 3 numbers, e.g. 1,2,3. "
                   "[default: the first three colour bands]")
@click.option("--scratch", type=click.Path(path_type=str),
              help="Folder for tile predictions while running. [default: the output's folder]")
@click.option("--scale", type=float,
              help="Process at this fraction of the input resolution, in (0, 1], for speed; "
                   "the output is still on the input's grid. [default: 1.0]")
@click.option("--workers", type=int,
              help="Background threads (read-ahead, scratch and output writes, alignment "
                   "statistics); 0 = none. [default: 2]")
@click.option("--resume/--no-resume", default=None,
              help="Reuse the tile predictions an interrupted run of the same input, model and "
                   "options kept; --no-resume starts clean. [default: resume]")
@click.option("--output-kind", type=click.Choice(["depth", "height", "inverse-depth"]),
              help="Output values: depth, height (far minus depth, like a surface model) or "
                   "inverse-depth. [default: depth]")
@click.option("--reference", type=click.Path(path_type=str),
              help="DEM/DSM raster of heights (any CRS and resolution): calibrate the output "
                   "to metres with a robust global scale and shift.")
@click.option("--control", type=click.Path(path_type=str),
              help="CSV of control points (x, y, z columns): calibrate the output to metres.")
@click.option("--control-crs",
              help="CRS of the control points' x, y, e.g. EPSG:4326. [default: the input's]")
@click.option("--anchor", type=click.Choice(["model", "reference"]),
              help="Global anchor of the fusion: the model's coarse prediction or the "
                   "reprojected --reference. [default: model]")
@click.option("--overviews/--no-overviews", default=None,
              help="Build average overviews in the output. [default: on]")
@click.option("--cog/--no-cog", default=None,
              help="Write a Cloud Optimized GeoTIFF. [default: off]")
@click.option("--uncertainty/--no-uncertainty", default=None,
              help="Add the ensemble's uncertainty as band 2 (Marigold with --ensemble 3 or "
                   "more).")
@click.option("--preview/--no-preview", default=None,
              help="Also write <output stem>.png, a colour-mapped quicklook.")
@click.option("--hillshade/--no-hillshade", default=None,
              help="Shade the preview with a hillshade.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: a bar on a terminal, periodic lines otherwise.")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Errors only: no progress, no summary.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@handle_errors
def run(input, output, overwrite, config, progress, mosaic, split, asset, **options):
    """Estimate depth for INPUT and write a GeoTIFF on its grid.

    INPUT is any raster GDAL opens: a GeoTIFF orthomosaic, a drone JPEG or PNG;
    a URL (https://, s3://, gs://, az://), a /vsi path, a VRT or a STAC item.
    Several INPUTs need --mosaic.
    """
    from tiledepth.engine import run as run_engine
    from tiledepth.errors import OptionError

    quiet = _quiet()
    if split and not mosaic:
        raise OptionError("--split needs --mosaic")
    if len(input) > 1 and not mosaic:
        raise OptionError("several INPUTs need --mosaic (fused as one raster), or use "
                               "`tiledepth batch` for one run each")
    if mosaic:
        from tiledepth.mosaic import run_mosaic

        if output is None:
            raise OptionError("--mosaic needs -o (a file; a folder with --split)")
        result = run_mosaic(list(input), output, split=split, overwrite=overwrite,
                            progress=progress and not quiet, config=config, asset=asset,
                            **options)
        if split:
            if not quiet:
                click.echo(f"wrote {len(result)} outputs to {output}", err=True)
            return
    else:
        result = run_engine(input[0], output, overwrite=overwrite,
                            progress=progress and not quiet, config=config, asset=asset,
                            **options)
    if quiet:
        return
    resumed = f", {result.resumed} from an interrupted run" if result.resumed else ""
    click.echo(
        f"wrote {result.output} ({result.width} x {result.height} px, {result.tiles} tiles"
        f"{resumed}, {result.seconds['total']:.1f} s)",
        err=True,
    )
    cal = result.calibration
    if cal is not None:
        click.echo(f"calibrated to the {cal.source}: scale {cal.scale:.6g}, shift "
                   f"{cal.shift:.6g}, residual RMSE {cal.rmse:.3g} m over {cal.samples} "
                   f"{'cells' if cal.source == 'reference' else 'points'}", err=True)
    if result.sidecar is not None:
        consistency = "n/a" if result.consistency is None else f"{result.consistency:.2%}"
        flagged = f", {result.flagged} tiles flagged" if result.flagged else ""
        click.echo(f"tile consistency {consistency} of the range{flagged}: {result.sidecar}",
                   err=True)
    if result.preview is not None:
        click.echo(f"wrote {result.preview}", err=True)


@main.command()
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.option("--config", "config", type=click.Path(path_type=str),
              help="YAML file of options; flags given here win.")
@click.option("--model", help="As for run; sets the time estimate's basis.")
@click.option("--tile-size", type=int, help="Tile side in pixels. [default: 768]")
@click.option("--overlap", type=float, help="Overlap between tiles. [default: 0.25]")
@click.option("--coarse-size", type=int, help="Long side of the coarse prediction.")
@click.option("--batch-size", type=BatchSize(), help=BATCH_HELP)
@click.option("--steps", type=int, help="Denoising steps. [default: 4, Marigold v1-1's]")
@click.option("--ensemble", type=int, help="Predictions per tile. [default: 1]")
@click.option("-v", "--verbose", count=True, help="More log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def info(input, config, **options):
    """Describe INPUT and plan a run: tiles, scratch disk, memory and time estimates.

    Reads only metadata and a decimated mask; runs no model.
    """
    from tiledepth.info import describe, format_info

    click.echo(format_info(describe(input, config=config, **options)))


@main.command(name="eval")
@click.argument("pred", type=click.Path(path_type=str))
@click.argument("gt", type=click.Path(path_type=str))
@click.option("--mask", type=click.Path(path_type=str),
              help="Raster on the same grid, nonzero where the comparison counts.")
@click.option("--space", type=click.Choice(["depth", "disparity"]), default="depth",
              show_default=True, help="Where the scale and shift alignment is fitted.")
@click.option("--gt-kind", type=click.Choice(["depth", "height"]), default="depth",
              show_default=True, help="What GT holds: depth, or height (a DSM or CHM).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("-v", "--verbose", count=True, help="More log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def eval_(pred, gt, mask, space, gt_kind, as_json):
    """Score PRED (a depth GeoTIFF) against ground truth GT on the same grid.

    Prints AbsRel, delta1 and NRMSE after a least-squares scale and shift, the
    seam ratio (from the tile tags of a tiledepth output), and the tiles'
    consistency from PRED's sidecar JSON when there is one.
    """
    import json

    from tiledepth.evaluation import evaluate_files, format_evaluation

    result = evaluate_files(pred, gt, mask=mask, space=space, gt_kind=gt_kind)
    click.echo(json.dumps(result, indent=1) if as_json else format_evaluation(result))


@main.command()
@click.argument("source", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="PNG to write. [default: <source stem>.png beside it]")
@click.option("--hillshade", is_flag=True, help="Shade with a hillshade.")
@click.option("--max-size", type=int, default=2048, show_default=True,
              help="Long side of the PNG, at most.")
@click.option("--band", type=int, default=1, show_default=True, help="Band to show.")
@click.option("-v", "--verbose", count=True, help="More log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def preview(source, output, hillshade, max_size, band):
    """Write a colour-mapped PNG quicklook of SOURCE, a tiledepth output.

    A robust 2-98 percentile stretch, transparent where there is no data,
    georeferenced (.aux.xml) so that QGIS places it.
    """
    from tiledepth.preview import write_preview

    if max_size < 1:
        raise click.BadParameter(f"must be >= 1, got {max_size}", param_hint="--max-size")
    path = write_preview(source, output, hillshade=hillshade, max_size=max_size, band=band)
    if not _quiet():
        click.echo(f"wrote {path}", err=True)


def _quiet() -> bool:
    return click.get_current_context().meta.get("tiledepth.quiet", False)


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help=f"Output folder: <stem>.depth.tif per input, mirroring its subfolders, "
                   f"and the manifest {MANIFEST_NAME}.")
@click.option("--glob", "glob", multiple=True,
              help=f"File-name pattern searched for in folders, case-insensitive; repeat it or "
                   f"separate with commas. [default: {','.join(DEFAULT_GLOB)}]")
@click.option("--resume", is_flag=True,
              help="Skip inputs whose output is complete and valid (opened and checked); "
                   "redo the rest.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--on-error", type=click.Choice(ON_ERROR), default="skip", show_default=True,
              help="After a failed input, go on with the next (skip) or stop.")
@click.option("--shard", metavar="i/N",
              help="Process only shard i (from 0) of N: a stable split of the inputs for N "
                   "independent jobs.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="Run the model in this process, or on a pool of Ray actors (pip install "
                   "\"tiledepth[ray]\").")
@click.option("--ray-address", metavar="ADDR",
              help="Ray cluster to join (auto, ray://head:10001, ...). [default: start a "
                   "local Ray]")
@click.option("--ray-actors", type=int,
              help="Model actors on Ray. [default: one per GPU of the cluster, or 1 without "
                   "GPUs]")
@handle_errors
def batch(inputs, output_dir, glob, resume, overwrite, on_error, shard, executor, ray_address,
          ray_actors, config, progress, mosaic, **options):
    """Estimate depth for every INPUT raster into the folder -o, with a manifest.

    INPUT is a raster file, a folder (searched recursively, see --glob) or
    @list.txt (one file or folder per line). The model is loaded once. Ends
    with a summary table; the exit code is 1 if any input failed.
    """
    from tiledepth.survey import batch as run_batch
    from tiledepth.survey import summary

    try:
        records = run_batch(list(inputs), output_dir, glob=glob or None, resume=resume,
                            overwrite=overwrite, on_error=on_error, shard=shard,
                            executor=executor, ray_address=ray_address, ray_actors=ray_actors,
                            progress=progress, config=config, mosaic=mosaic, **options)
    except (KeyboardInterrupt, _Terminated) as exc:
        click.echo("tiledepth: batch stopped; finished outputs are kept (see the manifest); "
                   "rerun with --resume to go on", err=True)
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 143)
    click.echo(summary(records), err=True)
    click.echo(f"manifest: {Path(output_dir) / MANIFEST_NAME}", err=True)
    if any(r.status == "failed" for r in records):
        sys.exit(1)


# The model and engine options, shared with `run` (so both always take the same ones).
# run's options, less its own arguments; batch's --resume (skip finished outputs) is its own,
# and each input's checkpoint is resumed as in run (the default).
batch.params.extend(p for p in run.params
                    if p.name not in ("input", "output", "overwrite", "resume", "split",
                                      "asset"))


@main.command()
def models():
    """List the built-in models that --model accepts by name.

    For each: its backend family, output kind (affine-invariant depth or
    disparity, or metric depth), native resolution (a good --tile-size),
    default denoising steps, hub checkpoint and licence. The fusion aligns
    each kind in its own space.
    """
    from tiledepth.models.registry import format_table

    click.echo(format_table())


if __name__ == "__main__":  # pragma: no cover
    main()
