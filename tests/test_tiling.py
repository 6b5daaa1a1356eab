import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiledepth.errors import OptionError
from tiledepth.fusion.blend import tile_weights
from tiledepth.tiling import (
    earlier_neighbours,
    overlap_pixels,
    overlap_slices,
    tile_grid,
    tile_starts,
)


def coverage(height, width, tile_size, overlap):
    grid = tile_grid(height, width, tile_size, overlap)
    count = np.zeros((height, width), int)
    wsum = np.zeros((height, width))
    ramp = overlap_pixels(tile_size, overlap)
    for row in grid:
        for t in row:
            count[t.row_slice, t.col_slice] += 1
            wsum[t.row_slice, t.col_slice] += tile_weights(t, ramp)
    return grid, count, wsum


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 400), width=st.integers(1, 400), tile_size=st.integers(32, 160),
       overlap=st.floats(0.0, 0.89))
def test_every_pixel_covered_and_tiles_full_size(height, width, tile_size, overlap):
    grid, count, wsum = coverage(height, width, tile_size, overlap)
    assert count.min() >= 1
    assert wsum.min() > 0  # normalised blending weights sum to one everywhere
    for row in grid:
        for t in row:
            assert t.shape == (min(tile_size, height), min(tile_size, width))
            assert t.window.row_off >= 0 and t.window.col_off >= 0
            assert t.window.row_off + t.window.height <= height
            assert t.window.col_off + t.window.width <= width
    # the last tile ends exactly at the raster edge
    assert grid[-1][-1].window.row_off + grid[-1][-1].window.height == height
    assert grid[-1][-1].window.col_off + grid[-1][-1].window.width == width


def test_starts_formula_and_inward_shift():
    assert tile_starts(768 * 3, 768, 0.25) == [0, 576, 1152, 1536]
    assert tile_starts(1000, 400, 0.25) == [0, 300, 600]
    assert tile_starts(1001, 400, 0.25) == [0, 300, 600, 601]
    assert tile_starts(400, 400, 0.5) == [0]


def test_raster_smaller_than_tile_is_one_window_of_its_size():
    grid = tile_grid(100, 50, 256, 0.25)
    assert len(grid) == 1 and len(grid[0]) == 1
    t = grid[0][0]
    assert t.shape == (100, 50) and t.size == 256
    assert t.top and t.bottom and t.left and t.right


def test_edges_flags():
    grid = tile_grid(1000, 1000, 400, 0.25)
    assert grid[0][0].top and grid[0][0].left and not grid[0][0].bottom
    assert grid[-1][-1].bottom and grid[-1][-1].right
    mid = grid[1][1]
    assert not (mid.top or mid.bottom or mid.left or mid.right)


def test_weights_taper_only_inside():
    grid = tile_grid(1000, 1000, 400, 0.25)
    w = tile_weights(grid[0][0], 100)
    assert w[0, 0] == 1.0  # raster corner: no taper
    assert w[-1, -1] < 0.01  # inner corner: tapered to almost zero
    assert w[:300, :300].min() == 1.0


def test_neighbours_list_each_pair_once():
    grid = tile_grid(2000, 1500, 300, 0.6)
    seen = set()
    for row in grid:
        for t in row:
            for n in earlier_neighbours(grid, t):
                assert n.id < t.id
                assert overlap_slices(n, t) is not None
                seen.add((n.id, t.id))
    tiles = [t for row in grid for t in row]
    brute = {(a.id, b.id) for a in tiles for b in tiles
             if a.id < b.id and overlap_slices(a, b) is not None}
    assert seen == brute


@pytest.mark.parametrize("args", [(0, 10, 0.2), (10, 0, 0.2), (10, 10, 1.0), (10, 10, -0.1)])
def test_bad_grid_arguments(args):
    with pytest.raises(OptionError):
        tile_starts(*args)
