"""The examples run offline on the sample with a callable model."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def sh(*args, cwd=ROOT, **env):
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]), **env)
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          env=environ, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    sh(sys.executable, EXAMPLES / "make_sample.py", folder / "ortho.tif", "--size", "384",
       "--dem", folder / "dem.tif")
    return folder / "ortho.tif", folder / "dem.tif"


def test_gis_script(sample, tmp_path):
    ortho = shutil.copy(sample[0], tmp_path / "ortho.tif")
    out = sh(sys.executable, EXAMPLES / "gis_script.py", ortho)
    assert out.count("height at (") == 3 and "central quarter: mean" in out
    assert (tmp_path / "ortho.height.tif").exists() and (tmp_path / "ortho.height.png").exists()


def test_custom_model(sample, tmp_path):
    ortho = shutil.copy(sample[0], tmp_path / "ortho.tif")
    assert "RunResult(" in sh(sys.executable, EXAMPLES / "custom_model.py", ortho)
    with rasterio.open(tmp_path / "ortho.depth.tif") as ds:
        assert np.nanstd(ds.read(1)) > 0


def test_survey_calibrated_and_resumable(sample, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sample[0], inputs / "a.tif")
    command = {"TILEDEPTH": f"{sys.executable} -m tiledepth.cli"}
    out = sh("bash", EXAMPLES / "survey.sh", inputs, tmp_path / "out", "--reference",
             sample[1], **command)
    assert out.count("calibrated to the reference") == 1 and "tile plan:" in out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["a.height.tif"]
    assert (tmp_path / "out" / "a.height.png").exists()
    assert "(done)" not in out and "(done)" in sh("bash", EXAMPLES / "survey.sh", inputs,
                                                  tmp_path / "out", **command)


def test_qgis_console_outside_qgis(sample, tmp_path):
    ortho = shutil.copy(sample[0], tmp_path / "ortho.tif")
    out = sh(sys.executable, EXAMPLES / "qgis_console.py", TILEDEPTH_INPUT=str(ortho))
    assert "tiledepth: wrote" in out
    assert (tmp_path / "ortho.depth.tif").exists() and (tmp_path / "ortho.depth.png").exists()
