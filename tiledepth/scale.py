"""``--scale``: fuse on a reduced grid, then upsample onto the input's grid.

:func:`scaled_io` gives the reader and sink the fusion runs over: at scale
1 the run's own; below, a :class:`tiledepth.read.ScaledReader` and an on-disk
array in the scratch folder. :func:`upsample_onto` then writes that array onto
the run's sink, window by window, and removes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tiledepth import fusion
from tiledepth.protocols import MaskedReader, Reader, Sink
from tiledepth.readers import ScaledReader
from tiledepth.write import ArraySink

__all__ = ["scaled_io", "upsample_onto"]

#: The reduced map's file in the scratch folder.
SCALED_FILE = "scaled.npy"


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
    """
    tick = time.perf_counter()
    values = small.array
    full = (reader.height, reader.width)
    for window in sink.windows():
        rows, cols = fusion.coarse_extent(window, full, values.shape)
        crop = np.asarray(values[rows, cols])
        finite = np.isfinite(crop)
        if not finite.any():
            out = np.full((int(window.height), int(window.width)), np.nan, np.float32)
        else:
            out = fusion.upsample_window(fusion.fill_invalid(crop, finite), full, window,
                                        grid_shape=values.shape,
                                        origin=(rows.start, cols.start))
            out[~reader.read_valid(window)] = np.nan
        sink.write(window, out)
    if isinstance(values, np.memmap) and values.filename:  # else the checkpoint folder,
        Path(values.filename).unlink(missing_ok=True)      # holding it, would be kept
    return time.perf_counter() - tick
