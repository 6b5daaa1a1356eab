"""The ``tiledepth`` command: parse options, call the library, map errors.

Thin by design: every command calls a library function. Heavy imports happen
inside commands, so every ``--help`` answers instantly. Errors print one
line, ``tiledepth: error: ...``, and exit 2 for bad input or options, 1 for a
failure while running (an unexpected error included), 130 when interrupted
(143 on SIGTERM); ``--debug`` also shows the traceback (before that line, the exit
code the same) and GDAL's own messages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import sys
import time
import warnings
from contextvars import ContextVar
from pathlib import Path

import click

from tiledepth import __version__
from tiledepth.cli_options import BATCH, INFO, RUN, VERBOSITY, RegistryChoice, options
from tiledepth.errors import TiledepthError
from tiledepth.survey import DEFAULT_GLOB, EXECUTORS, MANIFEST_NAME, ON_ERROR

#: How the command names its output in messages that say to choose another: ``-o``, or
#: ``OUTPUT`` for ``rio depth``, whose output is an argument.
OUTPUT_NAMED: ContextVar[str] = ContextVar("tiledepth_output_named", default="-o")
#: The format of the command's log lines: ``tiledepth: WARNING: ...``.
LOG_FORMAT = "tiledepth: %(levelname)s: %(message)s"
#: ``tiledepth batch``'s flags that ``tiledepth run`` has not, as a config's keys: a config
#: of ``run`` that holds one is refused saying they are batch's
#: (:data:`tiledepth.options.FLAGS_ELSEWHERE`), not told to give them on the command line.
BATCH_ONLY = ("glob", "on_error", "shard", "executor", "ray_address", "ray_actors")


def _named_output(message: str) -> str:
    """``message`` with its ``-o`` as the command names its output (:data:`OUTPUT_NAMED`);
    its ``-o/--output`` (a config's ``output:`` key) too, where the command has no
    ``--output`` (``rio depth``: OUTPUT is an argument).

    Examples
    --------
    >>> token = OUTPUT_NAMED.set("OUTPUT")
    >>> _named_output("out.tif: already exists; pass --overwrite or choose another -o")
    'out.tif: already exists; pass --overwrite or choose another OUTPUT'
    >>> _named_output("'output' is not a config key: -o/--output is per raster")
    "'output' is not a config key: OUTPUT is per raster"
    >>> OUTPUT_NAMED.reset(token)
    """
    named = OUTPUT_NAMED.get()
    return message if named == "-o" else re.sub(r"(?<![\w-])-o(/--output(-dir)?)?\b", named,
                                                message)


def handle_errors(fn):
    """Run a command; turn errors into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.pop("debug", False)
        verbose, quiet = kwargs.pop("verbose", 0), kwargs.pop("quiet", False)
        level = (logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose
                 else logging.ERROR if quiet else logging.WARNING)
        logging.basicConfig(format=LOG_FORMAT)
        own_log = logging.getLogger("tiledepth")
        own_level = own_log.level  # restored at the end (commands run in-process in tests)
        # every line logged, whoever logs it: a URL's credentials left out (a presigned URL's
        # signature, user:pass@), as in the error line (_line)
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(_redacting)
        own_log.setLevel(level)
        click.get_current_context().meta["tiledepth.quiet"] = quiet
        previous = signal.getsignal(signal.SIGTERM)
        previous_int = signal.getsignal(signal.SIGINT)
        gdal_log = logging.getLogger("rasterio")
        gdal_level = gdal_log.level
        stopped = False  # by a signal
        if "tiledepth.write" in sys.modules:  # (commands run in-process in tests)
            sys.modules["tiledepth.write"].PLACED.set(None)
        try:
            # The handlers inside the try, and so is what follows them: a signal from the
            # moment one is set (a SIGTERM during the half second that the import of
            # tiledepth.read, rasterio's, takes) is this command's interruption, one line and
            # its exit code, not a traceback (exit 1).
            signal.signal(signal.SIGTERM, _sigterm)
            if previous_int is signal.default_int_handler:  # not where Ctrl-C is ignored
                signal.signal(signal.SIGINT, _sigint)
            if not debug:  # GDAL's messages: every failure is reported in our one line
                gdal_log.setLevel(logging.CRITICAL)
            from tiledepth.read import route_libtiff_messages

            route_libtiff_messages()  # and libtiff's, which it would print raw
            with warnings.catch_warnings():  # Python's warnings: a log line each, not two raw
                warnings.showwarning = _warning_line
                return fn(*args, **kwargs)
        except TiledepthError as exc:
            _traceback(debug)
            # an interruption that says what it kept (a split's) is not an error
            what = "" if isinstance(exc, KeyboardInterrupt) else "error: "
            click.echo(_line(f"tiledepth: {what}{_named_output(str(exc))}", exc), err=True)
            sys.exit(exc.exit_code)
        except (_Terminated, KeyboardInterrupt) as exc:
            stopped = True
            how = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
            placed = _placed()
            # only a run's output has a checkpoint folder (an export or preview has none)
            checkpoint = click.get_current_context().info_name not in ("export", "preview")
            line = _line(f"tiledepth: {how}; no output was written", exc) if placed is None \
                else (f"tiledepth: {how} after writing {placed}, which is complete"
                      + ("; its checkpoint folder may be left beside it: delete it"
                         if checkpoint else ""))
            _finish_cleanup(exc)
            click.echo(line, err=True)
            sys.exit(_exit_code(exc))
        except BrokenPipeError:  # whoever read stdout or stderr went away (| head): the
            _quiet_streams()  # work is done or was never more than output; say nothing
            sys.exit(0)
        except MemoryError as exc:
            _traceback(debug)
            click.echo(_line("tiledepth: error: out of memory; lower --batch-size or "
                             "--tile-size", exc), err=True)
            sys.exit(1)
        except Exception as exc:
            _traceback(debug)
            text = str(exc).strip().splitlines()
            click.echo(_line(f"tiledepth: error: unexpected {type(exc).__name__}"
                             f"{': ' + text[0] if text else ''} (--debug shows the traceback)",
                             exc), err=True)
            sys.exit(1)
        finally:
            # A program stopped by a signal exits now: later signals are ignored (else one
            # breaks into Python's exit, which also resets Python-level handlers to the
            # default); under a test runner (stderr swapped) the handlers are restored.
            if stopped and sys.stderr is sys.__stderr__:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            else:  # both as they were, whatever a signal in the run set (``_stopping``)
                signal.signal(signal.SIGTERM, previous)
                if previous_int is not None:  # None: a handler not set from Python
                    signal.signal(signal.SIGINT, previous_int)
            gdal_log.setLevel(gdal_level)
            own_log.setLevel(own_level)
            for handler in handlers:
                handler.removeFilter(_redacting)

    return wrapper


def _traceback(debug: bool) -> None:
    """Under ``--debug``, print the traceback of the error being handled to stderr; the
    error's line and exit code follow as without ``--debug`` (a script's check of the
    exit code must not change with the flag)."""
    if debug:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()  # before click's line, which may go through another buffer


def _placed():
    """The output the command moved into place, complete (:data:`tiledepth.write.PLACED`),
    or None."""
    module = sys.modules.get("tiledepth.write")
    return None if module is None else module.PLACED.get()


def _quiet_streams() -> None:
    """Point stdout and stderr at /dev/null (a closed pipe: Python's exit would fail to flush
    them and print a traceback of that)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # (no file: a test runner's buffer)
            pass


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a Python warning as one ``tiledepth: WARNING:`` line (its source with -vv)."""
    logging.getLogger("tiledepth").warning("%s (%s)", str(message).replace("\n", " "),
                                           category.__name__)
    logging.getLogger("tiledepth").debug("the warning above came from %s:%s", filename, lineno)


def _line(message: str, exc: BaseException) -> str:
    """``message`` with the exception's notes (what was kept for a resume) on one line, a
    URL's credentials left out (:func:`tiledepth.sources.redact`)."""
    from tiledepth.sources import redact

    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return redact("; ".join([message, *notes]).replace("\n", " "))


def _redacting(record: logging.LogRecord) -> bool:
    """A logging filter: the record's message with a URL's credentials left out
    (:func:`tiledepth.sources.redact`); every record is kept."""
    from tiledepth.sources import redact

    message = record.getMessage()
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    return True


class _Terminated(BaseException):
    pass


def _exit_code(exc: BaseException) -> int:
    """130 for a run stopped by Ctrl-C, 143 for one stopped by SIGTERM."""
    return 143 if isinstance(exc, _Terminated) else 130


def _sigterm(signum, frame):
    _stopping()
    raise _Terminated()


def _sigint(signum, frame):
    _stopping()
    raise KeyboardInterrupt


def _stopping() -> None:
    """After the first Ctrl-C or SIGTERM, further ones wait for the cleanup (the partial
    output removed, the checkpoint kept) that the first started: a second Ctrl-C would break
    off that cleanup, leave a ``.partial`` file and print a traceback. The cleanup is quick;
    the exit code is the first signal's; SIGKILL still ends a run at once."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):
            signal.signal(sig, _again)


def _finish_cleanup(exc: BaseException) -> None:
    """Finish now, while further signals wait, the cleanup that the frames of a stopped run
    still hold: their generators (the read-ahead threads) would otherwise close only at exit,
    where a second Ctrl-C breaks in ("Exception ignored in ... iter_tiles")."""
    import gc
    import traceback

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__
    gc.collect()


def _again(signum, frame):
    logging.getLogger("tiledepth").debug("signal %d while stopping: the cleanup goes on",
                                         signum)


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
@options(*RUN)
@handle_errors
def run(input, output, overwrite, config, progress, mosaic, split, asset, **options):
    """Estimate depth for INPUT and write a GeoTIFF on its grid.

    INPUT is any raster GDAL opens: a GeoTIFF orthomosaic, a drone JPEG or PNG;
    a URL (https://, s3://, gs://, az://), a /vsi path, a VRT or a STAC item.
    Several INPUTs need --mosaic.
    """
    from tiledepth.engine import run as run_engine
    from tiledepth.errors import OptionError
    from tiledepth.progress import progress_interval

    quiet = _quiet()
    if progress and not quiet:  # a bad TILEDEPTH_PROGRESS_INTERVAL stops it here, not later
        progress_interval()
    if config is not None:  # read once, here: its errors name it, not INPUT too
        config = _read_config(config)
    if split and not mosaic:
        raise OptionError("--split needs --mosaic")
    if len(input) > 1 and not mosaic:
        raise OptionError("several INPUTs need --mosaic (fused as one raster), or use "
                          "`tiledepth batch` for one run each")
    if mosaic:
        from tiledepth.mosaic import run_mosaic

        if output is None:
            raise OptionError("--mosaic needs -o (a file; a folder with --split)")
        before = _outputs_in(output) if split and not quiet else {}
        result = run_mosaic(list(input), output, split=split, overwrite=overwrite,
                            progress=progress and not quiet, config=config, asset=asset,
                            **options)
        if split:
            if not quiet:
                # the split returns every output, those it kept (cut from the fused map an
                # interrupted split kept) too: the ones it kept are the files left as they were
                kept = sum(1 for path in result if path in before
                           and _file_state(path) == before[path])
                also = f", kept {kept} from an earlier run" if kept else ""
                click.echo(f"wrote {len(result) - kept} outputs to {output}{also}", err=True)
            return
    else:
        if config is not None:
            _check_config(config, options)
        result = run_engine(input[0], output, overwrite=overwrite,
                            progress=progress and not quiet, config=config, asset=asset,
                            **options)
    if quiet:
        return
    resumed = f", {result.resumed} from an earlier run" if result.resumed else ""
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
    if result.kept is not None:
        click.echo(f"kept the tile predictions in {result.kept} ({_size_of(result.kept)}): the "
                   "same command with --overwrite and other options of the fusion, calibration "
                   "or writing (--coarse-weight, --fusion, --reference, --cog...) reuses them, "
                   "predicting no tile again; delete the folder when done", err=True)


def _size_of(folder: Path) -> str:
    """The bytes of the files in ``folder``, as ``1.2 GB``."""
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _read_config(config: str) -> str:
    """``run``'s config, read once (a :class:`tiledepth.options.ReadConfig`, passed on to be
    read no more): an error of the config file itself (unreadable, not YAML, a key that is
    no option) names the config only, not the input too ("in.tif: c.yaml: ...", as the
    engine's errors name their input). A key that is a flag of ``batch`` only (:func:`_lacks`
    of ``run``) is said to be batch's (``rio depth`` says what it lacks itself)."""
    from tiledepth.options import FLAGS_ELSEWHERE, ReadConfig, load_config

    token = None if FLAGS_ELSEWHERE.get() is not None else FLAGS_ELSEWHERE.set(
        ("tiledepth run", _lacks(run), _flags_of_others))
    try:
        return ReadConfig(config, load_config(config))
    finally:
        if token is not None:
            FLAGS_ELSEWHERE.reset(token)


def _check_config(config: str, options: dict) -> None:
    """Raise the error of a bad value of ``config`` (a :func:`_read_config`), checked with
    the ``options`` given, which win over it, before the engine does: it names the config
    only, not the input too. An error of the options themselves is left to the engine
    (it names the input, as the run's other errors do); so is a mosaic's, which names none."""
    from tiledepth.errors import OptionError
    from tiledepth.options import OPTION_NAMES, make_options

    try:
        make_options(config, **{k: v for k, v in options.items() if k in OPTION_NAMES})
    except OptionError as exc:
        if str(exc).startswith(f"{config}: "):  # (make_options names the config's values)
            raise


def _batch_flags(config: str, flags: list[str], *, named: bool = False,
                 output: str = "-o") -> str:
    """What to do with ``flags`` of ``tiledepth batch`` found in ``run``'s config (or in
    ``rio depth``'s, ``info``'s): ``named``, the flags are named, not "it", where the message
    says what to do with other keys too; ``output``, how batch's output folder is given
    (``--output-dir`` where the command's messages say OUTPUT for -o, :data:`OUTPUT_NAMED`).

    Examples
    --------
    >>> print(_batch_flags("c.yaml", ["--glob"]))
    it is a flag of `tiledepth batch`: give it there (`tiledepth batch INPUT... -o DIR
    --config c.yaml --glob ...`)
    >>> print(_batch_flags("c.yaml", ["--glob", "--shard"], named=True))
    --glob and --shard are flags of `tiledepth batch`: give them there (`tiledepth batch
    INPUT... -o DIR --config c.yaml --glob ... --shard ...`)
    """
    return (f"{_flags_of(flags, ('tiledepth batch',), named=named)} (`tiledepth batch "
            f"INPUT... {output} DIR --config {config} "
            f"{' '.join(flag + ' ...' for flag in flags)}`)")


def _flags_of(flags: list[str], commands: tuple[str, ...], *, named: bool) -> str:
    """``flags`` said to be of ``commands`` and given there: named (``named``), or "it" /
    "they".

    Examples
    --------
    >>> _flags_of(["--glob"], ("tiledepth batch",), named=False)
    'it is a flag of `tiledepth batch`: give it there'
    >>> _flags_of(["--a", "--b"], ("tiledepth run", "tiledepth batch"), named=True)
    '--a and --b are flags of `tiledepth run` and `tiledepth batch`: give them there'
    """
    one = len(flags) == 1
    subject = " and ".join(flags) if named else "it" if one else "they"
    return (f"{subject} {'is a flag' if one else 'are flags'} of "
            f"{' and '.join(f'`{command}`' for command in commands)}: give "
            f"{'it' if one else 'them'} there")


def _outputs_in(folder: str) -> dict[Path, tuple[int, ...]]:
    """The outputs (``*.depth.tif``) under ``folder`` now, each with its
    :func:`_file_state`: before a split, to tell those it keeps from those it writes (each
    a new file, renamed into place)."""
    import os

    from tiledepth.survey import OUTPUT_SUFFIX

    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(OUTPUT_SUFFIX):
                path = Path(root) / name
                found[path] = _file_state(path)
    return found


def _file_state(path: Path) -> tuple[int, ...]:
    """The device, inode, size and modification time of ``path`` (empty if it is gone)."""
    try:
        st = path.stat()
    except OSError:
        return ()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@main.command()
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@options(*INFO)
@handle_errors
def info(input, config, **options):
    """Describe INPUT and plan a run: tiles, scratch disk, memory and time estimates.

    Reads only metadata and a decimated mask; runs no model.
    """
    from tiledepth.info import describe, format_info

    with _flags_of_others_refused(info):
        click.echo(format_info(describe(input, config=config, **options)))


def _long_flag(flag: str) -> str:
    """``flag`` as :data:`tiledepth.options.FLAGS_ELSEWHERE` names it (``-o/--output``,
    ``--progress/--no-progress``), by its long name: ``--output``, ``--progress``."""
    return next((part for part in flag.split("/") if part.startswith("--")), flag)


def _commands_with(flag: str) -> tuple[str, ...]:
    """Those of ``tiledepth run`` and ``tiledepth batch`` that have ``flag`` (as
    :func:`_long_flag` takes it).

    Examples
    --------
    >>> _commands_with("--overwrite"), _commands_with("-o/--output-dir")
    (('tiledepth run', 'tiledepth batch'), ('tiledepth batch',))
    """
    return tuple(f"tiledepth {command.name}" for command in (run, batch)
                 if any(_long_flag(flag) in (*p.opts, *p.secondary_opts)
                        for p in command.params))


def _lacks(command: click.Command) -> dict[str, str]:
    """The config keys that are flags of ``run`` or ``batch`` (``overwrite``, ``glob``, ...)
    and not of ``command`` (``info``, ``batch``), each with the flag as ``command`` lacks it
    (``--output`` for ``batch``, whose ``-o`` is ``--output-dir``): a config of ``command``
    that holds one is refused saying whose they are
    (:data:`tiledepth.options.FLAGS_ELSEWHERE`), not told to give them on the command line,
    where ``command`` has no such flag.

    Examples
    --------
    >>> _lacks(batch)["output"], _lacks(info)["output"], "glob" in _lacks(batch)
    ('--output', '-o/--output', False)
    """
    from tiledepth.options import _COMMAND_FLAGS

    own = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    return {key: "/".join(part for part in flag.split("/") if part not in own)
            for key, flag in _COMMAND_FLAGS.items()
            if _long_flag(flag) not in own and _commands_with(flag)}


@contextlib.contextmanager
def _flags_of_others_refused(command: click.Command):
    """While ``command`` (``info``, ``batch``) runs, a config key that is a flag of ``run``
    or ``batch`` but not of ``command`` (:func:`_lacks`) is refused saying whose flag it is
    (:func:`_flags_of_others`), not "give it on the command line". The library's calls
    (``tiledepth.batch(...)``) are left as they were."""
    from tiledepth.options import FLAGS_ELSEWHERE

    token = FLAGS_ELSEWHERE.set((f"tiledepth {command.name}", _lacks(command),
                                 functools.partial(_flags_of_others, lacking=command.name)))
    try:
        yield
    finally:
        FLAGS_ELSEWHERE.reset(token)


def _flags_of_others(config: str, flags: list[str], *, lacking: str = "") -> str:
    """What to do with ``flags`` of ``run`` or ``batch`` (:func:`_lacks`) found in the config
    of a command without them (``run``, ``info``, ``batch``; ``lacking``, its name): each is
    said to be a flag of the commands that have it (and ``batch``'s ``--output``, that its
    own output folder is ``-o/--output-dir``).

    Examples
    --------
    >>> print(_flags_of_others("c.yaml", ["--overwrite"]))
    it is a flag of `tiledepth run` and `tiledepth batch`: give it there
    >>> print(_flags_of_others("c.yaml", ["--glob", "--split", "--overwrite"]))
    --glob is a flag of `tiledepth batch`: give it there (`tiledepth batch INPUT... -o DIR
    --config c.yaml --glob ...`); --split is a flag of `tiledepth run`: give it there;
    --overwrite is a flag of `tiledepth run` and `tiledepth batch`: give it there
    """
    groups: dict[tuple, list[str]] = {}
    for flag in flags:  # batch's own (BATCH_ONLY) as run's config says them: how to give them
        only = _long_flag(flag).lstrip("-").replace("-", "_") in BATCH_ONLY
        groups.setdefault((_commands_with(flag), only), []).append(flag)
    named = len(groups) > 1
    said = []
    for (commands, only), group in groups.items():
        if only:
            said.append(_batch_flags(config, group, named=named))
            continue
        said.append(_flags_of(group, commands, named=named))
        if lacking == "batch" and "--output" in group:
            said[-1] += " (batch's own output folder is -o/--output-dir)"
    return "; ".join(said)


#: The choices of ``eval --space``, ``eval --gt-kind`` and ``export --colormap``: the names
#: in :data:`tiledepth.metrics.SPACES`, :data:`tiledepth.evaluation.GT_KINDS` and
#: :data:`tiledepth.preview.COLORMAPS`, written out because those modules import numpy and
#: rasterio, which the commands' ``--help`` would wait for; tests/test_cli_help.py keeps
#: each equal to its registry.
SPACES = ("depth", "disparity")
GT_KINDS = ("depth", "height")
COLORMAPS = ("viridis", "magma", "grey")


@main.command(name="eval")
@click.argument("pred", type=click.Path(path_type=str))
@click.argument("gt", type=click.Path(path_type=str))
@click.option("--mask", type=click.Path(path_type=str),
              help="Raster on the same grid, nonzero where the comparison counts.")
@click.option("--space", type=RegistryChoice(lambda: SPACES),
              help="Where the scale and shift alignment is fitted. [default: disparity for "
                   "disparity or inverse depth, and for an uncalibrated output of a disparity "
                   "model; else depth]")
@click.option("--gt-kind", type=RegistryChoice(lambda: GT_KINDS),
              help="What GT holds: depth, or height (a DSM or CHM). [default: what its band "
                   "description says, else depth] PRED's kind is read from its tags.")
@click.option("--resample", is_flag=True,
              help="Reproject GT (and --mask) onto PRED's grid first.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@options(*VERBOSITY)
@handle_errors
def eval_(pred, gt, mask, space, gt_kind, resample, as_json):
    """Score PRED (a tiledepth output) against ground truth GT (same grid, or --resample).

    Prints AbsRel, delta1 and NRMSE after a least-squares scale and shift, the
    seam ratio (from the tile tags of a tiledepth output), and the tiles'
    consistency from PRED's sidecar JSON when there is one.
    """
    import json

    from tiledepth.evaluation import evaluate_files, format_evaluation

    result = evaluate_files(pred, gt, mask=mask, space=space, gt_kind=gt_kind,
                            resample=resample)
    click.echo(json.dumps(result, indent=1) if as_json else format_evaluation(result))


@main.command()
@click.argument("source", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="PNG to write. [default: <source stem>.png beside it]")
@click.option("--hillshade", is_flag=True, help="Shade with a hillshade.")
@click.option("--max-size", type=int, default=2048, show_default=True,
              help="Long side of the PNG, at most.")
@click.option("--band", type=int, default=1, show_default=True, help="Band to show.")
@click.option("--overwrite", is_flag=True,
              help="Replace a file at the PNG's name that tiledepth did not write (a preview "
                   "or export PNG of tiledepth is replaced without it).")
@options(*VERBOSITY)
@handle_errors
def preview(source, output, hillshade, max_size, band, overwrite):
    """Write a colour-mapped PNG quicklook of SOURCE, a tiledepth output.

    A robust 2-98 percentile stretch, transparent where there is no data,
    georeferenced (.aux.xml) so that QGIS places it. It replaces a PNG that
    tiledepth wrote; any other file there (your photo scene.png beside
    scene.tif) only with --overwrite.
    """
    from tiledepth.errors import OptionError
    from tiledepth.preview import write_preview

    if max_size < 1:  # (in handle_errors: an OptionError is its one line and exit 2)
        raise OptionError(f"--max-size must be 1 or more, got {max_size}")
    path = write_preview(source, output, hillshade=hillshade, max_size=max_size, band=band,
                         overwrite=overwrite)
    if not _quiet():
        click.echo(f"wrote {path}", err=True)


@main.command(name="export")
@click.argument("source", type=click.Path(path_type=str))
@click.argument("output", type=click.Path(path_type=str))
@click.option("--image", type=click.Path(path_type=str),
              help="Image (e.g. the orthophoto) that colours the points, read on the map's grid.")
@click.option("--step", type=int, default=1, show_default=True,
              help="Keep every N-th row and column (point clouds).")
@click.option("--range", "value_range", type=float, nargs=2, metavar="LOW HIGH",
              help="Values at the ends of the 16-bit PNG or the colour map. [default: the "
                   "map's min and max (PNG), its 2-98 percentiles (colour map)]")
@click.option("--colormap", type=RegistryChoice(lambda: COLORMAPS),
              help="Colour map of a .tif export.")
@click.option("--band", type=int, default=1, show_default=True, help="Band to export.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@options(*VERBOSITY)
@handle_errors
def export_(source, output, image, step, value_range, colormap, band, overwrite):
    """Export SOURCE, a tiledepth output, to OUTPUT; the format from its extension.

    .laz/.las: georeferenced point cloud (CRS as WKT; depth negated so up is
    up); .ply: binary point cloud; .png: 16-bit grey over --range, with a world
    file; .tif with --colormap: RGBA Cloud Optimized GeoTIFF. See docs/export.md.
    """
    from tiledepth.export import export
    from tiledepth.progress import status

    with status(f"exporting {source} to {output}", enabled=not _quiet()):  # after 2 s
        done = export(source, output, image=image, step=step, value_range=value_range,
                      colormap=colormap, band=band, overwrite=overwrite)
    if not _quiet():
        what = "points" if done.format in ("las", "ply") else "pixels with a value"
        click.echo(f"wrote {done.path}: {done.count} {what}, values {done.low:.6g} to "
                   f"{done.high:.6g}", err=True)


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
              help="Model actors on Ray, 1 or more. [default: one per GPU of the cluster, or 1 "
                   "without GPUs]")
@options(*BATCH)
@handle_errors
def batch(inputs, output_dir, glob, resume, overwrite, on_error, shard, executor, ray_address,
          ray_actors, config, progress, **options):
    """Estimate depth for every INPUT raster into the folder -o, with a manifest.

    INPUT is a raster file, a folder (searched recursively, see --glob) or
    @list.txt (one file or folder per line). The model is loaded once. Ends
    with a summary table; the exit code is 1 if any input failed.
    """
    from tiledepth.batchrun import batch as run_batch
    from tiledepth.progress import progress_interval
    from tiledepth.survey import summary

    if progress and not _quiet():  # a bad TILEDEPTH_PROGRESS_INTERVAL stops it here
        progress_interval()
    started = time.perf_counter()  # the summary's total: pipelined inputs overlap, so their
    try:  # records' seconds may add up to more than the batch took
        with _flags_of_others_refused(batch):  # a config's output: or split: is run's
            records = run_batch(list(inputs), output_dir, glob=glob or None, resume=resume,
                                overwrite=overwrite, on_error=on_error, shard=shard,
                                executor=executor, ray_address=ray_address,
                                ray_actors=ray_actors, progress=progress and not _quiet(),
                                config=config, **options)
    except (KeyboardInterrupt, _Terminated) as exc:
        if options.get("mosaic"):  # its records are appended once every output is cut
            click.echo("tiledepth: batch stopped; the outputs cut so far and the fusion's work "
                       "are kept, but with --mosaic the manifest lists none until a batch "
                       "ends; rerun with --resume to go on (it checks and records them)",
                       err=True)
        else:
            click.echo("tiledepth: batch stopped; finished outputs are kept (see the "
                       "manifest); rerun with --resume to go on", err=True)
        sys.exit(_exit_code(exc))
    # (busy: another run writes the output, not complete when this batch ends: not done)
    failed = any(r.status in ("failed", "busy") for r in records)
    if not _quiet() or failed:  # -q: errors only
        click.echo(summary(records, seconds=time.perf_counter() - started), err=True)
        click.echo(f"manifest: {Path(output_dir) / MANIFEST_NAME}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@handle_errors
def models():
    """List the built-in models that --model accepts by name.

    For each: its backend family, output kind (affine-invariant depth or
    disparity, or metric depth), native resolution (a good --tile-size),
    default denoising steps, hub checkpoint and licence. The fusion aligns
    each kind in its own space.
    """
    from tiledepth.models.registry import format_table

    click.echo(format_table())


@main.group()
def qgis():
    """Install tiledepth's Processing provider into QGIS (tiledepth:estimate, ...)."""


@qgis.command(name="install")
@click.option("--profile", default="default", show_default=True, help="QGIS user profile.")
@options("debug")
@handle_errors
def qgis_install(profile):
    """Install and enable the provider in a QGIS profile; QGIS runs tiledepth with this
    Python (restart QGIS afterwards)."""
    from tiledepth.qgis import install

    folder = install(profile)
    click.echo(f"installed the tiledepth provider in {folder}\n"
               f"it runs tiledepth with {sys.executable}; restart QGIS, then find it in the "
               "Processing Toolbox under tiledepth")


@qgis.command(name="uninstall")
@click.option("--profile", default="default", show_default=True, help="QGIS user profile.")
@options("debug")
@handle_errors
def qgis_uninstall(profile):
    """Remove the provider from a QGIS profile."""
    from tiledepth.qgis import profiles_root, uninstall

    folder = uninstall(profile)
    click.echo(f"removed {folder}" if folder else
               f"the tiledepth provider is not installed in profile {profile!r} "
               f"({profiles_root() / profile})")


if __name__ == "__main__":  # pragma: no cover
    main()
