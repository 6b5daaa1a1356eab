"""Logging and progress: -v, -q, --no-progress, and log lines when stderr is no terminal."""

import io
import os
import subprocess
import sys
from pathlib import Path

from tiledepth.progress import LogProgress, progress_bar

TESTS = Path(__file__).parent


def test_log_progress_lines():
    out = io.StringIO()
    bar = LogProgress(4, "tiles", stream=out, interval=0.0)
    for _ in range(4):
        bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("tiledepth: tiles 2/4 (50%)") and "left" in lines[1]
    assert lines[-1].startswith("tiledepth: tiles 4/4 (100%)") and "left" not in lines[-1]
    quiet = io.StringIO()
    with progress_bar(3, enabled=False, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def run_cli(rgba_tif, tmp_path, *flags):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]))
    out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.tif"
    proc = subprocess.run([sys.executable, "-m", "tiledepth.cli", "run", str(rgba_tif), "-o",
                           str(out), "--model", "toy_models:red", "--tile-size", "256", *flags],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_cli_verbosity_and_progress_lines(rgba_tif, tmp_path):
    default = run_cli(rgba_tif, tmp_path)  # stderr is a pipe: lines, not a redrawn bar
    assert "tiledepth: tiles 12/12 (100%)" in default and "\r" not in default
    assert "wrote" in default and "INFO" not in default
    assert run_cli(rgba_tif, tmp_path, "-q") == ""
    verbose = run_cli(rgba_tif, tmp_path, "-v", "--no-progress")
    assert "tiledepth: INFO: wrote" in verbose and "DEBUG" not in verbose
    assert "tiles 12/12" not in verbose


def test_a_progress_line_is_one_write_and_a_closed_pipe_stops_only_the_lines():
    """Each line goes out in one write with its newline (a signal's own line landed between
    the two and was read as progress); a stream whose reader is gone (a closed pipe) ends
    the lines, not the run (it raised BrokenPipeError out of the run after all the work)."""

    class Writes:
        def __init__(self, broken=False):
            self.writes, self.broken = [], broken

        def write(self, text):
            if self.broken:
                raise BrokenPipeError(32, "Broken pipe")
            self.writes.append(text)

        def flush(self):
            pass

    out = Writes()
    bar = LogProgress(3, "tiles", stream=out, interval=0.0)
    for _ in range(3):
        bar.update()
    assert len(out.writes) == 3 and all(w.endswith("\n") and w.count("\n") == 1
                                        for w in out.writes)
    gone = Writes(broken=True)
    bar = LogProgress(3, "tiles", stream=gone, interval=0.0)
    for _ in range(3):
        bar.update()  # no error
    assert bar._gone


def test_a_reader_that_went_away_is_no_failure(tmp_path):
    """`tiledepth info X | head -1`: stdout closed by its reader; a quiet exit 0 (it was
    "unexpected BrokenPipeError", exit 1)."""
    from conftest import depth_image, write_raster

    src = write_raster(tmp_path / "in.tif", depth_image(60, 80))
    read, write = os.pipe()
    os.close(read)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", "from tiledepth.cli import main; main()",
                           "info", str(src), "--model", "toy_models:red"], stdout=write,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parent)
    os.close(write)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_a_bad_progress_interval_is_one_line_before_the_run(rgba_tif, tmp_path, monkeypatch):
    """TILEDEPTH_PROGRESS_INTERVAL=abc stops the command at the door: one line naming the
    variable and what it takes, exit 2, no model call (it was 'unexpected ValueError',
    exit 1, when the first progress line was due)."""
    import pytest
    from click.testing import CliRunner

    import tiledepth.engine
    from tiledepth.cli import main
    from tiledepth.errors import OptionError
    from tiledepth.progress import progress_interval

    for text, seconds in [("0", 0.0), ("2.5", 2.5), (" 10 ", 10.0), ("", 30.0)]:
        monkeypatch.setenv("TILEDEPTH_PROGRESS_INTERVAL", text)
        assert progress_interval() == seconds
        assert progress_bar(2, enabled=True, stream=io.StringIO()).interval == seconds
    monkeypatch.delenv("TILEDEPTH_PROGRESS_INTERVAL")
    assert progress_interval() == 30.0

    def never(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(tiledepth.engine, "run", never)
    for text in ["abc", "-1", "nan", "inf"]:
        monkeypatch.setenv("TILEDEPTH_PROGRESS_INTERVAL", text)
        with pytest.raises(OptionError, match="TILEDEPTH_PROGRESS_INTERVAL"):
            progress_bar(2, enabled=True, stream=io.StringIO())  # the library's path
        for command in (["run", str(rgba_tif), "-o", str(tmp_path / "o.tif")],
                        ["batch", str(rgba_tif), "-o", str(tmp_path / "b")]):
            result = CliRunner().invoke(main, [*command, "--model", "toy_models:red"])
            assert result.exit_code == 2, result.output
            assert result.output == (
                "tiledepth: error: TILEDEPTH_PROGRESS_INTERVAL: must be seconds between "
                "progress lines, a number >= 0 (0: one line per tile), got "
                f"'{text}'; set it so or unset it (30 s)\n")
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "b").exists()
    # without progress lines the variable is not read: no reason to refuse
    assert progress_bar(2, enabled=False).update() is None
    for flag in ("--no-progress", "-q"):
        result = CliRunner().invoke(main, ["run", str(rgba_tif), "-o", str(tmp_path / "o.tif"),
                                           "--model", "toy_models:red", flag])
        assert "unexpected AssertionError: the run started" in result.output  # it ran


def test_the_time_left_is_paced_from_the_first_unit(monkeypatch):
    """The wait before the first tile (a pipelined batch's run waiting for the model) was
    taken for the pace of every tile: 100 s of waiting, then a tile a second, said 'about
    100 s left' for 2 tiles done a second apart, with 2 left; it is the pace since the
    first tile."""
    import tiledepth.progress as progress

    clock = iter([0.0, 100.0, 101.0, 102.0, 103.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = LogProgress(4, "tiles", stream=out, interval=0.0)  # made at 0 s
    for _ in range(4):
        bar.update()  # at 100, 101, 102, 103 s
    assert out.getvalue().splitlines() == [
        "tiledepth: tiles 1/4 (25%), 100 s",  # one tile: no pace yet
        "tiledepth: tiles 2/4 (50%), 101 s, about 2 s left",
        "tiledepth: tiles 3/4 (75%), 102 s, about 1 s left",
        "tiledepth: tiles 4/4 (100%), 103 s"]


def test_batch_progress_lines_in_a_log_name_each_file(tmp_path, monkeypatch, capsys):
    """batch --progress into a log (stderr no terminal: no files bar) wrote 'tiledepth: tiles
    12/40 ...' for every input alike; each run's lines now say which file, of how many."""
    import re

    from conftest import depth_image, write_raster

    import tiledepth

    (tmp_path / "in" / "a").mkdir(parents=True)
    for name in ("a/x.tif", "y.tif"):
        write_raster(tmp_path / "in" / name, depth_image(120, 130))
    monkeypatch.setenv("TILEDEPTH_PROGRESS_INTERVAL", "0")
    records = tiledepth.batch([tmp_path / "in"], tmp_path / "out", model="toy_models:red",
                              tile_size=96, coarse_size=96, progress=True)
    assert [r.status for r in records] == ["done"] * 2
    lines = [line for line in capsys.readouterr().err.splitlines()
             if re.match(r"tiledepth: .*tiles \d+/\d+", line)]
    for i, record in enumerate(records):
        name = Path(record.input).relative_to(tmp_path / "in").as_posix()
        mine = [line for line in lines if line.startswith(f"tiledepth: {name} (file {i + 1}/2): "
                                                           "tiles ")]
        assert len(mine) == record.tiles  # interval 0: a line per tile, the last 100%
        assert f"tiles {record.tiles}/{record.tiles} (100%)" in mine[-1]
    assert len(lines) == sum(r.tiles for r in records)  # every line names its file
    from tiledepth.progress import LABEL

    assert LABEL.get() is None  # a run outside a batch: lines as before
    with progress_bar(2, enabled=True, stream=io.StringIO()) as bar:
        assert bar.desc == "tiles"
