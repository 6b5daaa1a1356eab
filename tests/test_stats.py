"""Tables of alignment statistics keep the numbers exactly, compactly, and solve the same."""

import tracemalloc

import numpy as np
import pytest

from tiledepth import fusion
from tiledepth.tiling import earlier_neighbours, overlap_slices, tile_grid


def gathered(alignment, outlier=5):
    """Statistics of a small grid of noisy affine tiles, tile ``outlier`` another scene."""
    rng = np.random.default_rng(3)
    coarse = rng.random((200, 250)).cumsum(1).astype(np.float32)
    grid = tile_grid(200, 250, 64, 0.25)
    preds, stats, pairs = {}, [], []
    for t in (t for row in grid for t in row):
        c = coarse[t.window.row_off:t.window.row_off + t.shape[0],
                   t.window.col_off:t.window.col_off + t.shape[1]]
        p = (1.5 + 0.1 * t.id) * c + rng.random(c.shape).astype(np.float32)
        preds[t.id] = 5 * rng.random(c.shape).astype(np.float32) if t.id == outlier else p
        valid = np.ones(p.shape, bool)
        stats.append(fusion.tile_stats(t.id, preds[t.id], valid, c, alignment=alignment))
        for o in earlier_neighbours(grid, t):
            so, st = overlap_slices(o, t)
            pairs.append(fusion.pair_stats(stats[o.id], stats[-1], preds[o.id][so],
                                           preds[t.id][st], valid[st],
                                           where_i=(*so, o.shape), where_j=(*st, t.shape)))
    return stats, pairs


@pytest.mark.parametrize("alignment", ["affine", "bilinear"])
def test_tables_give_back_the_same_statistics_across_chunks(alignment):
    stats, pairs = gathered(alignment)
    k = stats[0].corners
    tiles, overlaps = fusion.TileTable(k, chunk=3), fusion.PairTable(k, chunk=3)
    for t in stats:
        tiles.add(t)
    for p in pairs:
        overlaps.add(p)
    assert len(tiles) == len(stats) and len(overlaps) == len(pairs)
    for a, b in zip(tiles, stats, strict=True):
        assert (a.id, a.mean, a.n, a.scc) == (b.id, b.mean, b.n, b.scc)
        assert np.array_equal(a.gram, b.gram) and np.array_equal(a.fc, b.fc)
    assert all(np.array_equal(a.gram, b.gram) and (a.i, a.j, a.n) == (b.i, b.j, b.n)
               for a, b in zip(overlaps, pairs, strict=True))
    assert np.array_equal(tiles.gram, np.stack([t.gram for t in stats]))
    assert tiles.take(tiles.column("id") % 2 == 1).column("id").tolist() == \
        [t.id for t in stats if t.id % 2]



def test_a_tables_affine_statistics_are_each_rows_exactly_in_one_pass(monkeypatch):
    stats, pairs = gathered("bilinear")
    tiles, overlaps = fusion.TileTable(4, chunk=5), fusion.PairTable(4, chunk=5)
    for t in stats:
        tiles.add(t)
    for p in pairs:
        overlaps.add(p)
    for cls in (fusion.TileTable, fusion.PairTable):  # all rows at once, not row by row
        monkeypatch.setattr(cls, "row", lambda *_: pytest.fail("read row by row"))
    a_tiles, a_pairs = fusion.affine_stats(tiles), fusion.affine_stats(overlaps)
    monkeypatch.undo()
    assert a_tiles.corners == a_pairs.corners == 1 and len(a_tiles) == len(stats)
    for a, b in zip(a_tiles, map(fusion.affine_stats, stats), strict=True):
        assert (a.id, a.mean, a.n, a.scc) == (b.id, b.mean, b.n, b.scc)
        assert np.array_equal(a.gram, b.gram) and np.array_equal(a.fc, b.fc)
    assert all(np.array_equal(a.gram, b.gram) and (a.i, a.j, a.n) == (b.i, b.j, b.n)
               for a, b in zip(a_pairs, map(fusion.affine_stats, pairs), strict=True))
    assert len(fusion.affine_stats(fusion.TileTable(4))) == 0

def test_a_packed_table_refuses_an_asymmetric_gram():
    t = fusion.tile_stats(0, np.ones((4, 4)), np.ones((4, 4), bool), np.ones((4, 4)))
    gram = t.gram.copy()
    gram[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        fusion.TileTable(1).add(fusion.TileStats(0, t.mean, t.n, gram, t.fc, t.scc))


@pytest.mark.parametrize("alignment", ["affine", "bilinear"])
def test_solve_and_fill_from_tables_equals_from_objects(alignment):
    stats, pairs = gathered(alignment)
    opts = dict(tile_area=64.0**2, coarse_weight=0.3, fit="scale_shift", robust=True,
                value_range=1.0)
    maps, found, replaced = fusion.solve_and_fill(stats, pairs, **opts)
    t_maps, t_found, t_replaced = fusion.solve_and_fill(
        fusion.TileTable.of(stats), fusion.PairTable.of(pairs), **opts)
    assert replaced == t_replaced == {5}  # the wrong tile, filled either way
    assert t_maps == maps and t_found == found


def test_an_affine_table_costs_a_few_numbers_per_tile():
    stats, pairs = gathered("affine")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tiles, overlaps = fusion.TileTable(1, chunk=64), fusion.PairTable(1, chunk=64)
    for _ in range(40):
        for t in stats:
            tiles.add(t)
        for p in pairs:
            overlaps.add(p)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # a tile: a 4-byte id and 8 float64s; an overlap: two ids and 11 (one object each was
    # 408 and 329 B)
    per = used / (len(tiles) * 68 + len(overlaps) * 96)
    assert per < 1.3


def test_bilinear_pair_features_written_in_place_are_the_joined_ones_to_the_bit():
    """A bilinear overlap's Gram matrix is ``g^T g`` of ``[phi a, phi, -phi b, -phi]``,
    bit for bit as when the features were stacked and joined."""
    rng = np.random.default_rng(4)
    pred_i, pred_j = (rng.random((40, 100)).astype(np.float32) for _ in range(2))
    valid = np.ones((40, 100), bool)
    valid[:5, :7] = False
    i = fusion.TileStats(1, 0.4, 1.0, np.eye(8), np.zeros(8))
    j = fusion.TileStats(2, 0.6, 1.0, np.eye(8), np.zeros(8))
    where_i, where_j = (slice(60, 100), slice(0, 100), (100, 100)), \
        (slice(0, 40), slice(0, 100), (100, 100))
    got = fusion.pair_stats(i, j, pred_i, pred_j, valid, where_i=where_i, where_j=where_j)
    r, c = np.nonzero(valid)  # every pixel: under the lattice's size

    def joined(q, where):
        u, v = fusion.maps.unit(100)[where[0]][r], fusion.maps.unit(100)[where[1]][c]
        phi = np.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], axis=1)
        return np.concatenate([phi * q[:, None], phi], axis=1)

    g = np.concatenate([joined(pred_i[r, c].astype(np.float64) - 0.4, where_i),
                        -joined(pred_j[r, c].astype(np.float64) - 0.6, where_j)], axis=1)
    assert got.gram.tobytes() == (g.T @ g).tobytes()
    assert got.n == valid.sum()
