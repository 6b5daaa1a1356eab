"""The Depth Anything V2 backend: transformers' ``AutoModelForDepthEstimation``.

Depth Anything V2 (Yang et al. 2024) is a DINOv2 encoder with a DPT head. The
relative checkpoints (``depth-anything-v2-small/base/large``) predict
*affine-invariant disparity*: inverse depth up to an unknown scale and shift,
larger is nearer; the metric checkpoints (``depth_estimation_type="metric"``
in their config) predict depth in metres. The model's :attr:`kind` follows the
checkpoint's config, and the fusion aligns each in its own space.

The ViT works on 14-pixel patches, so the sides it sees must be multiples of
14: a tile is replicate-padded on the bottom and right up to the next multiple
and the prediction cropped back, so tile pixels are never resampled. The model
runs at the tile's own size; it was trained at 518 px (``--tile-size 518``
matches it; larger tiles work, with a wider view per tile). Inputs are
normalised with the checkpoint's ``image_mean`` and ``image_std`` (ImageNet's
when it ships no preprocessor config).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tiledepth.models import hf

if TYPE_CHECKING:
    import torch

__all__ = ["DepthAnythingModel", "from_model", "is_depth_anything", "load_depth_anything",
           "padded_side"]

logger = logging.getLogger(__name__)

#: ``config.model_type`` of the checkpoints this backend loads.
MODEL_TYPES = ("depth_anything",)


def padded_side(side: int, multiple: int = 14) -> int:
    """The smallest multiple of ``multiple`` that is at least ``side``.

    Examples
    --------
    >>> padded_side(518), padded_side(768), padded_side(1)
    (518, 770, 14)
    """
    if side < 1 or multiple < 1:
        raise ValueError(f"side and multiple must be >= 1, got {side} and {multiple}")
    return -(-side // multiple) * multiple


class DepthAnythingModel(hf.TransformersDepthModel):
    """A transformers Depth Anything model behind the model protocol.

    Attributes
    ----------
    name : str
        Hub id or folder.
    kind : {'disparity', 'metric_depth'}
        ``"disparity"`` for relative checkpoints, ``"metric_depth"`` for metric ones.
    patch : int
        The ViT patch size (14); sides are padded to a multiple of it.
    batch_size : int
    """

    def __init__(self, model: Any, *, name: str, preprocessor: dict[str, Any] | None = None,
                 batch_size: int = 4) -> None:
        super().__init__(model, name=name, preprocessor=preprocessor, batch_size=batch_size)
        config = model.config
        metric = getattr(config, "depth_estimation_type", "relative") == "metric"
        self.kind = "metric_depth" if metric else "disparity"
        patch = getattr(config, "patch_size", 14)
        self.patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    def _forward(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        import torch.nn.functional as F

        # 1. Pad bottom and right to multiples of the patch size (replicate: no new edges).
        pad_h = padded_side(height, self.patch) - height
        pad_w = padded_side(width, self.patch) - width
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")  # [B,3,H',W']
        # 2. The DPT head predicts at the padded input size; crop the padding off.
        out = self.model(pixel_values=pixels).predicted_depth  # [B,H',W']
        return out[:, :height, :width]  # [B,H,W]


is_depth_anything, load_depth_anything, from_model = hf.family_api(
    DepthAnythingModel, family="Depth Anything", model_types=MODEL_TYPES,
    loader="load_depth_anything", hub_example="depth-anything/Depth-Anything-V2-Large-hf")
