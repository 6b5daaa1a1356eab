"""Fusing each output kind in its own space: simulated disparity and metric models on real depth.

Real ground-truth depth (Middlebury 2014, quarter size, from ``../shared/data``) stands in for
the scene; simulated models predict each tile (and the coarse whole image) from it with the
errors of their kind, seeded per tile, and the engine fuses them (``tiledepth.engine.fuse``,
small tiles so one image is many tiles, as a gigapixel ortho is with 768 px tiles):

* affine-invariant disparity (a Depth Anything V2 stand-in): per tile ``a * (1/Z) + b`` with
  an unknown scale and a positive shift, a smooth multiplicative distortion and pixel noise;
* metric depth (a Depth Pro stand-in): per tile ``s * Z`` with a per-tile scale error (a
  crop's focal length is hard to tell; sigma 15 %), the whole image's 5 %, the same
  distortion and noise.

Each scene is used as is (depth spans about 2x) and stretched by a power law to span 10x, as
an oblique drone frame does (``--ratio``). Compared: disparity fused in disparity space (the
engine's choice) against the same tiles inverted to depth first and fused in depth space; metric
depth fused with no alignment, a scale per tile (the engine's choice) and a scale and shift per
tile. Metrics over valid ground-truth pixels: AbsRel and NRMSE (RMSE / mean depth) after the
protocol's least-squares alignment in the prediction's own space (affine kinds), and for metric
depth also with no alignment at all (its metric accuracy) and after one median scale (its
shape).

    python benchmarks/model_spaces.py [--data ../shared/data] [--tile-size 128] [--seeds 3]
                                      [--ratio 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from tiledepth.engine import fuse
from tiledepth.infer import RETRY_STRIDE, is_coarse_key
from tiledepth.metrics import fit_scale_shift
from tiledepth.options import make_options
from tiledepth.readers import ArrayReader
from tiledepth.scratch import MemoryStore
from tiledepth.tiling import tile_grid
from tiledepth.write import ArraySink

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import default_data, fill_nearest, middlebury_scene  # noqa: E402

# --------------------------------------------------------------------------- simulated models


class SimulatedModel:
    """Predicts each tile from the true depth with the errors of ``kind`` (see module doc).

    Keys are tile ids of the engine's grid (-1 = the coarse whole image), so the model
    knows where each tile lies; its errors are seeded by (seed, key).
    """

    batch_size = 8

    def __init__(self, truth: np.ndarray, kind: str, *, tile_size: int, overlap: float,
                 seed: int, invert: bool = False) -> None:
        self.truth = truth
        self.kind = "depth" if invert else kind
        self.true_kind = kind
        self.invert = invert
        self.seed = seed
        self.name = f"simulated-{kind}" + ("-inverted" if invert else "")
        grid = tile_grid(*truth.shape, tile_size, overlap)
        self.windows = {t.id: t.window for row in grid for t in row}

    def predict(self, batch: np.ndarray, keys) -> np.ndarray:
        out = []
        for key in keys:
            h, w = batch.shape[1:3]
            if is_coarse_key(key):
                zoom = (h / self.truth.shape[0], w / self.truth.shape[1])
                truth = ndimage.zoom(self.truth, zoom, order=1)[:h, :w]
            else:
                win = self.windows[key % RETRY_STRIDE]  # a tile's later calls too
                truth = self.truth[win.row_off:win.row_off + h, win.col_off:win.col_off + w]
            out.append(self._distort(truth, key))
        return np.stack(out).astype(np.float32)

    def _distort(self, truth: np.ndarray, key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, key + 1])
        h, w = truth.shape
        smooth = ndimage.zoom(rng.standard_normal((3, 3)), (h / 3, w / 3), order=3)[:h, :w]
        field = (1 + 0.03 * smooth) * (1 + 0.01 * rng.standard_normal((h, w)))
        if self.true_kind == "disparity":
            disp = 1.0 / truth
            pred = np.exp(rng.normal(0, 0.3)) * disp * field + rng.uniform(0, 0.5) * disp.mean()
            return 1.0 / np.maximum(pred, 1e-6) if self.invert else pred
        if self.true_kind == "metric_depth":
            sigma = 0.05 if is_coarse_key(key) else 0.15
            return np.exp(rng.normal(0, sigma)) * truth * field
        raise ValueError(self.true_kind)


# --------------------------------------------------------------------------- metrics


def fit_affine(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares ``s * pred + t`` to ``target`` (1-D arrays), returned for every pred."""
    s, t = fit_scale_shift(pred, target)
    return s * pred.astype(np.float64) + t


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """AbsRel and NRMSE (RMSE over the mean depth) of depth ``pred`` against ``gt`` (1-D)."""
    pred = np.maximum(pred, 1e-6)
    abs_rel = float(np.mean(np.abs(pred - gt) / gt))
    nrmse = float(np.sqrt(np.mean((pred - gt) ** 2)) / np.mean(gt))
    return abs_rel, nrmse


def stretch_depth(depth: np.ndarray, ratio: float) -> np.ndarray:
    """Depth remapped by a power law so that far / near = ``ratio`` (order kept).

    Middlebury scenes span about 2x in depth; an oblique drone frame spans 10x or more,
    where a disparity shift bends depth much more. ``ratio <= 0`` keeps the scene as is.
    """
    if ratio <= 0:
        return depth
    near, far = np.nanmin(depth), np.nanmax(depth)
    gamma = np.log(ratio) / np.log(far / near)
    return (near * (depth / near) ** gamma).astype(np.float32)


def run_fusion(rgb: np.ndarray, model: SimulatedModel, *, tile_size: int, overlap: float,
               fit: str | None) -> np.ndarray:
    opts = make_options(tile_size=tile_size, overlap=overlap, model=model)
    reader = ArrayReader(rgb)
    sink = ArraySink(reader.height, reader.width)
    fuse(reader, sink, model, opts, MemoryStore(), fit=fit)
    return sink.array


def evaluate_scene(rgb: np.ndarray, gt: np.ndarray, *, tile_size: int, overlap: float,
                   seed: int) -> dict[str, tuple[float, float]]:
    truth = fill_nearest(gt)
    valid = np.isfinite(gt)
    g = gt[valid]
    rows: dict[str, tuple[float, float]] = {}
    kw = dict(tile_size=tile_size, overlap=overlap, seed=seed)

    # Disparity model: fused in disparity space (the engine's choice) ...
    disp = run_fusion(rgb, SimulatedModel(truth, "disparity", **kw), tile_size=tile_size,
                      overlap=overlap, fit=None)[valid]
    aligned = fit_affine(disp, 1.0 / g)
    rows["disparity, fused as disparity"] = depth_metrics(1.0 / np.maximum(aligned, 1e-6), g)
    # ... against the same tiles inverted to depth and fused in depth space.
    inv = run_fusion(rgb, SimulatedModel(truth, "disparity", invert=True, **kw),
                     tile_size=tile_size, overlap=overlap, fit=None)[valid]
    rows["disparity, inverted then fused as depth"] = depth_metrics(fit_affine(inv, g), g)

    # Metric model: three fits; metric accuracy as is, and shape after one median scale.
    for fit in ("none", "scale", "scale_shift"):
        pred = run_fusion(rgb, SimulatedModel(truth, "metric_depth", **kw), tile_size=tile_size,
                          overlap=overlap, fit=fit)[valid]
        rows[f"metric, fit={fit}, as is"] = depth_metrics(pred, g)
        rows[f"metric, fit={fit}, median-scaled"] = depth_metrics(
            pred * np.median(g) / np.median(pred), g)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="the shared data folder (default: TILEDEPTH_DATA, else ../shared/data "
                         "above the repository)")
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, default=3, help="error draws per scene")
    ap.add_argument("--scenes", type=int, default=0, help="first N scenes only (0 = all)")
    ap.add_argument("--ratio", type=float, default=10.0,
                    help="far/near depth ratio of the stretched variant (0: only as is)")
    args = ap.parse_args()
    data = args.data if args.data is not None else default_data()
    if data is None:
        raise SystemExit("--data: no shared data folder found; pass --data or set "
                         "TILEDEPTH_DATA")
    root = data / "middlebury2014_quarter"
    if not root.is_dir():
        raise SystemExit(f"no Middlebury data at {root}; pass --data")
    scenes = sorted(p for p in root.iterdir() if (p / "disp0GT.pfm").exists())
    if args.scenes:
        scenes = scenes[: args.scenes]

    t0 = time.perf_counter()
    variants = [("as is", 0.0)] + ([(f"{args.ratio:g}x range", args.ratio)] if args.ratio > 0
                                   else [])
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for folder in scenes:
        rgb, gt = middlebury_scene(folder)
        for label, ratio in variants:
            scene_gt = stretch_depth(gt, ratio)
            for seed in range(args.seeds):
                for name, value in evaluate_scene(rgb, scene_gt, tile_size=args.tile_size,
                                                  overlap=args.overlap, seed=seed).items():
                    results.setdefault((name, label), []).append(value)
    print(f"{len(scenes)} scenes x {args.seeds} seeds, tile {args.tile_size}, overlap "
          f"{args.overlap}, {time.perf_counter() - t0:.0f} s")
    header = "".join(f" | {label + ' AbsRel':>16s} {'NRMSE':>7s}" for label, _ in variants)
    print(f"{'case':42s}{header}")
    names = list(dict.fromkeys(name for name, _ in results))
    for name in names:
        cells = ""
        for label, _ in variants:
            arr = np.array(results[(name, label)])
            cells += f" | {arr[:, 0].mean():16.4f} {arr[:, 1].mean():7.4f}"
        print(f"{name:42s}{cells}")


if __name__ == "__main__":
    main()
