"""tiledepth.mosaic: many files fused as one raster; --split cuts one output per file."""

import re

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import TRANSFORM, depth_image, write_raster
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

import tiledepth
from tiledepth.cli import main
from tiledepth.errors import InputError, OutputError
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
