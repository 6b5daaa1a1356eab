"""The docs: links and anchors resolve, the README stays short, the options table is the code's."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md",
               *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.

    >>> slug("Export memory: a 400 MP map to LAZ (issue 19)")
    'export-memory-a-400-mp-map-to-laz-issue-19'
    >>> slug("A Ray cluster: `--executor ray`")
    'a-ray-cluster---executor-ray'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    names = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            names.add(f"{base}-{count}" if count else base)
    return names


def links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (web and mail links left out)."""
    found = []
    for line in prose_lines(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        found += [target for target in LINK.findall(line)
                  if not re.match(r"[a-z][a-z0-9+.-]*:", target)]
    return found


def test_slug_and_anchors_follow_github(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Use\n\n```bash\n# not a heading\n```\n\n## Use\n"
                    "### Metres: calibration to a DEM\n")
    assert anchors(page) == {"title", "use", "use-1", "metres-calibration-to-a-dem"}
    page.write_text("[a](other.md#x) [b](#use) ![c](img/p.png) [d](https://x.org/#y) `[e](f.md)`\n")
    assert links(page) == ["other.md#x", "#use", "img/p.png"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert "tiledepth run ~/tiledepth-demo/ortho.tif" in blocks[0]
    assert blocks[1].strip().endswith("python -m pytest")
    assert text.index("```bash") < text.index("\n## ")  # before any section


def test_options_table_defaults_match_options():
    """Every option has a row in docs/options.md, and the plain defaults there are Options()'s."""
    import dataclasses

    from tiledepth.options import Options

    rows = {}
    for line in (ROOT / "docs" / "options.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for flag in re.findall(r"`--([a-z-]+)", cells[0]) if line.startswith("| `") else []:
            rows.setdefault(flag.replace("-", "_"), cells[1])
    defaults = Options()
    assert [f.name for f in dataclasses.fields(Options) if f.name not in rows] == []
    checked = 0
    for field in dataclasses.fields(Options):
        written, value = rows[field.name].strip("`"), getattr(defaults, field.name)
        if isinstance(value, bool):
            assert written in ("on", "off", field.name), (field.name, written)
            assert (written != "off") == value, (field.name, written, value)
        elif isinstance(value, (int, float, str)) and re.fullmatch(r"[\w./-]+", written):
            assert written == str(value), (field.name, written, value)
        else:
            continue
        checked += 1
    assert checked >= 20


def test_troubleshooting_quotes_the_line_of_a_model_that_raises(tmp_path, monkeypatch):
    """docs/troubleshooting.md had no word on the line a Python callable model that raises
    gives; it quotes it, as a run prints it."""
    from click.testing import CliRunner
    from conftest import depth_image, write_raster

    from tiledepth.cli import main

    monkeypatch.chdir(tmp_path)
    write_raster(tmp_path / "ortho.tif", depth_image(64, 64))
    (tmp_path / "m.py").write_text("def f(batch):\n    return {}['missing key']\n")
    result = CliRunner().invoke(main, ["run", "ortho.tif", "--model", "m.py:f",
                                       "--no-progress"])
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert line == "tiledepth: error: ortho.tif: model 'm.py:f' raised KeyError: 'missing key'"
    assert f"`{line}`" in (ROOT / "docs" / "troubleshooting.md").read_text()
