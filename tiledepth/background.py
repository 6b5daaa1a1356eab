"""Threads and queues of the engine: background calls, the anchor, the tiles' statistics.

:class:`Background` runs a function on a background thread with a short queue
(the engine's writes); :class:`Ahead` computes one value (the anchor of the fusion)
on a thread of its own while the caller goes on (the tiles' model calls);
:class:`TileStatistics` gathers the alignment statistics of tiles as inference
yields them, on threads while the model works. All give the same results with
threads as without (every call inline).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from tiledepth import fusion
from tiledepth.fusion.coarse import BLUR_CANDIDATES, pick_blur
from tiledepth.fusion.maps import corner_count
from tiledepth.metrics import value_range
from tiledepth.models.base import also_stopped_by, stop_event, with_torch_modes
from tiledepth.protocols import TileStore
from tiledepth.tiling import Tile, earlier_neighbours, overlap_slices

__all__ = ["BLUR_SAMPLE", "Ahead", "Background", "TileStatistics", "overlap_stats",
           "result_in_steps", "wait_in_steps"]

#: An automatic anchor blur is picked on this many tiles, the first in tile order (their
#: statistics kept for every candidate blur meanwhile); later tiles get the blur picked.
BLUR_SAMPLE = 64


class Background:
    """Call ``fn`` in a background thread, at most ``2`` calls queued; 0 threads: inline.

    With one thread the calls run in order. Exceptions of a background call are
    raised by the next call or on exit.

    Examples
    --------
    >>> seen = []
    >>> with Background(seen.append, threads=1) as call:
    ...     for i in range(5):
    ...         call(i)
    >>> seen
    [0, 1, 2, 3, 4]
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


def wait_in_steps(future: Future) -> None:
    """Wait until ``future`` is done, in short steps (blocking, not spinning): a Ctrl-C
    reaches the waiting thread at once, not when the work it waits for ends."""
    while not wait([future], timeout=0.1)[0]:
        pass


def result_in_steps(future: Future) -> Any:
    """``future``'s result, waited for in short steps (:func:`wait_in_steps`)."""
    wait_in_steps(future)
    return future.result()


class Ahead:
    """``fn(clear)`` computed on a thread of its own while the caller goes on; inline
    (in the constructor, its errors raised there) with ``thread`` False.

    ``fn`` calls ``clear()`` to say that the caller may go on to its next gate
    (:meth:`wait_clear`: the room on the disks is checked); its end opens the gate
    too, also on an error. It runs in a copy of the caller's context with ``values``
    set (:data:`tiledepth.turns.PHASE`) and a stop event that :meth:`close` sets: a
    model call polls it (:func:`tiledepth.models.base.check_stop`), so a run that
    fails or is interrupted ends ``fn`` at its next model step.

    Examples
    --------
    >>> ahead = Ahead(lambda clear: 6 * 7)
    >>> ahead.wait_clear(); ahead.result()
    42
    >>> ahead.close()
    """

    def __init__(self, fn: Callable[[Callable[[], None]], Any], *, thread: bool = True,
                 values: dict[contextvars.ContextVar, Any] | None = None) -> None:
        self.cleared = threading.Event()
        self.stop = threading.Event()
        self._future: Future = Future()
        self._thread: threading.Thread | None = None
        context = contextvars.copy_context()
        context.run(stop_event().set, also_stopped_by(self.stop))
        for var, value in (values or {}).items():
            context.run(var.set, value)
        if not thread:
            self._future.set_result(context.run(fn, self.cleared.set))
            self.cleared.set()
            return
        # (with the caller's torch grad and inference modes, which torch keeps per thread)
        self._thread = threading.Thread(target=context.run,
                                        args=(with_torch_modes(self._run), fn),
                                        name="tiledepth-anchor", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[Callable[[], None]], Any]) -> None:
        try:
            self._future.set_result(fn(self.cleared.set))
        except BaseException as exc:  # raised to the caller by result()
            self._future.set_exception(exc)
        finally:
            self.cleared.set()

    def done(self) -> bool:
        """Whether ``fn`` has ended."""
        return self._future.done()

    def wait_clear(self) -> None:
        """Wait (in short steps: Ctrl-C reaches a waiting thread) until ``fn`` clears the
        way or ends; raise its error if it failed."""
        while not self.cleared.wait(0.1):
            pass
        if self._future.done() and self._future.exception() is not None:
            self._future.result()

    def result(self) -> Any:
        """Wait (in short steps) for ``fn``'s value; raise its error."""
        return result_in_steps(self._future)

    def close(self) -> None:
        """Stop ``fn`` at its next model step if it is still running; wait for its thread."""
        if self._thread is None:
            return
        self.stop.set()
        while self._thread.is_alive():
            self._thread.join(0.1)
        self._thread = None


class TileStatistics:
    """Alignment statistics of the tiles, added one tile at a time, in tile order.

    :meth:`add` gathers a tile's statistics against the coarse prediction under
    it and those of its overlaps with the earlier tiles (their parts read from
    ``store``). With ``threads``, the tiles' own statistics are computed by that
    many threads at once and the overlaps by one more, in tile order, so the
    results are the same as with none (every call inline). Use as a context
    manager: on exit every tile added is in :attr:`stats` and :attr:`pairs`, tables
    (:class:`tiledepth.fusion.TileTable`, :class:`tiledepth.fusion.PairTable`) that keep
    the numbers alone, not a Python object per tile (docs/fusion.md, peak memory).

    ``blur=None`` estimates the anchor's blur from the tiles: the statistics of the first
    :data:`BLUR_SAMPLE` tiles are gathered for every blur of
    :data:`tiledepth.fusion.coarse.BLUR_CANDIDATES` (the cell averages taken once; their
    overlaps with the first blur's means), the blur that best explains the anchor is kept
    (:func:`tiledepth.fusion.coarse.pick_blur`; :attr:`blur`, a number from then on), its
    sample rows centred on the means their overlaps used
    (:func:`tiledepth.fusion.stats.recentred`), and the other tables dropped; later tiles
    are taken for that blur alone, as with it given.

    Each tile's statistics against the anchor leave out the anchor cells under it that go
    grossly against it (:func:`tiledepth.fusion.without_gross_anchor`: an inverted patch of
    the coarse prediction), at the blur in use: the sample's at the blur picked (their cell
    averages kept until then). A tile without such cells keeps its statistics as they are.

    ``weighting`` and ``ramp``: how an overlap's pixels are weighted
    (:func:`tiledepth.fusion.blend.overlap_weights`, with the blend's taper width).
    """

    def __init__(self, grid: list[list[Tile]], coarse: np.ndarray, shape: tuple[int, int],
                 store: TileStore, *, alignment: str = "affine", blur: float | None = 0.0,
                 threads: int = 0, weighting: str = "uniform", ramp: int = 0) -> None:
        self.grid, self.coarse, self.shape, self.store = grid, coarse, shape, store
        self.alignment, self.blur = alignment, blur
        # the anchor's value range, for its gross cells under each tile (as the gradient
        # correction's rule takes it)
        spread = value_range(coarse)
        self.anchor_range = spread if spread > 0 else 1.0
        self.weighting, self.ramp = weighting, ramp
        self.blurs: tuple[float, ...] = BLUR_CANDIDATES if blur is None else (blur,)
        k = corner_count(alignment)
        self.stats, self.pairs = fusion.TileTable(k), fusion.PairTable(k)
        # the other blurs' statistics of the same tiles, centred on the first's means
        self._other = [fusion.TileTable(k) for _ in self.blurs[1:]]
        # the sample's tiles' cell averages, for the anchor check at the blur picked
        self._cells: dict[int, np.ndarray] = {}
        # each tile's row in stats, -1 until added: 4 bytes a tile, not a dict entry
        self._row = np.full(1 + max((t.id for r in grid for t in r), default=0), -1, np.int32)
        self._own = ThreadPoolExecutor(threads, "tiledepth-stats") if threads else None
        self._in_order = Background(self._overlaps, threads=1 if threads else 0)

    def __enter__(self) -> TileStatistics:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._in_order.__exit__(*exc_info)
        finally:
            if self._own is not None:
                self._own.shutdown(wait=True, cancel_futures=True)
        if self.blur is None and exc_info[0] is None:
            self._pick()
        self._other = []

    def _pick(self) -> None:
        """Keep the statistics of the blur that best explains the anchor; drop the others."""
        tables = [self.stats, *self._other]
        best = pick_blur(tables) if len(self.stats) else 0
        self.blur, self._other = float(self.blurs[best]), []
        self.blurs = (self.blur,)
        # the sample's overlaps were taken with the first blur's means; its rows without the
        # anchor's gross cells under them, at the blur picked
        by_id = {t.id: t for row in self.grid for t in row}
        kept = fusion.TileTable(self.stats.corners)
        for ts, first in zip(tables[best], self.stats, strict=True):
            ts = fusion.recentred(ts, first.mean) if best else ts
            kept.add(self._without_gross(by_id[ts.id], ts, *self.store.get(ts.id)))
        self.stats = kept

    def _without_gross(self, tile: Tile, ts: fusion.TileStats, pred: np.ndarray,
                       valid: np.ndarray) -> fusion.TileStats:
        """``ts`` (of the settled blur) without the anchor's gross cells under the tile."""
        return fusion.without_gross_anchor(ts, pred, valid, tile.window, self.shape,
                                           self.coarse, alignment=self.alignment,
                                           blur=self.blur, anchor_range=self.anchor_range,
                                           cells=self._cells.pop(tile.id, None))

    def add(self, tile: Tile, pred: np.ndarray, valid: np.ndarray) -> None:
        """Gather the statistics of one tile, the next in tile order."""
        if self._own is None:
            self._overlaps(tile, pred, valid, self._tile(tile, pred, valid))
        else:
            self._in_order(tile, pred, valid, self._own.submit(self._tile, tile, pred, valid))

    def _tile(self, tile: Tile, pred: np.ndarray,
              valid: np.ndarray) -> tuple[tuple[float, ...], list[fusion.TileStats]]:
        # the tile as the coarse map sees it, so that the two compare like with like
        blurs = self.blurs  # once: the sample's end may change it meanwhile
        # the anchor's gross cells left out once the blur is settled (the blur pick compares
        # the candidates' statistics as they are)
        if len(blurs) == 1:
            return blurs, fusion.blurred_tile_stats(
                tile.id, pred, valid, tile.window, self.shape, self.coarse,
                alignment=self.alignment, blurs=blurs, anchor_range=self.anchor_range)
        cells: list[np.ndarray] = []  # kept for the check at the blur picked
        each = fusion.blurred_tile_stats(tile.id, pred, valid, tile.window, self.shape,
                                         self.coarse, alignment=self.alignment, blurs=blurs,
                                         cells=cells)
        if cells:
            self._cells[tile.id] = cells[0]
        return blurs, each

    def _overlaps(self, tile: Tile, pred: np.ndarray, valid: np.ndarray, each) -> None:
        blurs, each = each if isinstance(each, tuple) else each.result()
        if self.blur is None:
            ts, *others = each
        else:  # the blur is settled (a tile taken before may hold every candidate's)
            ts, others = each[blurs.index(self.blur)], []  # as with the blur alone
            if len(blurs) > 1:
                ts = self._without_gross(tile, ts, pred, valid)
        self._row[tile.id] = len(self.stats)
        self.stats.add(ts)
        for table, other_ts in zip(self._other, others, strict=True):
            table.add(other_ts)
        if self.blur is None and len(self.stats) >= BLUR_SAMPLE:
            self._pick()
        for other in earlier_neighbours(self.grid, tile):
            if self._row[other.id] < 0:
                continue
            other_part = self.store.get_pred(other.id, overlap_slices(other, tile)[0])
            self.pairs.add(overlap_stats(other, tile, self.stats.row(int(self._row[other.id])),
                                         ts, other_part, pred, valid, weighting=self.weighting,
                                         ramp=self.ramp))


def overlap_stats(first: Tile, second: Tile, first_stats: fusion.TileStats,
                  second_stats: fusion.TileStats, first_part: np.ndarray,
                  second_pred: np.ndarray, second_valid: np.ndarray, *,
                  weighting: str = "uniform", ramp: int = 0) -> fusion.PairStats:
    """The alignment statistics of the overlap of two tiles (:func:`tiledepth.fusion.pair_stats`).

    ``first_part`` is ``first``'s prediction over the overlap only (read from a store: the
    first of :func:`tiledepth.tiling.overlap_slices`); ``second_pred`` and ``second_valid``
    are ``second``'s whole prediction and valid mask; ``weighting`` and ``ramp``: how the
    overlap's pixels are weighted (:func:`tiledepth.fusion.blend.overlap_weights`, with the
    blend's taper width)."""
    where = overlap_slices(first, second)
    sl_first, sl_second = where
    return fusion.pair_stats(first_stats, second_stats, first_part, second_pred[sl_second],
                             second_valid[sl_second], where_i=(*sl_first, first.shape),
                             where_j=(*sl_second, second.shape), weights=fusion.overlap_weights(
                                 first, second, where, ramp=ramp, weighting=weighting))
