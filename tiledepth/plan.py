"""The plan of a run, settled before the first model call.

What the engine decides from the options and the raster before it fuses: the
area of the input it covers (:func:`open_area`), the options settled for this
machine (:func:`settle_plan`), the model (:func:`open_model`), the checkpoint
(:func:`open_checkpoint`), room on the disks (:func:`check_room`) and a warning
for a run that would be slow on a CPU (:func:`warn_if_slow_on_cpu`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path

import numpy as np

from tiledepth import sources
from tiledepth.aoi import AreaReader, area_grid, area_of_interest
from tiledepth.checkpoint import Checkpoint, checkpoint_folder, checkpoint_key
from tiledepth.errors import ModelError, OptionError, OutputError
from tiledepth.identity import (
    companion_files,
    companions_identity,
    is_vrt_file,
    raster_files,
    raster_identity,
    source_identity,
    vrt_sources,
)
from tiledepth.models import load_model
from tiledepth.models.base import CallableModel, check_tile_size
from tiledepth.options import Options
from tiledepth.protocols import DepthModel, ModelPool, TileStore
from tiledepth.read import check_input_path, coarse_shape
from tiledepth.readers import RasterReader
from tiledepth.safe_write import OutputPaths, check_free_space, check_output_paths, output_paths
from tiledepth.tiling import Tile, count_tiles
from tiledepth.write import OutputGrid, window_rpcs

__all__ = ["DENSE_TILES", "SLOW_CPU_RUN_S", "add_note", "anchor_blur", "check_fit_options",
           "check_paths", "check_room", "check_remote_paths", "fusion_levels", "input_key",
           "names_the_input", "open_area", "open_checkpoint", "open_model", "own_option",
           "planned_alignments", "read_files", "set_plain", "settle_bend", "settle_plan",
           "settle_weights", "warn_if_slow_on_cpu"]

log = logging.getLogger(__name__)

#: A run estimated longer than this on a CPU prints the estimate and the faster choices.
SLOW_CPU_RUN_S = 600.0

#: ``overlap`` is warned about where it makes more than this many times the tiles (model
#: calls) of the default overlap.
DENSE_TILES = 4


def check_paths(input: str | os.PathLike, output: str | os.PathLike | None, opts: Options, *,
                config: str | os.PathLike | None, overwrite: bool, asset: str | None = None,
                ) -> tuple[Path | str, OutputPaths, str | None]:
    """The paths a run reads and writes, checked: the input readable, the outputs writable
    and none of them one of the files the run reads (``input``, ``config``, reference...).

    Returns
    -------
    input : pathlib.Path or str
        A local file, or a GDAL path (:func:`tiledepth.sources.resolve`).
    paths : OutputPaths
        The files written here (for a remote output, a local staging copy).
    remote : str or None
        The remote output (``s3://...``) they are uploaded to once verified.
    """
    given = input
    input = sources.resolve(input, asset=asset)
    if isinstance(input, Path):
        check_input_path(input)
    remote = str(output) if sources.is_remote_output(output) else None
    if remote is not None:  # written locally (a stable path, for resume), then uploaded
        check_remote_paths(remote, [given, input], preview=opts.preview)
        sources.check_remote_output(remote, overwrite=overwrite, preview=opts.preview)
        output = sources.staging_path(remote, opts.scratch)
    named = input if isinstance(input, Path) else Path(sources.source_name(input))
    paths = output_paths(named, output, preview=opts.preview)
    check_output_paths(paths, read_files(given, input, opts, config=config),
                       overwrite=overwrite or remote is not None)
    return input, paths, remote


def read_files(given: str | os.PathLike, input: Path | str, opts: Options, *,
               config: str | os.PathLike | None) -> list[Path]:
    """Every local file a run reads, none of which it may write (with ``--overwrite`` too).

    The file named (a STAC item, ``given``) and the raster it resolves to (``input``);
    for a VRT, a file or the text ``--mosaic`` builds, each file it reads
    (:func:`tiledepth.identity.raster_files`: the mosaic's members, a ``.vrt``'s
    sources); the ``--reference`` and ``--mask`` rasters likewise; ``--control`` and
    ``--config``.
    """
    files = [] if sources.is_gdal_source(given) else [Path(given)]
    for raster in (input, opts.reference, opts.mask):
        if raster is not None:
            files += raster_files(raster)
    return files + [Path(p) for p in (opts.control, config) if p is not None]


def check_remote_paths(remote: str, inputs: list[str | os.PathLike], *, preview: bool) -> None:
    """Raise OutputError if a remote output, or a companion uploaded beside it (the sidecar
    ``<stem>.json``, the preview), is a remote input: the object named (a STAC item) or
    the one it resolves to. Compared as GDAL paths (``s3://b/k`` is ``/vsis3/b/k``)."""
    read = {sources.vsi_path(os.fspath(p)) for p in inputs
            if sources.is_remote(p) and not os.fspath(p).lstrip().startswith("<")}
    for member in (m for p in inputs if os.fspath(p).lstrip().startswith("<VRTDataset")
                   for m in vrt_sources(p)):
        if sources.is_remote(member):
            read.add(sources.vsi_path(member))
    base, _, name = remote.rpartition("/")
    if not name:  # a folder: sources.staging_path says what is wrong with it
        return
    local = output_paths(Path(name), Path(name), preview=preview)
    for what, path in local.files():
        target = f"{base}/{path.name}"
        if sources.vsi_path(target) in read:
            if what == "output":
                raise OutputError(f"{target}: the output path is the input; choose another "
                                  "with -o")
            raise OutputError(f"{target}: the {what} of -o {name} would replace the input; "
                              "choose another -o")


def open_area(reader: RasterReader, name: str, *, aoi: str | os.PathLike | None,
              bounds: tuple[float, ...] | None, bounds_crs: str | None):
    """The output grid of a run and the reader of it: the input's, or its area of interest.

    Returns
    -------
    reader : RasterReader or AreaReader
    grid : OutputGrid
    area : tiledepth.aoi.Area or None
    """
    grid = OutputGrid.from_dataset(reader.dataset)
    if grid.crs is None and grid.gcp_crs is None and grid.rpcs is None:
        log.warning("%s has no CRS; the output will have none either", name)
    # The area of interest: a window of the input and the polygons that mask it.
    area = area_of_interest(grid.height, grid.width, grid.transform, grid.crs, aoi=aoi,
                            bounds=bounds, bounds_crs=bounds_crs, name=name)
    if area is not None:
        reader, grid = AreaReader(reader, area), area_grid(grid, area)
        if grid.rpcs is not None:  # (beside a geotransform) they count the input's pixels
            grid = dataclasses.replace(grid, rpcs=window_rpcs(
                grid.rpcs, area.window.row_off, area.window.col_off))
    return reader, grid, area


def names_the_input(fn):
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


def open_model(opts: Options) -> DepthModel:
    """The model of ``opts``, loaded, its tile size checked and its batch size resolved."""
    model = load_model(opts.model, device=opts.device, dtype=opts.dtype, steps=opts.steps,
                       ensemble=opts.ensemble, seed=opts.seed, batch_size=opts.batch_size)
    if isinstance(model, CallableModel):
        check_callable_options(model.name, opts)
    # a loaded model, used as it is (also one named `--model file.py:obj`); or a loaded
    # pipeline or network, wrapped: it runs on the device and in the dtype it was loaded
    # in, whatever the options say
    own = model is opts.model or _imported_object(opts.model, model)
    if own or opts.model is getattr(model, "pipe", getattr(model, "model", None)):
        check_object_options(model, opts)
    check_batch_size(model)
    check_tile_size(model, opts.tile_size)
    if opts.batch_size == "auto" and not own:  # a model object keeps its own
        from tiledepth.models.autobatch import resolve_batch_size

        resolve_batch_size(model, opts.tile_size)  # probed once on CUDA, remembered
    return model


def _imported_object(option, model: DepthModel) -> bool:
    """Whether ``model`` is a loaded model object that the ``model`` option named as
    ``module:obj`` or ``file.py:obj``, run as it was loaded (as ``model=obj`` is)."""
    from tiledepth.models.registry import CALLABLE, family_of

    return (isinstance(option, (str, os.PathLike)) and not isinstance(model, CallableModel)
            and family_of(option) == CALLABLE)


def check_batch_size(model: DepthModel) -> None:
    """Raise ModelLoadError where the loaded ``model``'s ``batch_size`` (the tiles the engine
    puts in each of its calls) is not a whole number of 1 or more: None, ``"auto"`` and 2.5
    failed deep in the engine with bare TypeErrors, 0 and -1 ran silently as 1. A model
    without the attribute is left as it was.

    Examples
    --------
    >>> class Mine:
    ...     name, batch_size = "mine", 0
    >>> check_batch_size(Mine())
    Traceback (most recent call last):
    ...
    tiledepth.errors.ModelLoadError: model 'mine' has batch_size 0; set its batch_size to the \
tiles per model call, a whole number of 1 or more (4, say)
    """
    import numbers

    if not hasattr(model, "batch_size"):
        return
    value = model.batch_size
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return
    from tiledepth.errors import ModelLoadError

    name = getattr(model, "name", type(model).__name__)
    raise ModelLoadError(f"model {name!r} has batch_size {value!r}; set its batch_size to the "
                         "tiles per model call, a whole number of 1 or more (4, say)")


def check_callable_options(name: str, opts: Options) -> None:
    """Raise OptionError where ``opts`` set what a Python callable model does not take:
    ``--steps``, ``--ensemble`` (but with ``--uncertainty``, which says what it needs),
    ``--device`` and ``--dtype`` (it runs where and as it puts itself). They did nothing,
    and the output's tags recorded them."""
    given = [("steps", opts.steps)] if opts.steps is not None else []
    if opts.ensemble != 1 and not opts.uncertainty:
        given.append(("ensemble", opts.ensemble))
    given += [(what, value) for what, value in (("device", opts.device), ("dtype", opts.dtype))
              if value != "auto"]
    if given:  # named as the CLI and as the library spell them: either may have set them
        cli = ", ".join(f"--{what} {value}" for what, value in given)
        library = ", ".join(f"{what}={value!r}" for what, value in given)
        raise OptionError(f"{name} is a Python callable: {cli} would do nothing for it "
                          f"({library} in Python; they set the built-in models); leave "
                          f"{'them' if len(given) > 1 else 'it'} unset")


#: The options a model is loaded with; a loaded model object runs with its own.
LOADING_OPTIONS = ("steps", "ensemble", "seed", "batch_size", "device", "dtype")

_TORCH_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


def check_object_options(model: DepthModel, opts: Options) -> None:
    """Raise OptionError where ``opts`` set a loading option (:data:`LOADING_OPTIONS`) to
    other than what the loaded model object ``model`` has: it runs as it was loaded, so the
    option would do nothing, and the output's tags would record it.

    A batch size, which only says how many tiles go to a model call, is set on the model
    instead where it is a plain attribute (not a property). An option left at its default,
    or batch size ``auto``, says nothing and passes (the model keeps its own). Where the
    model does not say (no such attribute), a pool of models
    (:class:`tiledepth.protocols.ModelPool`, loaded with the run's options) passes, and so
    does a seed (a deterministic model has none to set); anything else is refused.
    """
    from tiledepth.models.autobatch import AUTO

    defaults = Options()
    given = []
    for option in LOADING_OPTIONS:
        value = getattr(opts, option)
        if value == getattr(defaults, option) or (option == "batch_size" and value == AUTO):
            continue
        own = own_option(model, option)
        if option == "batch_size" and own != value and set_plain(model, option, value):
            continue  # tiles per call: set, the tags and the pixels are the same
        if own is None and (isinstance(model, ModelPool) or option == "seed"
                            or (option == "ensemble" and opts.uncertainty)):
            continue  # (with uncertainty the uncertainty check says what it needs)
        if option == "device" and own is not None and own.split(":")[0] == value:
            continue  # "cuda" is the "cuda:0" the model is on
        if own != value:
            given.append(f"{option}={value} (it has {'none' if own is None else own})")
    if given:
        name = getattr(model, "name", type(model).__name__)
        them = "them" if len(given) > 1 else "it"
        raise OptionError(f"model {name!r} is a loaded model, run as it was loaded: "
                          f"{', '.join(given)} would do nothing; set {them} when loading the "
                          f"model, or leave {them} unset")


def set_plain(model: DepthModel, attribute: str, value) -> bool:
    """Set ``model.attribute`` where it is a plain attribute (not a property, nor frozen);
    whether it was."""
    if isinstance(getattr(type(model), attribute, None), property):
        return False
    try:
        setattr(model, attribute, value)
    except AttributeError:  # __slots__ without it, a frozen dataclass
        return False
    return True


def own_option(model: DepthModel, option: str):
    """What a loaded model says it runs with for a loading option, or None where it does
    not say (its device as text, its dtype as fp32, fp16 or bf16)."""
    if option == "dtype":  # the model's, else its pipeline's or network's
        for holder in (model, getattr(model, "pipe", None), getattr(model, "model", None)):
            dtype = getattr(holder, "dtype", None) if holder is not None else None
            if dtype is not None:
                return _TORCH_DTYPES.get(str(dtype), str(dtype))
        return None
    try:
        value = getattr(model, option, None)
    except Exception:  # a backend that cannot tell (a device of no weights, say)
        return None
    return str(value) if option == "device" and value is not None else value


def open_checkpoint(input: Path | str, area, opts: Options, model: DepthModel, *,
                    output: Path, scratch: Path) -> Checkpoint:
    """The checkpoint of a run: predictions of an interrupted run of this input and options
    (not with ``uncertainty``: the spread of a resumed tile was never kept)."""
    identity = input_key(input)
    if area is not None:
        identity["area"] = area.identity()
    key, manifest = checkpoint_key(identity, opts, model)
    return Checkpoint(checkpoint_folder(output, scratch), key, manifest, output=output,
                      resume=opts.resume and not opts.uncertainty, background=opts.workers > 0,
                      cache_bytes=opts.memory * 2**20, keep=opts.keep_predictions)


def input_key(input: Path | str) -> dict:
    """The identity of a run's input for its checkpoint key: every file it reads.

    A local file's :func:`tiledepth.identity.raster_identity` (for a VRT file, with each
    source's identity; with the files GDAL reads beside it, its ``.aux.xml``, ``.msk``...);
    a GDAL source's :func:`tiledepth.sources.identity` (for VRT text, each member's),
    plus, only where a member is itself a VRT file, that VRT's sources (``nested``), and
    only where a local member has files GDAL reads beside it, theirs (``companions``): the
    keys of other inputs are as they were.
    """
    if isinstance(input, Path):
        return raster_identity(input)
    identity = sources.identity(input)
    if input.lstrip().startswith("<VRTDataset"):
        members = [m for m in vrt_sources(input) if not sources.is_gdal_source(m)]
        nested = [source_identity(m) for m in members if is_vrt_file(m)]
        if nested:
            identity["nested"] = nested
        companions = companions_identity([f for m in sorted(set(members)) if not is_vrt_file(m)
                                          for f in companion_files(m)])  # a VRT's: nested
        if companions:
            identity["companions"] = companions
    return identity


def settle_plan(opts: Options, height: int, width: int) -> Options:
    """``opts`` with ``workers`` capped at the CPU cores (at least the default); a warning,
    once a process, for a cap and for an overlap that multiplies the tiles."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    cap = max(cores, Options.workers)
    if opts.workers > cap:
        warn_once(f"workers {opts.workers} is more than the {cores} CPU cores here; "
                  f"using {cap}")
        opts = dataclasses.replace(opts, workers=cap)
    tiles = count_tiles(height, width, opts.tile_size, opts.overlap)
    usual = count_tiles(height, width, opts.tile_size, Options.overlap)
    if tiles > DENSE_TILES * usual:
        warn_once(f"overlap {opts.overlap} makes {tiles} tiles, {tiles / usual:.0f}x the "
                  f"{usual} at overlap {Options.overlap}, and takes about that much longer; "
                  "0.5 or less is usually enough")
    return opts


@functools.lru_cache(maxsize=64)
def warn_once(message: str) -> None:
    """Log ``message`` as a warning, once a process."""
    log.warning("%s", message)


def anchor_blur(blur: float | str | None, *, reference: bool) -> float | None:
    """The anchor's blur in its pixels: as given; else (``'auto'`` or None) 0 for a
    reference (sharp), or None for a model's prediction: estimated from the tiles
    (``TileStatistics`` with ``blur=None``: the one of
    :data:`tiledepth.fusion.coarse.BLUR_CANDIDATES` that best explains the anchor).

    Examples
    --------
    >>> anchor_blur(None, reference=True), anchor_blur(2, reference=True)
    (0.0, 2.0)
    >>> anchor_blur(None, reference=False) is None, anchor_blur("auto", reference=False) is None
    (True, True)
    """
    if blur not in (None, "auto"):
        return float(blur)
    return 0.0 if reference else None


def check_fit_options(opts: Options, fit: str, name: str) -> None:
    """Raise OptionError where ``opts`` ask for bilinear value maps (``alignment``
    ``bilinear``, ``bend_from_anchor``) that a fit without a shift cannot have: a metric
    model aligned to its own coarse prediction gets one scale per tile (``fit`` ``scale``),
    always affine (:func:`tiledepth.fusion.pyramid.resolve_alignment`); the run was affine
    while its tags said bilinear. ``auto`` passes. ``name``: the model's, for the message."""
    if fit == "scale_shift":
        return
    given = [what for what, on in (
        ("alignment bilinear (--alignment bilinear)", opts.alignment == "bilinear"),
        ("bend_from_anchor (--bend-from-anchor)", opts.bend_from_anchor)) if on]
    if given:
        them = "them" if len(given) > 1 else "it"
        raise OptionError(f"{' and '.join(given)}: model {name} is aligned with fit {fit} "
                          "(metric values: one scale per tile, no shift), which has no "
                          f"bilinear value map; leave {them} unset (alignment auto or affine), "
                          "or align to a reference (--anchor reference)")


def planned_alignments(opts: Options, fit: str, height: int, width: int) -> list[str]:
    """The value map of each fusion a run of a ``height`` x ``width`` raster (the grid it
    is fused on: at ``scale`` below 1, the reduced one) makes, as
    :func:`tiledepth.engine.fuse` resolves them once the anchor exists: its pyramid
    levels', coarsest first, then the raster's.

    Examples
    --------
    >>> o = Options()  # tiles of 768 px, a coarse map of 768 px
    >>> planned_alignments(o, "scale_shift", 1000, 1500), planned_alignments(o, "scale", 10, 15)
    (['bilinear'], ['affine'])
    >>> planned_alignments(o, "scale_shift", 4000, 3000)  # a tile spans 147 anchor pixels
    ['affine']
    >>> planned_alignments(o, "scale_shift", 20000, 12000)  # a level of 2048 px first
    ['affine', 'affine']
    >>> planned_alignments(Options(tile_size=1024), "scale_shift", 8192, 8192)
    ['bilinear', 'affine']
    """
    from tiledepth.fusion.pyramid import resolve_alignment

    return [resolve_alignment(opts.alignment, fit, opts.tile_size, above, below)
            for above, below in _fusion_sides(opts, fit, height, width)]


def fusion_levels(opts: Options, fit: str, height: int, width: int) -> list[int]:
    """The long sides of the pyramid levels a run of a ``height`` x ``width`` raster fuses
    before it (:func:`tiledepth.fusion.pyramid.pyramid_levels` between the coarse map and
    the raster; none without ``pyramid`` or a fit), coarsest first."""
    from tiledepth.fusion.pyramid import pyramid_levels

    if not opts.pyramid or fit == "none":
        return []
    return pyramid_levels(max(height, width),
                          max(coarse_shape(height, width, opts.coarse_long_side)))


def _fusion_sides(opts: Options, fit: str, height: int, width: int) -> list[tuple[int, int]]:
    """The long sides of each fusion's anchor and raster, as :func:`planned_alignments`:
    each fusion is aligned to the one above, the first to the coarse prediction (its long
    side ``coarse_long_side``, or the raster's where smaller)."""
    anchor = max(coarse_shape(height, width, opts.coarse_long_side))
    levels = fusion_levels(opts, fit, height, width)
    return list(zip([anchor, *levels], [*levels, max(height, width)], strict=True))


def settle_bend(opts: Options, fit: str, height: int, width: int) -> Options:
    """``opts``, with ``bend_from_anchor`` off and a warning where no fusion of the run
    (:func:`planned_alignments`) has bilinear value maps, the only ones it bends: with
    ``alignment`` ``auto`` choosing affine ones it would change no pixel, only the
    output's tag (``alignment affine`` itself is refused by :class:`Options`, a fit
    without a shift by :func:`check_fit_options`: left to them)."""
    if not opts.bend_from_anchor or fit != "scale_shift" \
            or "bilinear" in planned_alignments(opts, fit, height, width):
        return opts
    from tiledepth.fusion.pyramid import BILINEAR_MIN_ANCHOR_PIXELS

    above, below = _fusion_sides(opts, fit, height, width)[-1]  # the raster's own fusion
    log.warning("bend_from_anchor (--bend-from-anchor) does nothing in this run: alignment "
                "auto chose affine value maps (a tile of %d px spans %.0f anchor pixels, "
                "under the %d bilinear ones need), and it bends bilinear ones only; pass "
                "--alignment bilinear to bend them, or leave it off", opts.tile_size,
                opts.tile_size * above / below, BILINEAR_MIN_ANCHOR_PIXELS)
    return dataclasses.replace(opts, bend_from_anchor=False)


def settle_weights(opts: Options, fit: str) -> Options:
    """``opts``, with ``estimate_weights`` off where ``fit`` has no shift (``scale``: a
    metric model aligned to its own coarse prediction, one scale per tile; ``none``): the
    solve of those has no anchor weight to estimate (:func:`tiledepth.fusion.solve_alignment`
    gives them their scales, or nothing, without it), so the output's tag says it was off.
    On by default, so no warning."""
    if not opts.estimate_weights or fit == "scale_shift":
        return opts
    return dataclasses.replace(opts, estimate_weights=False)


def check_room(grid: list[list[Tile]], valid: np.ndarray, *, store: TileStore, output: Path,
               scratch: Path, shape: tuple[int, int], bands: int, spreads: bool, scale: float,
               overviews: bool, cog: bool) -> None:
    """Raise OutputError if the scratch's or the output's file system has no room for a run.

    Estimates from the coarse validity ``valid`` (ch, cw): the scratch holds one
    prediction and mask per tile of ``grid`` not all masked and not yet in
    ``store`` (twice with ``spreads``; below ``scale`` 1 also the reduced map); the
    output, ``shape`` float32 and uncompressed over the valid fraction, a third
    more with ``overviews``, twice that with a ``cog`` (a copy).
    """
    from tiledepth.info import empty_tiles, scratch_bytes

    last = grid[-1][-1].window
    height, width = int(last.row_off + last.height), int(last.col_off + last.width)
    todo = sum(len(row) for row in grid) - empty_tiles(grid, valid, height, width) - sum(
        1 for row in grid for t in row if t.id in store)
    scratch_need = scratch_bytes(max(todo, 0), grid[0][0].shape, spreads=spreads,
                                 reduced=(height, width) if scale != 1.0 else None)
    output_bytes = float(valid.mean()) * shape[0] * shape[1] * 4 * bands
    if overviews or cog:
        output_bytes *= 4 / 3
    if cog:
        output_bytes *= 2
    check_free_space([(scratch, scratch_need, "scratch"),
                      (output.parent, int(output_bytes), "output")])


#: The faster models the slow-run warning suggests, and why each is faster.
FASTER_MODELS = (("marigold-e2e-ft", "one step"), ("depth-anything-v2-small", None))


def warn_if_slow_on_cpu(input: Path, opts: Options, model: DepthModel) -> None:
    """Warn before a Marigold run on a CPU that ``tiledepth info`` estimates over 10 minutes,
    at the steps the loaded model runs (a checkpoint's own default: 1 for
    ``marigold-e2e-ft``, 10 for ``marigold-v1-0``); the faster choices it names leave out
    the model in use."""
    from tiledepth.models.marigold_model import MarigoldModel

    if not isinstance(model, MarigoldModel) or getattr(model.pipe.device, "type", "") != "cpu":
        return
    from tiledepth.info import describe
    from tiledepth.models.registry import spec_of

    options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    options["steps"] = getattr(model, "steps", None) or opts.steps
    estimates = describe(input, **options).estimates
    cpu = next((s for dev, s in estimates.items() if dev.startswith("CPU")), None)
    if cpu is not None and cpu > SLOW_CPU_RUN_S:
        spec = spec_of(opts.model)
        faster = ["a GPU (--device cuda)"] + [
            f"--model {name}" + (f" ({why})" if why else "") for name, why in FASTER_MODELS
            if spec is None or spec.name != name]
        log.warning("this run is estimated at about %.0f min on a CPU (tiledepth info shows "
                    "the basis); faster: %s", cpu / 60,
                    ", ".join(faster[:-1]) + ", or " + faster[-1])


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (PEP 678); the CLI appends notes to its one-line message."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
