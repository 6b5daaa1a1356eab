"""Torch, device and Hugging Face Hub helpers that every model backend shares.

Devices and dtypes (:func:`resolve_device`, :func:`resolve_dtype`), the way a
batch of tiles reaches the device (:func:`to_device`: uint8 or float16 tiles
from pinned memory, copied without blocking, clipped, laid out channel-first
and cast on the device), the stop check a pipeline makes between its steps
(:func:`stoppable`), and what to say when a checkpoint is not on the machine
(:func:`fetch_hint`, :func:`why_not_downloaded`).

torch, diffusers and huggingface_hub are imported inside the functions that
need them, so importing this module is instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tiledepth.errors import OptionError
from tiledepth.options import DTYPES

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "fetch_hint", "mps_available", "quiet_logger", "resolve_device",
           "resolve_dtype", "stoppable", "to_device", "why_not_downloaded"]

_TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# --------------------------------------------------------------------------- devices


def resolve_device(device: str) -> str:
    """Return the torch device to run on, checking that it is available.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA if available, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    str
        A concrete device string, e.g. ``"cpu"`` or ``"cuda:0"``.

    Raises
    ------
    OptionError
        If ``device`` is not one of the values above, or names a device this
        machine does not have.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    value = device.strip().lower()
    if value == "cpu":
        return "cpu"
    if value != "auto" and value != "mps" and value != "cuda" and not value.startswith("cuda:"):
        raise OptionError(
            f"device={device!r} is not a known device; use auto, cpu, cuda, cuda:N or mps"
        )

    import torch

    cuda_ok = torch.cuda.is_available()
    mps_ok = mps_available(torch)
    if value == "auto":
        if cuda_ok:
            return "cuda"
        if mps_ok:
            return "mps"
        return "cpu"
    if value == "mps":
        if not mps_ok:
            raise OptionError("device='mps' is not available on this machine; use device='cpu'")
        return "mps"
    if not cuda_ok:
        raise OptionError(
            f"device={device!r} needs CUDA, which this torch build or machine does not have; "
            "use device='cpu' or install a CUDA build of torch"
        )
    if value == "cuda":
        return "cuda"
    index_text = value.split(":", 1)[1]
    if not index_text.isdigit():
        raise OptionError(f"device={device!r} is not a known device; use cuda:N with N an integer")
    index = int(index_text)
    count = torch.cuda.device_count()
    if index >= count:
        raise OptionError(
            f"device={device!r} does not exist: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return f"cuda:{index}"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Return the torch dtype to run the pipeline in.

    Parameters
    ----------
    dtype : str
        ``"auto"`` (float16 on CUDA, float32 elsewhere), ``"fp32"``, ``"fp16"`` or
        ``"bf16"``.
    device : str
        The resolved device, as returned by :func:`resolve_device`.

    Returns
    -------
    torch.dtype

    Raises
    ------
    OptionError
        If ``dtype`` is unknown, or is ``"fp16"`` on the CPU (not supported there).

    Examples
    --------
    >>> resolve_dtype("auto", "cpu")
    torch.float32
    """
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a str, got {type(dtype).__name__}")
    value = dtype.strip().lower()
    if value not in DTYPES:
        raise OptionError(f"dtype={dtype!r} is not a known dtype; use one of {', '.join(DTYPES)}")

    import torch

    device_type = device.split(":", 1)[0]
    if value == "auto":
        return torch.float16 if device_type == "cuda" else torch.float32
    if value == "fp16" and device_type == "cpu":
        raise OptionError("dtype='fp16' is not supported on the CPU; use dtype='fp32' or 'bf16'")
    return getattr(torch, _TORCH_DTYPE_NAMES[value])


def mps_available(torch: Any) -> bool:
    """Whether torch can use Apple's MPS backend here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# --------------------------------------------------------------------------- batches


def to_device(batch: np.ndarray, device: Any, dtype: torch.dtype, *,
              mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None) -> torch.Tensor:
    """A channel-last batch of tiles as a channel-first tensor on ``device``.

    The host does one copy at most: on CUDA the batch (float32, float16 or
    uint8, as it comes) is copied into a pinned buffer and uploaded with
    ``non_blocking=True``; clipping to [0, 1] (uint8 is scaled), the permute
    to channel-first, the optional normalisation and the cast to ``dtype`` run
    on the device.

    Parameters
    ----------
    batch : ndarray of shape (B, H, W, 3)
        float RGB in [0, 1] (values are clipped to it), or uint8 RGB.
    device : str or torch.device
    dtype : torch.dtype
        The tensor's dtype on the device.
    mean, std : tuple of float, optional
        Per-channel normalisation ``(x - mean) / std`` after clipping.

    Returns
    -------
    torch.Tensor of shape (B, 3, H, W)

    Examples
    --------
    >>> import numpy as np, torch
    >>> x = to_device(np.full((1, 2, 2, 3), 1.5, np.float32), "cpu", torch.float32)
    >>> tuple(x.shape), float(x.max())
    ((1, 3, 2, 2), 1.0)
    """
    import torch

    device = torch.device(device)
    array = np.ascontiguousarray(batch)
    host = torch.from_numpy(array)  # (B, H, W, 3), shares the array's memory
    if device.type == "cuda":
        pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        pinned.copy_(host)
        host = pinned.to(device, non_blocking=True)
    else:
        host = host.to(device)
    work = torch.float32 if dtype == torch.float64 else dtype
    if array.dtype == np.uint8:
        pixels = host.to(torch.float32) / 255.0
    else:
        pixels = host.to(torch.float32).clamp(0.0, 1.0)  # never in place: host may be the caller's
    if mean is not None:
        pixels = pixels - torch.tensor(mean, device=device, dtype=torch.float32)
    if std is not None:
        pixels = pixels / torch.tensor(std, device=device, dtype=torch.float32)
    return pixels.permute(0, 3, 1, 2).to(dtype=work).contiguous()  # (B, 3, H, W)


@contextlib.contextmanager
def stoppable(pipe: Any) -> Iterator[None]:
    """Within the block, ``pipe``'s loops check :func:`~tiledepth.models.base.check_stop`.

    diffusers pipelines iterate over their denoising steps (and Marigold over
    its ensemble batches) through ``self.progress_bar(...)``; this wraps that
    method on the instance for the block, so every step first checks whether
    the run is ending. ``MarigoldDepthPipeline`` takes no
    ``callback_on_step_end`` (diffusers 0.3x-0.4x), hence the wrap.
    """
    from tiledepth.models.base import check_stop

    original = pipe.progress_bar

    def progress_bar(iterable=None, **kwargs):
        for item in original(iterable, **kwargs):
            check_stop()
            yield item

    pipe.progress_bar = progress_bar
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError):
            del pipe.progress_bar


# --------------------------------------------------------------------------- the hub


def fetch_hint(name: str) -> str:
    """How to get the weights of hub id ``name`` onto this machine, in one clause."""
    return (
        f"fetch the weights once while online with `hf download {name}` and then run with "
        "HF_HUB_OFFLINE=1, or pass a local checkpoint folder with --model /path/to/folder"
    )


@contextlib.contextmanager
def quiet_logger(*names: str, level: int = logging.ERROR):
    """Raise loggers ``names`` to ``level`` (ERROR: warnings hidden) for the block."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(level)
    try:
        yield
    finally:
        for log, was in zip(loggers, saved, strict=True):
            log.setLevel(was)


def why_not_downloaded(exc: BaseException) -> str:
    """Say why diffusers' download failed, from the exceptions chained to ``exc``."""
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return "it is not in the Hugging Face cache while HF_HUB_OFFLINE is set"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return (
            "the Hub has no such repository (if it is private or gated, log in with "
            "`hf auth login`)"
        )
    return "it is not in the Hugging Face cache and the Hub cannot be reached"


@contextlib.contextmanager
def quiet_loading():
    """Hide diffusers' and transformers' loading bars for the block (tiledepth says what it
    loads), and send their log messages to tiledepth's log at debug level (``-vv`` or
    ``--debug`` shows them), one line each, not raw to stderr: diffusers' five-line
    "accelerate was not found ... pip install accelerate" came with every Marigold load
    (accelerate is no dependency; loading works without it). Then restore both libraries'
    handlers and bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    log = logging.getLogger(__name__)

    class ToLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                log.debug("%s: %s", record.name, " ".join(record.getMessage().split()))
            except Exception:  # a library's bad format arguments: logging's own report
                self.handleError(record)

    to_log = ToLog()
    saved = []
    for lib in (diffusers_logging, transformers_logging):
        root = lib.get_logger()  # the library's root logger, with its own stderr handler
        saved.append((lib, root, root.handlers[:], root.propagate, lib.is_progress_bar_enabled()))
        lib.disable_progress_bar()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        root.addHandler(to_log)
        root.propagate = False  # (a caller's enable_propagation: not raw through the root)
    try:
        yield
    finally:
        for lib, root, handlers, propagate, bars in saved:
            root.removeHandler(to_log)
            for handler in handlers:
                root.addHandler(handler)
            root.propagate = propagate
            if bars:
                lib.enable_progress_bar()


def check_hub_id(name: str, *, index: str, alternatives: str) -> None:
    """Raise ModelLoadError, saying what to pass, if ``name`` is not a Hugging Face hub id.

    Called once ``name`` is known not to be a folder: a file's path gets a hint
    to pass the folder holding ``index``; anything else a list of what may be
    passed, ``alternatives`` completing "a folder with --model /path/to/folder".
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from tiledepth.errors import ModelLoadError

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        if os.path.exists(name):
            raise ModelLoadError(
                f"{name} is a file, not a checkpoint folder; pass the folder that holds "
                f"{index} with --model /path/to/folder"
            ) from exc
        raise ModelLoadError(
            f"no folder named {name!r}, and it is not a Hugging Face hub id either; pass an "
            f"existing checkpoint folder with --model /path/to/folder{alternatives}"
        ) from exc


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in a checkpoint's file ``path`` (``config.json``, ``model_index.json``).

    Raises ModelLoadError, with the path, if it cannot be read or holds no JSON object.
    """
    import json

    from tiledepth.errors import ModelLoadError, first_line

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data
