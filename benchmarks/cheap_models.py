"""Cheap callable models for benchmarks (importable as ``cheap_models:NAME``)."""

import numpy as np


def zero_cost(batch: np.ndarray) -> np.ndarray:
    """The red channel as depth: costs almost nothing, so the benchmark times the engine."""
    return batch[..., 0].copy()


def sleepy(batch: np.ndarray, per_tile: float = 0.05) -> np.ndarray:
    """The red channel, after sleeping ``per_tile`` seconds per image: a stand-in for a GPU.

    Sleeping holds no CPU, so on a small machine several of these (Ray actors) run truly in
    parallel, as GPU models would.
    """
    import time

    time.sleep(per_tile * len(batch))
    return batch[..., 0].copy()
