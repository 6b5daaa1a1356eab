"""Tests for tiledepth.models.marigold, on a tiny random checkpoint (CPU, no network)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tiledepth.errors import ModelLoadError, OptionError
from tiledepth.models import marigold, marigold_ensemble, marigold_model
from tiledepth.models.base import DepthModel

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tiny_checkpoint: str) -> marigold.MarigoldModel:
    return marigold.load_marigold(tiny_checkpoint, device="cpu", dtype="fp32", batch_size=2)


@pytest.fixture
def tiles() -> np.ndarray:
    return np.random.default_rng(7).random((3, 40, 56, 3), dtype=np.float32)


# --------------------------------------------------------------------------- predict


def test_load_by_folder_and_predict(model: marigold.MarigoldModel, tiny_checkpoint: str,
                                    tiles: np.ndarray) -> None:
    assert isinstance(model, DepthModel)
    assert model.name == tiny_checkpoint
    assert (model.steps, model.ensemble, model.seed, model.batch_size) == (2, 1, 0, 2)
    assert model.pipe.text_encoder is None
    assert tuple(model.pipe.empty_text_embedding.shape) == (1, 2, 32)

    depth = model.predict(tiles[:2], [0, 1])

    assert depth.shape == (2, 40, 56)
    assert depth.dtype == np.float32
    assert np.isfinite(depth).all()
    assert depth.min() >= 0.0 and depth.max() <= 1.0
    assert depth.std() > 0  # not a constant map


def test_same_seed_same_output(tiny_checkpoint: str, model: marigold.MarigoldModel,
                               tiles: np.ndarray) -> None:
    again = marigold.load_marigold(tiny_checkpoint, device="cpu", seed=0)
    other = marigold.load_marigold(tiny_checkpoint, device="cpu", seed=1)

    first = model.predict(tiles, [0, 1, 2])

    np.testing.assert_array_equal(again.predict(tiles, [0, 1, 2]), first)
    assert np.abs(other.predict(tiles, [0, 1, 2]) - first).max() > 1e-2


def test_key_changes_noise(model: marigold.MarigoldModel, tiles: np.ndarray) -> None:
    same_tile = np.stack([tiles[0], tiles[0]])

    depth = model.predict(same_tile, [0, 1])

    assert np.abs(depth[0] - depth[1]).max() > 1e-2


def test_tile_does_not_depend_on_its_batch(model: marigold.MarigoldModel,
                                           tiles: np.ndarray) -> None:
    in_batch = model.predict(tiles, [10, 11, 12])
    alone = model.predict(tiles[1:2], [11])
    reordered = model.predict(tiles[::-1].copy(), [12, 11, 10])

    np.testing.assert_allclose(alone[0], in_batch[1], atol=1e-5)
    np.testing.assert_allclose(reordered[::-1], in_batch, atol=1e-5)


def test_ensemble(tiny_checkpoint: str, tiles: np.ndarray) -> None:
    model = marigold.load_marigold(tiny_checkpoint, device="cpu", ensemble=2, steps=1)

    depth = model.predict(tiles[:2], [0, 1])
    alone = model.predict(tiles[1:2], [1])

    assert (model.steps, model.ensemble) == (1, 2)
    assert depth.shape == (2, 40, 56)
    assert np.isfinite(depth).all()
    assert depth.min() >= 0.0 and depth.max() <= 1.0
    np.testing.assert_allclose(alone[0], depth[1], atol=1e-5)


def test_odd_tile_size_is_padded_and_cropped_back(model: marigold.MarigoldModel) -> None:
    tile = np.random.default_rng(3).random((1, 33, 21, 3), dtype=np.float32)

    depth = model.predict(tile, [5])

    assert depth.shape == (1, 33, 21)
    assert np.isfinite(depth).all()


def test_predict_keeps_the_array_read_back_without_a_second_copy(
        model: marigold.MarigoldModel, tiles: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host array read back from the pipeline's tensor is new each call: predict returns it
    as it is (it was copied again, one extra host copy per batch)."""
    made = []
    real = model._predict_chunk

    def spy(batch, keys, uncertainty=False):
        made.append(real(batch, keys, uncertainty))
        return made[-1]

    monkeypatch.setattr(model, "_predict_chunk", spy)
    depth = model.predict(tiles[:2], [0, 1])

    assert len(made) == 1 and np.shares_memory(depth, made[0])
    assert depth.shape == (2, 40, 56) and depth.dtype == np.float32
    again = model.predict(tiles[:2], [0, 1])  # a new array: the first one stays as it was
    assert not np.shares_memory(again, depth)
    np.testing.assert_array_equal(again, depth)


def test_predict_rejects_bad_batches(model: marigold.MarigoldModel, tiles: np.ndarray) -> None:
    with pytest.raises(ValueError, match="keys"):
        model.predict(tiles, [0, 1])
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.predict(tiles[..., :2], [0, 1, 2])


# --------------------------------------------------------------------------- from_pipeline


def _load_pipeline(folder: str):
    import torch
    from diffusers import MarigoldDepthPipeline
    from safetensors.torch import load_file

    pipe = MarigoldDepthPipeline.from_pretrained(folder, text_encoder=None, tokenizer=None)
    embedding = load_file(os.path.join(folder, marigold.EMPTY_TEXT_EMBEDDING_FILE))
    pipe.empty_text_embedding = embedding[marigold.EMPTY_TEXT_EMBEDDING_KEY].to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_from_pipeline_matches_load(tiny_checkpoint: str, model: marigold.MarigoldModel,
                                    tiles: np.ndarray) -> None:
    pipe = _load_pipeline(tiny_checkpoint)
    assert marigold.is_marigold_pipeline(pipe)

    wrapped = marigold.from_pipeline(pipe, batch_size=3)

    assert wrapped.steps == 2  # the checkpoint's default_denoising_steps
    np.testing.assert_allclose(wrapped.predict(tiles, [0, 1, 2]), model.predict(tiles, [0, 1, 2]),
                               atol=1e-6)


def test_a_callers_bf16_pipeline_is_left_as_it_was(tiny_checkpoint: str,
                                                  tiles: np.ndarray) -> None:
    """Its VAE decoder was upcast to float32 for good: the caller's own call of it then
    failed (bfloat16 input, float bias). It runs in float32 during tiledepth's calls only."""
    import torch

    pipe = _load_pipeline(tiny_checkpoint).to(torch.bfloat16)
    pipe.empty_text_embedding = pipe.empty_text_embedding.to(torch.bfloat16)
    wrapped = marigold.from_pipeline(pipe, steps=1)
    loaded = marigold.load_marigold(tiny_checkpoint, device="cpu", dtype="bf16", steps=1)

    depth = wrapped.predict(tiles[:1, :24, :32], [0])

    assert {p.dtype for p in pipe.vae.decoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.vae.post_quant_conv.parameters()} == {torch.bfloat16}
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    own = pipe(image, num_inference_steps=1, processing_resolution=0, output_type="pt",
               generator=torch.Generator().manual_seed(0))  # the caller's own call still runs
    assert tuple(own.prediction.shape) == (1, 1, 16, 16)
    # decoded in float32 all the same: as the pipeline tiledepth loads (and upcasts for good)
    np.testing.assert_array_equal(depth, loaded.predict(tiles[:1, :24, :32], [0]))
    assert next(loaded.pipe.vae.decoder.parameters()).dtype == torch.float32


def test_a_callers_pipeline_shows_no_progress_bars_in_tiledepths_calls(
        tiny_checkpoint: str, tiles: np.ndarray, capfd) -> None:
    """One diffusers bar per batch of tiles, whatever tiledepth's progress; the caller's own
    setting is back after each call."""
    import torch

    pipe = _load_pipeline(tiny_checkpoint)
    pipe.set_progress_bar_config(leave=False)  # the caller's: bars on
    capfd.readouterr()

    marigold.from_pipeline(pipe, steps=1).predict(tiles[:2], [0, 1])
    ours = capfd.readouterr().err
    pipe(torch.from_numpy(tiles[:1].transpose(0, 3, 1, 2).copy()), num_inference_steps=1,
         processing_resolution=0, output_type="pt")
    theirs = capfd.readouterr().err

    assert "Diffusion steps" not in ours and "Marigold predictions" not in ours
    assert pipe._progress_bar_config == {"leave": False}
    assert "Diffusion steps" in theirs  # the caller's own calls show them, as it asked
    del pipe._progress_bar_config  # never set by the caller: none set after either
    marigold.from_pipeline(pipe, steps=1).predict(tiles[:1], [0])
    assert "_progress_bar_config" not in vars(pipe)


def test_a_callers_pipeline_runs_on_its_own_device_and_dtype(tiny_checkpoint: str,
                                                             tmp_path: Path) -> None:
    """device= and dtype= did nothing for a loaded pipeline, and the tags recorded them."""
    import tiledepth

    pipe = _load_pipeline(tiny_checkpoint)  # fp32 on the CPU
    image = np.random.default_rng(1).random((40, 48, 3), dtype=np.float32)
    for option, value, own in (("dtype", "bf16", "fp32"), ("dtype", "fp16", "fp32"),
                               ("device", "cuda", "cpu")):
        with pytest.raises(OptionError, match=rf"^model {tiny_checkpoint!r} is a loaded model, "
                                              rf"run as it was loaded: {option}={value} \(it "
                                              rf"has {own}\) would do nothing"):
            tiledepth.estimate(image, model=pipe, tile_size=48, **{option: value})
    # what it is, or left unset: runs
    depth = tiledepth.estimate(image, model=pipe, tile_size=48, device="cpu", dtype="fp32",
                               steps=1)
    assert depth.shape == (40, 48) and np.isfinite(depth).all()


def test_stochastic_scheduler_stays_reproducible(tiny_checkpoint: str, tiles: np.ndarray) -> None:
    # LCMScheduler draws fresh noise between steps from torch's global generator.
    import torch
    from diffusers import LCMScheduler

    pipe = _load_pipeline(tiny_checkpoint)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    model = marigold.from_pipeline(pipe, steps=2, seed=3)

    torch.manual_seed(123)
    in_batch = model.predict(tiles, [0, 1, 2])
    torch.manual_seed(456)
    alone = model.predict(tiles[2:], [2])

    np.testing.assert_allclose(alone[0], in_batch[2], atol=1e-5)


def test_is_marigold_pipeline_rejects_other_objects() -> None:
    assert not marigold.is_marigold_pipeline(lambda batch: batch[..., 0])
    assert not marigold.is_marigold_pipeline(object())
    with pytest.raises(TypeError, match="MarigoldDepthPipeline"):
        marigold.from_pipeline(lambda batch: batch[..., 0])


# --------------------------------------------------------------------------- load errors


def test_empty_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)

    with pytest.raises(ModelLoadError, match="model_index.json") as info:
        marigold.load_marigold(str(folder), device="cpu")

    assert str(folder) in str(info.value)


def _broken_copy(tiny_checkpoint: str, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def _edit_index(folder: Path, **changes: object) -> None:
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(changes)
    index_path.write_text(json.dumps(index))


def test_other_pipeline_class_is_rejected(tiny_checkpoint: str, tmp_path: Path) -> None:
    # diffusers itself would load a normals checkpoint into the depth pipeline without a word.
    folder = _broken_copy(tiny_checkpoint, tmp_path, "normals")
    _edit_index(folder, _class_name="MarigoldNormalsPipeline")

    with pytest.raises(ModelLoadError, match="MarigoldNormalsPipeline") as info:
        marigold.load_marigold(str(folder), device="cpu")

    assert str(folder) in str(info.value)


def test_missing_component_is_named(tiny_checkpoint: str, tmp_path: Path) -> None:
    folder = _broken_copy(tiny_checkpoint, tmp_path, "no-unet")
    shutil.rmtree(folder / "unet")

    with pytest.raises(ModelLoadError, match="unet") as info:
        marigold.load_marigold(str(folder), device="cpu")

    assert str(folder) in str(info.value)


def test_missing_weights_file(tiny_checkpoint: str, tmp_path: Path) -> None:
    folder = _broken_copy(tiny_checkpoint, tmp_path, "no-weights")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()

    with pytest.raises(ModelLoadError) as info:
        marigold.load_marigold(str(folder), device="cpu")

    assert str(folder) in str(info.value)


def test_missing_text_embedding_is_named(tiny_checkpoint: str, tmp_path: Path) -> None:
    folder = _broken_copy(tiny_checkpoint, tmp_path, "no-embedding")
    (folder / marigold.EMPTY_TEXT_EMBEDDING_FILE).unlink()

    with pytest.raises(ModelLoadError, match=marigold.EMPTY_TEXT_EMBEDDING_FILE):
        marigold.load_marigold(str(folder), device="cpu")


def test_missing_folder_that_is_no_hub_id(tmp_path: Path) -> None:
    missing = str(tmp_path / "does" / "not" / "exist")

    with pytest.raises(ModelLoadError, match="--model") as info:
        marigold.load_marigold(missing, device="cpu")

    assert missing in str(info.value)


def test_file_instead_of_folder(tiny_checkpoint: str) -> None:
    index = os.path.join(tiny_checkpoint, "model_index.json")

    with pytest.raises(ModelLoadError, match="not a checkpoint folder") as info:
        marigold.load_marigold(index, device="cpu")

    assert index in str(info.value)


def test_hub_id_offline_and_not_cached(hub_offline: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        marigold.load_marigold("prs-eth/marigold-depth-v1-1", device="cpu")

    message = str(info.value)
    assert "\n" not in message
    assert "prs-eth/marigold-depth-v1-1" in message
    assert "hf download prs-eth/marigold-depth-v1-1" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "--model" in message
    assert "HF_HUB_OFFLINE is set" in message


def _repository_not_found() -> Exception:
    from huggingface_hub.errors import RepositoryNotFoundError

    # Its constructor wants an HTTP response; only the type matters here.
    error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    Exception.__init__(error, "404 Client Error: Repository Not Found")
    return error


@pytest.mark.parametrize(
    ("make_cause", "reason"),
    [
        (_repository_not_found, "no such repository"),
        (lambda: ConnectionRefusedError(111, "Connection refused"), "cannot be reached"),
    ],
)
def test_hub_id_download_failure_says_why(monkeypatch: pytest.MonkeyPatch, make_cause,
                                          reason: str) -> None:
    from diffusers import MarigoldDepthPipeline

    def download(name: str, **kwargs: object) -> str:
        # What diffusers raises when model_info failed and the cache lacks the files.
        raise OSError(f"Cannot load model {name}: the model is not fully cached") from make_cause()

    monkeypatch.setattr(MarigoldDepthPipeline, "download", download)

    with pytest.raises(ModelLoadError, match=reason) as info:
        marigold.load_marigold("someone/missing-model", device="cpu")

    assert "hf download someone/missing-model" in str(info.value)
    assert "--model" in str(info.value)


def test_cached_hub_id_loads_offline(hub_offline: Path, tiny_checkpoint: str,
                                     model: marigold.MarigoldModel, tiles: np.ndarray) -> None:
    # Lay the checkpoint out as huggingface_hub's cache does for a downloaded repo.
    repo_cache = hub_offline / "models--tiledepth-test--tiny-marigold"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_checkpoint, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)

    cached = marigold.load_marigold("tiledepth-test/tiny-marigold", device="cpu")

    assert cached.name == "tiledepth-test/tiny-marigold"
    np.testing.assert_array_equal(cached.predict(tiles, [0, 1, 2]), model.predict(tiles, [0, 1, 2]))


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("steps", 0, OptionError),
        ("ensemble", 0, OptionError),
        ("batch_size", 0, OptionError),
        ("seed", 1.5, TypeError),
        ("device", "tpu", OptionError),
        ("dtype", "fp64", OptionError),
    ],
)
def test_bad_options_fail_before_loading(option: str, value: object, error: type) -> None:
    # The checkpoint does not exist: the option must be rejected first.
    with pytest.raises(error, match=option):
        marigold.load_marigold("/no/such/checkpoint", **{option: value})


# --------------------------------------------------------------------------- options


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.usefixtures("no_accelerator")
def test_resolve_device_without_accelerator() -> None:
    assert marigold.resolve_device("auto") == "cpu"
    assert marigold.resolve_device("CPU") == "cpu"
    for device in ("cuda", "cuda:0", "mps"):
        with pytest.raises(OptionError, match="device='cpu'"):
            marigold.resolve_device(device)


@pytest.mark.usefixtures("two_gpus")
def test_resolve_device_with_gpus() -> None:
    assert marigold.resolve_device("auto") == "cuda"
    assert marigold.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(OptionError, match="2 CUDA device"):
        marigold.resolve_device("cuda:2")


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "", "cuda:-1"])
def test_resolve_device_unknown(device: str) -> None:
    with pytest.raises(OptionError, match="device"):
        marigold.resolve_device(device)


def test_resolve_dtype() -> None:
    import torch

    assert marigold.resolve_dtype("auto", "cpu") == torch.float32
    assert marigold.resolve_dtype("auto", "mps") == torch.float32
    assert marigold.resolve_dtype("auto", "cuda:1") == torch.float16
    assert marigold.resolve_dtype("fp32", "cuda") == torch.float32
    assert marigold.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert marigold.resolve_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(OptionError, match="fp32"):
        marigold.resolve_dtype("fp16", "cpu")
    with pytest.raises(OptionError, match="dtype"):
        marigold.resolve_dtype("float64", "cpu")


def test_tile_seed() -> None:
    seeds = {marigold_model.tile_seed(seed, key) for seed in range(4) for key in range(-1, 50)}

    assert len(seeds) == 4 * 51
    assert all(0 <= s < 2**63 for s in seeds)
    assert marigold_model.tile_seed(0, -1) == marigold_model.tile_seed(0, -1)


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import tiledepth.models.marigold as m\n"
        "assert not m.is_marigold_pipeline(lambda b: b)\n"
        "heavy = [name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr


def test_cli_uncertainty_band_with_marigold(tiny_checkpoint: str, tmp_path: Path) -> None:
    """Ensemble spread through the engine to band 2 (3 members: diffusers' median absolute
    deviation of 2 members is always 0); one 48 px tile, as the ensemble's alignment is slow."""
    from click.testing import CliRunner
    from conftest import depth_image, write_raster

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    out = tmp_path / "u.tif"
    result = CliRunner().invoke(main, [
        "run", str(src), "-o", str(out), "--model", tiny_checkpoint, "--device", "cpu",
        "--tile-size", "48", "--ensemble", "3", "--steps", "2", "--uncertainty",
        "--output-kind", "height", "--cog", "--preview", "--hillshade", "--no-progress"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.count == 2 and ds.descriptions == ("height", "uncertainty")
        assert ds.units == (None, None)  # relative: not calibrated
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        spread = ds.read(2)
    assert np.isfinite(spread).all() and spread.min() >= 0 and spread.max() > 0
    assert (tmp_path / "u.png").exists() and "1 tiles" in result.output
    pair = marigold.load_marigold(tiny_checkpoint, device="cpu", ensemble=2, steps=1)
    with pytest.raises(OptionError, match="ensemble >= 3"):  # as the docs say
        pair.predict_with_uncertainty(np.zeros((1, 32, 32, 3), np.float32), [0])
    # a run says so before its first model call (it warned, then failed at the first tile)
    twice = tmp_path / "u2.tif"
    result = CliRunner().invoke(main, [
        "run", str(src), "-o", str(twice), "--model", tiny_checkpoint, "--device", "cpu",
        "--tile-size", "48", "--ensemble", "2", "--steps", "1", "--uncertainty",
        "--no-progress"])
    assert result.exit_code != 0 and "--ensemble 3 or more" in result.output
    assert not twice.exists()


def test_a_long_run_says_what_it_is_doing(tiny_checkpoint: str, tmp_path: Path, capsys,
                                          monkeypatch, caplog) -> None:
    """Status lines for the model's loading and the coarse prediction; a slow CPU run warns."""
    from conftest import depth_image, write_raster

    import tiledepth
    from tiledepth import plan

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    from tiledepth import progress

    monkeypatch.setattr(plan, "SLOW_CPU_RUN_S", 0.0)  # every run is "slow"
    monkeypatch.setattr(progress, "STATUS_DELAY_S", 0.0)  # every step is "long"
    with caplog.at_level("WARNING", logger="tiledepth"):
        tiledepth.run(src, tmp_path / "o.tif", model=tiny_checkpoint, device="cpu",
                      tile_size=48, steps=1, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert f"tiledepth: loading the model {tiny_checkpoint} ..." in err
    assert "tiledepth: coarse prediction (48 x 40 px, 3 calls) ..." in err  # anchor_calls
    assert any(line.startswith("tiledepth: coarse prediction (48 x 40 px, 3 calls): done in ")
               for line in err)
    slow = [r.getMessage() for r in caplog.records if "on a CPU" in r.getMessage()]
    assert len(slow) == 1 and "--model marigold-e2e-ft" in slow[0] and "GPU" in slow[0]


# --------------------------------------------------------------------------- the family


def test_e2e_ft_is_one_deterministic_step_from_zero_noise(e2e_checkpoint: str,
                                                          tiles: np.ndarray) -> None:
    load = dict(device="cpu", noise="zeros", timestep_spacing="trailing")
    model = marigold.load_marigold(e2e_checkpoint, **load)
    other_seed = marigold.load_marigold(e2e_checkpoint, seed=7, **load)

    depth = model.predict(tiles[:2], [0, 1])

    assert (model.steps, model.noise, model.kind) == (1, "zeros", "depth")
    assert model.pipe.scheduler.config.timestep_spacing == "trailing"
    model.pipe.scheduler.set_timesteps(1)
    assert model.pipe.scheduler.timesteps.tolist() == [999]
    np.testing.assert_array_equal(other_seed.predict(tiles[:2], [0, 1]), depth)
    np.testing.assert_allclose(model.predict(tiles[:1], [42])[0], depth[0], atol=1e-5)  # no key
    assert depth.std() > 0


def test_plain_sd_index_needs_the_e2e_settings(e2e_checkpoint: str) -> None:
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline"):
        marigold.load_marigold(e2e_checkpoint, device="cpu")
    with pytest.raises(OptionError, match="ensemble=2"):
        marigold.load_marigold(e2e_checkpoint, device="cpu", noise="zeros", ensemble=2)
    with pytest.raises(OptionError, match="noise"):
        marigold.load_marigold(e2e_checkpoint, device="cpu", noise="pink")


def test_registry_e2e_ft_runs_offline_end_to_end(hub_offline: Path, e2e_checkpoint: str,
                                                 tmp_path: Path) -> None:
    import rasterio
    from click.testing import CliRunner
    from conftest import depth_image, write_raster

    from tiledepth.cli import main

    repo_cache = hub_offline / "models--GonzaloMG--marigold-e2e-ft-depth"
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    shutil.copytree(e2e_checkpoint, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    src = write_raster(tmp_path / "ortho.tif", depth_image(48, 72))
    out = tmp_path / "e2e.tif"
    args = ["run", str(src), "-o", str(out), "--model", "marigold-e2e-ft", "--tile-size", "48",
            "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        depth = ds.read(1)
        tags = ds.tags()

    assert tags["TILEDEPTH_MODEL"] == "GonzaloMG/marigold-e2e-ft-depth"
    assert (tags["TILEDEPTH_STEPS"], tags["TILEDEPTH_KIND"]) == ("1", "depth")
    assert np.isfinite(depth).all()
    # deterministic: a seed would change no pixel, only the SEED tag (it is refused)
    result = CliRunner().invoke(main, args + ["--seed", "9", "--overwrite"])
    assert result.exit_code == 2 and "seed=9" in result.output
    assert "is deterministic and draws no noise" in result.output


def test_the_e2e_ft_model_takes_no_seed_and_gives_no_uncertainty(e2e_checkpoint: str,
                                                                  tiny_checkpoint: str) -> None:
    """It draws no noise: a seed changed no pixel, only the SEED tag; and with uncertainty
    its ensemble was refused ("use ensemble=1"), then ensemble 1 for the uncertainty."""
    from tiledepth.models import deterministic_family
    from tiledepth.options import make_options

    loaded = marigold.load_marigold(e2e_checkpoint, device="cpu", noise="zeros",
                                    timestep_spacing="trailing")
    name = "the end-to-end fine-tuned Marigold (zero noise)"
    for model in ("marigold-e2e-ft", "GonzaloMG/marigold-e2e-ft-depth", e2e_checkpoint,
                  Path(e2e_checkpoint), loaded):
        assert deterministic_family(model) == name
        with pytest.raises(OptionError, match=rf"^seed=5: {re.escape(name)} is deterministic "
                                              "and draws no noise"):
            make_options(model=model, seed=5)
        for ensemble in (1, 3):
            with pytest.raises(OptionError, match=rf"^uncertainty: {re.escape(name)} gives no "
                                                  "uncertainty"):
                make_options(model=model, uncertainty=True, ensemble=ensemble)
    # a diffusion Marigold draws noise: a seed is its own
    for model in ("marigold-v1-1", "marigold-lcm", tiny_checkpoint):
        assert deterministic_family(model) is None
        assert make_options(model=model, seed=5).seed == 5


def test_ensemble_aligns_on_the_device(tiny_checkpoint: str, tiles: np.ndarray,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = marigold_ensemble.ensemble_depth

    def spy(depth, scale_invariant, shift_invariant, output_uncertainty, **kwargs):
        seen.append(kwargs)
        return real(depth, scale_invariant, shift_invariant, output_uncertainty, **kwargs)

    monkeypatch.setattr(marigold_model, "ensemble_depth", spy)
    model = marigold.load_marigold(tiny_checkpoint, device="cpu", ensemble=3, steps=1)

    tile = tiles[:1, :24, :32]

    depth, spread = model.predict_with_uncertainty(tile, [0])

    assert seen == [marigold_ensemble.ENSEMBLING]
    assert depth.shape == spread.shape == (1, 24, 32)
    assert (spread >= 0).all() and spread.max() > 0
    np.testing.assert_allclose(model.predict(tile, [0]), depth, atol=1e-6)
    with pytest.raises(OptionError, match="ensemble"):
        marigold.load_marigold(tiny_checkpoint, device="cpu").predict_with_uncertainty(
            tiles[:1], [0])


def test_lcm_checkpoint_runs_end_to_end(tiny_checkpoint: str, tmp_path: Path) -> None:
    import rasterio
    from click.testing import CliRunner
    from conftest import depth_image, write_raster
    from diffusers import LCMScheduler

    from tiledepth.cli import main

    pipe = _load_pipeline(tiny_checkpoint)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    folder = tmp_path / "tiny-lcm"
    pipe.save_pretrained(folder)
    marigold.save_empty_text_embedding(pipe, folder)
    src = write_raster(tmp_path / "ortho.tif", depth_image(48, 72))
    out = tmp_path / "lcm.tif"

    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model", str(folder),
                                       "--tile-size", "48", "--device", "cpu", "--no-progress"],
                                catch_exceptions=False)

    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.tags()["TILEDEPTH_STEPS"] == "2"  # the checkpoint's default
        assert np.isfinite(ds.read(1)).all()


def test_quiet_means_quiet(tiny_checkpoint: str, tmp_path: Path, capfd) -> None:
    """-q --no-progress: nothing on stdout or stderr, diffusers' loading bars and warnings
    (written to the real stderr, so read at the file descriptor) included."""
    from click.testing import CliRunner
    from conftest import depth_image, write_raster

    from tiledepth.cli import main

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    capfd.readouterr()
    result = CliRunner().invoke(main, [
        "run", str(src), "-o", str(tmp_path / "q.tif"), "--model", tiny_checkpoint,
        "--device", "cpu", "--tile-size", "48", "--steps", "1", "-q", "--no-progress"])
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    assert result.output == "" and captured.out == "" and captured.err == ""


# --------------------------------------------------------------------------- the GPU path


def test_device_ensembling_recovers_affine_members_without_host_syncs(monkeypatch) -> None:
    import torch

    rng = np.random.default_rng(3)
    truth = np.linspace(0, 1, 40 * 48).reshape(40, 48) ** 2
    members = np.stack([truth * a + b for a, b in rng.uniform([0.5, -0.3], [1.5, 0.3], (5, 2))])
    members[0, :10] += 0.2  # one member off in a corner: the median ignores it
    syncs = []
    for method in ("item", "cpu", "tolist"):
        real = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method,
                            lambda self, *a, _r=real, _m=method, **k: (syncs.append(_m),
                                                                        _r(self, *a, **k))[1])
    depth, spread = marigold_ensemble.ensemble_depth(
        torch.tensor(members[:, None], dtype=torch.float32), True, True, True)
    monkeypatch.undo()
    assert syncs == []
    assert depth.shape == spread.shape == (1, 1, 40, 48)
    np.testing.assert_allclose(depth[0, 0].numpy(), truth, atol=1e-3)
    assert float(spread.max()) < 0.05


def test_the_fp16_weights_are_asked_for_first(tiny_checkpoint: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import MarigoldDepthPipeline

    real = MarigoldDepthPipeline.from_pretrained.__func__
    asked: list[str | None] = []

    def spy(cls, folder, **kwargs):
        asked.append(kwargs.get("variant"))
        return real(cls, folder, **kwargs)

    monkeypatch.setattr(MarigoldDepthPipeline, "from_pretrained", classmethod(spy))
    marigold.load_marigold(tiny_checkpoint, device="cpu", dtype="fp32")
    assert asked == [None]  # full precision: the fp32 weights only
    asked.clear()
    marigold.load_marigold(tiny_checkpoint, device="cpu", dtype="bf16")
    assert asked == ["fp16", None]  # no fp16 files in this checkpoint: the fp32 ones
    with_fp16 = tmp_path / "fp16"
    shutil.copytree(tiny_checkpoint, with_fp16)
    _load_pipeline(tiny_checkpoint).save_pretrained(with_fp16, variant="fp16")
    asked.clear()
    model = marigold.load_marigold(str(with_fp16), device="cpu", dtype="bf16")
    assert asked == ["fp16"]
    import torch

    assert model.pipe.unet.dtype == torch.bfloat16


def test_bf16_depth_is_decoded_in_fp32(tiny_checkpoint: str, tiles: np.ndarray,
                                       model: marigold.MarigoldModel) -> None:
    import torch

    bf16 = marigold.load_marigold(tiny_checkpoint, device="cpu", dtype="bf16")
    assert bf16.pipe.unet.dtype == torch.bfloat16
    assert next(bf16.pipe.vae.decoder.parameters()).dtype == torch.float32
    assert next(bf16.pipe.vae.encoder.parameters()).dtype == torch.bfloat16
    depth = bf16.predict(tiles[:1, :24, :32], [0])
    assert depth.dtype == np.float32 and depth.shape == (1, 24, 32)
    # bf16 post-processing would put depth in [0.5, 1] on steps of 2**-8: not so here
    upper = depth[depth >= 0.5]
    assert upper.size > 50
    off_grid = np.abs(upper * 256 - np.round(upper * 256)) > 1e-3
    assert off_grid.mean() > 0.5
    fp32 = model.predict(tiles[:1, :24, :32], [0])
    assert np.abs(depth - fp32).mean() < 0.05  # the same prediction, to bf16's rounding


def test_the_text_encoder_is_used_once_and_freed() -> None:
    from types import SimpleNamespace

    import torch

    class Tokenizer:
        model_max_length = 77

        def __call__(self, prompt, **kwargs):
            assert prompt == "" and kwargs["return_tensors"] == "pt"
            return SimpleNamespace(input_ids=torch.tensor([[49406, 49407]]))

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(49408, 4)

        def forward(self, ids):
            return (self.embed(ids),)

    encoder = Encoder()
    pipe = SimpleNamespace(tokenizer=Tokenizer(), text_encoder=encoder, empty_text_embedding=None)
    marigold.embed_empty_prompt(pipe, "cpu")
    assert pipe.text_encoder is None
    assert tuple(pipe.empty_text_embedding.shape) == (1, 2, 4)
    torch.testing.assert_close(pipe.empty_text_embedding[0, 1], encoder.embed.weight[49407])


def test_one_host_copy_per_batch(model: marigold.MarigoldModel, tiles: np.ndarray,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    syncs: list[str] = []
    for method in ("cpu", "item", "numpy", "tolist"):
        real = getattr(torch.Tensor, method)

        def counted(self, *args, _real=real, _name=method, **kwargs):
            if self.device.type != "cpu" or _name != "numpy":
                syncs.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    model.predict(tiles, [0, 1, 2])
    # the tensor's one trip back to the host; on the CPU its .numpy() costs nothing
    assert syncs == ["cpu"]


def test_a_stopped_run_stops_the_pipeline_between_steps(model: marigold.MarigoldModel,
                                                        tiles: np.ndarray) -> None:
    import threading

    from tiledepth.models.base import ModelStopped, stop_event

    model = marigold.from_pipeline(model.pipe, steps=50)  # the module's pipeline
    steps = []
    unet = model.pipe.unet
    real_forward = unet.forward
    event = threading.Event()

    def forward(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            event.set()  # as LocalPool.close does when the run ends
        return real_forward(*args, **kwargs)

    unet.forward = forward
    token = stop_event().set(event)
    try:
        with pytest.raises(ModelStopped):
            model.predict(tiles[:1, :16, :16], [0])
    finally:
        stop_event().reset(token)
        del unet.forward
    assert len(steps) == 3  # of 50
    assert "progress_bar" not in vars(model.pipe)  # the pipeline is as it was
    model.steps = 1
    assert model.predict(tiles[:1, :16, :16], [0]).shape == (1, 16, 16)


# --------------------------------------------------------------------------- loading, said once


class _Records(logging.Handler):
    """The messages a logger emits (after its level and filters), for the tests below."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def records_of(*names: str):
    """The messages loggers ``names`` emit in the block, whatever their handlers and
    propagation (diffusers' and huggingface_hub's own handlers write to stderr)."""
    handler = _Records()
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler.messages
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


def test_an_offline_cached_or_missing_checkpoint_says_nothing_but_its_error(
        hub_offline: Path, tiny_checkpoint: str) -> None:
    repo_cache = hub_offline / "models--tiledepth-test--tiny-marigold"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_cache / "snapshots" / commit
    shutil.copytree(tiny_checkpoint, snapshot)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)

    with records_of("huggingface_hub", "huggingface_hub.hf_api",
                    "diffusers.models.modeling_utils") as said:
        marigold.load_marigold("tiledepth-test/tiny-marigold", device="cpu")
        for weights in (snapshot / "unet").glob("diffusion_pytorch_model.*"):
            weights.unlink()
        with pytest.raises(ModelLoadError, match="hf download tiledepth-test/tiny-marigold"):
            marigold.load_marigold("tiledepth-test/tiny-marigold", device="cpu")

    # not "Could not reach the Hub ... Using cached commit hash" on every offline run, nor
    # diffusers' "An error occurred while trying to fetch ..." before the one-line error
    assert said == []


def test_ensemble_2_is_said_once_by_tiledepth_not_per_pipeline_call(
        tiny_checkpoint: str, tiles: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    pipeline_logger = logging.getLogger(marigold_model._PIPELINE_LOGGER)
    level = pipeline_logger.level
    pipeline_logger.setLevel(logging.WARNING)
    try:
        with records_of(marigold_model._PIPELINE_LOGGER) as said, \
                caplog.at_level(logging.WARNING, logger="tiledepth"):
            model = marigold.load_marigold(tiny_checkpoint, device="cpu", ensemble=2, steps=1,
                                           batch_size=1)
            model.predict(tiles[:2], [0, 1])  # two pipeline calls
            pipeline_logger.warning("outside tiledepth's calls")  # still said
    finally:
        pipeline_logger.setLevel(level)

    assert said == ["outside tiledepth's calls"]
    ours = [r.getMessage() for r in caplog.records if "ensemble 2" in r.getMessage()]
    assert len(ours) == 1 and "ensemble 3 or more" in ours[0]


def test_a_loaded_model_runs_as_loaded_and_its_tags_say_so(
        model: marigold.MarigoldModel, tiny_checkpoint: str, tmp_path: Path) -> None:
    from conftest import depth_image, write_raster

    import tiledepth

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    out = tmp_path / "out.tif"
    # model: steps 2, ensemble 1, seed 0, batch size 2, fp32 on the CPU
    for option, value in (("steps", 7), ("ensemble", 3), ("seed", 9), ("dtype", "bf16"),
                          ("device", "cuda")):
        with pytest.raises(OptionError, match=rf"{option}={value} \(it has [^)]+\) would do "
                                              "nothing; set it when loading the model"):
            tiledepth.run(src, out, model=model, tile_size=48, **{option: value})
    assert not out.exists()

    loaded = marigold.load_marigold(tiny_checkpoint, device="cpu", steps=1, ensemble=3, seed=9)
    tiledepth.run(src, out, model=loaded, tile_size=48, steps=1, seed=9, batch_size="auto",
                  device="cpu", dtype="fp32", retry_flagged=False)  # what it has, or auto
    with rasterio.open(out) as ds:
        tags = ds.tags()
    assert loaded.batch_size == 4
    tiledepth.run(src, tmp_path / "b3.tif", model=loaded, tile_size=48, batch_size=3,
                  retry_flagged=False)
    assert loaded.batch_size == 3  # tiles per call: set on the model (a plain attribute)
    # ensemble left unset: the tags say the model's own, not the default 1
    assert (tags["TILEDEPTH_STEPS"], tags["TILEDEPTH_ENSEMBLE"], tags["TILEDEPTH_SEED"]) == (
        "1", "3", "9")


def test_an_e2e_checkpoint_folder_loads_with_the_registry_settings(
        e2e_checkpoint: str, tiles: np.ndarray) -> None:
    from tiledepth.models import load_model
    from tiledepth.models.registry import REGISTRY

    # `hf download GonzaloMG/marigold-e2e-ft-depth --local-dir FOLDER`: its index names a
    # plain StableDiffusionPipeline, as on the hub
    loaded = load_model(e2e_checkpoint, device="cpu")

    spec = REGISTRY["marigold-e2e-ft"]
    assert (loaded.name, loaded.steps, loaded.noise) == (e2e_checkpoint, spec.default_steps,
                                                         spec.options["noise"])
    assert loaded.pipe.scheduler.config.timestep_spacing == spec.options["timestep_spacing"]
    np.testing.assert_array_equal(loaded.predict(tiles[:1], [0]), loaded.predict(tiles[:1], [5]))
    with pytest.raises(OptionError, match="ensemble=3"):  # deterministic, as by its name
        load_model(e2e_checkpoint, device="cpu", ensemble=3)


def test_a_failed_upcast_puts_the_callers_decoder_back():
    """_fp32_decode upcast a caller's bf16 decoder before its ``try``: a conversion that
    failed midway (out of memory) left the decoder in float32 for good."""
    import types

    import torch

    from tiledepth.models.marigold_model import _fp32_decode

    class Failing(torch.nn.Conv2d):
        armed = False

        def _apply(self, fn, *args, **kwargs):  # as a CUDA OOM when the fp32 copy is made
            if Failing.armed:
                raise torch.OutOfMemoryError("out of memory (simulated)")
            return super()._apply(fn, *args, **kwargs)

    vae = types.SimpleNamespace(decoder=torch.nn.Linear(4, 4).to(torch.bfloat16),
                                post_quant_conv=Failing(4, 4, 1).to(torch.bfloat16),
                                config=types.SimpleNamespace(scaling_factor=1.0))
    pipe = types.SimpleNamespace(vae=vae, dtype=torch.bfloat16,
                                 image_processor=types.SimpleNamespace())
    Failing.armed = True
    with pytest.raises(torch.OutOfMemoryError), _fp32_decode(pipe):
        pass
    assert vae.decoder.weight.dtype == torch.bfloat16


def test_steps_beyond_the_schedulers_timesteps_are_refused_before_any_model_call(
        tiny_checkpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps 1001 with a scheduler of 1000 training timesteps ran into the first model
    call's bare ValueError ("unexpected ValueError", exit 1); it is an option error now."""
    from click.testing import CliRunner
    from conftest import depth_image, write_raster
    from diffusers import LCMScheduler

    from tiledepth.cli import main

    pipe = _load_pipeline(tiny_checkpoint)
    assert pipe.scheduler.config.num_train_timesteps == 1000
    calls = []
    monkeypatch.setattr(marigold_model.MarigoldModel, "_run",
                        lambda self, *a, **k: calls.append(a))
    with pytest.raises(OptionError, match=r"steps \(--steps\) must be at most 1000 \(the "
                                          r"scheduler's training timesteps\).*got 1001"):
        marigold.from_pipeline(pipe, steps=1001)
    assert marigold.from_pipeline(pipe, steps=1000).steps == 1000  # the most it takes
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)  # at most 50 of them
    assert pipe.scheduler.config.original_inference_steps == 50
    with pytest.raises(OptionError, match=r"at most 50 \(the LCM scheduler's original "
                                          r"inference steps\).*got 51"):
        marigold.from_pipeline(pipe, steps=51)

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model",
                                       tiny_checkpoint, "--tile-size", "48", "--device", "cpu",
                                       "--no-progress", "--steps", "1001"])
    assert result.exit_code == 2, result.output
    assert "must be at most 1000" in result.output and "unexpected" not in result.output
    assert calls == [] and not out.exists()


def test_the_quality_preset_runs_an_e2e_folder_and_a_typed_ensemble_is_refused(
        e2e_checkpoint: str, tmp_path: Path, caplog) -> None:
    """The shipped quality preset (``ensemble: 5``, "skipped for the other models") was
    refused for the end-to-end fine-tuned Marigold ("ensemble=5 with a deterministic
    model ... use ensemble=1"), blaming an option never typed; a config's seed too. They
    are skipped with an info line; given as keywords they are refused, as before."""
    from conftest import depth_image, write_raster

    import tiledepth

    src = write_raster(tmp_path / "in.tif", depth_image(48, 72))
    config = tmp_path / "seed.yaml"
    config.write_text("seed: 7\n")
    for preset, skipped in [(REPO_ROOT / "configs" / "quality.yaml", "ensemble 5"),
                            (config, "seed 7")]:
        caplog.clear()
        with caplog.at_level("INFO", logger="tiledepth"):
            result = tiledepth.run(src, tmp_path / f"{preset.stem}.tif", model=e2e_checkpoint,
                                   tile_size=48, device="cpu", config=preset,
                                   retry_flagged=False)
        assert result.tiles > 0
        assert f"{preset}: {skipped} skipped: the model {e2e_checkpoint} is the end-to-end " \
               "fine-tuned Marigold (zero noise)" in caplog.text
        with rasterio.open(tmp_path / f"{preset.stem}.tif") as ds:
            assert (ds.tags()["TILEDEPTH_ENSEMBLE"], ds.tags()["TILEDEPTH_SEED"]) == ("1", "0")
    with pytest.raises(OptionError, match=r"ensemble=5 with a deterministic model"):
        tiledepth.run(src, tmp_path / "typed.tif", model=e2e_checkpoint, tile_size=48,
                      device="cpu", config=REPO_ROOT / "configs" / "quality.yaml", ensemble=5)


def test_the_docs_describe_the_ensemble_merge_the_code_runs() -> None:
    """docs/models.md and docs/options.md said --ensemble merges with the official
    repository's solver settings (50 iterations, tolerance 1e-6), but the members are
    aligned by a 3-pass least-squares fit to their median, which takes no such settings:
    max_iter and tol change no value."""
    import inspect

    import torch

    depth = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    official, _ = marigold_ensemble.ensemble_depth(depth, max_iter=50, tol=1e-6)
    loose, _ = marigold_ensemble.ensemble_depth(depth, max_iter=2, tol=1e-3)
    assert torch.equal(official, loose)
    passes = inspect.signature(marigold_ensemble.ensemble_depth).parameters["iterations"]
    assert passes.default == 3
    for doc in ("models.md", "options.md"):
        text = " ".join((REPO_ROOT / "docs" / doc).read_text().split())
        assert "50 iterations" not in text and "official repository's settings" not in text
        assert "least squares to the members' median, 3 passes, on the device" in text, doc
