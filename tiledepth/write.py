"""Write: the fused depth map as a GeoTIFF on the input's grid.

Float32, one band, tiled 512 x 512, DEFLATE with floating-point predictor,
``BIGTIFF=IF_SAFER``, NaN nodata, the input's CRS and transform (or GCPs), its RPCs and
``AREA_OR_POINT``, provenance tags. The file is written under a temporary name in the output
folder and renamed only when complete; on any error or interruption the
temporary file is removed, so a file at the output path is always whole.

Every file a run writes goes through :mod:`tiledepth.safe_write` (its paths
derived and checked, each finished file moved to its name). The GeoTIFF is
verified (reopened, its last block and an overview read) and its companions
written before anything is renamed, the GeoTIFF last. With ``overwrite``, all or
nothing: each file replaced, and each companion of the old output this run does not
write (its GDAL ``.aux.xml``, ``.ovr`` and ``.msk`` included: GDAL would apply them to the new
file), is kept aside until the GeoTIFF is in place, and put back if anything fails. The
renames are written down first (:func:`tiledepth.safe_write.write_placement`): those of a run
killed among them (SIGKILL, power cut) are finished or undone by the next run of the output
(:func:`tiledepth.safe_write.recover_placement`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from tiledepth.errors import OutputError, write_error
from tiledepth.progress import lap
from tiledepth.rasterfile import open_raster
from tiledepth.safe_write import (
    Placement,
    _left_alone,
    _recover_locked,
    aside_path,
    companion_paths,
    place,
    placement_journal,
    preview_path,
    removed_on_replace,
    set_aside,
    temp_path,
    verify_geotiff,
    write_placement,
)

__all__ = ["PLACED", "PLACING", "ArraySink", "GeoTiffWriter", "OutputGrid", "output_windows",
           "window_rpcs"]

log = logging.getLogger(__name__)

#: Output block size (pixels); blending and writing go block row by block row.
BLOCK = 512
#: Compression of the output: DEFLATE (readable everywhere) at level 1 with the floating-point
#: predictor (why level 1: CHANGELOG.md, "Figures that left the code").
COMPRESSION = {"compress": "deflate", "zlevel": 1, "predictor": 3}
#: Widest window blended at once, so memory stays flat for very wide rasters.
MAX_WINDOW_WIDTH = 4 * BLOCK
#: Called, with no arguments, when a finished and verified output is about to be moved into
#: place: from there its run ends complete. A batch sets it, so that a Ctrl-C meanwhile
#: stops only the runs that have not got this far (:mod:`tiledepth.batchrun`); what it
#: raises stops the run there, nothing moved.
PLACING: ContextVar[Callable[[], None] | None] = ContextVar("tiledepth_placing", default=None)
#: The output a writer moved into place last, complete and verified (None: none yet): a run
#: stopped after that point (a signal while its checkpoint is removed) has its output.
PLACED: ContextVar[Path | None] = ContextVar("tiledepth_placed", default=None)


@dataclass(frozen=True)
class OutputGrid:
    """Where the output sits: size and georeferencing, copied from the input.

    ``rpcs``: the input's rational polynomial coefficients (a ``rasterio.rpc.RPC``), else
    None: the georeferencing of a satellite scene not yet orthorectified, and kept beside a
    geotransform too (an ortho-ready product has both: ``gdalwarp -rpc`` needs them).
    ``area_or_point``: ``"Point"`` where the input, placed by a geotransform, says its pixels
    are samples at their centres (GDAL's ``AREA_OR_POINT``), else None (``Area``, GDAL's
    default).
    """

    height: int
    width: int
    crs: object = None
    transform: object = None
    gcps: tuple = ()
    gcp_crs: object = None
    rpcs: object = field(default=None, hash=False)  # (a rasterio RPC is not hashable)
    area_or_point: str | None = None

    @classmethod
    def from_dataset(cls, ds: rasterio.io.DatasetReader) -> OutputGrid:
        gcps, gcp_crs = ds.gcps
        georef = ds.crs is not None or not ds.transform.is_identity
        transform = ds.transform if georef and not gcps else None
        return cls(
            height=ds.height,
            width=ds.width,
            crs=ds.crs,
            transform=transform,
            gcps=tuple(gcps),
            gcp_crs=gcp_crs,
            # RPCs are a model of the pixels' grid: the output, on that grid, keeps them, beside
            # a geotransform or GCPs too (GDAL's readers place it by those first; gdalwarp -rpc
            # orthorectifies it by the RPCs)
            rpcs=ds.rpcs,
            # a PixelIsPoint input's, so that GDAL writes the output's tiepoint as the input's
            # (readers that honour it, GTIFF_POINT_GEO_IGNORE=TRUE, would place an Area output
            # half a pixel apart); not with GCPs: GDAL 3.10 shifts a PixelIsPoint file's GCPs
            # by half a pixel on reading and again on writing, so they would move a pixel
            area_or_point="Point" if transform is not None
            and str(ds.tags().get("AREA_OR_POINT", "")).upper() == "POINT" else None,
        )


def window_rpcs(rpcs, row_off: float, col_off: float):
    """``rpcs`` (a ``rasterio.rpc.RPC``) for a window of the image they model, its top left
    pixel at (``row_off``, ``col_off``): the same model, its line and sample offsets shifted.

    Examples
    --------
    >>> from rasterio.rpc import RPC
    >>> rpcs = RPC(height_off=0, height_scale=1, lat_off=45, lat_scale=1, line_den_coeff=[1] * 20,
    ...            line_num_coeff=[0] * 20, line_off=500, line_scale=500, long_off=7,
    ...            long_scale=1, samp_den_coeff=[1] * 20, samp_num_coeff=[0] * 20,
    ...            samp_off=800, samp_scale=800)
    >>> w = window_rpcs(rpcs, 100, 300)
    >>> w.line_off, w.samp_off, w.line_scale, w.samp_scale
    (400, 500, 500, 800)
    """
    from rasterio.rpc import RPC

    fields = rpcs.to_dict()
    fields.update(line_off=rpcs.line_off - row_off, samp_off=rpcs.samp_off - col_off)
    return RPC(**fields)


def output_windows(height: int, width: int) -> Iterator[Window]:
    """Windows to blend and write: one block row at a time, at most MAX_WINDOW_WIDTH wide.

    Examples
    --------
    >>> [tuple(w.flatten()) for w in output_windows(600, 3000)]
    [(0, 0, 2048, 512), (2048, 0, 952, 512), (0, 512, 2048, 88), (2048, 512, 952, 88)]
    """
    for r0 in range(0, height, BLOCK):
        for c0 in range(0, width, MAX_WINDOW_WIDTH):
            yield Window(c0, r0, min(MAX_WINDOW_WIDTH, width - c0), min(BLOCK, height - r0))


@dataclass
class GeoTiffWriter:
    """Write a one-band float32 GeoTIFF window by window, atomically.

    Use as a context manager: the file appears at ``path`` only when the
    ``with`` block ends without an error.
    """

    path: Path
    grid: OutputGrid
    tags: dict = field(default_factory=dict)
    overwrite: bool = False
    #: Band descriptions, one band each.
    bands: tuple = ("depth",)
    #: Build average overviews, and convert to a Cloud Optimized GeoTIFF, before the rename.
    #: Each as asked: a COG without overviews is a valid COG (GDAL's driver copies the
    #: overviews the file has, none here, and makes none).
    overviews: bool = False
    cog: bool = False
    #: Wall time of the finishing steps, once the ``with`` block ends: ``close`` (the last
    #: blocks compressed), ``overviews``, ``cog``, ``verify`` and ``companions``.
    seconds: dict = field(default_factory=dict)
    #: Files never removed as an old output's companions (the run's inputs; see
    #: :meth:`_leftovers`).
    keep: tuple = ()
    _tmp: Path | None = None
    _ds: object = None
    _companions: list = field(default_factory=list)

    def profile(self) -> dict:
        profile = {
            "driver": "GTiff",
            "height": self.grid.height,
            "width": self.grid.width,
            "count": len(self.bands),
            "dtype": "float32",
            "nodata": float("nan"),
            "tiled": True,
            # a raster narrower than a block gets narrower blocks (a multiple of 16)
            "blockxsize": min(BLOCK, -(-self.grid.width // 16) * 16),
            "blockysize": min(BLOCK, -(-self.grid.height // 16) * 16),
            **COMPRESSION,
            "BIGTIFF": "IF_SAFER",
        }
        if self.grid.crs is not None and not self.grid.gcps:
            profile["crs"] = self.grid.crs
        if self.grid.transform is not None:
            profile["transform"] = self.grid.transform
        return profile

    def __enter__(self) -> GeoTiffWriter:
        if os.path.lexists(placement_journal(self.path)):  # of a writer killed as it placed
            _recover_locked(self.path)  # its files: under the output's lock (none where this
        self._tmp = temp_path(self.path)  # process holds it: its run recovered at its start)
        self._companions = []
        try:
            self._ds = open_raster(self._tmp, "w", **self.profile())
        except (OSError, rasterio.errors.RasterioIOError) as exc:
            raise OutputError(f"{self.path}: cannot create the output ({exc})") from exc
        if self.grid.area_or_point is not None:  # (GDAL writes the GeoTIFF keys by it)
            self._ds.update_tags(AREA_OR_POINT=self.grid.area_or_point)
        if self.grid.gcps:  # GCPs without a CRS too (rasterio needs an empty CRS for that)
            self._ds.gcps = (list(self.grid.gcps), self.grid.gcp_crs or rasterio.crs.CRS())
        if self.grid.rpcs is not None:  # in the TIFF's RPC tag, as GDAL writes them
            self._ds.rpcs = self.grid.rpcs
        for band, name in enumerate(self.bands, start=1):
            self._ds.set_band_description(band, name)
        self.add_tags(self.tags)
        return self

    def companion(self, path: Path, write: Callable[[Path, Path], None], *,
                  extra: Path | None = None) -> None:
        """Write ``path`` too, with the output: ``write(finished_output, tmp)`` writes it
        under a temporary name once the output is finished and verified; both are renamed
        into place together, the output last (``extra``: a file ``write`` makes beside
        ``tmp`` as ``tmp.name + extra's suffix``, such as a PNG's ``.aux.xml``)."""
        self._companions.append((path, write, extra))

    def write(self, window: Window, data: np.ndarray, band: int = 1) -> None:
        """Write (h, w) float32 values into ``window`` of ``band``."""
        try:
            self._ds.write(data.astype(np.float32, copy=False), band, window=window)
        except (OSError, rasterio.errors.RasterioError) as exc:
            raise write_error(self.path, exc, "-o") from exc

    def add_tags(self, tags: dict) -> None:
        """Add dataset tags (metadata) to the file being written."""
        self._ds.update_tags(**{k: str(v) for k, v in tags.items()})

    def set_units(self, units: str) -> None:
        """Set the units of every band (e.g. ``"metre"``)."""
        for band in range(1, len(self.bands) + 1):
            self._ds.set_band_unit(band, units)

    def windows(self) -> Iterator[Window]:
        return output_windows(self.grid.height, self.grid.width)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish(exc_type)

    def _finish(self, exc_type) -> None:
        ds, self._ds = self._ds, None
        tick = time.perf_counter()
        try:
            if ds is not None:
                ds.close()
        except Exception as close_exc:
            if exc_type is None:
                self._discard()
                if isinstance(close_exc, (OSError, rasterio.errors.RasterioError)):
                    raise write_error(self.path, close_exc, "-o") from close_exc
                raise
        if exc_type is not None:
            self._discard()
            return
        tick = lap(self.seconds, "close", tick)
        temps: list[tuple[Path, Path]] = []  # (temporary file, its name), the output last
        try:  # on temporary files: a failure here leaves nothing at the output paths
            from tiledepth.cog import build_overviews, convert_to_cog

            if self.overviews:
                build_overviews(self._tmp)
                tick = lap(self.seconds, "overviews", tick)
            if self.cog:
                convert_to_cog(self._tmp)
                tick = lap(self.seconds, "cog", tick)
            verify_geotiff(self._tmp, height=self.grid.height, width=self.grid.width,
                           count=len(self.bands), overviews=self.overviews)
            tick = lap(self.seconds, "verify", tick)
            for path, write, extra in self._companions:
                tmp = temp_path(path)
                temps.append((tmp, path))
                if extra is not None:
                    temps.append((tmp.with_name(tmp.name + extra.name[len(path.name):]), extra))
                write(self._tmp, tmp)
            lap(self.seconds, "companions", tick)
        except BaseException as err:
            self._discard(temps)
            if isinstance(err, (OSError, rasterio.errors.RasterioError)) and \
                    not isinstance(err, OutputError):
                raise write_error(self.path, err, "-o") from err
            if isinstance(err, Exception) and not isinstance(err, OutputError):
                raise OutputError(f"{self.path}: cannot finish the output ({err})") from err
            raise
        hook = PLACING.get()
        if hook is not None:
            try:
                hook()
            except BaseException:
                self._discard(temps)
                raise
        # Place: each companion, then the output. With overwrite each old file is first kept
        # aside (set_aside), and so is each companion of the old output this run does not
        # write (a preview of the old map beside the new one would show what the output
        # no longer holds); a failure or Ctrl-C before the output is placed puts every one
        # back: the old files as they were, or, without overwrite, none of the new ones.
        # Every rename is written down on the disk first (write_placement), with each file's
        # identity, for the next run to finish or undo after a SIGKILL or power cut; the
        # rollback goes by that record too, not by how far this code got: a Ctrl-C lands
        # after a link or rename has done its work, before the call returns.
        placement = None
        try:
            leftovers = self._leftovers(temps) if self.overwrite else []  # before any rename
            plan = [(tmp, path, aside_path(path) if self.overwrite else None)
                    for tmp, path in temps
                    if tmp.exists()]  # (not an optional file the writer did not make: .aux.xml)
            gone = [(path, aside_path(path)) for path in leftovers if os.path.lexists(path)]
            placement = write_placement(self.path, self._tmp, [
                *((path, tmp, aside) for tmp, path, aside in plan),
                *((path, None, aside) for path, aside in gone)])
            for tmp, path, aside in plan:
                if aside is not None:
                    set_aside(path, keep_name=True, aside=aside)
                place(tmp, path, overwrite=self.overwrite)
            for path, aside in gone:
                set_aside(path, keep_name=False, aside=aside)
            place(self._tmp, self.path, overwrite=self.overwrite)
        except BaseException as err:
            try:
                placed = placement is not None and placement.placed()
            except OSError:
                placed = False
            if placed:  # the output's own rename done (a Ctrl-C as it returned): complete,
                self._placed(placement)  # never rolled back beside the new output
                if not isinstance(err, Exception):
                    raise  # (the CLI says the output was written: PLACED)
                log.warning("%s: placed, but %s", self.path, err)
                return
            self._roll_back(placement)
            self._discard(temps)
            if isinstance(err, OSError) and not isinstance(err, OutputError):
                raise OutputError(f"{self.path}: cannot move the output in place ({err})") \
                    from err
            raise
        self._placed(placement)

    def _placed(self, placement: Placement) -> None:
        """The output is in place: say so (:data:`PLACED`), remove the old files kept aside,
        then the journal (kept where an old file cannot be removed, for the next run)."""
        PLACED.set(self.path)
        try:
            ok, foreign = placement.finish()
        except OSError as exc:
            log.warning("%s: cannot remove the previous files kept aside (%s)", self.path, exc)
            return
        _left_alone(self.path, foreign)
        if ok:
            self._drop_journal()

    def _roll_back(self, placement: Placement | None) -> None:
        """Undo ``placement`` (None: nothing renamed, no journal written): each old file back,
        each new one gone; the journal is removed once that is done, else kept for the next
        run (:func:`tiledepth.safe_write.recover_placement`)."""
        if placement is None:
            return
        try:
            ok, _, foreign = placement.undo()
        except OSError as exc:
            log.warning("%s: cannot undo the placement (%s)", self.path, exc)
            ok, foreign = False, []
        _left_alone(self.path, foreign)
        if ok:
            self._drop_journal()
        else:
            log.warning("%s: not every previous file is back; %s is kept, for the next run "
                        "to put them back", self.path, placement_journal(self.path))

    def _drop_journal(self) -> None:
        """Remove the placement's journal, once the placement is complete or undone."""
        try:
            placement_journal(self.path).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: cannot remove %s (%s)", self.path, placement_journal(self.path),
                        exc.strerror or exc)

    def _leftovers(self, temps: Iterable[tuple[Path, Path]]) -> list[Path]:
        """The companions of an old output that this run does not write and removes with it
        (:func:`tiledepth.safe_write.removed_on_replace`: its sidecar, its preview and the
        preview's ``.aux.xml`` where tiledepth wrote them, the preview's world files beside
        a PNG of ``tiledepth export``, the GDAL sidecars GDAL would apply to the new output),
        and those registered that the writer did not make; none of :attr:`keep`."""
        written = {path for tmp, path in temps if tmp.exists()}
        # (the rule of the checks before the run too: no input of it is removed)
        removed = removed_on_replace(self.path, written)
        left = set(companion_paths(self.path)).difference(removed, written)  # a user's
        names = dict.fromkeys([*removed, *(path for _, path in temps if path not in left)])
        png = preview_path(self.path)
        if png in left and os.path.lexists(png) and os.path.lexists(self.path) and \
                not any(_same_file(png, kept) for kept in self.keep):
            log.warning("%s: left in place, not a preview tiledepth wrote (a preview of an "
                        "older tiledepth would show the previous %s: remove it if so)", png,
                        self.path.name)
        return [path for path in names if path not in written and path != self.path
                and not any(_same_file(path, kept) for kept in self.keep)]

    def _discard(self, temps: Iterable[tuple[Path, Path]] = ()) -> None:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            for aux in self._tmp.parent.glob(glob.escape(self._tmp.name) + ".*"):
                aux.unlink(missing_ok=True)


def _same_file(a: Path, b: str | Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


class ArraySink:
    """The writer interface over an array (for :func:`tiledepth.estimate`, and the
    on-disk intermediate of ``--scale``: pass a ``numpy.memmap`` as ``array``)."""

    def __init__(self, height: int, width: int, array: np.ndarray | None = None) -> None:
        self.array = np.full((height, width), np.nan, np.float32) if array is None else array
        #: The values' unit, once :meth:`set_units` says it (``"metre"``); None: relative.
        self.units: str | None = None

    def __enter__(self) -> ArraySink:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def set_units(self, units: str) -> None:
        """Keep the values' unit (e.g. ``"metre"``) in :attr:`units`."""
        self.units = units

    def windows(self) -> Iterator[Window]:
        return output_windows(*self.array.shape)

    def write(self, window: Window, data: np.ndarray, band: int = 1) -> None:
        if band != 1:
            raise ValueError("an ArraySink holds one band")
        rows, cols = window.toslices()
        self.array[rows, cols] = data
