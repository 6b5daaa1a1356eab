"""Output kinds and metric calibration: robust fits, references in other CRSs, control points."""

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, depth_field, write_raster
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from toy_models import RedWithSpread, affine_red, disparity_red, metric_red, red

import tiledepth
from tiledepth.calibrate import Target, ValueMap, cell_means, kept_samples, robust_fit
from tiledepth.cli import main
from tiledepth.errors import InputError, OptionError
from tiledepth.export_formats import up_sign

H, W = 240, 320
SCALE, SHIFT = -20.0, 50.0  # height = SHIFT + SCALE * depth


@pytest.fixture
def scene(tmp_path):
    """An RGB raster whose red band is the depth d, and the true height 50 - 20 d."""
    d = np.round(depth_field(H, W) * 255) / 255
    src = write_raster(tmp_path / "in.tif", np.repeat((d * 255).astype(np.uint8)[None], 3, 0))
    return src, d, SHIFT + SCALE * d


def write_reference(path, height, *, factor=4, crs=CRS):
    """The height 4x coarser (block means), optionally reprojected into another CRS."""
    h, w = height.shape
    coarse = height.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    transform = from_origin(500000.0, 5400000.0, 0.5 * factor, 0.5 * factor)
    ref = write_raster(path, coarse[None].astype(np.float32), transform=transform)
    if crs == CRS:
        return ref
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(ref) as src:
        t, w2, h2 = calculate_default_transform(src.crs, crs, src.width, src.height,
                                                *src.bounds)
        out = np.full((h2, w2), -9999.0, np.float32)
        reproject(rasterio.band(src, 1), out, dst_transform=t, dst_crs=crs,
                  resampling=rasterio.enums.Resampling.bilinear, dst_nodata=-9999.0)
    return write_raster(path.with_name("ref_other_crs.tif"), out[None], crs=crs, transform=t,
                        nodata=-9999.0)


def test_robust_fit_ignores_gross_outliers():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 500)
    y = 7.5 * x - 3.0 + rng.normal(0, 0.01, 500)
    y[:40] += rng.uniform(20, 50, 40)  # 8% gross outliers
    scale, shift, rmse = robust_fit(x, y)
    assert scale == pytest.approx(7.5, abs=0.02) and shift == pytest.approx(-3.0, abs=0.02)
    assert rmse > 5  # the RMSE reports all residuals, outliers included
    ols = np.polyfit(x, y, 1)
    assert abs(ols[0] - 7.5) > 0.5  # where plain least squares is pulled off
    with pytest.raises(ValueError, match="constant"):
        robust_fit(np.ones(5), np.arange(5.0))


def test_cell_means_drop_sparse_cells():
    v = np.ones((4, 4))
    v[:2, :2] = np.nan
    v[2, 2] = np.nan
    out = cell_means(v, np.arange(4), np.arange(4), 2, (2, 2))
    assert np.isnan(out[0, 0]) and out[1, 1] == 1.0 and out[0, 1] == 1.0


def test_value_maps():
    f = np.array([0.0, 0.5, 1.0, np.nan])
    np.testing.assert_allclose(ValueMap("height", scale=-1, shift=1).apply(f), [1, 0.5, 0, np.nan])
    inv = ValueMap("inverse-depth", near=0.0, far=1.0).apply(f)
    np.testing.assert_allclose(inv, [1.0, 1 / 1.5, 0.5, np.nan], rtol=1e-6)
    spread = ValueMap("depth", scale=-20.0).apply_uncertainty(f, np.full(4, 0.1))
    np.testing.assert_allclose(spread[:3], 2.0)


def test_inverse_depth_of_a_flat_map_is_uniform():
    """A flat prediction (a lake, a car park, a model that gives zeros) made noise between
    0 and 4: the fused values' float32 round-off divided by a span of 1e-12."""
    noisy = np.float32(0.3) + np.array([[0.0, 6e-7, -3e-7], [1.2e-7, 0.0, np.nan]], np.float32)
    for near, far, fused in ((0.3, 0.3, noisy), (0.0, 0.0, np.zeros((2, 3), np.float32)),
                             (0.3, float(np.nextafter(np.float32(0.3), np.float32(1))), noisy)):
        for space in ("depth", "disparity"):
            values = ValueMap("inverse-depth", near=near, far=far, space=space)
            out = values.apply(fused)
            assert np.array_equal(out, np.where(np.isnan(fused), np.nan, 1.0), equal_nan=True)
            assert np.nanmax(values.apply_uncertainty(fused, np.full(fused.shape, 0.1))) == 0
    c = np.full((150, 170, 3), 0.3, np.float32)  # a constant image, through the engine
    for model in (red, affine_red, lambda b: np.zeros(b.shape[:3], np.float32)):
        inv = tiledepth.estimate(c, model=model, tile_size=64, output_kind="inverse-depth")
        assert (inv == 1.0).all()


def test_inverse_depth_stays_in_its_range():
    f = np.array([-5.0, -1.0, 0.0, 0.5, 1.0, 3.0, 1e9])  # near 0, far 1: beyond both ends
    depth = ValueMap("inverse-depth", near=0.0, far=1.0).apply(f)
    assert depth.min() == 0.5 and depth.max() == 1.0  # was 4 at f <= -0.75
    np.testing.assert_allclose(depth[2:5], [1.0, 1 / 1.5, 0.5], rtol=1e-6)
    disparity = ValueMap("inverse-depth", near=1.0, far=0.0, space="disparity").apply(f)
    np.testing.assert_allclose(disparity, [0.5, 0.5, 0.5, 0.75, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("model_kind", ["depth", "disparity", "metric_depth"])
def test_uncalibrated_value_maps_follow_the_models_space(model_kind):
    """Height grows and inverse depth grows nearer whatever the model's space (disparity's
    were upside down); metric height stays in metres, 0 at the farthest point."""
    dist = np.linspace(10.0, 30.0, 9)  # metres, nearest first
    fused = {"depth": (dist - 10) / 20, "disparity": 2.0 / dist + 0.1,
             "metric_depth": dist}[model_kind].astype(np.float32)
    out = {}
    for kind in ("depth", "height", "inverse-depth"):
        values, cal = Target(kind).for_model(model_kind).value_map(fused, None, shape=(9, 1))
        out[kind] = values.apply(fused).astype(np.float64)
        assert cal is None
    assert np.all(np.diff(out["height"]) < 0) and out["height"][-1] == 0  # farther: lower
    assert np.all(np.diff(out["inverse-depth"]) < 0)
    assert out["inverse-depth"][0] == 1.0 and out["inverse-depth"][-1] == 0.5
    assert out["depth"].tobytes() == fused.astype(np.float64).tobytes()  # the model's values
    if model_kind == "metric_depth":
        np.testing.assert_allclose(out["height"], 30.0 - dist, atol=1e-5)
    with pytest.raises(ValueError, match="model_kind"):
        Target("height").for_model("height")


def test_the_identity_value_map_gives_the_affine_maps_bytes():
    f = np.array([[0.25, -0.0, 0.0, np.nan], [1e-30, -3e38, 7.5, 1 / 3]], np.float32)
    out = ValueMap("depth").apply(f)  # uncalibrated depth: scale 1, shift 0
    affine = (1.0 * f.astype(np.float64) + 0.0).astype(np.float32)
    assert out.dtype == np.float32 and out is not f and out.tobytes() == affine.tobytes()
    assert not np.signbit(out[0, 1])  # -0 becomes 0, as in float64
    out[0, 0] = 9.0  # a new array: the blended window is not changed
    assert f[0, 0] == 0.25


def test_uncalibrated_kinds(scene, tmp_path):
    src, d, _ = scene
    out = {}
    for kind in ("depth", "height", "inverse-depth"):
        r = tiledepth.run(src, tmp_path / f"{kind}.tif", model=red, tile_size=128,
                          output_kind=kind, anchor_blur=0)  # an exact model: a sharp anchor
        with rasterio.open(r.output) as ds:
            out[kind] = ds.read(1).astype(np.float64)
            assert ds.tags()["TILEDEPTH_OUTPUT_KIND"] == kind
    np.testing.assert_allclose(out["depth"], d, atol=2e-3)
    far = out["height"] + out["depth"]  # far minus depth: the coarse map's far end
    assert np.ptp(far) < 2e-3 and far.mean() == pytest.approx(d.max(), abs=0.01)
    inv = out["inverse-depth"]
    assert 0.48 <= inv.min() < 0.52 and 0.98 < inv.max() <= 1.02  # about [0.5, 1]
    np.testing.assert_allclose(inv, 1 / (1 + out["depth"] / far.mean()), atol=0.02)


@pytest.mark.parametrize("crs", [CRS, "EPSG:4326"])
def test_reference_in_any_crs_recovers_scale_and_shift(scene, tmp_path, crs):
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height, crs=crs)
    r = tiledepth.run(src, tmp_path / "h.tif", model=red, tile_size=128, reference=ref,
                      output_kind="height", anchor_blur=0)  # an exact model: a sharp anchor
    cal = r.calibration
    tol = 0.002 if crs == CRS else 0.01
    assert cal.source == "reference" and cal.samples > 1000
    assert cal.scale == pytest.approx(SCALE, rel=tol) and cal.shift == pytest.approx(SHIFT,
                                                                                      rel=tol)
    assert cal.rmse < (0.02 if crs == CRS else 0.1)
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
        tags = ds.tags()
    assert np.sqrt(np.mean((out - height) ** 2)) < (0.05 if crs == CRS else 0.2)  # metres
    assert float(tags["TILEDEPTH_CALIBRATION_RMSE"]) == pytest.approx(cal.rmse, rel=1e-5)
    assert "metres" in tags["TILEDEPTH_VALUES"]


def test_a_rotated_input_grid_is_calibrated_to_a_north_up_reference(scene, tmp_path):
    """The scene on a grid turned 90 degrees (its rows run east): its pixel is the same
    0.5 m (the square root of the pixel's area; the product of the transform's diagonal
    terms, 0 here, divided by zero), and the north-up reference calibrates it as well."""
    from affine import Affine

    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    with rasterio.open(src) as ds:
        image = ds.read()
    turned = np.ascontiguousarray(image[:, ::-1, :].transpose(0, 2, 1))  # [r, c] = [H-1-c, r]
    grid = Affine(0.0, 0.5, 500000.0, 0.5, 0.0, 5400000.0 - 0.5 * H)
    rotated = write_raster(tmp_path / "turned.tif", turned, transform=grid)
    r = tiledepth.run(rotated, tmp_path / "h.tif", model=red, tile_size=128, reference=ref,
                      output_kind="height", anchor_blur=0)
    cal = r.calibration
    assert cal.source == "reference" and cal.samples > 1000
    assert cal.scale == pytest.approx(SCALE, rel=0.01)
    assert cal.shift == pytest.approx(SHIFT, rel=0.01)
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
        assert ds.transform == grid
    assert np.sqrt(np.mean((out - height[::-1].T) ** 2)) < 0.1  # metres


def test_depth_kind_is_metres_below_the_highest_reference_point(scene, tmp_path):
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    r = tiledepth.run(src, tmp_path / "d.tif", model=affine_red, tile_size=128,
                      reference=ref, output_kind="depth")
    with rasterio.open(ref) as ds:
        top = ds.read(1).max()
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
    assert np.sqrt(np.mean((out - (top - height)) ** 2)) < 0.1


def test_anchor_reference_puts_the_fusion_in_metres(scene, tmp_path):
    """With --anchor reference, tiles align to the reference itself: the fit is ~identity."""
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    r = tiledepth.run(src, tmp_path / "a.tif", model=affine_red, tile_size=96,
                      reference=ref, anchor="reference", output_kind="height")
    assert r.calibration.scale == pytest.approx(1.0, abs=0.01)
    assert abs(r.calibration.shift) < 0.5
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
        assert ds.tags()["TILEDEPTH_ANCHOR"] == "reference"
    assert np.sqrt(np.mean((out - height) ** 2)) < 0.1


@pytest.mark.parametrize("output_kind", ["height", "depth"])
def test_anchor_reference_gives_a_metric_models_tiles_a_shift(scene, tmp_path, output_kind):
    """A metric model's tiles were aligned to the reference anchor with a scale only: the
    reference's heights (or metres below its top) are not the model's metric frame (here
    height = 60 - metric depth), so the tiles could not reach them: 1.67 m RMSE in height
    and 0.51 m in depth, against 8e-5 m with the model's anchor, and nothing said so."""
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    with rasterio.open(ref) as ds:
        top = float(ds.read(1).max())
    truth = height if output_kind == "height" else top - height
    r = tiledepth.run(src, tmp_path / "m.tif", model=metric_red, tile_size=128,
                      reference=ref, anchor="reference", output_kind=output_kind)
    with rasterio.open(r.output) as ds:
        out, tags = ds.read(1), ds.tags()
    # the reference is 4x coarser: its block means cost 2 mm, the scale-only fit 0.5 to 1.7 m
    assert np.sqrt(np.mean((out - truth) ** 2)) < 0.01  # metres
    assert tags["TILEDEPTH_FIT"] == "scale_shift"
    with open(r.sidecar) as f:
        assert json.load(f)["fit"] == "scale_shift"


def red_upside_down_where_marked(batch):
    """Depth = the red channel, but upside down (1 - red) in a 128 px tile call whose blue
    band is marked: one tile inverted on purpose, as a failed model call can be."""
    out = batch[..., 0].copy()
    for k, image in enumerate(batch):
        if image.shape[:2] == (128, 128) and image[..., 2].max() > 0.5:
            out[k] = 1.0 - out[k]
    return out


@pytest.mark.parametrize(("model", "output_kind"), [(red, "height"), (disparity_red, "depth")])
def test_a_reference_anchor_the_other_way_up_flags_no_tile(scene, tmp_path, model,
                                                           output_kind):
    """A depth model aligned to a reference's heights (or a disparity model to metres below
    its top) has a negative scale in every tile by nature: every tile was flagged
    negative-scale ("9 of 9 tiles flagged"), though the output was right."""
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    r = tiledepth.run(src, tmp_path / "o.tif", model=model, tile_size=128, reference=ref,
                      anchor="reference", output_kind=output_kind)
    with open(r.sidecar) as f:
        assert json.load(f)["flagged"] == []
    assert r.flagged == 0
    with rasterio.open(r.output) as ds:
        # the values are the output kind in metres, whatever the model's kind: the band
        # says so (a disparity model's said 'disparity', and exports and the hillshade
        # took its depth for disparity, upside down)
        assert ds.descriptions[0] == output_kind
        assert up_sign(ds.tags(), ds.descriptions[0]) == (1.0 if model is red else -1.0)
        if model is red:
            assert np.sqrt(np.mean((ds.read(1) - height) ** 2)) < 0.01  # metres


@pytest.mark.parametrize("anchor", ["model", "reference"])
def test_a_tile_turned_upside_down_is_flagged_against_either_anchor(scene, tmp_path, anchor):
    """The sign a tile is judged by is the anchor's: against the reference's heights the
    inverted tile is the one with a positive scale, and only it is flagged (with the
    model's own anchor, the one with a negative scale, as before)."""
    src, d, height = scene
    marked = np.repeat((d * 255).astype(np.uint8)[None], 3, 0)
    marked[2] = 0
    marked[2, 10:20, 150:170] = 255  # in tile 1 (rows 0-127, columns 96-223) only
    src = write_raster(tmp_path / "marked.tif", marked)
    ref = write_reference(tmp_path / "ref.tif", height)
    r = tiledepth.run(src, tmp_path / "o.tif", model=red_upside_down_where_marked,
                      tile_size=128, reference=ref, anchor=anchor, output_kind="height")
    with open(r.sidecar) as f:
        flagged = json.load(f)["flagged"]
    assert [(t["id"], t["flag"]) for t in flagged] == [(1, "negative-scale")]
    with rasterio.open(r.output) as ds:  # an inverted depth is still a depth: fitted exactly
        assert np.sqrt(np.mean((ds.read(1) - height) ** 2)) < 0.01  # metres


def test_control_points_with_outliers_and_another_crs(scene, tmp_path):
    src, d, height = scene
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, H, 60), rng.integers(0, W, 60)
    x = 500000.0 + (cols + 0.5) * 0.5
    y = 5400000.0 - (rows + 0.5) * 0.5
    lon, lat = warp_points(CRS, "EPSG:4326", x, y)
    z = height[rows, cols].copy()
    z[:4] += 30.0  # mistyped points
    csv = tmp_path / "points.csv"
    csv.write_text("lon,lat,z\n" + "".join(f"{a:.9f},{b:.9f},{c:.4f}\n"
                                            for a, b, c in zip(lon, lat, z, strict=True)))
    r = tiledepth.run(src, tmp_path / "c.tif", model=affine_red, tile_size=128, control=csv,
                      control_crs="EPSG:4326", output_kind="height")
    cal = r.calibration
    assert cal.source == "control" and cal.samples == 60
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
    assert np.sqrt(np.mean((out - height) ** 2)) < 0.1
    assert cal.rmse > 5  # the outliers show in the reported residual


def test_a_spreadsheets_csv_and_a_scaled_reference_calibrate_in_metres(scene, tmp_path):
    """Control points saved by a spreadsheet in a decimal-comma locale (a UTF-8 BOM,
    semicolons, decimal commas; the header was read as ['\\ufeffx;y;z']) and a reference
    stored as decimetre counts with a scale of 0.1 (read as counts: ten times the heights)
    both calibrate to metres; lat, lon in the x, y columns is one line saying so (a raw
    PROJ error)."""
    from tiledepth.references import read_control_points

    src, d, height = scene
    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, H, 40), rng.integers(0, W, 40)
    x, y = 500000.0 + (cols + 0.5) * 0.5, 5400000.0 - (rows + 0.5) * 0.5
    lines = [f"{a:.2f};{b:.2f};{c:.4f}".replace(".", ",")
             for a, b, c in zip(x, y, height[rows, cols], strict=True)]
    csv = tmp_path / "points.csv"
    csv.write_bytes(("\ufeffx;y;z\r\n" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    r = tiledepth.run(src, tmp_path / "c.tif", model=affine_red, tile_size=128, control=csv,
                      output_kind="height")
    assert r.calibration.samples == 40
    with rasterio.open(r.output) as ds:
        assert np.sqrt(np.mean((ds.read(1) - height) ** 2)) < 0.1  # metres
    h, w = H // 4, W // 4
    coarse = height.reshape(h, 4, w, 4).mean(axis=(1, 3))
    counts = write_raster(tmp_path / "dm.tif", np.round(coarse * 10)[None].astype(np.int16),
                          transform=from_origin(500000.0, 5400000.0, 2.0, 2.0))
    with rasterio.open(counts, "r+") as ds:
        ds.scales = (0.1,)
    r = tiledepth.run(src, tmp_path / "h.tif", model=affine_red, tile_size=128,
                      reference=counts, output_kind="height")
    with rasterio.open(r.output) as ds:
        assert np.sqrt(np.mean((ds.read(1) - height) ** 2)) < 0.1  # metres, not decimetres
    lat, lon = warp_points(CRS, "EPSG:4326", list(x[:5]), list(y[:5]))[::-1]
    swapped = tmp_path / "latlon.csv"
    swapped.write_text("".join(f"{a},{b},1\n" for a, b in zip(lat, lon, strict=True)))
    with pytest.raises(InputError, match="is x the longitude"):
        read_control_points(swapped, crs=rasterio.crs.CRS.from_string(CRS), height=H,
                            width=W, transform=from_origin(500000.0, 5400000.0, 0.5, 0.5),
                            points_crs="EPSG:4326")


def test_a_reference_anchor_over_a_flat_part_only_is_one_line(scene, tmp_path):
    """--anchor reference where the reference covers only a part of the image the model
    sees as flat: the rest cannot be filled from it: one line saying so (it was an
    "unexpected ValueError" with advice to run again, which failed the same way)."""
    _, d, height = scene
    image = np.repeat((d * 255).astype(np.uint8)[None], 3, 0)
    image[:, :, :130] = 100  # flat where the reference is
    src = write_raster(tmp_path / "flatleft.tif", image)
    h, w = H // 4, W // 4
    coarse = height.reshape(h, 4, w, 4).mean(axis=(1, 3))
    left = write_raster(tmp_path / "left.tif", coarse[None, :, :30].astype(np.float32),
                        transform=from_origin(500000.0, 5400000.0, 2.0, 2.0))
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.tif"),
                                       "--model", "toy_models:red", "--tile-size", "128",
                                       "--reference", str(left), "--anchor", "reference",
                                       "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "the reference covers only a part of the image where the coarse prediction " \
        "is flat" in result.output and "unexpected" not in result.output


def test_a_reference_in_feet_is_warned_about(scene, tmp_path, caplog):
    """A reference whose CRS is in US survey feet and whose band names no unit: its heights
    are read as metres (the output says metres), so the run warns (it said nothing); a
    band that says metres, or a metre CRS, does not."""
    src, d, height = scene
    feet = write_reference(tmp_path / "ref.tif", height, crs="EPSG:2285")
    with caplog.at_level("WARNING", logger="tiledepth"):
        tiledepth.run(src, tmp_path / "h.tif", model=red, tile_size=128, reference=feet,
                      output_kind="height")
    assert "US survey foot" in caplog.text and "read as metres" in caplog.text
    caplog.clear()
    metres = write_reference(tmp_path / "refm.tif", height)
    with caplog.at_level("WARNING", logger="tiledepth"):
        tiledepth.run(src, tmp_path / "m.tif", model=red, tile_size=128, reference=metres,
                      output_kind="height")
    assert "read as metres" not in caplog.text


def test_uncertainty_band_follows_the_output_units(scene, tmp_path):
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    r = tiledepth.run(src, tmp_path / "u.tif", model=RedWithSpread(), tile_size=128,
                      ensemble=2, uncertainty=True, reference=ref, output_kind="height",
                      anchor_blur=0,  # an exact model: a sharp anchor
                      alignment="affine")  # one scale per tile: the band is 0.1 x its scale
    with rasterio.open(r.output) as ds:
        assert ds.count == 2 and ds.descriptions == ("height", "uncertainty")
        assert ds.units == ("metre", "metre")
        spread = ds.read(2)
    np.testing.assert_allclose(spread, 0.1 * abs(r.calibration.scale), rtol=1e-3)


def test_uncertainty_keeps_the_models_tile_multiple(tmp_path):
    """With --uncertainty the model is wrapped (to keep the spreads); the coarse image is
    still padded to the model's tile multiple (the wrapper dropped it: a ViT-like model
    was called with a 60 x 80 coarse image and failed)."""

    class Vit14WithSpread(RedWithSpread):
        tile_multiple = 14

        def predict_with_uncertainty(self, batch, keys):
            assert batch.shape[1] % 14 == 0 and batch.shape[2] % 14 == 0, batch.shape
            return super().predict_with_uncertainty(batch, keys)

    src = write_raster(tmp_path / "in.tif", np.repeat(
        (depth_field(240, 320) * 255).astype(np.uint8)[None], 3, 0))
    r = tiledepth.run(src, tmp_path / "u.tif", model=Vit14WithSpread(), uncertainty=True,
                      ensemble=3, tile_size=112, coarse_size=80)
    with rasterio.open(r.output) as ds:
        spread = ds.read(2)
    assert np.isfinite(spread).all() and spread.max() > 0


def test_calibration_errors(scene, tmp_path):
    src, d, height = scene
    ref = write_reference(tmp_path / "ref.tif", height)
    with pytest.raises(OptionError, match="inverse-depth"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, reference=ref,
                      output_kind="inverse-depth")
    with pytest.raises(OptionError, match="anchor"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, anchor="reference")
    with pytest.raises(OptionError, match="uncertainty needs ensemble"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, uncertainty=True)
    with pytest.raises(OptionError, match="gives no uncertainty"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, uncertainty=True, ensemble=2)
    far = write_raster(tmp_path / "far.tif", np.ones((1, 20, 20), np.float32),
                       transform=from_origin(600000.0, 5000000.0, 2, 2))
    with pytest.raises(InputError, match="fewer than 3 cells"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, reference=far)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match="x, y and z"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, control=bad)
    assert not (tmp_path / "o.tif").exists()


def write_points(path, rows, cols, z):
    """A CSV of control points at pixel centres of the scene's grid."""
    x, y = 500000.0 + (cols + 0.5) * 0.5, 5400000.0 - (rows + 0.5) * 0.5
    path.write_text("x,y,z\n" + "".join(f"{a:.3f},{b:.3f},{c:.4f}\n"
                                         for a, b, c in zip(x, y, z, strict=True)))
    return path


def typo_points(height):
    """30 control points of ``height`` at random pixels (seed 3): rows, cols, their heights,
    and the same heights with the first mistyped by +50 m."""
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, H, 30), rng.integers(0, W, 30)
    z = height[rows, cols].astype(np.float64)
    typo = z.copy()
    typo[0] += 50.0
    return rows, cols, z, typo


def test_a_mistyped_point_or_a_spike_is_not_the_top_of_depth(scene, tmp_path):
    """Depth counted below max(z) of every point: one point mistyped by +50 m, which the
    robust fit ignores, moved every depth value by about 50 m (the audit's median depth 4.3
    m became 47.8 m); a spike in a DSM did the same. Now it counts below the highest height
    the fit keeps: the same as without the typo (the highest of all where none is gross)."""
    src, d, height = scene
    rows, cols, z, typo = typo_points(height)
    outputs = {}
    for name, heights in (("clean", z), ("typo", typo)):
        csv = write_points(tmp_path / f"{name}.csv", rows, cols, heights)
        r = tiledepth.run(src, tmp_path / f"{name}.tif", model=affine_red, tile_size=128,
                          control=csv, output_kind="depth")
        with rasterio.open(r.output) as ds:
            outputs[name] = ds.read(1).astype(np.float64)
    truth = z.max() - height  # metres below the highest (clean) point
    assert np.sqrt(np.mean((outputs["clean"] - truth) ** 2)) < 0.1
    assert np.sqrt(np.mean((outputs["typo"] - truth) ** 2)) < 0.1  # was 50 m off
    # a reference with one cell 100 m too high
    ref = write_reference(tmp_path / "ref.tif", height)
    with rasterio.open(ref) as ds:
        cells = ds.read(1)
    top = float(cells.max())
    cells[30, 40] += 100.0
    spiked = write_raster(tmp_path / "spiked.tif", cells[None],
                          transform=from_origin(500000.0, 5400000.0, 2.0, 2.0))
    for reference in (ref, spiked):
        r = tiledepth.run(src, tmp_path / "r.tif", model=affine_red, tile_size=128,
                          reference=reference, output_kind="depth", overwrite=True)
        with rasterio.open(r.output) as ds:
            assert np.sqrt(np.mean((ds.read(1) - (top - height)) ** 2)) < 0.1, reference


def test_kept_samples_leave_out_gross_residuals_only():
    """Gross: farther from the fit than the whole relief it spans (and 3 robust SD); a
    model's misfit, even half the range at the ends, is kept."""
    x = np.linspace(0.0, 1.0, 21)
    y = 10.0 * x + np.random.default_rng(0).normal(0, 0.01, 21)
    assert kept_samples(x, y, 10.0, 0.0).all()  # noise: none gross
    assert kept_samples(x, 10.0 * x, 10.0, 0.0).all()  # exact: MAD 0, the range floor
    bent = 10.0 * x + 20.0 * (x - 0.5) ** 2  # a curve fitted by a line: 5 off at the ends
    assert kept_samples(x, bent, 10.0, 0.0).all()
    y[[3, 7]] += [50.0, -4.0]
    assert kept_samples(x, y, 10.0, 0.0).tolist() == [i != 3 for i in range(21)]


def test_robust_fit_settles_with_a_mistyped_point_at_the_end_of_the_range(caplog):
    """One mistyped point (+50 m) at the end of the x range: the fit stopped at its 50
    rounds, silently, with a scale 17 % off (3.518 for 3); it now starts from the repeated
    medians and goes on until it settles, and says so where it has not."""
    x = np.array([0.85, 0.291, 0.268, 0.049, 0.266, 0.066, 0.042, 0.553, 0.184, 0.074])
    y = 3 * x - 2 + np.random.default_rng(5).normal(0, 0.01, 10)
    y[0] += 50
    scale, shift, _ = robust_fit(x, y)
    assert scale == pytest.approx(3.0, abs=0.1) and shift == pytest.approx(-2.0, abs=0.02)
    assert (scale, shift) == robust_fit(x, y, iterations=5000)[:2]  # settled
    with caplog.at_level("WARNING", logger="tiledepth"):
        robust_fit(x, y, iterations=1)
    assert "did not settle in 1 rounds" in caplog.text
    # two typos of ten, drawn 200 times: a scale 10 % off in 15 of them, now in at most 2
    rng = np.random.default_rng(1)
    off = 0
    for _ in range(200):
        x = rng.uniform(0, 1, 10)
        y = 3 * x - 2 + rng.normal(0, 0.01, 10)
        y[:2] += 50
        off += abs(robust_fit(x, y)[0] - 3) > 0.3
    assert off <= 2


def test_control_points_on_masked_pixels_fail_before_the_model(scene, tmp_path):
    """Control points that all fall on masked pixels were refused once every tile was
    predicted, advising to run the same command again (which failed the same way); a
    calibration that cannot be fitted after the tiles keeps them without that advice."""
    src, d, height = scene
    mask = np.ones((1, H, W), np.uint8)
    mask[:, :60, :80] = 0
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    rows, cols = np.arange(5, 55, 10), np.arange(5, 75, 14)
    csv = write_points(tmp_path / "masked.csv", rows, cols, height[rows, cols])

    def no_call(batch):
        raise AssertionError("the model was called")

    with pytest.raises(InputError, match="only 0 of 5 control points lie on valid pixels"):
        tiledepth.run(src, tmp_path / "o.tif", model=no_call, control=csv, mask=mask_path,
                      output_kind="height")
    res = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.tif"),
                                    "--model", "toy_models:red", "--control", str(csv),
                                    "--mask", str(mask_path), "--no-progress"])
    assert res.exit_code == 2 and "masked.csv: only 0 of 5" in res.output, res.output
    assert "tiles" not in res.output and "again" not in res.output
    # points on a flat part of the image: the fused values there are one value, known only
    # after the tiles; no advice to rerun
    flat = np.repeat((d * 255).astype(np.uint8)[None], 3, 0)
    flat[:, :60, :80] = 100
    res = CliRunner().invoke(main, ["run", str(write_raster(tmp_path / "flat.tif", flat)),
                                    "-o", str(tmp_path / "f.tif"), "--model", "toy_models:red",
                                    "--tile-size", "128", "--control", str(csv),
                                    "--no-progress"])
    assert res.exit_code == 2 and "cannot calibrate to the control" in res.output, res.output
    assert "kept in" in res.output and "run the same command" not in res.output


def test_control_points_outside_the_aoi_polygon_are_said_to_be_there(scene, tmp_path):
    """Control points in an --aoi's window but outside its polygon (a triangle) were said to
    lie "on masked, no-data or --mask pixels", none of which the run had: the polygon masks
    them, and the message names it too."""
    src, _, height = scene
    x0, y0 = 500000.0, 5400000.0  # the scene's top left; 0.5 m pixels
    triangle = [[x0, y0], [x0 + 100, y0], [x0, y0 - 100], [x0, y0]]  # 200 px legs
    aoi = tmp_path / "triangle.geojson"
    aoi.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32611"}},
        "features": [{"type": "Feature", "properties": {},
                      "geometry": {"type": "Polygon", "coordinates": [triangle]}}]}))
    rows = cols = np.arange(150, 200, 10)  # in its window, below the hypotenuse
    csv = write_points(tmp_path / "points.csv", rows, cols, height[rows, cols])

    def no_call(batch):
        raise AssertionError("the model was called")

    with pytest.raises(InputError) as caught:
        tiledepth.run(src, tmp_path / "o.tif", model=no_call, control=csv, aoi=aoi,
                      output_kind="height")
    assert str(caught.value) == (
        f"{csv}: only 0 of 5 control points lie on valid pixels of the input (the others on "
        "masked, no-data or --mask pixels, or outside the --aoi polygons, where the output "
        "has no value); need 3")


def test_a_reference_on_masked_pixels_only_is_refused_from_its_cells(scene, tmp_path,
                                                                     monkeypatch):
    """A reference whose heights all lie on masked pixels of the input failed only once
    every tile was predicted ("only 0 reference samples fall on valid output pixels"); its
    cells are checked against the input's validity first, block by block, reading no
    validity where a block has no height and stopping once enough cells are found."""
    from tiledepth import references
    from tiledepth.options import make_options
    from tiledepth.readers import RasterReader
    from tiledepth.references import check_reference_cells
    from tiledepth.write import OutputGrid

    src, d, height = scene
    mask = np.ones((1, H, W), np.uint8)
    mask[:, :120, :160] = 0  # the top-left quarter
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    cells = np.full((H // 4, W // 4), np.nan, np.float32)  # cells of 4 x 4 px
    cells[:30, :40] = 12.5  # heights on the masked quarter only
    monkeypatch.setattr(references, "CHECK_BLOCK", 64)  # blocks of 16 x 16 cells
    with RasterReader(src, mask=mask_path) as reader:
        read = []
        valid_of = reader.read_valid
        monkeypatch.setattr(reader, "read_valid", lambda w: read.append(w) or valid_of(w))
        with pytest.raises(InputError, match=r"^ref\.tif: none of its valid pixels fall on the "
                                             r"input's valid pixels \(it covers only masked"):
            check_reference_cells("ref.tif", cells, 4, reader)
        # the blocks holding the 30 x 40 cells with heights: 2 x 3, none beyond them
        assert len(read) == 6 and max(w.row_off + w.height for w in read) <= 128
        cells[59, 0] = cells[0, 79] = 3.0  # two cells on valid pixels
        with pytest.raises(InputError, match=r"only 2 of its 1202 cells with heights \(4 x 4 "
                                             r"px\) fall on valid pixels of the input"):
            check_reference_cells("ref.tif", cells, 4, reader)
        cells[:, 79] = 3.0  # the last column of cells, all on valid pixels: enough
        read.clear()
        check_reference_cells("ref.tif", cells, 4, reader)
        assert len(read) == 4 and all(w.row_off == 0 for w in read)  # the first row of blocks
    # a reference that reaches valid pixels passes, as read for a run
    ref = write_reference(tmp_path / "ref.tif", height)
    with RasterReader(src, mask=mask_path) as reader:
        target = Target.for_run(make_options(reference=str(ref), output_kind="height"),
                                OutputGrid.from_dataset(reader.dataset), (60, 80))
        check_reference_cells(ref, target.cells, target.cell, reader)


def test_a_reference_on_masked_pixels_only_fails_before_the_model(scene, tmp_path):
    """A reference covering only masked pixels of the input failed once every tile was
    predicted (a CalibrationError, "only 0 reference samples fall on valid output pixels");
    it is refused before the model is called, as control points are."""
    src, d, height = scene
    mask = np.ones((1, H, W), np.uint8)
    mask[:, :120, :160] = 0  # the top-left quarter
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    quarter = height[:120, :160].reshape(30, 4, 40, 4).mean(axis=(1, 3))[None]
    ref = write_raster(tmp_path / "quarter.tif", quarter.astype(np.float32),
                       transform=from_origin(500000.0, 5400000.0, 2.0, 2.0))

    def no_call(batch):
        raise AssertionError("the model was called")

    with pytest.raises(InputError, match=r"quarter\.tif: none of its valid pixels fall on the "
                                         r"input's valid pixels"):
        tiledepth.run(src, tmp_path / "o.tif", model=no_call, tile_size=128, reference=ref,
                      mask=mask_path, output_kind="height")
    res = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.tif"),
                                    "--model", "toy_models:red", "--reference", str(ref),
                                    "--mask", str(mask_path), "--no-progress"])
    assert res.exit_code == 2 and "quarter.tif: none of its valid pixels" in res.output, \
        res.output
    assert "tiles" not in res.output and "again" not in res.output
    assert not (tmp_path / "o.tif").exists()


def test_a_reference_whose_crs_is_wrong_is_one_line(scene, tmp_path):
    """UTM metres labelled EPSG:4326: GDAL's "Too many points failed to transform" escaped
    as "unexpected CPLE_AppDefinedError", exit 1."""
    src, d, height = scene
    mislabelled = write_raster(tmp_path / "dem.tif", np.full((1, 60, 80), 100, np.float32),
                               crs="EPSG:4326", transform=from_origin(500000, 5400000, 2, 2))
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.tif"),
                                       "--model", "toy_models:red", "--tile-size", "128",
                                       "--no-progress", "--output-kind", "height",
                                       "--reference", str(mislabelled)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"tiledepth: error: {mislabelled}: its coordinates cannot be put in the input's CRS "
        "(Too many points (441 out of 441) failed to transform, unable to compute output "
        "bounds.); is its CRS (EPSG:4326) right?"]


def test_a_reference_by_url_or_gdal_path_calibrates_as_the_local_file(scene, tmp_path,
                                                                       http_root):
    """--reference takes any raster GDAL opens: a URL was made a Path (http:/h/...) and
    refused as "no such reference file"."""
    import zipfile

    src, d, height = scene
    ref = write_reference(http_root.root / "ref.tif", height)
    with zipfile.ZipFile(tmp_path / "ref.zip", "w") as z:
        z.write(ref, "dem/ref.tif")
    local = tiledepth.run(src, tmp_path / "local.tif", model=red, tile_size=128,
                          reference=ref, output_kind="height").calibration
    for name, given in [("url", f"{http_root.base}/ref.tif"),
                        ("zip", f"/vsizip/{tmp_path / 'ref.zip'}/dem/ref.tif")]:
        cal = tiledepth.run(src, tmp_path / f"{name}.tif", model=red, tile_size=128,
                            reference=given, output_kind="height").calibration
        assert (cal.scale, cal.shift, cal.samples) == (local.scale, local.shift, local.samples)


def _pyramid_scene(tmp_path, height, width):
    """An RGB raster of ``height`` x ``width`` px (red = depth d), the true height 50 - 20 d,
    and a reference of its heights 4x coarser (2 m pixels), with no data on its right half."""
    d = np.round(depth_field(height, width) * 255) / 255
    src = write_raster(tmp_path / "in.tif", np.repeat((d * 255).astype(np.uint8)[None], 3, 0))
    truth = SHIFT + SCALE * d
    h4, w4 = height // 4, width // 4
    cells = truth[:h4 * 4, :w4 * 4].reshape(h4, 4, w4, 4).mean(axis=(1, 3)).astype(np.float32)
    cells[:, w4 // 2:] = -9999.0
    ref = write_raster(tmp_path / "half.tif", cells[None], nodata=-9999.0,
                       transform=from_origin(500000.0, 5400000.0, 2.0, 2.0))
    return src, truth, ref


@pytest.mark.parametrize(("height", "width"), [(375, 512), (298, 512)])
def test_a_reference_anchor_through_a_pyramid_level_has_the_coarse_maps_shape(
        tmp_path, height, width):
    """With a pyramid level, the coarse image is read from the level's copy: 24 x 32 px
    for 375 x 512 (through 94 x 128; 18 x 32 for 298 x 512), where the raster's own coarse
    shape is 23 x 32 (19 x 32). The reference anchor was read at the latter: a reference
    with no data failed with "unexpected IndexError: boolean index did not match indexed
    array along axis 0; size of axis is 24 but size of corresponding boolean axis is 23" (a
    full one gave an anchor a row off, silently)."""
    from tiledepth.options import make_options
    from tiledepth.plan import fusion_levels
    from tiledepth.read import coarse_shape
    from tiledepth.stages import coarse_image_shape

    src, truth, ref = _pyramid_scene(tmp_path, height, width)
    levels = fusion_levels(make_options(tile_size=128, coarse_size=32), "scale_shift",
                           height, width)
    assert levels == [128]  # a pyramid level, and shapes that differ by a row
    assert coarse_image_shape(height, width, long_side=32, levels=levels) != \
        coarse_shape(height, width, 32)
    r = tiledepth.run(src, tmp_path / "o.tif", model=affine_red, tile_size=128,
                      coarse_size=32, reference=ref, anchor="reference",
                      output_kind="height")
    with rasterio.open(r.output) as ds:
        out = ds.read(1).astype(np.float64)
        assert ds.tags()["TILEDEPTH_ANCHOR"] == "reference"
    assert r.calibration.scale == pytest.approx(1.0, abs=0.01)
    # heights within centimetres of the truth, on the half without reference data too
    assert np.sqrt(np.mean((out - truth) ** 2)) < 0.05  # metres
    assert np.sqrt(np.mean((out[:, width // 2:] - truth[:, width // 2:]) ** 2)) < 0.05


@pytest.mark.parametrize(("height", "width"), [(375, 512), (298, 512), (1000, 1546)])
def test_read_coarse_image_has_the_coarse_image_shape(tmp_path, height, width):
    """:func:`tiledepth.stages.coarse_image_shape` is the shape :func:`read_coarse_image`
    reads, through each reader a run uses: the file's, an area of interest's, --scale's
    (whose coarse reads are of the input) and an array's; with and without a level."""
    from tiledepth.aoi import Area, AreaReader
    from tiledepth.readers import ArrayReader, RasterReader, ScaledReader
    from tiledepth.stages import coarse_image_shape, read_coarse_image
    from tiledepth.write import OutputGrid

    rgb = np.random.default_rng(0).integers(0, 255, (3, height + 20, width + 10), np.uint8)
    src = write_raster(tmp_path / "in.tif", rgb)
    with RasterReader(src) as reader:
        area = Area(rasterio.windows.Window(4, 7, width, height),
                    OutputGrid.from_dataset(reader.dataset).transform)
        within = AreaReader(reader, area)
        array = ArrayReader(np.moveaxis(rgb[:, 7:7 + height, 4:4 + width], 0, -1))
        for levels in ([], [128]):
            for source in (within, ScaledReader(within, 0.5), array):
                _, image, valid = read_coarse_image(source, long_side=32, levels=levels)
                shape = coarse_image_shape(height, width, long_side=32, levels=levels)
                assert image.shape[1:] == valid.shape == shape, (type(source), levels)


def test_a_reference_anchor_of_another_shape_is_one_line():
    """A reference anchor whose shape is not the coarse map's fails with one line saying so
    (an IndexError with no-data, or a silently mismatched anchor without)."""
    from tiledepth.calibrate import CalibrationError

    heights = np.linspace(10.0, 20.0, 23 * 32).reshape(23, 32)
    target = Target("height", anchor_heights=heights)
    coarse = np.linspace(0.0, 1.0, 24 * 32, dtype=np.float32).reshape(24, 32)
    with pytest.raises(CalibrationError, match=r"^anchor reference: the reference was read on "
                                               r"32 x 23 coarse pixels but the coarse map has "
                                               r"32 x 24 .*; use --anchor model meanwhile$"):
        target.anchor(coarse)
    heights[:, 16:] = np.nan  # (with no data: it was an IndexError)
    with pytest.raises(CalibrationError, match="the coarse map has 32 x 24"):
        target.anchor(coarse)
    assert target.anchor(coarse[:23]).shape == (23, 32)


def test_control_points_cut_off_by_the_area_of_interest_say_so(scene, tmp_path, caplog):
    """Control points on the raster but outside --bounds were said to "lie outside the
    raster", and too few inside it "lie on the raster; ... check control_crs": they lie
    outside the area of interest, and their CRS is right."""
    src, d, height = scene
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, H, 30), rng.integers(0, W, 30)
    csv = write_points(tmp_path / "points.csv", rows, cols, height[rows, cols])
    left = int((cols < 160).sum())  # the points in the left half (x < 500080)
    with caplog.at_level("WARNING", logger="tiledepth"):
        r = tiledepth.run(src, tmp_path / "left.tif", model=affine_red, tile_size=128,
                          control=csv, output_kind="height",
                          bounds=(500000.0, 5399880.0, 500080.0, 5400000.0))
    assert f"{30 - left} of 30 control points lie outside the area of interest " \
        "(--bounds/--aoi) and are ignored" in caplog.text
    assert "outside the raster" not in caplog.text
    assert r.calibration.samples == left
    with rasterio.open(r.output) as ds:
        out = ds.read(1).astype(np.float64)
    assert out.shape == (H, 160)
    assert np.sqrt(np.mean((out - height[:, :160]) ** 2)) < 0.1  # metres
    # a corner holding fewer than 3 of them: refused before the model, without CRS advice
    corner = int(((cols >= 300) & (rows < 240)).sum())
    assert corner < 3
    res = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "c.tif"),
                                    "--model", "toy_models:red", "--control", str(csv),
                                    "--bounds", "500150", "5399880", "500160", "5400000",
                                    "--no-progress"])
    assert res.exit_code == 2, res.output
    assert f"points.csv: only {corner} of the 30 control points on the raster lie in the area " \
        "of interest (--bounds/--aoi); need 3; widen the area or add points inside it" \
        in res.output
    assert "outside the raster" not in res.output and "control_crs" not in res.output
    # points off the raster itself, with an area of interest: the CRS is still what to check
    far = write_points(tmp_path / "far.csv", rows, cols + 10 * W, height[rows, cols])
    with pytest.raises(InputError, match=r"only 0 control points lie on the raster; need 3; "
                                         r"check control_crs"):
        tiledepth.run(src, tmp_path / "f.tif", model=red, control=far, output_kind="height",
                      bounds=(500000.0, 5399880.0, 500080.0, 5400000.0))


def test_depth_from_control_points_says_it_counts_below_the_highest_point(scene, tmp_path):
    """TILEDEPTH_VALUES of a depth calibrated to control points said "below the highest
    point of the reference the fit keeps": there is no reference; the depth counts below
    the highest control point the fit keeps (a mistyped one, +50 m, is not it)."""
    src, d, height = scene
    rows, cols, z, typo = typo_points(height)
    csv = write_points(tmp_path / "typo.csv", rows, cols, typo)
    r = tiledepth.run(src, tmp_path / "d.tif", model=affine_red, tile_size=128, control=csv,
                      output_kind="depth")
    with rasterio.open(r.output) as ds:
        out, tags = ds.read(1).astype(np.float64), ds.tags()
    assert tags["TILEDEPTH_VALUES"] == ("depth in metres below the highest control point the "
                                        "fit keeps, calibrated to the control points")
    assert np.sqrt(np.mean((out - (z.max() - height)) ** 2)) < 0.1  # metres
    ref = write_reference(tmp_path / "ref.tif", height)
    r = tiledepth.run(src, tmp_path / "r.tif", model=affine_red, tile_size=128, reference=ref,
                      output_kind="depth")
    with rasterio.open(r.output) as ds:
        assert ds.tags()["TILEDEPTH_VALUES"] == (
            "depth in metres below the highest point of the reference the fit keeps, "
            "calibrated to the reference")
