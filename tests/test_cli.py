"""The CLI through click's CliRunner, plus real subprocess runs."""

import logging
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import depth_image, run_cli, write_raster
from rasterio.enums import ColorInterp

from tiledepth.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_option():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    for flag in ["--model", "--tile-size", "--overlap", "--coarse-size", "--batch-size",
                 "--device", "--dtype", "--steps", "--ensemble", "--seed", "--scratch",
                 "--config", "--overwrite", "--bands", "-o, --output"]:
        assert flag in result.output


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys; from tiledepth.cli import main; "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules "
            "and 'rasterio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tiledepth.cli", "--help"], check=True,
                   capture_output=True)
    assert time.perf_counter() - t0 < 5  # generous: CI machines are noisy
    # python -m tiledepth: the command where its script is not on the PATH
    out = subprocess.run([sys.executable, "-m", "tiledepth", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("Usage: tiledepth ")


def test_run_with_callable_model(rgba_tif):
    result = invoke("run", rgba_tif, "--model", "toy_models:affine_red", "--tile-size", 192,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    out = rgba_tif.with_name("ortho.depth.tif")
    with rasterio.open(out) as ds:
        assert ds.shape == (600, 700)
    # refuses to overwrite, one line, exit 2
    again = invoke("run", rgba_tif, "--model", "toy_models:red")
    assert again.exit_code == 2
    assert again.output.strip().count("\n") == 0
    assert "--overwrite" in again.output


def test_config_file_cli_flag_wins(rgba_tif, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: toy_models:red\ntile_size: 256\noverlap: 0.4\n")
    out = tmp_path / "o.tif"
    result = invoke("run", rgba_tif, "-o", out, "--config", cfg, "--overlap", "0.2")
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.tags()["TILEDEPTH_TILE_SIZE"] == "256"
        assert ds.tags()["TILEDEPTH_OVERLAP"] == "0.2"


@pytest.mark.parametrize(("keys", "flags"), [
    (["glob"], ["--glob"]), (["on_error"], ["--on-error"]), (["shard"], ["--shard"]),
    (["executor"], ["--executor"]), (["ray-address"], ["--ray-address"]),
    (["ray_actors"], ["--ray-actors"]), (["executor", "shard"], ["--executor", "--shard"]),
])
def test_a_batch_flag_in_runs_config_is_said_to_be_batchs(keys, flags, rgba_tif, tmp_path):
    """``run --config c.yaml`` with a ``glob:``, ``executor:`` or ``shard:`` key (flags of
    ``batch``) said "give it on the command line", where run has no such flag: it says
    they are batch's, and how to give them there. ``batch`` itself says to give them as
    flags, as before; and neither names the input, which has nothing to do with it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile_size: 256\n" + "".join(f"{key}: 1\n" for key in keys))
    result = invoke("run", rgba_tif, "-o", tmp_path / "o.tif", "--config", cfg)
    assert result.exit_code == 2, result.output
    one = len(keys) == 1
    assert result.output.splitlines() == [
        f"tiledepth: error: {cfg}: {', '.join(map(repr, keys))} "
        f"{'is not a config key' if one else 'are not config keys'}, and tiledepth run has "
        f"no {' or '.join(flags)}; {'it is a flag' if one else 'they are flags'} of "
        f"`tiledepth batch`: give {'it' if one else 'them'} there (`tiledepth batch INPUT... "
        f"-o DIR --config {cfg} {' '.join(f + ' ...' for f in flags)}`); remove "
        f"{'it' if one else 'them'} from the config"]
    result = invoke("batch", rgba_tif, "-o", tmp_path / "out", "--config", cfg)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"tiledepth: error: {cfg}: {keys[0]!r} is not a config "
                                    f"key: {flags[0]} is a command flag; give it on the "
                                    "command line"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.yaml", rgba_tif.name])


@pytest.mark.parametrize(("text", "said"), [
    ("output: o.tif\n", "'output' is not a config key, and tiledepth batch has no --output; it "
     "is a flag of `tiledepth run`: give it there (batch's own output folder is "
     "-o/--output-dir); remove it"),
    ("tile_size: 256\nsplit: true\n", "'split' is not a config key, and tiledepth batch has "
     "no --split; it is a flag of `tiledepth run`: give it there; remove it"),
    ("asset: visual\nbounds: [0, 0, 1, 1]\naoi: a.gpkg\nbounds-crs: EPSG:4326\n",
     "'asset', 'bounds', 'aoi', 'bounds-crs' are not config keys, and tiledepth batch has no "
     "--asset or --bounds or --aoi or --bounds-crs; they are flags of `tiledepth run`: give "
     "them there; remove them"),
])
def test_a_run_flag_in_batchs_config_is_said_to_be_runs(text, said, rgba_tif, tmp_path):
    """``batch --config c.yaml`` with an ``output:``, ``split:`` or ``bounds:`` key (flags of
    ``run`` that ``batch`` has not) said "give it on the command line", where batch has no
    such flag: it says whose flag it is, in one line, naming no ``-o`` (batch's is
    ``--output-dir``). Keys that are batch's own flags are said as before, and so is the
    library's ``tiledepth.batch`` (no command line of its own)."""
    import tiledepth
    from tiledepth.errors import OptionError

    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    result = invoke("batch", rgba_tif, "-o", tmp_path / "out", "--config", cfg)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"tiledepth: error: {cfg}: {said} from the config"]
    key = said.split("'")[1]  # the first: the library says it as before
    with pytest.raises(OptionError, match=rf"^{cfg}: '{key}' is not a config key: (-o/)?--{key} "
                                          r"is (per raster|a command flag).*; give it on the "
                                          "command line, not in a config$"):
        tiledepth.batch([rgba_tif], tmp_path / "out", config=cfg)
    for own in ("overwrite", "mosaic", "glob", "output_dir"):  # batch's: as before
        cfg.write_text(f"{own}: true\n")
        result = invoke("batch", rgba_tif, "-o", tmp_path / "out", "--config", cfg)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"tiledepth: error: {cfg}: {own!r} is not a config "
                                        "key: "), result.output
        assert result.output.endswith("give it on the command line, not in a config\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.yaml", rgba_tif.name])


def test_a_configs_own_errors_name_the_config_not_the_input(rgba_tif, tmp_path, caplog):
    """A bad config was blamed on the input too ("ortho.tif: c.yaml: ..."); the input has
    nothing to do with it. A flag's bad value still names the input, as the run's errors do
    (for logs of many runs), a flag still wins over the config's bad value, and what is
    said of a config's key (skipped for the model) is said once."""
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "o.tif"
    for text, line in [
        ("tile_size: 8\n", f"{cfg}: tile_size must be >= 32, got 8"),
        ("tile_sise: 256\n", f"{cfg}: unknown key 'tile_sise' (did you mean 'tile_size'?)"),
        ("bounds: 1\n", f"{cfg}: 'bounds' is not a config key: --bounds is per raster"),
        ("tile_size: [\n", f"{cfg}: not valid YAML"),
    ]:
        cfg.write_text(text)
        result = invoke("run", rgba_tif, "-o", out, "--config", cfg, "--model",
                        "toy_models:red")
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"tiledepth: error: {line}"), result.output
        assert len(result.output.splitlines()) == 1, result.output
    result = invoke("run", rgba_tif, "-o", out, "--config", tmp_path / "none.yaml")
    assert result.output == (f"tiledepth: error: {tmp_path / 'none.yaml'}: cannot read the "
                             "config (No such file or directory)\n")
    cfg.write_text("tile_size: 8\n")
    result = invoke("run", rgba_tif, "-o", out, "--config", cfg, "--overlap", "0.95",
                    "--tile-size", "256", "--model", "toy_models:red")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"tiledepth: error: {rgba_tif}: overlap "), result.output
    assert not out.exists()
    cfg.write_text("tile_size: 8\nsteps: 4\n")
    with caplog.at_level("INFO", logger="tiledepth"):
        result = invoke("run", rgba_tif, "-o", out, "--config", cfg, "--tile-size", "256",
                        "--model", "toy_models:red", "--no-progress", "-v")
    assert result.exit_code == 0, result.output
    assert caplog.text.count("steps 4 skipped: it sets Marigold only") == 1, caplog.text


def test_errors_are_one_line_with_exit_codes(rgba_tif, tmp_path):
    cases = [
        (["run", tmp_path / "missing.tif"], 2, "no such file"),
        (["run", rgba_tif, "-o", tmp_path / "o.tif", "--overlap", "0.95"], 2, "overlap"),
        (["run", rgba_tif, "-o", tmp_path / "o.tif", "--model", "no_such_mod:fn"], 2,
         "cannot import"),
        (["run", rgba_tif, "-o", tmp_path / "o.tif", "--model", "toy_models:wrong_shape"], 1,
         "shape"),
        (["run", rgba_tif, "-o", tmp_path / "o.tif", "--bands", "1,9,3", "--model",
          "toy_models:red"], 2, "out of range"),
    ]
    for args, code, text in cases:
        result = invoke(*args)
        assert result.exit_code == code, (args, result.output)
        assert text in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o.tif").exists()


def test_real_process_end_to_end(rgba_tif, tmp_path):
    out = tmp_path / "depth.tif"
    proc = run_cli(rgba_tif, "-o", out, "--model", "toy_models:red", "--tile-size", 256)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).sum() > 0


def test_tiny_marigold_checkpoint_by_path_end_to_end(tiny_checkpoint, tmp_path):
    """A real MarigoldDepthPipeline, loaded by path through the CLI, on 3 x 4 tiles with alpha."""
    rgba = np.concatenate([depth_image(150, 175), np.full((1, 150, 175), 255, np.uint8)])
    rgba[3, 50:80, 100:130] = 0
    rgba[3, :10, :] = 0
    src_path = write_raster(tmp_path / "rgba.tif", rgba,
                            colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                                         ColorInterp.alpha])
    out = tmp_path / "marigold.tif"
    args = [src_path, "--model", tiny_checkpoint, "--tile-size", 64, "--overlap", 0.25,
            "--device", "cpu", "--steps", 1, "--seed", 7, "--no-progress"]
    result = invoke("run", *args, "-o", out, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        assert dst.dtypes == ("float32",)
        depth = dst.read(1)
        np.testing.assert_array_equal(np.isnan(depth), src.read(4) == 0)
        tags = dst.tags()
    assert tags["TILEDEPTH_MODEL"] == tiny_checkpoint
    assert tags["TILEDEPTH_STEPS"] == "1" and tags["TILEDEPTH_SEED"] == "7"
    assert "12 tiles" in result.output
    assert np.nanstd(depth) > 0
    # the same seed and options give the same bytes; another batch size, the same values
    for batch, exact in [(4, True), (3, False)]:
        again = tmp_path / f"again{batch}.tif"
        invoke("run", *args, "-o", again, "--batch-size", batch)
        with rasterio.open(again) as ds:
            if exact:
                np.testing.assert_array_equal(ds.read(1), depth)
            else:  # batched convolutions round differently
                np.testing.assert_allclose(ds.read(1), depth, rtol=0, atol=1e-5)


def test_missing_weights_offline_is_one_clear_line(rgba_tif, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    result = invoke("run", rgba_tif, "-o", tmp_path / "o.tif", "--device", "cpu")
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert "prs-eth/marigold-depth-v1-1" in line and "hf download" in line and "--model" in line
    assert not (tmp_path / "o.tif").exists()


def test_a_second_ctrl_c_still_ends_cleanly(tmp_path):
    """Ctrl-C twice, at once and a moment later (while the run stops, and while Python exits):
    exit 130, the one line, no traceback, no partial output; the checkpoint is kept."""
    import os
    import signal

    from conftest import child_env

    src = write_raster(tmp_path / "in.tif", depth_image(300, 700))
    procs = {}
    for gap in (0.0, 0.15):
        folder = tmp_path / str(gap)
        folder.mkdir()
        log = folder / "calls.txt"
        procs[gap] = folder, log, subprocess.Popen(
            [sys.executable, "-m", "tiledepth.cli", "run", str(src), "-o", str(folder / "o.tif"),
             "--model", "toy_models:slow", "--tile-size", "64", "--batch-size", "1",
             "--no-progress"],
            env=child_env(TILEDEPTH_TEST_CALLS=str(log), TILEDEPTH_TEST_DELAY="0.05"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for gap, (_, log, proc) in procs.items():
        deadline = time.monotonic() + 120
        while not log.exists() or len(log.read_text().splitlines()) < 8:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
    for gap, (folder, _, proc) in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (gap, err)
        assert len(err.strip().splitlines()) == 1, (gap, err)
        assert err.startswith("tiledepth: interrupted; no output was written; "), err
        left = sorted(p for p in os.listdir(folder) if p.startswith("."))
        assert len(left) == 1 and ".tiledepth-" in left[0], left  # the checkpoint, no .partial


def test_a_signal_in_an_in_process_command_leaves_the_callers_handlers():
    # a command run in-process (a script, QGIS, a test) gives the caller back its own
    # Ctrl-C handler even after a signal came in the run: left as the "cleanup goes on"
    # one, it would swallow every later Ctrl-C of the caller
    import signal

    import click

    from tiledepth import cli

    def own(signum, frame):
        pass

    @click.command()
    @cli.handle_errors
    def stopping():
        cli._stopping()  # what a signal arriving in the run does first

    before = signal.signal(signal.SIGINT, own)
    try:
        assert CliRunner().invoke(stopping, []).exit_code == 0
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_after_the_output_is_placed_says_it_is_complete(tmp_path, monkeypatch):
    """Ctrl-C once the output is in place (while the checkpoint is removed, or a remote
    upload starts): the line says the output is complete (it said "no output was written"
    beside a complete one); the exit code is still the signal's."""
    import tiledepth.engine as engine

    src = write_raster(tmp_path / "in.tif", depth_image(60, 80))
    out = tmp_path / "o.tif"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_deliver", stopped)  # runs after the output is placed
    result = invoke("run", src, "-o", out, "--model", "toy_models:red", "--tile-size", 64,
                    "--no-progress")
    assert result.exit_code == 130
    assert f"interrupted after writing {out}, which is complete" in result.output
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).all()


def test_debug_shows_the_traceback_and_keeps_the_exit_code(rgba_tif, tmp_path, monkeypatch):
    """--debug adds the traceback; the error's line and exit code stay those of a run
    without it (2 for bad options or input, 1 for a failure while running)."""
    import tiledepth.engine

    cases = [
        (["run", tmp_path / "missing.tif"], 2, "no such file"),
        (["run", rgba_tif, "-o", tmp_path / "o.tif", "--overlap", "0.95"], 2, "overlap"),
        (["run", rgba_tif, "-o", tmp_path / "o.tif", "--model", "toy_models:wrong_shape"], 1,
         "shape"),
    ]
    for args, code, text in cases:
        plain, debug = invoke(*args), invoke(*args, "--debug")
        assert (plain.exit_code, debug.exit_code) == (code, code), (args, debug.output)
        assert "Traceback" not in plain.output and "Traceback" in debug.output
        # the same one line ends both: the traceback comes before it (up to the shape: the
        # coarse image and the first tiles are predicted at once, either may fail first)
        last, line = debug.output.strip().splitlines()[-1], plain.output.strip()
        assert last.split(" returned shape")[0] == line.split(" returned shape")[0], last
        assert text in plain.output
    for error, line in [(KeyError("surprise"), "unexpected KeyError: 'surprise'"),
                        (MemoryError(), "out of memory")]:
        def boom(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(tiledepth.engine, "fuse", boom)
        args = ["run", rgba_tif, "-o", tmp_path / "o.tif", "--model", "toy_models:red",
                "--no-progress"]
        plain, debug = invoke(*args), invoke(*args, "--debug")
        assert (plain.exit_code, debug.exit_code) == (1, 1), debug.output
        assert "Traceback" in debug.output and line in debug.output.strip().splitlines()[-1]
    assert not (tmp_path / "o.tif").exists()
    # a real process: --tile-size 16 exits 2 with --debug too (1 before)
    proc = run_cli(rgba_tif, "-o", tmp_path / "p.tif", "--model", "toy_models:red",
                   "--tile-size", 16, "--debug")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("tile_size must be >= 32, got 16")


def test_marigold_loads_without_the_raw_accelerate_message(tiny_checkpoint, tmp_path,
                                                            monkeypatch, caplog):
    """Every Marigold run printed diffusers' raw five-line "Cannot initialize model with low
    cpu memory usage because `accelerate` was not found ... pip install accelerate" through
    its own stderr handler: it goes to tiledepth's log at debug level instead, one line
    (-vv shows it), and diffusers' handlers are back after the load."""
    import logging

    from diffusers.pipelines import pipeline_utils
    from diffusers.utils import logging as diffusers_logging

    monkeypatch.setattr(pipeline_utils, "is_accelerate_available", lambda: False)  # as here
    raw = []

    class Raw(logging.Handler):  # beside diffusers' own stderr handler: what it would print
        def emit(self, record):
            raw.append(record.getMessage())

    root = diffusers_logging.get_logger()
    handlers = root.handlers[:]
    root.addHandler(spy := Raw())
    try:
        src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
        with caplog.at_level(logging.DEBUG, logger="tiledepth"):
            result = CliRunner().invoke(main, [
                "run", str(src), "-o", str(tmp_path / "o.tif"), "--model", tiny_checkpoint,
                "--device", "cpu", "--tile-size", "48", "--steps", "1", "--no-progress",
                "-vv"])
        assert result.exit_code == 0, result.output
        assert "accelerate" not in result.output and raw == []
        routed = [r.getMessage() for r in caplog.records if "accelerate" in r.getMessage()]
        assert len(routed) == 1 and routed[0].startswith(
            "diffusers.pipelines.pipeline_utils: Cannot initialize model with low cpu memory "
            "usage because `accelerate` was not found") and "\n" not in routed[0]
        assert [r.levelno for r in caplog.records if "accelerate" in r.getMessage()] == [
            logging.DEBUG]
        assert root.handlers == [*handlers, spy]
    finally:
        root.removeHandler(spy)


def test_a_urls_credentials_never_reach_the_error_line_or_the_log(tmp_path, caplog):
    """Every line the CLI prints or logs leaves a URL's credentials out (user:pass@, a
    presigned URL's signature), whoever wrote the message: the reader's error line and
    batch's "failed" warning named the URL as given."""
    url = "https://alice:hunter2@127.0.0.1:9/a.tif?X-Amz-Expires=60&X-Amz-Signature=f00d"
    res = invoke("run", url, "-o", tmp_path / "o.tif", "--model", "toy_models:red")
    assert res.exit_code == 2 and "127.0.0.1:9/a.tif" in res.output, res.output
    assert "hunter2" not in res.output and "f00d" not in res.output
    assert "X-Amz-Signature=REDACTED" in res.output
    listing = tmp_path / "list.txt"
    listing.write_text(url + "\n")
    with caplog.at_level(logging.WARNING):
        res = invoke("batch", f"@{listing}", "-o", tmp_path / "out", "--model",
                     "toy_models:red", "--no-progress")
    assert res.exit_code == 1, res.output
    logged = caplog.text + res.output
    assert "127.0.0.1:9/a.tif" in logged and "REDACTED" in logged
    assert "hunter2" not in logged and "f00d" not in logged


def test_a_signal_while_the_command_sets_up_is_its_interruption(tmp_path, monkeypatch):
    """SIGTERM or Ctrl-C in the first half second of a command, once its handlers were set
    and while it imported tiledepth.read (rasterio's half second), outside the try that maps
    them: a traceback of _Terminated, exit 1. Now, as anywhere else, one line and 143 (130)."""
    import signal

    import tiledepth.read

    src = write_raster(tmp_path / "m.tif", np.ones((1, 4, 5), np.float32))
    for signum, said, code in ((signal.SIGTERM, "terminated (SIGTERM)", 143),
                               (signal.SIGINT, "interrupted", 130)):
        with monkeypatch.context() as patch:  # the signal as the set-up routes libtiff's
            patch.setattr(tiledepth.read, "route_libtiff_messages",
                          lambda signum=signum: signal.raise_signal(signum))
            r = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "o.las")])
        assert r.exit_code == code, r.output
        assert r.output.strip() == f"tiledepth: {said}; no output was written"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_a_resumed_split_says_how_many_outputs_it_wrote_and_kept(tmp_path, monkeypatch):
    """`run --mosaic --split` stopped after cutting one output of three, run again: it cuts
    the other two from the kept fused map and kept the first, but said "wrote 3 outputs";
    now "wrote 2 outputs to ..., kept 1 from an earlier run" (and the first left as it was)."""
    from tiledepth import mosaic

    (tmp_path / "in").mkdir()
    for i in range(3):
        write_raster(tmp_path / "in" / f"r{i}.tif", depth_image(150, 170))
    out = tmp_path / "out"
    args = ["run", tmp_path / "in", "--mosaic", "--split", "-o", out, "--model",
            "toy_models:red", "--tile-size", 96, "--no-progress"]
    split = mosaic.split_outputs

    def stopped_after_the_first(fused, members, targets, **kwargs):  # Ctrl-C after one
        import dataclasses

        split(fused, dataclasses.replace(members, members=members.members[:1]), targets[:1],
              **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(mosaic, "split_outputs", stopped_after_the_first)
    stopped = invoke(*args)
    assert stopped.exit_code == 130 and "the fused map" in stopped.output, stopped.output
    first = (out / "r0.depth.tif").stat()
    assert sorted(p.name for p in out.glob("r?.depth.tif")) == ["r0.depth.tif"]
    monkeypatch.setattr(mosaic, "split_outputs", split)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines() == [f"wrote 2 outputs to {out}, kept 1 from an earlier run"]
    assert (out / "r0.depth.tif").stat().st_ino == first.st_ino
    assert len(list(out.glob("r?.depth.tif"))) == 3
    replaced = invoke(*args, "--overwrite")  # every output cut again: none kept
    assert replaced.output.splitlines() == [f"wrote 3 outputs to {out}"], replaced.output
    assert (out / "r0.depth.tif").stat().st_ino != first.st_ino


def test_batch_refuses_ray_actors_below_1_before_reading_anything(tmp_path):
    """``batch --executor ray --ray-actors 0`` (or -1) was refused only when the Ray pool
    started: after the inputs were searched (a missing one was named instead) and the output
    folder and its manifest made. Now one line, exit 2, before any of that."""
    from tiledepth.batchrun import batch
    from tiledepth.errors import OptionError

    out = tmp_path / "out"
    for n in (0, -1):
        result = invoke("batch", tmp_path / "missing.tif", "-o", out, "--executor", "ray",
                        "--ray-actors", n, "--config", tmp_path / "missing.yaml")
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [
            f"tiledepth: error: ray_actors (--ray-actors) must be a whole number >= 1 (model "
            f"actors on Ray), got {n}"]
        assert not out.exists()
    for bad in (0, 2.5, True):  # the library's too
        with pytest.raises(OptionError, match=r"^ray_actors \(--ray-actors\) must be a whole"):
            batch([tmp_path / "missing.tif"], out, executor="ray", ray_actors=bad)
    assert not out.exists()


def test_a_seed_given_to_a_python_callable_is_said_to_be_unused(rgba_tif, tmp_path):
    """``--seed 7`` with a Python callable changed no pixel, only the SEED tag, and nothing
    said so: an info line (``-v``) says it is not passed to the callable. Not refused as
    --steps is: it is recorded, and tells one run from another (a new checkpoint)."""
    args = ["--model", "toy_models:red", "--tile-size", 256, "-v"]
    seeded = run_cli(rgba_tif, "-o", tmp_path / "a.tif", *args, "--seed", 7)
    assert seeded.returncode == 0, seeded.stderr
    note = ("tiledepth: INFO: toy_models:red is a Python callable: seed 7 is not passed to it "
            "(the seed sets Marigold's noise), only recorded in the output's SEED tag")
    assert note in seeded.stderr.splitlines()
    plain = run_cli(rgba_tif, "-o", tmp_path / "b.tif", *args)
    assert plain.returncode == 0 and "is not passed to it" not in plain.stderr
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.tags()["TILEDEPTH_SEED"] == "7" and b.tags()["TILEDEPTH_SEED"] == "0"
        np.testing.assert_array_equal(a.read(1), b.read(1))


@pytest.mark.parametrize("model, flags", [
    ("depth-anything-v2-small", ["--ensemble", 3]), ("depth-anything-v2-small", ["--steps", 2]),
    ("depth-pro", ["--ensemble", 2]), ("toy_models:red", ["--ensemble", 3]),
    ("toy_models:red", ["--steps", 2]), ("marigold-e2e-ft", ["--ensemble", 3])])
def test_info_refuses_the_model_options_run_refuses_with_its_message(model, flags, rgba_tif,
                                                                      tmp_path, hub_offline):
    """``info --model depth-anything-v2-small --ensemble 3`` (a model that has no ensemble,
    or no steps) planned and costed the run that ``run`` refuses; now the same line (run's
    names the input first), exit 2."""
    ran = invoke("run", rgba_tif, "-o", tmp_path / "o.tif", "--model", model, *flags)
    told = invoke("info", rgba_tif, "--model", model, *flags)
    assert ran.exit_code == told.exit_code == 2, (ran.output, told.output)
    prefix = "tiledepth: error: "
    assert ran.output.splitlines() == [f"{prefix}{rgba_tif}: {told.output[len(prefix):]}".strip()]
    assert told.output.startswith(prefix) and len(told.output.splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()


def test_info_takes_the_options_a_loaded_model_named_module_obj_has_as_run_does(rgba_tif,
                                                                                tmp_path,
                                                                                monkeypatch):
    """A loaded model object named ``module:obj`` runs with its own options: ``--steps 10``
    matching its own passes in ``run``, and ``info`` (which checks a callable's options
    before it reads the raster) must not refuse it as a Python callable's; ``--steps 5``,
    not its own, both refuse alike."""
    (tmp_path / "own_model.py").write_text(
        "import numpy as np\n"
        "class Model:\n"
        "    kind, name, batch_size, steps = 'depth', 'own', 4, 10\n"
        "    def predict(self, batch, keys):\n"
        "        return batch[..., 0].astype(np.float32)\n"
        "model = Model()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    told = invoke("info", rgba_tif, "--model", "own_model:model", "--steps", "10")
    assert told.exit_code == 0, told.output
    ran = invoke("run", rgba_tif, "-o", tmp_path / "o.tif", "--model", "own_model:model",
                 "--steps", "10")
    assert ran.exit_code == 0, ran.output
    told = invoke("info", rgba_tif, "--model", "own_model:model", "--steps", "5")
    ran = invoke("run", rgba_tif, "-o", tmp_path / "p.tif", "--model", "own_model:model",
                 "--steps", "5")
    assert told.exit_code == ran.exit_code == 2, (told.output, ran.output)
    assert "steps=5 (it has 10)" in told.output and "steps=5 (it has 10)" in ran.output
