"""Fusion must undo known per-tile affine distortions, exactly where the coarse map is exact."""

import numpy as np
import pytest
from conftest import depth_field
from rasterio.windows import Window

import tiledepth
from tiledepth import align
from tiledepth.tiling import tile_grid


def distorted_model(seed):
    """Tile i's prediction = a_i * depth + b_i, depth encoded in the red channel."""
    rng = np.random.default_rng(seed)

    def model(batch):
        a = rng.uniform(0.3, 3.0, len(batch))[:, None, None]
        b = rng.uniform(-2.0, 2.0, len(batch))[:, None, None]
        return (a * batch[..., 0] + b).astype(np.float32)

    return model


def fit_global(fused, truth):
    """Best global scale/shift from fused to truth, and the relative residual."""
    A = np.c_[fused.ravel(), np.ones(fused.size)]
    coef = np.linalg.lstsq(A, truth.ravel(), rcond=None)[0]
    resid = (A @ coef - truth.ravel()).reshape(truth.shape) / np.ptp(truth)
    return coef, resid


@pytest.fixture(scope="module")
def truth():
    return depth_field(520, 610)


def test_exact_coarse_recovers_depth_exactly(truth):
    fused = tiledepth.estimate(truth, model=distorted_model(1), tile_size=128, overlap=0.25,
                               coarse_size=1024)
    _, resid = fit_global(fused, truth)
    assert np.abs(resid).max() < 1e-5


@pytest.mark.parametrize("seed", [2, 3])
def test_coarse_guided_fusion_undoes_affine_distortions(truth, seed):
    # coarse map 5x coarser than the raster: only the tiles carry the detail
    fused = tiledepth.estimate(truth, model=distorted_model(seed), tile_size=128, overlap=0.25,
                               coarse_size=128, batch_size=3)
    _, resid = fit_global(fused, truth)
    assert np.abs(resid).max() < 1e-3
    # no step at any tile seam: the residual changes no faster across seams than anywhere
    grid = tile_grid(*truth.shape, 128, 0.25)
    seam_cols = sorted({int(t.window.col_off) for t in grid[0]} - {0})
    seam_rows = sorted({int(t.window.row_off) for row in grid for t in row[:1]} - {0})
    jump_c = np.abs(np.diff(resid, axis=1))
    jump_r = np.abs(np.diff(resid, axis=0))
    for c in seam_cols:
        assert jump_c[:, c - 1].max() < 1e-4
    for r in seam_rows:
        assert jump_r[r - 1].max() < 1e-4


def test_naive_blend_would_fail(truth):
    """The distortion is real: without alignment the same tiles disagree badly."""
    model = distorted_model(2)
    tile = truth[:128, :128]
    a = model(np.repeat(tile[None, ..., None], 3, -1))[0]
    b = model(np.repeat(tile[None, ..., None], 3, -1))[0]
    assert np.abs(a - b).max() > 0.05


def test_solution_is_equivariant_to_one_global_affine(truth):
    """Scaling every tile and the coarse map by one (s, t) scales the fusion by it."""
    grid = tile_grid(*truth.shape, 128, 0.25)
    tiles = [t for row in grid for t in row]
    rng = np.random.default_rng(0)
    preds = {t.id: rng.uniform(0.5, 2) * truth[t.row_slice, t.col_slice] + rng.uniform(-1, 1)
             for t in tiles}
    coarse = truth[::5, ::5] + 0.01 * rng.standard_normal(truth[::5, ::5].shape)

    def solve(scale, shift):
        c = scale * coarse + shift
        stats = {}
        pairs = []
        from tiledepth.tiling import earlier_neighbours, overlap_slices

        for t in tiles:
            p = preds[t.id] * 1.7 + 0.3  # tile predictions themselves are arbitrary
            valid = np.ones(t.shape, bool)
            under = align.upsample_window(c, truth.shape, t.window)
            stats[t.id] = align.tile_stats(t.id, p, valid, under)
            for o in earlier_neighbours(grid, t):
                so, st_ = overlap_slices(o, t)
                po = preds[o.id] * 1.7 + 0.3
                pairs.append(align.pair_stats(stats[o.id], stats[t.id], po[so], p[st_],
                                              valid[st_]))
        return align.solve_alignment(stats.values(), pairs, tile_area=128.0**2)

    base, moved = solve(1.0, 0.0), solve(2.5, -4.0)
    for k in base:
        assert moved[k].scale == pytest.approx(2.5 * base[k].scale, rel=1e-6)
        assert moved[k].shift == pytest.approx(2.5 * base[k].shift - 4.0, rel=1e-6, abs=1e-6)


def test_flat_and_mostly_masked_tiles_stay_finite():
    img = depth_field(300, 300)
    img[:150, :150] = 0.5  # a perfectly flat tile
    mask = np.ones(img.shape, bool)
    mask[150:, 150:] = False
    mask[290:, 290:] = True  # a tile with a few valid pixels only
    fused = tiledepth.estimate(img, model=distorted_model(4), mask=mask, tile_size=96,
                               overlap=0.25, coarse_size=64)
    assert np.isfinite(fused[mask]).all()
    assert np.isnan(fused[~mask]).all()
    # the flat area stays flat (to the coarse map's blur at the flat area's edge)
    assert np.ptp(fused[:120, :120]) < 0.01 * np.ptp(fused[mask])


def test_upsample_window_matches_pixel_centres():
    coarse = np.arange(12, dtype=np.float32).reshape(3, 4)
    up = align.upsample_window(coarse, (6, 8), Window(0, 0, 8, 6))
    assert up.shape == (6, 8)
    # a full-resolution 2x2 block averages back to the coarse pixel
    assert up.reshape(3, 2, 4, 2).mean(axis=(1, 3))[1, 1:3] == pytest.approx(coarse[1, 1:3])
    # windows agree with the whole
    part = align.upsample_window(coarse, (6, 8), Window(3, 2, 4, 3))
    np.testing.assert_array_equal(part, up[2:5, 3:7])


def test_fill_invalid_uses_nearest_valid():
    c = np.array([[1.0, 2.0, 3.0]], np.float32)
    v = np.array([[True, False, False]])
    np.testing.assert_array_equal(align.fill_invalid(c, v), [[1.0, 1.0, 1.0]])
