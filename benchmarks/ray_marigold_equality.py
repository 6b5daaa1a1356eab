"""Does a seeded Marigold pipeline give the same depth on Ray actors as in this process?

Builds a tiny random Marigold checkpoint (tests/marigold_fixture.py), writes two small rasters,
and runs ``tiledepth.batch`` on them with the local executor and with ``--executor ray`` (two
actors, a local Ray), then prints the largest difference per raster. Run it twice, the second
time with ``OMP_NUM_THREADS=1``: Ray runs torch in each actor with one thread per CPU the actor
holds, and a different thread count rounds convolutions differently.

    python benchmarks/ray_marigold_equality.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from large_raster import work_folder  # noqa: E402

#: Tags the fusion measures from the depth values (``tiledepth.tags.result_tags``): their last
#: digits follow the values' rounding, so they are compared as numbers, not as text.
MEASURED = ("TILEDEPTH_CONSISTENCY", "TILEDEPTH_CALIBRATION_SCALE",
            "TILEDEPTH_CALIBRATION_SHIFT", "TILEDEPTH_CALIBRATION_RMSE")


def compare_tags(a: dict[str, str], b: dict[str, str]) -> tuple[bool, float]:
    """Whether two outputs' tags are the same but for :data:`MEASURED`, and the largest
    relative difference of the measured ones (0 where they are equal or absent)."""
    same = {k: v for k, v in a.items() if k not in MEASURED} == \
        {k: v for k, v in b.items() if k not in MEASURED}
    diff = 0.0
    for key in MEASURED:
        if key in a or key in b:
            if key not in a or key not in b:
                return False, float("inf")
            x, y = float(a[key]), float(b[key])
            diff = max(diff, abs(x - y) / max(abs(x), abs(y), 1e-300))
    return same, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with work_folder(args.workdir, "tiledepth-mg-") as work:
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    """Run the batch locally and on Ray with files in ``work``; print the differences."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    import rasterio
    import ray
    import torch
    from conftest import depth_image, write_raster
    from marigold_fixture import make_tiny_marigold

    import tiledepth

    (work / "in").mkdir(parents=True, exist_ok=True)
    ckpt = str(work / "tiny") if (work / "tiny").exists() else make_tiny_marigold(work / "tiny")
    for i in range(2):
        write_raster(work / "in" / f"r{i}.tif", depth_image(200 + 40 * i, 230))
    kw = dict(model=ckpt, tile_size=96, steps=1, seed=7, device="cpu", batch_size=2,
              overwrite=True)
    local = tiledepth.batch([work / "in"], work / "local", **kw)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    remote = tiledepth.batch([work / "in"], work / "ray", executor="ray", ray_actors=2, **kw)
    ray.shutdown()
    print(f"torch threads here: {torch.get_num_threads()}; Ray actors: 2, one CPU each")
    for a, b in zip(local, remote, strict=True):
        with rasterio.open(a.output) as x, rasterio.open(b.output) as y:
            da, db = x.read(1), y.read(1)
            tags = x.tags()
            same_tags, measured = compare_tags(tags, y.tags())
        print(f"{Path(a.input).name}: {a.tiles} tiles, depth std {np.nanstd(da):.2g}, "
              f"largest |local - ray| {np.nanmax(np.abs(da - db)):.2g}, same tags (but the "
              f"measured {', '.join(k for k in MEASURED if k in tags)}): {same_tags}; "
              f"measured, largest relative difference {measured:.2g}")


if __name__ == "__main__":
    main()
