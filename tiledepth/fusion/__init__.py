"""Fusion: pure array-in, array-out stages that make tiles into one seamless map.

An affine-invariant model returns each tile ``i`` as ``p_i`` with its own
unknown scale and shift. Fusion finds a value map per tile (:mod:`.maps`) so
that the aligned tiles agree with each other on every overlap and with the
upsampled coarse prediction of the whole image, then blends them:

``anchor``
    The anchor made of several model calls of the coarse image (their robust median).
``resample``
    Exact area averages, bilinear upsampling of the coarse map, a tile's
    averages over the coarse cells and their blur.
``coarse``
    A tile as the coarse map sees it, and its statistics against the coarse map.
``stats``
    Per-tile and per-pair sufficient statistics (Gram matrices).
``solve``
    The global, robust, sparse least-squares solve of every tile's value map.
``diagnosis``
    Each tile's consistency with its neighbours and the coarse map; flags.
``fill``
    The policy for inconsistent tiles: filled from the coarse map, the rest re-solved.
``blend``
    The weighted mean of the aligned tiles, with weights that taper at inner edges.
``gradient``
    The gradient-domain fusion: the blend's detail, the anchor's low frequencies (a screened
    Poisson correction on the anchor's grid, added to the blend window by window).
``pyramid``
    The levels between the coarse map and the raster, and which value map tiles get.

Two value maps (``alignment``, see :data:`ALIGNMENTS`):

``affine``
    One scale and shift per tile: ``s_i * (p_i - m_i) + t_i`` (``m_i`` the
    tile's mean, for conditioning).
``bilinear``
    Scale and shift vary bilinearly across the tile between four corner
    values, ``sum_k phi_k(x) (s_ik (p_i - m_i) + t_ik)``, regularised toward
    one scale and shift; it absorbs smooth tilts and gains that a per-tile
    affine map leaves as seams. The engine's ``auto`` picks it where the
    anchor resolves a tile (:func:`tiledepth.fusion.pyramid.resolve_alignment`).

Pure NumPy/SciPy: float32 arrays in, no I/O. The stages' public functions and types are
importable from here.
"""

from __future__ import annotations

from tiledepth.fusion.anchor import anchor_of_calls
from tiledepth.fusion.blend import (
    BlendPart,
    blend_lattice,
    blend_points,
    blend_window,
    overlap_weights,
)
from tiledepth.fusion.coarse import (
    as_coarse_sees,
    blurred_tile_stats,
    coarse_tile_stats,
    without_gross_anchor,
)
from tiledepth.fusion.diagnosis import Diagnosis, TileReport, diagnose
from tiledepth.fusion.fill import FILL_WEIGHT, fill_values, solve_and_fill
from tiledepth.fusion.gradient import correction_at
from tiledepth.fusion.maps import ALIGNMENTS, Affine1D, AffineField, BilinearMap
from tiledepth.fusion.pyramid import level_overlap, pyramid_levels, resolve_alignment
from tiledepth.fusion.resample import (
    area_average,
    area_matrix,
    blur_cells,
    coarse_extent,
    fill_invalid,
    upsample_window,
)
from tiledepth.fusion.solve import solve_alignment, solve_scales
from tiledepth.fusion.stats import (
    PairStats,
    PairTable,
    TileStats,
    TileTable,
    affine_stats,
    pair_stats,
    recentred,
    replace_rows,
    tile_stats,
)

__all__ = [
    "ALIGNMENTS",
    "FILL_WEIGHT",
    "Affine1D",
    "AffineField",
    "BilinearMap",
    "BlendPart",
    "Diagnosis",
    "PairStats",
    "PairTable",
    "TileReport",
    "TileStats",
    "TileTable",
    "affine_stats",
    "anchor_of_calls",
    "area_average",
    "area_matrix",
    "as_coarse_sees",
    "blend_lattice",
    "blend_points",
    "blend_window",
    "blur_cells",
    "blurred_tile_stats",
    "coarse_extent",
    "coarse_tile_stats",
    "correction_at",
    "diagnose",
    "fill_invalid",
    "fill_values",
    "level_overlap",
    "overlap_weights",
    "pair_stats",
    "pyramid_levels",
    "recentred",
    "replace_rows",
    "resolve_alignment",
    "solve_alignment",
    "solve_and_fill",
    "solve_scales",
    "tile_stats",
    "upsample_window",
    "without_gross_anchor",
]
