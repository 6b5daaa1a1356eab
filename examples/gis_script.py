"""tiledepth as a library in a rasterio script: a height model, sampled and summarised.

    python examples/make_sample.py ortho.tif --size 1024
    python examples/gis_script.py ortho.tif

Runs offline: the model is ``examples/custom_model.py``'s callable (swap in
``model="prs-eth/marigold-depth-v1-1"`` for real depth). The output sits on the
input's grid, so rasterio's usual tools (sample, windows, masks) apply directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import from_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `examples.*`

import tiledepth  # noqa: E402
from examples.custom_model import brightness_depth  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path)
    ap.add_argument("--tile-size", type=int, default=256)
    args = ap.parse_args()

    # 1. A height model (far minus depth) on the input's grid, with overviews and a quicklook.
    result = tiledepth.run(args.input, args.input.with_name(f"{args.input.stem}.height.tif"),
                           model=brightness_depth, tile_size=args.tile_size,
                           output_kind="height", preview=True, overwrite=True)
    print(f"wrote {result.output} and {result.preview} ({result.tiles} tiles)")

    with rasterio.open(args.input) as src, rasterio.open(result.output) as out:
        # 2. Same grid: CRS, transform and size are the input's.
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)

        # 3. Sample at map coordinates (here: three points along the diagonal).
        left, bottom, right, top = out.bounds
        points = [(left + f * (right - left), top - f * (top - bottom)) for f in (0.3, 0.5, 0.7)]
        for (x, y), (value,) in zip(points, out.sample(points), strict=True):
            print(f"height at ({x:.1f}, {y:.1f}): {value:.3f}")

        # 4. Summarise one area: the central quarter, read as a window by its bounds.
        qw, qh = (right - left) / 4, (top - bottom) / 4
        window = from_bounds(left + qw, bottom + qh, right - qw, top - qh, out.transform)
        block = out.read(1, window=window, masked=True)
        print(f"central quarter: mean {block.mean():.3f}, range {np.ptp(block):.3f}, "
              f"{block.count()} valid pixels")
        print(f"overviews: {out.overviews(1)}; provenance: {out.tags()['TILEDEPTH_VALUES']}")


if __name__ == "__main__":
    main()
