"""What the transformers backends share: finding, checking and loading a checkpoint.

Depth Anything V2 and Depth Pro load through transformers'
``AutoModelForDepthEstimation``. A checkpoint is a folder (or a hub id whose
snapshot is fetched into the Hugging Face cache, also offline with
``HF_HUB_OFFLINE=1`` once cached) holding ``config.json``, the weights and
optionally ``preprocessor_config.json``, whose ``image_mean``, ``image_std``
and ``size`` the backends read so that inputs are normalised as the model was
trained. :class:`TransformersDepthModel` holds what every such backend needs
(device, dtype, normalisation, the protocol's checks); each family's file adds
its own padding, resizing and output conversion.

Heavy imports (torch, transformers, huggingface_hub) happen inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tiledepth.errors import ModelLoadError, OptionError, first_line
from tiledepth.models.base import check_prediction
from tiledepth.models.oom import Halving
from tiledepth.models.torchutil import to_device

if TYPE_CHECKING:
    import torch

__all__ = ["Checkpoint", "TransformersDepthModel", "is_transformers_model", "load_checkpoint"]

logger = logging.getLogger(__name__)

# Files a depth checkpoint needs from the hub.
_HUB_PATTERNS = ["*.json", "*.safetensors"]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded transformers depth model and what came with it."""

    model: Any
    name: str
    preprocessor: dict[str, Any] = field(default_factory=dict)


def check_deterministic_options(family: str, *, steps: int | None, ensemble: int) -> None:
    """Reject diffusion-only options for a deterministic, single-pass model (a seed other
    than the default is refused with the other options, :func:`tiledepth.options.make_options`)."""
    if steps is not None:
        raise OptionError(
            f"steps={steps}: {family} is not a diffusion model and has no denoising steps; "
            "leave steps unset"
        )
    if ensemble != 1:
        raise OptionError(
            f"ensemble={ensemble}: {family} is deterministic, an ensemble would repeat the "
            "same prediction; use ensemble=1"
        )


def load_family(cls: type, name_or_path: str, *, model_types: tuple[str, ...], family: str,
                device: str, dtype: str, steps: int | None, ensemble: int,
                batch_size: int) -> Any:
    """Load a checkpoint of one family and wrap it in ``cls`` (the family's module's loader)."""
    from tiledepth.models.torchutil import resolve_device, resolve_dtype

    check_deterministic_options(family, steps=steps, ensemble=ensemble)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    ckpt = load_checkpoint(name_or_path, model_types=model_types, family=family,
                           device=device, torch_dtype=torch_dtype)
    return cls(ckpt.model, name=ckpt.name, preprocessor=ckpt.preprocessor,
               batch_size=batch_size)


def wrap_family(cls: type, model: Any, *, model_types: tuple[str, ...], family: str,
                batch_size: int, name: str | None) -> Any:
    """Wrap an already-loaded model of one family (on its device and dtype) in ``cls``."""
    if not is_transformers_model(model, model_types):
        raise TypeError(f"model must be a transformers {family} model, got "
                        f"{type(model).__name__}")
    return cls(model.eval(), name=name or str(model.config.name_or_path or
                                              type(model).__name__), batch_size=batch_size)


def family_api(cls: type, *, family: str, model_types: tuple[str, ...], loader: str,
               hub_example: str) -> tuple[Any, Any, Any]:
    """The three functions a transformers family's module exports, made once for all families.

    Returns ``is_<family>(obj)``, ``load_<family>(name_or_path, ...)`` (named
    ``loader``) and ``from_model(model, ...)`` for the model class ``cls``.
    """
    def is_family(obj: object) -> bool:
        return is_transformers_model(obj, model_types)

    def load(name_or_path: str, *, device: str = "auto", dtype: str = "auto",
             steps: int | None = None, ensemble: int = 1, batch_size: int = 4) -> Any:
        return load_family(cls, name_or_path, model_types=model_types, family=family,
                           device=device, dtype=dtype, steps=steps, ensemble=ensemble,
                           batch_size=batch_size)

    def from_model(model: Any, *, batch_size: int = 4, name: str | None = None) -> Any:
        return wrap_family(cls, model, model_types=model_types, family=family,
                           batch_size=batch_size, name=name)

    is_family.__doc__ = f"Whether ``obj`` is a loaded transformers {family} model."
    load.__doc__ = _LOAD_DOC.format(family=family, model_type=model_types[0],
                                    hub_example=hub_example, cls=cls.__name__)
    from_model.__doc__ = (f"Wrap an already-loaded transformers {family} model (on its "
                          "device and dtype).")
    for fn, name in ((is_family, f"is_{loader.removeprefix('load_')}"), (load, loader),
                     (from_model, "from_model")):
        fn.__name__ = fn.__qualname__ = name
        fn.__module__ = cls.__module__
    return is_family, load, from_model


_LOAD_DOC = """Load a {family} checkpoint from a folder or the Hugging Face Hub.

    Parameters
    ----------
    name_or_path : str
        A folder saved with ``save_pretrained`` (``config.json`` with
        ``model_type`` ``"{model_type}"``), or a hub id such as
        ``{hub_example}``.
    device, dtype : str
        As in :func:`tiledepth.models.torchutil.resolve_device` and
        :func:`~tiledepth.models.torchutil.resolve_dtype`.
    steps, ensemble : optional
        Must be unset / 1: the model is deterministic and single-pass.
    batch_size : int, default 4
        Tiles per model call.

    Returns
    -------
    {cls}

    Raises
    ------
    ModelLoadError
        If the checkpoint cannot be found or is not a {family} one.
    OptionError
        For steps, an ensemble, or a bad device or dtype.
    """


def is_transformers_model(obj: object, model_types: tuple[str, ...]) -> bool:
    """Whether ``obj`` is a loaded transformers model whose ``config.model_type`` is listed.

    Never imports transformers: an object from it has it loaded already.
    """
    if not any(cls.__module__.startswith("transformers") for cls in type(obj).__mro__):
        return False
    return getattr(getattr(obj, "config", None), "model_type", None) in model_types


def load_checkpoint(name_or_path: str, *, model_types: tuple[str, ...], family: str,
                    device: str, torch_dtype: torch.dtype) -> Checkpoint:
    """Load a transformers depth checkpoint from a folder or the hub, on ``device``.

    Parameters
    ----------
    name_or_path : str
        A folder with ``config.json`` and weights, or a hub id.
    model_types : tuple of str
        Accepted ``config.model_type`` values, e.g. ``("depth_anything",)``.
    family : str
        Human-readable family name for messages.
    device : str
        A resolved torch device.
    torch_dtype : torch.dtype

    Raises
    ------
    ModelLoadError
        With a one-line reason and, for hub ids, how to fetch the weights.
    """
    name = os.fspath(name_or_path)
    is_local = os.path.isdir(os.path.expanduser(name))
    folder = os.path.expanduser(name) if is_local else _download(name, family)
    where = folder if is_local else f"{name!r} ({folder})"

    config_path = os.path.join(folder, "config.json")
    config = _read_json(config_path, where, required=True)
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise ModelLoadError(
            f"{where} is not a {family} checkpoint: config.json has model_type {model_type!r}, "
            f"not {' or '.join(repr(t) for t in model_types)}"
        )
    preprocessor = _read_json(os.path.join(folder, "preprocessor_config.json"), where,
                              required=False)

    from transformers import AutoModelForDepthEstimation

    try:
        from tiledepth.progress import status

        with status(f"loading the model {name}"), _no_progress_bar():
            model = AutoModelForDepthEstimation.from_pretrained(folder, **_dtype_kwarg(torch_dtype))
    except Exception as exc:  # missing or corrupt weights, a bad config: each its own type
        from tiledepth.models.torchutil import fetch_hint

        hint = "" if is_local else f"; {fetch_hint(name)}"
        raise ModelLoadError(
            f"cannot load the {family} checkpoint {name!r} from {folder}: {first_line(exc)}"
            f"{hint}"
        ) from exc
    model = model.to(device).eval()
    logger.info("loaded %s %s on %s as %s", family, name, device, torch_dtype)
    return Checkpoint(model=model, name=name, preprocessor=preprocessor)


class TransformersDepthModel:
    """Shared base of the transformers backends (not used on its own).

    Subclasses set ``kind`` and implement ``_forward(pixels, height, width)``
    mapping normalised pixels ``[B, 3, H, W]`` to ``[B, H, W]`` float32 output.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        On the device and dtype to run in.
    name : str
        Hub id or folder, for tags and messages.
    preprocessor : dict
        The checkpoint's ``preprocessor_config.json`` (may be empty).
    batch_size : int
        Tiles per model call.
    """

    #: Normalisation used when the checkpoint ships no preprocessor config.
    default_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    default_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    kind = "depth"

    def __init__(self, model: Any, *, name: str, preprocessor: dict[str, Any] | None = None,
                 batch_size: int = 4) -> None:
        preprocessor = preprocessor or {}
        self.model = model
        self.name = name
        self.batch_size = int(batch_size)
        self.mean = tuple(float(v) for v in preprocessor.get("image_mean", self.default_mean))
        self.std = tuple(float(v) for v in preprocessor.get("image_std", self.default_std))
        self.preprocessor = preprocessor
        self._halving = Halving()

    @property
    def device(self) -> str:
        """The weights' device, e.g. ``"cuda:0"`` (for batch size ``auto``)."""
        return str(next(self.model.parameters()).device)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, "
                f"batch_size={self.batch_size})")

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """Predict one map per tile.

        Parameters
        ----------
        batch : ndarray of shape (B, H, W, 3)
            float32 RGB in [0, 1] (values are clipped to it).
        keys : sequence of int
            One key per tile (unused: the model is deterministic).

        Returns
        -------
        ndarray of shape (B, H, W)
            float32, of this model's :attr:`kind`.

        A batch that runs out of GPU memory is split in halves and retried
        (:class:`~tiledepth.models.oom.Halving`); the smaller size is kept.
        """
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"batch must have shape (B, H, W, 3), got {batch.shape}")
        if len(keys) != batch.shape[0]:
            raise ValueError(f"got {len(keys)} keys for a batch of {batch.shape[0]} tiles")
        out = self._halving(self._predict_chunk, batch, keys, name=self.name)  # [B,H,W]
        # new arrays (a chunk's read-back, or chunks put together): kept, not copied again
        return check_prediction(out, batch, self.name, fresh=True)

    def _predict_chunk(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        import torch

        height, width = batch.shape[1:3]
        param = next(self.model.parameters())
        with torch.inference_mode():
            # uploaded as is, clipped, permuted, normalised and cast on the device
            pixels = to_device(batch, param.device, param.dtype, mean=self.mean, std=self.std)
            out = self._forward(pixels, height, width)  # [B,H,W]
            # the one copy back per batch: a new array, which predict keeps as it is
            return out.to(dtype=torch.float32).cpu().numpy()

    def _forward(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------- helpers


def _dtype_kwarg(torch_dtype: Any) -> dict[str, Any]:
    # transformers 5 renamed from_pretrained's torch_dtype= to dtype=.
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype" if major >= 5 else "torch_dtype": torch_dtype}


@contextlib.contextmanager
def _no_progress_bar():
    """Hide transformers' weight-loading progress bar for the block, then restore it."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _read_json(path: str, where: str, *, required: bool) -> dict[str, Any]:
    if not os.path.isfile(path):
        if required:
            raise ModelLoadError(
                f"{where} is not a transformers checkpoint: it has no {os.path.basename(path)} "
                "(a folder saved with save_pretrained has one)"
            )
        return {}
    from tiledepth.models.torchutil import read_json_object

    return read_json_object(path)


def _download(name: str, family: str) -> str:
    """The local snapshot folder of hub id ``name``, fetched into the HF cache if needed."""
    from huggingface_hub import snapshot_download

    from tiledepth.models.torchutil import check_hub_id, fetch_hint, why_not_downloaded

    check_hub_id(name, index="config.json",
                 alternatives=", a hub id, or a name from `tiledepth models`")
    try:
        return str(snapshot_download(name, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # huggingface_hub raises many types (HTTP, offline, not found)
        import huggingface_hub.constants as hf_constants

        why = ("it is not in the Hugging Face cache while HF_HUB_OFFLINE is set"
               if hf_constants.HF_HUB_OFFLINE else why_not_downloaded(exc))
        raise ModelLoadError(
            f"cannot find the {family} checkpoint {name!r}: no such local folder, and "
            f"{why}; {fetch_hint(name)}"
        ) from exc
