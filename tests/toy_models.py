"""Cheap callable depth models for tests, importable as ``toy_models:NAME``."""

from __future__ import annotations

import numpy as np


def red(batch: np.ndarray) -> np.ndarray:
    """Depth = the red channel: exact, the same frame for every tile."""
    return batch[..., 0].copy()


def affine_red(batch: np.ndarray) -> np.ndarray:
    """Depth = the red channel under a different scale and shift per image.

    The scale and shift derive from the image content, so they are
    reproducible and differ from tile to tile, like an affine-invariant model.
    """
    out = []
    for img in batch:
        key = int(np.float64(img[..., 0].sum()) * 1000) % (2**32)
        rng = np.random.default_rng(key)
        out.append(rng.uniform(0.3, 3.0) * img[..., 0] + rng.uniform(-2.0, 2.0))
    return np.stack(out).astype(np.float32)


def wrong_shape(batch: np.ndarray) -> np.ndarray:
    return batch[:, ::2, ::2, 0]


def returns_nan(batch: np.ndarray) -> np.ndarray:
    out = batch[..., 0].copy()
    out[:, 0, 0] = np.nan
    return out


def nan_if_dark(batch: np.ndarray) -> np.ndarray:
    """The red channel, but NaN for a dark image (mean < 0.05): fails on some rasters."""
    out = batch[..., 0].copy()
    out[batch.mean(axis=(1, 2, 3)) < 0.05] = np.nan
    return out


class PidLogger:
    """The red channel; each call leaves a file named after the process that ran it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import os
        from pathlib import Path

        Path(self.folder, f"pid-{os.getpid()}").touch()
        return batch[..., 0].copy()


def interrupt_if_dark(batch: np.ndarray) -> np.ndarray:
    """The red channel, but Ctrl-C on a dark image: stops a batch the way a user does."""
    if (batch.mean(axis=(1, 2, 3)) < 0.05).any():
        raise KeyboardInterrupt
    return batch[..., 0].copy()
