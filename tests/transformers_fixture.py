"""Build tiny, randomly initialised Depth Anything and Depth Pro checkpoints for tests.

Configurations follow transformers' own model tests (a 2-layer DINOv2 backbone of width 16);
each saves with ``save_pretrained`` to a folder (``config.json`` + ``model.safetensors``, a few
hundred kB) in well under a second once transformers is imported. Weights are seeded.
"""

from __future__ import annotations

import json
import os

_DINOV2 = {"model_type": "dinov2", "num_hidden_layers": 2, "hidden_size": 16,
           "num_attention_heads": 1, "patch_size": 4}


def make_tiny_depth_anything(path: str | os.PathLike, *, metric: bool = False) -> str:
    """Save a tiny random Depth Anything (V2 layout) model to ``path``; return the path.

    ``metric=True`` makes it a metric checkpoint (``depth_estimation_type="metric"``).
    A ``preprocessor_config.json`` with ImageNet normalisation ships with it, as on the hub.
    """
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    torch.manual_seed(0)
    backbone = {"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 32, "image_size": 28,
                "patch_size": 14, "out_features": ["stage1", "stage2"],
                "reshape_hidden_states": False}
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
        fusion_hidden_size=16, head_hidden_size=8, reassemble_factors=[2, 1],
        depth_estimation_type="metric" if metric else "relative", max_depth=20 if metric else 1,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    path = os.fspath(path)
    model.save_pretrained(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                   "size": {"height": 518, "width": 518}}, f)
    return path


def make_tiny_depth_pro(path: str | os.PathLike) -> str:
    """Save a tiny random Depth Pro model with its field-of-view head to ``path``.

    Its square input side is ``patch_size / min(scaled_images_ratios)`` = 16 / 0.5 = 32.
    """
    import torch
    from transformers import DepthProConfig, DepthProForDepthEstimation

    torch.manual_seed(0)
    config = DepthProConfig(
        patch_size=16, fusion_hidden_size=16, intermediate_hook_ids=[1, 0],
        intermediate_feature_dims=[10, 8], scaled_images_ratios=[0.5, 1.0],
        scaled_images_overlap_ratios=[0.0, 0.2], scaled_images_feature_dims=[12, 12],
        use_fov_model=True, image_model_config=dict(_DINOV2), patch_model_config=dict(_DINOV2),
        fov_model_config=dict(_DINOV2),
    )
    model = DepthProForDepthEstimation(config).eval()
    path = os.fspath(path)
    model.save_pretrained(path)
    return path
