"""The one inference loop: a local model is a pool of one, its next batch prepared meanwhile."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from tiledepth.infer import LocalPool, infer_tiles
from tiledepth.models.base import ModelStopped, check_stop
from tiledepth.readers import ArrayReader
from tiledepth.tiling import tile_grid

IMAGE = np.random.default_rng(0).random((160, 160, 3), dtype=np.float32)
TILES = [t for row in tile_grid(160, 160, 64, 0.25) for t in row]  # 9 tiles


class CountingReader(ArrayReader):
    """An ArrayReader that counts the tiles it has handed out; ``fail_at`` raises Ctrl-C."""

    def __init__(self, image, fail_at=None):
        super().__init__(image)
        self.read = 0
        self.fail_at = fail_at

    def iter_tiles(self, windows, *, workers=0):
        for item in super().iter_tiles(windows, workers=workers):
            if self.read == self.fail_at:
                raise KeyboardInterrupt
            self.read += 1
            yield item


def test_the_next_batch_is_read_while_the_model_runs():
    reader = CountingReader(IMAGE)
    overlapped = []

    class WaitsForTheNextRead:
        name, batch_size = "waits", 2

        def predict(self, batch, keys):
            # a tile of the next batch is read while this one is on the model
            deadline = time.monotonic() + (5 if keys[-1] < 8 else 0)  # the last has no next
            while reader.read <= keys[-1] + 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            overlapped.append(reader.read > keys[-1] + 1)
            assert threading.current_thread() is not threading.main_thread()
            return batch[..., 0]

    out = list(infer_tiles(WaitsForTheNextRead(), reader, TILES, batch_size=2))
    assert [t.id for t, _, _ in out] == list(range(9))
    np.testing.assert_array_equal(out[4][1], IMAGE[48:112, 48:112, 0])
    assert overlapped == [True, True, True, True, False]


def test_an_interrupted_loop_stops_the_running_batch_between_its_steps():
    finished = []

    class Long:
        name, batch_size = "long", 2

        def predict(self, batch, keys):  # 200 steps of 50 ms: 10 s unless stopped
            for _ in range(200):
                check_stop()
                time.sleep(0.05)
            finished.append(keys)
            return batch[..., 0]

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(infer_tiles(Long(), CountingReader(IMAGE, fail_at=3), TILES, batch_size=2))
    assert time.monotonic() - start < 3  # the batch on the model gave up within a step
    assert finished == []


def test_a_local_pool_reports_the_model_error_and_closes():
    class Fails:
        def predict(self, batch, keys):
            raise ValueError("bad batch")

    pool = LocalPool(Fails())
    with pytest.raises(ValueError, match="bad batch"):
        pool.result(pool.submit(np.zeros((1, 8, 8, 3), np.float32), [0]))
    pool.close()
    assert not pool.stop.is_set()  # a closed pool starts afresh: its next batch runs
    with pytest.raises(ModelStopped):
        stopped = LocalPool(type("M", (), {"predict": lambda self, b, k: check_stop()})())
        stopped.stop.set()
        stopped.result(stopped.submit(np.zeros((1, 8, 8, 3), np.float32), [0]))


class Deferred:
    """A pool that runs each batch when its result is asked for; keeps the batches' arrays."""

    in_flight = 2

    def __init__(self, predict):
        self.predict, self.arrays = predict, []

    def submit(self, batch, keys):
        self.arrays.append(batch.base if batch.base is not None else batch)
        return batch

    def result(self, batch):
        return self.predict(batch)


def _crop(tile):
    rows, cols = tile.window.toslices()
    return IMAGE[rows, cols, 0]


def test_a_collected_batch_array_is_filled_again():
    pool = Deferred(lambda batch: batch[..., 0].copy())
    out = list(infer_tiles(pool, ArrayReader(IMAGE), TILES, batch_size=2))
    assert len(pool.arrays) == 5 and len({id(a) for a in pool.arrays}) == 2  # not 5 new ones
    for tile, pred, _ in out:
        np.testing.assert_array_equal(pred, _crop(tile))


def test_a_prediction_that_views_the_batch_array_survives_its_reuse():
    def in_place(batch):  # depth written over the batch's own memory: a view of it
        red = batch[..., 0].copy()
        view = batch.reshape(-1)[:red.size].reshape(red.shape)
        view[...] = red
        return view

    pool = Deferred(in_place)
    out = list(infer_tiles(pool, ArrayReader(IMAGE), TILES, batch_size=2))
    assert len({id(a) for a in pool.arrays}) == 2  # filled again: the predictions are copies
    for tile, pred, _ in out:  # none overwritten by a later batch
        np.testing.assert_array_equal(pred, _crop(tile))


# --------------------------------------------------------------------------- model outputs


def test_a_torch_output_is_read_as_its_values():
    import torch

    from tiledepth.models.base import check_prediction

    batch = np.random.default_rng(2).random((2, 4, 5, 3), dtype=np.float32)
    depth = torch.from_numpy(batch[..., 0].copy())
    for out in (depth.requires_grad_(), depth.detach().to(torch.bfloat16)):
        got = check_prediction(out, batch, "torchy")
        assert got.dtype == np.float32 and got.shape == (2, 4, 5)
        np.testing.assert_allclose(got, batch[..., 0], atol=4e-3)


def test_values_beyond_float32_and_complex_values_are_named():
    from tiledepth.errors import ModelError
    from tiledepth.models.base import check_prediction

    batch = np.random.default_rng(3).random((1, 4, 5, 3), dtype=np.float32)
    huge = batch[..., 0].astype(np.float64) * 1e300
    with pytest.raises(ModelError, match=r"model 'big' returned float64 values that overflow "
                                         r"float32 \(up to [0-9.]+e\+299"):
        check_prediction(huge, batch, "big")
    with pytest.raises(ModelError, match="model 'c' returned complex values"):
        check_prediction(batch[..., 0] + 1j, batch, "c")
    with pytest.raises(ModelError, match="1 NaN and 0 inf"):  # as before
        check_prediction(np.where(batch[..., 0] > batch[..., 0].min(), batch[..., 0], np.nan),
                         batch, "nan")


def test_a_model_that_returns_none_gets_its_one_line_error():
    """None (a function that forgot its `return`) passed the checked-array look-up, whose
    missing entry is None too, and failed as an unexpected AttributeError."""
    import tiledepth
    from tiledepth.errors import ModelError
    from tiledepth.models.base import check_prediction

    def forgot_return(batch):
        batch[..., 0] * 2.0

    batch = np.zeros((2, 4, 5, 3), np.float32)
    with pytest.raises(ModelError, match=r"^model 'forgot' returned None, not an array; it "
                                         r"must return \(B, H, W\) = \(2, 4, 5\)"):
        check_prediction(None, batch, "forgot")
    with pytest.raises(ModelError, match=r"forgot_return' returned None, not an array"):
        tiledepth.estimate(IMAGE[:100, :100], model=forgot_return, tile_size=64)
    with pytest.raises(ModelError, match=r"model 'obj' returned object, not an array"):
        check_prediction(object(), batch, "obj")  # any other non-array, as before


def test_a_run_keeps_no_reference_to_an_unhashable_model_object():
    """A loaded model that is a plain dataclass (eq=True: no hash) stayed alive after its run,
    held by the model's turns: one copy of its weights per run."""
    import gc
    import weakref
    from dataclasses import dataclass

    import tiledepth

    @dataclass
    class Model:
        name: str = "mine"
        batch_size: int = 4

        def predict(self, batch, keys):
            return batch[..., 0] * 2.0

    model = Model()
    depth = tiledepth.estimate(IMAGE[:100, :100], model=model, tile_size=64)
    alive = weakref.ref(model)
    del model
    gc.collect()

    assert alive() is None
    assert depth.shape == (100, 100) and np.isfinite(depth).all()


# --------------------------------------------------------------------------- model buffers


def _reusing():
    """A callable that writes each batch's depth (red * 2) into one array per shape and
    returns that array, as a model copying its GPU result into a preallocated (pinned) host
    buffer does."""
    buffers = {}

    def depth(batch):
        out = buffers.setdefault(batch.shape[:3], np.empty(batch.shape[:3], np.float32))
        np.multiply(batch[..., 0], 2.0, out=out)
        return out

    return depth


class _Reusing:
    """The same as a model object (:class:`tiledepth.protocols.DepthModel`)."""

    name, batch_size = "reusing", 2

    def __init__(self):
        self.depth = _reusing()

    def predict(self, batch, keys):
        return self.depth(batch)


def test_a_model_that_reuses_its_output_array_overwrites_no_kept_prediction():
    from tiledepth.infer import predict_image
    from tiledepth.models import CallableModel

    # through the inference loop: 9 full-size 64 px tiles in batches of 2, each batch written
    # into the same (2, 64, 64) array (the last batch, of one tile, into a (1, 64, 64) one)
    for model in (CallableModel(_reusing(), batch_size=2), _Reusing()):  # callable, object
        out = list(infer_tiles(model, ArrayReader(IMAGE), TILES, batch_size=2))
        for tile, pred, _ in out:  # each its own tile's, not a later batch's
            np.testing.assert_array_equal(pred, _crop(tile) * 2.0)
    # the coarse prediction too: a second call writes into the same (1, 40, 30) array
    model = _Reusing()
    valid = np.ones((40, 30), bool)
    first = predict_image(model, np.moveaxis(IMAGE[:40, :30], -1, 0), valid)
    predict_image(model, np.moveaxis(IMAGE[40:80, :30], -1, 0), valid)
    np.testing.assert_array_equal(first, IMAGE[:40, :30, 0] * 2.0)


def test_a_reused_buffer_gives_the_same_depth_map_as_fresh_arrays():
    import tiledepth

    image = np.random.default_rng(4).random((150, 200, 3), dtype=np.float32)
    fresh = tiledepth.estimate(image, model=lambda b: b[..., 0] * 2.0, tile_size=64)
    for model in (_reusing(), _Reusing()):  # a callable, a model object
        got = tiledepth.estimate(image, model=model, tile_size=64)
        np.testing.assert_array_equal(got, fresh)


def test_a_pools_reused_result_array_is_copied_where_collected():
    reused = {}

    def into_one_array(batch):  # a pool handing back one array, filled again for each batch
        out = reused.setdefault(batch.shape[:3], np.empty(batch.shape[:3], np.float32))
        out[...] = batch[..., 0]
        return out

    out = list(infer_tiles(Deferred(into_one_array), ArrayReader(IMAGE), TILES, batch_size=2))
    for tile, pred, _ in out:
        np.testing.assert_array_equal(pred, _crop(tile))


def test_a_prediction_is_copied_once_and_checked_once():
    import torch

    from tiledepth.models.base import check_prediction

    batch = np.random.default_rng(5).random((2, 4, 5, 3), dtype=np.float32)
    mine = np.ascontiguousarray(batch[..., 0])
    for out in (mine, mine[..., None], torch.from_numpy(mine)):  # the model's memory: copied
        got = check_prediction(out, batch, "mine")
        assert not np.may_share_memory(got, mine)
        np.testing.assert_array_equal(got, mine)
        assert check_prediction(got, batch, "again") is got  # checked already: as it is
    # a conversion made a new array already: no second copy (the array it made is kept)
    got = check_prediction(mine.astype(np.float64), batch, "f64")
    assert got.flags.owndata and check_prediction(got, batch, "f64") is got
    # an array checked for another shape is checked again (and refused)
    from tiledepth.errors import ModelError

    with pytest.raises(ModelError, match=r"returned shape \(2, 4, 5\) for a batch of shape "
                                         r"\(2, 4, 6, 3\)"):
        check_prediction(got, np.zeros((2, 4, 6, 3), np.float32), "f64")


def test_a_pools_results_are_checked_where_collected():
    from tiledepth.errors import ModelError

    class Remote(Deferred):  # as Ray's pool, whose actors call a model object as it is
        name = "remote"

    def nan_in_the_third_batch(batch):
        out = batch[..., 0].copy()
        if len(pool.arrays) == 3:
            out[0, 5, 5] = np.nan
        return out

    pool = Remote(nan_in_the_third_batch)
    with pytest.raises(ModelError, match=r"^model 'remote' returned 1 NaN and 0 inf values in a "
                                         r"batch of shape \(2, 64, 64, 3\); it must return "
                                         r"finite depth$"):
        list(infer_tiles(pool, ArrayReader(IMAGE), TILES, batch_size=2, in_flight=1))
    half = Remote(lambda batch: batch[:, ::2, ::2, 0])
    with pytest.raises(ModelError, match=r"model 'remote' returned shape \(2, 32, 32\)"):
        list(infer_tiles(half, ArrayReader(IMAGE), TILES, batch_size=2))


def test_a_failed_model_call_ends_the_read_ahead_threads_at_once(tmp_path):
    """The loop closes its tile reads when it ends, a model error included: the read-ahead
    threads (and their dataset handles) end then, not when the garbage collector finds the
    frame that the error's traceback holds."""
    import gc

    from conftest import depth_image, write_raster

    from tiledepth.readers import RasterReader

    src = write_raster(tmp_path / "in.tif", depth_image(160, 160))

    class FailsSecond:
        calls = 0

        def predict(self, batch, keys):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("model failed")
            return batch[..., 0].copy()

    def readers():
        return sorted(t.name for t in threading.enumerate()
                      if t.name.startswith("tiledepth-read-"))

    before = readers()
    gc.disable()  # what the test measures: the loop's own cleanup, not a collection
    try:
        with RasterReader(src) as reader, pytest.raises(RuntimeError, match="model failed"):
            for _ in infer_tiles(FailsSecond(), reader, TILES, batch_size=2, workers=2):
                pass
        left = readers()
    finally:
        gc.enable()
    assert (before, left) == ([], [])  # the original left the 2 threads alive


def test_tiles_of_mixed_sizes_are_batched_by_size():
    """A list of tiles of two sizes (a public function's input): a new size starts a batch,
    each tile predicted as in a call of its own size, in the order given."""
    from dataclasses import replace

    from tiledepth.models.base import CallableModel

    small = [replace(t, id=t.id + 100) for row in tile_grid(160, 160, 32, 0.25) for t in row]
    tiles = TILES[:1] + small[:3] + TILES[1:] + small[3:5]
    model = CallableModel(lambda batch: batch[..., 0] * 2.0 + batch[..., 1], batch_size=4)
    reader = ArrayReader(IMAGE)
    mixed = list(infer_tiles(model, reader, tiles, batch_size=4))
    alone = {t.id: p for size in (TILES, small)
             for t, p, _ in infer_tiles(model, reader, size, batch_size=4)}
    assert [t.id for t, _, _ in mixed] == [t.id for t in tiles]
    assert [p.shape for _, p, _ in mixed][:5] == [(64, 64)] + [(32, 32)] * 3 + [(64, 64)]
    for tile, pred, _ in mixed:
        np.testing.assert_array_equal(pred, alone[tile.id])


# --------------------------------------------------------------------------- torch modes


def _conv_depth():
    """A torch callable, (B, H, W, 3) -> (B, H, W) through a 3x3 convolution, that reads its
    result with ``.numpy()``: as a user checks it inside ``torch.no_grad()``."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1).eval()

    def depth(batch):
        out = net(torch.from_numpy(batch).permute(0, 3, 1, 2))[:, 0]
        return out.numpy() + 2.0  # fails where the call records a graph
    return depth


def test_a_torch_callable_runs_under_the_callers_no_grad_and_inference_mode(tmp_path):
    """torch keeps its grad mode per thread, and the model thread (LocalPool) and the
    anchor's (Ahead) started with gradients on: a callable run under ``torch.no_grad()``
    failed in tiledepth.run and estimate with "Can't call numpy() on Tensor that requires
    grad", though it worked called directly."""
    import torch
    from conftest import write_raster

    import tiledepth

    depth = _conv_depth()
    image = (np.random.default_rng(4).random((3, 90, 110)) * 200 + 20).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", image)
    with torch.no_grad():
        for workers in (0, 2):
            result = tiledepth.run(src, tmp_path / f"o{workers}.tif", model=depth,
                                   tile_size=64, workers=workers, overviews=False)
            assert result.tiles == 4
        out = tiledepth.estimate(np.moveaxis(image, 0, -1), model=depth, tile_size=64)
        assert out.shape == (90, 110) and np.isfinite(out).all()
    with torch.inference_mode():
        assert tiledepth.estimate(np.moveaxis(image, 0, -1), model=depth,
                                  tile_size=64).shape == (90, 110)
    with pytest.raises(RuntimeError, match="requires grad"):  # as called directly, outside
        tiledepth.estimate(np.moveaxis(image, 0, -1), model=depth, tile_size=64)


def test_the_model_and_anchor_threads_take_the_submitting_threads_torch_modes():
    import torch

    from tiledepth.background import Ahead

    class Modes:
        def predict(self, batch, keys):
            seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return batch[..., 0]

    seen = []
    pool = LocalPool(Modes())
    batch = np.ones((1, 4, 4, 3), np.float32)
    try:
        for mode in (torch.no_grad, torch.inference_mode, torch.enable_grad):
            with mode():
                pool.result(pool.submit(batch, [0]))
    finally:
        pool.close()
    assert seen == [(False, False), (False, True), (True, False)]
    with torch.no_grad():
        ahead = Ahead(lambda clear: torch.is_grad_enabled())
    assert ahead.result() is False
    ahead.close()


def test_a_masked_array_with_masked_values_is_refused_as_nan_is():
    """np.asarray dropped a model's mask: the values under it (-1000 where the model was
    unsure) were fused as depth, the output's minimum -256 and no error. Refused now, in
    one line, as NaN from a model is; a masked array with nothing masked is its values."""
    import tiledepth
    from tiledepth.errors import ModelError
    from tiledepth.models.base import check_prediction

    image = np.random.default_rng(0).random((100, 100, 3), dtype=np.float32)

    def unsure(batch):
        d = batch.mean(-1)
        return np.ma.array(np.where(d > 0.6, -1000.0, d), mask=d > 0.6)

    with pytest.raises(ModelError, match=r"returned a masked array with \d+ masked values "
                                         r"in a batch of shape \(\d, 64, 64, 3\); it must "
                                         r"return finite depth"):
        tiledepth.estimate(image, model=unsure, tile_size=64)
    batch = image[None, :8, :8]
    with pytest.raises(ModelError, match="with 1 masked values"):
        check_prediction(np.ma.array(batch[..., 0], mask=np.eye(8)[None] * (np.arange(8) == 3)),
                         batch, "m")
    plain = np.ma.array(batch[..., 0], mask=False)
    np.testing.assert_array_equal(check_prediction(plain, batch, "m"), batch[..., 0])
    same = tiledepth.estimate(image, model=lambda b: np.ma.masked_invalid(b.mean(-1)),
                              tile_size=64)
    np.testing.assert_array_equal(same, tiledepth.estimate(image, model=lambda b: b.mean(-1),
                                                           tile_size=64))


def test_a_batch_runs_a_torch_callable_under_the_callers_no_grad(tmp_path):
    """tiledepth.batch runs each input on a thread of its own pool, which started with
    gradients on: a torch callable run under ``torch.no_grad()`` failed there ("Can't call
    numpy() on Tensor that requires grad") as it had in tiledepth.run."""
    import torch
    from conftest import write_raster

    import tiledepth

    depth = _conv_depth()
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        write_raster(folder / f"{name}.tif",
                     (rng.random((3, 70, 90)) * 200 + 20).astype(np.uint8))
    with torch.no_grad():
        records = list(tiledepth.batch(folder, tmp_path / "out", model=depth, tile_size=64,
                                       overviews=False))
    assert [r.status for r in records] == ["done", "done"], records
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["a.depth.tif",
                                                                         "b.depth.tif"]


def test_torch_modes_are_not_carried_while_torch_is_half_imported(monkeypatch):
    """A model thread's first call imports torch; a batch submitted meanwhile saw the module
    half there ("partially initialized module 'torch' has no attribute 'inference_mode'",
    a run failing at random in CI). The caller has not imported torch itself: no mode to
    carry, the function as it is."""
    import importlib.machinery
    import sys
    import types

    from tiledepth.models.base import with_torch_modes

    half = types.ModuleType("torch")
    half.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half.__spec__._initializing = True
    half.is_grad_enabled = half.is_inference_mode_enabled = lambda: False
    monkeypatch.setitem(sys.modules, "torch", half)
    assert with_torch_modes(len) is len
    half.__spec__._initializing = False  # done, but an old torch without inference_mode
    assert with_torch_modes(len) is len


def test_a_loaded_models_batch_size_must_be_a_whole_number_of_one_or_more(tmp_path):
    """A model object's batch_size was never checked: None, 'auto' and 2.5 failed deep in
    the engine with bare TypeErrors ("unsupported operand type(s) for *: 'int' and
    'NoneType'"), 0 and -1 ran silently as 1. The run's own batch size set on it, where it
    is a plain attribute, mends it, as it did."""
    from conftest import depth_image, write_raster

    import tiledepth
    from tiledepth.errors import ModelLoadError

    class Mine:
        def __init__(self, batch_size):
            self.name, self.batch_size, self.largest = "mine", batch_size, 0

        def predict(self, batch, keys):
            self.largest = max(self.largest, len(batch))
            return batch[..., 0]

    src = write_raster(tmp_path / "in.tif", depth_image(96, 128))
    for bad in (None, "auto", 2.5, 0, -1, True):
        with pytest.raises(ModelLoadError, match=rf"^{tmp_path / 'in.tif'}: model 'mine' has "
                                                 rf"batch_size {re.escape(repr(bad))}; set its "
                                                 r"batch_size to the tiles per model call, a "
                                                 r"whole number of 1 or more \(4, say\)$"):
            tiledepth.run(src, tmp_path / "bad.tif", model=Mine(bad), tile_size=48)
    assert not (tmp_path / "bad.tif").exists()
    for size, given, largest in [(np.int64(3), None, 3), (None, 2, 2), (0, 5, 5)]:
        model = Mine(size)
        tiledepth.run(src, tmp_path / "ok.tif", model=model, tile_size=48, batch_size=given,
                      overwrite=True)
        assert model.largest == largest, size


def test_an_error_a_callable_model_raises_names_the_model(tmp_path):
    """A user's callable raising mid-run reached the CLI as "unexpected ValueError: ...
    (--debug shows the traceback)", tiledepth's own-bug wording, naming no model. It is a
    ModelError naming the model (exit 1, the checkpoint kept); errors tiledepth reads stay
    as they are: a batch too large (halved), host memory, Ctrl-C, tiledepth's own."""
    from click.testing import CliRunner
    from conftest import depth_image, write_raster

    from tiledepth.cli import main
    from tiledepth.errors import ModelError, OptionError
    from tiledepth.models.base import CallableModel
    from tiledepth.models.oom import no_halving

    (tmp_path / "raising.py").write_text(
        "calls = 0\n\n\ndef raise_mid(batch):\n    global calls\n    calls += 1\n"
        "    if calls == 3:\n        raise ValueError('boom in the middle\\nmore detail')\n"
        "    return batch[..., 0]\n")
    src = write_raster(tmp_path / "in.tif", depth_image(160, 160))
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model",
                                       f"{tmp_path / 'raising.py'}:raise_mid", "--tile-size",
                                       "64", "--batch-size", "1", "--anchor-calls", "1",
                                       "--no-progress"])  # (its third call is a tile's)
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert re.search(r"^tiledepth: error: .*in\.tif: model '.*raising\.py:raise_mid' raised "
                     r"ValueError: boom in the middle; \d+ tile prediction\(s\) kept in .*"
                     r"\.out\.tif\.tiledepth-\w+; run the same command again to resume$",
                     line), line
    assert not out.exists()

    batch = np.full((2, 4, 4, 3), 0.5, np.float32)

    def raising(error):
        def fn(b):
            raise error
        return CallableModel(fn, name="m.py:f")

    with pytest.raises(ModelError, match=r"^model 'm\.py:f' raised KeyError: 'band'$") as info:
        raising(KeyError("band")).predict(batch, [0, 1])
    assert isinstance(info.value.__cause__, KeyError)  # (--debug shows where it came from)
    for kept in (KeyboardInterrupt(), MemoryError(), ModelStopped("stop"), OptionError("x"),
                 RuntimeError("CUDA out of memory."), ValueError("ran out of memory")):
        with pytest.raises(type(kept)) as info, no_halving():  # (as the batch size probe)
            raising(kept).predict(batch, [0, 1])
        assert info.value is kept
    calls = []

    def too_large_at_two(b):  # the halving still sees out-of-memory errors
        calls.append(len(b))
        if len(b) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return b[..., 0]

    assert CallableModel(too_large_at_two).predict(batch, [0, 1]).shape == (2, 4, 4)
    assert calls == [2, 1, 1]
