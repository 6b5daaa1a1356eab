"""The declared interfaces: every implementation offers its protocol's members, and the
places that tell a model from a pool, or a model object from a name, go by them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import depth_image, write_raster
from rasterio.windows import Window
from toy_models import affine_red

from tiledepth import protocols
from tiledepth.aoi import AreaReader, area_of_interest
from tiledepth.checkpoint import Checkpoint
from tiledepth.infer import LocalPool, as_pool
from tiledepth.models import load_model
from tiledepth.models.base import CallableModel
from tiledepth.raypool import RayModelPool
from tiledepth.readers import ArrayReader, RasterReader, ScaledReader
from tiledepth.scratch import DiskStore, MemoryStore
from tiledepth.stages import TileParts
from tiledepth.tiling import tile_grid
from tiledepth.write import ArraySink, GeoTiffWriter


def members(protocol: type) -> set[str]:
    """The attributes and methods a protocol declares (its own and its bases')."""
    names = set()
    for cls in protocol.__mro__:
        if cls is object or cls.__name__ in ("Protocol", "Generic"):
            continue
        names |= {n for n in vars(cls) if not n.startswith("_") or n == "__contains__"}
        names |= set(getattr(cls, "__annotations__", {}))
    return names - {"__annotations__"}


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    """Each reader, made over a small GeoTIFF (instance attributes count too)."""
    src = write_raster(tmp_path_factory.mktemp("protocols") / "in.tif", depth_image(40, 60))
    with RasterReader(src) as reader:
        ds = reader.dataset
        area = area_of_interest(ds.height, ds.width, ds.transform, ds.crs,
                                bounds=(500005.0, 5399985.0, 500020.0, 5399995.0))
        yield {"raster": reader, "array": ArrayReader(np.zeros((20, 30, 3), np.float32)),
               "scaled": ScaledReader(reader, 0.5), "area": AreaReader(reader, area)}


@pytest.mark.parametrize(("protocol", "names"), [
    (protocols.Reader, ["raster", "array", "scaled", "area"]),
    (protocols.MaskedReader, ["raster", "array", "area"]),
])
def test_every_reader_offers_its_protocols_members(readers, protocol, names):
    wanted = members(protocol)
    assert {"height", "width", "iter_tiles", "read_coarse"} <= wanted
    for name in names:
        missing = {n for n in wanted if not hasattr(readers[name], n)}
        assert missing == set(), f"{name} lacks {sorted(missing)}"


@pytest.mark.parametrize(("protocol", "implementations"), [
    (protocols.Sink, [GeoTiffWriter, ArraySink(4, 5)]),
    (protocols.TileStore, [MemoryStore(), DiskStore, Checkpoint]),
    (protocols.ModelPool, [LocalPool, RayModelPool]),
])
def test_every_implementation_offers_its_protocols_members(protocol, implementations):
    wanted = members(protocol)
    assert len(wanted) >= 2
    for impl in implementations:
        missing = {n for n in wanted if not hasattr(impl, n)}
        name = getattr(impl, "__name__", type(impl).__name__)
        assert missing == set(), f"{name} lacks {sorted(missing)}"


def test_every_sink_takes_the_values_unit(tmp_path):
    """``set_units`` (what a metric run calls on its sink) works on each sink: the
    GeoTIFF's bands carry the unit, the array sink keeps it."""
    from tiledepth.write import OutputGrid

    array_sink = ArraySink(4, 5)
    assert array_sink.units is None
    array_sink.set_units("metre")
    assert array_sink.units == "metre"
    path = tmp_path / "out.tif"
    with GeoTiffWriter(path, OutputGrid(4, 5), bands=("depth", "spread")) as sink:
        sink.write(Window(0, 0, 5, 4), np.ones((4, 5), np.float32))
        sink.write(Window(0, 0, 5, 4), np.ones((4, 5), np.float32), 2)
        sink.set_units("metre")
    import rasterio

    with rasterio.open(path) as ds:
        assert ds.units == ("metre", "metre")


def test_a_model_becomes_a_pool_of_one_and_a_pool_stays_as_it_is():
    model = CallableModel(affine_red, batch_size=2)
    assert isinstance(model, protocols.DepthModel)
    assert not isinstance(model, protocols.ModelPool)
    pool, wrapped = as_pool(model)
    assert wrapped and isinstance(pool, LocalPool)
    batch = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_array_equal(pool.result(pool.submit(batch, [0, 1])),
                                  model.predict(batch, [0, 1]))
    pool.close()
    assert as_pool(pool) == (pool, False)
    assert load_model(model) is model  # a loaded model is used as is


def test_a_memory_store_has_nothing_to_flush_and_nothing_on_disk():
    store = MemoryStore()
    store.put(3, np.ones((2, 2), np.float32), np.ones((2, 2), bool))
    store.flush()
    assert store.disk_bytes() == 0 and 3 in store


def test_tile_parts_under_a_window_are_the_tiles_that_intersect_it():
    grid = tile_grid(300, 340, 64, 0.25)
    tiles = [t for row in grid for t in row]
    parts = TileParts(grid, {}, set(), MemoryStore(), np.zeros((4, 4), np.float32), (300, 340))
    for window in [Window(0, 0, 340, 1), Window(100, 37, 5, 200), Window(339, 299, 1, 1),
                   Window(48, 48, 16, 16)]:
        rows, cols = window.toslices()
        want = [t.id for t in tiles
                if t.window.row_off < rows.stop and rows.start < t.window.row_off + t.shape[0]
                and t.window.col_off < cols.stop and cols.start < t.window.col_off + t.shape[1]]
        assert [t.id for t in parts._touching(window)] == want and want
    assert [t.id for t in parts._touching(None)] == [t.id for t in tiles]


class _Loaded:
    """A loaded model of the user's: it runs with the steps and batch size it was made with."""

    name, batch_size, steps = "mine", 2, 3

    def predict(self, batch, keys):
        return batch[..., 0] * 0.5 + 0.1


class _FixedBatch(_Loaded):
    """A loaded model whose batch size cannot be set."""

    @property
    def batch_size(self):
        return 2


class _Pool(_Loaded):
    """A pool of models (as Ray's), loaded where they run with the run's own options."""

    def submit(self, batch, keys):
        return self.predict(batch, keys)

    def result(self, handle):
        return handle


def test_a_loaded_model_refuses_the_options_it_would_ignore(tmp_path):
    import tiledepth
    from tiledepth.errors import OptionError

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    out = tmp_path / "out.tif"
    for options, said in (({"steps": 5}, r"steps=5 \(it has 3\)"),
                          ({"ensemble": 2}, r"ensemble=2 \(it has none\)"),
                          ({"steps": 4, "dtype": "fp16"},
                           r"steps=4 \(it has 3\), dtype=fp16 \(it has none\) would do "
                           "nothing; set them when loading the model")):
        with pytest.raises(OptionError, match=said):
            tiledepth.run(src, out, model=_Loaded(), tile_size=32, **options)
    with pytest.raises(OptionError, match=r"batch_size=8 \(it has 2\)"):  # not settable
        tiledepth.run(src, out, model=_FixedBatch(), tile_size=32, batch_size=8)
    assert not out.exists()

    # what it has passes, a seed too (a deterministic model has none to set); a batch size
    # (tiles per call) is set on it
    loaded = _Loaded()
    tiledepth.run(src, out, model=loaded, tile_size=32, steps=3, batch_size=5, seed=4)
    assert loaded.batch_size == 5
    # a pool was loaded with the run's options: what it does not say passes
    tiledepth.run(src, out, model=_Pool(), tile_size=32, ensemble=2, device="cuda",
                  overwrite=True)


# a model object's output, checked as a callable's: half resolution, NaN and a (B, H, W, 1) or
# a list (which a callable may return)
class _Half(_Loaded):
    def predict(self, batch, keys):
        return batch[:, ::2, ::2, 0]


class _NaNs(_Loaded):
    def predict(self, batch, keys):
        out = batch[..., 0] * 0.5 + 0.1
        out[:, 0, 0] = np.nan
        return out


class _Channel(_Loaded):
    def predict(self, batch, keys):
        return super().predict(batch, keys)[..., None]


class _List(_Loaded):
    def predict(self, batch, keys):
        return super().predict(batch, keys).tolist()


class _NaNPool(_Pool, _NaNs):
    """A pool (as Ray's, whose actors call a model object as it is) returning NaN."""


def test_a_model_objects_output_is_checked_as_a_callables():
    import tiledepth
    from tiledepth.errors import ModelError

    image = np.random.default_rng(6).random((80, 100, 3), dtype=np.float32)
    for model, said in ((_Half(), r"model 'mine' returned shape \(\d+, \d+, \d+\) for a "
                                  r"batch of shape \(\d+, \d+, \d+, 3\); it must return"),
                        (_NaNs(), r"model 'mine' returned \d+ NaN and 0 inf values in a batch"),
                        (_NaNPool(), r"model 'mine' returned \d+ NaN and 0 inf values")):
        with pytest.raises(ModelError, match=said) as caught:
            tiledepth.estimate(image, model=model, tile_size=32)
        assert "\n" not in str(caught.value)
    # accepted as from a callable, with the same depth map
    want = tiledepth.estimate(image, model=lambda b: b[..., 0] * 0.5 + 0.1, tile_size=32)
    for model in (_Channel(), _List(), _Pool()):
        np.testing.assert_array_equal(tiledepth.estimate(image, model=model, tile_size=32), want)


def test_the_ray_start_warning_says_what_each_actor_takes(monkeypatch, caplog):
    """An actor takes one GPU where there are GPUs, and its share of the CPUs (1 to 4)."""
    from types import SimpleNamespace

    from tiledepth import raypool
    from tiledepth.options import make_options

    info = {"name": "mine", "batch_size": 2, "steps": None, "identity": "x"}
    actor = SimpleNamespace(info=SimpleNamespace(remote=lambda: info))
    started = SimpleNamespace(remote=lambda *args: actor)

    class FakeRay:  # a cluster of 8 CPUs and ``gpus`` GPUs whose actors start late
        def __init__(self, gpus):
            self.gpus = gpus

        def is_initialized(self):
            return True

        def cluster_resources(self):
            return {"CPU": 8, "GPU": self.gpus}

        def remote(self, cls):
            return SimpleNamespace(options=lambda **resources: started)

        def wait(self, refs, num_returns, timeout):
            return [], refs  # none ready in time: the warning

        def get(self, refs):
            return refs

        def kill(self, handle):
            pass

    for gpus, actors, said in ((0, 2, "each needs 4 CPUs)"), (0, 8, "each needs 1 CPU)"),
                               (2, None, "each needs one GPU and 4 CPUs)")):
        monkeypatch.setattr(raypool, "import_ray", lambda g=gpus: FakeRay(g))
        caplog.clear()
        with caplog.at_level("WARNING", logger="tiledepth.raypool"), \
                raypool.ray_pool(make_options(model="mymodels:depth"), actors=actors):
            pass
        assert said in caplog.text, caplog.text


class _Sure(_Loaded):
    """A loaded model that says how sure it is by itself (no ensemble)."""

    def predict_with_uncertainty(self, batch, keys):
        return self.predict(batch, keys), np.full(batch.shape[:3], 0.01, np.float32)


class _Forgetful(_Sure):
    """Breaks the contract: predict_with_uncertainty returns the depth alone."""

    def predict_with_uncertainty(self, batch, keys):
        return self.predict(batch, keys)


def test_a_model_that_gives_its_own_uncertainty_needs_no_ensemble_and_none_is_tagged(tmp_path):
    """A loaded model with predict_with_uncertainty and no ensemble was refused "uncertainty
    needs ensemble >= 2" unless ensemble=3 was passed, and its output then tagged
    TILEDEPTH_ENSEMBLE 3, though nothing was ensembled."""
    import rasterio

    import tiledepth

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    for n, extra in enumerate(({}, {"ensemble": 3})):
        out = tiledepth.run(src, tmp_path / f"o{n}.tif", model=_Sure(), tile_size=32,
                            uncertainty=True, **extra).output
        with rasterio.open(out) as ds:
            assert ds.descriptions == ("depth", "uncertainty")
            assert ds.tags()["TILEDEPTH_ENSEMBLE"] == "1"
            assert np.allclose(ds.read(2)[np.isfinite(ds.read(2))], 0.01, rtol=0.5)
    # an ensemble's uncertainty still needs one: a name, a model with an ensemble
    from tiledepth.errors import OptionError
    from tiledepth.options import make_options

    with pytest.raises(OptionError, match="uncertainty needs ensemble >= 2"):
        make_options(model="marigold-v1-1", uncertainty=True)
    with_ensemble = _Sure()
    with_ensemble.ensemble = 1
    with pytest.raises(OptionError, match="uncertainty needs ensemble >= 2"):
        make_options(model=with_ensemble, uncertainty=True)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_broken_predict_with_uncertainty_is_one_model_error(tmp_path, batch_size):
    """A result that is not a (depth, uncertainty) pair was a bare ValueError ("not enough
    values to unpack"), or with a batch of 2 tiles unpacked as the pair."""
    import tiledepth
    from tiledepth.errors import ModelError

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    with pytest.raises(ModelError, match=r"model 'mine': predict_with_uncertainty returned "
                                         r"an array of shape \(\d, \d+, \d+\); it must return a "
                                         r"pair \(depth, uncertainty\), both \(B, H, W\)"):
        tiledepth.run(src, tmp_path / "o.tif", model=_Forgetful(), tile_size=32,
                      uncertainty=True, batch_size=batch_size)
