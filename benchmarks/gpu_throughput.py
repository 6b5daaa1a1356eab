"""GPU tile throughput of full-size Marigold (random weights): bare diffusers vs tiledepth.

Builds the real Marigold depth architecture with random weights (the Stable Diffusion 2 UNet with
8 input channels, the SD VAE; configs below), so timings are true without downloading weights.
The pipeline is saved to a
checkpoint folder and loaded with :func:`tiledepth.models.marigold.load_marigold`, the CLI's own
loading and settings (fp16 weights first, text encoder freed, VAE slicing on CUDA, fp32 decode).
For square tiles (768 px by default) it measures, per (steps, dtype, batch size):

1. ``bare``: the diffusers pipeline called once per tile at batch 1, as a user would write it;
2. ``model``: tiledepth's Marigold backend called on batches of tiles, no I/O (the ceiling);
3. ``engine``: ``tiledepth.run`` end to end on a synthetic GeoTIFF of at least 200 tiles
   (``--raster 15``: 15 x 15) with the same model, every image the model predicted counted
   (the coarse prediction and the pyramid level's tiles too: 251 at the defaults), and
   ``busy``, the share of the run's wall time the model spent predicting (target >= 0.9 at
   Marigold's default 4 steps).

Targets (issue 4): engine >= 1.3x bare, and engine within 5% of model.

    python benchmarks/gpu_throughput.py                              # on a CUDA machine
    python benchmarks/gpu_throughput.py --steps 1,4 --dtypes fp16,bf16 --batches 1,2,4,8,16,auto
    python benchmarks/gpu_throughput.py --compile                    # torch.compile the UNet
    python benchmarks/gpu_throughput.py --tiny --device cpu --raster 2  # smoke test (CPU)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# Stable Diffusion 2 UNet, as Marigold fine-tunes it: 8 input channels (image + depth latents).
UNET_SD2 = dict(
    sample_size=96, in_channels=8, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024, use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
)
# The Stable Diffusion VAE (8x downsampling, 4 latent channels).
VAE_SD = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
# Tiny versions, for the CPU smoke test.
UNET_TINY = dict(
    sample_size=32, in_channels=8, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), cross_attention_dim=32,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)
VAE_TINY = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)


def save_checkpoint(tiny: bool, folder: Path) -> str:
    """Save a MarigoldDepthPipeline with random weights (fp32) to ``folder``; return it."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel

    from tiledepth.models.marigold import save_empty_text_embedding

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(UNET_TINY if tiny else UNET_SD2))
    vae = AutoencoderKL(**(VAE_TINY if tiny else VAE_SD))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction", timestep_spacing="trailing",
                              rescale_betas_zero_snr=True)
    pipe = MarigoldDepthPipeline(unet=unet, vae=vae, scheduler=scheduler, text_encoder=None,
                                 tokenizer=None, prediction_type="depth",
                                 default_denoising_steps=4, default_processing_resolution=768)
    pipe.empty_text_embedding = torch.zeros(1, 2, unet.config.cross_attention_dim)
    pipe.save_pretrained(folder)
    save_empty_text_embedding(pipe, folder)
    return str(folder)


class Timed:
    """A model whose predict calls are timed (each ends with its copy back to the host) and
    whose images are counted."""

    def __init__(self, model) -> None:
        self.model, self.busy, self.images = model, 0.0, 0
        self.name, self.batch_size, self.kind = model.name, model.batch_size, model.kind

    def predict(self, batch, keys):
        t0 = time.perf_counter()
        try:
            return self.model.predict(batch, keys)
        finally:
            self.busy += time.perf_counter() - t0
            self.images += len(batch)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_bare(pipe, tiles: np.ndarray, steps: int, device: str) -> float:
    """Tiles per second of the pipeline called once per tile (batch 1)."""
    import torch

    # processing_resolution=0: at the tile's own size (768 is also Marigold's default)
    pipe(torch.from_numpy(tiles[0].transpose(2, 0, 1)[None]), num_inference_steps=steps,
         processing_resolution=0)  # warm up
    sync(device)
    t0 = time.perf_counter()
    for tile in tiles:
        pipe(torch.from_numpy(tile.transpose(2, 0, 1)[None]), num_inference_steps=steps,
             processing_resolution=0)
    sync(device)
    return len(tiles) / (time.perf_counter() - t0)


def time_model(model, tiles: np.ndarray, device: str) -> float:
    """Tiles per second of the backend on batches of ``model.batch_size``, no I/O."""
    b = model.batch_size
    model.predict(tiles[:b], list(range(b)))  # warm up
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(tiles), b):
        model.predict(tiles[i:i + b], list(range(i, i + len(tiles[i:i + b]))))
    sync(device)
    return len(tiles) / (time.perf_counter() - t0)


def time_engine(model, raster: Path, work: Path, tile: int) -> tuple[float, int, int, float]:
    """Tiles per second of tiledepth.run end to end, the raster's tiles, the images the model
    predicted, and the share of the wall time the model was busy.

    The rate counts every image the model predicted: the raster's tiles, the coarse
    prediction and any pyramid level's tiles (``result.tiles`` is the raster's alone: 441
    of 491 images on a 512 px raster with 32 px tiles, 225 of 251 at the defaults).
    """
    import tiledepth

    timed = Timed(model)
    t0 = time.perf_counter()
    result = tiledepth.run(raster, work / "out.tif", model=timed, tile_size=tile,
                           overwrite=True)
    wall = time.perf_counter() - t0
    return timed.images / wall, result.tiles, timed.images, timed.busy / wall


def make_raster(path: Path, side: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, side, side), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3,
                       dtype="uint8", crs="EPSG:32611",
                       transform=from_origin(500000, 5400000, 0.1, 0.1), tiled=True,
                       blockxsize=512, blockysize=512) as dst:
        dst.write(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tile", type=int, default=768)
    ap.add_argument("--steps", default="1,4")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--batches", default="1,2,4,8,16,auto",
                    help="batch sizes; auto probes the largest that fits (on CUDA)")
    ap.add_argument("--tiles", type=int, default=32, help="tiles per timing")
    ap.add_argument("--raster", type=int, default=15,
                    help="raster side in tiles (engine; 15: 225 tiles)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiledepth-gpu-"))
    try:
        rows = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the checkpoint and rasters it made
    print(json.dumps(rows, indent=1))


def measure(args: argparse.Namespace, work: Path) -> list[dict]:
    """Every (dtype, steps, batch) row of the table, with its files under ``work``."""
    import torch

    from tiledepth.models.autobatch import MAX_BATCH, resolve_batch_size
    from tiledepth.models.marigold import load_marigold

    folder = save_checkpoint(args.tiny, work / "checkpoint")
    stride = args.tile - round(0.25 * args.tile)
    raster = work / "in.tif"
    make_raster(raster, args.tile + stride * (args.raster - 1))
    rng = np.random.default_rng(0)
    tiles = rng.random((args.tiles, args.tile, args.tile, 3), dtype=np.float32)
    rows = []
    for dname in args.dtypes.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            # the CLI's loading and settings; the bare pipeline is the one it loaded
            model = load_marigold(folder, device=args.device, dtype=dname, steps=steps)
            if args.compile:
                model.pipe.unet = torch.compile(model.pipe.unet)
            bare = time_bare(model.pipe, tiles, steps, args.device)
            for choice in args.batches.split(","):
                auto = choice.strip() == "auto"
                model.batch_size = 4 if auto else int(choice)
                model._halving.limit = None
                probe = time.perf_counter()
                if auto:  # --batch-size auto: probed once, as tiledepth.run does
                    resolve_batch_size(model, args.tile, cap=min(MAX_BATCH, args.tiles))
                probe = time.perf_counter() - probe
                batch = model.batch_size
                ceiling = time_model(model, tiles, args.device)
                engine, n, images, busy = time_engine(model, raster, work, args.tile)
                row = dict(device=args.device, dtype=dname, steps=steps, batch=batch, auto=auto,
                           probe_s=probe if auto else None,
                           bare=bare, model=ceiling, engine=engine, engine_tiles=n,
                           engine_images=images, busy=busy,
                           engine_vs_bare=engine / bare, engine_vs_model=engine / ceiling)
                rows.append(row)
                label = f"auto={batch:2d} (probe {probe:.1f} s)" if auto else f"{batch:2d}"
                print(f"{dname} steps={steps} batch={label}: bare {bare:6.2f}  model "
                      f"{ceiling:6.2f}  engine {engine:6.2f} tiles/s  engine/bare "
                      f"{engine / bare:4.2f}  engine/model {engine / ceiling:4.2f}  "
                      f"busy {busy:4.2f}", file=sys.stderr)
            del model
    return rows


if __name__ == "__main__":
    main()
