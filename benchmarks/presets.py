"""The trade-offs of configs/fast.yaml, balanced.yaml and quality.yaml, measured where possible.

Measured here (CPU, no weights): for each preset, the engine's fusion error and wall time on a
synthetic 3072 x 3072 surface with a *simulated* affine-invariant model (the true surface
under an unknown per-prediction scale and shift plus a random tilt of up to a few percent of
the range and a little noise, so that tiles disagree the way a real model's do). Computed,
not measured: tiles on a 10000 x 10000 raster (the tiling formula) and Marigold v1-1 TFLOP
per run (``tiledepth.info``), from which an H100-class time *estimate* follows. Not measured
at all: how steps and ensemble change Marigold's own accuracy (no weights here).

    python benchmarks/presets.py [--size 3072] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from large_raster import work_folder  # noqa: E402

import tiledepth  # noqa: E402
from examples.make_sample import make_scene  # noqa: E402
from tiledepth.info import DEVICE_CLASSES, marigold_tflop  # noqa: E402
from tiledepth.options import load_config, make_options  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402

PRESETS = ("fast", "balanced", "quality")
#: Preset keys that set the built-in model, not the fusion: a Python callable such as
#: :func:`simulated` refuses them (``plan.check_callable_options``). They count in the TFLOP
#: column only.
MODEL_ONLY = ("model", "steps", "ensemble", "device", "dtype")


def fusion_options(config: Path) -> dict:
    """The options of preset ``config`` that a Python callable model runs with: every key it
    sets but :data:`MODEL_ONLY`, as :func:`make_options` resolves them (``tile_size: null``:
    the built-in model's native size, as the TFLOP column counts it)."""
    opts = make_options(config)
    return {key: getattr(opts, key) for key in load_config(config) if key not in MODEL_ONLY}


def simulated(batch: np.ndarray) -> np.ndarray:
    """The true surface (band 1) as depth, under a per-image scale, shift, tilt and noise."""
    out = []
    for img in batch:
        truth = img[..., 0].astype(np.float64)
        rng = np.random.default_rng(int(truth.sum() * 1000) % 2**32)
        h, w = truth.shape
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        tilt = rng.normal(0, 0.03) * (xx - 0.5) + rng.normal(0, 0.03) * (yy - 0.5)
        noise = rng.normal(0, 0.005, truth.shape)
        out.append(rng.uniform(0.5, 2.0) * (1.0 - truth + tilt + noise) + rng.uniform(-1, 1))
    return np.stack(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with work_folder(args.workdir, "tiledepth-presets-") as work:
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    """Run each preset on a surface written in ``work``; print the table."""
    work.mkdir(parents=True, exist_ok=True)
    _, surface = make_scene(args.size)
    truth = (surface - surface.min()) / np.ptp(surface)
    src = work / "surface.tif"
    with rasterio.open(src, "w", driver="GTiff", height=args.size, width=args.size, count=3,
                       dtype="float32", crs="EPSG:32611", tiled=True,
                       transform=from_origin(500000, 5400000, 0.1, 0.1)) as dst:
        dst.write(np.repeat(truth[None], 3, 0).astype(np.float32))
    h100 = DEVICE_CLASSES["GPU, data centre (H100 class, fp16)"]
    print(f"{'preset':<9} {'tiles':>5} {'wall s':>7} {'RMSE %':>7} {'grad err %':>10} "
          f"{'tiles 100MP':>11} {'TFLOP/tile':>10} {'H100 est. 100MP':>15}")
    for name in PRESETS:
        config = ROOT / "configs" / f"{name}.yaml"
        opts = make_options(config)
        t0 = time.perf_counter()
        result = tiledepth.run(src, work / f"{name}.tif", model=simulated, overwrite=True,
                               overviews=False, **fusion_options(config))
        wall = time.perf_counter() - t0
        with rasterio.open(result.output) as ds:
            out = ds.read(1).astype(np.float64)
        a = np.c_[out.ravel(), np.ones(out.size)]
        fit = a @ np.linalg.lstsq(a, truth.ravel(), rcond=None)[0]
        rmse = 100 * np.sqrt(np.mean((fit - truth.ravel()) ** 2))
        g_fit, g_true = np.gradient(fit.reshape(truth.shape)), np.gradient(truth)
        grad = 100 * np.sqrt(np.mean((g_fit[1] - g_true[1]) ** 2)) / np.std(g_true[1])
        grid = tile_grid(10000, 10000, opts.tile_size, opts.overlap)
        n100 = len(grid) * len(grid[0])
        tflop = marigold_tflop(opts.tile_size, opts.steps or 4, opts.ensemble)
        print(f"{name:<9} {result.tiles:>5} {wall:>7.1f} {rmse:>7.3f} {grad:>10.1f} {n100:>11} "
              f"{tflop:>10.1f} {n100 * tflop / h100 / 60:>12.1f} min")


if __name__ == "__main__":
    main()
