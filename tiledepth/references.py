"""References: a reference raster or control points, read onto the output's grid.

A calibration (:mod:`tiledepth.calibrate`) compares the fused map with heights
from a DEM/DSM/CHM (:func:`read_reference`, reprojected by GDAL's warper window
by window) or from a CSV of x, y, z points (:func:`read_control_points`). Only
these readers touch the reference's files.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiledepth.errors import InputError, OptionError

__all__ = ["ControlPoints", "check_reference_cells", "pixel_side", "read_control_points",
           "read_reference", "reference_pixel_size", "scale_offset", "warn_units"]

log = logging.getLogger(__name__)

#: Fewest valid reference cells or control points a fit accepts.
MIN_PAIRS = 3
#: Side in pixels of the input's windows whose validity :func:`check_reference_cells` reads
#: at a time (whole cells of it): memory stays flat however large the raster.
CHECK_BLOCK = 1024


def pixel_side(transform) -> float:
    """The side of a grid's (square-equivalent) pixel: the square root of its area, in the
    grid's units; right for rotated and sheared grids too.

    Examples
    --------
    >>> from affine import Affine
    >>> pixel_side(Affine(0.5, 0, 0, 0, -0.5, 0)), pixel_side(Affine(0, 0.5, 0, 0.5, 0, 0))
    (0.5, 0.5)
    """
    return float(math.sqrt(abs(transform.determinant)))


def scale_offset(values: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """A band's stored values as the values they stand for: ``values * scale + offset`` (GDAL's
    band scale and offset, e.g. heights stored as decimetre counts), in ``values``' float
    dtype; ``values`` itself where the band has none.

    Examples
    --------
    >>> scale_offset(np.array([0.0, 25.0], np.float32), 0.1, 100.0)
    array([100. , 102.5], dtype=float32)
    """
    if (scale, offset) == (1.0, 0.0):
        return values
    kind = values.dtype.type
    return values * kind(scale) + kind(offset)


#: Spellings of the metre in a band's unit or a CRS's linear units.
METRES = ("m", "metre", "meter", "metres", "meters")


def warn_units(path, band_unit: str | None, crs) -> bool:
    """Warn (and return True) where a reference's heights may not be metres: its band says
    another unit, or, saying none, its CRS is in feet (a DEM in a US-feet projection
    usually holds heights in feet). tiledepth reads the heights as they are and labels
    the output metres.

    Examples
    --------
    >>> from rasterio.crs import CRS
    >>> warn_units("dem.tif", "metre", None), warn_units("dem.tif", None, CRS.from_epsg(32611))
    (False, False)
    >>> warn_units("dem.tif", None, CRS.from_epsg(2285))
    True
    """
    unit = (band_unit or "").strip().lower()
    linear = ""
    if not unit and crs is not None and crs.is_projected:
        linear = (crs.linear_units or "").lower()
    if unit and unit not in METRES:
        said = f"its band's unit is {band_unit!r}"
    elif "foot" in linear or "feet" in linear:
        said = f"its CRS is in {crs.linear_units} and its band gives no unit"
    else:
        return False
    log.warning("%s: %s; its heights are read as metres (the output says metres): convert "
                "them to metres first if they are not", path, said)
    return True


def reference_pixel_size(path: str | os.PathLike, dst_crs) -> float:
    """The reference's pixel size in the units of ``dst_crs`` (its CRS if None)."""
    from rasterio.warp import calculate_default_transform

    from tiledepth.read import GDAL_ERRORS

    with _open(path, "reference") as src:
        if dst_crs is None or src.crs is None or src.crs == dst_crs:
            return pixel_side(src.transform)
        try:
            transform, _, _ = calculate_default_transform(src.crs, dst_crs, src.width,
                                                          src.height, *src.bounds)
        except GDAL_ERRORS as exc:
            raise _unplaceable(path, src.crs, exc) from exc
        return pixel_side(transform)


def _unplaceable(path, crs, exc: Exception) -> InputError:
    """The error of a reference whose coordinates GDAL/PROJ cannot transform to the output's
    CRS (metres labelled degrees, an area outside the CRS's)."""
    from tiledepth.errors import first_line

    return InputError(f"{path}: its coordinates cannot be put in the input's CRS "
                      f"({first_line(exc)}); is its CRS ({crs}) right?")


def read_reference(path: str | os.PathLike, *, crs, transform, shape: tuple[int, int],
                   resampling: str = "average") -> np.ndarray:
    """Reproject band 1 of a reference raster onto a grid: (rows, cols) float32, NaN = none.

    GDAL's warper reads the source window by window, so only the destination
    grid (small: a cell or coarse grid) is held in memory.

    Parameters
    ----------
    path : str or os.PathLike
        Any raster GDAL opens; nodata, masks and non-finite values are no data.
    crs : rasterio.crs.CRS or None
        The destination's CRS; None = the reference's (both must then agree).
    transform : affine.Affine
        The destination's transform.
    shape : tuple of int
        The destination's (rows, cols).
    resampling : str
        A rasterio Resampling name (``average`` to go coarser, ``bilinear`` finer).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from tiledepth.errors import first_line
    from tiledepth.read import GDAL_ERRORS

    out = np.full(shape, np.nan, np.float32)
    with _open(path, "reference") as src:
        if src.crs is None and crs is not None:
            raise InputError(f"{path}: the reference has no CRS; give it one "
                             "(gdal_edit.py -a_srs) so it can be placed on the output grid")
        if src.transform.is_identity and src.crs is None:
            raise InputError(f"{path}: the reference is not georeferenced")
        try:
            reproject(
                source=rasterio.band(src, 1),
                destination=out,
                src_nodata=src.nodata,
                dst_transform=transform,
                dst_crs=crs if crs is not None else src.crs,
                dst_nodata=np.nan,
                resampling=Resampling[resampling],
            )
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"{path}: cannot reproject the reference ({exc})") from exc
        except GDAL_ERRORS as exc:  # GDAL's and PROJ's own (CPLE_*): a transform that fails
            if src.crs is not None and crs is not None and src.crs != crs:
                raise _unplaceable(path, src.crs, exc) from exc
            raise InputError(f"{path}: cannot reproject the reference "
                             f"({first_line(exc)})") from exc
        scale, offset = src.scales[0], src.offsets[0]  # stored counts -> heights (e.g. dm)
        warn_units(path, src.units[0], src.crs)
    out = scale_offset(out, scale, offset)
    out[~np.isfinite(out)] = np.nan
    return out


def check_reference_cells(path: str | os.PathLike, cells: np.ndarray, cell: int,
                          reader) -> None:
    """Refuse a reference of which fewer than :data:`MIN_PAIRS` cells with heights hold a
    valid pixel of the input: the output has no value at masked pixels, so the fit would
    fail once every tile is predicted. Called before the model, as for control points.

    Reads the input's validity only, block by block (:data:`CHECK_BLOCK` pixels a side,
    whole cells), only where a cell has a height, until enough cells are found; the
    reference is not read again. A cell that holds one valid pixel counts: the check
    refuses only what certainly cannot be fitted.

    Parameters
    ----------
    path : str or os.PathLike
        The reference, for the message.
    cells : ndarray of shape (rows, cols)
        The reference on the cell grid (:func:`read_reference`), NaN where it has none.
    cell : int
        The cell's side in the input's pixels; cell ``(i, j)`` covers rows
        ``i * cell`` to ``(i + 1) * cell`` and the same columns.
    reader : tiledepth.protocols.MaskedReader
        The input on the output's grid (its mask, ``mask`` and area of interest applied).

    Raises
    ------
    InputError
        Where fewer than :data:`MIN_PAIRS` cells with a height hold a valid pixel; the
        message says how many lie outside the area of interest, where the reader is one
        whose polygons mask the pixels of its window (:class:`tiledepth.aoi.AreaReader`:
        ``--aoi``, or ``--bounds`` in another CRS or on a rotated grid).
    """
    from rasterio.windows import Window

    has = np.isfinite(cells)
    step = max(1, CHECK_BLOCK // cell)  # cells a block side
    area = getattr(reader, "area", None)
    polygons = area is not None and bool(area.geometries)
    found = outside = 0  # cells with heights on valid pixels; wholly outside the polygons
    for r0 in range(0, cells.shape[0], step):
        for c0 in range(0, cells.shape[1], step):
            block = has[r0:r0 + step, c0:c0 + step]
            if not block.any():
                continue  # no height here: the input's validity is not read
            nr, nc = block.shape
            valid = reader.read_valid(Window(c0 * cell, r0 * cell, nc * cell, nr * cell))
            held = valid.reshape(nr, cell, nc, cell).any(axis=(1, 3))  # (nr, nc)
            found += int((held & block).sum())
            if found >= MIN_PAIRS:
                return
            if polygons:  # for the message: cells that no pixel inside the polygons reaches
                inside = area.mask(Window(c0 * cell, r0 * cell, nc * cell, nr * cell))
                inside = inside.reshape(nr, cell, nc, cell).any(axis=(1, 3))
                outside += int((block & ~inside).sum())
    if found == 0:
        aoi = ", or outside the area of interest (--bounds/--aoi)" if outside else ""
        raise InputError(f"{path}: none of its valid pixels fall on the input's valid pixels "
                         f"(it covers only masked, no-data or mask (--mask) pixels{aoi}, where "
                         "the output has no value); use a reference that covers the valid part "
                         f"of the input{' and the area of interest' if outside else ''}")
    aoi = (f", or outside the area of interest (--bounds/--aoi): {outside} of them" if outside
           else "")
    raise InputError(f"{path}: only {found} of its {int(has.sum())} cells with heights "
                     f"({cell} x {cell} px) fall on valid pixels of the input (the others on "
                     f"masked, no-data or mask (--mask) pixels{aoi}); need {MIN_PAIRS}")


@dataclass(frozen=True)
class ControlPoints:
    """Control points on the output grid: pixel rows, columns and heights z."""

    rows: np.ndarray
    cols: np.ndarray
    z: np.ndarray


def read_control_points(path: str | os.PathLike, *, crs, transform, height: int, width: int,
                        points_crs=None, raster=None) -> ControlPoints:
    """Read a CSV of x, y, z control points and place them on the output grid.

    The CSV has a header naming ``x``, ``y`` and ``z`` columns (also ``easting``/
    ``northing``/``elevation``, ``lon``/``lat``/``height``, any case), or no header
    and the first three columns in that order. Points outside the output grid are
    dropped with a warning.

    Parameters
    ----------
    path : str or os.PathLike
    crs : rasterio.crs.CRS or None
        The output's CRS.
    transform : affine.Affine
        The output's transform.
    height, width : int
        The output's size.
    points_crs : str, optional
        The CRS of x and y (e.g. ``EPSG:4326``); None = the output's.
    raster : rasterio.windows.Window, optional
        Where the output grid is an area of interest of the input (``--bounds``,
        ``--aoi``): the whole input, in the output grid's pixels. Points on the input
        but off the grid then lie outside the area, not the raster (and a CRS is not
        what to check).
    """
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform as warp_points

    from tiledepth.errors import first_line
    from tiledepth.read import GDAL_ERRORS

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a spreadsheet's BOM)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the control points ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); control "
                         "points are a CSV of x, y, z") from exc
    x, y, z = _parse_points(text, path)
    if points_crs is not None:
        try:
            src_crs = CRS.from_user_input(points_crs)
        except CRSError as exc:
            raise OptionError(f"control_crs {points_crs!r} is not a CRS ({exc})") from exc
        if crs is None:
            raise InputError("the input has no CRS, so control points in control_crs "
                             f"{points_crs} cannot be placed on it")
        if src_crs != crs:
            try:
                xs, ys = warp_points(src_crs, crs, list(x), list(y))
            except GDAL_ERRORS as exc:
                raise InputError(
                    f"{path}: the control points cannot be put in the raster's CRS "
                    f"({first_line(exc)}); in {points_crs}, is x the longitude? A CSV of "
                    "lat, lon, z needs a header naming them (lat,lon,z)") from exc
            x, y = np.asarray(xs), np.asarray(ys)
    cols, rows = ~transform @ (x, y)
    rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    on_raster = inside
    if raster is not None:  # the grid is an area of interest of the input
        top, left = int(raster.row_off), int(raster.col_off)
        on_raster = (rows >= top) & (rows < top + int(raster.height)) & (cols >= left) & (
            cols < left + int(raster.width))
    if not on_raster.all():
        log.warning("%d of %d control points lie outside the raster and are ignored",
                    int((~on_raster).sum()), inside.size)
    outside_area = int((on_raster & ~inside).sum())
    if outside_area:
        log.warning("%d of %d control points lie outside the area of interest "
                    "(--bounds/--aoi) and are ignored", outside_area, inside.size)
    if on_raster.sum() < MIN_PAIRS:
        raise InputError(f"{path}: only {int(on_raster.sum())} control points lie on the "
                         f"raster; need {MIN_PAIRS}; check control_crs (--control-crs)")
    if inside.sum() < MIN_PAIRS:  # on the raster, but cut off by the area of interest
        raise InputError(f"{path}: only {int(inside.sum())} of the {int(on_raster.sum())} "
                         "control points on the raster lie in the area of interest "
                         f"(--bounds/--aoi); need {MIN_PAIRS}; widen the area or add points "
                         "inside it")
    return ControlPoints(rows[inside], cols[inside], z[inside])


_X, _Y, _Z = ("x", "easting", "lon", "longitude"), ("y", "northing", "lat", "latitude"), (
    "z", "elevation", "height", "alt", "altitude", "h")


def _delimiter(text: str) -> str:
    r"""The CSV's delimiter: a comma, or a semicolon or tab where the first line has one and
    no comma (a spreadsheet in a locale with decimal commas writes semicolons).

    Examples
    --------
    >>> _delimiter("x;y;z\n1,5;2;3"), _delimiter("x\ty\tz"), _delimiter("x,y,z")
    (';', '\t', ',')
    """
    first = next((line for line in text.splitlines() if line.strip()), "")
    for sep in (";", "\t"):
        if sep in first and "," not in first.replace(sep, ""):
            return sep
    if ";" in first:
        return ";"
    return ","


def _parse_points(text: str, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sep = _delimiter(text)
    lines = [[c.replace(",", ".") for c in row] if sep == ";" else row  # decimal commas
             for row in csv.reader(text.splitlines(), delimiter=sep)
             if row and any(c.strip() for c in row)]
    if not lines:
        raise InputError(f"{path}: no control points (an empty CSV)")
    header = [c.strip().lower() for c in lines[0]]
    try:
        [float(v) for v in header[:3]]
        idx, body = (0, 1, 2), lines
    except ValueError:
        idx = tuple(next((header.index(n) for n in names if n in header), -1)
                    for names in (_X, _Y, _Z))
        if -1 in idx:
            raise InputError(f"{path}: the header {lines[0]} must name x, y and z columns "
                             "(or leave the header out: x, y, z first)") from None
        body = lines[1:]
    try:
        data = np.array([[float(row[i]) for i in idx] for row in body], np.float64)
    except (ValueError, IndexError) as exc:
        raise InputError(f"{path}: a control point is not three numbers x, y, z ({exc})") from exc
    if data.size == 0:
        raise InputError(f"{path}: no control points below the header")
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        log.warning("%s: %d of %d control points have a NaN or infinite coordinate and are "
                    "ignored", path, int((~finite).sum()), len(data))
    data = data[finite]
    return data[:, 0], data[:, 1], data[:, 2]


@contextlib.contextmanager
def _open(path, what: str):
    """The open raster ``path``: a local file, or any GDAL source (a URL, ``s3://``, a
    ``/vsi`` path: :func:`tiledepth.sources.resolve`), read within the settings of remote
    reads (:data:`tiledepth.sources.REMOTE_OPTIONS`: timeouts, retries) where remote."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from tiledepth import sources
    from tiledepth.rasterfile import open_raster

    options = {}
    if sources.is_gdal_source(path):  # not a Path: it would make https:/h of https://h
        path = sources.resolve(path)
        options = sources.remote_options(path)
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such {what} file; check the path")
    with rasterio.Env(**options) if options else contextlib.nullcontext():
        try:
            src = open_raster(path)
        except RasterioIOError as exc:
            raise InputError(f"{path}: cannot read the {what} as a raster ({exc})") from exc
        with src:
            yield src
