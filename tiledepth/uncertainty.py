"""The ensemble's uncertainty, carried from the model to its own GeoTIFF.

With ``uncertainty=True`` (``--uncertainty``) and an ensembling model (Marigold
with ``--ensemble`` >= 3), every tile comes back with a per-pixel spread: the
median absolute deviation of the aligned ensemble members, in the tile's own
units. The fusion maps it into the output's frame with the tile's scale
(``|s_i| * u_i``; a shift does not change a spread) and blends it with the same
tapered weights as the depth, into ``<output stem>.uncertainty.tif`` beside the
depth map, on the same grid.

:class:`UncertaintyTap` sits between the engine and the model: it answers
``predict`` like the model does and keeps each tile's uncertainty until the
engine stores it next to the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tiledepth.errors import OptionError

__all__ = ["VALUES", "UncertaintyTap", "uncertainty_output"]

#: The uncertainty output's ``TILEDEPTH_VALUES`` tag.
VALUES = ("ensemble uncertainty: median absolute deviation of the aligned ensemble members, "
          "in the depth output's units")


def uncertainty_output(output: str | Path) -> Path:
    """Where the uncertainty of ``output`` is written: ``<output stem>.uncertainty.tif``.

    Examples
    --------
    >>> uncertainty_output("ortho.depth.tif").name
    'ortho.depth.uncertainty.tif'
    """
    output = Path(output)
    return output.with_name(f"{output.stem}.uncertainty.tif")


class UncertaintyTap:
    """A model wrapper that keeps the uncertainty of every tile it predicts.

    Parameters
    ----------
    model : DepthModel
        A model with ``predict_with_uncertainty(batch, keys)``.

    Raises
    ------
    OptionError
        If the model cannot estimate uncertainty.
    """

    def __init__(self, model) -> None:
        if not hasattr(model, "predict_with_uncertainty"):
            raise OptionError(
                f"uncertainty: model {getattr(model, 'name', model)!r} does not estimate "
                "uncertainty; use a Marigold model with ensemble >= 3, or drop --uncertainty"
            )
        self.model = model
        self.name = model.name
        self.batch_size = model.batch_size
        self.kind = getattr(model, "kind", "depth")
        self._pending: dict[int, np.ndarray] = {}

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """The model's prediction; the uncertainty is kept for :meth:`take`."""
        depth, spread = self.model.predict_with_uncertainty(batch, keys)
        for key, item in zip(keys, spread, strict=True):
            self._pending[int(key)] = item
        return depth

    def take(self, key: int, shape: tuple[int, int]) -> np.ndarray:
        """Hand over (and forget) the uncertainty of tile ``key``, cropped to ``shape``."""
        h, w = shape
        return np.ascontiguousarray(self._pending.pop(int(key))[:h, :w], dtype=np.float32)
