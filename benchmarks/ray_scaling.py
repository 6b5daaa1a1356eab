"""Tile throughput of `--executor ray` with 1 and 2 model actors, against the local executor.

The model sleeps a fixed time per tile (``cheap_models:sleepy``), standing in for a GPU: it
holds no CPU, so two actors can run at once even on a 2-core machine, and the figure is how
well one raster's tiles are streamed to the actor pool. Every configuration runs ``--repeat``
times, interleaved, on the same raster in one Ray session; the pool is started before timing
(model loading is not counted). Throughput is tiles / the inference step's wall time
(``RunResult.seconds['infer']``); the whole run's time is shown too.

    python benchmarks/ray_scaling.py [--size 1536] [--tile-size 256] [--per-tile 0.25]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from large_raster import make_raster, work_folder  # noqa: E402

#: The model pools started side by side: how many actors each has.
POOLS = (1, 2)


def ray_cpus(pools: tuple[int, ...] = POOLS) -> int:
    """The logical CPUs of a local Ray in which pools of ``pools`` actors all start at once.

    Each actor takes its share of the cluster's CPUs (:func:`tiledepth.raypool.actor_resources`:
    ``cpus // actors``, 1 to ``ACTOR_CPUS``), not one CPU: in a 3-CPU Ray the single actor
    took all 3 and the 2-actor pool waited for ever. The smallest count at which every pool's
    actors fit together (12 for pools of 1 and 2: 4 CPUs per actor).

    >>> ray_cpus((1, 2))
    12
    >>> ray_cpus((2,))
    2
    """
    from tiledepth.raypool import actor_resources

    def taken(cpus: int) -> int:
        return sum(n * actor_resources("cpu", gpus=0, cpus=cpus, actors=n)[1]["num_cpus"]
                   for n in pools)

    cpus = sum(pools)
    while taken(cpus) > cpus:  # ends: a share stops growing at ACTOR_CPUS
        cpus += 1
    return cpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1536, help="raster side in pixels")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--per-tile", type=float, default=0.25, help="model seconds per tile")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with work_folder(args.workdir, "tiledepth-ray-") as work:
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    """Time the executors on the raster in ``work`` (made there once); print them."""
    # Ray workers import tiledepth and cheap_models from here, as this process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    import numpy as np
    import ray
    from cheap_models import sleepy

    import tiledepth
    from tiledepth.options import make_options
    from tiledepth.raypool import ray_pool

    work.mkdir(parents=True, exist_ok=True)
    src = work / f"rgb{args.size}.tif"
    if not src.exists():
        make_raster(src, args.size)
    model = functools.partial(sleepy, per_tile=args.per_tile)
    opts = dict(tile_size=args.tile_size, batch_size=args.batch_size)
    # tiledepth's warnings to stderr, as the CLI shows them (the package has a NullHandler
    # only): raypool's "waiting for Ray to start N model actors" after a minute, above all
    logging.basicConfig(format="tiledepth: %(levelname)s: %(message)s")
    logging.getLogger("tiledepth").setLevel(logging.WARNING)
    # logical CPUs enough for the 1-actor and 2-actor pools side by side (the model sleeps:
    # its actors hold no CPU, whatever share Ray gives them)
    cpus = ray_cpus()
    print(f"local Ray with {cpus} logical CPUs for pools of {' and '.join(map(str, POOLS))} "
          "actors", file=sys.stderr)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning")

    def once(name: str, depth_model) -> tuple[float, float, int, np.ndarray]:
        out = work / f"{name}.tif"
        result = tiledepth.run(src, out, model=depth_model, overwrite=True, **opts)
        import rasterio

        with rasterio.open(out) as ds:
            depth = ds.read(1)
        return result.tiles / result.seconds["infer"], result.seconds["total"], result.tiles, \
            depth

    results: dict[str, list[tuple[float, float]]] = {"local": [], "ray x1": [], "ray x2": []}
    outputs = {}
    with ray_pool(make_options(model=model, **opts), actors=POOLS[0]) as one, \
            ray_pool(make_options(model=model, **opts), actors=POOLS[1]) as two:
        for _ in range(args.repeat):
            for name, m in (("local", model), ("ray x1", one), ("ray x2", two)):
                tps, total, tiles, outputs[name] = once(name.replace(" ", ""), m)
                results[name].append((tps, total))
    ray.shutdown()

    print(f"raster {args.size} x {args.size}, tile {args.tile_size}, batch {args.batch_size}, "
          f"{tiles} tiles, model sleeps {args.per_tile * 1000:.0f} ms per tile "
          f"(ideal {1 / args.per_tile:.1f} tiles/s per model); median of {args.repeat}")
    print(f"{'executor':<10}{'tiles/s (infer)':>17}{'run total s':>13}")
    med = {k: (statistics.median(t for t, _ in v), statistics.median(s for _, s in v))
           for k, v in results.items()}
    for name, (tps, total) in med.items():
        print(f"{name:<10}{tps:>17.2f}{total:>13.2f}")
    print(f"ray x2 / ray x1 tile throughput: {med['ray x2'][0] / med['ray x1'][0]:.2f}x")
    print(f"ray x1 / local tile throughput:  {med['ray x1'][0] / med['local'][0]:.2f}x")
    diff = max(float(np.nanmax(np.abs(outputs[k] - outputs["local"]))) for k in outputs)
    print(f"largest difference from the local output: {diff:.2g}")


if __name__ == "__main__":
    main()
