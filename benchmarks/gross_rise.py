"""The NRMSE rise under gross errors, per model, scene and seed: only the clean run and the
run with 10 % gross calls on every part (issue 17's "with 10 % grossly wrong tiles the NRMSE
rises at most 20 %"), and a comparison of two such runs (a change against its base).

The runs are ``gross_stages.py``'s ``clean`` and ``all`` columns (the same scenes, draws and
``fusion_quality.run_engine``) without its stage-by-stage runs: about 1 s a scene-seed on the
quarter geometry, 5 s on the gigapixel one, on this 2-core machine. One JSON line per
scene-seed goes to stdout (``clean``, ``all``: NRMSE; ``clean_calls``, ``all_calls``: the
model calls of each run, every stage); ``--compare BASE NEW`` reads two such outputs and prints
each scene-seed that changed and, per model, the clean NRMSE's worst change and the rise's
mean / worst in each.

    python benchmarks/gross_rise.py --geometry quarter --models clipped,vignette --seeds 0,1,2
        [--draws shared] [--options estimate_weights=false] > new.jsonl
    python benchmarks/gross_rise.py --compare base.jsonl new.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gross_stages  # noqa: E402
import sim_models  # noqa: E402
from fusion_quality import (  # noqa: E402
    parse_variant,
    reduced_shape,
    run_engine,
    simulated_input,
)

from tiledepth import metrics  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402


def rise(depth: np.ndarray, geometry: dict, *, model: str, seed: int, other: np.ndarray,
         name: str = "", draws: str = "scene", gross: float = 0.1,
         options: dict | None = None) -> dict:
    """One scene-seed's clean and gross (every part) NRMSE, and the model calls of each run
    (tiles of every stage, the coarse calls, second calls); ``options``: the engine's, beside
    the geometry's (``--options``)."""
    shape, size = depth.shape, geometry["tile_size"]
    valid = np.isfinite(depth)
    image, drawn = simulated_input(name, depth, seed, draws)
    n = sum(len(row) for row in tile_grid(*shape, size, 0.25))
    levels = tuple(sum(len(row) for row in tile_grid(*reduced_shape(shape, side), size,
                                                     level_overlap(0.25)))
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))
    out: dict = {}
    for label, parts in (("clean", ()), ("all", sim_models.GROSS_PARTS)):
        sim = sim_models.SimModel(model, drawn, tiles=n, gross=gross if parts else 0.0,
                                  levels=levels, other=other,
                                  gross_on=parts or sim_models.GROSS_PARTS)
        fused, _ = run_engine(image, sim, geometry, **(options or {}))
        out[label] = metrics.depth_metrics(fused, depth, mask=valid).nrmse
        out[f"{label}_calls"] = sum(sim.calls.values())
    return out


def load(path: Path) -> dict[tuple, dict]:
    """A run's JSON lines by (model, scene, seed)."""
    rows = (json.loads(line) for line in Path(path).read_text().splitlines()
            if line.startswith("{"))
    return {(r["model"], r["scene"], r["seed"]): r for r in rows}


def compare(base: dict[tuple, dict], new: dict[tuple, dict]) -> list[str]:
    """Lines: each scene-seed whose clean or gross NRMSE changed, then per model the clean
    NRMSE's worst relative change and the rise (gross over clean) mean / worst, base and new
    (the scene-seeds both runs hold)."""
    lines, per = [], {}
    for key in sorted(set(base) & set(new)):
        a, b = base[key], new[key]
        change = b["clean"] / a["clean"] - 1
        ra, rb = a["all"] / a["clean"], b["all"] / b["clean"]
        per.setdefault(key[0], []).append((change, ra, rb))
        if b["clean"] != a["clean"] or b["all"] != a["all"]:
            lines.append(f"{key[0]} {key[1]} seed {key[2]}: clean {change:+.4%}, "
                         f"rise x{ra:.3f} -> x{rb:.3f}")
    for model, rows in per.items():
        v = np.array(rows)
        lines.append(f"{model}: {len(v)} scene-seeds, clean worst change {v[:, 0].max():+.4%}, "
                     f"rise x{v[:, 1].mean():.3f} / {v[:, 1].max():.3f} -> "
                     f"x{v[:, 2].mean():.3f} / {v[:, 2].max():.3f}")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gross_stages.case_arguments(ap, geometry="quarter", draws="scene")
    ap.add_argument("--options", default=None, metavar="OPT=V[,OPT=V]",
                    help="engine options for every run, as fusion_quality.py's --variant "
                         "takes them (e.g. estimate_weights=false)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BASE", "NEW"),
                    help="compare two runs' outputs instead of running")
    args = ap.parse_args(argv)
    options = {}
    if args.options:
        try:
            _, options = parse_variant(f"options:{args.options}")
        except ValueError as exc:
            ap.error(str(exc).replace("--variant options:", "--options "))
        if not options.pop("pairs", True):
            ap.error("--options: pairs=false is align-to-coarse, not a gross-rise run")
        fixed = sorted(set(options) & {"tile_size", "overlap", "coarse_size", "workers",
                                       "pyramid"})
        if fixed:
            ap.error(f"--options: {', '.join(fixed)} set by the geometry and the benchmark's "
                     "scenes (--geometry custom:TILE:COARSE for another tile or coarse size)")
    if args.compare:
        print("\n".join(compare(*(load(p) for p in args.compare))))
        return []
    sim_models.check_names(ap, models=args.models, geometries=args.geometry, one_geometry=True)
    t0, results = time.perf_counter(), []
    for model, name, depth, geometry, other, seed in gross_stages.quick_cases(
            args.data, args.models, args.geometry, args.seeds):
        r = rise(depth, geometry, model=model, seed=seed, other=other, name=name,
                 draws=args.draws, options=options)
        row = {"model": model, "scene": name, "seed": seed, **r,
               "t": round(time.perf_counter() - t0)}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main()
