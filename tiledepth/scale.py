"""``--scale``: fuse on a reduced grid, then upsample onto the input's grid.

:func:`scaled_io` gives the reader and sink the fusion runs over: at scale
1 the run's own; below, a :class:`tiledepth.read.ScaledReader` and an on-disk
array in the scratch folder. :func:`upsample_onto` then writes that array onto
the run's sink, window by window, and removes it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tiledepth import fusion
from tiledepth.protocols import MaskedReader, Reader, Sink
from tiledepth.readers import ScaledReader
from tiledepth.write import ArraySink

__all__ = ["nearest_finite", "scaled_io", "upsample_onto"]

log = logging.getLogger(__name__)

#: The reduced map's file in the scratch folder.
SCALED_FILE = "scaled.npy"

#: How far (in reduced-grid pixels) :func:`nearest_finite` looks for a value for a valid
#: pixel the reduced grid lost: a value copied from further away (kilometres, across a
#: masked gap) says nothing of the pixel, and the search, a distance transform of a crop
#: that grows to the nearest finite pixel, would cost seconds in every output window.
MAX_FILL_DISTANCE = 64


def scaled_io(reader: Reader, sink: Sink, *, scale: float,
              file: Callable[[str], Path]) -> tuple[Reader, Sink]:
    """The reader and sink to fuse over: ``(reader, sink)`` at scale 1, else the reduced
    grid's reader and an on-disk float32 array of its size at ``file(SCALED_FILE)`` (the
    checkpoint's :meth:`~tiledepth.checkpoint.Checkpoint.scratch_file`: recorded as the
    run's own, so a run that fails leaves nothing it did not record)."""
    if scale == 1.0:
        return reader, sink
    scaled = ScaledReader(reader, scale)
    values = np.lib.format.open_memmap(file(SCALED_FILE), mode="w+", dtype=np.float32,
                                       shape=(scaled.height, scaled.width))
    return scaled, ArraySink(scaled.height, scaled.width, values)


def upsample_onto(small: ArraySink, reader: MaskedReader, sink: Sink) -> float:
    """Write ``small.array`` (a reduced grid, NaN where masked) onto the full grid of
    ``reader`` through ``sink``; remove its file; return the seconds it took.

    Bilinear, window by window; masked pixels are NaN exactly where the input is masked.
    A valid pixel the bilinear map leaves NaN (a thin valid area, a one-pixel column or a
    narrow AOI strip, that vanished from the reduced grid, whose validity is one sample per
    reduced pixel) takes the value of the nearest finite reduced pixel
    (:func:`nearest_finite`) within :data:`MAX_FILL_DISTANCE` reduced pixels; one further
    away stays NaN, all of them counted in one warning.
    """
    tick = time.perf_counter()
    values = small.array
    full = (reader.height, reader.width)
    unfilled = 0
    for window in sink.windows():
        rows, cols = fusion.coarse_extent(window, full, values.shape)
        crop = np.asarray(values[rows, cols])
        finite = np.isfinite(crop)
        valid = reader.read_valid(window)  # (h, w) bool
        if not finite.any():
            out = np.full((int(window.height), int(window.width)), np.nan, np.float32)
        else:
            out = fusion.upsample_window(fusion.fill_invalid(crop, finite), full, window,
                                        grid_shape=values.shape,
                                        origin=(rows.start, cols.start))
            out[~valid] = np.nan
        lost = valid & ~np.isfinite(out)  # valid, but nothing finite under or around it
        if lost.any():
            at = np.nonzero(lost)
            out[lost] = filled = nearest_finite(values, full, at[0] + int(window.row_off),
                                                at[1] + int(window.col_off))
            unfilled += int(np.isnan(filled).sum())
        sink.write(window, out)
    if unfilled:
        reach = MAX_FILL_DISTANCE * max(full[0] / values.shape[0], full[1] / values.shape[1])
        log.warning("%d valid pixel(s) lie more than %d px (%d px of the reduced grid) from "
                    "any pixel the reduced grid kept; left NaN: raise --scale", unfilled,
                    round(reach), MAX_FILL_DISTANCE)
    if isinstance(values, np.memmap) and values.filename:  # else the checkpoint folder,
        Path(values.filename).unlink(missing_ok=True)      # holding it, would be kept
    return time.perf_counter() - tick


def nearest_finite(values: np.ndarray, full_shape: tuple[int, int], rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
    """The value of the finite cell of ``values`` nearest to the cell holding each
    full-resolution pixel ``(rows[i], cols[i])``'s centre (NaN where none is finite within
    :data:`MAX_FILL_DISTANCE` cells).

    Searched in a crop around those cells that grows until it holds a finite cell and
    every cell nearer than the one found (beyond a crop ``m`` cells wider than the
    pixels' cells on each side, every cell is more than ``m`` away), at most
    :data:`MAX_FILL_DISTANCE` cells wider: a window at a time, not a distance transform
    of the whole grid (an int32 index pair per cell of a 62 MP grid, 1 GP at
    ``--scale 0.25``, is 500 MB).

    Parameters
    ----------
    values : ndarray of shape (ch, cw)
        The reduced grid (a memory map), NaN where masked.
    full_shape : tuple of int
        (H, W) of the full-resolution grid.
    rows, cols : ndarray of shape (n,), int
        Full-resolution pixel indices.

    Returns
    -------
    ndarray of shape (n,), float32

    Examples
    --------
    >>> grid = np.array([[np.nan, np.nan, 5.0], [np.nan, np.nan, np.nan]], np.float32)
    >>> nearest_finite(grid, (4, 6), np.array([0, 3]), np.array([0, 1]))
    array([5., 5.], dtype=float32)
    """
    reach = MAX_FILL_DISTANCE  # (read here: a test narrows it)
    from scipy import ndimage  # slow to import: only where a thin area vanished

    (h, w), (ch, cw) = full_shape, values.shape
    # the reduced cell whose extent holds the pixel's centre
    qr = np.minimum(((rows + 0.5) * (ch / h)).astype(np.intp), ch - 1)
    qc = np.minimum(((cols + 0.5) * (cw / w)).astype(np.intp), cw - 1)
    r0, r1, c0, c1 = int(qr.min()), int(qr.max()) + 1, int(qc.min()), int(qc.max()) + 1
    margin = 0
    while True:
        top, left = max(r0 - margin, 0), max(c0 - margin, 0)
        bottom, right = min(r1 + margin, ch), min(c1 + margin, cw)
        whole = (top, left, bottom, right) == (0, 0, ch, cw)
        crop = np.asarray(values[top:bottom, left:right])  # (crop h, crop w)
        finite = np.isfinite(crop)
        if finite.any():
            near = ndimage.distance_transform_edt(~finite, return_distances=False,
                                                  return_indices=True)  # (2, crop h, crop w)
            nr, nc = near[0][qr - top, qc - left], near[1][qr - top, qc - left]
            dist = np.hypot(nr - (qr - top), nc - (qc - left))  # (n,)
            far = float(dist.max())
            # no cell outside the crop is nearer; or none is within reach that is not in it
            if far <= margin or whole or margin >= reach:
                return np.where(dist <= reach, crop[nr, nc], np.nan).astype(np.float32)
            # holds the cells found: at most as far, next time
            margin = min(math.ceil(far), reach)
        elif whole or margin >= reach:
            return np.full(len(qr), np.nan, np.float32)
        else:
            margin = min(max(2 * margin, 8), reach)
