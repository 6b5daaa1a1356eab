"""Where the NRMSE rise under gross errors comes from, and what a second call of flagged tiles
recovers (issue 17's "with 10 % grossly wrong tiles the NRMSE rises at most 20 %").

For each geometry, model, scene and seed (the scenes of ``fusion_quality.py``) the engine's
default fusion runs clean, then with gross errors (``sim_models.SimModel(gross=...)``) on one
part of the run at a time (``tiles``: 10 % of the full-resolution tiles; ``coarse``: an
inverted patch of the coarse map; ``levels``: 10 % of each pyramid level's calls) and on all
three (``all``: the parts ``fusion_quality.py``'s robustness run hits, but without its second
call of flagged tiles: every run here is ``retry_flagged=False`` unless ``--retry``, where the
engine's default and ``fusion_quality.py`` are ``True``). Each row is the rise, gross NRMSE
over clean NRMSE, mean / worst over the scene-seeds.

The tiles part is split three ways by re-running the **clean** predictions with tiles forced
to be filled from the coarse map (as the robust step fills a flagged tile, the others solved
again without it):

(a) the corrupted tiles the gross run filled (flagged inconsistent): the cost of the fill;
(c) plus the clean tiles the gross run filled: the cost of false alarms;
(b) the rest, up to the gross run's NRMSE: corrupted tiles not filled (inverted ones kept
    with a negative scale, other ones missed), and what the corrupted tiles did to the solve
    before they were left out.

Each is a share of the rise: ``(NRMSE after the step - NRMSE before it) / clean NRMSE``.
Every column is a rise over the clean run, with the retry over the clean run with the retry
(``clean, retry``: that one over the clean run without it).

``--retry``: the same runs also with ``retry_flagged=True`` (each flagged tile predicted once
more, with a new sample: the engine's default); ``--sticky``: also a model whose gross failures
are tied to the content (a retried failure fails again: the retry can only cost a model call).
``--draws``: the simulated calls and textures drawn from the seed alone (``shared``, the
default, as this script always drew them) or from the seed and the scene (``scene``, as
``fusion_quality.py`` draws them by default since the seventh session).

    python benchmarks/gross_errors.py --quick --geometry quarter,gigapixel \\
        --models current,power,texture,consistent,quadratic --seeds 0,1,2 [--retry] [--sticky]
        [--draws shared|scene]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_models  # noqa: E402
from fusion_quality import (  # noqa: E402
    SHARED_DRAWS_HELP,
    fill_scene_options,
    geometries,
    reduced_shape,
    run_engine,
    simulated_input,
)
from scenes import aerial_scene, benchmark_scenes, default_data  # noqa: E402

from tiledepth import fusion, metrics  # noqa: E402
from tiledepth.fusion import solve  # noqa: E402
from tiledepth.fusion.fill import _unwarned  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.fusion.stats import PairTable, TileTable  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402

PARTS = {"tiles": ("tiles",), "coarse": ("coarse",), "levels": ("levels",),
         "all": sim_models.GROSS_PARTS}


@contextlib.contextmanager
def forced_fill(ids: set[int], tiles: int):
    """The engine's fill of ``ids`` from the coarse map at the full-resolution solve (the one
    with ``tiles`` tiles), as if the robust step had flagged them: the others solved again
    without them, as :func:`tiledepth.fusion.solve_and_fill` does."""
    original = fusion.solve_and_fill

    def filled(stats, pairs, **kwargs):
        maps, found, replaced = original(stats, pairs, **kwargs)
        stats = TileTable.of(stats)
        if len(stats) != tiles or not ids - replaced:
            return maps, found, replaced
        gone = np.array(sorted(replaced | ids), np.int64)
        pairs = PairTable.of(pairs, stats.corners)
        keys = {k: kwargs[k] for k in ("tile_area", "coarse_weight", "fit",
                                       "estimate_weights", "bend_from_anchor")}
        with _unwarned():
            kept = solve.solve_alignment(
                stats.take(~np.isin(stats.column("id"), gone)),
                pairs.take(~np.isin(pairs.column("i"), gone) & ~np.isin(pairs.column("j"), gone)),
                robust=True, **keys)
        maps.update(kept)
        return maps, found, replaced | ids

    fusion.solve_and_fill = filled
    try:
        yield
    finally:
        fusion.solve_and_fill = original


def one(name: str, depth: np.ndarray, geometry: dict, *, model: str, seed: int, gross: float,
        other: np.ndarray, retry: bool, sticky: bool, retry_only: bool = False,
        draws: str = "shared") -> dict:
    """Every run of one scene, model and seed: {label: NRMSE}, and the tiles part's counts."""
    shape = depth.shape
    valid = np.isfinite(depth)
    image, drawn = simulated_input(name, depth, seed, draws)  # fusion_quality's draws
    size = geometry["tile_size"]
    n = len([t for row in tile_grid(*shape, size, 0.25) for t in row])
    levels = tuple(len([t for row in tile_grid(*reduced_shape(shape, side), size,
                                               level_overlap(0.25)) for t in row])
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))

    def run(parts=(), *, force=frozenset(), retried=False, stuck=False):
        if retry_only and not retried:
            return float("nan"), set(), sim_models.SimModel(model, drawn, tiles=n)
        sim = sim_models.SimModel(model, drawn, tiles=n, gross=gross if parts else 0.0,
                                  levels=levels, other=other, gross_on=parts or PARTS["all"],
                                  sticky=stuck)
        with forced_fill(set(force), n) if force else contextlib.nullcontext():
            fused, report = run_engine(image, sim, geometry,
                                       retry_flagged=retried)
        nrmse = metrics.depth_metrics(fused, depth, mask=valid).nrmse
        return nrmse, {r["id"] for r in report["tiles"] if r.get("filled_from_coarse")}, sim

    out: dict = {"scene": name, "model": model, "seed": seed, "tiles": n, "levels": levels}
    nrmse = out["nrmse"] = {}
    nrmse["clean"], clean_filled, _ = run()
    out["clean_filled"] = len(clean_filled)
    if retry:  # its own clean figure: the clean tiles it fills are predicted again too
        nrmse["clean, retry"], again, _ = run(retried=True)
        out["clean, retry filled"] = len(again)
    for part, on in PARTS.items():
        if part == "levels" and not levels:
            continue
        nrmse[part], filled, sim = run(on)
        if part == "tiles":
            bad = set(sim.corrupted)
            hit, false, missed = filled & bad, filled - bad, bad - filled
            out.update(corrupted=len(bad), filled_corrupted=len(hit),
                       filled_clean=len(false), missed=len(missed),
                       missed_wrong=sum(sim.corrupted[k] == "wrong" for k in missed))
            nrmse["fill (a)"] = run(force=hit)[0] if hit else nrmse["clean"]
            nrmse["fill (a+c)"] = run(force=hit | false)[0] if false else nrmse["fill (a)"]
        if retry:
            nrmse[f"{part}, retry"], again, sim = run(on, retried=True)
            out[f"{part}, retried"] = len(sim.retried)
            out[f"{part}, retry bad"] = sum(v is not None for v in sim.retried.values())
            out[f"{part}, retry filled"] = len(again)
        if sticky and part in ("tiles", "all"):
            nrmse[f"{part}, sticky"] = run(on, stuck=True)[0]
            nrmse[f"{part}, sticky, retry"], _, sim = run(on, retried=True, stuck=True)
            out[f"{part}, sticky calls"] = sum(sim.calls.values())
    return out


def summary(results: list[dict]) -> list[str]:
    """Markdown rows: model, each run's rise mean / worst, the tiles part's split."""
    labels = [k for k in results[0]["nrmse"] if k != "clean"]
    lines = []
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == model]
        cells = []
        for label in labels:  # with the retry, over the clean run with the retry
            clean = "clean, retry" if "retry" in label and label != "clean, retry" else "clean"
            rise = [r["nrmse"][label] / r["nrmse"][clean] for r in rs if label in r["nrmse"]]
            cells.append(f"x{np.mean(rise):.2f} / x{np.max(rise):.2f}" if rise else "-")
        shares = {k: np.mean([(r["nrmse"][b] - r["nrmse"][a]) / r["nrmse"]["clean"]
                              for r in rs])
                  for k, a, b in (("a", "clean", "fill (a)"), ("c", "fill (a)", "fill (a+c)"),
                                  ("b", "fill (a+c)", "tiles"))}
        counts = (f"{sum(r['filled_corrupted'] for r in rs)}/{sum(r['corrupted'] for r in rs)}"
                  f" filled, {sum(r['missed_wrong'] for r in rs)} 'wrong' not filled, "
                  f"{sum(r['filled_clean'] for r in rs)} clean filled")
        lines.append(f"| {model} | " + " | ".join(cells) + " | "
                     + ", ".join(f"({k}) {v:+.3f}" for k, v in shares.items())
                     + f" | {counts} |")
    return ["| model | " + " | ".join(f"{k}: rise mean / worst" for k in labels)
            + " | tiles part: (a) fill, (c) clean filled, (b) rest | tiles part's counts |",
            "| --- |" + " --- |" * (len(labels) + 2)] + lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--geometry", default="quarter,gigapixel")
    ap.add_argument("--models", default=",".join(sim_models.MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    # the scene options default to None: --quick fills only those not given
    ap.add_argument("--scenes", type=int, default=None, help="default 6, --quick 1")
    ap.add_argument("--procedural", type=int, default=None, help="default 1")
    ap.add_argument("--size", type=int, default=None, help="default 1280, --quick 640")
    ap.add_argument("--gross", type=float, default=0.1)
    ap.add_argument("--quick", action="store_true",
                    help="1 shared scene and 1 procedural scene of 640 px (where --scenes, "
                         "--procedural, --size are not given)")
    ap.add_argument("--retry", action="store_true",
                    help="also every gross run with retry_flagged=True")
    ap.add_argument("--sticky", action="store_true",
                    help="also a model whose gross failures are tied to the content")
    ap.add_argument("--retry-only", action="store_true",
                    help="only the runs with the retry (the others NaN: merge them from a "
                         "run without this)")
    ap.add_argument("--draws", choices=("shared", "scene"), default="shared",
                    help=SHARED_DRAWS_HELP)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models, geometries=args.geometry)
    fill_scene_options(args)
    data = args.data if args.data is not None else default_data()
    scenes = benchmark_scenes(data, scenes=args.scenes, procedural=args.procedural,
                              size=args.size)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "geometries": {}}
    for geo in args.geometry.split(","):
        results = []
        for model in args.models.split(","):
            for name, depth in scenes:
                g = geometries(max(depth.shape), [geo], quick=args.quick)
                if geo not in g:
                    continue
                other = aerial_scene(max(depth.shape), 7)
                for seed in seeds:
                    r = one(name, depth, g[geo], model=model, seed=seed, gross=args.gross,
                            other=other, retry=args.retry, sticky=args.sticky,
                            retry_only=args.retry_only, draws=args.draws)
                    results.append(r)
                    print(f"[{time.perf_counter() - t0:6.0f} s] {geo} {model} {name} seed "
                          f"{seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["nrmse"].items()),
                          file=sys.stderr)
        if results:
            print(f"\n## {geo}\n\n" + "\n".join(summary(results)))
        out["geometries"][geo] = results
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
