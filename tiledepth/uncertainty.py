"""Uncertainty: carry a model's per-tile uncertainty beside its depth through the engine.

A model that can tell how sure it is (Marigold when ensembling: the spread of
its ensemble members) implements ``predict_with_uncertainty(batch, keys)``,
returning ``(depth, uncertainty)``, both (B, H, W). :class:`UncertaintyTap`
puts such a model behind the plain protocol: its ``predict`` returns depth and
keeps each tile's uncertainty until the engine takes it with :meth:`take`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tiledepth.errors import ModelError, OptionError
from tiledepth.models.base import TRAITS, DepthModel, check_prediction

__all__ = ["UncertaintyTap", "check_uncertainty", "gives_own_uncertainty",
           "gives_uncertainty"]



def gives_uncertainty(model: object) -> bool:
    """Whether ``model`` implements ``predict_with_uncertainty``."""
    return callable(getattr(model, "predict_with_uncertainty", None))


def gives_own_uncertainty(model: object) -> bool:
    """Whether ``model`` says how sure it is by itself: it implements
    ``predict_with_uncertainty`` and has no ``ensemble`` (Marigold's uncertainty is the
    spread of its ensemble, which needs 3 members or more; such a model's needs none).

    Examples
    --------
    >>> class Sure:
    ...     def predict_with_uncertainty(self, batch, keys): ...
    >>> gives_own_uncertainty(Sure()), gives_own_uncertainty("marigold-v1-1")
    (True, False)
    """
    return gives_uncertainty(model) and getattr(model, "ensemble", None) is None


def check_uncertainty(model: DepthModel) -> None:
    """Raise OptionError where ``model`` cannot give an ``--uncertainty`` run its spreads: it
    gives none, or its ensemble is too small to say anything (before any model call)."""
    if not gives_uncertainty(model):
        raise OptionError(
            f"model {model.name!r} gives no uncertainty; --uncertainty needs a model that "
            "gives it (Marigold, with --ensemble 3 or more)"
        )
    need = getattr(model, "min_uncertainty_ensemble", None)
    if need is not None and getattr(model, "ensemble", need) < need:
        raise OptionError(f"{model.name}'s uncertainty needs --ensemble {need} or more (the "
                          f"spread of fewer members says nothing), got {model.ensemble}")


class UncertaintyTap:
    """A model with uncertainty behind the plain model protocol.

    Parameters
    ----------
    model : DepthModel
        With ``predict_with_uncertainty(batch, keys) -> (depth, uncertainty)``.
    """

    def __init__(self, model: DepthModel) -> None:
        check_uncertainty(model)
        self.model = model
        self.name = model.name
        self.batch_size = model.batch_size
        self.steps = getattr(model, "steps", None)
        for attr in TRAITS:  # what callers read off a model
            if getattr(model, attr, None) is not None:  # (the coarse image's padding)
                setattr(self, attr, getattr(model, attr))
        self._held: dict[int, np.ndarray] = {}

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        out = self.model.predict_with_uncertainty(batch, keys)
        if not isinstance(out, (tuple, list)) or len(out) != 2:  # (an array of 2 tiles too)
            got = (f"an array of shape {out.shape}" if isinstance(out, np.ndarray)
                   else f"a {type(out).__name__} of {len(out)}"
                   if isinstance(out, (tuple, list)) else type(out).__name__)
            raise ModelError(f"model {self.name!r}: predict_with_uncertainty returned {got}; "
                             f"it must return a pair (depth, uncertainty), both (B, H, W) = "
                             f"{batch.shape[:3]}")
        depth, spread = out
        spread = check_prediction(spread, batch, f"{self.name} (uncertainty)")
        for key, tile in zip(keys, spread, strict=True):
            self._held[key] = tile
        return check_prediction(depth, batch, self.name)

    def take(self, key: int, shape: tuple[int, int]) -> np.ndarray:
        """The uncertainty of the tile predicted under ``key``, cropped to ``shape``."""
        h, w = shape
        return np.ascontiguousarray(self._held.pop(key)[:h, :w], dtype=np.float32)
