import os
import stat
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, depth_image, write_raster
from rasterio.windows import Window

import tiledepth
from tiledepth.errors import OutputError
from tiledepth.safe_write import (
    check_output_path,
    check_output_paths,
    check_target,
    output_paths,
    place,
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


