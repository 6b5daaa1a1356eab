"""tiledepth.turns: one model call at a time, the most urgent first."""

import threading
import time

import numpy as np
import pytest

from tiledepth.models.base import ModelStopped, stop_event
from tiledepth.turns import PHASE, RANK, ModelTurns, predict_in_turn, turns_of


def _waiters(turns: ModelTurns, priorities, order: list) -> list[threading.Thread]:
    """One thread per priority, each queued for a turn (in this order) before returning."""
    threads = []
    for priority in priorities:
        def take(priority=priority):
            with turns.turn(priority):
                order.append(priority)

        threads.append(threading.Thread(target=take))
        threads[-1].start()
        while len(turns._waiting) < len(threads):  # queued: the next one arrives later
            time.sleep(0.001)
    return threads


def test_waiting_calls_go_smallest_priority_first_then_in_arrival_order():
    turns, order = ModelTurns(), []
    with turns.turn((0, 1)):  # the model is busy while the others queue up
        threads = _waiters(turns, [(1, 0), (0, 1), (1, 1), (0, 0), (0, 1)], order)
    for t in threads:
        t.join(5)
    # an earlier raster (rank) first, its anchor (phase 0) before its tiles; ties by arrival
    assert order == [(0, 0), (0, 1), (0, 1), (1, 0), (1, 1)]
    assert not turns.busy and turns._waiting == []


def test_a_call_waiting_for_its_turn_stops_with_its_run():
    turns, event, errors = ModelTurns(), threading.Event(), []

    def wait_then_stop():
        token = stop_event().set(event)
        try:
            with turns.turn((0, 0)):
                errors.append("ran")
        except ModelStopped as exc:
            errors.append(exc)
        finally:
            stop_event().reset(token)

    with turns.turn((0, 1)):
        thread = threading.Thread(target=wait_then_stop)
        thread.start()
        while not turns._waiting:
            time.sleep(0.001)
        event.set()  # as LocalPool.close does when the run ends
        thread.join(5)
        assert len(errors) == 1 and isinstance(errors[0], ModelStopped)
        assert turns._waiting == []  # it left the queue: the next caller is not blocked
    with turns.turn((1, 1)):
        pass


def test_predict_in_turn_uses_the_context_priority_and_one_turns_per_model():
    class Model:
        batch_size = 1

        def predict(self, batch, keys):
            seen.append((RANK.get(), PHASE.get(), turns_of(self).busy))
            return batch[..., 0]

    seen, model = [], Model()
    assert turns_of(model) is turns_of(model) and turns_of(model) is not turns_of(Model())
    token = RANK.set(3)
    try:
        out = predict_in_turn(model, np.ones((1, 2, 2, 3), np.float32), [0])
    finally:
        RANK.reset(token)
    assert out.shape == (1, 2, 2) and seen == [(3, 1, True)]


def test_a_model_and_its_uncertainty_tap_share_their_turns():
    from tiledepth.uncertainty import UncertaintyTap

    class Spread:
        name, batch_size = "spread", 1

        def predict_with_uncertainty(self, batch, keys):
            return batch[..., 0], batch[..., 1]

    model = Spread()
    assert turns_of(UncertaintyTap(model)) is turns_of(model)


@pytest.mark.parametrize("unhashable", [True, False])
def test_turns_of_a_model_without_weak_references(unhashable):
    class Slotted:
        __slots__ = ()
        if unhashable:
            __hash__ = None

    model = Slotted()
    assert turns_of(model) is turns_of(model)


def test_an_unhashable_model_is_not_kept_alive_by_its_turns():
    """A dataclass (eq=True: no hash) was kept by id with a strong reference, for good: each
    run's model, weights and all, stayed alive."""
    import gc
    import weakref
    from dataclasses import dataclass, field

    from tiledepth import turns

    @dataclass
    class Model:
        name: str = "dataclass"
        batch_size: int = 1
        weights: np.ndarray = field(default_factory=lambda: np.full(1000, 2.0, np.float32))

        def predict(self, batch, keys):
            assert turns_of(self).busy  # its turn, the same turns as every caller's
            return batch[..., 0] * self.weights[0]

    model = Model()
    out = predict_in_turn(model, np.full((1, 2, 2, 3), 0.5, np.float32), [0])
    alive, key = weakref.ref(model), id(model)
    assert turns_of(model) is turns_of(model) and turns_of(model) is not turns_of(Model())
    assert key in turns._TURNS_BY_ID
    del model
    gc.collect()

    np.testing.assert_array_equal(out, 1.0)
    assert alive() is None and key not in turns._TURNS_BY_ID


def test_a_model_without_weak_references_is_let_go_after_its_calls():
    from tiledepth import turns

    class Slotted:
        __slots__ = ("name", "batch_size")
        __hash__ = None

        def __init__(self):
            self.name, self.batch_size = "slotted", 1

        def predict(self, batch, keys):
            assert turns_of(self).busy and id(self) in turns._TURNS_BY_ID
            return batch[..., 0]

    model = Slotted()
    predict_in_turn(model, np.ones((1, 2, 2, 3), np.float32), [0])

    assert id(model) not in turns._TURNS_BY_ID  # no reference to it left behind
