"""A full disk (ENOSPC, simulated) while writing the output or the scratch store: one clean line,
exit 1, no half-written file left, and the tiles already predicted are kept for a rerun.

The simulations raise what the libraries raise on a real full disk (checked on a 1 MiB tmpfs):
GDAL's ``RasterioIOError('Write failed...')`` caused by ``TIFFAppendToStrip:Write error``,
and NumPy's bare ``OSError('65536 requested and 53216 written')`` or ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import depth_image, write_raster
from rasterio._err import CPLE_AppDefinedError
from rasterio.errors import RasterioIOError

import tiledepth
import tiledepth.cog
import tiledepth.engine
import tiledepth.safe_write
import tiledepth.stages
from tiledepth.checkpoint import checkpoint_folder
from tiledepth.cli import main
from tiledepth.errors import WriteError, write_error

Usage = namedtuple("Usage", "total used free")
ARGS = ["--model", "toy_models:affine_red", "--tile-size", "64", "--no-progress"]


class FullDisk:
    """A rasterio dataset opened for writing whose disk fills up after ``room`` writes."""

    def __init__(self, ds, room: int, at_close: bool, full: list | None = None) -> None:
        self._ds, self._room, self._at_close = ds, room, at_close
        self._full = [] if full is None else full

    def write(self, *args, **kwargs):
        self._full.append(True)
        if self._room == 0:
            gdal = CPLE_AppDefinedError(1, 1, "TIFFAppendToStrip:Write error at scanline 512")
            raise RasterioIOError("Write failed. See previous exception for details.") from gdal
        self._room -= 1
        return self._ds.write(*args, **kwargs)

    def close(self):
        self._ds.close()  # a partial file on disk, as GDAL leaves it
        if self._at_close:
            gdal = CPLE_AppDefinedError(1, 1, "TIFFAppendToStrip:Write error at scanline 0")
            raise RasterioIOError("Write failed. See previous exception for details.") from gdal

    def __getattr__(self, name):
        return getattr(self._ds, name)


@pytest.fixture
def src(tmp_path):
    return write_raster(tmp_path / "in.tif", depth_image(300, 700))


def disk_fills_up(monkeypatch, *, room: int = 0, at_close: bool = False) -> None:
    """The disk has room when the run starts (its free-space check passes) and fills up
    once the output is being written (another job's files, say)."""
    real_open = rasterio.open
    full: list = []

    def open_(path, mode="r", **kwargs):
        ds = real_open(path, mode, **kwargs)
        return FullDisk(ds, room, at_close, full) if mode == "w" else ds

    monkeypatch.setattr(rasterio, "open", open_)
    monkeypatch.setattr(tiledepth.safe_write.shutil, "disk_usage", lambda path: Usage(
        2**30, 2**30 - 2**20, 2**20) if full else Usage(2**30, 0, 2**30))


def leftovers(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("room, at_close", [(0, False), (99, True)],
                         ids=["in a window", "when closing"])
def test_output_disk_full(src, tmp_path, monkeypatch, room, at_close):
    out = tmp_path / "out.tif"
    disk_fills_up(monkeypatch, room=room, at_close=at_close)
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), *ARGS])
    assert result.exit_code == 1
    folder = checkpoint_folder(out, tmp_path)
    assert result.output.strip() == (
        f"tiledepth: error: {out}: no space left on device (1.0 MiB free); free some space or "
        f"choose another place with -o; 90 tile prediction(s) kept in {folder}; run the same "
        "command again to resume")
    assert leftovers(tmp_path) == [folder.name, "in.tif"]  # no partial output
    monkeypatch.undo()  # space freed: the rerun only blends and writes
    result = tiledepth.run(src, out, model="toy_models:affine_red", tile_size=64)
    assert result.resumed == result.tiles == 90
    assert leftovers(tmp_path) == ["in.tif", "out.json", "out.tif"]


@pytest.mark.parametrize("how", ["short write", "ENOSPC"])
def test_scratch_disk_full(src, tmp_path, monkeypatch, how):
    real_save = np.save
    saved = []

    def save(file, array, *args, **kwargs):
        if len(saved) >= 21:  # the coarse prediction and 10 tiles fit (or 10 tiles and a
            # half, where the tiles' model calls came before the coarse prediction)
            file.write(b"\x93NUMPY\x01\x00v\x00{'descr'")  # part of a header
            if how == "ENOSPC":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise OSError("65536 requested and 53216 written")
        saved.append(1)
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    if how == "short write":  # only the free space tells it is a full disk (once it is)
        monkeypatch.setattr(tiledepth.safe_write.shutil, "disk_usage", lambda path: Usage(
            2**30, 2**30 - 2**19, 2**19) if len(saved) >= 21 else Usage(2**30, 0, 2**30))
    out = tmp_path / "out.tif"
    with pytest.raises(WriteError, match="no space left on device.*--scratch") as info:
        tiledepth.run(src, out, model="toy_models:affine_red", tile_size=64)
    folder = checkpoint_folder(out, tmp_path)
    assert str(info.value).split(": ")[0] in [
        str(folder / name) for name in ("tile0000010.valid.npy", "tile0000010.pred.npy",
                                         "coarse.npy")]
    assert info.value.__notes__ == [f"10 tile prediction(s) kept in {folder}; run the same "
                                    "command again to resume"]
    assert leftovers(tmp_path) == [folder.name, "in.tif"]
    files = leftovers(folder)
    assert not [f for f in files if f.endswith(".tmp")]  # nothing half-written
    assert len([f for f in files if f.endswith(".pred.npy")]) == 10
    monkeypatch.undo()
    result = tiledepth.run(src, out, model="toy_models:affine_red", tile_size=64)
    assert result.resumed == 10
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model="toy_models:affine_red",
                          tile_size=64)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_other_write_failures_say_what_failed(tmp_path):
    gdal = CPLE_AppDefinedError(1, 1, "TIFFWriteDirectorySec: I/O error")
    try:
        raise RasterioIOError("Write failed. See previous exception for details.") from gdal
    except RasterioIOError as exc:
        err = write_error(tmp_path / "o.tif", exc, "-o")
    if shutil.disk_usage(tmp_path).free < tiledepth.errors.LOW_DISK:
        pytest.skip("this disk is nearly full itself")
    assert str(err) == (f"{tmp_path / 'o.tif'}: write failed (TIFFWriteDirectorySec: I/O error);"
                        " check the disk, or choose another place with -o")
    assert err.exit_code == 1


def test_sidecar_disk_full_leaves_nothing_and_resumes(src, tmp_path, monkeypatch):
    def save_json(path, report):
        path.write_text('{"tiles": [')  # part of it, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiledepth.engine, "save_json", save_json)
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), *ARGS])
    assert result.exit_code == 1
    assert result.output.startswith(f"tiledepth: error: {out}: no space left on device")
    assert len(result.output.strip().splitlines()) == 1
    folder = checkpoint_folder(out, tmp_path)
    assert leftovers(tmp_path) == [folder.name, "in.tif"]  # no output, sidecar or temp file
    monkeypatch.undo()
    result = tiledepth.run(src, out, model="toy_models:affine_red", tile_size=64)
    assert result.resumed == result.tiles == 90
    assert leftovers(tmp_path) == ["in.tif", "out.json", "out.tif"]


def test_overviews_cut_short_are_caught_before_the_rename(src, tmp_path, monkeypatch):
    """GDAL writing overviews in threads can meet a full disk and report nothing (seen on a
    2 MiB tmpfs): the output is reopened and read (last block, an overview) before the rename."""
    real = tiledepth.cog.build_overviews

    def build_overviews(path, **kwargs):
        factors = real(path, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) * 2 // 3)
        return factors

    monkeypatch.setattr(tiledepth.cog, "build_overviews", build_overviews)
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), *ARGS])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"tiledepth: error: {out}: write failed (")
    folder = checkpoint_folder(out, tmp_path)
    assert leftovers(tmp_path) == [folder.name, "in.tif"]
    monkeypatch.undo()
    result = tiledepth.run(src, out, model="toy_models:affine_red", tile_size=64)
    assert result.resumed == result.tiles == 90


def test_no_room_is_refused_before_the_model_runs(src, tmp_path, monkeypatch):
    monkeypatch.setattr(tiledepth.safe_write.shutil, "disk_usage",
                        lambda path: Usage(2**30, 2**30 - 2**20, 2**20))
    calls = []
    monkeypatch.setattr(tiledepth.stages, "predict_image", lambda *a: calls.append(a))
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), *ARGS])
    assert result.exit_code == 2, result.output
    # 90 tiles of 64 x 64 (16900 B each with the mask); 300 x 700 float32 and its overviews
    assert result.output.strip() == (
        f"tiledepth: error: {tmp_path}: not enough free space: the scratch needs about 1.5 MiB "
        "and the output needs about 1.1 MiB, 1.0 MiB free; free some space, or put the scratch "
        "on another disk with --scratch (the output with -o)")
    assert calls == []
    assert leftovers(tmp_path) == ["in.tif"]
