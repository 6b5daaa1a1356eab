from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from tiledepth.errors import OptionError
from tiledepth.options import Options, load_config, make_options

CONFIGS = Path(__file__).parent.parent / "configs"


def test_default_yaml_documents_every_option_with_its_default():
    data = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    defaults = {f.name: f.default for f in fields(Options)}
    defaults["tile_size"] = None  # null: the model's native size (Options' 768 is Marigold's)
    assert data == defaults


@pytest.mark.parametrize("preset", ["default", "balanced", "fast", "quality"])
def test_configs_keep_each_models_native_tile_size(preset, tmp_path):
    """The presets and default.yaml ("the defaults") tile as a run without a config does:
    at the model's native resolution, not at Marigold's 768 for every model."""
    config = CONFIGS / f"{preset}.yaml"
    for model, native in [("depth-pro", 1536), ("depth-anything-v2-small", 518),
                          ("marigold-v1-1", 768), ("toy_models:red", 768)]:
        assert make_options(config, model=model).tile_size == native, model
        assert make_options(model=model).tile_size == native, model
        assert make_options(config, model=model, tile_size=256).tile_size == 256  # a flag wins
    p = tmp_path / "c.yaml"
    p.write_text("model: depth-pro\ntile_size: null\n")  # null as in the presets: native
    assert make_options(p).tile_size == 1536
    p.write_text("model: depth-pro\ntile_size: 512\n")  # a size written down is kept
    assert make_options(p).tile_size == 512


def test_config_bands_read_as_the_cli_reads_them(tmp_path):
    """``bands: 1,2,3`` in a config, the form the messages give, is read by the CLI's parser."""
    from tiledepth.cli_options import Bands

    p = tmp_path / "c.yaml"
    for text, bands in [("1,2,3", (1, 2, 3)), ("3, 2, 1", (3, 2, 1)), ("'4'", (4,)),
                        ("4", (4,)), ("[1, 2, 3]", (1, 2, 3))]:
        p.write_text(f"bands: {text}\n")
        assert make_options(p).bands == bands, text
        if not text.startswith(("[", "'")):
            assert Bands().convert(text, None, None) == bands  # the same as --bands
    p.write_text("bands: 1,x,3\n")
    with pytest.raises(OptionError, match=f"^{p}: bands must be 1 or 3 band numbers"):
        make_options(p)
    p.write_text("bands: 1,2\n")
    with pytest.raises(OptionError, match=f"^{p}: bands must be 1 or 3 band numbers"):
        make_options(p)


def test_default_yaml_loads_to_the_defaults():
    assert make_options(CONFIGS / "default.yaml") == Options()


@pytest.mark.parametrize("bad", [
    {"tile_size": 16}, {"tile_size": 256.5}, {"overlap": 0.9}, {"overlap": -0.1},
    {"batch_size": 0}, {"steps": 0}, {"ensemble": 0}, {"device": "tpu"}, {"dtype": "int8"},
    {"bands": (1, 2)}, {"coarse_size": 4}, {"seed": -1}, {"anchor_blur": -1.0},
    {"anchor_blur": "wide"},
])
def test_bad_values_name_the_option(bad):
    (name,) = bad
    with pytest.raises(OptionError, match=name):
        make_options(**bad)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(OptionError, match="valid: model, tile_size"):
        make_options(tilesize=3)


def test_config_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(OptionError, match="mapping"):
        load_config(p)
    p.write_text("a: [unclosed\n")
    with pytest.raises(OptionError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(OptionError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_presets_load_and_trade_tiles_for_quality():
    from tiledepth.tiling import tile_grid

    presets = {n: make_options(CONFIGS / f"{n}.yaml") for n in ("fast", "balanced", "quality")}
    assert presets["balanced"] == Options()  # balanced is the default
    tiles = {n: sum(len(r) for r in tile_grid(10000, 10000, o.tile_size, o.overlap))
             for n, o in presets.items()}
    assert tiles == {"fast": 225, "balanced": 324, "quality": 676}  # as their comments say
    assert presets["fast"].steps == 1 and presets["quality"].ensemble > 1
    for name in presets:  # each file states its trade-off from figures
        assert "Trade-off" in (CONFIGS / f"{name}.yaml").read_text()


def test_config_errors_name_the_key_and_list_the_valid_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tile-sise: 512\n")
    with pytest.raises(OptionError) as err:
        make_options(p)
    msg = str(err.value)
    assert str(p) in msg and "'tile-sise'" in msg and "did you mean 'tile_size'" in msg
    assert "valid: model, tile_size, overlap" in msg and "output_kind" in msg
    p.write_text("overlap: 2\noutput_kind: heigth\n")
    with pytest.raises(OptionError, match=f"{p}: overlap must be in"):
        make_options(p)
    with pytest.raises(OptionError, match="^output_kind must be one of"):  # a flag: no file
        make_options(p, overlap=0.2, output_kind="elevation")


def test_every_option_has_its_type_checked_in_one_place(tmp_path):
    from tiledepth.options import OPTION_NAMES, TYPES

    assert set(TYPES) == set(OPTION_NAMES)
    p = tmp_path / "c.yaml"
    for name in OPTION_NAMES:  # a mapping is no option's type
        p.write_text(f"{name}: {{a: 1}}\n")
        with pytest.raises(OptionError, match=rf"^{p}: {name} must be .*, got dict {{'a': 1}}$"):
            make_options(p)


@pytest.mark.parametrize("name", ["overlap", "coarse_weight", "anchor_blur", "scale"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_float_options_must_be_finite(name, value):
    with pytest.raises(OptionError, match=rf"^{name} must be a finite number"):
        make_options(**{name: value})


def test_tile_and_coarse_size_have_an_upper_bound():
    assert make_options(tile_size=8192, coarse_size=8192).tile_size == 8192
    with pytest.raises(OptionError, match=r"^tile_size must be <= 8192 px \(one 8192 px tile is "
                                          r"a 0.75 GiB model input.*got 8193$"):
        make_options(tile_size=8193)
    with pytest.raises(OptionError, match=r"^coarse_size must be <= 8192 px"):
        make_options(coarse_size=10**5)


def test_a_built_in_model_defaults_to_its_native_tile_size(tmp_path):
    assert make_options(model="depth-pro").tile_size == 1536  # not upsampled 768 -> 1536
    assert make_options(model="apple/DepthPro-hf").tile_size == 1536
    assert make_options(model="depth-anything-v2-small").tile_size == 518
    assert make_options().tile_size == make_options(model="marigold-v1-1").tile_size == 768
    assert make_options(model="toy_models:red").tile_size == 768
    assert make_options(model="depth-pro", tile_size=768).tile_size == 768
    config = tmp_path / "c.yaml"
    config.write_text("tile_size: 1024\n")
    assert make_options(config, model="depth-pro").tile_size == 1024


def test_a_torch_device_becomes_its_text():
    import torch

    # a torch.device passed the type check, then failed in the loaders ("must be a str")
    assert make_options(device=torch.device("cpu")).device == "cpu"
    assert make_options(device=torch.device("cuda", 1)).device == "cuda:1"
    assert make_options(device="cuda:0").device == "cuda:0"


def test_a_device_in_any_case_is_its_lower_case_name(tmp_path):
    """``--device CPU`` (``CUDA``, ``CUDA:1``, as people write them) was refused ("device must
    be one of auto, cpu, cuda, mps or cuda:N, got 'CPU'"); torch takes only lower case, so the
    text is lowered: in a keyword, a config and Options alike. Another name is still refused."""
    from tiledepth.cli_options import OPTIONS

    for given, read in [("CPU", "cpu"), ("Cuda", "cuda"), ("CUDA:1", "cuda:1"), ("MPS", "mps"),
                        ("AUTO", "auto"), ("cuda:0", "cuda:0"), ("mps", "mps")]:
        assert make_options(device=given).device == read, given
        assert Options(device=given).check().device == read, given
    config = tmp_path / "c.yaml"
    config.write_text("device: CPU\n")
    assert make_options(config).device == "cpu"
    assert make_options(config, device="CUDA:0").device == "cuda:0"  # the flag wins
    with pytest.raises(OptionError, match=r"^device must be one of auto, cpu, cuda, mps or "
                                          r"cuda:N, got 'GPU'$"):
        make_options(device="GPU")
    assert OPTIONS["device"][0] is str  # the CLI passes the text as typed, read here


def test_a_device_is_a_name_or_cuda_and_a_gpu_number():
    """Only the name before a colon was checked: cuda:abc, cuda:, cuda:-1, cpu:0 and mps:3
    passed and failed later, in torch. Now a device is auto, cpu, cuda, mps or cuda:N (N in
    digits, as torch reads it), in any case; any other is refused in one line."""
    for given in ["cuda:abc", "cuda:", "cuda:-1", "cpu:0", "mps:3", "CUDA:X", "cuda:01",
                  "cuda:1.5", "cuda: 1", "cuda:\u00b2", "cuda:0:0", " cpu"]:
        with pytest.raises(OptionError, match=r"^device must be one of auto, cpu, cuda, mps "
                                              r"or cuda:N, got .*$"):
            make_options(device=given)
        with pytest.raises(OptionError, match=r"^device must be one of"):
            Options(device=given).check()
    for given, read in [("cuda:0", "cuda:0"), ("cuda:12", "cuda:12"), ("CUDA:3", "cuda:3"),
                        ("auto", "auto"), ("Mps", "mps"), ("cpu", "cpu"), ("cuda", "cuda")]:
        assert make_options(device=given).device == read, given


def test_a_model_that_is_no_model_says_what_a_model_may_be():
    class PredictOnly:  # no name, no batch_size
        def predict(self, batch, keys):
            return batch[..., 0]

    with pytest.raises(OptionError, match=r"a callable or a loaded model \(an object with name, "
                                          r"batch_size and predict\(batch, keys\)\)"):
        make_options(model=PredictOnly())


def test_bend_from_anchor_is_refused_where_it_would_do_nothing(tmp_path):
    """bend_from_anchor acts on bilinear maps only: with alignment affine it was accepted,
    changed no pixel (the fusion skips it) and was only recorded in the output's tags. With
    estimate_weights, the default, it acts (the weights estimated first:
    tests/test_align.py::test_bent_tiles_take_the_estimated_weights)."""
    with pytest.raises(OptionError, match=r"^bend_from_anchor \(--bend-from-anchor\) bends "
                                          r"bilinear value maps only: with alignment affine"):
        make_options(alignment="affine", bend_from_anchor=True)
    assert make_options(bend_from_anchor=True).estimate_weights  # both: the default weights
    config = tmp_path / "c.yaml"
    config.write_text("bend_from_anchor: true\n")
    with pytest.raises(OptionError, match=r"c\.yaml: bend_from_anchor"):
        make_options(config, alignment="affine")
    # where it acts (bilinear maps; auto picks them for fine enough anchors), or off
    for alignment in ("bilinear", "auto"):
        assert make_options(alignment=alignment, bend_from_anchor=True).bend_from_anchor
    assert make_options(alignment="affine", estimate_weights=True).estimate_weights


@pytest.mark.parametrize(("preset", "option", "value"), [("fast", "steps", 1),
                                                         ("quality", "ensemble", 5)])
def test_a_presets_marigold_only_values_are_skipped_for_other_models(preset, option, value,
                                                                     caplog):
    """The fast and quality presets serve every model, as the docs say: their ``steps: 1``
    and ``ensemble: 5`` set Marigold only, and for Depth Anything, Depth Pro and a callable
    they are skipped with an info line (every run with them was refused, a callable's
    error naming a ``--steps 1`` never typed). Given as flags they are still refused."""
    config = CONFIGS / f"{preset}.yaml"
    assert getattr(make_options(config), option) == value  # Marigold: as written
    default = getattr(Options(), option)
    # the zero-noise marigold-e2e-ft takes steps, not an ensemble (its loader refuses one)
    assert getattr(make_options(config, model="marigold-e2e-ft"), option) == (
        value if option == "steps" else default)
    for model in ("depth-anything-v2-small", "depth-pro", "apple/DepthPro-hf",
                  "toy_models:red"):
        caplog.clear()
        with caplog.at_level("INFO", logger="tiledepth.options"):
            opts = make_options(config, model=model)
        assert getattr(opts, option) == default, model
        assert opts.overlap == load_config(config)["overlap"]  # the rest of the preset holds
        assert f"{config}: {option} {value} skipped" in caplog.text, model
        # given as a flag (not from the file) it stays, for the model's own refusal
        assert getattr(make_options(config, model=model, **{option: value}), option) == value


def test_a_preset_runs_a_callable_and_a_flag_it_ignores_is_still_refused(tmp_path):
    from conftest import depth_image, write_raster

    import tiledepth

    src = write_raster(tmp_path / "in.tif", depth_image(64, 80))
    for preset in ("fast", "quality"):  # refused before: "--steps 1 would do nothing"
        result = tiledepth.run(src, tmp_path / f"{preset}.tif", model="toy_models:red",
                               tile_size=48, config=CONFIGS / f"{preset}.yaml")
        assert result.tiles > 0
    with pytest.raises(OptionError, match=r"Python callable: --steps 1 would do nothing"):
        tiledepth.run(src, tmp_path / "flag.tif", model="toy_models:red", tile_size=48,
                      config=CONFIGS / "fast.yaml", steps=1)


def test_a_checkpoint_folder_gets_its_familys_native_tile_size(tmp_path):
    """A local folder tiles at its model's native resolution, as its hub id does (Depth Pro
    got 768, Depth Anything 768 instead of 1536 and 518)."""
    import json

    for name, file, content, native in [
            ("dp", "config.json", {"model_type": "depth_pro"}, 1536),
            ("da", "config.json", {"model_type": "depth_anything"}, 518),
            ("mg", "model_index.json", {"_class_name": "MarigoldDepthPipeline"}, 768)]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / file).write_text(json.dumps(content))
        assert make_options(model=str(folder)).tile_size == native, name
        assert make_options(model=folder).tile_size == native, name  # a Path too
        assert make_options(model=str(folder), tile_size=256).tile_size == 256


def test_the_nodata_tag_reads_back_as_the_value_given():
    """TILEDEPTH_NODATA was rounded to 6 digits (16777215 -> 1.67772e+07); values that
    ``%g`` wrote exactly read as before."""
    for value, text in [(16777215.0, "16777215"), (4294967295, "4294967295"),
                        (1234567.0, "1234567"), (0.1234567, "0.1234567"), (0, "0"),
                        (-9999, "-9999"), (-3.4e38, "-3.4e+38"), (0.5, "0.5")]:
        tag = make_options(nodata=value).provenance()["NODATA"]
        assert tag == text and float(tag) == value
    assert "NODATA" not in make_options().provenance()


def test_the_bands_given_are_tagged_and_the_default_is_not():
    """``--bands`` changes the output; it was recorded in no tag."""
    assert make_options(bands=(2, 1, 3)).provenance()["BANDS"] == "2,1,3"
    assert make_options(bands=(4,)).provenance()["BANDS"] == "4"
    assert "BANDS" not in make_options().provenance()  # the default outputs' tags as before


def test_a_seed_is_refused_for_a_deterministic_model(tmp_path, caplog):
    """Depth Anything and Depth Pro draw no noise: ``seed`` changed no pixel, only the SEED
    tag. The default, 0, cannot be told from a seed given and passes."""
    import json

    folder = tmp_path / "da"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    for model, family in [("depth-anything-v2-small", "Depth Anything"),
                          ("apple/DepthPro-hf", "Depth Pro"), (str(folder), "Depth Anything")]:
        with pytest.raises(OptionError, match=rf"^seed=7: {family} is deterministic and draws "
                                              r"no noise.*leave seed unset \(0\)$"):
            make_options(model=model, seed=7)
        assert make_options(model=model, seed=0).seed == 0
    assert make_options(model="marigold-v1-1", seed=7).seed == 7  # Marigold's noise
    assert make_options(model="toy_models:red", seed=7).seed == 7  # (a callable's own)
    config = tmp_path / "c.yaml"  # from a config file: skipped, as a preset's steps
    config.write_text("seed: 7\n")
    with caplog.at_level("INFO", logger="tiledepth.options"):
        assert make_options(config, model="depth-pro").seed == 0
    assert "seed 7 skipped" in caplog.text
    assert make_options(config).seed == 7


def test_a_whole_number_for_a_decimal_option_is_the_float_the_cli_gives(tmp_path):
    """``scale: 1``, ``coarse_weight: 1``, ``anchor_blur: 0``, ``overlap: 0``, ``nodata: 0``
    in a config or the library were kept as ints: the tags said ``1`` where the CLI's
    ``--scale 1`` said ``1.0`` (other bytes for one run), and the checkpoint key differed.
    Options built directly and through dataclasses.replace store them as floats too."""
    import dataclasses

    given = dict(overlap=0, coarse_weight=1, anchor_blur=0, scale=1, nodata=0)
    cli = make_options(**{k: float(v) for k, v in given.items()})
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in given.items()))
    assert load_config(config)["scale"] == 1 and type(load_config(config)["scale"]) is int
    for opts in (make_options(**given), make_options(config), Options(**given),
                 dataclasses.replace(Options(), **given)):
        assert {k: (type(getattr(opts, k)), getattr(opts, k)) for k in given} == {
            "overlap": (float, 0.0), "coarse_weight": (float, 1.0),
            "anchor_blur": (float, 0.0), "scale": (float, 1.0), "nodata": (float, 0.0)}
        assert opts.provenance() == cli.provenance()
    tags = make_options(config).provenance()
    assert (tags["SCALE"], tags["COARSE_WEIGHT"], tags["OVERLAP"], tags["ANCHOR_BLUR"],
            tags["NODATA"]) == ("1.0", "1.0", "0.0", "0.0", "0")
    # "auto", None, text and bools are left to the checks
    assert make_options(anchor_blur="auto").anchor_blur == "auto"
    assert make_options().nodata is None and make_options().anchor_blur is None
    with pytest.raises(OptionError, match=r"^scale must be a finite number, got True$"):
        make_options(scale=True)
    with pytest.raises(OptionError, match=r"^overlap must be a finite number, got '1'$"):
        make_options(overlap="1")
    # int options stay ints
    assert type(make_options(tile_size=256, seed=3).tile_size) is int
    from tiledepth.options import FLOAT_OPTIONS

    assert FLOAT_OPTIONS == ("overlap", "coarse_weight", "anchor_blur", "scale", "nodata")


def test_the_mask_tag_is_the_mask_files_name_however_it_is_written(tmp_path):
    """TILEDEPTH_MASK was the path as typed: ``in/mask.tif``, ``./in/mask.tif`` and its
    absolute path gave one run's output three different bytes."""
    tags = {Options(mask=p).provenance()["MASK"]
            for p in ("in/mask.tif", "./in/mask.tif", str(tmp_path / "in" / "mask.tif"),
                      tmp_path / "in" / "mask.tif")}
    assert tags == {"mask.tif"}
    assert "MASK" not in Options().provenance()


def test_an_integer_too_large_for_a_float_is_refused_in_one_line(tmp_path):
    """`overlap: 1` followed by 400 zeros in a config: math.isfinite raised a raw
    OverflowError (a traceback, exit 1); it is an option of the wrong value, exit 2."""
    config = tmp_path / "c.yaml"
    config.write_text("overlap: 1" + "0" * 400 + "\n")
    with pytest.raises(OptionError, match="overlap must be a finite number"):
        make_options(config)
    with pytest.raises(OptionError, match="coarse_weight must be a finite number"):
        make_options(coarse_weight=10**400)


def test_auto_is_read_in_any_case_for_every_option_that_takes_it(tmp_path):
    """``anchor_blur: AUTO`` in a config was refused ("must be a finite number, auto or
    null") where ``--anchor-blur AUTO`` and ``batch_size: AUTO`` ran: every option the CLI
    reads as a number or auto (OrAuto) reads its auto in any case, from a config or a
    keyword, and a number as it is."""
    config = tmp_path / "c.yaml"
    config.write_text("anchor_blur: AUTO\nbatch_size: ' Auto '\n")
    opts = make_options(config, model="toy_models:red")
    assert (opts.anchor_blur, opts.batch_size) == ("auto", "auto")
    assert make_options(anchor_blur="Auto", model="toy_models:red").anchor_blur == "auto"
    config.write_text("anchor_blur: 2\nbatch_size: 3\n")
    opts = make_options(config, model="toy_models:red")
    assert (opts.anchor_blur, opts.batch_size) == (2.0, 3)
    config.write_text("anchor_blur: automatic\n")
    with pytest.raises(OptionError, match="anchor_blur must be a finite number, auto or null"):
        make_options(config, model="toy_models:red")
    # the options normalised are the CLI's OrAuto ones: a new one joins them
    from tiledepth.cli_options import OPTIONS, OrAuto
    from tiledepth.options import AUTO_OPTIONS

    or_auto = {name for name, spec in OPTIONS.items() if isinstance(spec[0], OrAuto)}
    assert set(AUTO_OPTIONS) == or_auto == {"anchor_blur", "batch_size"}


def test_anchor_blur_has_an_upper_bound():
    """Any finite blur was taken: 1e5 ran 50 s on a 300 px raster (a Gaussian kernel of 8
    sigma per tile), 1e6 over 10 minutes, where the automatic blur picks at most 6."""
    assert make_options(anchor_blur=64).anchor_blur == 64
    with pytest.raises(OptionError, match=r"^anchor_blur must be <= 64 pixels of the anchor "
                                          r"\(.*auto picks at most 6.*\), got 100000.0$"):
        make_options(anchor_blur=1e5)


def test_retry_flagged_says_which_tiles_it_predicts_again():
    """The help and docs/options.md said every flagged tile is predicted again; the engine
    retries only those flagged inconsistent (filled from the coarse map)."""
    from tiledepth.cli_options import OPTIONS

    assert "flagged inconsistent (filled from the coarse map)" in OPTIONS["retry_flagged"][1]
    row = next(line for line in (CONFIGS.parent / "docs" / "options.md").read_text().splitlines()
               if line.startswith("| `--retry-flagged"))
    assert "flags `inconsistent` (those filled from the coarse map)" in row


def test_numpy_integers_and_booleans_are_the_python_values_they_stand_for(tmp_path):
    """``tile_size=np.int64(100)`` was refused as "tile_size must be a whole number, got
    np.int64(100)" and ``preview=np.False_`` as not true or false, while NumPy's floats were
    taken: they are read as ints and bools, with the tags and checkpoint key of those."""
    import numpy as np
    import rasterio
    from conftest import depth_image, write_raster
    from toy_models import red

    import tiledepth
    from tiledepth.checkpoint import checkpoint_key

    given = dict(tile_size=np.int64(100), coarse_size=np.int32(96), batch_size=np.uint8(2),
                 steps=np.int16(3), ensemble=np.int64(1), seed=np.int64(7),
                 workers=np.int64(1), memory=np.uint16(64), robust=np.False_,
                 preview=np.True_, bands=np.array([3, 2, 1]))
    plain = {k: v.tolist() for k, v in given.items()}
    plain["bands"] = (3, 2, 1)
    opts, expected = make_options(**given), make_options(**plain)
    assert opts == expected
    assert {k: type(getattr(opts, k)) for k in given} == {k: type(v) for k, v in plain.items()}
    assert opts.provenance() == expected.provenance()
    assert checkpoint_key({"input": 1}, opts, red) == checkpoint_key({"input": 1}, expected, red)
    for bands in ([np.int64(2)], (np.int32(1), np.int32(2), np.int32(3)), np.int64(2),
                  np.array([1, 2, 3], np.uint8)):
        assert type(make_options(bands=bands).bands[0]) is int
    assert Options(bands=np.array([1, 2, 3])).bands == (1, 2, 3)
    # what they stand for is still checked
    with pytest.raises(OptionError, match=r"^tile_size must be >= 32, got 8$"):
        make_options(tile_size=np.int64(8))
    with pytest.raises(OptionError, match=r"^workers must be a whole number, got np.True_$"):
        make_options(workers=np.True_)
    with pytest.raises(OptionError, match=r"^preview must be true or false, got np.int64\(1\)$"):
        make_options(preview=np.int64(1))
    with pytest.raises(OptionError, match=r"^bands must be 1 or 3 band numbers"):
        make_options(bands=np.array([1.0, 2.0, 3.0]))
    # a run's output: the tags of the Python values
    path = write_raster(tmp_path / "in.tif", depth_image(150, 200))
    tags = []
    for tile_size, pyramid in [(np.int64(64), np.False_), (64, False)]:
        tiledepth.run(path, tmp_path / "out.tif", model=red, tile_size=tile_size,
                      pyramid=pyramid, overwrite=True, resume=False)
        with rasterio.open(tmp_path / "out.tif") as ds:
            tags.append({k: v for k, v in ds.tags().items() if "TIME" not in k})
    assert tags[0] == tags[1] and tags[0]["TILEDEPTH_TILE_SIZE"] == "64"


def test_config_numbers_in_exponent_notation_read_as_on_the_command_line(tmp_path):
    """PyYAML reads YAML 1.1, where ``-3.4e38``, ``1e-1`` and ``5e-1`` (no dot, or an
    unsigned exponent) are text: a config refused them ("nodata must be a finite number
    ..., got '-3.4e38'") where ``--nodata -3.4e38`` ran. They are floats, as in YAML 1.2."""
    p = tmp_path / "c.yaml"
    p.write_text("nodata: -3.4e38\ncoarse_weight: 1e-1\nscale: 5e-1\noverlap: 1.5E-1\n"
                 "anchor_blur: 2e0\n")
    assert load_config(p) == {"nodata": -3.4e38, "coarse_weight": 0.1, "scale": 0.5,
                              "overlap": 0.15, "anchor_blur": 2.0}
    cli = make_options(nodata=float("-3.4e38"), coarse_weight=float("1e-1"),
                       scale=float("5e-1"), overlap=0.15, anchor_blur=2.0)
    assert make_options(p) == cli and make_options(p).provenance() == cli.provenance()
    p.write_text("scale: .5\ncoarse_weight: 1.5e3\n")  # (.5 was a float already)
    assert load_config(p) == {"scale": 0.5, "coarse_weight": 1500.0}
    # as on the command line: a whole-number option refuses 1e3 (--tile-size 1e3 is "not
    # a valid integer"), and nan and inf are no finite numbers, written either way
    p.write_text("tile_size: 1e3\n")
    with pytest.raises(OptionError, match=rf"^{p}: tile_size must be a whole number, "
                                          r"got 1000\.0$"):
        make_options(p)
    for text in ("nan", ".nan", "inf", "-.inf"):
        p.write_text(f"nodata: {text}\n")
        with pytest.raises(OptionError, match=rf"^{p}: nodata must be a finite number"):
            make_options(p)
    # every other scalar as before (YAML 1.1: yes is true, a version is text)
    p.write_text("overviews: yes\ncontrol_crs: 1.2.3\nseed: 1_000\n")
    assert load_config(p) == {"overviews": True, "control_crs": "1.2.3", "seed": 1000}


def test_a_presets_loading_options_are_skipped_for_a_loaded_model_that_cannot_take_them(
        tmp_path, caplog):
    """A loaded model object runs as it was loaded: the fast and quality presets' ``steps:
    1`` and ``ensemble: 5`` (and a batch size it cannot set) were refused for it ("steps=1
    (it has none) would do nothing; set it when loading the model"), options never typed.
    From a config they are skipped with an info line, as for a model they do nothing for;
    given as keywords they are still refused, and what the model takes stays."""
    from conftest import depth_image, write_raster

    import tiledepth
    from tiledepth.models import load_model

    class Plain:  # name, batch_size, predict: no steps, ensemble or seed of its own
        name = "plain"
        batch_size = 4

        def predict(self, batch, keys):
            return batch[..., 0].copy()

    class FixedBatch(Plain):  # a batch size it cannot be given
        batch_size = property(lambda self: 2)

    class OneStep(Plain):
        steps = 1

    src = write_raster(tmp_path / "in.tif", depth_image(64, 80))
    fast, quality = CONFIGS / "fast.yaml", CONFIGS / "quality.yaml"
    for model in (Plain(), load_model("toy_models:red")):
        for config in (fast, quality):  # each refused before
            result = tiledepth.run(src, tmp_path / "o.tif", model=model, tile_size=48,
                                   config=config, overwrite=True)
            assert result.tiles > 0
        with pytest.raises(OptionError, match=r"steps[= ]1 would do nothing|steps=1 \(it "
                                              r"has none\) would do nothing"):
            tiledepth.run(src, tmp_path / "flag.tif", model=model, tile_size=48,
                          config=fast, steps=1)
    caplog.clear()
    with caplog.at_level("INFO", logger="tiledepth.options"):
        opts = make_options(fast, model=Plain())
    assert (opts.steps, opts.batch_size, opts.overlap) == (None, 8, 0.125)  # 8: set on it
    assert f"{fast}: steps 1 skipped: the model is a loaded model, run as it was loaded " \
           "(it has none)" in caplog.text
    with caplog.at_level("INFO", logger="tiledepth.options"):
        opts = make_options(quality, model=Plain())
    assert opts.ensemble == 1 and f"{quality}: ensemble 5 skipped" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="tiledepth.options"):
        opts = make_options(fast, model=FixedBatch())
    assert (opts.steps, opts.batch_size) == (None, 4)  # both skipped
    assert f"{fast}: batch_size 8 skipped" in caplog.text and "(it has 2)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="tiledepth.options"):
        assert make_options(fast, model=OneStep()).steps == 1  # its own: kept, no line
    assert "skipped" not in caplog.text
    p = tmp_path / "c.yaml"
    p.write_text("ensemble: 3\nuncertainty: true\n")  # kept: the uncertainty check says why
    with pytest.raises(OptionError, match="uncertainty"):
        tiledepth.run(src, tmp_path / "u.tif", model=Plain(), tile_size=48, config=p)


def test_an_empty_scratch_or_a_file_as_scratch_is_refused(tmp_path, monkeypatch):
    """``--scratch ''`` was Path(''), the current folder: the checkpoint went there, not to
    the output's folder (the default); ``--scratch a_file`` said "scratch folder does not
    exist". Both are refused in one line, naming the option."""
    from conftest import depth_image, write_raster

    import tiledepth

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    src = write_raster(tmp_path / "in.tif", depth_image(64, 80))
    for empty in ("", "  "):
        with pytest.raises(OptionError, match=rf"^scratch \(--scratch\) is empty \({empty!r}\);"
                                              " give a folder path, or leave it unset"):
            make_options(scratch=empty)
        with pytest.raises(OptionError, match="scratch .* is empty"):
            tiledepth.run(src, tmp_path / "out" / "o.tif", model="toy_models:red",
                          tile_size=48, scratch=empty)
    p = tmp_path / "c.yaml"
    p.write_text("scratch: ''\n")
    with pytest.raises(OptionError, match=rf"^{p}: scratch \(--scratch\) is empty"):
        make_options(p)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c.yaml", "in.tif", "out"]
    assert not any((tmp_path / "out").iterdir())
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    with pytest.raises(OptionError, match=rf"^{afile}: scratch \(--scratch\) is a file, not a "
                                          "folder; give a folder"):
        make_options(scratch=str(afile))
    assert make_options(scratch=str(tmp_path)).scratch == str(tmp_path)  # a folder: kept
    assert make_options(scratch="no-such-folder").scratch == "no-such-folder"  # (said later)


@pytest.mark.parametrize(("key", "flag", "what"), [
    ("bounds", "--bounds", "per raster"), ("bounds-crs", "--bounds-crs", "per raster"),
    ("aoi", "--aoi", "per raster"), ("output", "-o/--output", "per raster"),
    ("asset", "--asset", "per raster"), ("overwrite", "--overwrite", "a command flag"),
    ("mosaic", "--mosaic", "a command flag"), ("on_error", "--on-error", "a command flag"),
])
def test_a_command_flag_in_a_config_is_named_as_one_not_as_a_typo(key, flag, what, tmp_path):
    """``bounds:``, ``overwrite:``, ``output:`` in a config (flags of a command, not options)
    were told "did you mean 'bands'?", "'overviews'?", "'output_kind'?"."""
    p = tmp_path / "c.yaml"
    p.write_text(f"{key}: 1\n")
    with pytest.raises(OptionError) as err:
        load_config(p)
    assert str(err.value) == (f"{p}: {key!r} is not a config key: {flag} is {what}"
                              + (" (one run's input, output or area)" if what == "per raster"
                                 else "") + "; give it on the command line, not in a config")
    assert "did you mean" not in str(err.value)
    p.write_text("bandz: 1,2,3\n")  # a typo of an option still gets its hint
    with pytest.raises(OptionError, match="did you mean 'bands'"):
        load_config(p)


def test_a_configs_ensemble_and_seed_are_skipped_for_the_zero_noise_marigold(tmp_path, caplog):
    """marigold-e2e-ft (its name, hub id, or a folder holding it) runs one step from zero
    noise: its loader refuses an ensemble and a seed. The quality preset's ``ensemble: 5``
    and a config's ``seed: 7`` were refused for it ("use ensemble=1", "leave seed unset"),
    blaming options never typed; they are skipped with an info line, as for Depth Anything.
    Its steps stay, a diffusion Marigold keeps all three, and typed they are still refused."""
    import json

    folder = tmp_path / "e2e"  # as `hf download GonzaloMG/marigold-e2e-ft-depth` lays it out
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name":
                                                         "StableDiffusionPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": 8}))
    config = tmp_path / "c.yaml"
    config.write_text("ensemble: 5\nseed: 7\nsteps: 2\n")
    for model in ("marigold-e2e-ft", "GonzaloMG/marigold-e2e-ft-depth", str(folder), folder):
        caplog.clear()
        with caplog.at_level("INFO", logger="tiledepth.options"):
            opts = make_options(config, model=model)
        assert (opts.ensemble, opts.seed, opts.steps) == (1, 0, 2), model
        for line in (f"{config}: ensemble 5 skipped: the model {model} is the end-to-end "
                     "fine-tuned Marigold (zero noise), deterministic",
                     f"{config}: seed 7 skipped: the model {model} is"):
            assert line in caplog.text, model
        assert make_options(config, model=model, ensemble=5).ensemble == 5  # for the loader
        with pytest.raises(OptionError, match=r"^seed=7: the end-to-end fine-tuned Marigold"):
            make_options(config, model=model, seed=7)
    quality = make_options(CONFIGS / "quality.yaml", model="marigold-e2e-ft")
    assert quality.ensemble == 1 and quality.overlap == 0.5  # the rest of the preset holds
    for model in ("marigold-v1-1", "marigold-lcm"):  # seeded noise: both are theirs
        opts = make_options(config, model=model)
        assert (opts.ensemble, opts.seed, opts.steps) == (5, 7, 2), model
