"""The ``tiledepth`` command: parse options, call the library, map errors.

Thin by design: every command calls a library function. Heavy imports happen
inside commands, so ``tiledepth --help`` answers instantly. Errors print one
line, ``tiledepth: error: ...``, and exit 2 for bad input or options, 1 for a
failure while running, 130 when interrupted (143 on SIGTERM); ``--debug``
shows the traceback.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys

import click

from tiledepth import __version__
from tiledepth.errors import TiledepthError

DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."


def _bands(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected band numbers like 1,2,3, got {value!r}") from None


def handle_errors(fn):
    """Run a command; turn errors into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.pop("debug", False)
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                            format="tiledepth: %(levelname)s: %(message)s")
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            return fn(*args, **kwargs)
        except TiledepthError as exc:
            if debug:
                raise
            click.echo(f"tiledepth: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except _Terminated:
            click.echo("tiledepth: terminated (SIGTERM); no output was written", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("tiledepth: interrupted; no output was written", err=True)
            sys.exit(130)
        except MemoryError:
            if debug:
                raise
            click.echo("tiledepth: error: out of memory; lower --batch-size or --tile-size",
                       err=True)
            sys.exit(1)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


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
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Output GeoTIFF. [default: <input stem>.depth.tif beside the input]")
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
                   "overlaps. [default: 0.1]")
@click.option("--batch-size", type=int, help="Tiles per model call. [default: 4]")
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
@click.option("--uncertainty/--no-uncertainty", default=None,
              help="Also write the ensemble's uncertainty, <output stem>.uncertainty.tif "
                   "(Marigold with --ensemble 3 or more). [default: no]")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@handle_errors
def run(input, output, overwrite, config, progress, **options):
    """Estimate depth for INPUT and write a GeoTIFF on its grid.

    INPUT is any raster GDAL opens: a GeoTIFF orthomosaic, a drone JPEG or PNG.
    """
    from tiledepth.engine import run as run_engine

    result = run_engine(input, output, overwrite=overwrite, progress=progress, config=config,
                        **options)
    click.echo(
        f"wrote {result.output} ({result.width} x {result.height} px, {result.tiles} tiles, "
        f"{result.seconds['total']:.1f} s)",
        err=True,
    )


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
