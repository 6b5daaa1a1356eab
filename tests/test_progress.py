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
