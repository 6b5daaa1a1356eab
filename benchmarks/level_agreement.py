"""How far a pyramid level's tiles are followed by their neighbours, clean and grossly wrong
(issue 17, BENCHMARKS.md "A level's tile its neighbours do not follow").

For each model, scene and seed (``--quick`` scenes, the gigapixel geometry), the engine's
default fusion runs clean and with 10 % of the level's calls grossly wrong
(``sim_models.SimModel(gross_on=("levels",))``), with the level's first judgement watched
(:func:`tiledepth.fusion.diagnosis._level_agreement`): per level tile, its pooled
correlation with its neighbours, and whether the rule flags it. Per model: the clean runs'
lowest agreement (the margin to ``UNLIKE_CORR``) and tiles flagged; the gross runs' 'wrong'
calls (another scene's content) flagged, and clean tiles flagged beside them. The simulated
calls and textures are drawn from the seed alone (``--draws shared``, the default, as this
script always drew them) or from the seed and the scene (``--draws scene``, as
``fusion_quality.py`` draws them by default since the seventh session).

    python benchmarks/level_agreement.py --models latent,power --seeds 0,1,2
        [--draws shared|scene]
"""

from __future__ import annotations

import argparse
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
from gross_stages import Watched  # noqa: E402
from scenes import aerial_scene, benchmark_scenes, default_data  # noqa: E402

from tiledepth.fusion import diagnosis  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402


def level_tiles(image, model: str, seed: int, geometry: dict, *, gross: float, other) -> list:
    """(tile id, first agreement, flagged, why the call was grossly wrong or None) per tile
    of the level's first judgement."""
    shape, size = image.shape[:2], geometry["tile_size"]
    levels = tuple(sum(len(row) for row in tile_grid(*reduced_shape(shape, side), size,
                                                     level_overlap(0.25)))
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))
    sim = Watched(model, seed, tiles=sum(len(r) for r in tile_grid(*shape, size, 0.25)),
                  gross=gross, levels=levels, other=other, gross_on=("levels",))
    seen: list = []
    real = diagnosis._level_agreement

    def watched(problem, per_tile, signs):
        out = real(problem, per_tile, signs)
        if not seen:
            first, agreement, among = out
            with np.errstate(invalid="ignore"):
                flagged = (agreement < diagnosis.UNLIKE_CORR) & (among >= diagnosis.UNLIKE_CORR)
            seen.extend(zip(problem.ids.tolist(), first.tolist(), flagged.tolist(),
                            strict=True))
        return out

    diagnosis._level_agreement = watched
    try:
        run_engine(image, sim, geometry)
    finally:
        diagnosis._level_agreement = real
    return [(i, a, f, sim.level_bad.get(i)) for i, a, f in seen]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--models", default=",".join(sim_models.MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--draws", choices=("shared", "scene"), default="shared",
                    help=SHARED_DRAWS_HELP)
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models)
    data = args.data if args.data is not None else default_data()
    scenes = benchmark_scenes(data, scenes=1, procedural=1, size=640)
    t0 = time.perf_counter()
    # the threshold above the table, not as a 7th header cell: the rows have 6 cells
    print(f"UNLIKE_CORR {diagnosis.UNLIKE_CORR}\n")
    print("| model | clean runs: level tiles | lowest agreement (2nd) | flagged | gross runs: "
          "'wrong' calls flagged | clean tiles flagged |")
    print("| --- |" + " --- |" * 5)
    for model in args.models.split(","):
        clean, gross = [], []
        for name, depth in scenes:
            g = geometries(max(depth.shape), ["gigapixel"], quick=True).get("gigapixel")
            if g is None:
                continue
            other = aerial_scene(max(depth.shape), 7)
            for seed in (int(s) for s in args.seeds.split(",")):
                # fusion_quality's draws: ``drawn`` is the seed the calls are drawn from
                image, drawn = simulated_input(name, depth, seed, args.draws)
                clean += level_tiles(image, model, drawn, g, gross=0.0, other=other)
                gross += level_tiles(image, model, drawn, g, gross=0.1, other=other)
        low = sorted(a for _, a, _, _ in clean if np.isfinite(a))
        wrong = [f for _, _, f, why in gross if why == "wrong"]
        print(f"| {model} | {len(clean)} | {low[0]:.3f} ({low[1]:.3f}) | "
              f"{sum(f for _, _, f, _ in clean)} | {sum(wrong)} of {len(wrong)} | "
              f"{sum(f for _, _, f, why in gross if why is None)} |", flush=True)
        print(f"[{time.perf_counter() - t0:6.0f} s] {model}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
