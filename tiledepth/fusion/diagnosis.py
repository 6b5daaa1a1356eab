"""Diagnose: how consistent solved value maps are, per tile and overall; flag outliers.

From the same statistics the maps were solved from (no pixel access).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from tiledepth.fusion.maps import Affine1D, AffineField
from tiledepth.fusion.solve import FLAT, Problem, affine_sums, typical
from tiledepth.fusion.stats import PairStats, PairTable, TileStats, TileTable, affine_stats

__all__ = ["SUSPECT_CORR", "TILE_SUSPECT_K", "Diagnosis", "TileReport", "diagnose",
           "level_agreements", "level_suspects", "tile_suspects"]

#: Flag a tile whose typical overlap residual exceeds this many robust standard deviations.
FLAG_K = 5.0
#: ... and this fraction of the value range (tiny residuals of a near-exact fusion are fine).
FLAG_FLOOR = 0.005
#: A tile far from the coarse map is flagged only where its overlaps' typical residual also
#: exceeds this many robust standard deviations: neighbours that agree with it vouch for it
#: (issue 17: 2-9 % of clean tiles were flagged on the gigapixel geometry, by a wrong anchor).
VOUCH_K = 2.0
#: A tile whose content hardly follows the coarse map under it nor its neighbours on its
#: overlaps (correlation below this in absolute value, both) is flagged however small its
#: residuals: a model that warps within a call inflates the typical residual until FLAG_K
#: typical ones exceed what any tile's residual can be (a wrong tile's map collapses to its
#: mean, its residual to the spread of the content under it; issue 17, BENCHMARKS.md) ...
UNLIKE_CORR = 0.5
#: ... where the coarse map under it varies by at least this fraction of the value range
#: (a flat patch, or a small tile under a coarse map, correlates with nothing).
UNLIKE_CONTRAST = 0.08
#: A tile whose raw prediction varies by at most this fraction of its values' magnitude
#: (its standard deviation against its mean's absolute value plus the typical tile's
#: standard deviation) is constant: a failed call. A constant float32 prediction varies by
#: round-off only (5e-8 of its values, as averaged onto the anchor's cells), 1e-6 is about
#: 8 float32 units in the last place: no relief a float32 map can hold ...
DEGENERATE = 1e-6
#: ... and where the coarse map under it varies by more than ``FLAG_FLOOR`` of the range
#: (a plateau over it is off by more than the flag tolerates; a flat roof or water under a
#: flat anchor stays), it is flagged ``inconsistent`` and its overlaps count for no tile:
#: constant neighbours agree exactly with each other and would vouch for one another
#: (:data:`VOUCH_K`), its correlations are those of round-off (:data:`UNLIKE_CORR`).
#: Overlap residuals are held against a tile only where they are large also relative to the
#: content's contrast on the overlaps (each overlap's residual over the lesser of its two
#: tiles' aligned standard deviations there, against ``FLAG_K`` or ``VOUCH_K`` typical such
#: ratios): a model whose per-call errors grow with the relief (a
#: power law, a blur, a scale error) disagrees most, in absolute terms, where the depth varies
#: most, and such clean tiles were outliers (issue 17: 6-9 clean tiles at a depth edge of
#: Adirondack on the gigapixel geometry, filled from an 8 px anchor; BENCHMARKS.md).
RELATIVE_OVERLAPS = True
#: A pyramid level's tile that is not flagged but whose neighbours follow it weakly (its raw
#: prediction's correlation with theirs, pooled over its overlaps, :func:`_level_agreement`,
#: below this) is suspect (:func:`level_suspects`): it gets a second call, kept where its
#: neighbours follow the new sample at least this well (:func:`tiledepth.stages.
#: keep_better_samples`). Another
#: scene's content agrees with its neighbours by chance at 0.52-0.70 where a level tile has
#: few overlaps (a corner's three), above ``UNLIKE_CORR``, where clean tiles can fall too
#: (0.58-0.61 at the lowest over the fusion benchmark's 13 models), so no threshold tells
#: them apart; a second sample does, and costs a clean tile nothing (issue 17, BENCHMARKS.md
#: "A level's weakly followed tile called twice").
SUSPECT_CORR = 0.75
#: A full-resolution tile that is not flagged is suspect (:func:`tile_suspects`) where its
#: agreement with its neighbours (:func:`level_agreements`) is below ``UNLIKE_CORR`` and
#: below the run's typical agreement by ``TILE_SUSPECT_K`` robust standard deviations (the
#: median less that many scaled median absolute deviations): another scene's content under
#: weak texture, whose residuals are those of the little relief under it, passes every
#: other rule (issue 17: 3-8 such tiles in a gigapixel run of an exactly consistent model).
#: Relative, because a model whose calls disagree on every overlap (a per-call vignette) has
#: a third of its clean tiles under ``UNLIKE_CORR``: there no tile stands out, and none is
#: called again; over the fusion benchmark's 13 models the clean runs call 0-7 % of their
#: tiles again (BENCHMARKS.md, "A weakly followed full-resolution tile called twice").
TILE_SUSPECT_K = 3.0


@dataclass(frozen=True)
class TileReport:
    """How well one aligned tile agrees with its neighbours and the coarse map.

    Attributes
    ----------
    consistency : float
        Root-mean-square difference from its overlapping neighbours, pooled
        over its overlaps, relative to the value range (NaN without neighbours).
    coarse : float
        Root-mean-square difference from the coarse prediction under it,
        relative to the value range.
    flag : str or None
        Why the tile is an outlier (``'inconsistent'``: it disagrees with its
        neighbours far more than a typical tile does, or follows neither them nor
        the coarse map; ``'negative-scale'``:
        its prediction had to be turned upside down, against the anchor's orientation,
        :func:`_orientation`), or None.
    """

    consistency: float
    coarse: float
    flag: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """Consistency of an alignment, from the same statistics (no pixel access).

    Attributes
    ----------
    consistency : float
        Root-mean-square difference between overlapping aligned tiles over
        all overlaps, relative to ``value_range``.
    value_range : float
        The value range the figures are relative to.
    tiles : dict of int to TileReport
    """

    consistency: float
    value_range: float
    tiles: dict[int, TileReport]

    @property
    def flagged(self) -> dict[int, str]:
        """Flagged tile ids and why."""
        return {i: r.flag for i, r in self.tiles.items() if r.flag is not None}


def _limits(pair_rms: np.ndarray, pair_c: np.ndarray, tile_rms: np.ndarray,
            tile_c: np.ndarray, rng: float) -> tuple[float, float, float]:
    """The residuals above which an overlap, a tile against the coarse map, and an overlap
    that no longer vouches for its tile, are outliers (see :func:`diagnose`)."""
    floor = FLAG_FLOOR * rng
    if not len(pair_rms):
        return np.inf, max(FLAG_K * typical(tile_rms, tile_c), floor), np.inf
    pairs = typical(pair_rms, pair_c)
    return (max(FLAG_K * pairs, floor), max(FLAG_K * typical(tile_rms, tile_c), floor),
            max(VOUCH_K * pairs, floor))


def _correlation(cov: np.ndarray, var_a: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    """Pearson correlation from centred sums; NaN where either side does not vary."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((var_a > 0) & (var_b > 0), cov / np.sqrt(var_a * var_b), np.nan)


def _overlap_moments(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P,) each overlap's centred sums of the two tiles' raw predictions: the cross
    product, tile i's squares, tile j's squares."""
    k = problem.k  # an overlap's features: tile i's [phi q_i, phi], then tile j's negated
    g, m = problem.pair_gram, problem.pair_n
    sa, sb = g[:, :k, k:2 * k].sum((1, 2)), g[:, 2 * k:3 * k, 3 * k:].sum((1, 2))
    return (-g[:, :k, 2 * k:3 * k].sum((1, 2)) - sa * sb / m,
            g[:, :k, :k].sum((1, 2)) - sa * sa / m,
            g[:, 2 * k:3 * k, 2 * k:3 * k].sum((1, 2)) - sb * sb / m)


def _overlap_correlations(problem: Problem) -> np.ndarray:
    """(P,) the absolute correlation of the two tiles' raw predictions on each overlap
    (NaN where either does not vary): scale-free, the solved maps do not enter."""
    return np.abs(_correlation(*_overlap_moments(problem)))


def _level_agreement(problem: Problem, per_tile: list[list[int]],
                     signs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far each tile's neighbours follow it, and each other (a pyramid level's tiles:
    :func:`diagnose`'s ``level``; :func:`_unfollowed`).

    A tile's agreement is the correlation of its raw prediction with its neighbours',
    pooled over its overlaps (the centred cross products summed, each overlap's sign
    turned by the signs of the two tiles' solved scales, so that an inverted neighbour,
    kept with a negative scale, counts as agreeing); a tile of another scene agrees by
    chance on each overlap, with either sign, and its pooled correlation comes near zero.
    Where it is below ``UNLIKE_CORR``, it is computed again without the overlaps with the
    other tiles below it (a clean tile beside a wrong one is not blamed for its
    neighbour), and its neighbours' pooled correlation among themselves (on their
    overlaps with each other, the tiles below it left out) is computed.

    Returns
    -------
    first, agreement, among : ndarray of shape (T,)
        The pooled correlation over all its overlaps; over those with the tiles not below
        ``UNLIKE_CORR`` (``first`` where none is left); its neighbours' among themselves.
        NaN where not computed (the last two: where ``first`` is not below) or where
        nothing varies.
    """
    cross, sq_i, sq_j = _overlap_moments(problem)
    ends = problem.pair_idx  # (P, 2)
    cross = cross * signs[ends[:, 0]] * signs[ends[:, 1]]
    usable = (sq_i > 0) & (sq_j > 0)

    def pooled(tile: int | None, pairs: list[int]) -> float:
        """|correlation| pooled over ``pairs``, ``tile``'s side first (None: symmetric)."""
        pairs = [p for p in pairs if usable[p]]
        if not pairs:
            return float("nan")
        mine = sq_i[pairs] if tile is None else np.where(ends[pairs, 0] == tile, sq_i[pairs],
                                                         sq_j[pairs])
        theirs = sq_j[pairs] if tile is None else sq_i[pairs] + sq_j[pairs] - mine
        return float(abs(cross[pairs].sum()) / np.sqrt(mine.sum() * theirs.sum()))

    first = np.array([pooled(j, own) for j, own in enumerate(per_tile)])  # (T,)
    agreement, among = np.full(len(first), np.nan), np.full(len(first), np.nan)
    low = set(np.flatnonzero(first < UNLIKE_CORR).tolist())
    for j in sorted(low):
        own = per_tile[j]
        others = {int(ends[p, 0] + ends[p, 1] - j) for p in own} - low  # its neighbours
        kept = [p for p in own if int(ends[p, 0] + ends[p, 1] - j) not in low]
        agreement[j] = pooled(j, kept)
        if np.isnan(agreement[j]):
            agreement[j] = first[j]
        among[j] = pooled(None, sorted({p for k in others for p in per_tile[k]
                                        if {int(ends[p, 0]), int(ends[p, 1])} <= others}))
    return first, agreement, among


def _unfollowed(problem: Problem, per_tile: list[list[int]], signs: np.ndarray) -> np.ndarray:
    """(T,) bool: tiles their neighbours do not follow (:func:`_level_agreement` below
    ``UNLIKE_CORR``), though the neighbours follow each other (their agreement among
    themselves reaches it: a flat patch, where no tile follows another, flags nothing)."""
    _, agreement, among = _level_agreement(problem, per_tile, signs)
    with np.errstate(invalid="ignore"):
        return (agreement < UNLIKE_CORR) & (among >= UNLIKE_CORR)


def _unlike(problem: Problem, per_tile: list[list[int]], rng: float) -> np.ndarray:
    """(T,) bool: tiles whose raw prediction correlates with neither the coarse map under
    them nor, by the median over their overlaps, their neighbours (``UNLIKE_CORR``), where
    the coarse map has texture under them (``UNLIKE_CONTRAST``). Scale-free: the solved
    maps do not enter, so neither a wrong anchor (the neighbours still follow the tile)
    nor a warp's residuals do."""
    k, n = problem.k, problem.tile_n
    sqq, sq, sc, sqc = affine_sums(problem.tile_gram, problem.tile_fc, k)
    var_c = problem.tile_scc - sc * sc / n
    corr = _correlation(sqc - sq * sc / n, sqq - sq * sq / n, var_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        textured = np.sqrt(np.maximum(var_c, 0) / n) >= UNLIKE_CONTRAST * rng
    pair = _overlap_correlations(problem)
    out = np.zeros(len(n), bool)
    for j, own in enumerate(per_tile):
        near = pair[own][np.isfinite(pair[own])]
        out[j] = bool(textured[j] and abs(corr[j]) < UNLIKE_CORR and len(near)
                      and np.median(near) < UNLIKE_CORR)
    return out


def _degenerate(problem: Problem, rng: float) -> np.ndarray:
    """(T,) bool: tiles whose raw prediction is constant (``DEGENERATE``) where the coarse
    map under them varies (by more than ``FLAG_FLOOR`` of the range): failed calls."""
    k, n = problem.k, problem.tile_n
    sqq, sq, sc, _ = affine_sums(problem.tile_gram, problem.tile_fc, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        std_q = np.sqrt(np.maximum(sqq - sq * sq / n, 0) / n)
        std_c = np.sqrt(np.maximum(problem.tile_scc - sc * sc / n, 0) / n)
    finite = std_q[np.isfinite(std_q)]
    relief = float(np.median(finite)) if len(finite) else 0.0
    return (std_q <= DEGENERATE * (np.abs(problem.mean) + relief)) & (std_c > FLAG_FLOOR * rng)


def _orientation(scales: np.ndarray, textured: np.ndarray) -> float:
    """The sign the anchor gives the tiles' scales: that of the textured tiles' majority
    (their median scale; +1 where it is not negative, or with none textured).

    Against the model's own coarse prediction it is +1 (the same model: a tile needs no
    turning over); against a reference raster it can be -1 by nature (a depth model's
    tiles aligned to heights, a disparity model's to metres below the top). A tile is
    upside down only against it: else every tile of such a run would be flagged.

    Examples
    --------
    >>> _orientation(np.array([-2.0, -1.9, 2.1, -2.2]), np.ones(4, bool))
    -1.0
    >>> _orientation(np.array([1.0, -1.0]), np.ones(2, bool))  # no majority: as the model's
    1.0
    """
    signed = scales[textured & np.isfinite(scales)]
    return -1.0 if len(signed) and float(np.median(signed)) < 0 else 1.0


def _solved(tiles: TileTable, maps: dict) -> TileTable:
    """The tiles with valid pixels and a map."""
    solved = np.fromiter((i in maps for i in tiles.column("id").tolist()), bool, len(tiles))
    return tiles.take((tiles.column("n") > 0) & solved)


def diagnose(tiles: Iterable[TileStats] | TileTable, pairs: Iterable[PairStats] | PairTable,
             maps: dict[int, Affine1D | AffineField], *, value_range: float,
             judged: dict[int, Affine1D] | None = None,
             strict: Collection[int] = (), level: bool = False) -> Diagnosis:
    """Per-tile and global consistency of solved value maps; flag the outlier tiles.

    A tile is flagged ``inconsistent`` when the median root-mean-square residual of its
    overlaps, or its residual against the coarse map (where its overlaps' exceeds
    ``VOUCH_K`` typical ones too), exceeds ``FLAG_K`` times the typical one (the median
    over overlaps, or tiles, with texture: flat ones fit almost exactly) and
    ``FLAG_FLOOR`` of the value range (overlap residuals count only where they also exceed
    as many typical ones relative to the content's contrast on the overlaps,
    :data:`RELATIVE_OVERLAPS`); and ``negative-scale`` when it has texture and its
    scale is negative and not small (an inverted prediction), against the anchor's
    orientation (the textured tiles' majority sign, :func:`_orientation`: a depth model's
    tiles aligned to a reference's heights all have a negative scale, and then a positive
    one is the inverted tile); such a tile is ``inconsistent`` instead where its neighbours do
    not follow it turned over (as a level's tile, ``level`` below: an inverted call agrees
    with them once turned, another scene's content anticorrelated with the anchor by chance
    does not). A tile whose prediction is
    constant (``DEGENERATE``) over a coarse map that varies is ``inconsistent`` too, and its
    overlaps count for no tile (constant neighbours would vouch for each other). Bilinear
    maps are judged by one scale and shift per tile (``judged``, else each map's means, on
    :func:`affine_stats`); the reported consistency is that of the maps themselves.

    Parameters
    ----------
    tiles, pairs : iterables of TileStats, PairStats, or a TileTable, PairTable
        The statistics the maps were solved from.
    maps : dict of int to Affine1D or AffineField
        From :func:`tiledepth.fusion.solve.solve_alignment`.
    value_range : float
        The range residuals are relative to (e.g. the 2nd to 98th percentile
        of the coarse prediction).
    judged : dict of int to Affine1D, optional
        For bilinear ``maps``: the affine maps outliers are judged by, e.g.
        those :func:`tiledepth.fusion.solve.solve_alignment` took its robust weights from.
    strict : collection of int
        Tiles judged strictly (a second prediction of a tile flagged once,
        :func:`tiledepth.stages.predict_again`): ``inconsistent`` where the median residual
        of their overlaps exceeds ``VOUCH_K`` typical ones (not ``FLAG_K``): a tile that
        failed once is kept only where its neighbours vouch for it. Its residual against
        the coarse map is not held against it: where the coarse map is wrong under it
        (the reason it was flagged, sometimes), it would be filled from that wrong map.
    level : bool
        The tiles of a pyramid level: a tile its neighbours do not follow (its raw
        prediction's correlation with theirs, pooled over its overlaps, below
        ``UNLIKE_CORR``), where they follow each other, is flagged ``inconsistent``
        whatever its correlation with the anchor: the anchor, one model call a few cells
        across under a level's tile, correlates with another scene's content by chance.

    Returns
    -------
    Diagnosis
    """
    tiles = _solved(TileTable.of(tiles), maps)
    if not len(tiles):
        return Diagnosis(float("nan"), value_range, {})
    ids = tiles.column("id").tolist()
    strict = set(strict)
    rng = value_range if value_range > 0 else 1.0
    pairs = PairTable.of(pairs, tiles.corners)
    problem = Problem(tiles, pairs, tile_area=1.0, coarse_weight=1.0, ridge=1e-3, smooth=0.0)
    x = problem.params(maps)
    pair_rms, tile_rms = problem.residuals(x)
    total = float((pair_rms**2 * problem.pair_n).sum())
    consistency = np.sqrt(total / problem.pair_n.sum()) / rng if len(pair_rms) else float("nan")
    per_tile = _per_tile(problem, len(ids))
    # Bilinear maps: outliers are judged by one scale and shift per tile; a bilinear map can
    # bend to fit much of a wrong tile, and its residuals would no longer show it.
    own_rms = (pair_rms, tile_rms)
    if problem.k > 1:
        problem = Problem(affine_stats(tiles), affine_stats(pairs), tile_area=1.0,
                          coarse_weight=1.0, ridge=1e-3, smooth=0.0)
        if judged is None:
            judged = {i: Affine1D(m.scale, m.shift) for i, m in maps.items()}
        x = problem.params(judged)
        pair_rms, tile_rms = problem.residuals(x)
    pair_c, tile_c = problem.contrast(x)
    pair_limit, tile_limit, vouch_limit = _limits(pair_rms, pair_c, tile_rms, tile_c, rng)
    degenerate = _degenerate(problem, rng)  # failed calls: their overlaps count for no tile
    judged_pairs = per_tile if not degenerate.any() else \
        [[p for p in own if not degenerate[problem.pair_idx[p]].any()] for own in per_tile]
    unlike = _unlike(problem, judged_pairs, rng) | degenerate
    scales = np.array([maps[i].scale for i in ids])
    typical_scale = float(np.median(np.abs(scales)))
    # a flat tile's scale means nothing: only textured ones can be upside down; a constant
    # one (flat_tiles) is flat whatever the others: where every tile is, the percentile is
    # round-off or 0, and round-off scales (+-1e-12) were upside down
    textured = (tile_c > 0) & (tile_c >= FLAT * np.percentile(tile_c[np.isfinite(tile_c)], 90)) \
        & ~problem.flat if np.isfinite(tile_c).any() else np.zeros(len(tiles), bool)
    sign = _orientation(scales, textured)  # -1: an anchor the other way up (a reference's)
    turned = textured & (sign * scales < -0.25 * typical_scale)  # upside down: negative-scale
    if level:  # another scene's content the anchor under it cannot tell
        unlike |= _unfollowed(problem, judged_pairs, _signs(scales))
    elif turned.any():  # turned over, it must agree with its neighbours as an inverted call
        # does: another scene's content anticorrelated with the anchor by chance does not
        unlike |= turned & _unfollowed(problem, judged_pairs, _signs(scales))
    out = {}
    relative = RELATIVE_OVERLAPS and len(pair_rms) > 0
    if relative:  # each overlap's residual against its content's contrast
        _, var_a, var_b = _overlap_moments(problem)
        scale = np.abs(x[:, :problem.k].mean(axis=1))
        a, b = problem.pair_idx[:, 0], problem.pair_idx[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            lesser = np.sqrt(np.maximum(np.minimum(var_a * scale[a] ** 2, var_b * scale[b] ** 2),
                                        0) / problem.pair_n)
            rel = pair_rms / lesser
        rel_typical = typical(rel, pair_c)
        rel_pair_limit, rel_vouch_limit = FLAG_K * rel_typical, VOUCH_K * rel_typical
    for j, i in enumerate(ids):
        own = per_tile[j]
        pooled = np.sqrt((own_rms[0][own] ** 2 * problem.pair_n[own]).sum()
                         / problem.pair_n[own].sum()) if own else float("nan")
        own = judged_pairs[j]
        # far from the coarse map, as no typical tile is; or a failed call (no overlap left)
        bad = tile_rms[j] > tile_limit or degenerate[j]
        if own:
            overlap = float(np.median(pair_rms[own]))
            over_vouch, over_pair = overlap > vouch_limit, overlap > pair_limit
            if relative:  # and large for the relief under them too (flat ones: no excuse)
                r = rel[own][np.isfinite(rel[own])]
                ratio = float(np.median(r)) if len(r) else np.inf
                over_vouch &= not ratio <= rel_vouch_limit
                over_pair &= not ratio <= rel_pair_limit
            # far from the anchor but agreeing with its neighbours: the anchor is wrong there
            # (a wrong patch of the coarse map or of a pyramid level), not the tile
            bad = (bad and over_vouch) or over_pair \
                or (i in strict and over_vouch) \
                or unlike[j]  # another scene's content: neither anchor nor neighbours follow it
        flag = "inconsistent" if bad else \
            "negative-scale" if turned[j] else None
        out[i] = TileReport(float(pooled / rng), float(own_rms[1][j] / rng), flag)
    return Diagnosis(float(consistency), float(value_range), out)


def level_agreements(tiles: Iterable[TileStats] | TileTable,
                     pairs: Iterable[PairStats] | PairTable,
                     maps: dict[int, Affine1D | AffineField], *,
                     leave_out: Collection[int] = ()) -> dict[int, float]:
    """Each solved tile's agreement with its neighbours: the pooled correlation of its raw
    prediction with theirs on its overlaps, each overlap's sign turned by the signs of the two
    tiles' scales in ``maps`` (:func:`_level_agreement`'s first), NaN where nothing varies;
    the overlaps with the tiles of ``leave_out`` (flagged ones: their content, and the sign
    of their scale, say nothing of their neighbours) not counted.

    Scale-free, and sign-free for the tile itself: a second prediction of it is compared by
    the same figure under the same ``maps``.

    Examples
    --------
    >>> level_agreements([], [], {})  # no tile
    {}
    """
    tiles = _solved(TileTable.of(tiles), maps)
    if not len(tiles):
        return {}
    ids = tiles.column("id").tolist()
    pairs = PairTable.of(pairs, tiles.corners)
    if leave_out:
        gone = np.array(sorted(leave_out), np.int64)
        pairs = pairs.take(~np.isin(pairs.column("i"), gone) & ~np.isin(pairs.column("j"), gone))
    # one scale and shift per tile, as diagnose judges them (affine statistics as they are)
    problem = Problem(affine_stats(tiles), affine_stats(pairs), tile_area=1.0,
                      coarse_weight=1.0, ridge=1e-3, smooth=0.0)
    scales = np.array([maps[i].scale for i in ids])
    first, _, _ = _level_agreement(problem, _per_tile(problem, len(ids)), _signs(scales))
    return dict(zip(ids, first.tolist(), strict=True))


def _per_tile(problem: Problem, count: int) -> list[list[int]]:
    """Each of the ``count`` tiles' overlaps: the indices of ``problem``'s pairs it is in."""
    per_tile: list[list[int]] = [[] for _ in range(count)]
    for p, (a, b) in enumerate(problem.pair_idx):
        per_tile[a].append(p)
        per_tile[b].append(p)
    return per_tile


def _signs(scales: np.ndarray) -> np.ndarray:
    """-1 where a solved scale is negative (a tile kept turned over), else +1."""
    return np.where(scales < 0, -1.0, 1.0)


def tile_suspects(tiles: Iterable[TileStats] | TileTable, pairs: Iterable[PairStats] | PairTable,
                  maps: dict[int, Affine1D | AffineField], *,
                  flagged: Collection[int] = ()) -> tuple[dict[int, float], float]:
    """The full-resolution tiles that their neighbours follow weakly, as no typical tile is,
    not in ``flagged`` (:data:`TILE_SUSPECT_K`).

    Returns
    -------
    suspects : dict of int to float
        Tile id -> its agreement (:func:`level_agreements`, the overlaps with ``flagged``
        tiles left out), where below ``below``.
    below : float
        The agreement a tile needs not to be suspect: ``UNLIKE_CORR``, or the run's median
        less ``TILE_SUSPECT_K`` robust standard deviations where that is lower.

    Examples
    --------
    >>> tile_suspects([], [], {})  # no tile
    ({}, 0.5)
    """
    flagged = set(flagged)
    agree = {i: a for i, a in level_agreements(tiles, pairs, maps, leave_out=flagged).items()
             if i not in flagged}
    values = np.array([a for a in agree.values() if np.isfinite(a)])
    if not len(values):
        return {}, UNLIKE_CORR
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    below = min(UNLIKE_CORR, median - TILE_SUSPECT_K * spread)
    return {i: a for i, a in agree.items() if a < below}, below


def level_suspects(tiles: Iterable[TileStats] | TileTable, pairs: Iterable[PairStats] | PairTable,
                   maps: dict[int, Affine1D | AffineField], *,
                   flagged: Collection[int] = ()) -> dict[int, float]:
    """A pyramid level's tiles that their neighbours follow weakly, not in ``flagged``: tile
    id -> its agreement (:func:`level_agreements`, the overlaps with ``flagged`` tiles left
    out: a wrong tile would make its clean neighbours suspect), where below
    :data:`SUSPECT_CORR`."""
    flagged = set(flagged)
    return {i: a for i, a in level_agreements(tiles, pairs, maps, leave_out=flagged).items()
            if a < SUSPECT_CORR and i not in flagged}
