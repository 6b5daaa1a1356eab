"""Export formats: how a map is written as each of :mod:`tiledepth.export`'s formats.

A :class:`ExportMap` serves the map strip by strip (:data:`CHUNK_PIXELS` pixels
at a time); one writer a format (:func:`write_las`, :func:`write_ply`,
:func:`write_png`, :func:`write_cog`) streams it into a file and returns what it
wrote: the count of points or pixels with a value, and the value range.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from tiledepth.aoi import raster_bounds
from tiledepth.errors import DependencyError, InputError

__all__ = ["CHUNK_PIXELS", "STRIPS_SUFFIX", "ExportMap", "block_rows_cache", "colours",
           "fit_gcps", "laspy_module", "pixel_centres", "to_uint16", "up_sign", "write_cog",
           "write_las", "write_ply", "write_png", "written_sidecars", "z_sign"]

log = logging.getLogger(__name__)

#: Pixels read per strip of rows (a strip is at least one row).
CHUNK_PIXELS = 2_000_000
#: Kinds whose values grow upwards (exported as they are).
_UP_KINDS = ("height", "inverse-depth", "disparity")
#: Kinds that are no position at all, exported as they are: ``uncertainty`` (band 2 of
#: ``--uncertainty``) is the ensemble's spread, >= 0, and negating it, as its map's depth is,
#: would turn every spread into a negative number.
_AS_IS_KINDS = ("uncertainty",)
# Every other kind is negated, so that up is up: depth and metric_depth (larger is farther,
# i.e. lower), and a map that does not say (read as depth, see _kind_of_map).
#: Band units that mean metres (a calibrated map's, a metric model's: "metre").
_METRES = ("metre", "meter", "m", "metres", "meters")


def z_sign(kind: str) -> float:
    """+1 for kinds exported as they are (values growing upwards, and the uncertainty band),
    -1 for depth (larger is farther, i.e. lower).

    Examples
    --------
    >>> z_sign("height"), z_sign("depth"), z_sign("metric_depth"), z_sign("disparity")
    (1.0, -1.0, -1.0, 1.0)
    >>> z_sign("uncertainty")
    1.0
    """
    return 1.0 if kind in (*_UP_KINDS, *_AS_IS_KINDS) else -1.0


def up_sign(tags: dict, description: str | None) -> float:
    """:func:`z_sign` of a band: +1 where its values grow upwards (or are a spread), -1 for
    depth; the band's description says its kind, else tiledepth's tags (band 1's).

    Examples
    --------
    >>> up_sign({"TILEDEPTH_OUTPUT_KIND": "inverse-depth"}, "inverse-depth")
    1.0
    >>> up_sign({"TILEDEPTH_OUTPUT_KIND": "depth"}, "uncertainty"), up_sign({}, None)
    (1.0, -1.0)
    """
    return z_sign(_kind_of_map(tags, description))


def pixel_centres(transform, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates (x, y) of the centres of pixels ``(rows, cols)``.

    Examples
    --------
    >>> from rasterio.transform import from_origin
    >>> x, y = pixel_centres(from_origin(100.0, 50.0, 2.0, 2.0), np.array([0, 1]), np.array([0, 3]))
    >>> x.tolist(), y.tolist()
    ([101.0, 107.0], [49.0, 47.0])
    """
    c = cols.astype(np.float64) + 0.5
    r = rows.astype(np.float64) + 0.5
    t = transform
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def to_uint16(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values over ``[low, high]`` as 1..65535 (clipped); NaN as 0 (no data).

    A value is ``low + (p - 1) * (high - low) / 65534`` for a pixel value ``p > 0``.

    Examples
    --------
    >>> to_uint16(np.array([0.0, 0.5, 1.0, 7.0, np.nan]), 0.0, 1.0).tolist()
    [1, 32768, 65535, 65535, 0]
    """
    v = np.asarray(values, np.float64)
    valid = np.isfinite(v)
    x = np.clip((np.where(valid, v, low) - low) / (high - low), 0.0, 1.0)
    return np.where(valid, 1 + np.round(x * 65534), 0).astype(np.uint16)


def _kind_of_map(tags: dict, description: str | None) -> str:
    """The kind of a band's values: its description or tiledepth's tags; depth if unsaid.

    The tags describe band 1 (the map), so a band that says what it is wins over them:
    band 2 of an ``--uncertainty`` run says ``uncertainty``, not its map's kind.

    Examples
    --------
    >>> _kind_of_map({"TILEDEPTH_OUTPUT_KIND": "depth"}, "uncertainty")
    'uncertainty'
    >>> _kind_of_map({"TILEDEPTH_OUTPUT_KIND": "height"}, None)
    'height'
    """
    said = _said_kind(tags, description)
    return "depth" if said is None else said


def _said_kind(tags: dict, description: str | None) -> str | None:
    """The kind of a band's values as :func:`_kind_of_map` reads it, or None where neither its
    description nor tiledepth's tags say one (a DEM that tiledepth did not write).

    Examples
    --------
    >>> _said_kind({"TILEDEPTH_KIND": "depth"}, None), _said_kind({"AREA_OR_POINT": "Area"}, "")
    ('depth', None)
    """
    from tiledepth.kinds import KINDS
    from tiledepth.options import OUTPUT_KINDS

    if description in (*KINDS, *OUTPUT_KINDS, *_AS_IS_KINDS):
        return description
    kind = tags.get("TILEDEPTH_OUTPUT_KIND", "depth")
    if kind != "depth":
        return kind
    if "TILEDEPTH_KIND" in tags:
        return tags["TILEDEPTH_KIND"]
    return "depth" if "TILEDEPTH_OUTPUT_KIND" in tags else None


def _strips(height: int, width: int, step: int) -> Iterator[tuple[int, int]]:
    """(first row, row count) of strips of about :data:`CHUNK_PIXELS`, a multiple of ``step``."""
    rows = max(step, CHUNK_PIXELS // max(1, width) // step * step)
    for r0 in range(0, height, rows):
        yield r0, min(rows, height - r0)


def fit_gcps(gcps, name: str):
    """The affine transform fitted to a map's ground control points, by least squares.

    The fit is GDAL's (:func:`rasterio.transform.from_gcps`), which does not say when it
    fails: it returns whatever the output held. So the GCPs are checked first (at least
    three, not all on one line, in the pixels and in the map) and the result after
    (finite, invertible). A fit that misses a GCP by more than a pixel is kept, with a
    warning: the GCPs then describe a warp no affine transform follows (a perspective frame).

    Parameters
    ----------
    gcps : list of rasterio.control.GroundControlPoint
        The map's GCPs (row and column at pixel corners, as GDAL's).
    name : str
        The map, for the messages.

    Returns
    -------
    affine.Affine
        Pixel (column, row) to the GCPs' coordinates.

    Raises
    ------
    InputError
        No affine transform can be fitted; the message says what to do.

    Examples
    --------
    >>> from rasterio.control import GroundControlPoint as G
    >>> gcps = [G(0, 0, 100.0, 50.0), G(0, 4, 108.0, 50.0), G(3, 0, 100.0, 44.0)]
    >>> tuple(round(v, 9) for v in fit_gcps(gcps, "map.tif")[:6])
    (2.0, 0.0, 100.0, 0.0, -2.0, 50.0)
    """
    from rasterio.transform import from_gcps

    pixels = np.array([[g.col, g.row] for g in gcps], np.float64).reshape(-1, 2)
    world = np.array([[g.x, g.y] for g in gcps], np.float64).reshape(-1, 2)
    fix = "add GCPs or give the map a geotransform (gdal_edit.py -a_ullr) and export it again"
    # on one line: rank < 2 about their mean (centred, so a UTM offset does not hide it)
    if len(gcps) < 3 or min(np.linalg.matrix_rank(v - v.mean(0)) for v in (pixels, world)) < 2:
        raise InputError(f"{name}: its {len(gcps)} ground control point(s) cannot place its "
                         f"pixels: an affine fit needs 3 or more, not all on one line; {fix}")
    t = from_gcps(gcps)
    linear = np.abs([t.a, t.b, t.d, t.e]).max()  # the pixel's size, not the offsets, sets it
    if not np.isfinite(np.array(t[:6], np.float64)).all() or \
            not abs(t.determinant) > 1e-12 * linear ** 2:
        raise InputError(f"{name}: an affine transform cannot be fitted to its ground control "
                         f"points; {fix}")
    fitted = pixels @ np.array([[t.a, t.d], [t.b, t.e]]) + [t.c, t.f]
    miss = float(np.hypot(*(fitted - world).T).max())
    pixel = abs(t.determinant) ** 0.5
    if miss > pixel:
        log.warning("%s: the affine fit to its ground control points misses one by %.3g "
                    "(%.1f pixels); points are placed by that fit", name, miss, miss / pixel)
    return t


def laspy_module(*, laz: bool = False):
    """laspy, else DependencyError; with ``laz``, only where its lazrs backend (the LAZ
    writer's) is there too: ``pip install laspy`` without the extra has no LAZ writer, and
    laspy said so only once the map had been read ("No LazBackend could be initialized")."""
    try:
        import laspy
    except ImportError:
        laspy = None
    if laspy is None or laz and not laspy.LazBackend.Lazrs.is_available():
        raise DependencyError("LAS/LAZ export needs laspy and lazrs: "
                              "pip install 'laspy[lazrs]'")
    return laspy


#: The band types whose values float32 would round (:attr:`ExportMap.value_dtype`).
_WIDE = tuple(np.dtype(t) for t in ("float64", "int32", "uint32", "int64", "uint64"))


class ExportMap:
    """A map open for export: its values strip by strip, NaN where no data.

    ``transform`` and ``crs`` are the map's own; ``gcps`` its ground control points and
    their CRS when they, not a geotransform, georeference it (else None); ``rpcs`` its
    rational polynomial coefficients where it has them and no such GCPs (else None): alone,
    or beside a geotransform (an ortho-ready product's, which a run keeps, as rasters keep
    them). Point clouds place pixels with :attr:`placement`, which fits a transform to those
    GCPs and refuses RPCs without a geotransform.
    """

    def __init__(self, ds, band: int, step: int) -> None:
        self.ds, self.band, self.step = ds, band, step
        self.height, self.width = ds.height, ds.width
        self.transform = ds.transform
        self.crs = ds.crs
        gcps, gcp_crs = ds.gcps
        # GDAL prefers a geotransform where a file has both; without one rasterio gives the
        # identity, and the GCPs are the map's only georeferencing.
        self.gcps = (list(gcps), gcp_crs) if gcps and ds.transform.is_identity else None
        # RPCs: a satellite scene's, kept by tiledepth's output, alone (GDAL's last resort to
        # place it) or beside a geotransform (what gdalwarp -rpc needs of an ortho-ready one)
        self.rpcs = ds.rpcs if self.gcps is None else None
        said = _said_kind(ds.tags(), ds.descriptions[band - 1])
        #: Whether the band's description or tiledepth's tags say its kind; else it is read
        #: as depth (:func:`_kind_of_map`), and a point cloud's z is its values negated.
        self.kind_said = said is not None
        self.kind = "depth" if said is None else said
        self.sign = z_sign(self.kind)
        self.units = ds.units[band - 1] or None
        # The band's scale and offset (a DEM stored as centimetre counts: 0.01, and its
        # datum): values are ``stored * scale + offset``, as GDAL reads them unscaled.
        self.scale, self.offset = ds.scales[band - 1], ds.offsets[band - 1]
        #: The values' type, as exported: float64 where the band's type holds more digits
        #: than float32's 24 bits (float64 and 32- and 64-bit integers: 123456.001 m was
        #: exported as 123456.0), float32 otherwise.
        self.value_dtype = np.float64 if np.dtype(ds.dtypes[band - 1]) in _WIDE else np.float32

    @cached_property
    def placement(self):
        """(transform, crs) placing the pixels in map coordinates, for point clouds.

        The map's own, or for a map georeferenced by GCPs an affine fit to them
        (:func:`fit_gcps`, which raises InputError if none fits) with the GCPs' CRS: never
        the identity, which would write pixel coordinates as if they were the map's. A map
        georeferenced by RPCs only is refused (InputError): RPCs place a pixel only with
        its ground height, which the map does not hold (a depth, or a height in its own
        frame), and no affine transform follows them over a scene.

        A map with no georeferencing at all (a JPEG frame's): pixel coordinates, one unit a
        pixel, with y up (``x = col + 0.5``, ``y = height - row - 0.5``), so that the cloud in
        a right-handed x, y, z-up frame is the image as seen from above, not its mirror
        (rows grow downwards), and no CRS. A CRS without a geotransform, GCPs or RPCs places
        nothing: such a map is one of these too (its pixel coordinates are no coordinates
        of that CRS; they were written y down, labelled with it).
        """
        from rasterio.transform import Affine

        if self.transform.is_identity and self.gcps is None and self.rpcs is None:
            return Affine(1.0, 0.0, 0.0, 0.0, -1.0, float(self.height)), None
        if self.rpcs is not None and self.transform.is_identity:
            raise InputError(f"{self.ds.name}: is georeferenced by RPCs only (a satellite "
                             "scene not orthorectified), which cannot place its points; "
                             "orthorectify it first (gdalwarp -rpc, with -to RPC_DEM=DEM.tif "
                             "where you have a DEM) and export that")
        if self.gcps is None:
            return self.transform, self.crs
        gcps, crs = self.gcps
        return fit_gcps(gcps, self.ds.name), crs

    @property
    def scaled(self) -> bool:
        """Whether the band has a scale or offset (:meth:`_values` applies them)."""
        return (self.scale, self.offset) != (1.0, 0.0)

    def _values(self, v: np.ma.MaskedArray, dtype=None) -> np.ndarray:
        """Values read (masked where no data, by the stored values) as the map's: NaN where
        no data, the band's scale and offset applied (then in float64: a 0.01 scale in float32
        would blur centimetres above a 100 m offset); ``dtype`` where it has none (default
        :attr:`value_dtype`)."""
        if not self.scaled:
            return v.astype(dtype or self.value_dtype).filled(np.nan)
        return v.astype(np.float64).filled(np.nan) * self.scale + self.offset

    def _read(self, **kw) -> np.ma.MaskedArray:
        """Read the band (masked); a failure is the map's (InputError): GDAL's own errors
        (CPLE_*) too, which :func:`tiledepth.export.export` would report as the export's."""
        from tiledepth.read import GDAL_ERRORS

        try:
            return self.ds.read(self.band, masked=True, **kw)
        except GDAL_ERRORS as exc:
            raise InputError(f"{self.ds.name}: cannot read it ({exc})") from exc

    def strips(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, values of shape (rows, W) at full resolution, NaN = no data)."""
        from rasterio.windows import Window

        for r0, n in _strips(self.height, self.width, self.step):
            yield r0, self._values(self._read(window=Window(0, r0, self.width, n)))

    def kept(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, values of the rows and columns ``step`` keeps, every ``step``-th from
        0, of shape (rows, ceil(W / step)), NaN = no data), strip by strip.

        Strips of :func:`_strips` while ``step`` rows hold at most :data:`CHUNK_PIXELS`;
        else each kept row is read alone (and strips gather about :data:`CHUNK_PIXELS` kept
        pixels), so that memory stays flat however large ``step`` times the width.
        """
        from rasterio.windows import Window

        s = self.step
        # thinned as read, before the values are converted (element-wise: the same values)
        if CHUNK_PIXELS // max(1, self.width) >= s:
            for r0, n in _strips(self.height, self.width, s):  # starts: multiples of step
                yield r0, self._values(self._read(window=Window(0, r0, self.width, n))[::s, ::s])
            return
        rows = range(0, self.height, s)
        per_strip = max(1, CHUNK_PIXELS // -(-self.width // s))
        for i in range(0, len(rows), per_strip):
            yield rows[i], np.concatenate([
                self._values(self._read(window=Window(0, r, self.width, 1))[:, ::s])
                for r in rows[i:i + per_strip]])

    def points(self, rgb) -> Iterator[tuple[np.ndarray, ...]]:
        """(x, y, z, colours (N, 3) uint8 or None) of the valid pixels, strip by strip."""
        s = self.step
        transform, _ = self.placement
        for r0, v in self.kept():
            rows, cols = np.nonzero(np.isfinite(v))
            z = self.sign * v[rows, cols].astype(np.float64)
            colours = None if rgb is None else rgb(r0, v.shape[0], s)[:, rows, cols]
            rows, cols = rows * s + r0, cols * s
            x, y = pixel_centres(transform, rows, cols)
            yield x, y, z, (None if colours is None else colours.T)

    def stats(self) -> tuple[int, float, float]:
        """(count, min, max) of the valid values kept by ``step``, one pass."""
        count, lo, hi = 0, np.inf, -np.inf
        for _, v in self.kept():
            v = v[np.isfinite(v)]
            if v.size:
                count += v.size
                lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
        return count, lo, hi

    def percentiles(self, q: tuple[float, float]) -> tuple[float, float]:
        """Percentiles of the values, from a read of at most 2048 px on the long side."""
        from rasterio.enums import Resampling

        f = max(1.0, max(self.height, self.width) / 2048)
        shape = (max(1, round(self.height / f)), max(1, round(self.width / f)))
        # a decimated read (and its mask's) samples every block row: under the exports'
        # 16 MB cache, less than a block row of a map over 8192 px wide, each is decoded
        # again for every row sampled (8000 px without overviews: 147 s instead of 5 s)
        with block_rows_cache(self.ds):
            v = self._values(self._read(out_shape=shape, resampling=Resampling.nearest),
                             np.float64)
        v = v[np.isfinite(v)]
        if not v.size:
            raise InputError(f"{self.ds.name}: has no valid value to export")
        return tuple(float(p) for p in np.percentile(v, q))


class colours:
    """Context: a function (first row, rows, step) -> (3, rows, ceil(W / step)) uint8 of an
    image on the map's grid: the rows ``first row``, ``+ step``, ... and every ``step``-th
    column (:meth:`ExportMap.kept`).

    ``placement``: the (transform, crs) the map's points are placed with
    (:attr:`ExportMap.placement`); default the map's own transform and CRS.
    """

    def __init__(self, image, ds, placement=None) -> None:
        self.image, self.ds = image, ds
        self.transform, self.crs = placement if placement is not None else (ds.transform, ds.crs)
        self._src = self._vrt = None

    def __enter__(self):
        if self.image is None:
            return None
        from rasterio.errors import RasterioIOError
        from rasterio.vrt import WarpedVRT

        from tiledepth.rasterfile import open_raster

        try:
            self._src = open_raster(self.image)
        except RasterioIOError as exc:
            raise InputError(f"{self.image}: cannot read it as a raster ({exc})") from exc
        src, ds, transform, crs = self._src, self.ds, self.transform, self.crs
        same = ((src.height, src.width) == (ds.height, ds.width)
                and (src.transform == transform or src.crs is None or crs is None)
                and (src.crs == crs or src.crs is None or crs is None))
        if not same:
            if src.crs is None or crs is None:
                raise InputError(f"{self.image}: its grid differs from the map's and one of "
                                 "them has no CRS, so it cannot be put on the map's grid")
            self._vrt = WarpedVRT(src, crs=crs, transform=transform, width=ds.width,
                                  height=ds.height)
        reader = self._vrt or src
        bands = [1, 2, 3] if reader.count >= 3 else [1, 1, 1]
        scale = _to_uint8(src.dtypes[0], src, bands)

        def rows(r0: int, n: int) -> np.ndarray:
            from rasterio.windows import Window

            from tiledepth.read import GDAL_ERRORS

            try:
                return reader.read(bands, window=Window(0, r0, ds.width, n))
            except GDAL_ERRORS as exc:  # the image's, never the export's (CPLE_* too)
                raise InputError(f"{self.image}: cannot read it ({exc})") from exc

        def read(r0: int, n: int, step: int = 1) -> np.ndarray:
            full = min(n * step, ds.height - r0)  # the full-resolution rows they span
            if full * ds.width <= CHUNK_PIXELS:
                v = rows(r0, full)[:, ::step, ::step]
            else:  # each kept row alone: memory stays flat however large the step
                v = np.concatenate([rows(r, 1)[:, :, ::step]
                                    for r in range(r0, r0 + full, step)], axis=1)
            return scale(v)

        return read

    def __exit__(self, *exc) -> None:
        if self._vrt is not None:
            self._vrt.close()
        if self._src is not None:
            self._src.close()


def _to_uint8(dtype: str, src=None, bands=(1, 2, 3)):
    """A function scaling an image's values to uint8 (16-bit images divided by 257; float
    ones in [0, 1] times 255, else as they are: decided once for the image ``src``, from a
    decimated read of its ``bands``, not strip by strip)."""
    if dtype == "uint8":
        return lambda v: v
    if dtype == "uint16":
        return lambda v: (v // 257).astype(np.uint8)
    unit = True
    if src is not None:
        shape = (len(bands), min(src.height, 1024), min(src.width, 1024))
        sample = src.read(list(bands), out_shape=shape, masked=True).filled(np.nan)
        unit = not np.nanmax(sample, initial=0) > 1
    factor = 255 if unit else 1
    return lambda v: np.clip(np.round(v * factor), 0, 255).astype(np.uint8)


def _header_text(m: ExportMap) -> str:
    """What z is, one short line (LAS system identifier, PLY comment)."""
    what = "height" if m.kind == "height" else m.kind
    units = " m" if m.units in _METRES else ""
    return f"z={'' if m.sign > 0 else '-'}{what}{units}"


def _scale(span: float, *, finer: bool = True) -> float:
    """A LAS coordinate scale: a power of ten, at most 1 mm, that keeps ``span`` in int32;
    with ``finer`` (relative values), finer still while ``span`` stays under 10 million steps.

    Examples
    --------
    >>> _scale(45.0), _scale(45.0, finer=False), _scale(5e6)
    (1e-05, 0.001, 0.01)
    """
    s = 0.001
    while span / s > 2**31 - 2:
        s *= 10
    if span > 0 and finer:
        while s > 1e-9 and span / (s / 10) < 1e7:  # small spans (relative depth): finer
            s /= 10
    return s


def _xy_scale(transform, span: float, crs) -> float:
    """The LAS x and y scale: 1 mm in a projected CRS (or none), :func:`_scale` of the span
    in a geographic one; where that is more than a tenth of a pixel (a map in degrees
    without its CRS: 1 mm is 100 m there), a power of ten at most 1/100 of a pixel, within
    int32 over ``span``.

    Examples
    --------
    >>> from rasterio.transform import from_origin
    >>> _xy_scale(from_origin(500000, 5500000, 0.05, 0.05), 100.0, None)
    0.001
    >>> _xy_scale(from_origin(-117.0, 49.6, 1e-5, 1e-5), 6e-4, None)
    1e-07
    """
    s = 0.001 if span > 1000 or crs is None or crs.is_projected else _scale(span)
    pixel = min(np.hypot(transform.a, transform.d), np.hypot(transform.b, transform.e))
    if s > pixel / 10:
        s = 10.0 ** np.floor(np.log10(pixel / 100))
        while span / s > 2**31 - 2:
            s *= 10
    return float(s)


def write_las(m: ExportMap, path: Path, rgb) -> tuple[int, float, float]:
    laspy = laspy_module()
    from tiledepth import __version__

    count, lo, hi = m.stats()
    if not count:
        raise InputError(f"{m.ds.name}: has no valid value to export")
    transform, crs = m.placement
    zlo, zhi = sorted((m.sign * lo, m.sign * hi))
    header = laspy.LasHeader(point_format=7 if rgb is not None else 6, version="1.4")
    xmin, ymin, xmax, ymax = raster_bounds(transform, m.height, m.width)
    span = max(xmax - xmin, ymax - ymin)
    xy = _xy_scale(transform, span, crs)
    header.offsets = np.array([xmin, ymin, zlo])
    # z in metres at 1 mm (as documented; a finer scale made the LAZ of a 45 m range twice
    # the size for digits no depth model has), finer only for relative values
    header.scales = np.array([xy, xy, _scale(zhi - zlo, finer=m.units not in _METRES)])
    header.system_identifier = _header_text(m)[:32]
    header.generating_software = f"tiledepth {__version__}"[:32]
    if crs is not None:
        header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(crs.to_wkt()))
        header.global_encoding.wkt = True
    laz = path.suffix.lower() == ".laz"
    failed = None
    with _KeepingFile(path) as f:
        try:
            with laspy.open(f, mode="w", header=header, closefd=False, do_compress=laz,
                            laz_backend=laspy.LazBackend.Lazrs if laz else None) as writer:
                for x, y, z, colours in m.points(rgb):
                    if not len(z):
                        continue
                    pts = laspy.ScaleAwarePointRecord.zeros(len(z), header=header)
                    pts.x, pts.y, pts.z = x, y, z
                    if colours is not None:
                        c = colours.astype(np.uint16) * 257
                        pts.red, pts.green, pts.blue = c[:, 0], c[:, 1], c[:, 2]
                    writer.write_points(pts)
        except Exception as exc:  # lazrs's LazrsError("Failed to call write"): what write
            if f.error is None or exc is f.error:  # raised (ENOSPC, Ctrl-C) in its place
                raise
            failed = f.error
    if failed is not None:  # raised here, not in the except: no LazrsError in its chain
        raise failed
    return count, zlo, zhi


class _KeepingFile(io.FileIO):
    """The LAS/LAZ file laspy writes, whose write() keeps the exception it raises
    (:attr:`error`, the first).

    lazrs calls write() from Rust and turns whatever it raises into ``LazrsError("Failed
    to call write")``: a full disk's OSError (ENOSPC), and the KeyboardInterrupt (or the
    CLI's SIGTERM exception) of a signal that came while lazrs compressed, which Python
    raises in the first Python code to run: that write. :func:`write_las` raises the kept
    one instead, so a full disk is reported as one and Ctrl-C as an interruption.

    write() is a running generator's ``send``, not a method: a signal's exception is raised
    where the eval loop next checks, which in a function is its first instruction, before
    any ``try`` in it (the exception was lost so); in a generator resumed from a ``yield``
    inside its ``try``, it is inside the ``try``. The file is unbuffered, so that seek(),
    tell() and flush(), which lazrs calls too, run no Python code and check no signals (a
    buffered file's run the handlers between its writes: the signal was lost there);
    write() writes the whole buffer (an unbuffered write may write part of it).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, "w+")
        self.error: BaseException | None = None
        writes = self._writes()
        next(writes)
        self.write = writes.send  # (an instance attribute: laspy and lazrs look it up)

    def _writes(self):
        try:
            data = yield
            while True:
                view = memoryview(data).cast("B")
                done = 0
                while done < len(view):
                    done += super().write(view[done:])
                data = yield done
        except GeneratorExit:  # the file collected: no error of its
            raise
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise


def write_ply(m: ExportMap, path: Path, rgb) -> tuple[int, float, float]:
    from tiledepth import __version__

    _, crs = m.placement  # before the counting pass: a map no fit places is refused at once
    count, lo, hi = m.stats()
    if not count:
        raise InputError(f"{m.ds.name}: has no valid value to export")
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    lines = ["ply", "format binary_little_endian 1.0", f"comment tiledepth {__version__}",
             f"comment {_header_text(m)}"]
    if crs is not None:
        lines.append("comment crs " + crs.to_wkt().replace("\n", " "))
    lines.append(f"element vertex {count}")
    lines += [f"property {'double' if t == '<f8' else 'uchar'} {n}" for n, t in fields]
    lines.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii", "replace"))
        for x, y, z, colours in m.points(rgb):
            rec = np.empty(len(z), dtype=fields)
            rec["x"], rec["y"], rec["z"] = x, y, z
            if colours is not None:
                rec["red"], rec["green"], rec["blue"] = colours.T
            f.write(rec.tobytes())
    return count, *sorted((m.sign * lo, m.sign * hi))


def _raster_profile(m: ExportMap, **kw) -> dict:
    """The scratch GeoTIFF's profile, with the map's georeferencing: its CRS and transform,
    its GCPs and their CRS, or its RPCs (alone, or with its CRS and transform; copied as
    they are: a raster on the map's own grid needs no fit, and GDAL's PNG and COG drivers
    keep them, the PNG in its ``.aux.xml``)."""
    import rasterio

    profile = dict(driver="GTiff", width=m.width, height=m.height, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER", **kw)
    if m.gcps is not None:
        gcps, crs = m.gcps
        # rasterio needs a CRS, an empty one for GCPs that have none (as tiledepth.write)
        profile.update(gcps=gcps, crs=crs or rasterio.crs.CRS())
        return profile
    if m.rpcs is not None:
        profile["rpcs"] = m.rpcs
        if m.transform.is_identity:  # RPCs alone: nothing else places it
            return profile
    if m.crs is not None:
        profile["crs"] = m.crs
    if not m.transform.is_identity:
        profile["transform"] = m.transform
    return profile


def written_sidecars(m: ExportMap, fmt: str, path: Path) -> list[Path]:
    """The files GDAL writes beside the raster export ``path`` of ``m`` that place it,
    known before it is written: for a PNG (``WORLDFILE=YES``) its world file
    ``<stem>.wld`` where the map has a geotransform, and its ``.aux.xml`` where it has a
    CRS, GCPs or RPCs (which a PNG cannot hold); for a COG none (the GeoTIFF holds them).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from rasterio.transform import from_origin
    >>> m = SimpleNamespace(width=10, height=10, transform=from_origin(0, 10, 1, 1), crs=None,
    ...                     gcps=None, rpcs=None)  # a geotransform, no CRS
    >>> [p.name for p in written_sidecars(m, "png", Path("x.PNG"))]
    ['x.wld']
    """
    if fmt != "png":
        return []
    profile = _raster_profile(m, count=1, dtype="uint16")
    return ([path.with_suffix(".wld")] if "transform" in profile else []) + (
        [path.with_name(path.name + ".aux.xml")]
        if {"crs", "gcps", "rpcs"} & profile.keys() else [])


def block_rows_cache(ds):
    """A scoped GDAL block cache of two block rows of every band of ``ds``, at least the
    reads' (:func:`tiledepth.read.sample_cache`): for reads that sample or sweep the whole
    raster row by row, which with less than a block row in the cache decode each block row
    again for every row (or strip) they read."""
    import rasterio

    from tiledepth.read import GDAL_OPTIONS, sample_cache

    return rasterio.Env(GDAL_CACHEMAX=sample_cache(ds, range(1, ds.count + 1),
                                                   GDAL_OPTIONS["GDAL_CACHEMAX"]))


#: What :func:`_through_tiff` adds to the name it is given for its strips' GeoTIFF (GDAL may
#: write that one's ``.aux.xml`` beside it).
STRIPS_SUFFIX = ".strips.tif"


def _through_tiff(m: ExportMap, path: Path, profile: dict, fill, finish, tags=None) -> None:
    """Write a temporary tiled GeoTIFF strip by strip with ``fill``, then ``finish`` it
    (under a cache of two of its block rows: GDAL's PNG driver copies it line by line, and
    a 512-row block row of a map over 16 384 px wide is more than the reads' 16 MB, so each
    was decoded again for every line: 51 s instead of 1.6 s at 20 000 x 1024 px)."""
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window

    from tiledepth.rasterfile import open_raster
    from tiledepth.safe_write import discard

    scratch = path.with_name(path.name + STRIPS_SUFFIX)
    try:
        with open_raster(scratch, "w", **profile) as dst:
            if profile["count"] == 4:
                dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                                   ColorInterp.alpha]
            dst.update_tags(**(tags or {}))
            for r0, v in m.strips():
                dst.write(fill(v), window=Window(0, r0, m.width, v.shape[0]))
            finish_src = dst.name
            copy_cache = block_rows_cache(dst)
        with copy_cache:
            finish(finish_src)
    finally:  # never raising: an error here would hide the write's own
        discard(scratch)
        discard(scratch.with_name(scratch.name + ".aux.xml"))


def write_png(m: ExportMap, path: Path, value_range) -> tuple[int, float, float]:
    from rasterio.shutil import copy

    if value_range is None:
        count, lo, hi = m.stats()
        if not count:
            raise InputError(f"{m.ds.name}: has no valid value to export")
        if not hi > lo:
            hi = lo + 1.0
    else:
        lo, hi = value_range
    count = [0]

    def fill(v):
        count[0] += int(np.isfinite(v).sum())
        return to_uint16(v, lo, hi)[None]

    def finish(src):
        copy(src, path, driver="PNG", WORLDFILE="YES", WRITE_METADATA_AS_TEXT="YES")

    tags = {"TILEDEPTH_PNG_RANGE": f"{lo:.9g} {hi:.9g}", "TILEDEPTH_KIND": m.kind,
            "TILEDEPTH_PNG_VALUES": f"value = {lo:.9g} + (p - 1) * {(hi - lo):.9g} / 65534; "
                                    "p = 0 is no data"}
    _through_tiff(m, path, _raster_profile(m, count=1, dtype="uint16", nodata=0), fill, finish,
                  tags)
    return count[0], lo, hi


def write_cog(m: ExportMap, path: Path, value_range, table: np.ndarray) -> tuple[int, float, float]:
    from rasterio.shutil import copy

    from tiledepth.preview import colorize

    lo, hi = value_range if value_range is not None else m.percentiles((2.0, 98.0))
    count = [0]

    def fill(v):
        count[0] += int(np.isfinite(v).sum())
        return colorize(v, limits=(lo, hi), table=table)

    def finish(src):
        copy(src, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, BIGTIFF="IF_SAFER",
             OVERVIEWS="AUTO", RESAMPLING="AVERAGE")

    profile = _raster_profile(m, count=4, dtype="uint8", photometric="RGB")
    _through_tiff(m, path, profile, fill, finish)
    return count[0], lo, hi
