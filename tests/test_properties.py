"""Invariants of the engine, property-tested with hypothesis: the tiler covers every pixel with
blending weights that sum to one; fusion commutes with one global scale and shift; the output
is NaN exactly where the input is masked; the same input, options and seed give the same bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import depth_field, depth_image, write_raster
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from rasterio.enums import ColorInterp
from toy_models import affine_red

import tiledepth
from tiledepth.errors import InputError
from tiledepth.fusion.blend import BlendPart, blend_window
from tiledepth.tiling import overlap_pixels, tile_grid
from tiledepth.write import output_windows

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.integers(1, 240)
tile_sizes = st.integers(32, 112)
overlaps = st.floats(0.0, 0.89)


def blend(height, width, tile_size, overlap, values) -> np.ndarray:
    """Blend tiles whose predictions are the constants ``values[tile.id]``."""
    grid = tile_grid(height, width, tile_size, overlap)
    tiles = [t for row in grid for t in row]
    ramp = overlap_pixels(tile_size, overlap)
    out = np.empty((height, width), np.float32)
    for window in output_windows(height, width):
        parts = [BlendPart(t, np.full(t.shape, values[t.id], np.float32), np.ones(t.shape, bool),
                           1.0, 0.0) for t in tiles]
        rows, cols = window.toslices()
        out[rows, cols] = blend_window(window, parts, ramp=ramp)
    return out


@settings(max_examples=40, **SETTINGS)
@given(height=sizes, width=sizes, tile_size=tile_sizes, overlap=overlaps, seed=st.integers(0, 99))
def test_tiler_covers_every_pixel_with_weights_that_sum_to_one(height, width, tile_size, overlap,
                                                                seed):
    grid = tile_grid(height, width, tile_size, overlap)
    tiles = [t for row in grid for t in row]
    covering = np.zeros((height, width), int)
    lo = np.full((height, width), np.inf)
    hi = np.full((height, width), -np.inf)
    values = np.random.default_rng(seed).uniform(-5, 5, len(tiles)).astype(np.float32)
    for t in tiles:
        covering[t.row_slice, t.col_slice] += 1
        lo[t.row_slice, t.col_slice] = np.minimum(lo[t.row_slice, t.col_slice], values[t.id])
        hi[t.row_slice, t.col_slice] = np.maximum(hi[t.row_slice, t.col_slice], values[t.id])
    assert covering.min() >= 1
    # one value for every tile comes back (to the rounding of float32 sums, an ulp per
    # term): the weights are normalised
    same = blend(height, width, tile_size, overlap, np.full(len(tiles), 0.7, np.float32))
    np.testing.assert_allclose(same, np.float32(0.7), rtol=2**-23 * (covering.max() + 1),
                               atol=0)
    # other values mix convexly: weights are >= 0 and sum to one
    mixed = blend(height, width, tile_size, overlap, values)
    assert np.all(mixed >= lo - 1e-5) and np.all(mixed <= hi + 1e-5)
    if len(tiles) <= 16:  # each tile's normalised weight, one blend per tile: they sum to one
        total = sum(blend(height, width, tile_size, overlap, np.eye(len(tiles))[k])
                    for k in range(len(tiles)))
        np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-6)


def masks(draw, height, width) -> np.ndarray:
    """A validity mask: a few masked rectangles and some salt, at least one valid pixel."""
    valid = np.ones((height, width), bool)
    for _ in range(draw(st.integers(0, 3))):
        r0, c0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        valid[r0:r0 + draw(st.integers(1, height)), c0:c0 + draw(st.integers(1, width))] = False
    salt = draw(st.sampled_from([0.0, 0.0, 0.05, 0.5]))
    if salt:
        rng = np.random.default_rng(draw(st.integers(0, 99)))
        valid &= rng.random((height, width)) >= salt
    return valid


@st.composite
def scenes(draw, small=False):
    height = draw(st.integers(24, 160 if small else 260))
    width = draw(st.integers(24, 160 if small else 260))
    return dict(height=height, width=width, valid=masks(draw, height, width),
                tile_size=draw(st.integers(32, 96)), overlap=draw(st.floats(0.0, 0.6)),
                coarse_size=draw(st.sampled_from([None, 48, 300])))


@settings(max_examples=25, **SETTINGS)
@given(scene=scenes(), scale=st.one_of(st.floats(0.05, 20.0), st.floats(-20.0, -0.05)),
       shift=st.floats(-100.0, 100.0))
def test_fusion_commutes_with_one_global_scale_and_shift(scene, scale, shift):
    valid = scene.pop("valid")
    assume(valid.any())
    # float32 predictions: a level far above the scale quantises the moved tiles' content
    # (ulp(32) at scale 0.055 is 2e-5 of its span) above the robust step's noise floor (1e-4
    # of the spread, typical residuals 2x it), and a term's Cauchy weight moves with it
    # (found by this property at 8x the examples: shift 32, scale 0.055, 5e-4 off)
    assume(abs(shift) <= 100 * abs(scale))
    image = depth_field(scene.pop("height"), scene.pop("width"))

    def moved(batch):  # every tile prediction and the coarse one, under one (scale, shift)
        return (np.float32(scale) * affine_red(batch) + np.float32(shift)).astype(np.float32)

    base = tiledepth.estimate(image, model=affine_red, mask=valid, **scene)
    both = tiledepth.estimate(image, model=moved, mask=valid, **scene)
    np.testing.assert_array_equal(np.isnan(both), np.isnan(base))
    span = float(np.nanmax(base) - np.nanmin(base)) + 1.0
    np.testing.assert_allclose(both, scale * base + shift, rtol=0,
                               atol=1e-4 * abs(scale) * span + 1e-5 * abs(shift))


def one_valid_pixel(height, width, row, col, **options):
    valid = np.zeros((height, width), bool)
    valid[row, col] = True
    return dict(height=height, width=width, valid=valid, **options)


@settings(max_examples=30, **SETTINGS)
@given(scene=scenes())
# a valid area smaller than a coarse pixel, missed by the coarse overview's sampling
@example(scene=one_valid_pixel(260, 260, 0, 0, tile_size=64, overlap=0.25, coarse_size=48))
def test_output_is_nan_exactly_where_the_input_is_masked(scene):
    valid = scene.pop("valid")
    image = depth_field(scene.pop("height"), scene.pop("width"))
    if not valid.any():
        with pytest.raises(InputError, match="nothing to estimate"):
            tiledepth.estimate(image, model=affine_red, mask=valid, **scene)
        return
    depth = tiledepth.estimate(image, model=affine_red, mask=valid, **scene)
    np.testing.assert_array_equal(np.isnan(depth), ~valid)
    # and NaN in a float input is a mask too
    holes = np.where(valid, image, np.nan).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(tiledepth.estimate(holes, model=affine_red, **scene)),
                                  ~valid)


@settings(max_examples=10, **SETTINGS)
@given(scene=scenes(small=True), how=st.sampled_from(["alpha", "nodata"]))
@example(scene=one_valid_pixel(150, 160, 149, 3, tile_size=64, overlap=0.25, coarse_size=48),
         how="alpha")
def test_geotiff_output_is_nan_exactly_where_the_input_is_masked(scene, how):
    valid = scene.pop("valid")
    assume(valid.any())
    rgb = depth_image(scene.pop("height"), scene.pop("width"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if how == "alpha":
            data = np.concatenate([rgb, np.where(valid, 255, 0)[None].astype(np.uint8)])
            src = write_raster(tmp / "in.tif", data, colorinterp=[
                ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha])
        else:
            rgb = np.clip(rgb, 1, 255).astype(np.uint8)
            src = write_raster(tmp / "in.tif", np.where(valid, rgb, 0).astype(np.uint8),
                               nodata=0)
        out = tiledepth.run(src, tmp / "out.tif", model=affine_red, **scene).output
        with rasterio.open(out) as ds:
            np.testing.assert_array_equal(np.isnan(ds.read(1)), ~valid)


def test_same_input_options_and_seed_give_the_same_bytes(rgba_tif, tmp_path):
    runs = [tiledepth.run(rgba_tif, tmp_path / f"{name}.tif", model=affine_red, tile_size=96,
                          seed=seed, batch_size=batch).output
            for name, seed, batch in [("a", 3, 4), ("b", 3, 4), ("c", 3, 7), ("d", 4, 4)]]
    a, b, c, d = (p.read_bytes() for p in runs)
    assert a == b == c  # the batch size changes nothing
    assert a != d  # the seed is recorded in the file


def test_marigold_same_seed_same_bytes(tiny_checkpoint, tmp_path):
    """A diffusion model draws noise: with the same seed, the same GeoTIFF bytes on the CPU."""
    from tiledepth.models.marigold import load_marigold

    pipe = load_marigold(tiny_checkpoint, device="cpu").pipe  # loaded once, seeded per run
    src = write_raster(tmp_path / "in.tif", depth_image(50, 70))  # 2 x 3 tiles
    a, b, c = (tiledepth.run(src, tmp_path / f"{name}.tif", model=pipe, tile_size=32, steps=1,
                             seed=seed).output.read_bytes()
               for name, seed in [("a", 5), ("b", 5), ("c", 6)])
    assert a == b
    with rasterio.open(tmp_path / "a.tif") as x, rasterio.open(tmp_path / "c.tif") as y:
        assert not np.array_equal(x.read(1), y.read(1))  # another seed, other noise


def test_the_automatic_blur_does_not_depend_on_the_values_scale():
    # Found by the property above: exact tiles explain the anchor under every blur to
    # rounding, and which blur won depended on the values' scale (2.7e-5 apart at 1/16).
    image, valid = depth_field(24, 35), np.ones((24, 35), bool)

    def moved(batch):
        return (np.float32(0.0625) * affine_red(batch)).astype(np.float32)

    base = tiledepth.estimate(image, model=affine_red, mask=valid, tile_size=32, overlap=0.0)
    both = tiledepth.estimate(image, model=moved, mask=valid, tile_size=32, overlap=0.0)
    np.testing.assert_allclose(both, 0.0625 * base, rtol=0, atol=1e-7)


def test_the_robust_step_does_not_depend_on_the_values_level():
    # Found by the property above: the overlaps' agreement summed squares of the values'
    # level (1.5 rather than 0.5 here), whose rounding moved the robust weights (2.8e-4).
    rng = np.random.default_rng(1)
    image, valid = depth_field(60, 127), rng.random((60, 127)) > 0.05

    def moved(batch):
        return (affine_red(batch) + np.float32(1.0)).astype(np.float32)

    kw = dict(mask=valid, tile_size=32, overlap=0.5, workers=0)
    base = tiledepth.estimate(image, model=affine_red, **kw)
    both = tiledepth.estimate(image, model=moved, **kw)
    np.testing.assert_allclose(both, base + 1, rtol=0, atol=2e-5)
