"""Metrics on hand-made cases with known answers."""

import numpy as np
import pytest

from tiledepth import metrics
from tiledepth.tiling import tile_grid


def ramp(h=40, w=50, lo=2.0, hi=6.0):
    return np.linspace(lo, hi, h * w).reshape(h, w)


def test_affine_prediction_scores_perfectly():
    gt = ramp()
    m = metrics.depth_metrics(-0.5 * gt + 7.0, gt)  # even inverted: scale -2, shift 14
    assert m.abs_rel == pytest.approx(0, abs=1e-12)
    assert m.nrmse == pytest.approx(0, abs=1e-12)
    assert m.delta1 == 1.0
    assert (m.scale, m.shift) == pytest.approx((-2.0, 14.0))
    assert m.pixels == gt.size


def test_known_error_gives_known_figures():
    gt = np.full((10, 10), 4.0)
    gt[:, 5:] = 8.0  # two planes
    pred = gt.copy()
    pred[0, 0] = 5.0  # one pixel off by 1 -> after LS alignment the error spreads slightly
    m = metrics.depth_metrics(pred, gt)
    # hand-computed least squares: fit s, t to 100 points
    p, g = pred.ravel(), gt.ravel()
    s, t = np.polyfit(p, g, 1)
    err = s * p + t - g
    assert m.rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    assert m.nrmse == pytest.approx(m.rmse / 4.0)  # 2-98 % range of gt: 8 - 4
    assert m.abs_rel == pytest.approx(np.mean(np.abs(err) / g))


def test_delta1_counts_pixels_beyond_25_percent():
    gt = np.ones((1, 100)) * 10.0
    gt[0, :50] = 20.0
    m = metrics.align_prediction(gt, gt)[0]
    assert np.allclose(m, gt)
    # a prediction whose aligned value is off by 30 % on 10 pixels
    pred = gt.copy()
    pred[0, 50:60] = 13.0
    res = metrics.depth_metrics(pred, gt)
    assert 0.85 <= res.delta1 <= 0.95


def test_mask_and_invalid_ground_truth_are_ignored():
    gt = ramp()
    pred = 2 * gt + 1
    pred[:5] = 1e6  # garbage where the mask is off
    mask = np.ones(gt.shape, bool)
    mask[:5] = False
    gt2 = gt.copy()
    gt2[10, 10] = np.nan
    gt2[11, 11] = 0.0
    m = metrics.depth_metrics(pred, gt2, mask=mask)
    assert m.nrmse == pytest.approx(0, abs=1e-9)
    assert m.pixels == mask.sum() - 2


def test_disparity_space_undoes_an_affine_disparity():
    gt = ramp(lo=1.0, hi=10.0)
    pred = 3.0 / gt + 0.2  # affine in 1/depth, not in depth
    assert metrics.depth_metrics(pred, gt, space="disparity").abs_rel < 1e-9
    assert metrics.depth_metrics(pred, gt, space="depth").abs_rel > 0.05
    with pytest.raises(ValueError, match="space"):
        metrics.depth_metrics(pred, gt, space="log")


def test_shape_mismatch_and_empty_comparison_raise():
    with pytest.raises(ValueError, match="same shape"):
        metrics.depth_metrics(np.ones((3, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="no valid pixel"):
        metrics.depth_metrics(np.ones((3, 3)), np.full((3, 3), np.nan))


def test_seam_ratio_sees_a_step_at_seams_only():
    gt = ramp(96, 160)
    grid = tile_grid(96, 160, 64, 0.25)
    tiles = [t for row in grid for t in row]
    rng = np.random.default_rng(0)
    noisy = gt + 0.01 * rng.standard_normal(gt.shape)  # uniform error: no seams
    assert metrics.seam_ratio(noisy, gt, tiles) == pytest.approx(1.0, abs=0.1)
    stepped = noisy.copy()
    cover = metrics.coverage(gt.shape, tiles)
    band_cols = np.nonzero(cover[0] > 1)[0]
    stepped[:, band_cols[::4]] += 0.2  # steps inside the overlap bands
    assert metrics.seam_ratio(stepped, gt, tiles) > 2.0


def test_overlap_consistency_of_known_offsets():
    grid = tile_grid(32, 56, 32, 0.25)  # two tiles side by side
    (a, b) = grid[0]
    truth = ramp(32, 56)
    aligned = {a.id: truth[a.row_slice, a.col_slice],
               b.id: truth[b.row_slice, b.col_slice] + 0.3}
    assert metrics.overlap_consistency([a, b], aligned, relative_to=3.0) == pytest.approx(0.1)
    aligned[b.id] = truth[b.row_slice, b.col_slice]
    assert metrics.overlap_consistency([a, b], aligned) == pytest.approx(0.0)
