"""Depth models: one file per model family behind one small protocol.

:func:`load_model` turns whatever the user passed as ``model=`` into a
:class:`~tiledepth.models.base.DepthModel`:

* a loaded model, an object with ``name``, ``batch_size`` and a ``predict(batch, keys)``
  method (:class:`~tiledepth.protocols.DepthModel`, as the loaders return): used as is,
  with the steps, ensemble, seed, device and dtype it was loaded with
  (:func:`tiledepth.plan.open_model` refuses other values, and sets a batch size on it);
* a loaded diffusers ``MarigoldDepthPipeline``: wrapped (:mod:`.marigold`);
* a loaded transformers Depth Anything or Depth Pro model: wrapped
  (:mod:`.depth_anything`, :mod:`.depth_pro`); either runs on the device and in the dtype
  it was loaded in (:func:`tiledepth.plan.open_model` refuses others);
* any other callable ``(B, H, W, 3) -> (B, H, W)``: wrapped (:class:`.base.CallableModel`);
* a name from the registry (``tiledepth models``, :mod:`.registry`): its checkpoint,
  loaded by its family's backend with its settings;
* a string naming an existing folder: a checkpoint on disk, its family told by its
  files (``model_index.json``: Marigold, with ``marigold-e2e-ft``'s settings where it
  names a plain ``StableDiffusionPipeline``, as that checkpoint does; ``config.json``
  with ``model_type`` ``depth_anything`` or ``depth_pro``: those);
* ``"package.module:function"``: that callable, imported; ``"path/to/file.py:function"``:
  the callable in that file, from any folder (the modules beside it import; the file is
  imported again once it changed); a loaded model named so is used as is, a class refused;
* any other string: a Hugging Face hub id; a registry checkpoint's id loads with
  that entry's settings, an id naming Depth Anything or Depth Pro loads with that
  backend, anything else as a Marigold checkpoint.

Heavy libraries (torch, diffusers, transformers) are imported only by the
backends, and only when one is used.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from tiledepth.errors import ModelLoadError
from tiledepth.models.base import CallableModel, DepthModel, check_prediction
from tiledepth.models.registry import ModelSpec, get_spec, spec_for_checkpoint

__all__ = ["CallableModel", "DepthModel", "check_prediction", "deterministic_family",
           "family_of_folder", "import_callable", "load_model", "local_path"]

log = logging.getLogger(__name__)

_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: ``path/to/file.py:function``: a callable in a Python file, from any folder.
_FILE_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")


def load_model(model: Any, *, device: str = "auto", dtype: str = "auto", steps: int | None = None,
               ensemble: int = 1, seed: int = 0, batch_size: int | str = 4) -> DepthModel:
    """Resolve ``model`` (see the module docstring) to a ready DepthModel.

    ``batch_size="auto"`` loads with :data:`~tiledepth.models.autobatch.DEFAULT_BATCH`;
    the caller then resolves it for its tile size with
    :func:`~tiledepth.models.autobatch.resolve_batch_size`.

    Examples
    --------
    >>> load_model(lambda batch: batch[..., 0]).kind
    'depth'
    """
    from tiledepth.models import depth_anything, depth_pro, marigold
    from tiledepth.models.autobatch import AUTO, DEFAULT_BATCH

    if isinstance(batch_size, str) and batch_size == AUTO:
        batch_size = DEFAULT_BATCH

    if isinstance(model, type):  # callable, and with a predict method a DepthModel to
        # isinstance: its calls failed with bare TypeErrors (missing 'keys', no arguments)
        raise ModelLoadError(f"model={model.__name__} is a class; pass an instance of it "
                             f"({model.__name__}()) or a function")
    if isinstance(model, DepthModel):  # a loaded model already
        return model
    if marigold.is_marigold_pipeline(model):
        return marigold.from_pipeline(model, steps=steps, ensemble=ensemble, seed=seed,
                                      batch_size=batch_size)
    if depth_anything.is_depth_anything(model) or depth_pro.is_depth_pro(model):
        backend = depth_anything if depth_anything.is_depth_anything(model) else depth_pro
        from tiledepth.models.hf import check_deterministic_options

        check_deterministic_options(type(model).__name__, steps=steps, ensemble=ensemble)
        return backend.from_model(model, batch_size=batch_size)
    if callable(model):
        return _callable_model(model, batch_size=batch_size, seed=seed)
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a registry name, a hub id, a folder, 'module:function', a pipeline, "
            f"a callable or a loaded model (name, batch_size and predict(batch, keys)), got "
            f"{type(model).__name__}"
        )
    options = dict(device=device, dtype=dtype, steps=steps, ensemble=ensemble, seed=seed,
                   batch_size=batch_size)
    spec = get_spec(model)
    if spec is not None:
        return _load_family(spec.family, spec.checkpoint, spec, options)
    if not Path(model).exists() and (_CALLABLE_SPEC.match(model) or _FILE_SPEC.match(model)):
        imported = import_callable(model)
        if isinstance(imported, DepthModel):  # a loaded model, as model=obj takes it
            return imported
        return _callable_model(imported, batch_size=batch_size, seed=seed, name=model)
    if os.path.isdir(os.path.expanduser(model)):
        folder = os.path.expanduser(model)
        return _load_family(family_of_folder(folder), model, _spec_of_folder(folder), options)
    if os.path.isfile(os.path.expanduser(model)):  # (a relative name is a valid hub id too)
        if model.endswith(".py"):
            raise ModelLoadError(f"{model} is a Python file; name the function in it that "
                                 f"predicts: --model {model}:FUNCTION")
        raise ModelLoadError(f"{model} is a file, not a checkpoint folder; pass the folder "
                             "that holds the checkpoint (model_index.json or config.json) "
                             "with --model /path/to/folder")
    spec = spec_for_checkpoint(model)
    if spec is not None:  # matched whatever its case: the hub and the cache want the id's own
        return _load_family(spec.family, spec.checkpoint, spec, options)
    return _load_family(_family_of_hub_id(model), model, None, options)


def _callable_model(fn: Any, *, batch_size: int, seed: int,
                    name: str | None = None) -> CallableModel:
    """``fn``, a Python callable, wrapped; a seed other than 0 noted in an info line (``-v``):
    the callable is given none (it seeds its own noise, if it draws any), so the seed
    changes no pixel, only the output's SEED tag (and with it the run's checkpoint). Not
    refused as ``steps`` and ``ensemble`` are (:func:`tiledepth.plan.check_callable_options`):
    it is recorded, and tells one run of a callable from another."""
    model = CallableModel(fn, batch_size=batch_size, name=name)
    if seed != 0:
        log.info("%s is a Python callable: seed %s is not passed to it (the seed sets "
                 "Marigold's noise), only recorded in the output's SEED tag", model.name, seed)
    return model


def family_of_folder(folder: str) -> str:
    """The backend family of a checkpoint folder, told by its files.

    ``model_index.json`` (a diffusers pipeline) is Marigold; a ``config.json``
    whose ``model_type`` is ``depth_anything`` or ``depth_pro`` is that family.
    A folder with neither (or a ``config.json`` without a ``model_type``, as a diffusers
    component's) is handed to the Marigold loader, which says what is missing.

    Raises
    ------
    ModelLoadError
        If ``config.json`` (without ``model_index.json``) cannot be read, or names another
        ``model_type``: one line naming the file, or the types that load.
    """
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return "marigold"
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return "marigold"
    from tiledepth.models.torchutil import read_json_object

    # a transformers checkpoint: its config.json says which, and a broken one is no Marigold;
    # one without a model_type (a diffusers component's, unet/) goes to the Marigold loader
    model_type = read_json_object(config).get("model_type")
    if model_type is None:
        return "marigold"
    if model_type not in _TRANSFORMERS_FAMILIES:
        raise ModelLoadError(
            f"{folder} is not a checkpoint tiledepth loads: {config} has model_type "
            f"{model_type!r}; supported: {', '.join(map(repr, _TRANSFORMERS_FAMILIES))} "
            "(config.json), or a Marigold pipeline (model_index.json)"
        )
    return model_type


def _spec_of_folder(folder: str) -> ModelSpec | None:
    """The registry entry whose loader settings a checkpoint folder needs, or None.

    An end-to-end fine-tuned Marigold checkpoint (``marigold-e2e-ft``) is saved as a plain
    ``StableDiffusionPipeline``; downloaded to a folder (``hf download ... --local-dir``),
    it needs that entry's zero noise and trailing timesteps as from the hub.
    """
    from tiledepth.models.marigold import _E2E_PIPELINE_CLASSES
    from tiledepth.models.registry import REGISTRY

    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
            class_name = json.load(f).get("_class_name")
        # Marigold's UNet takes the image's latent beside the noise's: 8 channels in, where
        # a text-to-image Stable Diffusion has 4 (the loader refuses that one)
        with open(os.path.join(folder, "unet", "config.json"), encoding="utf-8") as f:
            marigold = json.load(f).get("in_channels") == 8
    except (OSError, ValueError, AttributeError):  # the loader says what is wrong with it
        return None
    return REGISTRY["marigold-e2e-ft"] if class_name in _E2E_PIPELINE_CLASSES and marigold \
        else None


#: The ``model_type`` of a transformers checkpoint's ``config.json``, for each family loaded.
_TRANSFORMERS_FAMILIES = ("depth_anything", "depth_pro")

#: How messages name the deterministic (single-pass) families.
_DETERMINISTIC = {"depth_anything": "Depth Anything", "depth_pro": "Depth Pro"}
#: How messages name a Marigold run from zero noise (one step, no noise to seed).
_ZERO_NOISE_MARIGOLD = "the end-to-end fine-tuned Marigold (zero noise)"


def deterministic_family(model: Any) -> str | None:
    """The name of the deterministic family ``model`` is or loads as (``"Depth Anything"``,
    ``"Depth Pro"``, the end-to-end fine-tuned Marigold), told without loading it; None for
    anything else (a diffusion Marigold, a callable, another model object).

    Such a model predicts the same map every time: it draws no noise for a seed to change,
    and has no ensemble to take a spread of, so ``uncertainty`` is refused for it first,
    before the ensemble it would need. Marigold is one where it runs from zero noise: the
    ``marigold-e2e-ft`` entry (its name, hub id or a folder holding it) or a loaded
    :class:`~tiledepth.models.marigold_model.MarigoldModel` with ``noise="zeros"``.

    Examples
    --------
    >>> deterministic_family("depth-pro"), deterministic_family("marigold-v1-1")
    ('Depth Pro', None)
    >>> deterministic_family("marigold-e2e-ft")
    'the end-to-end fine-tuned Marigold (zero noise)'
    """
    from tiledepth.models.hf import TransformersDepthModel, is_transformers_model
    from tiledepth.models.marigold_model import MarigoldModel

    if isinstance(model, TransformersDepthModel) or is_transformers_model(
            model, tuple(_DETERMINISTIC)):
        config = getattr(getattr(model, "model", model), "config", None)
        return _DETERMINISTIC.get(getattr(config, "model_type", None), type(model).__name__)
    if isinstance(model, MarigoldModel):
        return _ZERO_NOISE_MARIGOLD if model.noise == "zeros" else None
    if not isinstance(model, (str, os.PathLike)):
        return None
    from tiledepth.models import registry

    family, spec = registry._resolve(model)  # (a folder's files read once for both)
    if spec is not None and spec.options.get("noise") == "zeros":
        return _ZERO_NOISE_MARIGOLD
    return _DETERMINISTIC.get(family)


def _family_of_hub_id(name: str) -> str:
    lowered = name.lower().replace("_", "-")
    if "depth-anything" in lowered or "depthanything" in lowered:
        return "depth_anything"
    if "depthpro" in lowered or "depth-pro" in lowered:
        return "depth_pro"
    return "marigold"


def _load_family(family: str, name: str, spec: ModelSpec | None,
                 options: dict[str, Any]) -> DepthModel:
    """Load ``name`` with ``family``'s backend; a registry spec adds its loader options."""
    from tiledepth.models import depth_anything, depth_pro, marigold

    extra = dict(spec.options) if spec is not None else {}
    if family == "marigold":
        if spec is not None and options["steps"] is None:
            options = dict(options, steps=spec.default_steps)
        return marigold.load_marigold(name, **options, **extra)
    options = {k: v for k, v in options.items() if k != "seed"}  # deterministic models
    if family == "depth_anything":
        return depth_anything.load_depth_anything(name, **options, **extra)
    return depth_pro.load_depth_pro(name, **options, **extra)


def local_path(spec: str) -> tuple[Path, str | None] | None:
    """The local file a ``path/to/file.py:function`` spec names, with its function, or the
    checkpoint folder a spec names (function None), as :func:`load_model` reads ``spec``;
    None for what is no local path (a registry name, a hub id, ``module:function``, a path
    that does not exist). The path is as typed (``~`` expanded), relative to the current
    folder.

    Examples
    --------
    >>> local_path("prs-eth/marigold-depth-v1-1") is None
    True
    """
    from tiledepth.models.registry import get_spec

    if get_spec(spec) is not None:
        return None
    file_spec = _FILE_SPEC.match(spec)
    if file_spec is not None and not Path(spec).exists():
        path = Path(file_spec["file"]).expanduser()
        return (path, file_spec["attr"]) if path.is_file() else None
    path = Path(spec).expanduser()
    return (path, None) if path.is_dir() else None


def import_callable(spec: str) -> Any:
    """Import ``"package.module:function"`` (the function may be dotted: ``mod:Class.method``).

    Like uvicorn and gunicorn, modules are also looked up in the current working
    directory (added at the end of ``sys.path``), so ``--model mymodel:depth``
    works next to ``mymodel.py`` from the installed ``tiledepth`` command too.
    A Python file works too, ``"path/to/file.py:function"`` (relative to the
    current folder, or absolute), from any folder; as ``python file.py`` would, it
    imports the modules beside it (its folder is added at the end of ``sys.path``).
    """
    file_spec = _FILE_SPEC.match(spec)
    if file_spec is not None:
        obj = _import_file(spec, Path(file_spec["file"]).expanduser())
        return _attribute(spec, obj, file_spec["file"], file_spec["attr"])
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's module's
        raise ModelLoadError(
            f"--model {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: "
            f"{exc}); check that it is on PYTHONPATH"
        ) from exc
    return _attribute(spec, obj, module_name, attr)


def _attribute(spec: str, obj: Any, module_name: str, attr: str) -> Any:
    """The callable ``attr`` (dotted) of a module, or the loaded model
    (:class:`~tiledepth.protocols.DepthModel`) it is."""
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ModelLoadError(
                f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from exc
    if isinstance(obj, type):  # called with a batch, it made an instance (or TypeError)
        raise ModelLoadError(f"--model {spec!r}: {attr!r} is a class; name an instance of "
                             f"it or a function")
    if not callable(obj) and not isinstance(obj, DepthModel):
        raise ModelLoadError(f"--model {spec!r}: {attr!r} is not callable, nor a loaded "
                             "model (name, batch_size and predict(batch, keys))")
    return obj


#: The (mtime_ns, size) of each Python file :func:`_import_file` imported, by module name.
_FILE_VERSIONS: dict[str, tuple[int, int]] = {}
#: One import of a model file at a time (re-entrant: a model file may load another).
_IMPORT_LOCK = threading.RLock()


def _import_file(spec: str, path: Path) -> Any:
    """Import a Python file as a module (once per resolved path and version).

    Its folder is importable, as ``python file.py`` makes it: a module beside the file
    imports. A file changed since it was imported (another modification time or size) is
    imported again: the run uses the code its resume identity hashes.
    """
    import hashlib
    import importlib.util

    path = path.resolve()
    if not path.is_file():
        raise ModelLoadError(f"--model {spec!r}: {path}: no such file; check the path")
    folder = str(path.parent)
    if folder not in sys.path:  # appended, as the current folder for module:function
        sys.path.append(folder)
    name = f"tiledepth_model_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    with _IMPORT_LOCK:  # two threads loading one file: it runs once (its weights load once)
        if name in sys.modules and _FILE_VERSIONS.get(name) == version:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        _FILE_VERSIONS.pop(name, None)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # any import-time failure is the user's file's
            if sys.modules.get(name) is module:
                del sys.modules[name]
            raise ModelLoadError(f"--model {spec!r}: cannot import {path} "
                                 f"({type(exc).__name__}: {exc})") from exc
        _FILE_VERSIONS[name] = version
        return module
