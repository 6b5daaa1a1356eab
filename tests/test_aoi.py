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
    # 240 x 240 px window: four 128-px tiles, the top-right one wholly outside the L (the
    # bottom edge, straight in EPSG:4326 and densified, bows 0.3 mm into row 250, within the
    # window's tolerance: no row of NaN more)
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


def _awkward_areas():
    """Areas whose polygons are awkward to rasterise, on 0.5 m and 30-degree-turned grids."""
    from affine import Affine

    from tiledepth.aoi import Area

    turned = Affine.translation(500000, 5400000) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5)
    window = rasterio.windows.Window(3, 5, 150, 110)  # a window of a bigger raster

    def on(transform, *points):
        return [transform @ (c, r) for c, r in points]

    areas = {}
    for grid, t in (("north-up", TRANSFORM), ("turned", turned)):
        ring = on(t, (4.3, 6.1), (140.7, 9.2), (151.4, 112.8), (7.9, 100.3))
        holes = [on(t, (30.2, 30.7), (60.1, 31.3), (45.6, 70.4)),
                 on(t, (90.3, 50.2), (120.8, 50.9), (120.1, 90.6), (91.7, 89.2))]
        comb = shapely.MultiPolygon([
            shapely.Polygon(on(t, (10.2, 20.4), (60.3, 20.1), (60.7, 60.9), (10.8, 61.3))),
            shapely.Polygon(on(t, (70.1, 70.3), (75.6, 70.4), (75.2, 200.2), (70.4, 201.7))),
            shapely.Polygon(on(t, (100.2, 8.1), (100.6, 8.2), (153.0, 40.3), (152.4, 40.9))),
        ])
        sliver = shapely.Polygon(on(t, (5.2, 8.3), (150.1, 111.6), (150.25, 111.55)))
        outside = shapely.Polygon(on(t, (-40.5, -30.2), (90.3, 12.7), (60.1, 200.4)))
        for name, geom in (("hole", shapely.Polygon(ring, holes)), ("multipolygon", comb),
                           ("sliver", sliver), ("partly-outside", outside)):
            areas[f"{grid}-{name}"] = Area(window, t, (geom,))
    return areas


AWKWARD = _awkward_areas()


@pytest.mark.parametrize("name", AWKWARD)
@pytest.mark.parametrize("all_touched", [False, True])
def test_blockwise_masks_are_the_whole_window_rasterisation(name, all_touched):
    """The area's blocks (some wholly inside, some cut, some missed) rebuild exactly the
    mask that rasterising the whole window at once gives, and agree on whether any pixel
    is inside."""
    from tiledepth.aoi import _any_inside, _blocks_inside

    area = AWKWARD[name]
    whole = area.mask(all_touched=all_touched)  # (110, 150)
    again = np.zeros_like(whole)
    kinds = set()
    for window, mask in _blocks_inside(area, all_touched=all_touched, block=16):
        rows, cols = window.toslices()
        again[rows, cols] = True if mask is None else mask
        kinds.add(mask is None)
    assert (again == whole).all()
    assert _any_inside(area, all_touched=all_touched) == whole.any()
    if "hole" in name or "multipolygon" in name:
        assert kinds == {True, False}  # both shortcuts taken: whole blocks and cut ones


@pytest.mark.parametrize("name", AWKWARD)
@pytest.mark.parametrize("shape", [(1, 1), (7, 11), (16, 16), (110, 150)])
def test_coarse_touched_pixels_are_those_of_the_whole_mask(name, shape):
    from tiledepth.aoi import _touched

    area = AWKWARD[name]
    full = area.mask()  # the former whole-window reference
    rows = (np.arange(full.shape[0]) * shape[0]) // full.shape[0]
    cols = (np.arange(full.shape[1]) * shape[1]) // full.shape[1]
    want = np.zeros(shape, bool)
    r, c = np.nonzero(full)
    want[rows[r], cols[c]] = True
    assert (_touched(area, shape) == want).all()


def test_an_area_nothing_touches_is_still_found_empty(tmp_path):
    """A sliver whose envelope meets the raster, itself outside: 'covers no pixel'."""
    from tiledepth.errors import InputError

    sliver = shapely.Polygon([px(-20, 10), px(10, -20), px(10.2, -20.1)])
    aoi = write_polygons(tmp_path / "off.gpkg", [sliver], CRS)
    with pytest.raises(InputError, match="covers no pixel"):
        area_of_interest(256, 256, TRANSFORM, CRS, aoi=aoi)


def test_area_of_interest_memory_does_not_grow_with_the_raster(tmp_path):
    """An AOI over a 6000 x 6000 raster: deciding that a sliver covers no pixel centre,
    widening it to the pixels it touches and finding the coarse pixels it holds all
    rasterise a block at a time. Rasterising the whole window at once took 36 MB (a byte
    a pixel); a block takes about 1 MB."""
    import tracemalloc

    from tiledepth.aoi import _touched

    n = 6000
    sliver = shapely.Polygon([px(10.3, 10.2), px(n - 10.1, n - 10.4), px(n - 10.1, n - 10.1)])
    aoi = write_polygons(tmp_path / "sliver.gpkg", [sliver], CRS)
    area_of_interest(64, 64, TRANSFORM, CRS, aoi=aoi)  # imports and GDAL's first use
    tracemalloc.start()
    try:
        area = area_of_interest(n, n, TRANSFORM, CRS, aoi=aoi)
        assert area.window.width == area.window.height == n - 20
        coarse = _touched(area, (64, 64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows, cols = np.nonzero(coarse)
    assert np.diagonal(coarse).all() and (abs(rows - cols) <= 1).all()  # the diagonal
    assert peak < n * n / 8, f"{peak / 1e6:.1f} MB at peak"


def test_reprojection_failures_of_bounds_and_aoi_are_exit_2_with_one_line(ortho, tmp_path):
    """Bounds in metres said to be in degrees, a GeoJSON in UTM without "crs" (so WGS84):
    PROJ's error escaped as "unexpected CPLE_AppDefinedError", exit 1."""
    x0, y1 = px(10, 10)
    x1, y0 = px(100, 100)
    utm = tmp_path / "utm.geojson"
    utm.write_text('{"type": "Feature", "properties": {}, "geometry": '
                   + shapely.to_geojson(shapely.box(x0, y0, x1, y1)) + "}")
    assert "4326" in read_polygons(utm)[1]  # GeoJSON's CRS when it names none
    for args, line in [
        (["--bounds", x0, y0, x1, y1, "--bounds-crs", "EPSG:4326"],
         "bounds: x 500005..500050, y 5.39995e+06..5.4e+06 cannot be put in the CRS of "
         f"{ortho} from bounds_crs EPSG:4326 ("),
        (["--aoi", utm], f"{utm}: its coordinates cannot be put in the CRS of {ortho} (")]:
        result = invoke("run", ortho, "-o", tmp_path / "o.tif", *args, *RUN)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and line in lines[0], lines
    assert not (tmp_path / "o.tif").exists()


def test_a_geopackage_of_several_layers_takes_its_one_layer_of_polygons(ortho, tmp_path):
    """A points layer first, the polygons second: "has no polygons" (the first layer only
    was read). Two layers of polygons: refused, naming them, rather than one guessed."""
    field = shapely.box(*px(10, 100), *px(100, 10))
    path = tmp_path / "layers.gpkg"
    points = np.array([shapely.to_wkb(shapely.Point(px(5, 5)))], dtype=object)
    pyogrio.raw.write(path, points, field_data=[], fields=[], crs=CRS, geometry_type="Point",
                      driver="GPKG", layer="wells")
    wkb = np.array([shapely.to_wkb(field)], dtype=object)
    pyogrio.raw.write(path, wkb, field_data=[], fields=[], crs=CRS, geometry_type="Polygon",
                      driver="GPKG", layer="fields")
    assert [name for name, _ in pyogrio.list_layers(path)] == ["wells", "fields"]
    polygons, _ = read_polygons(path)
    assert [p.equals(field) for p in polygons] == [True]
    area = area_of_interest(256, 256, TRANSFORM, CRS, aoi=path)
    assert area.window == rasterio.windows.Window(10, 10, 90, 90)
    pyogrio.raw.write(path, wkb, field_data=[], fields=[], crs=CRS, geometry_type="Polygon",
                      driver="GPKG", layer="plots")
    result = invoke("run", ortho, "-o", tmp_path / "o.tif", "--aoi", path, *RUN)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"tiledepth: error: {path}: 2 of its layers hold polygons (fields, plots); an area of "
        f"interest is one layer: extract it first, e.g. ogr2ogr aoi.gpkg {path} fields")


def test_an_area_thinner_than_a_pixel_keeps_the_pixels_it_touches(tmp_path):
    """On pixels 0.5 m wide and 2 m tall, a strip 1 m tall between two rows of pixel centres
    was widened by half the width (0.25 m), still between them: the run was refused as
    "every pixel is masked". On square pixels, a speck near a pixel's corner, more than
    half a pixel from every centre, was too. Now each keeps the pixels it touches."""
    from affine import Affine

    tall = Affine(0.5, 0.0, 500000.0, 0.0, -2.0, 5400000.0)
    src = write_raster(tmp_path / "tall.tif", depth_image(50, 200), transform=tall)
    # rows 3 and 4 (y 5399992..94 and 5399990..92): a strip across their shared edge
    strip = shapely.box(500010, 5399991.5, 500050, 5399992.5)
    aoi = write_polygons(tmp_path / "strip.gpkg", [strip], CRS)
    area = area_of_interest(50, 200, tall, CRS, aoi=aoi)
    assert area.window == rasterio.windows.Window(20, 3, 80, 2)
    assert area.mask().all()  # the 80 x 2 px it touches
    out = tmp_path / "strip.tif"
    result = invoke("run", src, "-o", out, "--aoi", aoi, *RUN)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.shape == (2, 80) and np.isfinite(ds.read(1)).all()

    x, y = px(10, 10)  # the corner of 4 pixels: the speck in pixel (9, 10), 0.05 m from it
    speck = shapely.box(x + 0.01, y + 0.01, x + 0.05, y + 0.05)
    aoi = write_polygons(tmp_path / "speck.gpkg", [speck], CRS)
    area = area_of_interest(256, 256, TRANSFORM, CRS, aoi=aoi)
    assert area.window == rasterio.windows.Window(10, 9, 1, 1) and area.mask().all()


def test_bounds_crs_without_bounds_is_refused_with_an_aoi_too(ortho, tmp_path):
    """--bounds-crs without --bounds is refused in one line; with --aoi it was silently
    ignored (an invalid CRS too: the run went on, exit 0)."""
    from tiledepth.errors import OptionError

    aoi = write_polygons(tmp_path / "field.gpkg", [shapely.box(*px(10, 100), *px(100, 10))],
                         CRS)
    for crs in ("EPSG:4326", "NOTACRS"):
        out = tmp_path / "o.tif"
        result = invoke("run", ortho, "-o", out, "--aoi", aoi, "--bounds-crs", crs, *RUN)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"tiledepth: error: {ortho}: bounds_crs needs bounds (--bounds XMIN YMIN XMAX "
            "YMAX)"]
        assert not out.exists()
    with pytest.raises(OptionError, match=r"^bounds_crs needs bounds"):
        area_of_interest(256, 256, TRANSFORM, CRS, aoi=aoi, bounds_crs="EPSG:4326")
    assert area_of_interest(256, 256, TRANSFORM, CRS, aoi=aoi).window == \
        rasterio.windows.Window(10, 10, 90, 90)  # the AOI alone, in its own CRS


def test_an_aoi_in_degrees_is_densified_as_the_same_bounds_are(tmp_path):
    """A rectangle in longitude and latitude over a 20 m UTM grid (10 x 15 km): its edges bend
    in UTM. As an --aoi it masks the very pixels that --bounds --bounds-crs does (both
    densified before they are reprojected); its vertices alone cut 55 pixels differently."""
    from rasterio.transform import from_origin

    transform = from_origin(480000, 5420000, 20, 20)
    (lon0, lon1), (lat0, lat1) = transform_xy(CRS, "EPSG:4326", [485000, 495000],
                                              [5400000, 5415000])
    bounds = (lon0, lat0, lon1, lat1)
    path = write_polygons(tmp_path / "box.geojson", [shapely.box(*bounds)], "EPSG:4326")
    aoi = area_of_interest(1000, 1000, transform, CRS, aoi=path)
    rect = area_of_interest(1000, 1000, transform, CRS, bounds=bounds,
                            bounds_crs="EPSG:4326")
    assert aoi.window == rect.window == rasterio.windows.Window(250, 249, 500, 751)
    np.testing.assert_array_equal(aoi.mask(), rect.mask())
    assert int(aoi.mask().sum()) == 374219



def test_small_parcels_of_an_aoi_in_degrees_get_no_extra_vertices(tmp_path):
    """Each polygon was densified to its own envelope: every small parcel got 80 vertices
    (50k lon/lat boxes: 250k -> 4M vertices, 6.5 -> 11.4 s to reproject). The pieces are
    cut to the whole AOI's envelope, as the bounds rectangle's to its own: a parcel smaller
    than a piece keeps its 5 vertices, the large field bends as before."""
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    transform = from_origin(480000, 5420000, 20, 20)
    (lon0, lon1), (lat0, lat1) = transform_xy(CRS, "EPSG:4326", [485000, 495000],
                                              [5400000, 5415000])
    field = shapely.box(lon0, lat0, lon1, lat1)  # 10 x 15 km
    (p0, p1), (q0, q1) = transform_xy(CRS, "EPSG:4326", [496000, 496100], [5400000, 5400100])
    parcels = [shapely.box(p0, q0 + k * 0.002, p1, q1 + k * 0.002) for k in range(3)]
    path = write_polygons(tmp_path / "parcels.geojson", [field, *parcels], "EPSG:4326")
    area = area_of_interest(1000, 1000, transform, CRS, aoi=path)
    assert area.window == Window(250, 249, 556, 751)
    polygons = list(area.geometries[0].geoms)
    assert sorted(len(p.exterior.coords) for p in polygons) == [5, 5, 5, 73]
    # the field's pixels as alone (densified to its own envelope, as before)
    alone = area_of_interest(1000, 1000, transform, CRS,
                             aoi=write_polygons(tmp_path / "field.geojson", [field],
                                                "EPSG:4326"))
    assert int(alone.mask().sum()) == 374219
    ours = area.mask(Window(0, 0, 500, 751))
    np.testing.assert_array_equal(ours, alone.mask())


def test_scale_values_a_thin_strip_of_the_aoi(tmp_path, monkeypatch):
    """--scale 0.5 with an AOI of a field and a strip 0.9 px wide down a 700 x 160 raster:
    no reduced pixel's centre is in the strip (they sample the odd columns), yet each of
    its pixels gets a value (the nearest reduced pixel's), also in the output's second
    window (rows 512 on), which holds no finite reduced pixel: as at --scale 1, NaN
    exactly outside the AOI."""
    import tiledepth.scale

    # rows 512 on are up to 320 reduced pixels from the field: within reach here
    monkeypatch.setattr(tiledepth.scale, "MAX_FILL_DISTANCE", 400)
    src = write_raster(tmp_path / "tall.tif", depth_image(700, 160))
    field = shapely.box(*px(0, 60), *px(160, 0))
    strip = shapely.box(*px(100.05, 700), *px(100.95, 0))  # column 100's centre inside
    aoi = tmp_path / "strip.gpkg"
    pyogrio.raw.write(aoi, np.array([shapely.to_wkb(shapely.MultiPolygon([field, strip]))],
                                    dtype=object), field_data=[], fields=[], crs=CRS,
                      geometry_type="MultiPolygon", driver="GPKG")
    maps = {}
    for scale in ("1", "0.5"):
        out = tmp_path / f"s{scale}.tif"
        result = invoke("run", src, "-o", out, "--aoi", aoi, "--scale", scale, *RUN)
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            maps[scale] = ds.read(1)
    inside = np.isfinite(maps["1"])
    assert inside.shape == (700, 160) and inside[:, 100].all()
    assert inside.sum() == 60 * 160 + 640
    np.testing.assert_array_equal(np.isfinite(maps["0.5"]), inside)


def test_reference_cells_outside_the_aoi_polygon_are_said_to_be_there(ortho, tmp_path):
    """A reference whose cells lie in an --aoi's window but outside its polygon (a
    triangle) was said to cover only "masked, no-data or mask (--mask) pixels", none of
    which the run had: the polygon masks them, and the message says so and how many, as
    it does for control points."""
    from rasterio.transform import from_origin

    from tiledepth.aoi import AreaReader
    from tiledepth.errors import InputError
    from tiledepth.readers import RasterReader
    from tiledepth.references import check_reference_cells

    triangle = shapely.Polygon([px(0, 0), px(200, 0), px(0, 200)])  # 200 px legs
    aoi = write_polygons(tmp_path / "triangle.gpkg", [triangle], CRS)
    x0, y0 = px(120, 120)  # 20 x 20 cells of 2 m (4 px): in the window, below the hypotenuse
    ref = write_raster(tmp_path / "ref.tif", np.full((1, 20, 20), 12.5, np.float32),
                       transform=from_origin(x0, y0, 2.0, 2.0))
    result = invoke("run", ortho, "-o", tmp_path / "o.tif", "--aoi", aoi, "--reference", ref,
                    "--anchor", "reference", "--output-kind", "height", *RUN)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"tiledepth: error: {ref}: none of its valid pixels fall on the input's valid pixels "
        "(it covers only masked, no-data or mask (--mask) pixels, or outside the area of "
        "interest (--bounds/--aoi), where the output has no value); use a reference that "
        "covers the valid part of the input and the area of interest"]
    assert not (tmp_path / "o.tif").exists()
    area = area_of_interest(256, 256, TRANSFORM, CRS, aoi=aoi)
    cells = np.full((50, 50), np.nan, np.float32)  # the 200 x 200 px window's 4 x 4 px cells
    cells[30:, 30:] = 12.5  # 400 outside the triangle
    cells[0, :2] = 3.0  # 2 inside it
    with RasterReader(ortho) as raster:
        with pytest.raises(InputError) as caught:
            check_reference_cells("ref.tif", cells, 4, AreaReader(raster, area))
        assert str(caught.value) == (
            "ref.tif: only 2 of its 402 cells with heights (4 x 4 px) fall on valid pixels of "
            "the input (the others on masked, no-data or mask (--mask) pixels, or outside the "
            "area of interest (--bounds/--aoi): 400 of them); need 3")
        cells[1, :1] = 3.0  # a third inside: enough
        check_reference_cells("ref.tif", cells, 4, AreaReader(raster, area))
