"""The built-in models: short names for ``--model``, with what each predicts.

``tiledepth models`` prints this table; ``--model NAME`` (``model="NAME"``)
loads the checkpoint a name stands for. A name is resolved before anything
else, so ``--model depth-pro`` never looks for a folder called ``depth-pro``;
hub ids, folders and callables keep working as before.

Each entry says which backend family loads it (one file per family in
:mod:`tiledepth.models`), its output kind (:mod:`tiledepth.kinds`), the
resolution it was trained at (a good ``--tile-size``), its default number of
denoising steps (diffusion models only) and a note on the weights' licence.
Licences are summaries: read the model card before commercial use.

Examples
--------
>>> spec = REGISTRY["depth-anything-v2-large"]
>>> spec.family, spec.kind, spec.native_resolution
('depth_anything', 'disparity', 518)
>>> get_spec("prs-eth/marigold-depth-v1-1") is None
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CALLABLE", "DEFAULT_NAME", "FAMILIES", "REGISTRY", "ModelSpec", "family_of",
           "format_table", "get_spec", "spec_for_checkpoint", "spec_of"]

#: Backend families, each one module of :mod:`tiledepth.models`.
FAMILIES = ("marigold", "depth_anything", "depth_pro")
#: What :func:`family_of` says of a Python callable model (no family, no loader options).
CALLABLE = "callable"


@dataclass(frozen=True)
class ModelSpec:
    """One built-in model.

    Attributes
    ----------
    name : str
        The short name ``--model`` accepts.
    family : {'marigold', 'depth_anything', 'depth_pro'}
        The backend that loads it.
    kind : {'depth', 'disparity', 'metric_depth'}
        What its output means (see :mod:`tiledepth.kinds`).
    checkpoint : str
        Hugging Face hub id of the weights.
    native_resolution : int
        Side in pixels the model was trained at; a good ``--tile-size``.
    default_steps : int or None
        Denoising steps when ``--steps`` is not given (diffusion models only).
    licence : str
        Short note on the weights' licence.
    options : dict
        Extra keyword arguments for the family's loader.
    """

    name: str
    family: str
    kind: str
    checkpoint: str
    native_resolution: int
    default_steps: int | None
    licence: str
    options: dict[str, Any] = field(default_factory=dict)


_OPENRAIL = "OpenRAIL++-M (use restrictions apply)"
_APACHE = "Apache-2.0"
_NC = "CC-BY-NC-4.0 (non-commercial)"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("marigold-v1-1", "marigold", "depth", "prs-eth/marigold-depth-v1-1", 768, 4,
                  _OPENRAIL),
        ModelSpec("marigold-v1-0", "marigold", "depth", "prs-eth/marigold-depth-v1-0", 768, 10,
                  _APACHE),
        ModelSpec("marigold-lcm", "marigold", "depth", "prs-eth/marigold-depth-lcm-v1-0", 768, 1,
                  _APACHE),
        # End-to-end fine-tuned (Martin Garcia et al. 2024): deterministic, one DDIM step with
        # trailing timesteps from zero noise.
        ModelSpec("marigold-e2e-ft", "marigold", "depth", "GonzaloMG/marigold-e2e-ft-depth", 768,
                  1, _APACHE, {"noise": "zeros", "timestep_spacing": "trailing"}),
        ModelSpec("depth-anything-v2-small", "depth_anything", "disparity",
                  "depth-anything/Depth-Anything-V2-Small-hf", 518, None, _APACHE),
        ModelSpec("depth-anything-v2-base", "depth_anything", "disparity",
                  "depth-anything/Depth-Anything-V2-Base-hf", 518, None, _NC),
        ModelSpec("depth-anything-v2-large", "depth_anything", "disparity",
                  "depth-anything/Depth-Anything-V2-Large-hf", 518, None, _NC),
        ModelSpec("depth-anything-v2-metric-indoor-large", "depth_anything", "metric_depth",
                  "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf", 518, None, _NC),
        ModelSpec("depth-anything-v2-metric-outdoor-large", "depth_anything", "metric_depth",
                  "depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf", 518, None, _NC),
        ModelSpec("depth-pro", "depth_pro", "metric_depth", "apple/DepthPro-hf", 1536, None,
                  "Apple ML Research licence (research use only)"),
    )
}

#: The registry name of the default model (``prs-eth/marigold-depth-v1-1``).
DEFAULT_NAME = "marigold-v1-1"


def get_spec(name: object) -> ModelSpec | None:
    """The built-in model called ``name``, or None (also for non-strings)."""
    if not isinstance(name, str):
        return None
    return REGISTRY.get(name.strip().lower())


def native_tile_size(model: object) -> int | None:
    """The native resolution of the model ``model`` names (a built-in name, its hub id, or a
    local checkpoint folder, whose family its files tell), or None.

    The tile size a run of that model defaults to: Depth Pro upsamples every
    input to 1536 px, so smaller tiles cost its full compute for no detail. A folder has its
    family's resolution (every built-in model of a family shares it), as its hub id would.

    Examples
    --------
    >>> native_tile_size("depth-pro"), native_tile_size("apple/DepthPro-hf")
    (1536, 1536)
    >>> native_tile_size("mymodels:depth") is None
    True
    """
    family, spec = _resolve(model)
    if spec is not None:
        return spec.native_resolution
    if family in FAMILIES and os.path.isdir(os.path.expanduser(os.fspath(model))):
        return next(s.native_resolution for s in REGISTRY.values() if s.family == family)
    return None


def family_of(model: object) -> str | None:
    """The backend family the ``model`` option loads as, told without loading it.

    As :func:`tiledepth.models.load_model` resolves it: a registry name or hub id, a
    checkpoint folder (by its files), a loaded pipeline or transformers model.

    Returns
    -------
    str or None
        One of :data:`FAMILIES`; :data:`CALLABLE` for a Python callable (or
        ``package.module:function``, ``file.py:function``); None where it cannot be told
        without loading: a loaded model object (which runs with its own settings), a file.

    Examples
    --------
    >>> family_of("depth-pro"), family_of("prs-eth/marigold-depth-v1-1")
    ('depth_pro', 'marigold')
    >>> family_of("mymodels:depth"), family_of(lambda batch: batch[..., 0])
    ('callable', 'callable')
    """
    from tiledepth.models.hf import is_transformers_model
    from tiledepth.models.marigold import is_marigold_pipeline
    from tiledepth.protocols import DepthModel

    if isinstance(model, DepthModel):
        return None
    if is_marigold_pipeline(model):
        return "marigold"
    for family in ("depth_anything", "depth_pro"):
        if is_transformers_model(model, (family,)):
            return family
    if callable(model):
        return CALLABLE
    return _resolve(model)[0]


def spec_of(model: object) -> ModelSpec | None:
    """The registry entry whose settings the ``model`` option loads with, or None: a name, a
    hub id of one, or a folder holding ``marigold-e2e-ft`` (saved as its hub copy is).

    Examples
    --------
    >>> spec_of("GonzaloMG/marigold-e2e-ft-depth").default_steps
    1
    >>> spec_of("mymodels:depth") is None
    True
    """
    return _resolve(model)[1]


def _resolve(model: object) -> tuple[str | None, ModelSpec | None]:
    """(family, registry entry) of a ``model`` option given as a string or path, as
    :func:`tiledepth.models.load_model` resolves it; (None, None) for anything else.

    The family is :data:`CALLABLE` for ``package.module:function`` or ``file.py:function``,
    None for a file; the entry is None where no registry settings apply. A folder's files
    are read once for both.
    """
    from pathlib import Path

    from tiledepth import models

    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        return None, None
    spec = get_spec(model)
    if spec is not None:
        return spec.family, spec
    if not Path(model).exists() and (models._CALLABLE_SPEC.match(model)
                                     or models._FILE_SPEC.match(model)):
        return CALLABLE, None
    folder = os.path.expanduser(model)
    if os.path.isdir(folder):
        spec = models._spec_of_folder(folder)
        return (spec.family if spec is not None else models.family_of_folder(folder)), spec
    if os.path.isfile(folder):
        return None, None
    spec = spec_for_checkpoint(model)
    return (spec.family, spec) if spec is not None else (models._family_of_hub_id(model), None)


def spec_for_checkpoint(checkpoint: str) -> ModelSpec | None:
    """The built-in model whose hub id is ``checkpoint`` (case-insensitive), or None.

    Examples
    --------
    >>> spec_for_checkpoint("apple/DepthPro-hf").name
    'depth-pro'
    """
    wanted = checkpoint.strip().lower()
    for spec in REGISTRY.values():
        if spec.checkpoint.lower() == wanted:
            return spec
    return None


def format_table(specs: list[ModelSpec] | None = None) -> str:
    """The registry as an aligned plain-text table, one model per line.

    Examples
    --------
    >>> print(format_table([REGISTRY["depth-pro"]]))  # doctest: +NORMALIZE_WHITESPACE
    name       family     output        resolution  steps  checkpoint         licence
    depth-pro  depth_pro  metric depth  1536        -      apple/DepthPro-hf  Apple ML ...
    """
    from tiledepth.kinds import LABELS

    specs = list(REGISTRY.values()) if specs is None else specs
    header = ("name", "family", "output", "resolution", "steps", "checkpoint", "licence")
    rows = [header] + [
        (s.name + (" (default)" if s.name == DEFAULT_NAME else ""), s.family, LABELS[s.kind],
         str(s.native_resolution), "-" if s.default_steps is None else str(s.default_steps),
         s.checkpoint, s.licence)
        for s in specs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
             + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)
