"""Overviews averaged from the output's rows, against GDAL building them from the file.

Issue 16 asks for overviews "from the blended blocks as they are written, not by GDAL re-reading
the file (same average result), when that is faster". This measures both halves of that on a
finished output (its base band read once, as the writer would have it):

- the values: :func:`average_taps` and :func:`average_rows` reproduce GDAL's average
  resampling of overviews bit for bit (each level from the one above; with an odd size the
  ratio is not 2, e.g. 8185 -> 4093 px, and each pixel averages 2-3 source pixels with
  fractional edge weights, summed in double in GDAL's order, NaN skipped);
- the cost: empty overview directories added when the file is created, the levels averaged
  from the rows and written into ``rasterio.open(path, "r+", overview_level=k)``, against
  ``tiledepth.cog.build_overviews`` on the same band written without them (both with the
  writer's own profile, window by window as it writes: on a band written with the profile
  rasterio reports for the output, which lacks the writer's creation options, GDAL's levels
  1-4 came out different from these at 0.2-0.4 % of their pixels, by up to 2e-3, in our
  runs; what GDAL computes there depends on the file, not only on the values).

Prints each step's wall and CPU seconds, the overviews' bytes, and whether every level is the
same as GDAL's. Not in the engine: GDAL compresses blocks written in update mode at libtiff's
default DEFLATE level (the level is a setting of the session that creates a GeoTIFF: neither
stored nor taken in update mode), which costs more than GDAL's decoding of the file
(BENCHMARKS.md, issue 16, ninth session).

    python benchmarks/streamed_overviews.py OUTPUT.tif [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings
from pathlib import Path

import numpy as np

#: Destination rows averaged at once (bounds the float64 temporaries).
CHUNK_ROWS = 64


def average_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """The source pixels and weights of each destination pixel of GDAL's average
    resampling from ``src`` to ``dst`` pixels along one axis.

    Destination pixel ``i`` covers source ``[i r, (i + 1) r)``, ``r = src / dst``;
    the partly covered pixels at its two ends weigh the part covered (one pixel
    alone weighs 1), as GDAL computes them.

    Returns
    -------
    index : ndarray of shape (dst, k), int64
        Source pixels, left to right (a pixel repeated with weight 0 past a
        window's end).
    weight : ndarray of shape (dst, k), float64

    Examples
    --------
    >>> index, weight = average_taps(4, 2)
    >>> index.tolist(), weight.tolist()
    ([[0, 1], [2, 3]], [[1.0, 1.0], [1.0, 1.0]])
    >>> index, weight = average_taps(5, 3)  # 5/3 source pixels each
    >>> index.tolist(), weight.round(3).tolist()
    ([[0, 1, 1], [1, 2, 3], [3, 4, 4]], [[1.0, 0.667, 0.0], [0.333, 1.0, 0.333], [0.667, 1.0, 0.0]])
    """
    ratio = src / dst
    i = np.arange(dst, dtype=np.float64)
    start, end = i * ratio, (i + 1) * ratio
    first = np.maximum((start + 1e-8).astype(np.int64), 0)
    stop = np.ceil(end - 1e-8).astype(np.int64)
    stop = np.minimum(np.where(stop == first, stop + 1, stop), src)
    count = stop - first
    taps = int(count.max())
    index = np.minimum(first[:, None] + np.arange(taps), (stop - 1)[:, None])
    weight = (np.arange(taps) < count[:, None]).astype(np.float64)
    weight[:, 0] = np.where(count == 1, 1.0, 1 - (start - first))
    several = np.flatnonzero(count > 1)
    weight[several, count[several] - 1] = 1 - (stop[several] - end[several])
    return index, weight


def average_rows(rows: np.ndarray, y: tuple[np.ndarray, np.ndarray],
                 x: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """GDAL's average of ``rows`` (n, w) float32, NaN skipped, over the taps ``y``
    (indices into ``rows``) and ``x`` (:func:`average_taps`): (len(y), len(x))
    float32, NaN where no source pixel is valid.

    Sums each source row's taps first, left to right, then the rows, top to
    bottom, in float64, as GDAL does: the same float32 results, bit for bit.

    Examples
    --------
    >>> rows = np.array([[1, 2, np.nan, 4]], np.float32)
    >>> average_rows(rows, average_taps(1, 1), average_taps(4, 2)).tolist()
    [[1.5, 4.0]]
    """
    (yi, yw), (xi, xw) = y, x
    valid = ~np.isnan(rows)
    if valid.all():  # every window whole: its weight depends on its place alone
        total = _rows_sum(_columns_sum(rows.astype(np.float64), xi, xw), yi, yw)
        line_weight = _in_order(xw)  # (dw,)
        weight = line_weight * yw[:, 0, None]
        for k in range(1, yw.shape[1]):
            weight += line_weight * yw[:, k, None]
    else:
        values = np.where(valid, rows, 0).astype(np.float64)
        total = _rows_sum(_columns_sum(values, xi, xw), yi, yw)
        weight = _rows_sum(_columns_sum(valid.astype(np.float64), xi, xw), yi, yw)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(weight > 0, total / weight, np.nan)
    return out.astype(np.float32)


def _in_order(weight: np.ndarray) -> np.ndarray:
    """Each row of ``weight`` (n, k) summed left to right (as GDAL adds them)."""
    out = weight[:, 0].copy()
    for k in range(1, weight.shape[1]):
        out += weight[:, k]
    return out


def _columns_sum(a: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``sum_k a[:, index[:, k]] * weight[:, k]``, k in order: (n, len(index))."""
    out = _columns(a, index[:, 0]) * weight[:, 0]
    for k in range(1, index.shape[1]):
        out += _columns(a, index[:, k]) * weight[:, k]
    return out


def _columns(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[:, index]``: a strided view where ``index`` steps evenly (a factor of 2)."""
    if len(index) > 1:
        step = int(index[1] - index[0])
        if step > 0 and index[-1] == index[0] + step * (len(index) - 1) and \
                np.array_equal(np.diff(index), np.full(len(index) - 1, step)):
            return a[:, index[0]:index[-1] + 1:step]
    return a[:, index]


def _rows_sum(a: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``sum_k a[index[:, k]] * weight[:, k, None]``, k in order: (len(index), w)."""
    out = a[index[:, 0]] * weight[:, 0, None]
    for k in range(1, index.shape[1]):
        out += a[index[:, k]] * weight[:, k, None]
    return out



def average_level(src: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """GDAL's average overview of ``src`` (h, w) float32 at ``shape``, in row chunks."""
    y, x = average_taps(src.shape[0], shape[0]), average_taps(src.shape[1], shape[1])
    out = np.empty(shape, np.float32)
    for r0 in range(0, shape[0], CHUNK_ROWS):
        index, weight = y[0][r0:r0 + CHUNK_ROWS], y[1][r0:r0 + CHUNK_ROWS]
        lo, hi = int(index.min()), int(index.max()) + 1
        out[r0:r0 + len(index)] = average_rows(src[lo:hi], (index - lo, weight), x)
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning

    from tiledepth.cog import OVERVIEW_ENV, build_overviews, overview_factors
    from tiledepth.read import GDAL_OPTIONS
    from tiledepth.write import GeoTiffWriter, OutputGrid, output_windows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path, help="a tiledepth output (one float32 band)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tiledepth-streamed-overviews"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    args.workdir.mkdir(parents=True, exist_ok=True)
    with rasterio.open(args.output) as ds:  # the writer's own profile
        base = ds.read(1)
        profile = GeoTiffWriter(args.output, OutputGrid.from_dataset(ds)).profile()
    factors = overview_factors(*base.shape)
    streamed, gdal = args.workdir / "streamed.tif", args.workdir / "gdal.tif"

    def step(name: str, fn):
        t, c = time.perf_counter(), _cpu()
        out = fn()
        print(f"{name:44s} {time.perf_counter() - t:6.2f} s wall {_cpu() - c:6.2f} s CPU")
        return out

    def write_base(path: Path, empty_overviews: bool) -> None:  # as the writer does
        with rasterio.Env(**GDAL_OPTIONS), rasterio.open(path, "w", **profile) as ds:
            if empty_overviews:
                with rasterio.Env(**OVERVIEW_ENV, SPARSE_OK_OVERVIEW="ON"):
                    ds.build_overviews(factors, Resampling.nearest)
            for window in output_windows(*base.shape):
                rows, cols = window.toslices()
                ds.write(base[rows, cols], 1, window=window)

    step("base written, no overviews (as today)", lambda: write_base(gdal, False))
    step("base written after empty overview dirs", lambda: write_base(streamed, True))
    before = gdal.stat().st_size
    step("GDAL builds the overviews from the file", lambda: build_overviews(gdal))

    def average_all() -> list[np.ndarray]:
        levels, above = [], base
        for factor in factors:
            above = average_level(above, (-(-base.shape[0] // factor),
                                          -(-base.shape[1] // factor)))
            levels.append(above)
        return levels

    levels = step("the levels averaged from the rows (numpy)", average_all)

    def write_levels() -> None:
        with rasterio.Env(**OVERVIEW_ENV):
            for k, level in enumerate(levels):
                with rasterio.open(streamed, "r+", overview_level=k) as ds:
                    ds.write(level, 1)

    step("the levels written in update mode", write_levels)
    same = []
    for k in range(len(factors)):
        with rasterio.open(streamed, overview_level=k) as a, \
                rasterio.open(gdal, overview_level=k) as b:
            same.append(np.array_equal(a.read(1).view(np.uint32), b.read(1).view(np.uint32)))
    print(f"levels {len(factors)}, identical to GDAL's bit for bit: {same}")
    print(f"overview bytes: GDAL {gdal.stat().st_size - before}, streamed "
          f"{streamed.stat().st_size - before} (the base's compressed size is the same)")


if __name__ == "__main__":
    main()
