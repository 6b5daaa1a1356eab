"""Peak memory and time of `tiledepth run` on a large RGB GeoTIFF with a zero-cost model.

Writes a synthetic tiled RGB GeoTIFF (streamed, window by window), then runs the CLI in a
child process and reports its wall time, megapixels per second and peak resident memory,
against the raster's decoded size.

    python benchmarks/large_raster.py --size 10000 [--workdir DIR] [--flags=--no-overviews]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """The folder a benchmark works in: ``given`` (``--workdir``), kept; else a new temporary
    one, removed with the rasters and outputs in it when the block ends (they were left in
    /tmp, up to a 400 MP map)."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)


def make_raster(path: Path, size: int) -> None:
    """A size x size RGB uint8 GeoTIFF of smooth synthetic terrain, written in strips.

    Written to ``<path>.partial`` and renamed when complete: the benchmarks reuse any
    ``path`` that exists, so a run interrupted here must not leave a truncated raster there.
    """
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8",
                   crs="EPSG:32611", transform=from_origin(500000, 5400000, 0.1, 0.1),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER")
    cols = np.arange(size)
    partial = path.with_name(path.name + ".partial")  # not *.tif: no glob of inputs takes it
    try:
        with rasterio.open(partial, "w", **profile) as dst:
            for r0 in range(0, size, 512):
                rows = np.arange(r0, min(r0 + 512, size))[:, None]
                d = 0.5 + 0.25 * np.sin(cols / 300.0) * np.cos(rows / 410.0) \
                    + 0.2 * cols / size
                band = np.clip(d * 255, 0, 255).astype(np.uint8)
                dst.write(np.stack([band, 255 - band, band // 2]),
                          window=Window(0, r0, size, len(rows)))
    except BaseException:  # KeyboardInterrupt too: no half-written file left behind
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000, help="raster side in pixels")
    ap.add_argument("--tile-size", type=int, default=768)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--flags", default="", help="extra `tiledepth run` flags, one string")
    args = ap.parse_args()
    with work_folder(args.workdir, "tiledepth-bench-") as work:
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    """Time one `tiledepth run` of the raster in ``work`` (made there once)."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"rgb{args.size}.tif"
    if not src.exists():
        make_raster(src, args.size)
    out = work / "out.tif"
    out.unlink(missing_ok=True)
    # --no-resume: a checkpoint an interrupted earlier run left in --workdir is not timed.
    # --overwrite: the sidecar out.json (and whatever else --flags adds, a --preview's PNG)
    # of an earlier run in this --workdir would otherwise refuse the run
    # cheap_models from here, tiledepth from wherever the caller's PYTHONPATH finds it
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tiledepth.cli", "run", str(src), "-o", str(out),
                    "--model", "cheap_models:zero_cost", "--tile-size", str(args.tile_size),
                    "--no-progress", "--overwrite", "--no-resume", *args.flags.split()],
                   check=True, env=env)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    mp = args.size * args.size / 1e6
    decoded_mb = args.size * args.size * 3 / 2**20
    print(f"raster        {args.size} x {args.size} RGB uint8 ({mp:.0f} MP, "
          f"decoded {decoded_mb:.0f} MiB; as float32 {4 * decoded_mb:.0f} MiB)")
    print(f"tile size     {args.tile_size}; flags: {args.flags or 'none'}")
    print(f"wall time     {wall:.1f} s ({mp / wall:.1f} MP/s)")
    print(f"peak RSS      {peak_mb:.0f} MiB ({peak_mb / decoded_mb:.2f} x the decoded raster)")


if __name__ == "__main__":
    main()
