"""What ``--keep-predictions`` saves: a run that keeps its predictions, then the same command
with ``--overwrite`` and another fusion option, against a fresh run with that option.

The model is a stand-in for a GPU as ``gpu_busy.py``'s (it sleeps ``--per-tile`` seconds per
tile, holding no CPU), as a plain function, which a rerun can identify (``gpu_busy``'s
``SleepyModel`` instance, with its lock and its record of calls, was not resumed when tried).
Three runs of one raster of ``--size`` megapixels, one after the other in this process:

1. ``keep``: ``tiledepth.run(..., keep_predictions=True)``, the default fusion;
2. ``rerun``: the same output, ``overwrite=True`` and ``--option``'s value (default
   ``fusion=gradient``): it reuses the kept predictions (and removes them: no
   ``keep_predictions``);
3. ``fresh``: that option's own run, to another output.

Prints each run's wall time, the stand-in's busy seconds and tiles, the kept folder's bytes
a pixel, and whether ``rerun`` and ``fresh`` wrote the same bytes.

    python benchmarks/kept_rerun.py [--per-tile 0.12] [--size 16.7] [--option fusion=gradient]
                                    [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: Each call's (start, end, tiles), emptied before each run (the model's identity, which
#: covers the globals it reads, is then the same at each run's start).
CALLS: list = []


def sleepy(batch: np.ndarray) -> np.ndarray:
    """The red channel as depth, after sleeping ``$KEPT_RERUN_PER_TILE`` seconds a tile."""
    t0 = time.perf_counter()
    time.sleep(float(os.environ["KEPT_RERUN_PER_TILE"]) * len(batch))
    CALLS.append((t0, time.perf_counter(), len(batch)))
    return batch[..., 0].copy()


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(HERE))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-tile", type=float, default=0.12)
    ap.add_argument("--size", type=float, default=16.7, help="megapixels")
    ap.add_argument("--option", default="fusion=gradient", metavar="NAME=VALUE",
                    help="the option the rerun changes (a number or text)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="kept for a rerun of the benchmark (default: a temporary folder, "
                         "removed at the end)")
    args = ap.parse_args(argv)
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="tiledepth-kept-") as tmp:
            return _measure(args, Path(tmp))
    args.workdir.mkdir(parents=True, exist_ok=True)
    return _measure(args, args.workdir)


def _measure(args: argparse.Namespace, workdir: Path) -> dict:
    """The three runs in ``workdir`` (its raster made once)."""
    from gpu_busy import busy_seconds
    from large_raster import make_raster
    from throughput import _loadavg

    import tiledepth
    from tiledepth.checkpoint import checkpoint_folder

    os.environ["KEPT_RERUN_PER_TILE"] = str(args.per_tile)
    name, value = args.option.split("=", 1)
    try:
        changed = {name: float(value)}
    except ValueError:
        changed = {name: value}
    side = int(round(math.sqrt(args.size * 1e6)))
    src = workdir / f"rgb{side}.tif"
    if not src.exists():
        make_raster(src, side)
    out, fresh_out = workdir / "kept.depth.tif", workdir / "fresh.depth.tif"
    result: dict = {"size_mp": side * side / 1e6, "per_tile": args.per_tile,
                    "option": changed, "load_before": _loadavg()}
    for label, target, options in (("keep", out, {"keep_predictions": True}),
                                   ("rerun", out, changed),
                                   ("fresh", fresh_out, changed)):
        CALLS.clear()
        t0 = time.perf_counter()
        run = tiledepth.run(src, target, model=sleepy, overwrite=True, progress=False,
                            **options)
        wall = time.perf_counter() - t0
        result[label] = {"wall_s": round(wall, 2), "model_busy_s": round(busy_seconds(
            CALLS), 2), "model_tiles": sum(n for _, _, n in CALLS), "tiles": run.tiles,
                         "resumed": run.resumed}
        if label == "keep":
            folder = checkpoint_folder(out, out.parent)
            size = sum(f.stat().st_size for f in folder.iterdir())
            result["kept_bytes_per_pixel"] = round(size / (side * side), 2)
    result["same_bytes"] = out.read_bytes() == fresh_out.read_bytes()
    result["load_after"] = _loadavg()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
