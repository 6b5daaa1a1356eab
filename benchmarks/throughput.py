"""Throughput of the engine against the I/O floor and a naive in-memory script.

For tiled RGB GeoTIFFs of 25, 100 and 400 megapixels, in one run, each measured in its own
child process (so peak resident memory is its own):

(a) floor: a plain rasterio windowed read of the input plus a compressed float32 one-band
    write of the same grid (what any tool must at least do);
(b) tiledepth end to end (``tiledepth run``) with a zero-cost callable model; (b1) the same
    with ``overviews=False`` (the floor builds none); and (b0) the same as (b) with
    ``workers=0`` (no background threads), for the gain of pipelining;
(c) the script a user would otherwise write: read the whole raster into memory, loop over the
    same tiles, average the overlaps, write (25 and 100 MP only: it needs the whole image in RAM).

Reports wall time, CPU time (user + system, all threads), megapixels per second, (b)/(a),
peak resident memory and peak scratch disk, and the load average before and after (the machine
may be shared: compare ratios taken in one run).

    python benchmarks/throughput.py [--sizes 25,100,400] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BLOCK = 512


def floor(src_path: str, out_path: str) -> None:
    """(a): windowed read of every block row + compressed float32 write of the same grid."""
    import rasterio
    from rasterio.windows import Window

    from tiledepth.write import COMPRESSION  # the same compression as tiledepth's output

    with rasterio.Env(GDAL_CACHEMAX=16 * 2**20), rasterio.open(src_path) as src:
        profile = dict(driver="GTiff", height=src.height, width=src.width, count=1,
                       dtype="float32", crs=src.crs, transform=src.transform, tiled=True,
                       blockxsize=BLOCK, blockysize=BLOCK, BIGTIFF="IF_SAFER",
                       nodata=float("nan"), **COMPRESSION)
        with rasterio.open(out_path, "w", **profile) as dst:
            for r0 in range(0, src.height, BLOCK):
                w = Window(0, r0, src.width, min(BLOCK, src.height - r0))
                data = src.read(window=w)
                dst.write((data[0] / np.float32(255)).astype(np.float32), 1, window=w)


def engine(src_path: str, out_path: str, workers: int = 2, overviews: bool = True) -> None:
    """(b): tiledepth end to end with a zero-cost model."""
    sys.path.insert(0, str(HERE))
    from cheap_models import zero_cost

    import tiledepth

    tiledepth.run(src_path, out_path, model=zero_cost, overwrite=True, workers=workers,
                  overviews=overviews)


def engine_bare(src_path: str, out_path: str) -> None:
    """(b1): the same without overviews, the same product as the floor's."""
    engine(src_path, out_path, overviews=False)


def engine_serial(src_path: str, out_path: str) -> None:
    """(b0): the same with no background threads (workers=0), for the pipelining gain."""
    engine(src_path, out_path, workers=0)


def naive(src_path: str, out_path: str) -> None:
    """(c): whole raster in memory, loop over tiles, average the overlaps."""
    import rasterio

    from tiledepth.write import COMPRESSION

    sys.path.insert(0, str(HERE))
    from cheap_models import zero_cost

    tile, stride = 768, 576
    with rasterio.open(src_path) as src:
        image = src.read().astype(np.float32) / 255  # (3, H, W)
        profile = dict(driver="GTiff", height=src.height, width=src.width, count=1,
                       dtype="float32", crs=src.crs, transform=src.transform, tiled=True,
                       blockxsize=BLOCK, blockysize=BLOCK, BIGTIFF="IF_SAFER",
                       **COMPRESSION)
    h, w = image.shape[1:]
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    rows = list(range(0, max(h - tile, 0) + 1, stride))
    cols = list(range(0, max(w - tile, 0) + 1, stride))
    if rows[-1] + tile < h:
        rows.append(h - tile)
    if cols[-1] + tile < w:
        cols.append(w - tile)
    for r in rows:
        for c in cols:
            batch = np.moveaxis(image[:, r:r + tile, c:c + tile], 0, -1)[None]
            total[r:r + tile, c:c + tile] += zero_cost(batch)[0]
            count[r:r + tile, c:c + tile] += 1
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(total / count, 1)


def child(kind: str, src_path: str, out_path: str) -> None:
    """Run one measurement in this (child) process; print JSON on stdout."""
    peak_scratch = [0]
    stop = threading.Event()

    def watch_scratch() -> None:
        folder = Path(out_path).parent
        while not stop.wait(0.2):
            total = 0
            # the checkpoint folder of a run (.<output>.tiledepth-<hex>) or a scratch store
            for d in [*folder.glob(".*.tiledepth-*"), *folder.glob(".tiledepth-scratch-*")]:
                try:
                    total += sum(f.stat().st_size for f in d.iterdir())
                except OSError:
                    pass
            peak_scratch[0] = max(peak_scratch[0], total)

    watcher = threading.Thread(target=watch_scratch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    kinds = {"floor": floor, "engine": engine, "engine_bare": engine_bare,
             "engine0": engine_serial, "naive": naive}
    kinds[kind](src_path, out_path)
    wall = time.perf_counter() - t0
    stop.set()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mib": usage.ru_maxrss / 1024,
                      "peak_scratch_mib": peak_scratch[0] / 2**20}))


def measure(kind: str, src: Path, work: Path) -> dict:
    out = work / f"out-{kind}.tif"
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(src), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="25,100,400", help="megapixels, comma-separated")
    ap.add_argument("--naive-max", type=int, default=100, help="largest size (MP) for (c)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tiledepth-throughput"))
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(HERE))
    from large_raster import make_raster

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    load = [_loadavg()]
    for mp in (int(s) for s in args.sizes.split(",")):
        side = int(round(math.sqrt(mp * 1e6)))
        src = args.workdir / f"rgb{side}.tif"
        if not src.exists():
            make_raster(src, side)
        res = {"a": measure("floor", src, args.workdir), "b": measure("engine", src, args.workdir),
               "b1": measure("engine_bare", src, args.workdir),
               "b0": measure("engine0", src, args.workdir)}
        if mp <= args.naive_max:
            res["c"] = measure("naive", src, args.workdir)
        load.append(_loadavg())
        res["load"] = load[-2:]
        rows.append((mp, side, res))
        print(f"{mp:>4} MP ({side} x {side}), load average {load[-2]} -> {load[-1]}",
              file=sys.stderr)
        for key, label in [("a", "floor"), ("b", "tiledepth"), ("b1", "no overviews"),
                           ("b0", "workers=0"), ("c", "naive")]:
            if key in res:
                r = res[key]
                rate = side * side / 1e6 / r["wall"]
                print(f"     ({key}) {label:12s} {r['wall']:7.1f} s {rate:6.1f} MP/s  CPU "
                      f"{r['cpu']:6.1f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB  scratch"
                      f" {r['peak_scratch_mib']:6.0f} MiB", file=sys.stderr)
        a = res["a"]["wall"]
        print(f"     (b)/(a) = {res['b']['wall'] / a:.2f}  (b1)/(a) = {res['b1']['wall'] / a:.2f}"
              f"  pipelining gain (b0)/(b) = {res['b0']['wall'] / res['b']['wall']:.2f}",
              file=sys.stderr)
    print(json.dumps([{"mp": mp, "side": side, **res} for mp, side, res in rows], indent=1))


def _loadavg() -> float:
    """The 1-minute load average (what else the machine was doing)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


if __name__ == "__main__":
    main()
