"""Exports of a calibrated height map: LAZ, PLY, 16-bit PNG and a colour COG, read back."""

import _thread
import contextlib
import itertools
import logging
import operator
import os
import resource
import signal

import laspy
import lazrs
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, depth_field, depth_image, files_of, replace_then_interrupt, write_raster
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC
from rasterio.transform import Affine, from_gcps, from_origin
from toy_models import RedWithSpread, metric_red, red

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import OptionError
from tiledepth.export import export
from tiledepth.export_formats import ExportMap, pixel_centres, to_uint16, written_sidecars

H, W = 96, 128


@pytest.fixture(scope="module")
def height_map(tmp_path_factory):
    """A height map calibrated to a reference (metres), the image it came from, a NaN corner."""
    tmp = tmp_path_factory.mktemp("export")
    d = np.round(depth_field(H, W) * 255) / 255
    rgb = np.repeat((d * 255).astype(np.uint8)[None], 3, 0)
    rgb[1] = 7  # green: a constant, to recognise the colours
    src = write_raster(tmp / "in.tif", rgb)
    ref = write_raster(tmp / "ref.tif", (50 - 20 * d)[None].astype(np.float32))
    r = tiledepth.run(src, tmp / "h.tif", model=red, tile_size=64, reference=ref,
                      output_kind="height", anchor_blur=0)
    with rasterio.open(r.output, "r+") as ds:  # a few pixels without data
        v = ds.read(1)
        v[:4, :5] = np.nan
        ds.write(v, 1)
    return r.output, src, v


def test_height_output_says_height_in_metres(height_map):
    out, _, _ = height_map
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("height",) and ds.units == ("metre",)
    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 0 and "values:          height (metre)" in result.output


def test_band_says_the_kind_and_metres_of_a_metric_model(height_map, tmp_path):
    _, src, _ = height_map
    r = tiledepth.run(src, tmp_path / "m.tif", model=metric_red, tile_size=64)
    with rasterio.open(r.output) as ds:
        assert ds.descriptions == ("metric_depth",) and ds.units == ("metre",)
    r = tiledepth.run(src, tmp_path / "d.tif", model=red, tile_size=64)
    with rasterio.open(r.output) as ds:  # relative depth: no units
        assert ds.descriptions == ("depth",) and ds.units == (None,)


def test_laz_count_crs_colour_and_z_range(height_map, tmp_path):
    out, src, v = height_map
    laz = tmp_path / "cloud.laz"
    result = CliRunner().invoke(main, ["export", str(out), str(laz), "--image", str(src)])
    assert result.exit_code == 0, result.output
    las = laspy.read(laz)
    valid = np.isfinite(v)
    assert len(las.points) == valid.sum() == H * W - 20
    wkt = las.header.vlrs.get("WktCoordinateSystemVlr")[0].string
    assert rasterio.crs.CRS.from_wkt(wkt) == rasterio.crs.CRS.from_string(CRS)
    assert las.header.global_encoding.wkt and "height" in las.header.system_identifier
    assert las.z.min() == pytest.approx(np.nanmin(v), abs=1e-3)
    assert las.z.max() == pytest.approx(np.nanmax(v), abs=1e-3)
    # the first point is row 0, column 5 (the corner has no data): its centre, its colour
    assert (las.x[0], las.y[0]) == pytest.approx((500000.0 + 5.5 * 0.5, 5400000.0 - 0.25))
    with rasterio.open(src) as ds:
        rgb = ds.read()[:, valid]
    np.testing.assert_array_equal(las.red // 257, rgb[0])
    assert set(np.unique(las.green)) == {7 * 257}
    # --step 4 thins rows and columns
    CliRunner().invoke(main, ["export", str(out), str(tmp_path / "thin.las"), "--step", "4"])
    assert len(laspy.read(tmp_path / "thin.las").points) == np.isfinite(v[::4, ::4]).sum()


def test_depth_is_negated_so_up_is_up(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    src = write_raster(tmp_path / "d.tif", depth)
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "depth")
    las = laspy.read(export(src, tmp_path / "d.laz").path)
    np.testing.assert_allclose(las.z, -depth.ravel(), atol=1e-6)
    assert las.header.system_identifier.startswith("z=-depth")


def test_ply_header_and_points(height_map, tmp_path):
    out, src, v = height_map
    done = export(out, tmp_path / "cloud.ply", image=src, step=2)
    data = done.path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    head = head.decode()
    n = int(np.isfinite(v[::2, ::2]).sum())
    assert head.startswith("ply\nformat binary_little_endian 1.0\n") and done.count == n
    assert f"element vertex {n}\n" in head and "comment crs PROJCS[" in head
    assert "property uchar red" in head
    rec = np.frombuffer(body, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"),
                                     ("green", "u1"), ("blue", "u1")])
    assert len(rec) == n and (rec["green"] == 7).all()
    np.testing.assert_allclose(np.sort(rec["z"]), np.sort(v[::2, ::2][np.isfinite(v[::2, ::2])]),
                               rtol=1e-6)


def test_float_image_colours_are_scaled_once_for_the_whole_image(height_map, tmp_path,
                                                                 monkeypatch):
    """A float 0-255 image whose top strips hold only small values: every strip is scaled
    alike (0.8 is 1, as in the strips with 200; the top strips got 204, decided by their
    own maximum)."""
    import tiledepth.export_formats as ef

    out, src, v = height_map
    with rasterio.open(src) as ds:
        profile = dict(ds.profile, dtype="float32", count=3)
        h = ds.height
    image = np.full((3, h, v.shape[1]), 0.8, np.float32)
    image[:, h // 2:] = 200
    fimg = tmp_path / "float.tif"
    with rasterio.open(fimg, "w", **profile) as ds:
        ds.write(image)
    monkeypatch.setattr(ef, "CHUNK_PIXELS", 4 * v.shape[1])  # strips of 4 rows
    done = export(out, tmp_path / "c.ply", image=fimg)
    rec = np.frombuffer(done.path.read_bytes().split(b"end_header\n", 1)[1],
                        dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"),
                               ("green", "u1"), ("blue", "u1")])
    rows = np.nonzero(np.isfinite(v))[0]
    assert set(rec["red"][rows < h // 2]) == {1} and set(rec["red"][rows >= h // 2]) == {200}


def test_a_raster_export_never_writes_over_a_georeferencing_file_it_did_not_make(
        height_map, tmp_path):
    """A user's ``.wld`` (or ``.aux.xml``) where the PNG's would go: refused without
    --overwrite, its bytes kept (it was replaced); with --overwrite, replaced."""
    out, _, _ = height_map
    theirs = tmp_path / "w.wld"
    theirs.write_text("keep me\n")
    result = CliRunner().invoke(main, ["export", str(out), str(tmp_path / "w.png")])
    assert result.exit_code == 2 and "w.wld: already exists" in result.output
    assert theirs.read_text() == "keep me\n" and not (tmp_path / "w.png").exists()
    result = CliRunner().invoke(main, ["export", str(out), str(tmp_path / "w.png"),
                                       "--overwrite"])
    assert result.exit_code == 0, result.output
    assert theirs.read_text() != "keep me\n"


def test_png_16_bit_within_one_step_of_the_range(height_map, tmp_path):
    out, _, v = height_map
    png = tmp_path / "h.png"
    result = CliRunner().invoke(main, ["export", str(out), str(png), "--range", "25", "55"])
    assert result.exit_code == 0, result.output
    with rasterio.open(png) as ds:
        assert ds.driver == "PNG" and ds.dtypes == ("uint16",)
        p = ds.read(1)
        assert ds.transform.a == 0.5 and ds.transform.c == 500000.0  # from the world file
    assert (tmp_path / "h.wld").exists()
    assert (p[:4, :5] == 0).all() and (p[np.isfinite(v)] > 0).all()
    back = 25 + (p.astype(np.float64) - 1) * 30 / 65534
    step = 30 / 65534
    assert np.abs(back - v)[np.isfinite(v)].max() <= step
    np.testing.assert_array_equal(to_uint16(np.array([25.0, 55.0, np.nan]), 25, 55),
                                  [1, 65535, 0])


def test_colour_cog(height_map, tmp_path):
    out, _, v = height_map
    cog = tmp_path / "web.tif"
    result = CliRunner().invoke(main, ["export", str(out), str(cog), "--colormap", "magma"])
    assert result.exit_code == 0, result.output
    with rasterio.open(cog) as ds:
        assert ds.count == 4 and ds.dtypes[0] == "uint8" and (ds.width, ds.height) == (W, H)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.crs == rasterio.crs.CRS.from_string(CRS)
        rgba = ds.read()
    assert (rgba[3][:4, :5] == 0).all() and (rgba[3][np.isfinite(v)] == 255).all()
    assert len(np.unique(rgba[0])) > 20


def test_export_refusals(height_map, tmp_path):
    out, _, _ = height_map
    run = CliRunner().invoke
    r = run(main, ["export", str(out), str(tmp_path / "x.tif")])
    assert r.exit_code == 2 and "--colormap" in r.output
    r = run(main, ["export", str(out), str(tmp_path / "x.obj")])
    assert r.exit_code == 2 and "export format" in r.output
    r = run(main, ["export", str(out), str(tmp_path / "x.png"), "--range", "5", "1"])
    assert r.exit_code == 2 and "HIGH > LOW" in r.output
    (tmp_path / "y.ply").write_bytes(b"")
    r = run(main, ["export", str(out), str(tmp_path / "y.ply")])
    assert r.exit_code == 2 and "already exists" in r.output


#: A rotated grid (0.4 m pixels, turned a little) that the GCPs of :func:`gcp_map` sample.
ROTATED = Affine(0.4, 0.1, 500000.0, 0.1, -0.4, 5400000.0)


def gcps_of(transform, points):
    """GCPs at pixel corners ``points`` (row, col), placed by ``transform``."""
    return [GroundControlPoint(r, c, *(transform @ (c, r))) for r, c in points]


#: The GCP-georeferenced rasters these tests write have no geotransform, on purpose.
no_geotransform = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def gcp_map(tmp_path_factory):
    """tiledepth's depth map of an image georeferenced by 5 GCPs (no geotransform): it keeps
    them, so its GCPs are its only georeferencing."""
    tmp = tmp_path_factory.mktemp("gcp")
    src = write_raster(tmp / "in.tif", depth_image(H, W), crs=None, transform=None)
    with rasterio.open(src, "r+") as ds:
        ds.gcps = (gcps_of(ROTATED, [(0, 0), (0, W), (H, 0), (H, W), (H / 2, W / 4)]),
                   rasterio.crs.CRS.from_string(CRS))
    out = tiledepth.run(src, tmp / "d.tif", model=red, tile_size=64).output
    with rasterio.open(out) as ds:
        assert ds.transform.is_identity and len(ds.gcps[0]) == 5
        return out, ds.gcps, ds.read(1)


@no_geotransform
def test_point_clouds_of_a_gcp_map_are_placed_by_the_gcps_fit(gcp_map, tmp_path):
    out, (gcps, gcp_crs), v = gcp_map
    rows, cols = np.nonzero(np.isfinite(v))
    # the pixel centres through the affine fit to the GCPs: here the grid they sample
    x, y = pixel_centres(from_gcps(gcps), rows, cols)
    x0, y0 = pixel_centres(ROTATED, rows, cols)
    np.testing.assert_allclose(x, x0, atol=1e-6)
    np.testing.assert_allclose(y, y0, atol=1e-6)
    assert (x[0], y[0]) == pytest.approx((500000.0 + 0.25, 5400000.0 - 0.15))
    las = laspy.read(export(out, tmp_path / "g.laz").path)
    assert len(las.points) == len(x)
    np.testing.assert_allclose(las.x, x, atol=1e-3)  # LAS: 1 mm scale
    np.testing.assert_allclose(las.y, y, atol=1e-3)
    np.testing.assert_allclose(las.z, -v[rows, cols], atol=1e-5)  # depth: negated
    wkt = las.header.vlrs.get("WktCoordinateSystemVlr")[0].string
    assert rasterio.crs.CRS.from_wkt(wkt) == gcp_crs
    head, body = export(out, tmp_path / "g.ply").path.read_bytes().split(b"end_header\n", 1)
    assert b"comment crs PROJCS[" in head
    rec = np.frombuffer(body, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    np.testing.assert_allclose(rec["x"], x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rec["y"], y, rtol=0, atol=1e-6)


@no_geotransform
def test_rasters_of_a_gcp_map_keep_its_gcps(gcp_map, tmp_path):
    out, (gcps, gcp_crs), _ = gcp_map
    export(out, tmp_path / "g.png")
    export(out, tmp_path / "g.tif", colormap="viridis")
    for name in ("g.png", "g.tif"):
        with rasterio.open(tmp_path / name) as ds:
            got, crs = ds.gcps
            assert crs == gcp_crs, name
            # (the PNG's .aux.xml keeps them as text, pixel positions to 1e-4: whole ones here)
            np.testing.assert_allclose([(g.row, g.col, g.x, g.y) for g in got],
                                       [(g.row, g.col, g.x, g.y) for g in gcps], rtol=0, atol=1e-6)


@no_geotransform
def test_a_gcp_map_no_affine_fit_places_is_refused(tmp_path):
    src = write_raster(tmp_path / "two.tif", np.ones((1, 20, 30), np.float32), crs=None,
                       transform=None)
    with rasterio.open(src, "r+") as ds:  # two GCPs: an affine fit needs three
        ds.gcps = (gcps_of(ROTATED, [(0, 0), (20, 30)]), rasterio.crs.CRS.from_string(CRS))
    for name in ("two.laz", "two.ply"):
        r = CliRunner().invoke(main, ["export", str(src), str(tmp_path / name)])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1
        assert "ground control point" in r.output and "geotransform" in r.output
        assert not (tmp_path / name).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.tif"]


#: A scene's RPCs, as a satellite's but simple: longitude by column, latitude by row.
SCENE_RPCS = RPC(height_off=100, height_scale=100, lat_off=45.0, lat_scale=0.01,
                 line_den_coeff=[1] + [0] * 19, line_num_coeff=[0, 0, -1] + [0] * 17,
                 line_off=H / 2, line_scale=H / 2, long_off=-115.0, long_scale=0.01,
                 samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18,
                 samp_off=W / 2, samp_scale=W / 2)


def rpc_numbers(rpcs) -> dict:
    """The RPCs' numbers (ERR_BIAS, ERR_RAND: GDAL writes -1 for unknown; not compared)."""
    return {k: v for k, v in rpcs.to_dict().items() if not k.startswith("err")}


@pytest.fixture(scope="module")
def rpc_map(tmp_path_factory):
    """tiledepth's depth map of a scene georeferenced by RPCs only: it keeps them."""
    tmp = tmp_path_factory.mktemp("rpc")
    src = write_raster(tmp / "scene.tif", depth_image(H, W), crs=None, transform=None)
    with rasterio.open(src, "r+") as ds:
        ds.rpcs = SCENE_RPCS
    return tiledepth.run(src, tmp / "d.tif", model=red, tile_size=64).output


@no_geotransform
def test_a_point_cloud_of_an_rpc_map_is_refused(rpc_map, tmp_path):
    for name in ("r.laz", "r.las", "r.ply"):
        r = CliRunner().invoke(main, ["export", str(rpc_map), str(tmp_path / name)])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1
        assert "georeferenced by RPCs only" in r.output and "gdalwarp -rpc" in r.output
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


@no_geotransform
def test_rasters_of_an_rpc_map_keep_its_rpcs(rpc_map, tmp_path):
    export(rpc_map, tmp_path / "r.png")
    export(rpc_map, tmp_path / "r.tif", colormap="viridis")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "r.png.aux.xml", "r.tif"]
    for name in (rpc_map, "r.png", "r.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert ds.rpcs is not None, name
            assert rpc_numbers(ds.rpcs) == rpc_numbers(SCENE_RPCS), name
            assert ds.crs is None and ds.transform.is_identity, name


@no_geotransform
def test_the_preview_of_an_rpc_map_keeps_its_rpcs_on_its_grid(rpc_map, tmp_path):
    """The preview (at a quarter of the size) carries the RPCs with their line and sample
    offsets and scales scaled to its pixels; the rest as the map's (it had none)."""
    from tiledepth.preview import write_preview

    png = write_preview(rpc_map, tmp_path / "r.png", max_size=W // 4)
    with rasterio.open(png) as ds, rasterio.open(rpc_map) as src:
        fy, fx = ds.height / src.height, ds.width / src.width
        got, want = rpc_numbers(ds.rpcs), rpc_numbers(src.rpcs)
    for key in ("line_off", "line_scale"):
        assert got.pop(key) == pytest.approx(want.pop(key) * fy)
    for key in ("samp_off", "samp_scale"):
        assert got.pop(key) == pytest.approx(want.pop(key) * fx)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert np.allclose(got[key], value), key


def test_uncertainty_band_is_exported_as_it_is(tmp_path):
    src = write_raster(tmp_path / "in.tif", depth_image(H, W))
    out = tiledepth.run(src, tmp_path / "u.tif", model=RedWithSpread(), ensemble=3,
                        uncertainty=True, tile_size=64).output
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("depth", "uncertainty")
        spread = ds.read(2)
    assert np.nanmin(spread) > 0  # a spread: positive, and not negated below
    done = export(out, tmp_path / "u.ply", band=2)
    rec = np.frombuffer(done.path.read_bytes().split(b"end_header\n", 1)[1],
                        dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    np.testing.assert_allclose(rec["z"], spread[np.isfinite(spread)], rtol=1e-6)
    assert (done.low, done.high) == pytest.approx((np.nanmin(spread), np.nanmax(spread)))
    las = laspy.read(export(out, tmp_path / "u.laz", band=2).path)
    np.testing.assert_allclose(las.z, spread[np.isfinite(spread)], atol=1e-6)
    assert las.header.system_identifier.startswith("z=uncertainty")


@no_geotransform
def test_an_overwrite_export_removes_the_earlier_exports_georeferencing(height_map, tmp_path):
    """A PNG of a map with no georeferencing, over tiledepth's PNG of a UTM map: the old
    export's world file and .aux.xml go with it (GDAL read them: EPSG:32611 at 500000 E)."""
    out, _, _ = height_map
    frame = write_raster(tmp_path / "frame.tif", np.ones((1, 20, 30), np.float32), crs=None,
                         transform=None)
    png = tmp_path / "x.png"
    export(out, png)
    assert (tmp_path / "x.wld").exists() and (tmp_path / "x.png.aux.xml").exists()
    done = export(frame, png, overwrite=True)
    with rasterio.open(done.path) as ds:
        assert ds.crs is None and ds.transform.is_identity and ds.width == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.tif", "x.png"]


@no_geotransform
@pytest.mark.parametrize("theirs", ["w.wld", "w.pgw", "w.png.aux.xml"])
def test_an_overwrite_export_refuses_a_users_file_it_would_leave_placing_it(tmp_path, theirs):
    """A user's world file (or .aux.xml) beside a PNG tiledepth did not write, which the new
    export does not replace: refused in one line, kept, nothing written."""
    frame = write_raster(tmp_path / "frame.tif", np.ones((1, 20, 30), np.float32), crs=None,
                         transform=None)
    (tmp_path / "w.png").write_bytes(b"\x89PNG\r\n\x1a\nsomeone's")
    (tmp_path / theirs).write_text("keep me\n")
    r = CliRunner().invoke(main, ["export", str(frame), str(tmp_path / "w.png"), "--overwrite"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"{theirs}: GDAL would place the new w.png by it" in r.output
    assert (tmp_path / theirs).read_text() == "keep me\n"
    assert (tmp_path / "w.png").read_bytes() == b"\x89PNG\r\n\x1a\nsomeone's"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["frame.tif", theirs, "w.png"])


@pytest.mark.parametrize("ends", [["0", "inf"], ["-inf", "5"], ["nan", "5"]])
def test_the_range_must_be_finite(height_map, tmp_path, ends):
    """--range 0 inf wrote a PNG of only 0 and 1 and said "values 0 to inf"."""
    out, _, _ = height_map
    r = CliRunner().invoke(main, ["export", str(out), str(tmp_path / "x.png"), "--range", *ends])
    assert r.exit_code == 2 and "range must be two finite numbers" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


@no_geotransform
def test_the_cloud_of_a_map_without_georeferencing_is_not_mirrored(tmp_path):
    """In pixel units with y up: the same points as the map georeferenced north up (1 unit
    pixels), moved, never mirrored (y grew down the rows: a left-handed cloud)."""
    v = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    plain = write_raster(tmp_path / "plain.tif", v, crs=None, transform=None)
    north_up = write_raster(tmp_path / "geo.tif", v, transform=from_origin(1000, 2000, 1, 1))
    body = export(plain, tmp_path / "p.ply").path.read_bytes().split(b"end_header\n", 1)[1]
    got = np.frombuffer(body, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    body = export(north_up, tmp_path / "g.ply").path.read_bytes().split(b"end_header\n", 1)[1]
    want = np.frombuffer(body, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    np.testing.assert_allclose(got["x"], want["x"] - 1000)
    np.testing.assert_allclose(got["y"], want["y"] - 1997)  # y = height - row - 0.5
    np.testing.assert_allclose(got["z"], want["z"])
    assert (got["x"][0], got["y"][0]) == (0.5, 2.5)  # row 0, column 0: the top left
    las = laspy.read(export(plain, tmp_path / "p.laz").path)
    np.testing.assert_allclose(las.y, got["y"], atol=1e-3)
    np.testing.assert_allclose(las.x, got["x"], atol=1e-3)


def test_a_scaled_map_is_exported_in_its_units(tmp_path):
    """An int16 DEM in centimetres (scale 0.01, offset 100 m, -32768 no data): z was the
    counts, 0 to 190; it is 100.0 to 101.9 m, no data skipped by the stored value."""
    counts = (np.arange(20).reshape(1, 4, 5) * 10).astype(np.int16)
    counts[0, 0, 0] = -32768
    dem = write_raster(tmp_path / "dem_cm.tif", counts, nodata=-32768)
    with rasterio.open(dem, "r+") as ds:
        ds.set_band_description(1, "height")
        ds.scales, ds.offsets = (0.01,), (100.0,)
    heights = counts[0].astype(np.float64) * 0.01 + 100.0
    valid = counts[0] != -32768
    las = laspy.read(export(dem, tmp_path / "dem.las").path)
    assert len(las.z) == 19
    np.testing.assert_allclose(las.z, heights[valid], atol=1e-6)
    ply = export(dem, tmp_path / "dem.ply")
    assert (ply.low, ply.high) == (100.1, 101.9)
    rec = np.frombuffer(ply.path.read_bytes().split(b"end_header\n", 1)[1],
                        dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    np.testing.assert_allclose(rec["z"], heights[valid], rtol=0, atol=1e-12)
    png = export(dem, tmp_path / "dem.png")
    with rasterio.open(png.path) as ds:
        assert ds.tags()["TILEDEPTH_PNG_RANGE"] == "100.1 101.9"
        assert ds.read(1)[0, 0] == 0 and ds.read(1)[3, 4] == 65535
    cog = export(dem, tmp_path / "dem.tif", colormap="grey")
    assert 100.1 < cog.low < cog.high < 101.9


@no_geotransform
def test_las_xy_of_a_map_in_degrees_without_a_crs_keep_every_point(tmp_path):
    """A map placed in degrees (1e-5, about 1 m) with no CRS (a .jgw without .prj): x and y
    were rounded to 0.001 (about 100 m), 3000 points on 1 spot; now to 1e-7 (1/100 pixel).
    A projected map keeps 1 mm."""
    v = np.arange(50 * 60, dtype=np.float32).reshape(1, 50, 60)
    deg = write_raster(tmp_path / "deg.tif", v, crs=None,
                       transform=from_origin(-117.0, 49.6, 1e-5, 1e-5))
    las = laspy.read(export(deg, tmp_path / "deg.las").path)
    assert tuple(las.header.scales[:2]) == (1e-7, 1e-7)
    assert len(set(zip(las.X.tolist(), las.Y.tolist(), strict=True))) == 3000
    np.testing.assert_allclose(las.x[:3], -117.0 + np.array([0.5, 1.5, 2.5]) * 1e-5,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(las.y[:60:59], 49.6 - 0.5e-5, rtol=0, atol=1e-9)
    utm = write_raster(tmp_path / "utm.tif", v)  # 0.5 m pixels in EPSG:32611
    assert tuple(laspy.read(export(utm, tmp_path / "utm.las").path).header.scales[:2]) == (
        0.001, 0.001)


@pytest.mark.parametrize("name", ["x.png", "x.tif", "x.ply"])
def test_an_export_into_a_missing_folder_blames_the_folder(height_map, tmp_path, name):
    """A PNG or COG into a missing folder said the map itself could not be read."""
    out, _, _ = height_map
    args = ["export", str(out), str(tmp_path / "nodir" / name)]
    r = CliRunner().invoke(main, args + (["--colormap", "grey"] if name == "x.tif" else []))
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"tiledepth: error: {tmp_path / 'nodir'}: output folder does not exist; create it "
        "first"], r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.png", "x.tif"])
def test_a_failure_writing_a_raster_export_is_the_exports(height_map, tmp_path, monkeypatch,
                                                          name):
    """GDAL failing to create the export's scratch GeoTIFF (its name a link into a folder
    that is gone): a write error naming the export (as run's: WriteError, exit 1), not
    "cannot read it as a raster" naming the map."""
    import uuid

    from tiledepth.errors import WriteError

    out, _, _ = height_map
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0xABCDEF12 << 96))
    scratch = tmp_path / f".{name}.abcdef12.partial{name[1:]}.strips.tif"
    scratch.symlink_to(tmp_path / "gone" / "s.tif")
    with pytest.raises(WriteError, match=f"{name}: write failed \\(Attempt to "):
        export(out, tmp_path / name, colormap="grey" if name == "x.tif" else None)
    assert list(tmp_path.iterdir()) == []


def test_a_cog_export_beside_a_png_export_of_the_same_stem(height_map, tmp_path):
    """x.png then x.tif of one map: refused (x.wld, the PNG's world file, "would be the
    georeferencing of x.tif"), then with --overwrite refused as not tiledepth's. A COG
    with a geotransform is never placed by a world file: both written, x.wld kept."""
    out, _, _ = height_map
    export(out, tmp_path / "x.png")
    wld = (tmp_path / "x.wld").read_bytes()
    for overwrite in (False, True):
        done = export(out, tmp_path / "x.tif", colormap="viridis", overwrite=overwrite)
        with rasterio.open(done.path) as ds:
            assert ds.transform == from_origin(500000.0, 5400000.0, 0.5, 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x.png", "x.png.aux.xml", "x.tif", "x.wld"]
    assert (tmp_path / "x.wld").read_bytes() == wld
    with rasterio.open(tmp_path / "x.png") as ds:
        assert ds.transform == from_origin(500000.0, 5400000.0, 0.5, 0.5)


def test_step_reads_only_the_kept_rows(height_map, tmp_path, monkeypatch):
    """--step read step full rows per strip (memory step x width: 1.2 GB for a 40000 px wide
    map at --step 2000); now each kept row alone once step rows pass CHUNK_PIXELS, map and
    image, and the cloud is the same to the byte."""
    import tiledepth.export_formats as ef

    out, src, v = height_map
    step = 4
    want = export(out, tmp_path / "a.ply", image=src, step=step).path.read_bytes()
    largest = [0]
    real = rasterio.io.DatasetReader.read

    def read(self, *args, window=None, **kw):
        if window is not None:
            largest[0] = max(largest[0], int(window.height) * int(window.width))
        return real(self, *args, window=window, **kw)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)
    monkeypatch.setattr(ef, "CHUNK_PIXELS", 2 * W)  # fewer than step rows
    got = export(out, tmp_path / "b.ply", image=src, step=step).path.read_bytes()
    assert got == want and largest[0] == W
    assert f"element vertex {np.isfinite(v[::step, ::step]).sum()}\n".encode() in got


def test_wide_map_exports_cache_two_block_rows_of_what_they_read(tmp_path, monkeypatch):
    # A whole-raster read row by row (the PNG driver's copy of the scratch file, the
    # --colormap percentiles' decimated read and its mask, the strips a fraction of a block
    # row each) with less than a block row in GDAL's cache decodes each block row again for
    # every row: 20 000 px wide to PNG took 57 s instead of 4 s, an 8000 px colour COG 147 s.
    # A small cap on the reads' cache stands in for a wide map: a block row of this map is
    # 1024 x 256 x 4 bytes, of the PNG's scratch 1024 x 512 x 2, of the COG's 1024 x 512 x 4.
    import rasterio.shutil
    from rasterio.env import getenv

    from tiledepth import export_formats
    from tiledepth.read import GDAL_OPTIONS

    rows, cols = np.mgrid[0:600, 0:1024]
    v = (100 + 20 * np.sin(cols / 97.0) * np.cos(rows / 53.0)).astype(np.float32)
    v[:50, :70] = np.nan
    src = write_raster(tmp_path / "wide.tif", v[None], nodata=float("nan"))
    expected = {}
    for name in ("w.png", "w.tif"):
        export(src, tmp_path / ("default_" + name), colormap="viridis" if "tif" in name else None)
        expected[name] = (tmp_path / ("default_" + name)).read_bytes()
    seen = {"copy": [], "percentiles": [], "strips": []}
    copy, read = rasterio.shutil.copy, export_formats.ExportMap._read

    def recording_copy(*args, **kwargs):
        seen["copy"].append(int(getenv()["GDAL_CACHEMAX"]))
        return copy(*args, **kwargs)

    def recording_read(self, **kw):
        seen["percentiles" if "out_shape" in kw else "strips"].append(
            int(getenv()["GDAL_CACHEMAX"]))
        return read(self, **kw)

    monkeypatch.setattr(rasterio.shutil, "copy", recording_copy)
    monkeypatch.setattr(export_formats.ExportMap, "_read", recording_read)
    monkeypatch.setitem(GDAL_OPTIONS, "GDAL_CACHEMAX", 2**18)  # under one block row
    for name in ("w.png", "w.tif"):
        export(src, tmp_path / name, colormap="viridis" if "tif" in name else None)
        assert (tmp_path / name).read_bytes() == expected[name]
    assert min(seen["strips"]) >= 2 * 1024 * 256 * 4
    assert len(seen["percentiles"]) == 1 and seen["percentiles"][0] >= 2 * 1024 * 256 * 4
    assert len(seen["copy"]) == 2
    assert seen["copy"][0] >= 2 * 1024 * 512 * 2 and seen["copy"][1] >= 2 * 1024 * 512 * 4


def test_numpy_integers_are_taken_and_bad_arguments_refused_before_the_export(height_map,
                                                                              tmp_path):
    """``band=np.int64(1)`` raised rasterio's raw TypeError, ``step=np.int64(2)`` was refused
    as not a whole number; ``value_range`` of three items or of text raised a raw ValueError
    or TypeError (the three items' once the export had begun): NumPy integers are the ints
    they stand for, anything else is one OptionError line before any file is written."""
    out, _, v = height_map
    png = export(out, tmp_path / "a.png", band=np.int64(1), value_range=(np.float32(25), 55))
    with rasterio.open(png.path) as ds:
        expected = to_uint16(v, 25.0, 55.0)
        np.testing.assert_array_equal(ds.read(1), expected)
    assert (png.count, png.low, png.high) == (H * W - 20, 25.0, 55.0)
    ply = export(out, tmp_path / "a.ply", step=np.int64(2))
    assert ply.count == np.isfinite(v[::2, ::2]).sum()
    bad = [(dict(band=1.0), r"^band must be a whole number \(1 is the first band\), got 1\.0$"),
           (dict(band="1"), r"^band must be a whole number .*got '1'$"),
           (dict(band=True), r"^band must be a whole number .*got True$"),
           (dict(step=2.0), r"^step must be a whole number >= 1, got 2\.0$"),
           (dict(step=np.int64(0)), r"^step must be a whole number >= 1, got np\.int64\(0\)$"),
           (dict(value_range=(25, 55, 5)),
            r"^range must be two finite numbers LOW HIGH, got \(25, 55, 5\)$"),
           (dict(value_range=("25", "55")),
            r"^range must be two finite numbers LOW HIGH, got \('25', '55'\)$"),
           (dict(value_range=25), r"^range must be two finite numbers LOW HIGH, got 25$"),
           (dict(value_range=(25, 10**400)), r"^range must be two finite numbers LOW HIGH"),
           (dict(value_range=[55, 25]),
            r"^range must be LOW HIGH with HIGH > LOW, got \[55, 25\]$")]
    for kwargs, message in bad:
        with pytest.raises(OptionError, match=message):
            export(out, tmp_path / ("b.ply" if "step" in kwargs else "b.png"), **kwargs)
    assert not [p.name for p in tmp_path.iterdir() if not p.name.startswith("a.")]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` of a file fail (EFBIG), as on a disk that fills up: the soft
    RLIMIT_FSIZE, SIGXFSZ ignored (else it kills the process), both restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture(scope="module")
def relative_map(tmp_path_factory):
    """A 300 x 400 relative depth map of noise (a LAZ of about 1 MB, a PNG of 240 kB)."""
    v = np.random.default_rng(3).random((1, 300, 400)).astype(np.float32)
    src = write_raster(tmp_path_factory.mktemp("rel") / "rel.tif", v)
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "depth")
    return src


@pytest.mark.parametrize("name", ["x.laz", "x.las", "x.png", "x.tif"])
def test_a_failed_export_write_is_one_write_error_line(relative_map, tmp_path, name):
    """A disk that fills up (writes past 64 kB fail): LAZ said "unexpected LazrsError:
    Failed to call write", a PNG "unexpected CPLE_AppDefinedError", LAS and COG "cannot
    write the export" (exit 2); now all say it as run does (WriteError, exit 1), LAS and
    LAZ with the write's own error, nothing left behind."""
    out = tmp_path / name
    with file_size_limit(64 * 2**10):
        r = CliRunner().invoke(main, ["export", str(relative_map), str(out)]
                               + (["--colormap", "grey"] if name == "x.tif" else []))
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(f"tiledepth: error: {out}: ")
    assert r.output.rstrip().endswith("choose another place with OUTPUT"), r.output
    if name in ("x.laz", "x.las") and "no space left" not in r.output:  # (a nearly full disk)
        assert "write failed ([Errno 27] File too large)" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


class InterruptedCompressor:
    """lazrs's LAZ compressor, but a signal comes (``_thread.interrupt_main``) while it
    compresses, before it writes: nothing Python runs between the two, as in Rust."""

    signum = signal.SIGINT

    def __init__(self, dest, vlr) -> None:
        self._real = REAL_COMPRESSOR(dest, vlr)

    def compress_many(self, points) -> None:
        list(itertools.starmap(operator.call, [(_thread.interrupt_main, self.signum),
                                               (self._real.compress_many, points)]))

    def done(self) -> None:
        self._real.done()


REAL_COMPRESSOR = lazrs.LasZipCompressor


@pytest.mark.parametrize("signum, said, code", [
    (signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated (SIGTERM)", 143)])
def test_ctrl_c_during_a_laz_export_is_an_interruption(relative_map, tmp_path, monkeypatch,
                                                      signum, said, code):
    """Ctrl-C or SIGTERM while lazrs compresses: Python raised the signal's exception in
    the first Python code to run, the file's write(), and lazrs turned it into "unexpected
    LazrsError: Failed to call write" (exit 1); now the interruption, as anywhere else."""
    monkeypatch.setattr(InterruptedCompressor, "signum", signum)
    monkeypatch.setattr(lazrs, "LasZipCompressor", InterruptedCompressor)
    r = CliRunner().invoke(main, ["export", str(relative_map), str(tmp_path / "x.laz")])
    assert r.output.strip() == f"tiledepth: {said}; no output was written", r.output
    assert r.exit_code == code
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.laz", "x.las", "x.ply"])
def test_range_is_refused_for_a_point_cloud(height_map, tmp_path, name):
    """--range was silently ignored by point clouds (their z is the map's value)."""
    out, _, _ = height_map
    r = CliRunner().invoke(main, ["export", str(out), str(tmp_path / name), "--range", "3", "5"])
    assert r.exit_code == 2 and r.output.strip() == (
        "tiledepth: error: --range goes with a .png or .tif output; point clouds keep the "
        "map's values"), r.output
    assert list(tmp_path.iterdir()) == []


def test_laz_without_lazrs_is_refused_before_the_map_is_read(height_map, tmp_path,
                                                            monkeypatch):
    """laspy installed without its lazrs extra: the map was read, then "unexpected
    LaspyException: No LazBackend could be initialized" (exit 1); now the documented
    DependencyError first. A .las needs no lazrs."""
    import laspy._compression.lazrsbackend as backend

    out, _, _ = height_map
    monkeypatch.setattr(backend, "lazrs", None)  # what laspy holds where lazrs is missing
    r = CliRunner().invoke(main, ["export", str(out), str(tmp_path / "x.laz")])
    assert r.exit_code == 2 and r.output.strip() == (
        "tiledepth: error: LAS/LAZ export needs laspy and lazrs: pip install 'laspy[lazrs]'")
    assert list(tmp_path.iterdir()) == []
    assert export(out, tmp_path / "x.las").count == H * W - 20


@no_geotransform
def test_a_map_with_a_crs_and_no_geotransform_is_an_unplaced_cloud(tmp_path):
    """A CRS but no geotransform, GCPs or RPCs (a JPEG with a .prj): the points were pixel
    coordinates with y down, labelled EPSG:32611; now those of a map with no CRS (y up),
    with no CRS."""
    v = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    plain = write_raster(tmp_path / "plain.tif", v, crs=None, transform=None)
    labelled = write_raster(tmp_path / "crs.tif", v, crs=CRS, transform=None)
    with rasterio.open(labelled) as ds:
        assert ds.crs is not None and ds.transform.is_identity
    las = laspy.read(export(labelled, tmp_path / "crs.las").path)
    want = laspy.read(export(plain, tmp_path / "plain.las").path)
    assert not las.header.vlrs and not las.header.global_encoding.wkt
    np.testing.assert_array_equal(las.xyz, want.xyz)
    assert (las.x[0], las.y[0]) == (0.5, 2.5)  # row 0, column 0: the top left, y up
    head = export(labelled, tmp_path / "crs.ply").path.read_bytes().split(b"end_header")[0]
    assert b"comment crs" not in head


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_world_file_is_refused_before_the_export_is_written(height_map, tmp_path,
                                                                    monkeypatch, overwrite):
    """A .pgw tiledepth did not write beside x.png (the export writes x.wld, never x.pgw):
    without --overwrite the advice was "pass --overwrite", which then refused it once the
    whole export was written; now refused at once, either way, nothing written."""
    import tiledepth.export

    out, _, _ = height_map
    (tmp_path / "x.pgw").write_text("keep me\n")

    def write(*args, **kwargs):
        raise AssertionError("the export was written before the refusal")

    monkeypatch.setattr(tiledepth.export, "_write", write)
    r = CliRunner().invoke(main, ["export", str(out), str(tmp_path / "x.png")]
                           + (["--overwrite"] if overwrite else []))
    assert r.exit_code == 2 and r.output.strip() == (
        f"tiledepth: error: {tmp_path / 'x.pgw'}: GDAL would place the new x.png by it (this "
        "export writes none to replace it), and it is not an earlier tiledepth export's; move "
        "it away or choose another output"), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pgw"]
    assert (tmp_path / "x.pgw").read_text() == "keep me\n"


@no_geotransform
@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_the_sidecars_checked_before_writing_are_those_gdal_writes(tmp_path, fmt):
    """What the check before writing takes for the export's own sidecars
    (written_sidecars) is what GDAL then writes, for every kind of georeferencing."""
    v = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    gcps = gcps_of(from_origin(100.0, 50.0, 2.0, 2.0), [(0, 0), (0, 4), (3, 0)])
    rpcs = RPC(height_off=0, height_scale=100, lat_off=49.6, lat_scale=0.01, line_den_coeff=[1]
               + [0] * 19, line_num_coeff=[0, 0, -1] + [0] * 17, line_off=1.5, line_scale=1.5,
               long_off=-117, long_scale=0.01, samp_den_coeff=[1] + [0] * 19,
               samp_num_coeff=[0, 1] + [0] * 18, samp_off=2, samp_scale=2)
    maps = {"geo": {}, "no crs": {"crs": None}, "crs only": {"transform": None},
            "nothing": {"crs": None, "transform": None},
            "gcps": {"crs": rasterio.crs.CRS(), "transform": None, "gcps": gcps},
            "rpcs": {"crs": None, "transform": None, "rpcs": rpcs}}
    for i, (what, kw) in enumerate(maps.items()):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        src = write_raster(tmp_path / f"m{i}.tif", v, **kw)
        path = folder / f"x.{fmt}"
        with rasterio.open(src) as ds:
            predicted = written_sidecars(ExportMap(ds, 1, 1), fmt, path)
        export(src, path, colormap="grey" if fmt == "tif" else None)
        assert sorted(predicted) == sorted(p for p in folder.iterdir() if p != path), what


def test_laz_z_of_a_map_in_metres_is_stored_at_1_mm(height_map, relative_map, tmp_path):
    """docs/export.md: z at 1 mm for a map in metres, finer for relative values. A metric
    map's z was stored at 1e-5 (any range under 1 km was refined): a LAZ twice the size."""
    out, _, v = height_map
    with rasterio.open(out) as ds:
        assert ds.units == ("metre",) and 15 < np.nanmax(v) - np.nanmin(v) < 25
    las = laspy.read(export(out, tmp_path / "h.laz").path)
    assert las.header.scales[2] == 0.001
    np.testing.assert_allclose(las.z, v[np.isfinite(v)], rtol=0, atol=0.0005 + 1e-9)
    rel = laspy.read(export(relative_map, tmp_path / "r.laz").path)  # 0 to 1: finer, as before
    assert rel.header.scales[2] < 1e-5


@pytest.mark.parametrize("nth", [1, 2, 3, 4])
def test_ctrl_c_among_an_overwrite_exports_renames_leaves_all_old_or_all_new(
        height_map, tmp_path, monkeypatch, nth):
    """An earlier export of a 2 m map in UTM 32N at b.png (b.png.aux.xml, b.wld), then
    --overwrite with the 0.5 m map in UTM 11N, Ctrl-C right after its 2nd, 3rd or 4th (last)
    rename (the 1st: its journal's): the PNG was renamed first, so GDAL placed the new PNG
    by the old .wld (2 m pixels) and .aux.xml while the command said "no output was
    written". Now the PNG goes last: before it, every old file as it was; after it, every
    new one, no file kept aside (nor journal) left; the message says which."""
    out, _, _ = height_map
    other = write_raster(tmp_path / "other.tif",
                         np.linspace(1, 2, 40 * 60, dtype=np.float32).reshape(1, 40, 60),
                         crs="EPSG:32632", transform=from_origin(600000.0, 5300000.0, 2.0, 2.0))
    folders = [tmp_path / name for name in ("old", "new", "d")]
    for folder, src in zip(folders, (other, out, other), strict=True):
        folder.mkdir()
        export(src, folder / "b.png")
    old, new = files_of(folders[0]), files_of(folders[1])
    assert sorted(old) == sorted(new) == ["b.png", "b.png.aux.xml", "b.wld"]
    assert all(old[name] != new[name] for name in old)
    d = folders[2]
    replace_then_interrupt(monkeypatch, nth)
    r = CliRunner().invoke(main, ["export", str(out), str(d / "b.png"), "--overwrite"])
    monkeypatch.undo()
    assert r.exit_code == 130, r.output
    if nth < 4:
        assert r.output.strip() == "tiledepth: interrupted; no output was written"
    else:
        assert r.output.strip() == (f"tiledepth: interrupted after writing {d / 'b.png'}, "
                                    "which is complete")  # (an export has no checkpoint)
    assert files_of(d) == (new if nth == 4 else old)
    with rasterio.open(d / "b.png") as ds:
        assert ds.transform.a == (0.5 if nth == 4 else 2.0)
        assert ds.crs.to_epsg() == (32611 if nth == 4 else 32632)


@pytest.mark.parametrize("name", ["b.png", "b.laz", "b.tif"])
def test_an_export_removes_the_files_a_killed_export_of_its_output_left(height_map, tmp_path,
                                                                       caplog, name):
    """An export killed by SIGKILL left its temporary file (and a PNG's scratch GeoTIFF, the
    .aux.xml GDAL wrote beside it) for ever: the next export of that output removes them,
    saying so (and a killed preview's of that name: the stem's lock is held); no other
    name, however close (an upper-case or short hex), nor a link."""
    out, _, _ = height_map
    ext = name[1:]
    left = [f".{name}.0123abcd.partial{ext}", f".{name}.0123abcd.partial{ext}.strips.tif",
            f".{name}.89efab01.partial{ext}.aux.xml",
            f".{name}.0123abcd.partial"]  # (temp_path's: a killed run's or preview's)
    kept = [f".{name}.0123ABCD.partial{ext}",
            f".{name}.0123abc.partial{ext}", f"{name}.0123abcd.partial{ext}",
            f".c{ext}.0123abcd.partial{ext}", f".{name}.0123abcd.old", "notes.txt"]
    for n in left + kept:
        (tmp_path / n).write_bytes(b"left\n")
    kept.append(f".{name}.fedcba98.partial{ext}")  # a link: no export's
    (tmp_path / kept[-1]).symlink_to("notes.txt")
    with caplog.at_level(logging.INFO, logger="tiledepth"):
        export(out, tmp_path / name, colormap="grey" if ext == ".tif" else None)
    written = {".png": ["b.png", "b.png.aux.xml", "b.wld"], ".laz": ["b.laz"],
               ".tif": ["b.tif"]}[ext]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + written)
    assert all((tmp_path / n).read_bytes() == b"left\n" for n in kept)
    assert sorted(r.getMessage() for r in caplog.records if "killed" in r.getMessage()) == [
        f"removed {tmp_path / n}, left by an export that was killed" for n in sorted(left)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a second export beside a forked one")
@pytest.mark.parametrize("second", ["export", "preview"])
def test_a_second_export_or_preview_of_the_stem_is_refused_while_one_writes(height_map,
                                                                            tmp_path, second):
    """While an export to o.png wrote its temporary file, a second ``tiledepth export ...
    o.png --overwrite`` (or ``tiledepth preview -o o.png``) removed it as a killed export's
    (the first then failed: "No such file or directory ... -> o.png") and placed its own
    files. Now the second is refused in one line while the first holds the lock of o.png's
    stem, and the first places its files whole."""
    out, _, _ = height_map
    other = write_raster(tmp_path / "other.tif",
                         np.linspace(1, 2, 40 * 60, dtype=np.float32).reshape(1, 40, 60))
    (tmp_path / "want").mkdir()
    export(out, tmp_path / "want" / "o.png")
    d = tmp_path / "d"
    d.mkdir()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the first export: it never returns into pytest
        code = 1
        try:
            write_png = tiledepth.export.write_png

            def paused(*args):  # its temporary file written, not yet placed
                result = write_png(*args)
                os.write(ready_w, b"1")
                os.read(go_r, 1)
                return result

            tiledepth.export.write_png = paused
            export(out, d / "o.png", overwrite=True)
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"1"
        writing = files_of(d)
        assert [n for n in writing if ".partial.png" in n]
        args = ["export", str(other), str(d / "o.png"), "--overwrite"] if second == "export" \
            else ["preview", str(other), "-o", str(d / "o.png")]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        assert r.output.strip() == (
            f"tiledepth: error: {d / 'o.png'}: another tiledepth command (a run, export or "
            "preview) is writing it, or a file with its stem (o.*), now; wait for it to "
            f"finish or choose another {'OUTPUT' if second == 'export' else '-o'}")
        assert files_of(d) == writing  # its temporary files untouched
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert files_of(d) == files_of(tmp_path / "want")  # o.png, .aux.xml, .wld: the first's


def test_an_export_is_refused_while_a_run_of_its_stem_holds_the_lock(height_map, tmp_path):
    """``tiledepth run -o o.tif`` holds the lock of the stem o (its preview is o.png): an
    export to o.png meanwhile is refused, nothing written; once it is free, the export goes
    on and leaves no lock file."""
    from tiledepth.errors import BusyError
    from tiledepth.lock import lock_output, unlock_output

    out, _, _ = height_map
    fd = lock_output(tmp_path / "o.tif")
    try:
        with pytest.raises(BusyError, match=r"o.png: another tiledepth command \(a run, "):
            export(out, tmp_path / "o.png")
        assert [p.name for p in tmp_path.iterdir()] == [".o.tiledepth-lock"]
    finally:
        unlock_output(tmp_path / "o.tif", fd)
    export(out, tmp_path / "o.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "o.png.aux.xml", "o.wld"]


def test_an_export_removes_the_world_file_and_journal_part_a_killed_export_left(height_map,
                                                                                tmp_path):
    """GDAL writes a PNG's world file after the temporary file's stem
    (``.o.png.<hex>.partial.wld``), and the journal is first written as
    ``.o.png.<hex>.partial.png.placing``: an export killed while writing (or as it wrote its
    journal) left them for ever. Now the next export of o.png removes them; not those of
    another name."""
    out, _, _ = height_map
    left = [".o.png.0123abcd.partial.wld", ".o.png.0123abcd.partial.pgw",
            ".o.png.0123abcd.partial.png.placing",
            ".o.png.0123abcd.partial.txt"]  # (every .partial* name: safe_write.remove_partials')
    kept = [".p.png.0123abcd.partial.wld", ".o.png.0123abcd.old"]
    for n in left + kept:
        (tmp_path / n).write_bytes(b"left\n")
    export(out, tmp_path / "o.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["o.png", "o.png.aux.xml", "o.wld", *kept])


def test_an_export_that_cannot_lock_its_output_says_what_is_in_the_way(height_map, tmp_path):
    """No lock to be had, here a folder at the lock file's name: export said "choose a
    writable folder with -o", an option it does not have (its output is the positional
    OUTPUT), and another folder would not help anyway: the folder in the way is named, to be
    removed, by export and run alike (:func:`tiledepth.lock.lock_output`)."""
    out, src, _ = height_map
    (tmp_path / ".o.tiledepth-lock").mkdir()
    want = (f"tiledepth: error: {tmp_path / '.o.tiledepth-lock'}: is not a plain file, so not "
            "tiledepth's lock file; remove it")
    r = CliRunner().invoke(main, ["export", str(out), str(tmp_path / "o.png")])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == want
    r = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.tif"), "--model",
                                  "toy_models:red", "--tile-size", "64", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == want


def test_a_point_cloud_export_runs_beside_a_png_export_of_the_same_stem(tmp_path):
    """The stem's lock (shared by o.tif, o.png and their sidecars) refused an export to
    o.png while one of the same map to o.laz ran: a point cloud, one file placed by one
    rename, holds the lock of its own name and writes no journal; a second export to the
    same cloud is still refused."""
    from tiledepth.errors import BusyError
    from tiledepth.export import export
    from tiledepth.safe_write import output_lock, placement_journal

    src = tmp_path / "o.tif"
    tiledepth.run(write_raster(tmp_path / "in.tif", depth_image(48, 64)), src,
                  model="toy_models:red", tile_size=64)
    cloud = tmp_path / "o.ply"
    with output_lock(cloud, option="OUTPUT", own_name=True):  # a cloud export of o.ply runs
        assert export(src, tmp_path / "o.png").path.exists()  # refused before
        with pytest.raises(BusyError, match="is writing it now"):
            export(src, cloud)
    with output_lock(tmp_path / "o.png", option="OUTPUT"):  # a PNG export (the stem's) runs
        assert export(src, cloud).path.exists()
        assert not placement_journal(cloud).exists()


def test_an_export_leaves_folders_and_links_named_like_partials_alone(height_map, tmp_path,
                                                                      caplog, monkeypatch):
    """The export's own removal of partial files was a copy of safe_write.remove_partials
    (the careful one); now it calls that one: a folder or a link named like a partial file
    is left alone, one that cannot be removed stays, in a warning, and the export goes on;
    each .partial* file of the name goes (GDAL's world file of the temporary PNG too)."""
    from pathlib import Path

    out, _, _ = height_map
    (tmp_path / "notes.txt").write_text("mine\n")
    folder = tmp_path / ".e.png.0123abcd.partial.png"
    folder.mkdir()
    link = tmp_path / ".e.png.89abcdef.partial.wld"
    link.symlink_to("notes.txt")
    stuck = tmp_path / ".e.png.01234567.partial.png.aux.xml"
    gone = [tmp_path / ".e.png.fedcba98.partial.wld", tmp_path / ".e.png.fedcba98.partial.PGW",
            tmp_path / ".e.png.fedcba98.partial.png.strips.tif"]
    for left in (stuck, *gone):
        left.write_bytes(b"left\n")
    unlink = Path.unlink

    def no_unlink(self, *args, **kw):
        if self.name == stuck.name:
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, *args, **kw)

    monkeypatch.setattr(Path, "unlink", no_unlink)
    with caplog.at_level(logging.INFO, logger="tiledepth"):
        export(out, tmp_path / "e.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.txt", "e.png", "e.png.aux.xml", "e.wld", folder.name, link.name, stuck.name])
    assert folder.is_dir() and link.is_symlink() and stuck.read_bytes() == b"left\n"
    assert f"{stuck}: cannot remove it, left by an export that was killed " \
           "(Permission denied)" in caplog.text
    assert all(f"removed {p}, left by an export that was killed" in caplog.text for p in gone)


#: A map with a geotransform and RPCs (an ortho-ready satellite product's; a run keeps both).
_BOTH = from_origin(500000.0, 5400000.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def rpc_and_transform_map(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("both")
    src = write_raster(tmp / "both.tif", depth_field(H, W)[None].astype(np.float32),
                       transform=_BOTH)
    with rasterio.open(src, "r+") as ds:
        ds.rpcs = SCENE_RPCS
    return src


def test_rasters_of_a_map_with_a_transform_and_rpcs_keep_both(rpc_and_transform_map,
                                                                tmp_path):
    """A map with a geotransform and RPCs: the PNG and COG exports kept the transform and
    dropped the RPCs. Now they keep both (the PNG's RPCs in its .aux.xml beside its .wld);
    a point cloud is placed by the transform, as before (not refused as an RPC map)."""
    src = rpc_and_transform_map
    export(src, tmp_path / "r.png")
    export(src, tmp_path / "r.tif", colormap="viridis")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "r.png.aux.xml", "r.tif",
                                                          "r.wld"]
    for name in ("r.png", "r.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert ds.rpcs is not None, name
            assert rpc_numbers(ds.rpcs) == rpc_numbers(SCENE_RPCS), name
            assert ds.transform == _BOTH and ds.crs == rasterio.crs.CRS.from_string(CRS), name
    with rasterio.open(src) as ds:
        assert written_sidecars(ExportMap(ds, 1, 1), "png", tmp_path / "x.png") == [
            tmp_path / "x.wld", tmp_path / "x.png.aux.xml"]
    done = export(src, tmp_path / "r.ply")
    assert done.count == H * W


def test_the_preview_of_a_map_with_a_transform_and_rpcs_keeps_both(rpc_and_transform_map,
                                                                   tmp_path):
    """The preview (a quarter of the size) of a map with a geotransform and RPCs kept the
    transform only; now its .aux.xml has both, each scaled to its pixels."""
    from tiledepth.preview import write_preview

    png = write_preview(rpc_and_transform_map, tmp_path / "r.png", max_size=W // 4)
    with rasterio.open(png) as ds:
        assert (ds.width, ds.height) == (W // 4, H // 4)
        assert ds.transform == _BOTH @ Affine.scale(4)
        assert ds.crs == rasterio.crs.CRS.from_string(CRS)
        got, want = rpc_numbers(ds.rpcs), rpc_numbers(SCENE_RPCS)
    for key in ("line_off", "line_scale", "samp_off", "samp_scale"):
        assert got.pop(key) == pytest.approx(want.pop(key) / 4), key
    for key, value in want.items():
        assert np.allclose(got[key], value), key


@pytest.mark.parametrize("dtype, values", [
    ("float64", [[123456.789, 123456.001], [2000000.25, 2000000.75]]),
    ("int32", [[16777217, 16777219], [-16777217, 2**31 - 1]]),
    ("uint32", [[16777217, 2**32 - 1], [4000000001, 7]])])
def test_a_float64_or_32_bit_integer_map_keeps_its_digits(tmp_path, dtype, values):
    """A float64 (or 32-bit integer) map was read as float32: 123456.001 m gave a LAS and
    PLY z of 123456.0, 16777217 gave 16777216. Its values are exported as they are: the
    PLY's z exactly, the LAS's at its 1 mm (or finer) scale, the PNG's range."""
    v = np.array(values, dtype)
    src = write_raster(tmp_path / "m.tif", v[None])
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "height")
        ds.units = ("metre",)
    rec = np.frombuffer(export(src, tmp_path / "m.ply").path.read_bytes().split(
        b"end_header\n", 1)[1], dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    assert rec["z"].tolist() == v.astype(np.float64).ravel().tolist()
    las = laspy.read(export(src, tmp_path / "m.las").path)
    np.testing.assert_allclose(las.z, v.ravel(), rtol=0, atol=las.header.scales[2] / 2)
    png = export(src, tmp_path / "m.png")
    assert (png.low, png.high) == (v.min(), v.max())


@pytest.fixture()
def tiny_map(tmp_path):
    """A 3 x 4 float32 height map, georeferenced."""
    src = write_raster(tmp_path / "m.tif", np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "height")
    return src


#: The bytes an export's temporary files add to its name, at most: a point cloud's
#: ``.<name>.<8 hex digits>.partial<suffix>``, a raster's strips beside that, and their
#: ``.aux.xml`` (``.strips.tif.aux.xml``).
EXTRA = {"las": 22, "ply": 22, "png": 41, "tif": 41}


@pytest.mark.parametrize("ext", ["las", "ply", "png", "tif"])
def test_a_name_too_long_for_the_exports_temporary_files_is_refused_in_one_line(
        tiny_map, tmp_path, ext):
    """An export whose temporary files' names are too long for the file system: a point
    cloud was placed, then its cleanup (the temporary file's .aux.xml, ENAMETOOLONG) said
    "unexpected OSError" (exit 1); longer names and rasters failed with it too. The longest
    name that fits is written (exit 0); one byte more is refused before anything is written,
    in one line (exit 2), saying how long a name may be."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    colormap = ["--colormap", "grey"] if ext == "tif" else []
    for size, code in ((limit - EXTRA[ext], 0), (limit - EXTRA[ext] + 1, 2),
                       (limit + 1, 2)):
        out = tmp_path / ("b" * (size - len(ext) - 1) + f".{ext}")
        r = CliRunner().invoke(main, ["export", str(tiny_map), str(out), *colormap])
        assert r.exit_code == code, (size, r.output)
        if code == 0:
            assert r.output.startswith(f"wrote {out}"), r.output
            assert out.is_file()
        else:
            assert r.output.strip() == (
                f"tiledepth: error: {out}: name too long: the files written beside it under "
                f"temporary names add {EXTRA[ext]} bytes to its {size}, and its folder allows "
                f"{limit}; choose a shorter name with OUTPUT (at most "
                f"{limit - EXTRA[ext]} bytes)")
        for path in tmp_path.iterdir():
            path.unlink()
        write_raster(tiny_map, np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_a_cleanup_that_cannot_remove_a_file_never_fails_the_export(tiny_map, tmp_path,
                                                                    monkeypatch, caplog):
    """An error removing the temporary files once the export is placed (a name that cannot
    be looked up) failed an export that was written; it is logged for --debug, and the
    export's own error, where there is one, is the one raised."""
    import pathlib

    real = pathlib.Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.endswith(".aux.xml") and ".partial" in self.name:
            raise OSError(36, "File name too long", self.name)
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    with caplog.at_level(logging.DEBUG, logger="tiledepth.safe_write"):
        done = export(tiny_map, tmp_path / "o.las")
    assert done.count == 12 and "not removed (File name too long)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "o.las"]


def test_a_point_clouds_lock_error_names_its_output_and_a_name_too_long(tiny_map, tmp_path,
                                                                        monkeypatch):
    """A point cloud holds the lock of its whole name (``.o.las.tiledepth-lock``): an error
    creating it named ``o.las.own``, a file that is nowhere, and a name too long for the
    lock said so of that file. Both name the output: the lock's own lines
    (:func:`tiledepth.lock.lock_output`, ``by_name``), not rewritten."""
    import errno

    import tiledepth.lock
    from tiledepth.errors import OutputError
    from tiledepth.safe_write import output_lock

    real = os.open

    def read_only(path, *args, **kwargs):  # (root writes in a read-only folder)
        if str(path).endswith(".tiledepth-lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(tiledepth.lock.os, "open", read_only)
        r = CliRunner().invoke(main, ["export", str(tiny_map), str(tmp_path / "o.las")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(
        f"tiledepth: error: {tmp_path / '.o.las.tiledepth-lock'}: cannot create the lock file "
        f"of {tmp_path / 'o.las'} (Read-only file system); "), r.output
    assert ".own" not in r.output and len(r.output.strip().splitlines()) == 1
    long = tmp_path / ("b" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 15) + ".las")
    with pytest.raises(OutputError) as err:
        with output_lock(long, option="OUTPUT", own_name=True):
            pass
    assert str(err.value) == (f"{tmp_path / ('.' + long.name + '.tiledepth-lock')}: cannot "
                              f"create the lock file of {long} (its name is too long); choose "
                              "a shorter output name with OUTPUT")


def test_a_point_clouds_lock_is_the_locks_by_name_not_a_made_up_key(tmp_path):
    """The cloud's lock took ``lock_path`` of a made-up ``o.las.own`` (the stem of which is
    ``o.las``) and rewrote the errors that named it: ``by_name`` is now the lock's own
    option (``lock_path``, ``lock_output``, ``unlock_output``). Held by name, it holds off a
    second writer of o.las, not one of o.tif (the stem's lock), and the reverse; released,
    its file is gone."""
    from tiledepth.errors import BusyError
    from tiledepth.lock import lock_output, lock_path, unlock_output

    cloud = tmp_path / "o.las"
    assert lock_path(cloud, by_name=True) == tmp_path / ".o.las.tiledepth-lock"
    assert lock_path(cloud) == lock_path(tmp_path / "o.tif") == tmp_path / ".o.tiledepth-lock"
    fd = lock_output(cloud, option="OUTPUT", by_name=True)
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == [".o.las.tiledepth-lock"]
        with pytest.raises(BusyError) as err:
            lock_output(cloud, option="OUTPUT", by_name=True)
        assert str(err.value) == (f"{cloud}: another tiledepth run is writing the same output "
                                  "now; wait for it to finish or choose another OUTPUT")
        stem = lock_output(tmp_path / "o.tif")  # the stem's writers are not held off
        unlock_output(tmp_path / "o.tif", stem)
    finally:
        unlock_output(cloud, fd, by_name=True)
    assert list(tmp_path.iterdir()) == []


def test_an_export_of_a_url_says_local_files_only(tmp_path, tiny_map):
    """``tiledepth export https://h/o.tif o.laz``: the map was a Path, its ``//`` folded, and
    the line said ``https:/h/o.tif: no such file; check the path``. Now one line says that an
    export reads (and writes) local files only, and to download it first; nothing written."""
    cases = [
        (["https://example.com/o.tif", str(tmp_path / "o.laz")],
         "https://example.com/o.tif: tiledepth export reads local files only, not a URL or "
         "GDAL /vsi path; download it first and export the local copy"),
        (["/vsicurl/https://example.com/o.tif", str(tmp_path / "o.png")],
         "/vsicurl/https://example.com/o.tif: tiledepth export reads local files only, not a "
         "URL or GDAL /vsi path; download it first and export the local copy"),
        ([str(tiny_map), str(tmp_path / "o.las"), "--image", "s3://bucket/ortho.tif"],
         "s3://bucket/ortho.tif: tiledepth export reads local files only, not a URL or GDAL "
         "/vsi path; download it first and give the local copy to --image"),
        ([str(tiny_map), "s3://bucket/o.laz"],
         "s3://bucket/o.laz: tiledepth export writes local files only, not a URL or GDAL /vsi "
         "path (OUTPUT); export to a local file, then upload it"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, line in cases:
        r = CliRunner().invoke(main, ["export", *args])
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines() == [f"tiledepth: error: {line}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_dem_tiledepth_did_not_write_is_exported_as_depth_with_a_warning(tmp_path, caplog):
    """A DEM (heights, no band description, no tiledepth tag) went to a point cloud as depth,
    z its heights negated, without a word. docs/export.md says a map that does not say its
    kind is read as depth: so it still is, with one warning line saying so and how a height
    raster says it (its band description); said so, z is the DEM's heights, no warning. A
    raster export keeps the values as they are: no warning."""
    import subprocess
    import sys
    from pathlib import Path

    heights = np.array([[[100.0, 101.5, 99.25], [102.25, 150.0, 120.5]]], np.float32)
    dem = write_raster(tmp_path / "dem.tif", heights)
    with caplog.at_level(logging.WARNING, logger="tiledepth"):
        done = export(dem, tmp_path / "a.las")
    assert sorted(laspy.read(tmp_path / "a.las").z) == sorted(-heights.ravel())
    assert (done.low, done.high) == (-150.0, -99.25)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{dem}: band 1 does not say what its values are (no band description, "
                      "no tiledepth tag): exported as depth, its points' z the values negated; "
                      "for heights (a DEM), say so first: rio edit-info --bidx 1 --description "
                      f"height {dem}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tiledepth"):
        export(dem, tmp_path / "a.png")  # (the values as they are)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # what the warning says to do, as it says it
    rio = Path(sys.executable).with_name("rio")
    subprocess.run([str(rio), "edit-info", "--bidx", "1", "--description", "height", str(dem)],
                   check=True, capture_output=True)
    with caplog.at_level(logging.WARNING, logger="tiledepth"):
        done = export(dem, tmp_path / "b.ply")
        export(dem, tmp_path / "b.las")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (done.count, done.low, done.high) == (6, 99.25, 150.0)
    assert sorted(laspy.read(tmp_path / "b.las").z) == sorted(heights.ravel())
