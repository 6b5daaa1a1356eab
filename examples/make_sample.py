"""Write a small synthetic aerial-like RGB GeoTIFF to try tiledepth on.

    python examples/make_sample.py ortho.tif [--size 2048] [--dem dem.tif]

Terrain, a few flat-roofed buildings and round tree crowns, coloured like an
orthophoto, on a UTM grid at 0.1 m, with an alpha band that masks one corner
(as mosaics often have). Its red channel is not depth: use a real model, or
``examples/custom_model.py`` to try the engine without weights. ``--dem`` also
writes the true surface height at 4x coarser resolution, a reference for
``tiledepth run --reference``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin


def make_scene(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (rgba uint8 (4, size, size), height above ground float32 (size, size))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ground = 3 * np.sin(3 * xx + 1) * np.cos(2 * yy) + 4 * xx
    height = np.zeros((size, size), np.float32)
    for _ in range(12):  # buildings
        r0, c0 = rng.uniform(0, 0.9, 2)
        h, w = rng.uniform(0.03, 0.1, 2)
        height[(yy > r0) & (yy < r0 + h) & (xx > c0) & (xx < c0 + w)] = rng.uniform(4, 15)
    for _ in range(80):  # tree crowns
        r0, c0 = rng.uniform(0, 1, 2)
        rad = rng.uniform(0.01, 0.03)
        d2 = ((yy - r0) ** 2 + (xx - c0) ** 2) / rad**2
        crown = rng.uniform(5, 20) * np.sqrt(np.clip(1 - d2, 0, None))
        height = np.maximum(height, np.where(d2 < 1, crown, 0))
    surface = ground + height
    shade = np.clip(0.6 + 0.4 * np.gradient(surface, axis=1) * size / 40, 0.2, 1.0)
    tree = height > 0.5
    red = np.where(tree, 60, 150) * shade
    green = np.where(tree, 110, 140) * shade
    blue = np.where(tree, 50, 120) * shade
    rgb = np.clip(np.stack([red, green, blue]) + rng.normal(0, 4, (3, size, size)), 0, 255)
    alpha = np.full((size, size), 255, np.uint8)
    alpha[(xx + yy) < 0.15] = 0
    return np.concatenate([rgb.astype(np.uint8), alpha[None]]), surface.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic aerial-like RGBA GeoTIFF.")
    ap.add_argument("output")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dem", help="also write the surface height, 4x coarser, here")
    args = ap.parse_args()
    rgba, surface = make_scene(args.size)
    profile = dict(driver="GTiff", height=args.size, width=args.size, count=4, dtype="uint8",
                   crs="EPSG:32611", transform=from_origin(500000, 5400000, 0.1, 0.1),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(args.output, "w", **profile) as dst:
        dst.write(rgba)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                           ColorInterp.alpha]
    print(f"wrote {args.output} ({args.size} x {args.size}, RGBA, EPSG:32611)")
    if args.dem:
        n = args.size // 4
        dem = surface[: 4 * n, : 4 * n].reshape(n, 4, n, 4).mean(axis=(1, 3))
        with rasterio.open(args.dem, "w", driver="GTiff", height=n, width=n, count=1,
                           dtype="float32", crs="EPSG:32611", nodata=-9999.0,
                           transform=from_origin(500000, 5400000, 0.4, 0.4)) as dst:
            dst.write(dem[None])
        print(f"wrote {args.dem} ({n} x {n}, surface height in metres, 0.4 m)")


if __name__ == "__main__":
    main()
