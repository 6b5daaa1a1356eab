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
_TURNS_BY_ID: dict[int, _ById] = {}  # models that are not hashable, or take no weak reference
_TURNS_LOCK = threading.Lock()


class _ById:
    """The turns of a model kept by id (not hashable: a dataclass with ``eq=True``).

    No strong reference to the model outlives its runs: where it takes a weak reference
    the entry goes when the model does; where it does not (``__slots__`` without
    ``__weakref__``) the model is held only while calls (:func:`predict_in_turn`) use its
    turns, and the entry goes with the last of them.
    """

    def __init__(self, model: object) -> None:
        self.key = id(model)
        self.turns = ModelTurns()
        self.users = 0
        try:
            self.ref = weakref.ref(model, self._drop)
            self.model = None
        except TypeError:
            self.ref, self.model = None, model

    def holds(self, model: object) -> bool:
        return (self.model if self.ref is None else self.ref()) is model

    def _drop(self, _ref: weakref.ref) -> None:
        # the model is gone (its id is reused only after this has run): so is its entry
        if _TURNS_BY_ID.get(self.key) is self:
            _TURNS_BY_ID.pop(self.key, None)


def turns_of(model: object) -> ModelTurns:
    """The turns of ``model`` (of the model an :class:`~tiledepth.uncertainty.UncertaintyTap`
    wraps), the same object for every caller in this process."""
    model = _unwrapped(model)
    with _TURNS_LOCK:
        return _entry(model)[0]


def _unwrapped(model: object) -> object:
    from tiledepth.uncertainty import UncertaintyTap

    while isinstance(model, UncertaintyTap):
        model = model.model
    return model


def _entry(model: object) -> tuple[ModelTurns, _ById | None]:
    """The turns of ``model``, and its entry where it is kept by id (with the lock held)."""
    try:
        turns = _TURNS.get(model)
        if turns is None:
            turns = _TURNS[model] = ModelTurns()
        return turns, None
    except TypeError:  # not hashable, or no weak reference: kept by id
        pass
    entry = _TURNS_BY_ID.get(id(model))
    if entry is None or not entry.holds(model):
        entry = _TURNS_BY_ID[id(model)] = _ById(model)
    return entry.turns, entry


@contextmanager
def _turns_in_use(model: object) -> Iterator[ModelTurns]:
    """The turns of ``model`` for the block; a model held by its entry (one that takes no
    weak reference) is let go when the last block using its turns ends."""
    model = _unwrapped(model)
    with _TURNS_LOCK:
        turns, entry = _entry(model)
        held = entry is not None and entry.ref is None
        if held:
            entry.users += 1
    try:
        yield turns
    finally:
        if held:
            with _TURNS_LOCK:
                entry.users -= 1
                if not entry.users and _TURNS_BY_ID.get(id(model)) is entry:
                    del _TURNS_BY_ID[id(model)]


def predict_in_turn(model, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """``model.predict(batch, keys)`` in the model's turn, at this context's priority,
    checked (:func:`~tiledepth.models.base.check_prediction`): float32 (B, H, W), finite,
    and an array of tiledepth's own, whoever wrote the model."""
    with _turns_in_use(model) as turns, turns.turn((RANK.get(), PHASE.get())):
        out = model.predict(batch, keys)
    # a model object is used as it is (tiledepth.models.load_model): its output is checked
    # here, as a callable's is in CallableModel (that one, checked already, costs a look-up)
    return check_prediction(out, batch, getattr(model, "name", type(model).__name__))
