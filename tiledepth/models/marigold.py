"""The Marigold backend: diffusers' ``MarigoldDepthPipeline`` behind the model protocol.

Tiles reach the pipeline at their native size (``processing_resolution=0``: no
resizing, only the pipeline's own replicate-padding to a multiple of the VAE
scale factor, removed again before the output). The output is Marigold's
affine-invariant depth, 0 near and 1 far, one map per tile.

Reproducibility
---------------
Each tile's initial noise is drawn on the CPU from a ``torch.Generator`` seeded
by :func:`tile_seed` ``(seed, key)`` and handed to the pipeline as ``latents=``.
The same seed therefore gives the same output, and a tile's prediction does not
depend on which batch it was in or where in the batch it sat. With a scheduler
that draws fresh noise inside its steps (``LCMScheduler`` with more than one
step) the pipeline would use torch's global generator for that noise, so such
tiles are run one at a time under a forked, per-tile seeded global generator.

Checkpoints without a text encoder
----------------------------------
Marigold conditions on one fixed tensor, the CLIP embedding of the empty prompt.
A checkpoint may drop the CLIP text encoder and tokenizer (saved with
``text_encoder=None, tokenizer=None``; ``model_index.json`` then lists them as
``[null, null]``) and ship that tensor instead, as the file
``empty_text_embedding.safetensors`` at the checkpoint's top level holding one
tensor named ``"empty_text_embedding"`` of shape (1, T, D) (T tokens, D the
UNet's ``cross_attention_dim``). Write it with :func:`save_empty_text_embedding`.
diffusers itself does not save ``pipe.empty_text_embedding``, and loading such
a folder needs ``text_encoder=None, tokenizer=None`` passed to
``from_pretrained``; :func:`load_marigold` does both.

The Marigold family
-------------------
All of it loads through diffusers (``tiledepth models`` lists the names):
v1-1 (the default) and v1-0 run a DDIM schedule from Gaussian noise; the LCM
checkpoint runs an ``LCMScheduler`` (few steps, fresh noise between steps); the
end-to-end fine-tuned model of Martin Garcia et al. (``marigold-e2e-ft``) is
deterministic: one DDIM step at the last ("trailing") timestep from *zero*
latents, which :func:`load_marigold` sets up with ``noise="zeros",
timestep_spacing="trailing"``. In that mode a ``model_index.json`` naming a
plain ``StableDiffusionPipeline`` (how the hub lists that checkpoint) is
accepted too; its components load into the Marigold depth pipeline, with
Marigold's settings filled in where the index lacks them. A checkpoint whose ``prediction_type`` is
``"disparity"`` gives a model of kind ``"disparity"``.

Ensembling
----------
``ensemble=N`` runs N predictions per tile (each from its own seeded noise) and
merges them with an affine-aligned median. diffusers aligns the members with
BFGS, a ``.item()`` host sync per member pair per cost evaluation, tile by tile
(the official settings, 50 iterations to 1e-6, took seconds per tile and idled
the GPU); :func:`ensemble_depth` aligns them on their device instead, by least
squares against the members' median, without a host sync (:data:`ENSEMBLING`;
on synthetic members it is as close to the truth as BFGS with the official
settings, BENCHMARKS.md). The spread of the aligned members
(median absolute deviation, in the tile's own units) is the tile's uncertainty,
returned by :meth:`MarigoldModel.predict_with_uncertainty`.

Heavy imports (torch, diffusers, huggingface_hub) happen inside the functions
that need them, so importing this module is instant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tiledepth.errors import ModelLoadError, OptionError, first_line
from tiledepth.models.base import check_prediction
from tiledepth.models.oom import Halving
from tiledepth.models.torchutil import (  # noqa: F401  (re-exported: the public names moved)
    DTYPES,
    fetch_hint,
    quiet_logger,
    resolve_device,
    resolve_dtype,
    stoppable,
    to_device,
    why_not_downloaded,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: The checkpoint used when none is named.
DEFAULT_CHECKPOINT = "prs-eth/marigold-depth-v1-1"

#: File holding the empty-prompt embedding of a checkpoint saved without a text encoder.
EMPTY_TEXT_EMBEDDING_FILE = "empty_text_embedding.safetensors"
#: Name of the tensor inside :data:`EMPTY_TEXT_EMBEDDING_FILE`.
EMPTY_TEXT_EMBEDDING_KEY = "empty_text_embedding"


#: Ensembling settings, passed to :func:`ensemble_depth` in place of the pipeline's
#: (the solver's settings are those of the official Marigold repository, for comparison runs
#: with diffusers' own ``ensemble_depth``; :func:`ensemble_depth` ignores them).
ENSEMBLING = {"reduction": "median", "regularizer_strength": 0.02, "max_iter": 50, "tol": 1e-6,
              "max_res": 1024}
#: Initial latents: Gaussian noise (diffusion checkpoints) or zeros (end-to-end fine-tuned).
NOISES = ("gaussian", "zeros")

# Pipeline classes whose checkpoints predict depth with the MarigoldDepthPipeline layout.
_DEPTH_PIPELINE_CLASSES = ("MarigoldDepthPipeline", "MarigoldPipeline")
# The end-to-end fine-tuned checkpoints may be saved as plain Stable Diffusion pipelines.
_E2E_PIPELINE_CLASSES = ("StableDiffusionPipeline",)
# Pipeline settings such a checkpoint's model_index.json lacks.
_E2E_CONFIG = {"prediction_type": "depth", "scale_invariant": True, "shift_invariant": True,
               "default_denoising_steps": 1, "default_processing_resolution": 768}
# Components a checkpoint must have on disk.
_REQUIRED_COMPONENTS = ("unet", "vae", "scheduler")
# Components that may be dropped in favour of EMPTY_TEXT_EMBEDDING_FILE.
_TEXT_COMPONENTS = ("text_encoder", "tokenizer")
# Schedulers whose ``step`` draws no noise in the Marigold pipeline (it never sets eta > 0).
_DETERMINISTIC_SCHEDULERS = ("DDIMScheduler",)


# --------------------------------------------------------------------------- options


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


# --------------------------------------------------------------------------- loading


def is_marigold_pipeline(obj: object) -> bool:
    """Return whether ``obj`` is a diffusers ``MarigoldDepthPipeline`` (or subclass).

    diffusers is only imported when a class in ``obj``'s MRO comes from it, in
    which case it is already loaded; a plain callable never triggers an import.
    """
    if not any(cls.__module__.startswith("diffusers") for cls in type(obj).__mro__):
        return False
    from diffusers import MarigoldDepthPipeline

    return isinstance(obj, MarigoldDepthPipeline)


def load_marigold(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    steps: int | None = None,
    ensemble: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    noise: str = "gaussian",
    timestep_spacing: str | None = None,
) -> MarigoldModel:
    """Load a Marigold depth checkpoint from a local folder or the Hugging Face Hub.

    A hub id already in the local Hugging Face cache loads without a network,
    also with ``HF_HUB_OFFLINE=1``.

    Parameters
    ----------
    name_or_path : str
        A folder holding a saved ``MarigoldDepthPipeline``, or a hub id such as
        :data:`DEFAULT_CHECKPOINT`. An existing folder wins over a hub id.
    device : str, default "auto"
        See :func:`resolve_device`.
    dtype : str, default "auto"
        See :func:`resolve_dtype`.
    steps : int, optional
        Denoising steps per tile; ``None`` uses the checkpoint's default.
    ensemble : int, default 1
        Predictions per tile, merged by Marigold's affine-aligned median.
    seed : int, default 0
        Seed of the per-tile noise (see :func:`tile_seed`).
    batch_size : int, default 4
        Tiles per pipeline call.
    noise : {'gaussian', 'zeros'}, default 'gaussian'
        Initial latents. ``"zeros"`` is for end-to-end fine-tuned checkpoints
        (deterministic; ``ensemble`` must be 1), and also accepts a checkpoint
        saved as a plain ``StableDiffusionPipeline``.
    timestep_spacing : str, optional
        Override the scheduler's ``timestep_spacing`` (``"trailing"`` for the
        end-to-end fine-tuned checkpoints).

    Returns
    -------
    MarigoldModel

    Examples
    --------
    The end-to-end fine-tuned model, as ``--model marigold-e2e-ft`` loads it:

    >>> model = load_marigold("GonzaloMG/marigold-e2e-ft-depth", steps=1, noise="zeros",
    ...                       timestep_spacing="trailing")  # doctest: +SKIP
    >>> model.steps, model.noise  # doctest: +SKIP
    (1, 'zeros')

    Raises
    ------
    ModelLoadError
        If the weights cannot be found (with a one-line hint on how to fetch
        them) or the folder is not a Marigold depth checkpoint.
    OptionError
        If an option has a bad value or names an unavailable device.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    _check_run_options(steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size)
    _check_noise(noise, ensemble)

    # 1. Resolve device and dtype first: a bad option should not cost a model load.
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    # 2. Find the checkpoint folder: a local folder, or the hub id's snapshot in the HF cache.
    is_local = os.path.isdir(os.path.expanduser(name))
    # Half precision: the checkpoint's fp16 weights where it has them (half the download,
    # no cast), else its fp32 ones.
    import torch

    variant = "fp16" if torch_dtype != torch.float32 else None
    folder = os.path.expanduser(name) if is_local else _download(name, variant)

    # 3. Check the folder is a Marigold depth checkpoint; find which text components it dropped.
    classes = _DEPTH_PIPELINE_CLASSES + (_E2E_PIPELINE_CLASSES if noise == "zeros" else ())
    dropped, index = _check_checkpoint(folder, name, classes=classes)

    # 4. Load the pipeline, then its empty-prompt embedding when it has no text encoder.
    import diffusers
    from diffusers import MarigoldDepthPipeline

    extra: dict[str, Any] = {component: None for component in dropped}
    if index.get("_class_name") in _E2E_PIPELINE_CLASSES:
        extra.update({k: v for k, v in _E2E_CONFIG.items() if k not in index})
    from tiledepth.models.torchutil import quiet_loading
    from tiledepth.progress import status

    try:  # no loading bars but tiledepth's status line; under -q no warnings
        with status(f"loading the model {name}"), quiet_loading():
            if timestep_spacing is not None:
                scheduler_class = getattr(diffusers, index["scheduler"][1])
                extra["scheduler"] = scheduler_class.from_pretrained(
                    folder, subfolder="scheduler", timestep_spacing=timestep_spacing)
            pipe = _from_pretrained(MarigoldDepthPipeline, folder, variant,
                                    **_dtype_kwarg(torch_dtype), **extra)
    except (OSError, ValueError) as exc:
        hint = "" if is_local else f"; {fetch_hint(name)}"
        raise ModelLoadError(
            f"cannot load the Marigold checkpoint {name!r} from {folder}: {first_line(exc)}{hint}"
        ) from exc
    if pipe.text_encoder is None and pipe.empty_text_embedding is None:
        embedding = _load_empty_text_embedding(folder, name)
        width = pipe.unet.config.cross_attention_dim
        if embedding.shape[-1] != width:
            raise ModelLoadError(
                f"{EMPTY_TEXT_EMBEDDING_FILE} of {name!r} has width {embedding.shape[-1]}, "
                f"but the UNet's cross_attention_dim is {width}"
            )
        pipe.empty_text_embedding = embedding.to(dtype=torch_dtype)

    # 5. Quiet, on its device; the text encoder is used once, for the empty prompt, then freed.
    pipe.set_progress_bar_config(disable=True)
    if pipe.text_encoder is not None and pipe.empty_text_embedding is None:
        embed_empty_prompt(pipe, device)
    pipe = pipe.to(device)
    if device.startswith("cuda"):
        pipe.vae.enable_slicing()  # decode memory does not grow with the batch
    model = from_pipeline(pipe, steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size,
                          noise=noise)
    model.name = name
    logger.info("loaded Marigold %s on %s as %s", name, device, torch_dtype)
    return model


def from_pipeline(
    pipe: Any,
    *,
    steps: int | None = None,
    ensemble: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    noise: str = "gaussian",
) -> MarigoldModel:
    """Wrap an already-loaded ``MarigoldDepthPipeline`` as a model.

    The pipeline is used on its current device and dtype. Parameters are as in
    :func:`load_marigold`.

    Raises
    ------
    TypeError
        If ``pipe`` is not a ``MarigoldDepthPipeline``.
    ModelLoadError
        If the pipeline has neither a text encoder nor an empty-prompt embedding.
    OptionError
        If ``steps`` is None and the pipeline has no default number of steps.
    """
    if not is_marigold_pipeline(pipe):
        raise TypeError(
            f"pipe must be a diffusers MarigoldDepthPipeline, got {type(pipe).__name__}"
        )
    _check_run_options(steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size)
    _check_noise(noise, ensemble)
    return MarigoldModel(pipe, steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size,
                         noise=noise)


def embed_empty_prompt(pipe: Any, device: str) -> None:
    """Set ``pipe.empty_text_embedding`` with its text encoder on ``device``, then drop the encoder.

    Marigold conditions on the CLIP embedding of the empty prompt only; the
    pipeline computes it on its first call exactly this way, but keeps the
    text encoder (about 0.7 GB in fp16) on the GPU for the whole run.
    """
    import torch

    tokenizer = pipe.tokenizer
    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    encoder = pipe.text_encoder.to(device)
    with torch.no_grad():
        pipe.empty_text_embedding = encoder(ids.to(device))[0]  # [1,T,D]
    pipe.text_encoder = None
    del encoder
    logger.info("text encoder used for the empty prompt and freed")


def save_empty_text_embedding(pipe: Any, folder: str | os.PathLike) -> str:
    """Write ``pipe.empty_text_embedding`` to ``folder`` in this module's convention.

    Call it after ``pipe.save_pretrained(folder)`` for a pipeline without a text
    encoder. Returns the path of the written file.
    """
    import torch
    from safetensors.torch import save_file

    embedding = pipe.empty_text_embedding
    if not torch.is_tensor(embedding):
        raise ValueError("pipe.empty_text_embedding is not set; nothing to save")
    path = os.path.join(os.fspath(folder), EMPTY_TEXT_EMBEDDING_FILE)
    save_file({EMPTY_TEXT_EMBEDDING_KEY: embedding.detach().to("cpu").contiguous()}, path)
    return path


# --------------------------------------------------------------------------- the model


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

    def __init__(self, pipe: Any, *, steps: int | None = None, ensemble: int = 1, seed: int = 0,
                 batch_size: int = 4, noise: str = "gaussian") -> None:
        if steps is None:
            steps = pipe.default_denoising_steps
        if steps is None:
            raise OptionError("the checkpoint sets no default number of steps; pass steps=N")
        if pipe.text_encoder is None and pipe.empty_text_embedding is None:
            raise ModelLoadError(
                "the Marigold pipeline has neither a text encoder nor an empty_text_embedding; "
                "set pipe.empty_text_embedding or load a checkpoint with its text encoder"
            )
        self.pipe = pipe
        _upcast_decoder(pipe)
        self.name = str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)
        self.steps = int(steps)
        self.ensemble = int(ensemble)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self._halving = Halving()
        self.noise = noise
        prediction_type = getattr(pipe, "config", {}).get("prediction_type")
        self.kind = "disparity" if prediction_type == "disparity" else "depth"
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
        if self.ensemble < 3:
            raise OptionError(f"Marigold's uncertainty needs ensemble >= 3 (the spread of 2 "
                              f"members is always 0), got ensemble {self.ensemble}")
        return self._predict(batch, keys, uncertainty=True)

    def _predict(self, batch: np.ndarray, keys: Sequence[int], *, uncertainty: bool):
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"batch must have shape (B, H, W, 3), got {batch.shape}")
        if len(keys) != batch.shape[0]:
            raise ValueError(f"got {len(keys)} keys for a batch of {batch.shape[0]} tiles")
        if uncertainty:  # (depth, uncertainty) stacked, so that halving splits both alike
            both = self._halving(self._predict_stacked, batch, keys, name=self.name)
            return check_prediction(both[:, 0], batch, self.name), both[:, 1]
        depth = self._halving(self._predict_chunk, batch, keys, name=self.name)
        return check_prediction(depth, batch, self.name)

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
        with torch.inference_mode(), stoppable(pipe), _fp32_decode(pipe):
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
            # 4. One copy back to the host per batch (two with the uncertainty).
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


# --------------------------------------------------------------------------- helpers


def _check_run_options(*, steps: int | None, ensemble: int, seed: int, batch_size: int) -> None:
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


def _check_noise(noise: str, ensemble: int) -> None:
    if noise not in NOISES:
        raise OptionError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
    if noise == "zeros" and ensemble > 1:
        raise OptionError(
            f"ensemble={ensemble} with a deterministic model (one step from zero noise) repeats "
            "the same prediction; use ensemble=1"
        )


def _upcast_decoder(pipe: Any) -> None:
    """Keep a bfloat16 pipeline's VAE decoder in float32 (2**-8 depth steps otherwise)."""
    import torch

    vae = getattr(pipe, "vae", None)
    if vae is None or getattr(pipe, "dtype", None) != torch.bfloat16:
        return
    vae.decoder.to(torch.float32)
    if getattr(vae, "post_quant_conv", None) is not None:
        vae.post_quant_conv.to(torch.float32)
    logger.info("bf16: the VAE decoder runs in fp32 (bf16 depth would fall on steps of 2**-8)")


def ensemble_depth(depth: torch.Tensor, scale_invariant: bool = True,
                   shift_invariant: bool = True, output_uncertainty: bool = False,
                   reduction: str = "median", max_res: int | None = 1024, iterations: int = 3,
                   **_ignored: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Align ensemble members and merge them, on their device, without one host sync.

    A drop-in for diffusers' ``MarigoldDepthPipeline.ensemble_depth`` (same
    arguments and outputs), which aligns members with BFGS and a ``.item()`` per
    member pair per cost evaluation. Here each member is normalised to [0, 1]
    (the same start as diffusers'), then ``iterations`` times fitted by least
    squares (a scale and shift, or a scale) to the members' median, in float32
    on a copy at most ``max_res`` pixels on a side; the aligned members are
    reduced (median, or mean) and the result rescaled to [0, 1], as in diffusers.

    Parameters
    ----------
    depth : torch.Tensor of shape (E, 1, H, W)
        The members of one tile.
    scale_invariant, shift_invariant : bool
        The checkpoint's invariances.
    output_uncertainty : bool
        Also return the members' spread (median absolute deviation, or std with
        ``reduction="mean"``), in the output's units.
    reduction : {'median', 'mean'}
    max_res : int, optional
        Longest side the fit sees.
    iterations : int
        Fits against the median.

    Returns
    -------
    (torch.Tensor of shape (1, 1, H, W), torch.Tensor of shape (1, 1, H, W) or None)
    """
    import torch

    if not scale_invariant:
        raise ValueError("ensembling needs a scale-invariant (or affine-invariant) model")
    members = depth.shape[0]
    full = depth.to(torch.float32)  # [E,1,H,W]
    fit = full
    side = max(full.shape[-2:])
    if max_res is not None and side > max_res:
        step = -(-side // max_res)
        fit = full[..., ::step, ::step]
    x = fit.reshape(members, -1)  # [E,P]
    low = x.amin(dim=1, keepdim=True)
    high = x.amax(dim=1, keepdim=True)
    if shift_invariant:
        scale = 1.0 / (high - low).clamp(min=1e-6)
        shift = -scale * low
    else:
        scale = 1.0 / high.clamp(min=1e-6)
        shift = torch.zeros_like(scale)
    for _ in range(max(0, iterations)):
        aligned = x * scale + shift  # [E,P]
        target = aligned.median(dim=0).values  # [P]
        if shift_invariant:
            xm, tm = x.mean(dim=1, keepdim=True), target.mean()
            dx = x - xm
            scale = (dx * (target - tm)).mean(dim=1, keepdim=True) / \
                (dx * dx).mean(dim=1, keepdim=True).clamp(min=1e-12)
            shift = tm - scale * xm
        else:
            scale = (x * target).mean(dim=1, keepdim=True) / \
                (x * x).mean(dim=1, keepdim=True).clamp(min=1e-12)
    aligned = full * scale.view(members, 1, 1, 1) + shift.view(members, 1, 1, 1)  # [E,1,H,W]
    uncertainty = None
    if reduction == "mean":
        prediction = aligned.mean(dim=0, keepdim=True)
        if output_uncertainty:
            uncertainty = aligned.std(dim=0, keepdim=True)
    elif reduction == "median":
        prediction = aligned.median(dim=0, keepdim=True).values
        if output_uncertainty:
            uncertainty = (aligned - prediction).abs().median(dim=0, keepdim=True).values
    else:
        raise ValueError(f"reduction must be 'median' or 'mean', got {reduction!r}")
    high = prediction.amax()
    low = prediction.amin() if shift_invariant else torch.zeros_like(high)
    span = (high - low).clamp(min=1e-6)
    prediction = (prediction - low) / span  # [1,1,H,W]
    if uncertainty is not None:
        uncertainty = uncertainty / span
    return prediction, uncertainty


@contextlib.contextmanager
def _fp32_decode(pipe: Any):
    """Within the block, ``pipe`` decodes and post-processes its depth latents in float32,
    ensembles with :func:`ensemble_depth`, and skips its input range check (two host
    syncs; :func:`to_device` clipped already).

    diffusers' ``decode_prediction`` averages, clips and rescales the VAE's
    output in the pipeline's dtype: in bfloat16 depth in [0.5, 1] falls on
    steps of 2**-8, terraces a hillshade shows. Here the VAE output is cast to
    float32 first, and the latents are cast to the VAE decoder's dtype (float32
    when :class:`MarigoldModel` upcast it, as it does for bfloat16).
    """
    import torch

    vae = pipe.vae

    def decode_prediction(pred_latent: torch.Tensor) -> torch.Tensor:  # [B,4,h,w]
        dtype = next(vae.decoder.parameters()).dtype
        latent = pred_latent.to(dtype) / vae.config.scaling_factor
        rgb = vae.decode(latent, return_dict=False)[0].to(torch.float32)  # [B,3,H,W]
        return (rgb.mean(dim=1, keepdim=True).clamp(-1.0, 1.0) + 1.0) / 2.0  # [B,1,H,W]

    pipe.decode_prediction = decode_prediction
    pipe.ensemble_depth = ensemble_depth  # on the device, no host syncs
    processor = pipe.image_processor
    processor.check_image_values_range = lambda image: None
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError):
            del pipe.decode_prediction
        with contextlib.suppress(AttributeError):
            del pipe.ensemble_depth
        with contextlib.suppress(AttributeError):
            del processor.check_image_values_range


def _dtype_kwarg(torch_dtype: torch.dtype) -> dict[str, Any]:
    # diffusers renamed from_pretrained's torch_dtype= to dtype= and warns on the old name.
    from diffusers.utils import deprecation_utils

    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {key: torch_dtype}


def _from_pretrained(cls: Any, folder: str, variant: str | None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` of the ``variant`` weights, or the plain ones where it has none."""
    if variant is not None:
        try:
            return cls.from_pretrained(folder, variant=variant, **kwargs)
        except (OSError, ValueError) as exc:
            logger.info("no %s weights in %s (%s); loading the fp32 ones", variant, folder,
                        first_line(exc))
    return cls.from_pretrained(folder, **kwargs)


def _download(name: str, variant: str | None = None) -> str:
    """Return the local snapshot folder of hub id ``name``, downloading it if needed.

    With ``variant`` (``"fp16"``) those weight files are fetched where the
    checkpoint has them, the plain ones where it does not.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        if os.path.exists(name):
            raise ModelLoadError(
                f"{name} is a file, not a checkpoint folder; pass the folder that holds "
                "model_index.json with --model /path/to/folder"
            ) from exc
        raise ModelLoadError(
            f"no folder named {name!r}, and it is not a Hugging Face hub id either; "
            "pass an existing checkpoint folder with --model /path/to/folder or a hub id "
            f"such as {DEFAULT_CHECKPOINT}"
        ) from exc

    from diffusers import MarigoldDepthPipeline

    try:
        # diffusers' download: a cached snapshot is used without a network call when offline,
        # and when the Hub is unreachable; missing files raise OSError (EnvironmentError)
        # chained to huggingface_hub's OfflineModeIsEnabled or httpx's ConnectError.
        # Its "Couldn't connect to the Hub ... will try the cache" warning is noise here: a
        # failure gets our own one-line error below.
        with quiet_logger("diffusers.pipelines.pipeline_utils"):
            if variant is not None:
                try:
                    return str(MarigoldDepthPipeline.download(name, variant=variant))
                except (OSError, ValueError):
                    logger.info("no %s weights for %s on the Hub or in the cache", variant, name)
            return str(MarigoldDepthPipeline.download(name))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot find the Marigold checkpoint {name!r}: no such local folder, and "
            f"{why_not_downloaded(exc)}; {fetch_hint(name)}"
        ) from exc


def _check_checkpoint(folder: str, name: str, *, classes: tuple[str, ...] = _DEPTH_PIPELINE_CLASSES
                      ) -> tuple[list[str], dict[str, Any]]:
    """Check ``folder`` holds a Marigold depth checkpoint.

    Returns the text components it drops and its ``model_index.json``.

    diffusers' ``from_pretrained`` happily loads, say, a normals checkpoint into a
    depth pipeline and reports a missing component folder as a missing top-level
    ``config.json``, so the layout is checked here first.
    """
    where = folder if os.path.abspath(folder) == os.path.abspath(name) else f"{name!r} ({folder})"
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise ModelLoadError(
            f"{where} is not a Marigold checkpoint: it has no model_index.json "
            "(a folder saved with MarigoldDepthPipeline.save_pretrained has one)"
        )
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {index_path}: {first_line(exc)}") from exc
    if not isinstance(index, dict):
        raise ModelLoadError(f"{index_path} is not a JSON object")

    class_name = index.get("_class_name")
    if class_name not in classes:
        raise ModelLoadError(
            f"{where} is not a Marigold depth checkpoint: model_index.json names the pipeline "
            f"{class_name!r}, not MarigoldDepthPipeline"
            + ("; an end-to-end fine-tuned checkpoint loads with --model marigold-e2e-ft or "
               "load_marigold(..., noise='zeros', timestep_spacing='trailing')"
               if class_name in _E2E_PIPELINE_CLASSES else "")
        )
    prediction_type = index.get("prediction_type")
    if prediction_type not in (None, "depth", "disparity"):
        raise ModelLoadError(
            f"{where} predicts {prediction_type!r}, not depth; tiledepth needs a depth or "
            "disparity checkpoint"
        )

    missing = [
        component
        for component in _REQUIRED_COMPONENTS
        if not _is_set(index.get(component)) or not os.path.isdir(os.path.join(folder, component))
    ]
    if missing:
        raise ModelLoadError(
            f"{where} is an incomplete Marigold checkpoint: missing component(s) "
            f"{', '.join(missing)} (each needs an entry in model_index.json and a sub-folder)"
        )

    dropped = [component for component in _TEXT_COMPONENTS if not _is_set(index.get(component))]
    if dropped and not os.path.isfile(os.path.join(folder, EMPTY_TEXT_EMBEDDING_FILE)):
        raise ModelLoadError(
            f"{where} has no {' and no '.join(dropped)} and no {EMPTY_TEXT_EMBEDDING_FILE}; "
            "save the pipeline with its text encoder, or write the embedding with "
            "tiledepth.models.marigold.save_empty_text_embedding"
        )
    return dropped, index


def _is_set(entry: object) -> bool:
    # model_index.json lists a component as [library, class]; a dropped one as [null, null].
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def _load_empty_text_embedding(folder: str, name: str) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(folder, EMPTY_TEXT_EMBEDDING_FILE)
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(
            f"cannot read {path} of checkpoint {name!r}: {first_line(exc)}"
        ) from exc
    embedding = tensors.get(EMPTY_TEXT_EMBEDDING_KEY)
    if embedding is None or embedding.ndim != 3 or embedding.shape[0] != 1:
        raise ModelLoadError(
            f"{path} must hold one tensor {EMPTY_TEXT_EMBEDDING_KEY!r} of shape (1, T, D)"
        )
    return embedding
