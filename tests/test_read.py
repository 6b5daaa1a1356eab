import os

import numpy as np
import pytest
from conftest import depth_image, write_raster
from rasterio.enums import ColorInterp as C
from rasterio.windows import Window

from tiledepth.errors import InputError, OptionError
from tiledepth.read import Scaling, fit_scaling, select_bands
from tiledepth.readers import ArrayReader, RasterReader


def test_rgba_alpha_is_a_mask_not_colour(rgba_tif):
    with RasterReader(rgba_tif) as src:
        assert src.bands == (1, 2, 3)
        image, valid = src.read_tile(Window(0, 0, 100, 60))
    assert image.shape == (3, 60, 100) and image.dtype == np.float32
    assert not valid[:50, :80].any() and valid[55:, :].all()
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_coarse_read_is_decimated(rgba_tif):
    with RasterReader(rgba_tif) as src:
        image, valid = src.read_coarse(70)
    assert image.shape == (3, 60, 70) and valid.shape == (60, 70)
    assert not valid[30, 42]  # the masked disc survives decimation


def test_uint16_scaling_is_global_percentiles(tmp_path):
    data = np.linspace(1000, 5000, 200 * 200).reshape(1, 200, 200).astype(np.uint16)
    path = write_raster(tmp_path / "u16.tif", data)
    with RasterReader(path) as src:
        assert src.scaling.lo == pytest.approx(1020, abs=5)
        assert src.scaling.hi == pytest.approx(4980, abs=5)
        a, _ = src.read_tile(Window(0, 0, 50, 50))
        b, _ = src.read_tile(Window(0, 150, 50, 50))
        lo, hi = src.scaling.lo, src.scaling.hi
    assert a.shape == (3, 50, 50)  # one band repeated to three
    np.testing.assert_array_equal(a[0], a[2])
    # one mapping for every tile, not a per-tile stretch
    raw = data[0].astype(np.float64)
    np.testing.assert_allclose(a[0], np.clip((raw[:50, :50] - lo) / (hi - lo), 0, 1), atol=1e-6)
    np.testing.assert_allclose(b[0], np.clip((raw[150:, :50] - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_fit_scaling_rules():
    ones = np.ones((3, 2), bool)
    assert fit_scaling(np.zeros((3, 3, 2)), ones, "uint8") == Scaling(0.0, 255.0)
    assert fit_scaling(np.full((3, 3, 2), 0.5), ones, "float32") == Scaling(0.0, 1.0)
    s = fit_scaling(np.arange(18.0).reshape(3, 3, 2) * 10, ones, "float32")
    assert s.lo > 0 and s.hi < 170 and s.hi > s.lo
    np.testing.assert_array_equal(Scaling(0, 255).apply(np.array([0, 255, 300])), [0, 1, 1])


def test_band_selection():
    assert select_bands([C.red, C.green, C.blue, C.alpha], None) == (1, 2, 3)
    assert select_bands([C.alpha, C.red, C.green, C.blue], None) == (2, 3, 4)
    assert select_bands([C.gray], None) == (1, 1, 1)
    assert select_bands([C.gray, C.alpha], None) == (1, 1, 1)
    assert select_bands([C.gray] * 4, None) == (1, 2, 3)
    assert select_bands([C.gray] * 6, (4, 5, 6)) == (4, 5, 6)
    assert select_bands([C.gray] * 6, (2,)) == (2, 2, 2)
    with pytest.raises(InputError, match="--bands"):
        select_bands([C.gray] * 6, None)
    with pytest.raises(InputError, match="2 colour bands"):
        select_bands([C.gray, C.gray], None)
    with pytest.raises(OptionError, match="out of range"):
        select_bands([C.red, C.green, C.blue], (1, 2, 4))


def test_truncated_tiff_is_an_input_error(tmp_path):
    path = write_raster(tmp_path / "full.tif", depth_image(400, 400), compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.tif"):
        with RasterReader(cut) as src:
            for r in range(0, 400, 100):
                src.read_tile(Window(0, r, 400, 100))


def test_array_reader_matches_raster_reader(rgba_tif):
    import rasterio

    with rasterio.open(rgba_tif) as ds:
        arr = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
        alpha = ds.read(4) > 0
    w = Window(100, 200, 64, 32)
    with RasterReader(rgba_tif) as src:
        a, va = src.read_tile(w)
    b, vb = ArrayReader(arr, alpha).read_tile(w)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(va, vb)
    with pytest.raises(OptionError, match="shape"):
        ArrayReader(np.zeros((4, 4, 2)))


def test_complex_values_are_refused_in_files_and_arrays(tmp_path):
    path = write_raster(tmp_path / "sar.tif", np.ones((1, 20, 30), np.complex64))
    with pytest.raises(InputError, match=r"^sar.tif has complex-valued bands \(complex64\)"):
        RasterReader(path).__enter__()
    with pytest.raises(OptionError, match="image must hold real numbers.*got complex128"):
        ArrayReader(np.ones((20, 30), complex))


@pytest.fixture
def collar_tif(tmp_path):
    """An RGB float32 orthophoto that declares nodata -3.4e38 but whose collar is 0."""
    img = (depth_image(96, 128).astype(np.float32) + 1)  # no 0 inside the image
    img[:, :, :20] = 0.0  # the collar: a black band on the left
    return write_raster(tmp_path / "collar.tif", img, nodata=-3.4e38)


def test_nodata_option_masks_an_undeclared_collar(collar_tif):
    with RasterReader(collar_tif) as src:
        _, valid = src.read_tile(Window(0, 0, 128, 96))
    assert valid.all()  # the declared nodata never occurs: the collar counts as image
    with RasterReader(collar_tif, nodata=0) as src:
        _, valid = src.read_tile(Window(0, 0, 128, 96))
        _, coarse = src.read_coarse(32)
    assert not valid[:, :20].any() and valid[:, 20:].all()
    assert not coarse[:, :4].any() and coarse[:, 6:].all()


def test_nodata_and_mask_end_to_end(collar_tif, tmp_path):
    import rasterio
    from click.testing import CliRunner

    from tiledepth.cli import main

    mask = np.ones((1, 96, 128), np.uint8)
    mask[0, 80:, 100:] = 0
    mask_tif = write_raster(tmp_path / "mask.tif", mask)
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(main, [
        "run", str(collar_tif), "-o", str(out), "--model", "toy_models:red", "--tile-size",
        "64", "--nodata", "0", "--mask", str(mask_tif), "--no-progress", "-q"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        v = ds.read(1)
        assert ds.tags()["TILEDEPTH_NODATA"] == "0"
    assert np.isnan(v[:, :20]).all() and np.isnan(v[80:, 100:]).all()
    assert np.isfinite(v[:80, 20:]).all() and np.isfinite(v[:, 20:100]).all()
    bad = write_raster(tmp_path / "small.tif", mask[:, :50])
    result = CliRunner().invoke(main, ["run", str(collar_tif), "-o", str(tmp_path / "o2.tif"),
                                       "--model", "toy_models:red", "--mask", str(bad)])
    assert result.exit_code == 2 and "128 x 50 px" in result.output



def _masked_level():
    """A 120 x 150 float level with a masked corner holding garbage (NaN and 7)."""
    image = depth_image(120, 150).transpose(1, 2, 0).astype(np.float32) / 255
    valid = np.ones((120, 150), bool)
    valid[:30, :40] = False
    image[:30, :20] = np.nan
    image[:30, 20:40] = 7.0
    return image, valid


def test_a_level_no_smaller_than_its_array_is_the_array_itself():
    from tiledepth.engine import fuse
    from tiledepth.options import make_options
    from tiledepth.plan import open_model
    from tiledepth.readers import reduced
    from tiledepth.scratch import MemoryStore
    from tiledepth.write import ArraySink

    reader = ArrayReader(*_masked_level())
    assert reduced(reader, 150) is reader and reduced(reader, 400) is reader
    assert (reduced(reader, 75).height, reduced(reader, 75).width) == (60, 75)
    # what the copy the level was before gives (masked pixels zeroed): the same fused level
    image, valid = reader.read_coarse(150)
    copy = ArrayReader(np.moveaxis(image, 0, -1), valid)
    opts = make_options(model=lambda b: b[..., 0] + b[..., 1], tile_size=64, pyramid=False)
    anchor = reader.read_coarse(40)[0][0]
    levels = []
    for source in (reader, copy):
        sink = ArraySink(120, 150)
        fuse(source, sink, open_model(opts), opts, MemoryStore(), fit="scale_shift", anchor=anchor)
        levels.append(sink.array)
    assert np.isfinite(levels[0][valid]).all()
    np.testing.assert_array_equal(levels[0], levels[1])


def test_an_array_readers_coarse_image_is_computed_once(monkeypatch):
    import tiledepth.readers as readers
    from tiledepth.fusion.resample import area_average

    calls = []
    monkeypatch.setattr(readers, "area_average",
                        lambda *args: calls.append(args[1]) or area_average(*args))
    reader = ArrayReader(*_masked_level())
    first_image, first_valid = reader.read_coarse(50)
    first_image[:] = -1.0  # the caller's copy: the next read is unchanged
    image, valid = reader.read_coarse(50)
    assert calls == [(40, 50), (40, 50)]  # the image and the valid pixels' weights, once
    np.testing.assert_array_equal(valid, first_valid)
    assert image.shape == (3, 40, 50) and (image >= 0).all()
    reader.read_coarse(30)
    assert len(calls) == 4


@pytest.mark.parametrize("bands", [(1, 2, 3), (3, 1, 2), (2,)])
def test_tiles_and_the_coarse_image_hold_the_bands_asked_for(tmp_path, bands):
    data = np.stack([np.full((40, 50), v, np.uint8) for v in (10, 20, 30)])
    data[:, 5, 7] = 255
    path = write_raster(tmp_path / "b.tif", data)
    want = [b - 1 for b in (bands * 3 if len(bands) == 1 else bands)]
    with RasterReader(path, bands=bands) as src:
        tile, _ = src.read_tile(Window(0, 0, 50, 40))
        coarse, _ = src.read_coarse(40)
    np.testing.assert_array_equal(tile, data[want] * np.float32(1 / 255))
    assert coarse.shape == (3, 32, 40)
    np.testing.assert_allclose(coarse[:, 20, 20], data[want, 20, 20] / 255, rtol=1e-6)


def test_a_mask_off_the_inputs_grid_is_refused(tmp_path):
    """A ``--mask`` of the input's size but on another grid masked other pixels than its
    author meant, silently; now it is refused, with the gdalwarp that fixes it. Float noise
    (1e-9 px) is no other grid, and a mask without georeferencing is taken as on the grid."""
    from rasterio.transform import from_origin

    src = write_raster(tmp_path / "in.tif", depth_image(96, 128))  # EPSG:32611, 0.5 m
    mask = np.ones((1, 96, 128), np.uint8)
    mask[:, :, :64] = 0
    refused = {
        "elsewhere.tif": dict(crs="EPSG:4326", transform=from_origin(600000, 5000000, 0.5, 0.5)),
        "crs.tif": dict(crs="EPSG:32612"),  # the same numbers, another UTM zone
        "shifted.tif": dict(transform=from_origin(500000.5, 5400000.0, 0.5, 0.5)),
        "coarser.tif": dict(transform=from_origin(500000.0, 5400000.0, 1.0, 1.0)),
    }
    for name, kw in refused.items():
        path = write_raster(tmp_path / name, mask, **kw)
        with pytest.raises(InputError) as info:
            RasterReader(src, mask=path).__enter__()
        message = str(info.value)
        assert message.startswith(f"{path}: the mask is not on the input's grid (its ")
        assert message.endswith(
            "; warp it onto the input's grid first (gdalwarp -t_srs EPSG:32611 -te 500000.0 "
            f"5399952.0 500064.0 5400000.0 -ts 128 96 -r near {name} "
            f"{name[:-4]}.on_grid.tif)")
        assert "\n" not in message
    noise = from_origin(500000.0 + 1e-9 * 0.5, 5400000.0, 0.5, 0.5)
    for name, kw in {"noise.tif": dict(transform=noise),
                     "plain.tif": dict(crs=None, transform=None)}.items():
        with RasterReader(src, mask=write_raster(tmp_path / name, mask, **kw)) as reader:
            valid = reader.read_valid(Window(0, 0, 128, 96))
        assert not valid[:, :64].any() and valid[:, 64:].all()


def _palette_tif(tmp_path, name="palette.tif", **profile):
    """A 40 x 60 colour-map GeoTIFF: columns alternate red and blue, the last 20 white."""
    index = np.zeros((1, 40, 60), np.uint8)
    index[:, :, 1::2] = 1
    index[:, :, 40:] = 3
    path = write_raster(tmp_path / name, index, photometric="palette", **profile)
    import rasterio

    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255), 2: (0, 255, 0, 255),
                              3: (255, 255, 255, 255)})
    return path, index[0]


def test_a_colour_map_reaches_the_model_as_its_colours(tmp_path):
    """A palette band's indexes (0..3 / 255) reached the model as grey; now its colour table's
    red, green and blue do, in full-resolution tiles, the coarse image and ``--scale`` reads,
    where the colours (not the indexes) are averaged."""
    from tiledepth.readers import ScaledReader

    path, index = _palette_tif(tmp_path)
    table = np.array([(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)], np.float32)
    with RasterReader(path) as src:
        tile, valid = src.read_tile(Window(0, 0, 60, 40))
        coarse, coarse_valid = src.read_coarse(30)  # 2 x 2 blocks: one red, one blue column
        scaled, _ = ScaledReader(src, 0.5).read_tile(Window(0, 0, 30, 20))
    np.testing.assert_array_equal(tile, np.moveaxis(table[index], -1, 0) * np.float32(1 / 255))
    assert valid.all() and coarse_valid.all()
    for small in (coarse, scaled):
        assert small.shape == (3, 20, 30)
        np.testing.assert_allclose(small[:, 5, 3], [128 / 255, 0, 128 / 255], atol=1e-6)
        np.testing.assert_allclose(small[:, 5, 25], [1, 1, 1])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the PNG
def test_a_colour_maps_transparent_and_nodata_indexes_are_masked(tmp_path):
    """Entries with alpha 0 (a PNG's transparent index) and the nodata index (declared or
    ``--nodata``) are invalid pixels, not colours, and are left out of averaged reads."""
    import rasterio

    index = np.zeros((1, 40, 60), np.uint8)
    index[:, :, 30:] = 2  # transparent
    index[:, 30:, :10] = 1  # green, or nodata with --nodata 1
    png = tmp_path / "t.png"
    with rasterio.open(png, "w", driver="PNG", width=60, height=40, count=1,
                       dtype="uint8") as ds:
        ds.write(index)
        ds.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 255, 0, 255), 2: (9, 9, 9, 0)})
    with RasterReader(png) as src:
        tile, valid = src.read_tile(Window(0, 0, 60, 40))
        coarse, coarse_valid = src.read_coarse(20)  # 3 x 3 blocks; column 9 straddles 30
    assert not valid[:, 30:].any() and valid[:, :30].all()
    np.testing.assert_array_equal(tile[:, 0, 0], [1, 0, 0])
    assert coarse_valid[:, :10].all() and not coarse_valid[:, 10:].any()
    np.testing.assert_array_equal(coarse[:, 0, 9], [1, 0, 0])  # not darkened by the (9, 9, 9)
    with RasterReader(png, nodata=1) as src:
        _, valid = src.read_tile(Window(0, 0, 60, 40))
    assert not valid[30:, :10].any() and valid[:30, :30].all() and not valid[:, 30:].any()


def test_an_alpha_band_masks_beside_a_declared_nodata(tmp_path):
    """With nodata declared, GDAL's mask is the nodata's alone: the alpha band was ignored
    (grey + alpha, nodata 0: no transparent pixel masked; RGBA with --nodata 7: only the
    pixels equal to 7). Now transparent pixels are invalid in every read, and their colour
    stays out of averaged reads; the nodata still masks too."""
    from tiledepth.readers import ScaledReader

    grey = np.full((40, 60), 50, np.uint8)
    grey[:, :31] = 200  # the colour under the transparent pixels
    grey[:10, 50:] = 0  # nodata, opaque
    grey[30:, 50:] = 7
    alpha = np.full((40, 60), 255, np.uint8)
    alpha[:, :31] = 0
    cases = [(np.stack([grey, alpha]), {}), (np.stack([grey, grey, grey, alpha]), {"nodata": 7})]
    for k, (data, kw) in enumerate(cases):
        path = write_raster(tmp_path / f"a{k}.tif", data, nodata=0, alpha="YES")
        with RasterReader(path, **kw) as src:
            tile, valid = src.read_tile(Window(0, 0, 60, 40))
            coarse, coarse_valid = src.read_coarse(20)  # 3 x 3 blocks; column 10 straddles 31
            scaled, scaled_valid = ScaledReader(src, 1 / 3).read_tile(Window(0, 0, 20, 13))
        want = np.ones((40, 60), bool)
        want[:, :31] = False
        want[(30 if kw else 0):(40 if kw else 10), 50:] = False  # the nodata: 7, else 0
        np.testing.assert_array_equal(valid, want)
        assert not coarse_valid[:, :10].any() and coarse_valid[5:9, 10:16].all()
        assert not scaled_valid[:, :10].any() and scaled_valid[5, 10]
        np.testing.assert_allclose(coarse[0, 5, 10], 50 / 255, atol=1e-6)  # not (200 + 100) / 3
        np.testing.assert_allclose(scaled[0, 5, 10], 50 / 255, atol=1e-6)


def _collar_pair(tmp_path, height, width, overviews=()):
    """The same RGB pixels with a collar of 250 (21 columns), declaring nodata 250 and not.

    ``overviews``: (factor, value) of stale overviews, built from an image that is ``value``
    wherever it is not collar: a read from an overview shows which one.
    """
    import rasterio
    from rasterio.enums import Resampling

    rows, cols = np.mgrid[0:height, 0:width]
    grey = (20 + 100 * cols / width + 50 * rows / height).astype(np.uint8)
    rgb = np.stack([grey] * 3)
    rgb[:, :, :21] = 250  # not on a 2 or 3 px boundary
    paths = []
    for name, nodata in (("declared.tif", 250), ("plain.tif", None)):
        path = write_raster(tmp_path / name, rgb, nodata=nodata, blockxsize=128,
                            blockysize=128)
        for factor, value in overviews:  # one factor at a time, each from its own image
            with rasterio.open(path, "r+") as ds:
                ds.write(np.where(rgb == 250, rgb, value).astype(np.uint8))
                ds.build_overviews([factor], Resampling.nearest)
        if overviews:
            with rasterio.open(path, "r+") as ds:
                ds.write(rgb)
        paths.append(path)
    return paths


def test_nodata_option_reads_as_a_declared_nodata(tmp_path):
    """``--nodata 250`` on a file that declares none reads exactly as the same pixels
    declaring nodata 250, in decimated reads too: GDAL's average skipped only the declared
    value, so the collar's 250 was averaged into the valid pixels beside it."""
    from tiledepth.readers import ScaledReader

    declared, plain = _collar_pair(tmp_path, 60, 80)
    reads = []
    for path, kw in ((declared, {}), (plain, {"nodata": 250})):
        with RasterReader(path, **kw) as src:
            scaled = ScaledReader(src, 0.3)
            windows = [Window(3, 0, 20, 18), Window(0, 0, 24, 18)]
            reads.append([*scaled.read_tile(windows[0]), *src.read_coarse(27),
                          *src.read_tile(Window(0, 0, 80, 60)),
                          *[a for tile in scaled.iter_tiles(windows, workers=2) for a in tile]])
    for a, b in zip(*reads, strict=True):
        np.testing.assert_array_equal(a, b)
    assert reads[1][0][0, :, 3].max() < 100 / 255  # columns 20 (collar), 21: not (250 + 46) / 2


def test_nodata_option_reads_the_overviews_a_declared_nodata_reads(tmp_path):
    """Decimated reads with ``--nodata`` use the file's overviews as reads of a file that
    declares it do: the same level (stale overviews: 10, 20, 30 show which), the first read
    as a later one (GDAL read a VRT's first decimated read from another overview)."""
    from tiledepth.readers import ScaledReader

    declared, plain = _collar_pair(tmp_path, 600, 800, [(2, 10), (4, 20), (8, 30)])
    reads = []
    for path, kw in ((declared, {}), (plain, {"nodata": 250})):
        with RasterReader(path, **kw) as src:
            first, valid = src.read_coarse(207)  # 3.9 x smaller
            scaled = ScaledReader(src, 0.2).read_tile(Window(0, 0, 160, 120))[0]
            reads.append([first, valid, src.read_coarse(207)[0], scaled])
    for a, b in zip(*reads, strict=True):
        np.testing.assert_array_equal(a, b)
    first, valid, again, scaled = reads[1]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first[:, valid], 10 / 255)  # the 2x overview
    np.testing.assert_allclose(scaled[:, 5:, 5:], 20 / 255)  # 5 x smaller: the 4x one


def test_an_alpha_beside_a_declared_nodata_masks_reads_of_a_file_with_overviews(tmp_path):
    """RGBA declaring a nodata no pixel has, average overviews: a decimated read took each
    overview's alpha as its mask, and GDAL's average overviews of a fully transparent alpha
    hold small values (valid), so the transparent third reached the coarse image and
    ``--scale`` reads as its colour (white). Now they read as the same file without
    overviews does: transparent pixels masked, their colour left out of averages."""
    import rasterio
    from rasterio.enums import Resampling

    from tiledepth.readers import ScaledReader

    rows, cols = np.mgrid[0:240, 0:360]
    rgba = np.stack([20 + cols // 3, 20 + rows // 3, np.full((240, 360), 100),
                     np.where(cols < 120, 0, 255)]).astype(np.uint8)
    rgba[:3, :, :120] = 255  # the colour under the transparent third
    reads = []
    for overviews in (False, True):
        path = write_raster(tmp_path / f"o{overviews:d}.tif", rgba, nodata=7, alpha="YES",
                            photometric="RGB", blockxsize=64, blockysize=64)
        if overviews:
            with rasterio.open(path, "r+") as ds:
                ds.build_overviews([2, 4, 8], Resampling.average)
            with rasterio.open(path, overview_level=1) as ds:  # the 4x one
                assert ds.read(4)[:, :25].min() > 0  # what made the transparent third valid
        with RasterReader(path) as src:
            coarse, valid = src.read_coarse(90)  # 4 x smaller
            scaled, scaled_valid = ScaledReader(src, 0.25).read_tile(Window(0, 0, 90, 60))
            reads.append([coarse, valid, scaled, scaled_valid, src.sample_valid((60, 90))])
    for a, b in zip(*reads, strict=True):
        np.testing.assert_array_equal(a, b)
    coarse, valid, scaled, scaled_valid, sampled = reads[1]
    for mask in (valid, scaled_valid, sampled):
        assert not mask[:, :30].any() and mask[:, 30:].all()
    for small in (coarse, scaled):
        # columns 120..123: 60, 60, 61, 61 (not blended with the transparent 255)
        np.testing.assert_allclose(small[0, :, 30], 60.5 / 255, atol=1 / 255)


def test_images_of_fewer_than_8_bits_span_black_to_white(tmp_path):
    """A 1, 2 or 4-bit image (GDAL: Byte, NBITS=n) was scaled by / 255: a 4-bit PNG's white,
    15, reached the model as 0.06. Now its own white, 2**n - 1, is 1; a colour-map band of
    n bits keeps its colours."""
    import rasterio

    ramp = np.tile(np.arange(16, dtype=np.uint8), (8, 4))[None]  # 8 x 64, values 0..15
    cases = [("g4.png", dict(driver="PNG", NBITS=4), ramp, 15),
             ("g2.tif", dict(NBITS=2), ramp % 4, 3),
             ("g1.tif", dict(NBITS=1), ramp % 2, 1)]
    for name, profile, data, white in cases:
        path = write_raster(tmp_path / name, data, **profile)
        with rasterio.open(path) as ds:
            assert ds.tags(1, ns="IMAGE_STRUCTURE")["NBITS"] == str(white.bit_length())
        with RasterReader(path) as src:
            tile, _ = src.read_tile(Window(0, 0, 64, 8))
        np.testing.assert_allclose(tile, np.repeat(data, 3, 0) / np.float32(white), atol=1e-6)
    pal = write_raster(tmp_path / "p4.tif", ramp % 2, NBITS=4, photometric="palette")
    with rasterio.open(pal, "r+") as ds:
        ds.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
    with RasterReader(pal) as src:
        tile, _ = src.read_tile(Window(0, 0, 2, 1))
    np.testing.assert_array_equal(tile[:, 0], [[1, 0], [0, 0], [0, 1]])


def test_bands_tagged_blue_green_red_reach_the_model_as_red_green_blue(tmp_path):
    """A file tagging its bands Blue, Green, Red was fed in file order: the model's red was
    the blue band. Bands tagged red, green and blue (one of each) are now taken in that
    order; other files keep the first three colour bands."""
    assert select_bands([C.blue, C.green, C.red], None) == (3, 2, 1)
    assert select_bands([C.alpha, C.blue, C.green, C.red], None) == (4, 3, 2)
    assert select_bands([C.red, C.green, C.blue, C.undefined], None) == (1, 2, 3)
    assert select_bands([C.red, C.red, C.blue], None) == (1, 2, 3)  # not exactly one each
    assert select_bands([C.undefined] * 3, None) == (1, 2, 3)
    assert select_bands([C.blue, C.green, C.red], (1, 2, 3)) == (1, 2, 3)  # --bands wins
    bgr = np.stack([np.full((20, 30), v, np.uint8) for v in (20, 120, 220)])
    path = write_raster(tmp_path / "bgr.tif", bgr, colorinterp=[C.blue, C.green, C.red])
    with RasterReader(path) as src:
        tile, _ = src.read_tile(Window(0, 0, 30, 20))
        coarse, _ = src.read_coarse(10)
    for image in (tile, coarse):
        np.testing.assert_allclose(image[:, 0, 0], np.array([220, 120, 20]) / 255, atol=1e-6)


@pytest.mark.parametrize("kind", ["nodata", "alpha"])
def test_whole_raster_reads_of_a_masked_input_cache_two_block_rows(tmp_path, monkeypatch, kind):
    # The coarse read's and the validity sample's masks (dataset_mask, nearest) sample every
    # block row: with less than a block row in GDAL's cache each is decoded again for every
    # coarse row (a 12 000 px RGB input with a nodata: 23 s instead of 1.5 s). A small cache
    # cap stands in for a wide raster: one block row here is 1024 x 256 x 4 bytes, 1 MiB.
    import rasterio
    from rasterio.env import getenv

    rgb = depth_image(512, 1024)
    rgb[:, :40, :60] = 0
    if kind == "alpha":
        alpha = np.full((1, 512, 1024), 255, np.uint8)
        alpha[:, 200:260, 300:400] = 0
        path = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]),
                            colorinterp=[C.red, C.green, C.blue, C.alpha])
    else:
        grey = np.zeros((1, 512, 1024), np.uint8)  # a fourth band, read by the nodata mask
        path = write_raster(tmp_path / "nd.tif", np.concatenate([rgb, grey + 1]), nodata=0)
    caches = []
    dataset_mask = rasterio.io.DatasetReader.dataset_mask

    def recording(self, *args, **kwargs):
        caches.append(int(getenv()["GDAL_CACHEMAX"]))
        return dataset_mask(self, *args, **kwargs)

    small = 2**18  # under one block row
    with RasterReader(path) as src:
        expected = src.read_coarse(256), src.sample_valid((40, 80))
    monkeypatch.setattr(rasterio.io.DatasetReader, "dataset_mask", recording)
    with RasterReader(path, env_options={"GDAL_CACHEMAX": small}) as src:
        image, valid = src.read_coarse(256)
        sampled = src.sample_valid((40, 80))
        assert int(getenv()["GDAL_CACHEMAX"]) == small  # scoped: tiles read under the cap
    assert len(caches) >= 2 and min(caches) >= 2 * 1024 * 256 * 4
    np.testing.assert_array_equal(image, expected[0][0])
    np.testing.assert_array_equal(valid, expected[0][1])
    np.testing.assert_array_equal(sampled, expected[1])
    assert not valid.all() and valid.any()


def test_read_ahead_threads_leave_the_warning_filters_alone(tmp_path, monkeypatch):
    # warnings.catch_warnings swaps the process's one filter list: entered by two read-ahead
    # threads at once (Python 3.11), one restored a list holding the other's "ignore
    # NotGeoreferencedWarning", left in the caller's process by tiledepth.run (1 run in 3)
    import threading
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from toy_models import red

    import tiledepth

    geo = write_raster(tmp_path / "geo.tif", depth_image(256, 320))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        plain = write_raster(tmp_path / "plain.png", depth_image(256, 320), crs=None,
                             transform=None, driver="PNG", tiled=False, blockxsize=None,
                             blockysize=None)
    entered = []
    enter = warnings.catch_warnings.__enter__

    def recording(self):
        entered.append(threading.current_thread().name)
        return enter(self)

    tiledepth.run(geo, tmp_path / "warm.tif", model=red, tile_size=64)  # imports add filters
    monkeypatch.setattr(warnings.catch_warnings, "__enter__", recording)
    for k in range(6):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")  # the caller's filters: every warning shown
            before = list(warnings.filters)
            tiledepth.run(plain if k % 2 else geo, tmp_path / f"out{k}.tif", model=red,
                          tile_size=64, workers=2, scale=0.5 if k >= 4 else 1.0)
            assert warnings.filters == before
        # the input's missing georeferencing is tiledepth's to report, not rasterio's, in
        # the read-ahead threads too
        assert not [w for w in seen if issubclass(w.category, NotGeoreferencedWarning)]
    assert not [name for name in entered if name.startswith("tiledepth-read")]


def _scan_line_gaps(tmp_path):
    """A float32 ramp with 2 rows of gaps in every 8 (Landsat 7 SLC-off's stripes), as NaN
    without a declared nodata and as a declared nodata -9999: the two files."""
    rows, cols = np.mgrid[0:200, 0:240]
    ramp = ((rows + cols) / 440).astype(np.float32)[None]
    paths = []
    for name, fill, nodata in (("nan.tif", np.nan, None), ("declared.tif", -9999.0, -9999.0)):
        paths.append(write_raster(tmp_path / name, np.where(rows % 8 < 2, fill, ramp),
                                  nodata=nodata))
    return paths


def test_nan_in_a_float_input_reads_as_a_declared_nodata(tmp_path):
    """NaN gaps in every 4 x 4 px: GDAL's average of pixels one of which is NaN is NaN, so
    every coarse pixel and ``--scale 0.25`` pixel was masked ("every pixel is masked").
    Now NaN is skipped as a declared nodata is: the same reads as the -9999 file's."""
    from tiledepth.readers import ScaledReader

    reads = []
    for path in _scan_line_gaps(tmp_path):
        with RasterReader(path) as src:
            scaled = ScaledReader(src, 0.25)
            reads.append([*src.read_coarse(60), *scaled.read_tile(Window(0, 0, 60, 50)),
                          *src.read_tile(Window(0, 0, 240, 200)), src.sample_valid((50, 60))])
    for k in range(0, 6, 2):  # (image, validity) pairs: masked pixels' values are the files'
        valid = reads[0][k + 1]
        np.testing.assert_array_equal(valid, reads[1][k + 1])
        np.testing.assert_array_equal(reads[0][k][:, valid], reads[1][k][:, valid])
    np.testing.assert_array_equal(reads[0][6], reads[1][6])
    coarse, valid, scaled, scaled_valid, _, tile_valid, _ = reads[0]
    assert valid.all() and scaled_valid.all()  # not one lost
    assert (tile_valid == (np.arange(200) % 8 >= 2)[:, None]).all()
    np.testing.assert_allclose(coarse[0, 10, 20], (np.mean([2, 3]) + 4 * 10 + 1.5 + 4 * 20)
                               / 440, atol=1e-6)  # the mean of the 2 valid rows of 4


def test_a_speck_of_valid_float_pixels_smaller_than_a_coarse_pixel_is_kept(tmp_path):
    """A 4 x 4 px patch of values in a float image of NaN: its coarse pixel held NaN, so the
    run was refused ("every pixel is masked"); a declared nodata kept it. Now both do."""
    image = np.full((1, 300, 450), np.nan, np.float32)
    image[0, 100:104, 100:104] = 0.5
    with RasterReader(write_raster(tmp_path / "speck.tif", image)) as src:
        coarse, valid = src.read_coarse(64)
    assert valid.sum() == 1 and coarse[:, valid].tolist() == [[0.5]] * 3


def test_a_declared_nodata_is_judged_on_the_model_bands(tmp_path):
    """RGBN declaring nodata 0, R, G and B 0 on the left third where NIR has data: GDAL's
    mask is valid where any band is, so that third reached the model as black; ``--nodata
    0`` masked it. Now both mask it, as the README says; and ``--bands 1`` of an RGB file
    declaring nodata masks where band 1 is nodata, whatever bands 2 and 3 hold."""
    from tiledepth.readers import ScaledReader

    rows, cols = np.mgrid[0:120, 0:180]
    ramp = (1000 + 50 * (rows + cols)).astype(np.uint16)
    rgbn = np.stack([ramp] * 4)
    rgbn[:3, :, :60] = 0
    path = write_raster(tmp_path / "rgbn.tif", rgbn, nodata=0)
    reads = []
    for kw in ({}, {"nodata": 0}):
        with RasterReader(path, **kw) as src:
            reads.append([*src.read_tile(Window(0, 0, 180, 120)), *src.read_coarse(45),
                          *ScaledReader(src, 0.5).read_tile(Window(0, 0, 90, 60)),
                          src.scaling.lo])
    for a, b in zip(*reads, strict=True):
        np.testing.assert_array_equal(a, b)
    _, valid, _, coarse_valid, scaled, scaled_valid, lo = reads[0]
    assert not valid[:, :60].any() and valid[:, 60:].all()
    assert not coarse_valid[:, :15].any() and coarse_valid[:, 15:].all()
    assert not scaled_valid[:, :30].any() and scaled_valid[:, 30:].all()
    assert lo > 1000  # the stretch fitted on the image, not on the third of zeros

    rgb = np.stack([ramp] * 3)
    rgb[0, :, :60] = 0  # band 1 nodata, bands 2 and 3 not
    path = write_raster(tmp_path / "rgb.tif", rgb, nodata=0)
    for bands, masked in (((1,), True), ((2,), False)):
        with RasterReader(path, bands=bands) as src:
            _, valid = src.read_tile(Window(0, 0, 180, 120))
            _, coarse_valid = src.read_coarse(45)
        assert valid[:, :60].any() != masked and valid[:, 60:].all()
        assert coarse_valid[:, :15].any() != masked and coarse_valid[:, 15:].all()


@pytest.mark.parametrize(("dtype", "offset"), [("uint32", 4_000_000_000),
                                               ("int32", 2_000_000_000),
                                               ("float64", 3.0e9), ("int64", 2**40)])
def test_wide_integers_and_float64_with_a_large_offset_keep_their_levels(tmp_path, dtype,
                                                                          offset):
    """0..999 over an offset of 4e9: cast to float32 before the stretch, they kept 5
    levels of the 1000 (float32's step there is 512). Now lo is subtracted in float64."""
    ramp = np.tile(np.arange(1000), (20, 1))
    raw = (ramp + offset).astype(dtype)
    scaling = Scaling(offset + 5.0, offset + 995.0)
    out = scaling.apply(raw[None])
    np.testing.assert_allclose(out[0], np.clip((ramp - 5.0) / 990.0, 0, 1), atol=1e-6)
    if dtype != "int64":  # (no GeoTIFF type)
        path = write_raster(tmp_path / f"{dtype}.tif", raw[None])
        with RasterReader(path) as src:
            tile, _ = src.read_tile(Window(0, 0, 1000, 20))
        assert len(np.unique(tile[0])) > 980


def test_scaling_of_narrow_types_is_the_float32_arithmetic():
    """uint8, uint16 and float32 keep their float32 arithmetic, bit for bit."""
    rng = np.random.default_rng(0)
    for dtype, scaling in (("uint8", Scaling(3.0, 250.0)), ("uint16", Scaling(1020.5, 4980.2)),
                           ("float32", Scaling(-3.25, 17.5))):
        raw = (rng.random((3, 17, 23)) * 5000 - 4).astype(dtype)
        want = (raw.astype(np.float32) - np.float32(scaling.lo)) \
            * np.float32(1.0 / (scaling.hi - scaling.lo))
        np.testing.assert_array_equal(scaling.apply(raw), np.clip(want, 0, 1))


def test_full_resolution_reads_of_a_float_input_read_no_mask(tmp_path, monkeypatch):
    """A float input without a declared nodata reads through a VRT that declares NaN (for its
    averaged reads), but its full-resolution tiles are valid where finite without GDAL's
    mask read: that read made float runs 22-55 % slower, for the same bytes."""
    import rasterio

    nan_path, _ = _scan_line_gaps(tmp_path)
    with RasterReader(nan_path) as src:
        def no_mask(*args, **kwargs):
            raise AssertionError("a mask read at full resolution")

        monkeypatch.setattr(rasterio.io.DatasetReader, "dataset_mask", no_mask)
        tile, valid = src.read_tile(Window(10, 20, 64, 48))
        assert valid.sum() == 64 * 48 * 6 // 8 and np.isfinite(tile[:, valid]).all()
        monkeypatch.undo()
        coarse, coarse_valid = src.read_coarse(60)  # averaged: through the NaN nodata
        assert coarse_valid.all()


@pytest.mark.parametrize("kw", [{"scale": 0.5}, {"nodata": -9999, "scale": 0.5}],
                         ids=["declared", "--nodata"])
def test_nan_beside_a_declared_nodata_is_masked_as_it(tmp_path, kw):
    """A float32 GIS export: a declared -9999 fill on a border strip and a 20 x 20 px hole of
    NaN. GDAL's mask kept NaN valid and its averages made every ``--scale`` pixel beside
    the hole NaN (lost: the output beside it was 0.6 % of the range off a run where the hole
    is -9999). Now NaN is masked as the nodata is, in every read."""
    import rasterio
    from conftest import depth_field

    import tiledepth
    from tiledepth.readers import ScaledReader

    d = depth_field(300, 400)
    data = np.stack([d * 100 + 10, d * 50 + 20, 80 - d * 30]).astype(np.float32)
    data[:, :, :30] = -9999.0
    hole = np.zeros((300, 400), bool)
    hole[141:161, 201:221] = True
    nan = write_raster(tmp_path / "nan.tif", np.where(hole, np.float32(np.nan), data),
                       nodata=-9999.0 if "nodata" not in kw else None)
    fill = write_raster(tmp_path / "fill.tif", np.where(hole, np.float32(-9999), data),
                        nodata=-9999.0 if "nodata" not in kw else None)
    reads, outputs = [], []
    for path in (nan, fill):
        with RasterReader(path, nodata=kw.get("nodata")) as src:
            reads.append([*src.read_coarse(128), *ScaledReader(src, 0.5).read_tile(
                Window(0, 0, 200, 150)), *src.read_tile(Window(190, 130, 40, 40))])
        seen = []

        def model(batch, seen=seen):
            seen.append(bool(np.isnan(batch).any()))
            return batch[..., 0] + 0.3 * batch[..., 1] ** 2

        out = tiledepth.run(path, tmp_path / f"{path.stem}.depth.tif", model=model,
                            tile_size=128, **kw).output
        assert not any(seen)  # NaN never reaches the model
        with rasterio.open(out) as ds:
            outputs.append(ds.read(1))
    for k in range(0, 6, 2):  # (image, validity) pairs: the same where valid
        valid = reads[0][k + 1]
        np.testing.assert_array_equal(valid, reads[1][k + 1])
        np.testing.assert_array_equal(reads[0][k][:, valid], reads[1][k][:, valid])
    assert not reads[0][5][11:31, 11:31].any() and reads[0][5].sum() == 40 * 40 - 400
    depth, want = outputs
    masked = hole | (data[0] == -9999)
    np.testing.assert_array_equal(np.isnan(depth), masked)  # finite everywhere else
    span = np.nanmax(want) - np.nanmin(want)
    assert np.nanmax(np.abs(depth - want)) <= 1e-6 * span


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_failed_reads_ahead_leave_no_dataset_handle_open(tmp_path, monkeypatch):
    """Read-ahead handles are opened before their threads start. A consumer that failed
    between two tiles inside the reader's ``with`` (its error kept, as pytest or a notebook
    keeps it: the traceback holds the iterator) left 2 handles open per run after the reader
    had exited, a window list that raised 2 more, and a second thread that could not start
    left the first, and its handle, for good. Each is closed now."""
    import threading

    from tiledepth.readers import ScaledReader

    path = write_raster(tmp_path / "in.tif", depth_image(200, 300))
    windows = [Window(c, r, 100, 100) for r in (0, 100) for c in (0, 100, 200)]

    def consumer_fails(scale=1.0):
        with RasterReader(path) as src:
            reader = src if scale == 1.0 else ScaledReader(src, scale)
            reads = reader.iter_tiles(windows, workers=2)
            next(reads)
            raise RuntimeError("the model failed on the first tile")

    def windows_fail():
        def listed():
            yield windows[0]
            raise ValueError("no more windows")

        with RasterReader(path) as src:
            list(src.iter_tiles(listed(), workers=2))

    start = threading.Thread.start

    def second_thread_fails():
        def refused(thread):
            if thread.name == "tiledepth-read-1":
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", refused)
        try:
            with RasterReader(path) as src:
                list(src.iter_tiles(windows, workers=2))
        finally:
            monkeypatch.setattr(threading.Thread, "start", start)

    runs = [consumer_fails, lambda: consumer_fails(0.5), windows_fail, second_thread_fails]
    kept = []
    for _ in range(6):  # the first: GDAL's and rasterio's own files opened once
        if _ == 1:
            before = len(os.listdir("/proc/self/fd"))
        for run in runs:
            with pytest.raises((RuntimeError, ValueError)) as info:
                run()
            kept.append(info.value)
    assert len(os.listdir("/proc/self/fd")) == before  # the original: 40 more
    assert not [t for t in threading.enumerate() if t.name.startswith("tiledepth-read-")]


@pytest.mark.parametrize("workers", [0, 2])
def test_tile_reads_of_a_raster_of_whole_row_blocks_cache_the_rows_they_span(
        tmp_path, monkeypatch, workers):
    """A PNG's or JPEG's blocks are its lines (a striped TIFF's its strips): a tile decodes
    the full width of its rows, and with fewer of them in GDAL's 16 MiB cache than a tile
    spans, the next tile of the row decoded them again, from line 0 (a PNG or JPEG is
    decoded from the top): an 8000 x 6000 PNG took 96 s instead of 8 s. Tile reads now hold
    the rows two consecutive windows span (+ a block), of every band, for each handle; a
    tiled raster's reads keep the cache as it is. A small cap stands in for a wide raster."""
    import rasterio
    from rasterio.env import getenv

    from tiledepth.tiling import tile_grid

    rgb = depth_image(300, 1000)
    png = write_raster(tmp_path / "lines.png", rgb, driver="PNG", tiled=None, blockxsize=None,
                       blockysize=None)
    tiled = write_raster(tmp_path / "tiled.tif", rgb, blockxsize=128, blockysize=128)
    windows = [t.window for row in tile_grid(300, 1000, 128, 0.25) for t in row]
    with RasterReader(tiled) as src:
        expected = [src.read_tile(w) for w in windows]
    caches = []
    read = rasterio.io.DatasetReader.read

    def recording(self, *args, **kwargs):
        caches.append(int(getenv()["GDAL_CACHEMAX"]))  # (a worker's: its own environment)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording)
    small = 2**18  # under the 128 + 96 rows of two windows: 224 x 1000 x 3 bytes
    found = {}
    for path in (png, tiled):
        caches.clear()
        with RasterReader(path, env_options={"GDAL_CACHEMAX": small}) as src:
            tiles = list(src.iter_tiles(windows, workers=workers))
            assert src.read_tile(windows[5])[0].shape == (3, 128, 128)  # (held after)
        found[path.suffix] = set(caches)
        for (image, valid), (want, want_valid) in zip(tiles, expected, strict=True):
            np.testing.assert_array_equal(image, want)
            np.testing.assert_array_equal(valid, want_valid)
    assert found[".png"] == {224 * 1000 * 3 * (workers + 1)}
    assert found[".tif"] == {small}


def _mask_pair(tmp_path, kind):
    """Two 60 x 80 RGB rasters (uint8, 250 where masked) that mask the same pixels: in the
    first, columns 0-20 by ``kind`` (nothing, a declared nodata 250, an alpha band) and 21-26
    by a ``--mask`` (uint8 0; or, ``float mask``, float32 0 in columns 0-20 and its own
    nodata -1 in rows 55 on); in the second, all of them by itself (an alpha band, or a
    declared nodata 250). Returns the RasterReader arguments of each."""
    rows, cols = np.mgrid[0:60, 0:80]
    grey = np.stack([(20 + 100 * cols / 80 + 50 * rows / 60).astype(np.uint8)] * 3)
    cut = 27  # not on a 2 or 3 px boundary
    if kind == "float mask":
        keep = np.where(cols < 21, 0.0, 0.5).astype(np.float32)
        keep[55:, :] = -1.0
        mask = write_raster(tmp_path / "keep.tif", keep[None], nodata=-1.0)
        masked = np.where((cols < 21) | (rows >= 55), 250, grey).astype(np.uint8)
        return ((write_raster(tmp_path / "masked.tif", masked, blockxsize=16, blockysize=16),
                 {"mask": mask}),
                (write_raster(tmp_path / "alone.tif", masked, blockxsize=16, blockysize=16,
                              nodata=250), {}))
    mask = write_raster(tmp_path / "keep.tif", (cols >= cut).astype(np.uint8)[None])

    def write(name, cut, nodata):
        data = np.where(cols < cut, 250, grey).astype(np.uint8)
        if kind == "alpha":
            alpha = np.where(cols < cut, 0, 255).astype(np.uint8)[None]
            return write_raster(tmp_path / name, np.concatenate([data, alpha]), alpha="YES",
                                photometric="RGB", blockxsize=16, blockysize=16)
        return write_raster(tmp_path / name, data, blockxsize=16, blockysize=16,
                            nodata=250 if nodata else None)

    return ((write("masked.tif", 21, kind == "nodata"), {"mask": mask}),
            (write("alone.tif", cut, True), {}))


@pytest.mark.parametrize("kind", ["none", "nodata", "alpha", "float mask"])
def test_pixels_masked_by_the_mask_option_stay_out_of_averaged_reads(tmp_path, kind):
    """``--mask`` was applied to the validity alone: GDAL's average of a decimated read
    (``--scale``, the coarse image, pyramid levels) took the pixels it masks, so they blended
    into their valid neighbours (the repro's max difference: 0.203). Now averaged reads skip
    them, as they skip the pixels of the input's own mask (none, a nodata, an alpha band):
    the same reads as of a raster masking both itself."""
    from tiledepth.readers import ScaledReader

    reads = []
    for path, kw in _mask_pair(tmp_path, kind):
        with RasterReader(path, **kw) as src:
            scaled = ScaledReader(src, 0.3)
            windows = [Window(3, 0, 20, 18), Window(0, 0, 24, 18)]
            got = [scaled.read_tile(windows[0]), src.read_coarse(27),
                   src.read_tile(Window(0, 0, 80, 60)),
                   *scaled.iter_tiles(windows, workers=2), *scaled.iter_tiles(windows)]
            reads.append(got)
    for (image, valid), (want, want_valid) in zip(*reads, strict=True):
        np.testing.assert_array_equal(valid, want_valid)
        np.testing.assert_array_equal(image[:, valid], want[:, want_valid])
    for _, valid in reads[0][:2]:  # (the same pixels: the values compared above)
        assert valid.any() and not valid.all()


def test_the_mask_option_reads_the_overviews_a_file_has_as_they_are(tmp_path):
    """As ``--nodata`` (docs/options.md): decimated reads with ``--mask`` of a file with
    overviews read them (stale ones here: 10, 20, 30 show which), not its full resolution
    (a 12 000 px raster's coarse read took 0.06 s, 8 s at full resolution); a read too
    little decimated for one (0.75) averages the full resolution without the masked pixels,
    as a declared nodata's."""
    from tiledepth.readers import ScaledReader

    declared, plain = _collar_pair(tmp_path, 600, 800, [(2, 10), (4, 20), (8, 30)])
    mask = np.ones((1, 600, 800), np.uint8)
    mask[:, :, :21] = 0
    keep = write_raster(tmp_path / "keep.tif", mask)
    reads = []
    for path, kw in ((declared, {}), (plain, {"mask": keep})):
        with RasterReader(path, **kw) as src:
            first, valid = src.read_coarse(207)  # 3.9 x smaller
            scaled = ScaledReader(src, 0.2).read_tile(Window(0, 0, 160, 120))
            near = ScaledReader(src, 0.75).read_tile(Window(0, 0, 60, 45))
            reads.append([first, valid, scaled, near])
    first, valid, scaled, near = reads[1]
    # the 2x overview (but at the collar's edge: made without --mask, it holds the collar)
    np.testing.assert_allclose(first[:, :, 8:][:, valid[:, 8:]], 10 / 255)
    np.testing.assert_allclose(scaled[0][:, 5:, 5:], 20 / 255)  # 5 x smaller: the 4x one
    np.testing.assert_array_equal(near[1], reads[0][3][1])
    np.testing.assert_array_equal(near[0][:, near[1]], reads[0][3][0][:, near[1]])
    assert near[0][0, :, 16].max() < 100 / 255  # column 21's grey, no collar's 250 in it


@pytest.mark.parametrize("value, dtype", [(-3.4028235e38, "float32"), (3.4e38, "float32"),
                                          (2.0**63, "uint64"), (-2.0**63, "int64"),
                                          (-1.7976931348623157e308, "float64")])
def test_a_constant_image_of_a_huge_fill_value_is_scaled_without_dividing_by_zero(value,
                                                                                   dtype):
    """A raster of nothing but a fill value (-3.4e38 declared nowhere, a uint64 near 2**63):
    its span lo - 1 .. lo + 1 was lo .. lo beyond 2**53, and 1 / (hi - lo) raised
    ZeroDivisionError. The span is now relative to the value; an ordinary constant image
    keeps its lo - 1 .. lo + 1."""
    import warnings

    sample = np.full((3, 4, 4), value, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way either
        scaling = fit_scaling(sample, np.ones((4, 4), bool), dtype)
        out = scaling.apply(sample[:, :2, :2])
    assert scaling.hi > scaling.lo
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if abs(value) < 1e300:  # (at float64's very end: 0, the span clipped to its range)
        np.testing.assert_allclose(out, 0.5, atol=0.01)
    assert fit_scaling(np.zeros((3, 4, 4), np.uint16), np.ones((4, 4), bool), "uint16") \
        == Scaling(-1.0, 1.0)
    assert fit_scaling(np.full((3, 4, 4), 255.0), np.ones((4, 4), bool), "float32") \
        == Scaling(254.0, 256.0)
    with pytest.raises(ValueError, match="hi > lo"):
        Scaling(2.0, 2.0)


def test_local_names_that_start_like_a_url_scheme_are_read_as_local_files(tmp_path,
                                                                         monkeypatch):
    """``zip:a.tif`` and ``s3:x.tif``, local files named by a relative path: rasterio took
    the name's head for a scheme (/vsizip/a.tif, an S3 object). Inputs and masks are now
    opened by their absolute path; messages still name them as given."""
    import rasterio
    from rasterio.enums import Resampling

    monkeypatch.chdir(tmp_path)
    data = depth_image(60, 80)
    write_raster(tmp_path / "plain.tif", data)
    write_raster(tmp_path / "zip:a.tif", data)
    mask = np.ones((1, 60, 80), np.uint8)
    mask[:, :, :10] = 0
    write_raster(tmp_path / "s3:m.tif", mask)
    write_raster(tmp_path / "s3:x.tif", data)
    with rasterio.open(tmp_path / "zip:a.tif", "r+") as ds:  # (an absolute name)
        ds.build_overviews([2], Resampling.average)  # (opened by name too)
    reads = []
    for name, kw in (("plain.tif", {}), ("zip:a.tif", {"mask": "s3:m.tif"}),
                     ("s3:x.tif", {})):
        with RasterReader(name, **kw) as src:
            image, valid = src.read_tile(Window(0, 0, 80, 60))
            tiles = list(src.iter_tiles([Window(0, 0, 40, 30)], workers=1))
            reads.append((image, valid, tiles[0][0], src.read_coarse(20)[0]))
    for got in reads[1:]:
        for a, b in zip(got, reads[0], strict=True):
            assert a.shape == b.shape
        np.testing.assert_array_equal(got[0], reads[0][0])
    assert not reads[1][1][:, :10].any() and reads[1][1][:, 10:].all()
    (tmp_path / "zip:bad.tif").write_bytes(b"II*\0" + bytes(100))
    with pytest.raises(InputError, match=r"^zip:bad.tif: cannot read it as a raster"):
        RasterReader("zip:bad.tif").__enter__()


def test_a_nodata_the_model_bands_cannot_hold_is_refused_before_the_model(tmp_path):
    """``--nodata 300`` (or -1, or 44.5) on uint8 bands was accepted, recorded in the output's
    tags, and masked nothing (the grey run's output had no NaN). Refused in one line before
    the first model call; a value the bands hold still masks, and float bands take any."""
    import re

    import rasterio

    import tiledepth

    grey = np.tile(np.arange(80, dtype=np.uint8), (60, 1))[None]  # columns 0..79
    src = write_raster(tmp_path / "grey.tif", grey)
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch[..., 0]

    for value, says in [(300, "300 cannot occur in a uint8 band (whole numbers 0-255)"),
                        (-1, "-1 cannot occur"), (44.5, "44.5 cannot occur")]:
        with pytest.raises(OptionError, match=r"^grey\.tif: --nodata " + re.escape(says)):
            tiledepth.run(src, tmp_path / "o.tif", model=model, tile_size=64, nodata=value)
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["grey.tif"]
    wide = write_raster(tmp_path / "wide.tif", grey.astype(np.uint16) * 500)
    with pytest.raises(OptionError, match="--nodata 70000 cannot occur in a uint16 band "
                                          r"\(whole numbers 0-65535\)"), \
            RasterReader(wide, nodata=70000):
        pass
    out = tiledepth.run(src, tmp_path / "o.tif", model=model, tile_size=64, nodata=44).output
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(np.isnan(ds.read(1)).any(axis=0),
                                      np.arange(80) == 44)  # column 44 alone masked
    floats = write_raster(tmp_path / "float.tif", grey.astype(np.float32) + 0.5)
    with RasterReader(floats, nodata=44.5) as reader:
        _, valid = reader.read_tile(Window(0, 0, 80, 60))
    np.testing.assert_array_equal(valid.all(axis=0), np.arange(80) != 44)
