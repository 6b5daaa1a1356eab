"""Where the overlap terms help or hurt: the joint solve against align-to-coarse, stage by stage.

On one procedural scene, one simulated model (``sim_models``) and some seeds, the engine runs
four ways: ``td`` (the default), ``a2c`` (every overlap term dropped, at every stage, as
``fusion_quality``'s align-to-coarse), ``lvl_only`` (overlap terms at the pyramid levels only)
and ``tiles_only`` (at the full-resolution tiles only). For each it prints the NRMSE of the
fused map, of each pyramid level (against the truth averaged to the level's size), and the
anchor blur and value maps (``a`` affine, ``b`` bilinear) each stage resolved to.
``--opt`` sets an option for the whole run, ``--lopt`` for the pyramid levels only
(BENCHMARKS.md, issue 17: "Why the joint solve lost on the full gigapixel scene").
``--draws``: the simulated calls and texture drawn from the seed alone (``shared``, the
default, as this script always drew them) or from the seed and the scene (``scene``, as
``fusion_quality.py`` draws them by default since the seventh session; the scene is its
``procedural/0``).

    python benchmarks/overlap_stages.py --size 1280 --models current,quadratic --seeds 0,1,2
        [--configs td,a2c,lvl_only,tiles_only] [--opt alignment=affine] [--lopt robust=false]
        [--draws shared|scene]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_quality as fq  # noqa: E402
import sim_models  # noqa: E402
from scenes import aerial_scene  # noqa: E402

from tiledepth import engine, fusion, metrics  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.options import make_options  # noqa: E402
from tiledepth.readers import ArrayReader  # noqa: E402
from tiledepth.scratch import MemoryStore  # noqa: E402
from tiledepth.tiling import tile_grid  # noqa: E402
from tiledepth.write import ArraySink  # noqa: E402

CONFIGS = {"td": {}, "a2c": {"level_pairs": False, "tile_pairs": False},
           "lvl_only": {"tile_pairs": False}, "tiles_only": {"level_pairs": False}}


def run(image, model, geometry: dict, *, level_pairs: bool = True, tile_pairs: bool = True,
        level_options: dict | None = None, **options):
    """The fused map, the pyramid levels, and (blur, alignment) of each stage."""
    opts = make_options(model=model, tile_size=geometry["tile_size"], overlap=0.25,
                        coarse_size=geometry["coarse_size"], workers=0, **options)
    reader = ArrayReader(image)
    sink = ArraySink(reader.height, reader.width)
    levels, stages, in_level = [], [], [False]
    fuse_level, solve_and_fill, fuse = engine._fuse_level, fusion.solve_and_fill, engine.fuse

    def solve(tiles, pairs, **kw):
        return solve_and_fill(tiles, pairs if (level_pairs if in_level[0] else tile_pairs)
                              else [], **kw)

    def level(reader_, model_, opts_, anchor, fit, call, **kw):
        in_level[0] = True
        try:
            out = fuse_level(reader_, model_, dataclasses.replace(opts_, **(level_options or {})),
                             anchor, fit, call, **kw)
        finally:
            in_level[0] = False
        levels.append(out.copy())
        return out

    def recorded(*args, **kwargs):
        result = fuse(*args, **kwargs)
        stages.append((result.report.get("anchor_blur"), result.report.get("alignment")))
        return result

    engine._fuse_level, fusion.solve_and_fill, engine.fuse = level, solve, recorded
    try:
        result = fuse(reader, sink, model, opts, MemoryStore())
    finally:
        engine._fuse_level, fusion.solve_and_fill, engine.fuse = fuse_level, solve_and_fill, fuse
    stages.append((result.report.get("anchor_blur"), result.report.get("alignment")))
    return sink.array, levels, stages


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1280, help="the procedural scene's side")
    ap.add_argument("--models", default="current,quadratic")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--opt", action="append", default=[], metavar="OPT=V")
    ap.add_argument("--lopt", action="append", default=[], metavar="OPT=V")
    ap.add_argument("--draws", choices=("shared", "scene"), default="shared",
                    help=fq.SHARED_DRAWS_HELP)
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models)
    side = 64 if args.size >= 1280 else 32  # fusion_quality's gigapixel geometry
    geometry = {"tile_size": side, "coarse_size": side}
    depth = aerial_scene(args.size, 0)
    scene = "procedural/0"  # its name in fusion_quality (scenes.benchmark_scenes): --draws scene
    tiles = sum(len(row) for row in tile_grid(*depth.shape, side, 0.25))
    levels = tuple(sum(len(row) for row in tile_grid(*fq.reduced_shape(depth.shape, s), side,
                                                      level_overlap(0.25)))
                   for s in pyramid_levels(max(depth.shape), side))
    options = {k: fq._value(v) for k, v in (o.split("=") for o in args.opt)}
    level_options = {k: fq._value(v) for k, v in (o.split("=") for o in args.lopt)}
    for name in args.models.split(","):
        for seed in map(int, args.seeds.split(",")):
            image, drawn = fq.simulated_input(scene, depth, seed, args.draws)
            line = []
            for config in args.configs.split(","):
                model = sim_models.SimModel(name, drawn, tiles=tiles, levels=levels)
                fused, maps, stages = run(image, model, geometry, level_options=level_options,
                                          **CONFIGS[config], **options)
                text = f"{config}={metrics.depth_metrics(fused, depth).nrmse:.4f}"
                for m in maps:
                    truth = fusion.area_average(depth[None], m.shape)[0]  # at the level's size
                    err = metrics.depth_metrics(m, truth).nrmse
                    text += f" L{max(m.shape)}={err:.4f}"
                text += " blur=" + "/".join(f"{b}{a[0]}" for b, a in stages)
                line.append(text)
            print(f"{name} s{seed}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    main()
