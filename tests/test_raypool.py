"""`--executor ray`: batches on a local Ray (started once for this module) with cheap models."""

import contextlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import depth_image, run_examples, write_raster
from toy_models import PidLogger

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import ModelError, ModelLoadError, OptionError
from tiledepth.identity import model_identity
from tiledepth.infer import infer_tiles, infer_tiles_in_flight
from tiledepth.options import make_options
from tiledepth.readers import ArrayReader
from tiledepth.survey import MANIFEST_NAME, read_manifest
from tiledepth.tiling import tile_grid

TESTS = Path(__file__).parent
OPTS = dict(tile_size=96, overlap=0.25, batch_size=2)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the whole module: 2 CPUs; workers import tiledepth and toy_models.
    The SIGTERM handler is put back after it: ray.init (called here, not through tiledepth)
    sets its own, which ray.shutdown leaves, and the CLI tests that ran after this module
    found Ray's handler instead of the default."""
    import signal

    ray = pytest.importorskip("ray")
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", path)  # inherited by the workers Ray starts
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
                 logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, before)


def make_survey(root: Path) -> Path:
    """Four rasters; the third is black, on which nan_if_dark fails."""
    for name, h in [("a/x0.tif", 200), ("a/x1.tif", 180), ("b/dark.tif", 150), ("c/x2.tif", 240)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        data = np.zeros((3, h, 170), np.uint8) if "dark" in name else depth_image(h, 230)
        write_raster(root / name, data)
    return root


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.tags()


def test_in_flight_inference_keeps_tile_order_and_values():
    rng = np.random.default_rng(1)
    image = rng.random((300, 260, 3), dtype=np.float32)
    mask = np.ones((300, 260), bool)
    mask[:100, :100] = False  # a fully masked tile or two, yielded without prediction
    tiles = [t for row in tile_grid(300, 260, 64, 0.25) for t in row]

    class Deferred:  # predictions run only when collected, like a remote pool
        batch_size = 3

        def __init__(self):
            self.submitted = []

        def submit(self, batch, keys):
            self.submitted.append(list(keys))
            return batch, list(keys)

        def result(self, handle):
            batch, keys = handle
            return batch[..., 0] * 2 + np.array(keys, np.float32)[:, None, None]

    def run(model, **kw):
        out = list(infer_tiles(model, ArrayReader(image, mask), tiles, batch_size=3, **kw))
        return [(t.id, None if p is None else p.copy()) for t, p, _ in out]

    class Local:
        def predict(self, batch, keys):
            return Deferred().result((batch, list(keys)))

    expected = run(Local())
    for in_flight in (1, 2, 5):
        model = Deferred()
        got = list(infer_tiles_in_flight(model, ArrayReader(image, mask), tiles, batch_size=3,
                                         in_flight=in_flight))
        assert [t.id for t, _, _ in got] == [i for i, _ in expected]
        for (_, want), (_, pred, _) in zip(expected, got, strict=True):
            if want is None:
                assert pred is None
            else:
                np.testing.assert_array_equal(pred, want)
        assert sum(len(k) for k in model.submitted) == sum(p is not None for _, p in expected)
    with pytest.raises(ValueError, match="in_flight"):
        next(infer_tiles_in_flight(Deferred(), ArrayReader(image), tiles, batch_size=3,
                                   in_flight=0))


def test_ray_batch_equals_local_and_records_a_failing_raster(ray_local, tmp_path):
    survey = make_survey(tmp_path / "survey")
    kw = dict(OPTS, model="toy_models:nan_if_dark")
    local = tiledepth.batch([survey], tmp_path / "local", **kw)
    remote = tiledepth.batch([survey], tmp_path / "ray", executor="ray", ray_actors=2, **kw)
    assert [r.status for r in remote] == ["done", "done", "failed", "done"]
    assert [r.status for r in local] == [r.status for r in remote]
    # the model's error comes back from the actor as itself, in one line
    assert "nan_if_dark" in remote[2].error and "NaN" in remote[2].error
    assert "\n" not in remote[2].error and "Ray" not in remote[2].error
    assert [r.tiles for r in remote] == [r.tiles for r in local] == [9, 9, None, 9]
    for a, b in zip(local, remote, strict=True):
        if a.status == "done":
            (da, ta), (db, tb) = read(a.output), read(b.output)
            np.testing.assert_allclose(db, da, rtol=0, atol=1e-6)
            assert ta == tb  # provenance tags too: the pool reports the model's name
    assert read_manifest(tmp_path / "ray" / MANIFEST_NAME) == remote


def test_a_single_raster_streams_its_tiles_to_every_actor(ray_local, tmp_path):
    src = write_raster(tmp_path / "big.tif", depth_image(400, 400))  # 36 tiles, 18 batches
    pids = tmp_path / "pids"
    pids.mkdir()
    records = tiledepth.batch([src], tmp_path / "out", executor="ray", ray_actors=2,
                              model=PidLogger(str(pids)), **OPTS)
    assert [r.status for r in records] == ["done"] and records[0].tiles == 36
    seen = {p.name for p in pids.iterdir()}
    assert len(seen) == 2 and f"pid-{os.getpid()}" not in seen  # both actors, never the driver


def test_ray_resume_after_a_stopped_run(ray_local, tmp_path):
    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    args = ["--model", "toy_models:nan_if_dark", "--tile-size", 96, "--batch-size", 2,
            "--executor", "ray", "--ray-actors", 2, "--no-progress"]
    result = CliRunner().invoke(main, ["batch", str(survey), "-o", str(out), "--on-error", "stop",
                                       *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 1
    assert [r.status for r in read_manifest(out / MANIFEST_NAME)] == ["done", "done", "failed"]
    assert not (out / "c").exists()  # stopped before the last raster
    before = read(out / "a" / "x1.depth.tif")[0]
    damaged = out / "a" / "x0.depth.tif"  # an output cut short (a copy interrupted): its
    damaged.write_bytes(damaged.read_bytes()[:2000])  # tags show it is tiledepth's to redo
    write_raster(survey / "b" / "dark.tif", depth_image(150, 170))  # the input, fixed
    result = CliRunner().invoke(main, ["batch", str(survey), "-o", str(out), "--resume",
                                       *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    latest = read_manifest(out / MANIFEST_NAME, latest=True)
    assert [(Path(r.input).name, r.status) for r in latest] == [
        ("x0.tif", "done"), ("x1.tif", "skipped"), ("dark.tif", "done"), ("x2.tif", "done")]
    np.testing.assert_array_equal(read(out / "a" / "x1.depth.tif")[0], before)
    local = tmp_path / "x0-local.tif"
    tiledepth.run(survey / "a" / "x0.tif", local, model="toy_models:nan_if_dark", **OPTS)
    np.testing.assert_allclose(read(out / "a" / "x0.depth.tif")[0], read(local)[0], atol=1e-6)


def test_actor_errors_reach_the_driver_as_themselves(ray_local, tmp_path):
    from tiledepth.raypool import ray_pool

    survey = make_survey(tmp_path / "survey")
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_mod'"):
        tiledepth.batch([survey], tmp_path / "out", executor="ray", model="no_such_mod:fn")
    with ray_pool(make_options(model="toy_models:wrong_shape"), actors=1) as pool:
        assert pool.name == "toy_models:wrong_shape" and pool.in_flight == 2
        with pytest.raises(ModelError, match="returned shape"):
            pool.predict(np.zeros((2, 32, 32, 3), np.float32), [0, 1])
    assert ray_local.is_initialized()  # a pool does not shut down a Ray it did not start


def test_the_pool_has_its_models_kind_and_tile_sizes(ray_local, tmp_path):
    from tiledepth.kinds import kind_of
    from tiledepth.raypool import ray_pool

    src = write_raster(tmp_path / "in.tif", depth_image(120, 150))
    local = tiledepth.run(src, tmp_path / "local.tif", model="toy_models:metric_red", **OPTS)
    with ray_pool(make_options(model="toy_models:metric_red"), actors=1) as pool:
        # not "depth": metric tiles get a scale only, and the output is in metres
        assert kind_of(pool) == "metric_depth"
        assert not hasattr(pool, "min_tile") and not hasattr(pool, "tile_multiple")
        remote = tiledepth.run(src, tmp_path / "ray.tif", model=pool, **OPTS)
    (want, want_tags), (got, got_tags) = read(local.output), read(remote.output)
    assert got_tags == want_tags and got_tags["TILEDEPTH_KIND"] == "metric_depth"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    with rasterio.open(remote.output) as ds:
        assert ds.units == ("metre",)
    with ray_pool(make_options(model="toy_models:vit14", tile_size=98), actors=1) as pool:
        assert pool.tile_multiple == 14 and kind_of(pool) == "depth"
        with pytest.raises(OptionError, match="not a multiple of 14"):
            tiledepth.run(src, tmp_path / "96.tif", model=pool, **OPTS)
        # the coarse image (78 x 98 here) is padded to multiples of 14 for the model
        tiledepth.run(src, tmp_path / "98.tif", model=pool, **dict(OPTS, tile_size=98))


def test_uncertainty_with_ray_stops_the_batch_with_one_clear_error(ray_local, tmp_path):
    # not each raster failing with "gives no uncertainty", as a local run would give it
    src = write_raster(tmp_path / "in.tif", depth_image(120, 150))
    with pytest.raises(OptionError, match="uncertainty needs the local executor"):
        tiledepth.batch([src], tmp_path / "out", executor="ray", uncertainty=True,
                        ensemble=3, **dict(OPTS, model="toy_models:red"))



class CountingModel:
    """A model or pool (whatever it wraps) that records the keys it predicts; with
    ``stop_after``, Ctrl-C when a later batch is predicted (a pool: collected)."""

    def __init__(self, model, stop_after=None):
        self.model, self.keys, self.stop_after, self.calls = model, [], stop_after, 0
        self.name, self.batch_size = model.name, model.batch_size
        self.identity = model_identity(model)  # the same checkpoint identity as the model
        if hasattr(model, "submit"):
            self.in_flight = model.in_flight
            self.submit = lambda batch, keys: (keys, model.submit(batch, keys))

    def _count(self, keys):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt
        self.keys.extend(keys)

    def result(self, handle):
        keys, handle = handle
        self._count(keys)
        return self.model.result(handle)

    def predict(self, batch, keys):
        self._count(keys)
        return self.model.predict(batch, keys)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_resumed_run_predicts_only_the_missing_tiles(executor, request, tmp_path):
    from tiledepth.models import load_model
    from tiledepth.raypool import ray_pool

    src = write_raster(tmp_path / "in.tif", depth_image(200, 230))  # 9 tiles
    out = tmp_path / "out.tif"
    with contextlib.ExitStack() as stack:
        if executor == "ray":
            request.getfixturevalue("ray_local")
            model = stack.enter_context(ray_pool(make_options(model="toy_models:red",
                                                              batch_size=2), actors=2))
        else:
            model = load_model("toy_models:red", batch_size=2)
        first = CountingModel(model, stop_after=3)  # (one coarse call: the calls counted)
        with pytest.raises(KeyboardInterrupt):  # after the coarse image and 2 batches, or 3
            tiledepth.run(src, out, model=first, anchor_calls=1, **OPTS)  # batches before it
        counting = CountingModel(model)
        result = tiledepth.run(src, out, model=counting, anchor_calls=1, **OPTS)
    kept = [k for k in first.keys if k >= 0]
    assert result.tiles == 9 and result.resumed == len(kept) == 4 + 2 * (-1 not in first.keys)
    # neither the stored tiles nor the stored coarse image
    assert sorted(counting.keys) == [-1] * (-1 not in first.keys) + sorted(set(range(9))
                                                                          - set(kept))
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model="toy_models:red", anchor_calls=1,
                          **OPTS)
    np.testing.assert_allclose(read(out)[0], read(fresh.output)[0], rtol=0, atol=1e-6)


def test_actor_resources_map_the_device_and_share_the_cpus():
    from tiledepth.raypool import ACTOR_CPUS, actor_resources

    # every GPU actor sees its own GPU as cuda:0: cuda:1 would fail in each of them
    assert actor_resources("cuda:1", gpus=4, cpus=32, actors=None) == (
        4, {"num_gpus": 1, "num_cpus": ACTOR_CPUS}, "cuda")
    assert actor_resources("cuda", gpus=2, cpus=6, actors=3) == (
        3, {"num_gpus": 1, "num_cpus": 2}, "cuda")
    assert actor_resources("cpu", gpus=2, cpus=2, actors=2) == (2, {"num_cpus": 1}, "cpu")
    assert actor_resources("auto", gpus=0, cpus=1, actors=None) == (1, {"num_cpus": 1}, "auto")


def test_ray_pool_and_batch_refuse_bad_actors_with_one_message(tmp_path):
    """``ray_pool(actors=0)`` said "ray_actors must be a whole number >= 1", ``batch`` the
    same check in other words (naming --ray-actors and what it counts): one check now, its
    message the same from both, before Ray is imported or any input searched."""
    from tiledepth.raypool import ray_pool

    out = tmp_path / "out"
    for bad in (0, -1, 2.5, True, "2"):
        message = (r"^ray_actors \(--ray-actors\) must be a whole number >= 1 \(model actors "
                   rf"on Ray\), got {re.escape(repr(bad))}$")
        with pytest.raises(OptionError, match=message):
            with ray_pool(make_options(model="toy_models:red"), actors=bad):
                pass
        with pytest.raises(OptionError, match=message):
            tiledepth.batch([tmp_path / "missing.tif"], out, executor="ray", ray_actors=bad)
    assert not out.exists()


def test_ray_pool_example_runs_ortho_on_two_actors(ray_local, tmp_path, monkeypatch):
    from tiledepth.raypool import ray_pool

    monkeypatch.chdir(tmp_path)
    write_raster(tmp_path / "ortho.tif", depth_image(120, 150))

    ran, names = run_examples(ray_pool)

    assert ran == 3 and names["result"].output == Path("ortho.depth.tif")
    assert (tmp_path / "ortho.depth.tif").exists()


def test_a_tile_size_the_model_cannot_take_stops_a_ray_batch_once(ray_local, tmp_path):
    """It ran every input on the actors, each failing with the option error (exit 1); the
    local executor refuses it once, before any input (exit 2)."""
    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["batch", str(survey), "-o", str(out), "--model",
                                       "toy_models:vit14", "--tile-size", "96", "--executor",
                                       "ray", "--ray-actors", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "not a multiple of 14" in result.output and "use --tile-size 84 or 98" in result.output
    assert read_manifest(out / MANIFEST_NAME) == []  # no input was run


def test_ray_refuses_options_a_python_callable_does_not_take(ray_local, tmp_path):
    """--steps, --ensemble, --dtype, --device did nothing for a callable on Ray, yet the
    output's tags recorded them; refused as by the local executor."""
    from tiledepth.raypool import ray_pool

    src = write_raster(tmp_path / "in.tif", depth_image(120, 150))
    for given in (dict(steps=3), dict(ensemble=3), dict(dtype="fp16"), dict(device="cpu")):
        with pytest.raises(OptionError, match="is a Python callable: --"):
            tiledepth.batch([src], tmp_path / "out", executor="ray", ray_actors=1,
                            **dict(OPTS, model="toy_models:red", **given))
    assert read_manifest(tmp_path / "out" / MANIFEST_NAME) == []
    with pytest.raises(OptionError, match="--steps 3, --dtype fp16 would do nothing"):
        with ray_pool(make_options(model="toy_models:red", steps=3, dtype="fp16"), actors=1):
            pass


def test_more_actors_than_a_local_ray_has_cpus_is_refused(ray_local, monkeypatch):
    """A Ray tiledepth starts itself has no node to join: --ray-actors 3 on 2 CPUs waited
    forever for the third actor."""
    from tiledepth.raypool import ray_pool

    # as if this Ray (2 CPUs) were the one ray_pool starts locally
    monkeypatch.setattr(ray_local, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_local, "init", lambda **kw: None)
    monkeypatch.setattr(ray_local, "shutdown", lambda: None)
    with pytest.raises(OptionError, match="--ray-actors 3 needs 3 CPUs; this Ray has 2"):
        with ray_pool(make_options(model="toy_models:red"), actors=3):
            pass
    with ray_pool(make_options(model="toy_models:red"), actors=2) as pool:
        assert len(pool.actors) == 2


def dies_if_dark(batch: np.ndarray) -> np.ndarray:
    """A model whose process dies (a segfault, a CUDA abort) on a black tile."""
    if (batch.mean(axis=(1, 2, 3)) < 0.02).any():
        os._exit(3)
    return batch[..., 0].copy()


def test_an_input_that_kills_the_actors_stops_the_batch_in_one_line(ray_local, tmp_path):
    """Ray retries the batch, the actor dies each time and is given up: every later input
    failed with "actor died". The batch stops after recording the input it died on."""
    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="every Ray actor holding model .* died; check"):
        tiledepth.batch([survey], out, executor="ray", ray_actors=1,
                        **dict(OPTS, model="test_raypool:dies_if_dark"))
    records = read_manifest(out / MANIFEST_NAME)
    assert [(Path(r.input).name, r.status) for r in records] == [
        ("x0.tif", "done"), ("x1.tif", "done"), ("dark.tif", "failed")]
    assert "died" in records[2].error and "\n" not in records[2].error


def test_an_unreachable_ray_address_is_refused_in_the_main_thread(ray_local, tmp_path,
                                                                   monkeypatch):
    """ray.init waited forever for 127.0.0.1:1, on the batch's pool thread, where neither
    Ctrl-C nor SIGTERM reached it."""
    import threading

    src = write_raster(tmp_path / "in.tif", depth_image(120, 150))
    calls = []

    def init(**kw):  # Ray's would hang on this address; here it says it was called
        calls.append(threading.current_thread())
        raise ConnectionError("no Ray there")

    monkeypatch.setattr(ray_local, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.setattr(ray_local, "init", init)
    kw = dict(OPTS, model="toy_models:red", executor="ray")
    with pytest.raises(OptionError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1 "
                                          r"\(.*\); check --ray-address"):
        tiledepth.batch([src], tmp_path / "out", ray_address="127.0.0.1:1", **kw)
    assert calls == []  # refused before ray.init
    with pytest.raises(OptionError, match="cannot start or join the Ray cluster at 'auto'"):
        tiledepth.batch([src], tmp_path / "out", ray_address="auto", **kw)
    assert calls == [threading.main_thread()]


def test_starting_ray_keeps_the_sigterm_handler(ray_local, monkeypatch):
    """ray.init put its own SIGTERM handlers in place of the command line's (exit 143, partial
    outputs removed): a SIGTERM aborted a Ray batch (-6) or exited it at once."""
    import signal

    from tiledepth.raypool import ray_pool

    inits = []

    def init(**kw):  # as Ray's does in the main thread
        inits.append(kw)
        signal.signal(signal.SIGTERM, lambda *args: os._exit(1))

    def ours(signum, frame):
        raise KeyboardInterrupt

    # as in a fresh process, until "started" (Ray's own calls would start it again)
    monkeypatch.setattr(ray_local, "is_initialized", lambda: bool(inits))
    monkeypatch.setattr(ray_local, "init", init)
    monkeypatch.setattr(ray_local, "shutdown", lambda: None)
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        with ray_pool(make_options(model="toy_models:red"), actors=1) as pool:
            assert signal.getsignal(signal.SIGTERM) is ours
            assert pool.predict(np.zeros((1, 32, 32, 3), np.float32), [0]).shape == (1, 32, 32)
    finally:
        signal.signal(signal.SIGTERM, previous)


def sleeps(batch: np.ndarray) -> np.ndarray:
    """The red channel after 3 s: a batch still on its actor when its run is stopped."""
    import time

    time.sleep(3)
    return batch[..., 0].copy()


def test_a_stopped_run_stops_waiting_for_its_ray_batches(ray_local):
    """A batch's Ctrl-C or SIGTERM waited until every tile of the raster was predicted on the
    actors (26 s, against 0.8 s locally): the pool never looked at the run's stop event."""
    import threading
    import time

    from tiledepth.models.base import ModelStopped, stop_event
    from tiledepth.raypool import ray_pool

    batch = np.zeros((1, 32, 32, 3), np.float32)
    stop = threading.Event()
    token = stop_event().set(stop)  # as each run of a batch has (tiledepth.batchrun)
    try:
        with ray_pool(make_options(model="test_raypool:sleeps", batch_size=1),
                      actors=1) as pool:
            running, queued = pool.submit(batch, [0]), pool.submit(batch, [1])
            threading.Timer(0.3, stop.set).start()  # Ctrl-C while the actor works
            t0 = time.perf_counter()
            with pytest.raises(ModelStopped):
                pool.result(running)
            assert time.perf_counter() - t0 < 2.0  # not the 3 s the actor takes
            with pytest.raises(ray_local.exceptions.TaskCancelledError):
                ray_local.get(queued.ref, timeout=60)  # the batch behind it never runs
            with pytest.raises(ModelStopped):  # and the stopped run submits no other
                pool.submit(batch, [2])
    finally:
        stop_event().reset(token)


def test_a_relative_model_file_is_the_one_in_the_users_folder(ray_local, tmp_path,
                                                               monkeypatch):
    """``--model here.py:fn`` was looked up in the Ray node's folder by the actors, not in
    the folder the batch was started from, as the local executor does."""
    from tiledepth.models import load_model
    from tiledepth.raypool import ray_pool

    (tmp_path / "here_model.py").write_text("def depth(batch):\n"
                                            "    return batch[..., 0] * 0.5 + 0.25\n")
    monkeypatch.chdir(tmp_path)  # the actors' processes run in another folder
    batch = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    with ray_pool(make_options(model="here_model.py:depth"), actors=1) as pool:
        got = pool.predict(batch, [0, 1])
    np.testing.assert_allclose(got, batch[..., 0] * 0.5 + 0.25, rtol=0, atol=1e-7)
    # recorded (the output's tags, a checkpoint's identity) as by the local executor
    local = load_model("here_model.py:depth")
    assert pool.name == local.name == "here_model.py:depth"
    assert pool.identity == model_identity(local)


def test_no_ray_address_starts_a_local_ray_and_stops_what_a_failed_start_left(
        ray_local, monkeypatch):
    """ray.init(address=None) joined the cluster RAY_ADDRESS or the last `ray start` named
    (a dead one hung the batch) instead of starting the local Ray that --help promises."""
    from tiledepth.raypool import ray_pool

    inits, shutdowns = [], []

    def init(**kw):  # a local start that fails part way
        inits.append(kw["address"])
        raise RuntimeError("raylet failed to start")

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # which Ray's own default would join
    monkeypatch.setattr(ray_local, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.setattr(ray_local, "init", init)
    monkeypatch.setattr(ray_local, "shutdown", lambda: shutdowns.append(True))
    with pytest.raises(OptionError, match=r"cannot start or join a local Ray \(raylet failed"):
        with ray_pool(make_options(model="toy_models:red"), actors=1):
            pass
    assert inits == ["local"] and shutdowns == [True]


def test_a_sigterm_while_ray_starts_stops_the_batch_and_that_ray(ray_local, monkeypatch):
    """A SIGTERM during ray.init met Ray's own handler, sys.exit(15): exit 15 with no line,
    and the Ray processes started so far left running. Now the command line's handler takes
    it (exit 143) once the local Ray is up, and that Ray is shut down."""
    import signal
    import sys

    from tiledepth.raypool import ray_pool

    calls = []

    class Terminated(BaseException):
        pass

    def ours(signum, frame):  # as the command line's (exit 143)
        calls.append("ours")
        raise Terminated

    def init(**kw):  # as Ray's: installs its handler in the main thread, then starts
        ray_local._private.utils.set_sigterm_handler(lambda *args: sys.exit(15))
        signal.raise_signal(signal.SIGTERM)
        calls.append("started")

    monkeypatch.setattr(ray_local, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_local, "init", init)
    monkeypatch.setattr(ray_local, "shutdown", lambda: calls.append("shutdown"))
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        with pytest.raises(Terminated):
            with ray_pool(make_options(model="toy_models:red"), actors=1):
                pass
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == ["started", "ours", "shutdown"]


#: A script that runs a Ray batch (a local Ray of its own), then relies on its SIGTERM handler;
#: and finds faulthandler off, as it was, and the fatal signals' handlers as they were (in
#: Python and, on Linux, below it: a struct sigaction's first field is its handler).
AFTER_A_RAY_BATCH = """
import ctypes, faulthandler, signal, sys
import numpy as np
from tiledepth.options import make_options
from tiledepth.raypool import ray_pool

FATAL = [signal.SIGBUS, signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGILL]

def handlers():
    below = []
    if sys.platform.startswith("linux"):
        for signum in FATAL:
            action = ctypes.create_string_buffer(256)
            ctypes.CDLL(None).sigaction(signum, None, action)
            below.append(ctypes.c_void_p.from_buffer(action).value)
    return [signal.getsignal(s) for s in [signal.SIGTRAP, *FATAL]], below

faulthandler.disable()  # whatever PYTHONFAULTHANDLER says
before = handlers()
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
with ray_pool(make_options(model="toy_models:red"), actors=1) as pool:
    pool.predict(np.zeros((1, 32, 32, 3), np.float32), [0])
print("faulthandler", faulthandler.is_enabled(), "handlers kept", handlers() == before)
signal.raise_signal(signal.SIGTERM)
print("handled", got)
"""


def test_a_sigterm_after_a_ray_batch_reaches_the_callers_handler():
    """ray.shutdown put SIGTERM back to the default action below Python, which still named
    the script's handler: the first SIGTERM after a Ray batch killed the script (-15), and
    its handler never ran. ray.init also enabled faulthandler, left on after the batch, and
    Ray's C++ failure handler stayed on SIGBUS: faulthandler is disabled again, which puts
    back the handlers it saved (SIGTRAP keeps Ray's, below Python, which names the default
    there). In a child: its Ray is the one ray_pool starts and shuts down."""
    import subprocess
    import sys

    from conftest import child_env

    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, "-c", AFTER_A_RAY_BATCH], capture_output=True,
                          text=True, env=child_env(), timeout=240)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.splitlines()[-2:] == ["faulthandler False handlers kept True",
                                             "handled [15]"]


def test_a_ray_address_that_answers_but_is_no_ray_fails_in_one_line(http_root, tmp_path):
    """--ray-address at a port that answers but is no Ray GCS (the dashboard's 8265, an HTTP
    server) hung the batch: ray.init tried 20 times, ~41 s each, with Ray's log lines only;
    its error, once there, quoted the header of a traceback."""
    import subprocess
    import sys
    import time

    from conftest import child_env

    pytest.importorskip("ray")
    src = write_raster(tmp_path / "in.tif", depth_image(120, 150))
    address = http_root.base.removeprefix("http://")  # 127.0.0.1:PORT, answering HTTP
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tiledepth.cli", "batch", str(src), "-o", str(tmp_path / "out"),
         "--executor", "ray", "--ray-address", address, "--model", "toy_models:red",
         "--no-progress"], capture_output=True, text=True, env=child_env(), timeout=40)
    assert time.perf_counter() - t0 < 40
    assert proc.returncode == 2, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("tiledepth")]
    port = address.rpartition(":")[2]
    assert len(ours) == 1, proc.stderr
    assert ours[0].startswith(f"tiledepth: error: cannot start or join the Ray cluster at "
                              f"'{address}' (Timed out while waiting for GCS")
    assert ours[0].endswith(f"check --ray-address: is {port} the head node's GCS port (6379 "
                            "by default, as `ray start --head` prints it; not the dashboard's "
                            "8265)?")
    assert "Traceback" not in proc.stderr


def fails_slowly_if_dark(batch: np.ndarray) -> np.ndarray:
    """Raises after 0.3 s on a black batch (the batches behind it are still on the actor when
    it fails); the red channel of any other."""
    import time

    time.sleep(0.3)
    if not batch.any():
        raise RuntimeError("no depth here")
    return batch[..., 0].copy()


def test_a_failed_ray_batch_collects_the_other_batches_of_its_run(ray_local, monkeypatch):
    """A model error on one batch left the run's other batches unread: Ray printed each one's
    error, a 15-line "Unhandled error" traceback, once the run dropped them; the one-line
    record was all the local executor printed."""
    import gc
    import threading
    import time

    from tiledepth.raypool import ray_pool

    unhandled = []  # what Ray would print as "Unhandled error"
    monkeypatch.setattr(ray_local._private.worker, "_unhandled_error_handler",
                        unhandled.append)
    dark, bright = np.zeros((1, 32, 32, 3), np.float32), np.ones((1, 32, 32, 3), np.float32)
    with ray_pool(make_options(model="test_raypool:fails_slowly_if_dark", batch_size=1),
                  actors=1) as pool:
        handles = [pool.submit(dark, [k]) for k in range(3)]
        other = []  # a batch of another run (another thread), behind them on the actor
        thread = threading.Thread(target=lambda: other.append(pool.submit(bright, [9])))
        thread.start()
        thread.join()
        with pytest.raises(ModelError, match="no depth here"):
            pool.result(handles[0])
        # the run's other batches were waited for (Ray runs an actor's queued batch all the
        # same) and read; the other run's batch is neither cancelled nor read
        assert all(ray_local.wait([h.ref], timeout=0)[0] for h in handles)
        np.testing.assert_array_equal(pool.result(other[0]), np.ones((1, 32, 32)))
        del handles
        gc.collect()
        time.sleep(1.0)  # (Ray reports a dropped error soon after, from a thread of its own)
    assert unhandled == []
