"""`rio depth`: the rasterio CLI plugin and its entry point."""

from importlib.metadata import EntryPoint, PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tomllib
from click.testing import CliRunner
from rasterio.rio.main import main_group

from tiledepth import cli
from tiledepth.rio import INSTEAD, depth

ROOT = Path(__file__).parent.parent


def test_entry_point_is_declared_and_loads():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    plugins = meta["project"]["entry-points"]["rasterio.rio_plugins"]
    assert plugins == {"depth": "tiledepth.rio:depth"}
    ep = EntryPoint("depth", plugins["depth"], "rasterio.rio_plugins")
    assert ep.load() is depth


def test_installed_metadata_registers_the_plugin():
    """Where tiledepth is installed from this tree (CI: pip install -e .), rio lists depth."""
    try:
        eps = distribution("tiledepth").entry_points
    except PackageNotFoundError:
        pytest.skip("tiledepth is not installed (only on PYTHONPATH)")
    if not any(ep.group == "rasterio.rio_plugins" for ep in eps):
        pytest.skip("the installed tiledepth metadata predates the plugin; pip install -e .")
    assert "depth" in main_group.commands


def test_rio_depth_runs_with_run_options(rgba_tif, tmp_path):
    if "depth" not in main_group.commands:
        main_group.add_command(depth)
    out = tmp_path / "rio.tif"
    result = CliRunner().invoke(main_group, ["depth", str(rgba_tif), str(out), "--model",
                                             "toy_models:red", "--tile-size", "256",
                                             "--output-kind", "height", "--no-progress"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.tags()["TILEDEPTH_OUTPUT_KIND"] == "height"
        assert np.isfinite(ds.read(1)).any()
    again = CliRunner().invoke(main_group, ["depth", str(rgba_tif), str(out), "--model",
                                            "toy_models:red"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert "another OUTPUT" in again.output and " -o" not in again.output  # it has no -o
    run_flags = {o for p in cli.run.params for o in p.opts  # one INPUT and OUTPUT: no mosaic
                 if p.name not in ("output", "mosaic", "split")} - {"INPUT"}
    assert run_flags - {"input"} <= {o for p in depth.params for o in p.opts}


def test_rio_depth_runs_in_rios_gdal_environment(rgba_tif, tmp_path, monkeypatch):
    """rio's own options (--aws-no-sign-requests, --aws-profile, -v: CPL_DEBUG) are a
    rasterio.Env that rio's commands enter (ctx.obj["env"]); `rio depth` never did, so a
    public bucket's input was read with credentials (or none found). The run is in it."""
    import rasterio.env

    import tiledepth.engine
    from tiledepth.errors import OptionError

    if "depth" not in main_group.commands:
        main_group.add_command(depth)
    seen = []

    def engine_run(*args, **kwargs):  # what the run's reads get from GDAL, and stop
        seen.append(rasterio.env.getenv().get("AWS_NO_SIGN_REQUEST")
                    if rasterio.env.hasenv() else "no rasterio.Env")
        raise OptionError("stop here")

    monkeypatch.setattr(tiledepth.engine, "run", engine_run)
    result = CliRunner().invoke(main_group, ["--aws-no-sign-requests", "depth", str(rgba_tif),
                                             str(tmp_path / "o.tif"), "--model",
                                             "toy_models:red", "--no-progress"])
    assert result.exit_code == 2 and "stop here" in result.output, result.output
    assert seen == ["YES"]
    result = CliRunner().invoke(depth, [str(rgba_tif), str(tmp_path / "o.tif")])
    assert result.exit_code == 2 and len(seen) == 2, result.output  # (no rio group: no env)


def test_rio_depth_names_its_output_argument_in_a_config_key_error(rgba_tif, tmp_path):
    """A config's `output:` key under `rio depth` was refused with "OUTPUT/--output is per
    raster", an option rio depth does not have (its OUTPUT is an argument); now "OUTPUT is
    per raster", as `tiledepth run` names its -o/--output."""
    if "depth" not in main_group.commands:
        main_group.add_command(depth)
    config = tmp_path / "c.yaml"
    for key in ("output", "output_dir"):
        config.write_text(f"{key}: x.tif\n")
        result = CliRunner().invoke(main_group, ["depth", str(rgba_tif), str(tmp_path / "o.tif"),
                                                 "--config", str(config), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert result.output.endswith(f"{config}: {key!r} is not a config key: OUTPUT is per "
                                      "raster (one run's input, output or area); give it on "
                                      "the command line, not in a config\n"), result.output
    run = CliRunner().invoke(cli.main, ["run", str(rgba_tif), "--config", str(config)])
    # (run has no --output-dir either: batch's flag)
    assert "'output_dir' is not a config key, and tiledepth run has no --output-dir; it is a " \
        "flag of `tiledepth batch`: give it there; remove it from the config" in run.output


def test_rio_depth_says_a_configs_mosaic_and_split_keys_are_not_its_flags(rgba_tif, tmp_path):
    """A config's `mosaic:` or `split:` under `rio depth` was refused with "--mosaic is a
    command flag; give it on the command line", a flag rio depth does not have; the one line
    names every such key and the commands that fuse several rasters."""
    if "depth" not in main_group.commands:
        main_group.add_command(depth)
    config = tmp_path / "c.yaml"
    instead = ("it writes one INPUT to one OUTPUT: to fuse several rasters use `tiledepth run "
               "INPUT... --mosaic --output OUT.tif` (--split: one output per input, OUT a "
               "folder) or `tiledepth batch INPUT... --mosaic --output-dir DIR`")
    for text, said in [
            ("mosaic: true\ntile_size: 96\n", "'mosaic' is not a config key, and rio depth "
                                              "has no --mosaic; " + instead + "; remove it"),
            ("split: true\nmosaic: true\n", "'split', 'mosaic' are not config keys, and rio "
                                            "depth has no --split or --mosaic; " + instead
                                            + "; remove them")]:
        _refused_by_rio_depth(rgba_tif, tmp_path, config, text, said)
    # tiledepth run has the flags: its message is as before
    run = CliRunner().invoke(cli.main, ["run", str(rgba_tif), "--config", str(config)])
    assert "'split' is not a config key: --split is a command flag; give it on the command " \
        "line" in run.output, run.output


def _refused_by_rio_depth(rgba_tif, tmp_path, config, text: str, said: str) -> None:
    """`rio depth` with ``config`` holding ``text``: exit status 2 and the one line ``said``."""
    config.write_text(text)
    result = CliRunner().invoke(main_group, ["depth", str(rgba_tif), str(tmp_path / "o.tif"),
                                             "--config", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.output == f"tiledepth: error: {config}: {said} from the config\n", \
        result.output


def test_rio_depth_says_a_configs_batch_keys_are_batchs_flags(rgba_tif, tmp_path):
    """A config's `glob:`, `shard:` or `executor:` under `rio depth` was told "give it on the
    command line", where rio depth has no such flag: it says they are `tiledepth batch`'s and
    how to give them there (its output folder as --output-dir: rio's messages say OUTPUT for
    -o), as `tiledepth run` does, with what it says of `mosaic:` where both are there."""
    if "depth" not in main_group.commands:
        main_group.add_command(depth)
    config = tmp_path / "c.yaml"
    batch = (f"`tiledepth batch INPUT... --output-dir DIR --config {config}")
    for text, said in [
            ("glob: '*.tif'\ntile_size: 96\n",
             "'glob' is not a config key, and rio depth has no --glob; it is a flag of "
             f"`tiledepth batch`: give it there ({batch} --glob ...`); remove it"),
            ("executor: ray\nshard: 0/2\n",
             "'executor', 'shard' are not config keys, and rio depth has no --executor or "
             "--shard; they are flags of `tiledepth batch`: give them there "
             f"({batch} --executor ... --shard ...`); remove them"),
            ("mosaic: true\non-error: stop\n",
             "'mosaic', 'on-error' are not config keys, and rio depth has no --mosaic or "
             f"--on-error; {INSTEAD}; --on-error is a flag of `tiledepth batch`: give it there "
             f"({batch} --on-error ...`); remove them")]:
        _refused_by_rio_depth(rgba_tif, tmp_path, config, text, said)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.yaml", rgba_tif.name])


def test_rio_depth_prints_tiledepths_log_lines_as_tiledepth_run_does(rgba_tif, tmp_path):
    """Under rio (whose group sets up the root logger first, so the command's own
    basicConfig did nothing), tiledepth's log lines came in rio's format,
    "INFO:tiledepth.engine:wrote ..."; now as `tiledepth run` prints them, once each."""
    import subprocess
    import sys

    from conftest import child_env

    code = ("import sys\n"
            "from rasterio.rio.main import main_group\n"
            "from tiledepth.rio import depth\n"
            "if 'depth' not in main_group.commands:\n"
            "    main_group.add_command(depth)\n"
            "main_group(sys.argv[1:])\n")
    lines = {}
    for name, args in (("rio", ["depth", str(rgba_tif), str(tmp_path / "rio.tif")]),
                       ("run", ["run", str(rgba_tif), "-o", str(tmp_path / "run.tif")])):
        prog = code if name == "rio" else "from tiledepth.cli import main; main()"
        proc = subprocess.run([sys.executable, "-c", prog, *args, "--model", "toy_models:red",
                               "--tile-size", "256", "--no-progress", "-v"],
                              capture_output=True, text=True, env=child_env(), timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines[name] = [line for line in proc.stderr.splitlines() if "INFO" in line]
    assert len(lines["rio"]) == len(lines["run"]) >= 1, lines
    for rio_line, run_line in zip(lines["rio"], lines["run"], strict=True):
        assert rio_line.startswith("tiledepth: INFO: ")
        assert rio_line.replace("rio.tif", "run.tif").split(",")[0] == run_line.split(",")[0]
