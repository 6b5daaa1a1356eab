"""Every command's ``--help`` imports none of the heavy modules, each in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

import tiledepth
from tiledepth import cli, options
from tiledepth.cli import main

#: What no ``--help`` may import: the numeric, raster, cloud, model and cluster libraries,
#: and tiledepth's own fusion and engine (which import them).
HEAVY = ("numpy", "rasterio", "scipy", "boto3", "botocore", "torch", "diffusers", "ray",
         "tiledepth.fusion", "tiledepth.engine")


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()):
    """The argument path of every command and group under ``group``, ``group`` first."""
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


COMMANDS = list(_command_paths(main))


def test_every_command_is_covered():
    # a command added to the CLI is covered by the walk; this list says which ones it found
    assert {" ".join(path) for path in COMMANDS} == {
        "", "run", "info", "eval", "preview", "export", "batch", "models", "qgis",
        "qgis install", "qgis uninstall"}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "tiledepth")
def test_help_imports_no_heavy_module(path):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tiledepth.cli import main\n"
        f"result = CliRunner().invoke(main, {[*path, '--help']!r}, catch_exceptions=False)\n"
        "assert result.exit_code == 0, result.output\n"
        "assert result.output.startswith('Usage: '), result.output\n"
        f"heavy = {HEAVY!r}\n"
        "print(' '.join(h for h in heavy\n"
        "               if any(m == h or m.startswith(h + '.') for m in sys.modules)))\n"
    )
    # the tiledepth under test, whatever an installed one is
    root = str(Path(tiledepth.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    assert done.stdout.split() == [], f"`{' '.join(path)} --help` imported {done.stdout}"


def test_help_choices_written_out_equal_their_registries():
    """The choices the help shows without importing their heavy modules."""
    from tiledepth import evaluation, metrics, preview
    from tiledepth.fusion.blend import OVERLAP_WEIGHTINGS
    from tiledepth.fusion.maps import ALIGNMENTS

    assert options.alignments() == ("auto", *ALIGNMENTS)
    assert options.overlap_weightings() == tuple(OVERLAP_WEIGHTINGS)
    assert cli.SPACES == tuple(metrics.SPACES)
    assert cli.GT_KINDS == tuple(evaluation.GT_KINDS)
    assert cli.COLORMAPS == tuple(preview.COLORMAPS)
