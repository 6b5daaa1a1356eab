"""GPU out of memory: the batch is halved and retried, said once on stderr (on the CPU, with
torch's real OutOfMemoryError raised by fakes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from conftest import depth_image, run_cli, write_raster

from tiledepth.errors import ModelError
from tiledepth.models import CallableModel
from tiledepth.models.marigold_model import MarigoldModel
from tiledepth.models.oom import Halving, is_out_of_memory


def oom(n: int) -> torch.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n}.00 GiB")


def fits(most: int, seen: list):
    """A batch function that runs out of memory above ``most`` tiles; records (size, keys)."""
    def fn(batch, keys):
        seen.append((len(batch), list(keys)))
        if len(batch) > most:
            raise oom(len(batch))
        return batch[..., 0] * 2 + np.asarray(keys, np.float32)[:, None, None]
    return fn


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(oom(2))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_out_of_memory(MemoryError())  # host memory: not retried


def test_halving_retries_the_same_tiles_and_keeps_the_size(caplog):
    rng = np.random.default_rng(0)
    batch = rng.random((8, 5, 6, 3), dtype=np.float32)
    keys = list(range(10, 18))
    seen = []
    halving = Halving()
    with caplog.at_level("WARNING"):
        out = halving(fits(3, seen), batch, keys, name="m")
        again = halving(fits(3, seen), batch[:5], keys[:5], name="m")
    keys_f = np.arange(10, 18, dtype=np.float32)[:, None, None]
    np.testing.assert_array_equal(out, batch[..., 0] * 2 + keys_f)
    np.testing.assert_array_equal(again, out[:5])
    # 8 fails, 4 fails, then chunks of 2; the next call starts at 2
    assert [n for n, _ in seen] == [8, 4, 2, 2, 2, 2, 2, 2, 1]
    assert [k for _, k in seen[2:6]] == [[10, 11], [12, 13], [14, 15], [16, 17]]
    assert halving.limit == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["CUDA ran out of memory with 8 tiles per model call; continuing with 2 "
                        "(start with --batch-size 2 to skip the retries)"]


def test_one_tile_that_does_not_fit_names_the_model():
    with pytest.raises(ModelError, match=r"model 'big' ran out of CUDA memory on a single tile "
                                         r"of 5 x 6 px; lower --tile-size"):
        Halving()(fits(0, []), np.zeros((4, 5, 6, 3), np.float32), [0, 1, 2, 3], name="big")


def test_other_errors_are_not_retried():
    seen = []

    def fn(batch, keys):
        seen.append(len(batch))
        raise RuntimeError("CUDA error: device-side assert triggered")

    with pytest.raises(RuntimeError, match="device-side assert"):
        Halving()(fn, np.zeros((4, 2, 2, 3), np.float32), [0, 1, 2, 3], name="m")
    assert seen == [4]


def test_a_kernel_limit_is_halved_and_raised_as_itself_on_one_tile():
    seen = []

    def fn(batch, keys):  # a batch too large for cuDNN; here even one tile is
        seen.append(len(batch))
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    with pytest.raises(RuntimeError, match="CUDNN_STATUS"):
        Halving()(fn, np.zeros((4, 2, 2, 3), np.float32), [0, 1, 2, 3], name="m")
    assert seen == [4, 2, 1]


def test_callable_model_halves():
    seen = []

    def model(batch):
        seen.append(len(batch))
        if len(batch) > 1:
            raise oom(len(batch))
        return batch[..., 1]

    batch = np.random.default_rng(1).random((3, 4, 4, 3), dtype=np.float32)
    out = CallableModel(model, batch_size=3).predict(batch, [0, 1, 2])
    np.testing.assert_array_equal(out, batch[..., 1])
    assert seen == [3, 1, 1, 1]


def test_marigold_model_halves_and_keeps_each_tiles_key():
    pipe = SimpleNamespace(default_denoising_steps=1, text_encoder=object(),
                           empty_text_embedding=None, scheduler=SimpleNamespace())
    model = MarigoldModel(pipe, batch_size=4)
    seen = []

    def run(batch, keys, uncertainty=False):  # stands in for the diffusers pipeline on a 1-tile GPU
        seen.append(list(keys))
        if len(batch) > 1:
            raise oom(len(batch))
        return np.full(batch.shape[:3], float(keys[0]), np.float32)

    model._run = run
    out = model.predict(np.zeros((4, 8, 8, 3), np.float32), [7, 3, 9, 1])
    assert out[:, 0, 0].tolist() == [7, 3, 9, 1]
    assert seen == [[7, 3, 9, 1], [7, 3], [7], [3], [9], [1]]


def test_said_once_on_stderr_of_a_real_run(tmp_path):
    src = write_raster(tmp_path / "in.tif", depth_image(200, 260))
    out = tmp_path / "out.tif"
    proc = run_cli(src, "-o", out, "--model", "toy_models:oom_above_2", "--tile-size", 64,
                   "--batch-size", 8)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == ("tiledepth: WARNING: CUDA ran out of memory with 8 tiles per model "
                        "call; continuing with 2 (start with --batch-size 2 to skip the retries)")
    assert len(lines) == 3 and lines[1].startswith(f"wrote {out} (260 x 200 px, 24 tiles")
    assert lines[2].startswith("tile consistency ")  # and where the sidecar is
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).all()


def test_transformers_backends_halve():
    import torch

    from tiledepth.models.hf import TransformersDepthModel

    seen = []

    class Fake(TransformersDepthModel):
        def _forward(self, pixels, height, width):
            seen.append(pixels.shape[0])
            if pixels.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return pixels[:, 0] * 2

    model = Fake(torch.nn.Linear(1, 1), name="fake", batch_size=5)
    batch = np.random.default_rng(0).random((5, 4, 4, 3), dtype=np.float32)
    out = model.predict(batch, list(range(5)))
    assert seen == [5, 2, 2, 1] and model._halving.limit == 2
    np.testing.assert_allclose(out, (batch[..., 0] - 0.485) / 0.229 * 2, rtol=1e-6)


def test_marigold_uncertainty_halves():
    from types import SimpleNamespace

    import torch

    from tiledepth.models.marigold_model import MarigoldModel

    pipe = SimpleNamespace(default_denoising_steps=1, text_encoder=object(),
                           empty_text_embedding=None, scheduler=SimpleNamespace())
    model = MarigoldModel(pipe, ensemble=3, batch_size=4)
    seen = []

    def run(batch, keys, uncertainty=False):
        seen.append(len(keys))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        keys = np.asarray(keys, np.float32)[:, None, None]
        return (batch[..., 0] + keys, batch[..., 1] * 0 + keys)

    model._run = run
    batch = np.random.default_rng(1).random((4, 3, 3, 3), dtype=np.float32)
    depth, spread = model.predict_with_uncertainty(batch, [0, 1, 2, 3])
    assert seen == [4, 2, 2]
    np.testing.assert_allclose(depth, batch[..., 0] + np.arange(4)[:, None, None])
    np.testing.assert_allclose(spread, np.broadcast_to(np.arange(4.0)[:, None, None], (4, 3, 3)))


def test_the_coarse_image_that_does_not_fit_names_coarse_size():
    # a callable takes no --dtype: not suggested for it
    def big(batch):
        raise oom(1)

    image = np.zeros((1, 96, 128, 3), np.float32)
    with pytest.raises(ModelError) as info:
        CallableModel(big, name="big").predict(image, [-1])  # the coarse image's key
    message = str(info.value)
    assert message == ("model 'big' ran out of CUDA memory on the coarse image of 96 x 128 px; "
                       "lower --coarse-size, or free the GPU")

    with pytest.raises(ModelError, match=r"single tile of 96 x 128 px; lower --tile-size, "
                                         r"or free"):
        CallableModel(big, name="big").predict(image, [0])
    with pytest.raises(ModelError, match=r"coarse image of 96 x 128 px; lower --coarse-size, "
                                         r"use --dtype fp16 or bf16"):  # a built-in model
        Halving()(lambda b, k: big(b), image, [-1], name="builtin")
