"""The Marigold model: a loaded ``MarigoldDepthPipeline`` behind the model protocol.

:class:`MarigoldModel` runs tiles through the pipeline;
:func:`tiledepth.models.marigold.load_marigold` and
:func:`tiledepth.models.marigold.from_pipeline` make one. Tiles reach the pipeline at their
native size (``processing_resolution=0``: no resizing, only the pipeline's own replicate-padding
to a multiple of the VAE scale factor, removed again before the output).

Reproducibility
---------------
Each tile's initial noise is drawn on the CPU from a ``torch.Generator`` seeded
by :func:`tile_seed` ``(seed, key)`` and handed to the pipeline as ``latents=``.
The same seed therefore gives the same output, and a tile's prediction does not
depend on which batch it was in or where in the batch it sat. With a scheduler
that draws fresh noise inside its steps (``LCMScheduler`` with more than one
step) the pipeline would use torch's global generator for that noise, so such
tiles are run one at a time under a forked, per-tile seeded global generator.

Ensemble members are merged by :func:`tiledepth.models.marigold_ensemble.ensemble_depth`.

Heavy imports (torch, diffusers) happen inside the functions that need them, so importing this
module is instant.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np

from tiledepth.errors import ModelLoadError, OptionError
from tiledepth.models.base import check_prediction
from tiledepth.models.marigold_ensemble import ENSEMBLING, ensemble_depth
from tiledepth.models.oom import Halving
from tiledepth.models.torchutil import stoppable, to_device

if TYPE_CHECKING:
    import torch

__all__ = ["NOISES", "MarigoldModel", "check_noise", "check_run_options", "tile_seed"]

logger = logging.getLogger(__name__)

#: Initial latents: Gaussian noise (diffusion checkpoints) or zeros (end-to-end fine-tuned).
NOISES = ("gaussian", "zeros")

# Schedulers whose ``step`` draws no noise in the Marigold pipeline (it never sets eta > 0).
_DETERMINISTIC_SCHEDULERS = ("DDIMScheduler",)

#: The pipeline's logger: in a call it warns of nothing but an ensemble of 2, once per call
#: (once per batch of tiles); :class:`MarigoldModel` says that once, when it is made.
_PIPELINE_LOGGER = "diffusers.pipelines.marigold.pipeline_marigold_depth"
#: True while this thread (context) runs the pipeline for tiledepth.
_IN_CALL: ContextVar[bool] = ContextVar("tiledepth_in_marigold_call", default=False)


class _QuietInOurCalls(logging.Filter):
    """Drop the pipeline logger's warnings made during tiledepth's own calls of it.

    A filter that reads a context variable, not a logger level: batches run on other
    threads (and a user's own pipeline calls, elsewhere, still warn).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _IN_CALL.get()


_QUIET_FILTER = _QuietInOurCalls()


@contextlib.contextmanager
def _quiet_pipeline():
    """Within the block (this thread's pipeline call), the pipeline's warnings are dropped."""
    log = logging.getLogger(_PIPELINE_LOGGER)
    if _QUIET_FILTER not in log.filters:
        log.addFilter(_QUIET_FILTER)
    token = _IN_CALL.set(True)
    try:
        yield
    finally:
        _IN_CALL.reset(token)


def tile_seed(seed: int, key: int) -> int:
    """Derive the noise seed of one tile from the run's seed and the tile's key.

    The two integers go through NumPy's :class:`~numpy.random.SeedSequence`, so
    nearby seeds and keys give unrelated streams.

    Parameters
    ----------
    seed : int
        The run's seed.
    key : int
        The tile's key (its index; ``-1`` for the coarse image).

    Returns
    -------
    int
        A seed in ``[0, 2**63)`` for ``torch.Generator.manual_seed``.

    Examples
    --------
    >>> tile_seed(0, 3) == tile_seed(0, 3)
    True
    >>> tile_seed(0, 3) == tile_seed(1, 3)
    False
    """
    entropy = [int(seed) % 2**64, int(key) % 2**64]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


class MarigoldModel:
    """A ``MarigoldDepthPipeline`` behind the model protocol.

    Parameters
    ----------
    pipe : MarigoldDepthPipeline
        The loaded pipeline, on the device and dtype to run in.
    steps : int, optional
        Denoising steps; ``None`` resolves to the pipeline's default.
    ensemble : int, default 1
        Predictions per tile.
    seed : int, default 0
        Seed of the per-tile noise.
    batch_size : int, default 4
        Tiles per pipeline call.
    noise : {'gaussian', 'zeros'}, default 'gaussian'
        Initial latents; ``"zeros"`` for end-to-end fine-tuned checkpoints.

    Attributes
    ----------
    name : str
        The checkpoint's hub id or folder.
    kind : {'depth', 'disparity'}
        The pipeline's ``prediction_type`` (affine-invariant either way).
    steps : int
        The resolved number of denoising steps.
    ensemble, seed, batch_size : int
        As given.
    noise : str
        As given.
    """

    #: Ensemble members the uncertainty needs: diffusers' spread (a median absolute
    #: deviation, the lower median) of 2 members is always 0.
    min_uncertainty_ensemble = 3

    def __init__(self, pipe: Any, *, steps: int | None = None, ensemble: int = 1, seed: int = 0,
                 batch_size: int = 4, noise: str = "gaussian") -> None:
        if steps is None:
            steps = pipe.default_denoising_steps
        if steps is None:
            raise OptionError("the checkpoint sets no default number of steps; pass steps=N")
        _check_steps_fit(getattr(pipe, "scheduler", None), int(steps))
        if pipe.text_encoder is None and pipe.empty_text_embedding is None:
            raise ModelLoadError(
                "the Marigold pipeline has neither a text encoder nor an empty_text_embedding; "
                "set pipe.empty_text_embedding or load a checkpoint with its text encoder"
            )
        self.pipe = pipe
        self.name = str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)
        self.steps = int(steps)
        self.ensemble = int(ensemble)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self._halving = Halving()
        self.noise = noise
        prediction_type = getattr(pipe, "config", {}).get("prediction_type")
        self.kind = "disparity" if prediction_type == "disparity" else "depth"
        if self.ensemble == 2:  # said once here, not by the pipeline on every call
            logger.warning("ensemble 2: Marigold's results are about those of no ensemble "
                           "(twice the time); use ensemble 3 or more, or 1")
        if noise == "zeros" and self.steps > 1:
            logger.warning("a model run from zero noise is trained for one step; steps=%d "
                           "may degrade it", self.steps)

    @property
    def device(self) -> str:
        """The pipeline's device, e.g. ``"cuda:0"`` (for batch size ``auto``)."""
        return str(self.pipe.device)

    @property
    def min_tile(self) -> int | None:
        """Smallest tile side: one latent pixel at the UNet's deepest level (64 for Marigold)."""
        try:
            levels = len(self.pipe.unet.config.block_out_channels)
            return int(self.pipe.vae_scale_factor) * 2 ** (levels - 1)
        except (AttributeError, TypeError):
            return None

    def __repr__(self) -> str:
        return (
            f"MarigoldModel(name={self.name!r}, steps={self.steps}, ensemble={self.ensemble}, "
            f"seed={self.seed}, batch_size={self.batch_size})"
        )

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """Predict depth for a batch of tiles.

        A batch that runs out of GPU memory is split in halves and retried
        (:class:`~tiledepth.models.oom.Halving`); the smaller size is kept.

        Parameters
        ----------
        batch : ndarray of shape (B, H, W, 3)
            float32 RGB in [0, 1] (values are clipped to it).
        keys : sequence of int
            One key per tile; it seeds the tile's noise.

        Returns
        -------
        ndarray of shape (B, H, W)
            float32 depth in [0, 1], 0 near and 1 far.
        """
        return self._predict(batch, keys, uncertainty=False)

    def predict_with_uncertainty(self, batch: np.ndarray,
                                 keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Depth and the ensemble's uncertainty, both (B, H, W) float32; needs ensemble >= 3.

        The uncertainty is the spread of the ensemble members about the
        ensembled depth (diffusers' ``output_uncertainty``), in the same units;
        diffusers' spread (a median absolute deviation, the lower median) of 2
        members is always 0.
        """
        if self.ensemble < self.min_uncertainty_ensemble:
            raise OptionError(f"Marigold's uncertainty needs ensemble >= "
                              f"{self.min_uncertainty_ensemble} (the spread of 2 members is "
                              f"always 0), got ensemble {self.ensemble}")
        return self._predict(batch, keys, uncertainty=True)

    def _predict(self, batch: np.ndarray, keys: Sequence[int], *, uncertainty: bool):
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"batch must have shape (B, H, W, 3), got {batch.shape}")
        if len(keys) != batch.shape[0]:
            raise ValueError(f"got {len(keys)} keys for a batch of {batch.shape[0]} tiles")
        if uncertainty:  # (depth, uncertainty) stacked, so that halving splits both alike
            both = self._halving(self._predict_stacked, batch, keys, name=self.name)
            # the depth kept is a copy: a view would keep the whole stack alive with it
            return check_prediction(both[:, 0], batch, self.name), both[:, 1]
        depth = self._halving(self._predict_chunk, batch, keys, name=self.name)
        # new arrays (a chunk's read-back, or chunks put together): kept, not copied again
        return check_prediction(depth, batch, self.name, fresh=True)

    def _predict_stacked(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        depth, spread = self._predict_chunk(batch, keys, uncertainty=True)
        return np.stack([depth, spread], axis=1)  # [B,2,H,W]

    def _predict_chunk(self, batch: np.ndarray, keys: Sequence[int],
                       uncertainty: bool = False) -> np.ndarray:
        if self._needs_global_rng():
            # The scheduler draws step noise from torch's global generator: one tile per call.
            parts = [self._predict_one_by_one(batch[i : i + 1], keys[i], uncertainty)
                     for i in range(len(keys))]
            if uncertainty:
                return (np.concatenate([d for d, _ in parts]),
                        np.concatenate([u for _, u in parts]))
            depth = np.concatenate(parts, axis=0)
        else:
            depth = self._run(batch, keys, uncertainty)
        return depth

    def _run(self, batch: np.ndarray, keys: Sequence[int], uncertainty: bool = False):
        import torch

        pipe = self.pipe
        n_tiles, height, width = batch.shape[:3]
        with torch.inference_mode(), stoppable(pipe), _fp32_decode(pipe), _quiet_pipeline(), \
                _no_progress_bars(pipe):
            # 1. Tiles to channel-first tensors: uploaded as they are (pinned, non-blocking on
            # CUDA), clipped, permuted and cast on the device.
            image = to_device(batch, pipe.device, pipe.dtype)  # [B,3,H,W]

            # 2. Initial noise, one CPU generator per tile, laid out tile-major as the pipeline
            # repeats image latents (repeat_interleave over the ensemble).
            latents = self._initial_noise(keys, height, width)  # [B*E,C,h,w]
            latents = latents.to(device=pipe.device, dtype=pipe.dtype)

            # 3. Denoise at native size; padding to the VAE factor is undone by the pipeline.
            # With an ensemble, members are aligned and merged with the official settings.
            # Between steps (and ensemble batches) the pipeline checks whether the run is ending.
            out = pipe(
                image,
                num_inference_steps=self.steps,
                ensemble_size=self.ensemble,
                processing_resolution=0,
                match_input_resolution=True,
                batch_size=n_tiles,
                ensembling_kwargs=ENSEMBLING if self.ensemble > 1 else None,
                latents=latents,
                output_type="pt",
                output_uncertainty=uncertainty,
            )
            # 4. One copy back to the host per batch (two with the uncertainty), kept as it
            # is: a new array, which check_prediction need not copy again (fresh=True).
            depth = out.prediction[:, 0].to(dtype=torch.float32).cpu().numpy()  # [B,H,W]
            if uncertainty:
                return depth, out.uncertainty[:, 0].to(dtype=torch.float32).cpu().numpy()
        return depth

    def _initial_noise(self, keys: Sequence[int], height: int, width: int) -> torch.Tensor:
        import torch

        factor = self.pipe.vae_scale_factor
        shape = (
            self.ensemble,
            self.pipe.vae.config.latent_channels,
            -(-height // factor),  # the pipeline pads H and W up to a multiple of the factor
            -(-width // factor),
        )
        if self.noise == "zeros":
            return torch.zeros((len(keys) * shape[0],) + shape[1:], dtype=torch.float32)
        noise = []
        for key in keys:
            generator = torch.Generator(device="cpu").manual_seed(tile_seed(self.seed, key))
            noise.append(torch.randn(shape, generator=generator, dtype=torch.float32))  # [E,C,h,w]
        return torch.cat(noise, dim=0)  # [B*E,C,h,w]

    def _needs_global_rng(self) -> bool:
        scheduler = type(self.pipe.scheduler).__name__
        return self.steps > 1 and scheduler not in _DETERMINISTIC_SCHEDULERS

    def _predict_one_by_one(self, tile: np.ndarray, key: int, uncertainty: bool = False):
        import torch

        device = torch.device(self.pipe.device)
        if device.type == "cpu":
            fork = torch.random.fork_rng(devices=[])
        else:
            fork = torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
        with fork:
            # Seeds every device's global generator; the XOR keeps it apart from the latents' seed.
            torch.manual_seed(tile_seed(self.seed, key) ^ 0x5EED)
            return self._run(tile, [key], uncertainty)


def _upcast_decoder(pipe: Any, *, say: bool = True,
                    changed: list[tuple[Any, Any]] | None = None) -> list[tuple[Any, Any]]:
    """Put a bfloat16 pipeline's VAE decoder in float32 (2**-8 depth steps otherwise).

    Returns the ``(module, dtype)`` pairs it changed, for :func:`_fp32_decode` to put back
    on a pipeline tiledepth did not load (an empty list where the decoder was float32);
    each is appended to ``changed`` (when given) before it is converted, so a conversion
    that fails midway (out of memory) leaves what to put back there.
    """
    import torch

    changed = [] if changed is None else changed
    vae = getattr(pipe, "vae", None)
    if vae is None or getattr(pipe, "dtype", None) != torch.bfloat16:
        return changed
    for module in (vae.decoder, getattr(vae, "post_quant_conv", None)):
        weight = next(module.parameters(), None) if module is not None else None
        if weight is not None and weight.dtype != torch.float32:
            changed.append((module, weight.dtype))
            module.to(torch.float32)
    if changed and say:
        logger.info("bf16: the VAE decoder runs in fp32 (bf16 depth would fall on steps of "
                    "2**-8)")
    return changed


@contextlib.contextmanager
def _fp32_decode(pipe: Any):
    """Within the block, ``pipe`` decodes and post-processes its depth latents in float32,
    ensembles with :func:`ensemble_depth`, and skips its input range check (two host
    syncs; :func:`to_device` clipped already).

    diffusers' ``decode_prediction`` averages, clips and rescales the VAE's
    output in the pipeline's dtype: in bfloat16 depth in [0.5, 1] falls on
    steps of 2**-8, terraces a hillshade shows. Here the VAE output is cast to
    float32 first, and the latents are cast to the VAE decoder's dtype: float32
    for bfloat16, where :func:`~tiledepth.models.marigold.load_marigold` upcast the
    decoder for good, or, for a pipeline the caller loaded, upcast here for the block
    and put back after (the caller's pipeline is left as it was given).
    """
    import torch

    vae = pipe.vae

    def decode_prediction(pred_latent: torch.Tensor) -> torch.Tensor:  # [B,4,h,w]
        dtype = next(vae.decoder.parameters()).dtype
        latent = pred_latent.to(dtype) / vae.config.scaling_factor
        rgb = vae.decode(latent, return_dict=False)[0].to(torch.float32)  # [B,3,H,W]
        return (rgb.mean(dim=1, keepdim=True).clamp(-1.0, 1.0) + 1.0) / 2.0  # [B,1,H,W]

    upcast: list[tuple[Any, Any]] = []  # (none where tiledepth loaded the pipeline)
    processor = pipe.image_processor
    try:
        _upcast_decoder(pipe, say=False, changed=upcast)  # inside: a failure puts it back
        pipe.decode_prediction = decode_prediction
        pipe.ensemble_depth = ensemble_depth  # on the device, no host syncs
        processor.check_image_values_range = lambda image: None
        yield
    finally:
        with contextlib.suppress(AttributeError):
            del pipe.decode_prediction
        with contextlib.suppress(AttributeError):
            del pipe.ensemble_depth
        with contextlib.suppress(AttributeError):
            del processor.check_image_values_range
        for module, dtype in upcast:  # bfloat16 to float32 and back is exact
            module.to(dtype)


@contextlib.contextmanager
def _no_progress_bars(pipe: Any):
    """Within the block, ``pipe`` shows no progress bars (one per batch of tiles would
    drown tiledepth's own progress); after it, the caller's setting is back.

    diffusers keeps the setting as the pipeline's ``_progress_bar_config`` dict
    (``set_progress_bar_config``); :func:`~tiledepth.models.marigold.load_marigold`
    disables the bars for good, a caller's own pipeline shows them unless it said not to.
    """
    had = "_progress_bar_config" in vars(pipe)
    config = vars(pipe).get("_progress_bar_config")
    pipe._progress_bar_config = dict(config if isinstance(config, dict) else {},
                                     disable=True)
    try:
        yield
    finally:
        if had:
            pipe._progress_bar_config = config
        else:
            with contextlib.suppress(AttributeError):
                del pipe._progress_bar_config


def check_run_options(*, steps: int | None, ensemble: int, seed: int, batch_size: int) -> None:
    """Raise TypeError or OptionError, naming the option, for a bad run option."""
    for option, value in (("ensemble", ensemble), ("seed", seed), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{option} must be an int, got {type(value).__name__}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))):
        raise TypeError(f"steps must be an int or None, got {type(steps).__name__}")
    if steps is not None and steps < 1:
        raise OptionError(f"steps must be at least 1, got {steps}")
    if ensemble < 1:
        raise OptionError(f"ensemble must be at least 1, got {ensemble}")
    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")


def _check_steps_fit(scheduler: Any, steps: int) -> None:
    """Raise OptionError where ``scheduler`` cannot run ``steps`` denoising steps.

    A scheduler refuses more inference steps than its training timesteps
    (``num_train_timesteps``, 1000 for Marigold), an ``LCMScheduler`` also more than its
    ``original_inference_steps``; it said so only in the first model call, as a bare
    ValueError. Checked here, when the pipeline (and so its scheduler) is known, before
    any model call.
    """
    config = getattr(scheduler, "config", None)
    limits = [(getattr(config, key, None), why) for key, why in (
        ("num_train_timesteps", "the scheduler's training timesteps"),
        ("original_inference_steps", "the LCM scheduler's original inference steps"))]
    for limit, why in limits:
        if isinstance(limit, int) and not isinstance(limit, bool) and steps > limit:
            raise OptionError(f"steps (--steps) must be at most {limit} ({why}) for this "
                              f"checkpoint, got {steps}; use fewer steps or leave steps unset")


def check_noise(noise: str, ensemble: int) -> None:
    """Raise OptionError for an unknown ``noise``, or zero noise with an ensemble."""
    if noise not in NOISES:
        raise OptionError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
    if noise == "zeros" and ensemble > 1:
        raise OptionError(
            f"ensemble={ensemble} with a deterministic model (one step from zero noise) repeats "
            "the same prediction; use ensemble=1"
        )
