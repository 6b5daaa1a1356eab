"""Resume: the scratch store is a checkpoint; interrupted runs cost nothing, nothing is mixed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env, depth_image, write_raster

import tiledepth
from tiledepth.checkpoint import Checkpoint, checkpoint_folder
from tiledepth.errors import BusyError, OutputError
from tiledepth.lock import lock_path

SLOW = "toy_models:slow"
# 300 x 400 px: 6 x 8 = 48 tiles, coarse 48 x 64; one coarse call (the calls counted below
# are the tests'; a run of the default three is resumed in its own test)
RUN = dict(tile_size=64, overlap=0.25, anchor_calls=1)


@pytest.fixture
def src(tmp_path) -> Path:
    return write_raster(tmp_path / "in.tif", depth_image(300, 400))


def calls_log(tmp_path, monkeypatch, stop_after: int | None = None) -> Path:
    """A fresh log of the calls of toy_models:slow; with ``stop_after``, Ctrl-C after them."""
    log = tmp_path / "calls.txt"
    log.unlink(missing_ok=True)
    monkeypatch.setenv("TILEDEPTH_TEST_CALLS", str(log))
    monkeypatch.setenv("TILEDEPTH_TEST_DELAY", "0")
    if stop_after is None:
        monkeypatch.delenv("TILEDEPTH_TEST_STOP_AFTER", raising=False)
    else:
        monkeypatch.setenv("TILEDEPTH_TEST_STOP_AFTER", str(stop_after))
    return log


def interrupted(src, out, tmp_path, monkeypatch, stop_after: int, **options):
    """Run until Ctrl-C after ``stop_after`` model calls; return the KeyboardInterrupt."""
    calls_log(tmp_path, monkeypatch, stop_after)
    with pytest.raises(KeyboardInterrupt) as info:
        tiledepth.run(src, out, model=SLOW, **{**RUN, **options})
    return info.value


def batches(log: Path) -> list[tuple[int, ...]]:
    """Batch shapes of the calls logged by toy_models:slow."""
    if not log.exists():
        return []
    return [tuple(int(v) for v in line.split(" ", 1)[1].strip("()\n").split(", "))
            for line in log.read_text().splitlines()]


def tiles_in(shapes) -> int:
    return sum(s[0] for s in shapes if s[1:3] == (64, 64))


def coarse_calls(shapes) -> int:
    return sum(1 for s in shapes if s[1:3] == (48, 64))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_interrupted_run_resumes_with_only_the_missing_tiles(src, tmp_path, monkeypatch):
    out = tmp_path / "out.tif"
    # a run stopped after 6 model calls: the coarse prediction and 5 batches of 4 tiles, or
    # 6 batches if the coarse image was still being read (the tiles do not wait for it)
    stop = interrupted(src, out, tmp_path, monkeypatch, 6, batch_size=4)
    assert not out.exists()
    (folder,) = hidden(tmp_path)
    assert folder == checkpoint_folder(out, tmp_path).name
    coarse = (tmp_path / folder / "coarse.npy").exists()
    kept = len(list((tmp_path / folder).glob("tile*.pred.npy")))
    assert kept == 4 * (6 - coarse)
    assert f"{kept} tile prediction(s) kept in" in stop.__notes__[0]

    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=3, **RUN)
    shapes = batches(log)
    assert coarse_calls(shapes) == 1 - coarse  # the coarse prediction was kept too
    assert tiles_in(shapes) == 48 - kept == result.tiles - result.resumed
    assert result.resumed == kept
    assert hidden(tmp_path) == []  # the checkpoint is gone with the output complete

    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=4, **RUN)
    assert fresh.resumed == 0
    assert out.read_bytes() == fresh.output.read_bytes()


def test_a_changed_option_or_input_starts_over(src, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 3)
    log = calls_log(tmp_path, monkeypatch)

    # another seed: none of the kept predictions may be used
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, seed=1, **RUN)
    assert "another input, model or options; starting over" in caplog.text
    assert result.resumed == 0 and tiles_in(batches(log)) == 48
    assert coarse_calls(batches(log)) == 1

    # the same options, but the input changed after the interruption
    interrupted(src, out, tmp_path, monkeypatch, 3, overwrite=True)
    log = calls_log(tmp_path, monkeypatch)
    write_raster(src, depth_image(300, 400)[::-1].copy())
    result = tiledepth.run(src, out, model=SLOW, overwrite=True, **RUN)
    assert result.resumed == 0 and tiles_in(batches(log)) == 48
    with tiledepth_open(out) as ds:  # and the output is that of the new input
        new = ds.read(1)
    ref = tiledepth.run(src, tmp_path / "ref.tif", model=SLOW, **RUN).output
    with tiledepth_open(ref) as ds:
        np.testing.assert_array_equal(new, ds.read(1))


def tiledepth_open(path):
    import rasterio

    return rasterio.open(path)


def test_no_resume_starts_clean(src, tmp_path, monkeypatch):
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 4)
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, resume=False, **RUN)
    assert result.resumed == 0 and tiles_in(batches(log)) == 48
    assert coarse_calls(batches(log)) == 1


def test_broken_files_in_a_checkpoint_are_predicted_again(src, tmp_path, monkeypatch):
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 3, batch_size=4)
    log = calls_log(tmp_path, monkeypatch)
    folder = checkpoint_folder(out, tmp_path)
    kept = len(list(folder.glob("tile*.pred.npy")))  # 8, or 12 before the coarse prediction
    (folder / "tile0000003.pred.npy").write_bytes(b"")  # e.g. a crash of the machine
    (folder / "tile0000005.valid.npy").unlink()
    (folder / "tile0000006.pred.npy.tmp").write_bytes(b"half")
    result = tiledepth.run(src, out, model=SLOW, **RUN)
    assert kept in (8, 12) and result.resumed == kept - 2
    assert tiles_in(batches(log)) == 48 - kept + 2
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_the_same_output_twice_at_once_is_refused(src, tmp_path):
    out = tmp_path / "out.tif"
    with Checkpoint(checkpoint_folder(out, tmp_path), "other run's key", output=out) as held:
        with pytest.raises(BusyError, match="another tiledepth run is writing the same output"):
            tiledepth.run(src, out, model=SLOW, **RUN)
        assert held.folder.is_dir()  # the other run's checkpoint is untouched
    assert hidden(tmp_path) == [] and not out.exists()


# -- real processes ------------------------------------------------------------------------


def cli(*args, env: dict) -> subprocess.Popen:
    # SIGINT as at a terminal: a test run started in the background (``pytest &``) ignores it,
    # its children would inherit that, and Python then leaves Ctrl-C ignored, as it should
    return subprocess.Popen(
        [sys.executable, "-m", "tiledepth.cli", "run", *map(str, args), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGKILL, -signal.SIGKILL, None)])
def test_signal_to_a_real_run_then_resume(src, tmp_path, monkeypatch, sig, code, said):
    out = tmp_path / "out.tif"
    log = tmp_path / "calls.txt"
    proc = cli(src, "-o", out, "--model", SLOW, "--tile-size", 64, "--batch-size", 1,
               "--anchor-calls", 1,
               env=child_env(TILEDEPTH_TEST_CALLS=str(log), TILEDEPTH_TEST_DELAY="0.05"))
    deadline = time.monotonic() + 120
    while len(batches(log)) < 8:  # the coarse prediction and 7 tiles
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    folder = checkpoint_folder(out, tmp_path)
    kept = len(list(folder.glob("tile*.pred.npy")))
    coarse = (folder / "coarse.npy").exists()  # unless the tiles' calls came first
    # the last logged call's tile may be returned but not yet stored when the signal lands
    # (the model's calls run ahead of the loop that stores them), and SIGKILL may catch a
    # tile or two more still queued for the background scratch writer
    assert (4 if sig == signal.SIGKILL else 6) <= kept < 48
    if said:
        assert err.strip() == (f"tiledepth: {said}; no output was written; {kept} tile "
                               f"prediction(s) kept in {folder}; run the same command again to "
                               "resume")
        assert hidden(tmp_path) == [folder.name]  # no partial output, only the checkpoint
    else:  # killed outright: the partial output and the lock stay until the next run of it
        (partial,) = set(hidden(tmp_path)) - {folder.name, lock_path(out).name}
        assert partial.startswith(".out.tif.") and partial.endswith(".partial")

    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=4, **RUN)
    assert (result.resumed, tiles_in(batches(log)), coarse_calls(batches(log))) == (
        kept, 48 - kept, 1 - coarse)
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()
    assert hidden(tmp_path) == []


def test_two_runs_into_one_folder_at_the_same_time(src, tmp_path):
    log = tmp_path / "calls.txt"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = child_env(TILEDEPTH_TEST_CALLS=str(log), TILEDEPTH_TEST_DELAY="0.01",
                    TILEDEPTH_TEST_BARRIER=str(barrier))
    outs = [tmp_path / "a.tif", tmp_path / "b.tif"]
    procs = [cli(src, "-o", out, "--model", SLOW, "--tile-size", 64, "--batch-size", 2,
                 "--anchor-calls", 1, env=env) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    # they did run side by side: their calls interleave
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(set(pids)) == 2
    assert sum(a != b for a, b in zip(pids[:-1], pids[1:], strict=True)) >= 2
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.tif", "b.json", "b.tif", "barrier",
                                            "calls.txt", "in.tif"]
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=2, **RUN).output
    assert outs[0].read_bytes() == outs[1].read_bytes() == fresh.read_bytes()


def test_the_checkpoint_lives_in_scratch_when_given(src, tmp_path, monkeypatch):
    scratch = tmp_path / "fast-disk"
    scratch.mkdir()
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 5, scratch=scratch)
    assert hidden(tmp_path) == [] and hidden(scratch) == [checkpoint_folder(out, scratch).name]
    # 4 batches and the coarse prediction, or 5 batches before it
    kept = len(list(checkpoint_folder(out, scratch).glob("tile*.pred.npy")))
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, scratch=scratch, **RUN)
    assert kept in (16, 20) and result.resumed == kept and tiles_in(batches(log)) == 48 - kept
    assert hidden(scratch) == []


def test_cli_help_documents_resume():
    from click.testing import CliRunner

    from tiledepth.cli import main

    text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--resume / --no-resume" in text and "interrupted run" in text


# -- the folder is tiledepth's, or it is not touched ----------------------------------------


def user_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones and subfolders' too) with its content."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder of a user's files: plain, hidden, in a subfolder."""
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("field notes")
    (folder / ".config").write_text("hidden")
    (folder / "sub" / "tile0000001.pred.npy").write_bytes(b"a user's file with our name")
    return folder


@pytest.mark.parametrize("planted", ["link", "foreign folder", "file", "other user's folder"])
def test_a_checkpoint_name_taken_by_something_else_is_refused_untouched(
        src, tmp_path, monkeypatch, victim, planted):
    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    if planted == "link":  # the attack: a link at the predictable name
        folder.symlink_to(victim, target_is_directory=True)
        said = "is a symbolic link"
    elif planted == "file":
        folder.write_text("a file")
        said = "is not a folder"
    else:
        folder.mkdir()
        (folder / "mine.txt").write_text("not tiledepth's")
        said = "was not made by tiledepth"
        if planted == "other user's folder":
            if os.geteuid() != 0:
                pytest.skip("needs root to give a folder to another user")
            (folder / ".tiledepth-checkpoint").write_text('{"token": "x", "output": "y"}')
            os.chown(folder, 4321, 4321)
            said = r"belongs to another user \(uid 4321\)"
    before, inside = user_files(victim), sorted(os.listdir(tmp_path))
    log = calls_log(tmp_path, monkeypatch)
    with pytest.raises(OutputError, match=said) as info:
        tiledepth.run(src, out, model=SLOW, **RUN)
    assert "choose another --scratch" in str(info.value)
    assert user_files(victim) == before  # nothing deleted, nothing written into it
    assert batches(log) == []  # refused before the model ran
    assert sorted(os.listdir(tmp_path)) == inside  # no lock, output or scratch left
    if planted == "foreign folder":
        assert os.listdir(folder) == ["mine.txt"]


def test_the_run_removes_only_the_files_it_wrote(src, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 3, batch_size=4)  # 8 tiles kept
    folder = checkpoint_folder(out, tmp_path)
    # someone puts their own files in the kept checkpoint
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "tile0000001.pred.npy").write_text("mine too")
    # another seed: the run starts over, removing the 8 tiles it wrote, not those files
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, seed=1, **RUN)
    assert result.resumed == 0 and tiles_in(batches(log)) == 48
    assert sorted(os.listdir(folder)) == [".tiledepth-checkpoint", "notes.txt", "sub"]
    assert "left in place: it holds files tiledepth did not write" in caplog.text
    assert user_files(folder / "sub") == {"tile0000001.pred.npy": b"mine too"}
    # a file with a name the run would write, but not written by it: refused, not replaced
    np.save(folder / "tile0000040.pred.npy", np.ones((64, 64), np.float32))
    with pytest.raises(OutputError, match="tile0000040.pred.npy: was not written by tiledepth"):
        tiledepth.run(src, out, model=SLOW, seed=1, overwrite=True, **RUN)
    assert np.load(folder / "tile0000040.pred.npy").sum() == 64 * 64


def test_one_output_is_locked_whatever_the_scratch(src, tmp_path, monkeypatch):
    out = tmp_path / "out.tif"
    first, second = tmp_path / "scratch-a", tmp_path / "scratch-b"
    first.mkdir()
    second.mkdir()
    log = calls_log(tmp_path, monkeypatch)
    with Checkpoint(checkpoint_folder(out, first), "first run's key", output=out) as held:
        with pytest.raises(BusyError, match="another tiledepth run is writing the same output"):
            tiledepth.run(src, out, model=SLOW, scratch=second, **RUN)
        assert held.folder.is_dir() and os.listdir(second) == []
    assert batches(log) == []  # refused before the coarse prediction
    assert hidden(tmp_path) == [] and os.listdir(first) == []


# -- what a resumed checkpoint holds is checked --------------------------------------------


def test_corrupt_checkpoint_files_are_predicted_again(src, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out.tif"
    # coarse + 20 tiles (workers 0: the coarse prediction first, then the tiles)
    interrupted(src, out, tmp_path, monkeypatch, 6, batch_size=4, workers=0)
    folder = checkpoint_folder(out, tmp_path)
    rng = np.random.default_rng(0)
    coarse = np.load(folder / "coarse.npy")
    np.save(folder / "coarse.npy", rng.random(coarse.shape, np.float32))  # garbage coarse
    valid = np.load(folder / "tile0000000.valid.npy")
    np.save(folder / "tile0000000.valid.npy", np.zeros_like(valid))  # zeroed validity mask
    np.save(folder / "tile0000001.pred.npy", np.full((64, 64), np.nan, np.float32))  # NaN tile
    np.save(folder / "tile0000002.pred.npy", rng.random((64, 64), np.float32))  # garbage tile
    np.save(folder / "tile0000003.pred.npy", np.zeros((10, 10), np.float32))  # wrong shape
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, batch_size=4, **RUN)
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "5 file(s) failed their checksum, shape or dtype check" in line
    assert "predicting them again" in line
    assert result.resumed == 20 - 4
    assert (tiles_in(batches(log)), coarse_calls(batches(log))) == (48 - 16, 1)
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=4, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_a_cut_record_line_is_ended_before_the_next(tmp_path):
    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    pred, valid = np.ones((8, 8), np.float32), np.ones((8, 8), bool)
    with pytest.raises(KeyboardInterrupt), Checkpoint(folder, "k", output=out) as store:
        store.put(0, pred, valid)
        raise KeyboardInterrupt
    with open(folder / "files.jsonl", "ab") as f:
        f.write(b'{"name": "tile00000')  # a run killed while it wrote a record
    with pytest.raises(KeyboardInterrupt), Checkpoint(folder, "k", output=out) as store:
        assert store.resumed == 1
        store.put(1, pred * 2, valid)
        raise KeyboardInterrupt
    with Checkpoint(folder, "k", output=out) as store:
        assert store.resumed == 2 and store.get(1)[0][0, 0] == 2.0
    assert not folder.exists()


# -- the model's identity --------------------------------------------------------------------


def identity(fn) -> str:
    from tiledepth.identity import model_identity
    from tiledepth.models import CallableModel

    return model_identity(CallableModel(fn, name="mine"))


def scaled_by(scale):
    return lambda batch: batch[..., 0] * scale


def with_default(scale=0.5):
    def depth(batch, scale=scale):
        return batch[..., 0] * scale
    return depth


def nested(scale):
    def helper(x):
        return x * scale

    def depth(batch):
        return helper(batch[..., 0])
    return depth


class Scaler:
    def __init__(self, weights):
        self.weights = weights

    def __call__(self, batch):
        return batch @ self.weights


def test_model_identity_covers_what_determines_the_output(tmp_path):
    assert identity(lambda b: b[..., 0] * 0.5) != identity(lambda b: b[..., 0] * 7.0)  # constants
    assert identity(scaled_by(0.5)) != identity(scaled_by(7.0))  # closures
    assert identity(with_default(0.5)) != identity(with_default(7.0))  # defaults
    assert identity(nested(0.5)) != identity(nested(7.0))  # closures of closures
    weights = np.ones(3, np.float32)
    changed = weights.copy()
    changed[1] = 2.0
    assert identity(Scaler(weights)) != identity(Scaler(changed))  # a callable's state
    # the same model gives the same identity: a checkpoint is resumed with it
    for make in (scaled_by, with_default, nested):
        assert identity(make(0.5)) == identity(make(0.5))
        assert "?" not in identity(make(0.5))
    assert identity(Scaler(weights)) == identity(Scaler(weights.copy()))
    # what cannot be identified is never resumed with
    import threading

    lock = threading.Lock()
    assert identity(lambda b: lock and b[..., 0]) != identity(lambda b: lock and b[..., 0])


def test_model_identity_of_a_checkpoint_folder_and_of_torch_weights(tmp_path):
    from types import SimpleNamespace

    from tiledepth.identity import model_identity

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"depth": 4}')
    weights = np.random.default_rng(0).integers(0, 255, 3 * 2**20, np.uint8)
    (folder / "weights.bin").write_bytes(weights.tobytes())
    model = SimpleNamespace(name=str(folder), fn=scaled_by(1.0))
    ids = [model_identity(model)]
    (folder / "config.json").write_text('{"depth": 5}')
    ids.append(model_identity(model))
    weights[-1] ^= 1  # one bit at the end of a large file
    (folder / "weights.bin").write_bytes(weights.tobytes())
    ids.append(model_identity(model))
    assert len(set(ids)) == 3 and ids[-1] == model_identity(model)

    import torch  # a dependency: a missing one fails, not skips

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    loaded = SimpleNamespace(name="org/hub-model", model=net)
    before = model_identity(loaded)
    assert before == model_identity(loaded)
    with torch.no_grad():
        net.weight[0, 2] += 1.0
    assert model_identity(loaded) != before
    # a pool of Ray actors carries the identity its actors computed
    assert model_identity(SimpleNamespace(name="m", identity="m#0123")) == "m#0123"


def test_an_edited_model_module_starts_over(src, tmp_path, monkeypatch, caplog):
    code = ("import os\n\n\ndef depth(batch):\n"
            "    with open(os.environ['EDITED_CALLS'], 'a+') as f:\n"
            "        f.seek(0)\n"
            "        if len(f.readlines()) >= int(os.environ.get('EDITED_STOP', 10**9)):\n"
            "            raise KeyboardInterrupt\n"
            "        f.write('call\\n')\n"
            "    return batch[..., 0] * {}\n")
    module = tmp_path / "edited_model.py"
    module.write_text(code.format("0.5"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("EDITED_CALLS", str(tmp_path / "edited.txt"))
    monkeypatch.setenv("EDITED_STOP", "6")
    out = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        tiledepth.run(src, out, model="edited_model:depth", **RUN)
    # 5 batches and the coarse prediction, or 6 batches before it
    assert len(list(checkpoint_folder(out, tmp_path).glob("tile*.pred.npy"))) in (20, 24)
    # between the kill and the rerun, "* 0.5" becomes "* 7.0"
    module.write_text(code.format("7.0"))
    monkeypatch.delitem(sys.modules, "edited_model")
    monkeypatch.delenv("EDITED_STOP")
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model="edited_model:depth", **RUN)
    assert result.resumed == 0
    assert "(the model changed); starting over" in caplog.text
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model="edited_model:depth", **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_a_model_that_cannot_be_identified_is_not_resumed(tmp_path, caplog):
    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    tile = (np.ones((8, 8), np.float32), np.ones((8, 8), bool))
    with pytest.raises(KeyboardInterrupt), \
            Checkpoint(folder, "k1", {"model": "mine#ab?1234"}, output=out) as store:
        store.put(0, *tile)
        raise KeyboardInterrupt
    with caplog.at_level("WARNING"), \
            Checkpoint(folder, "k2", {"model": "mine#ab?5678"}, output=out) as store:
        assert store.resumed == 0
    assert "the model cannot be identified for sure" in caplog.text


def test_the_memory_budget_changes_neither_the_output_nor_the_checkpoint(
        src, tmp_path, monkeypatch):
    # memory=0: every tile but the last put is read back from the checkpoint folder; the
    # default 512 MiB holds all 48; the output is the same and the checkpoint is shared
    out = tmp_path / "out.tif"
    stop = interrupted(src, out, tmp_path, monkeypatch, 6, batch_size=4, memory=512)
    kept = len(list(checkpoint_folder(out, tmp_path).glob("tile*.pred.npy")))
    assert kept in (20, 24)  # 5 batches and the coarse prediction, or 6 batches before it
    assert f"{kept} tile prediction(s) kept in" in stop.__notes__[0]  # in memory and on disk
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=4, memory=0, **RUN)
    assert (result.resumed, tiles_in(batches(log))) == (kept, 48 - kept)
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=4, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_an_anchor_of_three_calls_is_kept_whole_for_a_resume(src, tmp_path, monkeypatch):
    """The default anchor (``anchor_calls`` 3: three coarse calls and their median, of a
    model whose calls differ) is kept in the checkpoint as one map: a run stopped after its
    coarse calls makes none of them again, and a run stopped before them makes all three
    (never a median of fewer); both resume to the bytes of an uninterrupted run."""
    run = dict(model="toy_models:slow_keyed", batch_size=4, **{**RUN, "anchor_calls": 3})
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", **run).output
    for stop_after in (2, 9):
        out = tmp_path / f"out{stop_after}.tif"
        calls_log(tmp_path, monkeypatch, stop_after)
        with pytest.raises(KeyboardInterrupt):
            tiledepth.run(src, out, **run)
        folder = checkpoint_folder(out, tmp_path)  # (none where nothing was kept)
        coarse = (folder / "coarse.npy").exists()
        # two calls of three: no anchor kept; nine: the three first (they go before the tiles')
        assert coarse == (stop_after == 9)
        log = calls_log(tmp_path, monkeypatch)
        tiledepth.run(src, out, **run)
        assert coarse_calls(batches(log)) == (0 if coarse else 3)
        assert out.read_bytes() == fresh.read_bytes()
    assert hidden(tmp_path) == []


def test_memory_must_be_a_whole_number_of_mib(src, tmp_path):
    with pytest.raises(tiledepth.errors.OptionError, match="memory must be >= 0, got -1"):
        tiledepth.run(src, tmp_path / "o.tif", model=SLOW, memory=-1, **RUN)


class FailsOnce:
    """Depth in the red channel, affinely distorted per tile (seeded by the tile); tile 4's
    first call is another scene, its second (:func:`tiledepth.infer.retry_key`) is right.
    With ``TILEDEPTH_TEST_STOP_RETRY`` set, Ctrl-C at the second call."""

    kind, name, batch_size = "depth", "fails-once", 4

    def predict(self, batch, keys):
        from tiledepth.infer import RETRY_STRIDE, is_coarse_key

        if os.environ.get("TILEDEPTH_TEST_STOP_RETRY") and any(
                k >= RETRY_STRIDE and not is_coarse_key(k) for k in keys):
            raise KeyboardInterrupt
        out = []
        for x, key in zip(batch, keys, strict=True):
            rng = np.random.default_rng(key % 2**32 + 10)
            p = rng.uniform(0.5, 2) * x[..., 0] + rng.uniform(-1, 1)
            out.append(5.0 * x[::-1, ::-1, 0] ** 2 if key == 4 else p)
        return np.stack(out).astype(np.float32)


def test_a_run_killed_at_its_second_call_resumes_from_the_checkpoint(tmp_path, monkeypatch):
    """The second call of a flagged tile (on by default) through a real checkpoint: a run
    stopped there resumes to the uninterrupted run's bytes, its tiles all kept."""
    import json

    from conftest import depth_field

    src = write_raster(tmp_path / "in.tif", np.repeat(depth_field(300, 400)[None], 3, 0))
    run = dict(model=FailsOnce(), tile_size=128, anchor_blur=0)
    whole = tiledepth.run(src, tmp_path / "whole.tif", **run)
    assert json.loads(whole.sidecar.read_text())["retried"] == [4]

    out = tmp_path / "out.tif"
    monkeypatch.setenv("TILEDEPTH_TEST_STOP_RETRY", "1")
    with pytest.raises(KeyboardInterrupt):
        tiledepth.run(src, out, **run)
    assert not out.exists()
    (folder,) = hidden(tmp_path)
    assert len(list((tmp_path / folder).glob("tile*.pred.npy"))) == whole.tiles
    monkeypatch.delenv("TILEDEPTH_TEST_STOP_RETRY")
    resumed = tiledepth.run(src, out, **run)
    assert resumed.resumed == whole.tiles  # only the second call was made
    assert out.read_bytes() == whole.output.read_bytes()
    assert hidden(tmp_path) == []


class KeyedFailsOnce(FailsOnce):
    """:class:`FailsOnce`, each call's keys appended to the file ``$TILEDEPTH_TEST_KEYS``."""

    def predict(self, batch, keys):
        with open(os.environ["TILEDEPTH_TEST_KEYS"], "a") as f:
            f.write("".join(f"{int(k)}\n" for k in keys))
        return super().predict(batch, keys)


def _points(path: Path) -> Path:
    """Three control points (x, y, height) on :func:`height_reference`'s heights."""
    path.write_text("x,y,z\n500010,5399990,40\n500150,5399900,35\n500100,5399950,38\n")
    return path


#: For each option of :data:`~tiledepth.checkpoint.FUSION_ONLY`, a run that changes it (with
#: what it needs: a bend needs bilinear maps, a hillshade a preview, a calibration heights).
#: Names of files: made in the test's folder.
FUSION_CHANGES = {
    "coarse_weight": {"coarse_weight": 2.5},
    "alignment": {"alignment": "bilinear"},
    "fusion": {"fusion": "gradient"},
    "robust": {"robust": False},
    "retry_flagged": {"retry_flagged": False},
    "estimate_weights": {"estimate_weights": False},
    "overlap_weighting": {"overlap_weighting": "blend"},
    "bend_from_anchor": {"bend_from_anchor": True, "alignment": "bilinear"},
    "anchor_blur": {"anchor_blur": 1.5},
    "output_kind": {"output_kind": "inverse-depth"},
    "reference": {"reference": "ref.tif", "output_kind": "height"},
    "control": {"control": "points.csv", "output_kind": "height"},
    "control_crs": {"control": "points.csv", "control_crs": "EPSG:32611",
                    "output_kind": "height"},
    "overviews": {"overviews": False},
    "cog": {"cog": True},
    "preview": {"preview": True},
    "hillshade": {"preview": True, "hillshade": True},
}
#: For each option of :data:`~tiledepth.checkpoint.COARSE_OPTIONS`, a run that changes it,
#: and the coarse calls it makes: two of the default three (:class:`FailsOnce`'s coarse calls
#: repeat, keyed modulo 2**32: the second, equal to the first, ends them).
COARSE_CHANGES = {
    "anchor_calls": ({"anchor_calls": 1}, 1),
    "coarse_size": ({"coarse_size": 96}, 2),
    "pyramid": ({"pyramid": False}, 2),  # (no level here either way: its coarse image alike)
    "anchor": ({"anchor": "reference", "reference": "ref.tif", "output_kind": "height"}, 1),
}


def _stopped_while_blending(src, out, monkeypatch, **run) -> KeyboardInterrupt:
    """Run until every prediction (a flagged tile's second too) is in the checkpoint: stopped
    as it starts to blend; return the KeyboardInterrupt (its notes: what was kept)."""
    from tiledepth import stages

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(stages, "blend_and_write", stopped)
        with pytest.raises(KeyboardInterrupt) as info:
            tiledepth.run(src, out, **run)
    return info.value


@pytest.mark.parametrize("option", [*FUSION_CHANGES, *COARSE_CHANGES])
def test_a_run_resumed_with_another_fusion_option_reuses_every_prediction(
        option, tmp_path, monkeypatch):
    """An option that changes how the predictions are fused, calibrated or written, not the
    predictions, is out of the checkpoint's key: a run stopped once every prediction was
    kept (the flagged tile's second call too), resumed with it changed, calls the model for
    no tile, and writes the bytes of a fresh run with it changed. An option of the coarse
    prediction alone makes the coarse calls again, and no tile's. The tables cover every
    option the key leaves out for this reason (a new one is added to them, with its test)."""
    from conftest import depth_field

    from tiledepth.checkpoint import COARSE_OPTIONS, FUSION_ONLY
    from tiledepth.infer import RETRY_STRIDE, is_coarse_key

    assert set(FUSION_CHANGES) == FUSION_ONLY and set(COARSE_CHANGES) == set(COARSE_OPTIONS)
    monkeypatch.chdir(tmp_path)
    height_reference(tmp_path / "ref.tif")
    _points(tmp_path / "points.csv")
    src = write_raster(tmp_path / "in.tif", np.repeat(depth_field(300, 400)[None], 3, 0))
    keys = tmp_path / "keys.txt"
    monkeypatch.setenv("TILEDEPTH_TEST_KEYS", str(keys))
    run = dict(model=KeyedFailsOnce(), tile_size=128)
    changed, coarse_calls = (FUSION_CHANGES[option], 0) if option in FUSION_CHANGES \
        else COARSE_CHANGES[option]

    out = tmp_path / "out.tif"
    _stopped_while_blending(src, out, monkeypatch, **run)
    made = [int(k) for k in keys.read_text().split()]
    assert RETRY_STRIDE + 4 in made  # the flagged tile's second call was made, and kept
    keys.unlink()
    resumed = tiledepth.run(src, out, **run, **changed)
    calls = [int(k) for k in keys.read_text().split()] if keys.exists() else []
    assert [k for k in calls if not is_coarse_key(k)] == []  # no tile, no second call
    assert sum(map(is_coarse_key, calls)) == coarse_calls
    assert resumed.resumed == resumed.tiles
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", **run, **changed)
    assert out.read_bytes() == fresh.output.read_bytes()
    assert hidden(tmp_path) == []


def test_the_coarse_prediction_is_kept_for_options_that_make_the_same_one(
        src, tmp_path, monkeypatch):
    """The coarse options are compared as they are used: ``coarse_size`` given as the tile
    size (its default), or other ``anchor_calls`` under ``--anchor reference`` (one call
    whatever they say), keep the stored coarse prediction; the bytes are a fresh run's."""
    ref = height_reference(tmp_path / "ref.tif")
    for first, again in (({}, {"coarse_size": 64}),
                         ({"anchor_calls": 3}, {"anchor_calls": 2})):
        anchored = {"anchor": "reference", "reference": str(ref), "output_kind": "height"} \
            if "anchor_calls" in first else {}
        out = tmp_path / f"out{len(again)}{sorted(again)[0]}.tif"
        calls_log(tmp_path, monkeypatch)
        _stopped_while_blending(src, out, monkeypatch, model=SLOW,
                                **{**RUN, **anchored, **first})
        log = calls_log(tmp_path, monkeypatch)
        result = tiledepth.run(src, out, model=SLOW, **{**RUN, **anchored, **again})
        assert (result.resumed, batches(log)) == (48, [])  # no call at all
        fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, overwrite=True,
                              **{**RUN, **anchored, **again})
        assert out.read_bytes() == fresh.output.read_bytes()


def test_a_checkpoint_of_another_tiledepth_says_so(src, tmp_path, monkeypatch, caplog):
    """A checkpoint kept by a tiledepth of another key layout (or version) starts over, and
    the warning says why: no option the user changed explains it."""
    from tiledepth import checkpoint

    out = tmp_path / "out.tif"
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "FORMAT", 2)
        interrupted(src, out, tmp_path, monkeypatch, 4)
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, **RUN)
    assert "options (kept by another version of tiledepth); starting over" in caplog.text
    assert result.resumed == 0 and tiles_in(batches(log)) == 48


def test_kept_predictions_are_fused_again_without_the_model(src, tmp_path, monkeypatch):
    """``keep_predictions``: the checkpoint outlives a complete run; the same command with
    ``overwrite`` and another fusion option calls the model for nothing and writes a fresh
    run's bytes; without ``overwrite`` the output is refused and the folder left as it is;
    a rerun without ``keep_predictions`` removes the folder once its output is complete."""
    import json

    from tiledepth.errors import OutputError

    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    log = calls_log(tmp_path, monkeypatch)
    first = tiledepth.run(src, out, model=SLOW, keep_predictions=True, **RUN)
    assert first.kept == folder and first.resumed == 0 and tiles_in(batches(log)) == 48
    assert len(list(folder.glob("tile*.pred.npy"))) == 48 and (folder / "coarse.npy").exists()
    assert json.loads((folder / "manifest.json").read_text())["resumable"] is True
    assert hidden(tmp_path) == [folder.name]  # the folder alone: no lock, nothing else

    before = sorted((f.name, f.stat().st_mtime_ns) for f in folder.iterdir())
    with pytest.raises(OutputError, match="already exists"):
        tiledepth.run(src, out, model=SLOW, keep_predictions=True, **RUN)
    assert sorted((f.name, f.stat().st_mtime_ns) for f in folder.iterdir()) == before

    log = calls_log(tmp_path, monkeypatch)
    again = tiledepth.run(src, out, model=SLOW, keep_predictions=True, overwrite=True,
                          coarse_weight=2.5, fusion="gradient", **RUN)
    assert batches(log) == [] and again.resumed == 48 and again.kept == folder
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, coarse_weight=2.5,
                          fusion="gradient", **RUN)
    assert fresh.kept is None and out.read_bytes() == fresh.output.read_bytes()

    log = calls_log(tmp_path, monkeypatch)
    last = tiledepth.run(src, out, model=SLOW, overwrite=True, **RUN)
    assert batches(log) == [] and last.resumed == 48 and last.kept is None
    assert hidden(tmp_path) == []
    plain = tiledepth.run(src, tmp_path / "plain.tif", model=SLOW, **RUN)
    assert out.read_bytes() == plain.output.read_bytes()


def test_the_command_line_names_the_kept_predictions_and_their_size(src, tmp_path):
    """``--keep-predictions`` on the command line: the last line names the folder, its size
    and how to use it; the folder is there."""
    from click.testing import CliRunner

    from tiledepth.cli import main

    out = tmp_path / "out.tif"
    res = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model", "toy_models:red",
                                    "--tile-size", "64", "--no-progress", "--keep-predictions"])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    folder = checkpoint_folder(out, tmp_path)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    assert last == (f"kept the tile predictions in {folder} ({size:.1f} MB): the same command "
                    "with --overwrite and other options of the fusion, calibration or writing "
                    "(--coarse-weight, --fusion, --reference, --cog...) reuses them, "
                    "predicting no tile again; delete the folder when done")


def test_keep_predictions_is_refused_where_nothing_could_be_reused(src, tmp_path):
    """Refused in one line, before any file is made: with ``resume`` off or ``uncertainty``
    (never resumed), in :func:`tiledepth.estimate` (nothing on disk), for a split (its fused
    map removed), by a batch (one run's option; ``batch --mosaic`` too, before its folder
    and manifest are made) and for a remote output without ``--scratch`` (kept in the
    system's temporary folder)."""
    from tiledepth.batchrun import batch
    from tiledepth.errors import OptionError
    from tiledepth.mosaic import run_mosaic

    with pytest.raises(OptionError, match=r"keep_predictions \(--keep-predictions\) needs "
                       r"resume; drop --no-resume \(resume: false\) or --keep-predictions"):
        tiledepth.run(src, tmp_path / "a.tif", model=SLOW, keep_predictions=True,
                      resume=False, **RUN)
    with pytest.raises(OptionError, match=r"an uncertainty run \(--uncertainty\) is never "
                       "resumed; drop one of them"):
        tiledepth.run(src, tmp_path / "b.tif", model=SLOW, keep_predictions=True,
                      uncertainty=True, ensemble=3, **RUN)
    with pytest.raises(OptionError, match="keep_predictions: only tiledepth.run uses it"):
        tiledepth.estimate(np.zeros((64, 64, 3), np.float32), model=SLOW,
                           keep_predictions=True, tile_size=64)
    with pytest.raises(OptionError, match=r"does not combine with a split \(--split\) yet"):
        run_mosaic([src], tmp_path / "split", split=True, model=SLOW, keep_predictions=True,
                   **RUN)
    for mosaic in (False, True):
        with pytest.raises(OptionError, match=r"is for one run \(tiledepth run"):
            batch([src], tmp_path / "batch", model=SLOW, keep_predictions=True,
                  mosaic=mosaic, **RUN)
    with pytest.raises(OptionError, match="with a remote output needs --scratch"):
        tiledepth.run(src, "s3://bucket/out.tif", model=SLOW, keep_predictions=True, **RUN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_run_that_does_not_resume_says_it_removes_kept_predictions(
        src, tmp_path, monkeypatch, caplog):
    """Predictions kept for a resume (here ``--keep-predictions``', an interrupted run's
    alike) that a run with ``--no-resume`` removes: one warning says so; removed silently,
    they were hours of a GPU gone without a word."""
    out = tmp_path / "out.tif"
    tiledepth.run(src, out, model=SLOW, keep_predictions=True, **RUN)
    folder = checkpoint_folder(out, tmp_path)
    assert folder.is_dir()
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, overwrite=True, resume=False, **RUN)
    assert f"{folder}: holds tile predictions a rerun could reuse; removed (this run does " \
        "not resume: --no-resume or --uncertainty)" in caplog.text
    assert result.resumed == 0 and hidden(tmp_path) == []

    # the same of the checkpoint beside the output, which a --scratch run takes in (removes)
    tiledepth.run(src, out, model=SLOW, overwrite=True, keep_predictions=True, **RUN)
    caplog.clear()
    fast = tmp_path / "fast"
    fast.mkdir()
    with caplog.at_level("WARNING"):
        tiledepth.run(src, out, model=SLOW, overwrite=True, resume=False, scratch=fast, **RUN)
    assert f"{folder}: holds tile predictions a rerun could reuse; removed" in caplog.text
    assert hidden(tmp_path) == [] and hidden(fast) == []


def test_a_model_without_uncertainty_is_refused_before_kept_predictions_are_touched(
        src, tmp_path):
    """``--uncertainty`` with a model that gives none is refused before the checkpoint is
    opened: it emptied a checkpoint kept for a resume (the run does not resume), then failed
    all the same."""
    from tiledepth.errors import OptionError

    out = tmp_path / "out.tif"
    tiledepth.run(src, out, model=SLOW, keep_predictions=True, **RUN)
    folder = checkpoint_folder(out, tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(OptionError, match="gives no uncertainty"):
        tiledepth.run(src, out, model=SLOW, overwrite=True, uncertainty=True, ensemble=3,
                      **RUN)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_checkpoint_key_holds_every_option_that_changes_a_prediction():
    """Every option is in the checkpoint's key unless it is named as changing no prediction
    (:data:`FUSION_ONLY`, :data:`COARSE_OPTIONS`) or nothing of the output
    (:data:`NOT_IN_KEY`); changing any of the others changes the key. The key of what a run
    writes (:func:`output_key`, a split's fused map's) changes with all but the last."""
    from dataclasses import fields

    from tiledepth.checkpoint import (
        COARSE_OPTIONS,
        FUSION_ONLY,
        NOT_IN_KEY,
        checkpoint_key,
        output_key,
    )
    from tiledepth.options import Options, make_options

    in_key = {"tile_size": 128, "overlap": 0.5, "device": "cpu", "dtype": "fp16", "steps": 2,
              "ensemble": 2, "seed": 1, "bands": (3, 2, 1), "scale": 0.5, "nodata": 0.0,
              "mask": "elsewhere/mask.tif", "uncertainty": True}
    names = {f.name for f in fields(Options)}
    assert set(in_key) == names - NOT_IN_KEY - FUSION_ONLY - set(COARSE_OPTIONS)
    assert not FUSION_ONLY & NOT_IN_KEY and not set(COARSE_OPTIONS) & (FUSION_ONLY | NOT_IN_KEY)
    model = lambda b: b[..., 0]  # noqa: E731
    base = make_options()
    key, fused = checkpoint_key({}, base, model)[0], output_key({}, base, model)
    for name, value in in_key.items():
        opts = make_options(**({"uncertainty": True, "ensemble": 3} if name == "uncertainty"
                               else {name: value}))
        assert checkpoint_key({}, opts, model)[0] != key, name
        assert output_key({}, opts, model) != fused, name
    others = {name: FUSION_CHANGES[name] for name in FUSION_ONLY}
    others.update({name: COARSE_CHANGES[name][0] for name in COARSE_OPTIONS})
    for name, changed in others.items():
        opts = make_options(**changed)
        assert checkpoint_key({}, opts, model)[0] == key, name
        assert output_key({}, opts, model) != fused, name
    for name, value in {"batch_size": 8, "workers": 0, "memory": 64, "resume": False,
                        "scratch": "/tmp", "keep_predictions": True}.items():
        opts = make_options(**{name: value})
        assert (checkpoint_key({}, opts, model)[0], output_key({}, opts, model)) == (key, fused)


def test_the_tiles_cache_is_released_before_the_overviews_and_a_kill_there_resumes(
        src, tmp_path, monkeypatch):
    """Once every window is fused, the checkpoint's tile cache is emptied before the writer's
    finish (the overviews), the tiles left on disk: a run stopped while the overviews are
    built resumes every tile from the checkpoint, to the bytes of an uninterrupted run."""
    from tiledepth import cog, engine

    stores, trims = [], []
    monkeypatch.setattr(engine, "_trim_heap", lambda: trims.append(len(stores[-1]._cache)))
    opened = engine.open_checkpoint
    monkeypatch.setattr(engine, "open_checkpoint",
                        lambda *a, **k: stores.append(opened(*a, **k)) or stores[-1])
    seen = []

    def stopped_overviews(path, **kwargs):
        store = stores[-1]
        seen.append((len(store._cache), store._cached, store.tiles))
        raise KeyboardInterrupt

    out = tmp_path / "out.tif"
    calls_log(tmp_path, monkeypatch)
    monkeypatch.setattr(cog, "build_overviews", stopped_overviews)
    with pytest.raises(KeyboardInterrupt) as info:
        tiledepth.run(src, out, model=SLOW, batch_size=4, **RUN)
    assert seen == [(0, 0, 48)]  # nothing cached (512 MiB would hold all 48), all on disk
    assert trims == [0]  # the heap trimmed once, the cache released
    assert "48 tile prediction(s) kept in" in info.value.__notes__[0]
    assert not out.exists()

    monkeypatch.undo()
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=4, **RUN)
    assert (result.resumed, tiles_in(batches(log)), coarse_calls(batches(log))) == (48, 0, 0)
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=4, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()
    assert hidden(tmp_path) == []


def test_a_file_in_an_archive_that_changed_is_not_resumed(tmp_path, monkeypatch):
    """A ``/vsizip/`` input is identified by its archive (size, mtime, a hash of its ends):
    an interrupted run, the archive then rewritten with another image, runs afresh and
    writes that image's map (it took the old tiles: its checkpoint key named only the
    path)."""
    import zipfile

    import rasterio

    def zipped(image):
        tif = write_raster(tmp_path / "ortho.tif", image)
        with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
            z.write(tif, "ortho.tif")

    first = depth_image(300, 400)
    zipped(first)
    src, out = f"/vsizip/{tmp_path}/d.zip/ortho.tif", tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, stop_after=6)
    zipped(np.ascontiguousarray(first[:, ::-1]))  # another image under the same name
    calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, **RUN)
    fresh = tiledepth.run(tmp_path / "ortho.tif", tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert result.resumed == 0
    with rasterio.open(out) as a, rasterio.open(fresh.output) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def half_mask(path: Path, masked: str) -> Path:
    """A --mask of ``src`` (300 x 400 px) that masks its ``masked`` ('left' or 'right') half."""
    mask = np.ones((1, 300, 400), np.uint8)
    mask[:, :, slice(0, 200) if masked == "left" else slice(200, 400)] = 0
    return write_raster(path, mask)


def test_a_mask_edited_at_the_same_path_is_not_resumed(src, tmp_path, monkeypatch, caplog):
    """The key holds the ``--mask`` file's identity, not only its path: a run interrupted,
    the mask then corrected in place, runs afresh and writes exactly a fresh run's map (it
    took the kept tiles and their validity under the old mask: 6 resumed, 4.05 off). The
    same mask untouched still resumes."""
    import rasterio

    mask, out = half_mask(tmp_path / "mask.tif", "left"), tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, mask=mask)
    calls_log(tmp_path, monkeypatch)
    kept = tiledepth.run(src, out, model=SLOW, batch_size=2, mask=mask, **RUN)
    assert kept.resumed > 0  # the same mask: its tiles are reused

    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, mask=mask, overwrite=True)
    half_mask(mask, "right")  # the user fixes the mask, at the same path
    calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, batch_size=2, mask=mask, overwrite=True,
                               **RUN)
    assert "starting over" in caplog.text and "(the --mask file changed)" in caplog.text
    assert result.resumed == 0
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=2, mask=mask,
                          resume=False, **RUN)
    with rasterio.open(out) as a, rasterio.open(fresh.output) as b:
        resumed, expected = a.read(1), b.read(1)
    assert np.isnan(expected[:, 200:]).all() and np.isfinite(expected[:, :200]).all()
    np.testing.assert_array_equal(resumed, expected)


def vrt_of(path: Path, source: str) -> Path:
    """A VRT file of the 300 x 400 RGB ``source``, named relative to the VRT."""
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
        f'relativeToVRT="1">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    path.write_text('<VRTDataset rasterXSize="400" rasterYSize="300"><SRS>EPSG:32611</SRS>'
                    "<GeoTransform>500000, 0.5, 0, 5400000, 0, -0.5</GeoTransform>"
                    f"{bands}</VRTDataset>")
    return path


def test_a_vrt_whose_source_changed_is_not_resumed(tmp_path, monkeypatch):
    """A ``.vrt`` input is identified with every file it reads: its source re-delivered
    (another image at the same path, the .vrt untouched) runs afresh and writes that image's
    map (it took the old tiles: 6 resumed, 1.30 off, its key named the .vrt alone)."""
    import rasterio

    first = depth_image(300, 400)
    (tmp_path / "tiles").mkdir()
    write_raster(tmp_path / "tiles" / "src.tif", first)
    vrt, out = vrt_of(tmp_path / "m.vrt", "tiles/src.tif"), tmp_path / "out.tif"
    interrupted(vrt, out, tmp_path, monkeypatch, 4, batch_size=2)
    write_raster(tmp_path / "tiles" / "src.tif", np.ascontiguousarray(first[:, ::-1]))
    calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(vrt, out, model=SLOW, batch_size=2, **RUN)
    fresh = tiledepth.run(tmp_path / "tiles" / "src.tif", tmp_path / "fresh.tif", model=SLOW,
                          batch_size=2, **RUN)
    assert result.resumed == 0
    with rasterio.open(out) as a, rasterio.open(fresh.output) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_the_keys_of_runs_without_a_mask_or_a_vrt_hold_the_input_alone(src, tmp_path):
    """A plain file's identity is :func:`~tiledepth.identity.input_identity` alone and no
    ``mask`` enters the manifest (the key of a split's fused map, :func:`output_key`, is as
    before: a kept one is still reused); a VRT's sources are found relative to it, as GDAL
    finds them."""
    from tiledepth.checkpoint import _key, checkpoint_key
    from tiledepth.identity import input_identity, raster_identity, vrt_sources
    from tiledepth.options import make_options
    from tiledepth.plan import input_key

    assert input_key(src) == input_identity(src) == raster_identity(src)
    _, manifest = checkpoint_key(input_identity(src), make_options(), lambda b: b[..., 0])
    assert set(manifest) == {"format", "tiledepth", "input", "model", "options", "coarse"}
    _, manifest = _key(input_identity(src), make_options(), lambda b: b[..., 0], set(), 2)
    assert set(manifest) == {"format", "tiledepth", "input", "model", "options"}
    vrt = vrt_of(tmp_path / "m.vrt", "in.tif")
    assert vrt_sources(vrt) == [str(tmp_path / "in.tif")]
    assert raster_identity(vrt)["sources"] == [input_identity(src)]


def test_a_model_class_typed_in_a_console_runs(src, tmp_path):
    """A model class defined where there is no file (`python -c`, a console): its identity
    is taken without its source file (``inspect`` raised OSError out of the run)."""
    code = (
        "import sys, tiledepth\n"
        "class Scaled:\n"
        "    name, batch_size = 'scaled', 4\n"
        "    def __init__(self, k): self.k = k\n"
        "    def predict(self, batch, keys): return batch[..., 0] * self.k\n"
        "r = tiledepth.run(sys.argv[1], sys.argv[2], model=Scaled(2.0), tile_size=64)\n"
        "print(r.tiles)\n")
    out = tmp_path / "typed.tif"
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 0 and out.exists()


def test_a_damaged_manifest_says_why_the_run_starts_over(src, tmp_path, monkeypatch, caplog):
    """A checkpoint whose manifest.json was cut: its predictions cannot be matched to the
    run, which starts over, now saying so (it did silently)."""
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, stop_after=6)
    folder = checkpoint_folder(out, tmp_path)
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING", logger="tiledepth"):
        result = tiledepth.run(src, out, model=SLOW, **RUN)
    assert result.resumed == 0
    assert "manifest is missing or damaged" in caplog.text


# -- what a run that cannot resume leaves; what a full records file says --------------------


class Spready:
    """:func:`toy_models.affine_red` with a spread (``--uncertainty``); Ctrl-C after ``stop``
    calls."""

    name, batch_size, kind = "spready", 4, "depth"

    def __init__(self, stop: int | None = None) -> None:
        self.stop = stop
        self.calls = [0]

    def predict(self, batch, keys):
        return self.predict_with_uncertainty(batch, keys)[0]

    def predict_with_uncertainty(self, batch, keys):
        from toy_models import affine_red

        self.calls[0] += 1
        if self.stop is not None and self.calls[0] > self.stop:
            raise KeyboardInterrupt
        depth = affine_red(batch)
        return depth, np.abs(depth) * 0.1


@pytest.mark.parametrize("how", ["--no-resume", "--uncertainty"])
def test_a_run_that_does_not_resume_keeps_nothing_and_promises_no_resume(
        src, tmp_path, monkeypatch, how):
    """A run that does not resume (``--no-resume``; ``--uncertainty``, whose spreads are
    never kept) interrupted: nothing is kept and the error line does not say "run the same
    command again to resume" (it did, and kept 12 or 16 tiles that the same command
    then predicted again, all 48)."""
    out = tmp_path / "out.tif"
    if how == "--no-resume":
        stop = interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=4, resume=False)
    else:
        with pytest.raises(KeyboardInterrupt) as info:
            tiledepth.run(src, out, model=Spready(stop=4), uncertainty=True, ensemble=3, **RUN)
        stop = info.value
    assert getattr(stop, "__notes__", []) == []
    assert hidden(tmp_path) == []  # no checkpoint, no scratch folder, no lock


SPREADY_CHILD = """
import os, sys
import numpy as np
import tiledepth

class Spready:
    name, batch_size, kind = "spready", 4, "depth"
    def predict(self, batch, keys):
        return self.predict_with_uncertainty(batch, keys)[0]
    def predict_with_uncertainty(self, batch, keys):
        with open(sys.argv[3], "a") as f:
            f.write("call\\n")
        if int(sys.argv[4]) and len(open(sys.argv[3]).readlines()) > int(sys.argv[4]):
            os._exit(9)  # as SIGKILL: nothing is cleaned up
        depth = batch[..., 0] * 2.0 + 0.5
        return depth, np.abs(depth) * 0.1

r = tiledepth.run(sys.argv[1], sys.argv[2], model=Spready(), tile_size=64, overlap=0.25,
                  uncertainty=True, ensemble=3, overwrite=True)
print(r.tiles)
"""


def test_the_spreads_of_a_killed_uncertainty_run_are_removed_by_the_next(src, tmp_path):
    """An ``--uncertainty`` run killed (SIGKILL) twice, then run to the end: nothing of the
    killed runs stays beside the output (each left a ``.tiledepth-scratch-*`` folder of
    every tile's spread, for good: 2 folders, 0.2 MiB each here)."""
    out, log = tmp_path / "out.tif", tmp_path / "calls.txt"
    for stop in (6, 6, 0):
        log.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", SPREADY_CHILD, str(src), str(out),
                               str(log), str(stop)], capture_output=True, text=True,
                              env=child_env(), timeout=120)
        assert proc.returncode == (9 if stop else 0), proc.stderr
        if stop:  # the spreads are in the checkpoint folder, recorded there
            folder = checkpoint_folder(out, tmp_path)
            assert [p for p in hidden(tmp_path) if "scratch" in p] == []
            assert any(folder.glob("spread.tile*.pred.npy"))
    assert int(proc.stdout.split()[-1]) == 48
    assert hidden(tmp_path) == []


def test_two_outputs_with_one_sidecar_are_locked_as_one(src, tmp_path):
    """``-o x.tif`` and ``-o x.tiff`` write one sidecar, ``x.json`` (and one preview): the
    second run is refused at the start (it ran all its model calls, then failed on
    ``x.json: appeared while tiledepth ran``, and so did its rerun)."""
    first, second = tmp_path / "x.tif", tmp_path / "x.tiff"
    with Checkpoint(checkpoint_folder(first, tmp_path), "the first run's key", output=first):
        with pytest.raises(BusyError, match=r"x.tiff: another tiledepth run is writing the "
                           r"same output now \(or one with the same sidecar, x.json\)"):
            tiledepth.run(src, second, model=SLOW, **RUN)
    assert hidden(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["in.tif"]
    tiledepth.run(src, second, model=SLOW, **RUN)  # once the first is done
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "x.json", "x.tiff"]
    assert lock_path(first) == lock_path(second) == tmp_path / ".x.tiledepth-lock"


def test_a_full_disk_while_recording_a_file_is_the_one_line_error(src, tmp_path, monkeypatch):
    """``files.jsonl`` appended to on a full scratch disk: the documented one-line error
    naming the record and ``--scratch`` (it was 'unexpected OSError: [Errno 28] ...'), the
    tiles already written kept for a resume."""
    import errno

    from tiledepth import checkpoint
    from tiledepth.errors import WriteError

    fds, real_open, real_write = set(), checkpoint._open_records, os.write

    def open_records(path):
        fd = real_open(path)
        fds.add(fd)
        return fd

    def write(fd, data):
        if fd in fds:
            fds.add(-1 - len(fds))  # one more record written
            if len(fds) > 12:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(checkpoint, "_open_records", open_records)
    monkeypatch.setattr(os, "write", write)
    out = tmp_path / "out.tif"
    calls_log(tmp_path, monkeypatch)
    with pytest.raises(WriteError) as info:
        tiledepth.run(src, out, model=SLOW, **RUN)
    monkeypatch.undo()
    folder = checkpoint_folder(out, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{folder / 'files.jsonl'}: no space left on device (")
    assert message.endswith("MiB free); free some space or choose another place with "
                            "--scratch")
    assert "tile prediction(s) kept in" in info.value.__notes__[0]


@pytest.mark.parametrize("companion", ["in.tif.aux.xml", "in.tif.msk"])
def test_a_nodata_or_mask_file_added_beside_the_input_is_not_resumed(
        tmp_path, monkeypatch, companion):
    """A run interrupted, then a no-data value (``gdal_edit -a_nodata 0``: an ``.aux.xml``
    beside the raster) or an external ``.msk`` mask added, the raster's own file untouched:
    the run starts over and writes a fresh run's map, its black collar no-data (it took the
    kept tiles and their old validity: values over the collar, more tiles). The key of a
    raster without such files is as before."""
    import rasterio

    from tiledepth.identity import input_identity
    from tiledepth.plan import input_key

    image = depth_image(300, 400)
    image[:, :, :100] = 0  # a black collar
    src, out = write_raster(tmp_path / "in.tif", image), tmp_path / "out.tif"
    assert input_key(src) == input_identity(src)
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2)
    before = src.read_bytes(), src.stat().st_mtime_ns
    if companion.endswith(".aux.xml"):
        (tmp_path / companion).write_text("<PAMDataset>" + "".join(
            f'<PAMRasterBand band="{b}"><NoDataValue>0</NoDataValue></PAMRasterBand>'
            for b in (1, 2, 3)) + "</PAMDataset>")
    else:
        mask = np.full((1, 300, 400), 255, np.uint8)
        mask[:, :, :100] = 0
        write_raster(tmp_path / companion, mask, crs=None, transform=None)
        with rasterio.open(tmp_path / companion, "r+") as ds:
            ds.update_tags(**{f"INTERNAL_MASK_FLAGS_{b}": "2" for b in (1, 2, 3)})
    assert (src.read_bytes(), src.stat().st_mtime_ns) == before
    calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=2, **RUN)
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=2, **RUN)
    assert result.resumed == 0 and result.tiles == fresh.tiles
    with rasterio.open(out) as a, rasterio.open(fresh.output) as b:
        resumed, expected = a.read(1), b.read(1)
    assert np.isnan(expected[:, :100]).all() and np.isfinite(expected[:, 100:]).all()
    np.testing.assert_array_equal(resumed, expected)
    # the same companion, untouched: the next interrupted run resumes
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, overwrite=True)
    calls_log(tmp_path, monkeypatch)
    assert tiledepth.run(src, out, model=SLOW, batch_size=2, overwrite=True, **RUN).resumed > 0


def test_companion_files_are_what_gdal_reads_beside_a_raster(tmp_path):
    """The ``.aux.xml`` and the world file (of a raster without a transform) GDAL reads with
    a raster enter its identity (and a mosaic member's); a VRT's sources are its
    ``sources``, not companions; a raster without any keeps its key, and a file GDAL cannot
    open has none."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from tiledepth.identity import companion_files, input_identity, raster_identity
    from tiledepth.plan import input_key

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = write_raster(tmp_path / "in.tif", depth_image(30, 40), crs=None, transform=None)
    vrt = vrt_of(tmp_path / "m.vrt", "in.tif")
    assert companion_files(src) == companion_files(vrt) == []
    assert raster_identity(src) == input_identity(src)
    (tmp_path / "in.tfw").write_text("0.5\n0\n0\n-0.5\n500000\n5400000\n")
    # statistics only (QGIS writes them on opening a layer): nothing a run reads changes
    aux = tmp_path / "in.tif.aux.xml"
    aux.write_text('<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MAXIMUM">'
                   '255</MDI></Metadata></PAMRasterBand></PAMDataset>')
    (tmp_path / "notes.txt").write_text("not a raster")
    assert companion_files(src) == [tmp_path / "in.tfw", aux]
    assert raster_identity(src)["companions"] == [input_identity(tmp_path / "in.tfw")]
    key = raster_identity(src)
    aux.write_text(aux.read_text().replace("255", "254"))  # statistics again: the same key
    assert raster_identity(src) == key
    aux.write_text('<PAMDataset><PAMRasterBand band="1"><NoDataValue>0</NoDataValue>'
                   '</PAMRasterBand></PAMDataset>')  # a no-data value: a key of its own
    assert raster_identity(src)["companions"][1]["path"] == str(aux)
    assert raster_identity(src) != key
    assert companion_files(vrt) == [] and "companions" not in raster_identity(vrt)
    assert raster_identity(vrt)["sources"] == [raster_identity(src)]
    mosaic = ('<VRTDataset rasterXSize="40" rasterYSize="30"><VRTRasterBand dataType="Byte" '
              f'band="1"><SimpleSource><SourceFilename>{src}</SourceFilename><SourceBand>1'
              '</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    assert input_key(mosaic)["companions"] == raster_identity(src)["companions"]
    assert companion_files(tmp_path / "notes.txt") == []


def test_a_retried_tiles_second_prediction_is_not_counted_as_a_tile(tmp_path, monkeypatch):
    """A run stopped while blending, after a flagged tile's second call: both of its
    predictions are kept, and resumed, but it is one tile, in the hint and in ``resumed``."""
    import json

    from conftest import depth_field

    from tiledepth.infer import retry_key

    src = write_raster(tmp_path / "in.tif", np.repeat(depth_field(300, 400)[None], 3, 0))
    run = dict(model=FailsOnce(), tile_size=128, anchor_blur=0)
    whole = tiledepth.run(src, tmp_path / "whole.tif", **run)
    assert json.loads(whole.sidecar.read_text())["retried"] == [4]

    out = tmp_path / "out.tif"
    stop = _stopped_while_blending(src, out, monkeypatch, **run)
    (folder,) = hidden(tmp_path)
    files = sorted(p.name for p in (tmp_path / folder).glob("tile*.pred.npy"))
    assert len(files) == whole.tiles + 1 and f"tile{retry_key(4, 1):07d}.pred.npy" in files
    assert f"{whole.tiles} tile prediction(s) kept in" in stop.__notes__[0]  # not 13
    resumed = tiledepth.run(src, out, **run)
    assert resumed.resumed == whole.tiles  # not whole.tiles + 1
    assert out.read_bytes() == whole.output.read_bytes()


def test_a_whole_number_in_a_config_resumes_the_same_run_given_as_a_float(
        src, tmp_path, monkeypatch, caplog):
    """``nodata: 0`` in a config is the int 0, ``--nodata 0`` the float 0.0: the key hashed
    the options' JSON (0 against 0.0), so a run interrupted with the config and run again
    with the flag started over (every tile predicted again, a warning giving no reason)."""
    from tiledepth.checkpoint import checkpoint_key
    from tiledepth.options import make_options

    config = tmp_path / "c.yaml"
    config.write_text("nodata: 0\nscale: 1\ncoarse_weight: 1\n")
    model = lambda b: b[..., 0]  # noqa: E731
    as_flags = make_options(nodata=0.0, scale=1.0, coarse_weight=1.0)
    assert checkpoint_key({}, make_options(config), model) == checkpoint_key({}, as_flags, model)
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, config=config)
    kept = len(list((tmp_path / checkpoint_folder(out, tmp_path).name).glob("tile*.pred.npy")))
    assert kept >= 4
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, batch_size=2, nodata=0.0, scale=1.0,
                               coarse_weight=1.0, **RUN)
    assert "starting over" not in caplog.text
    assert result.resumed == kept and tiles_in(batches(log)) == 48 - kept


def test_a_mask_written_another_way_resumes(src, tmp_path, monkeypatch, caplog):
    """The key held the ``--mask`` path as typed besides the mask file's identity (its
    resolved path and content): ``in/mask.tif``, ``./in/mask.tif`` or the absolute path of
    the one file started over. Another file (or the same one edited) still does."""
    from tiledepth.checkpoint import checkpoint_key
    from tiledepth.options import make_options

    (tmp_path / "in").mkdir()
    mask, out = half_mask(tmp_path / "in" / "mask.tif", "left"), tmp_path / "out.tif"
    monkeypatch.chdir(tmp_path)
    model = lambda b: b[..., 0]  # noqa: E731
    keys = {checkpoint_key({}, make_options(mask=m), model)[0]
            for m in ("in/mask.tif", "./in/mask.tif", str(mask), mask)}
    assert len(keys) == 1
    other = half_mask(tmp_path / "in" / "other.tif", "left")  # same pixels, another file
    assert checkpoint_key({}, make_options(mask=str(other)), model)[0] not in keys
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, mask="in/mask.tif")
    kept = len(list((tmp_path / checkpoint_folder(out, tmp_path).name).glob("tile*.pred.npy")))
    assert kept >= 4
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, batch_size=2, mask=str(mask), **RUN)
    assert "starting over" not in caplog.text
    assert result.resumed == kept and tiles_in(batches(log)) == result.tiles - kept == 30 - kept


# -- ckpt12: what the key holds, and what a stopped run leaves -------------------------------


def height_reference(path: Path, *, scale: float = -20.0, shift: float = 50.0) -> Path:
    """A --reference of ``src`` (300 x 400 px): the heights ``shift + scale * depth``, 4x
    coarser (75 x 100 cells of 2 m)."""
    from conftest import depth_field
    from rasterio.transform import from_origin

    height = shift + scale * depth_field(300, 400)
    coarse = height.reshape(75, 4, 100, 4).mean(axis=(1, 3)).astype(np.float32)
    return write_raster(path, coarse[None], transform=from_origin(500000.0, 5400000.0, 2, 2))


def test_a_reference_or_control_is_keyed_by_its_content_not_as_typed(
        src, tmp_path, monkeypatch, caplog):
    """The key held ``--reference`` and ``--control`` as typed: ``in/ref.tif`` then
    ``./in/ref.tif`` (or its absolute path) started over, every tile predicted again, while
    a reference corrected in place kept its key (a split then cut its outputs from a fused
    map calibrated to the old one). Now the key of a fused map (:func:`output_key`) holds
    their identity, as the ``--mask``'s; the predictions' (:func:`checkpoint_key`) holds
    neither: no prediction depends on them, so a run resumed with the reference corrected in
    place reuses every tile and writes the output of the corrected one."""
    from tiledepth.checkpoint import checkpoint_key, output_key
    from tiledepth.options import make_options

    (tmp_path / "in").mkdir()
    ref, out = height_reference(tmp_path / "in" / "ref.tif"), tmp_path / "out.tif"
    points = _points(tmp_path / "in" / "points.csv")
    monkeypatch.chdir(tmp_path)
    model = lambda b: b[..., 0]  # noqa: E731

    def key(**options):
        return output_key({}, make_options(output_kind="height", **options), model)

    def predictions_key(**options):
        return checkpoint_key({}, make_options(output_kind="height", **options), model)[0]

    plain = predictions_key()
    for option, path in (("reference", ref), ("control", points)):
        keys = {key(**{option: p}) for p in (f"in/{path.name}", f"./in/{path.name}",
                                             str(path), path)}
        assert len(keys) == 1
        assert predictions_key(**{option: str(path)}) == plain
        before = path.read_bytes()
        path.write_bytes(before.replace(b"40", b"47") if option == "control" else b"")
        if option == "reference":  # corrected in place: heights doubled, +3 m
            height_reference(ref, scale=-40.0, shift=103.0)
        assert key(**{option: str(path)}) not in keys
        assert predictions_key(**{option: str(path)}) == plain
    assert key() not in keys  # and a run without either is keyed as before (no path in it)

    height_reference(ref)  # as first written
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, reference="in/ref.tif",
                output_kind="height")
    kept = len(list(checkpoint_folder(out, tmp_path).glob("tile*.pred.npy")))
    assert kept >= 4
    height_reference(ref, scale=-40.0, shift=103.0)  # corrected in place
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, batch_size=2, reference=str(ref),
                               output_kind="height", **RUN)
    assert "starting over" not in caplog.text
    assert result.resumed == kept and tiles_in(batches(log)) == result.tiles - kept
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=2,
                          reference="./in/ref.tif", output_kind="height", **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()
    with tiledepth_open(out) as ds:  # calibrated to the corrected reference: about 103 m
        assert abs(float(np.nanmax(ds.read(1))) - 103.0) < 5.0


HELPED_MODEL = """
import os

import ck12_helper


def depth(batch):
    with open(os.environ['HELPED_CALLS'], 'a+') as f:
        f.seek(0)
        if len(f.readlines()) >= int(os.environ.get('HELPED_STOP', 10**9)):
            raise KeyboardInterrupt
        f.write('call\\n')
    return ck12_helper.f(batch)
"""


def test_an_edited_helper_module_of_the_model_starts_over(src, tmp_path, monkeypatch, caplog):
    """A model whose file does ``import ck12_helper`` and calls ``ck12_helper.f``: the helper
    edited in place between a stop and the rerun (``red`` becomes ``red ** 2``) kept the key
    (a module global was its name alone), and the rerun mixed the old code's tiles with the
    new one's (max 0.29 off, on a range of 0.86). Now the user's module is its file's
    content; an installed one (``os``, numpy) its name, as before."""
    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    helper = tmp_path / "ck12_helper.py"
    helper.write_text("def f(batch):\n    return batch[..., 0] * 1.0\n")
    (tmp_path / "helped_model.py").write_text(HELPED_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("HELPED_CALLS", str(tmp_path / "helped.txt"))
    monkeypatch.setenv("HELPED_STOP", "6")
    out = tmp_path / "out.tif"
    before = model_identity(load_model("helped_model:depth"))
    assert "?" not in before and before == model_identity(load_model("helped_model:depth"))
    with pytest.raises(KeyboardInterrupt):
        tiledepth.run(src, out, model="helped_model:depth", **RUN)
    assert len(list(checkpoint_folder(out, tmp_path).glob("tile*.pred.npy"))) in (20, 24)
    helper.write_text("def f(batch):\n    return batch[..., 0] ** 2\n")  # fixed in place
    for name in ("ck12_helper", "helped_model"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv("HELPED_STOP")
    assert model_identity(load_model("helped_model:depth")) != before
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model="helped_model:depth", **RUN)
    assert result.resumed == 0
    assert "(the model changed); starting over" in caplog.text
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model="helped_model:depth", **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_the_same_model_file_or_folder_spelled_another_way_resumes(
        src, tmp_path, monkeypatch, caplog):
    """``toy_models.py:slow``, ``./toy_models.py:slow`` and its absolute path are one model
    (the key hashed the name as typed: the rerun said "the model changed" and predicted all
    48 tiles again); so are a checkpoint folder ``weights`` and ``./weights/``."""
    from types import SimpleNamespace

    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    tests = Path(__file__).resolve().parent
    monkeypatch.chdir(tests)
    spellings = ("toy_models.py:slow", "./toy_models.py:slow", f"{tests}/toy_models.py:slow",
                 "../tests/toy_models.py:slow")
    ids = {model_identity(load_model(s)) for s in spellings}
    assert len(ids) == 1 and "?" not in ids.pop()

    out = tmp_path / "out.tif"
    calls_log(tmp_path, monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        tiledepth.run(src, out, model="toy_models.py:slow", batch_size=4, **RUN)
    kept = len(list(checkpoint_folder(out, tmp_path).glob("tile*.pred.npy")))
    assert kept >= 12
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model="./toy_models.py:slow", batch_size=4, **RUN)
    assert "starting over" not in caplog.text
    assert result.resumed == kept and tiles_in(batches(log)) == 48 - kept

    # a checkpoint folder: its name, and where a pipeline says it was loaded from
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text('{"depth": 4}')
    monkeypatch.chdir(tmp_path)

    def loaded(name):
        pipe = SimpleNamespace(components={}, config={"_name_or_path": name})
        return SimpleNamespace(name=name, pipe=pipe, steps=4)

    ids = {model_identity(loaded(s)) for s in ("weights", "./weights/", str(tmp_path / "weights"))}
    assert len(ids) == 1
    assert model_identity(loaded("org/hub-model")).startswith("org/hub-model#")  # as it was


def test_a_scale_run_stopped_keeps_no_reduced_map(src, tmp_path, monkeypatch):
    """``--scale``: a run stopped kept its reduced map (``scaled.npy``, never reused: a
    resume writes it again) beside the predictions in the checkpoint, a third of the
    folder; only the predictions stay now, and the rerun resumes from them."""
    out = tmp_path / "out.tif"
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=2, scale=0.5)
    folder = checkpoint_folder(out, tmp_path)
    kept = len(list(folder.glob("tile*.pred.npy")))
    assert kept >= 4
    assert not (folder / "scaled.npy").exists() and not (folder / "scaled.npy.tmp").exists()
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=2, scale=0.5, **RUN)
    assert result.resumed == kept and tiles_in(batches(log)) == result.tiles - kept
    assert hidden(tmp_path) == []
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, batch_size=2, scale=0.5,
                          **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


@pytest.mark.parametrize("left", ["empty folder", "empty marker"])
def test_a_run_killed_before_its_marker_was_written_blocks_no_later_run(
        src, tmp_path, monkeypatch, left):
    """A SIGKILL between creating the checkpoint folder and writing its marker left a
    folder with nothing in it (or an empty marker), which every later run refused, even
    with ``--no-resume`` ("exists but was not made by tiledepth"). It is taken as this
    run's now; a folder holding anything else without the marker is still refused."""
    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    folder.mkdir(0o755)  # what the killed run left
    if left == "empty marker":
        (folder / ".tiledepth-checkpoint").write_bytes(b"")
    calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, resume=False, **RUN)
    assert result.tiles == 48 and hidden(tmp_path) == []
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()

    folder.mkdir()  # the same, then a stop: the folder is the run's, kept for a resume
    if left == "empty marker":
        (folder / ".tiledepth-checkpoint").write_bytes(b"")
    interrupted(src, out, tmp_path, monkeypatch, 3, overwrite=True)
    assert (folder.stat().st_mode & 0o777) == 0o700 and len(list(folder.glob("tile*"))) > 0
    calls_log(tmp_path, monkeypatch)
    assert tiledepth.run(src, out, model=SLOW, overwrite=True, **RUN).resumed > 0

    folder.mkdir()
    (folder / ".tiledepth-checkpoint").write_bytes(b"")
    (folder / "notes.txt").write_text("a user's")  # not empty: never taken
    with pytest.raises(OutputError, match="exists but was not made by tiledepth"):
        tiledepth.run(src, out, model=SLOW, resume=False, overwrite=True, **RUN)
    assert sorted(os.listdir(folder)) == [".tiledepth-checkpoint", "notes.txt"]


def test_a_long_chain_of_the_users_modules_keeps_a_sure_identity(tmp_path, monkeypatch):
    """The user's modules were followed one level deeper each: a model whose file imports a
    chain of 20 of them (a0 imports a1, ...) passed the digest's depth limit, so its identity
    was unsure and its checkpoints never resumed."""
    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    for i in range(20):
        nxt = f"import ck12_chain{i + 1}\n" if i < 19 else ""
        (tmp_path / f"ck12_chain{i}.py").write_text(f"{nxt}K = {i}\n")
    (tmp_path / "chained.py").write_text(
        "import ck12_chain0\ndef depth(batch):\n    return batch[..., 0] * ck12_chain0.K\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    identity = model_identity(load_model(f"{tmp_path}/chained.py:depth"))
    assert "?" not in identity


STALE_HELPER = """\
import logging
import threading

LOG = logging.getLogger(__name__)
LOCK = threading.Lock()


def f(x):
    return x * 0.5


class Base:
    def offset(self):
        return 0.0


class Scaler(Base):
    def __call__(self, batch):
        with LOCK:
            LOG.debug("a batch")
        return batch[..., 0] * self.factor + self.offset()

    @property
    def factor(self):
        return 0.5
"""

STALE_MODEL = """\
import stale_helper
from stale_helper import Scaler


def depth(batch):
    return stale_helper.f(batch[..., 0])


scaler = Scaler()
"""

FRESH_IDENTITY = ("import sys; from tiledepth.identity import model_identity; "
                  "from tiledepth.models import load_model; "
                  "print(model_identity(load_model(sys.argv[1])))")


@pytest.fixture
def stale_files(tmp_path, monkeypatch):
    """A model file that imports a helper module of the user's, importable here; both
    modules are forgotten after the test."""
    (tmp_path / "stale_helper.py").write_text(STALE_HELPER)
    (tmp_path / "stale_model.py").write_text(STALE_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield tmp_path
    for name in ("stale_helper", "stale_model"):
        sys.modules.pop(name, None)


def fresh_identity(folder: Path, spec: str) -> str:
    """The model identity of ``spec`` in a new process, which loads the files as they are."""
    env = child_env(PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-c", FRESH_IDENTITY, spec], cwd=folder, env=env,
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def test_a_helper_edited_but_not_reloaded_lends_no_tiles_to_a_fresh_process(stale_files):
    """A long-lived process (a notebook, a QGIS session) imported ``stale_helper``; its file
    was then edited (``x * 0.5`` became ``x * 2.0``) without a reload: the process kept
    running the old code, but the identity hashed the new file alone, so its tiles were
    stored under the key a fresh process running the new code computes, and that process
    resumed them (wrong values, no warning). The code as loaded counts now."""
    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    before = model_identity(load_model("stale_model:depth"))
    assert before == fresh_identity(stale_files, "stale_model:depth")
    helper = stale_files / "stale_helper.py"
    helper.write_text(STALE_HELPER.replace("return x * 0.5", "return x * 2.0"))
    model = load_model("stale_model:depth")  # not reloaded: the old code runs here
    assert model.predict(np.ones((1, 2, 2, 3), np.float32), [0])[0, 0, 0] == 0.5
    stale = model_identity(model)
    fresh = fresh_identity(stale_files, "stale_model:depth")  # runs x * 2.0
    assert stale != fresh
    assert len({before, stale, fresh}) == 3 and "?" not in stale + fresh


def test_the_loaded_code_of_the_users_modules_is_the_same_identity_in_every_process(
        stale_files):
    """Two fresh processes with the same files agree, and with a process that loaded them
    earlier (a resume must not start over): the helper's logger and lock count by their
    type, not by a state that differs from process to process or cannot be identified."""
    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    for spec in ("stale_model:depth", "stale_model:scaler"):
        here = model_identity(load_model(spec))
        first, second = (fresh_identity(stale_files, spec) for _ in range(2))
        assert first == second == here and "?" not in here


@pytest.mark.parametrize("edit", [("return 0.5", "return 2.0"),  # a property
                                  ("return 0.0", "return 1.0")])  # a base class's method
def test_a_class_edited_but_not_reloaded_lends_no_tiles_to_a_fresh_process(stale_files, edit):
    """The same for a user's class (``scaler = Scaler()``): it was its name and its file on
    disk; its methods as loaded count now, its base class's too."""
    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    before = model_identity(load_model("stale_model:scaler"))
    (stale_files / "stale_helper.py").write_text(STALE_HELPER.replace(*edit))
    model = load_model("stale_model:scaler")
    assert model.predict(np.ones((1, 2, 2, 3), np.float32), [0])[0, 0, 0] == 0.5  # the old code
    stale = model_identity(model)
    fresh = fresh_identity(stale_files, "stale_model:scaler")
    assert stale != fresh
    assert len({before, stale, fresh}) == 3 and "?" not in stale + fresh


def test_a_helpers_state_changing_as_it_runs_keeps_the_identity(tmp_path, monkeypatch):
    """A helper of the user's holds state its functions change as they run (a network loaded
    on first use, a call log, a counter): counted, the identity changed with the first call,
    so an interrupted run never resumed in the same session. Its code counts, not its state."""
    from tiledepth.identity import model_identity
    from tiledepth.models import load_model

    (tmp_path / "stateful_helper.py").write_text(
        "_net = None\nCALLS = []\nCOUNT = 0\n\n\n"
        "def scale(x):\n    global _net, COUNT\n    if _net is None:\n"
        "        _net = object()\n    CALLS.append(x.shape)\n    COUNT += 1\n"
        "    return x * 0.5\n")
    (tmp_path / "stateful_model.py").write_text(
        "import stateful_helper\n\n\n"
        "def depth(batch):\n    return stateful_helper.scale(batch[..., 0])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    try:
        model = load_model("stateful_model:depth")
        before = model_identity(model)
        model.predict(np.ones((1, 2, 2, 3), np.float32), [0])
        assert model_identity(model) == before and "?" not in before
    finally:
        for name in ("stateful_helper", "stateful_model"):
            sys.modules.pop(name, None)


def test_an_input_nothing_identifies_keeps_no_predictions_and_promises_no_resume(
        tmp_path, monkeypatch, caplog):
    """An input whose content nothing identifies (a server without ETag or Last-Modified,
    /vsimem/) has a new key each run: an interrupted run kept its predictions and said "run
    the same command again to resume", and the rerun started over (its key never met)."""
    from conftest import CRS, TRANSFORM
    from rasterio.io import MemoryFile

    from tiledepth.checkpoint import reusable

    assert not reusable({"input": {"path": "/vsimem/a.tif", "unidentified": "0a1b"}})
    assert not reusable({"input": {"members": [{"path": "a.tif"}, {"unidentified": "2c"}]}})
    assert reusable({"input": {"path": "/vsicurl/https://h/a.tif", "etag": '"7"', "size": 9}})
    out = tmp_path / "out.tif"
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=400, height=300, count=3, dtype="uint8",
                         crs=CRS, transform=TRANSFORM) as ds:
            ds.write(depth_image(300, 400))
        with caplog.at_level("WARNING"):
            stop = interrupted(memory.name, out, tmp_path, monkeypatch, 4, batch_size=4)
    assert getattr(stop, "__notes__", []) == []  # no "kept ... to resume"
    assert hidden(tmp_path) == []  # no checkpoint left behind
    assert "tile prediction(s) not kept: what the run reads cannot be identified" in caplog.text


# -- the checkpoint folder removed, the lock before the model, --no-resume killed, --scratch
# changed, the hints of a long name and of a folder at the lock's name ------------------------


def test_a_checkpoint_folder_removed_during_the_run_is_not_an_unexpected_error(
        src, tmp_path, monkeypatch):
    """The checkpoint folder deleted during a run (a cleaner of /tmp, a user): the end of the
    run listed it and said ``unexpected FileNotFoundError`` (exit 1), in place of the
    one-line WriteError of the tile it could not write, and even after the output was
    complete; now that WriteError, and a run whose output is complete succeeds."""
    import shutil

    from tiledepth import scratch
    from tiledepth.errors import WriteError

    out, scratch_dir = tmp_path / "out.tif", tmp_path / "scratch"
    scratch_dir.mkdir()
    folder = checkpoint_folder(out, scratch_dir)
    calls_log(tmp_path, monkeypatch)
    save, saved = scratch.save_npy, []

    def deleted_at_the_tenth_file(path, array):
        saved.append(path.name)
        if len(saved) == 10:
            shutil.rmtree(folder)
        save(path, array)

    monkeypatch.setattr(scratch, "save_npy", deleted_at_the_tenth_file)
    with pytest.raises(WriteError, match=r"the checkpoint folder was removed during the run; "
                                         r".*--scratch\)$"):
        tiledepth.run(src, out, model=SLOW, scratch=scratch_dir, **RUN)
    assert len(saved) >= 10 and not folder.exists() and not out.exists()
    monkeypatch.setattr(scratch, "save_npy", save)

    # removed once every window is written (while the overviews are built): the output is
    # complete, and so is the run
    release = Checkpoint.release

    def removed_then_released(self):
        shutil.rmtree(self.folder)
        release(self)

    monkeypatch.setattr(Checkpoint, "release", removed_then_released)
    result = tiledepth.run(src, out, model=SLOW, scratch=scratch_dir, **RUN)
    assert result.tiles == 48 and not folder.exists() and hidden(tmp_path) == []
    monkeypatch.setattr(Checkpoint, "release", release)
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


REMOVED = ("{}: the checkpoint folder was removed during the run; run the same command again "
           "and leave the folder until the run ends (or put it elsewhere with --scratch)")


def test_a_checkpoint_folder_removed_during_the_run_says_so(src, tmp_path, monkeypatch):
    """The checkpoint folder removed during a run ended it in "<tile>: write failed ([Errno 2]
    No such file or directory ...); check the disk, or choose another place with --scratch",
    which names neither the folder nor its removal, and, removed once every tile was written
    but before the blend read them back from disk, in a raw FileNotFoundError ("unexpected
    FileNotFoundError" on the command line). Both say now, in one line, that the folder was
    removed and what to do; no output is left, and the same command again makes it."""
    import re
    import shutil

    from tiledepth import scratch, stages
    from tiledepth.errors import WriteError

    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    calls_log(tmp_path, monkeypatch)
    save, saved = scratch.save_npy, []

    def removed_at_the_twelfth_file(path, array):  # (written in the background: tile files)
        saved.append(path.name)
        if len(saved) == 12:
            shutil.rmtree(folder)
        save(path, array)

    monkeypatch.setattr(scratch, "save_npy", removed_at_the_twelfth_file)
    with pytest.raises(WriteError) as info:
        tiledepth.run(src, out, model=SLOW, **RUN)
    assert str(info.value) == REMOVED.format(folder)
    assert len(saved) >= 12 and sorted(os.listdir(tmp_path)) == ["calls.txt", "in.tif"]
    monkeypatch.setattr(scratch, "save_npy", save)

    # removed once every tile is on disk, before the blend reads them (none left in memory)
    blend = stages.blend_and_write

    def removed_then_blended(sink, parts, *args, **kwargs):
        parts.store.flush()
        parts.store.release()
        shutil.rmtree(folder)
        return blend(sink, parts, *args, **kwargs)

    monkeypatch.setattr(stages, "blend_and_write", removed_then_blended)
    with pytest.raises(WriteError, match=f"^{re.escape(REMOVED.format(folder))}$"):
        tiledepth.run(src, out, model=SLOW, **RUN)
    assert sorted(os.listdir(tmp_path)) == ["calls.txt", "in.tif"]  # no output, no lock
    monkeypatch.setattr(stages, "blend_and_write", blend)

    result = tiledepth.run(src, out, model=SLOW, **RUN)  # the same command: a whole output
    assert result.tiles == 48 and result.resumed == 0 and hidden(tmp_path) == []
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_a_removed_checkpoint_folder_is_one_line_on_the_command_line(src, tmp_path):
    """On the command line: that one line, exit 1, nothing left; it said "unexpected
    FileNotFoundError" where the folder was removed before the blend read the tiles."""
    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    code = (
        "import shutil, sys\n"
        "from tiledepth import stages\n"
        "from tiledepth.cli import main\n"
        "blend = stages.blend_and_write\n"
        "def removed(sink, parts, *a, **k):\n"
        "    parts.store.flush(); parts.store.release(); shutil.rmtree(sys.argv[3])\n"
        "    return blend(sink, parts, *a, **k)\n"
        "stages.blend_and_write = removed\n"
        "main(['run', sys.argv[1], '-o', sys.argv[2], '--model', 'toy_models:red',\n"
        "      '--tile-size', '64', '--no-progress'])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out), str(folder)],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"tiledepth: error: {REMOVED.format(folder)}"]
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def test_a_checkpoint_not_taken_is_said_alike_for_both_folders_once_each(
        src, tmp_path, monkeypatch, caplog):
    """The warnings for predictions a run cannot take, of its own checkpoint (in --scratch)
    and of the one beside the output that it takes in, were written in two places; one
    now: the same words, each folder's said once, and what becomes of them."""
    out, fast = tmp_path / "out.tif", tmp_path / "fast"
    fast.mkdir()
    interrupted(src, out, tmp_path, monkeypatch, 4, scratch=fast)  # in --scratch
    interrupted(src, out, tmp_path, monkeypatch, 4)  # beside the output
    own, beside = checkpoint_folder(out, fast), checkpoint_folder(out, tmp_path)
    assert list(own.glob("tile*.pred.npy")) and list(beside.glob("tile*.pred.npy"))
    (beside / "manifest.json").write_text("{")  # damaged

    def warned(seed):
        """A run's result and the warnings caught so far."""
        calls_log(tmp_path, monkeypatch)
        with caplog.at_level("WARNING", logger="tiledepth"):
            result = tiledepth.run(src, out, model=SLOW, scratch=fast, seed=seed, **RUN)
        return result, [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    result, warnings = warned(1)
    assert warnings == [
        f"{own}: holds predictions of a run with another input, model or options; "
        "starting over",
        f"{beside}: its manifest is missing or damaged, so its predictions cannot be matched "
        f"to this run; removed (this run's checkpoint is {own})"]
    assert result.resumed == 0 and hidden(tmp_path) == [] and hidden(fast) == []

    # the other way round: the own checkpoint's manifest damaged, the one beside of other
    # options
    out.unlink()
    out.with_suffix(".json").unlink()
    interrupted(src, out, tmp_path, monkeypatch, 4, scratch=fast)
    interrupted(src, out, tmp_path, monkeypatch, 4)
    (own / "manifest.json").unlink()
    caplog.clear()
    _, warnings = warned(2)
    assert warnings == [
        f"{own}: its manifest is missing or damaged, so its predictions cannot be matched "
        "to this run; starting over",
        f"{beside}: holds predictions of a run with another input, model or options; "
        f"removed (this run's checkpoint is {own})"]


def test_a_busy_output_is_refused_before_the_model_is_loaded(src, tmp_path, monkeypatch):
    """A second run of an output another run writes loaded its model (Marigold: minutes of
    weights onto the GPU beside the first run's) before the output's lock refused it; the
    lock is taken before the model now, and held by the run to its end."""
    from tiledepth import engine
    from tiledepth.lock import lock_output, unlock_output

    out = tmp_path / "out.tif"
    opened = []
    open_model = engine.open_model

    def counted(opts):
        opened.append(opts.model)
        return open_model(opts)

    monkeypatch.setattr(engine, "open_model", counted)
    fd = lock_output(out)  # another run writes it now
    try:
        with pytest.raises(BusyError, match=r"out.tif: another tiledepth run is writing the "
                                            r"same output now .*; wait for it to finish or "
                                            r"choose another -o$"):
            tiledepth.run(src, out, model=SLOW, **RUN)
        assert opened == []
    finally:
        unlock_output(out, fd)
    assert hidden(tmp_path) == []  # nothing left: no checkpoint, no lock

    # the run holds the lock itself to its end, and takes it once (a second flock of it in
    # this process would be refused)
    held = []
    real_release = Checkpoint._release

    def release(self):
        held.append(lock_path(out).exists())
        real_release(self)

    monkeypatch.setattr(Checkpoint, "_release", release)
    result = tiledepth.run(src, out, model=SLOW, **RUN)
    assert result.tiles == 48 and opened == [SLOW] and held and all(held)
    assert hidden(tmp_path) == []


def killed_exit(self, *exc_info):
    """Checkpoint.__exit__ of a run killed with SIGKILL: every file left as it is."""
    self._drain()
    self._close_files()
    self._release()


def test_the_predictions_of_a_killed_no_resume_run_are_not_resumed(src, tmp_path, monkeypatch,
                                                                    caplog):
    """A ``--no-resume`` run killed (SIGKILL) leaves its predictions, and the next run of the
    output resumed them ("48 tiles, 27 from an interrupted run"): the manifest did not say
    they were a run's that does not resume, and --no-resume is for models whose state the
    key cannot see. The manifest says ``"resumable": false`` now, and they are predicted
    again; a manifest without it (an older tiledepth's) is resumed as before."""
    import json

    out = tmp_path / "out.tif"
    folder = checkpoint_folder(out, tmp_path)
    exit_ = Checkpoint.__exit__
    monkeypatch.setattr(Checkpoint, "__exit__", killed_exit)
    interrupted(src, out, tmp_path, monkeypatch, 6, resume=False, batch_size=4)
    monkeypatch.setattr(Checkpoint, "__exit__", exit_)
    kept = len(list(folder.glob("tile*.pred.npy")))
    resumable = json.loads((folder / "manifest.json").read_text()).get("resumable")
    assert kept >= 16
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, **RUN)
    assert result.resumed == 0 and tiles_in(batches(log)) == 48
    assert resumable is False
    assert coarse_calls(batches(log)) == 1
    assert "starting over" not in caplog.text  # (it asked for no resume)
    assert hidden(tmp_path) == []

    # a checkpoint of an older tiledepth (no "resumable") kept by an interrupted run resumes
    interrupted(src, out, tmp_path, monkeypatch, 4, batch_size=4, overwrite=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest.pop("resumable") is True
    (folder / "manifest.json").write_text(json.dumps(manifest))
    kept = len(list(folder.glob("tile*.pred.npy")))
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, overwrite=True, **RUN)
    assert kept >= 8 and result.resumed == kept and tiles_in(batches(log)) == 48 - kept
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


@pytest.mark.parametrize("across", [False, True], ids=["renamed", "copied"])
def test_a_checkpoint_beside_the_output_is_taken_in_by_a_run_with_scratch(
        src, tmp_path, monkeypatch, caplog, across):
    """A run interrupted without ``--scratch`` and rerun with it (as a full disk's message
    says) started over and left the first checkpoint beside the output for good (hundreds
    of GB); its predictions are moved into ``--scratch`` now (copied from another file
    system), and it is removed."""
    import errno

    from tiledepth import checkpoint

    if across:  # another file system: no rename
        def no_rename(source, target):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(checkpoint, "_move_file", no_rename, raising=False)
    out, fast = tmp_path / "out.tif", tmp_path / "fast"
    fast.mkdir()
    interrupted(src, out, tmp_path, monkeypatch, 6, batch_size=4)
    beside = checkpoint_folder(out, tmp_path)
    kept = len(list(beside.glob("tile*.pred.npy")))
    coarse = (beside / "coarse.npy").exists()
    assert kept >= 16

    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("INFO"):
        result = tiledepth.run(src, out, model=SLOW, scratch=fast, **RUN)
    assert f"took in {kept} tile prediction(s) from {beside}" in caplog.text
    assert (result.resumed, tiles_in(batches(log)), coarse_calls(batches(log))) == (
        kept, 48 - kept, 1 - coarse)
    assert hidden(tmp_path) == [] and hidden(fast) == []  # both gone with the output complete
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_a_checkpoint_beside_the_output_lends_its_tiles_not_its_coarse_map_to_other_coarse_options(
        src, tmp_path, monkeypatch):
    """Taken in by a run with ``--scratch`` and another option of the coarse prediction
    (``--no-pyramid``), the checkpoint beside the output gives every tile and not its coarse
    prediction, which the run makes again: the output is a fresh run's."""
    out, fast = tmp_path / "out.tif", tmp_path / "fast"
    fast.mkdir()
    calls_log(tmp_path, monkeypatch)
    _stopped_while_blending(src, out, monkeypatch, model=SLOW, **RUN)
    beside = checkpoint_folder(out, tmp_path)
    assert (beside / "coarse.npy").exists() and len(list(beside.glob("tile*.pred.npy"))) == 48

    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, scratch=fast, pyramid=False, **RUN)
    assert (result.resumed, tiles_in(batches(log)), coarse_calls(batches(log))) == (48, 0, 1)
    assert hidden(tmp_path) == [] and hidden(fast) == []
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", model=SLOW, pyramid=False, **RUN)
    assert out.read_bytes() == fresh.output.read_bytes()


def test_a_checkpoint_beside_the_output_of_other_options_is_removed_by_a_run_with_scratch(
        src, tmp_path, monkeypatch, caplog):
    out, fast = tmp_path / "out.tif", tmp_path / "fast"
    fast.mkdir()
    interrupted(src, out, tmp_path, monkeypatch, 4)
    beside = checkpoint_folder(out, tmp_path)
    (beside / "notes.txt").write_text("mine")  # not tiledepth's: stays, and the folder too
    log = calls_log(tmp_path, monkeypatch)
    with caplog.at_level("WARNING"):
        result = tiledepth.run(src, out, model=SLOW, scratch=fast, seed=1, **RUN)
    assert f"{beside}: holds predictions of a run with another input, model or options; " \
           f"removed (this run's checkpoint is {checkpoint_folder(out, fast)})" in caplog.text
    assert result.resumed == 0 and tiles_in(batches(log)) == 48
    assert sorted(os.listdir(beside)) == [".tiledepth-checkpoint", "notes.txt"]
    assert hidden(fast) == []


def test_a_run_killed_while_taking_in_the_checkpoint_beside_the_output_loses_nothing(
        src, tmp_path, monkeypatch):
    """Killed halfway through moving the predictions into ``--scratch``: the next run takes
    in the rest, and resumes every one of them."""
    from tiledepth import checkpoint

    out, fast = tmp_path / "out.tif", tmp_path / "fast"
    fast.mkdir()
    interrupted(src, out, tmp_path, monkeypatch, 6, batch_size=4)
    kept = len(list(checkpoint_folder(out, tmp_path).glob("tile*.pred.npy")))
    coarse = (checkpoint_folder(out, tmp_path) / "coarse.npy").exists()  # moved first
    move, moved = getattr(checkpoint, "_move_file", os.rename), []

    def killed_at_the_ninth(source, target):
        moved.append(source.name)
        if len(moved) == 9:
            raise KeyboardInterrupt
        move(source, target)

    monkeypatch.setattr(checkpoint, "_move_file", killed_at_the_ninth, raising=False)
    monkeypatch.setattr(Checkpoint, "__exit__", killed_exit)
    calls_log(tmp_path, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tiledepth.run(src, out, model=SLOW, scratch=fast, **RUN)
    monkeypatch.undo()
    # each tile's validity, then its prediction: 4 whole tiles, or 3 and the coarse one
    assert len(list(checkpoint_folder(out, fast).glob("tile*.pred.npy"))) == 4 - coarse
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, scratch=fast, **RUN)
    assert result.resumed == kept and tiles_in(batches(log)) == 48 - kept
    assert hidden(tmp_path) == [] and hidden(fast) == []


def test_a_name_too_long_or_a_folder_at_the_locks_name_says_what_to_do(src, tmp_path):
    """An output whose checkpoint folder name is too long said "(File name too long); choose
    a writable folder with --scratch" (no --scratch shortens it), and a folder at the lock's
    name "(Is a directory); choose a writable folder with -o"."""
    from tiledepth.lock import lock_output

    long = tmp_path / ("a" * 232 + ".tif")  # the output's name fits; its checkpoint's does not
    with pytest.raises(OutputError, match=r"cannot create the checkpoint folder \(its name is "
                                          r"too long\); choose a shorter output name with -o$"):
        tiledepth.run(src, long, model=SLOW, **RUN)
    longer = tmp_path / ("b" * 245 + ".tif")  # nor does its lock's
    with pytest.raises(OutputError, match=r"cannot create the lock file of .* \(its name is too "
                                          r"long\); choose a shorter output name with -o$"):
        lock_output(longer)
    lock_path(tmp_path / "out.tif").mkdir()
    with pytest.raises(OutputError, match=r"\.out\.tiledepth-lock: is not a plain file, so not "
                                          r"tiledepth's lock file; remove it$"):
        tiledepth.run(src, tmp_path / "out.tif", model=SLOW, **RUN)
    assert sorted(os.listdir(tmp_path)) == [".out.tiledepth-lock", "in.tif"]
