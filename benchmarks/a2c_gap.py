"""Where tiledepth loses to align-to-coarse: the joint solve's gap split tile by tile (issue 17).

For each model, seed and scene, the engine runs with its defaults (``joint``) and as
``fusion_quality``'s align-to-coarse (``a2c``: every overlap term dropped); the last solve's
statistics of the joint run are kept and solved again offline (no pixel access but the blend):

- ``a2c-kept``: the a2c solve of those statistics with every tile kept: without a2c's own
  flags (judged by the anchor alone, each flagged tile called again or filled from the
  coarse map), so ``a2c`` against ``a2c-kept`` is what those flags gave;
- ``choice``: each tile with whichever of its two maps (joint, a2c-kept) is nearer the truth
  over the tile: the bound of any per-tile choice between the two solves;
- ``drop``: the tile whose overlap terms, dropped (weight 0), lower the NRMSE most, and by
  how much (only up to ``--max-tiles`` tiles: one solve and one blend each);
- ``best f``: the factor on the anchor's weight (times 1/4 ... 64: for affine maps on the
  weight the engine estimated, ``estimate_weights`` being the default, for bilinear ones on
  ``coarse_weight``; ``inf``:
  a2c-kept) whose solve is nearest the truth, and ``cv f``, the one a cross-validation against
  the anchor picks (tiles in four folds by the parity of their grid row and column, each
  fold's anchor terms held out and predicted from the others through the overlaps).

The maps are the engine's affine ones (the ``--quick`` geometries' tiles get one scale and
shift); bilinear statistics are re-solved without the judge's robust weights. NRMSE as
``fusion_quality`` scores it.

    python benchmarks/a2c_gap.py [--models current,power,quadratic] [--seeds 0,1,2]
        [--geometry quarter] [--scenes 1] [--procedural 1] [--size 640] [--max-tiles 100]
        [--draws scene|shared]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_quality as fq  # noqa: E402
import sim_models  # noqa: E402
from scenes import benchmark_scenes, default_data  # noqa: E402

from tiledepth import fusion, metrics  # noqa: E402
from tiledepth.fusion import solve  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.infer import retry_key  # noqa: E402
from tiledepth.tiling import overlap_pixels, tile_grid  # noqa: E402

#: Factors on the anchor's weight tried for ``best f`` and ``cv f`` (inf: align-to-coarse).
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 16.0, 64.0, np.inf)


def run_captured(image, model, geometry: dict, *, pairs: bool = True, **options):
    """The engine's fused map, its report, and the last solve's (tiles, pairs, kwargs, maps);
    ``options``: the engine's, beside the geometry's."""
    seen = []
    original = fusion.solve_and_fill

    def capture(tiles, pairs_, **kwargs):
        out = original(tiles, pairs_, **kwargs)
        tiles = fusion.TileTable.of(tiles)
        seen.append((tiles, fusion.PairTable.of(pairs_, tiles.corners), kwargs, out[0]))
        return out

    fusion.solve_and_fill = capture
    try:
        fused, report = fq.run_engine(image, model, geometry, pairs=pairs, **options)
    finally:
        fusion.solve_and_fill = original
    return fused, report, seen[-1]


def cv_factor(problem: solve.Problem, pair_w, tile_w, fold: np.ndarray) -> float:
    """The factor of :data:`FACTORS` whose held-out anchor terms are predicted best."""
    errors = []
    zero = np.zeros_like(pair_w)
    for f in FACTORS:
        err = 0.0
        for k in np.unique(fold):
            held = fold == k
            if np.isinf(f):  # the others at their anchors, the held-out through the overlaps
                x = problem.by_neighbours(problem.solve(zero, tile_w), pair_w)
            else:
                x = problem.solve(pair_w, np.where(held, 0.0, tile_w * f))
            err += float(np.nansum((problem.tile_n * problem.anchor_residuals(x) ** 2)[held]))
        errors.append(err)
    return FACTORS[int(np.argmin(errors))]


def gap(name: str, depth: np.ndarray, geometry: dict, *, model: str, seed: int,
        max_tiles: int = 100, draws: str = "scene") -> dict:
    """The figures of one scene, model and seed (see the module's docstring); ``draws`` as
    in :func:`fusion_quality.evaluate`."""
    shape = depth.shape
    valid = np.isfinite(depth)
    image, drawn = fq.simulated_input(name, depth, seed, draws)
    size = geometry["tile_size"]
    tiles = [t for row in tile_grid(*shape, size, 0.25) for t in row]
    levels = tuple(len([t for row in tile_grid(*fq.reduced_shape(shape, side), size,
                                               level_overlap(0.25)) for t in row])
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))

    def sim():
        return sim_models.SimModel(model, drawn, tiles=len(tiles), levels=levels)

    def score(img):
        return float(metrics.depth_metrics(img, depth, mask=valid).nrmse)

    m0 = sim()
    fused, report, (stats, pairs, kw, maps) = run_captured(image, m0, geometry)
    a2c, a2c_report, _ = run_captured(image, sim(), geometry, pairs=False)
    preds, ramp = dict(m0.preds), overlap_pixels(size, 0.25)
    for i in report.get("retried") or []:  # kept after a second call: its statistics' pixels
        preds[i] = m0.preds[retry_key(i, 1)]
    problem = solve.Problem(stats, pairs, tile_area=kw["tile_area"],
                            coarse_weight=kw["coarse_weight"], ridge=1e-3, smooth=0.01)
    if problem.k == 1:
        pair_w, tile_w, x_joint = solve.reweight(problem, iterations=8)
        if kw.get("estimate_weights"):  # the anchor's weight balanced as the engine's
            tile_w = solve.balance(problem, pair_w, tile_w)[0]
            x_joint = problem.solve(pair_w, tile_w)
    else:
        pair_w, tile_w = problem.ones_pairs, problem.ones_tiles
        x_joint = problem.params(maps)
    zero = np.zeros_like(pair_w)
    x_a2c = problem.solve(zero, tile_w)

    def blended(x):
        return score(fq.blend_maps(shape, tiles, preds, problem.maps(x), ramp))

    # per tile: which of the two maps is nearer the truth (in the joint's global frame)
    a, b = metrics.fit_scale_shift(fused[valid].astype(np.float64),
                                   depth[valid].astype(np.float64))
    nearer_a2c = np.zeros(len(problem.ids), bool)
    joint_maps, a2c_maps = problem.maps(x_joint), problem.maps(x_a2c)
    for j, i in enumerate(problem.ids.tolist()):
        t = tiles[i]
        truth, ok = depth[t.row_slice, t.col_slice], valid[t.row_slice, t.col_slice]
        p = preds[i].astype(np.float64)[ok]
        err = [np.mean((a * (m[i].scale * p + m[i].shift) + b - truth[ok]) ** 2)
               for m in (joint_maps, a2c_maps)]
        nearer_a2c[j] = err[1] < err[0]
    out = {"scene": name, "model": model, "seed": seed, "tiles": len(problem.ids),
           "joint": score(fused), "a2c": score(a2c), "joint-kept": blended(x_joint),
           "a2c-kept": blended(x_a2c),
           "choice": blended(np.where(nearer_a2c[:, None], x_a2c, x_joint)),
           "nearer_a2c": int(nearer_a2c.sum()),
           # flagged in the end, and flagged once but kept after their second call
           "flagged": len(report["flagged"]), "retried": len(report.get("retried") or []),
           "a2c_flagged": len(a2c_report["flagged"]),
           "a2c_retried": len(a2c_report.get("retried") or [])}
    truth_f = [out["a2c-kept"] if np.isinf(f) else blended(problem.solve(pair_w, tile_w * f))
               for f in FACTORS]
    out["best_f"] = FACTORS[int(np.argmin(truth_f))]
    out["by_f"] = truth_f
    by_id = {t.id: t for t in tiles}
    fold = np.array([(by_id[i].row % 2) * 2 + by_id[i].col % 2 for i in problem.ids.tolist()])
    out["cv_f"] = cv_factor(problem, pair_w, tile_w, fold)
    out["drop_tile"], out["drop"] = None, float("nan")
    if len(problem.ids) <= max_tiles:
        ends = problem.ids[problem.pair_idx]  # (P, 2) tile ids of each overlap
        drops = [blended(problem.solve(pair_w * ~(ends == i).any(axis=1), tile_w))
                 for i in problem.ids.tolist()]
        k = int(np.argmin(drops))
        out["drop_tile"], out["drop"] = int(problem.ids[k]), drops[k] - out["joint-kept"]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="current,power,quadratic")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--geometry", default="quarter", help="quarter, gigapixel or custom:T:C")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--scenes", type=int, default=1, help="first N shared scenes (0: none)")
    ap.add_argument("--procedural", type=int, default=1)
    ap.add_argument("--size", type=int, default=640, help="procedural scenes' side")
    ap.add_argument("--max-tiles", type=int, default=100,
                    help="the 'drop' column only up to this many tiles")
    ap.add_argument("--draws", choices=("scene", "shared"), default="scene",
                    help="as fusion_quality.py's --draws")
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models, geometries=args.geometry, one_geometry=True)
    data = (args.data if args.data is not None else default_data()) if args.scenes else None
    scenes = benchmark_scenes(data, scenes=args.scenes, procedural=args.procedural,
                              size=args.size)
    rows = []
    print("| model | scene@seed | joint | a2c | flags: joint, a2c | joint-kept | a2c-kept | "
          "choice | tiles nearer a2c | drop: tile, change | best f | cv f |")
    print("| --- |" + " --- |" * 11)
    for model in args.models.split(","):
        for name, depth in scenes:
            # gigapixel: 32 px tiles below 1280 px, as fusion_quality --quick
            geo = fq.geometries(max(depth.shape), [args.geometry], quick=args.size < 1280)
            if args.geometry.startswith("custom"):
                geo = {args.geometry: fq.custom_geometry(args.geometry)}
            if args.geometry not in geo:
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                r = gap(name, depth, geo[args.geometry], model=model, seed=seed,
                        max_tiles=args.max_tiles, draws=args.draws)
                rows.append(r)
                drop = "-" if r["drop_tile"] is None else f"{r['drop_tile']}, {r['drop']:+.4f}"
                flags = (f"{r['flagged'] + r['retried']}, "
                         f"{r['a2c_flagged'] + r['a2c_retried']}")
                print(f"| {model} | {name}@{seed} | {r['joint']:.4f} | {r['a2c']:.4f} | "
                      f"{flags} | {r['joint-kept']:.4f} | {r['a2c-kept']:.4f} | "
                      f"{r['choice']:.4f} | {r['nearer_a2c']} of {r['tiles']} | {drop} | "
                      f"{r['best_f']:g} | {r['cv_f']:g} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
