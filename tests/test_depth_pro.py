"""Tests for tiledepth.models.depth_pro, on a tiny random checkpoint (CPU, no network)."""

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
from tiledepth.models import depth_pro, load_model


@pytest.fixture(scope="module")
def dp_folder(tmp_path_factory) -> str:
    from transformers_fixture import make_tiny_depth_pro

    return make_tiny_depth_pro(tmp_path_factory.mktemp("dp") / "tiny-depth-pro")


def test_load_by_folder_predicts_metric_depth(dp_folder: str) -> None:
    model = load_model(dp_folder, device="cpu")
    tiles = np.random.default_rng(0).random((2, 48, 40, 3), dtype=np.float32)

    out = model.predict(tiles, [3, 4])

    assert isinstance(model, depth_pro.DepthProModel)
    assert (model.kind, model.side) == ("metric_depth", 32)
    assert out.shape == (2, 48, 40) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out > 0).all()


def test_bf16_on_the_cpu_shrinks_a_large_tile(dp_folder: str) -> None:
    """A tile larger than the network's input is shrunk with antialiasing, which CPU torch
    has only in float32: at --dtype bf16 it is resized in float32 and cast (it raised
    NotImplementedError, an "unexpected" error); the depth is mostly close to float32's
    (a random network: where its inverse depth is near 0, bf16's rounding is large)."""
    tiles = np.random.default_rng(1).random((1, 64, 56, 3), dtype=np.float32)  # side 32
    half = load_model(dp_folder, device="cpu", dtype="bf16").predict(tiles, [0])
    full = load_model(dp_folder, device="cpu").predict(tiles, [0])
    assert half.shape == (1, 64, 56) and np.isfinite(half).all() and (half > 0).all()
    assert np.median(np.abs(half - full) / full) < 0.05


def test_metres_follow_the_field_of_view(dp_folder: str) -> None:
    # depth = 1 / (canonical inverse depth * 2 tan(fov / 2)), the transformers post-processing.
    import torch

    model = load_model(dp_folder, device="cpu")
    tile = np.random.default_rng(2).random((1, 32, 32, 3), dtype=np.float32)
    pixels = (torch.from_numpy(tile.transpose(0, 3, 1, 2)) - 0.5) / 0.5
    with torch.no_grad():
        raw = model.model(pixel_values=pixels)
    inverse = torch.nn.functional.interpolate(raw.predicted_depth[:, None], size=(32, 32),
                                              mode="bilinear", align_corners=False)[:, 0]
    factor = 2 * torch.tan(torch.deg2rad(raw.field_of_view) / 2)
    expected = 1 / (inverse * factor).clamp(1e-4, 1e4)

    np.testing.assert_allclose(model.predict(tile, [0]), expected.numpy(), rtol=1e-5)


def test_input_side_from_preprocessor_or_config(dp_folder: str) -> None:
    model = load_model(dp_folder, device="cpu")

    assert depth_pro.input_side(model.model.config, {}) == 32
    assert depth_pro.input_side(model.model.config, {"size": {"height": 1536,
                                                              "width": 1536}}) == 1536


def test_diffusion_options_are_rejected(dp_folder: str) -> None:
    with pytest.raises(OptionError, match="steps"):
        depth_pro.load_depth_pro(dp_folder, device="cpu", steps=2)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        depth_pro.load_depth_pro(str(tmp_path), device="cpu")


def test_hub_id_offline_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    with pytest.raises(ModelLoadError) as info:
        load_model("depth-pro", device="cpu")

    message = str(info.value)
    assert "\n" not in message
    assert "apple/DepthPro-hf" in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download apple/DepthPro-hf" in message


def test_run_end_to_end_fuses_metric_depth_with_scales_only(dp_folder: str, tmp_path: Path,
                                                            monkeypatch) -> None:
    affines = []
    real = fusion.solve_alignment

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        maps = result[0] if kwargs.get("return_judged") else result
        affines.append((kwargs.get("fit"), maps))
        return result

    monkeypatch.setattr(fusion.solve, "solve_alignment", spy)
    src = write_raster(tmp_path / "frame.tif", depth_image(80, 100))
    out = tmp_path / "frame.metric.tif"

    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model", dp_folder,
                                       "--tile-size", "48", "--device", "cpu", "--no-progress"],
                                catch_exceptions=False)

    assert result.exit_code == 0, result.output
    (fit, solved), *again = affines  # again: re-solved without tiles flagged inconsistent
    assert fit == "scale" and all(f == "scale" for f, _ in again)
    assert len(solved) == 6 and all(a.shift == 0.0 and a.scale > 0 for a in solved.values())
    with rasterio.open(out) as ds:
        tags = ds.tags()
        data = ds.read(1)
    assert (tags["TILEDEPTH_KIND"], tags["TILEDEPTH_FIT"]) == ("metric_depth", "scale")
    assert "metres" in tags["TILEDEPTH_VALUES"]
    assert np.isfinite(data).all() and (data > 0).all()


def test_uncertainty_is_refused_as_deterministic_first(dp_folder: str) -> None:
    from tiledepth.options import make_options

    for model, ensemble in ((dp_folder, 1), ("depth-pro", 3), ("apple/DepthPro-hf", 3)):
        with pytest.raises(OptionError, match=r"Depth Pro gives no uncertainty \(it is "
                                              "deterministic"):
            make_options(model=model, uncertainty=True, ensemble=ensemble)


def test_a_corrupt_weights_file_is_a_load_error_naming_the_folder(dp_folder: str,
                                                                  tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(dp_folder, folder)
    (folder / "model.safetensors").write_bytes(b"\x01\x02not safetensors")

    with pytest.raises(ModelLoadError, match="cannot load the Depth Pro checkpoint") as info:
        depth_pro.load_depth_pro(str(folder), device="cpu")

    assert str(folder) in str(info.value)
