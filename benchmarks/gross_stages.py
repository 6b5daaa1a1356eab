"""Where the gross-error rise comes from, stage by stage: the pyramid level's solve and the
tiles' (issue 17, BENCHMARKS.md "Gross errors on the gigapixel geometry").

For each model, scene and seed (``--quick`` scenes), the engine's default fusion runs clean
and with 10 % gross errors on one part at a time (``all``, ``coarse``, ``levels``,
``tiles``; ``sim_models.SimModel(gross_on=...)``), with :func:`tiledepth.stages.align_tiles`
and :func:`tiledepth.stages.predict_again` watched (a level's solve told from the tiles' by
its tile count): per stage, the corrupted calls, the tiles filled by the first solve,
retried, filled at the end, and the corrupted calls whose prediction was used ('wrong' ones:
another scene's; inverted ones, kept with a negative scale, are right). The levels' and the
tiles' parts are split as ``gross_errors.py`` splits the tiles': the clean run with the
corrupted tiles the gross run filled forced to be filled (the fills), then with the clean
ones it filled too; the rest up to the gross run.

A simulated model's calls and the texture it sees are drawn from the seed alone (``--draws
shared``, the default: every scene of a seed the same draws, as this script always drew them)
or from the seed and the scene (``--draws scene``, as ``fusion_quality.py`` draws them by
default since the seventh session: its figures are reproduced with this).

    python benchmarks/gross_stages.py --models latent,consistent --seeds 0,1,2 --json g.json
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
    geometries,
    reduced_shape,
    run_engine,
    simulated_input,
)
from gross_errors import forced_fill  # noqa: E402
from scenes import aerial_scene, benchmark_scenes, default_data  # noqa: E402

from tiledepth import metrics, stages  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.infer import RETRY_STRIDE, is_coarse_key  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402

PARTS = {"clean": (), "all": sim_models.GROSS_PARTS, "coarse": ("coarse",),
         "levels": ("levels",), "tiles": ("tiles",)}


class Watched(sim_models.SimModel):
    """A :class:`sim_models.SimModel` that also records which level calls were grossly wrong
    (``level_bad``: level tile id -> why) and whether each level tile's retry was."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.level_bad: dict[int, str] = {}
        self.level_retry: dict[int, bool] = {}

    def _gross(self, y, key, n, rng):
        out = super()._gross(y, key, n, rng)
        if is_coarse_key(key):  # a coarse call (tiledepth.infer.coarse_key)
            return out
        if key >= RETRY_STRIDE:
            final, _ = self._last.get(key % RETRY_STRIDE, (True, None))
            if not final:
                self.level_retry[key % RETRY_STRIDE] = not np.array_equal(out, y)
            return out
        final, why = self._last[key]
        if not final and why is not None:
            self.level_bad[key] = why
        return out


@contextlib.contextmanager
def watched(log: list):
    """Record each align (tile count, replaced, flagged) and each retry (count, retried)."""
    align, again = stages.align_tiles, stages.predict_again

    def aligned(stats, pairs, **kwargs):
        out = align(stats, pairs, **kwargs)
        log.append(("align", len(stats), set(out[2]), dict(out[1].flagged)))
        return out

    def retried(model, reader, grid, store, ids, **kwargs):
        out = again(model, reader, grid, store, ids, **kwargs)
        # the flagged tiles' calls; the weakly followed tiles' (keep_better_samples) apart
        what = "again" if kwargs.get("desc", "flagged tiles again") == "flagged tiles again" \
            else "suspects"
        log.append((what, sum(len(row) for row in grid), set(out[2])))
        return out

    stages.align_tiles, stages.predict_again = aligned, retried
    try:
        yield
    finally:
        stages.align_tiles, stages.predict_again = align, again


def counts(log: list, tiles: int, sim: Watched, level: bool) -> dict:
    """One stage's counts from a run's ``log`` (the stage with ``tiles`` tiles)."""
    aligns = [x for x in log if x[0] == "align" and x[1] == tiles]
    agains = [x for x in log if x[0] == "again" and x[1] == tiles]
    if not aligns:
        return {}
    first, last = aligns[0], aligns[-1]
    whys = sim.level_bad if level else sim.corrupted
    bad = set(whys)
    retried = agains[0][2] if agains else set()
    if level:
        clean_retry = {i for i in retried if not sim.level_retry.get(i, False)}
    else:
        clean_retry = {i for i in retried if sim.retried.get(i) is None}
    used = {i for i in bad - last[2] if i not in clean_retry}
    return {"bad": len(bad), "flagged": len(first[3]), "first_filled": len(first[2]),
            "first_filled_clean": len(first[2] - bad), "retried": len(retried),
            "filled": len(last[2]), "filled_bad": len(last[2] & bad),
            "filled_clean": len(last[2] - bad),
            "wrong_used": sum(whys[i] == "wrong" for i in used),
            "wrong_never_flagged": sum(whys[i] == "wrong" and i not in first[3] for i in bad),
            "inverted_used": sum(whys[i] == "inverted" for i in used),
            "filled_ids": sorted(last[2]), "bad_ids": sorted(bad)}


def one(depth: np.ndarray, geometry: dict, *, model: str, seed: int, other: np.ndarray,
        name: str = "", draws: str = "shared") -> dict:
    """Every run of one scene (``name``: what ``draws='scene'`` draws from), model and seed."""
    shape, size = depth.shape, geometry["tile_size"]
    valid = np.isfinite(depth)
    image, drawn = simulated_input(name, depth, seed, draws)  # fusion_quality's draws
    n = sum(len(row) for row in tile_grid(*shape, size, 0.25))
    levels = tuple(sum(len(row) for row in tile_grid(*reduced_shape(shape, side), size,
                                                     level_overlap(0.25)))
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))

    def run(parts, force=frozenset(), tiles=0):
        log: list = []
        sim = Watched(model, drawn, tiles=n, gross=0.1 if parts else 0.0, levels=levels,
                      other=other, gross_on=parts or sim_models.GROSS_PARTS)
        with watched(log), forced_fill(set(force), tiles) if force else contextlib.nullcontext():
            fused, _ = run_engine(image, sim, geometry)
        return metrics.depth_metrics(fused, depth, mask=valid).nrmse, sim, log

    out: dict = {}
    for label, parts in PARTS.items():
        nrmse, sim, log = run(parts)
        out[label] = {"nrmse": nrmse, "tiles": counts(log, n, sim, False)}
        if levels:
            out[label]["level"] = counts(log, levels[0], sim, True)
        for stage, count in (("level", levels[0] if levels else 0), ("tiles", n)):
            if label != {"level": "levels", "tiles": "tiles"}[stage] or not count:
                continue
            filled, bad = set(out[label][stage]["filled_ids"]), set(out[label][stage]["bad_ids"])
            fills = run((), filled & bad, count)[0] if filled & bad else out["clean"]["nrmse"]
            out[f"{stage}: fills"] = fills
            out[f"{stage}: fills, clean ones too"] = run((), filled, count)[0] \
                if filled - bad else fills
    return out


def summary(results: list[dict]) -> list[str]:
    """Markdown rows: rises mean / worst per part; the levels' and tiles' splits."""
    lines = ["| model | clean NRMSE | all | coarse only | levels only | tiles only | levels "
             "only: fills / rest | tiles only: fills / clean filled / rest |",
             "| --- |" + " --- |" * 7]
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == model]
        clean = np.array([r["clean"]["nrmse"] for r in rs])

        def rise(part, rs=rs, clean=clean):
            v = np.array([r[part]["nrmse"] for r in rs]) / clean
            return f"x{v.mean():.2f} / x{v.max():.2f}"

        def share(a, b, rs=rs, clean=clean):
            def get(r, k):
                return r[k]["nrmse"] if isinstance(r[k], dict) else r[k]

            return float(np.mean([(get(r, b) - get(r, a)) / c
                                  for r, c in zip(rs, clean, strict=True)]))

        cells = [rise(p) for p in ("all", "coarse", "levels", "tiles")]
        split = []
        for stage, part in (("level", "levels"), ("tiles", "tiles")):
            if f"{stage}: fills" not in rs[0]:
                split.append("-")
                continue
            parts = [share("clean", f"{stage}: fills"),
                     share(f"{stage}: fills", f"{stage}: fills, clean ones too"),
                     share(f"{stage}: fills, clean ones too", part)]
            if stage == "level":
                parts = [parts[0] + parts[1], parts[2]]
            split.append(" / ".join(f"{v:+.3f}" for v in parts))
        lines.append(f"| {model} | {clean.mean():.4f} | " + " | ".join(cells + split) + " |")
    return lines


def quick_cases(data: Path | None, models: str, geometry: str, seeds: str):
    """The ``--quick`` cases of ``geometry`` (one Middlebury scene and one procedural, 640
    px; ``data``: the shared data, None: found): (model, scene name, depth, the geometry's
    sizes, the other scene 'wrong' calls show, seed) for each model, scene and seed of the
    comma-separated ``models`` and ``seeds`` (gross_rise.py runs the same)."""
    scenes = benchmark_scenes(data if data is not None else default_data(), scenes=1,
                              procedural=1, size=640)
    for model in models.split(","):
        for name, depth in scenes:
            g = geometries(max(depth.shape), [geometry], quick=True)
            if geometry not in g:
                continue
            other = aerial_scene(max(depth.shape), 7)
            for seed in (int(s) for s in seeds.split(",")):
                yield model, name, depth, g[geometry], other, seed


def case_arguments(ap: argparse.ArgumentParser, *, geometry: str,
                   models: str = ",".join(sim_models.MODELS), draws: str | None = None) -> None:
    """:func:`quick_cases`' arguments on ``ap`` (``--data``, ``--geometry``, ``--models``,
    ``--seeds``), with their defaults, and ``--draws`` where ``draws`` is its default (the
    scripts that run these cases: this one, gross_rise.py, anchor_calls.py)."""
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--geometry", default=geometry)
    ap.add_argument("--models", default=models)
    ap.add_argument("--seeds", default="0,1,2")
    if draws is not None:
        ap.add_argument("--draws", choices=("shared", "scene"), default=draws,
                        help=SHARED_DRAWS_HELP)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(ap, geometry="gigapixel", draws="shared")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models, geometries=args.geometry, one_geometry=True)
    t0, results = time.perf_counter(), []
    for model, name, depth, geometry, other, seed in quick_cases(args.data, args.models,
                                                                 args.geometry, args.seeds):
        r = one(depth, geometry, model=model, seed=seed, other=other, name=name,
                draws=args.draws)
        results.append({"scene": name, "model": model, "seed": seed, **r})
        print(f"[{time.perf_counter() - t0:6.0f} s] {model} {name} seed {seed}: "
              + ", ".join(f"{k} x{r[k]['nrmse'] / r['clean']['nrmse']:.3f}"
                          for k in ("all", "coarse", "levels", "tiles")),
              file=sys.stderr, flush=True)
    print("\n".join(summary(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
