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


class RedWithSpread:
    """Depth = red; uncertainty = a constant 0.1 (a model with ``predict_with_uncertainty``)."""

    name = "red-with-spread"
    batch_size = 4

    def predict(self, batch, keys):
        return red(batch)

    def predict_with_uncertainty(self, batch, keys):
        return red(batch), np.full(batch.shape[:3], 0.1, np.float32)
