"""Depth models: one file per model family behind one small protocol.

:func:`load_model` turns whatever the user passed as ``model=`` into a
:class:`~tiledepth.models.base.DepthModel`:

* an object with a ``predict(batch, keys)`` method: used as is;
* a loaded diffusers ``MarigoldDepthPipeline``: wrapped (:mod:`.marigold`);
* any other callable ``(B, H, W, 3) -> (B, H, W)``: wrapped (:class:`.base.CallableModel`);
* a string naming an existing folder: a Marigold checkpoint on disk;
* ``"package.module:function"``: that callable, imported;
* any other string: a Hugging Face hub id of a Marigold checkpoint.

Heavy libraries (torch, diffusers) are imported only by the Marigold backend,
and only when it is used.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from tiledepth.errors import ModelLoadError
from tiledepth.models.base import CallableModel, DepthModel, check_prediction

__all__ = ["CallableModel", "DepthModel", "check_prediction", "import_callable", "load_model"]

_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_model(model: Any, *, device: str = "auto", dtype: str = "auto", steps: int | None = None,
               ensemble: int = 1, seed: int = 0, batch_size: int = 4) -> DepthModel:
    """Resolve ``model`` (see the module docstring) to a ready DepthModel."""
    from tiledepth.models import marigold

    if hasattr(model, "predict") and hasattr(model, "batch_size"):
        return model
    if marigold.is_marigold_pipeline(model):
        return marigold.from_pipeline(model, steps=steps, ensemble=ensemble, seed=seed,
                                      batch_size=batch_size)
    if callable(model):
        return CallableModel(model, batch_size=batch_size)
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a hub id, a folder, 'module:function', a pipeline or a callable, "
            f"got {type(model).__name__}"
        )
    if not Path(model).exists() and _CALLABLE_SPEC.match(model):
        return CallableModel(import_callable(model), batch_size=batch_size, name=model)
    return marigold.load_marigold(model, device=device, dtype=dtype, steps=steps,
                                  ensemble=ensemble, seed=seed, batch_size=batch_size)


def import_callable(spec: str) -> Any:
    """Import ``"package.module:function"`` (the function may be dotted: ``mod:Class.method``).

    Like uvicorn and gunicorn, modules are also looked up in the current working
    directory (added at the end of ``sys.path``), so ``--model mymodel:depth``
    works next to ``mymodel.py`` from the installed ``tiledepth`` command too.
    """
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
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ModelLoadError(
                f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from exc
    if not callable(obj):
        raise ModelLoadError(f"--model {spec!r}: {attr!r} is not callable")
    return obj
