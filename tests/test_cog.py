"""Output extras: overviews by default, Cloud Optimized GeoTIFFs, atomic finishing."""

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, TRANSFORM
from toy_models import red

import tiledepth
from tiledepth import cog
from tiledepth.cli import main
from tiledepth.errors import OutputError
from tiledepth.read import GDAL_OPTIONS


def test_overviews_are_built_by_default(rgba_tif, tmp_path):
    r = tiledepth.run(rgba_tif, tmp_path / "o.tif", model=red, tile_size=256)
    with rasterio.open(r.output) as ds:
        assert ds.overviews(1) == [2, 4]
        assert ds.tags(ns="rio_overview")["resampling"] == "average"
        full = ds.read(1)
        half = ds.read(1, out_shape=(300, 350))  # served from the first overview
    # average overviews skip NaN: the masked disc stays masked, the rest averages
    assert np.isnan(half).sum() > 0 and np.isfinite(half).sum() > 0.9 * np.isfinite(full).sum() / 4
    # the tail after the fusion is timed step by step
    assert {"blend_write", "close", "overviews", "verify", "companions"} <= set(r.seconds)
    assert all(r.seconds[k] >= 0 for k in ("close", "overviews", "verify", "companions"))
    r = tiledepth.run(rgba_tif, tmp_path / "n.tif", model=red, tile_size=256, overviews=False)
    with rasterio.open(r.output) as ds:
        assert ds.overviews(1) == []
    assert "overviews" not in r.seconds and "verify" in r.seconds


def test_cog_is_tiled_with_overviews_and_cog_layout(rgba_tif, tmp_path):
    out = tmp_path / "c.tif"
    result = CliRunner().invoke(main, ["run", str(rgba_tif), "-o", str(out), "--model",
                                       "toy_models:red", "--tile-size", "256", "--cog",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1) == [2, 4]
        assert ds.compression.name.lower() == "deflate"
        assert ds.tags()["TILEDEPTH_TILE_SIZE"] == "256"  # provenance survives the copy
        depth = ds.read(1)
    with rasterio.open(rgba_tif) as src:
        np.testing.assert_array_equal(np.isnan(depth), src.read(4) == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.tif", "ortho.tif"]


def test_cog_without_overviews_has_none(rgba_tif, tmp_path):
    """--cog --no-overviews: a COG as asked, without overviews (GDAL's validator calls such
    a file a valid COG, with a warning that overviews are recommended above 512 px)."""
    out = tmp_path / "c.tif"
    result = CliRunner().invoke(main, ["run", str(rgba_tif), "-o", str(out), "--model",
                                       "toy_models:red", "--tile-size", "256", "--cog",
                                       "--no-overviews", "--no-progress"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == []
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert np.isfinite(ds.read(1)).sum() > 0
    r = tiledepth.run(rgba_tif, tmp_path / "l.tif", model=red, tile_size=256, cog=True,
                      overviews=False)  # the library as the CLI
    assert "overviews" not in r.seconds and "cog" in r.seconds
    with rasterio.open(r.output) as ds:
        assert ds.overviews(1) == [] and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_a_failing_finish_leaves_nothing(rgba_tif, tmp_path, monkeypatch):
    def broken(path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cog, "convert_to_cog", broken)
    with pytest.raises(OutputError, match="disk full"):
        tiledepth.run(rgba_tif, tmp_path / "c.tif", model=red, tile_size=256, cog=True)
    # no output, whole or partial: only the checkpoint, kept for a resume
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[1:] == ["ortho.tif"] and left[0].startswith(".c.tif.tiledepth-")


def test_overviews_are_built_with_a_cache_of_four_block_rows(tmp_path, monkeypatch):
    assert cog.overview_cache(8185, 512) == 4 * 8185 * 512 * 4
    assert cog.overview_cache(8185, 512, 2) == 2 * 4 * 8185 * 512 * 4
    assert cog.overview_cache(300, 256) == GDAL_OPTIONS["GDAL_CACHEMAX"]  # never less
    assert cog.overview_cache(10**6, 512) == cog.MAX_OVERVIEW_CACHE
    asked = []
    monkeypatch.setattr(cog, "overview_cache", lambda *a: asked.append(a) or 32 * 2**20)
    path = tmp_path / "a.tif"
    with rasterio.open(path, "w", driver="GTiff", width=700, height=600, count=1,
                       dtype="float32", tiled=True, blockxsize=256, blockysize=256, crs=CRS,
                       transform=TRANSFORM) as ds:
        ds.write(np.ones((1, 600, 700), np.float32))
    assert cog.build_overviews(path) == [2, 4]
    assert asked == [(700, 256, 1)]


def test_overview_factors():
    assert cog.overview_factors(700, 600) == [2, 4]
    assert cog.overview_factors(256, 100) == []
    assert cog.overview_factors(100000, 10)[-1] == 512
