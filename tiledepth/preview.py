"""Preview: a colour-mapped PNG quicklook of an output, optionally hillshaded.

:func:`colorize` and :func:`hillshade` are pure functions on arrays;
:func:`write_preview` reads a decimated copy of the output (GDAL uses its
overviews; NaN is skipped as no data, :func:`_nan_declared`) at most :data:`MAX_SIZE` pixels
on the long side and writes an RGBA PNG, transparent where the output is NaN, with the
output's georeferencing (its transform and CRS, or its ground control points scaled to the
PNG; its RPCs, scaled, alone or beside a transform) beside it (``.aux.xml``) so that QGIS
places it, and a text chunk that marks it as tiledepth's: a later preview replaces it, but
never a PNG tiledepth did not write unless told to (``overwrite``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from tiledepth.errors import InputError, OptionError, OutputError
from tiledepth.export_formats import up_sign
from tiledepth.safe_write import PNG_SIGNATURE, preview_path  # (where every derived path is made)

__all__ = ["COLORMAPS", "MAX_SIZE", "colorize", "hillshade", "preview_path", "render_preview",
           "write_preview"]

#: Long side of a preview, in pixels, at most.
MAX_SIZE = 2048
#: Pixels :func:`colorize` colours at a time (strips of rows: its float64 temporaries take
#: about 120 bytes a pixel, 30 MB a strip).
COLORIZE_PIXELS = 2**18
#: Pixels :func:`hillshade` shades at a time (strips of rows, as :data:`COLORIZE_PIXELS`:
#: its float64 temporaries take about 100 bytes a pixel, 26 MB a strip).
HILLSHADE_PIXELS = 2**18
#: Percentiles of the valid values that map to the ends of the colour map.
STRETCH = (2.0, 98.0)
#: Viridis, sampled at 9 points (low values dark purple, high values yellow).
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64)
#: Colour maps by name (``tiledepth export --colormap``): evenly spaced RGB stops, low to high.
COLORMAPS: dict[str, np.ndarray] = {
    "viridis": _VIRIDIS,
    "magma": np.array([
        [0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
        [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191]], np.float64),
    "grey": np.array([[0, 0, 0], [255, 255, 255]], np.float64),
}


def colorize(values: np.ndarray, *, stretch: tuple[float, float] = STRETCH,
             shade: np.ndarray | None = None, limits: tuple[float, float] | None = None,
             table: np.ndarray = _VIRIDIS) -> np.ndarray:
    """Colour-map a 2-D array with a robust percentile stretch.

    Parameters
    ----------
    values : ndarray of shape (H, W)
        NaN = no data (transparent).
    stretch : tuple of float
        Percentiles of the valid values that map to the colour map's ends.
    shade : ndarray of shape (H, W), optional
        Hillshade in [0, 1] to multiply in (see :func:`hillshade`).
    limits : tuple of float, optional
        The values at the colour map's ends, instead of the stretch's percentiles
        (the same colours block by block).
    table : ndarray of shape (K, 3)
        The colour map's stops (one of :data:`COLORMAPS`).

    Returns
    -------
    ndarray of shape (4, H, W), uint8
        RGBA, band-first as rasterio writes it; alpha 0 where ``values`` is NaN.

    Examples
    --------
    >>> import numpy as np
    >>> rgba = colorize(np.array([[0.0, 1.0], [np.nan, 0.5]]))
    >>> rgba.shape, rgba.dtype, rgba[3].tolist()
    ((4, 2, 2), dtype('uint8'), [[255, 255], [0, 255]])
    >>> rgba[:3, 0, 0].tolist(), rgba[:3, 0, 1].tolist()  # the colour map's ends
    ([68, 1, 84], [253, 231, 37])
    """
    v = np.asarray(values, np.float64)
    valid = np.isfinite(v)
    out = np.zeros((4, *v.shape), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(v[valid], stretch) if limits is None else limits
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    # in strips of rows: the float64 temporaries below take about 120 bytes a pixel (500 MB
    # for a whole 2048 px preview); each pixel's colour is its own, so the bytes are the same
    rows = max(1, COLORIZE_PIXELS // max(1, v.shape[-1]))
    for r0 in range(0, v.shape[0], rows):
        s = slice(r0, r0 + rows)
        x = np.clip((np.where(valid[s], v[s], lo) - lo) / (hi - lo), 0.0, 1.0)
        pos = x * (len(table) - 1)
        i = np.minimum(pos.astype(int), len(table) - 2)
        f = (pos - i)[..., None]
        rgb = table[i] * (1 - f) + table[i + 1] * f  # (rows, W, 3)
        if shade is not None:
            rgb = rgb * (0.35 + 0.65 * np.clip(shade[s], 0, 1))[..., None]
        out[:3, s] = np.moveaxis(np.round(rgb), -1, 0).astype(np.uint8)
    out[3] = np.where(valid, 255, 0)
    return out


def hillshade(values: np.ndarray, *, azimuth: float = 315.0, altitude: float = 45.0,
              exaggeration: float | None = None) -> np.ndarray:
    """Hillshade of a 2-D array, in [0, 1], lit from ``azimuth`` (degrees from north).

    Parameters
    ----------
    values : ndarray of shape (H, W)
        Heights (larger = higher); NaN is filled from neighbours for the shading.
    azimuth, altitude : float
        Sun direction and elevation in degrees.
    exaggeration : float, optional
        Gradient scale; None scales the 90th percentile of the gradient
        magnitude to a 45 degree slope (values here are often relative, not metres).

    Returns
    -------
    ndarray of shape (H, W), float32

    Examples
    --------
    >>> import numpy as np
    >>> ramp = np.tile(np.arange(5.0), (5, 1))  # rising to the east
    >>> shade = hillshade(ramp)
    >>> bool(shade.mean() > hillshade(-ramp).mean())  # faces west: lit from the north-west
    True
    >>> hillshade(np.arange(4.0)[None]).shape  # one row
    (1, 4)
    """
    v = np.asarray(values, np.float64)
    valid = np.isfinite(v)
    if not valid.any():
        return np.ones(v.shape, np.float32)
    if not valid.all():
        from scipy import ndimage

        idx = ndimage.distance_transform_edt(~valid, return_distances=False,
                                             return_indices=True)
        v = v[tuple(idx)]
        del idx
    del valid
    # in strips of rows: the float64 temporaries below take about 100 bytes a pixel (over
    # 400 MB for a whole 2048 px preview); each pixel's shade is its own and its gradients
    # are those of the whole map (_gradients), so the result is the same to the bit
    rows = max(1, HILLSHADE_PIXELS // max(1, v.shape[1]))
    strips = [slice(r0, min(r0 + rows, v.shape[0])) for r0 in range(0, v.shape[0], rows)]
    if exaggeration is None:
        mag = np.empty(v.shape, np.float64)  # every pixel's, for the percentile
        for s in strips:
            dy, dx = _gradients(v, s)
            np.hypot(dx, dy, out=mag[s])
        p90 = float(np.percentile(mag, 90, overwrite_input=True))  # (sorts it, no copy)
        del mag
        exaggeration = 1.0 / p90 if p90 > 0 else 1.0
    az, alt = np.radians(360.0 - azimuth + 90.0), np.radians(altitude)
    out = np.empty(v.shape, np.float32)
    for s in strips:
        dy, dx = _gradients(v, s)
        dx, dy = dx * exaggeration, dy * exaggeration
        slope = np.arctan(np.hypot(dx, dy))
        aspect = np.arctan2(dy, -dx)  # dy grows southward (down the rows), as in Horn's method
        shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
        out[s] = np.clip(shade, 0.0, 1.0)
    return out


def _gradients(v: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """The gradients (dy, dx) of ``v`` (H, W) at ``rows``, as ``np.gradient`` of the whole
    ``v`` gives them: dy from a block one row wider on each side (central differences
    inside, one-sided at the map's own edges only).

    Examples
    --------
    >>> v = np.arange(20.0).reshape(4, 5) ** 2
    >>> dy, dx = _gradients(v, slice(1, 3))
    >>> bool((dy == np.gradient(v, axis=0)[1:3]).all())
    True
    >>> bool((dx == np.gradient(v, axis=1)[1:3]).all())
    True
    """
    # (flat along an axis one pixel long: a 1 x N map is shaded by its one direction)
    start, stop = rows.start, rows.stop
    if v.shape[0] > 1:
        lo = max(0, start - 1)
        dy = np.gradient(v[lo:min(v.shape[0], stop + 1)], axis=0)[start - lo:stop - lo]
    else:
        dy = np.zeros_like(v[rows])
    dx = np.gradient(v[rows], axis=1) if v.shape[1] > 1 else np.zeros_like(v[rows])
    return dy, dx


_hillshade = hillshade  # write_preview's flag has the same name


def _is_png(path: Path) -> bool:
    """Whether the file at ``path`` starts as a PNG does."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def _check_replace(path: Path, *, overwrite: bool) -> None:
    """Raise OutputError where a preview at ``path`` would replace a file that tiledepth did
    not write (:func:`tiledepth.safe_write.tiledepth_wrote_png`), without ``overwrite``."""
    from tiledepth.safe_write import tiledepth_wrote_png

    if overwrite or not path.is_file() or tiledepth_wrote_png(path):
        return
    if not _is_png(path):
        raise OutputError(f"{path}: exists and is not a PNG; pass --overwrite to replace it, "
                          "or choose another -o")
    # (a preview of a tiledepth that did not mark them is not told from a user's photo)
    raise OutputError(f"{path}: exists and is a PNG that tiledepth did not write (or an older "
                      "preview, not marked as tiledepth's); pass --overwrite to replace it, or "
                      "choose another -o")


def _scaled_rpcs(rpcs, fy: float, fx: float):
    """``rpcs`` (a ``rasterio.rpc.RPC``) for the image resampled by ``fy`` rows and ``fx``
    columns: its line and sample offsets and scales scaled alike."""
    from rasterio.rpc import RPC

    fields = rpcs.to_dict()
    fields.update(line_off=rpcs.line_off * fy, line_scale=rpcs.line_scale * fy,
                  samp_off=rpcs.samp_off * fx, samp_scale=rpcs.samp_scale * fx)
    return RPC(**fields)


def write_preview(source: str | os.PathLike, path: str | os.PathLike | None = None, *,
                  max_size: int = MAX_SIZE, hillshade: bool = False, band: int = 1,
                  overwrite: bool = False) -> Path:
    """Write a colour-mapped RGBA PNG quicklook of band ``band`` of a raster.

    Parameters
    ----------
    source : str or os.PathLike
        A tiledepth output (or any one-band raster).
    path : str or os.PathLike, optional
        The PNG (named ``.png``); default :func:`preview_path` of ``source``; a folder (ending
        in ``/``, or ``.``): that name inside it. Replaced if it is a PNG that tiledepth wrote
        (a preview, marked so by :func:`tiledepth.safe_write.mark_png`, or an export), any
        other regular file only with ``overwrite``; never the source itself, nor a device,
        FIFO or folder. A world file beside it (``.wld``, ``.pgw``,
        ``.pngw``), which GDAL would read ahead of the PNG's ``.aux.xml``, is removed
        where it is that of a PNG of ``tiledepth export`` replaced here, else refused.
    max_size : int
        Long side of the PNG, at most (the raster's own size if smaller); 1 or more.
    hillshade : bool
        Shade with a hillshade. Heights (and inverse depth, disparity, a spread)
        shade as they are; depth (larger = farther) is shaded as its negative, so
        hills stand up in both (the exports' rule,
        :func:`tiledepth.export_formats.up_sign`).
    band : int
        Band to show.
    overwrite : bool
        Replace a file at ``path`` that tiledepth did not write (a user's photo
        ``scene.png`` beside ``scene.tif``), or a preview of a tiledepth that did not mark
        them.

    Returns
    -------
    pathlib.Path
        The PNG written: all or nothing, with its ``.aux.xml``
        (:func:`tiledepth.safe_write.place_together`, under the lock of its stem).

    Raises
    ------
    InputError
        ``source`` is no local file (a URL or GDAL ``/vsi`` path: download it first), or a
        folder.
    OptionError
        ``max_size`` below 1.
    OutputError
        ``path`` holds a file that tiledepth did not write, without ``overwrite``; or cannot
        or must not be written (the source, a folder, a name not ending in ``.png``, a world
        file beside it that tiledepth did not write, a URL).
    BusyError
        Another preview, export or run of a file with the PNG's stem is writing it now.
    """
    from tiledepth.read import GDAL_ERRORS
    from tiledepth.safe_write import (
        OutputPaths,
        check_name_length,
        check_output_paths,
        check_world_files,
        discard,
        output_file,
        output_lock,
        place_together,
        remove_partials,
        temp_path,
        write_error,
    )
    from tiledepth.sources import check_local

    if max_size < 1:  # (a ZeroDivisionError for 0; a full-size PNG below it)
        raise OptionError(f"max_size must be 1 or more, got {max_size}")
    # local files only (its checks, lock and renames are on disk)
    check_local(source, "preview", "preview the local copy")
    check_local(path, "preview", "write it to a local file, then upload it", output="-o")

    source = Path(source)
    path = preview_path(source) if path is None else output_file(path, preview_path(source).name)
    if source.is_dir():
        raise InputError(f"{source}: is a folder, not a raster; give the path of the raster "
                         "to preview")
    if not source.is_file():
        raise InputError(f"{source}: no such file; check the path")
    aux = path.with_name(path.name + ".aux.xml")
    # the longest name written beside it: the temporary PNG's .aux.xml (GDAL's)
    check_name_length(path, temp_path(path).name + ".aux.xml", option="-o")
    check_output_paths(OutputPaths(output=path, sidecar=None, preview_aux=aux), [source],
                       overwrite=True, geotiff=False)
    _check_replace(path, overwrite=overwrite)  # it replaces tiledepth's PNG, nothing a user's
    if not path.name.lower().endswith(".png"):  # PNG bytes under .tif: tools misread it
        # (by the name's end: `-o .png`, a name Python gives no suffix, is a PNG too)
        named = f"a {path.suffix} file" if path.suffix else "a file without an extension"
        raise OutputError(f"{path}: a preview is a PNG, not {named}; name it "
                          f"{path.with_suffix('.png').name} (a colour GeoTIFF: tiledepth "
                          "export --colormap)")
    # Under the output's lock (by its stem, as a run's) until the files are in place: another
    # preview, export or run of the stem would remove this one's temporary file as a killed
    # one's, or interleave its renames with these (its PNG beside this one's .aux.xml).
    with output_lock(path, option="-o"):
        # what a killed preview, export or run of the stem left (SIGKILL; a run without
        # --preview too): its placement finished or undone (its journal), its partial files
        remove_partials(path)
        _check_replace(path, overwrite=overwrite)  # (again: the recovery may have put one back)
        # an export's world file beside the PNG it replaces: GDAL would place the preview by it
        stale = check_world_files(path)
        tmp = temp_path(path)
        tmp_aux = tmp.with_name(tmp.name + ".aux.xml")
        try:
            render_preview(source, tmp, max_size=max_size, hillshade=hillshade, band=band)
            # All or nothing, the PNG last (a Ctrl-C between the renames left the old PNG with
            # the new .aux.xml); without a new .aux.xml, not a stale one beside the new PNG.
            new_aux = tmp_aux.exists()
            place_together((tmp, path), [(tmp_aux, aux)] if new_aux else [],
                           [*([] if new_aux else [aux]), *stale], option="-o")
        except (OSError, *GDAL_ERRORS) as exc:  # GDAL's own too: libpng's "Write Error" on a
            if isinstance(exc, (InputError, OutputError)):  # full disk: CPLE_AppDefinedError
                raise
            raise write_error(path, exc, "-o") from exc
        finally:  # never raising: an error here would hide the preview's own, or fail a
            discard(tmp)  # preview placed whole
            discard(tmp_aux)
    return path


def _nan_declared(ds, source: Path, band: int) -> str | None:
    """An in-memory VRT of band ``band`` of ``ds`` (``source``) that declares NaN its nodata,
    over its full resolution and each of its overviews, where GDAL's average (the decimated
    read of a preview) would spread NaN, whose average with anything is NaN: a float band
    that declares no nodata and has no mask (NaN, a GIS tool's holes, is then no data too: a
    preview of scattered holes came out wholly transparent), or that declares a finite one
    (-9999 fill beside NaN holes: the finite value's pixels left unpainted, NaN as well, so
    both are skipped as one nodata, as :mod:`tiledepth.readers` reads a run's input). None
    for any other band, read as it is (a NaN nodata, which GDAL skips; an integer band; an
    alpha band or internal mask).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from rasterio.enums import MaskFlags
    >>> ints = SimpleNamespace(dtypes=["int16"], mask_flag_enums=[[MaskFlags.all_valid]],
    ...                        nodatavals=[None])
    >>> _nan_declared(ints, Path("dem.tif"), 1) is None
    True
    """
    from rasterio.enums import MaskFlags

    from tiledepth.rasterfile import open_raster
    from tiledepth.read import vrt_band, vrt_xml
    from tiledepth.readers import gdal_name

    dtype, flags, own = ds.dtypes[band - 1], ds.mask_flag_enums[band - 1], ds.nodatavals[band - 1]
    if np.dtype(dtype).kind != "f":
        return None
    if MaskFlags.all_valid in flags:
        skip = None
    elif flags == [MaskFlags.nodata] and own is not None and np.isfinite(own):
        skip = own
    else:
        return None
    name = gdal_name(source)
    sizes = []
    for level in range(len(ds.overviews(band))):  # (GDAL's sizes, rounded as it rounds them)
        with open_raster(name, overview_level=level) as opened:
            sizes.append((opened.width, opened.height))

    def described(width: int, height: int, level: int | None, overviews=()) -> str:
        return vrt_xml(width, height, [vrt_band(name, band, dtype, nodata=float("nan"),
                                                level=level, skip=skip)], overviews=overviews)

    return described(ds.width, ds.height, None,
                     tuple(described(*size, level) for level, size in enumerate(sizes)))


def render_preview(source: str | os.PathLike, path: str | os.PathLike, *,
                   max_size: int = MAX_SIZE, hillshade: bool = False, band: int = 1) -> None:
    """Render the PNG of :func:`write_preview` to ``path`` itself (a temporary file of the
    caller's; GDAL writes the georeferencing beside it, ``path + '.aux.xml'``), marked as
    tiledepth's (:func:`tiledepth.safe_write.mark_png`: a later preview replaces it)."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.enums import Resampling

    from tiledepth.export_formats import block_rows_cache
    from tiledepth.rasterfile import open_raster
    from tiledepth.read import GDAL_ERRORS
    from tiledepth.safe_write import mark_png

    source = Path(source)
    try:
        with open_raster(source) as ds:
            if not 1 <= band <= ds.count:
                raise InputError(f"{source}: has {ds.count} band(s), no band {band}")
            factor = max(1.0, max(ds.height, ds.width) / max_size)
            shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
            # GDAL's block cache scoped to two block rows: a raster without overviews is read
            # whole at full resolution (its default, 5 % of the RAM, held 1.4 GB for a 20000 px
            # square float32 raster); through a VRT that declares NaN its nodata where the
            # band does not, else GDAL's average spreads NaN (_nan_declared)
            nan = _nan_declared(ds, source, band)
            with block_rows_cache(ds), \
                    contextlib.nullcontext(ds) if nan is None else open_raster(nan) as pixels:
                data = pixels.read(band if nan is None else 1, out_shape=shape,
                                   resampling=Resampling.average,
                                   masked=True).astype(np.float64).filled(np.nan)
            up = up_sign(ds.tags(), ds.descriptions[band - 1])  # as the exports
            transform = ds.transform @ ds.transform.scale(ds.width / shape[1],
                                                          ds.height / shape[0])
            crs, georef = ds.crs, not ds.transform.is_identity
            # A map georeferenced by GCPs (no geotransform): its GCPs, on the preview's
            # smaller grid, and their CRS.
            gcps, gcp_crs = ds.gcps if not georef else ([], None)
            gcps = [GroundControlPoint(g.row * shape[0] / ds.height,
                                       g.col * shape[1] / ds.width, g.x, g.y, g.z, g.id,
                                       g.info) for g in gcps]
            # Its RPCs (alone, or beside a geotransform: an ortho-ready product's, which a
            # run keeps), their image coordinates on the preview's grid (a quicklook: within
            # half a preview pixel).
            rpcs = _scaled_rpcs(ds.rpcs, shape[0] / ds.height, shape[1] / ds.width) \
                if not gcps and ds.rpcs is not None else None
    except GDAL_ERRORS as exc:  # (CPLE_* too: the source's, not the preview's write error)
        raise InputError(f"{source}: cannot read it as a raster ({exc})") from exc
    shade = None
    if hillshade:
        shade = _hillshade(up * data)
    rgba = colorize(data, shade=shade)
    profile = dict(driver="PNG", width=shape[1], height=shape[0], count=4, dtype="uint8")
    if georef:
        profile.update(transform=transform, **({"crs": crs} if crs else {}))
    elif gcps:  # rasterio needs a CRS with GCPs, an empty one where they have none
        profile.update(gcps=gcps, crs=gcp_crs or rasterio.crs.CRS())
    if rpcs is not None:  # (in the .aux.xml, beside the transform's CRS where it has one)
        profile.update(rpcs=rpcs)
    with open_raster(path, "w", **profile) as dst:  # a failed write: the caller's to report
        dst.write(rgba)
    mark_png(path)
