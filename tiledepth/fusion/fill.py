"""Fill policy: solve, diagnose, and fill the inconsistent tiles from the coarse map.

Tiles flagged inconsistent by :func:`tiledepth.fusion.diagnosis.diagnose` are
filled from the coarse prediction (blended with :data:`FILL_WEIGHT`,
:func:`fill_values`), and the others solved again without them, so that they no
longer pull on their neighbours. Pure: statistics in, value maps out; a filled
tile's values from its prediction and the coarse map under it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import numpy as np
from rasterio.windows import Window

from tiledepth.errors import TiledepthError
from tiledepth.fusion import diagnosis, solve
from tiledepth.fusion.coarse import gross_anchor_pixels
from tiledepth.fusion.maps import Affine1D, AffineField
from tiledepth.fusion.resample import upsample_window
from tiledepth.fusion.stats import PairStats, PairTable, TileStats, TileTable

__all__ = ["FILL_FOLLOWS", "FILL_WEIGHT", "fill_values", "solve_and_fill"]

#: Blending weight of a tile filled from the coarse prediction (flagged inconsistent),
#: relative to the others: its neighbours win wherever they overlap it (the fill gives way
#: within about a tenth of the overlap from their edges), and the coarse map fills only what
#: no other tile covers (BENCHMARKS.md, fusion quality; CHANGELOG.md).
FILL_WEIGHT = 0.02


#: A filled tile takes the coarse map under it, except where the coarse map goes grossly
#: against the tile's own prediction (:func:`tiledepth.fusion.coarse.gross_anchor_pixels`:
#: an inverted patch) while the tile follows the coarse map everywhere else (the absolute
#: correlation of its valid pixels with the upsampled coarse map there at least this): the
#: coarse map is the wrong one there, and the tile's prediction, mapped onto the coarse map
#: by a least-squares scale and shift on those other pixels, fills it. A tile flagged for
#: its clipped extremes over an inverted patch of the coarse map was filled with the
#: patch: 5.6 times the clean run's NRMSE on the quarter geometry, with no pyramid level to
#: overrule the patch (issue 17, BENCHMARKS.md "A filled tile over a wrong patch of the
#: coarse map"). Another scene's content does not follow the coarse map elsewhere.
FILL_FOLLOWS = 0.5


def fill_values(pred: np.ndarray, valid: np.ndarray, window: Window,
                full_shape: tuple[int, int], coarse: np.ndarray, *,
                value_range: float) -> np.ndarray | None:
    """What a filled tile's pixels take where the coarse map under it is wrong: the coarse map
    upsampled under the tile, a wrong patch of it (:data:`FILL_FOLLOWS`) taken from the tile;
    None where there is none (the fill is the coarse map as it is, the common case).

    Parameters
    ----------
    pred, valid : ndarray of shape (h, w)
        The tile's prediction and valid pixels.
    window : Window
        The tile's window in the raster.
    full_shape : tuple of int
        (height, width) of the raster.
    coarse : ndarray of shape (ch, cw)
        The coarse map (the anchor), in the fused map's values.
    value_range : float
        The coarse map's value range (:func:`tiledepth.metrics.value_range`).

    Returns
    -------
    ndarray of shape (h, w), float32, or None
        The coarse map under the tile, the wrong patch's pixels replaced; None where no
        patch is taken from the tile.

    Examples
    --------
    >>> tile = np.add.outer(np.arange(64.0), np.arange(64.0))
    >>> anchor = 2 * tile[1::4, 1::4] + 3  # the cells' means in another frame, one patch
    >>> anchor[4:8, 4:8] = 2 * anchor[4:8, 4:8].mean() - anchor[4:8, 4:8]  # turned over
    >>> ok = np.ones((64, 64), bool)
    >>> out = fill_values(tile, ok, Window(0, 0, 64, 64), (64, 64), anchor,
    ...                   value_range=float(np.ptp(anchor)))
    >>> truth = upsample_window(2 * tile[1::4, 1::4] + 3, (64, 64), Window(0, 0, 64, 64))
    >>> bool(np.abs(out - truth)[20:28, 20:28].max() < 3.0)  # was off by up to 24
    True
    >>> under = upsample_window(anchor, (64, 64), Window(0, 0, 64, 64))
    >>> bool((out[:8, :8] == under[:8, :8]).all())
    True
    >>> fill_values(tile, ok, Window(0, 0, 64, 64), (64, 64), 2 * tile[1::4, 1::4] + 3,
    ...             value_range=120.0) is None  # a right coarse map: filled as it is
    True
    """
    if not value_range > 0:
        return None
    wrong = gross_anchor_pixels(pred, valid, window, full_shape, coarse,
                                anchor_range=value_range)
    if wrong is None:
        return None
    under = upsample_window(coarse, full_shape, window)  # (h, w)
    rest = valid & ~wrong & np.isfinite(pred) & np.isfinite(under)
    p, y = pred[rest].astype(np.float64), under[rest].astype(np.float64)
    if p.size < 16 or not (np.ptp(p) > 0 and np.ptp(y) > 0):
        return None
    if not abs(float(np.corrcoef(p, y)[0, 1])) >= FILL_FOLLOWS:
        return None  # the tile follows the coarse map nowhere: the tile is the wrong one
    scale, shift = np.polyfit(p, y, 1)
    out = under.copy()
    taken = wrong & valid
    out[taken] = (scale * pred[taken] + shift).astype(out.dtype)
    return out


def solve_and_fill(tiles: list[TileStats] | TileTable, pairs: list[PairStats] | PairTable, *,
                   tile_area: float, coarse_weight: float, fit: str, robust: bool,
                   value_range: float, estimate_weights: bool = False,
                   bend_from_anchor: bool = False, rejudge: Collection[int] | None = None,
                   filled: Collection[int] = (), level: bool = False,
                   ) -> tuple[dict[int, Affine1D | AffineField], diagnosis.Diagnosis, set[int]]:
    """Every tile's value map, the diagnosis, and the tiles to fill from the coarse map.

    Solved robustly (with ``robust``). Bilinear maps are judged for outliers by the
    affine solve their robust weights came from (a bilinear map bends toward a wrong tile
    and hides it). With ``robust`` (and a ``fit`` other than ``'none'``), tiles flagged
    inconsistent are to be filled from the coarse prediction, and the others are solved
    again without them.

    Parameters
    ----------
    tiles, pairs : lists of TileStats, PairStats, or a TileTable, PairTable
    tile_area, coarse_weight, fit, robust
        As in :func:`tiledepth.fusion.solve.solve_alignment`.
    value_range : float
        As in :func:`tiledepth.fusion.diagnosis.diagnose`.
    estimate_weights, bend_from_anchor : bool
        As in :func:`tiledepth.fusion.solve.solve_alignment` (both solves).
    rejudge, filled : collections of int, optional
        A second round (tiles predicted again, :func:`tiledepth.stages.predict_again`):
        only the tiles of ``rejudge`` are judged again, strictly (``strict`` of
        :func:`tiledepth.fusion.diagnosis.diagnose`: a tile that failed once is kept only
        where its neighbours vouch for it), filled if flagged inconsistent and kept
        otherwise; the others of ``filled`` (the first round's) stay filled, and no other
        tile is filled. None: every tile judged.
    level : bool
        The tiles of a pyramid level (``level`` of
        :func:`tiledepth.fusion.diagnosis.diagnose`).

    Returns
    -------
    maps : dict of int to Affine1D or AffineField
        The kept tiles' maps from the re-solve; the filled tiles' from the first solve.
    diagnosis : Diagnosis
        Of the first solve.
    replaced : set of int
        The ids of the tiles to fill from the coarse prediction.

    Raises
    ------
    TiledepthError
        Where the first solve has no finite solution (a singular system).
    """
    tiles = TileTable.of(tiles)  # once, for the solves and the diagnosis alike
    pairs = PairTable.of(pairs, tiles.corners)
    # module attributes, so that a test can watch the solves and the diagnosis
    with _unwarned():  # a singular or non-finite system is checked and reported just below
        maps, judged = solve.solve_alignment(tiles, pairs, tile_area=tile_area,
                                             coarse_weight=coarse_weight, fit=fit,
                                             robust=robust, estimate_weights=estimate_weights,
                                             bend_from_anchor=bend_from_anchor,
                                             return_judged=True)
    if not all(a.finite for a in maps.values()):
        raise TiledepthError("the alignment of the tiles has no solution (a singular system); "
                             "try another --overlap or --coarse-weight, and please report it")
    found = diagnosis.diagnose(tiles, pairs, maps, judged=judged, value_range=value_range,
                               strict=() if rejudge is None else rejudge, level=level)
    replaced = {i for i, why in found.flagged.items() if why == "inconsistent"} \
        if robust and fit != "none" else set()
    if rejudge is not None:  # a second round: the first round's verdict on the others
        replaced = (set(filled) - set(rejudge)) | (replaced & set(rejudge))
    if replaced:
        with _unwarned():  # kept only if finite
            gone = np.array(sorted(replaced), np.int64)
            kept = solve.solve_alignment(
                tiles.take(~np.isin(tiles.column("id"), gone)),
                pairs.take(~np.isin(pairs.column("i"), gone) & ~np.isin(pairs.column("j"), gone)),
                tile_area=tile_area, coarse_weight=coarse_weight, fit=fit, robust=True,
                estimate_weights=estimate_weights, bend_from_anchor=bend_from_anchor)
        if all(a.finite for a in kept.values()):
            maps.update(kept)
    return maps, found, replaced


@contextmanager
def _unwarned() -> Iterator[None]:
    """Silence NumPy's floating-point warnings, for a step whose result is checked for
    finiteness (they would print raw before the error). ``np.errstate`` is per thread (a
    context variable), unlike ``warnings.catch_warnings``, which swaps the process's one
    filter list: two raster threads of a batch in it at once left an "ignore RuntimeWarning"
    behind in the caller's process. A singular system gives NaN without a warning
    (``solve._spsolve``)."""
    with np.errstate(all="ignore"):
        yield
