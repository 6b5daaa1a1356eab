"""Parameters and FLOPs of one Marigold v1-1 tile, counted on PyTorch's meta device.

The architecture is Marigold v1-1's (Stable Diffusion 2's UNet with 8 input channels and
its VAE), built without weights on the meta device, so nothing is downloaded and no memory
is used; ``torch.utils.flop_counter`` counts the floating-point operations of one VAE
encode, one UNet step and one VAE decode at a tile size. ``tiledepth info`` turns these
figures into its time and memory estimates (``tiledepth/info.py``).

    python benchmarks/marigold_cost.py --tile-size 768 [--measure-cpu]

``--measure-cpu`` also times one 320-channel 3x3 convolution on a 96 x 96 map (the UNet's
first level at 768 px) with torch on this machine's CPU, for its sustained TFLOP/s.
"""

from __future__ import annotations

import argparse


def marigold_modules():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=96, in_channels=8, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
            use_linear_projection=True)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
    return unet, vae


def count(tile: int) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae = marigold_modules()
    lat = tile // 8
    out = {"unet_params": sum(p.numel() for p in unet.parameters()),
           "vae_params": sum(p.numel() for p in vae.parameters())}
    with torch.device("meta"), torch.no_grad():
        for name, fn in [
            ("encode", lambda: vae.encode(torch.zeros(1, 3, tile, tile))),
            ("unet_step", lambda: unet(torch.zeros(1, 8, lat, lat), 1,
                                       torch.zeros(1, 2, 1024))),
            ("decode", lambda: vae.decode(torch.zeros(1, 4, lat, lat))),
        ]:
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            out[name] = counter.get_total_flops()
    return out


def cpu_tflops(repeats: int = 5) -> float:
    """Sustained fp32 TFLOP/s of a 320-channel 3x3 convolution on a 96 x 96 map, on the CPU."""
    import time

    import torch

    conv = torch.nn.Conv2d(320, 320, 3, padding=1)
    x = torch.randn(1, 320, 96, 96)
    with torch.no_grad():
        conv(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            conv(x)
        seconds = (time.perf_counter() - t0) / repeats
    return 2 * 320 * 320 * 9 * 96 * 96 / seconds / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile-size", type=int, default=768)
    ap.add_argument("--measure-cpu", action="store_true")
    args = ap.parse_args()
    c = count(args.tile_size)
    print(f"UNet parameters  {c['unet_params'] / 1e6:.0f} M")
    print(f"VAE parameters   {c['vae_params'] / 1e6:.0f} M")
    for k in ("encode", "unet_step", "decode"):
        print(f"{k:<16} {c[k] / 1e12:.2f} TFLOP at {args.tile_size} px")
    if args.measure_cpu:
        import torch

        print(f"CPU conv         {cpu_tflops():.3f} TFLOP/s ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
