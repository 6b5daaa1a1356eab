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


def test_a_constant_prediction_or_too_few_pixels_are_not_scored():
    """A constant prediction was scored as the truth's mean (a scale of 0, or of rounding
    noise: 0.1 repeated has a centred moment of 2e-31): over a truth of 100 +- 2 m, delta1
    1.0 and AbsRel 0.01, a fine score for no relief at all; one or two pixels scored
    perfectly (a scale and shift fit them exactly). Both are refused now."""
    gt = 100.0 + 2.0 * np.sin(np.linspace(0.0, 20.0, 400)).reshape(20, 20)
    for value, space in [(0.1, "depth"), (7.0, "depth"), (0.1, "disparity")]:
        with pytest.raises(metrics.NothingToScore, match=r"^the prediction is constant over "
                                                         r"the 400 pixels compared") as info:
            metrics.depth_metrics(np.full(gt.shape, value), gt, space=space)
        assert info.value.constant and info.value.pixels == 400
    mask = np.zeros(gt.shape, bool)
    mask[3, 4] = True  # one pixel: a constant, but too few first
    with pytest.raises(ValueError, match=r"^only 1 pixel to compare: a scale and shift fit 1 "
                                         r"exactly; at least 3 are needed$") as info:
        metrics.depth_metrics(gt * 2.0, gt, mask=mask)
    assert isinstance(info.value, metrics.NothingToScore) and not info.value.constant
    mask[5, 6] = True
    with pytest.raises(metrics.NothingToScore, match=r"^only 2 pixels"):
        metrics.stream_metrics(lambda: [(gt * 2.0 + np.arange(20.0), gt, mask)])
    mask[7, 8] = True  # three: scored
    assert metrics.depth_metrics(gt + np.arange(20.0), gt, mask=mask).pixels == 3
    with pytest.raises(ValueError, match="no valid pixel"):  # none: as before
        metrics.depth_metrics(gt, gt, mask=np.zeros(gt.shape, bool))


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


def test_streamed_blocks_give_the_figures_of_one_block():
    """Blocks of 1 to 7 rows (gradients across their edges, NaN, a mask, ties): the figures
    of the whole array, to rounding, in both spaces."""
    rng = np.random.default_rng(1)
    gt = np.round(1 + 9 * rng.random((45, 70)), 1)
    pred = 0.3 * gt + 2 + rng.normal(0, 0.3, gt.shape)
    gt[rng.random(gt.shape) < 0.1] = np.nan
    pred[rng.random(gt.shape) < 0.05] = np.nan
    mask = rng.random(gt.shape) < 0.9
    tiles = [t for row in tile_grid(45, 70, 32, 0.25) for t in row]
    for space in metrics.SPACES:
        whole = metrics.depth_metrics(pred, gt, mask=mask, space=space).as_dict()
        seams = metrics.seam_ratio(pred, gt, tiles, mask=mask, space=space)
        for rows in (1, 2, 7):
            def blocks(rows=rows):
                return [(pred[i:i + rows], gt[i:i + rows], mask[i:i + rows])
                        for i in range(0, 45, rows)]
            streamed, streamed_seams = metrics.stream_metrics(blocks, space=space,
                                                              tiles=tiles)
            for key, value in streamed.as_dict().items():
                assert value == (pytest.approx(whole[key], rel=1e-12)
                                 if isinstance(value, float) else whole[key]), key
            assert streamed_seams == pytest.approx(seams, rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_streamed_percentiles_are_numpys_exactly(seed):
    """Histograms of 2 to 5 bins keeping at most 1 to 7 values: several passes narrow each
    rank down, through ties and values one ulp apart, to np.percentile's very figures."""
    rng = np.random.default_rng(seed)
    values = np.round(10 * rng.random(int(rng.integers(1, 300))), seed % 3)
    if seed % 4 == 0:
        values = np.r_[values, np.full(100, 5.0), np.full(30, np.nextafter(5.0, 6.0))]
    q = (2.0, 98.0, 50.0, 0.0, 100.0)
    chunks = np.array_split(rng.permutation(values), 4)
    found = metrics._Percentiles(q, values.min(), values.max(),
                                 bins=int(rng.integers(2, 6)), keep=int(rng.integers(1, 8)))
    for _ in range(60):
        for chunk in chunks:
            found.add(chunk)
        if found.narrow():
            break
    assert found.values() == tuple(np.percentile(values, q))


def test_absrel_and_rmse_score_the_aligned_values_below_zero_as_they_are():
    """The errors were computed on the aligned values clipped to 1e-9: a fit that goes
    below 0 (a compressed far range: 21 % of the pixels here) scored AbsRel 0.696 and RMSE
    11.10 where the error of s * pred + t is 1.99 and 12.14. Only delta1's ratio clips."""
    gt = np.exp(np.random.default_rng(0).uniform(0, np.log(100), (200, 200)))  # 1 .. 100 m
    pred = np.log(gt)  # a model that compresses the far range
    m = metrics.depth_metrics(pred, gt)
    aligned = m.scale * pred + m.shift
    assert 0.2 < (aligned < 0).mean() < 0.25
    rmse = np.sqrt(np.mean((aligned - gt) ** 2))
    lo, hi = np.percentile(gt, [2, 98])
    assert m.abs_rel == pytest.approx(np.mean(np.abs(aligned - gt) / gt), rel=1e-9)
    assert m.abs_rel == pytest.approx(1.9935, abs=1e-4)
    assert m.rmse == pytest.approx(rmse, rel=1e-9) and m.rmse == pytest.approx(12.1423, abs=1e-4)
    assert m.nrmse == pytest.approx(rmse / (hi - lo), rel=1e-9)
    ratio = np.maximum(aligned, 1e-9)  # delta1: a value at or below 0 is a miss
    assert m.delta1 == np.mean(np.maximum(ratio / gt, gt / ratio) < 1.25)


def test_metrics_and_mosaic_are_reached_from_the_package_without_importing_them_first():
    """``tiledepth.metrics`` and ``tiledepth.mosaic`` (which docs/surveys.md and batch's
    errors point to) were an AttributeError after ``import tiledepth``; reached now, at
    first use, and ``import tiledepth`` still imports neither them nor torch."""
    import subprocess
    import sys

    from conftest import child_env

    code = ("import sys, tiledepth\n"
            "assert not {'torch', 'tiledepth.metrics', 'tiledepth.mosaic'} & set(sys.modules)\n"
            "assert {'metrics', 'mosaic'} <= set(dir(tiledepth))\n"
            "print(tiledepth.metrics.depth_metrics.__name__, "
            "tiledepth.mosaic.run_mosaic.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["depth_metrics", "run_mosaic"]
