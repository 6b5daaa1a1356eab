"""Pyramid and value-map policy: the levels between the coarse map and the raster, their
tiles' overlap, and which value map the tiles get. Pure functions of sizes and options.
"""

from __future__ import annotations

__all__ = [
    "BILINEAR_MIN_ANCHOR_PIXELS",
    "LEVEL_OVERLAP",
    "PYRAMID_MAX",
    "PYRAMID_STEP",
    "level_overlap",
    "pyramid_levels",
    "resolve_alignment",
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
