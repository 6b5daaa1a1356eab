"""Finish an output file: average overviews, and conversion to a Cloud Optimized GeoTIFF.

Both work on a file on disk, block by block through GDAL (never the whole raster
in memory), and :class:`tiledepth.write.GeoTiffWriter` runs them on its
temporary file before the rename, so a failure never leaves a half-finished
output at the output path.
"""

from __future__ import annotations

import os
from pathlib import Path

from tiledepth.read import GDAL_OPTIONS

__all__ = ["OVERVIEW_ENV", "build_overviews", "convert_to_cog", "overview_cache",
           "overview_factors"]

#: Overviews are added until the smallest one is under this many pixels on its long side.
MIN_OVERVIEW = 256
#: Compression of overviews, as the main output's: DEFLATE level 1 with the floating-point
#: predictor. GDAL computes and compresses them in up to 4 threads (the same pixels). The
#: measurements behind both: CHANGELOG.md, "Figures that left the code".
OVERVIEW_ENV = {"COMPRESS_OVERVIEW": "DEFLATE", "PREDICTOR_OVERVIEW": "3",
                 "ZLEVEL_OVERVIEW": "1", "GDAL_TIFF_OVR_BLOCKSIZE": "512",
                 "GDAL_NUM_THREADS": str(min(4, os.cpu_count() or 1))}
#: GDAL's block cache while it builds overviews holds this many block rows of the file (at
#: least the reads' cache, at most MAX_OVERVIEW_CACHE bytes): with less than a block row
#: (the reads' 16 MB hold less than a 512-row block row 8185 px wide, 16.8 MB), blocks are
#: decoded again for each chunk of rows GDAL averages.
#: At 67 MP: 1.65-1.95 s of CPU instead of 2.0-2.2 s, the same bytes. The cap keeps peak
#: memory flat: 64 MB at 67 MP, 78 MB at 100 MP, 128 MB from 16 384 px wide (the run's tile
#: cache is released before the writer finishes: BENCHMARKS.md, issue 16, seventh session).
OVERVIEW_CACHE_ROWS = 4
MAX_OVERVIEW_CACHE = 128 * 2**20


def overview_factors(height: int, width: int, min_size: int = MIN_OVERVIEW) -> list[int]:
    """Decimation factors 2, 4, 8, ... until the overview's long side is under ``min_size``.

    Examples
    --------
    >>> overview_factors(10000, 8000)
    [2, 4, 8, 16, 32, 64]
    >>> overview_factors(200, 100)
    []
    """
    factors = []
    factor = 2
    while max(height, width) / (factor // 2) > min_size:
        factors.append(factor)
        factor *= 2
    return factors


def overview_cache(width: int, block_height: int, count: int = 1) -> int:
    """GDAL's block cache (bytes) for building the overviews of a float32 file:
    :data:`OVERVIEW_CACHE_ROWS` block rows, within the reads' cache and
    :data:`MAX_OVERVIEW_CACHE`.

    Examples
    --------
    >>> overview_cache(8185, 512) // 2**20
    63
    >>> overview_cache(300, 256) == GDAL_OPTIONS["GDAL_CACHEMAX"]
    True
    """
    rows = OVERVIEW_CACHE_ROWS * width * block_height * 4 * count
    return max(GDAL_OPTIONS["GDAL_CACHEMAX"], min(rows, MAX_OVERVIEW_CACHE))


def build_overviews(path: str | os.PathLike, *, resampling: str = "average") -> list[int]:
    """Build internal overviews in a GeoTIFF; return the factors built.

    Average resampling skips nodata (NaN), so masked areas do not bleed in.
    """
    import rasterio
    from rasterio.enums import Resampling

    from tiledepth.rasterfile import open_raster

    with rasterio.Env(**GDAL_OPTIONS, **OVERVIEW_ENV):
        with open_raster(path) as ds:
            cache = overview_cache(ds.width, ds.block_shapes[0][0], ds.count)
    with rasterio.Env(**{**GDAL_OPTIONS, "GDAL_CACHEMAX": cache}, **OVERVIEW_ENV):
        with open_raster(path, "r+") as ds:
            factors = overview_factors(ds.height, ds.width)
            if factors:
                ds.build_overviews(factors, Resampling[resampling])
                ds.update_tags(ns="rio_overview", resampling=resampling)
    return factors


def convert_to_cog(path: str | os.PathLike) -> None:
    """Rewrite a GeoTIFF in place as a Cloud Optimized GeoTIFF (copied, then renamed).

    GDAL's COG driver copies block by block, reusing the file's overviews;
    DEFLATE with the floating-point predictor, 512 x 512 blocks.
    """
    import rasterio
    from rasterio.shutil import copy

    path = Path(path)
    tmp = path.with_name(path.name + ".cog")
    try:
        with rasterio.Env(**GDAL_OPTIONS):  # (a copy by name: no NotGeoreferencedWarning)
            copy(path, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="FLOATING_POINT",
                 BLOCKSIZE=512, BIGTIFF="IF_SAFER", OVERVIEWS="FORCE_USE_EXISTING",
                 RESAMPLING="AVERAGE")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
