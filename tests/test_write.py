import errno
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, depth_image, fail_placing, write_raster
from rasterio.rpc import RPC
from rasterio.windows import Window

import tiledepth
import tiledepth.safe_write
import tiledepth.write
from tiledepth.errors import OutputError
from tiledepth.safe_write import (
    PNG_SIGNATURE,
    check_output_path,
    check_output_paths,
    check_target,
    output_paths,
    place,
    preview_path,
    sidecar_path,
)
from tiledepth.scratch import DiskStore
from tiledepth.write import GeoTiffWriter, OutputGrid, output_windows

GRID = OutputGrid(height=700, width=600, crs=rasterio.crs.CRS.from_string(CRS),
                  transform=TRANSFORM)


def test_windows_cover_the_grid_once():
    hits = np.zeros((1300, 9000), int)
    for w in output_windows(1300, 9000):
        rows, cols = w.toslices()
        hits[rows, cols] += 1
        assert w.height <= 512
    assert (hits == 1).all()


def test_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "o.tif"
    with pytest.raises(RuntimeError):
        with GeoTiffWriter(out, GRID) as sink:
            sink.write(Window(0, 0, 600, 512), np.ones((512, 600), np.float32))
            assert not out.exists()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with GeoTiffWriter(out, GRID, tags={"A": 1}) as sink:
        for w in sink.windows():
            sink.write(w, np.full((w.height, w.width), 2.0, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["o.tif"]
    with rasterio.open(out) as ds:
        assert ds.read(1).min() == 2.0 and ds.tags()["A"] == "1"
        assert ds.crs == GRID.crs and ds.transform == TRANSFORM


def test_a_file_that_appears_meanwhile_is_not_clobbered(tmp_path):
    out = tmp_path / "o.tif"
    with pytest.raises(OutputError, match="appeared"):
        with GeoTiffWriter(out, GRID) as sink:
            sink.write(Window(0, 0, 10, 10), np.zeros((10, 10), np.float32))
            out.write_text("someone else's")
    assert out.read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["o.tif"]


def test_check_output_path(tmp_path):
    src = tmp_path / "in.tif"
    src.write_text("x")
    with pytest.raises(OutputError, match="is the input"):
        check_output_path(src, src, overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(src, tmp_path, overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(src, tmp_path / "a" / "b.tif", overwrite=False)


def test_scratch_store_round_trip_and_cleanup(tmp_path):
    rng = np.random.default_rng(0)
    with DiskStore(tmp_path, cache_bytes=3 * 50 * 40 * 5) as store:
        folder = store.path
        items = {i: (rng.random((50, 40)).astype(np.float32), rng.random((50, 40)) > 0.5)
                 for i in range(10)}
        for i, (p, v) in items.items():
            store.put(i, p, v)
        assert len(store._cache) <= 3  # the cache is bounded; the rest is on disk
        for i, (p, v) in items.items():
            gp, gv = store.get(i)
            np.testing.assert_array_equal(gp, p)
            np.testing.assert_array_equal(gv, v)
        assert store.disk_bytes() > 10 * 50 * 40 * 4
    assert not folder.exists()


def test_overwrite_never_replaces_a_device_fifo_or_folder(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    (tmp_path / "dir.tif").mkdir()
    for path, kind in [(Path("/dev/null"), "a character device"), (fifo, "a FIFO"),
                       (tmp_path / "dir.tif", "is a folder")]:
        with pytest.raises(OutputError, match=kind):
            check_target(path, overwrite=True)
    tmp = tmp_path / "t"
    tmp.write_text("new")
    with pytest.raises(OutputError, match="would replace a FIFO"):
        place(tmp, fifo, overwrite=True)  # checked again at the rename
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and tmp.read_text() == "new"


def test_every_derived_path_in_one_place(tmp_path):
    (tmp_path / "sub").mkdir()
    paths = output_paths(tmp_path / "a.png", f"{tmp_path / 'sub'}/", preview=True)
    assert [(what, p.relative_to(tmp_path).as_posix()) for what, p in paths.files()] == [
        ("output", "sub/a.depth.tif"), ("sidecar", "sub/a.depth.json"),
        ("preview", "sub/a.depth.png"), ("preview's .aux.xml", "sub/a.depth.png.aux.xml")]
    with pytest.raises(OutputError, match="would be the output"):
        check_output_paths(output_paths(tmp_path / "a.png", tmp_path / "o.PNG", preview=True),
                           [], overwrite=True)  # one file on a case-insensitive disk


def test_a_trailing_slash_writes_the_default_name_inside(tmp_path):
    src = write_raster(tmp_path / "in.tif", depth_image(100, 120))
    (tmp_path / "out").mkdir()
    result = tiledepth.run(src, f"{tmp_path / 'out'}/", model="toy_models:red", tile_size=64,
                           preview=True)
    assert result.output == tmp_path / "out" / "in.depth.tif"
    assert sorted(os.listdir(tmp_path / "out")) == [
        "in.depth.json", "in.depth.png", "in.depth.png.aux.xml", "in.depth.tif"]
    assert (result.sidecar, result.preview) == (tmp_path / "out" / "in.depth.json",
                                                tmp_path / "out" / "in.depth.png")




SMALL = OutputGrid(height=40, width=50, crs=rasterio.crs.CRS.from_string(CRS),
                   transform=TRANSFORM)
def _png(*chunks: tuple[bytes, bytes]) -> bytes:
    """A PNG file of ``chunks`` ((kind, data) each) and its IEND: no image, which is enough
    for :func:`tiledepth.safe_write.tiledepth_wrote_png` to read."""
    return PNG_SIGNATURE + b"".join(
        struct.pack(">I4s", len(data), kind) + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in (*chunks, (b"IEND", b"")))


#: An old preview, marked as tiledepth marks them (a user's PNG there is never removed).
OLD_PREVIEW = _png((b"tEXt", b"Software\0tiledepth 0.1.0"), (b"tEXt", b"Comment\0old"))
#: What an earlier run left: the output and its sidecar, preview and the preview's .aux.xml.
OLD = {"o.tif": b"the old map", "o.json": b'{"old": "report"}', "o.png": OLD_PREVIEW,
       "o.png.aux.xml": b"<PAMDataset>old</PAMDataset>"}


def _earlier_run(folder: Path) -> None:
    for name, data in OLD.items():
        (folder / name).write_bytes(data)


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _rerun(out: Path, *, preview: bool, overwrite: bool = True, keep: tuple = ()) -> None:
    """A run writing ``out`` (all 3.0), its sidecar and, with ``preview``, the preview and
    its .aux.xml, as tiledepth.engine registers them."""
    with GeoTiffWriter(out, SMALL, overwrite=overwrite, **({"keep": keep} if keep else {})) \
            as sink:
        for w in sink.windows():
            sink.write(w, np.full((w.height, w.width), 3.0, np.float32))
        sink.companion(sidecar_path(out), lambda _, tmp: tmp.write_bytes(b'{"new": 1}'))
        if preview:
            def render(_, tmp):
                tmp.write_bytes(b"the new preview")
                Path(f"{tmp}.aux.xml").write_bytes(b"<PAMDataset>new</PAMDataset>")

            png = preview_path(out)
            sink.companion(png, render, extra=png.with_name(png.name + ".aux.xml"))


EPERM = OSError(errno.EPERM, "Operation not permitted")


@pytest.mark.parametrize("preview, fails_at, error", [
    (True, "o.tif", EPERM), (False, "o.tif", EPERM), (True, "o.tif", KeyboardInterrupt()),
    (False, "o.tif", KeyboardInterrupt()), (True, "o.png", EPERM)],
    ids=["output's rename", "output's rename, no preview", "Ctrl-C at the output's rename",
         "Ctrl-C, no preview", "preview's rename"])
def test_a_failed_overwrite_leaves_every_old_file_as_it_was(tmp_path, monkeypatch, preview,
                                                             fails_at, error):
    _earlier_run(tmp_path)
    fail_placing(monkeypatch, fails_at, error)
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else OutputError,
                       match=None if isinstance(error, KeyboardInterrupt) else
                       "cannot move the output in place"):
        _rerun(tmp_path / "o.tif", preview=preview)
    # the old sidecar, preview and .aux.xml are back (they were replaced, or, without a
    # preview, removed as stale, before the rename failed); nothing else is left
    assert _contents(tmp_path) == OLD


def test_without_hard_links_the_old_files_are_moved_aside_and_back(tmp_path, monkeypatch):
    def no_link(*args, **kwargs):  # a file system without them (or another user's file)
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(tiledepth.safe_write.os, "link", no_link)
    _earlier_run(tmp_path)
    fail_placing(monkeypatch, "o.tif", EPERM)
    with pytest.raises(OutputError):
        _rerun(tmp_path / "o.tif", preview=True)
    assert _contents(tmp_path) == OLD
    monkeypatch.setattr(tiledepth.write, "place", place)
    _rerun(tmp_path / "o.tif", preview=True)
    assert sorted(_contents(tmp_path)) == sorted(OLD)
    assert (tmp_path / "o.png").read_bytes() == b"the new preview"


@pytest.mark.parametrize("preview", [True, False], ids=["with preview", "without"])
def test_an_overwrite_replaces_or_removes_the_old_companions(tmp_path, preview):
    _earlier_run(tmp_path)
    others = {"o.png.bak": b"mine", "o2.png": b"mine too", "o.jpg": b"and mine"}
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    _rerun(tmp_path / "o.tif", preview=preview)
    got = _contents(tmp_path)
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert (ds.read(1) == 3.0).all()
    new = {"o.json": b'{"new": 1}', **others}
    if preview:
        new.update({"o.png": b"the new preview", "o.png.aux.xml": b"<PAMDataset>new</PAMDataset>"})
    # without a preview the old one, of the old map, is gone with it; no file kept aside
    assert {k: v for k, v in got.items() if k != "o.tif"} == new


def test_without_overwrite_or_with_keep_a_leftover_preview_stays(tmp_path):
    (tmp_path / "o.png").write_bytes(b"someone's png")  # no output beside it
    _rerun(tmp_path / "o.tif", preview=False, overwrite=False)
    assert (tmp_path / "o.png").read_bytes() == b"someone's png"
    _rerun(tmp_path / "o.tif", preview=False, keep=(tmp_path / "o.png",))
    assert (tmp_path / "o.png").read_bytes() == b"someone's png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.png", "o.tif"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_input_named_as_the_preview_is_refused_with_overwrite(tmp_path):
    frame = write_raster(tmp_path / "frame.png", depth_image(40, 50), driver="PNG", crs=None,
                         transform=None)
    tiledepth.safe_write.mark_png(frame)  # a preview (a user's PNG stays: not refused)
    before = frame.read_bytes()
    with pytest.raises(OutputError, match="is the input .* would remove it as the old "
                                          "output's preview"):
        tiledepth.run(frame, tmp_path / "frame.tif", model="toy_models:red", overwrite=True)
    assert frame.read_bytes() == before
    check_output_paths(output_paths(frame, tmp_path / "frame.tif"), [frame], overwrite=False)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_input_at_the_previews_name_that_overwrite_keeps_is_not_refused(tmp_path):
    """A run removes an old output's preview, sidecar and world file only where tiledepth
    wrote them; its check that it removes no input refused every file at those names:
    ``run frame.png -o frame.tif --overwrite`` (a user's frame) was refused, though the run
    keeps it. One rule now (removed_on_replace) for the run and its checks."""
    frame = write_raster(tmp_path / "frame.png", depth_image(40, 50), driver="PNG", crs=None,
                         transform=None)
    user = frame.read_bytes()
    out = write_raster(tmp_path / "frame.tif", np.zeros((1, 40, 50), np.float32))  # old
    for _ in range(2):
        result = tiledepth.run(frame, out, model="toy_models:red", tile_size=32, overwrite=True)
        assert result.output == out
        assert frame.read_bytes() == user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.json", "frame.png",
                                                          "frame.tif"]

    from tiledepth.safe_write import removed_on_replace

    (tmp_path / "frame.pgw").write_text("1\n0\n0\n-1\n0.5\n-0.5\n")  # the frame's
    (tmp_path / "frame.json").write_text('{"mine": 1}')
    assert [p.name for p in removed_on_replace(out)] == [
        "frame.tif.aux.xml", "frame.tif.ovr", "frame.tif.msk"]  # a user's files: none
    # what the run writes is not counted; a new preview takes the old one's .aux.xml
    assert [p.name for p in removed_on_replace(out, [tmp_path / "frame.png"])][0] == \
        "frame.png.aux.xml"
    # tiledepth's own report and preview there are the old output's: removed with it
    (tmp_path / "frame.json").write_text('{\n "tiledepth": "0.1.0"\n}\n')
    tiledepth.safe_write.mark_png(frame)
    assert [p.name for p in removed_on_replace(out)] == [
        "frame.json", "frame.png", "frame.png.aux.xml", "frame.tif.aux.xml", "frame.tif.ovr",
        "frame.tif.msk"]


def test_an_overwrite_run_without_preview_removes_the_old_maps_preview(tmp_path):
    """tiledepth.run: the preview of a.tif's map is not left beside b.tif's."""
    a = write_raster(tmp_path / "a.tif", depth_image(100, 120))
    b = write_raster(tmp_path / "b.tif", depth_image(100, 120)[::-1].copy())
    out = tmp_path / "o.tif"
    tiledepth.run(a, out, model="toy_models:red", tile_size=64, preview=True)
    assert (tmp_path / "o.png").exists() and (tmp_path / "o.png.aux.xml").exists()
    tiledepth.run(b, out, model="toy_models:red", tile_size=64, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "o.json", "o.tif"]


def test_an_overwrite_run_keeps_a_png_and_json_of_yours_at_the_companions_names(tmp_path,
                                                                                  caplog):
    """``run -o o.tif --overwrite`` without --preview removed a user's o.png and its .aux.xml
    as the old output's preview, no o.tif there at all: only tiledepth's PNG goes (kept, with
    a warning, beside an old o.tif too); a writer that writes no sidecar (a mosaic's split)
    removes o.json only where it is a run's report."""
    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    out = tmp_path / "o.tif"
    mine = {"o.png": _png((b"tEXt", b"Comment\0my photo")),
            "o.png.aux.xml": b"<PAMDataset>mine</PAMDataset>"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    tiledepth.run(src, out, model="toy_models:red", tile_size=32, overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine
    with caplog.at_level("WARNING", logger="tiledepth.write"):
        tiledepth.run(src, out, model="toy_models:red", tile_size=32, overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine
    assert f"{tmp_path / 'o.png'}: left in place" in caplog.text

    (tmp_path / "o.json").write_bytes(b'{"mine": 1}')
    _rewrite(out)  # no sidecar written: a user's o.json stays
    assert (tmp_path / "o.json").read_bytes() == b'{"mine": 1}'
    tiledepth.run(src, out, model="toy_models:red", tile_size=32, overwrite=True, preview=True)
    _rewrite(out)  # the old run's report, preview and its .aux.xml go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.tif"]


def _rewrite(out: Path) -> None:
    """``out`` written again (all 3.0) with --overwrite, and nothing beside it."""
    with GeoTiffWriter(out, SMALL, overwrite=True) as sink:
        for w in sink.windows():
            sink.write(w, np.full((w.height, w.width), 3.0, np.float32))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("cog", [False, True], ids=["GeoTIFF", "COG"])
def test_an_rpc_input_gives_an_output_with_its_rpcs(tmp_path, cog):
    src = write_raster(tmp_path / "scene.tif", depth_image(100, 120), crs=None, transform=None)
    with rasterio.open(src, "r+") as ds:
        ds.rpcs = RPCS
    out = tiledepth.run(src, tmp_path / "d.tif", model="toy_models:red", tile_size=64,
                        cog=cog).output
    with rasterio.open(out) as ds:
        assert ds.rpcs is not None and ds.crs is None and ds.transform.is_identity
        assert _rpc_numbers(ds.rpcs) == _rpc_numbers(RPCS)
        assert np.isfinite(ds.read(1)).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.tif", "scene.tif"]


#: A scene's RPCs: lon = -115 + 0.01 (col - 60) / 60 ..., as a satellite's, made simple.
RPCS = RPC(height_off=100, height_scale=100, lat_off=45.0, lat_scale=0.01,
           line_den_coeff=[1] + [0] * 19, line_num_coeff=[0, 0, -1] + [0] * 17, line_off=50,
           line_scale=50, long_off=-115.0, long_scale=0.01, samp_den_coeff=[1] + [0] * 19,
           samp_num_coeff=[0, 1] + [0] * 18, samp_off=60, samp_scale=60)


def _rpc_numbers(rpcs) -> dict:
    """The RPCs' numbers (ERR_BIAS, ERR_RAND: GDAL writes -1 for unknown; not compared)."""
    return {k: v for k, v in rpcs.to_dict().items() if not k.startswith("err")}


@pytest.mark.parametrize("cog", [False, True], ids=["GeoTIFF", "COG"])
def test_an_input_with_a_transform_and_rpcs_gives_an_output_with_both(tmp_path, cog):
    # an ortho-ready satellite product: placed by its geotransform, orthorectified by its RPCs
    # (gdalwarp -rpc); the depth map on its grid needs both
    transform = rasterio.transform.from_origin(-115.01, 45.01, 0.0001, 0.0001)
    src = write_raster(tmp_path / "scene.tif", depth_image(100, 120), crs="EPSG:4326",
                       transform=transform)
    with rasterio.open(src, "r+") as ds:
        ds.rpcs = RPCS
    out = tiledepth.run(src, tmp_path / "d.tif", model="toy_models:red", tile_size=64,
                        cog=cog).output
    with rasterio.open(out) as ds:
        assert ds.crs == "EPSG:4326" and ds.transform == transform
        assert ds.rpcs is not None and _rpc_numbers(ds.rpcs) == _rpc_numbers(RPCS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.tif", "scene.tif"]


def test_an_area_of_interests_output_has_the_rpcs_of_its_window(tmp_path):
    transform = rasterio.transform.from_origin(-115.01, 45.01, 0.0001, 0.0001)
    src = write_raster(tmp_path / "scene.tif", depth_image(100, 120), crs="EPSG:4326",
                       transform=transform)
    with rasterio.open(src, "r+") as ds:
        ds.rpcs = RPCS
    # columns 20 to 79, rows 30 to 69 of the input
    xmin, ymax = transform @ (20, 30)
    xmax, ymin = transform @ (80, 70)
    out = tiledepth.run(src, tmp_path / "d.tif", model="toy_models:red", tile_size=64,
                        bounds=(xmin, ymin, xmax, ymax)).output
    with rasterio.open(out) as ds:
        assert (ds.height, ds.width) == (40, 60) and ds.transform == transform @ \
            rasterio.Affine.translation(20, 30)
        rpcs = ds.rpcs
    # each pixel of the output is where the input's RPCs put the input's pixel under it
    rows, cols = np.array([0, 0, 39, 17]), np.array([0, 59, 0, 41])
    with rasterio.transform.RPCTransformer(rpcs) as window, \
            rasterio.transform.RPCTransformer(RPCS) as scene:
        got = np.array(window.xy(rows, cols, zs=100.0))
        want = np.array(scene.xy(rows + 30, cols + 20, zs=100.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert (rpcs.line_off, rpcs.samp_off) == (20, 40)


@pytest.mark.parametrize("cog", [False, True], ids=["GeoTIFF", "COG"])
def test_a_pixel_is_point_input_gives_a_pixel_is_point_output(tmp_path, cog):
    from tiledepth.survey import check_output

    transform = rasterio.transform.from_origin(500000.1, 5400000.3, 0.3, 0.7)
    src = tmp_path / "dem.tif"
    with rasterio.open(src, "w", driver="GTiff", height=50, width=70, count=3, dtype="uint8",
                       crs=CRS, transform=transform) as ds:
        ds.update_tags(AREA_OR_POINT="Point")  # (GDAL writes the tiepoint at the centre by it)
        ds.write(depth_image(50, 70))
    out = tiledepth.run(src, tmp_path / "d.tif", model="toy_models:red", tile_size=64,
                        cog=cog).output
    # where GDAL reads the tiepoint as the pixel's centre (its default) and where it reads it
    # as the corner (GTIFF_POINT_GEO_IGNORE=TRUE, as some readers do), input and output agree
    for ignore, origin in ((False, (500000.1, 5400000.3)), (True, (500000.25, 5399999.95))):
        with rasterio.Env(GTIFF_POINT_GEO_IGNORE=ignore):
            with rasterio.open(src) as a, rasterio.open(out) as b:
                assert b.tags()["AREA_OR_POINT"] == "Point"
                assert b.transform == a.transform
                np.testing.assert_allclose((b.transform.c, b.transform.f), origin, atol=1e-6)
    assert check_output(out, src) is None  # a resume keeps it
    if not cog:  # an output written before the tag was kept (Area): a resume redoes it
        with rasterio.open(out, "r+") as ds:
            ds.update_tags(AREA_OR_POINT="Area")
        assert check_output(out, src) == \
            "its pixels are areas (AREA_OR_POINT), the input's are not"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_pixel_is_point_input_with_gcps_keeps_them_where_gdal_reads_them(tmp_path):
    # GDAL 3.10 moves a PixelIsPoint file's GCPs half a pixel when it reads them and again
    # when it writes them: the output is written as Area, its GCPs where GDAL reads the input's
    from rasterio.control import GroundControlPoint

    src = tmp_path / "frame.tif"
    gcps = [GroundControlPoint(0, 0, 15.0, 40.0), GroundControlPoint(0, 70, 15.01, 40.0),
            GroundControlPoint(50, 0, 15.0, 39.99)]
    with rasterio.open(src, "w", driver="GTiff", height=50, width=70, count=3,
                       dtype="uint8") as ds:
        ds.update_tags(AREA_OR_POINT="Point")
        ds.write(depth_image(50, 70))
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(4326))
    out = tiledepth.run(src, tmp_path / "d.tif", model="toy_models:red", tile_size=64).output
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert [(g.row, g.col, g.x, g.y) for g in b.gcps[0]] == \
            [(g.row, g.col, g.x, g.y) for g in a.gcps[0]]
        assert b.tags()["AREA_OR_POINT"] == "Area"


def test_an_overwrite_run_removes_an_exports_world_file_beside_its_preview(tmp_path):
    """``tiledepth export`` wrote o.png and o.wld (2 m pixels, another map's); a run with
    --preview --overwrite replaced o.png, and GDAL placed the new preview by the old o.wld:
    it goes, with or without --preview; the preview reads as the output's grid."""
    from tiledepth.export import export

    other = write_raster(tmp_path / "other.tif", np.ones((1, 10, 10), np.float32),
                         transform=rasterio.transform.from_origin(600000.0, 5000000.0, 2, 2))
    src = write_raster(tmp_path / "in.tif", depth_image(100, 120))
    out = tmp_path / "o.tif"
    tiledepth.run(src, out, model="toy_models:red", tile_size=64)
    for preview in (True, False):
        export(other, tmp_path / "o.png", overwrite=True)
        assert (tmp_path / "o.wld").exists()
        tiledepth.run(src, out, model="toy_models:red", tile_size=64, preview=preview,
                      overwrite=True)
        assert not (tmp_path / "o.wld").exists()
    tiledepth.run(src, out, model="toy_models:red", tile_size=64, preview=True, overwrite=True)
    with rasterio.open(tmp_path / "o.png") as png:
        assert png.transform == TRANSFORM and png.crs == rasterio.crs.CRS.from_string(CRS)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_never_removes_a_world_file_tiledepth_did_not_write(tmp_path, overwrite):
    """A user's o.pgw where the preview's world file would be: with --preview refused in
    one line before the run (it would place the preview); with --overwrite and no preview
    the run goes ahead and leaves it alone (it was refused, and before that removed). Kept
    either way."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    (tmp_path / "o.pgw").write_text("keep me\n")
    args = ["run", str(src), "-o", str(tmp_path / "o.tif"), "--model", "toy_models:red",
            "--tile-size", "32", *(["--overwrite"] if overwrite else ["--preview"])]
    r = CliRunner().invoke(main, args)
    if overwrite:
        assert r.exit_code == 0, r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.json", "o.pgw",
                                                             "o.tif"]
    else:
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert f"{tmp_path / 'o.pgw'}: a world file tiledepth did not write" in r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.pgw"]
    assert (tmp_path / "o.pgw").read_text() == "keep me\n"


def test_o_dot_names_the_current_folder_and_an_empty_o_is_refused(tmp_path, monkeypatch):
    """-o . crashed (PosixPath('.') has an empty name, exit 1): the default name in the
    current folder, as -o ./; -o '' is refused in one line, exit 2."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    assert output_paths(src, ".") == output_paths(src, "./")
    assert output_paths(src, ".").output == Path("in.depth.tif")
    result = tiledepth.run(src, ".", model="toy_models:red", tile_size=32)
    assert Path(result.output).resolve() == tmp_path / "out" / "in.depth.tif"
    assert sorted(os.listdir(tmp_path / "out")) == ["in.depth.json", "in.depth.tif"]
    with pytest.raises(OutputError, match="-o '': names no file"):
        output_paths(src, "")
    r = CliRunner().invoke(main, ["run", str(src), "-o", "", "--model", "toy_models:red"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "tiledepth: error: -o '': names no file; give a file name (or a folder ending in /)"]


def _stale_gdal_sidecars(out: Path) -> None:
    """What GDAL tools left beside an old ``out``: statistics (``gdalinfo -stats``), external
    overviews (``gdaladdo -ro``) and an external mask keeping its first 10 columns only."""
    height, width = SMALL.height, SMALL.width
    out.with_name(out.name + ".aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MINIMUM">-5</MDI>'
        '<MDI key="STATISTICS_MAXIMUM">-4</MDI></Metadata></PAMRasterBand></PAMDataset>')
    with rasterio.open(out.with_name(out.name + ".ovr"), "w", driver="GTiff",
                       height=height // 2, width=width // 2, count=1, dtype="float32") as ds:
        ds.write(np.full((1, height // 2, width // 2), 7.0, np.float32))
    mask = np.zeros((1, height, width), np.uint8)
    mask[..., :10] = 255
    with rasterio.open(out.with_name(out.name + ".msk"), "w", driver="GTiff", height=height,
                       width=width, count=1, dtype="uint8") as ds:
        ds.write(mask)
        ds.update_tags(INTERNAL_MASK_FLAGS_1="2")  # per dataset, as GDAL writes it


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_overwrite_removes_the_old_outputs_gdal_sidecars(tmp_path):
    """The old output's .aux.xml (statistics), .ovr and .msk survived --overwrite and GDAL
    applied them to the new output: stale statistics, overviews of the old map (7.0, the new
    one is 3.0), a mask hiding 80 % of it. They go with the old output."""
    out = tmp_path / "o.tif"
    _rerun(out, preview=False)
    _stale_gdal_sidecars(out)
    with rasterio.open(out) as ds:  # as GDAL reads the old output with them
        assert ds.tags(1)["STATISTICS_MINIMUM"] == "-5" and ds.dataset_mask().mean() == 0.2 * 255
    _rerun(out, preview=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.tif"]
    with rasterio.open(out) as ds:
        assert "STATISTICS_MINIMUM" not in ds.tags(1) and ds.overviews(1) == []
        assert (ds.dataset_mask() == 255).all()
        assert (ds.read(1, out_shape=(SMALL.height // 2, SMALL.width // 2)) == 3.0).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_failed_overwrite_puts_the_old_gdal_sidecars_back(tmp_path, monkeypatch):
    _earlier_run(tmp_path)
    _stale_gdal_sidecars(tmp_path / "o.tif")
    before = _contents(tmp_path)
    fail_placing(monkeypatch, "o.tif", EPERM)
    with pytest.raises(OutputError, match="cannot move the output in place"):
        _rerun(tmp_path / "o.tif", preview=False)
    assert _contents(tmp_path) == before


@pytest.mark.parametrize("name", ["o.tif.aux.xml", "o.tif.ovr", "o.tif.msk"])
def test_an_old_outputs_gdal_sidecar_without_it_needs_overwrite(tmp_path, name):
    """Left without its output (moved away), it would be applied to the new one: refused
    without --overwrite, in one line, kept; removed by an --overwrite run."""
    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    (tmp_path / name).write_bytes(b"stale")
    with pytest.raises(OutputError, match=f"{name}: already exists, and GDAL would apply it"):
        check_output_paths(output_paths(src, tmp_path / "o.tif"), [src], overwrite=False)
    assert (tmp_path / name).read_bytes() == b"stale"
    tiledepth.run(src, tmp_path / "o.tif", model="toy_models:red", tile_size=32, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.json", "o.tif"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_overwrite_without_preview_leaves_an_inputs_world_file_alone(tmp_path):
    """frame.jpg placed by frame.wld, -o frame.tif: the --overwrite rerun (no preview, so no
    frame.png for frame.wld to place) was refused, naming the input's own world file. It runs,
    the world file kept; a --preview run, whose frame.png it would place, is still refused."""
    from rasterio.shutil import copy

    plain = write_raster(tmp_path / "plain.tif", depth_image(40, 50), crs=None, transform=None)
    frame = tmp_path / "frame.jpg"
    copy(plain, frame, driver="JPEG")
    for leftover in (plain, tmp_path / "frame.jpg.aux.xml"):
        leftover.unlink(missing_ok=True)
    world = tmp_path / "frame.wld"
    world.write_text("0.5\n0\n0\n-0.5\n500000.25\n5499999.75\n")
    out = tmp_path / "frame.tif"
    tiledepth.run(frame, out, model="toy_models:red", tile_size=32)
    tiledepth.run(frame, out, model="toy_models:red", tile_size=32, overwrite=True)
    with rasterio.open(out) as ds:
        assert ds.transform == rasterio.transform.from_origin(500000.0, 5500000.0, 0.5, 0.5)
    assert world.read_text() == "0.5\n0\n0\n-0.5\n500000.25\n5499999.75\n"
    with pytest.raises(OutputError, match="frame.wld: a world file tiledepth did not write"):
        tiledepth.run(frame, out, model="toy_models:red", tile_size=32, overwrite=True,
                      preview=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frame.jpg", "frame.json", "frame.tif", "frame.wld"]


@pytest.mark.parametrize("name", ["o.png", "o.JPG", "o.vrt", "o"])
def test_a_run_output_not_named_tif_is_refused(tmp_path, name):
    """-o o.png wrote a GeoTIFF under a .png name (GDAL, QGIS and viewers go by the name):
    refused in one line, exit 2, nothing written; .tif and .tiff in any case are taken."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    r = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / name), "--model",
                                  "toy_models:red", "--tile-size", "32"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"tiledepth: error: {tmp_path / name}: a run writes a GeoTIFF, not "
        f"{f'a {Path(name).suffix} file' if Path(name).suffix else 'a file without an extension'}"
        "; name it o.tif (a PNG: tiledepth preview or tiledepth export)"], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    for ok in ("o.tif", "o.TIF", "o.tiff", "o.Tiff"):
        check_output_paths(output_paths(src, tmp_path / ok), [src], overwrite=False)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_overwrite_keeps_a_users_png_placed_by_a_world_file_at_the_previews_name(tmp_path,
                                                                                  caplog):
    """A user's survey.png with its own survey.pgw, beside -o survey.tif: an --overwrite run
    without --preview removed the PNG as the old output's preview (the world file, left
    behind, then placed nothing); then it was refused in one line, though a run removes a PNG
    at the preview's name only where tiledepth wrote it. Now the run goes on: survey.tif
    rewritten, the PNG and its world file kept byte for byte, one warning line naming the PNG
    (no preview of the new map there). A --preview run, whose PNG the world file would place,
    is still refused (docs/output.md), both kept."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    png = write_raster(tmp_path / "survey.png", depth_image(20, 30), driver="PNG", crs=None,
                       transform=None, tiled=False, blockxsize=None, blockysize=None)
    world = tmp_path / "survey.pgw"
    world.write_text("0.5\n0\n0\n-0.5\n500000\n5400000\n")
    before = {p: p.read_bytes() for p in (png, world)}
    out = tmp_path / "survey.tif"
    args = ["run", str(src), "-o", str(out), "--tile-size", "32"]
    r = CliRunner().invoke(main, [*args, "--model", "toy_models:red"])
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as ds:
        old = ds.read(1)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tiledepth"):
        r = CliRunner().invoke(main, [*args, "--model", "toy_models:affine_red", "--overwrite"])
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as ds:  # the new map, in place
        new = ds.read(1)
    assert new.shape == old.shape == (40, 50) and not np.allclose(new, old)
    assert {p: p.read_bytes() for p in (png, world)} == before
    warned = [rec.getMessage() for rec in caplog.records
              if rec.levelname == "WARNING" and rec.name.startswith("tiledepth")]
    assert len(warned) == 1 and warned[0].startswith(f"{png}: left in place"), warned
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.tif", "survey.json", "survey.pgw", "survey.png", "survey.tif"]
    r = CliRunner().invoke(main, [*args, "--model", "toy_models:red", "--overwrite",
                                  "--preview"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"{world}: a world file tiledepth did not write" in r.output
    assert {p: p.read_bytes() for p in (png, world)} == before


def test_removed_on_replace_reads_the_old_preview_once(tmp_path, monkeypatch):
    """removed_on_replace opened and walked the PNG at the preview's name twice (whether an
    export wrote it, for its world files; whether tiledepth wrote it, for the PNG): one walk
    now gives both, the answers as before for a user's PNG, a marked preview, an export's PNG
    and no PNG."""
    from tiledepth.export import export
    from tiledepth.safe_write import removed_on_replace

    out, png = tmp_path / "o.tif", tmp_path / "o.png"
    walks = []
    real = tiledepth.safe_write.png_chunks

    def counted(f):
        walks.append(f.name)
        return real(f)

    monkeypatch.setattr(tiledepth.safe_write, "png_chunks", counted)
    gdal = ["o.tif.aux.xml", "o.tif.ovr", "o.tif.msk"]
    worlds = ["o.pgw", "o.PGW", "o.pngw", "o.PNGW", "o.wld", "o.WLD"]
    assert [p.name for p in removed_on_replace(out)] == gdal and walks == []  # no PNG
    png.write_bytes(_png((b"tEXt", b"Comment\0my photo")))  # a user's
    assert [p.name for p in removed_on_replace(out)] == gdal
    assert walks == [str(png)]
    walks.clear()
    assert [p.name for p in removed_on_replace(out, [png])] == ["o.png.aux.xml", *gdal]
    assert walks == [str(png)]
    walks.clear()
    png.write_bytes(OLD_PREVIEW)  # a preview, marked
    assert [p.name for p in removed_on_replace(out)] == ["o.png", "o.png.aux.xml", *gdal]
    assert walks == [str(png)]
    walks.clear()
    png.unlink()
    m = write_raster(tmp_path / "m.tif", depth_image(20, 30))
    export(m, png)  # an export's PNG, its .wld
    walks.clear()
    assert [p.name for p in removed_on_replace(out)] == ["o.png", "o.png.aux.xml", *worlds,
                                                         *gdal]
    assert walks == [str(png)]


# A run killed (SIGKILL, power cut) while it renames its files into place: the next run of
# the output finishes or undoes that placement, never new companions beside the old map.

@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """Two inputs, ``a`` and ``b``, and the files a run of each writes as ``o.tif``: those
    of ``a`` with a preview (the old files), of ``b`` with and without one (the new)."""
    folder = tmp_path_factory.mktemp("maps")
    a = write_raster(folder / "a.tif", depth_image(100, 120))
    b = write_raster(folder / "b.tif", depth_image(100, 120)[::-1].copy())
    files = {}
    for src, preview in ((a, True), (b, True), (b, False)):
        out = folder / f"{src.stem}-{preview}" / "o.tif"
        out.parent.mkdir()
        tiledepth.run(src, out, model="toy_models:red", tile_size=64, preview=preview)
        files[src.stem, preview] = _contents(out.parent)
    return a, b, files


def _files(folder: Path) -> dict:
    """The files in ``folder`` (not the checkpoint folder, nor the lock file of a run killed
    while it held it): ``.old``, ``.partial`` and journal files included."""
    from tiledepth.lock import lock_path

    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != lock_path(folder / "o.tif").name}


def _killed_run(src: Path, out: Path, at: tuple[str, str], **options) -> int:
    """``tiledepth.run(src, out, **options)`` in a child process sent SIGKILL (no handler, no
    rollback: what it held in memory is lost) just before it calls ``at``: ``("place" or
    "set_aside", name)``, :mod:`tiledepth.write`'s move or keeping aside of that file, or
    ``("unlink" or "replace", pattern)``, the removal of a file, or a rename to a name, that
    matches it. Returns the child's exit code (``-SIGKILL``: killed there)."""
    return _killed(lambda: tiledepth.run(src, out, model="toy_models:red", tile_size=64,
                                         **options), at)


def _killed(call, at: tuple[str, str]) -> int:
    """``call()`` in a child process killed at ``at`` (:func:`_killed_run`)."""
    import fnmatch
    import signal
    import time
    import traceback

    pid = os.fork()
    if pid == 0:  # the child: it never returns into pytest
        code = 0
        try:
            what, name = at
            place, set_aside = tiledepth.write.place, tiledepth.write.set_aside
            unlink, replace = os.unlink, os.replace

            def kill_at(call: str, path) -> None:
                hit = fnmatch.fnmatchcase(os.path.basename(path), name) if call in (
                    "unlink", "replace") else Path(path).name == name
                if call == what and hit:
                    os.kill(os.getpid(), signal.SIGKILL)

            tiledepth.write.place = lambda tmp, path, **kw: (kill_at("place", path),
                                                             place(tmp, path, **kw))[1]
            tiledepth.write.set_aside = lambda path, **kw: (kill_at("set_aside", path),
                                                            set_aside(path, **kw))[1]
            os.unlink = lambda path, *a, **kw: (kill_at("unlink", path), unlink(path, *a, **kw))
            os.replace = lambda src, dst, *a, **kw: (kill_at("replace", dst),
                                                     replace(src, dst, *a, **kw))
            call()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # never hang the suite
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the run to kill at {at} did not end")
        time.sleep(0.02)
    return os.waitstatus_to_exitcode(done[1])


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked run")


@needs_fork
@pytest.mark.parametrize("preview, at, then", [
    (True, ("set_aside", "o.json"), "old"), (True, ("replace", ".o.placing.json"), "old"),
    (True, ("place", "o.json"), "old"), (True, ("place", "o.png"), "old"),
    (True, ("place", "o.tif"), "old"), (True, ("unlink", ".o.json.*.old"), "new"),
    (True, ("unlink", ".o.placing.json"), "new"),
    (False, ("set_aside", "o.png.aux.xml"), "old"), (False, ("place", "o.tif"), "old"),
    (False, ("unlink", ".o.png.*.old"), "new")],
    ids=["before any rename", "as its journal is written", "sidecar kept aside",
         "sidecar placed", "companions placed", "output placed", "as its journal is removed",
         "no preview: old preview set aside", "no preview: before the output",
         "no preview: output placed"])
def test_an_overwrite_killed_while_placing_is_undone_or_finished(tmp_path, maps, preview, at,
                                                                 then):
    """--overwrite killed among its renames left the new sidecar (and preview) beside the old
    map, and each old file kept as a hidden .old for ever: now the next run puts back every
    old file, byte for byte, or, once the output was placed, completes the new set."""
    a, b, files = maps
    old, new = files["a", True], files["b", preview]
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.tif"
    assert _killed_run(b, out, at, overwrite=True, preview=preview) == -9
    for _, path in output_paths(b, out, preview=preview).files():  # as a rerun does, under
        tiledepth.safe_write.remove_partials(path)  # the output's lock, the output first
    assert _files(tmp_path) == (old if then == "old" else new)
    tiledepth.run(b, out, model="toy_models:red", tile_size=64, preview=preview,
                  overwrite=True)  # (resumed from the killed run's checkpoint)
    assert _files(tmp_path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(new)


@needs_fork
@pytest.mark.parametrize("at, then", [
    (("place", "o.png"), "none"), (("place", "o.tif"), "none"),
    (("unlink", ".o.tif.*.partial"), "new"), (("unlink", ".o.placing.json"), "new")],
    ids=["sidecar placed", "companions placed", "output linked, its temporary name not yet "
         "removed", "as its journal is removed"])
def test_a_run_killed_while_placing_leaves_no_companion_that_refuses_a_rerun(tmp_path, maps,
                                                                            at, then):
    """A run (no --overwrite) killed after it placed its sidecar, before its output: the
    rerun was refused ("o.json: already exists ..."), as if an output were there. Now the
    rerun removes the new companions and writes the output, or, where the output was
    placed, finds it complete (and refuses it without --overwrite)."""
    a, b, files = maps
    out = tmp_path / "o.tif"
    assert _killed_run(b, out, at, preview=True) == -9
    if then == "none":
        tiledepth.run(b, out, model="toy_models:red", tile_size=64, preview=True)
    else:
        with pytest.raises(OutputError, match="o.tif: already exists; pass --overwrite"):
            tiledepth.run(b, out, model="toy_models:red", tile_size=64, preview=True)
    assert _files(tmp_path) == files["b", True]


def test_a_placement_journal_never_names_a_file_elsewhere(tmp_path, caplog):
    """A journal naming a path outside its folder is not acted on: kept, and said."""
    out = tmp_path / "sub" / "o.tif"
    out.parent.mkdir()
    (tmp_path / "mine.txt").write_text("mine")
    journal = tiledepth.safe_write.placement_journal(out)
    journal.write_text('{"output": "o.tif", "tmp": ".o.tif.0badc0de.partial", "files": '
                       '[{"path": "../mine.txt", "new": null, "aside": null, "old": false}]}')
    assert tiledepth.safe_write.recover_placement(out) is None
    assert (tmp_path / "mine.txt").read_text() == "mine" and journal.exists()
    assert "cannot read" in caplog.text


@needs_fork
def test_a_batch_killed_while_placing_is_undone_by_a_resume(tmp_path, maps):
    """batch --overwrite killed after it placed the new sidecar, before the output: --resume
    kept the old output (valid) beside the new sidecar, its .old files left for ever."""
    a, b, files = maps
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "a.tif").write_bytes(a.read_bytes())
    opts = dict(model="toy_models:red", tile_size=64, preview=True)
    tiledepth.batch([folder], out, **opts)
    old = {k: v for k, v in _contents(out).items() if k.startswith("a.depth")}
    assert sorted(old) == ["a.depth.json", "a.depth.png", "a.depth.png.aux.xml", "a.depth.tif"]
    assert _killed(lambda: tiledepth.batch([folder], out, overwrite=True,
                                           **dict(opts, model="toy_models:affine_red")),
                   ("place", "a.depth.tif")) == -9
    (record,) = tiledepth.batch([folder], out, resume=True, **opts)
    assert record.status == "skipped"
    assert {k: v for k, v in _files(out).items() if k.startswith(("a.", ".a."))} == old


@pytest.mark.parametrize("theirs", ["o.PGW", "o.WLD", "o.PNGW"])
def test_a_world_file_in_upper_case_is_one_gdal_reads_too(tmp_path, theirs):
    """GDAL reads a world file's name in lower case, then in upper case: a user's o.PGW
    would place the preview o.png as much as o.pgw would (Origin from the world file, not
    the map's): refused the same way, and kept."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 50))
    (tmp_path / theirs).write_text("keep me\n")
    r = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.tif"), "--model",
                                  "toy_models:red", "--tile-size", "32", "--preview"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"{tmp_path / theirs}: a world file tiledepth did not write" in r.output
    assert (tmp_path / theirs).read_text() == "keep me\n"


# What the placement's journal may touch: the files of its own run only (by identity), under
# the output's lock, whatever the names say; and a Ctrl-C that lands as a rename or link
# returns.

_RUN = dict(model="toy_models:red", tile_size=64)


@needs_fork
def test_a_killed_runs_journal_is_seen_by_a_run_of_the_same_stem(tmp_path, maps, caplog):
    """o.tif killed after it placed o.json and o.png; then o.tiff written (the same stem, so
    the same o.json and o.png, and lock): its journal, named after o.tif, was not seen, and
    the next run of o.tif took o.tiff's new companions for its killed run's (their temporary
    files gone) and removed them, then wrote its own without --overwrite."""
    a, b, _ = maps
    out = tmp_path / "o.tif"
    assert _killed_run(b, out, ("place", "o.tif"), preview=True) == -9
    tiledepth.run(a, tmp_path / "o.tiff", overwrite=True, preview=True, **_RUN)
    theirs = {n: (tmp_path / n).read_bytes() for n in ("o.tiff", "o.json", "o.png")}
    with pytest.raises(OutputError, match="o.json: already exists"):
        tiledepth.run(b, out, preview=True, **_RUN)
    assert {n: (tmp_path / n).read_bytes() for n in theirs} == theirs
    assert not (tmp_path / "o.tif").exists()
    assert not list(tmp_path.glob(".o*.placing.json"))


@needs_fork
def test_a_file_written_since_a_run_was_killed_is_never_removed_by_its_journal(tmp_path, maps,
                                                                               caplog):
    """A run killed after it placed its sidecar, before its output; the user then wrote
    their own o.json there. Its temporary file gone, the recovery took it for the killed
    run's and removed it. Now it is left alone, said in one warning, and the rerun refuses
    it (no --overwrite)."""
    a, b, _ = maps
    out = tmp_path / "o.tif"
    assert _killed_run(b, out, ("place", "o.tif"), preview=True) == -9
    (tmp_path / "o.json").unlink()
    (tmp_path / "o.json").write_text("mine")
    with pytest.raises(OutputError, match="o.json: already exists"):
        tiledepth.run(b, out, preview=True, **_RUN)
    assert (tmp_path / "o.json").read_text() == "mine"
    assert not (tmp_path / "o.png").exists()  # the killed run's: removed
    left = [r for r in caplog.records if "left alone" in r.getMessage()]
    assert len(left) == 1 and "o.json" in left[0].getMessage()


@needs_fork
def test_an_old_file_is_never_put_back_over_a_file_written_since(tmp_path, maps, caplog):
    """--overwrite killed after it placed the new sidecar (the old one kept aside); the user
    then wrote their own o.json. The recovery put the old sidecar back over it. Now it is
    left alone (the old one kept as its .old, said), and every other old file is back."""
    a, b, files = maps
    old = files["a", True]
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.tif"
    assert _killed_run(b, out, ("place", "o.png"), overwrite=True, preview=True) == -9
    (tmp_path / "o.json").unlink()
    (tmp_path / "o.json").write_text("mine")
    tiledepth.safe_write.remove_partials(out)
    now = _files(tmp_path)
    assert now.pop("o.json") == b"mine"
    (aside,) = [n for n in now if n.startswith(".o.json.") and n.endswith(".old")]
    assert now.pop(aside) == old["o.json"]
    assert now == {k: v for k, v in old.items() if k != "o.json"}
    assert aside in caplog.text and "left alone" in caplog.text


@needs_fork
def test_a_writer_recovers_a_killed_placement_only_under_the_outputs_lock(tmp_path, maps):
    """A GeoTiffWriter (a split's: it holds only its folder's lock) recovered a killed run's
    placement on entering, unlocked, while another run held the output's lock; and a journal
    there when it placed its files was overwritten by its own. Now it leaves it to the run
    holding the lock, and refuses to place its files over it; once the lock is free it
    recovers it first."""
    from tiledepth.lock import lock_output, unlock_output

    a, b, _ = maps
    out = tmp_path / "o.tif"
    assert _killed_run(b, out, ("place", "o.tif"), preview=True) == -9
    journal = tiledepth.safe_write.placement_journal(out)
    killed = _files(tmp_path)
    assert journal.name in killed and "o.json" in killed
    fd = lock_output(out)  # another run of o.tif
    try:
        with pytest.raises(OutputError, match="placing.json: another run of o.tif"):
            with GeoTiffWriter(out, SMALL) as sink:
                now = _files(tmp_path)  # not recovered under another's lock: as it was,
                assert {k: now.get(k) for k in killed} == killed  # but the writer's own file
                for w in sink.windows():
                    sink.write(w, np.full((w.height, w.width), 3.0, np.float32))
        assert _files(tmp_path) == killed
    finally:
        unlock_output(out, fd)
    _rerun(out, preview=False, overwrite=False)  # (its own sidecar: the killed run's removed)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["o.json", "o.tif"]
    assert (tmp_path / "o.json").read_bytes() == b'{"new": 1}'


def test_a_rollback_that_cannot_put_an_old_file_back_keeps_its_journal(tmp_path, maps,
                                                                        monkeypatch):
    """--overwrite failing before its output, and the old sidecar not to be put back: the
    journal was removed all the same, so no later run put it back (a new sidecar beside the
    old map). Now it is kept, and the next run puts every old file back."""
    a, b, files = maps
    old = files["a", True]
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.tif"
    place, replace = tiledepth.write.place, os.replace

    def failing_place(tmp, path, **kw):
        if Path(path).name == "o.tif":
            raise OSError(errno.EIO, "Input/output error")
        return place(tmp, path, **kw)

    def failing_replace(src, dst, *args, **kw):
        if os.path.basename(src).startswith(".o.json.") and str(src).endswith(".old"):
            raise OSError(errno.EIO, "Input/output error")
        return replace(src, dst, *args, **kw)

    monkeypatch.setattr(tiledepth.write, "place", failing_place)
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="cannot move the output in place"):
        tiledepth.run(b, out, overwrite=True, preview=True, **_RUN)
    monkeypatch.undo()
    assert tiledepth.safe_write.placement_journal(out).exists()
    assert (tmp_path / "o.json").read_bytes() != old["o.json"]
    assert tiledepth.safe_write.recover_placement(out) == "undone"
    assert _files(tmp_path) == old


def _interrupt(monkeypatch, call: str, name: str, *, after: bool = True) -> None:
    """A Ctrl-C (KeyboardInterrupt) once in ``os.<call>`` on a name matching ``name`` (the
    destination of ``link`` and ``replace``, the path of ``unlink``): after the call did its
    work, as a signal landing while the system call runs does, or before it."""
    import fnmatch

    real, fired = getattr(os, call), []

    def interrupted(*args, **kw):
        hit = not fired and fnmatch.fnmatchcase(
            os.path.basename(args[0] if call == "unlink" else args[1]), name)
        if hit and not after:
            fired.append(call)
            raise KeyboardInterrupt
        result = real(*args, **kw)
        if hit:
            fired.append(call)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(os, call, interrupted)


@pytest.mark.parametrize("overwrite, call, name, after", [
    (True, "replace", "o.tif", True), (False, "unlink", ".o.tif.*.partial", False)],
    ids=["--overwrite: the output renamed", "first run: the output linked, its temporary "
         "name not yet removed"])
def test_a_ctrl_c_as_the_output_is_placed_keeps_the_new_files(tmp_path, maps, monkeypatch,
                                                             overwrite, call, name, after):
    """Ctrl-C as the output's own rename (or link) returned: the rollback put the old
    companions back (or removed the new ones) beside the new output, and the CLI said "no
    output was written". Now the new set is complete, and the CLI says so."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    a, b, files = maps
    if overwrite:
        for name_, data in files["a", True].items():
            (tmp_path / name_).write_bytes(data)
    out = tmp_path / "o.tif"
    _interrupt(monkeypatch, call, name, after=after)
    r = CliRunner().invoke(main, ["run", str(b), "-o", str(out), "--model", "toy_models:red",
                                  "--tile-size", "64", "--preview",
                                  *(["--overwrite"] if overwrite else [])])
    monkeypatch.undo()
    assert r.exit_code == 130, r.output
    assert f"interrupted after writing {out}, which is complete" in r.output
    assert _files(tmp_path) == files["b", True]


@pytest.mark.parametrize("overwrite, call, name, then", [
    (True, "link", ".o.json.*.old", "old"), (True, "link", ".o.png.*.old", "old"),
    (True, "replace", "o.json", "old"), (False, "link", "o.json", "none"),
    (False, "link", "o.png", "none")],
    ids=["old sidecar linked aside", "old preview linked aside", "new sidecar renamed",
         "first run: sidecar linked", "first run: preview linked"])
def test_a_ctrl_c_as_a_companion_is_moved_rolls_it_back(tmp_path, maps, monkeypatch,
                                                        overwrite, call, name, then):
    """Ctrl-C as a link or rename of a companion returned (its work done, the call not):
    the rollback, going by what the code had recorded, missed it: a hidden
    .o.json.<hex>.old left for good, or a new sidecar or preview with no output. Now every
    old file is back as it was, or nothing is left."""
    a, b, files = maps
    old = files["a", True] if overwrite else {}
    for name_, data in old.items():
        (tmp_path / name_).write_bytes(data)
    out = tmp_path / "o.tif"
    _interrupt(monkeypatch, call, name)
    with pytest.raises(KeyboardInterrupt):
        tiledepth.run(b, out, overwrite=overwrite, preview=True, **_RUN)
    monkeypatch.undo()
    assert _files(tmp_path) == old
    tiledepth.run(b, out, overwrite=overwrite, preview=True, **_RUN)  # (resumed)
    assert _files(tmp_path) == files["b", True]


# ``tiledepth export`` and ``tiledepth preview`` killed (SIGKILL, power cut) among their
# renames (safe_write.place_together): the next export, preview or run of the stem finishes
# or undoes it by the same journal as a run's, never a new .wld or .aux.xml beside the old PNG.

@pytest.fixture(scope="module")
def png_sets(tmp_path_factory):
    """Two maps, ``a`` (2 m, UTM 32N) and ``b`` (0.5 m, UTM 11N), and the files an export
    (``o.png``, ``o.png.aux.xml``, ``o.wld``) and a preview (``o.png``, ``o.png.aux.xml``)
    of each writes: every file differs between the two."""
    from rasterio.transform import from_origin

    from tiledepth.export import export
    from tiledepth.preview import write_preview

    folder = tmp_path_factory.mktemp("pngs")
    values = np.linspace(1, 2, 30 * 40, dtype=np.float32).reshape(1, 30, 40)
    a = write_raster(folder / "a.tif", values, crs="EPSG:32632",
                     transform=from_origin(600000.0, 5300000.0, 2.0, 2.0))
    b = write_raster(folder / "b.tif", values[:, ::-1].copy(), crs="EPSG:32611",
                     transform=from_origin(500000.0, 4100000.0, 0.5, 0.5))
    sets = {}
    for kind, write in (("export", export), ("preview", write_preview)):
        for src in (a, b):
            out = folder / f"{kind}-{src.stem}" / "o.png"
            out.parent.mkdir()
            write(src, out)
            sets[kind, src.stem] = _files(out.parent)
    for kind in ("export", "preview"):
        old, new = sets[kind, "a"], sets[kind, "b"]
        assert sorted(old) == sorted(new) and all(old[n] != new[n] for n in old)
    assert sorted(sets["export", "a"]) == ["o.png", "o.png.aux.xml", "o.wld"]
    return a, b, sets


@needs_fork
@pytest.mark.parametrize("kind, at, then", [
    ("export", ("replace", ".o.placing.json"), "old"),
    ("export", ("replace", "o.png.aux.xml"), "old"), ("export", ("replace", "o.wld"), "old"),
    ("export", ("replace", "o.png"), "old"),
    ("export", ("unlink", ".o.png.aux.xml.*.old"), "new"),
    ("export", ("unlink", ".o.placing.json"), "new"),
    ("preview", ("replace", ".o.placing.json"), "old"),
    ("preview", ("replace", "o.png.aux.xml"), "old"), ("preview", ("replace", "o.png"), "old"),
    ("preview", ("unlink", ".o.png.aux.xml.*.old"), "new"),
    ("preview", ("unlink", ".o.placing.json"), "new")],
    ids=["export: as its journal is written", "export: .aux.xml kept aside",
         "export: .aux.xml placed", "export: .wld placed", "export: PNG placed",
         "export: as its journal is removed", "preview: as its journal is written",
         "preview: .aux.xml kept aside", "preview: .aux.xml placed", "preview: PNG placed",
         "preview: as its journal is removed"])
def test_an_export_or_preview_killed_while_placing_is_undone_or_finished(tmp_path, png_sets,
                                                                        kind, at, then):
    """An --overwrite export (or a preview) over an earlier one, killed among its renames:
    the new .aux.xml and .wld were left beside the old PNG (placed 2 m pixels in UTM 32N
    as 0.5 m ones in UTM 11N), and .o.png.*.old files for ever, as no journal was written.
    Now the next export or preview of o.png puts every old file back, byte for byte, or,
    once the PNG was placed, completes the new set; no .old, .partial or journal file left."""
    from tiledepth.export import export
    from tiledepth.preview import write_preview
    from tiledepth.safe_write import output_lock, recover_placement, remove_partials

    a, b, sets = png_sets
    old, new = sets[kind, "a"], sets[kind, "b"]
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.png"
    write = (lambda: export(b, out, overwrite=True)) if kind == "export" else \
        (lambda: write_preview(b, out))
    assert _killed(write, at) == -9
    with output_lock(out, option="-o"):  # what the next export (or preview) does first
        recover_placement(out)
        remove_partials(out)  # (an export's too: safe_write's, since it has no other)
    assert _files(tmp_path) == (old if then == "old" else new)
    write()  # the next one
    assert _files(tmp_path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(new)


@needs_fork
def test_a_killed_exports_placement_is_recovered_by_a_preview_or_run_of_its_stem(
        tmp_path, png_sets, caplog):
    """The journal of an export killed among its renames is a run's: a preview of that
    name, or a run of ``o.tif`` (the same stem, lock and journal), finishes or undoes it."""
    import logging

    from tiledepth.export import export
    from tiledepth.preview import write_preview

    a, b, sets = png_sets
    old = sets["export", "a"]
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.png"
    assert _killed(lambda: export(b, out, overwrite=True), ("replace", "o.png")) == -9
    assert tiledepth.safe_write.placement_journal(out).exists()
    # a run of o.tif (checked as its run checks it): the old export back, before anything
    with caplog.at_level(logging.INFO, logger="tiledepth"):
        check_output_paths(output_paths(a, tmp_path / "o.tif", preview=True), [a],
                           overwrite=True)
    assert "undone that: put 2 previous file(s) back" in caplog.text
    left = _files(tmp_path)  # the export's temporary files, for its next export to remove
    assert {k: v for k, v in left.items() if ".partial" not in k} == old
    assert _killed(lambda: export(b, out, overwrite=True), ("replace", "o.wld")) == -9
    write_preview(b, out)  # a preview of o.png: undone, then the preview over the old export
    assert _files(tmp_path) == sets["preview", "b"]


def test_remove_partials_leaves_folders_and_links_alone_and_warns_where_it_cannot(
        tmp_path, caplog, monkeypatch):
    """safe_write.remove_partials unlinked whatever its pattern matched: a folder named like
    a partial file beside the output crashed the run (IsADirectoryError), a link there was
    removed, and a partial file it could not remove raised. Now (the export's careful loop,
    the one left) only regular files are removed, the rest left alone, and one that cannot
    be removed stays, in a warning; the run writes its files."""
    import logging

    src = write_raster(tmp_path / "in.tif", depth_image(48, 64))
    out = tmp_path / "o.tif"
    (tmp_path / "notes.txt").write_text("mine\n")
    folder = tmp_path / ".o.tif.0123abcd.partial"
    folder.mkdir()
    (folder / "inside.txt").write_text("mine too\n")
    link = tmp_path / ".o.png.89abcdef.partial.aux.xml"
    link.symlink_to("notes.txt")
    stuck, gone = tmp_path / ".o.png.01234567.partial", tmp_path / ".o.json.fedcba98.partial"
    for left in (stuck, gone):
        left.write_bytes(b"left\n")
    unlink = Path.unlink

    def no_unlink(self, *args, **kw):  # (a file of another user in a sticky folder, say)
        if self.name == stuck.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return unlink(self, *args, **kw)

    monkeypatch.setattr(Path, "unlink", no_unlink)
    with caplog.at_level(logging.INFO, logger="tiledepth"):
        tiledepth.run(src, out, preview=True, **_RUN)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.tif", "notes.txt", "o.tif", "o.json", "o.png", "o.png.aux.xml", folder.name,
         link.name, stuck.name])
    assert (folder / "inside.txt").read_text() == "mine too\n" and link.is_symlink()
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert f"removed {gone}, left by a run that was killed" in caplog.text
    assert f"{stuck}: cannot remove it, left by a run that was killed (Permission denied)" \
        in caplog.text
    assert tiledepth.safe_write.remove_partials(tmp_path / "o.png") == []  # (stuck: kept)
    monkeypatch.undo()
    assert tiledepth.safe_write.remove_partials(tmp_path / "o.png") == [stuck]


@pytest.mark.parametrize("text, look", [
    ('{"output": "o.t', "check o.* and the .o.*.old files beside it (previous files it kept "
                        "aside)"),
    ('{"output": "o.tif", "tmp": ".o.tif.0badc0de.partial", "files": [{"path": "o.json", '
     '"new": ".o.json.0badc0de.partial", "aside": ".o.json.0badc0de.old"}]}',
     "check the files it names (o.tif, .o.tif.0badc0de.partial, o.json, "
     ".o.json.0badc0de.partial, .o.json.0badc0de.old)")],
    ids=["cut short", "no file identities"])
def test_an_unreadable_placement_journal_says_to_check_the_files_and_remove_it(
        tmp_path, caplog, text, look):
    """A journal that cannot be read (cut short, or not the JSON a run writes) refused every
    later preview, export and run of its stem with "wait for it to end, then run again",
    which never helps: nothing ends it. Now the one line says it cannot be read, which files
    to look at, and to remove it by hand; the recovery's warning too. It is kept."""
    from tiledepth.export import export
    from tiledepth.preview import write_preview

    src = write_raster(tmp_path / "in.tif", depth_image(48, 64))
    journal = tmp_path / ".o.placing.json"
    journal.write_text(text)
    end = (f"; {look}, then remove .o.placing.json by hand while no other tiledepth command "
           "writes o.*")
    for write in (lambda: write_preview(src, tmp_path / "o.png"),
                  lambda: export(src, tmp_path / "o.png"),
                  lambda: tiledepth.run(src, tmp_path / "o.tif", **_RUN)):
        with pytest.raises(OutputError) as err:
            write()
        msg = str(err.value)
        assert msg.startswith(f"{journal}: cannot read it (") and msg.endswith(end), msg
        assert "\n" not in msg and "wait for it" not in msg
        assert "that was killed while it moved its files in place is neither finished nor " \
               "undone" in msg
    assert f"{journal}: cannot read it (" in caplog.text  # (recover_placement's warning)
    assert journal.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".o.")) == [
        "in.tif"]


def test_read_files_find_what_comparing_every_pair_found(tmp_path):
    """``safe_write.ReadFiles`` looks a path up among the files a command reads, once, as
    ``_same`` compared each pair (a split checked each of N outputs against N inputs):
    the first of them that is the path, by inode where both exist (a hard link, a
    symbolic link), else by resolved path (a file not there yet)."""
    from tiledepth.safe_write import ReadFiles, _same

    (tmp_path / "a.tif").write_bytes(b"a")
    (tmp_path / "b.tif").write_bytes(b"b")
    os.link(tmp_path / "a.tif", tmp_path / "hard.tif")
    (tmp_path / "sym.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "sub").mkdir()
    inputs = [tmp_path / "sym.tif", tmp_path / "a.tif", tmp_path / "b.tif",
              tmp_path / "sub" / ".." / "later.tif", None]
    read = ReadFiles(inputs)
    asked = ["a.tif", "hard.tif", "b.tif", "sym.tif", "later.tif", "other.tif", "sub"]
    for name in asked:
        path = tmp_path / name
        brute = next((Path(p) for p in inputs if p is not None and _same(path, Path(p))),
                     None)
        assert read.find(path) == brute, name
    assert read.find(tmp_path / "hard.tif") == tmp_path / "a.tif"
    assert read.find(tmp_path / "b.tif") == tmp_path / "sym.tif"  # the first, in order
    assert read.find(tmp_path / "later.tif") == tmp_path / "sub" / ".." / "later.tif"
