"""The gradient-domain fusion (``fusion='gradient'``): its cost on a large raster, and a figure.

``cost``: ``tiledepth.run`` with a zero-cost model (``cheap_models.zero_cost``), once with
``fusion='tiles'`` and once with ``fusion='gradient'``, each in its own child process (so
peak resident memory is its own), on the same tiled RGB GeoTIFF (``large_raster.make_raster``,
or ``--input``). With a zero-cost model the whole run is the fusion: wall time, the engine's
step times (``RunResult.seconds``), peak RSS, and the ratio gradient / tiles. The machine may
be shared: compare the two within one run.

``figure``: a hard scene (Middlebury 2014 Adirondack, else a procedural one) under the
``quadratic`` simulated model (a bowl or saddle across every call) at the quarter geometry,
fused with ``tiles`` and ``gradient``, against the model's own coarse map and against an
exact anchor (as a reference raster would be): a PNG of the anchor and of each fusion's
absolute error (after the protocol's scale and shift), one colour scale for all.

    python benchmarks/gradient_fusion.py cost [--size 10000] [--input rgb.tif] [--workdir DIR]
        [--no-pyramid]
    python benchmarks/gradient_fusion.py figure [--out docs/img/gradient-fusion.png]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FUSIONS = ("tiles", "gradient")


# --------------------------------------------------------------------------- cost


def child(fusion: str, src: str, out: str, options: str = "{}") -> None:
    """One run in this (child) process (``options``: more run options, as JSON); JSON on
    stdout."""
    sys.path.insert(0, str(HERE))
    from cheap_models import zero_cost

    import tiledepth

    t0 = time.perf_counter()
    result = tiledepth.run(src, out, model=zero_cost, overwrite=True, fusion=fusion,
                           **json.loads(options))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "seconds": result.seconds, "peak_rss_mib": peak}))


def cost(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    from large_raster import make_raster

    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.input
    if src is None:
        src = args.workdir / f"rgb{args.size}.tif"
        if not src.exists():
            make_raster(src, args.size)
    out: dict = {"input": str(src)}
    for fusion in FUSIONS:
        target = args.workdir / f"out-{fusion}.tif"
        proc = subprocess.run([sys.executable, __file__, "child", fusion, str(src), str(target),
                               json.dumps(args.options)], check=True, capture_output=True,
                              text=True)
        out[fusion] = json.loads(proc.stdout.strip().splitlines()[-1])
        target.unlink(missing_ok=True)
        r = out[fusion]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
        print(f"{fusion:8s} {r['wall']:7.1f} s  peak RSS {r['peak_rss_mib']:5.0f} MiB  ({steps})",
              file=sys.stderr)
    ratio = out["gradient"]["wall"] / out["tiles"]["wall"]
    print(f"gradient / tiles wall time: {ratio:.3f}", file=sys.stderr)
    out["ratio"] = ratio
    return out


# --------------------------------------------------------------------------- figure


def figure(args: argparse.Namespace) -> dict:
    from PIL import Image, ImageDraw

    sys.path.insert(0, str(HERE))
    import fusion_quality as fq
    import sim_models
    from scenes import aerial_scene, default_data, fill_nearest, shared_scenes

    from tiledepth import fusion, metrics
    from tiledepth.preview import COLORMAPS, colorize
    from tiledepth.tiling import tile_grid

    data = default_data()
    scene = next(iter(shared_scenes(data)), None) if data is not None and data.is_dir() \
        else None
    name, depth = scene if scene is not None else ("procedural/0", aerial_scene(640, 0))
    valid = np.isfinite(depth)
    geometry = fq.geometries(max(depth.shape), ["quarter"], quick=True)["quarter"]
    image = sim_models.encode(fill_nearest(depth), sim_models.texture_for(depth.shape, 0))
    tiles = [t for row in tile_grid(*depth.shape, geometry["tile_size"], 0.25) for t in row]
    panels, figures = [], {}
    for exact in (False, True):
        row = []
        for method in FUSIONS:
            model = sim_models.SimModel(args.model, args.seed, tiles=len(tiles),
                                        exact_anchor=exact)
            options = {"fusion": method, **({"anchor_blur": 0.0} if exact else {})}
            fused, _ = fq.run_engine(image, model, geometry, **options)
            aligned = metrics.align_prediction(fused, depth, mask=valid)[0]
            scale = np.nanpercentile(depth[valid], 98) - np.nanpercentile(depth[valid], 2)
            err = np.where(valid, np.abs(aligned - depth) / scale, np.nan)
            nrmse = metrics.depth_metrics(fused, depth, mask=valid).nrmse
            row.append((f"{method}: NRMSE {nrmse:.4f}", err))
            figures[f"{'exact' if exact else 'model'} anchor, {method}"] = nrmse
        anchor = model.anchor()  # the coarse calls' (anchor_calls)
        up = fusion.upsample_window(fusion.fill_invalid(anchor, np.isfinite(anchor)),
                                    depth.shape, fq.Window(0, 0, depth.shape[1], depth.shape[0]))
        label = "exact anchor (a reference)" if exact else f"anchor: the {args.model} model's"
        panels.append([(label, colorize(up)), *[(t, colorize(e, limits=(0.0, args.limit),
                                                             table=COLORMAPS["magma"]))
                                                for t, e in row]])
    k = max(1, math.ceil(max(depth.shape) / args.panel))  # panels at most --panel px
    h, w = -(-depth.shape[0] // k), -(-depth.shape[1] // k)
    pad, text = 6, 16
    canvas = Image.new("RGB", (3 * w + 4 * pad, 2 * (h + text) + 3 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(panels):
        for j, (title, rgba) in enumerate(row):
            x, y = pad + j * (w + pad), pad + i * (h + text + pad)
            tile = Image.fromarray(np.moveaxis(rgba[:3], 0, -1)).resize((w, h), Image.BOX)
            canvas.paste(tile, (x, y + text))
            draw.text((x, y), title, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(255).save(args.out, optimize=True)
    print(f"{name}, model {args.model}, seed {args.seed}: {figures} -> {args.out} "
          f"(error colour scale 0 to {args.limit} of the 2-98 % range)", file=sys.stderr)
    return figures


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cost", help="wall time of tiles and gradient on a large raster")
    c.add_argument("--size", type=int, default=int(round(math.sqrt(100e6))),
                   help="side of the synthetic raster (default 10000: 100 MP)")
    c.add_argument("--input", type=Path, help="an RGB GeoTIFF instead")
    c.add_argument("--workdir", type=Path, default=Path("/tmp/tiledepth-gradient"))
    c.add_argument("--no-pyramid", dest="options", action="store_const",
                   const={"pyramid": False}, default={},
                   help="without the pyramid: the correction then runs on the tiles (against "
                        "the one-call coarse map) instead of at the level")
    f = sub.add_parser("figure", help="before/after PNG of a hard scene")
    f.add_argument("--out", type=Path, default=HERE.parent / "docs/img/gradient-fusion.png")
    f.add_argument("--model", default="quadratic")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--limit", type=float, default=0.08, help="error at the colour scale's top")
    f.add_argument("--panel", type=int, default=400, help="longest side of a panel (px)")
    k = sub.add_parser("child")
    k.add_argument("fusion")
    k.add_argument("src")
    k.add_argument("out")
    k.add_argument("options", nargs="?", default="{}")
    args = ap.parse_args(argv)
    if args.command == "child":
        child(args.fusion, args.src, args.out, args.options)
        return None
    return cost(args) if args.command == "cost" else figure(args)


if __name__ == "__main__":
    main()
