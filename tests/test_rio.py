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
from tiledepth.rio import depth

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
