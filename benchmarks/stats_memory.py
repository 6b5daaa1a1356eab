"""Memory of the alignment statistics: bytes kept per tile, and the solve's own peak.

Runs ``--tiles`` synthetic tiles (small, so that it is quick; the statistics' size does
not depend on the tile size) through :class:`tiledepth.background.TileStatistics`, the
engine's gatherer, with tracemalloc on, for the affine and the bilinear alignment, and
reports the bytes the gathered statistics keep per tile and the extra peak of
:func:`tiledepth.fusion.solve_and_fill` on them. The predictions are regenerated on
demand (not stored), so that only the statistics are counted. Each tile gets its own
noise (``--noise``, a fraction of the values' range; 0: exact tiles) so that the overlaps and
the anchor have residuals to measure, and the solve estimates the anchor's weight from them
as the engine's default does (``--fixed-weight``: ``estimate_weights`` off; with exact tiles
the estimate stops at once, so it was not measured before the nineteenth session).

    python benchmarks/stats_memory.py [--tiles 20000] [--tile-size 16] [--noise 0.01]
        [--fixed-weight]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from tiledepth import fusion
from tiledepth.background import TileStatistics
from tiledepth.tiling import tile_grid


class Regenerated:
    """A tile store that makes each tile's prediction again when asked (nothing kept)."""

    def __init__(self, base: np.ndarray, tiles: dict, noise: float = 0.0) -> None:
        self.base, self.tiles, self.noise = base, tiles, noise

    def pred(self, tile_id: int) -> np.ndarray:
        t = self.tiles[tile_id]
        w = t.window
        part = self.base[w.row_off:w.row_off + t.shape[0], w.col_off:w.col_off + t.shape[1]]
        pred = (1.0 + 0.01 * (tile_id % 37)) * part + 0.1 * (tile_id % 11)
        if self.noise:  # the same noise at every call of the tile
            rng = np.random.default_rng(tile_id)
            pred = pred + (self.noise * rng.standard_normal(pred.shape)).astype(pred.dtype)
        return pred

    def get_pred(self, tile_id: int, index: tuple[slice, slice]) -> np.ndarray:
        return self.pred(tile_id)[index]


def measure(alignment: str, tiles: int, tile_size: int, *, noise: float = 0.0,
            estimate_weights: bool = True) -> dict[str, float]:
    """Bytes per tile kept by the statistics, and the solve's extra peak per tile."""
    side = int(round(np.sqrt(tiles)))
    stride = tile_size - tile_size // 4
    size = stride * side + tile_size // 4
    grid = tile_grid(size, size, tile_size, 0.25)
    rng = np.random.default_rng(0)
    base = rng.random((size, size), dtype=np.float32).cumsum(1) / size
    coarse = base[::8, ::8].copy()
    by_id = {t.id: t for row in grid for t in row}
    store = Regenerated(base, by_id, noise)
    valid = {}
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    with TileStatistics(grid, coarse, (size, size), store, alignment=alignment) as gather:
        for t in by_id.values():
            ok = valid.setdefault(t.shape, np.ones(t.shape, bool))
            gather.add(t, store.pred(t.id), ok)
    seconds = time.perf_counter() - t0
    stats = gather.stats if not isinstance(gather.stats, dict) else list(gather.stats.values())
    kept = tracemalloc.get_traced_memory()[0] - start - sum(v.nbytes for v in valid.values())
    tracemalloc.reset_peak()
    at_solve = tracemalloc.get_traced_memory()[0]
    t1 = time.perf_counter()
    fusion.solve_and_fill(stats, gather.pairs, tile_area=float(tile_size) ** 2,
                          coarse_weight=0.3, fit="scale_shift", robust=True, value_range=1.0,
                          estimate_weights=estimate_weights)
    solve_s = time.perf_counter() - t1
    peak = tracemalloc.get_traced_memory()[1] - at_solve
    tracemalloc.stop()
    n = len(by_id)
    return dict(tiles=n, pairs=len(gather.pairs), kept_per_tile=kept / n,
                solve_peak_per_tile=peak / n, gather_s=seconds, solve_s=solve_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=20000, help="about this many tiles")
    ap.add_argument("--tile-size", type=int, default=16)
    ap.add_argument("--alignment", nargs="*", default=["affine", "bilinear"])
    ap.add_argument("--noise", type=float, default=0.01,
                    help="each tile's noise, a fraction of the values' range (0: exact)")
    ap.add_argument("--fixed-weight", action="store_true",
                    help="the anchor's weight as given (estimate_weights off)")
    args = ap.parse_args()
    for alignment in args.alignment:
        r = measure(alignment, args.tiles, args.tile_size, noise=args.noise,
                    estimate_weights=not args.fixed_weight)
        print(f"{alignment:8s} tiles {r['tiles']} pairs {r['pairs']}: "
              f"kept {r['kept_per_tile']:.0f} B/tile, solve peak "
              f"{r['solve_peak_per_tile']:.0f} B/tile (gather {r['gather_s']:.1f} s, "
              f"solve {r['solve_s']:.1f} s)")


if __name__ == "__main__":
    main()
