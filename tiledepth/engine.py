"""The engine: read -> tile -> infer -> align -> blend -> write, top to bottom.

:func:`run` processes a raster file into a GeoTIFF; :func:`estimate` processes
an in-memory array into an array. Both go through :func:`fuse`, which walks
the numbered steps over a reader (source of tiles), a sink (destination of
output windows) and a scratch store (tile predictions between the two).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth import align, blend
from tiledepth.errors import InputError, OptionError
from tiledepth.infer import infer_tiles, predict_image
from tiledepth.kinds import FIT_FOR_KIND, FITS, VALUES, kind_of
from tiledepth.models import load_model
from tiledepth.models.base import DepthModel
from tiledepth.options import Options, make_options
from tiledepth.read import ArrayReader, RasterReader, check_input_path
from tiledepth.scratch import DiskStore, MemoryStore
from tiledepth.tiling import Tile, earlier_neighbours, overlap_pixels, overlap_slices, tile_grid
from tiledepth.uncertainty import VALUES as uncertainty_values
from tiledepth.uncertainty import UncertaintyTap, uncertainty_output
from tiledepth.write import ArraySink, GeoTiffWriter, OutputGrid, check_output_path, default_output

__all__ = ["FuseResult", "RunResult", "estimate", "fuse", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FuseResult:
    """What :func:`fuse` did."""

    tiles: int
    skipped: int
    affines: dict[int, align.Affine1D]
    seconds: dict[str, float]
    scratch_bytes: int = 0


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
    """

    output: Path
    tiles: int
    skipped: int
    height: int
    width: int
    seconds: dict[str, float] = field(default_factory=dict)


def run(input: str | os.PathLike, output: str | os.PathLike | None = None, *,
        overwrite: bool = False, progress: bool = False, config: str | os.PathLike | None = None,
        **options: Any) -> RunResult:
    """Estimate a seamless depth map of a raster and write it as a GeoTIFF.

    Parameters
    ----------
    input : str or os.PathLike
        Any raster GDAL opens (GeoTIFF, JPEG, PNG, ...).
    output : str or os.PathLike, optional
        Output GeoTIFF; default ``<input stem>.depth.tif`` beside the input.
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show a progress bar on stderr.
    config : str or os.PathLike, optional
        YAML file of options; keyword options win over it.
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
    input = Path(input)
    check_input_path(input)
    output = default_output(input) if output is None else Path(output)
    check_output_path(input, output, overwrite=overwrite)
    if opts.uncertainty:
        check_output_path(input, uncertainty_output(output), overwrite=overwrite)
    scratch_parent = Path(opts.scratch) if opts.scratch is not None else output.parent

    with RasterReader(input, bands=opts.bands) as reader:
        grid = OutputGrid.from_dataset(reader.dataset)
        if grid.crs is None and not grid.gcps and grid.transform is not None:
            log.warning("%s has a transform but no CRS; the output will have none either", input)
        # 2. Load the model.
        model = _load(opts)
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
            "TILEDEPTH_VALUES": VALUES[kind],
        }
        with DiskStore(scratch_parent) as store, \
                GeoTiffWriter(output, grid, tags=tags, overwrite=overwrite) as sink, \
                contextlib.ExitStack() as extra:
            usink = ustore = None
            if opts.uncertainty:
                utags = dict(tags, TILEDEPTH_VALUES=uncertainty_values)
                usink = extra.enter_context(GeoTiffWriter(uncertainty_output(output), grid,
                                                          tags=utags, overwrite=overwrite))
                ustore = extra.enter_context(DiskStore(scratch_parent))
            result = fuse(reader, sink, model, opts, store, progress=progress, usink=usink,
                          ustore=ustore)
    seconds = dict(result.seconds, total=time.perf_counter() - t0)
    log.info("wrote %s (%d tiles, %.1f s)", output, result.tiles, seconds["total"])
    return RunResult(output=output, tiles=result.tiles, skipped=result.skipped,
                     height=grid.height, width=grid.width, seconds=seconds)


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
    if opts.uncertainty:
        raise OptionError("uncertainty: estimate() returns one array; use run() to write the "
                          "uncertainty raster")
    reader = ArrayReader(image, mask)
    sink = ArraySink(reader.height, reader.width)
    fuse(reader, sink, _load(opts), opts, MemoryStore(), progress=progress)
    return sink.array


def fuse(reader, sink, model: DepthModel, opts: Options, store, *,
         progress: bool = False, fit: str | None = None, usink=None,
         ustore=None) -> FuseResult:
    """The engine's core: every step from tiling to writing, over abstract I/O.

    Parameters
    ----------
    reader : RasterReader or ArrayReader
        ``height``, ``width``, ``read_tile(window)``, ``read_coarse(long_side)``.
    sink : GeoTiffWriter or ArraySink
        ``windows()`` and ``write(window, array)``.
    model : DepthModel
    opts : Options
    store : DiskStore or MemoryStore
        Holds tile predictions between inference and blending.
    progress : bool
        Show a tqdm bar over tiles on stderr.
    fit : {'scale_shift', 'scale', 'none'}, optional
        Per-tile alignment; default: the one for the model's output kind
        (:data:`tiledepth.kinds.FIT_FOR_KIND`).
    usink, ustore : optional
        Where the ensemble uncertainty is written and where its tiles wait
        (both or neither; the model must support ``predict_with_uncertainty``).
    """
    from tqdm.auto import tqdm

    fit = FIT_FOR_KIND[kind_of(model)] if fit is None else fit
    if fit not in FITS:
        raise OptionError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    tap = UncertaintyTap(model) if usink is not None else None

    seconds: dict[str, float] = {}
    height, width = reader.height, reader.width
    tick = time.perf_counter()

    # 1. Plan the tiles.
    grid = tile_grid(height, width, opts.tile_size, opts.overlap)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(opts.tile_size, opts.overlap)

    # 2. Coarse prediction of the whole image, the global reference.
    image, valid = reader.read_coarse(opts.coarse_long_side)  # (3, ch, cw), (ch, cw)
    if not valid.any():
        name = getattr(reader, "path", "the image")
        raise InputError(f"{name}: every pixel is masked (alpha, mask, nodata or NaN): "
                         "nothing to estimate")
    coarse = align.fill_invalid(predict_image(model, image, valid), valid)  # (ch, cw)
    del image, valid
    tick = _lap(seconds, "coarse", tick)

    # 3. Infer every tile; gather alignment statistics as tiles arrive.
    stats: dict[int, align.TileStats] = {}
    pairs: list[align.PairStats] = []
    skipped = 0
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress, leave=False)
    with bar:
        for tile, pred, valid in infer_tiles(tap or model, reader, tiles,
                                             batch_size=model.batch_size):
            bar.update(1)
            if pred is None:
                skipped += 1
                continue
            store.put(tile.id, pred, valid)
            if tap is not None:
                ustore.put(tile.id, tap.take(tile.id, tile.shape), valid)
            under = align.upsample_window(coarse, (height, width), tile.window)  # (h, w)
            stats[tile.id] = ts = align.tile_stats(tile.id, pred, valid, under)
            for other in earlier_neighbours(grid, tile):
                if other.id not in stats:
                    continue
                sl_other, sl_tile = overlap_slices(other, tile)
                other_pred, _ = store.get(other.id)
                pairs.append(align.pair_stats(stats[other.id], ts, other_pred[sl_other],
                                              pred[sl_tile], valid[sl_tile]))
    tick = _lap(seconds, "infer", tick)

    # 4. Align: one scale and shift per tile (a scale only for metric depth), solved globally.
    affines = align.solve_alignment(stats.values(), pairs,
                                    tile_area=float(opts.tile_size) ** 2,
                                    coarse_weight=opts.coarse_weight, fit=fit)
    del stats, pairs
    tick = _lap(seconds, "align", tick)

    # 5. Blend and write, one output window at a time.
    rows = [row[0].window.row_off for row in grid]
    cols = [t.window.col_off for t in grid[0]]
    t_h, t_w = grid[0][0].shape
    def parts(window):  # tiles under the window, loaded one at a time
        for tile in _touching(grid, rows, cols, t_h, t_w, window):
            if tile.id in affines:
                pred, valid = store.get(tile.id)
                a = affines[tile.id]
                yield tile, pred, valid, a.scale, a.shift

    for window in sink.windows():
        sink.write(window, blend.blend_window(window, parts(window), ramp=ramp))
    if tap is not None:  # the spread scales with |s| and ignores the shift
        def uparts(window):
            for tile in _touching(grid, rows, cols, t_h, t_w, window):
                if tile.id in affines:
                    spread, valid = ustore.get(tile.id)
                    yield tile, spread, valid, abs(affines[tile.id].scale), 0.0

        for window in usink.windows():
            usink.write(window, blend.blend_window(window, uparts(window), ramp=ramp))
    _lap(seconds, "blend_write", tick)
    scratch_bytes = store.disk_bytes() if hasattr(store, "disk_bytes") else 0
    return FuseResult(tiles=len(affines), skipped=skipped, affines=affines, seconds=seconds,
                      scratch_bytes=scratch_bytes)


def _touching(grid: list[list[Tile]], rows: list[int], cols: list[int], t_h: int, t_w: int,
              window) -> list[Tile]:
    """Tiles of the grid that intersect ``window`` (starts are sorted, sizes equal)."""
    r0, c0 = window.row_off, window.col_off
    r1, c1 = r0 + window.height, c0 + window.width
    ri = range(bisect_left(rows, r0 - t_h + 1), bisect_right(rows, r1 - 1))
    ci = range(bisect_left(cols, c0 - t_w + 1), bisect_right(cols, c1 - 1))
    return [grid[r][c] for r in ri for c in ci]


def _load(opts: Options) -> DepthModel:
    return load_model(opts.model, device=opts.device, dtype=opts.dtype, steps=opts.steps,
                      ensemble=opts.ensemble, seed=opts.seed, batch_size=opts.batch_size)


def _lap(seconds: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    seconds[name] = now - since
    return now
