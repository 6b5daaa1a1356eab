"""Tests for tiledepth.models.depth_anything, on tiny random checkpoints (CPU, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import depth_image, write_raster

from tiledepth import fusion
from tiledepth.cli import main
from tiledepth.errors import ModelLoadError, OptionError
from tiledepth.models import depth_anything, load_model


@pytest.fixture(scope="module")
def da_folder(tmp_path_factory) -> str:
    from transformers_fixture import make_tiny_depth_anything

    return make_tiny_depth_anything(tmp_path_factory.mktemp("da") / "tiny-da")


@pytest.fixture(scope="module")
def da_metric_folder(tmp_path_factory) -> str:
    from transformers_fixture import make_tiny_depth_anything

    return make_tiny_depth_anything(tmp_path_factory.mktemp("dam") / "tiny-da-metric", metric=True)


@pytest.fixture
def fits(monkeypatch) -> list:
    """Record the ``fit`` every alignment is solved with."""
    seen = []
    real = fusion.solve_alignment

    def spy(*args, **kwargs):
        seen.append(kwargs.get("fit"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fusion.solve, "solve_alignment", spy)
    return seen


def test_load_by_folder_predicts_disparity(da_folder: str) -> None:
    model = load_model(da_folder, device="cpu", batch_size=3)
    tiles = np.random.default_rng(0).random((2, 50, 45, 3), dtype=np.float32)

    out = model.predict(tiles, [0, 1])

    assert isinstance(model, depth_anything.DepthAnythingModel)
    assert (model.kind, model.patch, model.batch_size, model.name) == ("disparity", 14, 3,
                                                                       da_folder)
    assert out.shape == (2, 50, 45) and out.dtype == np.float32
    assert np.isfinite(out).all()
    # Padding to 56 x 56 and cropping back leaves the tile's own pixels where they were: the
    # prediction of the tile equals the crop of the prediction of the padded tile.
    padded = np.pad(tiles, ((0, 0), (0, 6), (0, 11), (0, 0)), mode="edge")
    np.testing.assert_allclose(model.predict(padded, [0, 1])[:, :50, :45], out, atol=1e-6)


def test_predict_keeps_the_array_read_back_without_a_second_copy(
        da_folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host array read back from the model's output tensor is new each call: predict returns
    it as it is (it was copied again, one extra host copy per batch)."""
    model = load_model(da_folder, device="cpu", batch_size=2)
    tiles = np.random.default_rng(2).random((2, 42, 42, 3), dtype=np.float32)
    made = []
    real = model._predict_chunk

    def spy(batch, keys):
        made.append(real(batch, keys))
        return made[-1]

    monkeypatch.setattr(model, "_predict_chunk", spy)
    out = model.predict(tiles, [0, 1])

    assert len(made) == 1 and np.shares_memory(out, made[0])
    assert out.shape == (2, 42, 42) and out.dtype == np.float32 and np.isfinite(out).all()
    again = model.predict(tiles, [0, 1])  # a new array: the first one stays as it was
    assert not np.shares_memory(again, out)
    np.testing.assert_array_equal(again, out)


def test_metric_checkpoint_is_metric_depth(da_metric_folder: str) -> None:
    model = depth_anything.load_depth_anything(da_metric_folder, device="cpu")

    out = model.predict(np.full((1, 28, 28, 3), 0.5, np.float32), [0])

    assert model.kind == "metric_depth"
    assert out.shape == (1, 28, 28) and (out >= 0).all() and (out <= 20).all()


def test_padded_side() -> None:
    assert [depth_anything.padded_side(s) for s in (1, 13, 14, 15, 518, 768)] == [
        14, 14, 14, 28, 518, 770]
    with pytest.raises(ValueError, match="side"):
        depth_anything.padded_side(0)


def test_wraps_a_loaded_transformers_model(da_folder: str) -> None:
    from transformers import AutoModelForDepthEstimation

    raw = AutoModelForDepthEstimation.from_pretrained(da_folder)
    model = load_model(raw, batch_size=2)
    by_path = load_model(da_folder, device="cpu")
    tile = np.random.default_rng(1).random((1, 40, 40, 3), dtype=np.float32)

    assert model.kind == "disparity"
    np.testing.assert_allclose(model.predict(tile, [0]), by_path.predict(tile, [0]), atol=1e-6)
    with pytest.raises(OptionError, match="ensemble"):
        load_model(raw, ensemble=3)


def test_a_loaded_transformers_model_runs_on_its_own_device_and_dtype(da_folder: str) -> None:
    """device= and dtype= did nothing for a loaded model, and the tags recorded them."""
    from transformers import AutoModelForDepthEstimation

    import tiledepth

    raw = AutoModelForDepthEstimation.from_pretrained(da_folder)  # fp32 on the CPU
    image = np.random.default_rng(2).random((50, 60, 3), dtype=np.float32)
    for option, value, own in (("dtype", "bf16", "fp32"), ("device", "cuda", "cpu")):
        with pytest.raises(OptionError, match=rf"is a loaded model, run as it was loaded: "
                                              rf"{option}={value} \(it has {own}\) would do "
                                              "nothing"):
            tiledepth.estimate(image, model=raw, tile_size=56, **{option: value})
    depth = tiledepth.estimate(image, model=raw, tile_size=56, device="cpu", dtype="fp32")
    assert depth.shape == (50, 60) and np.isfinite(depth).all()


@pytest.mark.parametrize(("option", "value"), [("steps", 4), ("ensemble", 2)])
def test_diffusion_options_are_rejected(da_folder: str, option: str, value: int) -> None:
    with pytest.raises(OptionError, match=option):
        depth_anything.load_depth_anything(da_folder, device="cpu", **{option: value})


def test_wrong_checkpoint_type_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "depth_pro"}')

    with pytest.raises(ModelLoadError, match="model_type 'depth_pro'"):
        depth_anything.load_depth_anything(str(tmp_path), device="cpu")


def test_run_end_to_end_fuses_disparity_as_disparity(da_folder: str, tmp_path: Path,
                                                     fits: list) -> None:
    src = write_raster(tmp_path / "frame.tif", depth_image(96, 120))
    out = tmp_path / "frame.disp.tif"

    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model", da_folder,
                                       "--tile-size", "64", "--device", "cpu", "--no-progress"],
                                catch_exceptions=False)

    assert result.exit_code == 0, result.output
    # bilinear maps ('auto') are judged for outliers by an affine solve too: the same fit
    assert fits and set(fits) == {"scale_shift"}
    with rasterio.open(out) as ds:
        tags = ds.tags()
        data = ds.read(1)
    assert tags["TILEDEPTH_KIND"] == "disparity"
    assert tags["TILEDEPTH_FIT"] == "scale_shift"
    assert "disparity" in tags["TILEDEPTH_VALUES"]
    assert tags["TILEDEPTH_MODEL"] == da_folder
    assert data.shape == (96, 120) and np.isfinite(data).all()


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_a_damaged_checkpoint_is_a_load_error_naming_the_folder(da_folder: str, tmp_path: Path,
                                                                 damage: str) -> None:
    import json
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(da_folder, folder)
    if damage == "weights":  # a download cut short: safetensors' own error type
        (folder / "model.safetensors").write_bytes(b"\x01\x02not safetensors")
    else:  # a hand-edited config: transformers' own validation error type
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, backbone_config=5)))

    with pytest.raises(ModelLoadError, match="cannot load the Depth Anything checkpoint") as info:
        load_model(str(folder), device="cpu")

    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_a_cached_snapshot_without_weights_says_how_to_fetch_them(hub_offline: Path,
                                                                  da_folder: str) -> None:
    import shutil

    repo_cache = hub_offline / "models--depth-anything--Depth-Anything-V2-Small-hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(da_folder, repo_cache / "snapshots" / commit,
                    ignore=shutil.ignore_patterns("*.safetensors"))
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)

    with pytest.raises(ModelLoadError) as info:
        load_model("depth-anything-v2-small", device="cpu")

    assert "hf download depth-anything/Depth-Anything-V2-Small-hf" in str(info.value)


@pytest.mark.parametrize("ensemble", [1, 3])
def test_uncertainty_is_refused_as_deterministic_first(da_folder: str, ensemble: int) -> None:
    from tiledepth.models import deterministic_family
    from tiledepth.options import make_options

    # not "needs ensemble >= 2" and then, with an ensemble, "use ensemble=1"
    for model in (da_folder, "depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Base-hf"):
        with pytest.raises(OptionError, match=r"Depth Anything gives no uncertainty \(it is "
                                              "deterministic"):
            make_options(model=model, uncertainty=True, ensemble=ensemble)
    assert deterministic_family(load_model(da_folder, device="cpu")) == "Depth Anything"
    assert deterministic_family("marigold-v1-1") is None
    assert deterministic_family("mymodels:depth") is None
