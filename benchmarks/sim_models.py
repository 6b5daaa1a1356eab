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

:data:`AUDIT_MODELS` (``clipped``, ``vignette``, ``disparity``, ``dropout``, ``quantised``,
``halo``) are held-out audit models, written in the fifth session without looking at the
others, each imitating a way a real model (Marigold above all) fails on nadir aerial imagery;
they are not in :data:`MODELS` (the default family and its figures stay as they were), every
one of them is in :data:`HELD_OUT`, and ``SimModel`` and ``fusion_quality.py --models`` take
their names like the others'.

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

import argparse
import zlib

import numpy as np
from scipy import ndimage

from tiledepth.infer import COARSE_KEY, RETRY_STRIDE, is_coarse_key

#: The held-out audit models (:data:`AUDIT_MODELS`), in the order they are reported.
AUDIT = ("clipped", "vignette", "disparity", "dropout", "quantised", "halo")

#: Models kept out of the tuning loop: report them separately, never tune on them.
HELD_OUT = ("wavy", "texture", *AUDIT)


def encode(depth: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The image models see: (H, W, 3) float32, depth (normalised) in channel 0, texture in 1-2.

    ``depth`` has no NaN (fill it first); ``texture`` is in [0, 1].
    """
    d = (depth - depth.min()) / max(float(np.ptp(depth)), 1e-12)
    return np.stack([d, texture, texture], axis=-1).astype(np.float32)


def scene_seed(seed: int, scene: str) -> int:
    """The seed a scene's simulated calls and texture are drawn from at benchmark seed ``seed``.

    Without it every scene of a seed shared the same draws (a call's errors depend on the
    seed, the tile id and the call only): a seed whose draws were bad for the fusion was bad
    on every scene at once, and the scene-seeds were not independent samples.

    >>> scene_seed(0, "mb2014/Adirondack") == scene_seed(0, "mb2014/Adirondack")
    True
    >>> scene_seed(0, "mb2014/Adirondack") != scene_seed(0, "procedural/0")
    True
    """
    entropy = [int(seed), zlib.crc32(scene.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


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


# ------------------------------------------------------------------ held-out audit models
# Written on their own for an audit of the defaults (fifth session): never tune on them.


def clipped(x, rng):
    """The extremes saturate per call: depth clipped at the call's own percentiles.

    A model trained to put most of its output range on the middle of a scene compresses the
    nearest roofs and the farthest ground of each view into flat plateaus, and where they
    start depends on what else is in the view. The lower cut is at the call's 2-8th
    percentile, the upper one at its 92-98th (both drawn per call), then 0.3 % noise.
    """
    d = x[..., 0].astype(np.float64)
    lo, hi = np.percentile(d, [rng.uniform(2, 8), rng.uniform(92, 98)])
    return np.clip(d, lo, hi) + rng.normal(0, 0.003, d.shape)


def vignette(x, rng):
    """A perspective prior on a nadir view: the call's centre pulled near, its rim pushed far.

    A model trained on perspective photos reads a straight-down view as if looking down a
    cone: the distance along the ray grows as 1 / cos of the angle off the axis, so flat ground
    becomes a bowl around the call's centre, and the bowl grows with the depth itself
    (multiplicative, not added). The half field of view it imagines is drawn per call (10-30
    degrees across the half diagonal: the bowl's rim 1.5-15 % deeper than its centre), so the
    bowl's depth differs from call to call.
    """
    d = x[..., 0].astype(np.float64)  # the scene's depth, normalised over the scene
    h, w = d.shape
    r = np.hypot(*np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij"))
    tan = np.tan(np.radians(rng.uniform(10, 30))) * r / np.sqrt(2)
    z = (1.0 + d) * np.sqrt(1.0 + tan * tan)  # the ray's length, the scene 1-2 units deep
    return z + rng.normal(0, 0.003, d.shape)


def disparity(x, rng):
    """A model in the wrong space: affine disparity returned as if it were depth.

    The scene is 1-3 units deep (the nearest surface at 1); the model predicts inverse depth
    with its own idea of where depth starts (an offset of -0.5 to +1.5 units added to the depth
    before inverting, drawn per call, as affine-invariant disparity leaves that unknown), and
    the caller takes it as depth: larger values are nearer, and the curve between the two
    differs from call to call. 0.3 % noise on the disparity's range.
    """
    z = 1.0 + 2.0 * x[..., 0].astype(np.float64)
    disp = 1.0 / (z + rng.uniform(-0.5, 1.5))
    return disp + rng.normal(0, 0.003 * max(float(np.ptp(disp)), 1e-9), disp.shape)


def dropout(x, rng):
    """A few blobs per call where the model gives up and returns the local mean.

    On textureless patches (water, fresh asphalt, shadow, saturated roofs) a model finds no
    cue and fills in a smooth guess from the context; which patches depends on the call. One
    to four round blobs, 3-6 % of the call's area together (placed per call), are replaced by
    the prediction smoothed over the blob's own radius, with soft edges. 0.3 % noise.
    """
    d = x[..., 0].astype(np.float64)
    h, w = d.shape
    n = int(rng.integers(1, 5))
    radius = max(1.0, np.sqrt(rng.uniform(0.03, 0.06) * h * w / n / np.pi))
    rows, cols = np.ogrid[:h, :w]
    mask = np.zeros((h, w))
    for r, c in zip(rng.uniform(0, h, n), rng.uniform(0, w, n), strict=True):
        mask[(rows - r) ** 2 + (cols - c) ** 2 <= radius * radius] = 1.0
    mask = ndimage.gaussian_filter(mask, radius / 4, mode="constant")
    smooth = ndimage.gaussian_filter(d, radius, mode="nearest")
    return (1 - mask) * d + mask * smooth + rng.normal(0, 0.003, d.shape)


def quantised(x, rng):
    """8-bit output per call: the prediction rounded to 256 levels of its own range.

    A model served as an 8-bit PNG (a web demo, a viewer's export) is normalised per call and
    rounded: where a call spans a large range, flat terraces appear. No noise: a model better
    than expected in every other way (the fusion must not be hurt by its staircase).
    """
    d = _unit(x[..., 0].astype(np.float64))
    return np.round(d * 255.0) / 255.0


def halo(x, rng):
    """Depth edges blurred and overshooting, as from a decoder's ringing.

    A model that decodes from a coarse latent sharpens what it can: edges come out soft (a
    2 px blur) with a halo on both sides, overshooting by 15-50 % of the step (drawn per call;
    an unsharp mask over 5 px). 0.3 % noise.
    """
    d = x[..., 0].astype(np.float64)
    soft = ndimage.gaussian_filter(d, 2.0, mode="nearest")
    halo_ = soft - ndimage.gaussian_filter(d, 5.0, mode="nearest")
    return soft + rng.uniform(0.15, 0.5) * halo_ + rng.normal(0, 0.003, d.shape)


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

#: name -> (response, normalised per call): the held-out audit models, not in :data:`MODELS`.
AUDIT_MODELS = {
    "clipped": (clipped, True),
    "vignette": (vignette, True),
    "disparity": (disparity, True),
    "dropout": (dropout, True),
    "quantised": (quantised, True),
    "halo": (halo, True),
}


def check_names(parser: argparse.ArgumentParser, *, models: str | None = None,
                geometries: str | None = None, one_geometry: bool = False) -> None:
    """Refuse, through ``parser.error`` (exit status 2), a name no benchmark knows.

    Called by each quality benchmark right after parsing, before any scene is loaded or
    model run: a misspelt model name was a KeyError seconds later, a misspelt geometry an
    empty table and exit status 0.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser: its ``error`` prints the usage and the message, and exits.
    models : str, optional
        ``--models`` as given: comma-separated names of :data:`MODELS` or
        :data:`AUDIT_MODELS`.
    geometries : str, optional
        ``--geometry`` as given: comma-separated names of :data:`scenes.GEOMETRIES` or
        ``custom:TILE:COARSE``.
    one_geometry : bool
        The script runs one geometry: a list is refused.
    """
    from scenes import GEOMETRIES, custom_geometry

    if models is not None:
        known = {**MODELS, **AUDIT_MODELS}
        unknown = [name for name in models.split(",") if name not in known]
        if unknown:
            parser.error(f"--models: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(known)}")
    if geometries is None:
        return
    names = geometries.split(",")
    if one_geometry and len(names) > 1:
        parser.error(f"--geometry {geometries}: this script runs one geometry; give one of "
                     f"{', '.join(GEOMETRIES)} or custom:TILE:COARSE")
    for name in names:
        if name.startswith("custom"):
            try:
                custom_geometry(name)
            except ValueError as exc:
                parser.error(str(exc))
        elif name not in GEOMETRIES:
            parser.error(f"--geometry: unknown {name!r}; choose from {', '.join(GEOMETRIES)} "
                         "or custom:TILE:COARSE")


class SimModel:
    """One model of :data:`MODELS` or :data:`AUDIT_MODELS` behind tiledepth's model protocol.

    Errors are seeded per call.

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
        self.respond, self.normalised = {**MODELS, **AUDIT_MODELS}[name]
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

    def coarse_calls(self) -> list[np.ndarray]:
        """The coarse image's predictions, in call order (keys
        :func:`tiledepth.infer.coarse_key` 0, 1, ...)."""
        return [self.preds[k] for k in sorted(k for k in self.preds if is_coarse_key(k))]

    def anchor(self) -> np.ndarray:
        """The anchor the engine made of the coarse calls
        (:func:`tiledepth.fusion.anchor_of_calls`, every pixel valid)."""
        from tiledepth.fusion import anchor_of_calls

        calls = self.coarse_calls()
        return anchor_of_calls(calls, np.ones(calls[0].shape, bool))

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
        if self.exact_anchor and is_coarse_key(key):  # as exact as a reference raster
            return x[..., 0].astype(np.float32)
        if is_coarse_key(key):  # the coarse image's calls (tiledepth.infer.coarse_key): its
            call = (key - COARSE_KEY) // RETRY_STRIDE  # call-th draw, as calls of one key
            rng = np.random.default_rng([self.seed, COARSE_KEY + 1, n + call])
        else:
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
        if is_coarse_key(key):  # a square patch of the coarse map inverted, at every call
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
