"""tiledepth.run end to end on GeoTIFFs, with cheap callable models."""

import dataclasses

import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, depth_field, depth_image, write_raster
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from toy_models import affine_red, metric_red, red

import tiledepth
from tiledepth.errors import InputError, ModelError, OptionError, OutputError
from tiledepth.options import Options


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_run_writes_georeferenced_float32_with_nan_where_masked(rgba_tif, tmp_path):
    out = tmp_path / "out.tif"
    result = tiledepth.run(rgba_tif, out, model=affine_red, tile_size=192, overlap=0.25)
    assert result.output == out and result.tiles >= 9
    with rasterio.open(rgba_tif) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.height, dst.width, dst.count) == (src.height, src.width, 1)
        assert dst.dtypes[0] == "float32"
        assert np.isnan(dst.nodata)
        depth = dst.read(1)
        alpha = src.read(4)
        # bytes on disk: tiled 512 x 512, deflate with floating-point predictor
        assert dst.block_shapes[0] == (512, 512)
        assert dst.compression.name.lower() == "deflate"
        assert dst.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        tags = dst.tags()
        assert tags["TILEDEPTH_VERSION"] == tiledepth.__version__
        assert tags["TILEDEPTH_TILE_SIZE"] == "192"
        assert tags["TILEDEPTH_OVERLAP"] == "0.25"
        assert tags["TILEDEPTH_SEED"] == "0"
        assert "affine_red" in tags["TILEDEPTH_MODEL"]
    np.testing.assert_array_equal(np.isnan(depth), alpha == 0)
    # the fused map matches the encoded depth up to one global scale and shift
    truth = depth_image(600, 700)[0].astype(np.float64)
    ok = alpha > 0
    A = np.c_[depth[ok], np.ones(ok.sum())]
    coef = np.linalg.lstsq(A, truth[ok], rcond=None)[0]
    resid = A @ coef - truth[ok]
    assert np.abs(resid).max() / np.ptp(truth[ok]) < 0.01
    assert leftovers(tmp_path) == []  # no scratch folder, no partial file


def test_default_output_name_and_overwrite(rgba_tif):
    result = tiledepth.run(rgba_tif, model=red, tile_size=256)
    assert result.output == rgba_tif.with_name("ortho.depth.tif")
    assert result.output.exists()
    with pytest.raises(OutputError, match="--overwrite"):
        tiledepth.run(rgba_tif, model=red, tile_size=256)
    tiledepth.run(rgba_tif, model=red, tile_size=256, overwrite=True)


def test_values_are_in_the_coarse_frame(tmp_path):
    """With an exact model, output = the model's own depth (0 near, 1 far)."""
    d = depth_field(300, 400)
    src = write_raster(tmp_path / "in.tif", np.repeat(d[None], 3, 0))
    out = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=128,
                        anchor_blur=0).output  # an exact model: a sharp anchor
    with rasterio.open(out) as ds:
        np.testing.assert_allclose(ds.read(1), d, atol=5e-3)  # the blurred coarse frame


def test_raster_smaller_than_one_tile(tmp_path):
    src = write_raster(tmp_path / "small.tif", depth_image(90, 60))
    calls = []

    def model(batch):
        calls.append(batch.shape)
        return red(batch)

    out = tiledepth.run(src, tmp_path / "o.tif", model=model, tile_size=128).output
    assert (1, 128, 128, 3) in calls  # padded to the tile size for the model
    with rasterio.open(out) as ds:
        assert ds.shape == (90, 60) and np.isfinite(ds.read(1)).all()


def test_uint16_single_band_with_nodata(tmp_path):
    d = depth_field(300, 300)
    band = (1000 + d * 3000).astype(np.uint16)
    band[:40, :] = 0
    src = write_raster(tmp_path / "dem.tif", band[None], nodata=0)
    out = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=128).output
    with rasterio.open(out) as ds:
        depth = ds.read(1)
    assert np.isnan(depth[:40]).all() and np.isfinite(depth[40:]).all()
    # global percentile stretch, the same for every tile: depth stays linear in d
    r = np.corrcoef(depth[40:].ravel(), d[40:].ravel())[0, 1]
    assert r > 0.999


def test_float_with_nan_is_masked(tmp_path):
    d = depth_field(200, 250)
    data = np.repeat(d[None], 3, 0).astype(np.float32)
    data[:, 100:120, 50:90] = np.nan
    src = write_raster(tmp_path / "f.tif", data)
    out = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=96).output
    with rasterio.open(out) as ds:
        depth = ds.read(1)
    np.testing.assert_array_equal(np.isnan(depth), np.isnan(data[0]))


def test_png_without_georeferencing_gets_a_valid_tiff(tmp_path):
    src = write_raster(tmp_path / "frame.png", depth_image(150, 200), crs=None, transform=None,
                       driver="PNG", tiled=False, blockxsize=None, blockysize=None)
    out = tiledepth.run(src, tmp_path / "frame.depth.tif", model=red, tile_size=96).output
    with rasterio.open(out) as ds:
        assert ds.crs is None and ds.driver == "GTiff" and ds.shape == (150, 200)
        assert np.isfinite(ds.read(1)).all()


def test_gcp_georeferenced_input_keeps_gcps(tmp_path):
    gcps = [GroundControlPoint(0, 0, 500000, 5400000), GroundControlPoint(0, 199, 500100, 5400000),
            GroundControlPoint(149, 0, 500000, 5399925)]
    path = tmp_path / "gcp.tif"
    with rasterio.open(path, "w", driver="GTiff", height=150, width=200, count=3, dtype="uint8",
                       gcps=gcps, crs=CRS) as dst:
        dst.write(depth_image(150, 200))
    out = tiledepth.run(path, tmp_path / "o.tif", model=red, tile_size=96).output
    with rasterio.open(out) as ds:
        out_gcps, out_crs = ds.gcps
    assert out_crs == rasterio.crs.CRS.from_string(CRS)
    assert [(g.row, g.col, g.x, g.y) for g in out_gcps] == [(g.row, g.col, g.x, g.y)
                                                             for g in gcps]


def test_rotated_transform_is_kept(tmp_path):
    rotated = from_origin(500000, 5400000, 0.5, 0.5) @ rasterio.Affine.rotation(20)
    src = write_raster(tmp_path / "rot.tif", depth_image(120, 130), transform=rotated)
    out = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64).output
    with rasterio.open(out) as ds:
        assert ds.transform.almost_equals(rotated)


def test_all_masked_input_is_an_input_error(tmp_path):
    data = np.zeros((3, 100, 100), np.uint8)
    src = write_raster(tmp_path / "empty.tif", data, nodata=0)
    with pytest.raises(InputError, match="nothing to estimate"):
        tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64)
    assert not (tmp_path / "o.tif").exists() and leftovers(tmp_path) == []


def test_entirely_masked_tiles_are_skipped(tmp_path):
    rgb = depth_image(300, 300)
    alpha = np.full((300, 300), 255, np.uint8)
    alpha[:, :150] = 0
    src = write_raster(tmp_path / "half.tif", np.concatenate([rgb, alpha[None]]),
                       colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                                    ColorInterp.alpha])
    seen = []

    def model(batch):
        seen.append(len(batch))
        return red(batch)

    result = tiledepth.run(src, tmp_path / "o.tif", model=model, tile_size=64, batch_size=1)
    assert result.skipped > 0
    # + the coarse image's calls: two, the second repeating the first
    assert sum(seen) == result.tiles + min(Options.anchor_calls, 2)


def test_failing_model_leaves_nothing_behind(rgba_tif, tmp_path):
    calls = []

    def model(batch):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("GPU fell off")
        return red(batch)

    out = tmp_path / "o.tif"
    with pytest.raises(RuntimeError, match="GPU fell off") as info:
        # one coarse call: the calls' order below is the test's (anchor_calls' own tests count
        # the coarse calls)
        tiledepth.run(rgba_tif, out, model=model, tile_size=128, batch_size=2, anchor_calls=1)
    assert not out.exists()
    # no partial output; the tiles predicted so far wait in the checkpoint for a rerun
    (kept,) = leftovers(tmp_path)
    assert kept.startswith(".o.tif.tiledepth-")
    # 3 calls: the coarse prediction and 2 batches of 2 tiles (4), or 3 batches before it;
    # then the failed coarse call is seen after the third batch's first tile is stored (5)
    # or after both (6): the main thread checks the anchor between tiles
    assert info.value.__notes__[0].split(" tile prediction(s) kept in")[0] in ("4", "5", "6")


def test_bad_model_output_is_named(rgba_tif, tmp_path):
    from toy_models import returns_nan, wrong_shape

    with pytest.raises(ModelError, match="wrong_shape.*shape"):
        tiledepth.run(rgba_tif, tmp_path / "a.tif", model=wrong_shape, tile_size=256)
    with pytest.raises(ModelError, match="returns_nan.*NaN"):
        tiledepth.run(rgba_tif, tmp_path / "b.tif", model=returns_nan, tile_size=256)
    assert leftovers(tmp_path) == []


def test_output_path_checks(rgba_tif, tmp_path):
    with pytest.raises(OutputError, match="is the input"):
        tiledepth.run(rgba_tif, rgba_tif, model=red, overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        tiledepth.run(rgba_tif, tmp_path / "nope" / "o.tif", model=red)
    with pytest.raises(OptionError, match="overlap"):
        tiledepth.run(rgba_tif, tmp_path / "o.tif", model=red, overlap=0.95)
    with pytest.raises(OptionError, match="tile_size"):
        tiledepth.run(rgba_tif, tmp_path / "o.tif", model=red, tile_size=8)


def test_missing_and_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        tiledepth.run(tmp_path / "missing.tif", model=red)
    with pytest.raises(InputError, match="folder"):
        tiledepth.run(tmp_path, tmp_path / "o.tif", model=red)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    with pytest.raises(InputError, match="cannot read it as a raster"):
        tiledepth.run(text, tmp_path / "o.tif", model=red)


def test_same_seed_same_bytes(rgba_tif, tmp_path):
    a = tiledepth.run(rgba_tif, tmp_path / "a.tif", model=affine_red, tile_size=192).output
    b = tiledepth.run(rgba_tif, tmp_path / "b.tif", model=affine_red, tile_size=192).output
    with rasterio.open(a) as x, rasterio.open(b) as y:
        np.testing.assert_array_equal(x.read(1), y.read(1))


def test_estimate_on_a_numpy_array():
    d = depth_field(250, 330)
    rgb = (np.stack([d, d, d], -1) * 255).astype(np.uint8)
    out = tiledepth.estimate(rgb, model=affine_red, tile_size=96, overlap=0.25,
                             anchor_blur=0)  # exact models: a sharp anchor
    assert out.shape == (250, 330) and out.dtype == np.float32
    r = np.corrcoef(out.ravel(), d.ravel())[0, 1]
    assert r > 0.999
    grey = tiledepth.estimate(d, model=red, tile_size=96, anchor_blur=0)
    np.testing.assert_allclose(grey, d, atol=1e-3)
    # a batch size far above the tile count allocates no more than the tiles (a MemoryError
    # for 234 GiB at 20000): the same map
    np.testing.assert_array_equal(
        tiledepth.estimate(rgb, model=affine_red, tile_size=96, overlap=0.25, anchor_blur=0,
                           batch_size=10**6), out)
    with pytest.raises(OptionError, match="scale 0.5 works on files"):  # it was ignored
        tiledepth.estimate(rgb, model=affine_red, scale=0.5)
    # a masked array (rasterio's read(masked=True), reshaped) masks its pixels masked in
    # every band, as mask= does (its mask was dropped: depth over a nodata collar)
    hidden = np.zeros(rgb.shape, bool)
    hidden[:, :80] = True
    hidden[:10, 200:, 0] = True  # one band alone: a valid pixel, as for a raster's nodata
    masked = tiledepth.estimate(np.ma.masked_array(rgb, hidden), model=affine_red,
                                tile_size=96, overlap=0.25, anchor_blur=0)
    explicit = tiledepth.estimate(rgb, mask=~hidden.all(-1), model=affine_red, tile_size=96,
                                  overlap=0.25, anchor_blur=0)
    assert np.isnan(masked[:, :80]).all() and np.isfinite(masked[:, 80:]).all()
    np.testing.assert_array_equal(masked, explicit)
    for option, value, says in (("nodata", 0, "mask="), ("bands", (3, 2, 1), "image")):
        with pytest.raises(OptionError, match=f"{option} works on files.*{says}"):
            tiledepth.estimate(rgb, model=affine_red, **{option: value})  # were ignored
    # a binary image reads as its uint8 counterpart (0 and 255); it raised a TypeError
    binary = d > 0.5
    np.testing.assert_array_equal(
        tiledepth.estimate(binary, model=red, tile_size=96, anchor_blur=0),
        tiledepth.estimate(binary.astype(np.uint8) * 255, model=red, tile_size=96,
                           anchor_blur=0))


def test_estimate_refuses_the_options_only_a_file_run_uses():
    """memory, resume and overviews were taken and ignored without a word."""
    d = depth_field(64, 80)
    rgb = np.stack([d, d, d], -1)
    for given, says in (({"memory": 64}, "memory: only tiledepth.run uses it"),
                        ({"resume": True}, "resume: only tiledepth.run uses it"),
                        ({"overviews": False}, "overviews: only tiledepth.run uses it"),
                        ({"memory": 0, "resume": False},
                         "memory, resume: only tiledepth.run uses them.*leave them out$")):
        with pytest.raises(OptionError, match=says) as err:
            tiledepth.estimate(rgb, model=red, tile_size=32, **given)
        assert "\n" not in str(err.value)
    # None is "not given", as for make_options: the estimate runs
    out = tiledepth.estimate(rgb, model=red, tile_size=32, anchor_blur=0, memory=None,
                             resume=None, overviews=None)
    np.testing.assert_allclose(out, d, atol=1e-3)


def test_config_file_and_kwargs(rgba_tif, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile-size: 256\noverlap: 0.5\n")
    out = tiledepth.run(rgba_tif, tmp_path / "o.tif", model=red, config=cfg, overlap=0.3).output
    with rasterio.open(out) as ds:
        assert ds.tags()["TILEDEPTH_TILE_SIZE"] == "256"
        assert ds.tags()["TILEDEPTH_OVERLAP"] == "0.3"
    cfg.write_text("tile_sise: 256\n")
    with pytest.raises(OptionError, match="tile_sise.*valid: .*tile_size"):
        tiledepth.run(rgba_tif, tmp_path / "p.tif", model=red, config=cfg)


def test_transform_without_crs_warns(tmp_path, caplog):
    src = write_raster(tmp_path / "nocrs.tif", depth_image(100, 100), crs=None,
                       transform=TRANSFORM)
    with caplog.at_level("WARNING"):
        out = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=64).output
    assert "no CRS" in caplog.text
    with rasterio.open(out) as ds:
        assert ds.crs is None and ds.transform == TRANSFORM


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_pyramid_levels_read_the_file_at_reduced_resolution(rgba_tif, tmp_path, scale):
    """600 x 700 with a 32 px coarse map: one level at 128 px, read from the file (masked)."""
    from tiledepth.fusion.pyramid import pyramid_levels

    assert pyramid_levels(int(700 * scale), 32) == ([128] if scale == 1 else [])
    kw = dict(model=affine_red, tile_size=32, coarse_size=32, scale=scale, anchor_blur=0)
    a = tiledepth.run(rgba_tif, tmp_path / "a.tif", pyramid=True, **kw).output
    b = tiledepth.run(rgba_tif, tmp_path / "b.tif", pyramid=False, **kw).output
    with rasterio.open(rgba_tif) as src, rasterio.open(a) as x, rasterio.open(b) as y:
        alpha = src.read(4)
        pa, pb = x.read(1), y.read(1)
        assert x.tags()["TILEDEPTH_PYRAMID"] == "True"
    np.testing.assert_array_equal(np.isnan(pa), alpha == 0)
    truth = depth_image(600, 700)[0].astype(np.float64)
    ok = alpha > 0

    def rms(depth):
        A = np.c_[depth[ok], np.ones(ok.sum())]
        coef = np.linalg.lstsq(A, truth[ok], rcond=None)[0]
        return np.sqrt(np.mean((A @ coef - truth[ok]) ** 2)) / np.ptp(truth[ok])

    assert rms(pa) < 0.01
    if scale == 1:
        assert not np.array_equal(pa[ok], pb[ok])  # the level changed the anchor
    else:
        np.testing.assert_array_equal(pa, pb)  # 350 px: no level
    # nothing left beside the outputs: no checkpoint folder, no reduced map (scaled.npy)
    assert [p.name for p in tmp_path.iterdir() if ".tiledepth" in p.name] == []


def test_workers_are_capped_at_the_cores_and_a_dense_overlap_is_warned_about(caplog):
    import os

    from tiledepth.options import make_options
    from tiledepth.plan import settle_plan as _settle_plan
    from tiledepth.plan import warn_once as _warn_once

    caplog.set_level("WARNING", logger="tiledepth")
    _warn_once.cache_clear()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cap = max(cores, 2)
    for _ in range(2):  # said once
        opts = _settle_plan(make_options(workers=1000), 300, 700)
    assert opts.workers == cap
    assert _settle_plan(make_options(workers=2), 300, 700).workers == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"workers 1000 is more than the {cores} CPU cores here; using {cap}"]
    caplog.clear()
    for overlap in (0.25, 0.5, 0.89):
        _settle_plan(make_options(tile_size=64, overlap=overlap), 300, 700)
    assert [r.getMessage() for r in caplog.records] == [
        "overlap 0.89 makes 3220 tiles, 36x the 90 at overlap 0.25, and takes about that much "
        "longer; 0.5 or less is usually enough"]


def coarse_read_until_a_tile(monkeypatch):
    """The coarse read (a large raster's decode pass) lasts until the event returned is set
    (at most 5 s), by a tile's model call (``toy_models.Turns(tile_started=event)``)."""
    import threading

    from tiledepth import stages

    read, event = stages.read_coarse_image, threading.Event()

    def slow_read(*args, **kwargs):
        event.wait(5)
        return read(*args, **kwargs)

    monkeypatch.setattr(stages, "read_coarse_image", slow_read)
    return event


def test_tiles_are_predicted_while_the_anchor_is_made(monkeypatch):
    """The tiles' model calls start before the coarse prediction (a slow coarse read does not
    hold them), never overlap the anchor's (coarse, pyramid level), and the output is the
    sequential order's (workers 0: the anchor first, then the tiles) to the bit."""
    from toy_models import Turns

    tile_started = coarse_read_until_a_tile(monkeypatch)
    rgb = np.moveaxis(depth_image(160, 512), 0, -1)  # 33 tiles; a pyramid level of 128 px
    outs, calls = {}, {}
    for workers in (0, 2):
        if workers:
            tile_started.clear()
        else:  # in turn: the coarse image is read first
            tile_started.set()
        model = Turns(seconds=0.02, tile_started=tile_started)  # 9 calls for the tiles
        outs[workers] = tiledepth.estimate(rgb, model=model, tile_size=64, coarse_size=32,
                                           workers=workers)
        assert not model.reentered  # one call at a time
        calls[workers] = made = sorted(model.calls, key=lambda c: c[3])
        assert all(a[4] <= b[3] for a, b in zip(made[:-1], made[1:], strict=True))
    coarse = [[i for i, c in enumerate(calls[w]) if c[2] == [-1]] for w in (0, 2)]
    assert coarse[0] == [0] and calls[0][-1][0] == 1  # in turn: the coarse first, tiles last
    anchor = [c for c in calls[2] if c[0] == 0]  # the coarse prediction and the level's tiles
    assert len(anchor) > 1 and len(coarse[1]) == 1 and coarse[1][0] > 0
    assert calls[2][0][0] == 1  # ahead: a full-resolution tile first, then the coarse image
    np.testing.assert_array_equal(outs[0], outs[2])


def test_tiles_predicted_before_the_anchor_are_read_back_from_the_checkpoint(tmp_path,
                                                                             monkeypatch):
    """With memory 0 the early tiles' statistics are gathered from the checkpoint folder;
    the output is the sequential order's, byte for byte."""
    from toy_models import Turns

    tile_started = coarse_read_until_a_tile(monkeypatch)
    src = write_raster(tmp_path / "in.tif", depth_image(160, 512))
    outs = []
    for workers in (0, 2):
        if workers:
            tile_started.clear()
        else:
            tile_started.set()
        model = Turns(seconds=0.02, tile_started=tile_started)
        outs.append(tiledepth.run(src, tmp_path / f"w{workers}.tif", model=model, memory=0,
                                  workers=workers, tile_size=64, coarse_size=32).output)
        first = min(model.calls, key=lambda c: c[3])
        assert (first[2] == [-1]) == (workers == 0)  # ahead: tiles before the coarse image
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_the_whole_run_follows_a_global_affine_of_the_models_output(tmp_path):
    """Depth in millimetres or in kilometres, or near and far swapped: the same map in that
    frame, the same tiles flagged. No step (the robust one, the second call, the anchor blur,
    the flat-tile rule) may hide an absolute threshold in the model's units."""
    import json

    d = depth_field(300, 400)
    yy, xx = np.mgrid[0:300, 0:400]
    d = d + 0.05 * np.sin(xx / 5.0) * np.cos(yy / 7.0)  # detail in every tile
    src = write_raster(tmp_path / "in.tif", np.round(np.stack([d / d.max()] * 3) * 255)
                       .astype(np.uint8))

    def model(batch):  # a power law, a tilt, a frame per call; now and then inverted
        out = []
        for x in batch:
            r = x[..., 0].astype(np.float64) / 255
            g = np.random.default_rng(int(r.sum() * 1000) % 2**32)
            ramp = np.linspace(0, 1, r.shape[1])[None]
            p = r ** g.uniform(0.8, 1.25) + g.uniform(-0.1, 0.1) * ramp
            p = g.uniform(0.5, 2) * p + g.uniform(-1, 1)
            out.append(-p if g.uniform() < 0.15 else p)
        return np.stack(out)

    maps, flags, rounding = {}, {}, {}
    for name, (a, b) in {"unit": (1.0, 0.0), "mm": (1e4, -3e3), "km": (1e-4, 2e-5),
                         "swapped": (-7.0, 100.0)}.items():
        def scaled(batch, a=a, b=b):
            return (a * model(batch) + b).astype(np.float32)

        result = tiledepth.run(src, tmp_path / f"{name}.tif", model=scaled, tile_size=96)
        with rasterio.open(result.output) as ds:
            stored = ds.read(1).astype(np.float64)
        maps[name] = (stored - b) / a
        # float32's rounding of the stored values, in the unit frame
        rounding[name] = 4 * np.finfo(np.float32).eps * np.abs(stored).max() / abs(a)
        flags[name] = [(t["id"], t["flag"]) for t in json.loads(result.sidecar.read_text())
                       ["tiles"] if t["flag"]]
    span = np.ptp(maps["unit"])
    assert flags["unit"]  # the robust step has work to do
    for name in ("mm", "km", "swapped"):
        assert flags[name] == flags["unit"], name
        assert np.abs(maps[name] - maps["unit"]).max() < 1e-5 * span + rounding[name], name


def test_import_tiledepth_offers_its_functions_and_submodules_lazily():
    """``dir(tiledepth)`` lists run, estimate, batch and the submodules (completion did not
    show them), and ``tiledepth.export.export`` works after ``import tiledepth`` alone (an
    AttributeError), still without torch."""
    import subprocess
    import sys

    code = ("import sys, tiledepth; names = dir(tiledepth); "
            "assert {'run', 'estimate', 'batch', 'export'} <= set(names), names; "
            "assert callable(tiledepth.export.export); "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_pyramid_levels_hold_no_spreads_of_an_uncertainty_run(tmp_path, monkeypatch):
    """With --uncertainty the levels' tiles went through the spreads' tap too: the spreads of
    tile ids the full-resolution grid skips (a masked collar) and of the levels' retries were
    held for the whole run (49 of 2.25 MiB each at 768 px tiles)."""
    import rasterio
    from rasterio.transform import from_origin

    import tiledepth.engine as engine
    from tiledepth.uncertainty import UncertaintyTap

    class Spready:
        name, batch_size, kind = "spready", 4, "depth"

        def predict(self, batch, keys):
            return self.predict_with_uncertainty(batch, keys)[0]

        def predict_with_uncertainty(self, batch, keys):
            depth = (batch[..., 0] * 2.0 + 0.5).astype(np.float32)
            return depth, np.full(depth.shape, 0.1, np.float32)

    taps = []

    class Recorded(UncertaintyTap):
        def __init__(self, model):
            super().__init__(model)
            taps.append(self)

    monkeypatch.setattr(engine, "UncertaintyTap", Recorded)
    h = w = 640
    yy, xx = np.mgrid[0:h, 0:w] / h
    image = (np.stack([0.2 + 0.5 * xx + 0.2 * yy] * 3) * 255).astype(np.uint8)
    src = tmp_path / "collar.tif"
    with rasterio.open(src, "w", driver="GTiff", height=h, width=w, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 1, 1)) as ds:
        ds.write(image)
        mask = np.full((h, w), 255, np.uint8)
        mask[:120] = 0  # the first rows of full-resolution tiles are skipped
        ds.write_mask(mask)
    result = tiledepth.run(src, tmp_path / "out.tif", model=Spready(), tile_size=32,
                           overlap=0.25, coarse_size=32, uncertainty=True, ensemble=3,
                           overviews=False, workers=0)
    assert result.seconds.get("pyramid") is not None  # a level was fused
    (tap,) = taps
    assert tap._held == {}, len(tap._held)  # measured before: 49 spreads held


def test_every_step_a_run_times_is_in_the_docs_section_on_where_its_time_goes(tmp_path):
    """docs/gpu.md listed RunResult.seconds' keys without ``retry``, ``gradient`` and
    ``upsample_write``, which a run with flagged tiles, --fusion gradient or --scale below 1
    reports: every key the engine times, and those of a real run, are listed there."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "gpu.md").read_text()
    section = text.split("## Where a run's time goes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    engine = (root / "tiledepth" / "engine.py").read_text()
    timed = set(re.findall(r'lap\(seconds, "([a-z_]+)"', engine))
    timed |= set(re.findall(r'seconds\["([a-z_]+)"\] =', engine))
    assert {"retry", "gradient", "upsample_write", "infer"} <= timed  # (the pattern finds them)
    assert timed <= documented, timed - documented
    src = write_raster(tmp_path / "in.tif", depth_image(120, 160))
    result = tiledepth.run(src, tmp_path / "o.tif", model=affine_red, tile_size=32,
                           scale=0.5, fusion="gradient", cog=True)
    assert {"upsample_write", "gradient", "cog", "total"} <= set(result.seconds)
    assert set(result.seconds) <= documented, set(result.seconds) - documented


def test_a_bend_from_anchor_that_auto_alignment_cannot_use_is_warned_about_and_untagged(
        tmp_path, caplog):
    """``bend_from_anchor`` bends bilinear maps only; where ``alignment`` ``auto`` chose affine
    ones for every fusion it changed no pixel, yet the output was tagged
    BEND_FROM_ANCHOR=True without a word. One warning now, no tag, the same bytes as a run
    without it; where a fusion is bilinear (a pyramid level's too), it stays as it was."""
    caplog.set_level("WARNING", logger="tiledepth")
    src = write_raster(tmp_path / "in.tif", depth_image(300, 400))
    kw = dict(model=red, tile_size=96, pyramid=False)  # a tile spans 96 x 96 / 400 = 23 px
    plain = tiledepth.run(src, tmp_path / "plain.tif", **kw)
    bent = tiledepth.run(src, tmp_path / "bent.tif", bend_from_anchor=True, **kw)
    assert [r.getMessage() for r in caplog.records] == [
        "bend_from_anchor (--bend-from-anchor) does nothing in this run: alignment auto chose "
        "affine value maps (a tile of 96 px spans 23 anchor pixels, under the 300 bilinear "
        "ones need), and it bends bilinear ones only; pass --alignment bilinear to bend them, "
        "or leave it off"]
    with rasterio.open(bent.output) as ds:
        assert "TILEDEPTH_BEND_FROM_ANCHOR" not in ds.tags()
    assert bent.output.read_bytes() == plain.output.read_bytes()
    # auto choosing bilinear maps (384 x 384 / 400 = 369 px): bent and tagged, no warning
    caplog.clear()
    big = tiledepth.run(src, tmp_path / "big.tif", model=red, tile_size=384,
                        bend_from_anchor=True)
    assert caplog.records == []
    with rasterio.open(big.output) as ds:
        assert ds.tags()["TILEDEPTH_BEND_FROM_ANCHOR"] == "True"
    assert '"alignment": "bilinear"' in big.sidecar.read_text()
    # a pyramid level's bilinear maps are bent though the raster's own are affine
    from tiledepth.options import make_options
    from tiledepth.plan import settle_bend

    opts = make_options(tile_size=1024, bend_from_anchor=True)
    assert settle_bend(opts, "scale_shift", 8192, 8192) is opts
    assert not settle_bend(dataclasses.replace(opts, pyramid=False), "scale_shift", 8192,
                           8192).bend_from_anchor
    assert settle_bend(opts, "scale", 100, 100) is opts  # refused later, by check_fit_options


def test_a_metric_models_output_is_not_tagged_with_weights_it_never_estimated(tmp_path):
    """A metric model aligned to its own coarse prediction gets one scale per tile, a solve
    with no anchor weight to estimate: its output was tagged ESTIMATE_WEIGHTS=True (the
    default) though nothing was estimated. Off there, tagged False, the same pixels as a
    run with it off; a relative model's run keeps it on."""
    from tiledepth.options import make_options
    from tiledepth.plan import settle_weights

    src = write_raster(tmp_path / "in.tif", depth_image(120, 160))
    kw = dict(model=metric_red, tile_size=48, pyramid=False)
    default = tiledepth.run(src, tmp_path / "default.tif", **kw)
    off = tiledepth.run(src, tmp_path / "off.tif", estimate_weights=False, **kw)
    relative = tiledepth.run(src, tmp_path / "relative.tif", model=red, tile_size=48,
                             pyramid=False)
    with rasterio.open(default.output) as a, rasterio.open(off.output) as b, \
            rasterio.open(relative.output) as c:
        assert a.tags()["TILEDEPTH_ESTIMATE_WEIGHTS"] == "False"
        assert b.tags()["TILEDEPTH_ESTIMATE_WEIGHTS"] == "False"
        assert c.tags()["TILEDEPTH_ESTIMATE_WEIGHTS"] == "True"
        assert np.array_equal(a.read(), b.read())
    opts = make_options()
    assert settle_weights(opts, "scale_shift") is opts
    assert not settle_weights(opts, "scale").estimate_weights
    assert not settle_weights(opts, "none").estimate_weights
