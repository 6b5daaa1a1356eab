"""The engine's CPU hot paths, each against the way it was done before, in one process.

With a zero-cost model the engine is CPU-bound on a small machine; these are the
per-tile and per-window steps that issue 4's throughput profile found costly:

1. a tile's statistics against the coarse map (768 px tile, coarse cells of about 5 px,
   as on a 100 MP raster with a 2048 px pyramid level): on the coarse cells
   (:func:`tiledepth.fusion.coarse_tile_stats`) against on the upsampled pixels
   (``as_coarse_sees`` + ``upsample_window`` + ``tile_stats``);
2. blending one 512 x 2048 output window from 768 px tiles with 25 % overlap:
   float32 sums in strips of ``blend.STRIP`` rows against float64 sums over the whole
   window (the code before, kept here as the baseline);
3. the coarse read of an in-memory 2048 px image to 512 px (a pyramid level's coarse
   map): exact area averages (:func:`tiledepth.fusion.area_average`) against
   scikit-image's anti-aliased ``resize``;
4. uint8 to float32 of a 768 px tile into the model's channel-last layout: band by
   band (:meth:`tiledepth.read.Scaling.apply`) against one pass across the bands.

Each is timed as the best of ``--repeat`` rounds and reported as milliseconds and
the ratio old / new, with the largest difference between the two results relative to
the result's range (rounding only: the new ways compute the same thing). Prints a
table, then the figures as JSON.

    python benchmarks/hot_paths.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from rasterio.windows import Window

from tiledepth import fusion, read
from tiledepth.fusion import blend
from tiledepth.tiling import overlap_pixels, tile_grid


def best(fn, repeat: int, inner: int) -> float:
    """Best mean milliseconds per call over ``repeat`` rounds of ``inner`` calls."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner * 1e3)
    return min(times)


def blend_whole_float64(window: Window, parts, *, ramp: int) -> np.ndarray:
    """The blending before: float64 sums over the whole window at once."""
    h, w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off), int(window.col_off)
    num = np.zeros((h, w), np.float64)
    den = np.zeros((h, w), np.float64)
    for part in parts:
        tile, pred, valid, scale, shift = part.tile, part.pred, part.valid, part.scale, part.shift
        where = blend.intersection(tile, r0, c0, h, w)
        if where is None:
            continue
        out, src = where
        rows, cols = blend.tile_ramps(tile, ramp)
        wt = np.outer(rows[src[0]], cols[src[1]]) * valid[src]
        num[out] += wt * (scale * pred[src] + shift)
        den[out] += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        result = num / den
    result[den == 0] = np.nan
    return result.astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    results = {}

    # 1. tile statistics
    full, coarse = (10000, 10000), rng.random((2048, 2048)).astype(np.float32)
    pred = rng.random((768, 768)).astype(np.float32)
    valid = np.ones(pred.shape, bool)
    window = Window(3000, 2000, 768, 768)

    def on_pixels():
        under = fusion.upsample_window(coarse, full, window)
        seen, usable = fusion.as_coarse_sees(pred, valid, window, full, coarse.shape)
        return fusion.tile_stats(1, seen, valid & usable, under)

    def cells():
        return fusion.coarse_tile_stats(1, pred, valid, window, full, coarse)

    old, new = on_pixels(), cells()
    results["tile statistics (768 px tile)"] = (
        best(on_pixels, args.repeat, 10), best(cells, args.repeat, 10),
        max(abs(a - b) / abs(a) for a, b in ((old.sqq, new.sqq), (old.sqc, new.sqc),
                                                (old.sc, new.sc), (old.scc, new.scc))))

    # 2. blending
    grid = tile_grid(2048, 2048, 768, 0.25)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(768, 0.25)
    preds = {t.id: rng.random(t.shape).astype(np.float32) for t in tiles}
    parts = [blend.BlendPart(t, preds[t.id], np.ones(t.shape, bool), 1.5, 0.25) for t in tiles]
    out_window = Window(0, 512, 2048, 512)
    old = blend_whole_float64(out_window, parts, ramp=ramp)
    new = blend.blend_window(out_window, parts, ramp=ramp)
    results["blend a 512 x 2048 window"] = (
        best(lambda: blend_whole_float64(out_window, parts, ramp=ramp), args.repeat, 3),
        best(lambda: blend.blend_window(out_window, parts, ramp=ramp), args.repeat, 3),
        float(np.abs(old - new).max() / np.ptp(old)))

    # 3. coarse read of an in-memory level
    from skimage.transform import resize

    level = rng.random((3, 2048, 2048)).astype(np.float32)
    results["coarse read 2048 -> 512 px"] = (
        best(lambda: resize(level, (3, 512, 512), order=1, anti_aliasing=True,
                            preserve_range=True), args.repeat, 1),
        best(lambda: fusion.area_average(level, (512, 512)), args.repeat, 1),
        None)  # another filter (a Gaussian, then bilinear): not the same values

    # 4. uint8 to float32, channel-last
    raw = rng.integers(0, 256, (3, 768, 768), dtype=np.uint8)
    out = np.empty((768, 768, 3), np.float32)
    scaling = read.Scaling(0.0, 255.0)
    np.multiply(np.moveaxis(raw, 0, -1), np.float32(1 / 255), out=out)
    results["uint8 tile to float32"] = (
        best(lambda: np.multiply(np.moveaxis(raw, 0, -1), np.float32(1 / 255), out=out),
             args.repeat, 20),
        best(lambda: scaling.apply(raw), args.repeat, 20),
        float(np.abs(np.moveaxis(scaling.apply(raw), 0, -1) - out).max()))

    print(f"{'step':34} {'before ms':>10} {'now ms':>8} {'ratio':>6} {'difference':>11}")
    for name, (old, new, diff) in results.items():
        shown = "-" if diff is None else f"{diff:.1e}"
        print(f"{name:34} {old:10.2f} {new:8.2f} {old / new:6.1f} {shown:>11}")
    figures = {name: {"before_ms": old, "now_ms": new, "difference": diff}
               for name, (old, new, diff) in results.items()}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
