"""``tiledepth eval``: metrics of a depth GeoTIFF against ground truth, through the CLI."""

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import depth_field, write_raster

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import InputError
from tiledepth.evaluation import evaluate_files


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def scene(tmp_path):
    d = 2.0 + depth_field(300, 400)  # depth 2 .. 3
    src = write_raster(tmp_path / "in.tif", np.repeat(((d - 2) * 255)[None], 3, 0)
                       .astype(np.uint8))
    gt = write_raster(tmp_path / "gt.tif", d[None].astype(np.float32))
    out = tiledepth.run(src, tmp_path / "pred.tif", model=lambda b: b[..., 0],
                        tile_size=128).output
    return out, gt, d


def test_eval_prints_the_metrics(scene):
    pred, gt, _ = scene
    res = invoke("eval", pred, gt)
    assert res.exit_code == 0, res.output
    lines = dict(line.split(None, 1) for line in res.output.splitlines()
                 if not line.startswith(("seam", "consistency")))
    assert float(lines["AbsRel"].split()[0]) < 0.005  # uint8 input: 1/255 quantisation
    assert float(lines["delta1"].split()[0]) == 1.0
    assert "seam ratio" in res.output and "consistency" in res.output


def test_eval_json_matches_the_library(scene, tmp_path):
    pred, gt, d = scene
    res = invoke("eval", pred, gt, "--json")
    assert res.exit_code == 0, res.output
    figures = json.loads(res.output)
    assert figures == pytest.approx(evaluate_files(pred, gt), nan_ok=True)
    assert figures["pixels"] == d.size
    assert figures["seam_ratio"] is not None and 0.5 < figures["seam_ratio"] < 1.5
    assert figures["flagged"] == 0 and figures["consistency"] < 0.01
    # a mask that keeps only the top half
    mask = np.zeros((1, *d.shape), np.uint8)
    mask[0, :150] = 1
    m = write_raster(tmp_path / "mask.tif", mask)
    half = json.loads(invoke("eval", pred, gt, "--mask", m, "--json").output)
    assert half["pixels"] == d.size // 2


def test_eval_height_ground_truth_and_disparity_space(scene, tmp_path):
    pred, _, d = scene
    height = write_raster(tmp_path / "h.tif", (10.0 - d)[None].astype(np.float32))
    figures = json.loads(invoke("eval", pred, height, "--gt-kind", "height", "--json").output)
    assert figures["nrmse"] < 0.01 and figures["scale"] > 0  # height turned into depth first
    # in disparity space a depth is inverted first: a depth off by a scale scores exactly (the
    # fit of 1 / depth to 1 / truth; the scene's relative depth, d - 2, has a shift: no fit)
    depth = write_raster(tmp_path / "d3.tif", (3.0 * d)[None].astype(np.float32))
    disp = json.loads(invoke("eval", depth, scene[1], "--space", "disparity", "--json").output)
    assert disp["space"] == "disparity" and disp["nrmse"] < 1e-6


def test_eval_refuses_mismatched_grids_in_one_line(scene, tmp_path):
    pred, _, _ = scene
    small = write_raster(tmp_path / "small.tif", np.ones((1, 30, 40), np.float32))
    res = invoke("eval", pred, small)
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "pass --resample" in res.output
    assert "400 x 300" in res.output and "40 x 30 px" in res.output  # width x height
    res = invoke("eval", pred, tmp_path / "missing.tif")
    assert res.exit_code == 2 and "no such file" in res.output


def test_eval_reads_the_prediction_kind_and_resamples_the_truth(scene, tmp_path):
    """A height prediction against a DSM: scored as depth below the top on both sides."""
    from rasterio.transform import from_origin

    _, _, d = scene
    height = 10.0 - d
    src = write_raster(tmp_path / "hin.tif", np.repeat(((d - 2) * 255)[None], 3, 0)
                       .astype(np.uint8))
    pred = tiledepth.run(src, tmp_path / "hpred.tif", model=lambda b: b[..., 0],
                         tile_size=128, output_kind="height").output
    # the DSM at half the resolution, its own grid
    coarse = height.reshape(150, 2, 200, 2).mean(axis=(1, 3))
    dsm = write_raster(tmp_path / "dsm.tif", coarse[None].astype(np.float32),
                       transform=from_origin(500000.0, 5400000.0, 1.0, 1.0))
    res = invoke("eval", pred, dsm)
    assert res.exit_code == 2 and "pass --resample" in res.output
    res = invoke("eval", pred, dsm, "--resample")
    assert res.exit_code == 2 and "holds height" in res.output and "--gt-kind" in res.output
    figures = json.loads(invoke("eval", pred, dsm, "--resample", "--gt-kind", "height",
                                "--json").output)
    assert figures["pred_kind"] == "height" and figures["gt_kind"] == "height"
    assert figures["scale"] > 0 and figures["nrmse"] < 0.02 and figures["delta1"] == 1.0
    assert figures["pixels"] > 0.95 * d.size
    # scored as if the height prediction were depth: the fit had to flip it
    with_depth = json.loads(invoke("eval", pred, dsm, "--resample", "--gt-kind", "depth",
                                   "--json").output)
    assert with_depth["scale"] < 0


def test_eval_refuses_a_ground_truth_on_another_grid_of_the_same_size(scene, tmp_path):
    """Same size is not the same grid: a truth shifted by 10 px, or with the same numbers in
    another CRS, is refused without --resample and reprojected with it (both were scored
    pixel by pixel: perfect scores against values of other places)."""
    from rasterio.transform import from_origin

    pred, _, d = scene
    shifted = write_raster(tmp_path / "shifted.tif", d[None].astype(np.float32),
                           transform=from_origin(500005.0, 5400000.0, 0.5, 0.5))
    res = invoke("eval", pred, shifted)
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and "pass --resample" in res.output
    assert "shifted by 10 px, 0 px" in res.output
    figures = json.loads(invoke("eval", pred, shifted, "--resample", "--json").output)
    assert figures["pixels"] == 300 * (400 - 10)  # the overlap of the two grids
    aligned = evaluate_files(pred, scene[1])["abs_rel"]
    assert figures["abs_rel"] > 3 * aligned  # each pixel against the truth 10 px east of it
    other_crs = write_raster(tmp_path / "crs.tif", d[None].astype(np.float32),
                             crs="EPSG:32612")
    res = invoke("eval", pred, other_crs)
    assert res.exit_code == 2 and "CRS EPSG:32612" in res.output and "--resample" in res.output
    with pytest.raises(InputError, match="no valid pixel"):  # reprojected: 6 degrees west
        evaluate_files(pred, other_crs, resample=True)
    mask = write_raster(tmp_path / "m.tif", np.ones((1, *d.shape), np.uint8),
                        transform=from_origin(500005.0, 5400000.0, 0.5, 0.5))
    res = invoke("eval", pred, scene[1], "--mask", mask)
    assert res.exit_code == 2 and "mask's grid" in res.output and "shifted" in res.output


def test_seam_ratio_of_a_split_output_is_that_of_its_window_of_the_mosaic(tmp_path):
    """A --mosaic --split output is scored on the fused map's tiles (its own corner is not
    theirs): the same seam ratio as its window of the whole map (it was 5.1 against 54)."""
    from conftest import TRANSFORM
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from tiledepth.metrics import coverage
    from tiledepth.mosaic import build_vrt, split_outputs
    from tiledepth.tiling import tile_grid

    h, w, half = 100, 300, 150
    yy, xx = np.mgrid[0:h, 0:w]
    truth = (2.0 + xx / w + 0.3 * np.sin(yy / 9)).astype(np.float32)
    bands = coverage((h, w), [t for row in tile_grid(h, w, 64, 0.25) for t in row]) > 1
    noise = np.random.default_rng(0).normal(0, 0.01, truth.shape)
    pred = (truth + np.where(bands, noise, 0)).astype(np.float32)  # seams, and only there
    fused = write_raster(tmp_path / "fused.tif", pred[None])
    with rasterio.open(fused, "r+") as ds:
        ds.update_tags(TILEDEPTH_VERSION="test", TILEDEPTH_TILE_SIZE="64",
                       TILEDEPTH_OVERLAP="0.25", TILEDEPTH_OUTPUT_KIND="depth")
        ds.set_band_description(1, "depth")
    halves = [Window(0, 0, half, h), Window(half, 0, w - half, h)]
    inputs = [write_raster(tmp_path / f"{n}.tif", np.zeros((3, h, half), np.uint8),
                           transform=window_transform(win, TRANSFORM))
              for n, win in zip("ab", halves, strict=True)]
    outputs = split_outputs(fused, build_vrt(inputs), [tmp_path / "a.depth.tif",
                                                       tmp_path / "b.depth.tif"])
    gt_b = write_raster(tmp_path / "gt_b.tif", truth[None, :, half:],
                        transform=window_transform(halves[1], TRANSFORM))
    member = evaluate_files(outputs[1], gt_b)["seam_ratio"]
    gt = write_raster(tmp_path / "gt.tif", truth[None])
    window = np.zeros((1, h, w), np.uint8)
    window[:, :, half:] = 1
    in_mosaic = evaluate_files(fused, gt, mask=write_raster(tmp_path / "m.tif", window))
    whole = evaluate_files(fused, gt)["seam_ratio"]
    assert whole > 20 and in_mosaic["seam_ratio"] > 20
    assert member == pytest.approx(in_mosaic["seam_ratio"], rel=1e-3)


def test_eval_streams_blocks_of_rows_with_the_figures_of_whole_arrays(scene, tmp_path,
                                                                      monkeypatch):
    """Read three rows at a time, in each pass, eval gives what the whole arrays give: the
    least-squares fit, AbsRel, delta1, the exact 2-98 % range and the seam ratio."""
    from tiledepth import evaluation
    from tiledepth.metrics import coverage

    pred, gt, d = scene
    keep = np.ones(d.shape, bool)
    keep[40:90, 100:250] = False
    mask = write_raster(tmp_path / "mask.tif", keep[None].astype(np.uint8))
    monkeypatch.setattr(evaluation, "WINDOW_PIXELS", 3 * d.shape[1])
    heights, read = [], evaluation._Band.read
    monkeypatch.setattr(evaluation._Band, "read",
                        lambda band, r0, r1: heights.append(r1 - r0) or read(band, r0, r1))
    streamed = evaluate_files(pred, gt, mask=mask)
    assert max(heights) == 3 and len(heights) >= 3 * 2 * d.shape[0] // 3  # 3 passes, 2 rasters
    # the whole arrays, in NumPy's own words
    with rasterio.open(pred) as ds:
        p, tags = ds.read(1).astype(np.float64), ds.tags()
    with rasterio.open(gt) as ds:
        g = ds.read(1).astype(np.float64)
    ok = keep & np.isfinite(p) & np.isfinite(g) & (g > 0)
    s, t = np.polyfit(p[ok], g[ok], 1)
    a = np.maximum(s * p[ok] + t, 1e-9)
    lo, hi = np.percentile(g[ok], [2, 98])
    rmse = np.sqrt(np.mean((a - g[ok]) ** 2))
    expected = {"scale": s, "shift": t, "abs_rel": np.mean(np.abs(a - g[ok]) / g[ok]),
                "delta1": np.mean(np.maximum(a / g[ok], g[ok] / a) < 1.25), "rmse": rmse,
                "nrmse": rmse / (hi - lo)}
    for key, value in expected.items():
        assert streamed[key] == pytest.approx(value, rel=1e-9), key
    assert streamed["pixels"] == ok.sum()
    aligned = np.where(ok, s * p + t, np.nan)
    g = np.where(ok, g, np.nan)
    err = np.hypot(np.diff(aligned, axis=0)[:, :-1] - np.diff(g, axis=0)[:, :-1],
                   np.diff(aligned, axis=1)[:-1] - np.diff(g, axis=1)[:-1])
    cover = coverage(d.shape, evaluation._tiles_from_tags(tags, d.shape))[:-1, :-1]
    counted = np.isfinite(err)
    seams = err[counted & (cover > 1)].mean() / err[counted & (cover == 1)].mean()
    assert streamed["seam_ratio"] == pytest.approx(seams, rel=1e-9)
    monkeypatch.setattr(evaluation, "WINDOW_PIXELS", d.size)  # one block: the same figures
    whole = evaluate_files(pred, gt, mask=mask)
    assert whole.keys() == streamed.keys()
    for key, value in whole.items():
        assert streamed[key] == (pytest.approx(value, rel=1e-9)
                                 if isinstance(value, float) else value), key


def _tagged(path, values, description, **tags):
    """A one-band float32 raster of ``values`` with a band description and tags."""
    out = write_raster(path, np.asarray(values, np.float32)[None])
    with rasterio.open(out, "r+") as ds:
        ds.set_band_description(1, description)
        if tags:
            ds.update_tags(**tags)
    return out


@pytest.fixture
def far_truth(tmp_path):
    """A truth from 1 to 20 m (1 / depth far from affine in depth) and its path."""
    yy, xx = np.mgrid[0:40, 0:50]
    depth = 1.0 + 19.0 * (xx + 50 * yy) / (40 * 50 - 1)
    return depth, _tagged(tmp_path / "far_gt.tif", depth, "depth")


def test_disparity_is_scored_as_disparity_in_disparity_space(far_truth, tmp_path):
    """A disparity prediction was inverted to depth and then fitted, as if it were disparity,
    to 1 / truth: a perfect disparity scored AbsRel 0.21, delta1 0.53 by default, and its
    values <= 0 (usual for an affine-invariant disparity) were left out; a perfect depth
    with --space disparity scored 0.21 too."""
    depth, gt = far_truth
    affine = _tagged(tmp_path / "disp.tif", 2.0 / depth - 0.3, "disparity")  # -0.2 .. 1.7
    figures = evaluate_files(affine, gt)
    assert figures["space"] == "disparity" and figures["pred_kind"] == "disparity"
    assert figures["abs_rel"] < 1e-6 and figures["delta1"] == 1.0
    assert figures["pixels"] == depth.size  # the negative disparities count
    assert figures["scale"] == pytest.approx(0.5, rel=1e-5)
    inverse = _tagged(tmp_path / "inv.tif", 1.0 / depth, "inverse-depth")
    assert evaluate_files(inverse, gt)["abs_rel"] < 1e-6
    assert evaluate_files(inverse, gt, space="depth")["abs_rel"] < 1e-6  # inverted
    exact = _tagged(tmp_path / "depth.tif", 2.0 * depth, "depth")
    for space in ("depth", "disparity"):
        figures = evaluate_files(exact, gt, space=space)
        assert figures["space"] == space and figures["abs_rel"] < 1e-6, space


def test_a_disparity_models_uncalibrated_height_is_scored_in_disparity_space(far_truth,
                                                                              tmp_path):
    """A disparity model's uncalibrated height is its disparity minus the smallest: scored
    in depth space by default, as a height (AbsRel 0.056 on the audit's run, 0.0005 in
    disparity space). Calibrated, it is metres: depth space."""
    depth, gt = far_truth
    disparity = 2.0 / depth + 0.1
    height = _tagged(tmp_path / "h.tif", disparity - disparity.min(), "height",
                     TILEDEPTH_VERSION="test", TILEDEPTH_KIND="disparity")
    figures = evaluate_files(height, gt, gt_kind="depth")
    assert figures["space"] == "disparity" and figures["pred_kind"] == "height"
    assert figures["abs_rel"] < 1e-6 and figures["pixels"] == depth.size
    metres = _tagged(tmp_path / "m.tif", 30.0 - depth, "height", TILEDEPTH_VERSION="test",
                     TILEDEPTH_KIND="disparity", TILEDEPTH_CALIBRATION="control",
                     TILEDEPTH_CALIBRATION_SCALE="2.5")
    figures = evaluate_files(metres, gt, gt_kind="depth")
    assert figures["space"] == "depth" and figures["abs_rel"] < 1e-6


def test_a_disparity_models_run_is_scored_in_disparity_space(tmp_path):
    """End to end: a disparity model's depth (its disparity) and height outputs, scored by
    default against the true depth 1 + 4 red, fit their disparity."""
    from toy_models import disparity_red

    red = depth_field(160, 200)
    src = write_raster(tmp_path / "in.tif", np.repeat((red * 255).astype(np.uint8)[None], 3, 0))
    truth = 1.0 + 4.0 * np.round(red * 255) / 255
    gt = write_raster(tmp_path / "gt.tif", truth[None].astype(np.float32))
    for kind in ("depth", "height"):
        out = tiledepth.run(src, tmp_path / f"{kind}.tif", model=disparity_red,
                            tile_size=96, output_kind=kind).output
        figures = evaluate_files(out, gt, gt_kind="depth")
        assert figures["space"] == "disparity", kind
        assert figures["abs_rel"] < 0.005 and figures["delta1"] == 1.0, kind


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"flagged": 3}',
                                  '{"consistency": "x", "flagged": []}', "\xff\xfe"])
def test_an_unrelated_json_beside_the_prediction_is_left_alone(scene, tmp_path, text):
    """eval read any <stem>.json beside the prediction as its sidecar: a list, invalid JSON or
    another dict crashed it (AttributeError, JSONDecodeError, TypeError) and the metrics
    were lost; a raster that is no tiledepth output has no sidecar at all."""
    pred, gt, _ = scene
    sidecar = pred.with_suffix(".json")
    report = json.loads(sidecar.read_text())
    sidecar.write_bytes(text.encode("latin-1"))
    figures = evaluate_files(pred, gt)
    assert "consistency" not in figures and figures["abs_rel"] < 0.005
    res = invoke("eval", pred, gt)
    assert res.exit_code == 0 and "consistency" not in res.output, res.output
    sidecar.write_text(json.dumps(report))
    assert "consistency" in evaluate_files(pred, gt)
    other = write_raster(tmp_path / "scene.tif", rasterio.open(pred).read(1)[None])
    (tmp_path / "scene.json").write_text(json.dumps(report))  # the same report: not its own
    assert "consistency" not in evaluate_files(other, gt)


def test_the_truths_band_scale_and_offset_apply(tmp_path):
    """A truth stored as centimetre counts over 10 m (depth = 10 + 0.01 count) was scored as
    counts, and its count 0 (10 m) left out as depth <= 0; a reference's scale applies."""
    yy, xx = np.mgrid[0:50, 0:60]
    depth = 10.0 + 40.0 * xx / 59 + 10.0 * yy / 49
    pred = _tagged(tmp_path / "pred.tif", depth, "depth")
    gt = write_raster(tmp_path / "gt.tif", np.round((depth - 10) / 0.01)[None].astype(np.uint16))
    with rasterio.open(gt, "r+") as ds:
        ds.scales, ds.offsets = (0.01,), (10.0,)
    figures = evaluate_files(pred, gt)
    assert figures["pixels"] == depth.size
    assert figures["scale"] == pytest.approx(1.0, abs=1e-4)  # metres against metres
    assert figures["rmse"] < 0.005 and figures["abs_rel"] < 1e-4


def test_resample_compares_pixel_sizes_in_the_predictions_crs(tmp_path):
    """A coarse truth in degrees (0.0003 deg, about 30 m) under a 2 m UTM prediction was
    judged finer (0.0003 < 2: units of two CRSs) and upsampled with 'average' (blocky):
    AbsRel 0.055 (2e-8 bilinear) for a prediction that is its bilinear interpolation."""
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform_bounds

    pred_transform = from_origin(500000.0, 5450000.0, 2.0, 2.0)  # 120 x 120 px of 2 m
    w, s, e, n = transform_bounds("EPSG:32611", "EPSG:4326", 499900.0, 5449660.0, 500340.0,
                                  5450100.0)
    res = 0.0003
    gt_transform = from_origin(w, n, res, res)
    rows, cols = int((n - s) / res) + 1, int((e - w) / res) + 1
    lat, lon = np.mgrid[0:rows, 0:cols] * res
    truth = 50.0 + 4e7 * ((lon - lon.mean()) ** 2 + (lat - lat.mean()) ** 2)  # a bowl
    gt = write_raster(tmp_path / "gt.tif", truth[None].astype(np.float32), crs="EPSG:4326",
                      transform=gt_transform)
    pred = np.full((120, 120), np.nan)
    reproject(truth.astype(np.float32).astype(np.float64), pred, src_transform=gt_transform,
              src_crs="EPSG:4326", dst_transform=pred_transform, dst_crs="EPSG:32611",
              resampling=Resampling.bilinear, dst_nodata=np.nan)
    pred = write_raster(tmp_path / "pred.tif", pred[None].astype(np.float32),
                        crs="EPSG:32611", transform=pred_transform)
    figures = evaluate_files(pred, gt, resample=True)
    assert figures["pixels"] == 120 * 120
    assert figures["abs_rel"] < 1e-5 and figures["nrmse"] < 1e-4  # bilinear, as it was made


def test_a_disparity_ground_truth_is_inverted(far_truth, tmp_path):
    """A truth whose band says disparity or inverse-depth was scored as depth (the --gt-kind
    default is what its band says): a perfect depth prediction scored AbsRel 0.34. It is
    inverted, its values <= 0 left out, and the report says so."""
    depth, _ = far_truth
    pred = _tagged(tmp_path / "pred.tif", depth, "depth")
    inverse = 1.0 / depth
    inverse[0, :10] = 0.0  # no depth: left out, as a depth <= 0 is
    inverse[1, :5] = -1.0
    for kind in ("disparity", "inverse-depth"):
        gt = _tagged(tmp_path / f"{kind}.tif", inverse, kind)
        figures = evaluate_files(pred, gt)
        assert figures["gt_kind"] == kind and figures["space"] == "depth"
        assert figures["abs_rel"] < 1e-6 and figures["delta1"] == 1.0
        assert figures["pixels"] == depth.size - 15
        assert figures["scale"] == pytest.approx(1.0, abs=1e-5)
        res = invoke("eval", pred, gt)
        assert res.exit_code == 0, res.output
        assert f"ground truth {kind} (scored as 1 / value)" in res.output
    # a disparity prediction against it: fitted in disparity space to 1 / (1 / value)
    disp = _tagged(tmp_path / "disp.tif", 3.0 / depth + 0.1, "disparity")
    figures = evaluate_files(disp, gt)
    assert figures["space"] == "disparity" and figures["abs_rel"] < 1e-6
    assert figures["scale"] == pytest.approx(1 / 3, rel=1e-5)
    # said otherwise, the option wins
    assert evaluate_files(pred, gt, gt_kind="depth")["gt_kind"] == "depth"


def test_eval_json_of_a_flat_truth_is_valid_json(tmp_path):
    """A truth whose range is 0 has no NRMSE: --json printed a bare NaN (not JSON)."""
    rng = np.random.default_rng(0)
    pred = write_raster(tmp_path / "pred.tif", rng.uniform(1, 2, (1, 20, 20)).astype(np.float32))
    gt = write_raster(tmp_path / "gt.tif", np.full((1, 20, 20), 7.0, np.float32))
    res = invoke("eval", pred, gt, "--json")
    assert res.exit_code == 0, res.output

    def refuse(constant):
        raise ValueError(constant)

    figures = json.loads(res.output, parse_constant=refuse)  # strict: no NaN, no Infinity
    assert figures["nrmse"] is None and figures["pixels"] == 400
    assert figures["shift"] == pytest.approx(7.0)
    assert evaluate_files(pred, gt)["nrmse"] is None
    res = invoke("eval", pred, gt)
    assert res.exit_code == 0 and "NRMSE        n/a" in res.output, res.output


def test_eval_names_the_raster_that_leaves_no_pixel_to_compare(scene, tmp_path):
    """With no pixel to compare, the line named the truth and said it (or the mask) was empty
    whatever the cause: an all-NaN prediction, a truth of heights below 0 scored as depth, a
    truth beside the prediction. Now it names the raster at fault and what to do."""
    from rasterio.transform import from_origin

    pred, gt, d = scene
    empty = write_raster(tmp_path / "empty.tif", np.full((1, *d.shape), np.nan, np.float32))
    below = write_raster(tmp_path / "below.tif", (-d)[None].astype(np.float32))
    beside = write_raster(tmp_path / "beside.tif", d[None].astype(np.float32),
                          transform=from_origin(600000.0, 5400000.0, 0.5, 0.5))
    zero = write_raster(tmp_path / "zero.tif", np.zeros((1, *d.shape), np.uint8))
    cases = [
        ((empty, gt), f"{empty}: no valid pixel to compare: the prediction has no value (no "
                      "data everywhere)"),
        ((pred, empty), f"{empty}: no valid pixel to compare: the ground truth has no value "
                        "(no data everywhere)"),
        ((pred, below), f"{below}: no valid pixel to compare: the ground truth has no value "
                        "above 0, which depth needs; for heights (a DSM, DTM or CHM) pass "
                        "--gt-kind height"),
        ((pred, beside, "--resample"),
         f"{beside}: no valid pixel to compare: the ground truth does not overlap the "
         "prediction (check the extents and CRSs of both)"),
        ((pred, gt, "--mask", zero),
         f"{zero}: no valid pixel to compare: the mask is 0 (or no data) wherever the "
         "prediction and the ground truth both have values"),
    ]
    for args, line in cases:
        res = invoke("eval", *args)
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines() == [f"tiledepth: error: {line}"]
    # the heights, said to be heights, are scored
    assert evaluate_files(pred, below, gt_kind="height")["pixels"] == d.size


def test_eval_refuses_a_constant_prediction_and_too_few_pixels(scene, tmp_path):
    """A constant prediction was scored as the truth's mean (scale 0: AbsRel 0.68, NRMSE 0.30
    here; delta1 1.0 over a truth of 100 +- 2 m), and one or two pixels in common scored
    perfectly (AbsRel 0, delta1 1: a scale and shift fit them exactly). Each is one line now,
    naming the prediction."""
    pred, gt, d = scene
    flat = write_raster(tmp_path / "flat.tif", np.full((1, *d.shape), 7.0, np.float32))
    few = {}
    for n in (1, 2, 3):
        values = np.full((1, *d.shape), np.nan, np.float32)
        values[0, 10, 10:10 + n] = [2.0, 2.5, 2.9][:n]
        few[n] = write_raster(tmp_path / f"few{n}.tif", values)
    cases = [
        ((flat, gt), f"{flat}: the prediction has no relief to score: it is constant over the "
                     f"{d.size} pixels compared with the ground truth (a scale and shift fitted "
                     "to it leave the truth's mean); check that it is the output you meant"),
        ((flat, gt, "--space", "disparity"), f"{flat}: the prediction has no relief to score: "
         f"it is constant over the {d.size} pixels"),
        ((few[1], gt), f"{few[1]}: only 1 pixel to compare with gt.tif, and a scale and shift "
                       "fit 2 exactly: at least 3 are needed (check the rasters' no data and "
                       "extents)"),
        ((few[2], gt), f"{few[2]}: only 2 pixels to compare with gt.tif, and a scale and shift "
                       "fit 2 exactly: at least 3 are needed (check the rasters' no data and "
                       "extents)"),
        ((pred, gt, "--mask", few[2]), f"{pred}: only 2 pixels to compare with gt.tif under "
                                       "few2.tif, and a scale and shift fit 2 exactly"),
    ]
    for args, line in cases:
        res = invoke("eval", *args)
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert res.output.strip().startswith(f"tiledepth: error: {line}"), res.output
    with pytest.raises(InputError, match="no relief to score"):
        evaluate_files(flat, gt)
    assert evaluate_files(few[3], gt)["pixels"] == 3  # three: scored


def test_eval_of_a_url_says_local_files_only(scene):
    """``tiledepth eval https://h/p.tif gt.tif``: the path was a Path, its ``//`` folded, and
    the line said ``https:/h/p.tif: no such file (the prediction)``."""
    pred, gt, _ = scene
    for args, url in [(("https://example.com/p.tif", gt), "https://example.com/p.tif"),
                      ((pred, "/vsis3/bucket/gt.tif"), "/vsis3/bucket/gt.tif"),
                      ((pred, gt, "--mask", "s3://bucket/m.tif"), "s3://bucket/m.tif")]:
        res = invoke("eval", *args)
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines() == [
            f"tiledepth: error: {url}: tiledepth eval reads local files only, not a URL or "
            "GDAL /vsi path; download it first and score the local copy"]
