"""Peak memory of planning an ``--aoi`` run: ``tiledepth.aoi.area_of_interest`` on a square
raster of N x N pixels, a triangle over most of it, in a child process each.

The area's pixels are found block by block (``aoi._blocks_inside``): its memory should not
grow with N. Before the tenth session the whole window was rasterised (about 2 bytes a
pixel)::

    python benchmarks/aoi_memory.py 5000 20000 60000

prints, per N, the peak RSS of the child process (``ru_maxrss``) before and after the call
and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(n: int, folder: Path) -> None:
    """Plan the triangle AOI on an N x N grid; print the peak RSS growth and the time."""
    sys.path.insert(0, str(ROOT))
    from affine import Affine

    from tiledepth.aoi import area_of_interest

    t = Affine(1.0, 0, 500000.0, 0, -1.0, 6000000.0)
    aoi = folder / f"tri{n}.geojson"
    aoi.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {
            "type": "Polygon", "coordinates": [[[500010, 5999990], [500000 + n - 10, 5999990],
                                                [500000 + n - 10, 6000000 - n + 10],
                                                [500010, 5999990]]]}}]}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    area = area_of_interest(n, n, t, "EPSG:32633", aoi=str(aoi))
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"| {n} x {n} | {before / 1024:.0f} | {after / 1024:.0f} | {seconds:.2f} | "
          f"{int(area.window.width)} x {int(area.window.height)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[5000, 20000],
                        help="Raster sides N in pixels (default 5000 20000).")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder)
        return
    print("| raster | RSS before (MiB) | RSS after (MiB) | seconds | area window |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.sizes:
            subprocess.run([sys.executable, __file__, "--child", str(n), "--folder", folder],
                           check=True)


if __name__ == "__main__":
    main()
