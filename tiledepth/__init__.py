"""tiledepth: seamless, georeferenced depth maps of huge rasters from tiled monocular depth.

The data flow is one module per stage::

    read.py -> tiling.py -> infer.py (models/) -> fusion/ (align, blend) -> write.py

tied together by engine.py. The public entry points are :func:`run` (file in,
GeoTIFF out), :func:`estimate` (array in, array out) and :func:`batch` (many
files in, a folder of GeoTIFFs out; :mod:`tiledepth.batchrun`). They are imported on
first use, so ``import tiledepth`` and ``tiledepth --help`` stay instant;
torch, diffusers and transformers are imported only when a model backend
is loaded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tiledepth.errors import TiledepthError

__version__ = "0.1.0"

__all__ = ["RunResult", "TiledepthError", "__version__", "batch", "estimate", "run"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from tiledepth.batchrun import batch
    from tiledepth.engine import RunResult, estimate, run


#: The submodules a script reaches as ``tiledepth.NAME`` after ``import tiledepth`` (each
#: imported at first use: ``tiledepth --help`` stays instant).
SUBMODULES = ("export", "info", "evaluation", "preview", "sources", "survey", "options",
              "errors", "fusion", "models", "mosaic", "metrics")


def __getattr__(name: str):
    if name in ("run", "estimate", "RunResult"):
        from tiledepth import engine

        return getattr(engine, name)
    if name == "batch":
        from tiledepth.batchrun import batch

        return batch
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"tiledepth.{name}")
    raise AttributeError(f"module 'tiledepth' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What completion shows: the functions and submodules loaded at first use too."""
    return sorted({*globals(), "run", "estimate", "batch", "RunResult", *SUBMODULES})
