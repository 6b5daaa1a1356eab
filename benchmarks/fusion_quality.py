"""Fusion quality against dense ground truth, over a family of simulated models and seeds.

Scenes: the first ``--scenes`` scenes of ``../shared/data`` (Middlebury 2014 quarter, each
ground truth once, Middlebury 2006 half, the Kootenay drone ortho's canopy height),
procedurally generated aerial scenes and a periodic texture (``scenes.py``). A simulated
model's calls and the texture it sees are drawn from the seed and the scene (``--draws
scene``, since the seventh session; ``--draws shared``: from the seed alone, every scene the
same draws, as before).

Models (``sim_models.py``): a family of simulated models, each with its own kind of error
(per-call power law, quadratic and wavy warps within a call, heavy blur as from a coarse
latent, texture copy, exactly consistent, and the model the fusion was tuned on). Each is
reported on its own table; :data:`sim_models.HELD_OUT` are kept out of tuning and reported
as a check; the held-out audit models (:data:`sim_models.AUDIT_MODELS`: clipped extremes, a
perspective bowl, disparity taken as depth, blobs given up, 8-bit output, haloed edges) run
only when named in ``--models``. Every figure is the mean and the worst over the seeds
(``--seeds``, at least 3 for the record).

Methods, all from the same tile predictions:

1. ``coarse``: the coarse prediction alone, upsampled (bilinear);
2. ``naive``: the tiles blended as predicted, no alignment;
3. ``align-to-coarse``: **tiledepth's own engine with the overlap terms removed** (every
   pair statistic dropped before the solve, at every pyramid level): each tile fitted to the
   coarse map alone with the engine's cells, blur matching, value maps and robust step
   (PatchFusion-style coarse guidance done as well as tiledepth does it);
4. ``tiledepth``: the engine's fusion with its defaults, and variants (``--variant``);
5. ``oracle``: each tile fitted to the ground truth in the value-map family the default
   resolved to (bilinear or affine), then blended: the best any per-tile map of that family
   can do (``oracle-affine`` or ``oracle-bilinear``: the other family's).

Variants run the engine on the same simulated calls as the default (a model's errors depend
only on the seed, the call and its pixels); the pseudo-option ``pairs=false`` makes a
variant an align-to-coarse one (``--variant a2c-aff:alignment=affine,pairs=false``), so both
map families can be compared with their own baseline and bound.

Geometries: ``quarter`` (tiles of about a quarter of the image's long side, the coarse map at
the tile size), ``gigapixel`` (64 px tiles and a 64 px coarse map on procedural scenes of
``--size`` px; ``--quick``: 32 px on 640 px) and ``custom:TILE:COARSE`` (tiles of TILE px and a
coarse map of COARSE px long side on every scene chosen: e.g. ``custom:256:120`` puts 24 anchor
pixels across a tile of a 1280 px scene; :func:`anchor_across` says how many each scene's tiles
and pyramid levels get, as :func:`tiledepth.fusion.resolve_alignment` counts them).

Metrics (``tiledepth.metrics``, after least-squares scale and shift in depth space, over valid
ground truth): NRMSE (RMSE over the ground truth's 2-98 % range), AbsRel, the seam ratio
(gradient error in overlap bands over that in tile interiors) and the **edge jump**
(:func:`edge_jump`: the RMS of the fused map's jump across the tiles' edge lines minus the
truth's jump there, over the same across every other line: 1 where tile edges are invisible;
a lost feathering makes it grow).

    python benchmarks/fusion_quality.py [--data DIR] [--geometry quarter,gigapixel,custom:T:C]
        [--models current,power,...] [--seeds 0,1,2] [--scenes 6] [--procedural 1]
        [--size 1280] [--gross 0.1] [--gross-on tiles,coarse,levels] [--json out.json]
        [--quick] [--exact-anchor] [--draws scene|shared]
        [--variant cw1:coarse_weight=1.0 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_models  # noqa: E402
from scenes import (  # noqa: E402
    aerial_scene,
    benchmark_scenes,
    custom_geometry,
    default_data,
    fill_nearest,
    periodic_scene,
)

from tiledepth import fusion, metrics  # noqa: E402
from tiledepth.engine import fuse  # noqa: E402
from tiledepth.fusion.maps import AffineField  # noqa: E402
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels  # noqa: E402
from tiledepth.options import make_options  # noqa: E402
from tiledepth.read import coarse_shape  # noqa: E402
from tiledepth.readers import ArrayReader  # noqa: E402
from tiledepth.scratch import MemoryStore  # noqa: E402
from tiledepth.tiling import overlap_pixels, tile_grid  # noqa: E402
from tiledepth.write import ArraySink  # noqa: E402

#: tiledepth variants run besides the default (options), in every evaluation.
VARIANTS = {
    "not robust": {"robust": False},
    "affine": {"alignment": "affine"},
}


# --------------------------------------------------------------------------- methods


@contextlib.contextmanager
def overlap_terms_removed():
    """The engine's solve without its overlap terms (pair statistics), at every level."""
    original = fusion.solve_and_fill

    def alone(tiles, pairs, **kwargs):
        return original(tiles, [], **kwargs)

    fusion.solve_and_fill = alone
    try:
        yield
    finally:
        fusion.solve_and_fill = original


def run_engine(image, model, geometry: dict, *, pairs: bool = True,
               **options) -> tuple[np.ndarray, dict]:
    """The engine's fusion of ``image`` (in memory); ``pairs=False``: align-to-coarse."""
    opts = make_options(model=model, tile_size=geometry["tile_size"], overlap=0.25,
                        coarse_size=geometry["coarse_size"], workers=0, **options)
    reader = ArrayReader(image)
    sink = ArraySink(reader.height, reader.width)
    with overlap_terms_removed() if not pairs else contextlib.nullcontext():
        result = fuse(reader, sink, model, opts, MemoryStore())
    return sink.array, result.report


def reduced_shape(shape: tuple[int, int], side: int) -> tuple[int, int]:
    """The shape of a pyramid level whose long side is ``side`` (as tiledepth.readers.reduced)."""
    return coarse_shape(*shape, side)


def blend_maps(shape, tiles, preds, maps, ramp) -> np.ndarray:
    """Blend tiles with given per-tile value maps (Affine1D or AffineField) over the image."""
    parts = (fusion.BlendPart(t, preds[t.id], np.ones(t.shape, bool),
                              *maps[t.id].fields(t.shape)) for t in tiles)
    return fusion.blend_window(Window(0, 0, shape[1], shape[0]), parts, ramp=ramp)


def fit_map(pred: np.ndarray, target: np.ndarray, ok: np.ndarray, alignment: str):
    """The least-squares value map of ``alignment``'s family from ``pred`` to ``target``."""
    if ok.sum() < 16:
        return fusion.Affine1D(0.0, float(np.nanmean(target)))
    p, y = pred[ok].astype(np.float64), target[ok].astype(np.float64)
    if alignment == "affine":
        return fusion.Affine1D(*metrics.fit_scale_shift(p, y))
    u = np.linspace(0, 1, pred.shape[0])[:, None] * np.ones(pred.shape)
    v = np.linspace(0, 1, pred.shape[1])[None, :] * np.ones(pred.shape)
    u, v = u[ok], v[ok]
    phi = np.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], axis=1)
    a = np.concatenate([phi * p[:, None], phi], axis=1)
    x = np.linalg.lstsq(a, y, rcond=None)[0]
    return AffineField(tuple(map(float, x[:4])), tuple(map(float, x[4:])))


def fit_each(tiles, preds, target, valid, alignment: str) -> dict:
    """Each tile's own value map (``alignment``) fitted to ``target`` on valid pixels."""
    return {t.id: fit_map(preds[t.id], target[t.row_slice, t.col_slice],
                          valid[t.row_slice, t.col_slice], alignment) for t in tiles}


def edge_jump(pred: np.ndarray, gt: np.ndarray, tiles, *, mask: np.ndarray) -> float:
    """RMS of (fused jump - true jump) across tile-edge lines over the same across all others.

    ``pred`` is aligned to ``gt`` first (scale and shift). A jump across a line between
    columns ``c - 1`` and ``c`` is ``a[:, c] - a[:, c - 1]``; the tile-edge lines are the
    tiles' inner window edges (where a tile's weight starts). Feathered tiles leave no step
    there (about 1); blending without feathering leaves one at every edge (much more).
    """
    a = metrics.align_prediction(pred, gt, mask=mask)[0]
    err_c = np.diff(a, axis=1) - np.diff(gt, axis=1)  # line c between c-1 and c: index c-1
    err_r = np.diff(a, axis=0) - np.diff(gt, axis=0)
    ok_c = mask[:, 1:] & mask[:, :-1] & np.isfinite(err_c)
    ok_r = mask[1:, :] & mask[:-1, :] & np.isfinite(err_r)
    h, w = gt.shape
    cols = {int(t.window.col_off) for t in tiles} | {int(t.window.col_off + t.window.width)
                                                     for t in tiles}
    rows = {int(t.window.row_off) for t in tiles} | {int(t.window.row_off + t.window.height)
                                                     for t in tiles}
    cols = np.array(sorted(c - 1 for c in cols if 0 < c < w), int)
    rows = np.array(sorted(r - 1 for r in rows if 0 < r < h), int)
    on_c, on_r = np.zeros(w - 1, bool), np.zeros(h - 1, bool)
    on_c[cols], on_r[rows] = True, True
    edge = np.concatenate([err_c[:, on_c][ok_c[:, on_c]], err_r[on_r][ok_r[on_r]]])
    rest = np.concatenate([err_c[:, ~on_c][ok_c[:, ~on_c]], err_r[~on_r][ok_r[~on_r]]])
    if edge.size == 0 or rest.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean(edge ** 2)) / max(np.sqrt(np.mean(rest ** 2)), 1e-12))


#: ``--draws`` of the scripts that draw from the seed alone by default, as they always did
#: (``gross_stages.py``, ``gross_errors.py``, ``level_agreement.py``, ``overlap_stages.py``):
#: ``scene`` draws as this script does by default, to reproduce its figures.
SHARED_DRAWS_HELP = ("the simulated calls' and textures' draws: per seed only, shared by every "
                     "scene (default, as this script always drew them), or per scene and seed "
                     "(as fusion_quality.py draws them by default since the seventh session)")


def simulated_input(name: str, depth: np.ndarray, seed: int,
                    draws: str = "scene") -> tuple[np.ndarray, int]:
    """The image a simulated model sees of ``depth`` at benchmark ``seed`` (3, as
    :func:`sim_models.encode` makes it), and the seed its calls are drawn from: the seed and
    the scene's name (``draws='scene'``, :func:`sim_models.scene_seed`) or the seed alone
    (``'shared'``)."""
    drawn = sim_models.scene_seed(seed, name) if draws == "scene" else seed
    return sim_models.encode(fill_nearest(depth), sim_models.texture_for(depth.shape,
                                                                         drawn)), drawn


def evaluate(name: str, depth: np.ndarray, geometry: dict, *, model: str, seed: int,
             gross: float = 0.0, variants: dict = VARIANTS, other=None,
             exact_anchor: bool = False, gross_on=sim_models.GROSS_PARTS,
             draws: str = "scene") -> dict:
    """Every method on one scene, one model, one seed: {method: metrics} and the details.

    ``draws``: ``'scene'`` draws the simulated calls and the texture from the seed and the
    scene's name (:func:`sim_models.scene_seed`), ``'shared'`` from the seed alone (every
    scene of a seed the same draws: the figures before the seventh session).
    """
    shape = depth.shape
    valid = np.isfinite(depth)
    image, seed_of_draws = simulated_input(name, depth, seed, draws)
    size = geometry["tile_size"]
    grid = tile_grid(*shape, size, 0.25)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(size, 0.25)
    levels = tuple(len([t for row in tile_grid(*reduced_shape(shape, side), size,
                                               level_overlap(0.25))
                        for t in row])
                   for side in pyramid_levels(max(shape), geometry["coarse_size"]))

    def sim(pyramid: bool = True) -> sim_models.SimModel:
        # the same model again: its errors depend only on the seed, call and pixels
        return sim_models.SimModel(model, seed_of_draws, tiles=len(tiles), gross=gross,
                                   levels=levels if pyramid else (), other=other,
                                   exact_anchor=exact_anchor, gross_on=gross_on)

    def score(pred: np.ndarray) -> dict:
        m = metrics.depth_metrics(pred, depth, mask=valid)
        return {"nrmse": m.nrmse, "abs_rel": m.abs_rel,
                "seam": metrics.seam_ratio(pred, depth, tiles, mask=valid),
                "edge": edge_jump(pred, depth, tiles, mask=valid)}

    rows: dict[str, dict] = {}
    m0 = sim()
    t0 = time.perf_counter()
    fused, report = run_engine(image, m0, geometry)
    seconds = time.perf_counter() - t0
    preds = dict(m0.preds)  # the full-resolution tiles' (pyramid levels come first)
    anchor = m0.anchor()  # the coarse calls' (anchor_calls)
    coarse = fusion.fill_invalid(anchor, np.ones(anchor.shape, bool))
    rows["coarse"] = score(fusion.upsample_window(coarse, shape, Window(0, 0, *shape[::-1])))
    rows["naive"] = score(blend_maps(shape, tiles, preds,
                                     {t.id: fusion.Affine1D(1.0, 0.0) for t in tiles}, ramp))
    rows["align-to-coarse"] = score(run_engine(image, sim(), geometry, pairs=False)[0])
    rows["tiledepth"] = score(fused)
    for label, options in variants.items():
        options = dict(options)
        pairs = options.pop("pairs", True)  # pairs=false: that variant's align-to-coarse
        rows[label] = score(run_engine(image, sim(options.get("pyramid", True)), geometry,
                                       pairs=pairs, **options)[0])
    alignment = report["alignment"]
    rows["oracle"] = score(blend_maps(shape, tiles, preds,
                                      fit_each(tiles, preds, depth, valid, alignment), ramp))
    family = "bilinear" if alignment == "affine" else "affine"  # the other family's bound
    rows[f"oracle-{family}"] = score(blend_maps(
        shape, tiles, preds, fit_each(tiles, preds, depth, valid, family), ramp))
    flagged = {row["id"] for row in report["flagged"]}
    wrong = {k for k, why in m0.corrupted.items() if why == "wrong"}
    return {"scene": name, "model": model, "seed": seed, "shape": list(shape),
            "tiles": len(tiles), "seconds": seconds, "alignment": alignment,
            "across": anchor_across(shape, geometry),
            "methods": rows, "consistency": report["consistency"],
            "corrupted": len(m0.corrupted), "level_corrupted": m0.level_corrupted,
            "flagged": len(flagged), "flagged_corrupted": len(flagged & set(m0.corrupted)),
            "wrong_flagged": len(flagged & wrong), "wrong": len(wrong)}


# --------------------------------------------------------------------------- driver


def anchor_across(shape: tuple[int, int], geometry: dict) -> list[dict]:
    """Anchor pixels across a tile at each stage the engine fuses, coarsest first.

    One entry per pyramid level (its long side, its anchor's) and a last one for the
    full-resolution tiles: ``across = tile_size * anchor_side / side``, the count
    :func:`tiledepth.fusion.resolve_alignment` compares with ``BILINEAR_MIN_ANCHOR_PIXELS``.

    >>> [round(s["across"], 1) for s in anchor_across((1280, 1280), {"tile_size": 64,
    ...                                                              "coarse_size": 64})]
    [16.0, 12.8]
    """
    tile = geometry["tile_size"]
    anchor = max(coarse_shape(*shape, geometry["coarse_size"]))
    out = []
    for side in [*pyramid_levels(max(shape), anchor), max(shape)]:
        out.append({"side": side, "anchor": anchor, "across": tile * anchor / side})
        anchor = side
    return out


def geometries(long_side: int, which: list[str], *, quick: bool = False) -> dict[str, dict]:
    out = {name: custom_geometry(name) for name in which if name.startswith("custom")}
    if "quarter" in which:
        tile = max(32, int(round(long_side / 4 / 16)) * 16)
        out["quarter"] = {"tile_size": tile, "coarse_size": tile}
    if "gigapixel" in which:
        side = 32 if quick else 64
        if long_side >= 20 * side:
            out["gigapixel"] = {"tile_size": side, "coarse_size": side}
    return out


def over_seeds(results: list[dict], method: str, key: str) -> dict[str, tuple[float, float]]:
    """{scene: (mean, worst)} of ``method``'s ``key`` over the seeds."""
    by: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r["scene"], []).append(r["methods"][method][key])
    return {s: (float(np.mean(v)), float(np.max(v))) for s, v in by.items()}


def seed_means(results: list[dict], method: str, key: str) -> list[float]:
    """The mean over scenes of ``method``'s ``key``, one per seed."""
    by: dict[int, list[float]] = {}
    for r in results:
        by.setdefault(r["seed"], []).append(r["methods"][method][key])
    return [float(np.mean(v)) for _, v in sorted(by.items())]


def table(results: list[dict], methods: list[str], key: str) -> str:
    """Scenes by methods, 'mean / worst over seeds'; the last row: the scenes' mean."""
    lines = ["| scene | " + " | ".join(methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    cells = {m: over_seeds(results, m, key) for m in methods}
    for scene in cells[methods[0]]:
        lines.append(f"| {scene} | " + " | ".join(
            f"{cells[m][scene][0]:.4f} / {cells[m][scene][1]:.4f}" for m in methods) + " |")
    mean = {m: seed_means(results, m, key) for m in methods}
    lines.append("| **mean** | " + " | ".join(
        f"**{np.mean(mean[m]):.4f} / {np.max(mean[m]):.4f}**" for m in methods) + " |")
    return "\n".join(lines)


def check_targets(results: list[dict]) -> list[str]:
    """The issue's targets for one model, each as a line ending in 'met' or 'NOT met'."""
    out = []
    td = np.array(seed_means(results, "tiledepth", "nrmse"))
    ac = np.array(seed_means(results, "align-to-coarse", "nrmse"))
    orc = np.array(seed_means(results, "oracle", "nrmse"))
    rc, ro = td / ac, td / orc
    out.append(f"mean NRMSE tiledepth / align-to-coarse = {rc.mean():.3f} (worst seed "
               f"{rc.max():.3f}; <= 0.7): {'met' if rc.max() <= 0.7 else 'NOT met'}")
    out.append(f"mean NRMSE tiledepth / oracle = {ro.mean():.3f} (worst seed {ro.max():.3f}; "
               f"<= 1.0): {'met' if ro.max() <= 1.0 else 'NOT met'}")
    worse = sorted({f"{r['scene']}@{r['seed']}" for r in results
                    if r["methods"]["tiledepth"]["nrmse"]
                    > r["methods"]["align-to-coarse"]["nrmse"]})
    out.append(f"scene/seeds worse than align-to-coarse: {', '.join(worse) or 'none'}: "
               f"{'met' if not worse else 'NOT met'}")
    edges = [r["methods"]["tiledepth"]["edge"] / r["methods"]["oracle"]["edge"]
             for r in results]
    out.append(f"edge jump / oracle's: worst {max(edges):.3f} (<= 1.05): "
               f"{'met' if max(edges) <= 1.05 else 'NOT met'}")
    flags = sum(r["flagged"] for r in results)
    out.append(f"clean tiles flagged: {flags} of {sum(r['tiles'] for r in results)}")
    if "not robust" in results[0]["methods"]:
        harm = max(r["methods"]["tiledepth"]["nrmse"] / r["methods"]["not robust"]["nrmse"]
                   for r in results)
        out.append(f"robust / not robust NRMSE: worst {harm:.3f}"
                   + (f" (consistent model: <= 1.01: {'met' if harm <= 1.01 else 'NOT met'})"
                      if results[0]["model"] == "consistent" else ""))
    return out


def _value(text: str):
    """An option value from the command line: a number, true/false, or the text."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def parse_variant(spec: str) -> tuple[str, dict]:
    """``--variant NAME:OPT=V[,OPT=V]`` as (name, options), the options checked as the engine
    checks them (``pairs`` is the benchmark's own: false is align-to-coarse).

    Raises ValueError naming the spec: not that form, or an option the engine refuses
    (unknown, or a bad value).

    >>> parse_variant("a2c-aff:alignment=affine,pairs=false")
    ('a2c-aff', {'alignment': 'affine', 'pairs': False})
    """
    name, _, text = spec.partition(":")
    pairs = [o.split("=") for o in text.split(",")] if text else []
    if not name or not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise ValueError(f"--variant {spec}: expected NAME:OPT=V[,OPT=V], e.g. "
                         "cw1:coarse_weight=1.0")
    options = {k: _value(v) for k, v in pairs}
    if not isinstance(options.get("pairs", True), bool):
        raise ValueError(f"--variant {spec}: pairs must be true or false")
    try:
        make_options(**{k: v for k, v in options.items() if k != "pairs"})
    except ValueError as exc:  # OptionError: an unknown option, a bad value
        raise ValueError(f"--variant {spec}: {exc}") from exc
    return name, options


#: The scene options without ``--quick`` and with it; an option given explicitly wins over both.
SCENE_DEFAULTS = {"scenes": 6, "procedural": 1, "size": 1280, "periodic": True}
QUICK = {"scenes": 1, "procedural": 1, "size": 640, "periodic": False}


def fill_scene_options(args: argparse.Namespace) -> None:
    """Set the scene options the command line left unset (None): ``--quick``'s, else the
    defaults (a script without an option, such as ``--periodic``, is left without it).

    Examples
    --------
    >>> args = argparse.Namespace(quick=True, scenes=None, procedural=2, size=None)
    >>> fill_scene_options(args); (args.scenes, args.procedural, args.size)
    (1, 2, 640)
    """
    for name, default in SCENE_DEFAULTS.items():
        if getattr(args, name, default) is None:
            setattr(args, name, (QUICK if args.quick else SCENE_DEFAULTS)[name])


def gross_summary(gross: float, parts: list[str]) -> str:
    """What the robustness run's gross errors hit (``--gross``, ``--gross-on``), in words.

    Examples
    --------
    >>> gross_summary(0.1, ["tiles", "coarse", "levels"])
    "10% grossly wrong tiles (and levels' calls, and a patch of the coarse map)"
    >>> gross_summary(0.1, ["tiles"])
    '10% grossly wrong tiles'
    >>> gross_summary(0.2, ["coarse", "levels"])
    "20% grossly wrong levels' calls (and a patch of the coarse map)"
    >>> gross_summary(0.1, ["coarse"])
    'a grossly wrong patch of the coarse map'
    """
    words = {"tiles": "tiles", "levels": "levels' calls", "coarse": "a patch of the coarse map"}
    named = [words[part] for part in ("tiles", "levels", "coarse") if part in parts]
    # the first part named carries the fraction (the coarse map's patch has none)
    head = ("a grossly wrong patch of the coarse map" if named[0] == words["coarse"]
            else f"{gross:.0%} grossly wrong {named[0]}")
    return head + (f" ({', '.join('and ' + n for n in named[1:])})" if named[1:] else "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="the shared data folder (default: TILEDEPTH_DATA, else ../shared/data "
                         "above the repository)")
    ap.add_argument("--geometry", default="quarter,gigapixel",
                    help="comma-separated: quarter, gigapixel, custom:TILE:COARSE (px)")
    ap.add_argument("--models", default=",".join(sim_models.MODELS),
                    help="comma-separated; default the family (sim_models.MODELS); the "
                         "held-out audit models (sim_models.AUDIT_MODELS) by name: "
                         + ",".join(sim_models.AUDIT_MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    # the scene options default to None: --quick fills only those not given
    ap.add_argument("--scenes", type=int, default=None,
                    help="first N shared scenes (0: all; default 6, --quick 1)")
    ap.add_argument("--procedural", type=int, default=None,
                    help="procedural scenes (default 1)")
    ap.add_argument("--size", type=int, default=None,
                    help="procedural scenes' side (default 1280, --quick 640)")
    ap.add_argument("--periodic", action=argparse.BooleanOptionalAction, default=None,
                    help="the periodic texture scene (600 x 800 px; default on, --quick off)")
    ap.add_argument("--gross", type=float, default=0.1,
                    help="fraction of grossly wrong tiles in the robustness run (0: skip it)")
    ap.add_argument("--gross-on", default=",".join(sim_models.GROSS_PARTS),
                    help="the parts gross errors hit: tiles (the full-resolution tiles), "
                         "coarse (a patch of the coarse map), levels (the pyramid levels' "
                         "calls); default all three")
    ap.add_argument("--quick", action="store_true",
                    help="iteration: 1 shared scene, 1 procedural of 640 px, no periodic "
                         "(where --scenes, --procedural, --size, --periodic are not given)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:OPT=V[,OPT=V]",
                    help="an extra tiledepth variant, e.g. cw1:coarse_weight=1.0 (repeatable)")
    ap.add_argument("--no-variants", action="store_true", help="no variants (faster)")
    ap.add_argument("--draws", choices=("scene", "shared"), default="scene",
                    help="the simulated calls' and textures' draws: per scene and seed "
                         "(default), or per seed only, shared by every scene (the figures "
                         "before the seventh session)")
    ap.add_argument("--exact-anchor", action="store_true",
                    help="the coarse call returns the true depth (as a reference raster would): "
                         "the fusion's own error, without the anchor's")
    args = ap.parse_args(argv)
    fill_scene_options(args)
    data = args.data if args.data is not None else default_data()
    sim_models.check_names(ap, models=args.models, geometries=args.geometry)
    which = args.geometry.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    variants = {} if args.no_variants else dict(VARIANTS)
    for spec in args.variant:
        try:
            name, options = parse_variant(spec)
        except ValueError as exc:  # before any scene is loaded
            ap.error(str(exc))
        variants[name] = options

    scenes = benchmark_scenes(data, scenes=args.scenes, procedural=args.procedural,
                              size=args.size)
    if args.periodic:
        scenes.append(("periodic", periodic_scene(600, 800, 0)))

    t0 = time.perf_counter()
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "geometries": {}}
    for geo in which:
        out["geometries"][geo] = {}
        for model in models:
            results, robust = [], []
            for name, depth in scenes:
                g = geometries(max(depth.shape), [geo], quick=args.quick)
                if geo not in g:
                    continue
                other = aerial_scene(max(depth.shape), 7) if args.gross > 0 else None
                for seed in seeds:
                    r = evaluate(name, depth, g[geo], model=model, seed=seed,
                                 variants=variants, exact_anchor=args.exact_anchor,
                                 draws=args.draws)
                    results.append(r)
                    m = r["methods"]
                    across = "/".join(f"{s['across']:.1f}" for s in r["across"])
                    print(f"[{time.perf_counter() - t0:6.0f} s] {geo} {model} {name} seed "
                          f"{seed} ({across} anchor px across, {r['alignment']}): tiledepth "
                          f"{m['tiledepth']['nrmse']:.4f}, align-to-coarse "
                          f"{m['align-to-coarse']['nrmse']:.4f}, oracle "
                          f"{m['oracle']['nrmse']:.4f}, flagged {r['flagged']}",
                          file=sys.stderr)
                    if args.gross > 0:
                        bad = evaluate(name, depth, g[geo], model=model, seed=seed,
                                       gross=args.gross, other=other,
                                       gross_on=args.gross_on.split(","),
                                       variants={"not robust": {"robust": False}},
                                       exact_anchor=args.exact_anchor, draws=args.draws)
                        robust.append({
                            "scene": name, "seed": seed,
                            "clean": r["methods"]["tiledepth"]["nrmse"],
                            "gross": bad["methods"]["tiledepth"]["nrmse"],
                            "gross_not_robust": bad["methods"]["not robust"]["nrmse"],
                            "gross_align_to_coarse": bad["methods"]["align-to-coarse"]["nrmse"],
                            "corrupted": bad["corrupted"], "wrong": bad["wrong"],
                            "level_corrupted": bad["level_corrupted"],
                            "flagged": bad["flagged"],
                            "flagged_corrupted": bad["flagged_corrupted"],
                            "wrong_flagged": bad["wrong_flagged"]})
            if not results:
                continue
            methods = list(results[0]["methods"])
            held = " (held out of tuning)" if model in sim_models.HELD_OUT else ""
            print(f"\n## {geo}, model {model}{held}: NRMSE (mean / worst over seeds "
                  f"{args.seeds})\n\n{table(results, methods, 'nrmse')}")
            print(f"\n## {geo}, model {model}: edge jump\n\n{table(results, methods, 'edge')}")
            print(f"\n## {geo}, model {model}: targets\n")
            targets = check_targets(results)
            for line in targets:
                print(f"- {line}")
            if robust:
                rise = [r["gross"] / r["clean"] for r in robust]
                plain = [r["gross_not_robust"] / r["clean"] for r in robust]
                print(f"- with {gross_summary(args.gross, args.gross_on.split(','))}: NRMSE "
                      f"rises x{np.mean(rise):.3f} on average, "
                      f"at most x{max(rise):.3f} (<= 1.2: "
                      f"{'met' if max(rise) <= 1.2 else 'NOT met'}); without robust x"
                      f"{np.mean(plain):.3f}, at most x{max(plain):.3f}; flagged "
                      f"{sum(r['flagged_corrupted'] for r in robust)} of "
                      f"{sum(r['corrupted'] for r in robust)} corrupted tiles, "
                      f"{sum(r['flagged'] - r['flagged_corrupted'] for r in robust)} clean "
                      "tiles flagged")
            out["geometries"][geo][model] = {"results": results, "robust": robust,
                                             "targets": targets}
    print(f"\n{len(scenes)} scenes, {len(seeds)} seeds, {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
