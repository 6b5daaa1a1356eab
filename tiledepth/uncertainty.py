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

from tiledepth.errors import OptionError
from tiledepth.models.base import TRAITS, DepthModel, check_prediction

__all__ = ["UncertaintyTap", "gives_uncertainty"]



def gives_uncertainty(model: object) -> bool:
    """Whether ``model`` implements ``predict_with_uncertainty``."""
    return callable(getattr(model, "predict_with_uncertainty", None))


class UncertaintyTap:
    """A model with uncertainty behind the plain model protocol.

    Parameters
    ----------
    model : DepthModel
        With ``predict_with_uncertainty(batch, keys) -> (depth, uncertainty)``.
    """

    def __init__(self, model: DepthModel) -> None:
        if not gives_uncertainty(model):
            raise OptionError(
                f"model {model.name!r} gives no uncertainty; --uncertainty needs a model that "
                "gives it (Marigold, with --ensemble 3 or more)"
            )
        need = getattr(model, "min_uncertainty_ensemble", None)  # before any model call
        if need is not None and getattr(model, "ensemble", need) < need:
            raise OptionError(f"{model.name}'s uncertainty needs --ensemble {need} or more (the "
                              f"spread of fewer members says nothing), got {model.ensemble}")
        self.model = model
        self.name = model.name
        self.batch_size = model.batch_size
        self.steps = getattr(model, "steps", None)
        for attr in TRAITS:  # what callers read off a model
            if getattr(model, attr, None) is not None:  # (the coarse image's padding)
                setattr(self, attr, getattr(model, attr))
        self._held: dict[int, np.ndarray] = {}

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        depth, spread = self.model.predict_with_uncertainty(batch, keys)
        spread = check_prediction(spread, batch, f"{self.name} (uncertainty)")
        for key, tile in zip(keys, spread, strict=True):
            self._held[key] = tile
        return check_prediction(depth, batch, self.name)

    def take(self, key: int, shape: tuple[int, int]) -> np.ndarray:
        """The uncertainty of the tile predicted under ``key``, cropped to ``shape``."""
        h, w = shape
        return np.ascontiguousarray(self._held.pop(key)[:h, :w], dtype=np.float32)
