"""Batch size auto: on (simulated) CUDA the probe finds the largest batch that fits; elsewhere 4.

The fakes raise torch's real OutOfMemoryError above a threshold, on the CPU.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import depth_image, run_cli, write_raster

import tiledepth
from tiledepth.checkpoint import checkpoint_key
from tiledepth.cli import main
from tiledepth.errors import ModelError, OptionError
from tiledepth.models import CallableModel
from tiledepth.models.autobatch import (
    DEFAULT_BATCH,
    HEADROOM,
    MAX_BATCH,
    largest_fitting,
    model_device,
    resolve_batch_size,
)
from tiledepth.models.marigold_model import MarigoldModel
from tiledepth.options import Options, make_options


def gpu_fake(most: int, seen: list, device: str = "cuda:0"):
    """A callable on a simulated GPU where more than ``most`` tiles run out of memory."""
    def fn(batch):
        seen.append(len(batch))
        if len(batch) > most:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {len(batch)}.00 GiB")
        return batch[..., 0].copy()
    fn.device = device
    return fn


@pytest.mark.parametrize("threshold", [1, 2, 3, 5, 6, 7, 8, 13, 31, 33, 63])
def test_probe_picks_the_threshold(threshold):
    seen = []
    model = CallableModel(gpu_fake(threshold, seen))
    kept = max(1, int(threshold * (1 - HEADROOM)))  # headroom below what fitted
    assert resolve_batch_size(model, 32) == kept == model.batch_size
    assert all(n <= MAX_BATCH for n in seen)
    assert len(seen) <= 2 * 6 + 1  # doubling, then bisection: about 2 log2(64) calls
    assert model._halving.limit is None  # probing is not an out-of-memory event


def test_probe_stops_at_the_cap():
    seen = []
    model = CallableModel(gpu_fake(1000, seen))
    assert resolve_batch_size(model, 16) == MAX_BATCH
    assert seen == [1, 2, 4, 8, 16, 32, 64]
    assert resolve_batch_size(CallableModel(gpu_fake(1000, [])), 16, cap=20) == 20


def test_probe_uses_the_real_tile_size():
    shapes = []

    def fn(batch):
        shapes.append(batch.shape)
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch[..., 0].copy()
    fn.device = "cuda"
    resolve_batch_size(CallableModel(fn), 96)
    assert {s[1:] for s in shapes} == {(96, 96, 3)}


def test_a_single_tile_that_does_not_fit_is_an_error():
    with pytest.raises(ModelError, match=r"ran out of CUDA memory on a single tile of "
                                         r"128 x 128 px; lower --tile-size") as info:
        resolve_batch_size(CallableModel(gpu_fake(0, [])), 128)
    assert "--dtype" not in str(info.value)  # a callable takes none


def test_other_errors_are_raised():
    def broken(batch):
        raise RuntimeError("CUDA error: device-side assert triggered")
    broken.device = "cuda"
    with pytest.raises(RuntimeError, match="device-side assert"):
        resolve_batch_size(CallableModel(broken), 32)


@pytest.mark.parametrize("message", [
    "Expected canUse32BitIndexMath(input) && canUse32BitIndexMath(output) to be true, "
    "but got false.",  # a VAE decode of ~15 tiles of 768 px
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
    "non-contiguous input."])
def test_a_batch_too_large_for_a_kernel_does_not_fit(message):
    seen = []

    def fn(batch):
        seen.append(len(batch))
        if len(batch) > 14:
            raise RuntimeError(message)
        return batch[..., 0].copy()
    fn.device = "cuda"
    model = CallableModel(fn)
    assert resolve_batch_size(model, 32) == int(14 * (1 - HEADROOM)) == 11
    assert seen == [1, 2, 4, 8, 16, 12, 14, 15]
    seen.clear()  # during the run, too, such a batch is halved
    assert model.predict(np.zeros((16, 4, 4, 3), np.float32), list(range(16))).shape[0] == 16
    assert seen == [16, 8, 8]


def test_the_probe_stops_where_tiles_per_second_stop_improving():
    seen, now = [], [0.0]

    def fn(batch):  # 0.1 s a call up to 8 tiles, then as slow per tile as 8: no gain
        seen.append(len(batch))
        now[0] += 0.1 * max(1, len(batch) / 8)
        return batch[..., 0].copy()
    fn.device = "cuda"
    model = CallableModel(fn)
    assert resolve_batch_size(model, 32, clock=lambda: now[0]) == 8  # no headroom: it fitted
    assert seen == [1, 2, 4, 8, 16]


def test_an_ensemble_is_probed_with_one_member():
    members = []

    class Ensembled:
        name, batch_size, ensemble, device = "e", 4, 5, "cuda"

        def predict(self, batch, keys):
            members.append(self.ensemble)
            if len(batch) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return batch[..., 0]

    model = Ensembled()
    assert resolve_batch_size(model, 16) == 2 and model.ensemble == 5
    assert set(members) == {1}


@pytest.mark.parametrize("device", [None, "cpu", "mps"])
def test_off_cuda_auto_is_the_default_without_probing(device):
    seen = []
    fn = gpu_fake(2, seen, device=device)
    if device is None:
        del fn.device
    model = CallableModel(fn)
    assert resolve_batch_size(model, 64) == DEFAULT_BATCH == model.batch_size
    assert seen == []


def test_a_later_out_of_memory_still_halves(caplog):
    seen = []
    limit = {"most": 6}

    def fn(batch):
        seen.append(len(batch))
        if len(batch) > limit["most"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch[..., 0].copy()
    fn.device = "cuda"
    model = CallableModel(fn)
    assert resolve_batch_size(model, 8, headroom=0) == 6
    limit["most"] = 4  # memory got tighter during the run
    seen.clear()
    with caplog.at_level(logging.WARNING):
        out = model.predict(np.zeros((6, 8, 8, 3), np.float32), list(range(6)))
    assert out.shape == (6, 8, 8) and seen == [6, 3, 3]
    assert "continuing with 3" in caplog.text


def test_marigold_probe_goes_around_halving():
    pipe = SimpleNamespace(default_denoising_steps=1, text_encoder=object(),
                           empty_text_embedding=None, scheduler=SimpleNamespace(),
                           device=torch.device("cuda", 0))
    model = MarigoldModel(pipe, batch_size=4)
    seen = []

    def run(batch, keys, uncertainty=False):  # the diffusers pipeline on a 5-tile GPU
        seen.append(len(keys))
        if len(batch) > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return np.zeros(batch.shape[:3], np.float32)

    model._run = run
    assert model_device(model) == "cuda:0"
    assert resolve_batch_size(model, 64) == 4 == model.batch_size  # 5 fit; headroom kept
    assert seen == [1, 2, 4, 8, 6, 5]
    assert model._halving.limit is None


def test_largest_fitting_checks_its_cap():
    with pytest.raises(ValueError, match="cap"):
        largest_fitting(lambda n: True, cap=0)


def test_the_option_accepts_auto_everywhere(tmp_path):
    assert make_options(batch_size="auto").batch_size == "auto"
    config = tmp_path / "c.yaml"
    config.write_text("batch-size: Auto\n")
    assert make_options(config).batch_size == "auto"
    with pytest.raises(OptionError, match=r"batch_size must be a whole number or 'auto', "
                                          r"got 'big'"):
        make_options(batch_size="big")
    with pytest.raises(OptionError, match=r"batch_size must be >= 1 or 'auto', got 0"):
        make_options(batch_size=0)


def test_the_checkpoint_key_ignores_the_batch_size():
    model = CallableModel(lambda b: b[..., 0], name="m")
    identity = {"path": "/x.tif", "size": 1, "mtime_ns": 1, "ends_sha256": "0"}
    keys = {checkpoint_key(identity, make_options(batch_size=b), model)[0]
            for b in ("auto", 1, 4, 64)}
    assert len(keys) == 1


def test_run_with_auto_uses_the_probed_size(tmp_path):
    src = write_raster(tmp_path / "in.tif", depth_image(200, 260))
    seen = []
    fn = gpu_fake(5, seen)
    tiledepth.run(src, tmp_path / "auto.tif", model=fn, tile_size=64, batch_size="auto")
    probe, run = seen[:6], seen[6:]
    assert probe == [1, 2, 4, 8, 6, 5]
    # 5 fit; full batches of 4 (+ the rest, and the coarse image's calls, one image each)
    assert max(run) == 4 and run.count(4) >= len(run) - 1 - Options.anchor_calls
    tiledepth.run(src, tmp_path / "fixed.tif", model=lambda b: b[..., 0].copy(), tile_size=64,
                  batch_size=4)
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "fixed.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_cli_says_the_probed_size(tmp_path):
    src = write_raster(tmp_path / "in.tif", depth_image(200, 260))
    out = tmp_path / "out.tif"
    proc = run_cli(src, "-o", out, "--model", "toy_models:cuda_oom_above_6", "--tile-size", 64,
                   "--batch-size", "auto", "-v")
    assert proc.returncode == 0, proc.stderr
    assert ("tiledepth: INFO: batch size auto: 5 tiles of 64 px per model call on cuda "
            "(tried 1, 2, 4, 8 no, 6, 7 no; 15% kept free)") in proc.stderr.splitlines()
    assert "WARNING" not in proc.stderr  # no out-of-memory halving in the run itself


def test_cli_rejects_a_bad_batch_size(tmp_path):
    src = write_raster(tmp_path / "in.tif", depth_image(64, 64))
    result = CliRunner().invoke(main, ["run", str(src), "--batch-size", "big"])
    assert result.exit_code == 2
    assert "expected a whole number or auto, got 'big'" in result.output
    assert "auto" in CliRunner().invoke(main, ["run", "--help"]).output


def test_each_ray_actor_probes_its_own_gpu():
    from tiledepth.raypool import ModelActor  # the actor's body, without Ray

    options = {"device": "auto", "dtype": "auto", "steps": None, "ensemble": 1, "seed": 0,
               "batch_size": "auto"}
    assert ModelActor("toy_models:cuda_oom_above_6", options, 64).info()["batch_size"] == 5
    assert ModelActor("toy_models:red", options, 64).info()["batch_size"] == DEFAULT_BATCH
    fixed = dict(options, batch_size=3)
    assert ModelActor("toy_models:cuda_oom_above_6", fixed, 64).info()["batch_size"] == 3
