"""The docstrings' examples marked ``+SKIP`` (they name files and models a doctest lacks),
run here as written, in a folder holding those files and with ``mymodels:depth``
(tests/mymodels.py) importable. Each example's output must match its docstring.
raypool.ray_pool's example runs in tests/test_raypool.py, on its Ray."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import shutil
from pathlib import Path

import pytest
from conftest import RUN_AS_TESTS, depth_image, run_examples, write_raster

import tiledepth
from tiledepth.engine import run
from tiledepth.readers import RasterReader
from tiledepth.survey import check_output, find_inputs


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """An empty working folder (the examples' relative paths land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_example_writes_ortho_depth(folder):
    write_raster(folder / "ortho.tif", depth_image(120, 150))

    assert run_examples(run)[0] == 2

    assert (folder / "ortho.depth.tif").exists()


def test_raster_reader_example_reads_a_tile(folder):
    from rasterio.windows import Window

    write_raster(folder / "ortho.tif", depth_image(800, 900))

    assert run_examples(RasterReader, {"Window": Window})[0] == 1


def test_find_inputs_example_lists_a_survey(folder):
    for name in ("a/x.tif", "a/y.tif", "b/z.tif"):
        (folder / "survey" / name).parent.mkdir(parents=True, exist_ok=True)
        write_raster(folder / "survey" / name, depth_image(40, 50))

    assert run_examples(find_inputs)[0] == 1


def test_check_output_example_finds_the_size_mismatch(folder):
    (folder / "depth").mkdir()
    (folder / "survey").mkdir()
    write_raster(folder / "narrow.tif", depth_image(600, 700))
    tiledepth.run(folder / "narrow.tif", folder / "depth" / "x.depth.tif", model="mymodels:depth",
                  tile_size=512)
    write_raster(folder / "survey" / "x.tif", depth_image(600, 800))

    assert run_examples(check_output)[0] == 1


def test_load_marigold_example_loads_the_e2e_checkpoint(hub_offline, e2e_checkpoint):
    from tiledepth.models.marigold import MarigoldModel, load_marigold

    repo_cache = hub_offline / "models--GonzaloMG--marigold-e2e-ft-depth"
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    shutil.copytree(e2e_checkpoint, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    ran, names = run_examples(load_marigold)

    assert ran == 2 and isinstance(names["model"], MarigoldModel)


def test_every_docstring_skipped_whole_runs_here():
    """Each docstring whose examples are all ``+SKIP`` is one of :data:`RUN_AS_TESTS`."""
    whole = set()
    for info in pkgutil.walk_packages(tiledepth.__path__, "tiledepth."):
        if info.name.startswith("tiledepth.qgis.plugin"):  # QGIS's own Python (test_qgis.py)
            continue
        module = importlib.import_module(info.name)
        for test in doctest.DocTestFinder().find(module, info.name):
            if test.examples and all(ex.options.get(doctest.SKIP) for ex in test.examples):
                whole.add(test.name)

    assert whole == RUN_AS_TESTS
