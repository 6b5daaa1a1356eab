"""Build a tiny, randomly initialised Marigold depth checkpoint for tests.

The checkpoint has the real ``MarigoldDepthPipeline`` layout (UNet with 8 input
channels, a 4-latent-channel VAE with scale factor 2, a DDIM scheduler set up
like Marigold v1-1) but no CLIP text encoder: it ships the empty-prompt
embedding as ``empty_text_embedding.safetensors``, the convention
:mod:`tiledepth.models.marigold` loads. It builds and saves in about a second
on the CPU once diffusers is imported.
"""

from __future__ import annotations

import os

#: Width of the tiny UNet's cross-attention (and of the empty-prompt embedding).
CROSS_ATTENTION_DIM = 32


def make_tiny_marigold(path: str | os.PathLike) -> str:
    """Save a tiny random ``MarigoldDepthPipeline`` to ``path`` and return the path.

    Weights are seeded (``torch.manual_seed(0)``), so the checkpoint is the same
    on every call.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel

    from tiledepth.models.marigold import save_empty_text_embedding

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=8,  # image latent + depth latent
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),  # two blocks: vae_scale_factor 2
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    # Marigold v1-1's scheduler: DDIM, v-prediction, trailing timesteps, zero-SNR betas.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
    )
    pipe = MarigoldDepthPipeline(
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        text_encoder=None,
        tokenizer=None,
        prediction_type="depth",
        scale_invariant=True,
        shift_invariant=True,
        default_denoising_steps=2,
        default_processing_resolution=32,
    )
    pipe.empty_text_embedding = torch.randn(1, 2, CROSS_ATTENTION_DIM)

    path = os.fspath(path)
    pipe.save_pretrained(path)  # warns that text_encoder/tokenizer=None cannot be saved
    save_empty_text_embedding(pipe, path)
    return path
