"""The fusion report: the sidecar JSON every run writes beside its output."""

import json

import numpy as np
import rasterio
from conftest import depth_field, write_raster

import tiledepth
from tiledepth.report import sidecar_path, write_sidecar


class GrossModel:
    """Depth in the red channel, affinely distorted per tile; tile 4 is another scene, on
    every call (its second call, :func:`tiledepth.infer.retry_key`, fails too)."""

    kind, name, batch_size = "depth", "gross-toy", 4

    def predict(self, batch, keys):
        out = []
        for x, key in zip(batch, keys, strict=True):
            rng = np.random.default_rng(key + 10)
            p = rng.uniform(0.5, 2) * x[..., 0] + rng.uniform(-1, 1)
            if key % 2**32 == 4:
                p = 5.0 * x[::-1, ::-1, 0] ** 2
            out.append(p)
        return np.stack(out).astype(np.float32)


def test_run_writes_the_sidecar_with_every_tile_and_the_flagged_one(tmp_path):
    d = depth_field(300, 400)
    src = write_raster(tmp_path / "in.tif", np.repeat(d[None], 3, 0))
    result = tiledepth.run(src, tmp_path / "out.depth.tif", model=GrossModel(), tile_size=128,
                           anchor_blur=0)  # an exact model: a sharp anchor
    assert result.sidecar == tmp_path / "out.depth.json" == sidecar_path(result.output)
    report = json.loads(result.sidecar.read_text())
    assert report["tiledepth"] == tiledepth.__version__
    assert report["raster"] == {"height": 300, "width": 400}
    # alignment 'auto': the coarse map (the raster's 400 px) has 128 pixels across a 128 px
    # tile, under BILINEAR_MIN_ANCHOR_PIXELS = 300
    assert (report["tile_size"], report["overlap"], report["alignment"]) == \
        (128, 0.25, "affine")
    assert len(report["tiles"]) == result.tiles
    by_id = {t["id"]: t for t in report["tiles"]}
    assert [t["id"] for t in report["flagged"]] == [4]
    assert by_id[4]["flag"] == "inconsistent" and by_id[4]["filled_from_coarse"]
    assert by_id[4]["window"] == [int(v) for v in by_id[4]["window"]]
    # tiles that do not touch tile 4 agree with their neighbours; tile 4 is the worst
    from tiledepth.tiling import overlap_slices, tile_grid

    tiles = {t.id: t for row in tile_grid(300, 400, 128, 0.25) for t in row}
    far = [t["consistency"] for i, t in by_id.items()
           if i != 4 and overlap_slices(tiles[i], tiles[4]) is None]
    assert far and max(far) < 1e-4
    assert by_id[4]["consistency"] == max(t["consistency"] for t in report["tiles"]) > 0.05
    with rasterio.open(result.output) as ds:
        tags = ds.tags()
    assert tags["TILEDEPTH_FLAGGED_TILES"] == "1"
    assert float(tags["TILEDEPTH_CONSISTENCY"]) == report["consistency"]
    assert result.flagged == 1 and result.consistency == report["consistency"]


def test_scales_in_the_sidecar_undo_known_distortions(tmp_path):
    d = depth_field(300, 400)
    src = write_raster(tmp_path / "in.tif", np.repeat(d[None], 3, 0))

    class Scaled:
        kind, name, batch_size = "depth", "scaled-toy", 4

        def predict(self, batch, keys):  # tile k is (k + 1) * depth, the coarse map depth
            return np.stack([(max(k, 0) + 1.0) * x[..., 0]
                             for x, k in zip(batch, keys, strict=True)])

    result = tiledepth.run(src, tmp_path / "o.tif", model=Scaled(), tile_size=128,
                           coarse_size=1024)
    report = json.loads(result.sidecar.read_text())
    for tile in report["tiles"]:
        assert abs(tile["scale"] * (tile["id"] + 1) - 1) < 1e-4
        assert abs(tile["shift"]) < 1e-4
    assert report["consistency"] < 1e-5 and report["flagged"] == []


def test_sidecar_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    write_sidecar(path, {"a": 1})
    import json as json_module

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json_module, "dump", boom)
    try:
        write_sidecar(path, {"a": 2})
    except OSError:
        pass
    assert json.loads(path.read_text()) == {"a": 1}  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no partial left
