"""``tiledepth batch``: depth maps of many rasters in one resumable, shardable job.

:func:`batch` finds the inputs (files, folders searched recursively,
``@list.txt`` files), keeps this job's shard, loads the model once (or starts a
pool of Ray actors, :mod:`tiledepth.raypool`), runs :func:`tiledepth.run` on each
input into a mirrored output folder, and appends one record per input to a
JSON-lines manifest as it goes. The pieces are in :mod:`tiledepth.survey`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

from tiledepth.errors import BusyError, ModelError, OptionError, OutputError
from tiledepth.models.base import ModelStopped, with_torch_modes
from tiledepth.options import Options, load_config, make_options
from tiledepth.survey import (
    EXECUTORS,
    MANIFEST_NAME,
    ON_ERROR,
    Record,
    SurveyInput,
    append_record,
    check_output,
    find_inputs,
    foreign_output,
    in_shard,
    make_record,
    one_line,
    parse_shard,
    raster_size,
    refuse_foreign,
)

__all__ = ["batch"]

log = logging.getLogger(__name__)

#: :func:`tiledepth.run`'s options of one raster, which :func:`batch` does not take: a window
#: or STAC asset of one input is no window of the others (``docs/surveys.md``).
PER_RASTER = ("bounds", "bounds_crs", "aoi", "asset")


def batch(inputs: str | os.PathLike | Sequence[str | os.PathLike],
          output_dir: str | os.PathLike, *, glob: Sequence[str] | str | None = None,
          resume: bool = False, overwrite: bool = False,
          on_error: Literal["skip", "stop"] = "skip",
          shard: str | tuple[int, int] | None = None,
          executor: Literal["local", "ray"] = "local", ray_address: str | None = None,
          ray_actors: int | None = None, progress: bool = False,
          config: str | os.PathLike | None = None, mosaic: bool = False,
          **options: Any) -> list[Record]:
    """Estimate a depth map for every input raster; one output and one manifest record each.

    Parameters
    ----------
    inputs : path or sequence of paths
        Raster files, URLs, folders (searched recursively for ``glob``) and
        ``@list.txt`` files (one path per line; ``#`` comments); see
        :func:`~tiledepth.survey.find_inputs` for where each output goes.
    output_dir : str or os.PathLike
        Created if missing. Outputs are ``<stem>.depth.tif``, mirroring the
        input's subfolders; the manifest is ``tiledepth-manifest.jsonl``.
    glob : str or sequence of str, optional
        File-name patterns for folders (case-insensitive); default
        :data:`~tiledepth.survey.DEFAULT_GLOB`.
    resume, overwrite : bool
        Skip inputs whose output is complete and valid (:func:`check_output`), redoing
        the rest that tiledepth wrote (a file without its tag is a failure,
        :func:`~tiledepth.survey.foreign_output`); or replace existing outputs. Without
        either, one is a failure.
    on_error : {'skip', 'stop'}
        After a failed input, go on with the next, or stop.
    shard : str or (int, int), optional
        ``"i/N"``: process only shard i (from 0) of N; see :func:`in_shard`.
    executor, ray_address, ray_actors
        Run the model here (``'local'``) or on ``ray_actors`` Ray actors (default one
        a GPU) of the cluster at ``ray_address`` (default a local Ray) (``'ray'``).
    progress : bool
        Bars over the files and the current file's tiles, on stderr.
    config : str or os.PathLike, optional
        YAML file of options; keyword options win over it.
    mosaic : bool
        Fuse all inputs as one raster (they must share CRS, resolution, band count,
        data type and pixel grid) and cut one output per input from it: no seam between
        files (:func:`tiledepth.mosaic.batch_mosaic`).
    **options
        As :func:`tiledepth.run`; the model is loaded once, when first needed.

    Returns
    -------
    list of Record
        One per input handled, in order, as appended to the manifest.
    """
    # 1. Check inputs: batch arguments (before any file is read), then options.
    _check_arguments(on_error=on_error, executor=executor, resume=resume, overwrite=overwrite,
                     ray_address=ray_address, ray_actors=ray_actors,
                     mosaic=mosaic, shard=shard)
    for key in PER_RASTER:  # make_options knows no such option: "did you mean 'bands'?"
        if key in options:
            raise OptionError(f"{key}: is an option of one raster ({', '.join(PER_RASTER)}), "
                              "which batch does not take; run tiledepth.run on each raster "
                              "that needs it, or fuse the rasters as one map with "
                              "tiledepth.mosaic.run_mosaic (tiledepth run --mosaic)")
    if "output" in options:  # make_options: "did you mean 'output_kind'?"
        raise OptionError("output: batch writes one output per input into output_dir, its "
                          "second argument (-o on the command line); pass the folder there")
    # the config read once: one from a pipe (``--config <(...)``) reads empty a second time
    data = load_config(config) if config is not None else None
    if data is not None and "resume" in data:
        # run's checkpoint switch: `resume: false` would silently drop batch's checkpoint
        # resume; `resume: true` (as in the shipped configs) is what batch does anyway
        if data["resume"] is not True:
            value = str(data["resume"]).lower()
            raise OptionError(f"{config}: resume: {value}: batch always resumes "
                              "each input's checkpoint (its own --resume keeps complete "
                              "outputs); remove the key from the config")
        log.info("%s: resume: true skipped: batch always resumes each input's checkpoint "
                 "(its own --resume keeps complete outputs)", config)
        data = {k: v for k, v in data.items() if k != "resume"}
    opts = make_options(config, config_data=data, **options)
    if opts.keep_predictions:  # before any input is looked at, or the folder made
        raise OptionError("keep_predictions (--keep-predictions) is for one run (tiledepth "
                          "run, tiledepth run INPUT... --mosaic -o OUT.tif); a batch keeps "
                          "an input's predictions only when it fails; drop it (from the "
                          "config too)")
    if executor == "ray" and opts.uncertainty:  # before any input is looked at
        raise OptionError("uncertainty needs the local executor: the Ray pool gives no "
                          "uncertainty; drop --executor ray or --uncertainty")
    index, count = parse_shard(shard) if shard is not None else (0, 1)

    # 2. Find the inputs (a mistyped one refused before the output folder is made); keep
    # this shard's.
    found = find_inputs(inputs, glob=glob, exclude=output_dir)
    items = [it for it in found if in_shard(it.relative, index, count)]
    if count > 1:
        log.info("shard %d/%d: %d of %d inputs", index, count, len(items), len(found))
    _check_not_inputs(items, found, Path(output_dir), preview=opts.preview,
                      replace=overwrite or resume)
    output_dir = _make_folder(Path(output_dir))
    manifest = output_dir / MANIFEST_NAME
    _check_manifest(manifest)

    # 3. Each input: keep a valid output, or run it; record what happened (with ``mosaic``:
    # all inputs fused as one raster, and one output cut for each).
    run_options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(Options)}
    if mosaic:
        from tiledepth.mosaic import batch_mosaic

        return batch_mosaic(items, output_dir, manifest, resume=resume, overwrite=overwrite,
                            progress=progress, options=run_options, on_error=on_error,
                            config=config)
    return _run_each(items, output_dir, manifest, opts, run_options, executor=executor,
                     ray_address=ray_address, ray_actors=ray_actors, resume=resume,
                     overwrite=overwrite, on_error=on_error, progress=progress)


def _run_each(items: list[SurveyInput], output_dir: Path, manifest: Path, opts: Options,
              run_options: dict, *, executor: str, ray_address: str | None,
              ray_actors: int | None, resume: bool, overwrite: bool, on_error: str,
              progress: bool) -> list[Record]:
    """Step 3 of :func:`batch`: each input, one run (the model loaded once), one record."""
    from tqdm.auto import tqdm

    records: list[Record] = []
    # the inputs checked ahead (output path -> :func:`_kept`'s answer), each checked once
    known: dict[Path, tuple[Record | None, bool]] = {}
    with contextlib.ExitStack() as stack:
        model = _BatchModel(stack, opts, executor, ray_address, ray_actors)
        # not for a resumed batch whose outputs are all complete: starting Ray is slow
        if executor == "ray" and _any_to_run(items, output_dir, known, resume=resume,
                                              overwrite=overwrite,
                                              uncertainty=opts.uncertainty):
            # Ray started (or joined) here, in the main thread, not on the batch's pool
            # thread: Ctrl-C and SIGTERM reach a ray.init that waits, and the signal
            # handlers it replaces can be put back (tiledepth.raypool)
            try:
                model.load()
            except _Fatal as exc:
                raise exc.__cause__ from None
        # a bar on a terminal only: in a log file each run's own progress lines say it
        # (``a/x.tif (file 2/5): tiles 12/40 ...``, :data:`tiledepth.progress.LABEL`)
        bar = stack.enter_context(tqdm(total=len(items), desc="files", unit="file",
                                       disable=not progress or not sys.stderr.isatty()))
        # local, failures skipped: the next raster's reading and inference overlap this
        # one's last model calls, solve, blend and write, each run with half the memory
        # budget (two runs share the one given)
        depth = 2 if executor == "local" and on_error == "skip" and len(items) > 1 else 1
        if depth > 1:
            run_options = dict(run_options, memory=run_options["memory"] // 2)
        handle = functools.partial(_handle, model=model, resume=resume, overwrite=overwrite,
                                   progress=progress, run_options=run_options, known=known)

        def recorded(record: Record) -> None:  # in the list, the manifest and the bar
            records.append(record)
            append_record(manifest, record)
            bar.update(1)

        runs = _pipelined(items, output_dir, handle, depth=depth)
        try:
            for record in runs:
                recorded(record)
                if record.status == "failed" and executor == "ray":
                    _check_actors(model.model)
                if record.status == "failed" and on_error == "stop":
                    log.warning("stopping after the first failure (on_error='stop')")
                    break
        except BaseException as exc:
            # Ctrl-C between two records (here, not in the pipeline's waits): the running
            # inputs stop now, as on one that reaches the pipeline, instead of the batch
            # waiting for them to finish; the pipeline yields the records of the inputs
            # that ended all the same, then raises exc again
            if not isinstance(exc, Exception) \
                    and inspect.getgeneratorstate(runs) == inspect.GEN_SUSPENDED:
                for record in itertools.chain([runs.throw(exc)], runs):
                    recorded(record)
            raise
    return records


def _pipelined(items: list[SurveyInput], output_dir: Path, handle: Callable[..., Record], *,
               depth: int) -> Iterator[Record]:
    """Each input's record, in order; with ``depth`` 2 an input starts once the one before
    is near its last model calls (:data:`tiledepth.stages.INFERRED`), so that its first
    tiles are ready when the model is done with those, and at most two are in flight.
    Their model calls never overlap, the earlier input's first (:data:`tiledepth.turns.RANK`).
    An input's record is yielded as soon as it and every input before it have ended (while
    the next one is still predicting). An error that stops the batch (Ctrl-C, the model not
    loading) stops the running inputs too and is raised once they have ended; on Ctrl-C or
    SIGTERM the records of the inputs that ended all the same (before it, or complete after
    it: moving their output into place) are yielded first."""
    from tiledepth.background import result_in_steps
    from tiledepth.models.base import also_stopped_by, stop_event
    from tiledepth.progress import LABEL
    from tiledepth.stages import INFERRED
    from tiledepth.turns import RANK
    from tiledepth.write import PLACING

    # Ctrl-C reaches the main thread only: the running inputs are told through this event,
    # which their model calls (:func:`tiledepth.models.base.check_stop`), the blend's
    # windows and the move of the output into place poll; each ends there as an interrupted
    # run does, its checkpoint kept, and never in the middle of its own cleanup
    stop = threading.Event()

    def placing() -> None:  # a run stopped before it moves its output: nothing moved
        if stop.is_set():
            raise KeyboardInterrupt

    def one(item: SurveyInput, ready: threading.Event, rank: int) -> Record:
        token, ranked = INFERRED.set(ready.set), RANK.set(rank)
        placed, stopped = PLACING.set(placing), stop_event().set(also_stopped_by(stop))
        # its progress lines in a log (no files bar there) say which file, and which of all
        labelled = LABEL.set(f"{item.relative.as_posix()} (file {rank + 1}/{len(items)})")
        try:
            return handle(item, item.output(output_dir))
        finally:
            LABEL.reset(labelled)
            stop_event().reset(stopped)
            PLACING.reset(placed)
            RANK.reset(ranked)
            INFERRED.reset(token)
            ready.set()

    queued: collections.deque[Future] = collections.deque()

    def head() -> Record:  # the first queued input's record, once it has ended; then dequeued
        record = result_in_steps(queued[0])  # (a Ctrl-C while waiting leaves it queued)
        queued.popleft()
        return record

    with ThreadPoolExecutor(depth, "tiledepth-batch") as pool:
        try:
            for rank, item in enumerate(items):
                ready = threading.Event()
                # (under the caller's torch grad and inference modes: torch keeps them per
                # thread, and a model run inside torch.no_grad() failed on the pool's)
                queued.append(pool.submit(with_torch_modes(one), item, ready, rank))
                while not (ready.wait(0.1) if depth > 1
                           else wait([queued[-1]], timeout=0.1)[0]):
                    # waits in short steps (blocking, not spinning): Ctrl-C reaches it; the
                    # input before, once ended, is recorded now, not when this one is near
                    # its last model calls (an error of its is raised then, as before)
                    while len(queued) > 1 and queued[0].done() \
                            and queued[0].exception() is None:
                        yield head()
                if queued[-1].done() and queued[-1].exception() is not None:
                    break  # the batch stops: the rest of the queue raises it below
                while queued and (queued[0].done() or len(queued) >= depth):
                    yield head()
            while queued:
                yield head()
        except GeneratorExit:
            raise  # the caller stopped reading (on_error='stop'): the running input ends
        except BaseException as exc:
            if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: every running input stops
                ended = [future.done() for future in queued]
                stop.set()
                yield from _records_at_stop(queued, ended)
            raise


def _records_at_stop(queued: Sequence[Future], ended: Sequence[bool]) -> Iterator[Record]:
    """The records, in order, of the ``queued`` inputs that end all the same once the batch
    is stopped: every one that had ``ended`` before, and of the rest those that end with
    their output complete or kept (one moving its output into place when stopped). A run
    ended by the stop gives no record (its failure could be the stop's); ``--resume``
    checks its output."""
    from tiledepth.background import wait_in_steps

    for future, before in zip(queued, ended, strict=True):
        wait_in_steps(future)  # as the pipeline waits: Ctrl-C reaches it
        if future.exception() is not None:  # stopped, or an error the batch stops on anyway
            continue
        record = future.result()
        if before or record.status != "failed":
            yield record


def _check_arguments(*, on_error: str, executor: str, resume: bool, overwrite: bool,
                     ray_address: str | None, ray_actors: int | None, mosaic: bool = False,
                     shard: object = None) -> None:
    """Raise OptionError for a bad or contradictory batch argument."""
    if on_error not in ON_ERROR:
        raise OptionError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if executor not in EXECUTORS:
        raise OptionError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if resume and overwrite:
        raise OptionError("resume and overwrite contradict each other; pass one of them")
    # here, not only when the Ray pool starts: the inputs were searched, the output folder
    # and its manifest made, before 0 was refused (the pool's own check, its message)
    from tiledepth.raypool import check_actors

    check_actors(ray_actors)
    if executor == "local" and (ray_address is not None or ray_actors is not None):
        raise OptionError("ray_address and ray_actors need executor='ray' (--executor ray)")
    if mosaic and (executor != "local" or shard is not None):
        raise OptionError("mosaic fuses the survey in one process: it takes no "
                          "executor='ray' or shard")


def _check_not_inputs(items: Sequence[SurveyInput], found: Sequence[SurveyInput],
                      output_dir: Path, *, preview: bool, replace: bool) -> None:
    """Raise OutputError, in one line, before anything is written, if a file that the run
    of one of ``items`` writes (its output, sidecar, preview) or, where it may ``replace``
    an old output (``--overwrite``, ``--resume``), removes with it (its companions that
    tiledepth wrote, :func:`tiledepth.safe_write.removed_on_replace`: not a user's PNG at
    the preview's name, which the run keeps) is a file an input of the batch
    (``found``, every shard's) reads: ``batch a.tif a.depth.tif`` replaced the input
    a.depth.tif with a's map, then ran it. A run checks only the files it reads itself
    (:func:`tiledepth.safe_write.check_output_paths`), not the other inputs'."""
    from tiledepth.identity import raster_files
    from tiledepth.safe_write import output_paths, removed_on_replace

    read: dict[tuple[int, int], Path] = {}  # (device, inode) -> the file, as an input names it
    for item in found:
        if isinstance(item.path, Path):  # (a URL is no local file)
            for path in raster_files(item.path):  # (a VRT file's sources too)
                with contextlib.suppress(OSError):  # (a missing one fails alone, when run)
                    st = os.stat(path)
                    read.setdefault((st.st_dev, st.st_ino), path)
    if not read:
        return
    for item in items:
        out = item.output(output_dir)
        written = output_paths(out, out, preview=preview).files()
        gone = removed_on_replace(out, [w for _, w in written]) if replace else []
        for what, path in [*written, *((None, p) for p in gone)]:
            try:
                st = os.stat(path)
            except OSError:  # none there (or none to be had): no input
                continue
            src = read.get((st.st_dev, st.st_ino))
            if src is not None:
                does = f"the {what} of {item.path} would replace it" if what else \
                    f"replacing the old output of {item.path} would remove it with it"
                raise OutputError(f"{path}: is the input {src} of this batch, and {does}; "
                                  "choose another output folder (-o) or leave it out")


def _make_folder(output_dir: Path) -> Path:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create the output folder ({exc.strerror})") \
            from exc
    return output_dir


def _check_manifest(manifest: Path) -> None:
    """Raise OutputError if the manifest cannot be appended to, before any input is run.

    Each record is appended as its input finishes: a manifest that cannot be
    written (a folder in its place, no permission) would otherwise be found
    only after the first output is made, and stop the batch with outputs that
    no record (and no ``resume``) vouches for. Opening it as
    :func:`~tiledepth.survey.append_record` does creates it, empty, if missing.
    """
    try:
        fd = os.open(manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{manifest}: cannot write the manifest ({exc.strerror}); "
                          "move what is in its place or choose another output folder") \
            from exc
    os.close(fd)


def _any_to_run(items: list[SurveyInput], output_dir: Path,
                known: dict[Path, tuple[Record | None, bool]], *, resume: bool,
                overwrite: bool, uncertainty: bool) -> bool:
    """Whether any input is to be run, not kept (:func:`_kept`) nor refused as existing
    (:func:`_run_one`, without ``resume`` or ``overwrite``): checked in order up to the first
    such input, each answer kept in ``known`` (by output path) for :func:`_handle`."""
    for item in items:
        out = item.output(output_dir)
        known[out] = record, redo = _kept(item, out, time.perf_counter(), resume=resume,
                                           overwrite=overwrite, uncertainty=uncertainty)
        if record is None and (redo or not out.exists()):
            return True
    return False


def _handle(item: SurveyInput, out: Path, model: _BatchModel, *, resume: bool,
            overwrite: bool, progress: bool, run_options: dict[str, Any],
            known: dict[Path, tuple[Record | None, bool]]) -> Record:
    """One input: its valid output kept, or it run; its record (``known``: the inputs
    :func:`_any_to_run` checked already)."""
    t0 = time.perf_counter()
    checked = known.pop(out, None)
    record, redo = checked if checked is not None else _kept(
        item, out, t0, resume=resume, overwrite=overwrite,
        uncertainty=run_options["uncertainty"])
    if record is not None:
        return record
    return _run_one(item, out, t0, model, redo=redo, progress=progress,
                    run_options=run_options)


def _kept(item: SurveyInput, out: Path, t0: float, *, resume: bool, overwrite: bool,
          uncertainty: bool) -> tuple[Record | None, bool]:
    """With ``resume``: the record of a complete, valid output kept (with its uncertainty
    band if the run makes one, else without), or the failure of an existing file tiledepth
    did not write (else None); and whether the run replaces ``out``."""
    from tiledepth.safe_write import remove_partials_if_free

    redo = overwrite
    if resume:
        remove_partials_if_free(out)  # a killed run's; nothing while a job writes it
    if os.path.lexists(out) and resume:
        # only a file that carries tiledepth's tag is ours to redo: a user's file at the
        # output's path (or one too damaged to tell) is never replaced without --overwrite
        foreign = foreign_output(out)
        if foreign is not None:
            record = make_record(item, out, "failed", t0,
                                 error=one_line(refuse_foreign(out, foreign)))
            log.warning("%s: failed: %s", item.path, record.error)
            return record, redo
        why = check_output(out, item.path, uncertainty=uncertainty)
        if why is None:
            return make_record(item, out, "skipped", t0, **raster_size(out)), redo
        log.warning("%s: redoing it: %s", out, why)
        redo = True
    return None, redo


def _run_one(item: SurveyInput, out: Path, t0: float, model: _BatchModel, *, redo: bool,
             progress: bool, run_options: dict[str, Any]) -> Record:
    """Run one input; its record, ``"failed"`` with the error's first line on an error
    (an error loading the model stops the batch)."""
    from tiledepth.engine import run

    try:
        if out.exists() and not redo:
            raise OutputError(f"{out}: already exists; pass --resume to keep complete "
                              "outputs or --overwrite to replace them")
        if model.model is None:  # Load the model once, when first needed.
            model.load()
            t0 = time.perf_counter()  # loading is the batch's, not this input's
        out.parent.mkdir(parents=True, exist_ok=True)
        result = run(item.path, out, overwrite=redo, progress=progress,
                     **dict(run_options, model=model.model))
        return make_record(item, out, "done", t0, height=result.height, width=result.width,
                       tiles=result.tiles, consistency=result.consistency,
                       flagged=result.flagged)
    except _Fatal as exc:
        raise exc.__cause__ from None
    except ModelStopped:  # the batch is stopping (Ctrl-C): not this input's failure
        raise
    except BusyError as exc:
        # another run (a second batch into this folder) is writing the output: not a failure
        # of this one's; recorded as such, so that the manifest's latest state of the input
        # stays that run's record (done) even where this one is appended after it
        record = make_record(item, out, "busy", t0, error=one_line(exc))
        log.warning("%s: left to the run writing its output: %s", item.path, record.error)
        return record
    except Exception as exc:  # one input's failure is recorded, the batch goes on
        record = make_record(item, out, "failed", t0, error=one_line(exc))
        log.warning("%s: failed: %s", item.path, record.error)
        return record


class _BatchModel:
    """The batch's model, loaded (or its Ray pool started) by :meth:`load`, once."""

    def __init__(self, stack: contextlib.ExitStack, opts: Options, executor: str,
                 ray_address: str | None, ray_actors: int | None) -> None:
        self.stack, self.opts, self.executor = stack, opts, executor
        self.ray_address, self.ray_actors = ray_address, ray_actors
        self.model: Any = None

    def load(self) -> None:
        self.model = self.stack.enter_context(_open_model(self.opts, self.executor,
                                                          self.ray_address, self.ray_actors))


def _check_actors(model: Any) -> None:
    """After a failed input: where a Ray actor died in it, drop the actors that are gone;
    raise ModelError (the batch stops) where none is left, instead of every later input
    failing with "actor died"."""
    if not getattr(model, "died", False):
        return
    if model.drop_dead() == 0:
        raise ModelError(f"every Ray actor holding model {model.name!r} died; check the Ray "
                         "logs for why, then run the batch again with --resume")


class _Fatal(Exception):
    """Wraps an error that must stop the whole batch (the model cannot be loaded)."""


@contextlib.contextmanager
def _open_model(opts: Options, executor: str, ray_address: str | None,
                ray_actors: int | None) -> Iterator[Any]:
    """The batch's model: loaded here, or a pool of Ray actors. A failure is fatal."""
    with contextlib.ExitStack() as stack:
        try:
            if executor == "ray":
                from tiledepth.raypool import ray_pool

                model = stack.enter_context(ray_pool(opts, address=ray_address,
                                                     actors=ray_actors))
            else:
                from tiledepth.plan import open_model

                model = open_model(opts)
        except Exception as exc:
            raise _Fatal() from exc
        yield model
