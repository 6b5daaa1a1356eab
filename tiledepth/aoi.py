"""Area of interest: restrict a run to a rectangle (``--bounds``) or polygons (``--aoi``).

:func:`area_of_interest` turns bounds and/or a vector file into an :class:`Area`
on the input's pixel grid: the window the output covers (the area's envelope,
snapped outward to whole pixels and clipped to the raster) and the polygons,
reprojected to the raster's CRS, that mask it. :class:`AreaReader` serves a
reader's tiles within that window, with every pixel outside the polygons
invalid: such pixels never reach the model, are NaN in the output, and tiles
wholly outside are skipped (:func:`tiledepth.infer.infer_tiles`).

A pixel is inside when its centre is (GDAL's rasterisation rule); an area
thinner than a pixel keeps the pixels it touches. Vector files are read with
pyogrio (any format OGR reads: GeoPackage, Shapefile, GeoJSON, ...); the
polygons of its layer count (of a file of several layers, the one layer that
holds polygons), other geometry types are ignored.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from tiledepth.errors import InputError, OptionError, first_line

__all__ = ["Area", "AreaReader", "area_of_interest", "area_window", "raster_bounds",
           "read_polygons"]

log = logging.getLogger(__name__)

#: Points per side of a ``--bounds`` rectangle given in another CRS, so that its
#: reprojected edges follow the curve they become.
DENSIFY = 21


@dataclass(frozen=True)
class Area:
    """Where a run works: a window of the raster and the polygons that mask it.

    Attributes
    ----------
    window : rasterio.windows.Window
        Whole pixels of the raster (offsets and sizes integers); the output's extent.
    transform : affine.Affine
        The raster's transform (pixel to CRS coordinates).
    geometries : tuple of shapely geometries
        Polygons in the raster's CRS; empty: every pixel of the window counts.
    touched : bool
        A pixel is inside when the polygons touch it, not when they hold its centre: an
        area thinner than a pixel (:func:`area_of_interest` sets it where no centre is in).
    """

    window: Window
    transform: object
    geometries: tuple = ()
    touched: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the window."""
        return int(self.window.height), int(self.window.width)

    def mask(self, window: Window | None = None,
             out_shape: tuple[int, int] | None = None, *,
             all_touched: bool = False) -> np.ndarray:
        """Pixels inside the area: (h, w) bool, for a window of the area (default: all of it).

        ``window`` is in the area's pixels (row 0 = the area window's first row), fractional
        offsets allowed; ``out_shape`` (default: the window's size) resamples it, a pixel
        being inside when its centre is (``all_touched``, or the area's ``touched``: when
        the polygons touch it).
        The whole area's mask takes a byte a pixel: the engine asks for one window at a
        time, and :func:`_blocks_inside` answers questions about all of it block by block.
        """
        window = Window(0, 0, *self.shape[::-1]) if window is None else window
        shape = out_shape or (int(window.height), int(window.width))
        if not self.geometries:
            return np.ones(shape, bool)
        from rasterio.features import geometry_mask
        from rasterio.windows import transform as window_transform

        origin = Window(self.window.col_off + window.col_off, self.window.row_off + window.row_off,
                        window.width, window.height)
        transform = window_transform(origin, self.transform)
        transform @= transform.scale(window.width / shape[1], window.height / shape[0])
        return geometry_mask(self.geometries, out_shape=shape, transform=transform, invert=True,
                             all_touched=all_touched or self.touched)

    def identity(self) -> dict:
        """What identifies the area in a checkpoint key: its window and a hash of its polygons.

        Examples
        --------
        >>> from affine import Affine
        >>> Area(Window(2, 3, 4, 5), Affine.identity()).identity()
        {'window': [2, 3, 4, 5], 'polygons_sha256': None}
        """
        import shapely

        digest = None
        if self.geometries:
            digest = hashlib.sha256(b"".join(shapely.to_wkb(g) for g in self.geometries))
            digest = digest.hexdigest()
        return {"window": [int(v) for v in self.window.flatten()], "polygons_sha256": digest}


#: Layer geometry types (as OGR declares them, ``Point Z`` and the like too) that hold no
#: polygon: such a layer of a file of several is not read for the area of interest.
NO_POLYGONS = ("Point", "MultiPoint", "LineString", "MultiLineString", "None")


def read_polygons(path: str | os.PathLike) -> tuple[list, object]:
    """The polygons of a vector file's layer, and its CRS.

    Parameters
    ----------
    path : str or os.PathLike
        Any vector file OGR reads (GeoPackage, Shapefile, GeoJSON, ...): one layer,
        or several of which one holds polygons.

    Returns
    -------
    polygons : list of shapely Polygon or MultiPolygon
        Every polygon of the layer (parts of collections included); lines and
        points are left out.
    crs : str or None
        The layer's CRS (as pyogrio reports it), None where it has none.

    Raises
    ------
    InputError
        An unreadable file, one without polygons, or one of which several layers hold
        polygons (which of them is the area is not for tiledepth to guess).
    """
    import pyogrio

    if not isinstance(path, (str, os.PathLike)):  # Path() said only "expected str, ..."
        raise OptionError(f"aoi must be the path of a vector file of polygons (str or "
                          f"os.PathLike), got {type(path).__name__}; for a rectangle use "
                          "bounds=(xmin, ymin, xmax, ymax)")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the --aoi path")
    try:
        layers = pyogrio.list_layers(path)
    except Exception as exc:  # pyogrio's DataSourceError and the like: one line
        raise InputError(f"{path}: cannot read it as a vector file ({first_line(exc)}); "
                         "give a GeoPackage, Shapefile or GeoJSON of polygons") from exc
    if len(layers) < 2:  # one layer (or none: OGR's error says so)
        polygons, crs = _layer_polygons(path, None)
    else:
        found = {str(name): _layer_polygons(path, str(name)) for name, kind in layers
                 if (str(kind).split() or [""])[0] not in NO_POLYGONS}  # ("Point Z")
        found = {name: got for name, got in found.items() if got[0]}
        if len(found) > 1:
            import shlex

            names = ", ".join(found)
            raise InputError(f"{path}: {len(found)} of its layers hold polygons ({names}); "
                             "an area of interest is one layer: extract it first, e.g. "
                             f"ogr2ogr aoi.gpkg {shlex.quote(str(path))} "
                             f"{shlex.quote(next(iter(found)))}")
        polygons, crs = next(iter(found.values()), ([], None))
    if not polygons:
        raise InputError(f"{path}: has no polygons (an area of interest must be polygons)")
    return polygons, crs


def _layer_polygons(path: Path, layer: str | None) -> tuple[list, object]:
    """The (valid) polygons of one layer of ``path`` (None: its first) and the layer's CRS."""
    import pyogrio
    import shapely

    try:
        meta, _, wkb, _ = pyogrio.raw.read(path, layer=layer, read_geometry=True, columns=[])
    except Exception as exc:  # pyogrio's DataSourceError and the like: one line
        raise InputError(f"{path}: cannot read it as a vector file ({first_line(exc)}); "
                         "give a GeoPackage, Shapefile or GeoJSON of polygons") from exc
    geoms = shapely.get_parts(shapely.from_wkb(wkb[np.not_equal(wkb, None)]) if wkb is not None
                              else np.array([], object))
    polygons = [g for g in geoms
                if g is not None and not g.is_empty and g.geom_type in ("Polygon",
                                                                        "MultiPolygon")]
    return [shapely.make_valid(g) if not g.is_valid else g for g in polygons], meta.get("crs")


def area_of_interest(height: int, width: int, transform, crs, *,
                     aoi: str | os.PathLike | None = None,
                     bounds: Sequence[float] | None = None,
                     bounds_crs: str | None = None, name: str = "the input") -> Area | None:
    """The :class:`Area` of a run over a raster, from ``bounds`` and/or an ``aoi`` file.

    Parameters
    ----------
    height, width : int
        The raster's size in pixels.
    transform : affine.Affine
        The raster's transform.
    crs : rasterio.crs.CRS or None
        The raster's CRS.
    aoi : str or os.PathLike, optional
        A vector file whose polygons (reprojected to ``crs``) mask the run.
    bounds : sequence of 4 float, optional
        ``(xmin, ymin, xmax, ymax)`` in ``bounds_crs``; with ``aoi``, the two intersect.
    bounds_crs : str, optional
        CRS of ``bounds`` (anything ``rasterio.crs.CRS.from_user_input`` takes,
        ``EPSG:4326`` say); default: the raster's. Refused without ``bounds``, ``aoi``
        given or not (the AOI file's own CRS is used).
    name : str
        The raster's name, for messages.

    Returns
    -------
    Area or None
        None when neither ``aoi`` nor ``bounds`` is given.

    Raises
    ------
    OptionError
        Bad bounds or CRS; ``bounds_crs`` without ``bounds``.
    InputError
        An unreadable AOI file, a raster without georeferencing, or an area that
        does not overlap the raster.

    Examples
    --------
    >>> from affine import Affine
    >>> t = Affine(1.0, 0.0, 100.0, 0.0, -1.0, 200.0)  # 1 m pixels, top left at (100, 200)
    >>> area_of_interest(50, 80, t, "EPSG:32633", bounds=(110.5, 160, 130, 190)).window
    Window(col_off=10, row_off=10, width=20, height=30)
    """
    if bounds is None and bounds_crs is not None:  # with an aoi too, which has its own CRS
        raise OptionError("bounds_crs needs bounds (--bounds XMIN YMIN XMAX YMAX)")
    if aoi is None and bounds is None:
        return None
    if transform is None or transform.is_identity and crs is None:
        raise InputError(f"{name} has no geotransform (no CRS and transform, or only ground "
                         "control points or RPCs): an area of interest needs one; warp it "
                         "onto a map grid first (gdalwarp)")
    rect = None
    if bounds is not None:
        rect, bounds_crs = _bounds_rect(bounds, bounds_crs, crs, name)
    geoms: list = []
    if aoi is not None:
        geoms = [_aoi_geom(aoi, rect, crs, name)]
    elif bounds_crs is not None or transform.b or transform.d:
        # a rectangle in another CRS, or on a rotated grid: the window is its envelope in
        # pixels, so its outline masks the run (the pixels of the envelope outside it, NaN)
        geoms = [rect]
    envelope = (geoms[0] if geoms else rect).bounds
    window = area_window(envelope, transform, height, width)
    if window is None:
        what = f"the AOI {aoi}" if aoi is not None else "the bounds"
        raise InputError(f"{what} does not overlap {name} (in the raster's CRS: "
                         f"{_fmt(envelope)}; the raster covers "
                         f"{_fmt(raster_bounds(transform, height, width))})")
    area = Area(window, transform, tuple(geoms))
    if geoms and not _any_inside(area):  # thinner than a pixel: the pixels it touches
        area = _touched_area(area, aoi, name)
    log.info("area of interest: %d x %d px at row %d, column %d of %s", window.width,
             window.height, window.row_off, window.col_off, name)
    return area


def _bounds_rect(bounds: Sequence[float], bounds_crs: str | None, crs,
                 name: str) -> tuple[Any, str | None]:
    """``bounds`` as a polygon in the raster's CRS, and ``bounds_crs`` (None when the same).

    Bounds in another CRS are densified before they are reprojected, so their
    outline bends as the reprojection does (:func:`_reproject_densified`).
    """
    import shapely
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    xmin, ymin, xmax, ymax = _check_bounds(bounds)
    rect = shapely.box(xmin, ymin, xmax, ymax)
    if bounds_crs is not None:
        try:
            source = CRS.from_user_input(bounds_crs)
        except CRSError as exc:
            raise OptionError(f"bounds_crs: not a CRS: {bounds_crs!r} "
                              f"({first_line(exc)})") from exc
        if crs is None:
            raise InputError(f"{name} has no CRS: give bounds in its coordinates, "
                             "without bounds_crs")
        if CRS.from_user_input(crs) != source:
            try:
                rect = _reproject_densified(rect, source, crs)
            except ValueError as exc:
                raise OptionError(f"bounds: {_fmt((xmin, ymin, xmax, ymax))} cannot be put "
                                  f"in the CRS of {name} from bounds_crs {bounds_crs} ({exc}); "
                                  f"are the bounds in {bounds_crs}?") from None
        else:
            bounds_crs = None
    return rect, bounds_crs


def _aoi_geom(aoi: str | os.PathLike, rect, crs, name: str):
    """The union of ``aoi``'s polygons in the raster's CRS, cut to ``rect`` where given."""
    import shapely

    polygons, vector_crs = read_polygons(aoi)
    if vector_crs is None:
        log.warning("%s has no CRS; taken to be %s's", aoi, name)
    elif crs is None:
        raise InputError(f"{name} has no CRS, so the AOI {aoi} cannot be placed on it")
    else:
        # in another CRS, densified first as bounds are (its straight edges bend there), in
        # pieces cut to the whole AOI's envelope as the bounds' are to theirs: a small
        # parcel among many gets no vertex (50k boxes: 250k vertices, not 4M); in the
        # raster's, as it always was (no vertex added)
        move = _reproject if _same_crs(vector_crs, crs) else functools.partial(
            _reproject_densified, extent=tuple(shapely.total_bounds(polygons)))
        try:
            polygons = [move(g, vector_crs, crs) for g in polygons]
        except ValueError as exc:
            raise InputError(f"{aoi}: its coordinates cannot be put in the CRS of {name} "
                             f"({exc}); is its CRS ({vector_crs}) right? (a GeoJSON "
                             "without \"crs\" is WGS84 longitude, latitude)") from None
    union = shapely.union_all(polygons)
    geom = union if rect is None else shapely.intersection(union, rect)
    if geom.is_empty:
        raise InputError(f"{aoi}: the AOI does not meet the bounds; nothing to estimate")
    return geom


def _touched_area(area: Area, aoi, name: str) -> Area:
    """An area thinner than a pixel, holding the pixels it touches (``Area.touched``).

    Not the area widened by half a pixel's width: on pixels taller than wide that left a
    strip between two rows of pixel centres, and on any pixels a speck near a pixel's
    corner, more than half a width from every centre.
    """
    if not _any_inside(area, all_touched=True):
        raise InputError(f"the AOI {aoi} covers no pixel of {name}")
    return replace(area, touched=True)


#: Side in pixels of the blocks in which :func:`_blocks_inside` rasterises an area: its
#: memory (a byte a pixel) stays that of one block, whatever the raster's size.
BLOCK = 1024


def _blocks_inside(area: Area, *, all_touched: bool = False,
                   block: int = BLOCK) -> Iterator[tuple[Window, np.ndarray | None]]:
    """The blocks of ``area`` holding pixels inside it, and their masks.

    The area's window is cut into ``block`` x ``block`` windows (in the area's pixels,
    as :meth:`Area.mask` takes them). A block the polygons miss, even grown by a pixel
    on each side, holds none and is left out; one they hold with a margin (its outline
    within a polygon's interior) is all inside and comes with ``None`` for its mask;
    any other is rasterised as the engine's tiles are (:meth:`Area.mask`), and comes
    with its ``(h, w)`` bool mask where any of it is inside. Blocks wholly inside come
    first, then the others in row-major order, so a caller looking for one pixel
    inside can stop early. Memory: one block's mask, whatever the area's size.
    """
    import shapely

    height, width = area.shape
    r0s, c0s = np.meshgrid(np.arange(0, height, block), np.arange(0, width, block),
                           indexing="ij")
    r0s, c0s = r0s.ravel(), c0s.ravel()
    r1s, c1s = np.minimum(r0s + block, height), np.minimum(c0s + block, width)
    origin = (area.window.col_off, area.window.row_off)

    def outlines(r0, c0, r1, c1):
        # each block's four corners through the transform: a parallelogram on a rotated grid
        cols = np.stack([c0, c1, c1, c0], axis=1) + origin[0]
        rows = np.stack([r0, r0, r1, r1], axis=1) + origin[1]
        t = area.transform
        xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
        return shapely.polygons(np.stack([xs, ys], axis=-1))

    near = outlines(r0s - 1, c0s - 1, r1s + 1, c1s + 1)  # a pixel of margin: float noise
    exact = outlines(r0s, c0s, r1s, c1s)
    met = np.zeros(len(r0s), bool)
    held = np.zeros(len(r0s), bool)
    for geom in area.geometries:
        if not shapely.is_valid(geom):  # GDAL fills it even-odd, GEOS may judge otherwise
            met[:] = True
            continue
        shapely.prepare(geom)
        met |= shapely.intersects(geom, near)
        for part in shapely.get_parts(geom) if geom.geom_type == "GeometryCollection" \
                else [geom]:
            if part.geom_type in ("Polygon", "MultiPolygon"):
                held |= shapely.contains_properly(part, exact)

    def window(i):
        return Window(int(c0s[i]), int(r0s[i]), int(c1s[i] - c0s[i]), int(r1s[i] - r0s[i]))

    for i in np.flatnonzero(held):
        yield window(i), None
    for i in np.flatnonzero(met & ~held):
        mask = area.mask(window(i), all_touched=all_touched)
        if mask.any():
            yield window(i), mask


def _any_inside(area: Area, *, all_touched: bool = False) -> bool:
    """Whether any pixel of ``area``'s window is inside its polygons (or touched by them).

    The same answer as ``area.mask(all_touched=...).any()``, block by block
    (:func:`_blocks_inside`), stopping at the first block with a pixel inside.
    """
    return next(_blocks_inside(area, all_touched=all_touched), None) is not None


def area_window(bounds: Sequence[float], transform, height: int, width: int) -> Window | None:
    """The whole pixels of a raster that ``bounds`` meets, or None where it meets none.

    The bounds' corners go through the inverse transform (a rotated grid
    included); the rows and columns they span are rounded outward and
    clipped to the raster.

    Examples
    --------
    >>> from affine import Affine
    >>> t = Affine(2.0, 0.0, 0.0, 0.0, -2.0, 100.0)
    >>> area_window((3, 41, 9, 99), t, 50, 50)
    Window(col_off=1, row_off=0, width=4, height=30)
    >>> area_window((3, 41, 10.0004, 99), t, 50, 50)  # 2e-4 px past an edge: not a column more
    Window(col_off=1, row_off=0, width=4, height=30)
    >>> area_window((200, 0, 300, 10), t, 50, 50) is None
    True
    """
    xmin, ymin, xmax, ymax = bounds
    inverse = ~transform
    cols, rows = zip(*(inverse @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax)),
                     strict=True)
    # a bound on a pixel edge stays there: float noise of the transform, and an AOI in
    # another CRS densified before it was reprojected, whose edges on the grid's lines bend
    # a few micrometres across them (an all-NaN row and column else)
    eps = 1e-3
    c0, c1 = max(0, math.floor(min(cols) + eps)), min(width, math.ceil(max(cols) - eps))
    r0, r1 = max(0, math.floor(min(rows) + eps)), min(height, math.ceil(max(rows) - eps))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


class AreaReader:
    """A reader seen through an :class:`Area`: its window only, pixels outside invalid.

    Offers what :func:`tiledepth.engine.fuse` and
    :class:`tiledepth.readers.ScaledReader` use of a :class:`tiledepth.readers.RasterReader`
    (``read_tile``, ``iter_tiles``, ``read_valid``, ``read_coarse``), in the
    area window's pixels. The normalisation stays the whole raster's.

    Parameters
    ----------
    base : tiledepth.readers.RasterReader
        An open reader.
    area : Area
    """

    def __init__(self, base, area: Area) -> None:
        self.base, self.area = base, area
        self.path = base.path
        self.remote = base.remote  # (tiledepth.readers.RasterReader's: read over a network)
        self.height, self.width = area.shape
        self.scaling = base.scaling

    @property
    def dataset(self):
        return self.base.dataset

    def _read_ahead(self, windows, read, workers: int):
        return self.base._read_ahead(windows, read, workers)

    def _in_raster(self, window: Window) -> Window:
        return Window(self.area.window.col_off + window.col_off,
                      self.area.window.row_off + window.row_off, window.width, window.height)

    def _read_tile_from(self, ds, window: Window, out_shape: tuple[int, int] | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
        image, valid = self.base._read_tile_from(ds, self._in_raster(window), out_shape)
        valid &= self.area.mask(window, valid.shape)
        return image, valid

    def read_tile(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """One window of the area: (3, h, w) float32 and (h, w) bool, False outside."""
        return self._read_tile_from(self.dataset, window)

    def read_valid(self, window: Window) -> np.ndarray:
        """The (h, w) bool validity of one window of the area."""
        return self.base.read_valid(self._in_raster(window)) & self.area.mask(window)

    def iter_tiles(self, windows: Iterable[Window], *,
                   workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``read_tile`` of each window, in order, read ahead by ``workers`` threads."""
        windows = list(windows)
        reads = self.base.iter_tiles([self._in_raster(w) for w in windows], workers=workers)
        for window, (image, valid) in zip(windows, reads, strict=True):
            valid &= self.area.mask(window)
            yield image, valid

    def read_coarse(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        """The area at reduced resolution, as :meth:`tiledepth.readers.RasterReader.read_coarse`."""
        from rasterio.enums import Resampling

        from tiledepth.read import coarse_shape

        shape = coarse_shape(self.height, self.width, long_side)
        raw = self.base._read(window=self.area.window, out_shape=shape,
                              resampling=Resampling.average)
        inside = self.area.mask(out_shape=shape)
        valid = self.base._valid(raw, window=self.area.window, out_shape=shape) & inside
        if not valid.any():  # every valid part is smaller than a coarse pixel
            touched = _touched(self.area, shape)
            valid = self.base._valid(raw, window=self.area.window, out_shape=shape,
                                     resampling=Resampling.average) & touched
        return self.base.scaling.apply(raw), valid


def _touched(area: Area, shape: tuple[int, int]) -> np.ndarray:
    """Coarse pixels of ``shape`` over the area holding any pixel inside it.

    Pixel ``(r, c)`` of the area falls in coarse pixel ``(r * H' // H, c * W' // W)``;
    the area is rasterised a block at a time (:func:`_blocks_inside`), not whole.
    """
    height, width = area.shape
    rows = (np.arange(height) * shape[0]) // height
    cols = (np.arange(width) * shape[1]) // width
    out = np.zeros(shape, bool)
    for window, mask in _blocks_inside(area):
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        if mask is None:  # all inside
            out[np.ix_(np.unique(rows[r0:r1]), np.unique(cols[c0:c1]))] = True
        else:
            r, c = np.nonzero(mask)
            out[rows[r0 + r], cols[c0 + c]] = True
    return out


def area_grid(grid, area: Area):
    """The :class:`tiledepth.write.OutputGrid` of ``area``'s window of ``grid``."""
    from rasterio.windows import transform as window_transform

    return replace(grid, height=area.shape[0], width=area.shape[1],
                   transform=window_transform(area.window, grid.transform))


def _check_bounds(bounds: Sequence[float]) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in bounds)
    except (TypeError, ValueError):
        raise OptionError(f"bounds must be 4 numbers XMIN YMIN XMAX YMAX, got {bounds!r}") \
            from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise OptionError(f"bounds must be 4 finite numbers XMIN YMIN XMAX YMAX, got {bounds!r}")
    xmin, ymin, xmax, ymax = values
    if not xmin < xmax:
        raise OptionError(f"bounds: XMIN must be < XMAX, got {xmin:g} and {xmax:g}")
    if not ymin < ymax:
        raise OptionError(f"bounds: YMIN must be < YMAX, got {ymin:g} and {ymax:g}")
    return values


def _reproject(geom, src_crs, dst_crs):
    """``geom`` from ``src_crs`` to ``dst_crs``.

    Raises
    ------
    ValueError
        Coordinates that cannot be transformed (outside the CRS's area, metres read as
        degrees, ...): GDAL's or PROJ's error, its first line.
    """
    import shapely
    import shapely.geometry
    from rasterio.warp import transform_geom

    from tiledepth.read import GDAL_ERRORS

    try:
        out = shapely.geometry.shape(transform_geom(src_crs, dst_crs, geom))
    except GDAL_ERRORS as exc:
        raise ValueError(first_line(exc)) from exc
    if not np.isfinite(shapely.get_coordinates(out)).all():  # PROJ's HUGE_VAL: not an error
        raise ValueError("some coordinates come out infinite")
    return out


def _reproject_densified(geom, src_crs, dst_crs, *,
                         extent: tuple[float, float, float, float] | None = None):
    """``geom`` from ``src_crs`` to ``dst_crs`` (:func:`_reproject`), its edges first cut
    into pieces of at most 1 / (:data:`DENSIFY` - 1) of the longer side of ``extent``
    ((xmin, ymin, xmax, ymax), default ``geom``'s envelope: that of all the polygons it is
    one of), so that its outline bends as the reprojection does (a straight edge in
    longitude and latitude is curved in UTM).

    Examples
    --------
    >>> import shapely
    >>> out = _reproject_densified(shapely.box(-117.2, 48.6, -116.8, 48.9), "EPSG:4326",
    ...                            "EPSG:32611")
    >>> len(out.exterior.coords)  # 20 pieces along the longer sides, 15 the shorter; closed
    71
    """
    import shapely

    xmin, ymin, xmax, ymax = geom.bounds if extent is None else extent
    side = max(xmax - xmin, ymax - ymin)
    if side > 0:  # (a geometry without extent has no edge to cut)
        geom = shapely.segmentize(geom, side / (DENSIFY - 1))
    return _reproject(geom, src_crs, dst_crs)


def _same_crs(a, b) -> bool:
    """Whether two CRSs (anything ``CRS.from_user_input`` takes) are the same; False where
    one cannot be read (:func:`_reproject` then says why)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(a) == CRS.from_user_input(b)
    except CRSError:
        return False


def raster_bounds(transform, height: int, width: int) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a grid's four corners (rotated transforms included).

    Examples
    --------
    >>> from rasterio.transform import from_origin
    >>> raster_bounds(from_origin(100.0, 50.0, 2.0, 2.0), 3, 4)
    (100.0, 44.0, 108.0, 50.0)
    """
    xs, ys = zip(*(transform @ (c, r) for c in (0, width) for r in (0, height)), strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _fmt(bounds: Sequence[float]) -> str:
    return f"x {bounds[0]:.6g}..{bounds[2]:.6g}, y {bounds[1]:.6g}..{bounds[3]:.6g}"
