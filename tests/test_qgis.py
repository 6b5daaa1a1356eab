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

import laspy
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


def qgis_env(root: Path, home: Path, **extra) -> dict:
    """The environment of a QGIS process: headless, the throwaway profiles, the toy models
    importable by the tiledepth child."""
    home.mkdir(mode=0o700, exist_ok=True)
    env = child_env(QGIS_CUSTOM_CONFIG_PATH=str(root), QT_QPA_PLATFORM="offscreen",
                    HOME=str(home), XDG_RUNTIME_DIR=str(home), **extra)
    return without_venv(env)


def without_venv(env: dict) -> dict:
    """``env`` less an activated virtual environment (CI activates one): QGIS's embedded
    Python finds its standard library from the first ``python3`` on PATH, and the venv's
    (another Python's) has no ``qgis`` module. The tiledepth child keeps its Python."""
    venvs = {os.path.dirname(sys.executable), os.path.join(env.get("VIRTUAL_ENV", "/-"), "bin")}
    env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and os.path.realpath(p) not in
                                  {os.path.realpath(v) for v in venvs})
    return env


@pytest.fixture(scope="module")
def qgis_runs(tmp_path_factory):
    """Both QGIS processes of the tests below, started at once (they mostly wait on their
    tiledepth child): qgis_process on a polygon AOI, and QGIS's Python cancelling a slow run
    through the feedback, resuming it, then running with a Python that has no tiledepth."""
    import pyogrio
    import shapely

    from tiledepth.qgis import install

    tmp = tmp_path_factory.mktemp("qgis")
    ortho = write_raster(tmp / "ortho.tif", depth_image(256, 256))
    px = lambda c, r: TRANSFORM @ (c, r)  # noqa: E731
    utm = shapely.Polygon([px(10, 10), px(100, 10), px(100, 160), px(250, 160), px(250, 250),
                           px(10, 250)])
    aoi = tmp / "field.geojson"
    pyogrio.raw.write(aoi, np.array([shapely.to_wkb(utm)], object), field_data=[], fields=[],
                      crs=CRS, geometry_type="Polygon", driver="GeoJSON")
    # (Debian's qgis_process wrapper adds a flag 3.22 rejects: call the .bin)
    install(root=tmp / "a" / "profiles")
    aoi_out = tmp / "field.depth.tif"
    aoi_run = subprocess.Popen(
        [QGIS_PROCESS, "run", "tiledepth:estimate", "--", f"INPUT={ortho}", f"AOI={aoi}",
         f"OUTPUT={aoi_out}", "MODEL=toy_models:red", "TILE_SIZE=128", "OVERLAP=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=qgis_env(tmp / "a", tmp / "home-a"))

    # a height map with a hole, exported every second row and column, coloured by an image
    height = np.linspace(10.0, 40.0, 50 * 60, dtype=np.float32).reshape(1, 50, 60)
    height[0, 5:20, 7:30] = np.nan
    height_map = write_raster(tmp / "h.tif", height)
    with rasterio.open(height_map, "r+") as ds:
        ds.set_band_description(1, "height")
    image = write_raster(tmp / "h-ortho.tif", depth_image(50, 60))
    install(root=tmp / "c" / "profiles")
    export_run = subprocess.Popen(
        [QGIS_PROCESS, "run", "tiledepth:export_point_cloud", "--", f"INPUT={height_map}",
         f"IMAGE={image}", "STEP=2", f"OUTPUT={tmp / 'h.laz'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=qgis_env(tmp / "c", tmp / "home-c"))

    plugins = install(root=tmp / "b" / "profiles").parent
    slow_out = tmp / "slow.depth.tif"
    (x0, y1), (x1, y0) = TRANSFORM @ (0, 0), TRANSFORM @ (256, 200)
    params = {"INPUT": str(ortho), "OUTPUT": str(slow_out), "MODEL": "toy_models:slow",
              "TILE_SIZE": 128, "OVERLAP": 0.25, "BATCH_SIZE": "1",
              "EXTENT": f"{x0},{x1},{y0},{y1} [{CRS}]"}  # the canvas extent, say
    runs = [{"params": params, "cancel_at": 30.0, "env": {"TILEDEPTH_TEST_DELAY": "0.3"}},
            {"params": params, "env": {"TILEDEPTH_TEST_DELAY": "0"}, "style": True},
            {"alg": "tiledepth:preview", "params": {"INPUT": str(slow_out), "HILLSHADE": True,
                                                    "OUTPUT": str(tmp / "slow.png")}},
            {"params": dict(params, OUTPUT=str(tmp / "none.tif")), "python": QGIS_PYTHON,
             "env": {"PYTHONPATH": ""}},  # QGIS's Python, without the repository on its path
            {"alg": "tiledepth:export_point_cloud", "params": {"INPUT": str(slow_out),
                                                               "OUTPUT": str(tmp / "s.png")}}]
    script = subprocess.Popen([QGIS_PYTHON, str(TESTS / "qgis_script.py"), str(plugins),
                               json.dumps(runs)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp,
                              env=qgis_env(tmp / "b", tmp / "home-b"))
    procs = {"aoi": aoi_run, "script": script, "export": export_run}
    yield {"tmp": tmp, "utm": utm, "aoi_out": aoi_out, "slow_out": slow_out,
           "height": height[0], "image": depth_image(50, 60),
           "output": lambda name: procs[name].communicate(timeout=180)[0],
           "rc": lambda name: procs[name].returncode}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@needs_qgis
def test_qgis_process_estimate_with_a_polygon_aoi(qgis_runs):
    stdout = qgis_runs["output"]("aoi")
    assert qgis_runs["rc"]("aoi") == 0, stdout
    assert "TILES:\t3" in stdout  # of four: one wholly outside the L
    with rasterio.open(qgis_runs["aoi_out"]) as ds:
        assert (ds.height, ds.width) == (240, 240)
        assert ds.crs == rasterio.crs.CRS.from_user_input(CRS)
        assert ds.transform == TRANSFORM @ TRANSFORM.translation(10, 10)
        depth = ds.read(1)
        inside = geometry_mask([qgis_runs["utm"]], out_shape=depth.shape,
                               transform=ds.transform, invert=True)
    assert inside.sum() == 90 * 240 + 150 * 90
    assert np.array_equal(np.isfinite(depth), inside)  # NaN exactly outside the AOI


@pytest.fixture(scope="module")
def script_runs(qgis_runs):
    stdout = qgis_runs["output"]("script")
    assert qgis_runs["rc"]("script") == 0, stdout
    return json.loads(stdout.strip().splitlines()[-1])


@needs_qgis
def test_cancel_keeps_the_checkpoint_and_a_rerun_resumes(qgis_runs, script_runs):
    first, second = script_runs[:2]
    assert not first["ok"], first
    assert any(e.startswith("canceled; tiledepth: terminated") and "run the same command "
               "again to resume" in e for e in first["errors"]), first["errors"]
    assert 0 < max(first["progress"]) < 100
    # what the first run kept (its checkpoint folder is gone once the rerun completes)
    kept = int(next(e for e in first["errors"] if "kept in" in e)
               .split(" tile prediction(s) kept")[0].rsplit("; ", 1)[-1])
    assert 1 <= kept < 6  # of 3 x 2 tiles (256 x 200 px, 128-px tiles overlapping 32 px)
    assert second["ok"], second["errors"]
    assert second["results"]["RESUMED"] == kept
    assert second["results"]["TILES"] == 6
    with rasterio.open(qgis_runs["slow_out"]) as ds:
        assert (ds.height, ds.width) == (200, 256)
        assert np.isfinite(ds.read(1)).all()
    assert not list(qgis_runs["tmp"].glob(".slow.depth.tif.tiledepth-*"))
    # loaded in QGIS: viridis pseudo-colour for depth, a hillshade for heights, the input's CRS
    assert second["styles"] == [["QgsSingleBandPseudoColorRenderer", CRS],
                                ["QgsHillshadeRenderer", CRS]]


@needs_qgis
def test_preview_algorithm_writes_a_georeferenced_png(qgis_runs, script_runs):
    preview = script_runs[2]
    assert preview["ok"], preview["errors"]
    with rasterio.open(qgis_runs["tmp"] / "slow.png") as png:
        assert png.count == 4 and png.width == 256 and png.height == 200
        assert png.crs == rasterio.crs.CRS.from_user_input(CRS)  # from its .aux.xml


@needs_qgis
def test_a_python_without_tiledepth_is_explained(script_runs):
    third = script_runs[3]
    assert not third["ok"]
    assert any(f"tiledepth cannot be found: {QGIS_PYTHON} has no tiledepth module" in e
               for e in third["errors"]), third["errors"]


@needs_qgis
def test_qgis_process_exports_a_coloured_thinned_point_cloud(qgis_runs):
    stdout = qgis_runs["output"]("export")
    assert qgis_runs["rc"]("export") == 0, stdout
    thinned = qgis_runs["height"][::2, ::2]
    valid = np.isfinite(thinned)
    n = int(valid.sum())
    assert n == 25 * 30 - 7 * 11  # the hole covers kept rows 6..18 and kept columns 8..28
    assert f"POINTS:\t{n}" in stdout
    las = laspy.read(qgis_runs["tmp"] / "h.laz")
    assert len(las.points) == n
    wkt = las.header.vlrs.get("WktCoordinateSystemVlr")[0].string
    assert rasterio.crs.CRS.from_wkt(wkt) == rasterio.crs.CRS.from_user_input(CRS)
    np.testing.assert_allclose(las.z, thinned[valid], atol=1e-3)  # heights: z as they are
    rows, cols = np.nonzero(valid)
    x, y = TRANSFORM @ (2 * cols + 0.5, 2 * rows + 0.5)  # pixel centres of the kept pixels
    np.testing.assert_allclose(las.x, x, atol=1e-3)
    np.testing.assert_allclose(las.y, y, atol=1e-3)
    np.testing.assert_array_equal(las.red // 257, qgis_runs["image"][0, ::2, ::2][valid])


@needs_qgis
def test_export_point_cloud_rejects_a_raster_output(qgis_runs, script_runs):
    run = script_runs[4]
    assert not run["ok"]
    assert any(e.startswith("OUTPUT: ") and e.endswith("a point cloud ends in .laz, .las, .ply")
               for e in run["errors"]), run["errors"]
    assert not (qgis_runs["tmp"] / "s.png").exists()
