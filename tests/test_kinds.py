"""Each output kind is fused in its own space: kinds, scale-only alignment, tags."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import toy_models
from click.testing import CliRunner
from conftest import depth_field, depth_image, write_raster
from rasterio.windows import Window

import tiledepth
from tiledepth import fusion, kinds, stages
from tiledepth.calibrate import Target, ValueMap
from tiledepth.cli import main
from tiledepth.engine import estimate, fuse
from tiledepth.errors import ModelError
from tiledepth.fusion.maps import Affine1D
from tiledepth.models.base import CallableModel
from tiledepth.options import make_options
from tiledepth.readers import ArrayReader
from tiledepth.scratch import MemoryStore
from tiledepth.tags import output_tags
from tiledepth.tiling import overlap_pixels, tile_grid
from tiledepth.write import ArraySink


def rgb_of(depth: np.ndarray) -> np.ndarray:
    """An RGB image whose red channel is ``depth`` (in [0, 1])."""
    return np.stack([depth, 1 - depth, np.full_like(depth, 0.5)], axis=-1)


def fused(image: np.ndarray, model, fit: str | None, tile_size: int = 96) -> np.ndarray:
    opts = make_options(tile_size=tile_size, overlap=0.25, model=model)
    reader = ArrayReader(image)
    sink = ArraySink(reader.height, reader.width)
    fuse(reader, sink, CallableModel(model), opts, MemoryStore(), fit=fit)
    return sink.array


def test_every_kind_has_a_fit_and_a_description() -> None:
    assert set(kinds.FIT_FOR_KIND) == set(kinds.VALUES) == set(kinds.LABELS) == set(kinds.KINDS)
    assert set(kinds.FIT_FOR_KIND.values()) <= set(kinds.FITS)


def test_a_reference_anchor_gives_a_metric_models_tiles_a_shift() -> None:
    """Against its own coarse prediction a metric model's tiles get a scale only; against a
    reference raster (``anchor="reference"``: heights, or metres below its top, not the
    model's metric frame), a scale and a shift, as every other kind's."""
    assert [kinds.fit_for(k) for k in kinds.KINDS] == [kinds.FIT_FOR_KIND[k]
                                                       for k in kinds.KINDS]
    assert kinds.fit_for("metric_depth") == "scale"
    assert [kinds.fit_for(k, reference=True) for k in kinds.KINDS] == ["scale_shift"] * 3


def test_callable_kind_from_attribute_or_keyword() -> None:
    assert CallableModel(toy_models.red).kind == "depth"
    assert CallableModel(toy_models.metric_red).kind == "metric_depth"
    assert CallableModel(toy_models.red, kind="disparity").kind == "disparity"
    with pytest.raises(ModelError, match="kind='height'"):
        CallableModel(toy_models.red, kind="height")


def test_metric_tiles_get_scales_only_and_keep_proportions() -> None:
    # Every tile (and the coarse image) is metric depth off by its own scale in [0.8, 1.25].
    truth = depth_field(300, 360)
    image = rgb_of(truth)
    metres = 10.0 + 20.0 * truth

    out = {fit: fused(image, toy_models.metric_red, fit) for fit in ("none", "scale")}

    ratio_scale = out["scale"] / metres  # one frame: the coarse prediction's scale
    ratio_none = out["none"] / metres  # every tile keeps its own scale error
    assert np.std(ratio_scale) / np.mean(ratio_scale) < 0.002
    assert 0.8 <= np.mean(ratio_scale) <= 1.25
    assert np.std(ratio_none) / np.mean(ratio_none) > 0.03


def test_estimate_picks_the_fit_from_the_kind(monkeypatch) -> None:
    seen = []
    real = fusion.solve_alignment

    def spy(*args, **kwargs):
        seen.append(kwargs["fit"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fusion.solve, "solve_alignment", spy)
    image = rgb_of(depth_field(200, 200))

    fits = []
    for model in (toy_models.red, toy_models.disparity_red, toy_models.metric_red):
        seen.clear()
        estimate(image, model=model, tile_size=96)
        fits.append(set(seen))  # bilinear maps: an affine solve judges outliers, same fit

    assert fits == [{"scale_shift"}, {"scale_shift"}, {"scale"}]


def test_disparity_is_fused_as_disparity() -> None:
    # Per-tile affine disparity: the fused map is one affine map of the true disparity.
    truth = depth_field(300, 360)
    disparity = 1.0 / (1.0 + 4.0 * truth)

    out = estimate(rgb_of(truth), model=toy_models.disparity_red, tile_size=96,
                   anchor_blur=0).ravel()  # an exact model: a sharp anchor

    def affine_residual(x: np.ndarray) -> float:
        a = np.stack([x.ravel(), np.ones(x.size)], axis=1)
        coef, *_ = np.linalg.lstsq(a, out.astype(np.float64), rcond=None)
        return float(np.abs(out - a @ coef).max())

    # (The coarse map of the area-averaged image is not exactly affine in disparity.)
    assert affine_residual(disparity) < 0.005 * np.ptp(out)
    assert affine_residual(truth) > 20 * affine_residual(disparity)  # not affine in depth


def test_solve_scales_recovers_known_scales() -> None:
    # Three tiles in a row, each predicted as truth / s_i; the coarse map is the truth.
    truth = 5.0 + depth_field(64, 160)
    grid = tile_grid(64, 160, 64, 0.25)
    tiles = grid[0]
    scales = {0: 0.5, 1: 2.0, 2: 1.25}
    stats, preds, pairs = {}, {}, []
    ok = np.ones((64, 64), bool)
    for tile in tiles:
        win = truth[:, tile.window.col_off:tile.window.col_off + 64]
        preds[tile.id] = win / scales[tile.id]
        stats[tile.id] = fusion.tile_stats(tile.id, preds[tile.id], ok, win)
    for left, right in zip(tiles, tiles[1:], strict=False):
        from tiledepth.tiling import overlap_slices

        sl_l, sl_r = overlap_slices(left, right)
        pairs.append(fusion.pair_stats(stats[left.id], stats[right.id], preds[left.id][sl_l],
                                      preds[right.id][sl_r], ok[sl_r]))

    solved = fusion.solve_alignment(stats.values(), pairs, tile_area=64.0**2, fit="scale")

    for tile_id, scale in scales.items():
        assert solved[tile_id].shift == 0.0
        assert solved[tile_id].scale == pytest.approx(scale, rel=1e-6)
    none = fusion.solve_alignment(stats.values(), pairs, tile_area=64.0**2, fit="none")
    assert all((a.scale, a.shift) == (1.0, 0.0) for a in none.values())
    with pytest.raises(ValueError, match="fit"):
        fusion.solve_alignment(stats.values(), pairs, tile_area=64.0**2, fit="affine")


def test_output_kind_is_in_the_tags(tmp_path) -> None:
    src = write_raster(tmp_path / "ortho.tif", depth_image(200, 240))
    out = tmp_path / "metric.tif"

    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model",
                                       "toy_models:metric_red", "--tile-size", "96",
                                       "--no-progress"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        tags = ds.tags()
    assert tags["TILEDEPTH_KIND"] == "metric_depth"
    assert tags["TILEDEPTH_FIT"] == "scale"
    assert tags["TILEDEPTH_VALUES"] == kinds.VALUES["metric_depth"]


def test_uncertainty_options_are_checked() -> None:
    from tiledepth.errors import OptionError

    with pytest.raises(OptionError, match="ensemble"):
        make_options(uncertainty=True, ensemble=1)
    with pytest.raises(OptionError, match="uncertainty"):
        make_options(uncertainty="yes")
    with pytest.raises(OptionError, match=r"use tiledepth.run"):
        estimate(rgb_of(depth_field(64, 64)), model=toy_models.red, uncertainty=True, ensemble=3)


#: Model kind x output kind: the sign of the output's correlation with nearness (height
#: grows upwards, inverse depth nearer, depth farther; a disparity model's depth output
#: is its disparity, as fused), whether the values are metres, and how the tag starts.
KIND_TABLE = {
    ("depth", "depth"): (-1, False, "relative depth"),
    ("depth", "height"): (1, False, "relative height"),
    ("depth", "inverse-depth"): (1, False, "relative inverse depth"),
    ("disparity", "depth"): (1, False, "relative disparity"),
    ("disparity", "height"): (1, False, "relative height"),
    ("disparity", "inverse-depth"): (1, False, "relative inverse depth"),
    ("metric_depth", "depth"): (-1, True, "metric depth in metres"),
    ("metric_depth", "height"): (1, True, "height in metres"),
    ("metric_depth", "inverse-depth"): (1, False, "relative inverse depth"),
}


@pytest.mark.parametrize(("kind", "output_kind"), list(KIND_TABLE))
def test_every_output_kind_means_the_same_for_every_model_kind(kind, output_kind) -> None:
    """A disparity model's height and inverse depth were upside down (the depth maps were
    applied to disparity), and a metric model's inverse depth was tagged as metres."""
    truth = depth_field(200, 240)  # the red channel is the depth: nearness is -truth
    model = {"depth": toy_models.affine_red, "disparity": toy_models.disparity_red,
             "metric_depth": toy_models.metric_red}[kind]
    opts = make_options(tile_size=96, overlap=0.25, model=model, output_kind=output_kind)
    reader = ArrayReader(rgb_of(truth))
    sink = ArraySink(reader.height, reader.width)
    target = Target(output_kind).for_model(kinds.kind_of(model))  # as the engine makes it
    fuse(reader, sink, CallableModel(model), opts, MemoryStore(), target=target)
    out = sink.array.astype(np.float64)
    sign, metres, words = KIND_TABLE[kind, output_kind]

    ranks = [np.argsort(np.argsort(a.ravel())) for a in (out, -truth)]  # monotone, not linear
    assert np.corrcoef(*ranks)[0, 1] * sign > 0.99
    if output_kind == "inverse-depth":
        assert 0.5 <= out.min() < 0.55 and 0.95 < out.max() <= 1.0  # its documented range
    if output_kind == "height":
        assert abs(out.min()) < 0.02 * np.ptp(out)  # 0 at the farthest point
    if metres:  # 10 to 30 m, in the coarse prediction's scale (0.8 to 1.25)
        assert 15 < np.ptp(out) < 26
    values = output_tags(CallableModel(model), target, kind=kind, output_kind=output_kind,
                         provenance={}, version="0")["TILEDEPTH_VALUES"]
    assert values.startswith(words) and ("metres" in values) == metres


def test_metric_inverse_depth_is_not_tagged_as_metres(tmp_path) -> None:
    src = write_raster(tmp_path / "ortho.tif", depth_image(200, 240))
    out = tmp_path / "inverse.tif"

    tiledepth.run(src, out, model=toy_models.metric_red, tile_size=96,
                  output_kind="inverse-depth")

    with rasterio.open(out) as ds:
        values, tags, units = ds.read(1), ds.tags(), ds.units
    assert 0.5 <= values.min() and values.max() <= 1.0
    assert tags["TILEDEPTH_KIND"] == "metric_depth"
    assert tags["TILEDEPTH_VALUES"] == "relative inverse depth, 1 nearest, 0.5 at the far end"
    assert units == (None,)


@pytest.mark.parametrize("output_kind", ["height", "inverse-depth"])
def test_a_disparity_models_height_and_inverse_depth_grow_nearer(output_kind) -> None:
    """estimate and run read the fused map in the model's space (engine: Target.for_model):
    a disparity model's height and inverse depth were upside down."""
    truth = depth_field(200, 240)  # the red channel is the depth: nearness is -truth
    out = tiledepth.estimate(rgb_of(truth), model=toy_models.disparity_red, tile_size=96,
                             output_kind=output_kind)
    ranks = [np.argsort(np.argsort(a.ravel())) for a in (out, -truth)]
    assert np.corrcoef(*ranks)[0, 1] > 0.99


@pytest.mark.parametrize("output_kind", ["height", "inverse-depth"])
def test_pyramid_levels_stay_in_the_fusions_space(output_kind) -> None:
    """A pyramid level (a raster over 8 times the coarse map's side) was mapped to the
    output kind and then used as the next anchor: height came out as depth."""
    truth = depth_field(1100, 1100)
    out = tiledepth.estimate(rgb_of(truth), model=toy_models.red, tile_size=128,
                             coarse_size=64, output_kind=output_kind)  # one level, 256
    assert np.corrcoef(out.ravel(), -truth.ravel())[0, 1] > 0.98


def test_inverse_depth_spread_is_zero_where_the_values_are_clipped():
    """A value clipped to 0.5 or 1 no longer depends on the prediction: its spread is 0."""
    f = np.array([-0.5, 0.0, 0.5, 1.0, 1.5, 2.5, np.nan])
    u = np.full(7, 0.1)
    depth = ValueMap("inverse-depth", near=0.0, far=1.0)
    np.testing.assert_allclose(depth.apply(f), [1, 1, 1 / 1.5, 0.5, 0.5, 0.5, np.nan], rtol=1e-6)
    np.testing.assert_allclose(depth.apply_uncertainty(f, u),
                               [0, 0.1, 0.1 / 1.5**2, 0.025, 0, 0, np.nan], rtol=1e-6)
    disparity = ValueMap("inverse-depth", near=2.0, far=1.0, space="disparity")
    np.testing.assert_allclose(disparity.apply(f), [0.5, 0.5, 0.5, 0.5, 0.75, 1, np.nan])
    np.testing.assert_allclose(disparity.apply_uncertainty(f, u)[:6],
                               [0, 0, 0, 0.05, 0.05, 0], rtol=1e-6)


def test_a_filled_tiles_spread_yields_to_its_neighbours_as_its_values_do():
    """A filled tile's spread was blended at full weight, times its rejected fit's scale."""
    grid = tile_grid(32, 56, 32, 0.25)
    ramp = overlap_pixels(32, 0.25)
    (a, b), = grid
    store, spreads = MemoryStore(), MemoryStore()
    for t in (a, b):
        store.put(t.id, np.ones(t.shape, np.float32), np.ones(t.shape, bool))
        spreads.put(t.id, np.full(t.shape, 0.1, np.float32), np.ones(t.shape, bool))
    affines = {a.id: Affine1D(2.0, 0.0), b.id: Affine1D(100.0, 0.0)}  # b's fit: rejected
    parts = stages.TileParts(grid, affines, {b.id}, store, np.zeros((8, 14), np.float32),
                             (32, 56))
    whole = Window(0, 0, 56, 32)
    values = parts.blend(whole, ramp=ramp)[16]
    spread = fusion.blend_window(whole, parts.under(whole, source=spreads, spread=True),
                                 ramp=ramp)[16]
    # band 1 and band 2 follow tile a alike wherever it reaches (b weighs 0.02 there)
    share = (2.0 - values[24:32]) / 2.0  # b's share of the blend, from band 1
    np.testing.assert_allclose(spread[24:32], 0.2 * (1 - share) + 0.2 * share, rtol=1e-5)
    np.testing.assert_allclose(spread[32:], 0.2)  # b alone: in the accepted tiles' frame


def test_bilinear_maps_asked_of_a_metric_model_are_refused(tmp_path) -> None:
    """A metric model's tiles get one scale each (fit ``scale``), always affine: an explicit
    ``alignment="bilinear"`` or ``bend_from_anchor`` did nothing while the output's tags
    said ALIGNMENT=bilinear and BEND_FROM_ANCHOR=True. Refused before the first model
    call; ``auto`` stays fine, and a depth model keeps its bilinear maps."""
    from tiledepth.errors import OptionError

    calls = []

    def metric(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return toy_models.metric_red(batch)

    metric.kind = "metric_depth"
    image = rgb_of(depth_field(200, 200))
    for options, named in [({"alignment": "bilinear"}, r"^alignment bilinear \(--alignment "
                                                       r"bilinear\): model .* fit scale"),
                           ({"bend_from_anchor": True}, r"^bend_from_anchor "
                                                        r"\(--bend-from-anchor\): model"),
                           ({"alignment": "bilinear", "bend_from_anchor": True},
                            r"bilinear\) and bend_from_anchor .* leave them unset")]:
        with pytest.raises(OptionError, match=named):
            estimate(image, model=metric, tile_size=96, **options)
    assert calls == []  # before any model call
    assert np.isfinite(estimate(image, model=metric, tile_size=96, alignment="auto")).all()
    assert np.isfinite(estimate(image, model=toy_models.red, tile_size=96,
                                alignment="bilinear", bend_from_anchor=True)).all()
    src = write_raster(tmp_path / "in.tif", depth_image(200, 200))
    out = tmp_path / "metric.tif"
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model",
                                       "toy_models:metric_red", "--tile-size", "96",
                                       "--alignment", "bilinear", "--no-progress"])
    assert result.exit_code == 2 and "alignment bilinear" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]  # no output, no tags
