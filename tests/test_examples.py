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
    with rasterio.open(tmp_path / "ortho.brightness.tif") as ds:  # not ortho.depth.tif
        assert np.nanstd(ds.read(1)) > 0
    assert not (tmp_path / "ortho.depth.tif").exists()


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
    assert (tmp_path / "ortho.height.tif").exists() and (tmp_path / "ortho.height.png").exists()
    assert not (tmp_path / "ortho.depth.tif").exists()  # a real model's map is left alone


def readme_use_block() -> list[str]:
    """The command lines of the README's Use block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Use"):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_use_block_runs_top_to_bottom(sample, tmp_path, monkeypatch):
    """Every command of the README's Use block, in order, with a callable model for weights.

    Left out: ``--uncertainty`` needs Marigold's ensemble (tests/test_marigold.py runs it).
    """
    import shlex

    from click.testing import CliRunner

    from tiledepth.cli import main
    from tiledepth.rio import depth

    shutil.copy(sample[0], tmp_path / "ortho.tif")
    shutil.copy(sample[1], tmp_path / "dem.tif")
    with rasterio.open(sample[0]) as src:  # a drone frame: a JPEG without georeferencing
        profile = dict(driver="JPEG", width=src.width, height=src.height, count=3, dtype="uint8")
        rgb = src.read([1, 2, 3])
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        with rasterio.open(tmp_path / "frame.jpg", "w", **profile) as dst:
            dst.write(rgb)
    import pyogrio
    import shapely

    field = shapely.box(500005, 5399965, 500035, 5399995)  # inside the 38.4 m sample
    pyogrio.raw.write(tmp_path / "field.gpkg", np.array([shapely.to_wkb(field)], dtype=object),
                      field_data=[], fields=[], crs="EPSG:32611", geometry_type="Polygon",
                      driver="GPKG")
    monkeypatch.chdir(tmp_path)
    callable_model = f"{EXAMPLES / 'custom_model.py'}:brightness_depth"
    ran = []
    for line in readme_use_block():
        args = shlex.split(line)
        if "--uncertainty" in args:
            continue
        args = [str(ROOT / a) if a.startswith(("examples/", "configs/")) else a for a in args]
        if args[:2] in (["tiledepth", "run"], ["rio", "depth"]):
            if "--model" in args:
                args[args.index("--model") + 1] = callable_model
            else:
                args += ["--model", callable_model]
            for flag in ("--device", "--dtype", "--steps", "--ensemble"):  # Marigold's: a
                while flag in args:  # callable refuses them (they would do nothing)
                    del args[args.index(flag):args.index(flag) + 2]
            args.append("--no-progress")
        command = depth if args[:2] == ["rio", "depth"] else main
        result = CliRunner().invoke(command, args[2:] if command is depth else args[1:])
        assert result.exit_code == 0, f"{line}\n{result.output}"
        ran.append(args[1])
    assert len(ran) >= 17 and ran.count("export") == 2
    assert (tmp_path / "height.laz").exists() and (tmp_path / "rio.tif").exists()
    with rasterio.open(tmp_path / "height.tif") as ds:
        assert ds.descriptions == ("height",) and ds.units == ("metre",)
