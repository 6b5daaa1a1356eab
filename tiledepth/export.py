"""Export a depth or height map: point clouds (LAZ/LAS, PLY), 16-bit PNG, colour COG.

Every export streams the map in strips of rows (:data:`tiledepth.export_formats.CHUNK_PIXELS`
pixels at a time), so memory stays flat whatever the map's size (``benchmarks/export_memory.py``).
The format comes from the output's extension (:data:`FORMATS`); see
``docs/export.md`` for what each file holds.

Point clouds have one point per valid pixel (every ``step``-th row and column),
at the pixel's centre in the map's CRS (a map georeferenced by ground control
points: placed by an affine fit to them, in their CRS; one georeferenced by RPCs alone:
refused; one with no geotransform, GCPs or RPCs, a CRS or not: in pixels, y up, no CRS); z
is the map's value with "up is up": heights and inverse depth/disparity as they are, depth
negated, the uncertainty band as it is
(:func:`tiledepth.export_formats.z_sign`). Rasters keep the map's georeferencing, GCPs
and RPCs included. Each format's writer is in
:mod:`tiledepth.export_formats`.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
import os
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path

from tiledepth.errors import InputError, OptionError, OutputError, TiledepthError, write_error
from tiledepth.export_formats import (
    STRIPS_SUFFIX,
    ExportMap,
    block_rows_cache,
    colours,
    laspy_module,
    write_cog,
    write_las,
    write_ply,
    write_png,
    written_sidecars,
)
from tiledepth.safe_write import (
    check_name_length,
    discard,
    output_lock,
    place_together,
    remove_partials,
    tiledepth_png,
    world_files,
)

__all__ = ["FORMATS", "Export", "export", "export_format"]

log = logging.getLogger(__name__)

#: Output extension -> export format.
FORMATS: dict[str, str] = {".laz": "las", ".las": "las", ".ply": "ply", ".png": "png",
                           ".tif": "cog", ".tiff": "cog"}


@dataclass(frozen=True)
class Export:
    """What :func:`export` wrote."""

    path: Path
    format: str
    #: Points written (point clouds), or pixels with a value (rasters).
    count: int
    #: The value range written: z of the points, or the PNG's / colour map's range.
    low: float
    high: float


def export_format(path: str | os.PathLike) -> str:
    """The export format of an output path, from its extension.

    Examples
    --------
    >>> export_format("cloud.LAZ"), export_format("map.ply"), export_format("web.tif")
    ('las', 'ply', 'cog')
    """
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise OptionError(f"{path}: cannot tell the export format from {ext or 'no extension'!r}; "
                          f"use one of {', '.join(FORMATS)}")
    return FORMATS[ext]


def export(source: str | os.PathLike, path: str | os.PathLike, *, image=None, step: int = 1,
           value_range: tuple[float, float] | None = None, colormap: str | None = None,
           band: int = 1, overwrite: bool = False) -> Export:
    """Export band ``band`` of a map to ``path``, the format from its extension.

    Parameters
    ----------
    source : str or os.PathLike
        A tiledepth output (or any one-band raster of depth or heights: one that tiledepth
        did not write says heights by its band description, ``height``, else it is read as
        depth, with a warning for a point cloud). A local file: a URL or GDAL ``/vsi`` path
        (as ``path`` and ``image``) is refused in one line, to be downloaded first.
    path : str or os.PathLike
        ``.laz``/``.las`` (point cloud, CRS as WKT), ``.ply`` (binary point cloud),
        both placed by the map's transform or an affine fit to its GCPs,
        ``.png`` (16-bit grey, world file) or ``.tif`` (RGBA Cloud Optimized GeoTIFF
        of the colour-mapped map; needs ``colormap``).
    image : str or os.PathLike, optional
        An image (e.g. the orthophoto) whose first three bands colour the points,
        read on the map's grid (reprojected if its grid differs).
    step : int
        Keep every ``step``-th row and column (point clouds).
    value_range : tuple of float, optional
        Values mapped to the ends of the PNG's 1..65535 or of the colour map.
        Default: the map's minimum and maximum (PNG), its 2nd and 98th
        percentiles (colour map).
    colormap : str, optional
        A name from :data:`tiledepth.preview.COLORMAPS` (``.tif`` only).
    band : int
        The band exported (band 2 of an ``--uncertainty`` run: the spread, as it is).
    overwrite : bool
        Replace an existing ``path``, and the files beside it that place a raster
        (``.aux.xml``, world files) that this export writes. Those it does not write are
        removed where they are tiledepth's (beside a PNG of an earlier export), else
        refused (OutputError) before anything is written, ``overwrite`` or not. All or
        nothing: an error or Ctrl-C before ``path`` is in place puts every old file back
        (:func:`tiledepth.safe_write.place_together`); a SIGKILL or power cut among the
        renames is finished or undone by the next export, preview or run of that stem (its
        journal, ``.<stem>.placing.json``).

    Returns
    -------
    Export

    Raises
    ------
    WriteError
        Writing the export failed (a full disk, say): one line, as ``tiledepth run``'s.
    BusyError
        Another export, preview or run of a file with the stem of ``path`` is writing it now
        (they hold its lock, :func:`tiledepth.safe_write.output_lock`).
    """
    # 1. Check inputs (a URL first: as a Path, its "//" is folded, and it is no such file).
    _check_local(source, path, image)
    source, path = Path(source), Path(path)
    fmt = export_format(path)
    step, band, value_range = _check_export(source, path, fmt, image=image, step=step,
                                            value_range=value_range, colormap=colormap,
                                            band=band, overwrite=overwrite)

    # 2. Write under a temporary name, then move the file and its sidecars to their names,
    # holding the output's lock (by its stem, as a run's) until they are in place: another
    # export, preview or run of the stem would remove this one's temporary file as a killed
    # one's, or interleave its renames with these (its PNG beside this one's world file).
    # A point cloud is one file, placed by one rename, that no file beside it is named after:
    # the lock of its own name (an export of o.tif to o.laz beside one to o.png, or a
    # preview, runs), and no journal of the stem's to finish (not under the stem's lock).
    cloud = fmt in ("las", "ply")
    with output_lock(path, option="OUTPUT", own_name=cloud):
        # first, what writers of the stem killed meanwhile (SIGKILL, a job's time limit) left:
        # a placement half done, finished or undone (its journal), and this name's partials
        remove_partials(path, recover=not cloud, left_by="an export")
        if not overwrite and os.path.lexists(path):  # placed by another since it was checked
            raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
        result = _export_locked(source, path, fmt, image=image, step=step,
                                value_range=value_range, colormap=colormap, band=band,
                                overwrite=overwrite)
    return Export(path, fmt, result[0], result[1], result[2])


def _export_locked(source: Path, path: Path, fmt: str, *, image, step: int,
                   value_range: tuple[float, float] | None, colormap: str | None, band: int,
                   overwrite: bool) -> tuple[int, float, float]:
    """The writing and placing of :func:`export`, checked, under the output's lock; returns
    the count and value range written."""
    import rasterio

    from tiledepth.rasterfile import open_raster
    from tiledepth.read import GDAL_ERRORS, GDAL_OPTIONS

    tmp = _temp_path(path)
    try:
        with rasterio.Env(**GDAL_OPTIONS):
            try:  # only here is a GDAL error the map's; later, the export's own files' (the
                ds = open_raster(source)  # map's reads raise InputError themselves)
            except GDAL_ERRORS as exc:
                raise InputError(f"{source}: cannot read it as a raster ({exc})") from exc
            with ds:
                if not 1 <= band <= ds.count:
                    raise InputError(f"{source}: has {ds.count} band(s), no band {band}")
                m = ExportMap(ds, band, step)
                if fmt in ("las", "ply") and not m.kind_said:
                    _warn_unsaid_kind(source, band)
                # A COG with a geotransform is placed by it, never by a world file (GDAL
                # reads one only for a GeoTIFF without): x.wld beside it is not its (that of
                # an export to x.png, say); one without (GCPs, RPCs, none) would be placed.
                world = fmt != "cog" or ds.transform.is_identity
                if fmt not in ("las", "ply"):  # refused now, not once the export is written
                    _check_sidecars(path, fmt, world=world, overwrite=overwrite,
                                    written=written_sidecars(m, fmt, path))
                # strips of CHUNK_PIXELS are a fraction of a block row of a wide map (100 of
                # 512 rows at 20 000 px): with less than a block row in the cache, each strip
                # decoded its block row again (20 000 x 1024 px to PNG: 8.5 s, not 4.3 s)
                with block_rows_cache(ds):
                    result = _write(m, tmp, fmt, ds, image=image, value_range=value_range,
                                    colormap=colormap)
        # The sidecars of an old file at ``path`` that this export does not write (an old
        # export's world file and CRS beside a map with no georeferencing) would place the
        # new file: removed once it is in place where they are tiledepth's, else refused
        # (by _check_sidecars, before writing: this is the same rule on what was written).
        sides = [] if fmt in ("las", "ply") else list(zip(_sidecars(tmp, world=world),
                                                          _sidecars(path, world=world),
                                                          strict=True))
        stale = [dst for src, dst in sides if not src.exists() and os.path.lexists(dst)]
        if stale and not _earlier_export(path, fmt):
            raise OutputError(_placed_by(stale[0], path))
        # All or nothing, the file last: a new PNG beside the old .wld and .aux.xml is placed
        # by them (a Ctrl-C between the renames left it so, saying nothing was written).
        place_together((tmp, path), [(src, dst) for src, dst in sides if src.exists()],
                       stale, option="OUTPUT")
    except (OSError, *GDAL_ERRORS) as exc:  # the map opened: writing the export failed
        if isinstance(exc, TiledepthError):  # (GDAL's CPLE_* too: libpng's "Write Error")
            raise
        raise write_error(path, exc, "OUTPUT") from exc
    finally:  # never raising: an error here would hide the export's own, or say that an
        # export placed whole failed (a name GDAL's files beside tmp make too long)
        for left in (tmp, *_sidecars(tmp)):
            discard(left)
    return result


def _warn_unsaid_kind(source: Path, band: int) -> None:
    """Say, in one line, that band ``band`` of ``source`` does not say what its values are (no
    description or tag of tiledepth's: a DEM that tiledepth did not write), so that its
    points' z is its values negated, as depth's (docs/export.md, "What z is"), and how a
    height raster says so. Not refused: a depth raster of another tool is exported so, and
    a raster export (PNG, COG) keeps the values as they are."""
    log.warning("%s: band %d does not say what its values are (no band description, no "
                "tiledepth tag): exported as depth, its points' z the values negated; for "
                "heights (a DEM), say so first: rio edit-info --bidx %d --description height %s",
                source, band, band, shlex.quote(str(source)))


def _temp_path(path: Path) -> Path:
    """The temporary name an export to ``path`` is written under, beside it (what
    :func:`tiledepth.safe_write.remove_partials` removes): ``.<name>.<8 hex
    digits>.partial<suffix>``, the suffix kept for the writers that go by it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def _longest_name(path: Path, fmt: str) -> str:
    """The longest name of a file an export to ``path`` writes beside it: a point cloud's
    temporary file; a raster's temporary strips' ``.aux.xml``
    (:func:`tiledepth.export_formats._through_tiff`; longer than the temporary file's own
    ``.aux.xml``, and than GDAL's COG overviews, ``.ovr.tmp`` and ``.msk.ovr.tmp``)."""
    tmp = _temp_path(path).name
    return tmp if fmt in ("las", "ply") else tmp + STRIPS_SUFFIX + ".aux.xml"


def _check_export(source: Path, path: Path, fmt: str, *, image, step: int,
                  value_range: tuple[float, float] | None, colormap: str | None,
                  band: int, overwrite: bool,
                  ) -> tuple[int, int, tuple[float, float] | None]:
    """Raise InputError, OptionError or OutputError for a bad :func:`export` request; return
    ``step``, ``band`` and ``value_range`` as the export uses them: ints (a NumPy integer
    too) and two floats."""
    from tiledepth.preview import COLORMAPS

    if not source.is_file():
        raise InputError(f"{source}: no such file; check the path")
    if image is not None and not Path(image).is_file():
        raise InputError(f"{image}: no such file; check --image")
    if _whole(step) is None or step < 1:
        raise OptionError(f"step must be a whole number >= 1, got {step!r}")
    if _whole(band) is None:  # whether the map has it is known once it is open
        raise OptionError(f"band must be a whole number (1 is the first band), got {band!r}")
    ends = _range(value_range)
    if ends is not None and not ends[1] > ends[0]:
        raise OptionError(f"range must be LOW HIGH with HIGH > LOW, got {value_range!r}")
    if fmt == "cog" and colormap is None:
        raise OptionError(f"{path}: a .tif export is a colour-mapped COG; give --colormap "
                          f"({', '.join(COLORMAPS)})")
    if colormap is not None and fmt != "cog":
        raise OptionError("--colormap goes with a .tif output")
    if colormap is not None and colormap not in COLORMAPS:
        raise OptionError(f"colormap must be one of {', '.join(COLORMAPS)}, got {colormap!r}")
    if image is not None and fmt not in ("las", "ply"):
        raise OptionError("--image colours point clouds (.laz, .las, .ply)")
    if step != 1 and fmt not in ("las", "ply"):
        raise OptionError("--step thins point clouds (.laz, .las, .ply)")
    if ends is not None and fmt in ("las", "ply"):  # their z is the map's value, as it is
        raise OptionError("--range goes with a .png or .tif output; point clouds keep the "
                          "map's values")
    # first: a name too long for the file system fails every look at it (ENAMETOOLONG)
    check_name_length(path, _longest_name(path, fmt), option="OUTPUT")
    if path.resolve() == source.resolve():
        raise OutputError(f"{path}: is the map itself; choose another output")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: output folder does not exist; create it first")
    if fmt == "las":  # before the map is read: laspy without lazrs writes no LAZ
        laspy_module(laz=path.suffix.lower() == ".laz")
    return _whole(step), _whole(band), ends


def _check_local(source, path, image) -> None:
    """Raise InputError (OutputError for ``path``) where the map, the output or ``image``
    is a URL or a GDAL path (``s3://``, ``/vsicurl/...``): an export reads and writes local
    files only (its checks look at files on disk; its temporary files, lock and renames are
    beside ``path``; :func:`tiledepth.sources.check_local`)."""
    from tiledepth.sources import check_local

    check_local(source, "export", "export the local copy")
    check_local(image, "export", "give the local copy to --image")
    check_local(path, "export", "export to a local file, then upload it", output="OUTPUT")


def _whole(value) -> int | None:
    """``value`` as an int where it is a whole number (a NumPy integer too: rasterio took
    ``band=np.int64(1)`` for a list of bands and failed), else None (a bool, a float, text)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _range(value_range) -> tuple[float, float] | None:
    """``value_range`` as two finite floats (None as it is), else OptionError: checked before
    the export starts, not where a writer unpacks or compares it."""
    if value_range is None:
        return None
    try:
        low, high = value_range
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                   for v in (low, high)):
            raise TypeError
        low, high = float(low), float(high)  # (an int too large for a float: OverflowError)
    except (TypeError, ValueError, OverflowError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high)):
        raise OptionError(f"range must be two finite numbers LOW HIGH, got {value_range!r}")
    return low, high


def _check_sidecars(path: Path, fmt: str, *, world: bool, overwrite: bool,
                    written: list[Path]) -> None:
    """Raise OutputError for a file beside the raster export ``path`` that would place it
    (:func:`_sidecars`; ``world``: its world files too), before anything is written: one
    the export writes (``written``) is replaced only with ``overwrite``; one it does not
    is removed with ``overwrite`` where it is tiledepth's (:func:`_earlier_export`), else
    refused whatever the options, as :func:`export` would refuse it once written."""
    for side in _sidecars(path, world=world):
        if not os.path.lexists(side):
            continue
        if side not in written and not _earlier_export(path, fmt):
            raise OutputError(_placed_by(side, path))
        if not overwrite:
            raise OutputError(f"{side}: already exists (it would be the georeferencing "
                              f"of {path.name}); pass --overwrite to replace it")


def _earlier_export(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a PNG of an earlier export, whose sidecars are tiledepth's."""
    return fmt == "png" and tiledepth_png(path)


def _placed_by(side: Path, path: Path) -> str:
    """The refusal of a file ``side`` that would place the new ``path``, not tiledepth's."""
    return (f"{side}: GDAL would place the new {path.name} by it (this export writes none "
            "to replace it), and it is not an earlier tiledepth export's; move it away or "
            "choose another output")


def _write(m: ExportMap, tmp: Path, fmt: str, ds, *, image, value_range,
           colormap: str | None) -> tuple[int, float, float]:
    """Write ``m`` to ``tmp`` as ``fmt``; return its count and value range."""
    from tiledepth.preview import COLORMAPS

    if fmt in ("las", "ply"):
        # Where the points go, first: a map georeferenced by GCPs that no affine fit places is
        # refused before anything is read, and --image is put on the grid the points are on.
        with colours(image, ds, m.placement) as rgb:
            return (write_las if fmt == "las" else write_ply)(m, tmp, rgb)
    if fmt == "png":
        return write_png(m, tmp, value_range)
    return write_cog(m, tmp, value_range, COLORMAPS[colormap])


def _sidecars(path: Path, *, world: bool = True) -> list[Path]:
    """The files GDAL may write, or read, beside a raster export and that place it: its
    ``.aux.xml`` and, with ``world``, its world files (``.wld``, and ``.pgw``/``.pngw`` or
    ``.tfw``/``.tifw``)."""
    return [path.with_name(path.name + ".aux.xml"), *(world_files(path) if world else [])]

