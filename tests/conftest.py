"""Shared fixtures: seeded synthetic rasters written by the tests, never committed."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import settings
from rasterio.transform import from_origin

# One thread per torch (OpenMP) op, here and in the child processes, set before anything
# imports torch: the tests' tensors are tiny, so a second thread saves nothing, and on a
# shared 2-core machine its spinning costs more CPU than the op (three Marigold tests:
# 23 s of CPU time with two threads, 9 s with one). A value set by the caller wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The property tests (tests/test_properties.py) draw the same examples on every run, so a red
# run means the change broke something, not that hypothesis drew a new example (a fresh-clone
# CI run failed that way in the seventh session: a real bug, but found by chance). Search for
# new counterexamples on purpose with HYPOTHESIS_PROFILE=random (each run its own examples).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("random")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

CRS = "EPSG:32611"
TRANSFORM = from_origin(500000.0, 5400000.0, 0.5, 0.5)
TESTS = Path(__file__).resolve().parent

#: The docstrings whose every example is ``+SKIP`` (they name files and models that a doctest
#: lacks): tests/test_doc_examples.py runs their examples, so those doctests are deselected
#: rather than reported as skipped.
RUN_AS_TESTS = frozenset({"tiledepth.models.marigold.load_marigold",
                          "tiledepth.readers.RasterReader", "tiledepth.survey.check_output",
                          "tiledepth.survey.find_inputs"})


def pytest_collection_modifyitems(config, items):
    """Deselect the doctests of :data:`RUN_AS_TESTS` (their examples run as tests)."""
    deselected = [item for item in items if item.name in RUN_AS_TESTS]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.name not in RUN_AS_TESTS]


def child_env(**extra) -> dict:
    """The environment of a child process that imports the tests' toy models and tiledepth."""
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_cli(*args) -> subprocess.CompletedProcess:
    """``tiledepth run ARGS --no-progress`` in a child process (:func:`child_env`)."""
    return subprocess.run(
        [sys.executable, "-m", "tiledepth.cli", "run", *map(str, args), "--no-progress"],
        capture_output=True, text=True, env=child_env(), timeout=120)


def run_examples(obj, globs: dict | None = None) -> tuple[int, dict]:
    """Run the examples of ``obj``'s docstring with ``+SKIP`` lifted, in its module's names.

    Returns how many ran and the names they left. Fails the test with doctest's
    report when an example's output differs or it raises.
    """
    module = sys.modules[obj.__module__]  # its names, as in a doctest of the module
    finder = doctest.DocTestFinder(recurse=False)
    (test,) = finder.find(obj, obj.__qualname__, module=module,
                          globs=dict(vars(module), **(globs or {})))
    assert any(ex.options.get(doctest.SKIP) for ex in test.examples), "no +SKIP example left"
    for ex in test.examples:
        ex.options.pop(doctest.SKIP, None)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.append, clear_globs=False)
    assert result.failed == 0, "".join(report)
    return result.attempted, test.globs


def fail_placing(monkeypatch: pytest.MonkeyPatch, name: str, error: BaseException):
    """``tiledepth.write.place`` raises ``error`` when it moves the file ``name`` into place
    (as the rename of a file made immutable, chattr +i, or Ctrl-C then); returns a function
    that puts the real one back."""
    import tiledepth.write

    real = tiledepth.write.place

    def place(tmp, path, **kwargs):
        if path.name == name:
            raise error
        return real(tmp, path, **kwargs)

    monkeypatch.setattr(tiledepth.write, "place", place)
    return lambda: monkeypatch.setattr(tiledepth.write, "place", real)


def depth_field(height: int, width: int) -> np.ndarray:
    """A smooth synthetic depth field in [0, 1]: a tilted plane with hills, float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    d = (xx / width + 0.5 * yy / height + 0.3 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
         + 0.2 * np.sin((xx + yy) / 91.0))
    d = (d - d.min()) / (d.max() - d.min())
    return d.astype(np.float32)


def write_raster(path: Path, data: np.ndarray, *, crs=CRS, transform=TRANSFORM, nodata=None,
                 colorinterp=None, **profile) -> Path:
    """Write ``data`` (bands, H, W) as a tiled GeoTIFF (or the driver given in ``profile``)."""
    count, height, width = data.shape
    kw = dict(driver="GTiff", height=height, width=width, count=count, dtype=data.dtype,
              tiled=True, blockxsize=256, blockysize=256)
    if crs is not None:
        kw["crs"] = crs
    if transform is not None:
        kw["transform"] = transform
    if nodata is not None:
        kw["nodata"] = nodata
    kw.update(profile)
    with rasterio.open(path, "w", **kw) as dst:
        dst.write(data)
        if colorinterp is not None:
            dst.colorinterp = colorinterp
    return path


def depth_image(height: int, width: int) -> np.ndarray:
    """RGB uint8 image (3, H, W) whose red band encodes :func:`depth_field`."""
    d = depth_field(height, width)
    rgb = np.stack([d, 1.0 - d, 0.5 * np.ones_like(d)])
    return np.round(rgb * 255).astype(np.uint8)


@pytest.fixture
def rgba_tif(tmp_path) -> Path:
    """600 x 700 RGBA GeoTIFF; alpha masks a disc and the top-left corner."""
    rgb = depth_image(600, 700)
    yy, xx = np.mgrid[0:600, 0:700]
    alpha = np.full((600, 700), 255, np.uint8)
    alpha[(yy - 300) ** 2 + (xx - 420) ** 2 < 60**2] = 0
    alpha[:50, :80] = 0
    from rasterio.enums import ColorInterp as C

    return write_raster(tmp_path / "ortho.tif", np.concatenate([rgb, alpha[None]]),
                        colorinterp=[C.red, C.green, C.blue, C.alpha])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny random Marigold checkpoint saved to a temp folder (see marigold_fixture.py)."""
    from marigold_fixture import make_tiny_marigold

    return make_tiny_marigold(tmp_path_factory.mktemp("marigold") / "tiny-marigold")


@pytest.fixture
def hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode with an empty HF cache in ``tmp_path``; returns the hub cache folder.

    huggingface_hub reads HF_HUB_OFFLINE and HF_HOME into ``huggingface_hub.constants``
    when first imported (diffusers imports it), so the constants are patched as well
    as the environment.
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def e2e_checkpoint(tiny_checkpoint: str, tmp_path_factory) -> str:
    """The tiny checkpoint laid out as the end-to-end fine-tuned one on the hub: a plain
    StableDiffusionPipeline index without Marigold's settings, a non-trailing scheduler."""
    folder = tmp_path_factory.mktemp("e2e") / "tiny-e2e-ft"
    shutil.copytree(tiny_checkpoint, folder)
    index = json.loads((folder / "model_index.json").read_text())
    for key in ("prediction_type", "scale_invariant", "shift_invariant",
                "default_denoising_steps", "default_processing_resolution"):
        index.pop(key)
    index.update(_class_name="StableDiffusionPipeline", safety_checker=[None, None],
                 feature_extractor=[None, None])
    (folder / "model_index.json").write_text(json.dumps(index))
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["timestep_spacing"] = "leading"
    config_path.write_text(json.dumps(config))
    return str(folder)


class Served:
    """The range server of :mod:`range_server`, a child process, serving one folder."""

    def __init__(self, root) -> None:
        self.root = root
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "range_server.py"), str(root)],
                                     stdout=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.base}/{path}", timeout=30) as answer:
            return answer.read().decode()

    def served(self) -> int:
        """Body bytes served since the last reset."""
        return int(self.get("__served__").split()[0])


@pytest.fixture
def http_root(tmp_path):
    """A range server (a child process on 127.0.0.1) serving the folder ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    server = Served(root)
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=30)


def replace_then_interrupt(monkeypatch, nth: int) -> None:
    """``os.replace`` that renames and then, on its ``nth`` call, raises KeyboardInterrupt:
    a Ctrl-C landing right after that rename (strace's ``inject=rename:signal=SIGINT``)."""
    import itertools

    real, calls = os.replace, itertools.count(1)

    def replace(src, dst, **kw):
        real(src, dst, **kw)
        if next(calls) == nth:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)


def files_of(folder) -> dict[str, bytes]:
    """Every file of ``folder`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def silent_server():
    """A server on 127.0.0.1 that accepts connections and never answers: (socket, base URL)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"
