"""What the checkpoint costs, and what a resume saves.

Writes a synthetic RGB GeoTIFF (make_raster of large_raster.py), then measures, in this
process, alternating, ``--repeat`` times each:

* ``zero-cost``: a full run with a model that costs nothing (the engine's own time);
* ``resume, all stored``: the same run stopped (KeyboardInterrupt) after every tile was
  predicted, then run again: the rerun only loads tiles, aligns, blends and writes;
* ``sleepy``: a full run with a model that sleeps ``--model-ms`` per tile, a stand-in for GPU
  time, and the same run stopped halfway then resumed (both parts timed).

With ``--baseline DIR`` (a source tree of another tiledepth version, e.g. ``git archive`` of
the commit before the checkpoint) it also times the zero-cost run of both versions through
the CLI in child processes, alternating, to measure the checkpoint's overhead.

    python benchmarks/resume.py --size 4000 [--baseline /tmp/base] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from large_raster import make_raster, work_folder  # noqa: E402

import tiledepth  # noqa: E402
from tiledepth import fusion  # noqa: E402


def sleepy_model(ms: float, stop_after: int | None = None):
    """The red channel, ``ms`` milliseconds per tile; KeyboardInterrupt after ``stop_after``
    tiles. Every model this returns has the same checkpoint identity (same code)."""
    done = []

    def model(batch: np.ndarray) -> np.ndarray:
        if stop_after is not None and sum(done) >= stop_after:
            raise KeyboardInterrupt
        time.sleep(ms / 1000 * len(batch))
        done.append(len(batch))
        return batch[..., 0].copy()

    return model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def clear(out: Path) -> None:
    """Remove the last run's output and its sidecar (``out.json``), but not the checkpoint.

    Either file left behind makes the next run refuse to start (the output exists); the
    checkpoint folder stays: the resumed runs need it.
    """
    out.unlink(missing_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)


def run(src: Path, out: Path, model, **options) -> tiledepth.RunResult:
    clear(out)
    return tiledepth.run(src, out, model=model, **options)


def interrupted(fn) -> None:
    try:
        fn()
    except KeyboardInterrupt:
        return
    raise AssertionError("the run was not interrupted")


def stop_before_align(fn) -> None:
    real = fusion.solve_alignment

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    fusion.solve.solve_alignment = stop
    try:
        interrupted(fn)
    finally:
        fusion.solve.solve_alignment = real


def cli(src: Path, out: Path, source: Path, tile_size: int) -> float:
    clear(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(source), str(HERE)]))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tiledepth.cli", "run", str(src), "-o", str(out),
                    "--model", "cheap_models:zero_cost", "--tile-size", str(tile_size),
                    "--no-progress"], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000, help="raster side in pixels")
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--model-ms", type=float, default=50.0, help="sleepy model, ms per tile")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="source tree of another tiledepth version")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with work_folder(args.workdir, "tiledepth-resume-") as work:
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    """Time every step on the raster in ``work`` (made there once); print them."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"rgb{args.size}.tif"
    if not src.exists():
        make_raster(src, args.size)
    out = work / "out.tif"
    opts = dict(tile_size=args.tile_size, batch_size=4)
    zero = sleepy_model(0)
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    tiles = run(src, out, zero, **opts).tiles  # warm up: imports, file cache
    for _ in range(args.repeat):
        record("zero-cost, full run", timed(lambda: run(src, out, zero, **opts)))
        stop_before_align(lambda: run(src, out, zero, **opts))
        record("zero-cost, resume with every tile stored",
               timed(lambda: run(src, out, zero, **opts)))
        record(f"sleepy {args.model_ms:g} ms/tile, full run",
               timed(lambda: run(src, out, sleepy_model(args.model_ms), **opts)))
        first = timed(lambda: interrupted(
            lambda: run(src, out, sleepy_model(args.model_ms, tiles // 2), **opts)))
        second = timed(lambda: run(src, out, sleepy_model(args.model_ms), **opts))
        record(f"sleepy {args.model_ms:g} ms/tile, stopped halfway + resumed", first + second)
        record(f"sleepy {args.model_ms:g} ms/tile, the resumed half alone", second)
        if args.baseline:
            record("CLI zero-cost, baseline version", cli(src, out, args.baseline,
                                                          args.tile_size))
            record("CLI zero-cost, this version", cli(src, out, ROOT, args.tile_size))

    print(f"raster {args.size} x {args.size}, tile {args.tile_size}, {tiles} tiles, "
          f"median of {args.repeat}")
    base = None
    for name, values in times.items():
        median = statistics.median(values)
        if name.endswith("full run"):
            base = median
        ratio = f"  ({median / base:.2f} x the full run above)" if base and not \
            name.endswith("full run") and not name.startswith("CLI") else ""
        print(f"{name:55s} {median:7.2f} s{ratio}")
    if args.baseline:
        ratio = (statistics.median(times["CLI zero-cost, this version"])
                 / statistics.median(times["CLI zero-cost, baseline version"]))
        print(f"{'this version / baseline (CLI zero-cost)':55s} {ratio:7.2f}")


if __name__ == "__main__":
    main()
