"""Read: what the readers share: the input's checks, band choice, scaling and GDAL environment.

Only the reading modules (this one and :mod:`tiledepth.readers`, where the
readers themselves are) and :mod:`tiledepth.write` touch paths.

Validity follows one rule, GDAL's dataset mask (alpha band, internal mask or
nodata), further restricted to pixels whose model bands are all finite. Where
GDAL's own mask would not say what tiledepth means (a colour map, ``--nodata``,
an alpha band beside a declared nodata, NaN in float bands, a nodata of model
bands among other bands), the reader reads through an in-memory VRT that
declares it (:func:`vrt_xml`), so that every read, decimated and averaged ones
included, skips the masked pixels as GDAL skips declared nodata (averaged reads with
``--mask`` through one whose mask band joins it, :func:`keep_band`).
Normalisation to [0, 1] is global, one mapping for every tile, fitted once by
:func:`fit_scaling` (see there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.dtypes import dtype_rev, typename_fwd
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError

from tiledepth.errors import InputError, OptionError
from tiledepth.safe_write import _kind, png_chunks

__all__ = [
    "Scaling",
    "coarse_shape",
    "fit_scaling",
    "sample_cache",
    "select_bands",
    "tile_cache",
]

log = logging.getLogger(__name__)

#: Long side of the decimated read that :class:`RasterReader` fits its scaling on.
SAMPLE_SIZE = 1024
#: What GDAL raises through rasterio on a broken file: rasterio's errors, and GDAL's own
#: (CPLE_*), which a damaged file can leave for any later call, a colour table lookup say.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)
#: GDAL settings of every read and write: a small block cache keeps memory flat (GDAL's
#: default, 5% of RAM, would fill with decoded input and output blocks on large rasters).
GDAL_OPTIONS = {"GDAL_CACHEMAX": 16 * 2**20}
#: Most block cache a whole-raster sample read takes (two block rows of a 60 000 px wide
#: 16-bit RGB raster are 369 MB: beyond this, blocks are decoded again, but memory stays flat).
MAX_SAMPLE_CACHE = 256 * 2**20
#: libtiff's message handlers, installed once by :func:`route_libtiff_messages` and kept alive
#: here (libtiff calls them for the rest of the process).
_LIBTIFF_HANDLERS: list = []
#: The coarse overview is at most this many times longer than wide (unless the raster is).
MAX_COARSE_ASPECT = 8
#: Percentiles that map to 0 and 1 for integer (other than uint8) and out-of-range float input.
PERCENTILES = (0.5, 99.5)
#: A colour-map input's colours, expanded as UInt16 bands by :func:`palette_lut`: this value
#: (no colour has it) marks masked pixels, as their nodata, so averages skip them.
PALETTE_MASKED = 256
#: The largest float32 (3.4e38), as a Python float.
F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Scaling:
    """A linear map of raw values to [0, 1]: ``clip((raw - lo) / (hi - lo), 0, 1)``."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.hi > self.lo:  # (1 / (hi - lo) would divide by zero, or flip the image)
            raise ValueError(f"Scaling needs hi > lo, got lo={self.lo!r}, hi={self.hi!r}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Map raw values (C, H, W) to float32 (C, H, W) in [0, 1], stored channel-last.

        The result is a band-first view of a C-contiguous (H, W, C) array: the
        model's channel-last layout comes without another copy
        (:func:`tiledepth.infer.to_model_input`). The transposition happens in
        the one pass that converts to float32; uint8 data is converted and
        scaled in that same pass (the same float32 values: every ``v / 255`` is
        within [0, 1]).

        Examples
        --------
        >>> out = Scaling(0.0, 255.0).apply(np.array([[[0, 255]]], np.uint8))
        >>> out.tolist(), np.moveaxis(out, 0, -1).flags.c_contiguous
        ([[[0.0, 1.0]]], True)
        """
        out = np.empty((*raw.shape[1:], raw.shape[0]), np.float32)  # (H, W, C)
        # band by band: each band read in order, not across them (BENCHMARKS.md, hot paths)
        if raw.dtype == np.uint8 and (self.lo, self.hi) == (0.0, 255.0):
            factor = np.float32(1.0 / 255.0)
            for band, plane in enumerate(raw):
                np.multiply(plane, factor, out=out[..., band])
            return np.moveaxis(out, -1, 0)
        # wider than float32's exact integers (2**24): lo subtracted in float64 first, as a
        # float32 cast of 4e9 + 0..999 keeps 5 levels of them
        wide = raw.dtype.itemsize >= 4 and raw.dtype != np.float32  # (u)int32/64, float64
        # and where lo or the span is beyond float32's range (a constant image of a fill at
        # the end of float32's or float64's range, :func:`fit_scaling`): the span scales the
        # difference in float64 too, before it becomes float32
        huge = self.hi - self.lo > F32_MAX
        shift = self.lo != 0.0 and (wide or huge or abs(self.lo) > F32_MAX)
        for band, plane in enumerate(raw):
            if huge:
                np.multiply(np.subtract(plane, np.float64(self.lo)), 1.0 / (self.hi - self.lo),
                            out=out[..., band], casting="unsafe")
            elif shift:
                np.subtract(plane, np.float64(self.lo), out=out[..., band], casting="unsafe")
            else:
                np.copyto(out[..., band], plane, casting="unsafe")  # as raw.astype(np.float32)
        if not huge and (self.lo != 0.0 or self.hi != 1.0):
            if not shift:
                out -= np.float32(self.lo)
            out *= np.float32(1.0 / (self.hi - self.lo))
        np.clip(out, 0.0, 1.0, out=out)
        return np.moveaxis(out, -1, 0)


def fit_scaling(sample: np.ndarray, valid: np.ndarray, dtype: str | np.dtype) -> Scaling:
    """Fit the global normalisation of a raster from a sample of it.

    uint8 maps by ``/ 255``. Float data already within [0, 1] is used as is.
    Any other data (uint16, int16, float outside [0, 1], ...) maps its
    0.5th..99.5th percentile, taken jointly over the model bands and the valid
    pixels of ``sample``, to [0, 1].

    Parameters
    ----------
    sample : ndarray of shape (C, H, W)
        A decimated read of the model bands of the whole raster.
    valid : ndarray of shape (H, W), bool
        Valid pixels of ``sample``.
    dtype : str or numpy dtype
        The raster's data type.

    Returns
    -------
    Scaling

    Examples
    --------
    >>> import numpy as np
    >>> fit_scaling(np.zeros((3, 2, 2)), np.ones((2, 2), bool), "uint8")
    Scaling(lo=0.0, hi=255.0)
    >>> s = fit_scaling(np.array([[[0.2, 0.9]]]), np.ones((1, 2), bool), "float32")
    >>> s
    Scaling(lo=0.0, hi=1.0)
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return Scaling(0.0, 255.0)
    values = sample[:, valid]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Scaling(0.0, 1.0)
    if dtype.kind == "f" and values.min() >= 0.0 and values.max() <= 1.0:
        return Scaling(0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:  # a constant image: map it to mid-grey
        # a span relative to the value: lo -/+ 1.0 is lo itself beyond 2**53 (a float
        # raster of nothing but -3.4e38, a uint64 one near 2**63), a zero span; within
        # float64's range, where the value sits at its very end
        span = max(1.0, abs(lo) * 1e-6)
        top = float(np.finfo(np.float64).max)
        lo, hi = max(lo - span, -top), min(lo + span, top)
    return Scaling(lo, hi)


def sample_cache(ds, bands, cache: int) -> int:
    """GDAL's block cache (bytes) for a decimated read of the whole raster: room for two
    block rows of ``bands`` (within :data:`MAX_SAMPLE_CACHE`), at least ``cache``. With less
    than a block row, GDAL decodes each block row again for every row it samples: a 16-bit
    RGB raster 8185 px wide took 16 s instead of 0.3 s (BENCHMARKS.md, ninth session).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> ds = SimpleNamespace(width=8185, block_shapes=[(512, 512)] * 3, dtypes=["uint16"] * 3)
    >>> sample_cache(ds, (1, 2, 3), 16 * 2**20) // 2**20
    47
    """
    rows = ds.block_shapes[0][0]
    row_bytes = sum(ds.width * rows * np.dtype(ds.dtypes[b - 1]).itemsize for b in set(bands))
    return max(cache, min(2 * row_bytes, MAX_SAMPLE_CACHE))


def tile_cache(ds, bands, rows: int, readers: int, cache: int) -> int:
    """GDAL's block cache (bytes) for tile reads of a raster whose blocks are whole rows (a
    JPEG's or PNG's lines, a striped TIFF's strips): room for the blocks ``rows`` rows span,
    of ``bands``, for each of ``readers`` dataset handles (each caches its own blocks), within
    :data:`MAX_SAMPLE_CACHE`, at least ``cache``; other rasters (tiled ones) ``cache`` itself.

    A tile of such a raster decodes the full width of its rows; with less than them in
    the cache, the next tile of the row decodes them again, and a JPEG or PNG, decoded
    line by line from the top, starts again from line 0 for each tile: a run of an 8000 x
    6000 JPEG took 30 s instead of 4.7 s, of the PNG 97 s instead of 10 s (a toy model,
    ``--workers 0``, the same bytes).

    Parameters
    ----------
    ds : rasterio dataset
        The raster (``width``, ``height``, ``block_shapes``, ``dtypes``).
    bands : iterable of int
        The bands whose blocks the reads decode.
    rows : int
        Rows the reads of one handle span at a time.
    readers : int
        Dataset handles reading at once.
    cache : int
        The cache otherwise (:data:`GDAL_OPTIONS`).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> jpeg = SimpleNamespace(width=8000, height=6000, block_shapes=[(1, 8000)] * 3,
    ...                        dtypes=["uint8"] * 3)
    >>> tile_cache(jpeg, (1, 2, 3), 960, 3, 16 * 2**20) // 2**20
    65
    >>> tiled = SimpleNamespace(width=8000, height=6000, block_shapes=[(512, 512)] * 3,
    ...                         dtypes=["uint8"] * 3)
    >>> tile_cache(tiled, (1, 2, 3), 960, 3, 16 * 2**20) // 2**20
    16
    """
    block_rows, block_cols = ds.block_shapes[0]
    if block_cols < ds.width:  # tiled: a tile decodes its own blocks, once
        return cache
    # the blocks a span of `rows` rows can touch (a single strip: the one)
    blocks = min(-(-max(rows - 1, 0) // block_rows) + 1, -(-ds.height // block_rows))
    row_bytes = sum(ds.width * np.dtype(ds.dtypes[b - 1]).itemsize for b in set(bands))
    return max(cache, min(blocks * block_rows * row_bytes * readers, MAX_SAMPLE_CACHE))


def coarse_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Shape of the coarse overview: the long side becomes ``long_side`` pixels.

    A raster already smaller than ``long_side`` keeps its size (never upsampled).
    The short side keeps at least ``long_side / MAX_COARSE_ASPECT`` pixels (or
    all it has): a very elongated raster is decimated more along its length, so
    that its coarse overview still shows what varies across it.

    Examples
    --------
    >>> coarse_shape(10000, 5000, 768)
    (768, 384)
    >>> coarse_shape(300, 200, 768)
    (300, 200)
    >>> coarse_shape(100000, 40, 512)
    (512, 40)
    """
    factor = max(height, width) / long_side
    if factor <= 1:
        return height, width
    least = max(1, long_side // MAX_COARSE_ASPECT)
    return (max(min(height, least), round(height / factor)),
            max(min(width, least), round(width / factor)))


def select_bands(colorinterp: list[ColorInterp], bands: tuple[int, ...] | None,
                 name: str = "input") -> tuple[int, ...]:
    """Choose the 1-based band indexes the model sees: three colour bands, or one grey.

    A colour-map (palette) band counts as one band here; the reader expands its
    colour table to red, green and blue (:func:`palette_lut`).

    Parameters
    ----------
    colorinterp : list of rasterio.enums.ColorInterp
        Colour interpretation of each band of the raster.
    bands : tuple of int or None
        Explicit choice (1 or 3 band indexes); None picks the bands tagged red,
        green and blue, in that order, where the bands that are not alpha have
        exactly one of each (a BGR file's are taken as R, G, B); else the first
        three bands that are not alpha, or the only one.
    name : str
        Name of the raster for error messages.

    Returns
    -------
    tuple of int
        Three band indexes (a single band is repeated).

    Examples
    --------
    >>> from rasterio.enums import ColorInterp as C
    >>> select_bands([C.red, C.green, C.blue, C.alpha], None)
    (1, 2, 3)
    >>> select_bands([C.gray, C.alpha], None)
    (1, 1, 1)
    >>> select_bands([C.blue, C.green, C.red], None)
    (3, 2, 1)
    """
    count = len(colorinterp)
    if bands is not None:
        if len(bands) not in (1, 3):
            raise OptionError(f"bands must name 1 or 3 bands, got {list(bands)}")
        for b in bands:
            if not 1 <= b <= count:
                raise OptionError(
                    f"band {b} is out of range: {name} has {count} band(s); "
                    f"choose --bands from 1..{count}"
                )
        return tuple(bands) * 3 if len(bands) == 1 else tuple(bands)
    colour = [i + 1 for i, ci in enumerate(colorinterp) if ci != ColorInterp.alpha]
    if count > 4:
        raise InputError(
            f"{name} has {count} bands; choose the three colour bands with --bands, "
            "for example --bands 1,2,3"
        )
    if len(colour) == 1:
        return (colour[0],) * 3
    if len(colour) == 2:
        raise InputError(
            f"{name} has 2 colour bands; pass --bands 1 to use band 1 as grey, "
            "or name three bands with --bands"
        )
    if not colour:
        raise InputError(f"{name} has no colour band (only alpha); nothing to estimate")
    tagged = [[b for b in colour if colorinterp[b - 1] == ci]
              for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    if all(len(found) == 1 for found in tagged):  # the order the file tags, not its band order
        return tuple(found[0] for found in tagged)
    return tuple(colour[:3])


def palette_lut(colormap: dict[int, tuple[int, ...]], component: int,
                masked: float | None = None) -> str:
    """A VRT ``<LUT>`` that maps a colour-map band's indexes to one colour component.

    Indexes whose entry has alpha 0, the index ``masked`` (the nodata) and
    indexes past the table map to :data:`PALETTE_MASKED`. GDAL interpolates a
    LUT linearly between its points: only the ends of each run of equal values
    are listed, exact at every integer index.

    Parameters
    ----------
    colormap : dict of int to tuple
        The band's colour table, index -> (red, green, blue, alpha), as
        rasterio's ``colormap`` gives it.
    component : int
        0 red, 1 green, 2 blue.
    masked : float, optional
        The nodata index.

    Examples
    --------
    >>> table = {0: (255, 0, 0, 255), 1: (0, 0, 255, 255), 2: (0, 0, 0, 0), 3: (0, 0, 255, 255)}
    >>> palette_lut(table, 0), palette_lut(table, 2, masked=3)
    ('0:255,1:0,2:256,3:0,4:256', '0:0,1:255,2:256,4:256')
    """
    size = max(colormap) + 1
    values = [PALETTE_MASKED if i == masked or colormap.get(i, (0, 0, 0, 0))[3] == 0
              else int(colormap[i][component]) for i in range(size)] + [PALETTE_MASKED]
    last = len(values) - 1
    keep = [i for i in range(len(values))
            if i in (0, last) or values[i] != values[i - 1] or values[i] != values[i + 1]]
    return ",".join(f"{i}:{values[i]}" for i in keep)


def vrt_band(source: str, band: int | str, dtype: str | np.dtype, *,
             nodata: float | None = None, use_mask: bool = False, lut: str | None = None,
             level: int | None = None, overviews: bool = True, skip: float | None = None,
             paint: float | None = None) -> str:
    """One band of a VRT: band ``band`` of ``source`` (a GDAL path or VRT text;
    ``"mask,1"``: the mask band of its band 1).

    As it is (a SimpleSource: the same values), or through a ComplexSource
    that leaves the pixels the source's mask masks unpainted (``use_mask``:
    they keep the band's nodata), or those equal to ``skip`` (they take the
    band's nodata too: two values masked as one), and maps the values through
    ``lut``, or paints the value ``paint`` wherever it paints (GDAL applies either
    ``use_mask`` or ``skip`` where a source's mask masks pixels: combine them through
    two VRTs, as :func:`keep_band` does). ``nodata`` is declared on the band: GDAL's
    mask and average resampling then skip it (:func:`vrt_xml`). ``level``: the source's
    overview of that index (0 the largest) instead of its full resolution, opened as a raster
    of its own, without the smaller overviews (GDAL would otherwise make them
    "virtual overviews" of this VRT, and read its first decimated read from one
    of them: a result that depends on the read before it). ``overviews=False``
    (at full resolution): the source opened without its overviews, so that a
    decimated read through this band reads its full resolution (a source's
    overviews are otherwise read by decimated reads of the VRT's mask, even
    where the VRT itself declares none).
    """
    opened = "" if level is None and overviews else \
        '<OpenOptions><OOI key="OVERVIEW_LEVEL">' \
        f'{"NONE" if level is None else f"{level}only"}</OOI></OpenOptions>'
    name = (f'<SourceFilename relativeToVRT="0">{escape(source)}</SourceFilename>{opened}'
            f"<SourceBand>{band}</SourceBand>")
    if use_mask or lut is not None or skip is not None or paint is not None:
        extra = ("<UseMaskBand>true</UseMaskBand>" if use_mask else "") + \
            (f"<NODATA>{float(skip)!r}</NODATA>" if skip is not None else "") + \
            (f"<LUT>{lut}</LUT>" if lut is not None else "") + \
            (f"<ScaleOffset>{float(paint)!r}</ScaleOffset><ScaleRatio>0</ScaleRatio>"
             if paint is not None else "")
        body = f"<ComplexSource>{name}{extra}</ComplexSource>"
    else:
        body = f"<SimpleSource>{name}</SimpleSource>"
    declared = "" if nodata is None else f"<NoDataValue>{float(nodata)!r}</NoDataValue>"
    return (f'<VRTRasterBand dataType="{typename_fwd[dtype_rev[np.dtype(dtype).name]]}">'
            f"{declared}{body}</VRTRasterBand>")


def keep_band(source: str, dtype: str | np.dtype, width: int, height: int, *,
              masks: bool = False) -> str:
    """A VRT band (Byte) of a ``--mask`` raster's band 1, for a VRT's mask band
    (:func:`vrt_xml`): not 0 where it keeps a pixel (any value but 0, not its own nodata:
    as :func:`tiledepth.readers.mask_keeps` judges it), 0 elsewhere.

    A Byte raster that masks no pixel of its own (``masks``: a nodata but 0, an internal
    mask) is its band as it is: GDAL's masks keep any value but 0. Another has its own
    masked pixels left unpainted (0) first, in a VRT of its type (a float mask's 0.5
    keeps its pixel); then 0 is left unpainted and any other value painted 255 (slower:
    each pixel through two ComplexSources).

    Examples
    --------
    >>> keep_band("/data/m.tif", "uint8", 4, 3).startswith(
    ...     '<VRTRasterBand dataType="Byte"><SimpleSource>')
    True
    >>> band = keep_band("/data/m.tif", "float32", 4, 3)
    >>> band.startswith('<VRTRasterBand dataType="Byte"><ComplexSource>'), "UseMaskBand" in band
    (True, True)
    """
    if np.dtype(dtype) == np.uint8 and not masks:
        return vrt_band(source, 1, "uint8")
    own = vrt_xml(width, height, [vrt_band(source, 1, dtype, use_mask=True)])
    return vrt_band(own, 1, "uint8", skip=0, paint=255)


def vrt_xml(width: int, height: int, bands: list[str], mask: str | None = None,
            overviews: tuple[str, ...] = ()) -> str:
    """An in-memory VRT of ``bands`` (:func:`vrt_band`), ``mask`` its dataset mask band.

    The reader reads pixels through one where GDAL's own mask of the input
    would not say what tiledepth means: declared there, a nodata value (or a
    mask) is skipped by GDAL's average resampling in decimated reads, as a
    nodata the input declares itself is, and its mask is GDAL's dataset mask.
    ``overviews``: VRTs of the same bands over the input's overviews, which
    decimated reads then use as they would the input's own (otherwise GDAL
    reads such a VRT at full resolution, but for its first decimated read).

    Examples
    --------
    >>> band = vrt_band("/data/a.tif", 1, "uint8", nodata=250)
    >>> band
    '<VRTRasterBand dataType="Byte"><NoDataValue>250.0</NoDataValue><SimpleSource>\
<SourceFilename relativeToVRT="0">/data/a.tif</SourceFilename><SourceBand>1</SourceBand>\
</SimpleSource></VRTRasterBand>'
    >>> vrt_xml(4, 3, [band]).startswith('<VRTDataset rasterXSize="4" rasterYSize="3">')
    True
    """
    numbered = [b.replace("<VRTRasterBand ", f'<VRTRasterBand band="{i}" ', 1)
                .removesuffix("</VRTRasterBand>")
                + "".join(f'<Overview><SourceFilename relativeToVRT="0">{escape(o)}'
                          f"</SourceFilename><SourceBand>{i}</SourceBand></Overview>"
                          for o in overviews)
                + "</VRTRasterBand>" for i, b in enumerate(bands, 1)]
    masked = "" if mask is None else f"<MaskBand>{mask}</MaskBand>"
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
            f'{"".join(numbered)}{masked}</VRTDataset>')


def route_libtiff_messages() -> bool:
    """Send libtiff's own error and warning messages to logging instead of stderr.

    GDAL's errors reach rasterio's logging and exceptions (``CPLE_*``), whence
    the CLI's one error line; but libtiff, which GDAL's GeoTIFF driver uses,
    prints some messages of its own straight to stderr (``_tiffWriteProc: No
    space left on device.`` on a full disk) before that line. This installs
    libtiff handlers that log them to this module's logger at debug level
    (``--debug`` shows them); the failure itself still reaches the error line
    through GDAL's error. Idempotent.

    Returns
    -------
    bool
        Whether the libtiff that GDAL uses was found (rasterio's wheels bundle
        one; otherwise the system's).
    """
    if _LIBTIFF_HANDLERS:
        return True
    import ctypes
    import ctypes.util
    import glob

    here = os.path.dirname(rasterio.__file__)
    found = sorted(glob.glob(os.path.join(here, os.pardir, "rasterio.libs", "libtiff*"))
                   + glob.glob(os.path.join(here, ".dylibs", "libtiff*")))
    name = found[0] if found else ctypes.util.find_library("tiff")
    if name is None:
        return False
    try:
        libtiff, libc = ctypes.CDLL(name), ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
    except (OSError, AttributeError):
        return False
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    # void handler(const char *module, const char *fmt, va_list ap): a va_list argument is
    # passed as a pointer on the platforms rasterio ships for
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

    def make(level: int):
        def handler(module, fmt, args):
            buf = ctypes.create_string_buffer(1024)
            vsnprintf(buf, len(buf), fmt, args)
            text = buf.value.decode(errors="replace")
            log.log(level, "libtiff: %s%s", f"{module.decode(errors='replace')}: "
                    if module else "", text)
        return handler_type(handler)

    for setter, level in (("TIFFSetErrorHandler", logging.DEBUG),
                          ("TIFFSetWarningHandler", logging.DEBUG)):
        fn = getattr(libtiff, setter, None)
        if fn is None:
            return False
        fn.argtypes, fn.restype = [handler_type], ctypes.c_void_p
        _LIBTIFF_HANDLERS.append(make(level))
        fn(_LIBTIFF_HANDLERS[-1])
    return True


#: How a viewer turns an image with each EXIF orientation (1: as stored) to show it upright.
EXIF_ORIENTATIONS = {"2": "mirrored left to right", "3": "rotated 180 degrees",
                     "4": "mirrored top to bottom", "5": "transposed",
                     "6": "rotated 90 degrees clockwise", "7": "transversed",
                     "8": "rotated 90 degrees counter-clockwise"}


def warn_orientation(orientation: str | None, name: str) -> None:
    """Warn that an EXIF orientation is not applied: the output stays on the stored grid."""
    turn = EXIF_ORIENTATIONS.get(str(orientation).strip())
    if turn is not None:
        log.warning("%s has EXIF orientation %s (viewers show it %s); tiledepth uses the "
                    "pixels as stored, so the model sees them that way and the output is on "
                    "the stored grid; to have it upright, rotate the pixels first (e.g. "
                    "exiftran -ai, or mogrify -auto-orient)", name, orientation, turn)


def file_orientation(path: Path, driver: str) -> str | None:
    """The EXIF orientation (TIFF tag 274) in the header of a TIFF, PNG or WebP file.

    GDAL reports it for a JPEG alone (its ``EXIF_Orientation`` tag); this reads it for
    the others from their first TIFF directory (a TIFF's own, or the one in a PNG's
    ``eXIf`` chunk or a WebP's ``EXIF`` chunk), seeking past the pixel data without
    reading it. None where the file has none, cannot be read, or is of another driver.

    Parameters
    ----------
    path : Path
        A local file.
    driver : str
        GDAL's driver of it: ``GTiff``, ``PNG`` or ``WEBP`` are read.

    Examples
    --------
    >>> import tempfile
    >>> entry = struct.pack("<HHI4s", 274, 3, 1, struct.pack("<H", 6))  # SHORT 6
    >>> with tempfile.NamedTemporaryFile(suffix=".tif") as f:
    ...     _ = f.write(b"II*\\0" + struct.pack("<IH", 8, 1) + entry + bytes(4))
    ...     f.flush()
    ...     file_orientation(Path(f.name), "GTiff")
    '6'
    """
    try:
        with open(path, "rb") as f:
            if driver == "GTiff":
                return _tiff_orientation(f, 0)
            if driver == "PNG":
                return _png_orientation(f)
            if driver == "WEBP":
                return _webp_orientation(f)
    except (OSError, ValueError, struct.error):  # unreadable or damaged: GDAL says so later
        pass
    return None


def _tiff_orientation(f, base: int) -> str | None:
    """Tag 274 of the first directory of the TIFF stream at offset ``base`` of ``f``
    (classic or BigTIFF, either byte order)."""
    f.seek(base)
    order = {b"II": "<", b"MM": ">"}.get(f.read(2))
    if order is None:
        return None
    (magic,) = struct.unpack(order + "H", f.read(2))
    if magic == 42:  # classic: 4-byte offsets, 12-byte entries
        (offset,) = struct.unpack(order + "I", f.read(4))
        count_format, entry = "H", "HHI4s"
    elif magic == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        f.read(4)  # offset size (8) and a 0
        (offset,) = struct.unpack(order + "Q", f.read(8))
        count_format, entry = "Q", "HHQ8s"
    else:
        return None
    f.seek(base + offset)
    (count,) = struct.unpack(order + count_format, f.read(struct.calcsize(count_format)))
    size = struct.calcsize(order + entry)
    for _ in range(min(count, 4096)):
        tag, kind, _, value = struct.unpack(order + entry, f.read(size))
        if tag == 274 and kind in (3, 4):  # SHORT or LONG, held in the entry itself
            (orientation,) = struct.unpack_from(order + ("H" if kind == 3 else "I"), value)
            return str(orientation)
    return None


def _png_orientation(f) -> str | None:
    """Tag 274 of a PNG's ``eXIf`` chunk (a TIFF stream), if it has one."""
    for kind, _ in png_chunks(f):
        if kind == b"eXIf":
            return _tiff_orientation(f, f.tell())
    return None


def _webp_orientation(f) -> str | None:
    """Tag 274 of a WebP's ``EXIF`` chunk (a TIFF stream, after ``Exif\\0\\0`` in some
    writers' files), if it has one."""
    if f.read(4) != b"RIFF" or (f.read(4), f.read(4))[1] != b"WEBP":
        return None
    while True:
        head = f.read(8)
        if len(head) < 8:
            return None
        kind, length = struct.unpack("<4sI", head)
        if kind == b"EXIF":
            start = f.tell()
            return _tiff_orientation(f, start + 6 if f.read(6) == b"Exif\0\0" else start)
        f.seek(length + (length & 1), os.SEEK_CUR)  # chunks are padded to an even size


def check_real(dtype: str | np.dtype, name: str = "input") -> None:
    """Raise InputError unless ``dtype`` holds real numbers (integers or floats).

    Examples
    --------
    >>> check_real("uint16")
    >>> check_real("complex64", "sar.tif")
    Traceback (most recent call last):
    ...
    tiledepth.errors.InputError: sar.tif has complex-valued bands (complex64); tiledepth reads \
real-valued bands (integers or floats): convert it first, e.g. to its amplitude as float32
    """
    if np.dtype(dtype).kind not in "uif":
        raise InputError(f"{name} has complex-valued bands ({np.dtype(dtype)}); tiledepth "
                         "reads real-valued bands (integers or floats): convert it first, "
                         "e.g. to its amplitude as float32")


def read_ahead(items: list, open_handle: Callable[[], contextlib.AbstractContextManager],
               read: Callable[[object, object], object], *, workers: int,
               ahead: int) -> Iterator:
    """Yield ``read(handle, item)`` for each item, in order, computed by worker threads.

    Each of ``workers`` threads enters its own ``open_handle()`` context and
    reads with that handle; at most ``ahead`` results wait to be consumed. An
    exception in a worker is raised here, at the item that failed; closing the
    generator early stops the workers.
    """
    tasks: queue.Queue = queue.Queue()
    done: dict[int, tuple[bool, object]] = {}
    cond = threading.Condition()
    stop = threading.Event()

    def work() -> None:
        try:
            with open_handle() as handle:
                while True:
                    task = tasks.get()
                    if task is None or stop.is_set():
                        return
                    i, item = task
                    try:
                        result = (True, read(handle, item))
                    except BaseException as exc:  # handed to the consumer
                        result = (False, exc)
                    with cond:
                        done[i] = result
                        cond.notify_all()
        except BaseException as exc:  # opening the handle failed
            with cond:
                done[-1] = (False, exc)
                cond.notify_all()

    threads: list[threading.Thread] = []  # those started: the cleanup ends each of them
    try:
        for k in range(workers):
            # started inside the try: if starting the next fails ("can't start new thread"),
            # those started end too (they waited for a task for good, holding their handles)
            thread = threading.Thread(target=work, daemon=True, name=f"tiledepth-read-{k}")
            thread.start()
            threads.append(thread)
        for i, item in enumerate(items[:ahead]):
            tasks.put((i, item))
        for i in range(len(items)):
            with cond:
                cond.wait_for(lambda i=i: i in done or -1 in done)
                ok, result = done.pop(i) if i in done else done[-1]
            if not ok:
                raise result
            if i + ahead < len(items):
                tasks.put((i + ahead, items[i + ahead]))
            yield result
    finally:
        stop.set()
        for _ in threads:
            tasks.put(None)
        for t in threads:
            t.join()


def check_input_path(path: Path) -> None:
    """Raise InputError with a one-line reason if ``path`` cannot be a raster file."""
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a raster file; pass one image file")
    info = path.stat()  # (a stat, not an open: opening a FIFO would block)
    kind = _kind(info.st_mode)  # None for a regular file
    if kind is not None:  # a FIFO or a device has size 0: not "an empty file"
        but = "" if kind == "not a regular file" else f" but {kind}"
        raise InputError(f"{path}: is not a regular file{but}; GDAL reads a raster from a "
                         "file: save the image to one and pass that")
    if info.st_size == 0:
        raise InputError(f"{path}: is an empty file (0 bytes); re-export or re-download it")
    try:  # rasterio passes names to GDAL as UTF-8: a name of other bytes fails there raw
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")  # \xff, printable
        except UnicodeEncodeError:
            shown = ascii(os.fspath(path))
        raise InputError(f"{shown}: the file name is not valid UTF-8, so it cannot be passed "
                         "to GDAL; rename the file (e.g. to ASCII letters and digits)") from None

