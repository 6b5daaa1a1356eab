"""The model's turns: one call at a time, the most urgent first.

A model (a diffusers pipeline, a torch module) is not safe to call from two threads
at once, yet several parts of tiledepth want it at the same time: a raster's tiles
are predicted while its anchor (the coarse prediction and the pyramid levels) is
still being made, and in a local batch the next raster starts while the one before
makes its last model calls. Every local model call therefore goes through
:func:`predict_in_turn`, which waits for the model's :class:`ModelTurns`.

Waiting calls take their turn in priority order, ``(RANK, PHASE)`` of the context
they were made in, then in order of arrival: an earlier raster of a batch goes
first (:data:`RANK`), and within a raster the calls its anchor needs before its
tiles (:data:`PHASE`), so that the anchor, and with it the tiles' alignment
statistics, is not left until the last tile is predicted.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from tiledepth.models.base import check_prediction, check_stop

__all__ = ["PHASE", "RANK", "ModelTurns", "predict_in_turn", "turns_of"]

#: A run's place in a local batch (:mod:`tiledepth.batchrun`): an earlier run's calls go first.
RANK: ContextVar[int] = ContextVar("tiledepth_rank", default=0)
#: 0 for the model calls of a raster's anchor (coarse prediction, pyramid levels), 1 for
#: its full-resolution tiles: the anchor's go first.
PHASE: ContextVar[int] = ContextVar("tiledepth_phase", default=1)

#: Seconds between two looks at the run's stop event while a call waits for its turn.
_POLL_S = 0.1


class ModelTurns:
    """One holder at a time; the waiters take their turns smallest ``priority`` first.

    Examples
    --------
    >>> turns = ModelTurns()
    >>> with turns.turn((0, 1)):
    ...     turns.busy
    True
    >>> turns.busy
    False
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[tuple[tuple[int, ...], int]] = []  # a heap
        self._arrival = itertools.count()
        self.busy = False

    @contextmanager
    def turn(self, priority: tuple[int, ...]) -> Iterator[None]:
        """Hold the model for the block, once no call of a smaller priority waits.

        While waiting it raises :class:`~tiledepth.models.base.ModelStopped` if the
        run the call belongs to is ending (:func:`~tiledepth.models.base.check_stop`).
        """
        check_stop()  # a run that is ending makes no further call
        me = (tuple(priority), next(self._arrival))
        with self._cond:
            heapq.heappush(self._waiting, me)
            try:
                while self.busy or self._waiting[0] != me:
                    self._cond.wait(_POLL_S)
                    check_stop()
            except BaseException:
                self._waiting.remove(me)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                raise
            heapq.heappop(self._waiting)
            self.busy = True
        try:
            yield
        finally:
            with self._cond:
                self.busy = False
                self._cond.notify_all()


_TURNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TURNS_BY_ID: dict[int, tuple[object, ModelTurns]] = {}  # models that take no weak reference
_TURNS_LOCK = threading.Lock()


def turns_of(model: object) -> ModelTurns:
    """The turns of ``model`` (of the model an :class:`~tiledepth.uncertainty.UncertaintyTap`
    wraps), the same object for every caller in this process."""
    from tiledepth.uncertainty import UncertaintyTap

    while isinstance(model, UncertaintyTap):
        model = model.model
    with _TURNS_LOCK:
        try:
            turns = _TURNS.get(model)
            if turns is None:
                turns = _TURNS[model] = ModelTurns()
        except TypeError:  # not hashable, or no weak reference: kept by id (and alive)
            _, turns = _TURNS_BY_ID.setdefault(id(model), (model, ModelTurns()))
        return turns


def predict_in_turn(model, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """``model.predict(batch, keys)`` in the model's turn, at this context's priority,
    checked (:func:`~tiledepth.models.base.check_prediction`): float32 (B, H, W), finite,
    and an array of tiledepth's own, whoever wrote the model."""
    with turns_of(model).turn((RANK.get(), PHASE.get())):
        out = model.predict(batch, keys)
    # a model object is used as it is (tiledepth.models.load_model): its output is checked
    # here, as a callable's is in CallableModel (that one, checked already, costs a look-up)
    return check_prediction(out, batch, getattr(model, "name", type(model).__name__))
