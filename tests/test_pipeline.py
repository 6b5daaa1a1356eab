"""The pipelined path (background read-ahead and writes) equals the simple path bit for bit."""

import hashlib

import numpy as np
import pytest
import rasterio
from conftest import depth_image, write_raster
from rasterio.windows import Window
from toy_models import affine_red

import tiledepth
from tiledepth.read import read_ahead
from tiledepth.readers import RasterReader


def digest(path):
    """Hash of the file's bytes on disk."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("shape", [(431, 517), (1001, 263)])
def test_pipelined_equals_simple_bit_for_bit(tmp_path, shape):
    """Odd raster sizes (not a multiple of the tile, block or window size)."""
    src = write_raster(tmp_path / "in.tif", depth_image(*shape))
    outs = {}
    for workers in (0, 1, 3):
        out = tmp_path / f"w{workers}.tif"
        tiledepth.run(src, out, model=affine_red, tile_size=96, overlap=0.3,
                      workers=workers, batch_size=3)
        outs[workers] = digest(out)
    assert outs[0] == outs[1] == outs[3]
    with rasterio.open(tmp_path / "w3.tif") as ds:
        assert ds.shape == shape and np.isfinite(ds.read(1)).all()


def test_iter_tiles_threads_match_and_handles_are_per_thread(rgba_tif):
    windows = [Window(c, r, 100, 90) for r in range(0, 500, 90) for c in range(0, 600, 100)]
    with RasterReader(rgba_tif) as src:
        serial = list(src.iter_tiles(windows, workers=0))
        threaded = list(src.iter_tiles(windows, workers=3))
        # closing early stops the workers cleanly
        first = next(src.iter_tiles(windows, workers=2))
    assert len(serial) == len(threaded) == len(windows)
    for (a, va), (b, vb) in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(first[0], serial[0][0])


def test_read_ahead_raises_at_the_failing_item_and_bounds_work():
    import contextlib
    import threading

    started = []
    lock = threading.Lock()

    def read(handle, item):
        with lock:
            started.append(item)
        if item == 5:
            raise ValueError("bad item 5")
        return item * 10

    got = []
    with pytest.raises(ValueError, match="bad item 5"):
        for value in read_ahead(list(range(100)), contextlib.nullcontext, read, workers=2,
                                ahead=4):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]
    assert max(started) < 5 + 4 + 1  # never more than `ahead` items beyond the consumer


def test_scale_output_lands_on_the_input_grid(rgba_tif, tmp_path):
    full = tiledepth.run(rgba_tif, tmp_path / "full.tif", model=affine_red, tile_size=128)
    half = tiledepth.run(rgba_tif, tmp_path / "half.tif", model=affine_red, tile_size=128,
                         scale=0.5)
    assert half.tiles < full.tiles / 2.5  # about 4x fewer tiles
    with rasterio.open(rgba_tif) as src, rasterio.open(half.output) as h, \
            rasterio.open(full.output) as f:
        assert (h.crs, h.transform, h.shape) == (src.crs, src.transform, src.shape)
        assert h.tags()["TILEDEPTH_SCALE"] == "0.5"
        a, b = h.read(1), f.read(1)
        np.testing.assert_array_equal(np.isnan(a), src.read(4) == 0)
    ok = np.isfinite(a)
    # the same depth up to one affine map, as fine as half resolution allows
    A = np.c_[a[ok], np.ones(ok.sum())]
    coef = np.linalg.lstsq(A, b[ok], rcond=None)[0]
    assert np.abs(A @ coef - b[ok]).max() < 0.03 * np.ptp(b[ok])
    # the reduced map's working file goes with the checkpoint: nothing left beside the outputs
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_scale_refuses_what_it_cannot_do_yet(rgba_tif, tmp_path):
    from tiledepth.errors import OptionError

    with pytest.raises(OptionError, match="scale below 1"):
        tiledepth.run(rgba_tif, tmp_path / "o.tif", model=affine_red, scale=0.5,
                      uncertainty=True, ensemble=3)
