"""Info: describe a raster and plan a run without running a model.

:func:`describe` reads the raster's metadata and a decimated validity mask and
returns a :class:`RasterInfo`: size, bands, CRS, pixel size, masked fraction,
overviews, the tile plan for the given options, and estimates of scratch disk,
memory and time. :func:`format_info` prints it for ``tiledepth info``.

The estimates are labelled as such. Their basis:

* **scratch disk**: exact, one float32 prediction and one packed mask per
  non-empty tile (:mod:`tiledepth.scratch`; twice with ``--uncertainty``, whose
  spreads are kept beside them), and below ``--scale`` 1 the reduced map
  (float32, as :func:`tiledepth.plan.check_room` counts it);
* **engine memory**: the flat peak measured on 100 and 400 MP rasters, plus the tile
  predictions kept in memory (``--memory``)
  (BENCHMARKS.md), plus the batch buffers, which grow with batch and tile size; not
  ``--scale``'s reduced map, a memory map of its scratch file;
* **Marigold time** (Marigold only, at the model's own default steps unless ``--steps``):
  the model's FLOPs per tile, counted on PyTorch's meta device
  (``benchmarks/marigold_cost.py``: 2.61 TFLOP VAE encode, 2.14 TFLOP per UNet
  step, 5.75 TFLOP VAE decode at 768 px, scaled by tile area), divided by an
  *assumed* sustained throughput per device class (:data:`DEVICE_CLASSES`), plus
  the engine's own time at the rate measured with a zero-cost model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth.errors import InputError, OptionError
from tiledepth.options import DEFAULT_MODEL, Options, make_options
from tiledepth.read import coarse_shape, select_bands
from tiledepth.sources import redact, source_name
from tiledepth.tiling import overlap_pixels, tile_grid

__all__ = ["DEVICE_CLASSES", "RasterInfo", "describe", "format_info", "marigold_tflop"]

#: Marigold v1-1 at a 768 px tile, TFLOP (benchmarks/marigold_cost.py).
MARIGOLD_TFLOP_768 = {"encode": 2.61, "unet_step": 2.14, "decode": 5.75}
#: Marigold v1-1 parameters (UNet 866 M + VAE 84 M; the text encoder is not run).
MARIGOLD_PARAMS = 950e6
#: Marigold v1-1's default denoising steps.
MARIGOLD_STEPS = 4
#: Assumed sustained throughput, TFLOP/s, of each device class on Marigold: about 35% of
#: the datasheet's dense fp16 peak for GPUs; for the CPU, the 0.03 TFLOP/s measured for a
#: 3x3 convolution on this project's 2-core sandbox, scaled to 8 cores and rounded up.
DEVICE_CLASSES = {
    "CPU, 8 cores (fp32)": 0.15,
    "GPU, consumer (RTX 4090 class, fp16)": 58.0,
    "GPU, data centre (A100 class, fp16)": 109.0,
    "GPU, data centre (H100 class, fp16)": 346.0,
}
#: Engine throughput with a zero-cost model, megapixels per second, rounded from the measured
#: figure (BENCHMARKS.md, "Engine throughput and memory, zero-cost model").
ENGINE_MP_PER_S = 11.0
#: Engine peak memory with a zero-cost model at tile 768, batch 4, 2 workers, bytes, besides
#: the tile predictions kept in memory (``--memory``, up to the scratch's size): the
#: measured peak at 400 MP with the default 512 MiB kept, 1148 MiB, less those, rounded up
#: (BENCHMARKS.md, the same section).
ENGINE_PEAK = 640 * 2**20
#: Long side of the decimated mask read for the masked fraction and empty tiles.
MASK_SIZE = 1024


@dataclass(frozen=True)
class RasterInfo:
    """A raster's description and the plan of a run on it.

    Sizes are in pixels, rows before columns where they come in pairs;
    ``estimates`` maps a device class to estimated seconds (empty for a model
    whose cost is unknown, such as a Python callable).
    """

    path: Path
    driver: str
    height: int
    width: int
    count: int
    dtypes: tuple[str, ...]
    colorinterp: tuple[str, ...]
    #: The bands the model sees (1-based, three); empty where a run refuses the band choice.
    model_bands: tuple[int, ...]
    crs: str | None
    pixel_size: tuple[float, float] | None
    units: str | None
    nodata: float | None
    masked_fraction: float
    overviews: tuple[int, ...]
    block_shape: tuple[int, int]
    tile_size: int
    overlap: float
    overlap_pixels: int
    grid_shape: tuple[int, int]
    tiles: int
    empty_tiles: int
    coarse_shape: tuple[int, int]
    scratch_bytes: int
    memory_bytes: int
    model: str
    model_memory: str
    estimates: dict[str, float]
    basis: str
    pyramid: tuple[tuple[int, int], ...] = ()
    #: Each band's description (a tiledepth output: its kind) and units (None: unsaid).
    descriptions: tuple[str | None, ...] = ()
    band_units: tuple[str | None, ...] = ()
    #: Where the raster has no geotransform: its ground control points (how many, their
    #: CRS) or RPCs, which the output keeps instead.
    gcps: int = 0
    gcp_crs: str | None = None
    rpcs: bool = False
    #: The error a run with these options gives on the band choice (a tiledepth output with
    #: ``--uncertainty``: 2 bands, no ``--bands``), None where it takes the bands; the rest
    #: is then band 1's.
    bands_refused: str | None = None


def _no_geotransform(info: RasterInfo) -> str:
    """What places a raster without a geotransform: its GCPs, its RPCs, or nothing."""
    if info.gcps:
        return (f"none: georeferenced by {info.gcps} ground control points"
                + (f" ({info.gcp_crs})" if info.gcp_crs else ""))
    if info.rpcs:
        return "none: georeferenced by RPCs"
    return "not georeferenced"


def _values_line(info: RasterInfo) -> str:
    """``values:`` each band's description and units, e.g. ``height (metre)``."""
    parts = [f"{d or 'band ' + str(i)}" + (f" ({u})" if u else " (no units)")
             for i, (d, u) in enumerate(zip(info.descriptions, info.band_units, strict=False),
                                        1)]
    return "values:          " + ", ".join(parts)


def marigold_tflop(tile_size: int, steps: int = MARIGOLD_STEPS, ensemble: int = 1) -> float:
    """Estimated TFLOP of one Marigold v1-1 tile: encode + ensemble x (steps x UNet + decode).

    Scaled from the 768 px count by tile area.

    Examples
    --------
    >>> round(marigold_tflop(768), 2)
    16.92
    """
    c = MARIGOLD_TFLOP_768
    area = (tile_size / 768) ** 2
    return area * (c["encode"] + ensemble * (steps * c["unet_step"] + c["decode"]))


def describe(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
             **options: Any) -> RasterInfo:
    """Describe a raster and plan a run with ``options``, running no model.

    Parameters
    ----------
    path : str or os.PathLike
        Any raster GDAL opens.
    config : str or os.PathLike, optional
        YAML file of options; keyword options win.
    **options
        As for :func:`tiledepth.run` (``tile_size``, ``overlap``, ``model``, ...).

    Returns
    -------
    RasterInfo
    """
    from rasterio.errors import RasterioIOError

    from tiledepth.readers import RasterReader
    from tiledepth.sources import resolve

    opts = make_options(config, **options)
    _check_model_options(opts)  # before the raster is read, as a run refuses them
    path = resolve(path)  # a local Path, or a URL's GDAL path (the reader checks a Path)
    # a tiledepth output's band 1 is its map; with --uncertainty band 2 is the spread, not
    # a second colour band: described as band 1, but the run's band choice refuses it ("has
    # 2 colour bands; pass --bands 1"), which bands_refused says
    output = opts.bands is None and _is_output(path)
    choice = (1,) if output else opts.bands
    refused = None
    try:
        # the run's reader opens it (its GDAL settings, its band choice) and judges validity
        # as the run does (alpha, nodata, --nodata, NaN, a colour map's transparent
        # entries, --mask); its dataset gives the metadata
        with RasterReader(path, bands=choice, nodata=opts.nodata,
                          mask=opts.mask) as reader:  # (quiet on a raster without georeferencing)
            ds, bands = reader.dataset, reader.bands
            if output:  # the band choice of the run, whose reader is given no --bands
                try:
                    select_bands(list(ds.colorinterp), None, source_name(path))
                except (InputError, OptionError) as exc:
                    refused, bands = str(exc), ()
            mshape = coarse_shape(ds.height, ds.width, MASK_SIZE)
            valid = reader.sample_valid(mshape)
            georef = not ds.transform.is_identity
            gcps, gcp_crs = ds.gcps
            crs = ds.crs
            units = None
            if crs is not None:
                units = crs.linear_units if crs.is_projected else "degree"
            meta = dict(driver=ds.driver, height=ds.height, width=ds.width,
                        count=ds.count, dtypes=tuple(ds.dtypes),
                        colorinterp=tuple(ci.name for ci in ds.colorinterp),
                        crs=crs.to_string() if crs is not None else None,
                        pixel_size=(math.hypot(ds.transform.a, ds.transform.d),
                                    math.hypot(ds.transform.b, ds.transform.e))
                        if georef else None,
                        units=units if georef else None, nodata=ds.nodata,
                        overviews=tuple(ds.overviews(1)),
                        block_shape=tuple(ds.block_shapes[0]),
                        descriptions=tuple(ds.descriptions),
                        band_units=tuple(u or None for u in ds.units),
                        gcps=len(gcps) if not georef else 0,
                        gcp_crs=gcp_crs.to_string() if gcps and gcp_crs else None,
                        rpcs=ds.rpcs is not None and not georef and not gcps)
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read it as a raster ({exc})") from exc
    h, w = meta["height"], meta["width"]
    if opts.scale != 1:  # the plan of the reduced grid the run fuses (ScaledReader's)
        h, w = max(1, round(h * opts.scale)), max(1, round(w * opts.scale))
    grid = tile_grid(h, w, opts.tile_size, opts.overlap)
    empty = empty_tiles(grid, valid, h, w)
    tiles = len(grid) * len(grid[0])
    th, tw = grid[0][0].shape
    predictions = scratch_bytes(tiles - empty, (th, tw))
    scratch = scratch_bytes(tiles - empty, (th, tw),  # as check_room counts it
                            spreads=opts.uncertainty,  # the spreads are kept on disk too
                            reduced=(h, w) if opts.scale != 1 else None)
    batch = 4 if opts.batch_size == "auto" else opts.batch_size  # auto: 4 off CUDA
    batch = min(batch, max(1, tiles - empty))  # no batch holds more than the tiles
    # the tiles' cache keeps up to --memory of their predictions; the reduced map is a
    # memory map of its scratch file (its pages written back to disk), not kept with them
    memory = (ENGINE_PEAK + min(opts.memory * 2**20, predictions)
              + 2 * max(batch - 4, 0) * opts.tile_size**2 * 12)
    cshape = coarse_shape(h, w, opts.coarse_long_side)
    pyramid = _pyramid_plan(opts, h, w, max(cshape)) if opts.pyramid else ()
    model, model_memory, estimates, basis = _model_estimates(
        opts, tiles - empty + sum(n for _, n in pyramid), h * w, cshape[0] * cshape[1])
    return RasterInfo(path=path, **meta, model_bands=bands, bands_refused=refused,
                      masked_fraction=float(1.0 - valid.mean()),
                      tile_size=opts.tile_size, overlap=opts.overlap,
                      overlap_pixels=overlap_pixels(opts.tile_size, opts.overlap),
                      grid_shape=(len(grid), len(grid[0])), tiles=tiles, empty_tiles=empty,
                      coarse_shape=cshape,
                      scratch_bytes=scratch, memory_bytes=memory, model=model,
                      model_memory=model_memory, estimates=estimates, basis=basis,
                      pyramid=pyramid)


def _is_output(path) -> bool:
    """Whether ``path`` is a tiledepth output (:func:`tiledepth.survey.foreign_output`: its
    ``TILEDEPTH_VERSION`` tag); False where it is not (the reader that opens it next says
    why it cannot be read), and for a remote one: GDAL keeps a URL's failed open, and the
    reader's own open would then say only "does not exist", not the server's answer."""
    from tiledepth.read import route_libtiff_messages
    from tiledepth.sources import is_remote
    from tiledepth.survey import foreign_output

    if is_remote(path):
        return False
    route_libtiff_messages()  # as the reader does: libtiff's own lines to logging
    return foreign_output(path) is None


def _pyramid_plan(opts: Options, height: int, width: int,
                  coarse_side: int) -> tuple[tuple[int, int], ...]:
    """(long side, tiles) of each pyramid level the engine will fuse first."""
    from tiledepth.fusion.pyramid import level_overlap, pyramid_levels

    plan = []
    for side in pyramid_levels(max(height, width), coarse_side):
        lh, lw = coarse_shape(height, width, side)
        level = tile_grid(lh, lw, opts.tile_size, level_overlap(opts.overlap))
        plan.append((side, len(level) * len(level[0])))
    return tuple(plan)


def tile_scratch_bytes(height: int, width: int) -> int:
    """Scratch bytes of one tile: its float32 prediction and packed mask, with .npy headers."""
    return height * width * 4 + math.ceil(height * width / 8) + 2 * 128


def scratch_bytes(tiles: int, tile_shape: tuple[int, int], *, spreads: bool = False,
                  reduced: tuple[int, int] | None = None) -> int:
    """Peak scratch bytes of a run: ``tiles`` predictions of ``tile_shape`` (rows, cols)
    with their masks (twice with ``spreads``: ``--uncertainty``), and below ``--scale`` 1
    the float32 map of the ``reduced`` grid's (height, width), on disk beside them.

    Examples
    --------
    >>> scratch_bytes(2, (4, 4)), scratch_bytes(2, (4, 4), spreads=True, reduced=(3, 5))
    (644, 1348)
    """
    total = tiles * tile_scratch_bytes(*tile_shape) * (2 if spreads else 1)
    if reduced is not None:
        total += reduced[0] * reduced[1] * 4
    return total


def empty_tiles(grid, valid: np.ndarray, height: int, width: int) -> int:
    """Tiles whose pixels all look masked in the decimated mask (an estimate)."""
    mh, mw = valid.shape
    empty = 0
    for row in grid:
        for t in row:
            rs, cs = t.row_slice, t.col_slice
            r0, c0 = rs.start * mh // height, cs.start * mw // width
            r1, c1 = max(-(-rs.stop * mh // height), r0 + 1), max(-(-cs.stop * mw // width), c0 + 1)
            if not valid[r0:r1, c0:c1].any():
                empty += 1
    return empty


def _model_estimates(opts: Options, tiles: int, pixels: int, coarse_pixels: int):
    engine_s = pixels / 1e6 / ENGINE_MP_PER_S
    # a folder given as a Path is the folder (it was costed as a Python callable)
    model = os.fspath(opts.model) if isinstance(opts.model, os.PathLike) else opts.model
    name = model if isinstance(model, str) else type(model).__name__
    is_callable = not isinstance(model, str) or (":" in model and not Path(model).exists())
    if is_callable:
        basis = ("model time unknown for a Python callable; engine overhead alone: "
                 f"{engine_s:.0f} s at the {ENGINE_MP_PER_S:g} MP/s measured with a "
                 "zero-cost model (BENCHMARKS.md)")
        return name, "unknown (a Python callable)", {}, basis
    from tiledepth.models.registry import _resolve

    family, spec = _resolve(model)  # spec: its own default steps (marigold-v1-0: 10)
    if family != "marigold":  # Depth Anything, Depth Pro: no FLOP count of theirs here
        basis = (f"model time not estimated for {name} (the estimates are for Marigold "
                 f"only); engine overhead alone: {engine_s:.0f} s at the "
                 f"{ENGINE_MP_PER_S:g} MP/s measured with a zero-cost model (BENCHMARKS.md)")
        return name, "unknown (the estimates are for Marigold only)", {}, basis
    steps = opts.steps or (spec.default_steps if spec is not None else None) \
        or _folder_steps(model) or MARIGOLD_STEPS
    tflop = marigold_tflop(opts.tile_size, steps, opts.ensemble)
    coarse = marigold_tflop(math.sqrt(coarse_pixels), steps, opts.ensemble)
    calls = 1 if opts.anchor == "reference" else opts.anchor_calls  # the anchor's calls
    total = tiles * tflop + calls * coarse
    estimates = {dev: total / rate + engine_s for dev, rate in DEVICE_CLASSES.items()}
    weights = MARIGOLD_PARAMS
    model_memory = (f"weights {weights * 2 / 1e9:.1f} GB in fp16, {weights * 4 / 1e9:.1f} GB "
                    "in fp32 (from the parameter count), plus activations that grow with "
                    "batch size x tile area (not estimated)")
    basis = (f"ESTIMATES, not measurements: {tflop:.1f} TFLOP per tile (Marigold v1-1, "
             f"{steps} step{'s' if steps != 1 else ''}, ensemble {opts.ensemble}, FLOPs "
             "counted on the meta device and scaled by tile area) / assumed sustained "
             "TFLOP/s per device class ("
             + ", ".join(f"{r:g}" for r in DEVICE_CLASSES.values())
             + f"), + engine overhead at {ENGINE_MP_PER_S:g} MP/s (measured); "
             "expect a factor of 2 either way")
    if name != DEFAULT_MODEL:
        basis += f"; assumes {name} has Marigold v1-1's architecture"
    return name, model_memory, estimates, basis


def _folder_steps(model: str) -> int | None:
    """The denoising steps a Marigold checkpoint folder runs with by default: its
    ``model_index.json``'s ``default_denoising_steps`` (a v1-0 folder: 10), as the loader
    takes them; None for no folder, or an index that does not say (the loader then refuses
    it, or names what is wrong)."""
    from tiledepth.errors import ModelLoadError
    from tiledepth.models.torchutil import read_json_object

    index = os.path.join(os.path.expanduser(model), "model_index.json")
    if not os.path.isfile(index):
        return None
    try:
        steps = read_json_object(index).get("default_denoising_steps")
    except ModelLoadError:  # the run says what is wrong with it; info runs no model
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 \
        else None


def _check_model_options(opts: Options) -> None:
    """Raise OptionError, with the run's message, where a run refuses a model option for the
    model ``opts`` names, told without loading it: steps or an ensemble of Depth Anything or
    Depth Pro (their loader's check), what a Python callable does not take
    (:func:`tiledepth.plan.check_callable_options`), an ensemble of the zero-noise Marigold
    (:func:`_check_deterministic`). info planned and costed runs that refuse them."""
    from tiledepth.models.registry import CALLABLE, family_of, spec_of
    from tiledepth.plan import check_callable_options, check_object_options
    from tiledepth.protocols import DepthModel

    model = opts.model
    if isinstance(model, DepthModel):  # a loaded model object: it runs with its own values
        check_object_options(model, opts)
        return
    family = family_of(model)
    named = isinstance(model, (str, os.PathLike))
    if family == CALLABLE:  # a function takes none of them; a loaded model object named
        # module:obj (imported only then, as the run imports it) its own values
        from tiledepth.models import import_callable
        from tiledepth.models.base import _callable_name

        try:
            check_callable_options(os.fspath(model) if named else _callable_name(model), opts)
        except OptionError:
            imported = import_callable(os.fspath(model)) if named else None
            if not isinstance(imported, DepthModel):
                raise
            check_object_options(imported, opts)
    elif family in ("depth_anything", "depth_pro"):
        from tiledepth.models import _DETERMINISTIC
        from tiledepth.models.hf import check_deterministic_options

        # named as the run names it: the family by name, a loaded network by its class
        check_deterministic_options(_DETERMINISTIC[family] if named else type(model).__name__,
                                    steps=opts.steps, ensemble=opts.ensemble)
    elif family == "marigold" and named:
        _check_deterministic(opts, spec_of(model))


def _check_deterministic(opts: Options, spec) -> None:
    """Raise OptionError where a run refuses ``ensemble`` for the Marigold model ``opts``
    names, as its loader does: one that runs from zero noise (``marigold-e2e-ft``) repeats
    the same prediction. info estimated such an ensemble's time that the run refused."""
    noise = spec.options.get("noise") if spec is not None else None
    if noise is not None:
        from tiledepth.models.marigold_model import check_noise

        check_noise(noise, opts.ensemble)


def format_info(info: RasterInfo) -> str:
    """``tiledepth info``'s text: one ``key: value`` line per fact."""
    def size(n: float) -> str:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if n < 1024 or unit == "TiB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024
        return ""

    def duration(s: float) -> str:
        if s < 10:
            return f"{s:.2g} s"
        if s < 120:
            return f"{s:.0f} s"
        if s < 7200:
            return f"{s / 60:.0f} min"
        return f"{s / 3600:.1f} h"

    px = info.pixel_size
    lines = [
        f"file:            {redact(str(info.path))} ({info.driver})",  # no URL's secrets
        f"size:            {info.width} x {info.height} px "
        f"({info.width * info.height / 1e6:.1f} MP)",
        f"bands:           {info.count} ({', '.join(info.dtypes)}; "
        f"{', '.join(info.colorinterp)}); "
        + (f"the model sees {list(info.model_bands)}" if info.bands_refused is None
           else f"a run refuses them: {info.bands_refused}"),
        f"crs:             {info.crs or 'none'}",
        *([_values_line(info)] if any(info.descriptions) or any(info.band_units) else []),
        "pixel size:      " + (f"{px[0]:g} x {px[1]:g} {info.units or ''}".rstrip()
                               if px else _no_geotransform(info)),
        f"nodata:          {info.nodata}",
        f"masked:          {100 * info.masked_fraction:.1f}% (from a decimated mask)",
        "overviews:       " + (", ".join(str(f) for f in info.overviews) or "none"),
        f"blocks:          {info.block_shape[1]} x {info.block_shape[0]}",
        f"tile plan:       {info.grid_shape[1]} x {info.grid_shape[0]} = {info.tiles} tiles "
        f"of {info.tile_size} px, overlap {info.overlap:g} ({info.overlap_pixels} px); "
        f"about {info.empty_tiles} entirely masked (skipped)",
        f"coarse:          {info.coarse_shape[1]} x {info.coarse_shape[0]} px",
        "pyramid:         " + ("; ".join(f"a level of {side} px ({n} tiles)"
                                         for side, n in info.pyramid)
                               or "none (the coarse map is fine enough)"),
        f"scratch disk:    {size(info.scratch_bytes)} (peak, removed at the end unless "
        "--keep-predictions)",
        f"memory:          about {size(info.memory_bytes)} for the engine (measured peak, "
        "flat in raster size)",
        f"model:           {info.model}; memory: {info.model_memory}",
    ]
    if info.estimates:
        lines.append("time (estimate):")
        for dev, s in info.estimates.items():
            lines.append(f"  {dev + ':':<40} {duration(s)}")
    lines.append(f"basis:           {info.basis}")
    return "\n".join(lines)
