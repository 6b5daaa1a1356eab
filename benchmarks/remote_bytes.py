"""Bytes fetched from an HTTP server by a run on a URL, against the file's size (issue 18).

A procedural aerial scene (:func:`scenes.aerial_scene`) is written as an RGB GeoTIFF (tiled
512 x 512, DEFLATE, with or without overviews), served by a loopback HTTP server with range
requests that counts the body bytes it sends (``tests/range_server.py``, a child process), and
run by URL (``cheap_models:zero_cost``, so the run times the reads). Printed: bytes served /
file size, requests, seconds, and the largest difference from the run on the local file.

    python benchmarks/remote_bytes.py [--size 4096] [--tile-size 768] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scenes import aerial_scene  # noqa: E402

import tiledepth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile-size", type=int, default=768)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    depth = aerial_scene(args.size, 0)
    d = (depth - depth.min()) / (depth.max() - depth.min())
    rgb = np.round(np.stack([d, 1.0 - d, 0.5 * np.ones_like(d)]) * 255).astype(np.uint8)
    opts = dict(model="cheap_models:zero_cost", tile_size=args.tile_size, overviews=False,
                workers=args.workers)
    print(f"{args.size} x {args.size} px RGB, tile {args.tile_size}, workers {args.workers}")
    print(f"{'file':14s} {'MB':>6s} {'served/size':>11s} {'requests':>8s} {'s URL':>6s} "
          f"{'s local':>7s} {'max diff':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, overviews in (("overviews.tif", True), ("plain.tif", False)):
            with rasterio.open(root / name, "w", driver="GTiff", height=args.size,
                               width=args.size, count=3, dtype="uint8", crs="EPSG:32611",
                               transform=from_origin(500000, 5400000, 0.25, 0.25), tiled=True,
                               blockxsize=512, blockysize=512, compress="deflate") as dst:
                dst.write(rgb)
                if overviews:
                    dst.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.average)
            server = subprocess.Popen([sys.executable, str(HERE.parent / "tests" /
                                                           "range_server.py"), str(root)],
                                      stdout=subprocess.PIPE, text=True)
            base = f"http://127.0.0.1:{int(server.stdout.readline())}"
            t0 = time.perf_counter()
            local = tiledepth.run(root / name, root / f"local-{name}", **opts)
            t1 = time.perf_counter()
            remote = tiledepth.run(f"{base}/{name}", root / f"url-{name}", **opts)
            t2 = time.perf_counter()
            with urllib.request.urlopen(f"{base}/__served__") as answer:
                counts = [int(v) for v in answer.read().split()]
            server.terminate()
            server.wait()
            with rasterio.open(local.output) as a, rasterio.open(remote.output) as b:
                diff = float(np.nanmax(np.abs(a.read(1) - b.read(1))))
            size = (root / name).stat().st_size
            print(f"{name:14s} {size / 1e6:6.1f} {counts[0] / size:11.2f} {counts[1]:8d} "
                  f"{t2 - t1:6.1f} {t1 - t0:7.1f} {diff:9.2g}")


if __name__ == "__main__":
    main()
