"""Peak memory and time of `tiledepth export` of a large float32 height map to LAZ (or PLY).

Writes a synthetic tiled float32 GeoTIFF of heights (streamed, in strips of 512 rows,
a NaN hole in it), then runs `tiledepth export MAP OUT` in a child process and reports
its wall time, points per second and peak resident memory (the child's ru_maxrss).

    python benchmarks/export_memory.py --size 20000 [--format laz] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent


def make_map(path: Path, size: int) -> None:
    """A size x size float32 height GeoTIFF (metres, band 'height'), written in strips.

    Written to ``<path>.partial`` and renamed when complete: ``main`` reuses a ``path`` that
    exists, so a run interrupted here must not leave a truncated map there.
    """
    profile = dict(driver="GTiff", height=size, width=size, count=1, dtype="float32",
                   crs="EPSG:32611", transform=from_origin(500000, 5400000, 0.1, 0.1),
                   nodata=float("nan"), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", predictor=3, BIGTIFF="IF_SAFER")
    cols = np.arange(size)
    partial = path.with_name(path.name + ".partial")
    try:
        with rasterio.open(partial, "w", **profile) as dst:
            dst.set_band_description(1, "height")
            dst.set_band_unit(1, "metre")
            for r0 in range(0, size, 512):
                rows = np.arange(r0, min(r0 + 512, size))[:, None]
                z = (100 + 20 * np.sin(cols / 300.0) * np.cos(rows / 410.0)
                     + 5 * cols / size).astype(np.float32)
                z[(rows < size // 10) & (cols < size // 10)] = np.nan  # a corner without data
                dst.write(z[None], window=Window(0, r0, size, len(rows)))
    except BaseException:  # KeyboardInterrupt too: no half-written map left behind
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="map side in pixels")
    ap.add_argument("--format", default="laz", choices=["laz", "las", "ply"])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the export")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tiledepth-export-"))
    try:
        bench(args, work)
    finally:
        # a folder of its own: the map and export go with it, unless the export is kept
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path) -> None:
    """Time one `tiledepth export` of the map in ``work`` (made there once)."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"height{args.size}.tif"
    if not src.exists():
        t = time.perf_counter()
        make_map(src, args.size)
        print(f"wrote {src} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    out = work / f"cloud{args.size}.{args.format}"
    out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tiledepth.cli", "export", str(src), str(out)],
                   check=True, env=env)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
    points = args.size**2 - (args.size // 10) ** 2
    mp = args.size**2 / 1e6
    print(f"{mp:.0f} MP -> {args.format}: {points} points, {wall:.0f} s "
          f"({points / wall / 1e6:.2f} M points/s), peak RSS {peak:.0f} MiB, "
          f"file {out.stat().st_size / 2**20:.0f} MiB")
    if not args.keep:
        out.unlink()
    else:
        print(f"kept {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
