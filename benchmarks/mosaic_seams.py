"""The seam at file boundaries: per-file ``batch`` against ``batch --mosaic`` (issue 18).

A procedural aerial depth scene (:func:`scenes.aerial_scene`) is rendered as an RGB GeoTIFF
whose red band encodes depth, then cut into a grid of adjacent GeoTIFF files (a survey
delivery). The model is ``cheap_models:renormalised``: the red channel stretched to [0, 1] per
call, so every prediction has its own scale and shift, like a relative-depth model. Each file
is then fused

* alone (``tiledepth batch survey/ -o perfile/``), and
* as one raster, cut back into one output per file (``tiledepth batch survey/ -o mosaic/
  --mosaic``).

The outputs are put back side by side and fitted to the true depth with one least-squares
scale and shift (each map as a whole). The seam is the mean absolute difference between the
two pixels that face each other across a file boundary, against the same measure one pixel
inside (two neighbouring pixels of one file, next to the boundary), over every internal
boundary; both in metres of the scene, and their ratio (1: no seam).

    python benchmarks/mosaic_seams.py [--size 2048] [--files 4] [--tile-size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenes import aerial_scene  # noqa: E402

import tiledepth  # noqa: E402
from tiledepth.metrics import fit_scale_shift  # noqa: E402

TRANSFORM = from_origin(500000.0, 5400000.0, 0.25, 0.25)


def write_survey(folder: Path, depth: np.ndarray, files: int) -> list[Path]:
    """Cut an RGB rendering of ``depth`` into ``files`` x ``files`` adjacent GeoTIFFs."""
    d = (depth - depth.min()) / (depth.max() - depth.min())
    rgb = np.round(np.stack([d, 1.0 - d, 0.5 * np.ones_like(d)]) * 255).astype(np.uint8)
    step = depth.shape[0] // files
    paths = []
    for i in range(files):
        for j in range(files):
            w = Window(j * step, i * step, step, step)
            path = folder / f"r{i}c{j}.tif"
            with rasterio.open(path, "w", driver="GTiff", height=step, width=step, count=3,
                               dtype="uint8", crs="EPSG:32611", tiled=True, blockxsize=256,
                               blockysize=256, transform=window_transform(w, TRANSFORM)) as dst:
                dst.write(rgb[:, i * step:(i + 1) * step, j * step:(j + 1) * step])
            paths.append(path)
    return paths


def assemble(folder: Path, files: int, step: int) -> np.ndarray:
    """The per-file outputs of ``folder`` put back side by side."""
    out = np.zeros((files * step, files * step), np.float32)
    for i in range(files):
        for j in range(files):
            with rasterio.open(folder / f"r{i}c{j}.depth.tif") as ds:
                out[i * step:(i + 1) * step, j * step:(j + 1) * step] = ds.read(1)
    return out


def seam(depth: np.ndarray, files: int) -> tuple[float, float]:
    """Mean |difference| across the internal file boundaries, and one pixel inside them."""
    step = depth.shape[0] // files
    across, inside = [], []
    for k in range(1, files):
        b = k * step
        for d in (depth, depth.T):  # vertical boundaries, then horizontal ones
            across.append(np.abs(d[:, b] - d[:, b - 1]))
            inside += [np.abs(d[:, b - 1] - d[:, b - 2]), np.abs(d[:, b + 1] - d[:, b])]
    return float(np.nanmean(np.concatenate(across))), float(np.nanmean(np.concatenate(inside)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    depth = aerial_scene(args.size, args.seed)
    step = args.size // args.files
    opts = dict(model="cheap_models:renormalised", tile_size=args.tile_size, workers=0)
    print(f"scene {args.size} px, {args.files} x {args.files} files of {step} px, "
          f"tile {args.tile_size}, model cheap_models:renormalised")
    gt_across, gt_inside = seam(depth, args.files)
    print(f"{'':9s} {'seconds':>8s} {'across (m)':>11s} {'inside (m)':>11s} {'ratio':>6s}")
    print(f"{'truth':9s} {'':>8s} {gt_across:11.3f} {gt_inside:11.3f} "
          f"{gt_across / gt_inside:6.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "survey").mkdir()
        write_survey(root / "survey", depth, args.files)
        for name, mosaic in (("per-file", False), ("mosaic", True)):
            t0 = time.perf_counter()
            records = tiledepth.batch([root / "survey"], root / name, mosaic=mosaic, **opts)
            seconds = time.perf_counter() - t0
            assert all(r.status == "done" for r in records), records
            pred = assemble(root / name, args.files, step)
            valid = np.isfinite(pred)
            scale, shift = fit_scale_shift(pred[valid], depth[valid])
            aligned = np.where(valid, scale * pred + shift, np.nan)
            across, inside = seam(aligned, args.files)
            print(f"{name:9s} {seconds:8.1f} {across:11.3f} {inside:11.3f} "
                  f"{across / inside:6.2f}")


if __name__ == "__main__":
    main()
