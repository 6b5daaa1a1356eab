"""The Marigold backend: diffusers' ``MarigoldDepthPipeline`` behind the model protocol.

Tiles reach the pipeline at their native size (``processing_resolution=0``: no
resizing, only the pipeline's own replicate-padding to a multiple of the VAE
scale factor, removed again before the output). The output is Marigold's
affine-invariant depth, 0 near and 1 far, one map per tile.

This module loads the model (:func:`load_marigold`, :func:`from_pipeline`) and
checks its checkpoint folder; the model itself, which runs tiles through the
pipeline with reproducible noise, is :class:`~tiledepth.models.marigold_model.MarigoldModel`,
and its ensembling :mod:`tiledepth.models.marigold_ensemble`.

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

Heavy imports (torch, diffusers, huggingface_hub) happen inside the functions
that need them, so importing this module is instant.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from tiledepth.errors import ModelLoadError, first_line
from tiledepth.models.marigold_model import (
    MarigoldModel,
    _upcast_decoder,
    check_noise,
    check_run_options,
)
from tiledepth.models.torchutil import (  # noqa: F401  (re-exported: the public names moved)
    DTYPES,
    check_hub_id,
    fetch_hint,
    quiet_logger,
    read_json_object,
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


def is_marigold_pipeline(obj: object) -> bool:
    """Return whether ``obj`` is a diffusers ``MarigoldDepthPipeline`` (or subclass).

    diffusers is only imported when a class in ``obj``'s MRO comes from it, in
    which case it is already loaded; a plain callable never triggers an import.
    """
    if not any(cls.__module__.startswith("diffusers") for cls in type(obj).__mro__):
        return False
    from diffusers import MarigoldDepthPipeline

    return isinstance(obj, MarigoldDepthPipeline)


def load_marigold(name_or_path: str, *, device: str = "auto", dtype: str = "auto",
                  steps: int | None = None, ensemble: int = 1, seed: int = 0, batch_size: int = 4,
                  noise: str = "gaussian", timestep_spacing: str | None = None) -> MarigoldModel:
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
    check_run_options(steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size)
    check_noise(noise, ensemble)

    # 1. Resolve device and dtype first: a bad option should not cost a model load.
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    # 2. Find the checkpoint folder: a local folder, or the hub id's snapshot in the HF cache.
    folder, variant, is_local = _find_checkpoint(name, torch_dtype)

    # 3. Check and load the pipeline, with its empty-prompt embedding if it has no text encoder.
    pipe = _load_pipeline(folder, name, noise=noise, variant=variant, torch_dtype=torch_dtype,
                          timestep_spacing=timestep_spacing, is_local=is_local)

    # 4. Quiet, on its device; the text encoder is used once, for the empty prompt, then freed.
    # In bfloat16 the VAE decoder is upcast for good (the pipeline is tiledepth's own; a
    # caller's own pipeline is upcast only during tiledepth's calls of it, see from_pipeline).
    pipe = _to_device(pipe, device)
    _upcast_decoder(pipe)
    model = from_pipeline(pipe, steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size,
                          noise=noise)
    model.name = name
    logger.info("loaded Marigold %s on %s as %s", name, device, torch_dtype)
    return model


def _find_checkpoint(name: str, torch_dtype: torch.dtype) -> tuple[str, str | None, bool]:
    """The checkpoint's folder, the weights' variant to load and whether ``name`` is a folder.

    A local folder wins over a hub id, whose snapshot is found in (or downloaded
    to) the Hugging Face cache. Half precision loads the checkpoint's fp16
    weights where it has them (half the download, no cast), else its fp32 ones.
    """
    import torch

    is_local = os.path.isdir(os.path.expanduser(name))
    variant = "fp16" if torch_dtype != torch.float32 else None
    folder = os.path.expanduser(name) if is_local else _download(name, variant)
    return folder, variant, is_local


def _load_pipeline(folder: str, name: str, *, noise: str, variant: str | None,
                   torch_dtype: torch.dtype, timestep_spacing: str | None, is_local: bool) -> Any:
    """The ``MarigoldDepthPipeline`` in ``folder``, checked by :func:`_check_checkpoint`.

    Dropped text components load as None and the empty-prompt embedding from its
    file; a checkpoint saved as a plain Stable Diffusion pipeline (accepted with
    ``noise="zeros"``) gets Marigold's settings where its index lacks them.
    """
    classes = _DEPTH_PIPELINE_CLASSES + (_E2E_PIPELINE_CLASSES if noise == "zeros" else ())
    dropped, index = _check_checkpoint(folder, name, classes=classes)
    pipe = _from_checkpoint(folder, name, index=index, dropped=dropped, variant=variant,
                            torch_dtype=torch_dtype, timestep_spacing=timestep_spacing,
                            is_local=is_local)
    if pipe.text_encoder is None and pipe.empty_text_embedding is None:
        embedding = _load_empty_text_embedding(folder, name)
        width = pipe.unet.config.cross_attention_dim
        if embedding.shape[-1] != width:
            raise ModelLoadError(
                f"{EMPTY_TEXT_EMBEDDING_FILE} of {name!r} has width {embedding.shape[-1]}, "
                f"but the UNet's cross_attention_dim is {width}"
            )
        pipe.empty_text_embedding = embedding.to(dtype=torch_dtype)
    return pipe


def _to_device(pipe: Any, device: str) -> Any:
    """``pipe`` quiet and on ``device``, its empty-prompt embedding computed, its encoder freed."""
    pipe.set_progress_bar_config(disable=True)
    if pipe.text_encoder is not None and pipe.empty_text_embedding is None:
        embed_empty_prompt(pipe, device)
    pipe = pipe.to(device)
    if device.startswith("cuda"):
        pipe.vae.enable_slicing()  # decode memory does not grow with the batch
    return pipe


def _from_checkpoint(folder: str, name: str, *, index: dict, dropped: list[str],
                     variant: str | None, torch_dtype: torch.dtype, timestep_spacing: str | None,
                     is_local: bool) -> Any:
    """``MarigoldDepthPipeline.from_pretrained`` of ``folder``, its dropped components None."""
    import diffusers
    from diffusers import MarigoldDepthPipeline

    extra: dict[str, Any] = {component: None for component in dropped}
    if index.get("_class_name") in _E2E_PIPELINE_CLASSES:
        extra.update({k: v for k, v in _E2E_CONFIG.items() if k not in index})
    from tiledepth.models.torchutil import quiet_loading
    from tiledepth.progress import status

    try:  # no loading bars but tiledepth's status line; under -q no warnings; and never
        # diffusers' "An error occurred while trying to fetch ..." of missing weights: the
        # failure gets our own one-line error below (a missing fp16 variant falls back)
        with status(f"loading the model {name}"), quiet_loading(), \
                quiet_logger("diffusers.models.modeling_utils", level=logging.CRITICAL):
            if timestep_spacing is not None:
                scheduler_class = getattr(diffusers, index["scheduler"][1])
                extra["scheduler"] = scheduler_class.from_pretrained(
                    folder, subfolder="scheduler", timestep_spacing=timestep_spacing)
            return _from_pretrained(MarigoldDepthPipeline, folder, variant,
                                    **_dtype_kwarg(torch_dtype), **extra)
    except (OSError, ValueError) as exc:
        hint = "" if is_local else f"; {fetch_hint(name)}"
        raise ModelLoadError(
            f"cannot load the Marigold checkpoint {name!r} from {folder}: {first_line(exc)}{hint}"
        ) from exc


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

    The pipeline is used on its current device and dtype, and left as it was given: in
    bfloat16 its VAE decoder runs in float32 during tiledepth's calls of it only, and its
    progress bars are off during them only. Parameters are as in :func:`load_marigold`.

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
    check_run_options(steps=steps, ensemble=ensemble, seed=seed, batch_size=batch_size)
    check_noise(noise, ensemble)
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


def _dtype_kwarg(torch_dtype: torch.dtype) -> dict[str, Any]:
    # diffusers renamed from_pretrained's torch_dtype= to dtype= and warns on the old name.
    from diffusers.utils import deprecation_utils

    key = "dtype" if "_resolve_dtype" in vars(deprecation_utils) else "torch_dtype"
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
    check_hub_id(name, index="model_index.json",
                 alternatives=f" or a hub id such as {DEFAULT_CHECKPOINT}")
    from diffusers import MarigoldDepthPipeline

    try:
        # diffusers' download: a cached snapshot is used without a network call when offline,
        # and when the Hub is unreachable; missing files raise OSError (EnvironmentError)
        # chained to huggingface_hub's OfflineModeIsEnabled or httpx's ConnectError.
        # Its "Couldn't connect to the Hub ... will try the cache" warning, and
        # huggingface_hub's "Could not reach the Hub ... Using cached commit hash" (every
        # offline run), are noise here: a failure gets our own one-line error below.
        with quiet_logger("diffusers.pipelines.pipeline_utils", "huggingface_hub.hf_api"):
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
    index = read_json_object(index_path)

    class_name = index.get("_class_name")
    if class_name not in classes:
        raise ModelLoadError(
            f"{where} is not a Marigold depth checkpoint: model_index.json names the pipeline "
            f"{class_name!r}, not MarigoldDepthPipeline"
            + ("; an end-to-end fine-tuned checkpoint loads with --model marigold-e2e-ft, as a "
               "folder (--model /path/to/folder) or with "
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
