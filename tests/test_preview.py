"""Previews: colour mapping, hillshade, the PNG's size, values and georeferencing."""

import logging
import os

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, files_of, replace_then_interrupt, write_raster
from rasterio.control import GroundControlPoint
from rasterio.transform import from_gcps, from_origin

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import InputError, OutputError
from tiledepth.preview import _VIRIDIS, colorize, hillshade, preview_path, write_preview


def test_colorize_stretches_robustly_and_masks_nan():
    v = np.linspace(0, 1, 1000).reshape(10, 100)
    v[0, 0] = 1e6  # one wild value does not flatten the stretch
    v[5, :10] = np.nan
    rgba = colorize(v)
    assert rgba.dtype == np.uint8 and rgba.shape == (4, 10, 100)
    assert (rgba[3] == 0).sum() == 10 and (rgba[3, 5, :10] == 0).all()
    assert rgba[:3, 9, 99].tolist() == _VIRIDIS[-1].tolist()  # top of the stretch
    mid = rgba[:3, 5, 50].astype(int)
    assert 0 < np.abs(mid - _VIRIDIS[0]).sum() and 0 < np.abs(mid - _VIRIDIS[-1]).sum()


def test_hillshade_lights_slopes_facing_the_sun():
    yy, xx = np.mgrid[0:50, 0:50].astype(float)
    shade = hillshade(-np.hypot(yy - 25, xx - 25))  # a cone
    assert shade.dtype == np.float32 and 0 <= shade.min() and shade.max() <= 1
    assert shade[10, 10] > shade[40, 40]  # north-west flank lit, south-east in shadow


def test_preview_of_a_large_output_is_at_most_2048_px(tmp_path):
    rng = np.random.default_rng(0)
    data = np.cumsum(rng.normal(size=(1, 300, 4100)), axis=2).astype(np.float32)
    data[0, :50, :200] = np.nan
    src = write_raster(tmp_path / "wide.depth.tif", data, nodata=float("nan"),
                       transform=from_origin(500000.0, 5400000.0, 0.5, 0.5))
    png = write_preview(src, hillshade=True)
    assert png == tmp_path / "wide.depth.png" == preview_path(src)
    with rasterio.open(png) as ds:
        assert ds.driver == "PNG" and ds.count == 4 and ds.dtypes[0] == "uint8"
        assert (ds.width, ds.height) == (2048, 150)  # long side 2048, aspect kept
        rgba = ds.read()
        assert ds.crs is not None and ds.transform.a == pytest.approx(0.5 * 4100 / 2048)
    assert (rgba[3, :20, :90] == 0).all() and (rgba[3, 40:, 110:] == 255).all()
    assert rgba[:3][:, rgba[3] == 255].max() <= 253  # shaded viridis: no white
    assert len(np.unique(rgba[0])) > 50  # a real range of colours


def test_hillshade_stands_hills_up_for_every_kind(tmp_path):
    """Values that grow upwards (height, inverse depth, band 2's spread) shade as they are,
    depth as its negative, as the exports orient z (inverse depth and the spread were
    shaded upside down)."""
    yy, xx = np.mgrid[0:60, 0:60].astype(np.float32)
    hill = 10 - np.hypot(yy - 30, xx - 30) / 10  # high in the middle

    def shaded(values, kind, description=None):
        path = write_raster(tmp_path / f"{kind}-{description}.tif", values[None])
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(TILEDEPTH_OUTPUT_KIND=kind)
            if description:
                ds.set_band_description(1, description)
        with rasterio.open(write_preview(path, hillshade=True)) as png:
            return png.read()

    height = shaded(hill, "height")
    assert (shaded(hill, "inverse-depth") == height).all()
    assert (shaded(hill, "depth", "uncertainty") == height).all()
    with rasterio.open(write_preview(tmp_path / "height-None.tif")) as flat:
        assert (flat.read() != height).any()  # the shade is there at all


def test_preview_command(tmp_path):
    src = write_raster(tmp_path / "o.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    out = tmp_path / "q.png"
    result = CliRunner().invoke(main, ["preview", str(src), "-o", str(out), "--max-size", "15"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (15, 10)
    result = CliRunner().invoke(main, ["preview", str(tmp_path / "missing.tif")])
    assert result.exit_code == 2 and "no such file" in result.output
    with pytest.raises(InputError, match="no band 2"):
        write_preview(src, band=2)
    result = CliRunner().invoke(main, ["preview", str(src), "--max-size", "0"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "tiledepth: error: --max-size must be 1 or more, got 0"]  # was an "unexpected" exit 1


def test_a_run_one_pixel_tall_gets_its_shaded_preview(tmp_path):
    """A 1 x 40 raster with --preview --hillshade: the run and its preview are written (the
    hillshade's gradient failed on the one-pixel axis, and the whole run with it)."""
    src = write_raster(tmp_path / "row.tif", np.repeat(
        np.linspace(0, 255, 40, dtype=np.float32).astype(np.uint8)[None, None], 3, 0))
    result = tiledepth.run(src, tmp_path / "row.depth.tif", model="toy_models:red",
                           tile_size=32, preview=True, hillshade=True)
    with rasterio.open(result.preview) as png:
        assert (png.height, png.width) == (1, 40) and (png.read(4) == 255).all()


def test_preview_never_writes_over_its_source(tmp_path):
    src = write_raster(tmp_path / "d.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["preview", str(src), "-o", str(src)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"tiledepth: error: {src}: the output path is the input; "
                                     "choose another with -o")
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["d.tif"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_preview_of_a_gcp_map_carries_its_gcps(tmp_path):
    data = np.arange(300 * 400, dtype=np.float32).reshape(1, 300, 400)
    src = write_raster(tmp_path / "g.tif", data, crs=None, transform=None)
    corners = [(0, 0, 500000.0, 5400000.0), (0, 400, 500200.0, 5400000.0),
               (300, 0, 500000.0, 5399850.0), (300, 400, 500200.0, 5399850.0)]
    with rasterio.open(src, "r+") as ds:  # GCPs, no geotransform: 0.5 m pixels
        ds.gcps = ([GroundControlPoint(*c) for c in corners], rasterio.crs.CRS.from_string(CRS))
    png = write_preview(src, max_size=100)
    with rasterio.open(png) as ds:
        assert (ds.width, ds.height) == (100, 75)
        gcps, crs = ds.gcps
    assert crs == rasterio.crs.CRS.from_string(CRS)
    # the same places, at the preview's pixels (4 times larger)
    np.testing.assert_allclose([(g.row, g.col, g.x, g.y) for g in gcps],
                               [(r / 4, c / 4, x, y) for r, c, x, y in corners])
    assert from_gcps(gcps)[:6] == pytest.approx((2.0, 0, 500000.0, 0, -2.0, 5400000.0))


def test_preview_replaces_a_png_only(tmp_path):
    """-o naming a user's text file: refused, its bytes kept (they were replaced with PNG
    bytes); an earlier preview PNG is replaced."""
    src = write_raster(tmp_path / "d.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    with pytest.raises(OutputError, match="not a PNG"):
        write_preview(src, notes)
    assert notes.read_text() == "mine\n"
    png = write_preview(src, tmp_path / "q.png")
    assert write_preview(src, png, max_size=10) == png  # a PNG: replaced
    with rasterio.open(png) as ds:
        assert max(ds.width, ds.height) == 10


def test_a_preview_over_an_export_png_drops_its_world_file(tmp_path):
    """``tiledepth export`` of a 0.1 m map wrote d.png and d.wld; a preview at a quarter of
    the size over d.png read as 0.1 m pixels (GDAL reads the .wld ahead of the .aux.xml),
    covering a quarter of the map: the export's world file goes with the PNG it replaces."""
    from tiledepth.export import export

    src = write_raster(tmp_path / "d.tif", np.arange(1600, dtype=np.float32).reshape(1, 40, 40),
                       transform=from_origin(500000.0, 5400000.0, 0.1, 0.1))
    export(src, tmp_path / "d.png")
    assert (tmp_path / "d.wld").exists()
    png = write_preview(src, max_size=10)
    with rasterio.open(png) as ds, rasterio.open(src) as map_:
        assert ds.width == 10 and ds.transform.a == pytest.approx(0.4)
        assert ds.bounds == pytest.approx(map_.bounds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "d.png.aux.xml", "d.tif"]


@pytest.mark.parametrize("theirs", ["d.wld", "d.pgw", "d.pngw"])
def test_a_preview_refuses_a_world_file_tiledepth_did_not_write(tmp_path, theirs):
    """A user's world file beside the preview (no tiledepth PNG there): refused in one line,
    kept, nothing written."""
    src = write_raster(tmp_path / "d.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    (tmp_path / theirs).write_text("keep me\n")
    r = CliRunner().invoke(main, ["preview", str(src)])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"tiledepth: error: {tmp_path / theirs}: a world file tiledepth did not write, which "
        "GDAL would read to place d.png (ahead of its .aux.xml); move it away or choose "
        "another -o"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d.tif", theirs])
    assert (tmp_path / theirs).read_text() == "keep me\n"


def test_preview_o_a_folder_writes_the_default_name_inside(tmp_path, monkeypatch):
    """-o sub/ (refused, telling to add the / given) and -o . (a crash, exit 1) write
    <stem>.png inside; -o '' is refused in one line; -o sub without / says to add it."""
    src = write_raster(tmp_path / "d.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    (tmp_path / "sub").mkdir()
    run = CliRunner().invoke
    r = run(main, ["preview", str(src), "-o", f"{tmp_path / 'sub'}/"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "sub" / "d.png") as ds:
        assert (ds.width, ds.height) == (30, 20)
    monkeypatch.chdir(tmp_path / "sub")
    (tmp_path / "sub" / "d.png").unlink()
    r = run(main, ["preview", str(src), "-o", "."])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sub" / "d.png").exists()
    r = run(main, ["preview", str(src), "-o", ""])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "tiledepth: error: -o '': names no file; give a file name (or a folder ending in /)"]
    r = run(main, ["preview", str(src), "-o", str(tmp_path / "sub")])
    assert r.exit_code == 2 and "is a folder" in r.output and "end it with /" in r.output
    assert write_preview(src, "..").resolve() == (tmp_path / "d.png").resolve()  # sub's parent


def test_preview_o_refuses_a_name_that_is_not_a_png(tmp_path):
    """-o q.tif, q.jpg or q wrote PNG bytes under that name (exit 0), which every tool would
    misread by its name: refused in one line naming the .png, exit 2, nothing written; a
    .PNG in capitals is a PNG."""
    src = write_raster(tmp_path / "d.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    for name, named in [("q.tif", "a .tif file"), ("q.jpg", "a .jpg file"),
                        ("q", "a file without an extension")]:
        r = CliRunner().invoke(main, ["preview", str(src), "-o", str(tmp_path / name)])
        assert r.exit_code == 2 and r.output.strip().splitlines() == [
            f"tiledepth: error: {tmp_path / name}: a preview is a PNG, not {named}; name it "
            "q.png (a colour GeoTIFF: tiledepth export --colormap)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tif"]
    for name in ("Q.PNG", ".png"):  # (`.png`: a name Python gives no suffix)
        with rasterio.open(write_preview(src, tmp_path / name, max_size=10)) as png:
            assert (png.driver, png.width, png.height) == ("PNG", 10, 7)


def test_colorize_peak_memory_is_bounded_and_its_colours_are_unchanged():
    # Whole-array float64 temporaries (table[i], table[i + 1], their blend: about 120 bytes a
    # pixel) took 500 MB for a 2048 px preview, 8 GB at --max-size 8192; in strips of rows
    # the peak is the input's float64 copy and the output, whatever the size.
    import tracemalloc

    rows, cols = np.mgrid[0:1024, 0:1024]
    v = (np.sin(cols / 70.0) * np.cos(rows / 45.0) * 30).astype(np.float32)
    v[:100, :200] = np.nan
    shade = hillshade(v)
    tracemalloc.start()
    try:
        rgba = colorize(v, shade=shade)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # the whole-array temporaries: over 120 MB
    # the colours, as the whole-array computation gave them
    x64 = v.astype(np.float64)
    valid = np.isfinite(x64)
    lo, hi = np.percentile(x64[valid], (2.0, 98.0))
    x = np.clip((np.where(valid, x64, lo) - lo) / (hi - lo), 0.0, 1.0)
    pos = x * (len(_VIRIDIS) - 1)
    i = np.minimum(pos.astype(int), len(_VIRIDIS) - 2)
    f = (pos - i)[..., None]
    rgb = (_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f) * (0.35 + 0.65 * shade)[..., None]
    np.testing.assert_array_equal(rgba[:3], np.moveaxis(np.round(rgb), -1, 0).astype(np.uint8))
    np.testing.assert_array_equal(rgba[3], np.where(valid, 255, 0))


def _whole_array_hillshade(values, exaggeration=None):
    """:func:`hillshade` as it was computed on the whole array at once (the reference)."""
    from scipy import ndimage

    v = np.asarray(values, np.float64)
    valid = np.isfinite(v)
    if not valid.all():
        v = v[tuple(ndimage.distance_transform_edt(~valid, return_distances=False,
                                                   return_indices=True))]
    dy, dx = (np.gradient(v, axis=a) if v.shape[a] > 1 else np.zeros_like(v) for a in (0, 1))
    if exaggeration is None:
        p90 = float(np.percentile(np.hypot(dx, dy), 90))
        exaggeration = 1.0 / p90 if p90 > 0 else 1.0
    dx, dy = dx * exaggeration, dy * exaggeration
    az, alt = np.radians(360.0 - 315.0 + 90.0), np.radians(45.0)
    slope = np.arctan(np.hypot(dx, dy))
    aspect = np.arctan2(dy, -dx)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    return np.clip(shade, 0.0, 1.0).astype(np.float32)


def test_hillshade_peak_memory_is_bounded_and_its_shades_are_unchanged(monkeypatch):
    # Whole-array float64 temporaries (gradients, their magnitude and its percentile's copy,
    # slope, aspect, the shade: about 100 bytes a pixel) took 555 MB at the peak of a 2048 px
    # --preview --hillshade; in strips of rows the peak is the filled copy, the gradient
    # magnitudes for the percentile, the output and one strip's temporaries.
    import tracemalloc

    import tiledepth.preview as preview

    rows, cols = np.mgrid[0:1024, 0:1024]
    v = np.sin(cols / 70.0) * np.cos(rows / 45.0) * 30 + cols * 0.01
    v[:100, :200] = np.nan
    v[500:520, 300:900] = np.nan
    tracemalloc.start()
    try:
        shade = hillshade(v)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # the whole-array temporaries: 100 MiB
    np.testing.assert_array_equal(shade, _whole_array_hillshade(v))  # to the bit
    # many strips, of one row too, and every shape's edges: the same shades to the bit
    rng = np.random.default_rng(3)
    for shape, strip in [((37, 23), 23), ((37, 23), 5 * 23), ((2, 9), 9), ((1, 7), 7),
                         ((9, 1), 2), ((64, 50), 7 * 50)]:
        monkeypatch.setattr(preview, "HILLSHADE_PIXELS", strip)
        z = np.cumsum(rng.normal(size=shape), axis=0)
        if z.size > 20:
            z[3:6, 2:5] = np.nan
        for exaggeration in (None, 2.5):
            np.testing.assert_array_equal(hillshade(z, exaggeration=exaggeration),
                                          _whole_array_hillshade(z, exaggeration))


def test_a_failed_preview_write_is_one_write_error_line(tmp_path):
    """A disk that fills up while the PNG is written (writes past 64 kB fail, EFBIG):
    libpng's "Write Error" is GDAL's CPLE_AppDefinedError, no OSError, and came out as
    "unexpected CPLE_AppDefinedError"; now a write error as run's (exit 1), nothing left."""
    import resource
    import signal

    v = np.random.default_rng(3).random((1, 300, 400)).astype(np.float32)  # noise: 480 kB
    src = write_raster(tmp_path / "d.tif", v)
    out = tmp_path / "out"
    out.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (else it kills the process)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 2**10, hard))
    try:
        r = CliRunner().invoke(main, ["preview", str(src), "-o", str(out / "p.png")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(f"tiledepth: error: {out / 'p.png'}: ")
    assert r.output.rstrip().endswith("choose another place with -o"), r.output
    assert list(out.iterdir()) == []


def test_a_preview_name_too_long_for_its_temporary_files_is_refused_in_one_line(tmp_path):
    """-o a name whose temporary PNG's .aux.xml (``.<name>.<8 hex digits>.partial.aux.xml``,
    26 bytes more) is too long for the file system: "unexpected OSError" (exit 1), from the
    cleanup of that file. The longest name that fits is written; one byte more is refused in
    one line before anything is written (exit 2)."""
    src = write_raster(tmp_path / "d.tif", np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for size, code in ((limit - 26, 0), (limit - 25, 2), (limit + 1, 2)):
        out = tmp_path / ("b" * (size - 4) + ".png")
        r = CliRunner().invoke(main, ["preview", str(src), "-o", str(out)])
        assert r.exit_code == code, (size, r.output)
        if code:
            assert r.output.strip() == (
                f"tiledepth: error: {out}: name too long: the files written beside it under "
                f"temporary names add 26 bytes to its {size}, and its folder allows {limit}; "
                f"choose a shorter name with -o (at most {limit - 26} bytes)")
        else:
            assert out.is_file() and out.with_name(out.name + ".aux.xml").is_file()
            out.unlink()
            out.with_name(out.name + ".aux.xml").unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["d.tif"]


@pytest.mark.parametrize("earlier", ["preview", "export"])
@pytest.mark.parametrize("nth", [1, 2, 3])
def test_ctrl_c_among_a_previews_renames_leaves_all_old_or_all_new(tmp_path, monkeypatch,
                                                                   earlier, nth):
    """A preview of a 0.5 m map in UTM 11N over q.png of a 2 m map in UTM 32N (an earlier
    preview: q.png.aux.xml; or export: q.png.aux.xml and q.wld), Ctrl-C right after its 2nd
    or 3rd (last) rename (the 1st: its journal's): the .aux.xml went first, so the old PNG
    was placed by the new one, and the old .wld stayed, while the command said "no output
    was written". Now the PNG goes last: before it, every old file as it was; after it,
    every new one."""
    from tiledepth.export import export

    values = np.linspace(1, 2, 40 * 60, dtype=np.float32).reshape(1, 40, 60)
    new_map = write_raster(tmp_path / "new.tif", values)
    old_map = write_raster(tmp_path / "old.tif", values, crs="EPSG:32632",
                           transform=from_origin(600000.0, 5300000.0, 2.0, 2.0))
    folders = [tmp_path / name for name in ("a", "b", "d")]
    for folder in folders:
        folder.mkdir()
    for folder in (folders[0], folders[2]):  # the files before, and those replaced
        (export if earlier == "export" else write_preview)(old_map, folder / "q.png")
    write_preview(new_map, folders[1] / "q.png")  # the files after
    old, new = files_of(folders[0]), files_of(folders[1])
    assert sorted(new) == ["q.png", "q.png.aux.xml"]
    assert sorted(old) == ["q.png", "q.png.aux.xml", *(["q.wld"] if earlier == "export" else [])]
    d = folders[2]
    replace_then_interrupt(monkeypatch, nth)
    r = CliRunner().invoke(main, ["preview", str(new_map), "-o", str(d / "q.png")])
    monkeypatch.undo()
    assert r.exit_code == 130, r.output
    assert ("no output was written" in r.output) == (nth < 3), r.output
    assert files_of(d) == (new if nth == 3 else old)
    with rasterio.open(d / "q.png") as ds:
        assert ds.crs.to_epsg() == (32611 if nth == 3 else 32632)


def test_a_preview_removes_the_files_a_killed_preview_of_it_left(tmp_path, caplog):
    """A preview killed by SIGKILL left .q.png.<hex>.partial (and its .aux.xml) for ever:
    the next preview at q.png removes them, saying so; no other name. While a run of q.tif
    (whose preview q.png is) holds the lock, the preview is refused, its temporary file left
    alone (it wrote that PNG beside the run's files)."""
    src = write_raster(tmp_path / "d.tif", np.arange(600, dtype=np.float32).reshape(1, 20, 30))
    left = [".q.png.0123abcd.partial", ".q.png.0123abcd.partial.aux.xml"]
    kept = [".q.png.0123abcd.old", ".q.png.0123abc.partial", ".d.png.0123abcd.partial"]
    for n in left + kept:
        (tmp_path / n).write_bytes(b"left\n")
    with caplog.at_level(logging.INFO, logger="tiledepth"):
        write_preview(src, tmp_path / "q.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["d.tif", "q.png", "q.png.aux.xml", *kept])
    assert sum("killed" in r.getMessage() for r in caplog.records) == 2
    # while a run of q.tif holds its lock, its preview's temporary file is not the preview's
    from tiledepth.errors import BusyError
    from tiledepth.lock import lock_output, unlock_output

    (tmp_path / left[0]).write_bytes(b"a run's\n")
    fd = lock_output(tmp_path / "q.tif")
    try:
        with pytest.raises(BusyError, match="q.png: another tiledepth command"):
            write_preview(src, tmp_path / "q.png")
    finally:
        unlock_output(tmp_path / "q.tif", fd)
    assert (tmp_path / left[0]).read_bytes() == b"a run's\n"


def test_a_run_removes_a_killed_preview_whatever_it_writes(tmp_path):
    """A run --preview killed (SIGKILL) while it wrote the preview left .o.png.<hex>.partial
    and its .aux.xml; a rerun without --preview (which removed only the partial files of
    what it writes) removes them too."""
    src = write_raster(tmp_path / "in.tif", np.repeat(
        np.linspace(0, 255, 48 * 64).astype(np.uint8).reshape(1, 48, 64), 3, 0))
    left = [".o.png.0123abcd.partial", ".o.png.0123abcd.partial.aux.xml",
            ".o.json.89abcdef.partial"]
    for n in left:
        (tmp_path / n).write_bytes(b"left\n")
    tiledepth.run(src, tmp_path / "o.tif", model="toy_models:red", tile_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.json", "o.tif"]


def _photo(path):
    """A user's photo, an RGB PNG written by GDAL (no tiledepth mark): its bytes."""
    rgb = np.random.default_rng(5).integers(0, 256, (3, 24, 32), dtype=np.uint8)
    with rasterio.open(path, "w", driver="PNG", width=32, height=24, count=3,
                       dtype="uint8") as dst:
        dst.write(rgb)
    return path.read_bytes()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_preview_never_replaces_a_png_tiledepth_did_not_write(tmp_path):
    """``tiledepth run scene.png -o scene.tif``, then ``tiledepth preview scene.tif``: the
    preview's name is the input photo scene.png, which it replaced (any file starting as a
    PNG was taken for an old preview). Now it is refused in one line, the photo kept byte
    for byte and nothing written; --overwrite replaces it; the preview written is marked as
    tiledepth's (one text chunk more), so the next preview replaces it without --overwrite."""
    from tiledepth.safe_write import png_chunks

    scene = tmp_path / "scene.png"
    photo = _photo(scene)
    tiledepth.run(scene, tmp_path / "scene.tif", model="toy_models:red", tile_size=32)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(main, ["preview", str(tmp_path / "scene.tif")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        f"tiledepth: error: {scene}: exists and is a PNG that tiledepth did not write (or an "
        "older preview, not marked as tiledepth's); pass --overwrite to replace it, or choose "
        "another -o"]
    assert scene.read_bytes() == photo and sorted(p.name for p in tmp_path.iterdir()) == before
    from tiledepth.safe_write import tiledepth_wrote_png

    assert not tiledepth_wrote_png(scene)
    r = CliRunner().invoke(main, ["preview", str(tmp_path / "scene.tif"), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert tiledepth_wrote_png(scene)
    with open(scene, "rb") as f:
        chunks = [(kind, f.read(length) if kind == b"tEXt" else length)
                  for kind, length in png_chunks(f)]
    assert chunks[1] == (b"tEXt", b"Software\0tiledepth " + tiledepth.__version__.encode())
    assert sum(kind == b"tEXt" for kind, _ in chunks) == 1
    with rasterio.open(scene) as png:
        assert (png.count, png.width, png.height) == (4, 32, 24)
    # an earlier preview (marked), or an export's PNG: replaced without --overwrite
    assert write_preview(tmp_path / "scene.tif", scene, max_size=16) == scene
    with rasterio.open(scene) as png:
        assert png.width == 16
    # a preview of a tiledepth that did not mark them, or anything that is no PNG: refused
    other = tmp_path / "other.png"
    _photo(other)
    with pytest.raises(OutputError, match="other.png: exists and is a PNG that tiledepth "):
        write_preview(tmp_path / "scene.tif", other)
    other.write_text("not a PNG\n")
    with pytest.raises(OutputError, match="other.png: exists and is not a PNG; pass "
                                          "--overwrite to replace it, or choose another -o"):
        write_preview(tmp_path / "scene.tif", other)
    assert other.read_text() == "not a PNG\n"
    write_preview(tmp_path / "scene.tif", other, overwrite=True)
    assert tiledepth_wrote_png(other)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_run_preview_and_a_png_export_replace_a_png_of_yours_only_with_overwrite(tmp_path):
    """The rule of ``tiledepth preview`` holds for a run's --preview (at <output stem>.png)
    and a PNG export: a PNG tiledepth did not write is refused without --overwrite, kept
    byte for byte; with it, replaced by a PNG that a later preview recognises."""
    from tiledepth.export import export
    from tiledepth.safe_write import tiledepth_wrote_png

    src = write_raster(tmp_path / "in.tif", np.repeat(
        np.linspace(0, 255, 24 * 32).astype(np.uint8).reshape(1, 24, 32), 3, 0))
    photo = _photo(tmp_path / "o.png")
    with pytest.raises(OutputError, match="o.png: already exists .it would be this run's "
                                          "preview.; pass --overwrite"):
        tiledepth.run(src, tmp_path / "o.tif", model="toy_models:red", tile_size=32,
                      preview=True)
    assert (tmp_path / "o.png").read_bytes() == photo
    run = tiledepth.run(src, tmp_path / "o.tif", model="toy_models:red", tile_size=32,
                        preview=True, overwrite=True)
    assert run.preview == tmp_path / "o.png" and tiledepth_wrote_png(run.preview)
    photo = _photo(tmp_path / "e.png")
    with pytest.raises(OutputError, match="e.png: already exists; pass --overwrite"):
        export(run.output, tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes() == photo
    export(run.output, tmp_path / "e.png", overwrite=True)
    assert tiledepth_wrote_png(tmp_path / "e.png")
    write_preview(run.output, tmp_path / "e.png")  # an export's PNG: a preview replaces it


class _Reads:
    """A binary file that records the size of each read (``sizes``)."""

    def __init__(self, f, sizes):
        self.f, self.sizes = f, sizes

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.f.close()

    def read(self, n=-1):
        data = self.f.read(n)
        self.sizes.append(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_previews_mark_comes_first_and_is_found_without_walking_the_png(tmp_path,
                                                                           monkeypatch):
    """The mark (``Software`` = ``tiledepth <version>``) was added before IEND: finding it
    walked every chunk of a PNG (a user's large one too), and a preview cut short had lost
    it. It is now the chunk right after IHDR, every other byte as without it, and GDAL reads
    the PNG, its .aux.xml and the mark; only the chunks before the image data are looked at,
    and only the start of a text chunk is read (tiledepth_png read a text chunk whole)."""
    import struct
    import zlib

    import tiledepth.safe_write as safe_write
    from tiledepth.safe_write import tiledepth_png, tiledepth_wrote_png

    src = write_raster(tmp_path / "d.tif",
                       np.linspace(0, 9, 30 * 40, dtype=np.float32).reshape(1, 30, 40))
    with monkeypatch.context() as m:  # the same preview, unmarked
        m.setattr(safe_write, "mark_png", lambda path: None)
        plain = write_preview(src, tmp_path / "plain.png").read_bytes()
    marked = write_preview(src, tmp_path / "p.png")
    text = b"Software\0tiledepth " + tiledepth.__version__.encode()
    chunk = struct.pack(">I4s", len(text), b"tEXt") + text + \
        struct.pack(">I", zlib.crc32(b"tEXt" + text))
    assert plain[12:16] == b"IHDR" and marked.read_bytes() == plain[:33] + chunk + plain[33:]
    with rasterio.open(marked) as png, rasterio.open(tmp_path / "plain.png") as other:
        assert png.tags()["Software"] == f"tiledepth {tiledepth.__version__}"
        assert (png.crs, png.transform) == (rasterio.crs.CRS.from_user_input(CRS),
                                            other.transform)  # from the .aux.xml
        np.testing.assert_array_equal(png.read(), other.read())
    # a preview cut short (a full disk, a copy interrupted) is still tiledepth's
    (tmp_path / "cut.png").write_bytes(marked.read_bytes()[:len(plain) // 2])
    assert tiledepth_wrote_png(tmp_path / "cut.png")
    # a mark after the image data is not looked for (no preview was marked so)
    (tmp_path / "late.png").write_bytes(plain[:-12] + chunk + plain[-12:])
    assert not tiledepth_wrote_png(tmp_path / "late.png")

    # a user's PNG of many IDAT chunks, a large text chunk ahead of them: a few small reads
    rgb = np.random.default_rng(1).integers(0, 256, (3, 256, 256), dtype=np.uint8)
    with rasterio.open(tmp_path / "big.png", "w", driver="PNG", width=256, height=256, count=3,
                       dtype="uint8") as dst:
        dst.write(rgb)
    data = (tmp_path / "big.png").read_bytes()
    note = b"Comment\0" + b"x" * 100_000
    (tmp_path / "big.png").write_bytes(
        data[:33] + struct.pack(">I4s", len(note), b"tEXt") + note +
        struct.pack(">I", zlib.crc32(b"tEXt" + note)) + data[33:])
    assert data.count(b"IDAT") > 10
    sizes = []
    monkeypatch.setattr(safe_write, "open", lambda *a: _Reads(open(*a), sizes), raising=False)
    assert not tiledepth_wrote_png(tmp_path / "big.png")
    assert max(sizes) <= 64 and len(sizes) <= 5, sizes
    sizes.clear()
    assert not tiledepth_png(tmp_path / "big.png")  # (it walks on: an export's own check)
    assert max(sizes) <= 64, max(sizes)


def test_a_preview_of_a_url_says_local_files_only(tmp_path):
    """``tiledepth preview https://h/o.tif``: the source was a Path, its ``//`` folded, and
    the line said ``https:/h/o.tif: no such file; check the path``. Now one line says that a
    preview reads (and writes) local files only, and to download it first."""
    src = write_raster(tmp_path / "o.tif", np.ones((1, 8, 8), np.float32))
    cases = [
        (["https://example.com/o.tif"],
         "https://example.com/o.tif: tiledepth preview reads local files only, not a URL or "
         "GDAL /vsi path; download it first and preview the local copy"),
        (["/vsicurl/https://example.com/o.tif", "-o", str(tmp_path / "p.png")],
         "/vsicurl/https://example.com/o.tif: tiledepth preview reads local files only, not a "
         "URL or GDAL /vsi path; download it first and preview the local copy"),
        ([str(src), "-o", "s3://bucket/o.png"],
         "s3://bucket/o.png: tiledepth preview writes local files only, not a URL or GDAL /vsi "
         "path (-o); write it to a local file, then upload it"),
    ]
    for args, line in cases:
        r = CliRunner().invoke(main, ["preview", *args])
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines() == [f"tiledepth: error: {line}"]
    assert [p.name for p in tmp_path.iterdir()] == ["o.tif"]


@pytest.mark.parametrize("nodata", [None, -9999.0])
def test_a_decimated_preview_skips_nan_that_no_nodata_declares(tmp_path, nodata):
    """A float raster whose holes are NaN but whose nodata is not NaN (none, or -9999 fill
    beside them): GDAL's average of pixels one of which is NaN is NaN, so a decimated preview
    of scattered holes came out wholly transparent. Now it is that of the same raster with NaN
    declared its nodata, to the byte."""
    rng = np.random.default_rng(0)
    data = (rng.random((1, 400, 400)) + np.linspace(0, 4, 400)).astype(np.float32)
    data[0, :, ::7] = np.nan  # a hole in every block of pixels a preview pixel averages
    data[0, 300:] = np.nan  # and a part without data, transparent
    if nodata is not None:
        data[0, ::5, 3::7] = nodata
    src = write_raster(tmp_path / "holes.tif", data, nodata=nodata)
    declared = write_raster(tmp_path / "declared.tif", np.where(data == nodata, np.nan, data),
                            nodata=float("nan"))
    for shaded in (False, True):
        with rasterio.open(write_preview(src, tmp_path / "a.png", max_size=100,
                                         hillshade=shaded)) as ds:
            rgba = ds.read()
        with rasterio.open(write_preview(declared, tmp_path / "b.png", max_size=100,
                                         hillshade=shaded)) as ds:
            expected = ds.read()
        assert rgba.shape == (4, 100, 100)
        assert (rgba[3, :74] == 255).all() and (rgba[3, 76:] == 0).all()
        assert np.array_equal(rgba, expected)


def test_a_preview_reads_its_source_in_a_block_cache_of_two_block_rows(tmp_path, monkeypatch):
    """A raster without overviews is read whole at full resolution for its preview: through
    GDAL's default block cache, 5 % of the RAM (1.4 GB peak for a 20000 px square float32
    raster on a 23 GB machine). The read now has a cache of two block rows of the raster."""
    import tiledepth.rasterfile
    from tiledepth.read import GDAL_OPTIONS

    src = write_raster(tmp_path / "o.tif", np.ones((1, 600, 700), np.float32),
                       nodata=float("nan"))  # blocks of 256 x 256
    caches = []
    real_open = tiledepth.rasterfile.open_raster

    class Reader:
        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            return getattr(self._ds, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._ds.__exit__(*exc)

        def read(self, *args, **kwargs):
            caches.append(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
            return self._ds.read(*args, **kwargs)

    monkeypatch.setattr(tiledepth.rasterfile, "open_raster",
                        lambda path, mode="r", **kw: Reader(real_open(path, mode, **kw))
                        if mode == "r" else real_open(path, mode, **kw))
    write_preview(src, tmp_path / "o.png", max_size=100)
    two_rows = 2 * 700 * 256 * 4
    assert caches and all(c is not None and int(c) == max(two_rows, GDAL_OPTIONS["GDAL_CACHEMAX"])
                          for c in caches), caches


def test_a_preview_of_a_folder_or_with_max_size_below_1_is_one_line(tmp_path):
    """``tiledepth preview FOLDER`` said ``FOLDER: no such file``; ``write_preview(...,
    max_size=0)`` raised ZeroDivisionError (the CLI checks --max-size itself)."""
    from tiledepth.errors import OptionError

    res = CliRunner().invoke(main, ["preview", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        f"tiledepth: error: {tmp_path}: is a folder, not a raster; give the path of the raster "
        "to preview"]
    src = write_raster(tmp_path / "o.tif", np.ones((1, 8, 8), np.float32))
    for size in (0, -5):
        with pytest.raises(OptionError, match=f"max_size must be 1 or more, got {size}"):
            write_preview(src, max_size=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]
