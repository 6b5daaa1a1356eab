"""The Depth Pro backend: transformers' ``DepthProForDepthEstimation``, metric depth.

Depth Pro (Bochkovskii et al. 2024) predicts a *canonical inverse depth* and,
with its field-of-view head, the horizontal field of view; together they give
depth in metres::

    depth = 1 / (canonical_inverse_depth * 2 * tan(fov / 2))

(the ``width / focal_length`` factor of transformers'
``post_process_depth_estimation``, which depends only on the field of view).
The network sees a fixed square input (1536 px for the released model; read
from the checkpoint's ``preprocessor_config.json`` or derived from its
config), so every tile is resized to it and the prediction resized back.

Each tile estimates its own field of view, so tiles come back in metres but
with their own scale error; the fusion aligns metric depth with one scale per
tile (no shift) against the whole image's prediction and the overlaps, which
keeps the coarse prediction's metric frame (see :mod:`tiledepth.kinds`). A
checkpoint without the field-of-view head gives ``1 / canonical_inverse_depth``,
metric only up to the unknown focal length.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tiledepth.models import hf

if TYPE_CHECKING:
    import torch

__all__ = ["DepthProModel", "from_model", "is_depth_pro", "load_depth_pro"]

logger = logging.getLogger(__name__)

#: ``config.model_type`` of the checkpoints this backend loads.
MODEL_TYPES = ("depth_pro",)
#: Clamp of the inverse depth before inverting, as transformers' post-processing does.
MIN_INVERSE, MAX_INVERSE = 1e-4, 1e4


def input_side(config: Any, preprocessor: dict[str, Any]) -> int:
    """The square input side the network expects.

    The preprocessor's ``size`` if the checkpoint ships one, else the smallest
    image whose most reduced scale still holds one patch:
    ``patch_size / min(scaled_images_ratios)`` (384 / 0.25 = 1536).
    """
    size = preprocessor.get("size")
    if isinstance(size, dict) and "height" in size:
        return int(size["height"])
    return int(round(config.patch_size / min(config.scaled_images_ratios)))


class DepthProModel(hf.TransformersDepthModel):
    """A transformers Depth Pro model behind the model protocol.

    Attributes
    ----------
    name : str
        Hub id or folder.
    kind : str
        Always ``"metric_depth"``.
    side : int
        The square side every tile is resized to.
    batch_size : int
    """

    default_mean = (0.5, 0.5, 0.5)
    default_std = (0.5, 0.5, 0.5)
    kind = "metric_depth"

    def __init__(self, model: Any, *, name: str, preprocessor: dict[str, Any] | None = None,
                 batch_size: int = 4) -> None:
        super().__init__(model, name=name, preprocessor=preprocessor, batch_size=batch_size)
        self.side = input_side(model.config, self.preprocessor)
        if getattr(model, "fov_model", None) is None:
            logger.warning("%s has no field-of-view head: its depth is metric only up to the "
                           "unknown focal length", name)

    def _forward(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        # 1. Resize to the network's square input.
        if (height, width) != (self.side, self.side):
            shrink = self.side < max(height, width)
            # in float32: CPU torch has no antialiased resize in bf16 (nor fp16)
            pixels = F.interpolate(pixels.float(), size=(self.side, self.side),
                                   mode="bilinear", align_corners=False,
                                   antialias=shrink).to(pixels.dtype)  # [B,3,S,S]
        out = self.model(pixel_values=pixels)
        inverse = out.predicted_depth.float()  # [B,s,s] canonical inverse depth
        # 2. Back to the tile's size, then to metres with the predicted field of view.
        inverse = F.interpolate(inverse[:, None], size=(height, width), mode="bilinear",
                                align_corners=False)[:, 0]  # [B,H,W]
        fov = out.field_of_view
        if fov is not None:
            factor = 2.0 * torch.tan(0.5 * torch.deg2rad(fov.float().reshape(-1, 1, 1)))  # [B,1,1]
            inverse = inverse * factor
        return 1.0 / inverse.clamp(min=MIN_INVERSE, max=MAX_INVERSE)  # [B,H,W]


is_depth_pro, load_depth_pro, from_model = hf.family_api(
    DepthProModel, family="Depth Pro", model_types=MODEL_TYPES, loader="load_depth_pro",
    hub_example="apple/DepthPro-hf")
