"""Fusion quality against dense ground truth: tiledepth's fusion against four baselines.

Scenes: every scene in ``../shared/data`` (Middlebury 2014 quarter, Middlebury 2006 half, the
Kootenay drone ortho's canopy height) and procedurally generated aerial scenes (``scenes.py``).

The model is simulated and, like a real one, sees only the pixels it is given: its input image
encodes the true depth (normalised over the whole scene, in all three channels), and for each
call it returns depth normalised over that call (an unknown scale and shift per tile) with
errors that are not purely affine: blur (sigma 1 px), a mild per-call non-linearity (a power
law, exponent e^N(0, 0.15)), a smooth tilt (up to about 5 % of the tile's range across it) and
noise (1 %). The coarse prediction is the same model on the downsampled image. With
``--gross``, that fraction of the full-resolution tiles (at least one; never the coarse image
or a pyramid level's tiles) is grossly wrong: half inverted (near and far swapped), half
another scene's depth.

Methods, all from the same tile predictions:

1. ``coarse``: the coarse prediction alone, upsampled (bilinear);
2. ``naive``: the tiles blended as predicted, no alignment;
3. ``coarse-only``: each tile fitted (scale and shift) to the coarse prediction under it alone,
   then blended (PatchFusion-style coarse guidance);
4. ``tiledepth``: the engine's fusion with its defaults, and the variants ``affine``/
   ``bilinear`` with and without ``robust``;
5. ``oracle``: each tile fitted to the ground truth, then blended (the best any per-tile scale
   and shift can do).

Geometries: ``quarter`` (tiles of about a quarter of the image's long side, the coarse map at
the tile size: Middlebury with 192 px tiles) and ``gigapixel`` (64 px tiles and a 64 px coarse
map on 2000 px procedural scenes: the coarse map 31x coarser than the raster).

Metrics (``tiledepth.metrics``, after least-squares scale and shift in depth space, over valid
ground truth): NRMSE (RMSE over the ground truth's 2-98 % range), AbsRel, delta1, and the seam
ratio (gradient error in overlap bands over that in tile interiors).

    python benchmarks/fusion_quality.py [--data ../shared/data] [--geometry quarter,gigapixel]
        [--procedural 3] [--size 2000] [--gross 0.1] [--seed 0] [--json out.json] [--quick]
        [--variant cw1:coarse_weight=1.0 ...] [--no-variants]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import DEFAULT_DATA, aerial_scene, fill_nearest, shared_scenes  # noqa: E402

from tiledepth import fusion, metrics  # noqa: E402
from tiledepth.engine import fuse  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.infer import COARSE_KEY  # noqa: E402
from tiledepth.options import make_options  # noqa: E402
from tiledepth.read import coarse_shape  # noqa: E402
from tiledepth.readers import ArrayReader  # noqa: E402
from tiledepth.scratch import MemoryStore  # noqa: E402
from tiledepth.tiling import overlap_pixels, tile_grid  # noqa: E402
from tiledepth.write import ArraySink  # noqa: E402

#: tiledepth variants (options); the first is the engine's default.
VARIANTS = {
    "tiledepth": {},
    "no pyramid": {"pyramid": False},
    "not robust": {"robust": False},
    "affine": {"alignment": "affine"},
    "bilinear": {"alignment": "bilinear"},
    "no anchor blur": {"anchor_blur": 0.0},
}


# --------------------------------------------------------------------------- the model


class SimulatedModel:
    """A monocular model stand-in (see the module docstring); errors seeded per tile id."""

    kind = "depth"
    name = "simulated"
    batch_size = 16

    def __init__(self, seed: int, *, tile_shape: tuple[int, int], tiles: int,
                 gross: float = 0.0, level_tiles: tuple[int, ...] = ()) -> None:
        self.seed = seed
        self.tile_shape = tile_shape
        self.gross = gross
        # exactly that fraction of the tiles (at least one), half inverted, half wrong
        rng = np.random.default_rng([seed, 999])
        bad = rng.permutation(tiles)[:max(1, round(gross * tiles))] if gross > 0 else []
        self.plan = {int(k): ("inverted" if i % 2 == 0 else "wrong") for i, k in enumerate(bad)}
        self.corrupted: dict[int, str] = {}  # tile id -> 'inverted' or 'wrong', when seen
        # pyramid levels call the same tile ids first: the full-resolution call is the last
        self.calls: dict[int, int] = {}
        self.last_call = lambda key: 1 + sum(n > key for n in level_tiles)
        self.preds: dict[int, np.ndarray] = {}

    def predict(self, batch: np.ndarray, keys) -> np.ndarray:
        out = np.stack([self._one(x[..., 0], key) for x, key in zip(batch, keys, strict=True)])
        for key, p in zip(keys, out, strict=True):
            self.preds[key] = p
        return out

    def _one(self, x: np.ndarray, key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, key + 1])
        h, w = x.shape
        y = ndimage.gaussian_filter(x.astype(np.float64), 1.0, mode="nearest")
        lo, hi = y.min(), y.max()
        y = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
        y = y ** np.exp(rng.normal(0, 0.15))
        u, v = np.linspace(-0.5, 0.5, h)[:, None], np.linspace(-0.5, 0.5, w)[None, :]
        y = y + rng.normal(0, 0.05) * u + rng.normal(0, 0.05) * v
        y = y + rng.normal(0, 0.01, y.shape)
        self.calls[key] = self.calls.get(key, 0) + 1
        final = key != COARSE_KEY and self.calls[key] == self.last_call(key)
        if final and key in self.plan:  # full-resolution tiles only
            self.corrupted[key] = self.plan[key]
            if self.plan[key] == "inverted":
                y = 1.0 - y
            else:
                other = aerial_scene(max(h, w), seed=int(rng.integers(1 << 30)))[:h, :w]
                y = (other - other.min()) / np.ptp(other)
        lo, hi = y.min(), y.max()
        y = (y - lo) / (hi - lo) if hi > lo else y
        return (rng.uniform(0.5, 2.0) * y + rng.uniform(-1, 1)).astype(np.float32)


# --------------------------------------------------------------------------- methods


def encode(depth: np.ndarray) -> np.ndarray:
    """The image the model sees: true depth normalised over the scene, in three channels."""
    d = fill_nearest(depth)
    d = (d - d.min()) / np.ptp(d)
    return np.repeat(d[..., None], 3, axis=-1).astype(np.float32)


def run_engine(image, model, geometry: dict, **options) -> tuple[np.ndarray, dict]:
    opts = make_options(model=model, tile_size=geometry["tile_size"], overlap=0.25,
                        coarse_size=geometry["coarse_size"], workers=0, **options)
    reader = ArrayReader(image)
    sink = ArraySink(reader.height, reader.width)
    result = fuse(reader, sink, model, opts, MemoryStore())
    return sink.array, result.report


def reduced_shape(shape: tuple[int, int], side: int) -> tuple[int, int]:
    """The shape of a pyramid level whose long side is ``side`` (as tiledepth.readers.reduced)."""
    return coarse_shape(*shape, side)


def blend_fits(shape, tiles, preds, fits, ramp) -> np.ndarray:
    """Blend tiles with given per-tile (scale, shift) over the whole image."""
    parts = (fusion.BlendPart(t, preds[t.id], np.ones(t.shape, bool), *fits[t.id]) for t in tiles)
    return fusion.blend_window(Window(0, 0, shape[1], shape[0]), parts, ramp=ramp)


def fit_each(tiles, preds, target, valid) -> dict[int, tuple[float, float]]:
    """Each tile's own least-squares scale and shift to ``target`` (valid pixels)."""
    out = {}
    for t in tiles:
        ok = valid[t.row_slice, t.col_slice]
        if ok.sum() < 16:
            out[t.id] = (0.0, float(np.nanmean(target)))
            continue
        out[t.id] = metrics.fit_scale_shift(preds[t.id][ok], target[t.row_slice, t.col_slice][ok])
    return out


def evaluate(name: str, depth: np.ndarray, geometry: dict, *, seed: int,
             gross: float = 0.0, variants: dict = VARIANTS) -> dict:
    """Every method on one scene; returns {method: metrics dict} plus the run's details."""
    shape = depth.shape
    valid = np.isfinite(depth)
    image = encode(depth)
    size = geometry["tile_size"]
    grid = tile_grid(*shape, size, 0.25)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(size, 0.25)
    levels = tuple(len([t for row in tile_grid(*reduced_shape(shape, side), size,
                                               level_overlap(0.25))
                        for t in row])
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))
    model = SimulatedModel(seed, tile_shape=grid[0][0].shape, tiles=len(tiles),
                           gross=gross, level_tiles=levels)
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    fused, report = run_engine(image, model, geometry, **variants["tiledepth"])
    seconds = time.perf_counter() - t0
    preds = dict(model.preds)  # the full-resolution tiles' (pyramid levels come first)

    def score(pred: np.ndarray) -> dict:
        m = metrics.depth_metrics(pred, depth, mask=valid)
        return {"nrmse": m.nrmse, "abs_rel": m.abs_rel, "delta1": m.delta1,
                "seam": metrics.seam_ratio(pred, depth, tiles, mask=valid)}

    coarse = fusion.fill_invalid(preds[COARSE_KEY], np.ones(preds[COARSE_KEY].shape, bool))
    up = fusion.upsample_window(coarse, shape, Window(0, 0, shape[1], shape[0]))
    rows["coarse"] = score(up)
    rows["naive"] = score(blend_fits(shape, tiles, preds, {t.id: (1.0, 0.0) for t in tiles},
                                     ramp))
    rows["coarse-only"] = score(blend_fits(shape, tiles, preds,
                                           fit_each(tiles, preds, up, np.ones(shape, bool)),
                                           ramp))
    rows["tiledepth"] = score(fused)
    for label, options in variants.items():
        if label != "tiledepth":
            # the same model again: its errors depend only on the seed, tile id and pixels
            again = SimulatedModel(seed, tile_shape=grid[0][0].shape, tiles=len(tiles),
                                   gross=gross,
                                   level_tiles=levels if options.get("pyramid", True) else ())
            rows[label] = score(run_engine(image, again, geometry, **options)[0])
    rows["oracle"] = score(blend_fits(shape, tiles, preds, fit_each(tiles, preds, depth, valid),
                                      ramp))
    flagged = {row["id"] for row in report["flagged"]}
    wrong = {k for k, why in model.corrupted.items() if why == "wrong"}
    return {"scene": name, "shape": list(shape), "tiles": len(tiles), "seconds": seconds,
            "methods": rows, "consistency": report["consistency"],
            "corrupted": len(model.corrupted), "flagged": len(flagged),
            "flagged_corrupted": len(flagged & set(model.corrupted)),
            "wrong_flagged": len(flagged & wrong), "wrong": len(wrong)}


# --------------------------------------------------------------------------- driver


def geometries(long_side: int, which: list[str]) -> dict[str, dict]:
    out = {}
    if "quarter" in which:
        tile = max(32, int(round(long_side / 4 / 16)) * 16)
        out["quarter"] = {"tile_size": tile, "coarse_size": tile}
    if "gigapixel" in which and long_side >= 30 * 64:
        out["gigapixel"] = {"tile_size": 64, "coarse_size": 64}
    return out


def table(results: list[dict], methods: list[str], key: str) -> str:
    lines = ["| scene | " + " | ".join(methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    for r in results:
        lines.append(f"| {r['scene']} | " + " | ".join(
            f"{r['methods'][m][key]:.4f}" for m in methods) + " |")
    mean = {m: float(np.mean([r["methods"][m][key] for r in results])) for m in methods}
    lines.append("| **mean** | " + " | ".join(f"**{mean[m]:.4f}**" for m in methods) + " |")
    return "\n".join(lines)


def check_targets(results: list[dict]) -> list[str]:
    """The issue's targets, each as a line ending in 'met' or 'NOT met'."""
    out = []
    mean = {m: float(np.mean([r["methods"][m]["nrmse"] for r in results]))
            for m in results[0]["methods"]}
    ratio_c = mean["tiledepth"] / mean["coarse-only"]
    ratio_o = mean["tiledepth"] / mean["oracle"]
    out.append(f"mean NRMSE tiledepth / coarse-only = {ratio_c:.3f} (<= 0.8): "
               f"{'met' if ratio_c <= 0.8 else 'NOT met'}")
    out.append(f"mean NRMSE tiledepth / oracle = {ratio_o:.3f} (<= 1.5): "
               f"{'met' if ratio_o <= 1.5 else 'NOT met'}")
    worse = [r["scene"] for r in results
             if r["methods"]["tiledepth"]["nrmse"] > min(r["methods"]["coarse"]["nrmse"],
                                                          r["methods"]["naive"]["nrmse"])]
    out.append(f"scenes where tiledepth is worse than coarse or naive: {worse or 'none'}: "
               f"{'met' if not worse else 'NOT met'}")
    seams = [(r["scene"], r["methods"]["tiledepth"]["seam"] / r["methods"]["oracle"]["seam"])
             for r in results]
    bad = [f"{s} {v:.3f}" for s, v in seams if v > 1.05]
    out.append(f"seam ratio / oracle's: max {max(v for _, v in seams):.3f} (<= 1.05 on every "
               f"scene): {'met' if not bad else 'NOT met: ' + ', '.join(bad)}")
    return out


def _value(text: str):
    """An option value from the command line: a number, true/false, or the text."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--geometry", default="quarter,gigapixel")
    ap.add_argument("--procedural", type=int, default=3, help="procedural scenes")
    ap.add_argument("--size", type=int, default=2000, help="procedural scenes' side")
    ap.add_argument("--gross", type=float, default=0.1,
                    help="fraction of grossly wrong tiles in the robustness run (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=0, help="first N shared scenes only")
    ap.add_argument("--quick", action="store_true",
                    help="smoke configuration: 1 shared scene, 1 procedural of 640 px")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:OPT=V[,OPT=V]",
                    help="an extra tiledepth variant, e.g. cw1:coarse_weight=1.0 (repeatable)")
    ap.add_argument("--no-variants", action="store_true",
                    help="only the default tiledepth among the variants (faster)")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.procedural, args.size = 1, 1, 640
    which = args.geometry.split(",")
    variants = {"tiledepth": {}} if args.no_variants else dict(VARIANTS)
    for spec in args.variant:
        name, _, opts = spec.partition(":")
        variants[name] = {k: _value(v) for k, v in (o.split("=") for o in opts.split(","))}

    scenes = []
    if args.data.is_dir():
        for k, scene in enumerate(shared_scenes(args.data)):
            if args.scenes and k >= args.scenes:
                break
            scenes.append(scene)
    else:
        print(f"no shared data at {args.data}: procedural scenes only", file=sys.stderr)
    scenes += [(f"procedural/{s}", aerial_scene(args.size, s)) for s in range(args.procedural)]

    t0 = time.perf_counter()
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "geometries": {}}
    for geo in which:
        results, robust = [], []
        for name, depth in scenes:
            g = geometries(max(depth.shape), [geo])
            if args.quick and geo == "gigapixel":
                g = {"gigapixel": {"tile_size": 32, "coarse_size": 32}}  # 20x, for speed
            if geo not in g:
                continue
            r = evaluate(name, depth, g[geo], seed=args.seed, variants=variants)
            results.append(r)
            print(f"[{time.perf_counter() - t0:6.0f} s] {geo} {name} {depth.shape}: "
                  f"tiledepth {r['methods']['tiledepth']['nrmse']:.4f}, "
                  f"coarse-only {r['methods']['coarse-only']['nrmse']:.4f}, "
                  f"oracle {r['methods']['oracle']['nrmse']:.4f}", file=sys.stderr)
            if args.gross > 0:
                bad = evaluate(name, depth, g[geo], seed=args.seed, gross=args.gross,
                               variants={"tiledepth": {}, "not robust": {"robust": False}})
                robust.append({"scene": name, "clean": r["methods"]["tiledepth"]["nrmse"],
                               "gross": bad["methods"]["tiledepth"]["nrmse"],
                               "gross_not_robust": bad["methods"]["not robust"]["nrmse"],
                               "corrupted": bad["corrupted"], "wrong": bad["wrong"],
                               "flagged": bad["flagged"],
                               "flagged_corrupted": bad["flagged_corrupted"],
                               "wrong_flagged": bad["wrong_flagged"]})
        if not results:
            continue
        methods = list(results[0]["methods"])
        print(f"\n## {geo}: NRMSE\n\n{table(results, methods, 'nrmse')}")
        print(f"\n## {geo}: seam ratio\n\n{table(results, methods, 'seam')}")
        print(f"\n## {geo}: AbsRel\n\n{table(results, methods, 'abs_rel')}")
        print(f"\n## {geo}: targets\n")
        for line in check_targets(results):
            print(f"- {line}")
        if robust:
            rise = [r["gross"] / r["clean"] for r in robust]
            plain = [r["gross_not_robust"] / r["clean"] for r in robust]
            caught = sum(r["wrong_flagged"] for r in robust)
            wrong = sum(r["wrong"] for r in robust)
            flagged = sum(r["flagged_corrupted"] for r in robust)
            corrupted = sum(r["corrupted"] for r in robust)
            print(f"- with {args.gross:.0%} grossly wrong tiles: NRMSE rises x{np.mean(rise):.3f} "
                  f"on average, at most x{max(rise):.3f} (<= 1.2); without robust x"
                  f"{np.mean(plain):.3f} on average, at most x{max(plain):.3f}; flagged "
                  f"{flagged} of {corrupted} corrupted tiles ({caught} of {wrong} 'wrong' ones), "
                  f"{sum(r['flagged'] for r in robust) - flagged} clean tiles flagged")
        out["geometries"][geo] = {"results": results, "robust": robust,
                                  "targets": check_targets(results)}
    print(f"\n{len(scenes)} scenes, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
