"""Pyramid and value-map policy: the levels between the coarse map and the raster, their
tiles' overlap, which value map the tiles get (pure functions of sizes and options), and
where a level's tiles overrule its anchor (:func:`wrong_anchor_cells`).
"""

from __future__ import annotations

import numpy as np

from tiledepth.fusion.resample import area_average

__all__ = [
    "ANCHOR_GROSS_FLOOR",
    "ANCHOR_GROSS_K",
    "BILINEAR_MIN_ANCHOR_PIXELS",
    "LEVEL_OVERLAP",
    "PYRAMID_MAX",
    "PYRAMID_STEP",
    "level_overlap",
    "pyramid_levels",
    "resolve_alignment",
    "wrong_anchor_cells",
]

#: Each pyramid level is this many times finer than the one above it, and at least this many
#: times coarser than the raster: levels add 1/16 + 1/256 + ... of the tiles at equal overlap;
#: with their overlap of one half (LEVEL_OVERLAP) and the default 0.25, 2.25x that: under 16 %.
PYRAMID_STEP = 4
#: Longest side of a pyramid level (held in memory: 2048 x 2048 float32 is 16 MiB).
PYRAMID_MAX = 2048
#: A pyramid level's tiles overlap by at least half, whatever the option says for the tiles:
#: each pixel is seen by about four tiles, whose independent errors average out, and a level
#: has few tiles (BENCHMARKS.md, fusion quality).
LEVEL_OVERLAP = 0.5


def level_overlap(overlap: float) -> float:
    """The overlap of a pyramid level's tiles for the tiles' ``overlap``: at least half."""
    return max(overlap, LEVEL_OVERLAP)


#: ``alignment='auto'`` gives a tile bilinear value maps where the anchor has at least this
#: many pixels across it, one scale and shift where fewer. Chosen by the worst model of the
#: fusion benchmark's family, the two families compared on the same model calls
#: (BENCHMARKS.md, issue 17, "Affine by default below 300 anchor pixels"): at 24 to 288
#: pixels across a tile (288: a 2048 px pyramid level's tiles against a 768 px coarse map,
#: as in real runs), tiles of 128-320 px, bilinear maps made the worst tuned model
#: (`quadratic`, `latent`) 1.07x-1.22x affine's NRMSE, affine's worst (`current`, `power`)
#: at most 1.08x bilinear's; 300 is just above the finest anchor measured.
BILINEAR_MIN_ANCHOR_PIXELS = 300


def resolve_alignment(alignment: str, fit: str, tile_size: int, anchor_side: int,
                      raster_side: int) -> str:
    """The value map the tiles get: ``'affine'`` or ``'bilinear'``.

    Parameters
    ----------
    alignment : {'auto', 'affine', 'bilinear'}
        The option.
    fit : str
        A scale-only fit (metric kinds) always gets ``'affine'``.
    tile_size, anchor_side, raster_side : int
        The tile's side, and the long sides of the anchor and the raster, in pixels.

    Examples
    --------
    >>> resolve_alignment("auto", "scale_shift", 768, 768, 1500)
    'bilinear'
    >>> resolve_alignment("auto", "scale_shift", 768, 2048, 10000)
    'affine'
    >>> resolve_alignment("auto", "scale", 768, 768, 4000)
    'affine'
    """
    if fit != "scale_shift":
        return "affine"
    if alignment != "auto":
        return alignment
    across = tile_size * anchor_side / max(raster_side, 1)
    return "bilinear" if across >= BILINEAR_MIN_ANCHOR_PIXELS else "affine"


def pyramid_levels(long_side: int, coarse_side: int) -> list[int]:
    """Long sides of the intermediate levels between the coarse map and the raster.

    Each level is :data:`PYRAMID_STEP` times finer than the one above (the last
    capped at :data:`PYRAMID_MAX`, if still at least 2x finer), and added only
    while it stays at least that many times coarser than the raster.

    Examples
    --------
    >>> pyramid_levels(2000, 64)
    [256]
    >>> pyramid_levels(100_000, 768)
    [2048]
    >>> pyramid_levels(100_000, 128)
    [512, 2048]
    >>> pyramid_levels(10_000, 768)
    [2048]
    >>> pyramid_levels(5_000, 768)
    []
    """
    levels: list[int] = []
    side = coarse_side
    while True:
        nxt = min(side * PYRAMID_STEP, PYRAMID_MAX)
        if nxt < 2 * side or nxt * PYRAMID_STEP > long_side:
            return levels
        levels.append(nxt)
        side = nxt


#: An anchor cell is grossly wrong where a fused pyramid level, averaged over it, differs
#: from it by more than this many robust standard deviations of the cells' differences
#: (after the anchor's own tone curve against the level is taken out; on clean runs of the
#: fusion benchmark's models, gigapixel geometry, at most 21.4, for the per-call power law;
#: an inverted patch's cells mostly above 24, all of them for the exactly consistent model;
#: BENCHMARKS.md, issue 17) ...
ANCHOR_GROSS_K = 24.0
#: ... and by more than this fraction of the value range.
ANCHOR_GROSS_FLOOR = 0.1


def wrong_anchor_cells(anchor: np.ndarray, level: np.ndarray, *,
                       value_range: float) -> np.ndarray:
    """The cells of ``anchor`` that a pyramid level fused against it grossly overrules.

    A level's tiles agree with each other on their overlaps; where a patch of the anchor is
    grossly wrong (an inverted patch of the coarse prediction), its tiles' value maps
    give way only partly, and the wrong patch bends a whole group of tiles. Such cells are
    found by comparing the level, averaged over the anchor's cells, with the anchor: the
    difference, less a quadratic function of the anchor's value fitted robustly (a model's
    per-call tone curve, as a power law, differs smoothly with the value), is gross where it
    exceeds :data:`ANCHOR_GROSS_K` robust standard deviations (1.4826 times the median
    absolute deviation) and :data:`ANCHOR_GROSS_FLOOR` of ``value_range``.

    Parameters
    ----------
    anchor : ndarray of shape (ch, cw)
        The map the level was aligned to.
    level : ndarray of shape (lh, lw)
        The fused level, at least as fine as ``anchor`` (NaN where masked).
    value_range : float
        The anchor's value range (e.g. its 2nd to 98th percentile range).

    Returns
    -------
    ndarray of shape (ch, cw), bool
        True at the grossly wrong cells.

    Examples
    --------
    >>> anchor = np.add.outer(np.arange(8.0), np.arange(8.0))
    >>> level = np.kron(anchor, np.ones((4, 4)))  # the level agrees with the anchor ...
    >>> anchor[2:4, 5:7] = 14.0 - anchor[2:4, 5:7]  # ... but for an inverted patch
    >>> np.argwhere(wrong_anchor_cells(anchor, level, value_range=14.0)).tolist()
    [[2, 6], [3, 5], [3, 6]]

    (cell ``[2, 5]``, at the middle value 7, is the same inverted.)
    """
    seen = area_average(np.nan_to_num(level, nan=0.0)[None], anchor.shape)[0]
    weight = area_average(np.isfinite(level)[None].astype(np.float32), anchor.shape)[0]
    ok = (weight > 0.99) & np.isfinite(anchor)
    gross = np.zeros(anchor.shape, bool)
    if ok.sum() < 16 or not value_range > 0:
        return gross
    a, d = anchor[ok].astype(np.float64), (seen - anchor)[ok].astype(np.float64)
    a = (a - a.mean()) / value_range
    design = np.stack([np.ones_like(a), a, a * a], axis=1)
    keep = np.ones(len(a), bool)
    for _ in range(3):  # the tone curve, fitted without the cells it leaves far out
        coef = np.linalg.lstsq(design[keep], d[keep], rcond=None)[0]
        r = d - design @ coef
        sigma = 1.4826 * float(np.median(np.abs(r[keep] - np.median(r[keep]))))
        keep = np.abs(r) <= 3.0 * max(sigma, 1e-12)
    gross[ok] = np.abs(r) > max(ANCHOR_GROSS_K * sigma, ANCHOR_GROSS_FLOOR * value_range)
    return gross
