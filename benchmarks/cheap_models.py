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


def renormalised(batch: np.ndarray) -> np.ndarray:
    """The red channel stretched to [0, 1] per image: each call its own frame.

    What a relative-depth model does (its output's scale and shift are the image's own), and
    what makes a seam between two files fused apart: each file's coarse prediction sets that
    file's frame (benchmarks/mosaic_seams.py).
    """
    red = batch[..., 0].astype(np.float32)
    lo = red.min(axis=(1, 2), keepdims=True)
    hi = red.max(axis=(1, 2), keepdims=True)
    return (red - lo) / np.maximum(hi - lo, 1e-6)
