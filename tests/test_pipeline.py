"""The pipelined path (background read-ahead and writes) equals the simple path bit for bit."""

import hashlib

import numpy as np
import pytest
import rasterio
from conftest import depth_image, write_raster
from rasterio.windows import Window
from toy_models import affine_red, red

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


class WrongFirstCalls:
    """Depth in the red channel, affinely distorted per call (seeded by its key); every 5th
    tile's first call is another scene, its second (:func:`tiledepth.infer.retry_key`) right."""

    kind, name, batch_size = "depth", "wrong-first-calls", 4

    def predict(self, batch, keys):
        out = []
        for x, key in zip(batch, keys, strict=True):
            rng = np.random.default_rng(key % 2**32 + 10 * (key >= 2**32))
            p = rng.uniform(0.5, 2) * x[..., 0] + rng.uniform(-1, 1)
            out.append(5.0 * x[::-1, ::-1, 0] ** 2 if 0 <= key < 2**32 and key % 5 == 0 else p)
        return np.stack(out).astype(np.float32)


def test_tiles_predicted_again_are_read_back_from_the_store_within_memory(tmp_path,
                                                                         monkeypatch):
    """The second predictions of flagged tiles go to the store (under their retry keys) and
    are read back from it for their statistics, as every tile is: with ``memory=0`` no more
    than about one of them is held at once, however many there are; the output as before."""
    import gc
    import json
    import weakref

    from tiledepth import fusion, stages
    from tiledepth.infer import RETRY_STRIDE
    from tiledepth.scratch import DiskStore

    src = write_raster(tmp_path / "in.tif", depth_image(300, 400))
    # workers=0: the tiles written as they are put (a background write holds its tile)
    run = dict(model=WrongFirstCalls(), tile_size=64, overlap=0.25, anchor_blur=0, memory=0,
               workers=0)
    put, again, held = DiskStore.put, [], []

    def kept_put(store, tile_id, pred, valid):
        if tile_id >= RETRY_STRIDE:
            again.append(weakref.ref(pred))
        put(store, tile_id, pred, valid)

    def counted(*args, **kwargs):
        if again:  # a tile's statistics taken again: how many second predictions live now
            gc.collect()
            held.append(sum(ref() is not None for ref in again))
        return real(*args, **kwargs)

    real = fusion.blurred_tile_stats
    monkeypatch.setattr(DiskStore, "put", kept_put)
    monkeypatch.setattr(stages.fusion, "blurred_tile_stats", counted)
    result = tiledepth.run(src, tmp_path / "out.tif", **run)
    retried = json.loads(result.sidecar.read_text())["retried"]
    assert len(retried) == len(again) == 10 and len(held) == 10  # tiles 0, 5, ..., 45
    assert max(held) <= 2  # the one just read, the loop's last; 10 held before
    monkeypatch.undo()
    rerun = tiledepth.run(src, tmp_path / "rerun.tif", **{**run, "memory": 64})
    assert digest(result.output) == digest(rerun.output)



def _thin_alpha(tmp_path, *, block: bool):
    """700 x 160 RGBA GeoTIFF whose alpha keeps column 120 (one pixel wide: --scale 0.5's
    reduced pixels sample columns 1, 3, ..., 159, none of it) and, with ``block``, the
    top-left 80 x 80 px (in the first of the output's windows, rows 0 to 511)."""
    from rasterio.enums import ColorInterp as C

    alpha = np.zeros((700, 160), np.uint8)
    alpha[:, 120] = 255
    if block:
        alpha[:80, :80] = 255
    src = write_raster(tmp_path / "thin.tif", np.concatenate([depth_image(700, 160),
                                                               alpha[None]]),
                       colorinterp=[C.red, C.green, C.blue, C.alpha])
    return src, alpha > 0


def test_scale_values_every_valid_pixel_of_a_thin_area(tmp_path, monkeypatch):
    """A valid column that no reduced pixel samples (their validity is one sample each)
    takes the nearest finite reduced pixel's value, also in an output window with no
    finite reduced pixel under it (rows 512 on: NaN before): NaN exactly where the input
    is masked."""
    import tiledepth.scale

    # the column's rows 512 on are up to 314 reduced pixels from the block: within reach
    monkeypatch.setattr(tiledepth.scale, "MAX_FILL_DISTANCE", 400)
    src, valid = _thin_alpha(tmp_path, block=True)
    a = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64, scale=0.5)
    with rasterio.open(a.output) as ds:
        out = ds.read(1)
    np.testing.assert_array_equal(np.isfinite(out), valid)
    block = out[:80, :80]
    assert block.min() <= out[:, 120].min() and out[:, 120].max() <= block.max()
    # there, the reduced grid's nearest finite pixel is the block's corner
    assert np.ptp(out[512:, 120]) == 0


def test_nearest_finite_is_the_nearest_not_the_first_found():
    from tiledepth.scale import nearest_finite

    grid = np.full((50, 50), np.nan, np.float32)
    grid[17, 17], grid[10, 19] = 2.0, 1.0  # 9.9 and 9 cells from cell (10, 10)
    assert nearest_finite(grid, (100, 100), np.array([20]), np.array([21])) == 1.0
    rng = np.random.default_rng(0)
    grid = np.where(rng.random((40, 60)) < 0.002, np.arange(2400.0).reshape(40, 60), np.nan)
    rows, cols = rng.integers(0, 80, 30), rng.integers(0, 120, 30)
    got = nearest_finite(grid.astype(np.float32), (80, 120), rows, cols).astype(int)
    cells = np.argwhere(np.isfinite(grid))
    for r, c, g in zip(rows // 2, cols // 2, got, strict=True):  # the cells they fall in
        best = np.hypot(*(cells - (r, c)).T).min()
        assert np.hypot(g // 60 - r, g % 60 - c) == best
    assert np.isnan(nearest_finite(np.full((3, 3), np.nan), (6, 6), np.array([0]),
                                   np.array([0]))).all()


def test_scale_refuses_a_run_whose_valid_pixels_all_vanish(tmp_path):
    """Only the thin column is valid: nothing of it on the reduced grid, a map of NaN and
    '0 tiles' before; refused in one line (exit 2) naming --scale."""
    from click.testing import CliRunner

    from tiledepth.cli import main
    from tiledepth.errors import InputError

    src, _ = _thin_alpha(tmp_path, block=False)
    with pytest.raises(InputError, match=r"too thin to survive --scale 0\.5 .*raise --scale"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64, scale=0.5)
    got = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "c.tif"), "--model",
                                    "toy_models:red", "--tile-size", "64", "--scale", "0.5",
                                    "--no-progress"])
    assert got.exit_code == 2 and "too thin to survive --scale 0.5" in got.output
    assert "run the same command again" not in got.output  # it would fail the same way
    assert not (tmp_path / "c.tif").exists()
    # at --scale 1 the column is fused
    full = tiledepth.run(src, tmp_path / "f.tif", model=red, tile_size=64)
    assert full.tiles > 0


def test_a_scale_run_refused_as_too_thin_leaves_no_checkpoint(tmp_path):
    """The refused run kept its checkpoint folder ("0 tile prediction(s) kept in
    .o.tif.tiledepth-...", a coarse.npy) that no run could use: the same command fails the
    same way, and another --scale has another key. Removed; the message says nothing of it."""
    from tiledepth.errors import InputError

    src, _ = _thin_alpha(tmp_path, block=False)
    with pytest.raises(InputError, match=r"too thin to survive --scale 0\.5") as info:
        tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64, scale=0.5)
    assert not getattr(info.value, "__notes__", None)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_scale_fills_a_lost_pixel_only_from_within_reach(tmp_path, monkeypatch, caplog):
    """A valid pixel the reduced grid lost took the value of the nearest finite reduced
    pixel however far (a full distance transform of a growing crop in every window: 3.2 s a
    window where the nearest was 3000 reduced pixels away). Beyond MAX_FILL_DISTANCE
    reduced pixels it stays NaN, all such pixels counted in one warning."""
    import tiledepth.scale
    from tiledepth.scale import nearest_finite

    grid = np.full((50, 50), np.nan, np.float32)
    grid[10, 19] = 1.0  # 9 cells from cell (10, 10), 9.06 from (11, 10), 30 from (10, 49)
    rows, cols = np.array([20, 22, 20]), np.array([20, 20, 98])  # in those cells
    np.testing.assert_array_equal(nearest_finite(grid, (100, 100), rows, cols), [1, 1, 1])
    monkeypatch.setattr(tiledepth.scale, "MAX_FILL_DISTANCE", 9, raising=False)
    np.testing.assert_array_equal(nearest_finite(grid, (100, 100), rows, cols),
                                  [1, np.nan, np.nan])

    # a run: the thin column's reduced cells (column 60) lie 21 cells right of the block's
    # (rows and columns 0 to 39); the first output window (rows 0 to 511) holds the block
    # and is filled from it; below, the column is within 240 cells of the block's corner to
    # reduced row 278, full row 557
    monkeypatch.setattr(tiledepth.scale, "MAX_FILL_DISTANCE", 240)
    src, valid = _thin_alpha(tmp_path, block=True)
    with caplog.at_level("WARNING", logger="tiledepth.scale"):
        a = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64, scale=0.5)
    with rasterio.open(a.output) as ds:
        out = ds.read(1)
    column = np.isfinite(out[:, 120])
    assert column[:558].all() and not column[558:].any()
    assert np.isfinite(out[:80, :80]).all() and not np.isfinite(out[~valid]).any()
    assert int((valid & ~np.isfinite(out)).sum()) == 142
    warned = [r.getMessage() for r in caplog.records if r.name == "tiledepth.scale"]
    assert warned == ["142 valid pixel(s) lie more than 480 px (240 px of the reduced grid) "
                      "from any pixel the reduced grid kept; left NaN: raise --scale"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mask_option_run_at_scale_equals_a_run_of_the_input_masking_it_itself(tmp_path,
                                                                                 workers):
    """``--mask`` with ``--scale``: the pixels it masks were averaged into the reduced pixels
    beside them (the output differed by up to 0.2 beside the mask's edge from a run whose
    input masks the same pixels itself). Now the same output, bit for bit."""
    rgb = depth_image(300, 420)
    rgb[:, :, :129] = 0  # the masked part: dark; reduced column 32 (128-131) valid
    plain = write_raster(tmp_path / "plain.tif", rgb)
    declared = write_raster(tmp_path / "declared.tif", rgb, nodata=0)
    keep = np.ones((1, 300, 420), np.uint8)
    keep[:, :, :129] = 0
    mask = write_raster(tmp_path / "keep.tif", keep)
    depths = []
    for src, kw in ((plain, {"mask": mask}), (declared, {})):
        out = tmp_path / f"{src.stem}.out.tif"
        tiledepth.run(src, out, model=red, tile_size=64, scale=0.25, workers=workers, **kw)
        with rasterio.open(out) as ds:
            depths.append(ds.read(1))
    np.testing.assert_array_equal(depths[0], depths[1])
    assert np.isnan(depths[0][:, :129]).all() and np.isfinite(depths[0][:, 129:]).all()
