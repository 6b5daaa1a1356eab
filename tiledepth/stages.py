"""The engine's stages between the coarse image and the written output.

Each stage takes the values it uses (data first, options keyword-only) and is
called once by :func:`tiledepth.engine.fuse`: :func:`read_coarse_image` and
:func:`coarse_prediction` on the anchor's thread while :func:`infer_and_gather`
predicts the tiles, then :func:`align_tiles`, :class:`TileParts` (the aligned
tiles, as blend parts) for the output values and :func:`blend_and_write`.
"""

from __future__ import annotations

import contextlib
import logging
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from rasterio.windows import Window

from tiledepth import fusion
from tiledepth.background import Ahead, Background, TileStatistics, overlap_stats
from tiledepth.errors import InputError, PersistentInputError
from tiledepth.infer import (
    RETRY_STRIDE,
    as_pool,
    coarse_key,
    in_flight_of,
    infer_tiles,
    predict_image,
    retry_key,
)
from tiledepth.metrics import value_range
from tiledepth.models.base import CallableModel, check_stop
from tiledepth.progress import progress_bar, status
from tiledepth.protocols import DepthModel, Reader, Sink, TileStore
from tiledepth.read import coarse_shape
from tiledepth.readers import ArrayReader, ScaledReader
from tiledepth.tiling import Tile, overlap_slices

__all__ = ["INFERRED", "LEAD_BATCHES", "RETRY_ATTEMPTS", "SUSPECT_ATTEMPT", "TileParts",
           "align_tiles", "keep_better_samples",
           "blend_and_write", "coarse_image_shape", "coarse_prediction", "gradient_correction",
           "infer_and_gather", "inferred", "predict_again", "read_coarse_image"]

log = logging.getLogger(__name__)

#: Called (in the run's own context) once a run's last tiles are near (:data:`LEAD_BATCHES`
#: batches of them left to predict): a pipelined batch (:mod:`tiledepth.batchrun`) starts
#: the next raster then, so that its first tiles wait for the model, not the model for
#: them. None: nothing to tell.
INFERRED: ContextVar[Callable[[], None] | None] = ContextVar("tiledepth_inferred",
                                                            default=None)
#: Batches of tiles a run still has to predict when it calls :func:`inferred`: the next
#: raster's head (open, read the coarse image, read its first tiles) runs meanwhile.
LEAD_BATCHES = 4

#: A flagged tile is predicted again (``retry_flagged``) at most this many times: once, and
#: again while its latest sample is judged inconsistent too. A model whose calls fail
#: independently, one in ten, leaves one tile in 1000 filled from the anchor instead of one
#: in 100: on the fusion benchmark's gigapixel geometry (630-750 tiles of 32 px, 10 % gross)
#: a second call left 3-6 tiles per run filled, and a fill from an anchor 5.6x coarser,
#: on a depth edge, made an exactly consistent model's NRMSE up to 2.9x its clean run's
#: (BENCHMARKS.md, issue 17). A failure tied to the content (the same prediction again)
#: ends the retries at once. A third call was tried and not kept: each call is another
#: chance for a wrong sample to pass the strict judgement, and a clean run of the audit
#: model ``clipped`` got 8.6 % worse (BENCHMARKS.md, sixteenth session).
RETRY_ATTEMPTS = 2
#: The attempt (:func:`tiledepth.infer.retry_key`) of a suspect tile's second call
#: (:func:`keep_better_samples`): after the flagged tiles' own, so that a suspect flagged
#: later still gets new samples of its own.
SUSPECT_ATTEMPT = RETRY_ATTEMPTS + 1


def inferred() -> None:
    """Tell whoever set :data:`INFERRED` that this run's model calls are nearly done."""
    hook = INFERRED.get()
    if hook is not None:
        hook()


def coarse_image_shape(height: int, width: int, *, long_side: int,
                       levels: list[int]) -> tuple[int, int]:
    """The shape (ch, cw) of :func:`read_coarse_image`'s image of a ``height`` x ``width``
    raster: the one place it is computed, so that what must match the coarse map (a
    reference anchor, :meth:`tiledepth.calibrate.Target.for_run`) is read at it.

    Without ``levels``, :func:`tiledepth.read.coarse_shape`; with them, the coarse shape of
    the finest level's copy, which the image is read from: rounded twice, it differs by a
    row or a column for about one raster in ten. ``height`` and ``width`` are the raster's
    that the reader's ``read_coarse`` reads (a :class:`tiledepth.readers.ScaledReader`'s
    base's: the run's grid), ``levels`` those :func:`tiledepth.plan.fusion_levels` plans.

    Examples
    --------
    >>> coarse_image_shape(375, 512, long_side=32, levels=[])
    (23, 32)
    >>> coarse_image_shape(375, 512, long_side=32, levels=[128])  # through (94, 128)
    (24, 32)
    """
    if levels:
        height, width = coarse_shape(height, width, levels[-1])
    return coarse_shape(height, width, long_side)


def read_coarse_image(reader: Reader, *, long_side: int, levels: list[int]):
    """The whole image at most ``long_side`` a side, and the source the pyramid reads.

    With pyramid ``levels``, the raster is read once at the finest level's size;
    the levels and the coarse image come from that copy in memory.

    Returns
    -------
    source : Reader
        ``reader``, or the copy in memory.
    image : ndarray of shape (3, ch, cw), float32
        (ch, cw): :func:`coarse_image_shape` of the raster ``reader`` reads.
    valid : ndarray of shape (ch, cw), bool
    """
    source = reader
    if levels:
        small, small_valid = reader.read_coarse(levels[-1])  # (3, lh, lw), (lh, lw)
        source = ArrayReader(np.moveaxis(small, 0, -1), small_valid)
        del small, small_valid
    image, valid = source.read_coarse(long_side)  # (3, ch, cw), (ch, cw)
    if not valid.any():
        raise InputError(f"{getattr(reader, 'path', 'the image')}: every pixel is masked "
                         "(alpha, mask or nodata): nothing to estimate; check the nodata value "
                         "or the alpha band")
    return source, image, valid


def coarse_prediction(model: DepthModel, image: np.ndarray, valid: np.ndarray, *,
                      store: TileStore, target: Any, spreads: TileStore | None = None,
                      progress: bool = False, calls: int = 1) -> np.ndarray:
    """The anchor of the fusion: the model's prediction of the coarse image (kept in
    ``store``, taken from it when resumed), holes filled, or ``target``'s reference.

    With ``calls`` over 1 the coarse image is predicted that many times (keys
    :func:`tiledepth.infer.coarse_key`) and the calls combined into one map
    (:func:`tiledepth.fusion.anchor_of_calls`); a reference anchor needs one call only, and
    a model whose second call repeats its first exactly (Depth Anything, Depth Pro, most
    Python callables) makes no more: its one call is the anchor.

    Returns
    -------
    ndarray of shape (ch, cw), float32, no NaN
    """
    coarse = store.get_coarse()
    calls = 1 if getattr(target, "anchor_heights", None) is not None else calls
    if coarse is None or coarse.shape != valid.shape:
        with status(f"coarse prediction ({image.shape[2]} x {image.shape[1]} px"
                    f"{f', {calls} calls' if calls > 1 else ''})",
                    enabled=progress and not isinstance(model, CallableModel)):
            predictions = [predict_image(model, image, valid)]  # (ch, cw) each
            repeated = False
            for k in range(1, calls):
                again = predict_image(model, image, valid, key=coarse_key(k))
                if k == 1 and np.array_equal(again, predictions[0], equal_nan=True):
                    repeated = True  # its calls repeat: a third would too; the anchor is
                    break  # its one call, to the bit
                predictions.append(again)
        made = len(predictions) + repeated
        coarse = fusion.fill_invalid(fusion.anchor_of_calls(predictions, valid), valid)
        store.put_coarse(coarse)
        if spreads is not None:  # the model is an UncertaintyTap: drop the coarse spreads
            # (an --uncertainty run never resumes: its coarse call is always made here)
            for k in range(made):
                model.take(coarse_key(k), coarse.shape)
    # The anchor: the reprojected reference instead, with anchor="reference".
    return target.anchor(coarse)  # (ch, cw)


def infer_and_gather(model: DepthModel, reader: Reader, grid: list[list[Tile]],
                     store: TileStore, *, anchor: Ahead,
                     statistics: Callable[[np.ndarray], TileStatistics], workers: int = 0,
                     spreads: TileStore | None = None, progress: bool = False,
                     last: bool = False):
    """Infer every tile not in ``store`` and store it; gather each tile's alignment
    statistics once the anchor exists.

    The tiles' model calls start as soon as ``anchor`` (the coarse map, being made on
    a thread of its own) clears the way, the room on the disks checked: while it reads
    and predicts the coarse image, since only alignment needs it. The tiles predicted
    before it exists wait in ``store`` (in memory up to its budget); then
    ``statistics(coarse)`` gathers theirs, in tile order, and each later tile's as it
    arrives (in background threads while the model runs, with ``workers`` > 0).
    ``last``: the run's last use of the model (not a pyramid level's): say so, through
    :func:`inferred`, once :data:`LEAD_BATCHES` batches of tiles are left to predict. The
    anchor's blur, where automatic, is picked on the first tiles (see
    :class:`tiledepth.background.TileStatistics`).

    Returns
    -------
    stats : TileTable
    pairs : PairTable
    skipped : int
        Tiles whose pixels are all masked.
    blur : float
        The anchor blur the statistics were taken with.
    """
    tiles = [t for row in grid for t in row]
    lead, told = LEAD_BATCHES * model.batch_size, not last
    pool, local = as_pool(model)
    skipped, gather = 0, None
    early: deque[Tile] = deque()  # predicted before the anchor existed, statistics to gather
    with contextlib.ExitStack() as stack:
        if local:
            stack.callback(pool.close)
        bar = stack.enter_context(progress_bar(len(tiles), enabled=progress, desc="tiles"))
        arrivals = stack.enter_context(contextlib.closing(infer_tiles(
            _Gated(pool, anchor.wait_clear), reader, tiles, batch_size=model.batch_size,
            workers=workers, stored=store)))
        for n, (tile, pred, valid) in enumerate(arrivals, 1):
            bar.update(1)
            if not told and len(tiles) - n <= lead:  # a pipelined batch: the next raster
                inferred()
                told = True
            if pred is None:
                skipped += 1
                continue
            if tile.id not in store:
                store.put(tile.id, pred, valid)
                if spreads is not None:
                    spreads.put(tile.id, model.take(tile.id, tile.shape), valid)
            if gather is None and anchor.done():
                gather = stack.enter_context(statistics(anchor.result()))
            if gather is not None and not early:
                gather.add(tile, pred, valid)
                continue
            early.append(tile)
            if gather is not None:  # catching up, two for each new tile: the model is fed
                _add_stored(gather, early, store, 2)
        if not told:
            inferred()
        if gather is None:
            gather = stack.enter_context(statistics(anchor.result()))
        if skipped == len(tiles) and isinstance(reader, ScaledReader):
            # the input has valid pixels (the anchor, read at the full resolution's
            # validity, found some), but none is left on --scale's reduced grid, whose
            # validity is one sample per pixel: the output would be NaN throughout
            raise PersistentInputError(f"{reader.path}: its valid pixels are too thin to "
                                       f"survive "
                             f"--scale {reader.scale:g} (every pixel of the reduced grid is "
                             "masked); raise --scale")
        _add_stored(gather, early, store, len(early))
    return gather.stats, gather.pairs, skipped, gather.blur


def _add_stored(gather: TileStatistics, early: deque[Tile], store: TileStore,
                count: int) -> None:
    """Add the first ``count`` tiles of ``early`` to ``gather``, their parts from ``store``."""
    for _ in range(min(count, len(early))):
        tile = early.popleft()
        gather.add(tile, *store.get(tile.id))


class _Gated:
    """A model pool whose first submission waits for ``gate()`` (which may raise)."""

    def __init__(self, pool: Any, gate: Callable[[], None]) -> None:
        self.pool, self.gate = pool, gate
        self.in_flight = in_flight_of(pool)

    def submit(self, batch: np.ndarray, keys: list[int]) -> Any:
        if self.gate is not None:
            self.gate()
            self.gate = None
        return self.pool.submit(batch, keys)

    def result(self, handle: Any) -> np.ndarray:
        return self.pool.result(handle)


def predict_again(model: DepthModel, reader: Reader, grid: list[list[Tile]], store: TileStore,
                  ids: Collection[int] | Mapping[int, int], *, stats: fusion.TileTable,
                  pairs: fusion.PairTable, coarse: np.ndarray, alignment: str, blur: float,
                  workers: int = 0, spreads: TileStore | None = None, progress: bool = False,
                  weighting: str = "uniform", ramp: int = 0,
                  current: Mapping[int, int] | None = None,
                  desc: str = "flagged tiles again"):
    """A second model call of the tiles ``ids`` (flagged inconsistent), and the alignment
    statistics with their new predictions.

    The tiles are read and predicted again through the tiles' own path
    (:func:`tiledepth.infer.infer_tiles`, batched, in the model's turn), each keyed
    :func:`tiledepth.infer.retry_key` ``(id, 1)``: a model that seeds its noise per key
    (Marigold) draws a new sample. The new prediction is kept in ``store`` under that key,
    beside the first (a resumed run finds both, and ends as an uninterrupted one); where
    ``store`` holds it already it is not predicted again. Each tile's statistics, and those
    of its overlaps, are taken again from the new prediction (rows replaced in place: the
    other rows, and their order, unchanged). A prediction equal to the first changes
    nothing.

    Parameters
    ----------
    model, reader, grid, store
        As in :func:`infer_and_gather`.
    ids : collection of int, or mapping of int to int
        The tiles to predict again; a mapping: tile id -> its attempt (``retry_key``'s,
        default 1).
    stats, pairs : TileTable, PairTable
        Every tile's statistics, as :func:`infer_and_gather` gathered them.
    coarse : ndarray of shape (ch, cw)
    alignment : str
        The statistics' value map (``affine`` or ``bilinear``).
    blur : float
        The anchor blur the statistics were taken with.
    workers, spreads, progress
        As in :func:`infer_and_gather`.
    weighting, ramp : str, int
        How the overlaps' pixels are weighted, as the statistics were gathered
        (:class:`tiledepth.background.TileStatistics`).
    current : mapping of int to int, optional
        Tiles predicted again before (an earlier attempt): tile id -> the store key of the
        prediction their statistics hold (their overlaps with the tiles of ``ids`` are
        taken with it).
    desc : str
        The progress bar's label.

    Returns
    -------
    stats : TileTable
    pairs : PairTable
    retried : dict of int to int
        Tile id -> the store key of its new prediction, for the tiles whose new prediction
        differs from the first (and from its ``current`` one).
    """
    by_id = {t.id: t for row in grid for t in row}
    attempts = ids if isinstance(ids, Mapping) else dict.fromkeys(ids, 1)
    again = [replace(by_id[i], id=retry_key(i, attempts[i])) for i in sorted(attempts)]
    shape = (reader.height, reader.width)
    retried: dict[int, int] = {}
    with progress_bar(len(again), enabled=progress, desc=desc) as bar:
        for key_tile, pred, valid in infer_tiles(model, reader, again,
                                                 batch_size=model.batch_size,
                                                 workers=workers, stored=store):
            bar.update(1)
            tile = by_id[key_tile.id % RETRY_STRIDE]
            if pred is None:
                continue
            if key_tile.id not in store:
                store.put(key_tile.id, pred, valid)
                if spreads is not None:
                    spreads.put(key_tile.id, model.take(key_tile.id, tile.shape), valid)
            earlier = {tile.id, (current or {}).get(tile.id, tile.id)}  # first, latest
            if not any(np.array_equal(pred, store.get(k)[0]) for k in earlier):
                retried[tile.id] = key_tile.id
    if not retried:
        return stats, pairs, retried
    # The new predictions are read back from the store, under their retry keys, where they
    # are needed, as every other tile is: held all at once, a run retrying many tiles
    # would hold them beyond --memory.
    row_of = {int(i): k for k, i in enumerate(stats.column("id"))}
    spread = value_range(coarse)  # as TileStatistics takes it
    tile_rows = {row_of[i]: fusion.blurred_tile_stats(
        i, *store.get(key), by_id[i].window, shape, coarse, alignment=alignment,
        blurs=(blur,), anchor_range=spread if spread > 0 else 1.0)[0]
        for i, key in retried.items()}
    stats = fusion.replace_rows(stats, tile_rows)
    changed = np.isin(pairs.column("i"), list(retried)) \
        | np.isin(pairs.column("j"), list(retried))
    pair_rows = {}
    key_of = {**(current or {}), **retried}  # each tile's prediction in use
    for k in np.flatnonzero(changed):
        p = pairs.row(int(k))
        ti, tj = by_id[p.i], by_id[p.j]
        sl_i = overlap_slices(ti, tj)[0]
        part_i = store.get_pred(key_of.get(p.i, p.i), sl_i)
        pred_j, valid_j = store.get(key_of.get(p.j, p.j))
        pair_rows[int(k)] = overlap_stats(ti, tj, stats.row(row_of[p.i]), stats.row(row_of[p.j]),
                                          part_i, pred_j, valid_j, weighting=weighting,
                                          ramp=ramp)
    return stats, fusion.replace_rows(pairs, pair_rows), retried


def keep_better_samples(model: DepthModel, reader: Reader, grid: list[list[Tile]],
                        store: TileStore, suspects: Mapping[int, float], *,
                        stats: fusion.TileTable, pairs: fusion.PairTable, maps: dict,
                        coarse: np.ndarray, alignment: str, blur: float, workers: int = 0,
                        progress: bool = False, weighting: str = "uniform", ramp: int = 0,
                        flagged: Collection[int] = (), spreads: TileStore | None = None,
                        keep_at: float | None = None):
    """A second call of suspect tiles (not flagged, followed weakly by their neighbours: a
    pyramid level's, :func:`tiledepth.fusion.diagnosis.level_suspects`, or the full
    resolution's, :func:`~tiledepth.fusion.diagnosis.tile_suspects`), each kept where its
    neighbours follow the new sample well (``keep_at``: no longer suspect).

    Another scene's content (a gross error of the model's) agrees with its neighbours by chance
    as well as a clean tile can (a level's tile has few overlaps), and no threshold tells them
    apart: a second sample does. A clean tile's second sample is another clean one (kept or
    not, nothing is lost); a model that repeats itself gives the same prediction, and nothing
    changes. The new predictions are kept in ``store`` under :data:`SUSPECT_ATTEMPT`'s keys.

    Parameters
    ----------
    model, reader, grid, store, stats, pairs, coarse, alignment, blur, workers, progress,
    weighting, ramp
        As in :func:`predict_again`.
    suspects : mapping of int to float
        Tile id -> its agreement with its neighbours (the first sample's).
    maps : dict of int to Affine1D or AffineField
        The solved maps the agreements are signed by (the first samples').
    flagged : collection of int
        The flagged tiles, whose overlaps the agreements leave out (as the suspects' did).
    spreads : TileStore, optional
        The tiles' uncertainty (as in :func:`predict_again`): the new samples' kept beside them.
    keep_at : float, optional
        The agreement a new sample needs to be kept (default ``SUSPECT_CORR``, a level's).

    Returns
    -------
    stats : TileTable
    pairs : PairTable
    kept : dict of int to int
        Tile id -> the store key of the second sample kept.
    """
    ids = dict.fromkeys(suspects, SUSPECT_ATTEMPT)
    keep_at = fusion.diagnosis.SUSPECT_CORR if keep_at is None else keep_at
    tried, tried_pairs, new = predict_again(
        model, reader, grid, store, ids, stats=stats, pairs=pairs, coarse=coarse,
        alignment=alignment, blur=blur, workers=workers, progress=progress,
        weighting=weighting, ramp=ramp, spreads=spreads, desc="weakly followed tiles again")
    if not new:  # the same predictions again (a deterministic model)
        return stats, pairs, {}
    # kept where its neighbours follow it well (not suspect any more): merely better than the
    # first is not enough, another scene's content can agree by chance better than a clean
    # sample that its neighbours follow weakly (a depth edge, a warp)
    agree = fusion.diagnosis.level_agreements(tried, tried_pairs, maps, leave_out=flagged)
    better = {i for i in new if agree.get(i, np.nan) >= keep_at}
    if better == set(new):
        return tried, tried_pairs, new
    if not better:
        return stats, pairs, {}
    # some kept, some not: the statistics again of the kept ones alone, from the store (no call)
    stats, pairs, kept = predict_again(
        model, reader, grid, store, {i: SUSPECT_ATTEMPT for i in better}, stats=stats,
        pairs=pairs, coarse=coarse, alignment=alignment, blur=blur, workers=workers,
        weighting=weighting, ramp=ramp, spreads=spreads)
    return stats, pairs, kept


def align_tiles(stats: fusion.TileTable, pairs: fusion.PairTable, *,
                coarse: np.ndarray, tile_size: int, coarse_weight: float, fit: str,
                robust: bool, estimate_weights: bool = False,
                bend_from_anchor: bool = False, rejudge: Collection[int] | None = None,
                filled: Collection[int] = (), level: bool = False):
    """A value map per tile, solved globally and robustly; how consistent the tiles
    are, which are outliers, and which are filled from the coarse prediction.

    ``rejudge`` and ``filled``: a second round, after :func:`predict_again` (see
    :func:`tiledepth.fusion.solve_and_fill`); ``level``: the tiles of a pyramid level
    (judged also by whether their neighbours follow them, whatever the anchor shows).

    Returns
    -------
    affines : dict of int to Affine1D or AffineField
    diagnosis : Diagnosis
    replaced : set of int
    """
    spread = value_range(coarse)  # the fused map's frame, 1.0 where it has none
    affines, diagnosis, replaced = fusion.solve_and_fill(
        stats, pairs, tile_area=float(tile_size) ** 2,
        coarse_weight=coarse_weight, fit=fit, robust=robust, estimate_weights=estimate_weights,
        bend_from_anchor=bend_from_anchor, rejudge=rejudge, filled=filled, level=level,
        value_range=spread if spread > 0 else 1.0)
    if diagnosis.flagged:
        log.warning("%d of %d tiles flagged as outliers (%s)%s", len(diagnosis.flagged),
                    len(affines), ", ".join(sorted(set(diagnosis.flagged.values()))),
                    "; inconsistent ones filled from the coarse prediction" if replaced else "")
    return affines, diagnosis, replaced


@dataclass(frozen=True)
class TileParts:
    """The aligned tiles of a fusion, as :class:`tiledepth.fusion.BlendPart` s.

    Attributes
    ----------
    grid : list of list of Tile
    affines : dict of int to Affine1D or AffineField
        Each fused tile's value map (tiles all masked have none).
    replaced : collection of int
        Tiles filled from the coarse prediction, which yield to their neighbours.
    store : TileStore
        The tiles' predictions.
    coarse : ndarray of shape (ch, cw)
    shape : tuple of int
        (height, width) of the raster.
    correction : ndarray of shape (ch, cw), optional
        The gradient-domain fusion's correction on the anchor's grid
        (:func:`gradient_correction`), added upsampled to the blend; None: none.
    retried : dict of int to int
        Tiles predicted again (:func:`predict_again`): tile id -> the store key of the
        prediction used (and of its spread).
    """

    grid: list[list[Tile]]
    affines: dict[int, Any]
    replaced: Collection[int]
    store: TileStore
    coarse: np.ndarray
    shape: tuple[int, int]
    correction: np.ndarray | None = None
    retried: dict[int, int] = field(default_factory=dict)

    def under(self, window: Window | None = None, *, source: TileStore | None = None,
              spread: bool = False) -> Iterator[fusion.BlendPart]:
        """The parts of the tiles under ``window`` (None: all), in tile order.

        ``source`` and ``spread``: the tiles' uncertainty from ``source``, scaled by
        ``|scale|`` and never shifted.
        """
        source = self.store if source is None else source
        for tile in self._touching(window):
            if tile.id not in self.affines:
                continue
            pred, valid = source.get(self.retried.get(tile.id, tile.id))
            scale, shift = self.affines[tile.id].fields(tile.shape)
            if spread and tile.id in self.replaced:  # as band 1: yields to the neighbours,
                # and in the accepted tiles' frame (its own fit was rejected: meaningless)
                yield fusion.BlendPart(tile, pred, valid, self._fill_scale, 0.0,
                                       fusion.FILL_WEIGHT)
            elif spread:
                yield fusion.BlendPart(tile, pred, valid, abs(scale), 0.0)
            elif tile.id in self.replaced:  # the coarse map, yielding to the neighbours
                yield fusion.BlendPart(tile, self._filled(tile, pred, valid), valid, 1.0, 0.0,
                                       fusion.FILL_WEIGHT)
            else:
                yield fusion.BlendPart(tile, pred, valid, scale, shift)

    def _filled(self, tile: Tile, pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """A filled tile's values (:func:`tiledepth.fusion.fill_values`), judged once per
        fusion: every window it touches blends the same. Only a tile over a wrong patch of
        the coarse map keeps its values (one float32 tile each, for the fusion; rare: one
        run of the fusion benchmark's 156 had one), the others take the coarse map,
        upsampled again per window, so the fills of ordinary runs hold no memory."""
        if tile.id not in self._fills:  # (two threads may both judge it: the same values)
            self._fills[tile.id] = fusion.fill_values(
                pred, valid, tile.window, self.shape, self.coarse, value_range=self._range)
        values = self._fills[tile.id]
        return fusion.upsample_window(self.coarse, self.shape, tile.window) \
            if values is None else values

    @cached_property
    def _fills(self) -> dict[int, np.ndarray | None]:
        """Filled tile id -> its values where they are not the coarse map's, else None."""
        return {}

    @cached_property
    def _range(self) -> float:
        """The coarse map's value range, as the fusion's diagnosis takes it."""
        return value_range(self.coarse)

    # once per fusion, not per window and filled tile: kept in the instance's __dict__ (a
    # frozen dataclass without slots has one); dataclasses.replace's copy starts afresh
    @cached_property
    def _fill_scale(self) -> float:
        """The median |scale| of the tiles not filled (1.0 where none is): the map of a
        filled tile's spread to the fused frame."""
        scales = [abs(float(a.scale)) for i, a in self.affines.items() if i not in self.replaced]
        return float(np.median(scales)) if scales else 1.0

    def sample(self, rows: np.ndarray, cols: np.ndarray, *, points: bool,
               ramp: int) -> np.ndarray:
        """The fused map at a lattice (sorted ``rows``, ``cols``), or at ``points``."""
        sample = fusion.blend_points if points else fusion.blend_lattice
        fused = sample(rows, cols, self.under(None), ramp=ramp)
        if self.correction is not None:
            at = (rows, cols) if points else np.meshgrid(rows, cols, indexing="ij")
            fused += fusion.correction_at(self.correction, self.shape, *at)
        return fused

    def blend(self, window: Window, *, ramp: int) -> np.ndarray:
        """The fused map over ``window``: the blended tiles, plus the correction."""
        fused = fusion.blend_window(window, self.under(window), ramp=ramp)  # (h, w)
        if self.correction is not None:
            fused += fusion.upsample_window(self.correction, self.shape, window)
        return fused

    def _touching(self, window: Window | None) -> list[Tile]:
        """Tiles of the grid that intersect ``window`` (starts are sorted, sizes equal)."""
        if window is None:
            return [t for row in self.grid for t in row]
        rows = [row[0].window.row_off for row in self.grid]
        cols = [t.window.col_off for t in self.grid[0]]
        t_h, t_w = self.grid[0][0].shape
        r0, c0 = window.row_off, window.col_off
        r1, c1 = r0 + window.height, c0 + window.width
        ri = range(bisect_left(rows, r0 - t_h + 1), bisect_right(rows, r1 - 1))
        ci = range(bisect_left(cols, c0 - t_w + 1), bisect_right(cols, c1 - 1))
        return [self.grid[r][c] for r in ri for c in ci]


def gradient_correction(parts: TileParts, *, ramp: int, blur: float | None, tile_size: int,
                        anchor_call: int) -> tuple[TileParts, dict[str, Any]]:
    """``parts`` with the gradient-domain fusion's correction
    (:func:`tiledepth.fusion.gradient.correction`): the anchor's low frequencies, the
    tiles' detail, with the crossover wavelength of the geometry and the anchor's blur
    (:func:`tiledepth.fusion.gradient.crossover`); and what the sidecar records of it.

    ``blur``: the anchor's, in its pixels; None: measured against the tiles
    (:func:`tiledepth.fusion.gradient.estimate_blur`). ``anchor_call``: the side, in
    anchor pixels, of the model calls the anchor was made of (its own long side for one
    prediction or a reference, the tile size for a pyramid level). Where the crossover is
    longer than ``CROSSOVER_MAX_CALL`` of it, the anchor is not trusted there: ``parts``
    unchanged.
    """
    from tiledepth.fusion import gradient

    cells = tile_size * max(parts.coarse.shape) / max(parts.shape)  # anchor cells a tile
    report: dict[str, Any] = {"method": "gradient"}
    longest = gradient.CROSSOVER_MAX_CALL * anchor_call
    if gradient.crossover(cells, blur or 0.0) > longest:  # even at the least blur
        report["skipped"] = (f"the anchor's calls ({anchor_call} px) are under "
                             f"{1 / gradient.CROSSOVER_MAX_CALL:g}x the crossover: "
                             "the tiles blended")
        _warn_skipped(anchor_call, gradient.crossover(cells, blur or 0.0), cells, blur,
                      measured=False)
        return parts, report
    spread = value_range(parts.coarse)
    spread = spread if spread > 0 else 1.0
    v, used, wavelength = gradient.correction(
        parts.under(None), parts.coarse, parts.shape, ramp=ramp, cells_per_tile=cells,
        blur=blur, profiles=gradient.weight_profiles(parts.grid, parts.shape, ramp),
        value_range=spread)
    report.update(crossover_cells=round(wavelength, 3), anchor_blur=used,
                  anchor_blur_measured=blur is None)
    if wavelength > longest:
        report["skipped"] = (f"the anchor's calls ({anchor_call} px) are under "
                             f"{1 / gradient.CROSSOVER_MAX_CALL:g}x the crossover: "
                             "the tiles blended")
        _warn_skipped(anchor_call, wavelength, cells, used, measured=blur is None)
        return parts, report
    report["correction_rms"] = round(float(np.sqrt(np.mean(v.astype(np.float64) ** 2)))
                                     / spread, 6)
    return replace(parts, correction=v), report


def _warn_skipped(anchor_call: int, wavelength: float, cells: float, blur: float | None, *,
                  measured: bool) -> None:
    """Warn that the gradient-domain fusion of the output was skipped (the output is then
    ``--fusion tiles``'s, which only the sidecar's ``fusion`` said), why, and what to change.

    Once a run: not for a pyramid level's fusion (the anchor's part of the run,
    :data:`tiledepth.turns.PHASE` 0), whose skip changes the anchor only; where the
    output's is skipped too, that one says so."""
    from tiledepth.fusion import gradient
    from tiledepth.turns import PHASE

    if PHASE.get() == 0:
        return
    times = 1 / gradient.CROSSOVER_MAX_CALL
    blur = blur or 0.0
    if gradient.CROSSOVER_BLURS * blur >= wavelength:  # the anchor's blur sets it
        why = (f"{gradient.CROSSOVER_BLURS:.0f}x the anchor's blur of {blur:g} px, "
               + ("measured" if measured else "--anchor-blur"))
        fix = ("a larger --coarse-size (or --tile-size, where pyramid levels make the "
               "anchor) for longer anchor calls" if measured else
               f"--anchor-blur under {anchor_call / (times * gradient.CROSSOVER_BLURS):.2g} "
               "(or auto)")  # (the blur whose crossover is half the calls)
    else:
        why, fix = (f"{gradient.CROSSOVER_TILES:g} of a tile's {cells:.0f} anchor px",
                    "a larger --coarse-size for longer anchor calls")
    log.warning("fusion gradient (--fusion gradient) skipped: the anchor's calls (%d px) are "
                "under %gx the crossover (%.0f px, %s); the output is the tiles blended, as "
                "with --fusion tiles; for the gradient fusion give %s, or pass --fusion tiles",
                anchor_call, times, wavelength, why, fix)


def blend_and_write(sink: Sink, parts: TileParts, values: Any, *, ramp: int,
                    spreads: TileStore | None = None, threads: int = 0) -> None:
    """Blend the parts one output window at a time, map them to the output ``values``
    and write them (in a background thread with ``threads``); the spread to band 2."""
    with Background(sink.write, threads=threads) as write:
        for window in sink.windows():
            check_stop()  # a run that is ending (a batch's Ctrl-C) stops between windows
            fused = parts.blend(window, ramp=ramp)  # (h, w)
            write(window, values.apply(fused))
            if spreads is not None:
                spread = fusion.blend_window(window, parts.under(window, source=spreads,
                                                                 spread=True), ramp=ramp)
                write(window, values.apply_uncertainty(fused, spread), 2)
