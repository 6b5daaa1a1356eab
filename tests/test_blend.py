"""Blending: a part's own weight (a tile filled from the coarse map yields to its neighbours)."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from tiledepth.fusion.blend import BlendPart, blend_lattice, blend_points, blend_window
from tiledepth.tiling import overlap_pixels, tile_grid


def parts(weight_of_middle: float):
    """Three tiles in a row, 0, 1, 0, the middle one weighted ``weight_of_middle``."""
    grid = tile_grid(64, 160, 64, 0.25)
    (left, middle, right), = grid
    ones = np.ones((64, 64), bool)
    return [BlendPart(left, np.zeros((64, 64), np.float32), ones, 1.0, 0.0),
            BlendPart(middle, np.ones((64, 64), np.float32), ones, 1.0, 0.0, weight_of_middle),
            BlendPart(right, np.zeros((64, 64), np.float32), ones, 1.0, 0.0)]


def test_a_lightly_weighted_tile_yields_where_others_cover_it_and_fills_the_rest():
    ramp = overlap_pixels(64, 0.25)
    window = Window(0, 0, 160, 64)
    full = blend_window(window, parts(1.0), ramp=ramp)[0]
    light = blend_window(window, parts(0.05), ramp=ramp)[0]
    middle = parts(1.0)[1].tile
    c0, c1 = middle.window.col_off, middle.window.col_off + 64
    alone = np.ones(160, bool)  # the columns only the middle tile covers
    for t in (parts(1.0)[0].tile, parts(1.0)[2].tile):
        alone[t.window.col_off:t.window.col_off + 64] = False
    assert alone.any() and not alone[:c0].any() and not alone[c1:].any()
    np.testing.assert_array_equal(light[alone], 1.0)  # no other tile: its own values
    shared = ~alone[c0:c1]
    # in the overlaps the neighbours win: half the weight before, a sixth now
    assert full[c0:c1][shared].mean() == np.float32(0.5)
    assert light[c0:c1][shared].mean() < 0.2
    assert np.all(np.diff(light[c0:(c0 + c1) // 2]) >= 0)  # and it rises smoothly, no step
    # the lattice and point samplers weigh it the same
    rows, cols = np.arange(0, 64, 7), np.arange(0, 160, 3)
    lat = blend_lattice(rows, cols, parts(0.05), ramp=ramp)
    np.testing.assert_allclose(lat, blend_window(window, parts(0.05), ramp=ramp)[
        np.ix_(rows, cols)], atol=1e-6)
    pts = blend_points(rows[:5], cols[:5], parts(0.05), ramp=ramp)
    np.testing.assert_allclose(pts, lat[np.arange(5), np.arange(5)], atol=1e-6)


def test_pixel_centres_are_made_once_per_size():
    from tiledepth.fusion.maps import unit

    np.testing.assert_array_equal(unit(5), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert unit(5) is unit(5) and not unit(5).flags.writeable  # shared: nobody may write
    assert unit(1).tolist() == [0.0]
