"""A family of simulated monocular models for the fusion benchmark, each written on its own.

Every model, like a real one, sees only the pixels it is given. The benchmark's image
(:func:`encode`) holds the true depth normalised over the whole scene in channel 0 and a
texture (the scene's "brightness", unrelated to depth) in channels 1 and 2. Each model turns
a call's pixels into depth with its own kind of error; all but ``consistent`` normalise each
call to [0, 1] and then apply an unknown per-call scale and shift (an affine-invariant model).

``current``
    The model the fusion was tuned on: blur (1 px), a mild per-call power law
    (exponent e^N(0, 0.15)), a smooth tilt (about 5 % of the range) and 1 % noise.
``power``
    A strong per-call power law (exponent e^N(0, 0.35)), 0.5 % noise, nothing else.
``quadratic``
    A smooth quadratic warp across the call (a bowl or saddle, about 8 % of the range),
    as a model trained on ground-level photos might bend a nadir view.
``wavy``
    A low-frequency wave across the call (0.5-1.5 periods, about 5 % of the range).
``latent``
    Heavy blur, as a model decoding from a latent 8x coarser than its output: the call is
    area-averaged over 8 px cells and upsampled bilinearly, then 0.5 % noise.
``texture``
    Texture copy: the depth leaks the image's brightness (10 %) and its edges (8 %).
``consistent``
    Exactly consistent: depth is a fixed function of the pixel values (the depth channel
    itself), no per-call normalisation, 0.3 % noise.

:data:`HELD_OUT` names the models kept out of the tuning loop (reported separately).

Gross errors (``gross > 0``): that fraction of the full-resolution tiles (at least one), and
of each pyramid level's calls, is grossly wrong (half inverted, half another scene's depth),
and a square patch of the coarse map (a sixth of its side) is inverted. ``gross_on`` puts
them on some of those parts only (``tiles``, ``levels``, ``coarse``). A second call of a tile
(the engine's retry of a flagged tile, :func:`tiledepth.infer.retry_key`) is a new sample: grossly
wrong with probability ``gross``, like a level's call; with ``sticky`` the failures are tied to
the content instead: a retry of a grossly wrong call is grossly wrong again.

``exact_anchor``: the coarse call returns the true depth (the image's channel 0, averaged
over the coarse cells as the image was read), like a reference raster as the anchor: it
separates the fusion's own error from the anchor's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tiledepth.infer import COARSE_KEY, RETRY_STRIDE

#: Models kept out of the tuning loop: report them separately, never tune on them.
HELD_OUT = ("wavy", "texture")


def encode(depth: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The image models see: (H, W, 3) float32, depth (normalised) in channel 0, texture in 1-2.

    ``depth`` has no NaN (fill it first); ``texture`` is in [0, 1].
    """
    d = (depth - depth.min()) / max(float(np.ptp(depth)), 1e-12)
    return np.stack([d, texture, texture], axis=-1).astype(np.float32)


def texture_for(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A brightness image unrelated to depth: smooth patches plus fine grain, in [0, 1]."""
    rng = np.random.default_rng([seed, 4242])
    h, w = shape
    coarse = ndimage.zoom(rng.standard_normal((h // 32 + 3, w // 32 + 3)), 32, order=1)[:h, :w]
    fine = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5)
    t = coarse + 0.5 * fine / max(fine.std(), 1e-9)
    return ((t - t.min()) / max(float(np.ptp(t)), 1e-12)).astype(np.float32)


def _unit(y: np.ndarray) -> np.ndarray:
    lo, hi = y.min(), y.max()
    return (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-0.5, 0.5, h)[:, None], np.linspace(-0.5, 0.5, w)[None, :]


def current(x, rng):
    y = _unit(ndimage.gaussian_filter(x[..., 0].astype(np.float64), 1.0, mode="nearest"))
    y = y ** np.exp(rng.normal(0, 0.15))
    u, v = _grid(*y.shape)
    y = y + rng.normal(0, 0.05) * u + rng.normal(0, 0.05) * v
    return y + rng.normal(0, 0.01, y.shape)


def power(x, rng):
    y = _unit(x[..., 0].astype(np.float64)) ** np.exp(rng.normal(0, 0.35))
    return y + rng.normal(0, 0.005, y.shape)


def quadratic(x, rng):
    y = _unit(x[..., 0].astype(np.float64))
    u, v = _grid(*y.shape)
    a, b, c = rng.normal(0, 0.3, 3)  # u, v in [-0.5, 0.5]: u^2 <= 0.25
    return y + a * u * u + b * v * v + c * u * v + rng.normal(0, 0.005, y.shape)


def wavy(x, rng):
    y = _unit(x[..., 0].astype(np.float64))
    u, v = _grid(*y.shape)
    f, g = rng.uniform(0.5, 1.5, 2)
    p, q = rng.uniform(0, 2 * np.pi, 2)
    return y + 0.05 * (np.sin(2 * np.pi * f * u + p) + np.sin(2 * np.pi * g * v + q)) / 2 \
        + rng.normal(0, 0.005, y.shape)


def latent(x, rng):
    d = x[..., 0].astype(np.float64)
    h, w = d.shape
    ph, pw = -h % 8, -w % 8
    cells = np.pad(d, ((0, ph), (0, pw)), mode="edge")
    cells = cells.reshape(cells.shape[0] // 8, 8, cells.shape[1] // 8, 8).mean(axis=(1, 3))
    up = ndimage.zoom(cells, 8, order=1, mode="nearest", grid_mode=True)[:h, :w]
    return _unit(up) + rng.normal(0, 0.005, up.shape)


def texture(x, rng):
    d = _unit(x[..., 0].astype(np.float64))
    b = x[..., 1].astype(np.float64)
    edges = np.hypot(ndimage.sobel(b, 0), ndimage.sobel(b, 1))
    edges = edges / max(float(edges.max()), 1e-9)
    return d + 0.10 * (b - b.mean()) + 0.08 * edges + rng.normal(0, 0.005, d.shape)


def consistent(x, rng):
    d = x[..., 0].astype(np.float64)
    return 0.5 + 2.0 * d + rng.normal(0, 0.003, d.shape)


#: The parts of a run gross errors can hit (``SimModel(gross_on=...)``).
GROSS_PARTS = ("tiles", "coarse", "levels")

#: name -> (response, normalised per call)
MODELS = {
    "current": (current, True),
    "power": (power, True),
    "quadratic": (quadratic, True),
    "wavy": (wavy, True),
    "latent": (latent, True),
    "texture": (texture, True),
    "consistent": (consistent, False),
}


class SimModel:
    """One model of :data:`MODELS` behind tiledepth's model protocol; errors seeded per call.

    ``levels`` holds the pyramid levels' tile counts (the engine calls the same tile ids at
    each level first; the full-resolution call is the last). ``preds`` keeps the last
    prediction per key (the full-resolution tiles' and the coarse one). ``retried`` maps a
    full-resolution tile's id to why its last retry was grossly wrong (None: it was not).
    """

    kind = "depth"
    batch_size = 16

    def __init__(self, name: str, seed: int, *, tiles: int, gross: float = 0.0,
                 levels: tuple[int, ...] = (), other=None, exact_anchor: bool = False,
                 gross_on=GROSS_PARTS, sticky: bool = False) -> None:
        self.name, self.seed, self.gross = name, seed, gross
        self.gross_on, self.sticky = frozenset(gross_on), sticky
        if not self.gross_on <= set(GROSS_PARTS):
            raise ValueError(f"gross_on: parts of {GROSS_PARTS}, got {sorted(gross_on)}")
        self.exact_anchor = exact_anchor  # the coarse call returns the true depth
        self.respond, self.normalised = MODELS[name]
        rng = np.random.default_rng([seed, 999])
        bad = rng.permutation(tiles)[:max(1, round(gross * tiles))] if gross > 0 else []
        self.plan = {int(k): ("inverted" if i % 2 == 0 else "wrong") for i, k in enumerate(bad)}
        self.corrupted: dict[int, str] = {}  # full-resolution tile id -> why, when seen
        self.level_corrupted = 0
        self.calls: dict[int, int] = {}
        self.levels = levels
        self.other = other  # (H, W) another scene, for 'wrong' tiles
        self.preds: dict[int, np.ndarray] = {}
        self.retried: dict[int, str | None] = {}
        # each tile id's last first call: (final, why grossly wrong or None), for its retry
        self._last: dict[int, tuple[bool, str | None]] = {}

    def _last_call(self, key: int) -> int:
        return 1 + sum(n > key for n in self.levels)

    def predict(self, batch: np.ndarray, keys) -> np.ndarray:
        out = np.stack([self._one(x, key) for x, key in zip(batch, keys, strict=True)])
        for key, p in zip(keys, out, strict=True):
            self.preds[key] = p
        return out

    def _one(self, x: np.ndarray, key: int) -> np.ndarray:
        self.calls[key] = self.calls.get(key, 0) + 1
        n = self.calls[key]
        if self.exact_anchor and key == COARSE_KEY:  # as exact as a reference raster
            return x[..., 0].astype(np.float32)
        rng = np.random.default_rng([self.seed, key + 1, n])
        y = self.respond(x, rng)
        if self.gross > 0:
            y = self._gross(y, key, n, rng)
        if not self.normalised:
            return y.astype(np.float32)
        y = _unit(y)
        return (rng.uniform(0.5, 2.0) * y + rng.uniform(-1, 1)).astype(np.float32)

    def _gross(self, y: np.ndarray, key: int, n: int, rng) -> np.ndarray:
        h, w = y.shape
        if key == COARSE_KEY:  # a square patch of the coarse map inverted
            if "coarse" not in self.gross_on:
                return y
            lo, hi = float(y.min()), float(y.max())
            side = max(2, min(h, w) // 6)
            r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            y = y.copy()
            y[r:r + side, c:c + side] = lo + hi - y[r:r + side, c:c + side]
            return y
        if key >= RETRY_STRIDE:  # the engine's second call of a flagged tile
            tile = key % RETRY_STRIDE
            final, before = self._last.get(tile, (True, None))
            why = before if self.sticky else self._draw(rng)
            if ("tiles" if final else "levels") not in self.gross_on:
                why = None
            if final:
                self.retried[tile] = why
            return self._corrupt(y, why, rng)
        final = n == self._last_call(key)
        why = self.plan.get(key) if final else self._draw(rng)
        if ("tiles" if final else "levels") not in self.gross_on:
            why = None
        self._last[key] = (final, why)
        if why is not None:
            if final:
                self.corrupted[key] = why
            else:
                self.level_corrupted += 1
        return self._corrupt(y, why, rng)

    def _draw(self, rng) -> str | None:
        """A call's gross error, drawn: None, or why (with probability ``gross``)."""
        return ("inverted" if rng.random() < 0.5 else "wrong") if rng.random() < self.gross \
            else None

    def _corrupt(self, y: np.ndarray, why: str | None, rng) -> np.ndarray:
        if why is None:
            return y
        h, w = y.shape
        lo, hi = float(y.min()), float(y.max())
        if why == "inverted" or self.other is None:
            return lo + hi - y
        r, c = rng.integers(0, self.other.shape[0] - h + 1), rng.integers(
            0, self.other.shape[1] - w + 1)
        patch = self.other[r:r + h, c:c + w].astype(np.float64)
        return lo + (hi - lo) * _unit(patch)
