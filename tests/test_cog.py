"""Output extras: overviews by default, Cloud Optimized GeoTIFFs, atomic finishing."""

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from toy_models import red

import tiledepth
from tiledepth import cog
from tiledepth.cli import main
from tiledepth.errors import OutputError


def test_overviews_are_built_by_default(rgba_tif, tmp_path):
    r = tiledepth.run(rgba_tif, tmp_path / "o.tif", model=red, tile_size=256)
    with rasterio.open(r.output) as ds:
        assert ds.overviews(1) == [2, 4]
        assert ds.tags(ns="rio_overview")["resampling"] == "average"
        full = ds.read(1)
        half = ds.read(1, out_shape=(300, 350))  # served from the first overview
    # average overviews skip NaN: the masked disc stays masked, the rest averages
    assert np.isnan(half).sum() > 0 and np.isfinite(half).sum() > 0.9 * np.isfinite(full).sum() / 4
    r = tiledepth.run(rgba_tif, tmp_path / "n.tif", model=red, tile_size=256, overviews=False)
    with rasterio.open(r.output) as ds:
        assert ds.overviews(1) == []


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


def test_a_failing_finish_leaves_nothing(rgba_tif, tmp_path, monkeypatch):
    def broken(path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cog, "convert_to_cog", broken)
    with pytest.raises(OutputError, match="disk full"):
        tiledepth.run(rgba_tif, tmp_path / "c.tif", model=red, tile_size=256, cog=True)
    # no output, whole or partial: only the checkpoint, kept for a resume
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[1:] == ["ortho.tif"] and left[0].startswith(".c.tif.tiledepth-")


def test_overview_factors():
    assert cog.overview_factors(700, 600) == [2, 4]
    assert cog.overview_factors(256, 100) == []
    assert cog.overview_factors(100000, 10)[-1] == 512
