"""Offline prototype: per-tile tone curves (``y = a p^2 + b p + c``) against one scale and
shift, in one joint solve of the overlaps and the anchor.

Per-tile affine maps cannot undo a per-call nonlinearity (a power law): the affine oracle is
no bound for it (BENCHMARKS.md, issue 17). This measures, from the engine's own tile
predictions, what a tone curve per tile would give, before any engine work:

- ``oracle-aff``, ``oracle-tone``: each tile fitted to the ground truth, then blended;
- ``joint-aff``, ``joint-tone``: one least-squares solve over every tile's map, on pixel sums
  (every second pixel): each overlap's aligned tiles agree (weight 1 per pixel), each tile
  agrees with the bilinearly upsampled coarse map (``--weight`` per pixel, the engine's
  ``coarse_weight``), and a ridge ``--ridge`` pulls each curvature to 0. Both families the
  same crude machinery (no blur matching, cells or robust step: the engine's own
  ``tiledepth`` and ``align-to-coarse`` figures are printed beside them), so their ratio is
  the family's gain. In ``joint-tone`` the anchor does not see the curvature (the tile's
  ``q^2`` is its mean there): the overlaps alone set it;
- ``overlap residual``: the joint solve's RMS overlap residual, tone over affine: how much of
  the tiles' disagreement a tone curve explains, from the predictions alone (no truth), for
  choosing the family per run;
- ``joint-chosen``: per scene and seed, ``joint-tone`` where that ratio is below ``--choose``
  (0.75), else ``joint-aff``: the family chosen from the predictions, as a run would;
- ``engine-aff``, ``engine-tone``, ``engine-chosen`` (with ``--engine``, affine geometries
  only): the same on the engine's own statistics of its last solve (the anchor's through its
  cells and blur, its priors, weights and robust weights), the curvature added by the
  overlaps alone (the anchor blind to it: no new anchor statistics): ``engine-aff`` is the
  engine's solve again (without its fill of flagged tiles); ``engine-guarded`` chooses tone
  curves only where the anchor's residual does not grow too; ``anchor``: that residual, tone
  over affine; ``shared``: the tiles' curvatures' mean over their spread (a curve every call
  shares, or each call its own); ``engine-seen``, ``seen-chosen``: the anchor sees the
  curvature too (its sums through the cells and blur, :func:`anchor_curvature_stats`);
- ``--gross``: a fraction of the calls grossly wrong, as in ``fusion_quality.py`` (the
  re-solve has no fill or second call: it cannot judge robustness).

    python benchmarks/tone_curves.py [--models power,current,...] [--geometry quarter]
        [--weight 0.6] [--ridge 1.0] [--choose 0.75] [--seeds 0,1,2] [--engine]
        [--gross 0.1] [--gross-on tiles,coarse]

The ``--quick`` scenes of ``fusion_quality.py`` (one Middlebury scene and a 640 px procedural
one); no pyramid (the quarter geometry has none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
import a2c_gap  # noqa: E402
import fusion_quality as fq  # noqa: E402
import sim_models  # noqa: E402

from tiledepth import fusion, metrics  # noqa: E402
from tiledepth.tiling import (  # noqa: E402
    earlier_neighbours,
    overlap_pixels,
    overlap_slices,
    tile_grid,
)

#: Every STEP-th pixel of tiles and overlaps enters the sums.
STEP = 2



class Values:
    """A tile's aligned values as a blend's map (scale 0, the values as the shift)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def fields(self, shape):
        return np.zeros(shape, np.float32), self.values.astype(np.float32)


def _standardised(pred: np.ndarray) -> tuple[float, float]:
    p = pred.astype(np.float64)
    return float(p.mean()), float(p.std()) + 1e-12


def _features(pred, mean, std, tone: bool) -> np.ndarray:
    q = (pred.astype(np.float64) - mean) / std
    return np.stack([q, np.ones_like(q)] + ([q * q] if tone else []), -1)


def _as_map(pred, mean, std, x) -> Values:
    """The aligned values of ``x`` = (b, c[, a]) on the standardised ``q = (p - mean) / std``:
    ``b q + c + a q^2``."""
    q = (pred.astype(np.float64) - mean) / std
    return Values(x[0] * q + x[1] + (x[2] * q * q if len(x) == 3 else 0.0))


def oracle(tiles, preds, truth, valid, tone: bool) -> dict:
    """Each tile's own map fitted to ``truth``."""
    out = {}
    for t in tiles:
        ok = valid[t.row_slice, t.col_slice]
        mean, std = _standardised(preds[t.id])
        f = _features(preds[t.id], mean, std, tone)[ok]
        x = np.linalg.lstsq(f, truth[t.row_slice, t.col_slice][ok], rcond=None)[0]
        out[t.id] = _as_map(preds[t.id], mean, std, x)
    return out


def joint(grid, preds, anchor, valid, *, tone: bool, weight: float, ridge: float):
    """Every tile's map from one solve; and the RMS overlap residual."""
    tiles = [t for row in grid for t in row]
    k, n = (3 if tone else 2), len(tiles)
    area = float(tiles[0].shape[0] * tiles[0].shape[1]) / STEP**2
    norm = {t.id: _standardised(preds[t.id]) for t in tiles}
    lhs, rhs, overlaps = np.zeros((k * n, k * n)), np.zeros(k * n), []
    sub = (slice(0, None, STEP), slice(0, None, STEP))
    for i, t in enumerate(tiles):
        f = _features(preds[t.id][sub], *norm[t.id], tone)
        c = anchor[t.row_slice, t.col_slice][sub]
        ok = valid[t.row_slice, t.col_slice][sub] & np.isfinite(c)
        f, c = f[ok], c[ok]
        if tone:  # the anchor does not see the curvature: q^2 by its mean
            f = f.copy()
            f[:, 2] = 1.0
        s = slice(k * i, k * i + k)
        lhs[s, s] += weight / area * f.T @ f + 1e-6 * np.eye(k)
        rhs[s] += weight / area * f.T @ c
        if tone:
            lhs[k * i + 2, k * i + 2] += ridge
    index = {t.id: i for i, t in enumerate(tiles)}
    for b in tiles:
        j = index[b.id]
        for a in earlier_neighbours(grid, b):
            i = index[a.id]
            (ra, ca), (rb, cb) = overlap_slices(a, b)
            ok = valid[a.row_slice, a.col_slice][ra, ca][sub].ravel()
            fa, fb = (_features(preds[t.id][r, c][sub], *norm[t.id], tone).reshape(-1, k)[ok]
                      for t, r, c in ((a, ra, ca), (b, rb, cb)))
            sa, sb = slice(k * i, k * i + k), slice(k * j, k * j + k)
            lhs[sa, sa] += fa.T @ fa / area
            lhs[sb, sb] += fb.T @ fb / area
            lhs[sa, sb] -= fa.T @ fb / area
            lhs[sb, sa] -= fb.T @ fa / area
            overlaps.append((fa, fb, sa, sb))
    x = np.linalg.solve(lhs, rhs)
    res = np.concatenate([fa @ x[sa] - fb @ x[sb] for fa, fb, sa, sb in overlaps])
    maps = {t.id: _as_map(preds[t.id], *norm[t.id], x[k * i:k * i + k])
            for i, t in enumerate(tiles)}
    return maps, float(np.sqrt(np.mean(res**2)))


def anchor_curvature_stats(tiles, preds, captured, coarse, shape, blur: float) -> dict:
    """Each tile's anchor sums for the features ``[q, 1, g]`` as the engine takes them for
    ``[q, 1]`` (through the anchor's cells and ``blur``): ``{id: (gram 3x3, fc 3)}``; the
    curvature's by polarisation (the engine's sums of ``p``, of ``g`` and of ``p + g``; they
    are linear in the prediction)."""
    from tiledepth.fusion.coarse import coarse_tile_stats

    table = captured[0]
    by_id = {t.id: t for t in tiles}
    out = {}
    for j in range(len(table)):
        row = table.row(j)
        t = by_id[row.id]
        pred = preds[t.id].astype(np.float64)
        ok = np.ones(pred.shape, bool)
        q = pred - pred.mean()
        g = (q * q - float(np.mean(q * q))) / (float(q.std()) + 1e-12)
        sp, sg, spg = (coarse_tile_stats(t.id, a.astype(np.float32), ok, t.window, shape,
                                         coarse, blur=blur) for a in (pred, g, pred + g))
        cross = 0.5 * (spg.gram[0, 0] - sp.gram[0, 0] - sg.gram[0, 0])
        gram = np.zeros((3, 3))
        gram[:2, :2] = row.gram
        gram[0, 2] = gram[2, 0] = cross
        gram[1, 2] = gram[2, 1] = sg.gram[0, 1]
        gram[2, 2] = sg.gram[0, 0]
        fc = np.array([row.fc[0], row.fc[1], sg.fc[0]])
        out[row.id] = (gram, fc, g)
    return out


def engine_joint(tiles, preds, captured, *, ridge: float, tone: bool,
                 seen: dict | None = None):
    """The engine's last solve again, from its statistics (``captured``: the tile and pair
    tables and keywords :func:`a2c_gap.run_captured` returns), with a curvature per tile
    (``g = (q^2 - v) / sd``: ``q`` the centred prediction, ``v`` its mean square, ``sd`` its
    standard deviation) set by the overlaps alone where ``tone`` (and by the anchor too with
    ``seen``, :func:`anchor_curvature_stats`); the maps, and ``{'overlaps': the RMS overlap
    residual, 'anchor': the anchor's residual sum of squares, 'shared': the curvatures' mean
    over their spread (tone only)}``."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    from tiledepth.fusion import solve

    table, pairs, kw, _ = captured
    problem = solve.Problem(table, pairs, tile_area=kw["tile_area"],
                            coarse_weight=kw["coarse_weight"], ridge=1e-3, smooth=0.01)
    # the engine's robust weights (its affine judge's), kept for every family
    pair_w, tile_w = solve.reweight(problem, iterations=8)[:2] if kw.get("robust") else (
        problem.ones_pairs, problem.ones_tiles)
    if kw.get("estimate_weights"):  # the anchor's weight balanced as the engine's (the default)
        tile_w = solve.balance(problem, pair_w, tile_w)[0]
    by_id = {t.id: t for t in tiles}
    ids, means = problem.ids, problem.mean
    m = 3 if tone else 2
    n = len(ids)
    stats = {}
    for i, tid in enumerate(ids):
        q = preds[int(tid)].astype(np.float64) - means[i]
        v, sd = float(np.mean(q * q)), float(q.std()) + 1e-12
        stats[i] = (v, sd)
    blocks, rows, cols = [], [], []

    def add(block, a, b):
        r = np.arange(m)
        blocks.append(block.ravel())
        rows.append(np.repeat(a * m + r, m))
        cols.append(np.tile(b * m + r, m))

    rhs = np.zeros(n * m)
    sqq = []
    for i in range(n):
        block = np.zeros((m, m))
        wt = problem.w_tile * tile_w[i]
        block[:2, :2] = wt * problem.tile_gram[i] + problem.prior
        rhs[i * m:i * m + 2] = wt * problem.tile_fc[i] + problem.prior_rhs[i]
        if tone and seen is not None:  # the anchor sees the curvature too
            gram, fc, _ = seen[int(ids[i])]
            block[:, 2] += wt * gram[:, 2]
            block[2, :2] += wt * gram[2, :2]
            rhs[i * m + 2] += wt * fc[2]
        sqq.append(problem.tile_gram[i][0, 0])
        add(block, i, i)
    mu = ridge * problem.w_pair * float(np.median(sqq))

    def features(i, pred):
        q = pred.astype(np.float64) - means[i]
        f = [q, np.ones_like(q)]
        if tone:
            v, sd = stats[i]
            f.append((q * q - v) / sd)
        return np.stack([a.ravel() for a in f], 1)

    overlaps = []
    for p, (a, b) in enumerate(problem.pair_idx):
        ta, tb = by_id[int(ids[a])], by_id[int(ids[b])]
        (ra, ca), (rb, cb) = overlap_slices(ta, tb)
        fa, fb = features(a, preds[ta.id][ra, ca]), features(b, preds[tb.id][rb, cb])
        w = problem.w_pair * pair_w[p]
        add(w * fa.T @ fa, a, a)
        add(w * fb.T @ fb, b, b)
        add(-w * fa.T @ fb, a, b)
        add(-w * fb.T @ fa, b, a)
        overlaps.append((fa, fb, a, b))
    if tone:
        for i in range(n):
            add(np.diag([0.0, 0.0, mu]), i, i)
    matrix = sparse.csr_matrix((np.concatenate(blocks), (np.concatenate(rows),
                                                         np.concatenate(cols))),
                               shape=(n * m, n * m))
    d = 1.0 / np.sqrt(matrix.diagonal())
    x = d * spsolve((sparse.diags(d) @ matrix @ sparse.diags(d)).tocsc(), d * rhs)
    x = x.reshape(n, m)
    res = np.concatenate([fa @ x[a] - fb @ x[b] for fa, fb, a, b in overlaps])
    st = x[:, :2]  # the anchor's residual: it sees the scale and shift only
    anchor = float(np.sum(np.einsum("ti,tij,tj->t", st, problem.tile_gram, st)
                          - 2 * np.einsum("ti,ti->t", st, problem.tile_fc) + problem.tile_scc))
    info = {"overlaps": float(np.sqrt(np.mean(res ** 2))), "anchor": max(anchor, 0.0)}
    if tone:  # the curvatures' mean over their spread: one shared curve, or each call its own
        info["shared"] = float(abs(np.mean(x[:, 2])) / (np.std(x[:, 2]) + 1e-300))
    maps = {}
    for i, tid in enumerate(ids):
        q = preds[int(tid)].astype(np.float64) - means[i]
        f = x[i, 0] * q + x[i, 1]
        if tone:
            v, sd = stats[i]
            f = f + x[i, 2] * (q * q - v) / sd
        maps[int(tid)] = Values(f)
    return maps, info


def evaluate(name, depth, geometry, *, model, seed, weight, ridge,
             engine: bool = False, gross: float = 0.0,
             gross_on: tuple[str, ...] = ("tiles",)) -> dict:
    shape, valid = depth.shape, np.isfinite(depth)
    image, drawn = fq.simulated_input(name, depth, seed)
    size = geometry["tile_size"]
    grid = tile_grid(*shape, size, 0.25)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(size, 0.25)

    other = fq.aerial_scene(max(shape), 7) if gross > 0 else None

    def sim():
        return sim_models.SimModel(model, drawn, tiles=len(tiles), levels=(), gross=gross,
                                   other=other, gross_on=gross_on)

    m0 = sim()
    if engine:
        fused, report, captured = a2c_gap.run_captured(image, m0, geometry, pyramid=False)
    else:
        fused, report = fq.run_engine(image, m0, geometry, pyramid=False)
    a2c, _ = fq.run_engine(image, sim(), geometry, pairs=False, pyramid=False)
    preds = dict(m0.preds)
    anchor = m0.anchor()  # the coarse calls' (anchor_calls)
    coarse = fusion.fill_invalid(anchor, np.ones(anchor.shape, bool))
    anchor = fusion.upsample_window(coarse, shape, Window(0, 0, *shape[::-1]))
    truth = np.where(valid, depth, 0.0)

    def score(img):
        return float(metrics.depth_metrics(img, depth, mask=valid).nrmse)

    row = {"tiledepth": score(fused), "align-to-coarse": score(a2c)}
    for tone, label in ((False, "aff"), (True, "tone")):
        row[f"oracle-{label}"] = score(fq.blend_maps(shape, tiles, preds,
                                                     oracle(tiles, preds, truth, valid, tone),
                                                     ramp))
        maps, row[f"res-{label}"] = joint(grid, preds, anchor, valid, tone=tone,
                                          weight=weight, ridge=ridge)
        row[f"joint-{label}"] = score(fq.blend_maps(shape, tiles, preds, maps, ramp))
        if engine and report["alignment"] == "affine":
            maps, info = engine_joint(tiles, preds, captured, ridge=ridge, tone=tone)
            row[f"eres-{label}"], row[f"ares-{label}"] = info["overlaps"], info["anchor"]
            row[f"engine-{label}"] = score(fq.blend_maps(shape, tiles, preds, maps, ramp))
            if tone:
                row["shared"] = info["shared"]
                seen = anchor_curvature_stats(tiles, preds, captured, coarse, shape,
                                              float(report["anchor_blur"] or 0.0))
                maps, info = engine_joint(tiles, preds, captured, ridge=ridge, tone=True,
                                          seen=seen)
                row["eres-seen"] = info["overlaps"]
                row["engine-seen"] = score(fq.blend_maps(shape, tiles, preds, maps, ramp))
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(sim_models.MODELS))
    ap.add_argument("--geometry", default="quarter", help="quarter or custom:TILE:COARSE")
    ap.add_argument("--weight", type=float, default=0.6, help="the anchor's weight per pixel")
    ap.add_argument("--ridge", type=float, default=1.0, help="the curvature's ridge")
    ap.add_argument("--choose", type=float, default=0.75,
                    help="tone curves where the overlap residual falls below this ratio")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--engine", action="store_true",
                    help="also re-solve the engine's own statistics (engine-* columns)")
    ap.add_argument("--gross", type=float, default=0.0,
                    help="this fraction of the tiles grossly wrong (inverted, or another "
                         "scene; as fusion_quality.py's), every method on those calls")
    ap.add_argument("--gross-on", default="tiles",
                    help="the parts gross errors hit: tiles, coarse (comma-separated)")
    args = ap.parse_args(argv)
    sim_models.check_names(ap, models=args.models, geometries=args.geometry, one_geometry=True)
    scenes = fq.benchmark_scenes(fq.default_data(), scenes=1, procedural=1, size=640)
    seeds = [int(s) for s in args.seeds.split(",")]
    keys = ["tiledepth", "align-to-coarse", "oracle-aff", "oracle-tone", "joint-aff",
            "joint-tone", "joint-chosen"]
    if args.engine:
        keys += ["engine-aff", "engine-tone", "engine-chosen", "engine-guarded", "anchor",
                 "shared", "engine-seen", "seen-chosen"]
    more = " engine-tone / engine-aff, worst | engine overlap residual, tone / affine |" \
        if args.engine else ""
    print("| model | " + " | ".join(keys) + " | joint-tone / joint-aff, worst | overlap "
          "residual, tone / affine |" + more)
    print("|" + " --- |" * (len(keys) + 3 + (2 if args.engine else 0)))
    for model in args.models.split(","):
        rows = []
        for name, depth in scenes:
            geometry = fq.geometries(max(depth.shape), [args.geometry], quick=True)
            for seed in seeds:
                row = evaluate(name, depth, geometry[args.geometry], model=model,
                               seed=seed, weight=args.weight, ridge=args.ridge,
                               engine=args.engine, gross=args.gross,
                               gross_on=tuple(args.gross_on.split(",")))
                for kind, res in (("joint", "res"), ("engine", "eres")):
                    if f"{res}-tone" in row:
                        tone = row[f"{res}-tone"] < args.choose * row[f"{res}-aff"]
                        row[f"{kind}-chosen"] = row[f"{kind}-tone" if tone else f"{kind}-aff"]
                if "eres-seen" in row:
                    tone = row["eres-seen"] < args.choose * row["eres-aff"]
                    row["seen-chosen"] = row["engine-seen" if tone else "engine-aff"]
                if "ares-tone" in row:  # and the anchor's residual no larger
                    tone = row["eres-tone"] < args.choose * row["eres-aff"] \
                        and row["ares-tone"] <= row["ares-aff"]
                    row["engine-guarded"] = row["engine-tone" if tone else "engine-aff"]
                    row["anchor"] = row["ares-tone"] / max(row["ares-aff"], 1e-300)
                rows.append(row)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        worst = max(r["joint-tone"] / r["joint-aff"] for r in rows)
        res = float(np.mean([r["res-tone"] / r["res-aff"] for r in rows]))
        extra = ""
        if args.engine:
            eworst = max(r["engine-tone"] / r["engine-aff"] for r in rows)
            eres = float(np.mean([r["eres-tone"] / r["eres-aff"] for r in rows]))
            extra = f" {eworst:.2f} | {eres:.2f} |"
        print(f"| {model} | " + " | ".join(f"{mean[k]:.4f}" for k in keys)
              + f" | {worst:.2f} | {res:.2f} |" + extra, flush=True)


if __name__ == "__main__":
    main()
