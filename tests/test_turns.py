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
