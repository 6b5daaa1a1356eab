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
from conftest import CRS, TESTS, TRANSFORM, child_env, depth_field, depth_image, write_raster
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


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe\xff{", "is not valid JSON"),
    (b'{"tiledepth": "0.1.0"}', 'has no "python" entry'),
    (b'["/usr/bin/python3"]', 'has no "python" entry'),
    (b'{"python": null}', 'records no Python: "python": null'),
    (b'{"python": ""}', 'records no Python: "python": ""'),  # Path("") is "." and exists
    (b'{"python": "."}', "which is not a file"),
])
def test_a_damaged_setup_says_what_is_wrong(tmp_path, content, problem):
    config = tmp_path / "tiledepth.json"
    config.write_bytes(content)
    with pytest.raises(child.TiledepthNotFound) as info:
        child.tiledepth_python(config)
    message = str(info.value)
    assert f"({config} " in message and problem in message, message
    assert "is missing" not in message and "run `tiledepth qgis install`" in message, message


def test_a_setup_saved_as_utf16_still_reads(tmp_path):
    config = tmp_path / "tiledepth.json"
    config.write_bytes(json.dumps({"python": sys.executable}).encode("utf-16"))  # a BOM
    assert child.tiledepth_python(config) == sys.executable


def fake_cli(tmp_path: Path, monkeypatch, code: str) -> str:
    """A stand-in ``tiledepth.cli`` running ``code`` for ``python -m tiledepth.cli``: in the
    working folder, which comes first on a ``-m`` child's path. Returns its Python."""
    package = tmp_path / "fake" / "tiledepth"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(code)
    monkeypatch.chdir(package.parent)
    return sys.executable


def run_in_thread(timeout: float, **kwargs) -> tuple | None:
    """``child.run_child(**kwargs)``'s result, or None when it has not returned in time."""
    import threading

    result = []
    thread = threading.Thread(target=lambda: result.append(child.run_child(**kwargs)),
                              daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def test_bytes_of_no_encoding_in_the_childs_output_end_the_run(tmp_path, monkeypatch):
    # the reader thread died on the first byte its locale could not decode, and the run
    # waited for its end of output for good, the child long gone
    python = fake_cli(tmp_path, monkeypatch, """
import sys
print("tiledepth: note: /data/sp ace \u00fc.tif", flush=True)  # UTF-8 whatever the locale
out = sys.stdout.buffer
out.write(b"tiledepth: tiles 1/2 (50%)\\n")
out.write("wrote /o/caf\u00e9.tif (64 x 64 px, 2 tiles, 0.1 s)\\n".encode("latin-1"))
out.write(b"tiledepth: error: \\xff\\xfe the end\\n")
sys.exit(2)
""")
    progress, seen = [], []
    result = run_in_thread(20, python=python, args=["run"], on_progress=progress.append,
                           on_line=lambda kind, text: seen.append(text),
                           canceled=lambda: False)
    assert result is not None, "run_child did not return"
    rc, summary, errors, was_canceled = result
    assert (rc, summary, was_canceled) == (2, (2, 0), False)
    assert progress == [50.0]
    assert errors == ["tiledepth: error: \ufffd\ufffd the end"]
    assert seen[:2] == ["tiledepth: note: /data/sp ace \u00fc.tif",
                        "wrote /o/caf\ufffd.tif (64 x 64 px, 2 tiles, 0.1 s)"]


def test_cancel_is_seen_while_progress_lines_stream(tmp_path, monkeypatch):
    # Cancel was only looked at when no line came for 0.1 s: a fast model's steady
    # progress hid it until the run ended
    import time

    python = fake_cli(tmp_path, monkeypatch, """
import time
start, i = time.monotonic(), 0
while time.monotonic() - start < 10:
    i += 1
    print(f"tiledepth: tiles {i}/100000 ({i // 1000}%)", flush=True)
    time.sleep(0.002)
""")
    progress, times, asked = [], [], []

    def on_progress(percent):
        progress.append(percent)
        times.append(time.monotonic())

    def canceled():  # pressed half a second into the progress
        if times and time.monotonic() - times[0] > 0.5:
            asked.append(time.monotonic())
            return True
        return False

    rc, summary, errors, was_canceled = child.run_child(
        python, ["run"], on_progress=on_progress, on_line=lambda kind, text: None,
        canceled=canceled)
    done = time.monotonic()
    assert was_canceled and rc != 0 and summary is None
    assert asked and done - asked[0] < 2.0, f"canceled {done - asked[0]:.1f} s after Cancel"
    assert len(progress) > 10 and max(progress) < 100


def test_a_model_typo_is_the_childs_error_not_a_broken_install(tmp_path, monkeypatch):
    # a ModuleNotFoundError in tiledepth's own error line (--model typo:fn) was taken for a
    # dependency missing from tiledepth's Python: "run tiledepth qgis install"
    monkeypatch.setenv("TILEDEPTH_PYTHONPATH", child_env()["PYTHONPATH"])
    image = write_raster(tmp_path / "in.tif", depth_image(32, 32))
    seen = []
    rc, _, errors, _ = child.run_child(
        sys.executable, ["run", image, "-o", tmp_path / "out.tif", "--model",
                         "mymodels_typo:depth"],
        on_progress=lambda p: None, on_line=lambda kind, text: seen.append(text),
        canceled=lambda: False)
    assert rc != 0 and errors and "mymodels_typo" in errors[-1], seen
    assert child.not_found_message(sys.executable, seen) is None  # the algorithm shows errors[-1]
    # a tiledepth whose Python lacks a dependency: that is still the install to redo
    python = fake_cli(tmp_path, monkeypatch, "import no_such_dependency_of_tiledepth\n")
    seen = []
    rc, *_ = child.run_child(python, ["run"], on_progress=lambda p: None,
                             on_line=lambda kind, text: seen.append(text),
                             canceled=lambda: False)
    assert rc != 0
    assert child.not_found_message(python, seen).startswith(
        f"tiledepth cannot be found: {python} has tiledepth but not its dependency "
        "no_such_dependency_of_tiledepth; run `tiledepth qgis install`"), seen


@pytest.mark.parametrize("posix, extra, args", [
    (True, r"--mask '/my data/m.tif' --aoi a\ b.gpkg --no-calibrate",
     ["--mask", "/my data/m.tif", "--aoi", "a b.gpkg", "--no-calibrate"]),
    (False, r'--mask C:\data\mask.tif --aoi "C:\my data\f.gpkg" --name="a b" \\srv\x',
     ["--mask", r"C:\data\mask.tif", "--aoi", r"C:\my data\f.gpkg", "--name=a b",
      r"\\srv\x"]),
])
def test_extra_options_split_as_the_platforms_shell(posix, extra, args):
    # Windows paths lost their backslashes (POSIX rules everywhere: C:\data -> C:data)
    assert child.split_extra(extra, posix=posix) == args
    with pytest.raises(ValueError, match="^EXTRA: --mask 'C:/x: a quote is not closed"):
        child.split_extra("--mask 'C:/x", posix=posix)  # one line, not a traceback in QGIS


def qgis_env(root: Path, home: Path, **extra) -> dict:
    """The environment of a QGIS process: headless, the throwaway profiles, the toy models
    importable by the tiledepth child (TILEDEPTH_PYTHONPATH: QGIS's PYTHONPATH is not
    passed on)."""
    home.mkdir(mode=0o700, exist_ok=True)
    env = child_env(QGIS_CUSTOM_CONFIG_PATH=str(root), QT_QPA_PLATFORM="offscreen",
                    HOME=str(home), XDG_RUNTIME_DIR=str(home), **extra)
    env["TILEDEPTH_PYTHONPATH"] = env["PYTHONPATH"]
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


def safety_runs(tmp: Path, ortho: Path) -> list:
    """The runs of qgis_script.py from index 7 on, and the files they need in ``tmp``: the
    user's files beside OUTPUT, a --config file, a model killed as by the out-of-memory
    killer, a GeoPackage of two raster tables, an XYZ layer, a temporary OUTPUT."""
    import shlex

    (tmp / "site.png").write_text("my photo")  # beside OUTPUT site.tif, which is not there
    (tmp / "site.json").write_text('{"mine": 1}')
    write_raster(tmp / "again.tif", np.zeros((1, 8, 8), np.float32))  # an OUTPUT to replace
    (tmp / "cfg.yaml").write_text("tile_size: 64\noverlap: 0\n")
    (tmp / "killer_models.py").write_text(
        "import os, signal, sys\n"
        "def killed(batch):  # a library's warning, then the out-of-memory killer\n"
        "    print(\"WARNING: xformers: No module named 'triton'\", file=sys.stderr, "
        "flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    two = tmp / "two.gpkg"
    for table, append in (("first", "NO"), ("second", "YES")):
        with rasterio.open(two, "w", driver="GPKG", width=64, height=64, count=3,
                           dtype="uint8", crs=CRS, transform=TRANSFORM, RASTER_TABLE=table,
                           APPEND_SUBDATASET=append) as ds:
            ds.write(depth_image(64, 64))
    xyz = {"raster": "type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png&zmax=19&zmin=0",
           "provider": "wms"}  # never fetched
    red = {"INPUT": str(ortho), "MODEL": "toy_models:red", "TILE_SIZE": 128}
    return [
        {"params": dict(red, OUTPUT=str(tmp / "site.tif"))},
        {"params": dict(red, OUTPUT=str(tmp / "again.tif"))},
        {"params": {"INPUT": str(ortho), "MODEL": "toy_models:red", "OUTPUT": str(
            tmp / "cfg.tif"), "EXTRA": "--config " + shlex.quote(str(tmp / "cfg.yaml"))}},
        {"params": dict(red, OUTPUT=str(tmp / "a.img"))},
        {"params": dict(red, OUTPUT=str(tmp / "k.tif"), MODEL="killer_models:killed"),
         "env": {"TILEDEPTH_PYTHONPATH": os.pathsep.join([child_env()["PYTHONPATH"],
                                                          str(tmp)])}},
        {"params": dict(red, INPUT={"raster": f"GPKG:{two}:second", "provider": "gdal"},
                        OUTPUT=str(tmp / "g.tif"))},
        {"params": dict(red, INPUT=xyz, OUTPUT=str(tmp / "w.tif"))},
        {"params": dict(red, REFERENCE=xyz, OUTPUT=str(tmp / "r.tif"))},
        {"params": dict(red, OUTPUT="TEMPORARY_OUTPUT", MODEL="toy_models:slow",
                        BATCH_SIZE="1"), "cancel_at": 30.0,
         "env": {"TILEDEPTH_TEST_DELAY": "0.3"}},
    ]


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
             "env": {"TILEDEPTH_PYTHONPATH": ""}},  # QGIS's Python, without the repository
            {"alg": "tiledepth:export_point_cloud", "params": {"INPUT": str(slow_out),
                                                               "OUTPUT": str(tmp / "s.png")}},
            {"params": dict(params, OUTPUT=str(tmp / "extra.tif"), EXTRA="--mask 'C:/m.tif")},
            {"params": dict(params, OUTPUT=str(tmp / "typo.tif"), MODEL="mymodels_typo:depth"),
             "env": {"TILEDEPTH_PYTHONPATH": child_env()["PYTHONPATH"]}}]  # (run 3 emptied it)
    runs += safety_runs(tmp, ortho)
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


@needs_qgis
def test_extra_with_an_open_quote_and_a_model_typo_are_one_line(script_runs):
    extra, typo = script_runs[5:7]
    assert not extra["ok"]  # (it was a ValueError's traceback)
    assert "EXTRA: --mask 'C:/m.tif: a quote is not closed; close it" in extra["errors"], \
        extra["errors"]
    assert not typo["ok"]
    assert typo["errors"] and all("tiledepth cannot be found" not in e
                                  for e in typo["errors"]), typo["errors"]
    assert typo["errors"][-1].startswith("tiledepth: error: ") and \
        "cannot import module 'mymodels_typo'" in typo["errors"][-1], typo["errors"]


def test_a_killed_child_is_named_not_its_last_line_or_a_broken_install(tmp_path, monkeypatch):
    # the out-of-memory killer's SIGKILL showed "tiledepth exited -9", the last INFO line,
    # or, after a library's warning "No module named 'triton'", a broken install
    python = fake_cli(tmp_path, monkeypatch, """
import os, signal, sys
print("tiledepth: INFO: reference r.tif: calibrating on 200 x 256 cells", flush=True)
print("WARNING: xformers: No module named 'triton'", file=sys.stderr, flush=True)
print("tiledepth: INFO: tiles to predict: 6", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
""")
    seen = []
    rc, _, errors, _ = child.run_child(python, ["run"], on_progress=lambda p: None,
                                       on_line=lambda kind, text: seen.append(text),
                                       canceled=lambda: False)
    assert rc == -9 and errors == [] and len(seen) == 3, (rc, seen)
    assert child.not_found_message(python, seen) is None
    assert child.failure_message(python, rc, seen, errors) == \
        "tiledepth was killed by signal 9 (SIGKILL; out of memory?)"
    # exited 1 without an error line: the exit code, not its last (INFO) line
    assert child.failure_message(python, 1, seen, errors) == "tiledepth exited 1"
    # a traceback's last line and tiledepth's own error line are explanations
    crash = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
             "ZeroDivisionError: division by zero"]
    assert child.failure_message(python, 1, seen + crash, []) == \
        "ZeroDivisionError: division by zero"
    assert child.failure_message(python, 2, seen + ["tiledepth: error: x: bad"],
                                 ["tiledepth: error: x: bad"]) == "tiledepth: error: x: bad"


def test_the_plugins_version_is_tiledepths():
    from tiledepth import __version__
    from tiledepth.qgis import SOURCE

    lines = (SOURCE / "metadata.txt").read_text().splitlines()
    assert f"version={__version__}" in lines


@needs_qgis
def test_companions_beside_a_new_output_are_not_overwritten(qgis_runs, script_runs):
    # --overwrite was always passed: site.png was deleted and site.json replaced, although
    # QGIS only asked about replacing OUTPUT (site.tif, which did not exist)
    tmp = qgis_runs["tmp"]
    site, again = script_runs[7:9]
    assert not site["ok"]
    assert site["errors"][-1] == (f"tiledepth: error: {tmp / 'site.json'}: already exists (it "
                                  "would be this run's sidecar); pass --overwrite or choose "
                                  "another -o"), site["errors"]
    assert (tmp / "site.png").read_text() == "my photo"
    assert (tmp / "site.json").read_text() == '{"mine": 1}'
    assert not (tmp / "site.tif").exists()
    # an OUTPUT that exists (QGIS's dialog asked) is replaced, with its companions
    assert again["ok"], again["errors"]
    with rasterio.open(tmp / "again.tif") as ds:
        assert (ds.height, ds.width, ds.dtypes[0]) == (256, 256, "float32")
        assert np.isfinite(ds.read(1)).all()


@needs_qgis
def test_a_config_in_extra_is_not_overridden_by_the_dialogs_defaults(script_runs):
    # --tile-size 768 --overlap 0.25 (and --batch-size 4, ...) were always passed, beating
    # the config's tile_size: 64, overlap: 0 (one 768-px tile instead of 4 x 4 64-px ones)
    run = script_runs[9]
    assert run["ok"], run["errors"]
    assert run["results"]["TILES"] == 16


@needs_qgis
def test_output_is_a_geotiff_only(qgis_runs, script_runs):
    # OUTPUT offered 37 GDAL formats and wrote a GeoTIFF under the name a.img
    run = script_runs[10]
    assert run["formats"] == ["tif"]
    assert not run["ok"]
    assert run["errors"][-1] == (f"OUTPUT: {qgis_runs['tmp'] / 'a.img'}: tiledepth writes a "
                                 "GeoTIFF; name it .tif or .tiff"), run["errors"]
    assert not (qgis_runs["tmp"] / "a.img").exists()


@needs_qgis
def test_a_child_killed_by_the_oom_killer_says_so(script_runs):
    run = script_runs[11]
    assert not run["ok"]
    assert run["errors"][-1] == "tiledepth was killed by signal 9 (SIGKILL; out of memory?)", \
        run["errors"]
    assert all("tiledepth cannot be found" not in e for e in run["errors"]), run["errors"]


@needs_qgis
def test_a_geopackage_table_or_an_xyz_layer_is_refused_in_one_line(qgis_runs, script_runs):
    # both were "no such file; check the path" from the CLI
    table, xyz, reference = script_runs[12:15]
    assert not table["ok"] and table["errors"][-1] == (
        f"INPUT: GPKG:{qgis_runs['tmp'] / 'two.gpkg'}:second: a table of a GPKG file, not a "
        "raster file; export the table as a GeoTIFF first (Export > Save As)"), table["errors"]
    assert not xyz["ok"] and xyz["errors"][-1] == (
        "INPUT: a wms layer is not a raster file; save it as a GeoTIFF first "
        "(Export > Save As)"), xyz["errors"]
    assert not reference["ok"] and reference["errors"][-1].startswith(
        "REFERENCE: a wms layer is not a raster file"), reference["errors"]


@needs_qgis
def test_a_canceled_temporary_output_promises_no_resume_and_keeps_nothing(script_runs):
    # a temporary OUTPUT is a new path each run: "run the same command again to resume"
    # was false, and the checkpoint beside the old path was left behind
    run = script_runs[15]
    assert not run["ok"] and 0 < max(run["progress"]) < 100
    assert any(e.startswith("canceled; tiledepth: terminated") for e in run["errors"]), \
        run["errors"]
    assert all("resume" not in e for e in run["errors"]), run["errors"]
    assert run["checkpoints"] == []


@needs_qgis
def test_a_config_in_extra_sets_the_output_kind_and_resume(tmp_path):
    # --output-kind depth and --resume were always passed, beating an EXTRA --config file's
    # output_kind: height (a depth map written) and resume: false (a canceled run kept its
    # checkpoint); they are now passed only when OUTPUT_KIND is set, RESUME turned off
    import shlex

    from tiledepth.qgis import install

    ortho = write_raster(tmp_path / "ortho.tif", depth_image(256, 256))
    config = tmp_path / "cfg.yaml"
    config.write_text("output_kind: height\nresume: false\n")
    red = {"INPUT": str(ortho), "MODEL": "toy_models:red", "TILE_SIZE": 128,
           "EXTRA": "--config " + shlex.quote(str(config))}
    slow = dict(red, MODEL="toy_models:slow", BATCH_SIZE="1")
    runs = [{"params": dict(red, OUTPUT=str(tmp_path / "cfg.tif"))},
            {"params": dict(red, OUTPUT=str(tmp_path / "chosen.tif"), OUTPUT_KIND=0)},
            {"params": dict(slow, OUTPUT=str(tmp_path / "stop.tif")), "cancel_at": 30.0,
             "env": {"TILEDEPTH_TEST_DELAY": "0.3"}},
            {"params": dict(slow, OUTPUT=str(tmp_path / "keep.tif"), EXTRA=""),
             "cancel_at": 30.0, "env": {"TILEDEPTH_TEST_DELAY": "0.3"}}]
    plugins = install(root=tmp_path / "q" / "profiles").parent
    result = subprocess.run([QGIS_PYTHON, str(TESTS / "qgis_script.py"), str(plugins),
                             json.dumps(runs)], capture_output=True, text=True, cwd=tmp_path,
                            env=qgis_env(tmp_path / "q", tmp_path / "home"), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    from_config, chosen, stopped, kept = json.loads(result.stdout.strip().splitlines()[-1])
    for run, kind in ((from_config, "height"), (chosen, "depth")):  # OUTPUT_KIND set: it wins
        assert run["ok"], run["errors"]
        with rasterio.open(run["results"]["OUTPUT"]) as ds:
            assert ds.tags()["TILEDEPTH_OUTPUT_KIND"] == kind
            assert ds.descriptions[0] == kind
    # the config's resume: false keeps nothing of a canceled run; without it, kept
    assert not stopped["ok"] and 0 < max(stopped["progress"]) < 100, stopped
    assert all("resume" not in e for e in stopped["errors"]), stopped["errors"]
    assert not list(tmp_path.glob(".stop.tif.tiledepth-*"))
    assert not kept["ok"] and any("run the same command again to resume" in e
                                  for e in kept["errors"]), kept["errors"]
    assert list(tmp_path.glob(".keep.tif.tiledepth-*"))


@needs_qgis
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_the_preview_algorithm_replaces_a_png_qgis_asked_about(tmp_path):
    # QGIS's file dialog asks before replacing OUTPUT, but the preview algorithm passed no
    # --overwrite: a PNG that tiledepth did not mark (an older preview, any PNG) at OUTPUT
    # failed the run ("exists and is a PNG that tiledepth did not write"), as the estimate
    # and export algorithms, which pass it, do not
    from tiledepth.qgis import install
    from tiledepth.safe_write import tiledepth_wrote_png

    depth = write_raster(tmp_path / "d.tif", depth_field(40, 60)[None])
    with rasterio.open(tmp_path / "chosen.png", "w", driver="PNG", width=8, height=8, count=3,
                       dtype="uint8") as dst:  # the user's PNG, no tiledepth mark
        dst.write(np.full((3, 8, 8), 200, np.uint8))
    runs = [{"alg": "tiledepth:preview", "params": {"INPUT": str(depth), "MAX_SIZE": 30,
                                                    "OUTPUT": str(tmp_path / name)}}
            for name in ("chosen.png", "new.png")]
    plugins = install(root=tmp_path / "q" / "profiles").parent
    result = subprocess.run([QGIS_PYTHON, str(TESTS / "qgis_script.py"), str(plugins),
                             json.dumps(runs)], capture_output=True, text=True, cwd=tmp_path,
                            env=qgis_env(tmp_path / "q", tmp_path / "home"), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for run in json.loads(result.stdout.strip().splitlines()[-1]):
        assert run["ok"], run["errors"]
        png = Path(run["results"]["OUTPUT"])
        assert tiledepth_wrote_png(png)
        with rasterio.open(png) as ds:  # the preview, 30 x 20 px, placed by its .aux.xml
            assert (ds.count, ds.width, ds.height) == (4, 30, 20)
            assert ds.crs == rasterio.crs.CRS.from_user_input(CRS)


#: Runs tiledepth:estimate in QGIS's Python as qgis_script.py does, with what that lacks: a
#: layer whose CRS is set in QGIS (``{"raster" or "vector": path, "crs": id}``; with
#: ``"remove": true`` its file is deleted once loaded, as moved away since), Cancel on a
#: console line (``"cancel_on"``), the console, warning and command lines; a run ``{"check":
#: {NAME: [values]}}`` gives which values the parameter accepts, its description and default.
LAYER_SCRIPT = """
import json, os, sys
import threading
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsProcessingContext,
                       QgsProcessingFeedback, QgsProject, QgsRasterLayer, QgsVectorLayer)

app = QgsApplication([], False)
app.initQgis()
sys.path.insert(0, sys.argv[1])
import tiledepth_provider

plugin = tiledepth_provider.classFactory(None)
plugin.initProcessing()


class Feedback(QgsProcessingFeedback):
    def __init__(self, cancel_on):
        super().__init__()
        self.cancel_on = cancel_on
        self.lines = {"errors": [], "console": [], "warnings": [], "commands": []}

    def reportError(self, text, fatalError=False):
        self.lines["errors"].append(text)

    def pushConsoleInfo(self, text):
        self.lines["console"].append(text)
        if self.cancel_on and self.cancel_on in text:
            self.cancel()

    def pushWarning(self, text):
        self.lines["warnings"].append(text)

    def pushCommandInfo(self, text):
        self.lines["commands"].append(text)


def layer(value):
    if not isinstance(value, dict):
        return value
    made = QgsRasterLayer(value["raster"], "in", "gdal") if "raster" in value else \\
        QgsVectorLayer(value["vector"], "in", "ogr")
    assert made.isValid(), value
    made.setCrs(QgsCoordinateReferenceSystem(value["crs"]))
    if value.get("remove"):
        os.remove(value.get("raster") or value["vector"])
    return made


out, environ = [], dict(os.environ)
for run in json.loads(sys.argv[2]):
    alg = QgsApplication.processingRegistry().createAlgorithmById("tiledepth:estimate")
    if "check" in run:
        out.append({name: {"accepts": [alg.parameterDefinition(name).checkValueIsAcceptable(v)
                                       for v in values],
                           "description": alg.parameterDefinition(name).description(),
                           "default": alg.parameterDefinition(name).defaultValue()}
                    for name, values in run["check"].items()})
        continue
    if "race" in run:  # the layer's file for tiledepth, in 8 threads at once, 20 times each
        from tiledepth_provider import algorithms

        raced, errors = layer(run["race"]), []

        def work():
            for _ in range(20):
                try:
                    algorithms._raster_file(raced, "INPUT")
                except Exception as exc:
                    errors.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        vrt = algorithms._raster_file(raced, "INPUT")
        out.append({"errors": errors, "files": sorted(os.listdir(os.path.dirname(vrt)))})
        continue
    os.environ.clear()
    os.environ.update(environ, **run.get("env", {}))
    feedback = Feedback(run.get("cancel_on"))
    params = {k: layer(v) for k, v in run["params"].items()}
    context = QgsProcessingContext()
    if "project_crs" in run:  # as in QGIS's window: the project's, and its CRS
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem(run["project_crs"]))
        context.setProject(QgsProject.instance())
    results, ok = alg.run(params, context, feedback)
    out.append(dict(feedback.lines, ok=ok, results=results))
print(json.dumps(out, default=str))
plugin.unload()
"""


@pytest.fixture(scope="module")
def layer_runs(tmp_path_factory):
    """One QGIS process (LAYER_SCRIPT) running the cases below, and the CLI's runs to
    compare them with, made meanwhile: an EXTENT in EPSG:3857 east in UTM zone 11 (the
    canvas's, rotated there), a GeoTIFF without CRS (a world file) and a Shapefile without
    .prj given their CRS in QGIS, a usage error, a --config's model:, Cancel after the
    output is written, a child killed by Cancel, an error line, the dialog's ranges, a
    layer whose file is gone, extents of no area, QGIS's own PYTHONHOME, PROJ and GDAL
    settings."""
    import warnings

    import pyogrio
    import shapely
    from rasterio.transform import from_origin
    from rasterio.warp import transform, transform_geom

    from tiledepth.qgis import install

    tmp = tmp_path_factory.mktemp("layers")
    image = depth_image(256, 256)
    ortho = write_raster(tmp / "ortho.tif", image)
    east_transform = from_origin(700000.0, 5400000.0, 2.0, 2.0)  # 2 deg from the meridian
    east = write_raster(tmp / "east.tif", image, transform=east_transform)
    (cx,), (cy,) = transform(CRS, "EPSG:3857", [700256.0], [5399744.0])
    bounds = [cx - 300.0, cy - 300.0, cx + 300.0, cy + 300.0]  # about 200 m on the ground
    px = lambda c, r: TRANSFORM @ (c, r)  # noqa: E731
    field = shapely.geometry.shape(transform_geom(CRS, "EPSG:4326", shapely.geometry.mapping(
        shapely.Polygon([px(20, 30), px(200, 10), px(240, 230), px(40, 200)]))))
    with warnings.catch_warnings():  # (of the files without CRS, on purpose)
        warnings.simplefilter("ignore")
        # the ortho without CRS, placed by a world file (of pixel centres)
        write_raster(tmp / "noc.tif", image, crs=None, transform=None)
        (tmp / "noc.tfw").write_text("0.5\n0\n0\n-0.5\n500000.25\n5399999.75\n")
        shutil.copy(tmp / "noc.tif", tmp / "gone.tif")  # deleted once loaded in QGIS
        shutil.copy(tmp / "noc.tfw", tmp / "gone.tfw")
        for name, crs in (("noprj.shp", None), ("wgs.gpkg", "EPSG:4326")):
            pyogrio.raw.write(tmp / name, np.array([shapely.to_wkb(field)], object),
                              field_data=[], fields=[], crs=crs, geometry_type="Polygon")
    assert not (tmp / "noprj.prj").exists()
    (tmp / "cfg.yaml").write_text("model: toy_models:red\ntile_size: 128\n")
    (tmp / "exit_models.py").write_text(
        "import atexit, time\n"
        "def slow_exit(batch):  # the red band; the process then takes 1 s to exit\n"
        "    atexit.register(time.sleep, 1.0)\n"
        "    return batch[..., 0].copy()\n")
    fake = tmp / "fake" / "tiledepth"  # a tiledepth that dies of Cancel's SIGTERM
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("import time\nprint('tiledepth: INFO: reading', flush=True)\n"
                                 "time.sleep(60)\n")
    red = {"MODEL": "toy_models:red", "TILE_SIZE": 128}
    runs = [
        {"params": dict(red, INPUT=str(east), OUTPUT=str(tmp / "east.q.tif"),
                        EXTENT="{},{},{},{} [EPSG:3857]".format(*bounds[::2], *bounds[1::2]))},
        {"params": dict(red, INPUT={"raster": str(tmp / "noc.tif"), "crs": CRS},
                        OUTPUT=str(tmp / "noc.q.tif"))},
        {"params": dict(red, INPUT=str(ortho), OUTPUT=str(tmp / "aoi.q.tif"),
                        AOI={"vector": str(tmp / "noprj.shp"), "crs": "EPSG:4326"})},
        {"params": dict(red, INPUT=str(ortho), OUTPUT=str(tmp / "bs.tif"), BATCH_SIZE="abc")},
        {"params": {"INPUT": str(ortho), "OUTPUT": str(tmp / "cfg.q.tif"),
                    "EXTRA": f"--config {tmp / 'cfg.yaml'}"}},
        {"params": {"INPUT": str(ortho), "OUTPUT": str(tmp / "cfg2.q.tif"), "MODEL": "",
                    "EXTRA": f"--config {tmp / 'cfg.yaml'}"}},
        {"params": dict(red, INPUT=str(ortho), OUTPUT=str(tmp / "late.tif"),
                        MODEL="exit_models:slow_exit"), "cancel_on": "wrote "},
        {"params": dict(red, INPUT=str(ortho), OUTPUT=str(tmp / "killed.tif")),
         "cancel_on": "INFO: reading",
         "env": {"TILEDEPTH_PYTHONPATH": os.pathsep.join([str(fake.parent),
                                                          child_env()["PYTHONPATH"]])}},
        {"params": dict(red, INPUT=str(ortho), OUTPUT=str(tmp / "b9.tif"), EXTRA="--bands 9")},
        {"check": {"TILE_SIZE": [31, 32, 8192, 8193], "OVERLAP": [0.0, 0.895, 0.9],
                   "MODEL": [None, ""], "SEED": [-1, 0, 7]}},
        # an EXTENT typed without CRS, in a project in another CRS: the input's coordinates;
        # with its [CRS], in it
        {"params": dict(red, INPUT=str(east), OUTPUT=str(tmp / "plain.q.tif"),
                        EXTENT="700100,700400,5399600,5399900"), "project_crs": "EPSG:3857"},
        {"params": dict(red, INPUT=str(east), OUTPUT=str(tmp / "east2.q.tif"),
                        EXTENT="{},{},{},{} [EPSG:3857]".format(*bounds[::2], *bounds[1::2])),
         "project_crs": "EPSG:4326"},
        {"race": {"raster": str(tmp / "noc.tif"), "crs": CRS}},
        {"params": dict(red, INPUT={"raster": str(tmp / "gone.tif"), "crs": CRS,
                                    "remove": True}, OUTPUT=str(tmp / "gone.q.tif"))},
        # a point (a one-point layer's extent) and a line: no area
        {"params": dict(red, INPUT=str(east), OUTPUT=str(tmp / "point.q.tif"),
                        EXTENT="700250,700250,5399750,5399750 [EPSG:32611]")},
        {"params": dict(red, INPUT=str(east), OUTPUT=str(tmp / "line.q.tif"),
                        EXTENT="700100,700400,5399750,5399750")},
        # what QGIS.app and OSGeo4W set for QGIS's own Python, PROJ and GDAL: the extent
        # in EPSG:3857 needs tiledepth's own PROJ
        {"params": dict(red, INPUT=str(east), OUTPUT=str(tmp / "east3.q.tif"),
                        EXTENT="{},{},{},{} [EPSG:3857]".format(*bounds[::2], *bounds[1::2])),
         "env": {"PYTHONHOME": str(tmp / "qgis" / "python"), "PYTHONPATH": str(tmp / "qgis"),
                 "PROJ_LIB": str(tmp / "qgis" / "proj"), "PROJ_DATA": str(tmp / "qgis" / "proj"),
                 "GDAL_DATA": str(tmp / "qgis" / "gdal"),
                 "GDAL_DRIVER_PATH": str(tmp / "qgis" / "gdalplugins")}},
    ]
    plugins = install(root=tmp / "q" / "profiles").parent
    script = tmp / "layer_script.py"
    script.write_text(LAYER_SCRIPT)
    env = qgis_env(tmp / "q", tmp / "home")
    env["TILEDEPTH_PYTHONPATH"] += os.pathsep + str(tmp)  # exit_models
    proc = subprocess.Popen([QGIS_PYTHON, str(script), str(plugins), json.dumps(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp, env=env)
    try:
        # the CLI's runs of the same, meanwhile
        for args in (["run", east, "-o", tmp / "east.c.tif", "--bounds", *map(repr, bounds),
                      "--bounds-crs", "EPSG:3857"],
                     ["run", east, "-o", tmp / "plain.c.tif", "--bounds", "700100", "5399600",
                      "700400", "5399900"],
                     ["run", ortho, "-o", tmp / "ortho.c.tif"],
                     ["run", ortho, "-o", tmp / "aoi.c.tif", "--aoi", tmp / "wgs.gpkg"]):
            result = CliRunner().invoke(main, [*map(str, args), "--model", "toy_models:red",
                                               "--tile-size", "128", "-q"])
            assert result.exit_code == 0, result.output
        stdout = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout
    return {"tmp": tmp, "runs": json.loads(stdout.strip().splitlines()[-1])}


def same_rasters(a: Path, b: Path) -> None:
    """Assert that two GeoTIFFs hold the same values, grid, CRS and tags."""
    with rasterio.open(a) as one, rasterio.open(b) as other:
        assert (one.crs, one.transform, one.shape) == (other.crs, other.transform, other.shape)
        assert one.tags() == other.tags() and one.descriptions == other.descriptions
        np.testing.assert_array_equal(one.read(), other.read())


def same_as_bounds_crs(layer_runs, index, name):
    """Assert that run ``index`` of ``layer_runs`` ran, passing its EXTENT (EPSG:3857) as
    ``--bounds-crs``, and wrote ``name`` as the CLI's run of it (``east.c.tif``); return
    the runs' folder."""
    run, tmp = layer_runs["runs"][index], layer_runs["tmp"]
    assert run["ok"], run
    assert "--bounds-crs EPSG:3857" in run["commands"][0], run["commands"]
    same_rasters(tmp / name, tmp / "east.c.tif")
    return tmp


@needs_qgis
def test_an_extent_in_another_crs_masks_as_bounds_crs_does(layer_runs):
    # EXTENT in the canvas's EPSG:3857 was put in the input's CRS as the bounding box of
    # the reprojected rectangle, passed as plain --bounds: nothing masked outside the
    # (rotated) rectangle, unlike the CLI's --bounds --bounds-crs, documented as the same
    tmp = same_as_bounds_crs(layer_runs, 0, "east.q.tif")
    with rasterio.open(tmp / "east.q.tif") as ds:
        nan = np.isnan(ds.read(1)).sum()
    assert 0 < nan < ds.width * ds.height / 10  # slivers outside the rotated rectangle


@needs_qgis
def test_a_crs_set_in_qgis_for_a_raster_reaches_tiledepth(layer_runs):
    # a GeoTIFF without CRS (placed by a world file) given EPSG:32611 in QGIS was run
    # without one, its output without CRS: tiledepth got the file only
    run, tmp = layer_runs["runs"][1], layer_runs["tmp"]
    assert run["ok"], run
    assert run["commands"][0].split()[2].endswith("noc.vrt"), run["commands"]
    same_rasters(tmp / "noc.q.tif", tmp / "ortho.c.tif")  # EPSG:32611, as a file with it


@needs_qgis
def test_a_crs_set_in_qgis_for_an_aoi_reaches_tiledepth(layer_runs):
    # a Shapefile without .prj given EPSG:4326 in QGIS was passed as it is, taken to be in
    # the raster's CRS: "does not overlap"
    run, tmp = layer_runs["runs"][2], layer_runs["tmp"]
    assert run["ok"], run
    assert "noprj.shp" not in run["commands"][0]  # exported, in the layer's CRS
    same_rasters(tmp / "aoi.q.tif", tmp / "aoi.c.tif")


def test_a_usage_error_is_one_line_not_an_exit_code():
    # click's usage errors (exit 2) showed as "tiledepth exited 2"
    lines = ["Usage: python -m tiledepth.cli run [OPTIONS] INPUT...",
             "Try 'python -m tiledepth.cli run --help' for help.", "",
             "Error: Invalid value for '--alignment': 'foo' is not one of 'auto', 'affine', "
             "'bilinear'."]
    assert child.failure_message("/py", 2, lines, []) == (
        "tiledepth: error: Invalid value for '--alignment': 'foo' is not one of 'auto', "
        "'affine', 'bilinear'.")
    assert child.failure_message("/py", 1, ["Error: from a library"], []) == \
        "tiledepth exited 1"  # not click's


@needs_qgis
def test_a_usage_error_in_qgis_is_tiledepths_line(layer_runs):
    run = layer_runs["runs"][3]
    assert not run["ok"]
    assert run["errors"] == ["tiledepth: error: Invalid value for '--batch-size': expected a "
                             "whole number or auto, got 'abc'"], run["errors"]


@needs_qgis
def test_an_empty_model_lets_a_config_choose_it(layer_runs):
    # MODEL always passed --model (its default Marigold, or --model ''), beating an EXTRA
    # --config file's model:
    for run in layer_runs["runs"][4:6]:
        assert run["ok"], run
        assert "--model" not in run["commands"][0], run["commands"]
        assert run["results"]["TILES"] == 9  # the config's 128-px tiles of 256 x 256 px
    with rasterio.open(layer_runs["tmp"] / "cfg.q.tif") as ds:
        assert ds.tags()["TILEDEPTH_MODEL"] == "toy_models:red"
    model = layer_runs["runs"][9]["MODEL"]
    assert model["accepts"] == [True, True] and model["default"] is None
    assert model["description"].endswith("; empty: prs-eth/marigold-depth-v1-1)")


@needs_qgis
def test_a_cancel_after_the_output_is_written_keeps_it(layer_runs):
    # Cancel pressed as tiledepth exited, its OUTPUT written whole, failed the algorithm
    # although OUTPUT had been replaced; a child killed by the signal said "exited -15"
    late, killed = layer_runs["runs"][6:8]
    assert late["ok"], late
    assert late["results"]["TILES"] == 9
    assert any("Cancel came after tiledepth had completed the output" in w
               for w in late["warnings"]), late["warnings"]
    with rasterio.open(late["results"]["OUTPUT"]) as ds:
        assert np.isfinite(ds.read(1)).all()
    assert not killed["ok"]
    assert killed["errors"] == ["canceled; tiledepth was killed by signal 15 (SIGTERM)"], \
        killed["errors"]


@needs_qgis
def test_a_childs_error_is_reported_once(layer_runs):
    # reported as the child printed it, then raised: twice in QGIS's log
    run = layer_runs["runs"][8]
    assert not run["ok"]
    line = "tiledepth: error: band 9 is out of range: ortho.tif has 3 band(s); choose " \
        "--bands from 1..3"
    assert run["errors"] == [line], run["errors"]
    assert line in run["console"]  # the child's output, in the log as it came


@needs_qgis
def test_the_dialogs_ranges_are_the_clis(layer_runs):
    # TILE_SIZE took 16..any (the CLI: 32..8192), OVERLAP refused [0.89, 0.9)
    import ast

    from tiledepth import options
    from tiledepth.qgis import SOURCE

    tree = ast.parse((SOURCE / "algorithms.py").read_text())
    values = {t.id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
              and t.id in ("MIN_TILE", "MAX_TILE", "MAX_OVERLAP")}
    assert [values.get(n) for n in ("MIN_TILE", "MAX_TILE", "MAX_OVERLAP")] == \
        [options.MIN_TILE, options.MAX_TILE, options.MAX_OVERLAP]
    check = layer_runs["runs"][9]
    assert check["TILE_SIZE"]["accepts"] == [False, True, True, False]
    assert check["OVERLAP"]["accepts"] == [True, True, False]


@needs_qgis
def test_an_extent_typed_without_crs_is_in_the_inputs_crs(layer_runs):
    # QGIS's parameterAsExtentCrs gives a plain "x0,x1,y0,y1" the project's CRS: it was
    # passed with --bounds-crs EPSG:3857, the input's UTM numbers read as Web Mercator
    # (no overlap). A plain extent is the input's own coordinates, as before; one with its
    # [CRS] is in that CRS whatever the project's
    plain, suffixed = layer_runs["runs"][10:12]
    tmp = layer_runs["tmp"]
    assert plain["ok"], plain
    assert "--bounds 700100.0 5399600.0 700400.0 5399900.0" in plain["commands"][0]
    assert "--bounds-crs" not in plain["commands"][0], plain["commands"]
    same_rasters(tmp / "plain.q.tif", tmp / "plain.c.tif")
    assert suffixed["ok"], suffixed
    assert "--bounds-crs EPSG:3857" in suffixed["commands"][0], suffixed["commands"]
    same_rasters(tmp / "east2.q.tif", tmp / "east.c.tif")


@needs_qgis
def test_a_layers_crs_vrt_is_written_under_a_name_of_its_own(layer_runs):
    # the VRT giving a raster the CRS set in QGIS was written as "<vrt>.new" by every call:
    # two algorithms on the layer at once removed or replaced each other's (FileNotFoundError)
    race = layer_runs["runs"][12]
    assert race["errors"] == []
    assert race["files"] == ["noc.vrt"]  # no temporary file left


@needs_qgis
def test_a_layer_whose_file_is_gone_is_one_line(layer_runs):
    # a raster given its CRS in QGIS whose file was moved away since it was loaded: GDAL,
    # without exceptions (QGIS's default), raised ValueError "Received a NULL pointer" from
    # gdal.Translate, a traceback in the dialog
    run, gone = layer_runs["runs"][13], layer_runs["tmp"] / "gone.tif"
    assert not run["ok"]
    assert len(run["errors"]) == 1, run["errors"]
    assert run["errors"][0].startswith(f"INPUT: {gone}: cannot give it the layer's CRS ("), \
        run["errors"]
    assert str(gone) in run["errors"][0].split("CRS (", 1)[1]  # GDAL's message names it
    assert run["errors"][0].endswith("; save the layer as a GeoTIFF with its CRS first "
                                     "(Export > Save As)"), run["errors"]
    assert run["commands"] == []  # tiledepth never started


@needs_qgis
def test_an_extent_of_no_area_is_refused_not_dropped(layer_runs):
    # a point or a line as EXTENT (a one-point layer's extent, a typo) was dropped without a
    # word: the whole raster was run
    point, line = layer_runs["runs"][14:16]
    for run, extent in ((point, "700250,700250,5399750,5399750 [EPSG:32611]"),
                        (line, "700100,700400,5399750,5399750")):
        assert not run["ok"]
        assert run["errors"] == [f"EXTENT: {extent}: has no area; draw a rectangle or leave "
                                 "EXTENT empty"], run["errors"]
        assert run["commands"] == []
    assert not (layer_runs["tmp"] / "point.q.tif").exists()
    assert not (layer_runs["tmp"] / "line.q.tif").exists()


@needs_qgis
def test_qgis_own_python_and_proj_settings_do_not_reach_tiledepth(layer_runs):
    # QGIS's PYTHONHOME (QGIS.app, OSGeo4W) made tiledepth's Python "have tiledepth but not
    # its dependency math"; its PROJ_LIB, another PROJ's proj.db: "not a CRS: 'EPSG:3857'"
    same_as_bounds_crs(layer_runs, 16, "east3.q.tif")


@needs_qgis
def test_the_seed_is_the_clis_range(layer_runs):
    # SEED took negative numbers, which the CLI refuses
    assert layer_runs["runs"][9]["SEED"]["accepts"] == [False, True, True]


def test_the_child_gets_neither_qgis_python_nor_its_proj_settings(tmp_path, monkeypatch):
    # os.environ, QGIS's, went to tiledepth's Python as it was: QGIS's PYTHONHOME stopped
    # it before it could import anything; TILEDEPTH_PYTHONPATH is its PYTHONPATH
    names = list(child.QGIS_ONLY)
    python = fake_cli(tmp_path, monkeypatch, f"""
import json, os
import my_models  # from TILEDEPTH_PYTHONPATH
print(json.dumps({{name: os.environ.get(name) for name in {names!r}}}), flush=True)
""")
    for name in names:
        monkeypatch.setenv(name, str(tmp_path / "qgis" / name.lower()))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_models.py").write_text("")
    monkeypatch.setenv("TILEDEPTH_PYTHONPATH", str(mine))
    seen = []
    rc, *_ = child.run_child(python, ["run"], on_progress=lambda p: None,
                             on_line=lambda kind, text: seen.append(text),
                             canceled=lambda: False)
    assert rc == 0, seen
    assert json.loads(seen[-1]) == dict.fromkeys(names) | {"PYTHONPATH": str(mine)}


def _dead(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie that no one reaps counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_lines_read_before_the_exit_grace_ends_are_all_taken(tmp_path, monkeypatch):
    # the loop stopped EXIT_GRACE after the child's exit whatever the queue still held: behind
    # a backlog of progress lines and a slow callback, the summary (and error lines) last
    python = fake_cli(tmp_path, monkeypatch, """
import sys
for i in range(2000):
    print(f"tiledepth: tiles {i}/2000", flush=True)
print("wrote /o.tif (64 x 64 px, 4 tiles, 0.1 s)", flush=True)
print("tiledepth: error: the last line", flush=True)
sys.exit(1)
""")
    import time

    result = run_in_thread(60, python=python, args=["run"],
                           on_progress=lambda p: time.sleep(0.002),
                           on_line=lambda kind, text: None, canceled=lambda: False)
    assert result is not None, "run_child did not return"
    rc, summary, errors, _ = result
    assert (rc, summary) == (1, (4, 0)) and [e[-13:] for e in errors] == ["the last line"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("cancel", [False, True])
def test_a_process_the_child_started_does_not_hold_the_run(tmp_path, monkeypatch, cancel):
    # the run waited for the end of the output pipe, not for tiledepth: a process it
    # started (a model's helper) that kept the pipe held QGIS as long as it lived, Cancel
    # or not (SIGTERM went to tiledepth only)
    import time

    python = fake_cli(tmp_path, monkeypatch, f"""
import subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("helper.pid", "w").write(str(helper.pid))
print("wrote /o.tif (64 x 64 px, 4 tiles, 0.1 s)", flush=True)
time.sleep({60 if cancel else 0})
""")
    start = time.monotonic()
    result = run_in_thread(15, python=python, args=["run"], on_progress=lambda p: None,
                           on_line=lambda kind, text: None,
                           canceled=lambda: cancel and time.monotonic() - start > 1.0)
    took = time.monotonic() - start
    helper = int((tmp_path / "fake" / "helper.pid").read_text())
    try:
        assert result is not None, "run_child did not return"
        rc, summary, _, was_canceled = result
        assert summary == (4, 0) and was_canceled == cancel
        assert (rc, took < 5) == ((-15, True) if cancel else (0, True)), (rc, took)
        if cancel:  # the signal reached the child's group: the helper too
            while not _dead(helper) and time.monotonic() - start < 10:
                time.sleep(0.05)
            assert _dead(helper)
    finally:
        if not _dead(helper):
            os.kill(helper, 9)


def test_the_docs_count_resumed_tiles_in_tiles():
    # TILES is the output's tiles, those resumed from an earlier run included (the
    # summary line's "N tiles, K from an earlier run"); the docs said "tiles predicted"
    docs = (TESTS.parent / "docs" / "qgis.md").read_text()
    line = next(line for line in docs.splitlines() if line.startswith("Outputs: OUTPUT, TILES"))
    assert "tiles predicted" not in line and "resumed ones included" in line, line
