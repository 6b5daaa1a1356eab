"""Torch helpers shared by the backends: tiles to the device, stop checks in a pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from tiledepth.models.torchutil import stoppable, to_device


def test_to_device_clips_permutes_and_casts_without_touching_the_input():
    import torch

    batch = np.random.default_rng(0).uniform(-0.5, 1.5, (2, 3, 4, 3)).astype(np.float32)
    before = batch.copy()
    out = to_device(batch, "cpu", torch.bfloat16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    np.testing.assert_array_equal(batch, before)  # the caller's array is left as it was
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (2, 3, 3, 4)
    want = (np.clip(before, 0, 1) - 0.5) / np.array([0.25, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(out.float().numpy(), want.transpose(0, 3, 1, 2), atol=2e-2)
    as_bytes = to_device(np.full((1, 2, 2, 3), 255, np.uint8), "cpu", torch.float32)
    assert float(as_bytes.min()) == 1.0


def test_stoppable_checks_every_step_and_restores_the_pipeline():
    import threading

    from tiledepth.models.base import ModelStopped, stop_event

    class Pipe:
        def progress_bar(self, iterable=None, **kwargs):
            return iter(iterable)

    pipe, event, seen = Pipe(), threading.Event(), []
    token = stop_event().set(event)
    try:
        with stoppable(pipe), pytest.raises(ModelStopped):
            for step in pipe.progress_bar(range(10)):
                seen.append(step)
                if step == 2:
                    event.set()
    finally:
        stop_event().reset(token)
    assert seen == [0, 1, 2] and "progress_bar" not in vars(pipe)
