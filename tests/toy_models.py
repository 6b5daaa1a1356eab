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
    """The red channel with one NaN per call, whatever the batch (the coarse call or the
    tiles', whichever comes first: the count in the error is then always 1)."""
    out = batch[..., 0].copy()
    out[0, 0, 0] = np.nan
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


def returns_inf(batch: np.ndarray) -> np.ndarray:
    """The red channel with one inf per call, whatever the batch (see :func:`returns_nan`)."""
    out = batch[..., 0].copy()
    out[0, -1, -1] = np.inf
    return out


def needs_64(batch: np.ndarray) -> np.ndarray:
    """A model that takes tiles of at least 64 pixels."""
    return red(batch)


needs_64.min_tile = 64


def vit14(batch: np.ndarray) -> np.ndarray:
    """A model that takes sides that are multiples of 14, like a ViT with 14-pixel patches."""
    if batch.shape[1] % 14 or batch.shape[2] % 14:
        raise ValueError(f"vit14 needs sides that are multiples of 14, got {batch.shape}")
    return red(batch)


vit14.tile_multiple = 14


def oom_above_2(batch: np.ndarray) -> np.ndarray:
    """The red channel, but batches of more than two tiles run out of (simulated) CUDA memory."""
    import torch

    if len(batch) > 2:
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {len(batch)}.00 GiB (simulated)")
    return red(batch)


def cuda_oom_above_6(batch: np.ndarray) -> np.ndarray:
    """The red channel on a (simulated) GPU where more than six tiles run out of memory."""
    import torch

    if len(batch) > 6:
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {len(batch)}.00 GiB (simulated)")
    return red(batch)


cuda_oom_above_6.device = "cuda"


def slow(batch: np.ndarray) -> np.ndarray:
    """:func:`affine_red`, slowly ($TILEDEPTH_TEST_DELAY seconds a call), for runs to interrupt.

    With $TILEDEPTH_TEST_CALLS it appends one line per call, ``<pid> <batch shape>``, to that
    file before returning; with $TILEDEPTH_TEST_STOP_AFTER=N as well it raises
    KeyboardInterrupt (as Ctrl-C would) once the file has N lines. With
    $TILEDEPTH_TEST_BARRIER (a folder) the first call waits until two processes have made
    their first call, so that two runs surely overlap in time.
    """
    import os
    import time

    barrier = os.environ.get("TILEDEPTH_TEST_BARRIER")
    if barrier:
        open(os.path.join(barrier, str(os.getpid())), "a").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    time.sleep(float(os.environ.get("TILEDEPTH_TEST_DELAY", "0.1")))
    log = os.environ.get("TILEDEPTH_TEST_CALLS")
    if log:
        stop = os.environ.get("TILEDEPTH_TEST_STOP_AFTER")
        if stop and os.path.exists(log):
            with open(log) as f:
                if len(f.readlines()) >= int(stop):
                    raise KeyboardInterrupt
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {tuple(batch.shape)}\n")
    return affine_red(batch)


class SlowKeyed:
    """:func:`slow` (its delay, log and stop), each image then under a scale and shift drawn
    from its key, as a model that seeds its noise per key: the coarse image's calls differ
    (``anchor_calls`` makes all of them)."""

    name, kind, batch_size = "slow-keyed", "depth", 4

    def predict(self, batch, keys):
        out = slow(batch)
        for k, key in enumerate(keys):
            rng = np.random.default_rng(int(key) + 1)
            out[k] = rng.uniform(0.5, 2.0) * out[k] + rng.uniform(-1, 1)
        return out


slow_keyed = SlowKeyed()


class RedWithSpread:
    """Depth = red; uncertainty = a constant 0.1 (a model with ``predict_with_uncertainty``)."""

    name = "red-with-spread"
    batch_size = 4

    def predict(self, batch, keys):
        return red(batch)

    def predict_with_uncertainty(self, batch, keys):
        return red(batch), np.full(batch.shape[:3], 0.1, np.float32)


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


class Turns:
    """The red channel after ``seconds``; records every call and whether one came in while
    another ran (the engine must never do that: real pipelines are not thread-safe).

    ``calls``: ``(phase, rank, keys, start, end)`` each, with the
    :data:`tiledepth.turns.PHASE` and :data:`~tiledepth.turns.RANK` of the call's context.
    ``tile_started`` (a threading.Event) is set when a call for full-resolution tiles starts.
    """

    name = "turns"

    def __init__(self, seconds: float = 0.005, batch_size: int = 4, tile_started=None) -> None:
        import threading

        self.seconds, self.batch_size, self.tile_started = seconds, batch_size, tile_started
        self.calls: list[tuple[int, int, list[int], float, float]] = []
        self.reentered = False
        self._running = 0
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray, keys) -> np.ndarray:
        import time

        from tiledepth.turns import PHASE, RANK

        with self._lock:
            self._running += 1
            self.reentered |= self._running > 1
        if self.tile_started is not None and PHASE.get() == 1:
            self.tile_started.set()
        start = time.perf_counter()
        time.sleep(self.seconds)
        out = batch[..., 0].copy()
        with self._lock:
            self._running -= 1
            self.calls.append((PHASE.get(), RANK.get(), list(keys), start, time.perf_counter()))
        return out
