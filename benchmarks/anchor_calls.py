"""Each coarse call's own error, and the anchor's made of them (``--anchor-calls``).

For each model, scene and seed of the ``--quick`` cases (``gross_stages.quick_cases``: one
Middlebury scene and one procedural, 640 px), the engine runs clean with the default
``anchor_calls`` and the coarse calls it makes are recorded; each call's NRMSE against the
truth averaged over the coarse cells (cells wholly valid) is printed, then the anchor's
(:func:`tiledepth.fusion.anchor_of_calls`) and the fused map's. It tells a draw (the single
call the engine used to take was by chance the best, or the worst, of the three) from the
method (BENCHMARKS.md, "An anchor of three coarse calls").

    python benchmarks/anchor_calls.py --models clipped,vignette --geometry quarter --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gross_stages  # noqa: E402
import sim_models  # noqa: E402
from fusion_quality import run_engine, simulated_input  # noqa: E402

from tiledepth import fusion, metrics, stages  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402


def call_errors(model: str, name: str, depth: np.ndarray, geometry: dict, other: np.ndarray,
                seed: int) -> dict:
    """One scene-seed's coarse calls' NRMSE (``calls``), the anchor's and the fused map's."""
    seen: dict = {}
    combine = fusion.anchor_of_calls

    def recorded(calls, valid):
        seen["calls"] = [np.array(c) for c in calls]
        return combine(calls, valid)

    valid = np.isfinite(depth)
    image, drawn = simulated_input(name, depth, seed, "scene")
    n = sum(len(row) for row in tile_grid(*depth.shape, geometry["tile_size"], 0.25))
    sim = sim_models.SimModel(model, drawn, tiles=n, other=other)
    stages.fusion.anchor_of_calls = recorded
    try:
        fused, _ = run_engine(image, sim, geometry)
    finally:
        stages.fusion.anchor_of_calls = combine
    calls = seen["calls"]
    shape = calls[0].shape
    truth = fusion.area_average(np.nan_to_num(depth)[None], shape)[0]
    whole = fusion.area_average(valid[None].astype(np.float32), shape)[0] > 0.99

    def nrmse(a: np.ndarray) -> float:
        return float(metrics.depth_metrics(a, truth, mask=whole).nrmse)

    return {"calls": [nrmse(c) for c in calls],
            "anchor": nrmse(combine(calls, np.ones(shape, bool))),
            "fused": float(metrics.depth_metrics(fused, depth, mask=valid).nrmse)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gross_stages.case_arguments(ap, geometry="quarter",
                                models="clipped,vignette,disparity,current")
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models, geometries=args.geometry, one_geometry=True)
    for model, name, depth, geometry, other, seed in gross_stages.quick_cases(
            args.data, args.models, args.geometry, args.seeds):
        r = call_errors(model, name, depth, geometry, other, seed)
        print(f"{model} {name} seed {seed}: calls "
              f"{' '.join(f'{e:.4f}' for e in r['calls'])}, anchor {r['anchor']:.4f}, "
              f"fused {r['fused']:.4f}", flush=True)


if __name__ == "__main__":
    main()
