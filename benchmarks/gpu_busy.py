"""How busy the GPU would be: a stand-in model that sleeps per tile, on one raster and a batch.

The model holds no CPU while it "runs" (it sleeps ``--per-tile`` seconds per tile, as a GPU
call leaves the CPU free), so the fraction of the wall time it is busy measures how well the
engine keeps a real accelerator fed: reading, statistics, scratch writes, fusion and the
output write either hide behind model calls or make the model wait.

Two measurements, each in its own child process (so imports and caches are its own):

- one raster of ``--size`` megapixels (default 67, the issue's 8192 x 8192) with
  ``tiledepth.run``;
- a batch of ``--batch`` rasters of ``--batch-size`` megapixels each (default six of 16.7)
  with ``tiledepth.batch``.

For each it prints the busy fraction (the union of the model's busy intervals over the wall
time), the model's idle seconds before its first call (``head``) and after its last (``tail``),
the number of model calls and tiles, and each phase's seconds from
``RunResult.seconds`` (for the single raster). Compare runs taken on one machine at one
time: the fraction falls when other work shares the CPU (the load average is printed).

    python benchmarks/gpu_busy.py [--per-tile 0.12] [--size 67] [--batch 6]
                                  [--batch-size 16.7] [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class SleepyModel:
    """The red channel as depth, after sleeping ``per_tile`` seconds per tile.

    Records each call's (start, end) so the busy time is measured, not assumed.
    """

    def __init__(self, per_tile: float) -> None:
        self.per_tile = per_tile
        self.calls: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        time.sleep(self.per_tile * len(batch))
        out = batch[..., 0].copy()
        with self._lock:
            self.calls.append((t0, time.perf_counter(), len(batch)))
        return out


def busy_seconds(intervals: list[tuple[float, float, int]]) -> float:
    """Length of the union of the (start, end) intervals.

    Examples
    --------
    >>> busy_seconds([(0.0, 1.0, 1), (0.5, 2.0, 1), (3.0, 4.0, 1)])
    3.0
    """
    total, end = 0.0, -math.inf
    for a, b, _ in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def child(kind: str, per_tile: float, out: str, inputs: list[str]) -> dict:
    """One measurement in this process: ``run`` on one raster or ``batch`` on several."""
    import tiledepth

    model = SleepyModel(per_tile)
    t0 = time.perf_counter()
    if kind == "run":
        result = tiledepth.run(inputs[0], out, model=model, overwrite=True, resume=False)
        phases = {k: round(v, 2) for k, v in result.seconds.items()}
    else:
        records = tiledepth.batch(inputs, out, overwrite=True, model=model)
        failed = [r for r in records if r.status != "done"]
        if failed:
            raise SystemExit(f"batch failed: {failed[0].error}")
        phases = {}
    t1 = time.perf_counter()
    wall = t1 - t0
    busy = busy_seconds(model.calls)
    # the model's idle time before its first call and after its last (the solve, blend,
    # write, overviews and verification of the last raster)
    head = min(a for a, *_ in model.calls) - t0
    tail = t1 - max(b for _, b, _ in model.calls)
    return {"kind": kind, "wall": wall, "busy": busy, "fraction": busy / wall,
            "calls": len(model.calls), "tiles": sum(n for *_, n in model.calls),
            "head": head, "tail": tail, "phases": phases}


def _measure(kind: str, per_tile: float, out: Path, inputs: list[Path]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(per_tile), str(out),
         *map(str, inputs)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-tile", type=float, default=0.12, help="model seconds per tile")
    ap.add_argument("--size", type=float, default=67.0, help="one raster, megapixels")
    ap.add_argument("--batch", type=int, default=6, help="rasters in the batch (0: none)")
    ap.add_argument("--batch-size", type=float, default=16.7, help="megapixels each")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tiledepth-gpu-busy"))
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, per_tile, out, *inputs = args.child
        print(json.dumps(child(kind, float(per_tile), out, inputs)))
        return []
    sys.path.insert(0, str(HERE))
    from large_raster import make_raster
    from throughput import _loadavg

    args.workdir.mkdir(parents=True, exist_ok=True)

    def side_of(mp: float) -> int:
        return int(round(math.sqrt(mp * 1e6)))

    def raster(mp: float, name: str) -> Path:
        side = side_of(mp)
        path = args.workdir / f"{name}{side}.tif"
        if not path.exists():
            make_raster(path, side)
        return path

    results = []
    jobs = [("run", args.workdir / "one.depth.tif", [raster(args.size, "rgb")])]
    if args.batch:
        survey = args.workdir / "survey"
        survey.mkdir(exist_ok=True)
        tiles = []
        for i in range(args.batch):
            # named by their size: a copy of another --batch-size in this --workdir is not reused
            path = survey / f"part{side_of(args.batch_size)}-{i}.tif"
            if not path.exists():  # copies of one raster: each is read and fused anew
                partial = path.with_name(path.name + ".partial")  # an interrupted copy is
                shutil.copyfile(raster(args.batch_size, "part"), partial)  # never reused
                os.replace(partial, path)
            tiles.append(path)
        jobs.append(("batch", args.workdir / "survey-out", tiles))
    for kind, out, inputs in jobs:
        before = _loadavg()
        res = _measure(kind, args.per_tile, out, inputs)
        res.update(load=[before, _loadavg()], per_tile=args.per_tile)
        results.append(res)
        what = (f"one raster of {args.size:g} MP" if kind == "run"
                else f"a batch of {len(inputs)} rasters of {args.batch_size:g} MP")
        print(f"{what}: busy {res['fraction']:.3f} ({res['busy']:.1f} of {res['wall']:.1f} s, "
              f"{res['tiles']} tiles in {res['calls']} calls; load {before} -> "
              f"{res['load'][1]})", file=sys.stderr)
        print(f"  idle before the first model call {res['head']:.1f} s, after the last "
              f"{res['tail']:.1f} s", file=sys.stderr)
        if res["phases"]:
            print("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in res["phases"].items()),
                  file=sys.stderr)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
