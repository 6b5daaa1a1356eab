"""The engine: read -> tile -> infer -> align -> blend -> write, top to bottom.

:func:`run` processes a raster file into a GeoTIFF; :func:`estimate` processes
an in-memory array into an array. Both go through :func:`fuse`, which walks
the numbered steps over a reader (source of tiles), a sink (destination of
output windows) and a tile store (tile predictions between the two), the
interfaces of :mod:`tiledepth.protocols`. The steps themselves live in
:mod:`tiledepth.plan` (before the first model call), :mod:`tiledepth.stages`
(the fusion), :mod:`tiledepth.scale` (``--scale``) and :mod:`tiledepth.tags`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from tiledepth import fusion, sources, stages
from tiledepth.background import Ahead, TileStatistics
from tiledepth.calibrate import Target
from tiledepth.errors import OptionError, OutputError, PersistentInputError
from tiledepth.fusion.pyramid import (
    level_overlap,
    resolve_alignment,
    wrong_anchor_cells,
)
from tiledepth.infer import RETRY_STRIDE
from tiledepth.kinds import FITS, fit_for, kind_of
from tiledepth.lock import locked
from tiledepth.metrics import value_range
from tiledepth.models.base import check_stop
from tiledepth.options import Options, make_options
from tiledepth.plan import (
    add_note,
    anchor_blur,
    check_fit_options,
    check_paths,
    check_room,
    fusion_levels,
    names_the_input,
    open_area,
    open_checkpoint,
    open_model,
    settle_bend,
    settle_plan,
    settle_weights,
    warn_if_slow_on_cpu,
)
from tiledepth.progress import lap, statuses
from tiledepth.protocols import DepthModel, Reader, Sink, TileStore
from tiledepth.readers import ArrayReader, RasterReader, ScaledReader, reduced
from tiledepth.report import fusion_report, save_json
from tiledepth.results import FuseResult, RunResult
from tiledepth.safe_write import OutputPaths, companion_paths, remove_partials
from tiledepth.scale import scaled_io, upsample_onto
from tiledepth.scratch import MemoryStore
from tiledepth.tags import output_bands, output_tags, result_tags
from tiledepth.tiling import Tile, overlap_pixels, tile_grid
from tiledepth.turns import PHASE
from tiledepth.uncertainty import UncertaintyTap, check_uncertainty
from tiledepth.write import ArraySink, GeoTiffWriter

__all__ = ["FuseResult", "RunResult", "estimate", "fuse", "run"]

log = logging.getLogger(__name__)

#: A pyramid level whose tiles overrule cells of its anchor
#: (:func:`tiledepth.fusion.pyramid.wrong_anchor_cells`) is fused again with those cells taken
#: from it, at most this many times, until the taken cells move by at most
#: ``ANCHOR_REPAIR_SETTLED`` of the value range (each fusion takes back part of the bend the
#: wrong cells gave the tiles around them; BENCHMARKS.md, issue 17).
ANCHOR_REPAIR_ROUNDS = 4
ANCHOR_REPAIR_SETTLED = 0.01
#: Whether the repaired fusions keep the first fusion's verdicts on the level's tiles: the
#: tiles predicted again are again, and a second sample kept by the strict judgement is not
#: judged again (the repaired anchor agrees with it where the wrong patch did not, and its
#: coarse term, given back its weight, can pull it past the vouching limit: the per-call
#: power law's worst repair, a clean second sample filled from the anchor; BENCHMARKS.md,
#: issue 17, levelreach). A second sample filled then is judged again.
ANCHOR_REPAIR_KEEPS_VERDICTS = True


@names_the_input
def run(input: str | os.PathLike, output: str | os.PathLike | None = None, *,
        overwrite: bool = False, progress: bool = False, config: str | os.PathLike | None = None,
        aoi: str | os.PathLike | None = None, bounds: tuple[float, ...] | None = None,
        bounds_crs: str | None = None, asset: str | None = None,
        **options: Any) -> RunResult:
    """Estimate a seamless depth map of a raster and write it as a GeoTIFF.

    Parameters
    ----------
    input : str or os.PathLike
        Any raster GDAL opens (GeoTIFF, JPEG, PNG, ...), local or remote: a
        URL, ``s3://``, ``gs://``, ``az://``, a ``/vsi`` path, VRT text or a
        STAC item (:func:`tiledepth.sources.resolve`).
    output : str or os.PathLike, optional
        Output GeoTIFF; default ``<input stem>.depth.tif`` beside the input (in
        the current folder for a remote input). ``s3://bucket/key.tif`` (or
        ``gs://``, ``az://``) is written locally, verified, then uploaded.
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show a progress bar on stderr.
    config : str or os.PathLike, optional
        YAML file of options; keyword options win over it.
    aoi : str or os.PathLike, optional
        A vector file whose polygons mask the run: the output covers their window
        of the input's grid, NaN outside them (see :mod:`tiledepth.aoi`).
    bounds : tuple of 4 float, optional
        ``(xmin, ymin, xmax, ymax)``: the output covers this rectangle of the input.
    bounds_crs : str, optional
        CRS of ``bounds``; default: the input's.
    asset : str, optional
        The asset of a STAC item input; default ``visual``, else the first RGB GeoTIFF.
    **options
        See :class:`tiledepth.options.Options`; ``model`` may be a name from
        :mod:`tiledepth.models.registry`.

    Returns
    -------
    RunResult

    Examples
    --------
    >>> import tiledepth
    >>> tiledepth.run("ortho.tif", model="mymodels:depth")  # doctest: +SKIP
    RunResult(output=PosixPath('ortho.depth.tif'), tiles=..., ...)
    """
    t0 = time.perf_counter()
    # 1. Check inputs: options, paths.
    opts = make_options(config, **options)
    if opts.keep_predictions and opts.scratch is None and sources.is_remote_output(output):
        # kept beside the staging copy: in the system's temporary folder, which is cleaned
        raise OptionError("keep_predictions (--keep-predictions) with a remote output needs "
                          "--scratch: a local folder to keep the predictions in (without it "
                          "they would be kept in the system's temporary folder)")
    input, paths, remote = check_paths(input, output, opts, config=config,
                                       overwrite=overwrite, asset=asset)
    overwrite = overwrite or remote is not None  # the staging copy of a remote output
    scratch = Path(opts.scratch) if opts.scratch is not None else paths.output.parent

    # the output's lock, before the model loads (minutes, for a large one, beside the other
    # run's on the GPU): an output another run writes now is refused at once; held to the end
    with locked(paths.output), \
            RasterReader(input, bands=opts.bands, nodata=opts.nodata, mask=opts.mask) as reader:
        # 2. The output grid (the input's, or its area of interest) and the metric target.
        reader, grid, area = open_area(reader, str(input), aoi=aoi, bounds=bounds,
                                       bounds_crs=bounds_crs)
        opts = settle_plan(opts, grid.height, grid.width)
        # a reference anchor is read at the coarse map's shape: with pyramid levels, that of
        # the finest level's copy; the levels fuse plans with a reference anchor's fit
        # (scale_shift, every kind's) on this grid (a reference refuses --scale)
        target = Target.for_run(opts, grid, stages.coarse_image_shape(
            grid.height, grid.width, long_side=opts.coarse_long_side, levels=fusion_levels(
                opts, "scale_shift", grid.height, grid.width)),
            area=area, raster_shape=reader.dataset.shape)
        target.check_points(reader, opts.control)  # on masked pixels: refused before the model
        target.check_cells(reader, opts.reference)  # a reference on masked pixels only: the same
        # 3. Load the model (the loaders say so: a checkpoint can take minutes to load).
        with statuses(progress):
            model = open_model(opts)
        warn_if_slow_on_cpu(input, opts, model)
        if opts.uncertainty:  # a model that gives none, refused before the checkpoint is
            check_uncertainty(model)  # opened: it would empty one kept for a resume first
        # 4. The checkpoint: predictions of an interrupted run of this input and options.
        store = open_checkpoint(input, area, opts, model, output=paths.output, scratch=scratch)
        store.lock_held = True  # (above)
        try:
            with store, (store.spreads() if opts.uncertainty else nullcontext()) \
                    as spreads:  # locked: no other run writes this output now
                # 5. Fuse and write the output, its tags, the report and the preview.
                try:
                    result = _write_output(reader, model, opts, store, spreads, grid=grid,
                                           target=target, paths=paths, scratch=scratch,
                                           overwrite=overwrite, progress=progress)
                except PersistentInputError:
                    # the same command fails the same way, and any other has another key:
                    # a checkpoint without a tile prediction (--scale's coarse map alone,
                    # its valid pixels too thin) serves no run; removed as the store closes
                    if store.tiles == 0:
                        store.resume = False
                    raise
        except BaseException as exc:
            if store.kept:  # (a calibration that cannot be fitted fails again the same way)
                add_note(exc, store.resume_hint(
                    rerun=not isinstance(exc, PersistentInputError)))
            raise
    # 6. A remote output: the verified files to object storage.
    return _deliver(result, paths, remote, grid=grid, resumed=store.resumed, t0=t0,
                    kept=store.folder if store.kept else None)


def _deliver(result: FuseResult, paths: OutputPaths, remote: str | None, *, grid,
             resumed: int, t0: float, kept: Path | None = None) -> RunResult:
    """Step 6 of :func:`run`: upload the written files to ``remote`` (if any); the result
    (``kept``: the checkpoint folder kept with ``keep_predictions``)."""
    output, sidecar, preview = paths.output, paths.sidecar, paths.preview
    if remote is not None:
        output, sidecar, preview = sources.upload_outputs(remote, output, sidecar, preview)
    seconds = dict(result.seconds, total=time.perf_counter() - t0)
    log.info("wrote %s (%d tiles, %.1f s)", output, result.tiles, seconds["total"])
    if kept is not None:
        log.info("%s: the tile predictions are kept (keep_predictions)", kept)
    return RunResult(output=output, tiles=result.tiles, skipped=result.skipped,
                     height=grid.height, width=grid.width, seconds=seconds, resumed=resumed,
                     calibration=result.calibration, preview=preview, sidecar=sidecar,
                     consistency=result.report["consistency"],
                     flagged=len(result.report["flagged"]), kept=kept)


def _write_output(reader: Reader, model: DepthModel, opts: Options, store, spreads, *, grid,
                  target: Target, paths: OutputPaths, scratch: Path, overwrite: bool,
                  progress: bool) -> FuseResult:
    """Step 5 of :func:`run`: the GeoTIFF, fused (at ``--scale``, on the reduced grid and
    upsampled), tagged, and its sidecar and preview, all renamed into place together."""
    from tiledepth import __version__

    kind = kind_of(model)
    # the fit :func:`fuse` takes (a reference anchor's, where it is one)
    fit = fit_for(kind, reference=target.anchor_heights is not None)
    # a --bend-from-anchor that no fusion can use is off before the tags say it is on
    fused = ScaledReader(reader, opts.scale) if opts.scale != 1.0 else reader  # (scaled_io's)
    opts = settle_weights(settle_bend(opts, fit, fused.height, fused.width), fit)
    bands = output_bands(kind, output_kind=opts.output_kind, uncertainty=opts.uncertainty,
                         calibrated=target.calibrated)
    # Of a run that was killed (SIGKILL, power cut): of every file a run may write beside the
    # output, whether this one writes it or not (a killed --preview run's PNG, rerun without).
    for path in dict.fromkeys([*(path for _, path in paths.files()),
                               *companion_paths(paths.output)]):
        remove_partials(path, recover=path == paths.output)  # (one journal: the output's)
    with GeoTiffWriter(paths.output, grid, overwrite=overwrite, bands=bands,
                       tags={**output_tags(model, target, kind=kind,
                                           output_kind=opts.output_kind,
                                           provenance=opts.provenance(), version=__version__),
                             "TILEDEPTH_FIT": fit},
                       overviews=opts.overviews, cog=opts.cog) as sink:
        # 5a. Fuse, after checking the disks' room (before the first model call).
        room = functools.partial(check_room, store=store, output=paths.output,
                                 scratch=scratch, shape=(grid.height, grid.width),
                                 bands=len(bands), spreads=spreads is not None,
                                 scale=opts.scale, overviews=opts.overviews, cog=opts.cog)
        fuse_reader, fuse_sink = scaled_io(reader, sink, scale=opts.scale,
                                           file=store.scratch_file)
        result = fuse(fuse_reader, fuse_sink, model, opts, store, progress=progress,
                      target=target, spreads=spreads, room=room)
        # every window is blended and written: the tiles' cache is not read again, and the
        # writer's finish (overviews) need not run beside it; the tiles stay on disk for a
        # resume (BENCHMARKS.md, issue 16, seventh session)
        for used in (store, spreads):
            if used is not None:
                used.release()
        _trim_heap()
        if fuse_sink is not sink:  # 5b. --scale: the reduced map onto the input's grid.
            result.seconds["upsample_write"] = upsample_onto(fuse_sink, reader, sink)
        # 5c. The tags of the result; the report and the preview beside the output,
        # written once the output is finished and verified, renamed into place with it.
        result_tags(sink, result.calibration, result.report, kind=kind,
                    output_kind=opts.output_kind)
        sink.companion(paths.sidecar, lambda _, tmp: save_json(tmp, result.report))
        if paths.preview is not None:
            from tiledepth.preview import render_preview

            sink.companion(paths.preview, lambda src, tmp: render_preview(
                src, tmp, hillshade=opts.hillshade), extra=paths.preview_aux)
    result.seconds.update(sink.seconds)  # the writer's finish: overviews, verify, ...
    return result


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library)."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Give the heap's free pages back to the system, once (glibc: ``malloc_trim(0)``).

    Called when the tiles' cache is released: its arrays were freed into the arenas of
    the threads that made them (the model's, the reads'), where the writer's finish does
    not reuse them, so without it they could stay resident through the overviews
    (BENCHMARKS.md, issue 16, seventh session). Changes no value.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def estimate(image: np.ndarray, model: Any = None, *, mask: np.ndarray | None = None,
             progress: bool = False, **options: Any) -> np.ndarray:
    """Estimate a seamless depth map of an in-memory image.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8 (/ 255), other integers (percentile stretch) or float in [0, 1];
        NaN pixels are masked, and a masked array's pixels masked in every band
        (``reshape_as_image(src.read(masked=True))``).
    model : str, pipeline or callable
        As in :func:`run`; a callable maps (B, H, W, 3) float32 in [0, 1] to
        (B, H, W).
    mask : ndarray of shape (H, W), bool, optional
        True where valid.
    progress : bool
        Show a progress bar on stderr.
    **options
        ``tile_size``, ``overlap``, ``coarse_size`` and the rest of
        :class:`tiledepth.options.Options`, but for those only a file run uses:
        ``memory``, ``resume``, ``overviews`` and ``keep_predictions`` (refused when given
        at all: the
        tiles are kept in memory, nothing is resumed, no file is written), and
        ``bands``, ``nodata``, ``scratch``, ``cog``, ``preview``, ``hillshade``,
        ``scale``, ``reference``, ``control`` and ``uncertainty`` (refused when
        not their defaults); each raises OptionError.

    Returns
    -------
    ndarray of shape (H, W), float32
        Relative depth in the coarse prediction's frame; NaN where masked.

    Examples
    --------
    >>> import numpy as np, tiledepth
    >>> rgb = np.random.default_rng(0).random((300, 400, 3), dtype=np.float32)
    >>> depth = tiledepth.estimate(rgb, model=lambda b: b.mean(axis=-1), tile_size=128)
    >>> depth.shape, depth.dtype
    ((300, 400), dtype('float32'))
    """
    # options of a file run, which an estimate has no use for: refused when given at all
    # (they were ignored; their defaults are a file run's, so a default value is a request too)
    unused = [name for name in ("memory", "resume", "overviews", "keep_predictions")
              if options.get(name) is not None]
    if unused:
        raise OptionError(f"{', '.join(unused)}: only tiledepth.run uses "
                          f"{'it' if len(unused) == 1 else 'them'} (estimate keeps its tiles "
                          "in memory, resumes nothing and writes no file); leave "
                          f"{'it' if len(unused) == 1 else 'them'} out")
    if model is not None:
        options["model"] = model
    opts = make_options(**options)
    if opts.reference or opts.control or opts.uncertainty:
        raise OptionError("reference, control and uncertainty need files: use tiledepth.run")
    if opts.scale != 1:  # (it was ignored)
        raise OptionError(f"scale {opts.scale} works on files (tiledepth.run); to estimate "
                          "an array at a lower resolution, downsample it first")
    defaults = Options()
    for name, instead in (("bands", "pass the array's bands, e.g. image[..., [2, 1, 0]]"),
                          ("nodata", "pass mask= (True where valid)"),
                          ("preview", "estimate returns an array"),
                          ("hillshade", "estimate returns an array"),
                          ("cog", "estimate returns an array"),
                          ("scratch", "estimate keeps its tiles in memory")):
        if getattr(opts, name) != getattr(defaults, name):  # (they were ignored)
            raise OptionError(f"{name} works on files (tiledepth.run); for an array, {instead}")
    reader = ArrayReader(image, mask)
    opts = settle_plan(opts, reader.height, reader.width)
    sink = ArraySink(reader.height, reader.width)
    fuse(reader, sink, open_model(opts), opts, MemoryStore(), progress=progress,
         target=Target(opts.output_kind))
    return sink.array


def fuse(reader: Reader, sink: Sink, model: DepthModel, opts: Options, store: TileStore, *,
         progress: bool = False, target: Target | None = None, spreads: TileStore | None = None,
         fit: str | None = None, anchor: np.ndarray | None = None,
         room: Callable[[list[list[Tile]], np.ndarray], None] | None = None,
         anchor_call: int | None = None, level: bool = False,
         verdicts: dict[str, set[int]] | None = None) -> FuseResult:
    """The engine's core: every step from tiling to writing, over the I/O protocols.

    ``store``: tile predictions (a resumed run's are not predicted again); ``target``:
    output kind and calibration; ``spreads``: the tiles' uncertainty, for band 2;
    ``fit``: per-tile alignment (default the model kind's, :func:`tiledepth.kinds.fit_for`,
    which a reference anchor changes for a metric model); ``anchor`` (h, w): aligned
    to instead of the coarse prediction; ``room(grid, valid)``: disk check;
    ``anchor_call``: the side of the calls ``anchor`` was made of, in its pixels (default
    its long side: one call); ``level``: a pyramid level's fusion (its tiles also
    flagged where their neighbours do not follow them, whatever ``anchor`` shows);
    ``verdicts``: the same tiles fused again (a pyramid level's repair), empty on the
    first fusion, which fills it (``again``: the tiles predicted again, ``filled``: those
    filled from the anchor), and kept on the later ones instead of judging the tiles again.
    """
    # 1. Check inputs; plan the tiles.
    # the output's values follow the space the model's kind is fused in
    target = (target if target is not None else Target(opts.output_kind)).for_model(
        kind_of(model))
    # a reference raster as the anchor holds heights (or metres below its top), not the
    # model's metric frame: a metric model's tiles then need a shift too
    fit = fit_for(kind_of(model), reference=anchor is None and target.anchor_heights is not None) \
        if fit is None else fit
    if fit not in FITS:
        raise OptionError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    check_fit_options(opts, fit, getattr(model, "name", type(model).__name__))
    if anchor is None:  # (a pyramid level's fusion has the run's options, settled)
        opts = settle_weights(settle_bend(opts, fit, reader.height, reader.width), fit)
    model = UncertaintyTap(model) if spreads is not None else model  # keeps the spreads
    seconds: dict[str, float] = {}
    height, width = reader.height, reader.width
    tick = time.perf_counter()
    grid = tile_grid(height, width, opts.tile_size, opts.overlap)
    ramp = overlap_pixels(opts.tile_size, opts.overlap)

    # 2-6. The anchor (steps 2-5, :func:`_anchor`: the coarse image read, the disks' room
    # checked, the coarse prediction, the pyramid levels), made on a thread of its own
    # while step 6 infers every tile and gathers its alignment statistics once it exists.
    coarse, alignment, (stats, pairs, skipped, blur), anchor_call = _anchor_and_tiles(
        reader, model, opts, store, grid, fit=fit, target=target, spreads=spreads,
        progress=progress, anchor=anchor, anchor_call=anchor_call, room=room,
        seconds=seconds)
    tick = lap(seconds, "infer", tick)

    # 7. Align: a value map per tile, solved globally and robustly; outliers diagnosed.
    check_stop()  # a run that is ending (a batch's Ctrl-C) does not start the solve
    align = functools.partial(
        stages.align_tiles, coarse=coarse, tile_size=opts.tile_size,
        coarse_weight=opts.coarse_weight, fit=fit, robust=opts.robust,
        estimate_weights=opts.estimate_weights, bend_from_anchor=opts.bend_from_anchor,
        level=level)
    affines, diagnosis, replaced = align(stats, pairs)
    tick = lap(seconds, "align", tick)
    retried: dict[int, int] = {}
    # fused again (a pyramid level's repair): the tiles predicted again the first time are
    # again, and the second samples it kept stay kept (not judged again)
    kept = verdicts is not None and "filled" in verdicts
    sampled: dict[int, int] = {}
    called = False  # (the suspects' calls, timed as "suspects")
    if opts.retry_flagged and opts.robust and fit != "none":  # 7-. The tiles that their
        # neighbours follow weakly, not flagged: once more, the new sample kept where they
        # follow it well (another scene's content that neither the anchor, a few cells under
        # a level's tile, nor the residuals of a weakly textured tile tell; a clean tile loses
        # nothing); a level's repair keeps the first fusion's choice (its samples from the
        # store: no model call, no new judgement)
        if kept and verdicts.get("sampled"):
            called = True
            stats, pairs, sampled = stages.predict_again(
                model, reader, grid, store, dict.fromkeys(verdicts["sampled"],
                                                          stages.SUSPECT_ATTEMPT),
                stats=stats, pairs=pairs, coarse=coarse, alignment=alignment, blur=blur,
                workers=opts.workers, weighting=opts.overlap_weighting, ramp=ramp)
        elif not kept:
            if level:
                below = fusion.diagnosis.SUSPECT_CORR
                suspects = fusion.diagnosis.level_suspects(stats, pairs, affines,
                                                           flagged=diagnosis.flagged)
            else:
                suspects, below = fusion.diagnosis.tile_suspects(stats, pairs, affines,
                                                                 flagged=diagnosis.flagged)
            called = bool(suspects)
            if suspects:
                stats, pairs, sampled = stages.keep_better_samples(
                    model, reader, grid, store, suspects, stats=stats, pairs=pairs,
                    maps=affines, coarse=coarse, alignment=alignment, blur=blur,
                    workers=opts.workers, progress=progress, spreads=spreads,
                    weighting=opts.overlap_weighting, ramp=ramp, flagged=diagnosis.flagged,
                    keep_at=below)
                log.info("%s: %d weakly followed tiles called again, %d second samples kept",
                         "pyramid level" if level else "tiles", len(suspects), len(sampled))
        if sampled:
            retried.update(sampled)
            affines, diagnosis, replaced = align(stats, pairs)
        if called:
            tick = lap(seconds, "suspects", tick)
    held = (verdicts["again"] - verdicts["filled"]) if kept else set()
    again = (replaced | verdicts["again"]) if kept else replaced
    if again and opts.retry_flagged:  # 7a. The flagged tiles once more: a new sample,
        # kept where it is consistent; where it is not either, another (RETRY_ATTEMPTS in
        # all); the kept ones of a repair keep the sample they kept (its attempt)
        used = verdicts.get("attempts", {}) if kept else {}
        ids = {i: used.get(i, 1) if i in held else 1 for i in again}
        filled = replaced - held
        for attempt in range(1, stages.RETRY_ATTEMPTS + 1):
            stats, pairs, more = stages.predict_again(
                model, reader, grid, store, ids, stats=stats, pairs=pairs, coarse=coarse,
                alignment=alignment, blur=blur, workers=opts.workers, spreads=spreads,
                progress=progress, weighting=opts.overlap_weighting, ramp=ramp,
                current=retried)
            retried.update(more)
            if not (more or (held and attempt == 1)):
                break
            # the same solve, the retried tiles judged again
            affines, diagnosis, replaced = align(stats, pairs, rejudge=set(more) - held,
                                                 filled=filled)
            ids = {i: attempt + 1 for i in set(more) & replaced}  # inconsistent again
            filled = replaced
            if not ids:
                break
        tick = lap(seconds, "retry", tick)
    if verdicts is not None and not kept:
        verdicts.update(again=set(again) if opts.retry_flagged else set(),
                        filled=set(replaced), sampled=set(sampled),
                        attempts={i: key // RETRY_STRIDE for i, key in retried.items()})

    # 8. Output values: the output kind, and the metric calibration to the reference.
    check_stop()
    parts = stages.TileParts(grid, affines, replaced, store, coarse, (height, width),
                             retried=retried)
    fused_by = None
    if opts.fusion == "gradient":  # 7b. The anchor's low frequencies, the tiles' detail.
        parts, fused_by = stages.gradient_correction(  # automatic blur: measured its own way
            parts, ramp=ramp, blur=None if opts.anchor_blur in (None, "auto") else blur,
            tile_size=opts.tile_size, anchor_call=anchor_call)
        tick = lap(seconds, "gradient", tick)
    sample = functools.partial(parts.sample, points=target.points is not None, ramp=ramp)
    values, calibration = target.value_map(coarse, sample, shape=(height, width))
    tick = lap(seconds, "calibrate", tick)

    # 9. Blend and write, one output window at a time (writes in a background thread).
    stages.blend_and_write(sink, parts, values, ramp=ramp, spreads=spreads,
                           threads=1 if opts.workers > 0 else 0)
    store.flush()
    lap(seconds, "blend_write", tick)
    report = fusion_report([t for row in grid for t in row], affines, diagnosis, replaced,
                           fit=fit, alignment=alignment, shape=(height, width),
                           robust=opts.robust, tile_size=opts.tile_size, overlap=opts.overlap,
                           coarse_weight=opts.coarse_weight, anchor_blur=blur,
                           fusion=fused_by, retried=retried or None,
                           resampled=sampled or None)
    return FuseResult(tiles=len(affines), skipped=skipped, affines=affines, seconds=seconds,
                      scratch_bytes=store.disk_bytes(), calibration=calibration, report=report)


def _anchor_and_tiles(reader: Reader, model: DepthModel, opts: Options, store: TileStore,
                      grid: list[list[Tile]], *, fit: str, target: Target,
                      spreads: TileStore | None, progress: bool, anchor: np.ndarray | None,
                      anchor_call: int | None,
                      room: Callable[[list[list[Tile]], np.ndarray], None] | None,
                      seconds: dict[str, float]):
    """Steps 2-6 of :func:`fuse`: the anchor (:func:`_anchor`) on a thread of its own
    (inline with ``workers`` 0), its model calls first (:data:`tiledepth.turns.PHASE`),
    while the tiles are predicted from the start: only their alignment needs it.

    The tiles' first model call waits for the disks' room to be checked, at once
    where there is room for the most the run can need; with ``spreads``, for the
    whole anchor (a pyramid level's tiles would take the tiles' uncertainty keys).

    Returns
    -------
    coarse : ndarray of shape (ch, cw)
    alignment : str
    (stats, pairs, skipped, blur)
        As :func:`tiledepth.stages.infer_and_gather`.
    anchor_call : int
        The side of the model calls ``coarse`` was made of, in its pixels.
    """
    height, width = reader.height, reader.width
    levels = fusion_levels(opts, fit, height, width) if anchor is None else []
    blur = anchor_blur(opts.anchor_blur,
                       reference=anchor is None and target.anchor_heights is not None)

    def alignment_of(coarse: np.ndarray) -> str:  # metric kinds: a scale only
        return resolve_alignment(opts.alignment, fit, opts.tile_size, max(coarse.shape),
                                 max(height, width))

    def statistics(coarse: np.ndarray) -> TileStatistics:
        return TileStatistics(grid, coarse, (height, width), store, alignment=alignment_of(
            coarse), blur=blur, threads=min(opts.workers, 2), weighting=opts.overlap_weighting,
            ramp=overlap_pixels(opts.tile_size, opts.overlap))

    ahead = Ahead(functools.partial(
        _anchor, reader, model, opts, store, levels=levels, fit=fit, target=target,
        spreads=spreads, progress=progress, room=room, grid=grid, anchor=anchor,
        anchor_call=anchor_call, seconds=seconds), thread=opts.workers > 0, values={PHASE: 0})
    try:
        if sources.reads_remote(str(getattr(reader, "path", ""))):
            # a remote raster: its tiles read once the coarse read is done. Both at once
            # fetched the blocks they share twice (each missing GDAL's download cache): 2.1x
            # the file's bytes against 1.53x (BENCHMARKS.md, "Bytes fetched by a run on a URL")
            ahead.wait_clear()
        elif spreads is None and _room_for_all(room, grid):
            ahead.cleared.set()
        gathered = stages.infer_and_gather(  # all tiles' statistics, (n,) and (m,)
            model, reader, grid, store, anchor=ahead, statistics=statistics,
            workers=opts.workers, spreads=spreads, progress=progress, last=anchor is None)
        coarse = ahead.result()  # (ch, cw)
    finally:
        ahead.close()
    return (coarse, alignment_of(coarse), gathered,
            _call_side(coarse, anchor_call, levels=len(levels), tile_size=opts.tile_size))


def _anchor(reader: Reader, model: DepthModel, opts: Options, store: TileStore,
            clear: Callable[[], None], *, levels: list[int], fit: str, target: Target,
            spreads: TileStore | None, progress: bool,
            room: Callable[[list[list[Tile]], np.ndarray], None] | None,
            grid: list[list[Tile]], anchor: np.ndarray | None, anchor_call: int | None,
            seconds: dict[str, float]) -> np.ndarray:
    """Steps 2-5 of :func:`fuse`: the map the tiles are aligned to, (ch, cw) (``anchor``
    if given, made of calls of ``anchor_call`` of its pixels, default its long side);
    ``clear()`` once the disks' room is checked (with ``spreads``, at the end)."""
    tick = time.perf_counter()
    # 2. Read the coarse image (3, ch, cw), (ch, cw) (with pyramid levels, through one copy).
    source, image, valid = stages.read_coarse_image(reader, long_side=opts.coarse_long_side,
                                                    levels=levels)
    if room is not None:  # 3. Room on the disks, before the first model call (the tiles'
        room(grid, valid)  # wait for it only where there is no room for every tile)
    if spreads is None:
        clear()

    # 4. Coarse prediction of the whole image, the global reference (ch, cw).
    coarse = anchor if anchor is not None else stages.coarse_prediction(
        model, image, valid, store=store, target=target, spreads=spreads, progress=progress,
        calls=opts.anchor_calls)
    del image, valid
    tick = lap(seconds, "coarse", tick)

    # 5. The pyramid: where the coarse map is much coarser than the raster, fuse
    # intermediate resolutions first, each aligned to the one above, for a sharper anchor.
    reference = anchor is None and target.anchor_heights is not None  # never overruled
    # (the levels' spreads are no output's: the plain model, or the tap would hold those of
    # tile ids the full-resolution grid skips, and of the levels' retries, for the whole run)
    plain = model.model if isinstance(model, UncertaintyTap) else model
    for done, side in enumerate(levels):
        check_stop()
        call = _call_side(coarse, anchor_call, levels=done, tile_size=opts.tile_size)
        coarse = _fuse_level(reduced(source, side), plain, opts, coarse, fit, call,
                             overrule=not (reference and done == 0))
    if levels:
        lap(seconds, "pyramid", tick)
    return coarse


def _call_side(coarse: np.ndarray, anchor_call: int | None, *, levels: int,
               tile_size: int) -> int:
    """The side of the model calls ``coarse`` was made of, in its pixels: after ``levels``
    pyramid levels, a level's tiles; else ``anchor_call`` (a given anchor's) or its own
    long side (one call, the coarse prediction)."""
    if levels:
        return tile_size
    return max(coarse.shape) if anchor_call is None else anchor_call


def _room_for_all(room: Callable[[list[list[Tile]], np.ndarray], None] | None,
                  grid: list[list[Tile]]) -> bool:
    """Whether the disks have room for the most a run can need (every tile predicted, the
    whole output valid): then the model need not wait for the coarse mask's estimate."""
    if room is None:
        return True
    try:
        room(grid, np.ones((1, 1), bool))
    except OutputError:
        return False
    return True


def _fuse_level(reader: Reader, model: DepthModel, opts: Options, anchor: np.ndarray,
                fit: str, anchor_call: int, *, overrule: bool = True) -> np.ndarray:
    """One pyramid level: the raster at reduced resolution fused against ``anchor`` (made
    of calls of ``anchor_call`` of its pixels); ``overrule``: the anchor's grossly wrong
    cells taken from the level (not for a reference raster)."""
    opts = dataclasses.replace(opts, pyramid=False, overlap=level_overlap(opts.overlap))
    store = MemoryStore()  # the level's predictions, for each of its fusions
    verdicts: dict[str, set[int]] | None = {} if ANCHOR_REPAIR_KEEPS_VERDICTS else None
    level = _fused_array(reader, model, opts, store, fit, anchor, anchor_call,
                         verdicts)  # (h, w)
    # Where the level's tiles grossly overrule a patch of the anchor (an inverted patch of the
    # coarse prediction), those cells are taken from the level and the level fused again from
    # the same predictions (no model call), until the taken cells settle: the wrong patch
    # no longer bends the tiles around it.
    given, spread, taken = anchor, value_range(anchor), None
    for _ in range(ANCHOR_REPAIR_ROUNDS if overrule else 0):
        gross = wrong_anchor_cells(given, level, value_range=spread)
        if not gross.any():
            break
        seen = np.where(gross, fusion.area_average(level[None], given.shape)[0], np.nan)
        if taken is not None and np.array_equal(np.isnan(seen), np.isnan(taken)) and \
                np.nanmax(np.abs(seen - taken)) <= ANCHOR_REPAIR_SETTLED * spread:
            break
        taken = seen
        log.info("pyramid level %d x %d: %d anchor cells overruled by its tiles", reader.width,
                 reader.height, int(gross.sum()))
        anchor = np.where(gross, seen, given).astype(given.dtype)
        level = _fused_array(reader, model, opts, store, fit, anchor, anchor_call, verdicts)
    holes = ~np.isfinite(level)
    if holes.any():  # masked: the level above, so upsampling near mask edges stays sane
        whole = Window(0, 0, level.shape[1], level.shape[0])
        level[holes] = fusion.upsample_window(anchor, level.shape, whole)[holes]
    return level


def _fused_array(reader: Reader, model: DepthModel, opts: Options, store: TileStore, fit: str,
                 anchor: np.ndarray, anchor_call: int,
                 verdicts: dict[str, set[int]] | None = None) -> np.ndarray:
    """:func:`fuse` of ``reader`` against ``anchor`` into an array (h, w), NaN where masked."""
    sink = ArraySink(reader.height, reader.width)
    fuse(reader, sink, model, opts, store, fit=fit, anchor=anchor, anchor_call=anchor_call,
         level=True, verdicts=verdicts,
         target=Target())  # the level stays in the fusion's space: it is the next anchor
    return sink.array
