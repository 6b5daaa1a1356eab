"""tiledepth.mosaic: many files fused as one raster; --split cuts one output per file."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import TRANSFORM, depth_image, fail_placing, write_raster
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import InputError, OptionError, OutputError
from tiledepth.mosaic import build_vrt, run_mosaic
from tiledepth.survey import MANIFEST_NAME, read_manifest

OPTS = dict(model="toy_models:affine_red", tile_size=96, overlap=0.25, coarse_size=96,
            batch_size=4)
H, W = 192, 224
#: (row, col) of each quadrant
CORNERS = [(0, 0), (0, W // 2), (H // 2, 0), (H // 2, W // 2)]


def quadrants(folder, image):
    """Write the four quadrants of ``image`` (3, H, W) as GeoTIFFs on its grid."""
    folder.mkdir(exist_ok=True)
    h, w = image.shape[1] // 2, image.shape[2] // 2
    return [write_raster(folder / f"q{i}.tif", image[:, r:r + h, c:c + w],
                         transform=window_transform(Window(c, r, w, h), TRANSFORM))
            for i, (r, c) in enumerate(CORNERS)]


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def survey(tmp_path):
    image = depth_image(H, W)
    whole = write_raster(tmp_path / "whole.tif", image)
    return whole, quadrants(tmp_path / "tiles", image)


def test_mosaic_of_quadrants_equals_the_whole_run_and_split_cuts_it(tmp_path, survey):
    whole, tiles = survey
    expected = _read(tiledepth.run(whole, tmp_path / "whole.depth.tif", **OPTS).output)
    fused = run_mosaic(tiles[::-1], tmp_path / "mosaic.tif", **OPTS)  # order does not matter
    assert (fused.height, fused.width) == (H, W)
    np.testing.assert_allclose(_read(fused.output), expected, atol=1e-4)
    with rasterio.open(fused.output) as ds, rasterio.open(whole) as src:
        assert ds.transform == src.transform and ds.crs == src.crs
    outputs = run_mosaic(tiles, tmp_path / "split", split=True, **OPTS)
    assert [p.name for p in outputs] == [f"q{i}.depth.tif" for i in range(4)]
    for out, tile, (r, c) in zip(outputs, tiles, CORNERS, strict=True):
        np.testing.assert_allclose(_read(out), expected[r:r + H // 2, c:c + W // 2], atol=1e-4)
        with rasterio.open(out) as ds, rasterio.open(tile) as src:
            assert (ds.transform, ds.shape) == (src.transform, src.shape)
            assert "TILEDEPTH_VERSION" in ds.tags()
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == \
        [f"q{i}.depth.tif" for i in range(4)]  # the fused map and its report are gone


def test_split_outputs_keep_the_units_and_get_their_own_previews(tmp_path, survey):
    """A metric model's split outputs are in metres as the fused map is, and --preview gives
    each its own PNG; the fused map's preview is removed with it (the units were dropped,
    and the fused map's preview was left behind while no output got one)."""
    _, tiles = survey
    opts = dict(OPTS, model="toy_models:metric_red")
    outputs = run_mosaic(tiles, tmp_path / "split", split=True, preview=True, **opts)
    for out in outputs:
        with rasterio.open(out) as ds, rasterio.open(out.with_suffix(".png")) as png:
            assert ds.units == ("metre",)
            assert png.transform == ds.transform  # the preview of this output
    names = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert names == sorted([f"q{i}.depth.{ext}" for i in range(4)
                            for ext in ("tif", "png", "png.aux.xml")])
    records = tiledepth.batch(tiles, tmp_path / "b", mosaic=True, preview=True, **opts)
    assert {r.status for r in records} == {"done"}
    assert not list((tmp_path / "b").glob(".tiledepth-mosaic*"))
    for i in range(4):
        with rasterio.open(tmp_path / "b" / f"q{i}.depth.tif") as ds:
            assert ds.units == ("metre",)
        assert (tmp_path / "b" / f"q{i}.depth.png").exists()


def test_a_gap_between_files_is_masked(tmp_path):
    image = depth_image(H, W)
    tiles = quadrants(tmp_path / "tiles", image)
    mosaic = build_vrt([tiles[0], tiles[3]])  # two diagonal quadrants: two corners empty
    with rasterio.open(mosaic.vrt) as ds:
        mask = ds.dataset_mask()
    assert mask[:H // 2, :W // 2].all() and mask[H // 2:, W // 2:].all()
    assert not mask[:H // 2, W // 2:].any() and not mask[H // 2:, :W // 2].any()
    out = _read(run_mosaic([tiles[0], tiles[3]], tmp_path / "diag.tif", **OPTS).output)
    assert np.isnan(out[:H // 2, W // 2:]).all() and np.isfinite(out[:H // 2, :W // 2]).all()


def test_inputs_off_the_grid_are_named(tmp_path):
    image = depth_image(96, 96)
    a = write_raster(tmp_path / "a.tif", image)
    b = write_raster(tmp_path / "b.tif", image, crs="EPSG:32612")
    c = write_raster(tmp_path / "c.tif", image, transform=TRANSFORM @ TRANSFORM.scale(2))
    d = write_raster(tmp_path / "d.tif", image,
                     transform=TRANSFORM @ TRANSFORM.translation(96.3, 0))
    with pytest.raises(InputError, match=r"b.tif: CRS EPSG:32612 differs from .*a.tif"):
        build_vrt([a, b])
    with pytest.raises(InputError, match=r"c.tif: resolution 1 x 1 differs .* 0.5 x 0.5"):
        build_vrt([a, c])
    with pytest.raises(InputError, match=r"d.tif: is not on .*a.tif's pixel grid"):
        build_vrt([a, d])


def test_inputs_of_another_data_type_are_named_with_the_conversion(tmp_path):
    """Two adjacent inputs that differ only in data type (uint8 and uint16) were refused as
    "3 band(s) of uint16 differ from a.tif's 3 of uint8", with no way out, where the CRS's
    and resolution's refusals say what to run."""
    image = depth_image(96, 96)
    a = write_raster(tmp_path / "a.tif", image)
    b = write_raster(tmp_path / "b.tif", image.astype(np.uint16) * 257,
                     transform=TRANSFORM @ TRANSFORM.translation(96, 0))
    with pytest.raises(InputError) as err:
        build_vrt([a, b])
    assert str(err.value) == (f"{b}: data type uint16 differs from {a}'s uint8; convert it "
                              f"first: gdal_translate -ot Byte -scale {b} OUT (its min..max "
                              "onto 0..255)")
    with pytest.raises(InputError) as err:  # the other way round: explicit ranges
        build_vrt([b, a])
    assert str(err.value).endswith("convert it first: gdal_translate -ot UInt16 -scale "
                                   f"SRC_MIN SRC_MAX 0 65535 {a} OUT")
    # a band count that differs is still said as such
    c = write_raster(tmp_path / "c.tif", image[:1],
                     transform=TRANSFORM @ TRANSFORM.translation(96, 0))
    with pytest.raises(InputError, match=r"c\.tif: 1 band\(s\) of uint8 differ from .*a\.tif's"):
        build_vrt([a, c])


def test_cli_mosaic_split_and_usage_errors(tmp_path, survey):
    _, tiles = survey
    runner = CliRunner()
    args = ["--model", OPTS["model"], "--tile-size", "96", "--coarse-size", "96",
            "--no-progress"]
    res = runner.invoke(main, ["run", str(tiles[0]), str(tiles[1]), "-o",
                               str(tmp_path / "x.tif"), *args])
    assert res.exit_code == 2 and "several INPUTs need --mosaic" in res.output
    res = runner.invoke(main, ["run", str(tiles[0]), "--split", *args])
    assert res.exit_code == 2 and "--split needs --mosaic" in res.output
    res = runner.invoke(main, ["run", str(tmp_path / "tiles"), "--mosaic", "--split", "-o",
                               str(tmp_path / "out"), *args])
    assert res.exit_code == 0, res.output
    assert "wrote 4 outputs" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        [f"q{i}.depth.tif" for i in range(4)]


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd")
def test_run_mosaic_reads_a_config_from_a_pipe_once(tmp_path, survey, caplog):
    """``run --mosaic --config <(...)`` (or ``/dev/stdin``): the mosaic read the config for
    its VRT, the run read it again and got nothing, so it ran without the config's options
    (the default Marigold model instead of the config's). It is read once, and what is said
    of its keys (one skipped for the model) is said once."""
    config = "".join(f"{k}: {v}\n" for k, v in OPTS.items()) + "steps: 4\n"
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, config.encode())
        os.close(write_end)
        with caplog.at_level("INFO", logger="tiledepth"):
            res = CliRunner().invoke(main, ["run", str(tmp_path / "tiles"), "--mosaic", "-o",
                                            str(tmp_path / "m.tif"), "--config",
                                            f"/dev/fd/{read_end}", "--no-progress", "-v"])
    finally:
        os.close(read_end)
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "m.tif") as ds:
        tags = ds.tags()
    assert (tags["TILEDEPTH_MODEL"], tags["TILEDEPTH_TILE_SIZE"],
            tags["TILEDEPTH_COARSE_SIZE"]) == ("toy_models:affine_red", "96", "96")
    assert caplog.text.count("steps 4 skipped: it sets Marigold only") == 1, caplog.text


def test_batch_mosaic_writes_a_manifest_and_resumes(tmp_path, survey):
    _, tiles = survey
    out = tmp_path / "depth"
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, **OPTS)
    assert [r.status for r in records] == ["done"] * 4
    assert [r.height for r in records] == [H // 2] * 4
    first = {p.name: _read(p) for p in out.glob("*.depth.tif")}
    (out / "q2.depth.tif").unlink()
    again = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True, **OPTS)
    assert [r.status for r in again] == ["skipped", "skipped", "done", "skipped"]
    np.testing.assert_array_equal(_read(out / "q2.depth.tif"), first["q2.depth.tif"])
    assert len(read_manifest(out / MANIFEST_NAME)) == 8


def test_batch_mosaic_resume_redoes_outputs_without_the_uncertainty_band(tmp_path, survey):
    """``batch --mosaic --resume --uncertainty`` kept the one-band outputs of a run without
    it as "skipped" (as batch without --mosaic did): an output is kept only with the bands
    the run makes, else redone."""
    from toy_models import RedWithSpread

    out = tmp_path / "depth"
    plain = dict(OPTS, model=RedWithSpread())
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, **plain)
    assert [r.status for r in records] == ["done"] * 4
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True,
                              uncertainty=True, ensemble=3, **plain)
    assert [r.status for r in records] == ["done"] * 4  # not "skipped"
    for path in sorted(out.glob("*.depth.tif")):
        with rasterio.open(path) as ds:
            assert (ds.count, ds.descriptions[-1]) == (2, "uncertainty")


def test_split_checks_every_file_it_writes_before_the_model_runs(tmp_path, survey):
    """A user's file where a split output's preview goes fails the run in one line before
    any model call, nothing written (it failed once the fusion was done, some outputs
    placed and the rest not); batch --mosaic fails that input alone, also before."""
    _, tiles = survey
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch[..., 0]

    out = tmp_path / "split"
    out.mkdir()
    mine = {out / "q1.depth.png": b"my picture", out / "q2.depth.png.aux.xml": b"<mine/>"}
    for path, data in mine.items():
        path.write_bytes(data)
    opts = dict(OPTS, model=model, preview=True)
    for path in mine:
        with pytest.raises(OutputError, match=rf"^{re.escape(str(path))}: already exists "
                           r".*; pass --overwrite"):
            run_mosaic(tiles, out, split=True, **opts)
        assert calls == []
        path.rename(path.with_name(path.name + ".saved"))  # the next one's turn
    assert sorted(p.name for p in out.iterdir()) == ["q1.depth.png.saved",
                                                     "q2.depth.png.aux.xml.saved"]
    res = CliRunner().invoke(main, ["run", str(tmp_path / "tiles"), "--mosaic", "--split",
                                    "--preview", "-o", str(out), "--model", OPTS["model"],
                                    "--tile-size", "96", "--coarse-size", "96",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output  # nothing in the way: every output and preview
    assert len(list(out.glob("q?.depth.png"))) == 4
    # batch --mosaic --resume: q1's output missing and the user's picture where its preview
    # goes, q2's output a file of theirs; both fail, untouched, and the rest are skipped
    (out / "q1.depth.tif").unlink()
    (out / "q1.depth.png").write_bytes(b"my picture")
    (out / "q2.depth.tif").write_text("my notes")
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True, **opts)
    assert [r.status for r in records] == ["skipped", "failed", "failed", "skipped"]
    assert records[1].error.startswith(f"{out / 'q1.depth.png'}: already exists")
    assert records[2].error.startswith(f"{out / 'q2.depth.tif'}: exists and is not a "
                                       "tiledepth output")
    assert "move it or pass --overwrite" in records[2].error
    assert calls == []  # nothing left to write: no fusion
    assert (out / "q1.depth.png").read_bytes() == b"my picture"
    assert (out / "q2.depth.tif").read_text() == "my notes" and not (out / "q1.depth.tif").exists()


def test_split_outputs_say_where_they_sit_in_the_fused_map(tmp_path, survey):
    """Each split output carries its offset in the fused map and the fused map's size,
    so that the fused map's tiles can be rebuilt on it (tiledepth eval's seam ratio)."""
    _, tiles = survey
    outputs = run_mosaic(tiles, tmp_path / "split", split=True, **OPTS)
    for out, (r, c) in zip(outputs, CORNERS, strict=True):
        with rasterio.open(out) as ds:
            tags = ds.tags()
        assert tags["TILEDEPTH_TILE_ORIGIN"] == f"{r},{c}"
        assert tags["TILEDEPTH_FUSED_SHAPE"] == f"{H},{W}"
        assert tags["TILEDEPTH_TILE_SIZE"] == "96"
    records = tiledepth.batch([tmp_path / "tiles"], tmp_path / "b", mosaic=True, **OPTS)
    with rasterio.open(records[3].output) as ds:
        assert ds.tags()["TILEDEPTH_TILE_ORIGIN"] == f"{H // 2},{W // 2}"


def test_no_mosaic_output_replaces_a_stac_item_it_reads(tmp_path, survey):
    """A STAC item among a mosaic's inputs is read but not named in its VRT (the VRT names
    its asset): the mosaic's output, its sidecar or a split output's sidecar must not
    replace it, with --overwrite too; nothing is written and the model is never called."""
    import json

    _, tiles = survey
    text = json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "x",
                       "assets": {"visual": {"href": str(tiles[0]), "type": "image/tiff"}}})
    item = tmp_path / "item.json"
    item.write_text(text)
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch[..., 0]

    opts = dict(OPTS, model=model)
    with pytest.raises(OutputError, match="the output path is the input"):
        run_mosaic([item, *tiles[1:]], item, overwrite=True, **opts)
    with pytest.raises(OutputError, match=r"the sidecar of -o item\.tif would replace the "
                       "input"):
        run_mosaic([item, *tiles[1:]], tmp_path / "item.tif", overwrite=True, **opts)
    out = tmp_path / "split"
    out.mkdir()
    split_item = out / "q1.depth.json"  # where the sidecar of q1's split output goes
    split_item.write_text(text)
    with pytest.raises(OutputError, match=r"the sidecar of -o q1\.depth\.tif would replace"):
        run_mosaic([split_item, *tiles[1:]], out, split=True, overwrite=True, **opts)
    assert calls == [] and item.read_text() == text and split_item.read_text() == text
    assert not (tmp_path / "item.tif").exists()
    assert sorted(p.name for p in out.iterdir()) == ["q1.depth.json"]


def _noisy(height, width, seed):
    """RGB uint8 (3, H, W) with no 0 in any band."""
    return np.random.default_rng(seed).integers(1, 256, (3, height, width)).astype(np.uint8)


def _masks_match(vrt, truth):
    """The VRT's dataset mask equals ``truth`` (bool, the mosaic's shape) in windows across
    its members, at several offsets and sizes, and in decimated reads (as the engine's
    coarse and pyramid reads make them) wherever a coarse pixel's footprint is all one."""
    from rasterio.enums import Resampling

    height, width = truth.shape
    with rasterio.open(vrt) as ds:
        assert np.array_equal(ds.dataset_mask() > 0, truth)
        for r, c, h, w in [(1, 3, height - 1, width - 7), (5, 10, 9, width - 20),
                           (height - 9, 0, 9, width)]:
            got = ds.dataset_mask(window=Window(c, r, w, h)) > 0
            assert np.array_equal(got, truth[r:r + h, c:c + w]), (r, c, h, w)
        for f in (2, 4):
            got = ds.dataset_mask(out_shape=(height // f, width // f),
                                  resampling=Resampling.nearest) > 0
            blocks = truth[:height // f * f, :width // f * f].reshape(
                height // f, f, width // f, f)
            whole = blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3))
            assert np.array_equal(got[whole], blocks.all(axis=(1, 3))[whole]), f


def _plain_valid(path):
    """The validity a plain run of ``path`` reads (RasterReader: its dataset mask)."""
    from tiledepth.readers import RasterReader

    with RasterReader(path) as src:
        return src.read_valid(Window(0, 0, src.width, src.height))


def test_nodata_inputs_are_read_whole_across_their_boundaries(tmp_path):
    """Two 8-bit inputs that declare nodata 0 but have no 0 pixel but a collar: every
    pixel but the collar is valid in any window (the VRT's mask, read over both files,
    was masked below its first row: GDAL 3.10 reads a Byte nodata mask wrong into a
    window of a wider buffer; 10088 of 10240 px came out NaN, not the collar's 512)."""
    a = _noisy(64, 80, 1)
    b = _noisy(64, 80, 2)
    b[:, :, -8:] = 0  # the collar: every band 0
    east = TRANSFORM @ TRANSFORM.translation(80, 0)
    paths = [write_raster(tmp_path / "a.tif", a, nodata=0),
             write_raster(tmp_path / "b.tif", b, nodata=0, transform=east)]
    truth = np.hstack([_plain_valid(p) for p in paths])
    assert (~truth).sum() == 64 * 8
    _masks_match(build_vrt(paths).vrt, truth)
    out = _read(run_mosaic(paths, tmp_path / "m.tif", **OPTS).output)
    np.testing.assert_array_equal(np.isnan(out), ~truth)


def test_overlapping_inputs_keep_each_others_valid_pixels(tmp_path):
    """Where two inputs overlap, one's masked pixels leave the other's valid ones valid,
    with their values, for inputs with an alpha band and inputs with nodata (the later
    input's transparent collar replaced the earlier one's pixels: 400 px NaN)."""
    from rasterio.enums import ColorInterp as C

    rgba = [C.red, C.green, C.blue, C.alpha]
    a, b = _noisy(64, 80, 3), _noisy(64, 80, 4)
    b[:, :40, :10] = 0  # b's collar, over a's last 10 columns
    a[:, 40:50, 70:] = 0  # a's hole, under b's valid pixels
    opaque = np.full((1, 64, 80), 255, np.uint8)
    east = TRANSFORM @ TRANSFORM.translation(70, 0)
    cases = {"alpha": ([np.concatenate([x, opaque * (x[:1] > 0)]) for x in (a, b)],
                       dict(colorinterp=rgba)),
             "nodata": ([a, b], dict(nodata=0))}
    for kind, (images, kw) in cases.items():
        paths = [write_raster(tmp_path / f"{kind}_a.tif", images[0], **kw),
                 write_raster(tmp_path / f"{kind}_b.tif", images[1], transform=east, **kw)]
        truth = np.zeros((64, 150), bool)
        truth[:, :80] = _plain_valid(paths[0])
        truth[:, 70:] |= _plain_valid(paths[1])
        assert truth.all()  # each hides only what the other shows
        mosaic = build_vrt(paths)
        _masks_match(mosaic.vrt, truth)
        with rasterio.open(mosaic.vrt) as ds:
            rgb = ds.read((1, 2, 3))
        np.testing.assert_array_equal(rgb[:, :40, 70:80], a[:, :40, 70:], err_msg=kind)
        np.testing.assert_array_equal(rgb[:, 40:, 70:80], b[:, 40:, :10], err_msg=kind)
        if kind == "alpha":
            out = _read(run_mosaic(paths, tmp_path / "m.tif", **OPTS).output)
            assert np.isfinite(out).all()


def test_a_pixel_only_one_band_of_which_is_nodata_is_valid(tmp_path):
    """An RGB input with nodata 0 is masked where all three bands are 0, as a plain run
    masks it, not where red alone is (a dark blue lake: red 0, green and blue not; its
    200 px came out NaN with --mosaic)."""
    rgb = _noisy(64, 80, 5)
    rgb[0, 20:30, 20:40] = 0  # the lake
    rgb[:, :, :5] = 0  # the collar
    path = write_raster(tmp_path / "a.tif", rgb, nodata=0)
    truth = _plain_valid(path)
    assert truth[20:30, 20:40].all() and (~truth).sum() == 64 * 5
    _masks_match(build_vrt([path]).vrt, truth)
    plain = _read(tiledepth.run(path, tmp_path / "plain.tif", **OPTS).output)
    fused = _read(run_mosaic([path], tmp_path / "m.tif", **OPTS).output)
    np.testing.assert_array_equal(np.isnan(fused), np.isnan(plain))
    np.testing.assert_array_equal(np.isnan(fused), ~truth)


SLOW = dict(OPTS, model="toy_models:slow")  # affine_red, each call logged


def _calls(tmp_path, monkeypatch):
    """A fresh log of toy_models:slow's calls (no delay); a function counting its lines."""
    log = tmp_path / "calls.txt"
    log.unlink(missing_ok=True)
    monkeypatch.setenv("TILEDEPTH_TEST_CALLS", str(log))
    monkeypatch.setenv("TILEDEPTH_TEST_DELAY", "0")
    monkeypatch.delenv("TILEDEPTH_TEST_STOP_AFTER", raising=False)
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


def _stop_placing(monkeypatch, name):
    """Ctrl-C (a KeyboardInterrupt) when the output ``name`` is moved into place."""
    return fail_placing(monkeypatch, name, KeyboardInterrupt())


def test_a_second_split_into_one_folder_is_refused_before_it_fuses(tmp_path, survey,
                                                                     monkeypatch):
    """A split holds its folder's lock from its checks to its last file: a second split
    (run --split or batch --mosaic) into the folder, started while the first cuts its
    outputs, is refused at its start, no model call, and the first's outputs are right
    (the lock was released with the fusion's: the second fused q0 alone into the shared
    fused map, the first cut q1-q3 from it, all NaN, and removed it under the second)."""
    import tiledepth.mosaic as mosaic
    from tiledepth.errors import BusyError

    _, tiles = survey
    expected = {p.name: _read(p) for p in run_mosaic(tiles, tmp_path / "alone", split=True,
                                                     **OPTS)}
    out = tmp_path / "split"
    real, seen = mosaic.split_outputs, []

    def second_job(*args, **kwargs):  # the first job's fusion is done: a second one starts
        if not seen:
            calls = []
            seen.append(calls)

            def model(batch):
                calls.append(len(batch))
                return batch[..., 0]

            for job in (lambda: run_mosaic(tiles[:1], out, split=True, overwrite=True,
                                           **dict(OPTS, model=model)),
                        lambda: tiledepth.batch(tiles[:1], out, mosaic=True, overwrite=True,
                                                **dict(OPTS, model=model))):
                with pytest.raises(BusyError, match=rf"^{re.escape(str(out))}: another "
                                   "tiledepth mosaic .* is writing into this folder now"):
                    job()
        return real(*args, **kwargs)

    monkeypatch.setattr(mosaic, "split_outputs", second_job)
    outputs = run_mosaic(tiles, out, split=True, **OPTS)
    assert seen == [[]]  # both refused before any model call
    for path in outputs:
        np.testing.assert_array_equal(_read(path), expected[path.name])
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, MANIFEST_NAME])
    assert read_manifest(out / MANIFEST_NAME) == []  # (the refused batch's, empty)


def test_a_split_stopped_while_cutting_keeps_the_fused_map_for_the_same_command(
        tmp_path, survey, monkeypatch):
    """Ctrl-C while the outputs are cut: the fused map is kept (the checkpoint is gone once
    it is placed), the message says so, and the same command again cuts the rest from it
    with no model call, keeping the outputs already cut (it predicted everything again
    through the library, and through the CLI failed on them: 'already exists')."""
    from tiledepth.mosaic import FUSED_NAME, SplitInterrupted

    _, tiles = survey
    calls = _calls(tmp_path, monkeypatch)
    expected = {p.name: _read(p) for p in run_mosaic(tiles, tmp_path / "alone", split=True,
                                                     **SLOW)}
    fusion = calls()
    assert fusion > 0
    out = tmp_path / "split"
    resume = _stop_placing(monkeypatch, "q2.depth.tif")
    with pytest.raises(SplitInterrupted, match=rf"^interrupted while the outputs were cut "
                       rf"from the fused map; the fused map {re.escape(str(out / FUSED_NAME))}"
                       " is kept: the same command again cuts") as info:
        run_mosaic(tiles, out, split=True, **SLOW)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.exit_code == 130
    assert calls() == 2 * fusion
    assert {"q0.depth.tif", "q1.depth.tif", FUSED_NAME} <= {p.name for p in out.iterdir()}
    assert not (out / "q2.depth.tif").exists()
    resume()
    outputs = run_mosaic(tiles, out, split=True, **SLOW)  # the same call again
    assert calls() == 2 * fusion  # nothing predicted again
    for path in outputs:
        np.testing.assert_array_equal(_read(path), expected[path.name])
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # the fused map gone
    # the CLI: its own line and exit code 130, then the same command again, exit 0
    args = ["run", str(tmp_path / "tiles"), "--mosaic", "--split", "-o", str(tmp_path / "cli"),
            "--model", SLOW["model"], "--tile-size", "96", "--coarse-size", "96",
            "--no-progress"]
    resume = _stop_placing(monkeypatch, "q1.depth.tif")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 130, res.output
    assert "tiledepth: interrupted while the outputs were cut from the fused map; the fused " \
           f"map {tmp_path / 'cli' / FUSED_NAME} is kept" in res.output  # (not "error:")
    assert calls() == 3 * fusion
    resume()
    res = CliRunner().invoke(main, args)
    # q0 was placed before the stop: kept, not written again
    assert res.exit_code == 0 and "wrote 3 outputs" in res.output \
        and "kept 1 from an earlier run" in res.output, res.output
    assert calls() == 3 * fusion
    for name, depth in expected.items():
        np.testing.assert_array_equal(_read(tmp_path / "cli" / name), depth)


def test_batch_mosaic_resume_after_a_stop_while_cutting_predicts_nothing_again(
        tmp_path, survey, monkeypatch):
    """batch --mosaic --resume after a Ctrl-C while the outputs were cut: the missing
    outputs are cut from the kept fused map, no model call (every tile was predicted
    again: the checkpoint was removed once the fused map was placed, and the fused map
    when the cut was interrupted); the records carry the fusion's figures."""
    _, tiles = survey
    calls = _calls(tmp_path, monkeypatch)
    alone = tiledepth.batch([tmp_path / "tiles"], tmp_path / "alone", mosaic=True, **SLOW)
    fusion = calls()
    out = tmp_path / "depth"
    resume = _stop_placing(monkeypatch, "q2.depth.tif")
    with pytest.raises(KeyboardInterrupt):
        tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, **SLOW)
    assert calls() == 2 * fusion
    resume()
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True, **SLOW)
    assert calls() == 2 * fusion
    assert [r.status for r in records] == ["skipped", "skipped", "done", "done"]
    for a, b in zip(alone[2:], records[2:], strict=True):
        assert (a.consistency, a.flagged) == (b.consistency, b.flagged)
        np.testing.assert_array_equal(_read(b.output), _read(a.output))
    # the fusion's tiles once, on the first record it was for
    assert [r.tiles for r in records] == [None, None, alone[0].tiles, 0]
    assert sorted(p.name for p in out.iterdir()) == \
        sorted([MANIFEST_NAME, *(f"q{i}.depth.tif" for i in range(4))])


def _split_stopped_while_cutting(tmp_path, survey, monkeypatch):
    """A split of the survey into ``tmp_path / 'split'`` stopped (Ctrl-C) as it placed
    q2.depth.tif: the tiles, the model-call counter, the split folder and its calls then."""
    _, tiles = survey
    calls = _calls(tmp_path, monkeypatch)
    out = tmp_path / "split"
    resume = _stop_placing(monkeypatch, "q2.depth.tif")
    with pytest.raises(KeyboardInterrupt):
        run_mosaic(tiles, out, split=True, **SLOW)
    resume()
    return tiles, calls, out, calls()


@pytest.mark.parametrize("changed", [{"coarse_size": 64}, {"coarse_weight": 2.5}])
def test_a_kept_fused_map_is_not_cut_for_other_options(tmp_path, survey, monkeypatch, changed):
    """The kept fused map is cut only for a split of the same inputs, options and model
    (its key): with another coarse size, or another option of the fusion alone (which the
    predictions' checkpoint key leaves out), the outputs it cut are in the way as any other
    file, before any model call, and with overwrite all are fused and cut again."""
    tiles, calls, out, first = _split_stopped_while_cutting(tmp_path, survey, monkeypatch)
    other = dict(SLOW, **changed)
    with pytest.raises(OutputError, match=r"q0\.depth\.tif: already exists"):
        run_mosaic(tiles, out, split=True, **other)
    assert calls() == first
    outputs = run_mosaic(tiles, out, split=True, overwrite=True, **other)
    assert calls() > first
    expected = run_mosaic(tiles, tmp_path / "alone", split=True, **other)
    for path, ref in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(_read(path), _read(ref))
    assert len(list(out.iterdir())) == 4


def _stac_item(path, **assets):
    import json

    path.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": path.stem,
                                "assets": {k: {"href": str(v), "type": "image/tiff"}
                                           for k, v in assets.items()}}))
    return path


def test_mosaic_reads_the_asset_asked_for(tmp_path, survey):
    """--asset with --mosaic reads that asset of every STAC item among the inputs (it was
    ignored: the visual asset read, and a missing asset not reported); with no STAC item
    among the inputs it is refused in one line, as for one input."""
    _, tiles = survey
    other = quadrants(tmp_path / "other", depth_image(H, W)[:, ::-1, ::-1].copy())
    items = [_stac_item(tmp_path / f"item{i}.json", visual=tiles[i], dark=other[i])
             for i in range(2)]
    expected = _read(run_mosaic(other[:2], tmp_path / "other.tif", **OPTS).output)
    visual = _read(run_mosaic(tiles[:2], tmp_path / "visual.tif", **OPTS).output)
    assert not np.allclose(expected, visual)
    got = _read(run_mosaic(items, tmp_path / "m.tif", asset="dark", **OPTS).output)
    np.testing.assert_array_equal(got, expected)
    mixed = _read(run_mosaic([items[0], other[1]], tmp_path / "mixed.tif", asset="dark",
                             **OPTS).output)  # a raster among the items is read as it is
    np.testing.assert_array_equal(mixed, expected)
    outputs = run_mosaic(items, tmp_path / "split", split=True, asset="dark", **OPTS)
    assert [p.name for p in outputs] == ["item0.depth.tif", "item1.depth.tif"]
    np.testing.assert_array_equal(_read(outputs[1]), expected[:, W // 2:])
    with pytest.raises(InputError, match=r"item0\.json: no asset 'nonexistent'; it has "
                       "visual, dark"):
        run_mosaic(items, tmp_path / "none.tif", asset="nonexistent", **OPTS)
    with pytest.raises(InputError, match=r"q0\.tif: --asset needs a STAC item \(a \.json "
                       r"file or URL\), and no input of the mosaic is one"):
        run_mosaic(tiles[:2], tmp_path / "none.tif", asset="dark", **OPTS)
    args = ["--model", OPTS["model"], "--tile-size", "96", "--coarse-size", "96",
            "--no-progress"]
    for asset, code, line in [("nonexistent", 2, "no asset 'nonexistent'"),
                              ("dark", 0, "wrote")]:
        res = CliRunner().invoke(main, ["run", *map(str, items), "--mosaic", "--asset", asset,
                                        "-o", str(tmp_path / f"cli-{asset}.tif"), *args])
        assert res.exit_code == code and line in res.output, res.output
    np.testing.assert_array_equal(_read(tmp_path / "cli-dark.tif"), expected)
    assert not (tmp_path / "none.tif").exists()


def test_split_refuses_an_area(tmp_path, survey):
    """--bounds or --aoi with --split: one line before any model call (the fused map covered
    the area's window while each output was cut at its member's window on the whole
    mosaic: wrong pixels, exit 0)."""
    _, tiles = survey
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch[..., 0]

    with rasterio.open(tiles[0]) as ds:
        left, bottom, right, top = ds.bounds
    for area in ({"bounds": (left, bottom, right, top)}, {"aoi": str(tmp_path / "a.gpkg")}):
        with pytest.raises(OptionError, match=rf"^--{next(iter(area))} cannot be used with "
                           "--split"):
            run_mosaic(tiles, tmp_path / "split", split=True, **dict(OPTS, model=model),
                       **area)
    assert calls == [] and not (tmp_path / "split").exists()


def test_inputs_not_north_up_are_refused_each_named(tmp_path):
    """A south-up or mirrored input landed outside the mosaic's north-up grid (its output
    all NaN, exit 0), and a rotated one lost its rotation: each is refused in one line,
    the first input too; a run of one alone still takes it."""
    from affine import Affine

    image = depth_image(96, 96)
    a = write_raster(tmp_path / "a.tif", image)
    south = Affine(0.5, 0, 500000.0, 0, 0.5, 5400000.0)  # e > 0: row 0 is the south edge
    s0 = write_raster(tmp_path / "s0.tif", image, transform=south)
    s1 = write_raster(tmp_path / "s1.tif", image, transform=south @ Affine.translation(0, 96))
    mirrored = write_raster(tmp_path / "m.tif", image,
                            transform=Affine(-0.5, 0, 500048.0, 0, -0.5, 5400000.0))
    rotated = write_raster(tmp_path / "r.tif", image,
                           transform=Affine(0.5, 0.1, 500000.0, 0.1, -0.5, 5400000.0))
    for inputs, bad, what in [([s0, s1], s0, "is not north-up"),
                              ([a, s1], s1, "is not north-up"),
                              ([mirrored], mirrored, "is not north-up"),
                              ([a, mirrored], mirrored, "is not north-up"),
                              ([rotated], rotated, "is rotated"),
                              ([a, rotated], rotated, "is rotated")]:
        with pytest.raises(InputError, match=rf"^{re.escape(str(bad))}: {what} .*; a mosaic "
                           r"needs north-up rasters; warp it first \(gdalwarp") as info:
            build_vrt(inputs)
        assert "\n" not in str(info.value)
    out = tmp_path / "om"
    res = CliRunner().invoke(main, ["batch", str(rotated), "-o", str(out), "--mosaic",
                                    "--model", "toy_models:red", "--tile-size", "96",
                                    "--coarse-size", "96", "--no-progress"])
    assert res.exit_code == 2 and f"{rotated}: is rotated" in res.output
    assert not (out / "r.depth.tif").exists()
    plain = tiledepth.run(rotated, tmp_path / "r.depth.tif", model="toy_models:red",
                          tile_size=96, coarse_size=96)
    with rasterio.open(plain.output) as ds:  # alone, its own grid, rotation and all
        assert ds.transform == Affine(0.5, 0.1, 500000.0, 0.1, -0.5, 5400000.0)


def test_batch_mosaic_fails_only_the_input_whose_output_exists(tmp_path, survey):
    """Without --resume or --overwrite, an existing output aborted the whole batch --mosaic
    (exit 2, no record) instead of failing its input as batch does: the others are still
    fused and cut, the file in the way left as it is."""
    _, tiles = survey
    out = tmp_path / "depth"
    first = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, **OPTS)
    assert [r.status for r in first] == ["done"] * 4
    expected = {p.name: p.read_bytes() for p in out.glob("*.depth.tif")}
    for i in (0, 2):
        (out / f"q{i}.depth.tif").unlink()
    (out / "q1.depth.tif").write_text("my notes")
    res = CliRunner().invoke(main, ["batch", str(tmp_path / "tiles"), "-o", str(out),
                                    "--mosaic", "--model", OPTS["model"], "--tile-size", "96",
                                    "--coarse-size", "96", "--no-progress"])
    assert res.exit_code == 1, res.output
    records = read_manifest(out / MANIFEST_NAME)[4:]
    assert [r.status for r in records] == ["done", "failed", "done", "failed"]
    for i in (1, 3):
        assert records[i].error == (f"{out / f'q{i}.depth.tif'}: already exists; pass "
                                    "--resume to keep complete outputs or --overwrite to "
                                    "replace them")
    assert (out / "q1.depth.tif").read_text() == "my notes"
    for i in (0, 2, 3):  # the same fusion: the same bytes
        assert (out / f"q{i}.depth.tif").read_bytes() == expected[f"q{i}.depth.tif"]


def test_batch_mosaic_counts_the_one_fusion_once(tmp_path, survey):
    """Every record of a batch --mosaic carried the fusion's tiles and the seconds since the
    batch began: the summary said 4 x the tiles and seconds done. The fusion's tiles and
    seconds are on the first input's record alone; totals match the one fusion."""
    import time

    from tiledepth.survey import summary

    _, tiles = survey
    fused = run_mosaic(tiles, tmp_path / "fused.tif", **OPTS)
    t0 = time.perf_counter()
    records = tiledepth.batch([tmp_path / "tiles"], tmp_path / "depth", mosaic=True, **OPTS)
    wall = time.perf_counter() - t0
    assert fused.tiles > 0
    assert [r.tiles for r in records] == [fused.tiles, 0, 0, 0]
    assert {r.consistency for r in records} == {fused.consistency}  # each output's fusion's
    assert sum(r.seconds for r in records) <= wall
    assert records[0].seconds > 10 * max(r.seconds for r in records[1:])
    assert summary(records).splitlines()[1].split()[:3] == ["done", "4", str(fused.tiles)]
    assert read_manifest(tmp_path / "depth" / MANIFEST_NAME) == records
    # resumed with one output missing: the new fusion is that input's, once
    (tmp_path / "depth" / "q2.depth.tif").unlink()
    again = tiledepth.batch([tmp_path / "tiles"], tmp_path / "depth", mosaic=True,
                            resume=True, **OPTS)
    assert [(r.status, r.tiles) for r in again] == [("skipped", None), ("skipped", None),
                                                    ("done", fused.tiles), ("skipped", None)]


def _paletted(folder, name, index, col, table):
    """A colour-map raster of ``index`` (H, W) at column ``col`` of the grid, ``table`` its
    colour table: a ``.vrt`` file over a GeoTIFF of the indexes (a GeoTIFF's own colour table
    cannot say transparent)."""
    from xml.sax.saxutils import escape

    tif = write_raster(folder / f"{name}.tif", index[None],
                       transform=window_transform(Window(col, 0, *index.shape[::-1]), TRANSFORM))
    entries = "".join('<Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(*table[i])
                      for i in range(len(table)))
    with rasterio.open(tif) as ds:
        gt = ", ".join(map(repr, ds.transform.to_gdal()))
        placed = f"<SRS>{escape(ds.crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>"
    path = folder / f"{name}.vrt"
    path.write_text(f'<VRTDataset rasterXSize="{index.shape[1]}" rasterYSize="{index.shape[0]}">'
                    f'{placed}<VRTRasterBand dataType="Byte" band="1"><ColorInterp>Palette'
                    f"</ColorInterp><ColorTable>{entries}</ColorTable><SimpleSource>"
                    f'<SourceFilename relativeToVRT="0">{tif}</SourceFilename><SourceBand>1'
                    "</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")
    return path


def test_a_mosaic_of_colour_map_rasters_reads_their_colours(tmp_path):
    """``--mosaic`` of colour-map rasters wrote the VRT's band as Palette without a colour
    table: the model saw the indexes (0..3 / 255) as grey. The members' shared table now
    travels in the VRT: the mosaic reads each member's colours as a run of it alone does,
    its transparent entries masked; members whose tables differ are refused."""
    from tiledepth.readers import RasterReader

    table = {0: (255, 0, 0, 255), 1: (0, 255, 0, 255), 2: (0, 0, 255, 255), 3: (9, 9, 9, 0)}
    index = np.zeros((40, 60), np.uint8)
    index[:, 20:] = 1
    index[:, 40:] = 2
    index[30:, :10] = 3  # transparent
    paths = [_paletted(tmp_path, f"p{i}", np.roll(index, 20 * i, axis=1), 60 * i, table)
             for i in range(2)]
    mosaic = build_vrt(paths)
    window = Window(0, 0, 60, 40)
    with RasterReader(mosaic.vrt) as src:
        reads = [src.read_tile(Window(60 * i, 0, 60, 40)) for i in range(2)]
        coarse, coarse_valid = src.read_coarse(60)
    for path, (tile, valid) in zip(paths, reads, strict=True):
        with RasterReader(path) as alone:
            want, want_valid = alone.read_tile(window)
        np.testing.assert_array_equal(tile, want)
        np.testing.assert_array_equal(valid, want_valid)
    tile, valid = reads[0]
    np.testing.assert_array_equal(tile[:, 0, [0, 20, 40]], np.eye(3))  # red, green, blue
    assert not valid[30:, :10].any() and valid[:30].all() and valid[:, 10:].all()
    np.testing.assert_array_equal(coarse[:, 0, [0, 10, 20]], np.eye(3))  # 2x smaller
    assert not coarse_valid[15:, :5].any()
    other = _paletted(tmp_path, "p2", index, 120, {**table, 1: (0, 250, 0, 255)})
    with pytest.raises(InputError) as err:
        build_vrt([*paths, other])
    assert str(err.value) == (f"{other}: its colour table differs from {paths[0]}'s; expand "
                              "them first: gdal_translate -expand rgb")


def _bit_quadrants(folder, image, bits):
    """The four quadrants of ``image`` (1, H, W) as GeoTIFFs, quadrant ``i`` of ``bits[i]``
    bits (GDAL's NBITS; 8: a plain Byte file), its values ``image`` kept to those bits."""
    folder.mkdir(exist_ok=True)
    h, w = image.shape[1] // 2, image.shape[2] // 2
    return [write_raster(folder / f"b{i}.tif", image[:, r:r + h, c:c + w] >> (8 - n),
                         transform=window_transform(Window(c, r, w, h), TRANSFORM),
                         **({"NBITS": n} if n < 8 else {}))
            for i, ((r, c), n) in enumerate(zip(CORNERS, bits, strict=True))]


def test_a_mosaic_of_images_of_fewer_than_8_bits_reads_them_as_a_run_of_each(tmp_path):
    """``--mosaic`` of 1, 2 or 4-bit images (GDAL: Byte, NBITS=n) scaled them by / 255, as
    the VRT carried no NBITS: a 4-bit image's white, 15, reached the model as 0.06, nearly
    black, where a run of the file alone reads it as 1. The VRT now carries the members'
    NBITS, and a member of fewer bits than another is scaled onto the most bits among
    them: each member reads as a run of it alone reads it."""
    from tiledepth.readers import RasterReader

    image = depth_image(H, W)[:1]
    quads = [Window(c, r, W // 2, H // 2) for r, c in CORNERS]
    # (a 1-bit GeoTIFF has a black and white colour table: read as its colours already)
    for name, bits in (("four", (4, 4, 4, 4)), ("mixed", (4, 8, 2, 3))):
        tiles = _bit_quadrants(tmp_path / name, image, bits)
        with RasterReader(build_vrt(tiles).vrt) as src:
            reads = [src.read_tile(q)[0] for q in quads]
        for tile, path, n, (r, c) in zip(reads, tiles, bits, CORNERS, strict=True):
            with RasterReader(path) as alone:
                want = alone.read_tile(Window(0, 0, W // 2, H // 2))[0]
            # 3 bits scaled onto 8: to the nearest 8-bit level (7 does not divide 255)
            atol = 1e-6 if 255 % (2**n - 1) == 0 else 0.5 / 255 + 1e-6
            np.testing.assert_allclose(tile, want, atol=atol)  # as a run of it alone
            values = image[0, r:r + H // 2, c:c + W // 2] >> (8 - n)
            np.testing.assert_allclose(tile[0], values / (2**n - 1), atol=atol)
    # fused as one, the 4-bit quadrants give the map of the whole 4-bit image
    whole = write_raster(tmp_path / "whole4.tif", image >> 4, NBITS=4)
    expected = _read(tiledepth.run(whole, tmp_path / "whole4.depth.tif", **OPTS).output)
    fused = run_mosaic(_bit_quadrants(tmp_path / "four", image, (4,) * 4),
                       tmp_path / "four.depth.tif", **OPTS)
    np.testing.assert_allclose(_read(fused.output), expected, atol=1e-4)


def test_a_member_georeferenced_by_its_aux_xml_or_world_file_is_placed(tmp_path, survey):
    """A PNG placed by its ``.aux.xml`` (PAM: CRS and transform) or by a world file (its CRS
    in the ``.aux.xml``) was refused by ``--mosaic`` as not georeferenced, the members
    being opened without a directory listing, although a run of that PNG alone is placed
    by them. Local members are now opened as a run opens them: placed alike."""
    from tiledepth.readers import RasterReader

    whole, tiles = survey
    image = depth_image(H, W)
    folder = tmp_path / "png"
    folder.mkdir()
    pngs = []
    for i, (r, c) in enumerate(CORNERS):  # quadrants 0, 1: PAM only; 2, 3: a world file
        world = {"WORLDFILE": "YES"} if i >= 2 else {}
        pngs.append(write_raster(folder / f"q{i}.png", image[:, r:r + H // 2, c:c + W // 2],
                                 driver="PNG", tiled=False, blockxsize=None,
                                 blockysize=None,
                                 transform=window_transform(Window(c, r, W // 2, H // 2),
                                                            TRANSFORM), **world))
    assert (folder / "q2.wld").exists() and "GeoTransform" not in \
        (folder / "q2.png.aux.xml").read_text()  # placed by the world file alone
    mosaic = build_vrt(pngs)
    assert [(m.window.row_off, m.window.col_off) for m in mosaic.members] == CORNERS
    with rasterio.open(mosaic.vrt) as ds, rasterio.open(whole) as src:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
    with RasterReader(mosaic.vrt) as png_src, RasterReader(build_vrt(tiles).vrt) as tif_src:
        everything = Window(0, 0, W, H)
        np.testing.assert_array_equal(png_src.read_tile(everything)[0],
                                      tif_src.read_tile(everything)[0])


def test_a_kept_fused_map_is_not_cut_after_its_reference_changed_in_place(
        tmp_path, survey, monkeypatch):
    """A split with ``reference`` stopped while cutting, the reference then corrected at
    the same path (heights doubled, +3 m): the rerun cut the outputs from the kept fused map,
    calibrated to the old reference (its key held the reference's path only: 10 m off on
    the real survey). It fuses again now and writes what a fresh split writes."""
    from conftest import depth_field
    from rasterio.transform import from_origin

    from tiledepth.mosaic import FUSED_NAME

    _, tiles = survey
    ref = tmp_path / "ref.tif"

    def reference(scale, shift):  # the heights shift + scale * depth, 4x coarser
        coarse = (shift + scale * depth_field(H, W)).reshape(H // 4, 4, W // 4, 4)
        write_raster(ref, coarse.mean(axis=(1, 3))[None].astype(np.float32),
                     transform=from_origin(500000.0, 5400000.0, 2.0, 2.0))

    opts = dict(SLOW, reference=str(ref), output_kind="height")
    reference(-20.0, 50.0)
    calls = _calls(tmp_path, monkeypatch)
    out = tmp_path / "split"
    resume = _stop_placing(monkeypatch, "q0.depth.tif")
    with pytest.raises(KeyboardInterrupt):
        run_mosaic(tiles, out, split=True, **opts)
    resume()
    assert (out / FUSED_NAME).exists()
    first = calls()
    reference(-40.0, 103.0)  # corrected in place
    outputs = run_mosaic(tiles, out, split=True, **opts)
    assert calls() > first  # fused again
    expected = run_mosaic(tiles, tmp_path / "fresh", split=True, **opts)
    for path, fresh in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(_read(path), _read(fresh))
    assert np.nanmedian(_read(outputs[0])) > 60  # heights of 63 to 103 m, not of 30 to 50


def _zipped(path, files):
    """A zip archive at ``path`` of ``files`` (member name -> local file), stored as they are:
    its members are GDAL paths (``/vsizip/<path>/<name>``), not local files."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, file in files.items():
            z.write(file, name)
    return path


def test_split_refuses_two_inputs_that_would_write_one_output(tmp_path, survey, monkeypatch):
    """Two remote (GDAL-path) inputs of one file name, or one and a local file of that name,
    each split into ``0.depth.tif``: the second overwrote the first, exit 0, one output for
    two inputs. Refused now in one line naming both, before anything is written, as batch
    --mosaic refuses them."""
    _, tiles = survey
    archive = _zipped(tmp_path / "tiles.zip", {"r1/0.tif": tiles[0], "r2/0.tif": tiles[1],
                                               "q2.tif": tiles[2]})
    r1, r2 = f"/vsizip/{archive}/r1/0.tif", f"/vsizip/{archive}/r2/0.tif"
    out = tmp_path / "split"
    with pytest.raises(InputError, match=rf"^{re.escape(r1)} and {re.escape(r2)} would both "
                       r"write 0\.depth\.tif; rename one or narrow --glob$"):
        run_mosaic([r1, r2], out, split=True, **OPTS)
    monkeypatch.chdir(tmp_path / "tiles")  # q2.tif here and in the archive
    remote = f"/vsizip/{archive}/q2.tif"
    with pytest.raises(InputError, match=rf"^q2\.tif and {re.escape(remote)} would both "
                       r"write q2\.depth\.tif"):
        run_mosaic(["q2.tif", remote], out, split=True, **OPTS)
    res = CliRunner().invoke(main, ["run", r1, r2, "--mosaic", "--split", "-o", str(out),
                                    "--model", OPTS["model"], "--tile-size", "96",
                                    "--coarse-size", "96", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        f"tiledepth: error: {r1} and {r2} would both write 0.depth.tif; rename one or "
        "narrow --glob"]
    assert not out.exists()
    outputs = run_mosaic([r1, f"/vsizip/{archive}/q2.tif"], out, split=True, **OPTS)
    assert [p.name for p in outputs] == ["0.depth.tif", "q2.depth.tif"]  # names that differ


def test_one_fused_output_takes_two_inputs_of_one_file_name(tmp_path, survey):
    """Without --split the inputs make one output: two remote inputs of one file name
    (``s3://b/1/x.tif``, ``s3://b/2/x.tif``) are fused, not refused as two outputs."""
    _, tiles = survey
    archive = _zipped(tmp_path / "tiles.zip", {"r1/0.tif": tiles[0], "r2/0.tif": tiles[1]})
    r1, r2 = f"/vsizip/{archive}/r1/0.tif", f"/vsizip/{archive}/r2/0.tif"
    out = tmp_path / "fused.tif"
    run_mosaic([r1, r2], out, **OPTS)
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).any()


def test_remote_and_local_inputs_are_drawn_in_the_order_given(tmp_path):
    """Where inputs overlap, the later one's pixels cover the earlier one's: a remote
    (GDAL-path) input was drawn before every local one, wherever it was given (a local
    input given first covered a remote one given after it)."""
    from tiledepth.mosaic import _find

    a, b = _noisy(64, 80, 6), _noisy(64, 80, 7)
    east = TRANSFORM @ TRANSFORM.translation(40, 0)  # b over a's last 40 columns
    pa = write_raster(tmp_path / "a.tif", a)
    pb = write_raster(tmp_path / "b.tif", b, transform=east)
    remote = f"/vsizip/{_zipped(tmp_path / 'a.zip', {'a.tif': pa})}/a.tif"
    for inputs, on_top in [([pb, remote], a[:, :, 40:]), ([remote, pb], b[:, :, :40])]:
        paths, names = _find(inputs, None)
        assert paths == [str(p) for p in inputs] and names[inputs.index(remote)] == "a.tif"
        with rasterio.open(build_vrt(paths, names).vrt) as ds:
            overlap = ds.read((1, 2, 3), window=Window(40, 0, 40, 64))
        np.testing.assert_array_equal(overlap, on_top)  # the later input's pixels
    local = _read(run_mosaic([pb, pa], tmp_path / "local.tif", **OPTS).output)
    mixed = _read(run_mosaic([pb, remote], tmp_path / "mixed.tif", **OPTS).output)
    np.testing.assert_array_equal(mixed, local)


def test_an_input_off_the_grid_within_the_tolerance_keeps_its_own_transform(tmp_path,
                                                                              survey):
    """An input 0.0004 px off the grid (accepted: GRID_TOLERANCE is 1e-3 px) got an output on
    the fused grid's transform, not its own: check_output refused it, so every batch --mosaic
    --resume fused the whole survey again. Each output keeps its input's transform."""
    from tiledepth.survey import check_output

    image = depth_image(H, W)
    tiles = quadrants(tmp_path / "off", image)
    with rasterio.open(tiles[1], "r+") as ds:
        t = ds.transform
        ds.transform = t @ t.translation(0.0004, 0)  # 0.0002 m east
        shifted = ds.transform
    assert shifted != window_transform(Window(W // 2, 0, W // 2, H // 2), TRANSFORM)
    out = tmp_path / "depth"
    records = tiledepth.batch(tiles, out, mosaic=True, **OPTS)
    assert [r.status for r in records] == ["done"] * 4
    for tile in tiles:
        output = out / tile.name.replace(".tif", ".depth.tif")
        assert check_output(output, tile) is None
        with rasterio.open(output) as ds, rasterio.open(tile) as src:
            assert ds.transform == src.transform
    again = tiledepth.batch(tiles, out, mosaic=True, resume=True, **OPTS)
    assert [r.status for r in again] == ["skipped"] * 4  # nothing fused again
    split = run_mosaic(tiles, tmp_path / "split", split=True, **OPTS)
    with rasterio.open(split[1]) as ds:
        assert ds.transform == shifted
    np.testing.assert_array_equal(_read(split[1]), _read(out / "q1.depth.tif"))


def test_batch_mosaic_on_error_stop_ends_at_the_first_refused_input(tmp_path, survey,
                                                                    monkeypatch):
    """--on-error stop was ignored by batch --mosaic: an input refused before the fusion (a
    user's file at its output) did not stop the batch; the others were fused and cut. The
    batch now ends there, before any model call: the inputs before it that --resume keeps
    are recorded as skipped, it as failed, and nothing else is fused, cut or recorded."""
    _, tiles = survey
    out = tmp_path / "depth"
    out.mkdir()
    (out / "q1.depth.tif").write_text("my notes")
    calls = _calls(tmp_path, monkeypatch)
    records = tiledepth.batch(tiles, out, mosaic=True, on_error="stop", **SLOW)
    assert [(r.input, r.status) for r in records] == [(str(tiles[1]), "failed")]
    assert "q1.depth.tif: already exists" in records[0].error
    assert calls() == 0 and (out / "q1.depth.tif").read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == ["q1.depth.tif", MANIFEST_NAME]
    assert read_manifest(out / MANIFEST_NAME) == records
    # resumed: q0 and q2 to cut, q1 kept, a user's file at q3's output
    (out / "q1.depth.tif").unlink()
    assert [r.status for r in tiledepth.batch(tiles, out, mosaic=True, **OPTS)] == \
        ["done"] * 4
    for i in (0, 2):
        (out / f"q{i}.depth.tif").unlink()
    (out / "q3.depth.tif").write_text("my notes")
    res = CliRunner().invoke(main, ["batch", *map(str, tiles), "-o", str(out), "--mosaic",
                                    "--resume", "--on-error", "stop", "--model", SLOW["model"],
                                    "--tile-size", "96", "--coarse-size", "96",
                                    "--no-progress"])
    assert res.exit_code == 1, res.output
    assert [(r.input, r.status) for r in read_manifest(out / MANIFEST_NAME)[5:]] == \
        [(str(tiles[1]), "skipped"), (str(tiles[3]), "failed")]
    assert calls() == 0 and not (out / "q0.depth.tif").exists()
    assert not list(out.glob(".tiledepth-mosaic*"))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_input_without_georeferencing_is_named_so_wherever_it_is(tmp_path):
    """Only the first input was checked for georeferencing: a later one without it was
    told to reproject (CRS None differs) or that it is not north-up (its identity
    transform). Each is told it has none, in one line."""
    image = depth_image(96, 96)
    a = write_raster(tmp_path / "a.tif", image)
    plain = write_raster(tmp_path / "plain.tif", image, crs=None, transform=None)
    no_transform = write_raster(tmp_path / "crs_only.tif", image, transform=None)
    for inputs, bad in [([plain, a], plain), ([a, plain], plain),
                        ([a, no_transform], no_transform), ([no_transform, a], no_transform)]:
        with pytest.raises(InputError, match=rf"^{re.escape(str(bad))}: has no georeferencing; "
                           r"a mosaic needs CRS and transform$"):
            build_vrt(inputs)


def test_split_outputs_are_written_under_each_outputs_own_lock(tmp_path, survey):
    """A split writes each output under that output's lock, as a run of it would: a run
    writing one of them meanwhile stops the split (neither recovers the other's placement
    as it places its files); a killed split's temporary file is removed by the next one."""
    from tiledepth.errors import BusyError
    from tiledepth.lock import lock_output, unlock_output

    _, tiles = survey
    out = tmp_path / "split"
    out.mkdir()
    target = out / "q1.depth.tif"  # the second quadrant's output
    stale = out / ".q1.depth.tif.0123abcd.partial"
    stale.write_bytes(b"left by a killed split")
    fd = lock_output(target)
    try:
        with pytest.raises(BusyError):
            run_mosaic(tiles, out, split=True, **OPTS)
    finally:
        unlock_output(target, fd)
    assert stale.exists()  # never touched while another run held the output
    outputs = run_mosaic(tiles, out, split=True, overwrite=True, **OPTS)
    assert target in outputs and not stale.exists()


def _rpcs():
    """RPCs of a 112 x 192 px scene (what they say matters not here, only that they stay)."""
    from rasterio.rpc import RPC

    return RPC(height_off=0, height_scale=100, lat_off=45, lat_scale=0.01,
               line_den_coeff=[1] + [0] * 19, line_num_coeff=[0, 0, -1] + [0] * 17,
               line_off=96, line_scale=96, long_off=7, long_scale=0.01,
               samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18,
               samp_off=56, samp_scale=56)


def test_split_outputs_keep_their_inputs_rpcs_and_pixel_is_point(tmp_path):
    """A run of one input keeps its RPCs and its AREA_OR_POINT=Point; --split and batch
    --mosaic built their outputs' grid by hand and dropped both. Each output keeps its own
    input's; the fused map says Point only where every input does, and has no RPCs (each
    input's model only its own pixels)."""
    image = depth_image(H, W)
    halves = []
    for i, col in enumerate((0, W // 2)):
        path = write_raster(tmp_path / f"h{i}.tif", image[:, :, col:col + W // 2],
                            transform=window_transform(Window(col, 0, W // 2, H), TRANSFORM))
        with rasterio.open(path, "r+") as ds:
            ds.rpcs = _rpcs()
            ds.update_tags(AREA_OR_POINT="Point")
        halves.append(path)

    def described(path):
        with rasterio.open(path) as ds:
            rpcs = None if ds.rpcs is None else ds.rpcs.to_dict()
            return ds.tags().get("AREA_OR_POINT"), rpcs, ds.transform

    want = [described(p) for p in halves]
    assert want[0][0] == "Point" and want[0][1]["samp_off"] == 56
    assert described(tiledepth.run(halves[0], tmp_path / "one.tif", **OPTS).output) == want[0]
    split = run_mosaic(halves, tmp_path / "split", split=True, **OPTS)
    assert [described(p) for p in split] == want
    records = tiledepth.batch(halves, tmp_path / "b", mosaic=True, **OPTS)
    assert [described(r.output) for r in records] == want
    fused = run_mosaic(halves, tmp_path / "fused.tif", **OPTS).output
    assert described(fused) == ("Point", None, TRANSFORM)
    again = tiledepth.batch(halves, tmp_path / "b", mosaic=True, resume=True, **OPTS)
    assert [r.status for r in again] == ["skipped"] * 2

    with rasterio.open(halves[1], "r+") as ds:  # one input of Area pixels
        ds.update_tags(AREA_OR_POINT="Area")
    want[1] = described(halves[1])
    assert want[1][0] == "Area"
    fused = run_mosaic(halves, tmp_path / "mixed.tif", **OPTS).output
    assert described(fused) == ("Area", None, TRANSFORM)
    split = run_mosaic(halves, tmp_path / "split2", split=True, **OPTS)
    assert [described(p) for p in split] == want
    # an output cut so (its own Point, the fused map's Area) is known for one cut from it
    from tiledepth.mosaic import _cut_from, split_outputs

    mosaic = build_vrt(halves)
    targets = [tmp_path / "cut" / f"h{i}.depth.tif" for i in range(2)]
    split_outputs(fused, mosaic, targets)
    assert [described(p) for p in targets] == want
    assert _cut_from(fused, mosaic.members, targets) == [True, True]


def _counting():
    """A model (the red band) and the list of its calls' batch sizes."""
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch[..., 0]

    return model, calls


def test_a_split_never_replaces_or_removes_one_of_its_inputs(tmp_path):
    """A split output, its preview or an old output's companion that --overwrite removes is
    never one of the files the split reads: refused in one line before any model call,
    nothing written (an input named a.depth.tif beside a.tif was replaced by a's map; a
    preview tiledepth wrote, b.depth.png beside b.tif, and its .aux.xml, were removed as
    the old output's preview)."""
    from tiledepth.safe_write import mark_png

    model, calls = _counting()
    opts = dict(OPTS, model=model)
    image = _noisy(64, 160, 7)
    east = TRANSFORM @ TRANSFORM.translation(80, 0)
    cases = {  # folder -> (inputs, config, what the message says)
        "tif": (["a.tif", "a.depth.tif"], None, r"the output path is the input"),
        "png": (["b.tif", "b.depth.png"], None, r"b\.depth\.png: (is the input .*, and "
                r"--overwrite of -o b\.depth\.tif would remove it as the old output's preview"
                r"|the preview of -o b\.depth\.tif would replace the input)"),
    }
    for folder, (names, config, said) in cases.items():
        root = tmp_path / folder
        root.mkdir()
        for name, half, where in zip(names, (image[:, :, :80], image[:, :, 80:]),
                                     (TRANSFORM, east), strict=True):
            if name.endswith(".png"):  # a frame georeferenced by GDAL's .aux.xml beside it
                with rasterio.open(root / name, "w", driver="PNG", width=80, height=64,
                                   count=3, dtype="uint8", crs="EPSG:32611",
                                   transform=where) as ds:
                    ds.write(half)
                mark_png(root / name)  # a preview tiledepth wrote (a user's PNG stays)
            else:
                write_raster(root / name, half, transform=where)
        if config is not None:
            (root / config).write_text("tile_size: 96\n")
        before = {p.name: p.read_bytes() for p in root.iterdir()}
        assert folder != "png" or "b.depth.png.aux.xml" in before
        for preview in (False, True):
            with pytest.raises(OutputError, match=said):
                run_mosaic([root / n for n in names], root, split=True, overwrite=True,
                           preview=preview, config=None if config is None else root / config,
                           **opts)
        assert {p.name: p.read_bytes() for p in root.iterdir()} == before, folder
    # through the CLI: one line, exit code 2; batch --mosaic too
    args = ["--model", OPTS["model"], "--tile-size", "96", "--coarse-size", "96",
            "--no-progress", "--overwrite"]
    root = tmp_path / "tif"
    res = CliRunner().invoke(main, ["run", str(root / "a.tif"), str(root / "a.depth.tif"),
                                    "--mosaic", "--split", "-o", str(root), *args])
    assert res.exit_code == 2, res.output
    assert res.output == f"tiledepth: error: {root / 'a.depth.tif'}: the output path is the " \
                         "input; choose another with -o\n"
    res = CliRunner().invoke(main, ["batch", str(root / "a.tif"), str(root / "a.depth.tif"),
                                    "--mosaic", "-o", str(root), *args])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and "a.depth.tif: is the input" in res.output
    assert calls == []
    assert sorted(p.name for p in root.iterdir()) == ["a.depth.tif", "a.tif"]


def test_a_split_keeps_a_users_png_and_json_at_an_outputs_companion_names(tmp_path):
    """A split with --overwrite removes an old output's preview and sidecar only where
    tiledepth wrote them, so a user's PNG input a.depth.png beside a.tif (and its
    .aux.xml) and a user's config a.depth.json are no companions it removes: it was refused
    ("would remove it as the old output's preview"), though it keeps them; it runs, twice
    (the second replacing the first's outputs), each of them kept byte for byte. With
    --preview, which replaces a.depth.png, it is refused."""
    image = _noisy(64, 160, 7)
    west = write_raster(tmp_path / "a.tif", image[:, :, :80])
    png = tmp_path / "a.depth.png"  # the user's frame, east of a.tif (placed by .aux.xml)
    with rasterio.open(png, "w", driver="PNG", width=80, height=64, count=3, dtype="uint8",
                       crs="EPSG:32611", transform=TRANSFORM @ TRANSFORM.translation(80, 0)) \
            as ds:
        ds.write(image[:, :, 80:])
    config = tmp_path / "a.depth.json"
    config.write_text('{"tile_size": 96}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert "a.depth.png.aux.xml" in before
    for _ in range(2):
        outputs = run_mosaic([west, png], tmp_path, split=True, overwrite=True, config=config,
                             **OPTS)
        assert outputs == [tmp_path / "a.depth.tif", tmp_path / "a.depth.depth.tif"]
        assert {n: (tmp_path / n).read_bytes() for n in before} == before
    with pytest.raises(OutputError, match=r"a\.depth\.png: the preview of -o a\.depth\.tif "
                                          "would replace the input"):
        run_mosaic([west, png], tmp_path, split=True, overwrite=True, config=config,
                   preview=True, **OPTS)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def _band_cases(tmp_path):
    """4-band rasters with nodata 0 (two side by side, each case) whose bands are 0 in
    different places: all four, the first three alone (RGB), the fourth alone (NIR), and
    the second alone; with the colour interpretations and --bands of each case."""
    from rasterio.enums import ColorInterp as C

    image = np.concatenate([_noisy(48, 128, 8), _noisy(48, 128, 9)[:1]])
    image[:, :6, :6] = 0  # every band
    image[:3, 10:20, 8:24] = 0  # RGB
    image[3, 24:36, 30:50] = 0  # NIR
    image[1, 38:44, 4:40] = 0  # green alone
    image[:3, 10:20, 70:90] = 0  # RGB, in the second file
    alpha = np.where(np.arange(128) % 23 < 3, 0, 255).astype(np.uint8)
    east = TRANSFORM @ TRANSFORM.translation(64, 0)
    nir = [C.red, C.green, C.blue, C.undefined]
    for kind, ci, bands in (("rgbn", nir, None), ("rgbn_234", nir, (2, 3, 4)),
                            ("rgba", [C.red, C.green, C.blue, C.alpha], None)):
        data = image.copy()
        if kind == "rgba":  # an alpha band the declared nodata shadows in GDAL's mask
            data[3] = alpha[None, :]
        yield kind, bands, [
            write_raster(tmp_path / f"{kind}_{i}.tif", data[:, :, 64 * i:64 * (i + 1)],
                         nodata=0, colorinterp=ci, transform=[TRANSFORM, east][i],
                         photometric="RGB", extrasamples=None if kind != "rgba" else 2)
            for i in range(2)]


def _valid(path, **kw):
    """The validity a run of ``path`` with options ``kw`` (bands, nodata) reads."""
    from tiledepth.readers import RasterReader

    with RasterReader(path, **kw) as src:
        return src.read_valid(Window(0, 0, src.width, src.height))


def test_a_mosaic_masks_each_input_by_the_bands_the_model_reads(tmp_path):
    """An RGB + near-infrared input with nodata is masked where the bands the model reads
    (RGB, or --bands) all equal it, as a run of it alone masks it, not by band 4's nodata
    (a mosaic masked the RGB collar valid and a dark NIR field NaN); an RGBA input whose
    nodata shadows its alpha band in GDAL's mask is masked by both, as a run of it."""
    cases = list(_band_cases(tmp_path))
    # a mosaic of one file masks what a run of it masks, and its split too
    path = tmp_path / "rgbn_0.tif"
    plain = np.isnan(_read(tiledepth.run(path, tmp_path / "plain.tif", **OPTS).output))
    fused = np.isnan(_read(run_mosaic([path], tmp_path / "m.tif", **OPTS).output))
    assert plain[10:20, 8:24].all() and not plain[24:36, 30:50].any()
    np.testing.assert_array_equal(fused, plain)
    split = run_mosaic([path, tmp_path / "rgbn_1.tif"], tmp_path / "s", split=True, **OPTS)
    np.testing.assert_array_equal(np.isnan(_read(split[0])), plain)
    # the VRT's mask, across both files, in windows and decimated reads
    for kind, bands, paths in cases:
        truth = np.hstack([_valid(p, bands=bands) for p in paths])
        assert 0 < (~truth).sum() < truth.size / 4, kind
        _masks_match(build_vrt(paths, **({} if bands is None else {"bands": bands})).vrt,
                     truth)


def test_nodata_option_replaces_the_inputs_own_in_a_mosaic(tmp_path):
    """--nodata is the nodata of every input of a mosaic, instead of the one each declares,
    as a run of each alone takes it: pixels equal to the declared value are valid, those
    equal to --nodata masked (a mosaic masked the declared value's 40 x 40 px block NaN),
    and where inputs overlap, one's --nodata pixels leave the other's valid ones."""
    a, b = _noisy(64, 80, 10), _noisy(64, 80, 11)
    a[:, :20, :20] = 7  # the declared (wrong) nodata's value
    a[:, -12:, :16] = 0  # the real collar: 0
    b[:, :30, :10] = 0  # b's collar, over a's last 10 columns
    east = TRANSFORM @ TRANSFORM.translation(70, 0)
    paths = [write_raster(tmp_path / "a.tif", a, nodata=7),
             write_raster(tmp_path / "b.tif", b, nodata=7, transform=east)]
    alone = [_valid(p, nodata=0) for p in paths]
    assert alone[0][:20, :20].all() and not alone[0][-12:, :16].any()
    plain = _read(tiledepth.run(paths[0], tmp_path / "plain.tif", nodata=0, **OPTS).output)
    fused = _read(run_mosaic(paths[:1], tmp_path / "m.tif", nodata=0, **OPTS).output)
    np.testing.assert_array_equal(np.isnan(fused), np.isnan(plain))
    np.testing.assert_array_equal(np.isnan(fused), ~alone[0])
    truth = np.zeros((64, 150), bool)
    truth[:, :80] = alone[0]
    truth[:, 70:] |= alone[1]
    both = np.isnan(_read(run_mosaic(paths, tmp_path / "m2.tif", nodata=0, **OPTS).output))
    np.testing.assert_array_equal(both, ~truth)
    mosaic = build_vrt(paths, nodata=0)
    _masks_match(mosaic.vrt, truth)
    with rasterio.open(mosaic.vrt) as ds:  # a's pixels under b's collar, as they are
        np.testing.assert_array_equal(ds.read((1, 2, 3))[:, :30, 70:80], a[:, :30, 70:])


def test_batch_mosaic_resume_after_an_input_changed_cuts_every_output_from_one_fusion(
        tmp_path, survey, monkeypatch):
    """batch --mosaic --resume after a stop while cutting, one input delivered again since:
    the outputs cut from the earlier fusion are cut again from the new one, as a fresh
    batch of the current inputs cuts them (they were kept: a seam between them and the
    new ones)."""
    _, tiles = survey
    out = tmp_path / "depth"
    resume = _stop_placing(monkeypatch, "q2.depth.tif")
    with pytest.raises(KeyboardInterrupt):
        tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, **OPTS)
    resume()
    old = _read(out / "q0.depth.tif")
    with rasterio.open(tiles[3], "r+") as ds:  # q3 delivered again, other pixels
        ds.write((ds.read() // 2 + 60).astype(np.uint8))
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True, **OPTS)
    assert [r.status for r in records] == ["done"] * 4
    fresh = tiledepth.batch([tmp_path / "tiles"], tmp_path / "fresh", mosaic=True, **OPTS)
    assert not np.array_equal(old, _read(fresh[0].output), equal_nan=True)
    for got, want in zip(records, fresh, strict=True):
        np.testing.assert_array_equal(_read(got.output), _read(want.output))
    # nothing changed since: every output kept
    again = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True, **OPTS)
    assert [r.status for r in again] == ["skipped"] * 4


def test_no_resume_fuses_again_instead_of_cutting_a_kept_fused_map(tmp_path, survey,
                                                                    monkeypatch):
    """resume=False (--no-resume) after a split stopped while cutting predicts again, as a
    run's checkpoint is not resumed: the outputs already cut are in the way, as any file,
    and with overwrite all are fused and cut again (the kept fused map was cut, no model
    call)."""
    tiles, calls, out, first = _split_stopped_while_cutting(tmp_path, survey, monkeypatch)
    with pytest.raises(OutputError, match=r"q0\.depth\.tif: already exists"):
        run_mosaic(tiles, out, split=True, resume=False, **SLOW)
    assert calls() == first
    res = CliRunner().invoke(main, ["run", *map(str, tiles), "--mosaic", "--split", "-o",
                                    str(out), "--no-resume", "--overwrite", "--model",
                                    SLOW["model"], "--tile-size", "96", "--coarse-size",
                                    "96", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert calls() == 2 * first
    assert sorted(p.name for p in out.iterdir()) == [f"q{i}.depth.tif" for i in range(4)]


def test_split_says_in_one_line_that_o_is_no_folder(tmp_path, survey):
    """run --mosaic --split -o FILE (or FILE/sub) is refused in one line, exit code 2 (it
    was an "unexpected FileExistsError", exit 1), and the file is left as it is; so is
    -o out.TIF (a folder named out.TIF was made)."""
    _, tiles = survey
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for output, said in ((notes, "is not a folder; with split"),
                         (notes / "sub", r"cannot create the output folder \(Not a directory\)")):
        with pytest.raises(OutputError, match=rf"^{re.escape(str(output))}: {said}"):
            run_mosaic(tiles, output, split=True, **OPTS)
    for name in ("out.TIF", "out.Tiff"):
        with pytest.raises(OptionError, match=r"-o is a local output folder"):
            run_mosaic(tiles, tmp_path / name, split=True, **OPTS)
    res = CliRunner().invoke(main, ["run", *map(str, tiles), "--mosaic", "--split", "-o",
                                    str(notes), "--model", OPTS["model"], "--no-progress"])
    assert res.exit_code == 2
    assert res.output == f"tiledepth: error: {notes}: is not a folder; with split (--split), " \
                         "-o is the output folder; choose another -o\n"
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tiles", "whole.tif"]


def test_a_split_killed_just_after_placing_an_output_leaves_nothing_behind(
        tmp_path, survey, monkeypatch):
    """A split killed right after it placed an output (before it removed that output's
    placement journal and lock file) and run again keeps that output, and removes its
    journal and lock file (they stayed for good: only the outputs cut again were
    cleaned); batch --mosaic --resume too."""
    from pathlib import Path

    import tiledepth.lock
    from tiledepth.write import GeoTiffWriter

    _, tiles = survey
    real_drop, real_unlock = GeoTiffWriter._drop_journal, tiledepth.lock.unlock_output

    def killed(name):  # q1's journal and lock file stay, as a SIGKILL leaves them
        def drop(self):
            if self.path.name != name:
                real_drop(self)

        def unlock(output, fd):
            if Path(output).name == name:
                os.close(fd)
            else:
                real_unlock(output, fd)

        monkeypatch.setattr(GeoTiffWriter, "_drop_journal", drop)
        monkeypatch.setattr(tiledepth.lock, "unlock_output", unlock)
        resume = _stop_placing(monkeypatch, "q2.depth.tif")  # the split ends there

        def back():
            resume()
            monkeypatch.setattr(GeoTiffWriter, "_drop_journal", real_drop)
            monkeypatch.setattr(tiledepth.lock, "unlock_output", real_unlock)
        return back

    left = {".q1.depth.placing.json", ".q1.depth.tiledepth-lock"}
    out = tmp_path / "split"
    back = killed("q1.depth.tif")
    with pytest.raises(KeyboardInterrupt):
        run_mosaic(tiles, out, split=True, **OPTS)
    back()
    assert left <= {p.name for p in out.iterdir()}
    run_mosaic(tiles, out, split=True, **OPTS)
    assert sorted(p.name for p in out.iterdir()) == [f"q{i}.depth.tif" for i in range(4)]
    out = tmp_path / "batch"
    back = killed("q1.depth.tif")
    with pytest.raises(KeyboardInterrupt):
        tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, **OPTS)
    back()
    assert left <= {p.name for p in out.iterdir()}
    records = tiledepth.batch([tmp_path / "tiles"], out, mosaic=True, resume=True, **OPTS)
    assert [r.status for r in records] == ["skipped", "skipped", "done", "done"]
    assert sorted(p.name for p in out.iterdir()) == \
        sorted([MANIFEST_NAME, *(f"q{i}.depth.tif" for i in range(4))])


def test_a_nodata_no_band_can_hold_is_refused_before_the_mosaic_is_built(tmp_path, survey):
    """--nodata 300 of uint8 inputs was refused only by the run of the built VRT (its
    masking of each input, "mask nothing", made first): a split had made its output
    folder by then, and left it. build_vrt refuses it now, in the run's one line, before
    anything is written; batch --mosaic fails every input with that line, as before."""
    _, tiles = survey
    vrt = build_vrt(tiles).vrt
    with pytest.raises(OptionError) as ran:
        tiledepth.run(vrt, tmp_path / "run.tif", nodata=300, **OPTS)
    line = ("mosaic.vrt: --nodata 300 cannot occur in a uint8 band (whole numbers 0-255): it "
            "would mask nothing; give the value its empty pixels hold, or leave --nodata out")
    assert str(ran.value) == line
    with pytest.raises(OptionError) as built:
        build_vrt(tiles, nodata=300)
    assert str(built.value) == line
    for split, out in ((False, tmp_path / "fused.tif"), (True, tmp_path / "split")):
        with pytest.raises(OptionError) as info:
            run_mosaic(tiles, out, split=split, nodata=300, **OPTS)
        assert str(info.value) == line
        assert not os.path.lexists(out), split  # (the split's folder was left, empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles", "whole.tif"]
    assert build_vrt(tiles, nodata=255).vrt != vrt  # a value the bands hold: declared
    records = tiledepth.batch([tmp_path / "tiles"], tmp_path / "depth", mosaic=True,
                              nodata=300, **OPTS)
    assert [(r.status, r.error) for r in records] == [("failed", line)] * 4
    assert sorted(p.name for p in (tmp_path / "depth").iterdir()) == [MANIFEST_NAME]
