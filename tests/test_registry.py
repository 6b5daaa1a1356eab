"""The model registry, `tiledepth models`, and how load_model resolves names, folders, hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tiledepth.cli import main
from tiledepth.errors import ModelLoadError
from tiledepth.kinds import KINDS, LABELS
from tiledepth.models import depth_anything, depth_pro, family_of_folder, load_model, marigold
from tiledepth.models.registry import DEFAULT_NAME, FAMILIES, REGISTRY, get_spec
from tiledepth.options import DEFAULT_MODEL


def test_entries_are_consistent() -> None:
    assert REGISTRY[DEFAULT_NAME].checkpoint == DEFAULT_MODEL
    for name, spec in REGISTRY.items():
        assert name == spec.name == name.lower()
        assert spec.family in FAMILIES and spec.kind in KINDS
        assert spec.checkpoint.count("/") == 1 and spec.licence
        # Only diffusion models have denoising steps.
        assert (spec.default_steps is not None) == (spec.family == "marigold")
    assert {s.kind for s in REGISTRY.values()} == set(KINDS)
    assert REGISTRY["marigold-e2e-ft"].options == {"noise": "zeros", "timestep_spacing": "trailing"}
    assert get_spec(" Depth-Pro ") is REGISTRY["depth-pro"] and get_spec(3) is None


def test_models_command_lists_every_model() -> None:
    result = CliRunner().invoke(main, ["models"])

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 1 + len(REGISTRY)
    for spec in REGISTRY.values():
        (line,) = [ln for ln in lines if ln.split()[0] == spec.name]
        assert LABELS[spec.kind] in line and spec.checkpoint in line
        assert str(spec.native_resolution) in line
    assert "marigold-v1-1 (default)" in result.output


@pytest.fixture
def calls(monkeypatch) -> list:
    """Replace the three loaders with recorders."""
    seen = []
    for module, fn in ((marigold, "load_marigold"), (depth_anything, "load_depth_anything"),
                       (depth_pro, "load_depth_pro")):
        def record(name, _fn=fn, **kwargs):
            seen.append((_fn, name, kwargs))
            return "loaded"

        monkeypatch.setattr(module, fn, record)
    return seen


@pytest.mark.parametrize(("model", "loader", "checkpoint", "expected"), [
    ("marigold-e2e-ft", "load_marigold", "GonzaloMG/marigold-e2e-ft-depth",
     {"noise": "zeros", "timestep_spacing": "trailing", "steps": 1, "seed": 0}),
    ("MARIGOLD-LCM", "load_marigold", "prs-eth/marigold-depth-lcm-v1-0", {"steps": 1}),
    ("marigold-v1-0", "load_marigold", "prs-eth/marigold-depth-v1-0", {"steps": 10}),
    (DEFAULT_MODEL, "load_marigold", DEFAULT_MODEL, {"steps": 4}),
    ("depth-anything-v2-large", "load_depth_anything",
     "depth-anything/Depth-Anything-V2-Large-hf", {"ensemble": 1}),
    ("depth-pro", "load_depth_pro", "apple/DepthPro-hf", {"batch_size": 4}),
    ("apple/DepthPro-hf", "load_depth_pro", "apple/DepthPro-hf", {}),
    ("someone/depth-anything-v3-hf", "load_depth_anything", "someone/depth-anything-v3-hf", {}),
    ("someone/marigold-fork", "load_marigold", "someone/marigold-fork", {"steps": None}),
])
def test_names_and_hub_ids_reach_their_backend(calls, model, loader, checkpoint,
                                               expected) -> None:
    assert load_model(model) == "loaded"

    ((fn, name, kwargs),) = calls
    assert (fn, name) == (loader, checkpoint)
    assert expected.items() <= kwargs.items()
    if loader != "load_marigold":
        assert "seed" not in kwargs  # deterministic models take no seed


def test_given_steps_win_over_the_registry(calls) -> None:
    load_model("marigold-v1-0", steps=3)

    assert calls[0][2]["steps"] == 3


def test_folders_are_told_apart_by_their_files(tmp_path: Path, calls) -> None:
    folders = {}
    for name, files in {"mg": {"model_index.json": {}},
                        "da": {"config.json": {"model_type": "depth_anything"}},
                        "dp": {"config.json": {"model_type": "depth_pro"}},
                        "unet": {"config.json": {"_class_name": "UNet2DConditionModel"}},
                        "none": {}}.items():
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for file, content in files.items():
            (folders[name] / file).write_text(json.dumps(content))

    # a folder with neither file (or a diffusers component's config.json, no model_type)
    # goes to the Marigold loader, which says what it lacks
    assert [family_of_folder(str(f)) for f in folders.values()] == [
        "marigold", "depth_anything", "depth_pro", "marigold", "marigold"]
    load_model(folders["dp"])
    assert calls[-1][:2] == ("load_depth_pro", str(folders["dp"]))


def test_a_broken_or_unknown_config_json_is_named_not_taken_for_marigold(tmp_path: Path,
                                                                          calls) -> None:
    """A transformers folder is told by its config.json; were it unreadable or of another
    model_type, the folder was reported as a Marigold checkpoint without model_index.json."""
    broken, dpt = tmp_path / "broken-da", tmp_path / "dpt"
    for folder in (broken, dpt):
        folder.mkdir()
    (broken / "config.json").write_text('{"model_type": "depth_anything",')  # cut short
    (dpt / "config.json").write_text(json.dumps({"model_type": "dpt"}))

    for model in (str(broken), broken):
        with pytest.raises(ModelLoadError, match=r"^cannot read .*broken-da/config\.json: "
                                                 "Expecting") as info:
            load_model(model)
        assert "model_index.json" not in str(info.value)
    with pytest.raises(ModelLoadError, match=r"dpt is not a checkpoint tiledepth loads: "
                                             r".*config\.json has model_type 'dpt'; supported: "
                                             r"'depth_anything', 'depth_pro'") as info:
        load_model(str(dpt))
    assert "\n" not in str(info.value) and calls == []


def test_backend_modules_import_nothing_heavy() -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "import tiledepth.models.depth_anything, tiledepth.models.depth_pro\n"
        "import tiledepth.models.registry, tiledepth.kinds, tiledepth.uncertainty\n"
        "from tiledepth.models import load_model\n"
        "assert load_model(lambda b: b[..., 0]).kind == 'depth'\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get(
        "PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr


def test_a_python_file_model_loads_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    """``path/to/file.py:function``: relative to the current folder or absolute, no PYTHONPATH."""
    models = tmp_path / "my models"
    models.mkdir()
    (models / "net.py").write_text("import numpy as np\n\nkind = 'depth'\n\n"
                                   "def depth(batch):\n    return batch[..., 0] * 3.0\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    batch = np.full((1, 4, 4, 3), 0.5, np.float32)
    for spec in ("../my models/net.py:depth", f"{models / 'net.py'}:depth"):
        model = load_model(spec)
        np.testing.assert_allclose(model.predict(batch, [0]), 1.5)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model("missing.py:depth")
    with pytest.raises(ModelLoadError, match="has no attribute 'nope'"):
        load_model("../my models/net.py:nope")


def test_a_python_file_model_imports_the_modules_beside_it(tmp_path: Path,
                                                           monkeypatch) -> None:
    """As ``python net.py`` would: ``from helpers import ...`` in net.py finds helpers.py."""
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))  # the folder added is taken off after
    models = tmp_path / "project"
    models.mkdir()
    (models / "tiledepth_test_helpers.py").write_text("def red(batch):\n"
                                                      "    return batch[..., 0] * 2.0\n")
    (models / "net.py").write_text("from tiledepth_test_helpers import red\n\n"
                                   "def depth(batch):\n    return red(batch)\n")
    monkeypatch.chdir(tmp_path)
    batch = np.full((1, 4, 4, 3), 0.25, np.float32)
    try:
        model = load_model("project/net.py:depth")
        np.testing.assert_allclose(model.predict(batch, [0]), 0.5)
    finally:
        sys.modules.pop("tiledepth_test_helpers", None)
    assert sys.path.count(str(models)) == 1  # appended once, after what was there


def test_a_python_file_edited_between_two_runs_runs_its_new_code(tmp_path: Path) -> None:
    """The resume identity hashes the file's content: the code run is that content too."""
    import os

    net = tmp_path / "edited.py"
    batch = np.full((1, 4, 4, 3), 0.25, np.float32)
    net.write_text("def depth(batch):\n    return batch[..., 0]\n")
    first = load_model(f"{net}:depth").predict(batch, [0])
    net.write_text("def depth(batch):\n    return 1.0 - batch[..., 1]  # another model\n")
    stat = net.stat()  # (a coarse clock could give both versions one modification time)
    os.utime(net, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_model(f"{net}:depth").predict(batch, [0])
    again = load_model(f"{net}:depth")  # unchanged: the module imported once is used

    np.testing.assert_allclose(first, 0.25)
    np.testing.assert_allclose(second, 0.75)
    assert again.fn is load_model(f"{net}:depth").fn


def test_a_hub_id_in_other_case_loads_the_checkpoint_as_spelled(calls) -> None:
    # the registry matches hub ids whatever their case; the hub and its cache do not
    load_model("DEPTH-ANYTHING/depth-anything-v2-small-hf")
    load_model("apple/depthpro-HF")

    assert [c[:2] for c in calls] == [
        ("load_depth_anything", "depth-anything/Depth-Anything-V2-Small-hf"),
        ("load_depth_pro", "apple/DepthPro-hf")]


def test_a_folder_saved_as_a_plain_sd_pipeline_loads_as_marigold_e2e_ft(tmp_path: Path,
                                                                        calls) -> None:
    folder = tmp_path / "e2e"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name":
                                                         "StableDiffusionPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": 8}))

    load_model(str(folder))

    ((fn, name, kwargs),) = calls
    assert (fn, name) == ("load_marigold", str(folder))
    spec = REGISTRY["marigold-e2e-ft"]
    assert spec.options.items() <= kwargs.items() and kwargs["steps"] == spec.default_steps
    # a text-to-image Stable Diffusion (4 channels into its UNet) is no Marigold: it goes to
    # the loader as it is, which refuses it
    (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": 4}))
    calls.clear()
    load_model(str(folder))
    ((fn, name, kwargs),) = calls
    assert not spec.options.items() <= kwargs.items()


def test_family_of_and_spec_of_tell_a_model_without_loading_it(tmp_path: Path) -> None:
    """What info's estimates, the presets' skipping and the native tile size go by."""
    from tiledepth.models.registry import CALLABLE, family_of, native_tile_size, spec_of

    dp = tmp_path / "dp"
    dp.mkdir()
    (dp / "config.json").write_text(json.dumps({"model_type": "depth_pro"}))
    assert [family_of(m) for m in ("depth-pro", "apple/DepthPro-hf", str(dp), dp,
                                   "someone/Depth-Anything-V2-Small-finetuned",
                                   DEFAULT_MODEL, "toy_models:red", np.mean)] == [
        "depth_pro", "depth_pro", "depth_pro", "depth_pro", "depth_anything", "marigold",
        CALLABLE, CALLABLE]
    assert family_of(3) is None and family_of(load_model(lambda b: b[..., 0])) is None
    assert spec_of("marigold-v1-0").default_steps == 10 and spec_of(str(dp)) is None
    assert spec_of("toy_models:red") is None and spec_of(np.mean) is None
    assert (native_tile_size(str(dp)), native_tile_size(dp)) == (1536, 1536)
    assert native_tile_size(str(tmp_path / "missing")) is None


def test_two_threads_loading_one_model_file_run_it_once(tmp_path):
    """Two runs in threads loading one file.py:function executed the file twice (a model
    loading its weights at import loaded them twice) and got two function objects."""
    import threading

    from tiledepth.models import load_model

    (tmp_path / "slow.py").write_text(
        "import time, builtins\n"
        "builtins._tiledepth_slow_runs = getattr(builtins, '_tiledepth_slow_runs', 0) + 1\n"
        "time.sleep(0.3)\n"
        "def f(batch):\n    return batch[..., 0]\n")
    got = []
    threads = [threading.Thread(target=lambda: got.append(load_model(f"{tmp_path}/slow.py:f")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import builtins
    assert builtins._tiledepth_slow_runs == 1
    assert got[0].fn is got[1].fn


_CLASS_MODELS = '''import numpy as np


class RedModel:  # the DepthModel protocol: name, batch_size, predict(batch, keys)
    name = "red"
    batch_size = 4

    def predict(self, batch, keys):
        return batch[..., 0] * 2.0


red_model = RedModel()  # an instance of it: a loaded model, not callable


class RedCallable:  # a callable class: its instance is the model
    def __call__(self, batch):
        return batch[..., 0]
'''


def test_a_model_class_is_refused_in_one_line_and_a_loaded_model_object_imports(
        tmp_path: Path, monkeypatch) -> None:
    """A class named by ``--model file.py:Class`` (or passed as ``model=Class``) failed with
    bare TypeErrors ("RedModel() takes no arguments", "predict() missing 1 required
    positional argument: 'keys'"); an instance with name, batch_size and predict(batch,
    keys), which ``model=obj`` takes, was refused as "not callable"."""
    import rasterio
    from conftest import depth_image, write_raster

    import tiledepth
    from tiledepth.errors import OptionError

    (tmp_path / "cls_models.py").write_text(_CLASS_MODELS)
    monkeypatch.chdir(tmp_path)
    for attr in ("RedModel", "RedCallable"):
        with pytest.raises(ModelLoadError, match=rf"^--model 'cls_models.py:{attr}': '{attr}' "
                                                 r"is a class; name an instance of it or a "
                                                 r"function$"):
            load_model(f"cls_models.py:{attr}")

    class Protocol:
        name, batch_size = "local", 4

        def predict(self, batch, keys):
            return batch[..., 0]

    class Callable:
        def __call__(self, batch):
            return batch[..., 0]

    src = write_raster(tmp_path / "in.tif", depth_image(64, 80))
    for cls in (Protocol, Callable):
        with pytest.raises(ModelLoadError, match=rf"^model={cls.__name__} is a class; pass an "
                                                 rf"instance of it \({cls.__name__}\(\)\) or a "
                                                 "function$"):
            load_model(cls)
        with pytest.raises(ModelLoadError, match=rf"model={cls.__name__} is a class"):
            tiledepth.run(src, tmp_path / "cls.tif", model=cls, tile_size=48)
        assert tiledepth.run(src, tmp_path / "inst.tif", model=cls(), tile_size=48,
                             overwrite=True).tiles > 0  # an instance of it runs

    obj = load_model("cls_models.py:red_model")  # as model=obj: used as it is
    assert type(obj).__name__ == "RedModel" and obj.name == "red"
    np.testing.assert_allclose(obj.predict(np.full((1, 4, 4, 3), 0.25, np.float32), [0]), 0.5)
    result = tiledepth.run(src, tmp_path / "obj.tif", model="cls_models.py:red_model",
                           tile_size=48, batch_size=2)
    assert result.tiles > 0 and obj.batch_size == 2  # set on it, as on model=obj
    with rasterio.open(tmp_path / "obj.tif") as ds:
        assert np.isfinite(ds.read(1)).all()
    with pytest.raises(OptionError, match=r"model 'red' is a loaded model, run as it was "
                                          r"loaded: steps=3 \(it has none\) would do nothing"):
        tiledepth.run(src, tmp_path / "steps.tif", model="cls_models.py:red_model",
                      tile_size=48, steps=3)
    with pytest.raises(ModelLoadError, match=r"'nothing' is not callable, nor a loaded model"):
        (tmp_path / "none_models.py").write_text("nothing = 3\n")
        load_model("none_models.py:nothing")
