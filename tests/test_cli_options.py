"""The CLI's shared options: defaults printed from Options(), one definition per option,
choices equal to the registries the library checks against."""

import re

import click
import pytest
from click.testing import CliRunner

from tiledepth import cli_options, evaluation, metrics, options, preview, survey
from tiledepth.cli import main
from tiledepth.fusion import ALIGNMENTS
from tiledepth.fusion.blend import OVERLAP_WEIGHTINGS
from tiledepth.models import torchutil
from tiledepth.options import OPTION_NAMES, Options
from tiledepth.rio import depth

COMMANDS = {"run": main.commands["run"], "info": main.commands["info"],
            "batch": main.commands["batch"], "rio depth": depth}


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_run_help_prints_the_defaults_of_options():
    text = _help("run")
    defaults = Options()
    shown = 0
    for name, param in _options(main.commands["run"]).items():
        if name not in OPTION_NAMES:
            continue
        value = getattr(defaults, name)
        match = re.search(re.escape(param.help.split(" [default: ")[0]) + r" \[default: ([^]]*)\]",
                          text)
        if value is None and name not in cli_options.DEFAULTS:
            assert "[default:" not in param.help, name  # nothing to print
            continue
        assert match, f"--{name}: no default in run --help"
        if value is not None:
            word = ("on" if value else "off") if isinstance(value, bool) else str(value)
            assert word in match.group(1), (name, word, match.group(1))
        shown += 1
    assert shown >= 25  # the options of Options that run takes, less those without a default
    assert "[default: 0.25]" in text and "[default: prs-eth/marigold-depth-v1-1]" in text


def test_defaults_follow_options(monkeypatch):
    """The printed default is read from Options(), not typed into the help."""
    monkeypatch.setattr(cli_options, "Options", lambda: Options(overlap=0.5, cog=True))
    assert cli_options.default_text("overlap") == "0.5"
    assert cli_options.default_text("cog") == "on"
    assert cli_options._option("overlap")(lambda: None).__click_params__[0].help.endswith(
        "[default: 0.5]")


def test_no_default_is_typed_into_a_help_text():
    for name, (_kind, help, *_more) in cli_options.OPTIONS.items():
        assert "default" not in help, name


@pytest.mark.parametrize("command", ["info", "batch", "rio depth"])
def test_commands_share_run_option_definitions(command):
    run = _options(main.commands["run"])
    other = _options(COMMANDS[command])
    own = {"resume", "overwrite"} if command == "batch" else set()  # batch's, other meaning
    shared = (set(other) & set(cli_options.OPTIONS)) - own
    assert {"model", "tile_size", "steps", "batch_size", "config", "debug"} <= shared
    for name in shared:
        a, b = run[name], other[name]
        assert (a.opts, a.secondary_opts, a.help, type(a.type), a.default) == (
            b.opts, b.secondary_opts, b.help, type(b.type), b.default), (command, name)
    if command != "info":  # batch and rio depth take every engine option of run
        engine = set(run) - {"output", "overwrite", "resume", "bounds", "bounds_crs", "aoi",
                             "mosaic", "split", "asset"}  # one run's inputs and output
        if command == "batch":  # one run's checkpoint kept: batch refuses it
            engine -= {"keep_predictions"}
            assert "keep_predictions" not in other
        assert engine <= set(other), engine - set(other)


def test_info_and_run_agree_on_steps():
    assert _options(main.commands["info"])["steps"].help == _options(
        main.commands["run"])["steps"].help == "Denoising steps. [default: the checkpoint's]"


def _all_commands(group: click.Group):
    for command in group.commands.values():
        if isinstance(command, click.Group):
            yield from _all_commands(command)
        else:
            yield command
    yield depth


def test_every_choice_equals_its_registry():
    registries = {
        "alignment": ("auto", *ALIGNMENTS),
        "dtype": torchutil.DTYPES,
        "output_kind": options.OUTPUT_KINDS,
        "anchor": options.ANCHORS,
        "fusion": options.FUSIONS,
        "overlap_weighting": OVERLAP_WEIGHTINGS,
        "space": metrics.SPACES,
        "gt_kind": evaluation.GT_KINDS,
        "on_error": survey.ON_ERROR,
        "executor": survey.EXECUTORS,
        "colormap": tuple(preview.COLORMAPS),
    }
    seen = set()
    for command in _all_commands(main):
        for param in command.params:
            if isinstance(param.type, click.Choice):
                assert param.name in registries, f"{command.name} --{param.name}: no registry"
                assert tuple(param.type.choices) == tuple(registries[param.name]), param.name
                seen.add(param.name)
    assert seen == set(registries)
    assert torchutil.DTYPES is options.DTYPES  # defined once
    assert options.alignments() == ("auto", "affine", "bilinear")
    for alignment in options.alignments():  # what the CLI offers, the library accepts
        assert Options(alignment=alignment).check().alignment == alignment
    assert options.overlap_weightings() == ("uniform", "blend")
    for weighting in options.overlap_weightings():
        assert Options(overlap_weighting=weighting).check().overlap_weighting == weighting
    with pytest.raises(options.OptionError, match="overlap_weighting must be one of uniform, "
                                                  "blend, got 'middle'"):
        Options(overlap_weighting="middle").check()
    assert "OVERLAP_WEIGHTING" not in Options().provenance()  # the default: tags as before
    assert Options(overlap_weighting="blend").provenance()["OVERLAP_WEIGHTING"] == "blend"


def test_a_bad_choice_lists_the_registry():
    result = CliRunner().invoke(main, ["run", "in.tif", "--alignment", "cubic"])
    assert result.exit_code == 2
    assert "'cubic' is not one of 'auto', 'affine', 'bilinear'" in result.output
    with pytest.raises(options.OptionError, match="alignment must be one of auto, affine, "
                                                  "bilinear, got 5"):
        Options(alignment=5).check()


def test_qgis_output_kinds_and_model_equal_the_library():
    """The QGIS provider runs in QGIS's Python, without tiledepth, so it keeps its own list;
    it must read as the registry does."""
    import ast
    from pathlib import Path

    source = Path(options.__file__).parent / "qgis" / "plugin" / "algorithms.py"
    tree = ast.parse(source.read_text())
    values = {t.id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
              and t.id in ("OUTPUT_KINDS", "DEFAULT_MODEL")}
    assert tuple(values["OUTPUT_KINDS"]) == options.OUTPUT_KINDS
    assert values["DEFAULT_MODEL"] == options.DEFAULT_MODEL


def test_anchor_blur_takes_a_number_or_auto():
    kind = cli_options.OPTIONS["anchor_blur"][0]
    assert kind.convert("auto", None, None) == "auto"
    assert kind.convert(" AUTO ", None, None) == "auto"
    assert kind.convert("0.5", None, None) == 0.5
    with pytest.raises(click.BadParameter, match="expected a number or auto"):
        kind.convert("wide", None, None)
    assert options.make_options(anchor_blur="auto").anchor_blur == "auto"
    assert options.make_options(anchor_blur="auto").provenance()["ANCHOR_BLUR"] == "auto"


def test_the_help_says_which_options_need_scale_1():
    """--scale below 1 is refused with --reference, --control and --uncertainty ("scale
    below 1 does not combine with ...") but neither --help nor docs/options.md said so."""
    from pathlib import Path

    from tiledepth.errors import OptionError

    for name in ("reference", "control", "uncertainty"):
        with pytest.raises(OptionError, match="scale below 1 does not combine"):
            options.make_options(scale=0.5, **{name: "x" if name != "uncertainty" else True},
                                 ensemble=3)
    run = _options(main.commands["run"])
    for name in ("reference", "control", "uncertainty"):
        assert "--scale 1 only" in run[name].help, name
    assert "below 1 not with --reference, --control or --uncertainty" in run["scale"].help
    rows = {line.split("|")[1].strip(): line for line in (
        Path(__file__).parent.parent / "docs" / "options.md").read_text().splitlines()
        if line.startswith("| `--")}
    for flag in ("`--reference`", "`--control`", "`--uncertainty`"):
        assert "`--scale` 1 only" in rows[flag], flag
    assert "below 1 not with `--reference`, `--control` or `--uncertainty`" in rows["`--scale`"]


def test_the_bands_default_in_the_help_is_the_tagged_red_green_blue_as_the_reader_takes():
    """``run --help`` said --bands defaults to "the first three colour bands", while the reader
    (and docs/options.md) takes the bands tagged red, green, blue in that order: a BGR file's
    model saw red first. The help says what the code does."""
    from pathlib import Path

    from rasterio.enums import ColorInterp as C

    from tiledepth.read import select_bands

    assert select_bands([C.blue, C.green, C.red], None) == (3, 2, 1)  # a BGR file
    assert select_bands([C.gray, C.gray, C.gray, C.gray], None) == (1, 2, 3)  # untagged
    shown = re.search(r"--bands .*?\[default: ([^]]*)\]", _help("run")).group(1)
    assert shown == ("the bands tagged red, green, blue, in that order, else the first three "
                     "colour bands")
    docs = (Path(__file__).parents[1] / "docs" / "options.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `--bands` |"))
    assert row.split(" | ")[1] == "bands tagged red, green, blue" and "first 3 colour" in row
