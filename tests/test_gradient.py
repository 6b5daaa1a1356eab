"""The gradient-domain fusion (tiledepth.fusion.gradient, ``fusion='gradient'``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import depth_field, write_raster
from rasterio.windows import Window

from tiledepth import fusion
from tiledepth.fusion import gradient
from tiledepth.fusion.blend import BlendPart
from tiledepth.tiling import tile_grid


class Bent:
    """A keyed model that bends every call: the truth (channel 0), plus a bowl or saddle
    across the call (``warp`` of the range), then its own scale and shift."""

    kind = "depth"
    batch_size = 8

    def __init__(self, warp: float = 0.15, normalised: bool = True) -> None:
        self.warp, self.normalised = warp, normalised

    def predict(self, batch, keys):
        out = []
        for x, key in zip(batch, keys, strict=True):
            rng = np.random.default_rng([key + 7, 3])
            y = x[..., 0].astype(np.float64)
            u = np.linspace(-0.5, 0.5, y.shape[0])[:, None]
            v = np.linspace(-0.5, 0.5, y.shape[1])[None, :]
            a, b, c = rng.normal(0, 1, 3)
            y = y + self.warp * (a * u * u + b * v * v + c * u * v)
            y = y + 0.002 * rng.standard_normal(y.shape)
            if self.normalised:
                y = rng.uniform(0.5, 2.0) * y + rng.uniform(-1, 1)
            out.append(y)
        return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    return depth_field(192, 256).astype(np.float32)


def nrmse(pred, truth, mask=None):
    ok = np.isfinite(pred) & (np.ones(truth.shape, bool) if mask is None else mask)
    a = np.c_[pred[ok], np.ones(ok.sum())]
    coef = np.linalg.lstsq(a, truth[ok], rcond=None)[0]
    return float(np.sqrt(np.mean((a @ coef - truth[ok]) ** 2)) / np.ptp(truth[ok]))


def fused(image, model, *, fusion_method, anchor, windows=None, **options):
    from tiledepth.engine import fuse
    from tiledepth.options import make_options
    from tiledepth.readers import ArrayReader
    from tiledepth.scratch import MemoryStore
    from tiledepth.write import ArraySink

    options.setdefault("anchor_blur", 0.0)
    opts = make_options(tile_size=64, overlap=0.25, workers=0, fusion=fusion_method,
                        **options)
    reader = ArrayReader(image)
    sink = ArraySink(reader.height, reader.width)
    if windows is not None:  # the output written in blocks of this many rows
        sink.windows = lambda: [Window(0, r, reader.width, min(windows, reader.height - r))
                                for r in range(0, reader.height, windows)]
    result = fuse(reader, sink, model, opts, MemoryStore(), anchor=anchor)
    return sink.array, result


def cells(truth, shape):
    return fusion.area_average(truth[None], shape)[0]


def test_a_warp_within_each_tile_is_undone_by_the_gradient_fusion_only(scene):
    """Per-tile (bilinear) maps cannot remove a bowl within a tile; the anchor's low
    frequencies can: the error drops to about a third."""
    anchor = cells(scene, (48, 64))  # exact, 4 px a cell: 16 cells across a tile
    tiles, _ = fused(scene, Bent(), fusion_method="tiles", anchor=anchor,
                     alignment="bilinear")
    grad, result = fused(scene, Bent(), fusion_method="gradient", anchor=anchor,
                         alignment="bilinear")
    e_tiles, e_grad = nrmse(tiles, scene), nrmse(grad, scene)
    # measured: tiles 0.0069, gradient 0.0023 (0.0089 and 0.0025 with the anchor's weight
    # fixed at --coarse-weight, --no-estimate-weights)
    assert e_tiles > 0.006  # the bowls stay
    assert e_grad < 0.003 and e_grad < e_tiles / 2.5
    assert result.report["fusion"]["method"] == "gradient"
    assert result.report["fusion"]["crossover_cells"] == pytest.approx(8.0)  # half a tile


def test_the_anchor_blur_is_measured_when_left_automatic(scene):
    """An anchor blurred by 1 of its cells (a scene with edges, so a blur shows): the
    correction measures it, and compares the tiles with the anchor through it."""
    blocks = scene.copy()
    rng = np.random.default_rng(5)
    for _ in range(40):  # buildings
        (r, c), (h, w) = rng.integers(0, (180, 240)), rng.integers(4, 20, 2)
        blocks[r:r + h, c:c + w] += 0.15
    anchor = fusion.blur_cells(cells(blocks, (48, 64)).astype(np.float64), 1.0)
    tiles, _ = fused(blocks, Bent(), fusion_method="tiles", anchor=anchor, anchor_blur=None)
    grad, result = fused(blocks, Bent(), fusion_method="gradient", anchor=anchor,
                         anchor_blur=None)
    record = result.report["fusion"]
    assert record["anchor_blur_measured"] and record["anchor_blur"] == 1.0
    assert record["crossover_cells"] == pytest.approx(gradient.CROSSOVER_BLURS, abs=1e-3)
    assert nrmse(grad, blocks) < 0.9 * nrmse(tiles, blocks)  # 0.0095 against 0.0113


def test_an_exactly_consistent_model_is_left_unchanged(scene):
    """Tiles that agree with each other and with the anchor: the correction is ~0."""
    anchor = cells(scene, (48, 64))
    model = Bent(warp=0.0, normalised=False)
    tiles, _ = fused(scene, model, fusion_method="tiles", anchor=anchor)
    grad, _ = fused(scene, model, fusion_method="gradient", anchor=anchor)
    assert nrmse(grad, scene) <= 1.01 * nrmse(tiles, scene)
    assert np.abs(grad - tiles).max() < 0.01 * np.ptp(tiles)
    assert "fusion" not in fused(scene, model, fusion_method="tiles", anchor=anchor)[1].report


def test_a_grossly_wrong_patch_of_the_anchor_is_not_passed_into_the_map(scene, monkeypatch):
    """An inverted patch of the anchor (a sixth of its side): its residual is left out, so
    the correction still removes the tiles' bowls elsewhere and does not copy the patch."""
    anchor = cells(scene, (48, 64))
    lo, hi = anchor.min(), anchor.max()
    anchor[10:22, 20:32] = lo + hi - anchor[10:22, 20:32]
    tiles, _ = fused(scene, Bent(), fusion_method="tiles", anchor=anchor)
    grad, _ = fused(scene, Bent(), fusion_method="gradient", anchor=anchor)
    monkeypatch.setattr(gradient, "OUTLIER_FLOOR", np.inf)  # every residual trusted
    trusting, _ = fused(scene, Bent(), fusion_method="gradient", anchor=anchor)
    e = {k: nrmse(f, scene) for k, f in (("tiles", tiles), ("grad", grad), ("all", trusting))}
    assert e["grad"] < 0.7 * e["tiles"] and e["all"] > 1.5 * e["grad"], e


def test_masked_pixels_stay_nan_and_the_rest_is_corrected(scene):
    image = scene.copy()
    image[:70, :90] = np.nan  # a masked corner: a whole tile and parts of others
    anchor = cells(np.where(np.isfinite(image), scene, np.nan), (48, 64))
    anchor = fusion.fill_invalid(anchor, np.isfinite(anchor))
    tiles, _ = fused(image, Bent(), fusion_method="tiles", anchor=anchor)
    grad, _ = fused(image, Bent(), fusion_method="gradient", anchor=anchor)
    mask = np.isfinite(image)
    assert np.array_equal(np.isfinite(grad), mask)
    assert nrmse(grad, scene, mask) < nrmse(tiles, scene, mask) / 2


def test_the_output_does_not_depend_on_the_window_size(scene):
    anchor = cells(scene, (48, 64))
    whole, _ = fused(scene, Bent(), fusion_method="gradient", anchor=anchor)
    for rows in (7, 64):
        blocks, _ = fused(scene, Bent(), fusion_method="gradient", anchor=anchor,
                          windows=rows)
        np.testing.assert_array_equal(blocks, whole)


def test_anchor_cells_is_the_cell_average_of_the_blend_where_tiles_agree():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 56)).astype(np.float32)
    tiles = [t for row in tile_grid(40, 56, 24, 0.25) for t in row]
    parts = [BlendPart(t, (truth[t.row_slice, t.col_slice] - 1) / 2, np.ones(t.shape, bool),
                       2.0, 1.0) for t in tiles]  # each tile mapped back to the truth
    profiles = gradient.weight_profiles(tile_grid(40, 56, 24, 0.25), truth.shape, 6)
    got = gradient.anchor_cells(parts, truth.shape, (7, 9), ramp=6, profiles=profiles)
    np.testing.assert_allclose(got, cells(truth, (7, 9)), rtol=1e-5, atol=1e-5)


def test_screened_poisson_passes_long_waves_and_stops_short_ones():
    rows = np.arange(64)[:, None] + np.zeros((1, 64))
    long_wave = np.cos(np.pi * (rows + 0.5) / 64)  # one DCT mode, half a period on 64 cells
    short = np.cos(np.pi * 32 * (rows + 0.5) / 64)  # 4 cells a period
    v = gradient.screened_poisson(long_wave + short, wavelength=16.0)
    gain_long = float(v.ravel() @ long_wave.ravel() / (long_wave.ravel() @ long_wave.ravel()))
    gain_short = float(v.ravel() @ short.ravel() / (short.ravel() @ short.ravel()))
    lam = (2 * np.pi / 16) ** 2  # the gain is lam / (lam + Laplacian's eigenvalue)
    assert gain_long == pytest.approx(lam / (lam + 2 - 2 * np.cos(np.pi / 64)))  # 0.996
    assert gain_short == pytest.approx(lam / (lam + 2))  # 0.072: 4x shorter, ~16x weaker


def test_crossover_comes_from_the_geometry():
    assert gradient.crossover(48.0, 0.0) == 24.0
    assert gradient.crossover(2.0, 0.0) == gradient.CROSSOVER_MIN_CELLS
    assert gradient.crossover(6.0, 1.5) > gradient.crossover(6.0, 0.0)


def test_correction_at_points_is_the_upsampled_correction():
    v = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    whole = fusion.upsample_window(v, (40, 56), Window(0, 0, 56, 40))
    rows, cols = np.array([0, 3, 17, 39, 39]), np.array([0, 55, 20, 8, 55])
    np.testing.assert_allclose(fusion.correction_at(v, (40, 56), rows, cols),
                               whole[rows, cols], rtol=1e-6)


def test_the_correction_is_skipped_against_an_anchor_of_short_calls():
    """Against an anchor made of calls shorter than twice the crossover (a pyramid level of
    small tiles), the per-tile solve is kept: parts unchanged, and the sidecar says why."""
    from tiledepth.scratch import MemoryStore
    from tiledepth.stages import TileParts, gradient_correction

    grid = tile_grid(64, 64, 32, 0.25)
    store = MemoryStore()
    for t in (t for row in grid for t in row):
        store.put(t.id, np.ones(t.shape, np.float32), np.ones(t.shape, bool))
    parts = TileParts(grid, {t.id: fusion.Affine1D(1.0, 0.0) for row in grid for t in row},
                      set(), store, np.zeros((32, 32), np.float32), (64, 64))
    kept, report = gradient_correction(parts, ramp=8, blur=1.5, tile_size=32, anchor_call=32)
    assert kept is parts and "skipped" in report  # crossover 47 cells > 16
    done, report = gradient_correction(parts, ramp=8, blur=1.5, tile_size=32, anchor_call=512)
    assert done.correction.shape == (32, 32) and "skipped" not in report
    np.testing.assert_allclose(done.correction, -1.0, atol=1e-5)  # the anchor is 0, tiles 1


@pytest.mark.parametrize("masked", [False, True])
def test_anchor_cells_of_bilinear_maps_need_no_map_on_the_pixels(masked):
    """The corner-by-corner sums of bilinear fields equal the sums of the evaluated map."""
    rng = np.random.default_rng(2)
    grid = tile_grid(50, 70, 32, 0.25)
    field = fusion.AffineField((1.0, 1.3, 0.8, 1.1), (0.0, 0.2, -0.1, 0.4))
    fast, slow = [], []
    for t in (t for row in grid for t in row):
        pred = rng.random(t.shape).astype(np.float32)
        valid = rng.random(t.shape) > 0.2 if masked else np.ones(t.shape, bool)
        fast.append(BlendPart(t, pred, valid, *field.fields(t.shape)))
        slow.append(BlendPart(t, pred, valid, *field.maps(t.shape)))
    profiles = gradient.weight_profiles(grid, (50, 70), 8)
    got, want = (gradient.anchor_cells(p, (50, 70), (9, 13), ramp=8, profiles=profiles)
                 for p in (fast, slow))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_the_cli_runs_it_and_the_sidecar_tags_and_eval_say_so(tmp_path):
    import json

    import rasterio
    from click.testing import CliRunner

    from tiledepth.cli import main

    d = 2.0 + depth_field(200, 260)
    src = write_raster(tmp_path / "in.tif", np.repeat(((d - 2) * 255)[None], 3, 0)
                       .astype(np.uint8))
    gt = write_raster(tmp_path / "gt.tif", d[None].astype(np.float32))
    out = tmp_path / "out.tif"
    res = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model",
                                    "toy_models:affine_red", "--tile-size", "96",
                                    "--fusion", "gradient", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["fusion"]["method"] == "gradient" and "correction_rms" in report["fusion"]
    with rasterio.open(out) as f:
        assert f.tags()["TILEDEPTH_FUSION"] == "gradient"
    res = CliRunner().invoke(main, ["eval", str(out), str(gt), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["abs_rel"] < 0.01
    bad = CliRunner().invoke(main, ["run", str(src), "--fusion", "poisson"])
    assert bad.exit_code == 2 and "poisson" in bad.output


class Exact:
    """A keyed model exact but for its own scale and shift per call."""

    kind = "depth"
    batch_size = 8

    def predict(self, batch, keys):
        out = []
        for x, key in zip(batch, keys, strict=True):
            rng = np.random.default_rng([key + 7, 3])
            out.append(rng.uniform(0.5, 2.0) * x[..., 0].astype(np.float64)
                       + rng.uniform(-1, 1))
        return np.stack(out).astype(np.float32)


def max_error(pred, truth, mask):
    """The largest error after a least-squares scale and shift, over the value range."""
    a = np.c_[pred[mask], np.ones(mask.sum())].astype(np.float64)
    coef = np.linalg.lstsq(a, truth[mask].astype(np.float64), rcond=None)[0]
    return float(np.abs(a @ coef - truth[mask]).max() / np.ptp(truth[mask]))


@pytest.mark.parametrize("filled", [True, False])
def test_cells_cut_by_a_mask_do_not_bend_an_exact_model(scene, filled):
    """Masks whose edges cut the anchor's cells (17.5 and 22.5 cells, a 3.75-cell strip):
    there the tiles' cell average is over the valid part only and the anchor is filled
    from a neighbour (``filled``) or of the whole cell. Left in, that false residual was
    smoothed into the valid area: 6.5e-3 (2.3e-3) of the range against the tiles'
    5.1e-4 (4.3e-4); now 1.5e-4 (1.1e-4). Since the tiles' own comparison with the anchor
    leaves such cells out too (``as_coarse_sees``), both are exact: 3e-7 (round-off)."""
    image = scene.copy()
    image[:70, :90] = np.nan
    image[150:, 170:185] = np.nan
    mask = np.isfinite(image)
    if filled:
        anchor = cells(np.where(mask, scene, np.nan), (48, 64))
        anchor = fusion.fill_invalid(anchor, np.isfinite(anchor))
    else:
        anchor = cells(scene, (48, 64))
    tiles, _ = fused(image, Exact(), fusion_method="tiles", anchor=anchor)
    grad, _ = fused(image, Exact(), fusion_method="gradient", anchor=anchor)
    assert np.array_equal(np.isfinite(grad), mask)
    assert max_error(grad, scene, mask) < max(min(1e-3, max_error(tiles, scene, mask)), 1e-6)


def test_the_coverage_of_a_cell_is_the_valid_part_of_its_area():
    """Cells of 5.6 x 5.4 px (the raster no multiple of them), a masked corner: the
    coverage is the valid fraction of each cell's area, 1 in the raster's last cells
    too; without the weight profiles, the same where every tile is given."""
    grid = tile_grid(50, 70, 32, 0.25)
    valid = np.ones((50, 70), bool)
    valid[:23, :31] = False
    parts = [BlendPart(t, np.ones(t.shape, np.float32), valid[t.row_slice, t.col_slice])
             for row in grid for t in row]
    want = fusion.area_average(valid[None].astype(np.float32), (9, 13))[0]
    profiles = gradient.weight_profiles(grid, (50, 70), 8)
    _, coverage = gradient._anchor_pass(parts, (50, 70), (9, 13), ramp=8, profiles=profiles)
    np.testing.assert_allclose(coverage, want, atol=1e-5)
    assert coverage[-1].min() > 1 - 1e-5 and coverage[:, -1].min() > 1 - 1e-5
    _, coverage = gradient._anchor_pass(parts, (50, 70), (9, 13), ramp=8)
    np.testing.assert_allclose(coverage[want == 1], 1.0, atol=1e-5)
    assert coverage[want < 1].max() < gradient.COVERED


def test_a_raster_with_no_whole_cell_still_takes_the_anchor():
    """Every cell a quarter masked (every fourth column): no cell is whole, so every
    covered one ties the correction to the anchor (0.5 above the tiles)."""
    truth = depth_field(40, 56)
    grid = tile_grid(40, 56, 24, 0.25)
    valid = np.ones(truth.shape, bool)
    valid[:, ::4] = False
    parts = [BlendPart(t, truth[t.row_slice, t.col_slice], valid[t.row_slice, t.col_slice])
             for row in grid for t in row]
    anchor = cells(truth, (10, 14)) + 0.5
    profiles = gradient.weight_profiles(grid, truth.shape, 6)
    v, _, _ = gradient.correction(parts, anchor, truth.shape, ramp=6, cells_per_tile=6.0,
                                  blur=0.0, profiles=profiles)
    assert np.abs(v - 0.5).max() < 0.05


def test_a_skipped_gradient_fusion_is_warned_about_once_a_run(monkeypatch, caplog):
    """``--fusion gradient`` against an anchor of calls under twice the crossover is skipped:
    the output is ``--fusion tiles``', which only the sidecar said. One warning a run now,
    with what to change, though the pyramid level skipped it too; none where it ran."""
    import tiledepth
    from tiledepth import stages
    from tiledepth.fusion.pyramid import pyramid_levels

    caplog.set_level("WARNING", logger="tiledepth")
    skips, real = [], stages.gradient_correction

    def spy(*args, **kwargs):
        parts, report = real(*args, **kwargs)
        skips.append("skipped" in report)
        return parts, report

    monkeypatch.setattr(stages, "gradient_correction", spy)
    image = np.repeat(depth_field(160, 520)[..., None], 3, axis=2).astype(np.float32)
    assert pyramid_levels(520, 32) == [128]
    kw = dict(model=lambda batch: 2 * batch[..., 0] + 1, tile_size=32, coarse_size=32)
    # the blur 1 px of anchor calls of 32 px: a crossover of 31 px, over half of 32
    gradient_map = tiledepth.estimate(image, fusion="gradient", anchor_blur=1.0, **kw)
    assert skips == [True, True]  # the level's and the output's
    assert [r.getMessage() for r in caplog.records] == [
        "fusion gradient (--fusion gradient) skipped: the anchor's calls (32 px) are under 2x "
        "the crossover (31 px, 31x the anchor's blur of 1 px, --anchor-blur); the output is "
        "the tiles blended, as with --fusion tiles; for the gradient fusion give "
        "--anchor-blur under 0.51 (or auto), or pass --fusion tiles"]
    tiles_map = tiledepth.estimate(image, fusion="tiles", anchor_blur=1.0, **kw)
    np.testing.assert_array_equal(gradient_map, tiles_map)
    caplog.clear()
    skips.clear()
    tiledepth.estimate(image, fusion="gradient", anchor_blur=0.25, **kw)
    assert skips == [False, False] and caplog.records == []
