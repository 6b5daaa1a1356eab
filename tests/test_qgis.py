"""The QGIS Processing provider: installed into a throwaway profile, run by a real QGIS.

The QGIS tests are skipped where QGIS (qgis_process and its Python bindings) is not
installed; .ci/run installs it from Debian's packages.
"""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, TESTS, TRANSFORM, child_env, depth_image, write_raster
from rasterio.features import geometry_mask

from tiledepth.cli import main
from tiledepth.qgis import PLUGIN_NAME
from tiledepth.qgis.plugin import child

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
QGIS_PYTHON = "/usr/bin/python3"


def _has_qgis() -> bool:
    if QGIS_PROCESS is None or not Path(QGIS_PYTHON).exists():
        return False
    return subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"],
                          capture_output=True).returncode == 0


needs_qgis = pytest.mark.skipif(not _has_qgis(), reason="QGIS is not installed")


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """A QGIS config folder with the provider installed in its default profile."""
    root = tmp_path / "qgis-config"
    monkeypatch.setenv("QGIS_CUSTOM_CONFIG_PATH", str(root))
    result = CliRunner().invoke(main, ["qgis", "install"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def qgis_env(root: Path, home: Path, **extra) -> dict:
    """qgis_process's environment: headless, the throwaway profile, the toy models importable
    by the tiledepth child (Debian's wrapper adds a flag 3.22 rejects: call the .bin)."""
    home.mkdir(exist_ok=True)
    return child_env(QGIS_CUSTOM_CONFIG_PATH=str(root), QT_QPA_PLATFORM="offscreen",
                     HOME=str(home), XDG_RUNTIME_DIR=str(home), **extra)


def test_install_records_this_python_enables_and_uninstalls(profiles):
    folder = profiles / "profiles" / "default" / "python" / "plugins" / PLUGIN_NAME
    assert (folder / "metadata.txt").exists() and (folder / "algorithms.py").exists()
    assert json.loads((folder / "tiledepth.json").read_text())["python"] == sys.executable
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.write_text("[qgis]\nkeep=1\n\n[PythonPlugins]\nother=true\n" + ini.read_text())
    CliRunner().invoke(main, ["qgis", "install"], catch_exceptions=False)  # again: one entry
    text = ini.read_text()
    assert text.count(f"{PLUGIN_NAME}=true") == 1 and "keep=1" in text and "other=true" in text
    result = CliRunner().invoke(main, ["qgis", "uninstall"], catch_exceptions=False)
    assert result.exit_code == 0 and str(folder) in result.output
    assert not folder.exists() and PLUGIN_NAME not in ini.read_text()
    assert "other=true" in ini.read_text()


def test_child_helpers_doctests_and_missing_setup(tmp_path):
    assert doctest.testmod(child, optionflags=doctest.ELLIPSIS).failed == 0
    with pytest.raises(child.TiledepthNotFound, match="tiledepth qgis install"):
        child.tiledepth_python(tmp_path / "tiledepth.json")
    (tmp_path / "tiledepth.json").write_text('{"python": "/nonexistent/python"}')
    with pytest.raises(child.TiledepthNotFound, match="no longer exists"):
        child.tiledepth_python(tmp_path / "tiledepth.json")


@needs_qgis
def test_qgis_process_estimate_with_a_polygon_aoi(profiles, tmp_path):
    import pyogrio
    import shapely

    ortho = write_raster(tmp_path / "ortho.tif", depth_image(256, 256))
    px = lambda c, r: TRANSFORM @ (c, r)  # noqa: E731
    utm = shapely.Polygon([px(10, 10), px(100, 10), px(100, 160), px(250, 160), px(250, 250),
                           px(10, 250)])
    aoi = tmp_path / "field.geojson"
    pyogrio.raw.write(aoi, np.array([shapely.to_wkb(utm)], object), field_data=[], fields=[],
                      crs=CRS, geometry_type="Polygon", driver="GeoJSON")
    out = tmp_path / "field.depth.tif"
    proc = subprocess.run(
        [QGIS_PROCESS, "run", "tiledepth:estimate", "--", f"INPUT={ortho}", f"AOI={aoi}",
         f"OUTPUT={out}", "MODEL=toy_models:red", "TILE_SIZE=128", "OVERLAP=0"],
        capture_output=True, text=True, env=qgis_env(profiles, tmp_path / "home"), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TILES:\t3" in proc.stdout  # of four: one wholly outside the L
    with rasterio.open(out) as ds:
        assert (ds.height, ds.width) == (240, 240)
        assert ds.crs == rasterio.crs.CRS.from_user_input(CRS)
        assert ds.transform == TRANSFORM @ TRANSFORM.translation(10, 10)
        depth = ds.read(1)
        inside = geometry_mask([utm], out_shape=depth.shape, transform=ds.transform,
                               invert=True)
    assert inside.sum() == 90 * 240 + 150 * 90
    assert np.array_equal(np.isfinite(depth), inside)  # NaN exactly outside the AOI


@needs_qgis
def test_cancel_keeps_the_checkpoint_and_a_rerun_resumes(profiles, tmp_path):
    ortho = write_raster(tmp_path / "ortho.tif", depth_image(256, 256))
    out = tmp_path / "slow.depth.tif"
    (x0, y1), (x1, y0) = TRANSFORM @ (0, 0), TRANSFORM @ (256, 200)
    params = {"INPUT": str(ortho), "OUTPUT": str(out), "MODEL": "toy_models:slow",
              "TILE_SIZE": 128, "OVERLAP": 0.25, "BATCH_SIZE": "1",
              "EXTENT": f"{x0},{x1},{y0},{y1} [{CRS}]"}  # the canvas extent, say
    plugins = profiles / "profiles" / "default" / "python" / "plugins"

    def estimate(cancel_at: float, delay: str) -> dict:
        proc = subprocess.run(
            [QGIS_PYTHON, str(TESTS / "qgis_script.py"), str(plugins), json.dumps(params),
             str(cancel_at)], capture_output=True, text=True, timeout=180,
            env=qgis_env(profiles, tmp_path / "home", TILEDEPTH_TEST_DELAY=delay))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = estimate(30.0, "0.3")
    assert not first["ok"] and not out.exists()
    assert any(e.startswith("canceled; tiledepth: terminated") and "run the same command "
               "again to resume" in e for e in first["errors"]), first["errors"]
    kept = [p for p in tmp_path.glob(".slow.depth.tif.tiledepth-*/tile*.pred.npy")]
    assert 1 <= len(kept) < 6  # of 3 x 2 tiles (256 x 200 px, 128-px tiles)
    second = estimate(-1, "0")
    assert second["ok"], second["errors"]
    assert second["results"]["RESUMED"] == len(kept)
    with rasterio.open(out) as ds:
        assert (ds.height, ds.width) == (200, 256)
        assert np.isfinite(ds.read(1)).all()
    assert not list(tmp_path.glob(".slow.depth.tif.tiledepth-*"))  # removed once complete


@needs_qgis
def test_a_python_without_tiledepth_is_explained(profiles, tmp_path):
    plugins = profiles / "profiles" / "default" / "python" / "plugins"
    (plugins / PLUGIN_NAME / "tiledepth.json").write_text(json.dumps({"python": QGIS_PYTHON}))
    ortho = write_raster(tmp_path / "ortho.tif", depth_image(64, 64))
    env = qgis_env(profiles, tmp_path / "home")
    env["PYTHONPATH"] = ""  # QGIS's Python, without the repository on its path
    proc = subprocess.run(
        [QGIS_PYTHON, str(TESTS / "qgis_script.py"), str(plugins),
         json.dumps({"INPUT": str(ortho), "OUTPUT": str(tmp_path / "o.tif")}), "-1"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["ok"]
    assert any(f"tiledepth cannot be found: {QGIS_PYTHON} has no tiledepth module" in e
               for e in result["errors"]), result["errors"]


def test_environment_passes_the_toy_models_on():
    assert str(TESTS) in child_env()["PYTHONPATH"].split(os.pathsep)
