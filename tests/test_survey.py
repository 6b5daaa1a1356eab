"""tiledepth.batch and `tiledepth batch`: inputs, shards, manifest, resume (local executor)."""

import json
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, TRANSFORM, depth_image, write_raster

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import (
    DependencyError,
    InputError,
    ModelLoadError,
    OptionError,
    OutputError,
)
from tiledepth.lock import lock_path
from tiledepth.survey import (
    MANIFEST_NAME,
    check_output,
    find_inputs,
    in_shard,
    parse_shard,
    read_manifest,
)

OPTS = dict(tile_size=96, overlap=0.25, batch_size=2)


def make_survey(root: Path, *, dark: bool = False) -> Path:
    """survey/ with three rasters in nested folders, plus files a search must leave out."""
    for sub, name, h in [("a", "x0.tif", 200), ("a/b", "x1.tif", 220), ("c", "x2.TIF", 240)]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        write_raster(root / sub / name, depth_image(h, 240))
    if dark:  # sorts between a/b/x1 and c/x2; nan_if_dark fails on it
        (root / "b_dark").mkdir()
        write_raster(root / "b_dark" / "dark.tif", np.zeros((3, 150, 170), np.uint8))
    (root / "c" / "notes.txt").write_text("not a raster")
    write_raster(root / "c" / ".hidden.tif", depth_image(50, 50))
    write_raster(root / "c" / "old.depth.tif", depth_image(50, 50))
    return root


def small_rasters(folder: Path) -> Path:
    """folder/ with three small rasters, r0.tif to r2.tif (150 to 170 x 170 px)."""
    folder.mkdir()
    for i in range(3):
        write_raster(folder / f"r{i}.tif", depth_image(150 + 10 * i, 170))
    return folder


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_find_inputs_searches_folders_lists_and_mirrors_subfolders(tmp_path, monkeypatch):
    survey = make_survey(tmp_path / "survey")
    found = find_inputs([survey])
    assert [i.relative.as_posix() for i in found] == ["a/x0.tif", "a/b/x1.tif", "c/x2.TIF"]
    assert found[1].output(tmp_path / "out") == tmp_path / "out/a/b/x1.depth.tif"
    # --glob narrows, case-insensitively, on the path under the folder
    assert [i.relative.as_posix() for i in find_inputs([survey], glob="b/*.TIF")] == ["a/b/x1.tif"]
    # files named one by one mirror their path under the current folder; a list holds files
    # and folders
    monkeypatch.chdir(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("# frames\nsurvey/a/x0.tif\n\nsurvey/a/b/x1.tif\nsurvey/c\n")
    found = find_inputs([f"@{lst}", "survey/a/x0.tif"])  # the repeat is dropped
    assert [(i.path.as_posix(), i.relative.as_posix()) for i in found] == [
        ("survey/a/x0.tif", "survey/a/x0.tif"), ("survey/a/b/x1.tif", "survey/a/b/x1.tif"),
        ("survey/c/x2.TIF", "x2.TIF")]
    # the output folder inside the input folder is never searched
    (survey / "out").mkdir()
    write_raster(survey / "out" / "y.tif", depth_image(40, 40))
    assert len(find_inputs([survey], exclude=survey / "out")) == 3
    assert len(find_inputs([survey])) == 4


def test_find_inputs_errors(tmp_path):
    survey = make_survey(tmp_path / "survey")
    with pytest.raises(InputError, match="no such file or folder"):
        find_inputs([survey, tmp_path / "missing"])
    with pytest.raises(InputError, match="no input rasters found"):
        find_inputs([survey], glob="*.jp2")
    write_raster(survey / "a" / "x0.tiff", depth_image(40, 40))
    with pytest.raises(InputError, match=r"would both write a/x0\.depth\.tif"):
        find_inputs([survey])
    with pytest.raises(InputError, match="cannot read the input list"):
        find_inputs([f"@{tmp_path / 'nolist.txt'}"])


def test_shards_split_the_inputs_exactly_once_and_stably():
    names = [f"flight{i % 7}/DJI_{i:04d}.JPG" for i in range(500)]
    for count in (1, 2, 3, 8):
        owners = [[i for i in range(count) if in_shard(n, i, count)] for n in names]
        assert all(len(o) == 1 for o in owners)  # every input in exactly one shard
        sizes = np.bincount([o[0] for o in owners], minlength=count)
        assert sizes.min() > 0.8 * len(names) / count  # and shards of similar size
    # a file's shard does not depend on the other files, nor on the folder above the survey
    assert in_shard(PurePosixPath("flight3/DJI_0003.JPG"), 1, 3) == in_shard(names[3], 1, 3)
    assert parse_shard("2/5") == (2, 5) and parse_shard((0, 1)) == (0, 1)
    for bad in ["5/5", "-1/4", "1/0", "1", "a/b", "1/2/3"]:
        with pytest.raises(OptionError, match="shard"):
            parse_shard(bad)


def test_batch_writes_mirrored_outputs_equal_to_run_and_a_manifest(tmp_path, monkeypatch):
    survey = make_survey(tmp_path / "survey", dark=True)
    out = tmp_path / "out"
    import tiledepth.models as models

    imports = []
    real_import = models.import_callable
    monkeypatch.setattr(models, "import_callable", lambda s: imports.append(s) or real_import(s))
    records = tiledepth.batch([survey], out, model="toy_models:nan_if_dark", **OPTS)
    assert imports == ["toy_models:nan_if_dark"]  # the model is loaded once for the batch
    assert [(Path(r.input).name, r.status) for r in records] == [
        ("x0.tif", "done"), ("x1.tif", "done"), ("dark.tif", "failed"), ("x2.TIF", "done")]
    assert [r.tiles for r in records] == [9, 9, None, 9]
    assert "returned" in records[2].error and "NaN" in records[2].error
    assert "\n" not in records[2].error
    # the manifest holds the same records, one JSON line each
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["done", "done", "failed", "done"]
    assert read_manifest(out / MANIFEST_NAME) == records
    done = records[1]
    assert Path(done.output) == out / "a" / "b" / "x1.depth.tif"
    assert done.bytes == Path(done.output).stat().st_size
    assert (done.height, done.width) == (220, 240)
    # the fusion's own check, as in the sidecar beside the output
    sidecar = json.loads(Path(done.output).with_name("x1.depth.json").read_text())
    assert done.consistency == sidecar["consistency"] and done.flagged == 0
    assert records[2].consistency is None and records[2].flagged is None
    assert not (out / "b_dark" / "dark.depth.tif").exists()
    # every output is what `tiledepth.run` writes for that input alone
    for r in records[:2] + records[3:]:
        single = tmp_path / "single.tif"
        tiledepth.run(r.input, single, model="toy_models:nan_if_dark", overwrite=True, **OPTS)
        np.testing.assert_array_equal(read(r.output), read(single))


def test_resume_after_an_interrupted_batch_checks_outputs_and_redoes_the_rest(tmp_path):
    survey = make_survey(tmp_path / "survey", dark=True)
    out = tmp_path / "out"
    opts = dict(OPTS, model="toy_models:interrupt_if_dark")
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C on the third raster
        tiledepth.batch([survey], out, **opts)
    assert [r.status for r in read_manifest(out / MANIFEST_NAME)] == ["done", "done"]
    assert not (out / "b_dark").exists() or not any((out / "b_dark").iterdir())
    x0, x1 = out / "a" / "x0.depth.tif", out / "a" / "b" / "x1.depth.tif"
    good_x1 = read(x1)
    # damage: x0 truncated (as by a copy cut short); a partial file left by a killed writer
    x0.write_bytes(x0.read_bytes()[:2000])
    partial = x1.with_name(f".{x1.name}.0123abcd.partial")
    partial.write_bytes(b"half")
    write_raster(survey / "b_dark" / "dark.tif", depth_image(150, 170))  # fixed input
    # without --resume, an existing output is a failure, not silently replaced
    (again,) = tiledepth.batch([survey], out, glob="b/*.tif", **opts)
    assert again.status == "failed" and "--resume" in again.error
    # --resume: x1 is checked and kept, x0 is redone, the rest are done
    records = tiledepth.batch([survey], out, resume=True, **opts)
    assert [r.status for r in records] == ["done", "skipped", "done", "done"]
    assert records[1].bytes == x1.stat().st_size and records[1].height == 220
    assert not partial.exists()
    np.testing.assert_array_equal(read(x1), good_x1)
    assert check_output(x0, survey / "a" / "x0.tif") is None
    # everything valid now: a second resume skips all without loading the model
    records = tiledepth.batch([survey], out, resume=True, **dict(opts, model="no_such_mod:fn"))
    assert {r.status for r in records} == {"skipped"}
    latest = read_manifest(out / MANIFEST_NAME, latest=True)
    assert len(latest) == 4 and {r.status for r in latest} == {"skipped"}


def test_check_output_opens_and_checks(tmp_path, rgba_tif):
    out = tmp_path / "d.tif"
    tiledepth.run(rgba_tif, out, model="toy_models:red", tile_size=256)
    assert check_output(out, rgba_tif) is None
    other = write_raster(tmp_path / "other.tif", depth_image(600, 650))
    assert "size 700 x 600 px differs" in check_output(out, other)  # width x height
    shifted = write_raster(tmp_path / "shifted.tif", np.zeros((3, 600, 700), np.uint8),
                           transform=rasterio.transform.from_origin(100, 100, 1, 1))
    assert "transform differs" in check_output(out, shifted)
    assert "TILEDEPTH_VERSION" in check_output(rgba_tif, rgba_tif)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    assert "cannot read" in check_output(cut, rgba_tif)


def test_resume_keeps_outputs_with_their_uncertainty_band(tmp_path):
    """An output made with --uncertainty (band 2 its spread) is whole: a resume keeps it
    (it was redone on every resume, as "2 band(s), not one float32 band")."""
    from toy_models import RedWithSpread

    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    opts = dict(OPTS, model=RedWithSpread(), uncertainty=True, ensemble=3)
    first = tiledepth.batch([survey], out, **opts)
    assert {r.status for r in first} == {"done"}
    with rasterio.open(out / first[0].output) as ds:  # relative to out, or absolute
        assert ds.count == 2 and ds.descriptions[1] == "uncertainty"
    again = tiledepth.batch([survey], out, resume=True, **opts)
    assert {r.status for r in again} == {"skipped"}


def test_resume_never_replaces_a_file_tiledepth_did_not_write(tmp_path):
    """--resume redoes only an output that carries tiledepth's tag (a cut-short one too);
    a user's file at an output's path (text, a GeoTIFF of their own, or a file too
    damaged to tell) fails its input in one line and keeps its bytes, its sidecar too
    (all were replaced, as "no TILEDEPTH_VERSION tag" or "cannot read it")."""
    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    args = ["--model", "toy_models:red", "--tile-size", 96, "--no-progress"]
    assert invoke("batch", survey, "-o", out, *args).exit_code == 0
    r0, r1, r2 = (out / f"r{i}.depth.tif" for i in range(3))
    ours = r2.read_bytes()
    r0.write_text("my notes, not a raster\n")  # a user's files at the output's paths
    r0.with_suffix(".json").write_text('{"mine": 1}')
    write_raster(r1, depth_image(150 + 10, 170))  # a raster of theirs: no tiledepth tag
    r2.write_bytes(ours[:100])  # tiledepth's, cut before its tags: cannot be told
    before = {p: p.read_bytes() for p in (r0, r0.with_suffix(".json"), r1, r2)}
    result = invoke("batch", survey, "-o", out, "--resume", *args)
    assert result.exit_code == 1, result.output
    records = read_manifest(out / MANIFEST_NAME)[-3:]
    assert [r.status for r in records] == ["failed"] * 3
    for record, path in zip(records, (r0, r1, r2), strict=True):
        assert record.error.startswith(f"{path}: exists and is not a tiledepth output")
        assert "move it or pass --overwrite" in record.error and "\n" not in record.error
    assert "no TILEDEPTH_VERSION tag" in records[1].error
    assert "cannot read it as a raster" in records[2].error
    assert {p: p.read_bytes() for p in before} == before  # every byte as it was
    # cut after its tags, it shows as tiledepth's (as the resume test's x0): redone
    r2.write_bytes(ours[:2000])
    (again,) = tiledepth.batch([survey], out, resume=True, glob="r2.tif", model="toy_models:red",
                               tile_size=96)
    assert again.status == "done" and check_output(r2, survey / "r2.tif") is None
    # --overwrite replaces what the user named
    records = tiledepth.batch([survey], out, overwrite=True, model="toy_models:red",
                              tile_size=96)
    assert [r.status for r in records] == ["done"] * 3
    assert check_output(r0, survey / "r0.tif") is None


def test_a_rerun_leaves_out_what_runs_write(tmp_path):
    """Outputs written into the input folder with --preview: a rerun takes none of them
    (the preview a.depth.png was fused as an input, writing a.depth.depth.tif)."""
    folder = tmp_path / "survey"
    folder.mkdir()
    write_raster(folder / "a.tif", depth_image(120, 140))
    opts = dict(model="toy_models:red", tile_size=96, preview=True)
    assert [r.status for r in tiledepth.batch([folder], folder, **opts)] == ["done"]
    (folder / "a.depth.json").write_text("{}")  # the sidecar, whatever the run wrote
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["a.depth.json", "a.depth.png", "a.depth.png.aux.xml", "a.depth.tif",
                       "a.tif", MANIFEST_NAME]
    for glob in (None, "*"):
        assert [i.relative.as_posix() for i in find_inputs([folder], glob=glob)] == ["a.tif"]
    records = tiledepth.batch([folder], folder, resume=True, **opts)
    assert [(Path(r.input).name, r.status) for r in records] == [("a.tif", "skipped")]
    assert sorted(p.name for p in folder.iterdir()) == written


def test_batch_fails_fast_on_bad_arguments(tmp_path):
    survey = make_survey(tmp_path / "survey")
    cases = [(dict(resume=True, overwrite=True), "contradict"),
             (dict(on_error="retry"), "on_error"),
             (dict(shard="3/3"), "shard"),
             (dict(ray_actors=2), "executor='ray'"),
             (dict(executor="dask"), "executor")]
    for kwargs, text in cases:
        with pytest.raises(OptionError, match=text):
            tiledepth.batch([survey], tmp_path / "out", model="toy_models:red", **kwargs)
    # a model that cannot be loaded stops the batch (it would fail every input)
    with pytest.raises(ModelLoadError, match="cannot import"):
        tiledepth.batch([survey], tmp_path / "out", model="no_such_mod:fn")


def test_missing_ray_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    survey = make_survey(tmp_path / "survey")
    with pytest.raises(DependencyError, match=r'pip install "tiledepth\[ray\]"'):
        tiledepth.batch([survey], tmp_path / "out", model="toy_models:red", executor="ray")


def test_a_ray_resume_with_every_output_complete_does_not_start_ray(tmp_path, monkeypatch):
    """Ray was started (slow) even when the resume had nothing left to run."""
    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    opts = dict(OPTS, model="toy_models:red")
    assert {r.status for r in tiledepth.batch([survey], out, **opts)} == {"done"}
    monkeypatch.setitem(sys.modules, "ray", None)  # starting Ray would raise DependencyError
    records = tiledepth.batch([survey], out, resume=True, executor="ray", **opts)
    assert [(r.status, r.height) for r in records] == [("skipped", 150), ("skipped", 160),
                                                        ("skipped", 170)]
    # one output left to redo: Ray is started, before any input is run
    last = out / "r2.depth.tif"
    last.write_bytes(last.read_bytes()[:2000])
    with pytest.raises(DependencyError, match=r'pip install "tiledepth\[ray\]"'):
        tiledepth.batch([survey], out, resume=True, executor="ray", **opts)
    assert [r.status for r in read_manifest(out / MANIFEST_NAME)] == ["done"] * 3 + \
        ["skipped"] * 3  # the second resume recorded nothing


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_batch_summary_exit_codes_shards_and_lists(tmp_path, monkeypatch):
    survey = make_survey(tmp_path / "survey", dark=True)
    out = tmp_path / "out"
    args = ["--model", "toy_models:nan_if_dark", "--tile-size", 96, "--no-progress"]
    result = invoke("batch", survey, "-o", out, *args)
    assert result.exit_code == 1  # one input failed
    lines = result.output.strip().splitlines()
    assert lines[-7:-2] == ["status   files  tiles  seconds"] + lines[-6:-2]
    assert lines[-6].split()[:3] == ["done", "3", "27"]
    assert lines[-4].split()[:2] == ["failed", "1"]
    assert lines[-2].startswith("failed: ") and "dark.tif" in lines[-2]
    assert lines[-1] == f"manifest: {out / MANIFEST_NAME}"
    # --on-error stop: the run ends at the first failure
    result = invoke("batch", survey, "-o", tmp_path / "stop", "--on-error", "stop", *args)
    assert result.exit_code == 1
    assert [r.status for r in read_manifest(tmp_path / "stop" / MANIFEST_NAME)] == [
        "done", "done", "failed"]
    # Ctrl-C: exit 130, finished outputs kept, and how to go on
    result = invoke("batch", survey, "-o", tmp_path / "int", "--model",
                    "toy_models:interrupt_if_dark", "--tile-size", 96, "--no-progress")
    assert result.exit_code == 130 and "--resume" in result.output
    assert len(read_manifest(tmp_path / "int" / MANIFEST_NAME)) == 2
    # shards of one folder, as N array jobs would run them: together, every input once
    monkeypatch.chdir(tmp_path)
    Path("list.txt").write_text("survey/a\nsurvey/c/x2.TIF\n")
    for i in range(3):
        result = invoke("batch", "@list.txt", "-o", "sharded", "--shard", f"{i}/3", *args)
        assert result.exit_code == 0, result.output
    statuses = [(Path(r.input).name, r.status)
                for r in read_manifest(Path("sharded") / MANIFEST_NAME)]
    assert sorted(statuses) == [("x0.tif", "done"), ("x1.tif", "done"), ("x2.TIF", "done")]
    # bad arguments: one line, exit 2
    for bad, text in [(["--shard", "3/3"], "shard"), (["--resume", "--overwrite"], "contradict")]:
        result = invoke("batch", survey, "-o", out, *args, *bad)
        assert result.exit_code == 2 and text in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_cut_last_manifest_line_does_not_swallow_the_next_record(tmp_path):
    from tiledepth.survey import Record, append_record

    manifest = tmp_path / MANIFEST_NAME
    first, second = (Record(input=f"x{i}.tif", output=f"x{i}.depth.tif", status="done",
                            bytes=100 + i, seconds=1.5) for i in range(2))
    append_record(manifest, first)
    with open(manifest, "ab") as f:  # a job killed in the middle of its line
        f.write(first.to_json().encode()[:37])
    append_record(manifest, second)
    assert read_manifest(manifest) == [first, second]
    # a manifest from before the fix: the record glued to the cut line is still read
    manifest.write_text(first.to_json()[:37] + second.to_json() + "\n")
    assert read_manifest(manifest) == [second]


def test_batch_leaves_the_temp_files_of_a_run_writing_the_same_output(tmp_path):
    from tiledepth.lock import lock_output, unlock_output

    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    x0 = out / "a" / "x0.depth.tif"
    x0.parent.mkdir(parents=True)
    live = x0.with_name(f".{x0.name}.0123abcd.partial")  # another job's output in progress
    live.write_bytes(b"being written")
    fd = lock_output(x0)  # that job holds the output's lock
    try:
        records = tiledepth.batch([survey], out, glob="a/x0.tif", resume=True,
                                  model="toy_models:red", **OPTS)
    finally:
        unlock_output(x0, fd)
    assert [r.status for r in records] == ["busy"]
    assert "another tiledepth run is writing the same output" in records[0].error
    assert live.read_bytes() == b"being written" and not x0.exists()
    # once that job is gone, a resumed batch removes what it left and writes the output
    records = tiledepth.batch([survey], out, glob="a/x0.tif", resume=True,
                              model="toy_models:red", **OPTS)
    assert [r.status for r in records] == ["done"] and not live.exists()
    assert sorted(p.name for p in x0.parent.iterdir()) == ["x0.depth.json", "x0.depth.tif"]


def test_a_batch_with_a_busy_output_does_not_exit_as_a_success(tmp_path):
    """A busy output (another run writes it) is not done when this batch ends: on the
    command line the batch exits 1, as for a failure, and says busy."""
    from tiledepth.lock import lock_output, unlock_output

    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    args = ["batch", survey, "-o", out, "--glob", "a/x0.tif", "--model", "toy_models:red",
            "--tile-size", 96, "--overwrite"]
    assert invoke(*args).exit_code == 0
    x0 = out / "a" / "x0.depth.tif"
    fd = lock_output(x0)
    try:
        res = invoke(*args)
    finally:
        unlock_output(x0, fd)
    assert res.exit_code == 1 and "busy" in res.output, res.output


def test_an_output_another_run_writes_is_busy_and_leaves_its_done_the_latest(tmp_path):
    """Two batches into one folder at once: the one refused an output that the other was
    writing recorded it "failed", appended after the other's "done" where its records came
    in input order, so the manifest's latest state of a complete output read failed."""
    from tiledepth.lock import lock_output, unlock_output
    from tiledepth.survey import summary

    survey = make_survey(tmp_path / "survey")
    out = tmp_path / "out"
    kw = dict(glob="a/x0.tif", model="toy_models:red", **OPTS)
    done = tiledepth.batch([survey], out, **kw)  # the other batch's record, appended first
    x0 = out / "a" / "x0.depth.tif"
    before = x0.read_bytes()
    fd = lock_output(x0)  # while that batch still held the output's lock
    try:
        busy = tiledepth.batch([survey], out, overwrite=True, **kw)
    finally:
        unlock_output(x0, fd)
    assert [r.status for r in done] == ["done"] and x0.read_bytes() == before
    assert [(r.status, r.bytes, r.tiles) for r in busy] == [("busy", None, None)]
    assert busy[0].error.startswith(f"{x0}: another tiledepth run is writing the same output")
    assert read_manifest(out / MANIFEST_NAME) == done + busy
    assert read_manifest(out / MANIFEST_NAME, latest=True) == done
    # the input's latest state where it has no other record; the summary has a row for it
    (out / MANIFEST_NAME).write_text(busy[0].to_json() + "\n")
    assert read_manifest(out / MANIFEST_NAME, latest=True) == busy
    assert summary(busy).splitlines()[1:] == [
        "done         0      0      0.0", "skipped      0      0      0.0",
        "failed       0      0      0.0", f"busy         1      0{busy[0].seconds:>9.1f}",
        f"total        1      0{busy[0].seconds:>9.1f}", f"busy: {busy[0].input}: {busy[0].error}"]


def test_quiet_batch_of_jpeg_frames_prints_nothing(tmp_path):
    """-q: no summary, no "files" bar (stderr is no terminal), no NotGeoreferencedWarning for
    the outputs of JPEG frames. A real process: what reaches its stderr is the point."""
    import os
    import subprocess

    folder = tmp_path / "frames"
    folder.mkdir()
    profile = dict(driver="JPEG", width=64, height=48, count=3, dtype="uint8")
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        with rasterio.open(folder / "a.jpg", "w", **profile) as dst:
            dst.write(depth_image(48, 64))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "tiledepth.cli", "batch", str(folder), "-o",
            str(tmp_path / "out"), "--glob", "*.jpg", "--model", "toy_models:red",
            "--tile-size", "64", "--resume", "-q"]
    for status in ("done", "skipped"):
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr
        manifest = (tmp_path / "out" / "tiledepth-manifest.jsonl").read_text().splitlines()
        assert json.loads(manifest[-1])["status"] == status


def test_the_next_raster_is_inferred_while_the_last_is_blended(tmp_path, monkeypatch):
    import threading
    import time

    from tiledepth import stages

    small_rasters(tmp_path / "in")
    events: list[tuple[str, float]] = []
    lock = threading.Lock()
    in_model = []  # model calls running now, never more than one

    def model(batch):
        with lock:
            in_model.append(1)
            assert len(in_model) == 1, "two rasters called the model at once"
        time.sleep(0.01)
        with lock:
            in_model.pop()
            events.append(("call", time.perf_counter()))
        return batch[..., 0] * 0.5

    blend = stages.blend_and_write

    def slow_blend(*args, **kwargs):
        time.sleep(0.5)  # a slow output write: the next raster's model calls go on meanwhile
        blend(*args, **kwargs)
        events.append(("written", time.perf_counter()))

    monkeypatch.setattr(stages, "blend_and_write", slow_blend)
    records = tiledepth.batch([tmp_path / "in"], tmp_path / "out", model=model, **OPTS)
    assert [r.status for r in records] == ["done"] * 3
    assert [Path(r.input).name for r in records] == ["r0.tif", "r1.tif", "r2.tif"]
    written = [t for kind, t in events if kind == "written"]
    calls = [t for kind, t in events if kind == "call"]
    # the second raster's model calls (a coarse image and its tiles in batches of 2) were
    # done before the first was written (the third starts then: two rasters in flight)
    first_two = sum(1 + -(-r.tiles // OPTS["batch_size"]) for r in records[:2])
    assert sum(c < written[0] for c in calls) >= first_two
    for r in records:  # the same output as the raster run alone
        alone = tiledepth.run(r.input, tmp_path / "alone.tif", model=model, overwrite=True,
                              **OPTS)
        with rasterio.open(r.output) as a, rasterio.open(alone.output) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_the_next_raster_starts_before_the_last_model_call_of_the_one_before(tmp_path,
                                                                            monkeypatch):
    """It starts when a few batches of the raster before are left to predict, so its first
    tiles are ready when the model is done with those; calls never overlap; at most two
    rasters are in flight."""
    import threading
    import time

    from toy_models import Turns

    from tiledepth import stages
    from tiledepth.turns import RANK

    (tmp_path / "in").mkdir()
    for i in range(3):
        write_raster(tmp_path / "in" / f"r{i}.tif", depth_image(300, 340 + 10 * i))
    started, ended, told, next_started = {}, {}, threading.Event(), threading.Event()
    read, blend, inferred = stages.read_coarse_image, stages.blend_and_write, stages.inferred

    def read_coarse(*args, **kwargs):
        started[RANK.get()] = time.perf_counter()
        if RANK.get() == 1:
            next_started.set()
        return read(*args, **kwargs)

    def blend_and_write(*args, **kwargs):
        blend(*args, **kwargs)
        ended[RANK.get()] = time.perf_counter()

    def tell():
        if RANK.get() == 0:
            told.set()
        inferred()

    class Model(Turns):
        def predict(self, batch, keys):  # once told, wait (on a slow machine) for the next
            if RANK.get() == 0 and told.is_set():
                next_started.wait(5)
            return super().predict(batch, keys)

    monkeypatch.setattr(stages, "read_coarse_image", read_coarse)
    monkeypatch.setattr(stages, "blend_and_write", blend_and_write)
    monkeypatch.setattr(stages, "inferred", tell)
    model = Model(seconds=0.01, batch_size=2)
    records = tiledepth.batch([tmp_path / "in"], tmp_path / "out", model=model, **OPTS)
    assert [r.status for r in records] == ["done"] * 3
    assert not model.reentered
    calls = sorted(model.calls, key=lambda c: c[3])
    assert all(a[4] <= b[3] for a, b in zip(calls[:-1], calls[1:], strict=True))  # one at a time
    last = max(c[4] for c in calls if c[1] == 0)
    assert told.is_set() and started[1] < last  # the first two rasters overlap
    assert started[2] >= ended[0]  # the third starts once the first is written


def test_ctrl_c_in_a_pipelined_batch_stops_the_running_rasters_and_resumes(tmp_path):
    import signal
    import threading
    import time

    # Python's own Ctrl-C handler: an earlier test that left another would hide the signal
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    small_rasters(tmp_path / "in")
    out = tmp_path / "out"
    calls, sent = [], []

    def model(batch):  # Ctrl-C at the 12th of 14 calls (the first raster recorded, the last
        calls.append(len(batch))  # one running): a real SIGINT to the main thread, as a
        if len(calls) == 12:  # terminal sends it
            sent.append(len(calls))
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.3)  # the call goes on a while, as on a GPU: the raster is running
        return batch[..., 0] * 0.5

    try:  # (one coarse call a raster: the calls counted above)
        tiledepth.batch([tmp_path / "in"], out, model=model, anchor_calls=1, **OPTS)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(f"not interrupted: {len(calls)} model calls, SIGINT sent at call {sent}")
    assert not [t for t in threading.enumerate() if t.name.startswith("tiledepth-batch")]
    done = [r.status for r in read_manifest(out / MANIFEST_NAME)]
    assert done == ["done"] * len(done) and len(done) < 3
    assert len(list(out.glob(".*.tiledepth-*"))) >= 1  # the stopped run's checkpoint
    records = tiledepth.batch([tmp_path / "in"], out, resume=True, model=model, anchor_calls=1,
                              **OPTS)
    # recorded ones are kept, the stopped one is redone (one written but not yet recorded
    # when Ctrl-C came is checked and kept)
    statuses = [r.status for r in records]
    assert statuses[:len(done)] == ["skipped"] * len(done) and statuses[-1] == "done"
    assert set(statuses) == {"skipped", "done"} and len(statuses) == 3
    assert not list(out.glob(".*"))  # no checkpoint, partial output or lock left


def ctrl_c_as_the_first_raster_cleans_up(monkeypatch) -> list[Path]:
    """Ctrl-C sent to the main thread once the first raster of a batch, its output in place,
    leaves its checkpoint (``Checkpoint.__exit__`` without an error); the list it returns
    gets that checkpoint's folder."""
    import signal
    import threading
    import time

    from tiledepth.checkpoint import Checkpoint

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    sent: list[Path] = []
    close = Checkpoint.__exit__

    def exit_slowly(self, exc_type, exc, tb):
        if exc_type is None and not sent:  # the first raster done: its output in place
            sent.append(self.folder)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.3)  # the stop reaches the batch meanwhile
        return close(self, exc_type, exc, tb)

    monkeypatch.setattr(Checkpoint, "__exit__", exit_slowly)
    return sent


def test_ctrl_c_while_a_finished_raster_cleans_up_leaves_nothing_behind(tmp_path,
                                                                        monkeypatch):
    # Ctrl-C that lands while a raster of the batch, its output in place, removes its
    # checkpoint and lock: that raster ends complete, and a resume leaves no hidden file (a
    # stop raised in that cleanup left both, and the resume, finding the lock held, both)
    small_rasters(tmp_path / "in")
    out = tmp_path / "out"
    sent = ctrl_c_as_the_first_raster_cleans_up(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tiledepth.batch([tmp_path / "in"], out, model=lambda b: b[..., 0] * 0.5, **OPTS)
    name = sent[0].name[1:].split(".tiledepth-")[0]  # the raster that finished first
    assert (out / name).exists() and not sent[0].exists()
    assert not lock_path(out / name).exists()
    monkeypatch.undo()
    records = tiledepth.batch([tmp_path / "in"], out, resume=True,
                              model=lambda b: b[..., 0] * 0.5, **OPTS)
    assert {Path(r.output).name: r.status for r in records}[name] == "skipped"
    assert len(records) == 3
    assert not list(out.glob(".*"))


def test_ctrl_c_between_two_records_stops_the_running_raster(tmp_path, monkeypatch):
    # Ctrl-C that lands while the batch records a finished raster (not in the pipeline's
    # own waits) stops the raster running beside it, as one in the waits does; the batch
    # used to wait for that raster to finish
    import time

    from tiledepth import batchrun

    small_rasters(tmp_path / "in")
    calls = []

    def model(batch):  # the first raster is quick (4 calls), the others are slow
        calls.append(len(batch))
        if len(calls) > 4:
            time.sleep(0.3)
        return batch[..., 0] * 0.5

    def record(manifest, rec):
        raise KeyboardInterrupt  # at the first raster's record

    monkeypatch.setattr(batchrun, "append_record", record)
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        tiledepth.batch([tmp_path / "in"], out, model=model, **OPTS)
    assert (out / "r0.depth.tif").exists()
    assert not (out / "r1.depth.tif").exists()  # stopped, not run to its end
    assert not (out / "r2.depth.tif").exists()
    assert time.monotonic() - t0 < 30


def test_a_finished_raster_is_recorded_while_the_next_is_still_predicting(tmp_path):
    """A pipelined batch appended a finished raster's record only when the next one was near
    its last model calls (a Ctrl-C meanwhile left a complete output with no record): it is
    appended as soon as it ends, while the next one predicts, in order."""
    import time

    from tiledepth.turns import RANK

    small_rasters(tmp_path / "in")
    manifest = tmp_path / "out" / MANIFEST_NAME
    seen = {}  # rank -> the inputs in the manifest at that raster's first model call

    def recorded():
        return [Path(r.input).name for r in read_manifest(manifest)] if manifest.exists() \
            else []

    def model(batch):
        rank = RANK.get()
        if rank > 0 and rank not in seen:  # wait (5 s at most) for the raster before's record
            deadline = time.monotonic() + 5
            while f"r{rank - 1}.tif" not in recorded() and time.monotonic() < deadline:
                time.sleep(0.02)
            seen[rank] = recorded()
        return batch[..., 0] * 0.5

    records = tiledepth.batch([tmp_path / "in"], tmp_path / "out", model=model, **OPTS)
    assert [r.status for r in records] == ["done"] * 3
    assert seen == {1: ["r0.tif"], 2: ["r0.tif", "r1.tif"]}
    assert [Path(r.input).name for r in read_manifest(manifest)] == ["r0.tif", "r1.tif",
                                                                     "r2.tif"]


def test_ctrl_c_as_a_raster_finishes_records_it(tmp_path, monkeypatch):
    """Ctrl-C while a raster, its output in place, cleans up (the next one predicting): that
    raster ends complete and its record is appended before the batch stops (it had none:
    a complete output no record vouched for); the stopped one gets none."""
    import time

    small_rasters(tmp_path / "in")
    out = tmp_path / "out"

    def model(batch):
        time.sleep(0.02)  # the next raster predicts a while
        return batch[..., 0] * 0.5

    sent = ctrl_c_as_the_first_raster_cleans_up(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tiledepth.batch([tmp_path / "in"], out, model=model, **OPTS)
    assert sent[0].name.startswith(".r0.depth.tif")
    records = read_manifest(out / MANIFEST_NAME)
    assert [(Path(r.input).name, r.status) for r in records] == [("r0.tif", "done")]
    assert records[0].tiles > 0 and records[0].bytes == (out / "r0.depth.tif").stat().st_size
    assert not (out / "r1.depth.tif").exists()


# -- where outputs go, what a search finds (fixes of an audit of `tiledepth batch`) ----------

CLI_TOY = ["--model", "toy_models:red", "--tile-size", 96, "--no-progress"]


def put(path: Path, height: int, width: int) -> Path:
    """A small raster at ``path``, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_raster(path, depth_image(height, width))


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_named_files_are_placed_inside_the_output_folder_and_run_once(tmp_path, monkeypatch):
    """A listed ../other/b.tif was written to ../other/b.depth.tif beside the output folder
    (its place was taken under the common folder of all named files, ``..`` kept); the
    same file by two spellings ran twice."""
    proj = tmp_path / "proj"
    put(proj / "data" / "a.tif", 60, 60)
    put(tmp_path / "other" / "b.tif", 60, 60)
    (proj / "link.tif").symlink_to(proj / "data" / "a.tif")
    monkeypatch.chdir(proj)
    Path("list.txt").write_text("data/a.tif\n../other/b.tif\ndata/../data/a.tif\nlink.tif\n")
    found = find_inputs(["@list.txt", "./data/a.tif"])
    assert [(str(i.path), i.relative.as_posix()) for i in found] == [
        ("data/a.tif", "data/a.tif"), ("../other/b.tif", "b.tif")]
    result = invoke("batch", "@list.txt", "-o", "out", *CLI_TOY)
    assert result.exit_code == 0, result.output
    assert files_under(proj / "out") == ["b.depth.json", "b.depth.tif", "data/a.depth.json",
                                         "data/a.depth.tif", MANIFEST_NAME]
    assert files_under(tmp_path / "other") == ["b.tif"]  # nothing beside the output folder
    assert not (proj / "other").exists()
    assert [Path(r.output).relative_to("out").as_posix()
            for r in read_manifest(proj / "out" / MANIFEST_NAME)] == [
        "data/a.depth.tif", "b.depth.tif"]
    # an absolute path outside the current folder goes by its name alone, so two such
    # files of one name are refused (as two of one name in a folder are)
    put(tmp_path / "other" / "sub" / "b.tif", 60, 60)
    with pytest.raises(InputError, match=r"would both write b\.depth\.tif"):
        find_inputs([tmp_path / "other" / "b.tif", tmp_path / "other" / "sub" / "b.tif"])


def test_adding_a_list_entry_moves_no_output_and_no_shard(tmp_path, monkeypatch):
    """A named file's output was placed under the common folder of all named files: one more
    line in a list moved every output (f/a.tif: out/a.depth.tif, then out/f/a.depth.tif)
    and reshuffled the shards, so --shard jobs and --resume redid everything."""
    monkeypatch.chdir(tmp_path)
    for name in ["f/a.tif", "f/b.tif", "f/c.tif", "f/d.tif", "g/e.tif"]:
        put(tmp_path / name, 60, 60)
    base = ["f/a.tif", "f/b.tif", "f/c.tif", "f/d.tif"]
    Path("l1.txt").write_text("\n".join(base) + "\n")
    Path("l2.txt").write_text("\n".join(base + ["g/e.tif"]) + "\n")
    Path("l3.txt").write_text("\n".join(base + ["missing/zz.tif"]) + "\n")

    def placed(inputs):
        return {str(i.path): (i.relative.as_posix(), i.output("out").as_posix(),
                              [[s for s in range(n) if in_shard(i.relative, s, n)]
                               for n in (2, 3, 4)])
                for i in find_inputs(inputs)}

    first = placed(["@l1.txt"])
    assert first["f/a.tif"][:2] == ("f/a.tif", "out/f/a.depth.tif")
    for more in (["@l2.txt"], ["@l3.txt"], ["@l1.txt", "g/e.tif"], [*base, "g/e.tif"],
                 ["@l1.txt", str(tmp_path / "g" / "e.tif")]):
        again = placed(more)
        assert {k: again[k] for k in first} == first, more
    assert placed(base) == first  # named on the command line, as listed
    # two shard jobs over the list, then over the list with one more line, resumed: the
    # outputs of the first run are kept, only the new file is done
    for i in range(2):
        assert invoke("batch", "@l1.txt", "-o", "out", "--shard", f"{i}/2",
                      *CLI_TOY).exit_code == 0
    for i in range(2):
        assert invoke("batch", "@l2.txt", "-o", "out", "--shard", f"{i}/2", "--resume",
                      *CLI_TOY).exit_code == 0
    latest = read_manifest(Path("out") / MANIFEST_NAME)[4:]
    assert sorted((r.input, r.status) for r in latest) == [
        ("f/a.tif", "skipped"), ("f/b.tif", "skipped"), ("f/c.tif", "skipped"),
        ("f/d.tif", "skipped"), ("g/e.tif", "done")]
    assert len(list(Path("out").rglob("*.depth.tif"))) == 5


def test_batch_takes_urls_as_run_does(tmp_path, http_root, monkeypatch):
    """``Path("http://h/x.tif")`` folds the ``//``: every URL was "no such file"."""
    root, base = http_root.root, http_root.base
    for name, h in [("x0.tif", 100), ("sub/x1.tif", 110), ("x2.tif", 120)]:
        put(root / name, h, 100)
    monkeypatch.chdir(tmp_path)
    Path("urls.txt").write_text(f"# remote\n{base}/x2.tif\n{base}/x0.tif\n")
    urls = [f"{base}/x0.tif", f"/vsicurl/{base}/sub/x1.tif", "@urls.txt"]
    found = find_inputs(urls)  # the URL repeated in the list is one input
    assert [(i.path, i.relative.as_posix()) for i in found] == [
        (f"{base}/x0.tif", "x0.tif"), (f"/vsicurl/{base}/sub/x1.tif", "x1.tif"),
        (f"{base}/x2.tif", "x2.tif")]
    result = invoke("batch", *urls, "-o", "out", *CLI_TOY)
    assert result.exit_code == 0, result.output
    assert [(r.input, r.status) for r in read_manifest(Path("out") / MANIFEST_NAME)] == [
        (f"{base}/x0.tif", "done"), (f"/vsicurl/{base}/sub/x1.tif", "done"),
        (f"{base}/x2.tif", "done")]
    for name in ("x0", "sub/x1", "x2"):  # each the map a run of the local file makes
        local = tiledepth.run(root / f"{name}.tif", tmp_path / "local.tif", overwrite=True,
                              model="toy_models:red", tile_size=96)
        np.testing.assert_allclose(read(Path("out") / f"{Path(name).name}.depth.tif"),
                                   read(local.output), atol=1e-6)
    result = invoke("batch", *urls, "-o", "out", "--resume", *CLI_TOY)
    assert result.exit_code == 0, result.output
    assert [r.status for r in read_manifest(Path("out") / MANIFEST_NAME)[3:]] == ["skipped"] * 3


def test_a_folder_search_follows_links_to_folders_and_ends_on_a_loop(tmp_path):
    """os.walk does not follow links: a survey assembled from links to its flights' folders
    was skipped silently."""
    survey = tmp_path / "survey"
    put(survey / "a" / "x.tif", 60, 60)
    put(tmp_path / "flight2" / "z.tif", 60, 60)
    (survey / "link").symlink_to(tmp_path / "flight2")
    (survey / "again").symlink_to(tmp_path / "flight2")  # one folder, searched once
    (survey / "a" / "loop").symlink_to(survey)  # a link to a folder above: no endless walk
    (survey / "out").mkdir()
    (survey / "out_link").symlink_to(survey / "out")  # the output folder, by another path
    put(survey / "out" / "old.tif", 40, 40)
    found = find_inputs([survey], exclude=survey / "out")
    assert [i.relative.as_posix() for i in found] == ["a/x.tif", "again/z.tif"]
    result = invoke("batch", survey, "-o", survey / "out", *CLI_TOY)
    assert result.exit_code == 0, result.output
    assert [p for p in files_under(survey / "out") if p.endswith(".tif")] == [
        "a/x.depth.tif", "again/z.depth.tif", "old.tif"]


def test_glob_double_star_matches_any_number_of_folders_none_included(tmp_path):
    """``**`` was a ``*`` (PurePath.match before Python 3.13): ``**/*.tif`` missed the top
    folder's files, ``a/**/*.tif`` missed a/x.tif."""
    survey = tmp_path / "s"
    for name in ["top.tif", "a/x.tif", "a/b/y.tif", "c/w.tif"]:
        put(survey / name, 50, 50)

    def names(glob):
        return [i.relative.as_posix() for i in find_inputs([survey], glob=glob)]

    assert names("**/*.tif") == ["top.tif", "a/x.tif", "a/b/y.tif", "c/w.tif"]
    assert names("a/**/*.tif") == ["a/x.tif", "a/b/y.tif"]
    assert names("A/**/B/*.TIF") == ["a/b/y.tif"]
    assert names("b/*.tif") == ["a/b/y.tif"]  # matched at the end of the path, as before
    result = invoke("batch", survey, "-o", tmp_path / "out", "--glob", "a/**/*.tif", *CLI_TOY)
    assert result.exit_code == 0, result.output
    assert [p for p in files_under(tmp_path / "out") if p.endswith(".tif")] == [
        "a/b/y.depth.tif", "a/x.depth.tif"]


def test_a_list_saved_with_a_byte_order_mark_and_crlf(tmp_path, monkeypatch):
    """Notepad's UTF-8 starts with a BOM: the first entry was "\\ufeffs/top.tif", missing."""
    monkeypatch.chdir(tmp_path)
    put(tmp_path / "s" / "top.tif", 60, 60)
    put(tmp_path / "s" / "a" / "x.tif", 60, 60)
    Path("bom.txt").write_bytes("\ufeffs/top.tif\r\ns/a/x.tif\r\n".encode())
    assert [str(i.path) for i in find_inputs(["@bom.txt"])] == ["s/top.tif", "s/a/x.tif"]
    result = invoke("batch", "@bom.txt", "-o", "out", *CLI_TOY)
    assert result.exit_code == 0, result.output
    assert [(r.input, r.status) for r in read_manifest(Path("out") / MANIFEST_NAME)] == [
        ("s/top.tif", "done"), ("s/a/x.tif", "done")]


def test_a_manifest_that_cannot_be_written_stops_the_batch_before_any_input(tmp_path):
    """The manifest's path a folder: outputs were written, then "unexpected
    IsADirectoryError" (exit 1), with no record of them."""
    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    (out / MANIFEST_NAME).mkdir(parents=True)
    for extra in ([], ["--mosaic"]):
        result = invoke("batch", survey, "-o", out, *CLI_TOY, *extra)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and str(out / MANIFEST_NAME) in lines[0], result.output
        assert "cannot write the manifest" in lines[0]
        assert files_under(out) == []  # no output made
    with pytest.raises(OutputError, match="cannot write the manifest"):
        tiledepth.batch([survey], out, model="toy_models:red")


def test_parse_shard_takes_a_pair_of_ints_only(tmp_path):
    """(0.5, 2) made an empty shard silently, ('1', '4') a TypeError deep in in_shard."""
    for bad in [(0.5, 2), ("1", "4"), (True, 2), (0, 2.0), (1,), (0, 1, 2), 3, None]:
        with pytest.raises(OptionError, match="shard must be"):
            parse_shard(bad)
    assert parse_shard((1, 4)) == (1, 4) and parse_shard([0, 2]) == (0, 2)
    assert parse_shard((np.int64(1), np.int32(3))) == (1, 3)
    assert all(type(v) is int for v in parse_shard((np.int64(1), np.int64(3))))
    survey = small_rasters(tmp_path / "survey")
    with pytest.raises(OptionError, match="shard must be"):
        tiledepth.batch([survey], tmp_path / "out", shard=(0.5, 2), model="toy_models:red")
    assert not (tmp_path / "out").exists()  # refused before anything is made



@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs byte file names")
def test_a_file_name_that_is_not_utf8_fails_alone(tmp_path):
    """A Latin-1 name ('\xe9t\xe9.tif') crashed the whole batch (UnicodeEncodeError in
    the shard hash), even unsharded; it is one record now (failed in one line, or done where
    it opens), and every UTF-8 name keeps the shard it had."""
    import hashlib

    names = [f"flight{i % 7}/DJI_{i:04d}.JPG" for i in range(200)] + ["été/ß.tif", "日本/x.tif"]
    for name in names:  # the shard of a UTF-8 name is the SHA-1 of its UTF-8 bytes, as before
        digest = hashlib.sha1(name.encode("utf-8")).digest()
        assert in_shard(name, int.from_bytes(digest[:8], "big") % 5, 5)
    survey = small_rasters(tmp_path / "survey")
    bad = (bytes(survey) + b"/\xe9t\xe9.tif").decode(errors="surrogateescape")
    (survey / "r0.tif").rename(bad)
    odd = PurePosixPath(bad).name
    assert sum(in_shard(odd, i, 2) for i in range(2)) == 1  # in exactly one shard
    records = tiledepth.batch([survey], tmp_path / "out", model="toy_models:red", **OPTS)
    assert sorted(Path(r.input).name for r in records) == sorted(["r1.tif", "r2.tif", odd])
    for record in records:
        if Path(record.input).name == odd:
            assert record.status == "done" or "\n" not in record.error
        else:
            assert record.status == "done"
    assert len(read_manifest(tmp_path / "out" / MANIFEST_NAME)) == 3


def test_a_ray_batch_whose_outputs_all_exist_does_not_start_ray(tmp_path, monkeypatch):
    """Without --resume or --overwrite each existing output fails its input before any model
    call, and the local executor never loads the model; Ray and its actors were started all
    the same, and a model that does not load stopped the batch (exit 2, not 1)."""
    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    opts = dict(OPTS, model="toy_models:red")
    assert {r.status for r in tiledepth.batch([survey], out, **opts)} == {"done"}
    monkeypatch.setitem(sys.modules, "ray", None)  # starting Ray would raise DependencyError
    for executor in ("local", "ray"):
        records = tiledepth.batch([survey], out, executor=executor, **opts)
        assert [r.status for r in records] == ["failed"] * 3
        assert all("already exists; pass --resume" in r.error for r in records)
        result = invoke("batch", survey, "-o", out, "--model", "no_such_mod:fn",
                        "--tile-size", 96, "--executor", executor, "--no-progress")
        assert result.exit_code == 1, result.output


def test_batch_says_the_options_of_one_raster_are_not_its(tmp_path):
    """``batch(..., bounds=...)`` said "unknown option 'bounds' (did you mean 'bands'?)":
    bounds, bounds_crs, aoi and asset are run's options of one raster, which batch refuses
    (docs/surveys.md), before it makes the output folder; what to run instead is named."""
    from toy_models import red

    src = tmp_path / "in"
    src.mkdir()
    write_raster(src / "a.tif", depth_image(64, 64))
    for key, value in [("bounds", (0, 0, 1, 1)), ("bounds_crs", "EPSG:4326"),
                       ("aoi", "area.gpkg"), ("asset", "visual")]:
        with pytest.raises(OptionError) as caught:
            tiledepth.batch(src, tmp_path / "out", model=red, tile_size=64, **{key: value})
        message = str(caught.value)
        assert message.startswith(f"{key}: is an option of one raster (bounds, bounds_crs, "
                                  "aoi, asset), which batch does not take; run tiledepth.run "
                                  "on each raster"), message
        assert "did you mean" not in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_batch_says_where_its_outputs_go_when_given_output(tmp_path):
    """``batch(..., output=...)`` said "unknown option 'output' (did you mean
    'output_kind'?)": batch writes into its output folder, its second argument."""
    from toy_models import red

    with pytest.raises(OptionError, match=r"^output: batch writes one output per input into "
                                          r"output_dir, its second argument"):
        tiledepth.batch(tmp_path, tmp_path / "out", model=red, output=tmp_path / "x.tif")
    assert not (tmp_path / "out").exists()


def test_resume_redoes_an_output_whose_bands_the_uncertainty_option_does_not_make(tmp_path):
    """``--resume --uncertainty`` kept one-band outputs (no uncertainty band) as "skipped",
    and a resume without it kept two-band ones: an output is kept only with the bands the
    run makes (docs/surveys.md), else redone."""
    from toy_models import RedWithSpread

    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    plain = dict(OPTS, model=RedWithSpread())
    spread = dict(plain, uncertainty=True, ensemble=3)

    def bands():
        counts = []
        for i in range(3):
            with rasterio.open(out / f"r{i}.depth.tif") as ds:
                counts.append((ds.count, ds.descriptions[-1]))
        return counts

    assert {r.status for r in tiledepth.batch([survey], out, **plain)} == {"done"}
    assert bands() == [(1, "depth")] * 3
    records = tiledepth.batch([survey], out, resume=True, **spread)
    assert [r.status for r in records] == ["done"] * 3  # redone with the band, not skipped
    assert bands() == [(2, "uncertainty")] * 3
    r0, src0 = out / "r0.depth.tif", survey / "r0.tif"
    assert check_output(r0, src0) is None  # either kind without the option, as before
    assert check_output(r0, src0, uncertainty=True) is None
    assert [r.status for r in tiledepth.batch([survey], out, resume=True, **spread)] == \
        ["skipped"] * 3
    assert check_output(r0, src0, uncertainty=False) == \
        "an uncertainty band, which this run (no --uncertainty) does not make"
    records = tiledepth.batch([survey], out, resume=True, **plain)  # and back: redone
    assert [r.status for r in records] == ["done"] * 3
    assert bands() == [(1, "depth")] * 3
    assert check_output(r0, src0, uncertainty=True) == \
        "no uncertainty band, which --uncertainty adds"


def test_a_config_resume_key_is_refused_by_batch(tmp_path):
    """A config's ``resume: false`` silently turned off each input's checkpoint resume in
    batch (which takes no --no-resume: docs/surveys.md); it is refused in one line, as the
    options batch does not take are, before the output folder is made."""
    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    config = tmp_path / "cfg.yaml"
    config.write_text("tile_size: 96\nresume: false\n")
    with pytest.raises(OptionError) as caught:
        tiledepth.batch([survey], out, model="toy_models:red", config=config)
    message = str(caught.value)
    assert message.startswith(f"{config}: resume: false: batch always resumes each input's "
                              "checkpoint"), message
    assert "\n" not in message
    result = invoke("batch", survey, "-o", out, *CLI_TOY, "--config", config)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
    config.write_text("tile_size: 96\n")  # a config without the key runs as before
    records = tiledepth.batch([survey], out, model="toy_models:red", config=config)
    assert [r.status for r in records] == ["done"] * 3


def test_batch_skips_a_config_resume_true_as_in_the_shipped_presets(tmp_path, caplog):
    """configs/default.yaml says ``resume: true``: batch refused it (and every config with
    the key), though true is what batch does anyway; it is skipped with an info line and the
    config's other options apply."""
    survey = small_rasters(tmp_path / "survey")
    config = tmp_path / "cfg.yaml"
    config.write_text("tile_size: 96\nresume: true\n")
    with caplog.at_level("INFO", logger="tiledepth.batchrun"):
        records = tiledepth.batch([survey], tmp_path / "out", model="toy_models:red",
                                  config=config)
    assert [r.status for r in records] == ["done"] * 3
    config.write_text("tile_size: 96\n")
    plain = tiledepth.batch([survey], tmp_path / "plain", model="toy_models:red", config=config)
    assert [r.tiles for r in records] == [r.tiles for r in plain]
    assert [r.tiles for r in plain] != [r.tiles for r in tiledepth.batch(
        [survey], tmp_path / "native", model="toy_models:red")]  # the config's tile_size counts
    assert f"{tmp_path / 'cfg.yaml'}: resume: true skipped" in caplog.text
    shipped = Path(__file__).parents[1] / "configs" / "default.yaml"
    result = invoke("batch", survey, "-o", tmp_path / "shipped", *CLI_TOY, "--config", shipped)
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd")
def test_batch_reads_a_config_from_a_pipe_once(tmp_path):
    """``--config <(echo "tile_size: 96")``: batch read the config twice (its resume check,
    then the options), the second read of the pipe came back empty and the config was
    silently ignored; it is read once."""
    import os

    survey = small_rasters(tmp_path / "survey")
    config = tmp_path / "cfg.yaml"
    config.write_text("tile_size: 96\n")
    want = [r.tiles for r in tiledepth.batch([survey], tmp_path / "file",
                                             model="toy_models:red", config=config)]
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"tile_size: 96\n")
        os.close(write_end)
        records = tiledepth.batch([survey], tmp_path / "pipe", model="toy_models:red",
                                  config=f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert [r.tiles for r in records] == want


def test_an_empty_input_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch):
    """``tiledepth batch "$SURVEY"`` with SURVEY unset searched and ran the whole current
    folder (Path("") is "."); it is refused in one line (exit 2), nothing made."""
    survey = small_rasters(tmp_path / "survey")
    monkeypatch.chdir(survey)
    for inputs in ("", [""], ["r0.tif", ""]):
        with pytest.raises(InputError, match=r"^an empty input was given; name a file, folder "
                                             r"or @list\.txt$"):
            find_inputs(inputs)
    out = tmp_path / "out"
    for args in ([""], ["r1.tif", ""]):
        result = invoke("batch", *args, "-o", out, *CLI_TOY)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == "tiledepth: error: an empty input was given; name a " \
                                        "file, folder or @list.txt"
    with pytest.raises(InputError, match="an empty input"):
        tiledepth.batch("", out, model="toy_models:red")
    assert not out.exists() and files_under(survey) == ["r0.tif", "r1.tif", "r2.tif"]
    Path("list.txt").write_text("r0.tif\n\n   \nr2.tif\n")  # a list's blank lines: skipped
    assert [i.relative.as_posix() for i in find_inputs(["@list.txt"])] == ["r0.tif", "r2.tif"]


def test_a_hard_link_to_a_file_runs_once(tmp_path):
    """docs/surveys.md: the same file named twice, by any spelling (a link to it), runs once;
    a hard link (same inode, its own real path) ran a second time. The first spelling names
    the output; a copy is another file."""
    import os
    import shutil

    survey = small_rasters(tmp_path / "survey")
    os.link(survey / "r0.tif", survey / "r0_hard.tif")
    shutil.copy(survey / "r1.tif", survey / "r1_copy.tif")
    names = [i.relative.as_posix() for i in find_inputs([survey])]
    assert names == ["r0.tif", "r1.tif", "r1_copy.tif", "r2.tif"]
    found = find_inputs([survey / "r0_hard.tif", survey / "r2.tif", survey / "r0.tif"])
    assert [i.relative.as_posix() for i in found] == ["r0_hard.tif", "r2.tif"]
    out = tmp_path / "out"
    records = tiledepth.batch([survey], out, model="toy_models:red", **OPTS)
    assert [(Path(r.input).name, r.status) for r in records] == [
        ("r0.tif", "done"), ("r1.tif", "done"), ("r1_copy.tif", "done"), ("r2.tif", "done")]
    assert not (out / "r0_hard.depth.tif").exists()


def test_a_mistyped_input_makes_no_output_folder(tmp_path):
    """A typo in INPUT was refused (exit 2) after the -o folder was made: the inputs are
    found first now."""
    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "new" / "out"
    with pytest.raises(InputError, match="typo: no such file or folder"):
        tiledepth.batch([survey, tmp_path / "typo"], out, model="toy_models:red")
    with pytest.raises(InputError, match="no input rasters found"):
        tiledepth.batch([survey], out, glob="*.jp2", model="toy_models:red")
    for extra in ([], ["--mosaic"]):
        result = invoke("batch", tmp_path / "typo", "-o", out, *CLI_TOY, *extra)
        assert result.exit_code == 2 and "no such file or folder" in result.output
    assert not (tmp_path / "new").exists()
    records = tiledepth.batch([survey], out, model="toy_models:red", **OPTS)  # made when run
    assert [r.status for r in records] == ["done"] * 3 and (out / MANIFEST_NAME).exists()


def test_the_summary_total_is_the_batch_wall_time_not_the_overlapping_sum(tmp_path,
                                                                          monkeypatch):
    """A pipelined batch starts an input while the one before is written: their records'
    seconds overlap and add up to more than the batch took, which the summary's total
    showed as the time spent. ``tiledepth batch``'s total is the batch's wall time; the
    status rows still sum each input's own seconds."""
    import time

    from tiledepth import stages

    small_rasters(tmp_path / "in")
    blend = stages.blend_and_write

    def slow_blend(*args, **kwargs):
        time.sleep(0.5)  # a slow write: the next raster runs meanwhile
        blend(*args, **kwargs)

    monkeypatch.setattr(stages, "blend_and_write", slow_blend)
    t0 = time.perf_counter()
    res = invoke("batch", tmp_path / "in", "-o", tmp_path / "out", "--model", "toy_models:red",
                 "--tile-size", "96", "--batch-size", "2", "--no-progress")
    wall = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    records = read_manifest(tmp_path / "out" / MANIFEST_NAME)
    assert [r.status for r in records] == ["done"] * 3
    own = sum(r.seconds for r in records)
    assert own > wall + 0.3  # the second and third overlapped the write before theirs
    rows = {line.split()[0]: line.split() for line in res.output.splitlines()
            if line.split() and line.split()[0] in ("done", "total")}
    tiles = str(sum(r.tiles for r in records))
    assert rows["done"][:3] == ["done", "3", tiles]
    assert float(rows["done"][3]) == pytest.approx(own, abs=0.051)
    assert rows["total"][:3] == ["total", "3", tiles]
    assert max(r.seconds for r in records) - 0.05 <= float(rows["total"][3]) <= wall + 0.05


def test_resume_keeps_the_complete_output_of_a_stac_item(tmp_path):
    """check_output opened the item's JSON as the input raster: a resume redid every STAC
    item input, its complete output never kept."""
    (tmp_path / "img").mkdir()
    write_raster(tmp_path / "img" / "v.tif", depth_image(150, 170))
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "x", "assets": {
        "visual": {"href": "img/v.tif", "type": "image/tiff; application=geotiff"}}}))
    out = tmp_path / "out"
    (done,) = tiledepth.batch([item], out, model="toy_models:red", **OPTS)
    assert done.status == "done"
    assert check_output(out / "item.depth.tif", item) is None
    # nothing to redo: the model is never loaded
    (again,) = tiledepth.batch([item], out, resume=True, model="no_such_mod:fn", **OPTS)
    assert again.status == "skipped" and again.height == 150


def test_resume_checks_a_remote_input_within_the_timeouts(tmp_path):
    """check_output opened a URL input without the remote settings (no timeouts): a server
    that accepts and never answers hung `batch --resume` for ever, deaf to SIGTERM."""
    import subprocess
    import time

    from conftest import child_env, silent_server

    src = write_raster(tmp_path / "a.tif", depth_image(64, 64))
    out = tiledepth.run(src, tmp_path / "a.depth.tif", model="toy_models:red", **OPTS).output
    server, base = silent_server()
    url = f"{base}/a.tif"
    # the run's timeout shortened (30 s: no byte for that long), in a child: GDAL's own
    # default (none) would hang this process for ever
    code = ("from tiledepth import sources; sources.REMOTE_OPTIONS['GDAL_HTTP_LOW_SPEED_TIME']"
            " = '1'; from tiledepth.survey import check_output; "
            f"print(check_output({str(out)!r}, {url!r}))")
    env = {k: v for k, v in child_env().items() if not k.startswith("GDAL_HTTP")}
    start = time.monotonic()
    try:
        said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=30, env=env)
    finally:
        server.close()
    assert time.monotonic() - start < 30
    assert said.stdout.startswith("cannot read it (") and "too slow" in said.stdout, said


def test_the_manifest_and_the_summary_hold_no_credentials(tmp_path, http_root):
    """A URL's password and signature were written verbatim into the manifest's input and
    error fields and the summary's "failed:" lines."""
    from tiledepth.survey import summary

    root, base = http_root.root, http_root.base
    write_raster(root / "a.tif", depth_image(150, 170))
    user = base.replace("http://", "http://alice:hunter2@")
    signed = f"{base}/a.tif?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=5ECRET"
    out = tmp_path / "out"
    records = tiledepth.batch([signed, f"{user}/none.tif"], out, model="toy_models:red",
                              **OPTS)
    assert [r.status for r in records] == ["done", "failed"]
    assert records[0].input == \
        f"{base}/a.tif?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
    assert records[1].input == f"{base}/none.tif"
    text = (out / MANIFEST_NAME).read_text() + summary(records)
    assert "hunter2" not in text and "5ECRET" not in text and "AKIDEXAMPLE" not in text
    assert f"failed: {base}/none.tif: " in summary(records)


def test_batch_refuses_an_input_that_another_inputs_output_would_replace(tmp_path):
    """`batch a.tif a.depth.tif -o .` replaced the input a.depth.tif with a's map, then ran
    that as an input (a run checks only its own input): refused in one line before anything
    is written, with or without --overwrite; so is an input that a preview replaces, or
    that --overwrite removes as an old output's companion (a PNG frame b.depth.png)."""
    import re

    from tiledepth.safe_write import mark_png

    root = tmp_path / "s"
    root.mkdir()
    a, a_depth = root / "a.tif", root / "a.depth.tif"
    b, b_png = root / "b.tif", root / "b.depth.png"
    for path in (a, a_depth, b):
        write_raster(path, depth_image(64, 80))
    with rasterio.open(b_png, "w", driver="PNG", width=80, height=64, count=3,
                       dtype="uint8", crs=CRS, transform=TRANSFORM) as ds:
        ds.write(depth_image(64, 80))
    mark_png(b_png)  # a preview tiledepth wrote (a user's PNG there stays: not refused)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    opts = dict(OPTS, model="toy_models:red")
    replaced = rf"^{re.escape(str(a_depth))}: is the input {re.escape(str(a_depth))} of this " \
               rf"batch, and the output of {re.escape(str(a))} would replace it; choose another " \
               r"output folder \(-o\) or leave it out$"
    for kwargs in ({}, {"overwrite": True}, {"resume": True}, {"mosaic": True}):
        with pytest.raises(OutputError, match=replaced):
            tiledepth.batch([a, a_depth], root, **kwargs, **opts)
    with pytest.raises(OutputError, match=rf"^{re.escape(str(b_png))}: is the input .* and "
                       rf"replacing the old output of {re.escape(str(b))} would remove it"):
        tiledepth.batch([b, b_png], root, overwrite=True, **opts)
    with pytest.raises(OutputError, match=rf"^{re.escape(str(b_png))}: is the input .* and "
                       rf"the preview of {re.escape(str(b))} would replace it"):
        tiledepth.batch([b, b_png], root, preview=True, **opts)
    with pytest.raises(OutputError, match="of this batch"):  # another shard's input too
        tiledepth.batch([a, a_depth], root, shard="1/2", **opts)
    res = CliRunner().invoke(main, ["batch", str(a), str(a_depth), "-o", str(root),
                                    "--overwrite", "--model", "toy_models:red"])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "a.depth.tif: is the input" in res.output
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # (no manifest either)
    # each output beside the inputs, none of them an input: written
    records = tiledepth.batch([b, b_png], root, **opts)
    assert [r.status for r in records] == ["done", "done"]
    assert b_png.read_bytes() == before["b.depth.png"]


def test_batch_overwrite_takes_a_users_png_that_the_run_keeps_not_a_preview(tmp_path):
    """``batch a.tif a.depth.png -o . --overwrite`` was refused ("replacing the old output
    of a.tif would remove it"), though the run of a.tif keeps a PNG at its preview's name
    that tiledepth did not write (and its .aux.xml): a user's PNG input now runs, kept byte
    for byte, the old output replaced; a preview tiledepth wrote there, which the run does
    remove, is still refused before anything is written."""
    import re

    from tiledepth.preview import write_preview

    a, png = tmp_path / "a.tif", tmp_path / "a.depth.png"
    write_raster(a, depth_image(64, 80))
    with rasterio.open(png, "w", driver="PNG", width=80, height=64, count=3, dtype="uint8",
                       crs=CRS, transform=TRANSFORM) as ds:  # the user's frame
        ds.write(depth_image(64, 80)[::-1].copy())
    opts = dict(OPTS, model="toy_models:red")
    old = write_raster(tmp_path / "a.depth.tif", np.zeros((1, 64, 80), np.float32)).read_bytes()
    user = {n: (tmp_path / n).read_bytes() for n in ("a.depth.png", "a.depth.png.aux.xml")}
    res = CliRunner().invoke(main, ["batch", str(a), str(png), "-o", str(tmp_path),
                                    "--overwrite", "--model", "toy_models:red",
                                    "--tile-size", "96", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {n: (tmp_path / n).read_bytes() for n in user} == user
    assert (tmp_path / "a.depth.tif").read_bytes() != old  # replaced
    assert (tmp_path / "a.depth.depth.tif").exists()  # the PNG's own output
    # a preview tiledepth wrote at that name: the run would remove it, so refused
    for path in (png, tmp_path / "a.depth.depth.tif", tmp_path / "a.depth.depth.json"):
        path.unlink()
    write_preview(tmp_path / "a.depth.tif", png, overwrite=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match=rf"^{re.escape(str(png))}: is the input .* and "
                       rf"replacing the old output of {re.escape(str(a))} would remove it"):
        tiledepth.batch([a, png], tmp_path, overwrite=True, **opts)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_stopped_batch_mosaic_does_not_send_to_an_empty_manifest(tmp_path, monkeypatch):
    """`batch --mosaic` stopped (Ctrl-C) after cutting one output said "finished outputs are
    kept (see the manifest)", but it appends its records only once every output is cut: the
    manifest listed none. The line says so now; --resume checks and records them."""
    import dataclasses

    from tiledepth import mosaic

    survey = small_rasters(tmp_path / "survey")
    out = tmp_path / "out"
    split = mosaic.split_outputs

    def stopped_after_the_first(fused, members, targets, *, overwrite, **kwargs):
        split(fused, dataclasses.replace(members, members=members.members[:1]), targets[:1],
              overwrite=overwrite[:1], **kwargs)
        raise KeyboardInterrupt  # Ctrl-C once the first output is cut

    monkeypatch.setattr(mosaic, "split_outputs", stopped_after_the_first)
    result = invoke("batch", survey, "-o", out, *CLI_TOY, "--mosaic")
    assert result.exit_code == 130
    assert result.output.splitlines() == [
        "tiledepth: batch stopped; the outputs cut so far and the fusion's work are kept, but "
        "with --mosaic the manifest lists none until a batch ends; rerun with --resume to go "
        "on (it checks and records them)"]
    assert read_manifest(out / MANIFEST_NAME) == [] and (out / "r0.depth.tif").exists()
    monkeypatch.setattr(mosaic, "split_outputs", split)
    result = invoke("batch", survey, "-o", out, *CLI_TOY, "--mosaic", "--resume")
    assert result.exit_code == 0, result.output
    assert [(Path(r.input).name, r.status) for r in read_manifest(out / MANIFEST_NAME)] == [
        ("r0.tif", "skipped"), ("r1.tif", "done"), ("r2.tif", "done")]
