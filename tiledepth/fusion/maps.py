"""Value maps: how an aligned tile is made from its raw prediction.

``affine`` maps (:class:`Affine1D`) hold one scale and shift per tile;
``bilinear`` ones (:class:`AffineField`) a scale and shift that vary bilinearly
between the tile's four corners. :class:`BilinearMap` evaluates such a field only
where blending indexes it. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["ALIGNMENTS", "Affine1D", "AffineField", "BilinearMap", "corner_count", "unit"]

#: Per-tile value maps (the ``alignment`` option): name -> number of corners.
ALIGNMENTS: dict[str, int] = {"affine": 1, "bilinear": 4}


@dataclass(frozen=True)
class Affine1D:
    """A per-tile value map ``aligned = scale * prediction + shift``."""

    scale: float
    shift: float

    def apply(self, pred: np.ndarray) -> np.ndarray:
        return (pred * np.float32(self.scale) + np.float32(self.shift)).astype(np.float32)

    def maps(self, shape: tuple[int, int]) -> tuple[float, float]:
        """Scale and shift over a tile of ``shape``: here constants."""
        return self.scale, self.shift

    fields = maps  # what blending indexes: constants

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([self.scale, self.shift]).all())


@dataclass(frozen=True)
class AffineField:
    """A per-tile value map whose scale and shift vary bilinearly across the tile.

    ``scales`` and ``shifts`` hold the values at the (top-left, top-right,
    bottom-left, bottom-right) pixel centres; ``aligned = S(x) * prediction + T(x)``.
    ``scale`` and ``shift`` are their means (for reports).
    """

    scales: tuple[float, float, float, float]
    shifts: tuple[float, float, float, float]

    @property
    def scale(self) -> float:
        return float(np.mean(self.scales))

    @property
    def shift(self) -> float:
        return float(np.mean(self.shifts))

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([*self.scales, *self.shifts]).all())

    def maps(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(S, T)``, ndarrays of ``shape``, float32."""
        u, v = unit(shape[0]), unit(shape[1])

        def field(c: tuple[float, ...]) -> np.ndarray:
            top = c[0] * (1 - v) + c[1] * v
            bottom = c[2] * (1 - v) + c[3] * v
            return ((1 - u)[:, None] * top + u[:, None] * bottom).astype(np.float32)

        return field(self.scales), field(self.shifts)

    def fields(self, shape: tuple[int, int]) -> tuple[BilinearMap, BilinearMap]:
        """``(S, T)`` over a tile of ``shape``, evaluated only where blending indexes them."""
        return BilinearMap(self.scales, shape), BilinearMap(self.shifts, shape)

    def apply(self, pred: np.ndarray) -> np.ndarray:
        s, t = self.maps(pred.shape)
        return (s * pred + t).astype(np.float32)


class BilinearMap:
    """A field over a tile of ``shape``, bilinear between its corner values (top-left,
    top-right, bottom-left, bottom-right), computed only where it is indexed: ``m[rows,
    cols]`` with two slices (a block), an ``np.ix_`` lattice or two arrays of points;
    float32. ``abs(m)`` is its absolute value. Blending a window needs the part of each
    tile in it only, not whole-tile maps (BENCHMARKS.md, hot paths)."""

    __slots__ = ("corners", "shape", "absolute")

    def __init__(self, corners: tuple[float, ...], shape: tuple[int, int],
                 absolute: bool = False) -> None:
        self.corners, self.shape, self.absolute = corners, shape, absolute

    def __getitem__(self, index) -> np.ndarray:
        rows, cols = index
        u, v = unit(self.shape[0])[rows], unit(self.shape[1])[cols]
        if isinstance(rows, slice) and isinstance(cols, slice):
            u = u[:, None]
        c0, c1, c2, c3 = self.corners
        # (1-u)(1-v) c0 + (1-u) v c1 + u (1-v) c2 + u v c3, as a + b v, in float32
        a = (c0 + (c2 - c0) * u).astype(np.float32)
        b = ((c1 - c0) + (c3 - c2 - c1 + c0) * u).astype(np.float32)
        out = b * v.astype(np.float32)
        out += a
        return np.abs(out, out=out) if self.absolute else out

    def __abs__(self) -> BilinearMap:
        return BilinearMap(self.corners, self.shape, absolute=True)


@lru_cache(maxsize=16)
def unit(n: int) -> np.ndarray:
    """Pixel centres 0 .. n-1 mapped to [0, 1]; read-only, made once per ``n`` (blending
    67 MP asked for it 6500 times, for a few tile sizes)."""
    out = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    out.flags.writeable = False
    return out


def corner_count(alignment: str) -> int:
    """Corners of the value map ``alignment`` (see :data:`ALIGNMENTS`); ValueError if unknown."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
    return ALIGNMENTS[alignment]
