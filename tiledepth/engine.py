"""The engine: read -> tile -> infer -> align -> blend -> write, top to bottom.

:func:`run` processes a raster file into a GeoTIFF; :func:`estimate` processes
an in-memory array into an array. Both go through :func:`fuse`, which walks
the numbered steps over a reader (source of tiles), a sink (destination of
output windows) and a scratch store (tile predictions between the two).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from tiledepth import fusion, sources
from tiledepth.aoi import AreaReader, area_grid, area_of_interest
from tiledepth.calibrate import Calibration, Target
from tiledepth.checkpoint import Checkpoint, checkpoint_folder, checkpoint_key
from tiledepth.errors import InputError, ModelError, OptionError
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels, resolve_alignment
from tiledepth.identity import input_identity
from tiledepth.infer import COARSE_KEY, infer_tiles, predict_image
from tiledepth.kinds import FIT_FOR_KIND, FITS, VALUES, kind_of
from tiledepth.metrics import value_range
from tiledepth.models import load_model
from tiledepth.models.base import CallableModel, DepthModel, check_tile_size
from tiledepth.options import DEFAULT_ANCHOR_BLUR, Options, make_options
from tiledepth.progress import progress_bar, status, statuses
from tiledepth.read import check_input_path, coarse_shape
from tiledepth.readers import ArrayReader, RasterReader, ScaledReader, reduced
from tiledepth.report import fusion_report, save_json
from tiledepth.safe_write import check_free_space, check_output_paths, output_paths, remove_partials
from tiledepth.scratch import DiskStore, MemoryStore
from tiledepth.tiling import (
    Tile,
    count_tiles,
    earlier_neighbours,
    overlap_pixels,
    overlap_slices,
    tile_grid,
)
from tiledepth.write import ArraySink, GeoTiffWriter, OutputGrid

__all__ = ["FuseResult", "RunResult", "estimate", "fuse", "run"]

log = logging.getLogger(__name__)


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
    output : pathlib.Path
        The GeoTIFF written.
    tiles : int
        Tiles inferred.
    skipped : int
        Tiles skipped because all their pixels are masked.
    height, width : int
        Raster size.
    seconds : dict of str to float
        Wall time of each step and ``total``.
    resumed : int
        Tile predictions reused from an interrupted run (see :mod:`tiledepth.checkpoint`).
    calibration : Calibration or None
        The metric fit (scale, shift, residual RMSE) when calibrated.
    preview : pathlib.Path or None
        The quicklook PNG, when asked for.
    sidecar : pathlib.Path or None
        The fusion report (JSON, see :mod:`tiledepth.report`).
    consistency : float or None
        Root-mean-square difference of overlapping aligned tiles, relative to
        the value range (no ground truth needed).
    flagged : int
        Tiles flagged as outliers (listed in the sidecar).
    """

    output: Path
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


def _names_the_input(fn):
    """Make option and model errors of ``run`` name the input, for logs of many runs."""

    @functools.wraps(fn)
    def wrapper(input, *args, **kwargs):
        try:
            return fn(input, *args, **kwargs)
        except (OptionError, ModelError) as exc:
            name = sources.source_name(input)
            if name and name not in str(exc) and len(exc.args) == 1:
                label = name if name == "mosaic.vrt" else input  # not a VRT's whole text
                exc.args = (f"{label}: {exc.args[0]}",)
            raise

    return wrapper


@_names_the_input
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
        A vector file (GeoPackage, Shapefile, GeoJSON, ...) whose polygons mask
        the run: the output covers their window of the input's grid, NaN outside
        them (see :mod:`tiledepth.aoi`).
    bounds : tuple of 4 float, optional
        ``(xmin, ymin, xmax, ymax)``: the output covers this rectangle of the input.
    bounds_crs : str, optional
        CRS of ``bounds``; default: the input's.
    asset : str, optional
        The asset of a STAC item input; default ``visual``, else the first RGB GeoTIFF.
    **options
        See :class:`tiledepth.options.Options` (``model``, ``tile_size``,
        ``overlap``, ``coarse_size``, ``batch_size``, ``device``, ``dtype``,
        ``steps``, ``ensemble``, ``seed``, ``bands``, ``scratch``,
        ``uncertainty``, ...). ``model`` may be a name from
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
    from tiledepth import __version__

    t0 = time.perf_counter()
    # 1. Check inputs: options, paths.
    opts = make_options(config, **options)
    input = sources.resolve(input, asset=asset)  # a local Path, or a GDAL path (str)
    if isinstance(input, Path):
        check_input_path(input)
    remote = str(output) if sources.is_remote_output(output) else None
    if remote is not None:  # written locally (a stable path, for resume), then uploaded
        sources.check_remote_output(remote, overwrite=overwrite)
        output, overwrite = sources.staging_path(remote, opts.scratch), True
    named = input if isinstance(input, Path) else Path(sources.source_name(input))
    paths = output_paths(named, output, preview=opts.preview)
    check_output_paths(paths, [input if isinstance(input, Path) else None, opts.reference,
                               opts.control, config], overwrite=overwrite)
    output = paths.output
    scratch_parent = Path(opts.scratch) if opts.scratch is not None else output.parent

    with RasterReader(input, bands=opts.bands, nodata=opts.nodata, mask=opts.mask) as reader:
        grid = OutputGrid.from_dataset(reader.dataset)
        if grid.crs is None and grid.gcp_crs is None:
            log.warning("%s has no CRS; the output will have none either", input)
        # The area of interest: a window of the input and the polygons that mask it.
        area = area_of_interest(grid.height, grid.width, grid.transform, grid.crs, aoi=aoi,
                                bounds=bounds, bounds_crs=bounds_crs, name=str(input))
        if area is not None:
            reader, grid = AreaReader(reader, area), area_grid(grid, area)
        opts = _settle_plan(opts, grid.height, grid.width)
        # The reference or control points, on the output grid, for the metric calibration.
        target = Target.for_run(opts, grid, coarse_shape(grid.height, grid.width,
                                                         opts.coarse_long_side))
        # 2. Load the model (the loaders say so: a checkpoint can take minutes to load).
        with statuses(progress):
            model = _load(opts)
        _warn_if_slow_on_cpu(input, opts, model)
        kind = kind_of(model)
        tags = {
            "TIFFTAG_SOFTWARE": f"tiledepth {__version__}",
            "TILEDEPTH_VERSION": __version__,
            "TILEDEPTH_MODEL": model.name,
            **{f"TILEDEPTH_{k}": v for k, v in opts.provenance().items()},
            # the steps the model really ran (a checkpoint's default resolved)
            **({"TILEDEPTH_STEPS": str(model.steps)} if getattr(model, "steps", None) else {}),
            "TILEDEPTH_KIND": kind,
            "TILEDEPTH_FIT": FIT_FOR_KIND[kind],
            "TILEDEPTH_VALUES": _values_tag(opts, target) if kind == "depth" else VALUES[kind],
        }
        # The band says what its values are: the output kind (the model's kind for depth).
        label = kind if opts.output_kind == "depth" else opts.output_kind
        bands = (label, "uncertainty") if opts.uncertainty else (label,)
        # 3. The checkpoint: predictions of an interrupted run of this input and options
        # (not with --uncertainty: the spread of a resumed tile was never kept).
        identity = input_identity(input) if isinstance(input, Path) \
            else sources.identity(input)
        if area is not None:
            identity["area"] = area.identity()
        key, manifest = checkpoint_key(identity, opts, model)
        store = Checkpoint(checkpoint_folder(output, scratch_parent), key, manifest,
                           output=output, resume=opts.resume and not opts.uncertainty,
                           background=opts.workers > 0)
        try:
            with store, (DiskStore(scratch_parent) if opts.uncertainty else nullcontext()) \
                    as spreads:  # locked: no other run writes this output now
                for _, path in paths.files():  # of a run that was killed (SIGKILL, power cut)
                    remove_partials(path)
                with GeoTiffWriter(output, grid, tags=tags, overwrite=overwrite, bands=bands,
                                   overviews=opts.overviews, cog=opts.cog) as sink:
                    def room(tiles, valid):  # before the first model call
                        _check_room(tiles, valid, store, paths, scratch_parent, opts,
                                    shape=(grid.height, grid.width), bands=len(bands),
                                    spreads=spreads is not None)

                    if opts.scale == 1.0:
                        result = fuse(reader, sink, model, opts, store, progress=progress,
                                      target=target, spreads=spreads, room=room)
                    else:
                        result = _fuse_scaled(reader, sink, model, opts, store, progress,
                                              room=room)
                    if result.calibration is not None:
                        sink.add_tags(_calibration_tags(result.calibration))
                    if result.calibration is not None or (
                            kind == "metric_depth" and opts.output_kind != "inverse-depth"):
                        sink.set_units("metre")  # the values (and their spread) are metres
                    sink.add_tags({"TILEDEPTH_CONSISTENCY": str(result.report["consistency"]),
                                   "TILEDEPTH_FLAGGED_TILES": str(len(result.report["flagged"]))})
                    # 4. The fusion report and the preview beside the output: written once
                    # the output is finished and verified, renamed into place with it.
                    report = result.report
                    sink.companion(paths.sidecar, lambda _, tmp: save_json(tmp, report))
                    if paths.preview is not None:
                        from tiledepth.preview import render_preview

                        sink.companion(paths.preview, lambda src, tmp: render_preview(
                            src, tmp, hillshade=opts.hillshade), extra=paths.preview_aux)
        except BaseException as exc:
            if store.kept:
                _add_note(exc, store.resume_hint())
            raise
    sidecar, preview = paths.sidecar, paths.preview
    if remote is not None:  # 5. The verified output (and its report) to object storage.
        output, sidecar, preview = sources.upload_outputs(remote, output, sidecar, preview)
    seconds = dict(result.seconds, total=time.perf_counter() - t0)
    log.info("wrote %s (%d tiles, %.1f s)", output, result.tiles, seconds["total"])
    return RunResult(output=output, tiles=result.tiles, skipped=result.skipped,
                     height=grid.height, width=grid.width, seconds=seconds,
                     resumed=store.resumed, calibration=result.calibration,
                     preview=preview, sidecar=sidecar,
                     consistency=result.report["consistency"],
                     flagged=len(result.report["flagged"]))


def estimate(image: np.ndarray, model: Any = None, *, mask: np.ndarray | None = None,
             progress: bool = False, **options: Any) -> np.ndarray:
    """Estimate a seamless depth map of an in-memory image.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8 (/ 255), other integers (percentile stretch) or float in [0, 1];
        NaN pixels are masked.
    model : str, pipeline or callable
        As in :func:`run`; a callable maps (B, H, W, 3) float32 in [0, 1] to
        (B, H, W).
    mask : ndarray of shape (H, W), bool, optional
        True where valid.
    progress : bool
        Show a progress bar on stderr.
    **options
        ``tile_size``, ``overlap``, ``coarse_size`` and the rest of
        :class:`tiledepth.options.Options`.

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
    if model is not None:
        options["model"] = model
    opts = make_options(**options)
    if opts.reference or opts.control or opts.uncertainty:
        raise OptionError("reference, control and uncertainty need files: use tiledepth.run")
    reader = ArrayReader(image, mask)
    opts = _settle_plan(opts, reader.height, reader.width)
    sink = ArraySink(reader.height, reader.width)
    fuse(reader, sink, _load(opts), opts, MemoryStore(), progress=progress,
         target=Target(opts.output_kind))
    return sink.array


def fuse(reader, sink, model: DepthModel, opts: Options, store, *,
         progress: bool = False, target: Target | None = None, spreads=None,
         fit: str | None = None, anchor: np.ndarray | None = None,
         room: Callable[[list[list[Tile]], np.ndarray], None] | None = None) -> FuseResult:
    """The engine's core: every step from tiling to writing, over abstract I/O.

    Parameters
    ----------
    reader : RasterReader or ArrayReader
        ``height``, ``width``, ``read_tile(window)``, ``read_coarse(long_side)``.
    sink : GeoTiffWriter or ArraySink
        ``windows()`` and ``write(window, array)``.
    model : DepthModel
    opts : Options
    store : DiskStore, Checkpoint or MemoryStore
        Holds tile predictions between inference and blending. Predictions
        already in it (a resumed checkpoint) are used instead of calling the model.
    progress : bool
        Show progress over tiles on stderr (a bar on a terminal, lines elsewhere).
    target : Target, optional
        The output kind and calibration; default: ``opts.output_kind``, uncalibrated.
    spreads : DiskStore or MemoryStore, optional
        Holds the tiles' uncertainty; given, the sink's band 2 gets it.
    fit : {'scale_shift', 'scale', 'none'}, optional
        Per-tile alignment; default: the one for the model's output kind
        (:data:`tiledepth.kinds.FIT_FOR_KIND`).
    anchor : ndarray of shape (h, w), optional
        The map the tiles are aligned to, in place of the model's coarse
        prediction (a pyramid level above this one; no NaN).
    room : callable, optional
        ``room(grid, valid)`` is called with the tile grid and the (ch, cw)
        validity of the coarse image before the first model call: it raises
        if the disks have no room for the run (:func:`_check_room`).
    """
    target = target if target is not None else Target(opts.output_kind)
    fit = FIT_FOR_KIND[kind_of(model)] if fit is None else fit
    if fit not in FITS:
        raise OptionError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if spreads is not None:
        from tiledepth.uncertainty import UncertaintyTap

        model = UncertaintyTap(model)
    seconds: dict[str, float] = {}
    height, width = reader.height, reader.width
    tick = time.perf_counter()

    # 1. Plan the tiles.
    grid = tile_grid(height, width, opts.tile_size, opts.overlap)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(opts.tile_size, opts.overlap)

    # 2. Coarse prediction of the whole image, the global reference. With pyramid levels,
    # the raster is read once at the finest level's size; the levels and the coarse image
    # come from that copy in memory (at most PYRAMID_MAX a side).
    levels = pyramid_levels(max(height, width),
                            max(coarse_shape(height, width, opts.coarse_long_side))) \
        if opts.pyramid and fit != "none" and anchor is None else []
    source = reader
    if levels:
        small, small_valid = reader.read_coarse(levels[-1])  # (3, lh, lw), (lh, lw)
        source = ArrayReader(np.moveaxis(small, 0, -1), small_valid)
        del small, small_valid
    image, valid = source.read_coarse(opts.coarse_long_side)  # (3, ch, cw), (ch, cw)
    if not valid.any():
        raise InputError(f"{getattr(reader, 'path', 'the image')}: every pixel is masked "
                         "(alpha, mask or nodata): nothing to estimate; check the nodata value "
                         "or the alpha band")
    if room is not None:  # 2a. Room on the disks, before the first model call.
        room(grid, valid)
    if anchor is not None:
        coarse = anchor
    else:
        coarse = store.get_coarse()
        if coarse is None or coarse.shape != valid.shape:
            with status(f"coarse prediction ({image.shape[2]} x {image.shape[1]} px)",
                        enabled=progress and not isinstance(model, CallableModel)):
                prediction = predict_image(model, image, valid)  # (ch, cw)
            coarse = fusion.fill_invalid(prediction, valid)  # (ch, cw)
            store.put_coarse(coarse)
        if spreads is not None:
            model.take(COARSE_KEY, coarse.shape)
        # The anchor: the reprojected reference instead, with anchor="reference".
        coarse = target.anchor(coarse)  # (ch, cw)
    del image, valid
    tick = _lap(seconds, "coarse", tick)

    # 2b. The pyramid: where the coarse map is much coarser than the raster, fuse
    # intermediate resolutions first, each aligned to the one above, for a sharper anchor.
    if levels:
        for side in levels:
            coarse = _fuse_level(reduced(source, side), model, opts, coarse, fit)
        del source
        tick = _lap(seconds, "pyramid", tick)

    # 3. Infer every tile; gather alignment statistics as tiles arrive (in background
    # threads while the model runs, with workers > 0).
    alignment = resolve_alignment(opts.alignment, fit, opts.tile_size, max(coarse.shape),
                                  max(height, width))  # metric kinds: a scale only
    skipped = 0
    with progress_bar(len(tiles), enabled=progress, desc="tiles") as bar, \
            _Statistics(grid, coarse, (height, width), store, alignment=alignment,
                        blur=_anchor_blur(opts, reference=anchor is None
                                          and target.anchor_heights is not None),
                        threads=min(opts.workers, 2)) as gather:
        for tile, pred, valid in infer_tiles(model, reader, tiles, batch_size=model.batch_size,
                                             workers=opts.workers, stored=store):
            bar.update(1)
            if pred is None:
                skipped += 1
                continue
            if tile.id not in store:
                store.put(tile.id, pred, valid)
                if spreads is not None:
                    spreads.put(tile.id, model.take(tile.id, tile.shape), valid)
            gather.add(tile, pred, valid)
    stats, pairs = gather.stats, gather.pairs
    tick = _lap(seconds, "infer", tick)

    # 4. Align: a value map per tile (a scale only for metric depth), solved globally and
    # robustly; then how consistent the tiles are, and which are outliers.
    affines, diagnosis, replaced = fusion.solve_and_fill(
        list(stats.values()), pairs, tile_area=float(opts.tile_size) ** 2,
        coarse_weight=opts.coarse_weight, fit=fit, robust=opts.robust,
        value_range=_value_range(coarse))
    del stats, pairs
    if diagnosis.flagged:
        log.warning("%d of %d tiles flagged as outliers (%s)%s", len(diagnosis.flagged),
                    len(affines), ", ".join(sorted(set(diagnosis.flagged.values()))),
                    "; inconsistent ones filled from the coarse prediction" if replaced else "")
    tick = _lap(seconds, "align", tick)

    rows = [row[0].window.row_off for row in grid]
    cols = [t.window.col_off for t in grid[0]]
    t_h, t_w = grid[0][0].shape
    def parts(window, source=store, spread=False):  # tiles under the window (None: all)
        # spread=True: the tiles' uncertainty, scaled by |scale| and never shifted
        found = tiles if window is None else _touching(grid, rows, cols, t_h, t_w, window)
        for tile in found:
            if tile.id in affines:
                pred, valid = source.get(tile.id)
                scale, shift = affines[tile.id].fields(tile.shape)
                if spread:
                    yield fusion.BlendPart(tile, pred, valid, abs(scale), 0.0)
                elif tile.id in replaced:  # the coarse map, yielding to the neighbours
                    yield fusion.BlendPart(
                        tile, fusion.upsample_window(coarse, (height, width), tile.window),
                        valid, 1.0, 0.0, fusion.FILL_WEIGHT)
                else:
                    yield fusion.BlendPart(tile, pred, valid, scale, shift)

    # 4b. Output values: the output kind, and the metric calibration to the reference.
    def fused_at(r, c):  # the fused map at a lattice (sorted r, c) or at points
        sample = fusion.blend_points if target.points is not None else fusion.blend_lattice
        return sample(r, c, parts(None), ramp=ramp)

    values, calibration = target.value_map(coarse, fused_at, shape=(height, width))
    tick = _lap(seconds, "calibrate", tick)

    # 5. Blend and write, one output window at a time (writes in a background thread).
    with _Background(sink.write, threads=1 if opts.workers > 0 else 0) as write:
        for window in sink.windows():
            fused = fusion.blend_window(window, parts(window), ramp=ramp)  # (h, w)
            write(window, values.apply(fused))
            if spreads is not None:
                spread = fusion.blend_window(window, parts(window, spreads, True), ramp=ramp)
                write(window, values.apply_uncertainty(fused, spread), 2)
    if hasattr(store, "flush"):
        store.flush()
    _lap(seconds, "blend_write", tick)
    scratch_bytes = store.disk_bytes() if hasattr(store, "disk_bytes") else 0
    report = fusion_report(tiles, affines, diagnosis, replaced, opts=opts, fit=fit,
                           alignment=alignment, shape=(height, width))
    return FuseResult(tiles=len(affines), skipped=skipped, affines=affines, seconds=seconds,
                      scratch_bytes=scratch_bytes, calibration=calibration, report=report)


def _value_range(coarse: np.ndarray) -> float:
    """The coarse prediction's value range (the fused map's frame), 1.0 where it has none."""
    spread = value_range(coarse)
    return spread if spread > 0 else 1.0


def _anchor_blur(opts: Options, *, reference: bool) -> float:
    """The anchor's blur in its pixels: as given, else a model's (a reference is sharp)."""
    if opts.anchor_blur is not None:
        return float(opts.anchor_blur)
    return 0.0 if reference else DEFAULT_ANCHOR_BLUR


def _fuse_level(reader, model: DepthModel, opts: Options, anchor: np.ndarray,
                fit: str) -> np.ndarray:
    """One pyramid level: the raster at reduced resolution fused against ``anchor``."""
    sink = ArraySink(reader.height, reader.width)
    level_opts = dataclasses.replace(opts, pyramid=False, overlap=level_overlap(opts.overlap))
    fuse(reader, sink, model, level_opts, MemoryStore(), fit=fit, anchor=anchor)
    level = sink.array  # (h, w), NaN where masked
    holes = ~np.isfinite(level)
    if holes.any():  # masked: the level above, so upsampling near mask edges stays sane
        whole = Window(0, 0, level.shape[1], level.shape[0])
        level[holes] = fusion.upsample_window(anchor, level.shape, whole)[holes]
    return level


def _values_tag(opts: Options, target: Target) -> str:
    if target.calibrated:
        unit = "height in metres" if opts.output_kind == "height" else \
            "depth in metres below the reference's highest point"
        source = "reference" if target.cells is not None else "control points"
        return f"{unit}, calibrated to the {source}"
    return {"depth": "relative depth in the coarse prediction's frame",
            "height": "relative height: the coarse prediction's far end minus depth",
            "inverse-depth": "relative inverse depth, 1 nearest, 0.5 at the far end"}[
        opts.output_kind]


def _calibration_tags(cal: Calibration) -> dict[str, str]:
    return {"TILEDEPTH_CALIBRATION": cal.source,
            "TILEDEPTH_CALIBRATION_SCALE": f"{cal.scale:.9g}",
            "TILEDEPTH_CALIBRATION_SHIFT": f"{cal.shift:.9g}",
            "TILEDEPTH_CALIBRATION_RMSE": f"{cal.rmse:.6g}",
            "TILEDEPTH_CALIBRATION_SAMPLES": str(cal.samples)}


def _fuse_scaled(reader: RasterReader, sink, model: DepthModel, opts: Options, store,
                 progress: bool, room=None) -> FuseResult:
    """``--scale``: fuse on the reduced grid into an on-disk array, then upsample it onto
    the input's grid window by window."""
    scaled = ScaledReader(reader, opts.scale)
    values = np.lib.format.open_memmap(store.scratch_file("scaled.npy"), mode="w+",
                                       dtype=np.float32, shape=(scaled.height, scaled.width))
    result = fuse(scaled, ArraySink(scaled.height, scaled.width, values), model, opts, store,
                  progress=progress, room=room)
    tick = time.perf_counter()
    _upsample_onto(values, reader, sink)
    result.seconds["upsample_write"] = time.perf_counter() - tick
    return result


def _upsample_onto(values: np.ndarray, reader: RasterReader, sink) -> None:
    """Write ``values`` (a reduced grid, NaN where masked) onto the full grid of ``reader``.

    Bilinear, window by window; masked pixels are NaN exactly where the input is masked.
    """
    full = (reader.height, reader.width)
    for window in sink.windows():
        rows, cols = fusion.coarse_extent(window, full, values.shape)
        crop = np.asarray(values[rows, cols])
        finite = np.isfinite(crop)
        if not finite.any():
            out = np.full((int(window.height), int(window.width)), np.nan, np.float32)
        else:
            out = fusion.upsample_window(fusion.fill_invalid(crop, finite), full, window,
                                        grid_shape=values.shape,
                                        origin=(rows.start, cols.start))
            out[~reader.read_valid(window)] = np.nan
        sink.write(window, out)


class _Statistics:
    """Alignment statistics of the tiles, added one tile at a time, in tile order.

    :meth:`add` gathers a tile's statistics against the coarse prediction under
    it and those of its overlaps with the earlier tiles (their parts read from
    ``store``). With ``threads``, the tiles' own statistics are computed by that
    many threads at once and the overlaps by one more, in tile order, so the
    results are the same as with none (every call inline). Use as a context
    manager: on exit every tile added is in :attr:`stats` and :attr:`pairs`.
    """

    def __init__(self, grid: list[list[Tile]], coarse: np.ndarray, shape: tuple[int, int],
                 store, *, alignment: str = "affine", blur: float = 0.0,
                 threads: int = 0) -> None:
        self.grid, self.coarse, self.shape, self.store = grid, coarse, shape, store
        self.alignment, self.blur = alignment, blur
        self.stats: dict[int, fusion.TileStats] = {}
        self.pairs: list[fusion.PairStats] = []
        self._own = ThreadPoolExecutor(threads, "tiledepth-stats") if threads else None
        self._in_order = _Background(self._overlaps, threads=1 if threads else 0)

    def __enter__(self) -> _Statistics:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._in_order.__exit__(*exc_info)
        finally:
            if self._own is not None:
                self._own.shutdown(wait=True, cancel_futures=True)

    def add(self, tile: Tile, pred: np.ndarray, valid: np.ndarray) -> None:
        """Gather the statistics of one tile, the next in tile order."""
        if self._own is None:
            self._overlaps(tile, pred, valid, self._tile(tile, pred, valid))
        else:
            self._in_order(tile, pred, valid, self._own.submit(self._tile, tile, pred, valid))

    def _tile(self, tile: Tile, pred: np.ndarray, valid: np.ndarray) -> fusion.TileStats:
        # the tile as the coarse map sees it, so that the two compare like with like
        return fusion.coarse_tile_stats(tile.id, pred, valid, tile.window, self.shape,
                                       self.coarse, alignment=self.alignment, blur=self.blur)

    def _overlaps(self, tile: Tile, pred: np.ndarray, valid: np.ndarray, ts) -> None:
        self.stats[tile.id] = ts = ts if isinstance(ts, fusion.TileStats) else ts.result()
        for other in earlier_neighbours(self.grid, tile):
            if other.id not in self.stats:
                continue
            sl_other, sl_tile = overlap_slices(other, tile)
            other_part = self.store.get_pred(other.id, sl_other)  # the overlap only, (h, w)
            self.pairs.append(fusion.pair_stats(self.stats[other.id], ts, other_part,
                                               pred[sl_tile], valid[sl_tile],
                                               where_i=(*sl_other, other.shape),
                                               where_j=(*sl_tile, tile.shape)))


class _Background:
    """Call ``fn`` in a background thread, at most ``2`` calls queued; 0 threads: inline.

    With one thread the calls run in order. Exceptions of a background call are
    raised by the next call or on exit.
    """

    def __init__(self, fn, *, threads: int) -> None:
        self.fn = fn
        self.pool = ThreadPoolExecutor(threads, "tiledepth-background") if threads else None
        self.pending: list = []

    def __enter__(self):
        return self

    def __call__(self, *args) -> None:
        if self.pool is None:
            self.fn(*args)
            return
        while len(self.pending) >= 2:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self.fn, *args))

    def __exit__(self, exc_type, *exc_info) -> None:
        if self.pool is None:
            return
        try:
            if exc_type is None:
                for fut in self.pending:
                    fut.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _touching(grid: list[list[Tile]], rows: list[int], cols: list[int], t_h: int, t_w: int,
              window) -> list[Tile]:
    """Tiles of the grid that intersect ``window`` (starts are sorted, sizes equal)."""
    r0, c0 = window.row_off, window.col_off
    r1, c1 = r0 + window.height, c0 + window.width
    ri = range(bisect_left(rows, r0 - t_h + 1), bisect_right(rows, r1 - 1))
    ci = range(bisect_left(cols, c0 - t_w + 1), bisect_right(cols, c1 - 1))
    return [grid[r][c] for r in ri for c in ci]


def _check_room(grid: list[list[Tile]], valid: np.ndarray, store, paths, scratch: Path,
                opts: Options, *, shape: tuple[int, int], bands: int, spreads: bool) -> None:
    """Raise OutputError if the scratch's or the output's file system has no room for a run.

    Estimates from the coarse validity ``valid`` (ch, cw): the scratch holds one
    prediction and mask per tile of ``grid`` not all masked and not yet in
    ``store`` (twice with ``spreads``; with ``--scale`` also the reduced map); the
    output, ``shape`` float32 and uncompressed over the valid fraction, a third
    more with overviews, twice that with a COG (a copy).
    """
    from tiledepth.info import empty_tiles, tile_scratch_bytes

    last = grid[-1][-1].window
    height, width = int(last.row_off + last.height), int(last.col_off + last.width)
    todo = sum(len(row) for row in grid) - empty_tiles(grid, valid, height, width) - sum(
        1 for row in grid for t in row if t.id in store)
    scratch_bytes = max(todo, 0) * tile_scratch_bytes(*grid[0][0].shape) * (2 if spreads else 1)
    if opts.scale != 1.0:
        scratch_bytes += height * width * 4  # the reduced map, on disk
    output_bytes = float(valid.mean()) * shape[0] * shape[1] * 4 * bands
    if opts.overviews or opts.cog:
        output_bytes *= 4 / 3
    if opts.cog:
        output_bytes *= 2
    check_free_space([(scratch, scratch_bytes, "scratch"),
                      (paths.output.parent, int(output_bytes), "output")])


#: A run estimated longer than this on a CPU prints the estimate and the faster choices.
SLOW_CPU_RUN_S = 600.0


def _warn_if_slow_on_cpu(input: Path, opts: Options, model: DepthModel) -> None:
    """Warn before a Marigold run on a CPU that ``tiledepth info`` estimates over 10 minutes."""
    from tiledepth.models.marigold_model import MarigoldModel

    if not isinstance(model, MarigoldModel) or getattr(model.pipe.device, "type", "") != "cpu":
        return
    from tiledepth.info import describe

    options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    estimates = describe(input, **options).estimates
    cpu = next((s for dev, s in estimates.items() if dev.startswith("CPU")), None)
    if cpu is not None and cpu > SLOW_CPU_RUN_S:
        log.warning("this run is estimated at about %.0f min on a CPU (tiledepth info shows "
                    "the basis); faster: a GPU (--device cuda), --model marigold-e2e-ft (one "
                    "step), or --model depth-anything-v2-small", cpu / 60)


def _load(opts: Options) -> DepthModel:
    model = load_model(opts.model, device=opts.device, dtype=opts.dtype, steps=opts.steps,
                       ensemble=opts.ensemble, seed=opts.seed, batch_size=opts.batch_size)
    check_tile_size(model, opts.tile_size)
    if opts.batch_size == "auto" and model is not opts.model:  # a model object keeps its own
        from tiledepth.models.autobatch import resolve_batch_size

        resolve_batch_size(model, opts.tile_size)  # probed once on CUDA, remembered
    return model


#: ``overlap`` is warned about where it makes more than this many times the tiles (model
#: calls) of the default overlap: 0.89 made 46x (183 s against 0.7 s at overlap 0).
DENSE_TILES = 4


def _settle_plan(opts: Options, height: int, width: int) -> Options:
    """``opts`` with ``workers`` capped at the CPU cores (at least the default); a warning,
    once a process, for a cap and for an overlap that multiplies the tiles."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    cap = max(cores, Options.workers)
    if opts.workers > cap:
        _warn_once(f"workers {opts.workers} is more than the {cores} CPU cores here; "
                   f"using {cap}")
        opts = dataclasses.replace(opts, workers=cap)
    tiles = count_tiles(height, width, opts.tile_size, opts.overlap)
    usual = count_tiles(height, width, opts.tile_size, Options.overlap)
    if tiles > DENSE_TILES * usual:
        _warn_once(f"overlap {opts.overlap} makes {tiles} tiles, {tiles / usual:.0f}x the "
                   f"{usual} at overlap {Options.overlap}, and takes about that much longer; "
                   "0.5 or less is usually enough")
    return opts


@functools.lru_cache(maxsize=64)
def _warn_once(message: str) -> None:
    log.warning("%s", message)


def _add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (PEP 678); the CLI appends notes to its one-line message."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _lap(seconds: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    seconds[name] = now - since
    return now
