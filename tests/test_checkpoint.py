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
from tiledepth.checkpoint import Checkpoint, checkpoint_folder, lock_path
from tiledepth.errors import BusyError

SLOW = "toy_models:slow"
RUN = dict(tile_size=64, overlap=0.25)  # 300 x 400 px: 6 x 8 = 48 tiles, coarse 48 x 64


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
    # a run stopped after the coarse prediction and 5 batches of 4 tiles
    stop = interrupted(src, out, tmp_path, monkeypatch, 6, batch_size=4)
    assert not out.exists()
    (folder,) = hidden(tmp_path)
    assert folder == checkpoint_folder(out, tmp_path).name
    assert "20 tile prediction(s) kept in" in stop.__notes__[0]
    assert len(list((tmp_path / folder).glob("tile*.pred.npy"))) == 20

    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, batch_size=3, **RUN)
    shapes = batches(log)
    assert coarse_calls(shapes) == 0  # the coarse prediction was kept too
    assert tiles_in(shapes) == 48 - 20 == result.tiles - result.resumed
    assert result.resumed == 20
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
    (folder / "tile0000003.pred.npy").write_bytes(b"")  # e.g. a crash of the machine
    (folder / "tile0000005.valid.npy").unlink()
    (folder / "tile0000006.pred.npy.tmp").write_bytes(b"half")
    result = tiledepth.run(src, out, model=SLOW, **RUN)
    assert result.resumed == 8 - 2
    assert tiles_in(batches(log)) == 48 - 6
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
    # SIGKILL may catch a tile or two still queued for the background scratch writer
    assert (5 if sig == signal.SIGKILL else 7) <= kept < 48
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
        kept, 48 - kept, 0)
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
    procs = [cli(src, "-o", out, "--model", SLOW, "--tile-size", 64, "--batch-size", 2, env=env)
             for out in outs]
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
    log = calls_log(tmp_path, monkeypatch)
    result = tiledepth.run(src, out, model=SLOW, scratch=scratch, **RUN)
    assert result.resumed == 16 and tiles_in(batches(log)) == 48 - 16
    assert hidden(scratch) == []


def test_cli_help_documents_resume():
    from click.testing import CliRunner

    from tiledepth.cli import main

    text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--resume / --no-resume" in text and "interrupted run" in text
