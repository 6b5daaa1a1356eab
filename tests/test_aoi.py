"""Area of interest: --bounds and --aoi on the CLI (tiny rasters, the red-channel toy model)."""

from __future__ import annotations

import numpy as np
import pyogrio  # dependencies of tiledepth: a missing one fails, not skips
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from conftest import CRS, TRANSFORM, depth_image, write_raster
from rasterio.features import geometry_mask
from rasterio.warp import transform as transform_xy

from tiledepth.aoi import area_of_interest, read_polygons
from tiledepth.cli import main

RUN = ["--model", "toy_models:red", "--tile-size", "128", "--no-progress", "--workers", "0"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def ortho(tmp_path):
    """256 x 256 RGB GeoTIFF in UTM 11N, 0.5 m pixels, top left at (500000, 5400000)."""
    return write_raster(tmp_path / "ortho.tif", depth_image(256, 256))


def write_polygons(path, polygons, crs):
    """Polygons (shapely, in ``crs``) into a vector file, its driver from the extension."""
    wkb = np.array([shapely.to_wkb(p) for p in polygons], dtype=object)
    pyogrio.raw.write(path, wkb, field_data=[], fields=[], crs=crs, geometry_type="Polygon",
                      driver={".gpkg": "GPKG", ".geojson": "GeoJSON",
                              ".shp": "ESRI Shapefile"}[path.suffix])
    return path


def to_wgs84(polygon):
    """A UTM 11N polygon's vertices in EPSG:4326."""
    xs, ys = polygon.exterior.xy
    lon, lat = transform_xy(CRS, "EPSG:4326", list(xs), list(ys))
    return shapely.Polygon(zip(lon, lat, strict=True))


def px(col, row):
    """Map coordinates of a pixel corner of the ortho fixture."""
    return TRANSFORM @ (col, row)


def test_bounds_cover_that_window_on_the_inputs_grid(ortho, tmp_path):
    out = tmp_path / "part.tif"
    (x0, y1), (x1, y0) = px(40.2, 20), px(200, 150.5)  # a bound inside a pixel keeps it
    result = invoke("run", ortho, "-o", out, "--bounds", x0, y0, x1, y1, *RUN)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds, rasterio.open(ortho) as src:
        assert (ds.height, ds.width) == (131, 160)
        assert ds.crs == src.crs
        assert ds.transform == src.window_transform(rasterio.windows.Window(40, 20, 160, 131))
        depth = ds.read(1)
    assert np.isfinite(depth).all()  # a rectangle in the input's CRS: no pixel masked


def test_bounds_on_a_rotated_grid_keep_only_the_pixels_inside(tmp_path):
    """On a grid turned 30 degrees the window is the rectangle's envelope in pixels; the
    pixels of it outside the rectangle are NaN (778 of 1792 were kept, outside the bounds)."""
    from affine import Affine

    turned = Affine.translation(500000, 5400000) * Affine.rotation(30) * Affine.scale(0.5, -0.5)
    src = write_raster(tmp_path / "turned.tif", depth_image(120, 160), transform=turned)
    out = tmp_path / "part.tif"
    result = invoke("run", src, "-o", out, "--bounds", 500010, 5399960, 500030, 5399980, *RUN)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        depth = ds.read(1)
        rows, cols = np.nonzero(np.isfinite(depth))
        xs, ys = (np.array(v) for v in rasterio.transform.xy(ds.transform, rows, cols))
    inside = (xs >= 500010) & (xs <= 500030) & (ys >= 5399960) & (ys <= 5399980)
    assert inside.all() and len(xs) > 1000  # the square, where it is on the raster
    assert np.isnan(depth).any()  # the envelope's corners outside the square


def test_aoi_in_another_crs_masks_the_run(ortho, tmp_path):
    # an L over the left and bottom of the raster, given in EPSG:4326
    utm = shapely.Polygon([px(10, 10), px(100, 10), px(100, 160), px(250, 160), px(250, 250),
                           px(10, 250)])
    aoi = write_polygons(tmp_path / "field.gpkg", [to_wgs84(utm)], "EPSG:4326")
    out = tmp_path / "field.depth.tif"
    result = invoke("run", ortho, "-o", out, "--aoi", aoi, *RUN, "--overlap", "0")
    assert result.exit_code == 0, result.output
    # 240 x 240 px window: four 128-px tiles, the top-right one wholly outside the L
    assert "(240 x 240 px, 3 tiles" in result.output
    with rasterio.open(out) as ds:
        assert (ds.height, ds.width) == (240, 240)
        assert ds.crs == rasterio.crs.CRS.from_user_input(CRS)
        assert ds.transform == TRANSFORM @ TRANSFORM.translation(10, 10)
        depth = ds.read(1)
        inside = geometry_mask([utm], out_shape=depth.shape, transform=ds.transform,
                               invert=True)
    finite = np.isfinite(depth)
    assert inside.sum() == 90 * 240 + 150 * 90
    # the L's edges are straight in EPSG:4326, not in UTM: a few pixels may differ
    assert (finite != inside).sum() <= 0.005 * inside.size
    assert finite[200, 20] and not finite[20, 200]


def test_aoi_and_bounds_in_degrees_match_the_same_area_in_metres(ortho, tmp_path):
    rect = shapely.box(*px(64, 192), *px(192, 64))  # rows and columns 64..192
    lon_lat = to_wgs84(rect)
    area = area_of_interest(256, 256, TRANSFORM, CRS, bounds=lon_lat.bounds,
                            bounds_crs="EPSG:4326")
    # the rectangle in degrees, reprojected: a quadrilateral whose envelope is a bit larger
    assert (area.window.col_off, area.window.row_off) in {(63, 63), (63, 64), (64, 63),
                                                          (64, 64)}
    assert 128 <= area.window.width <= 130 and 128 <= area.window.height <= 130
    mask = area.mask()
    assert abs(int(mask.sum()) - 128 * 128) < 0.02 * 128 * 128
    for suffix in (".geojson", ".shp"):
        path = write_polygons(tmp_path / f"rect{suffix}", [lon_lat], "EPSG:4326")
        polygons, crs = read_polygons(path)
        assert len(polygons) == 1 and "4326" in crs
        again = area_of_interest(256, 256, TRANSFORM, CRS, aoi=path)
        assert abs(int(again.mask().sum()) - 128 * 128) < 0.02 * 128 * 128


def test_aoi_that_misses_the_raster_is_exit_2_with_one_line(ortho, tmp_path):
    far = shapely.box(*px(400, 500), *px(500, 400))  # beyond the bottom-right corner
    aoi = write_polygons(tmp_path / "far.gpkg", [far], CRS)
    out = tmp_path / "out.tif"
    result = invoke("run", ortho, "-o", out, "--aoi", aoi, *RUN)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "does not overlap" in lines[0] and "far.gpkg" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--bounds", "3", "0", "1", "5"], "XMIN must be < XMAX"),
    (["--bounds", "0", "0", "1", "1", "--bounds-crs", "EPSG:99999999"], "not a CRS"),
    (["--bounds-crs", "EPSG:4326"], "bounds_crs needs bounds"),
    (["--aoi", "missing.gpkg"], "no such file"),
])
def test_bad_area_options_are_exit_2(ortho, tmp_path, args, message):
    result = invoke("run", ortho, "-o", tmp_path / "o.tif", *args, *RUN)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_changed_aoi_does_not_reuse_the_checkpoint(ortho, tmp_path):
    from tiledepth.aoi import Area

    a = Area(rasterio.windows.Window(0, 0, 10, 10), TRANSFORM, (shapely.box(0, 0, 1, 1),))
    b = Area(rasterio.windows.Window(0, 0, 10, 10), TRANSFORM, (shapely.box(0, 0, 1, 2),))
    assert a.identity()["window"] == b.identity()["window"]
    assert a.identity() != b.identity()
