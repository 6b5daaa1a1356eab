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


def _content_rng(img: np.ndarray) -> np.random.Generator:
    return np.random.default_rng(int(np.float64(img[..., 0].sum()) * 1000) % (2**32))


def metric_red(batch: np.ndarray) -> np.ndarray:
    """Metric depth 10 + 20 * red (metres), off by a scale of 0.8 to 1.25 per image."""
    return np.stack([_content_rng(img).uniform(0.8, 1.25) * (10.0 + 20.0 * img[..., 0])
                     for img in batch]).astype(np.float32)


metric_red.kind = "metric_depth"


def disparity_red(batch: np.ndarray) -> np.ndarray:
    """Affine-invariant disparity of the depth 1 + 4 * red: a scale and shift per image."""
    out = []
    for img in batch:
        rng = _content_rng(img)
        out.append(rng.uniform(0.5, 2.0) / (1.0 + 4.0 * img[..., 0]) + rng.uniform(0.0, 0.5))
    return np.stack(out).astype(np.float32)


disparity_red.kind = "disparity"
