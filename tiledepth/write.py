"""Write: the fused depth map as a GeoTIFF on the input's grid.

Float32, one band, tiled 512 x 512, DEFLATE with floating-point predictor,
``BIGTIFF=IF_SAFER``, NaN nodata, the input's CRS and transform (or GCPs),
provenance tags. The file is written under a temporary name in the output
folder and renamed only when complete; on any error or interruption the
temporary file is removed, so a file at the output path is always whole.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from tiledepth.errors import OutputError, WriteError, first_line

__all__ = ["ArraySink", "GeoTiffWriter", "OutputGrid", "check_output_path", "output_windows",
           "remove_partials", "write_error"]

log = logging.getLogger(__name__)

#: Output block size (pixels); blending and writing go block row by block row.
BLOCK = 512
#: Compression of the output: DEFLATE (readable everywhere) at level 1 with the floating-point
#: predictor. On float32 depth, levels above 1 cost about 3x the time for 1-3% smaller files
#: (BENCHMARKS.md).
COMPRESSION = {"compress": "deflate", "zlevel": 1, "predictor": 3}
#: Widest window blended at once, so memory stays flat for very wide rasters.
MAX_WINDOW_WIDTH = 4 * BLOCK


@dataclass(frozen=True)
class OutputGrid:
    """Where the output sits: size and georeferencing, copied from the input."""

    height: int
    width: int
    crs: object = None
    transform: object = None
    gcps: tuple = ()
    gcp_crs: object = None

    @classmethod
    def from_dataset(cls, ds: rasterio.io.DatasetReader) -> OutputGrid:
        gcps, gcp_crs = ds.gcps
        georef = ds.crs is not None or not ds.transform.is_identity
        return cls(
            height=ds.height,
            width=ds.width,
            crs=ds.crs,
            transform=ds.transform if georef and not gcps else None,
            gcps=tuple(gcps),
            gcp_crs=gcp_crs,
        )


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


def default_output(input_path: str | os.PathLike) -> Path:
    """``<input stem>.depth.tif`` beside the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}.depth.tif")


def check_output_path(input_path: Path, output: Path, *, overwrite: bool) -> None:
    """Raise OutputError, with what to do, if ``output`` cannot or must not be written."""
    if output.resolve() == input_path.resolve():
        raise OutputError(f"{output}: the output path is the input; choose another with -o")
    if output.is_dir():
        raise OutputError(f"{output}: is a folder; give a file name with -o")
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite or choose another -o")
    folder = output.parent
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{folder}: output folder is not writable; choose another with -o")


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
    overviews: bool = False
    cog: bool = False
    _tmp: Path | None = None
    _ds: object = None

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
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self._tmp, "w", **self.profile())
        except (OSError, rasterio.errors.RasterioIOError) as exc:
            raise OutputError(f"{self.path}: cannot create the output ({exc})") from exc
        if self.grid.gcps:  # GCPs without a CRS too (rasterio needs an empty CRS for that)
            self._ds.gcps = (list(self.grid.gcps), self.grid.gcp_crs or rasterio.crs.CRS())
        for band, name in enumerate(self.bands, start=1):
            self._ds.set_band_description(band, name)
        self.add_tags(self.tags)
        return self

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
        ds, self._ds = self._ds, None
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
        try:  # on the temporary file: a failure here leaves nothing at the output path
            from tiledepth.cog import build_overviews, convert_to_cog

            if self.overviews or self.cog:
                build_overviews(self._tmp)
            if self.cog:
                convert_to_cog(self._tmp)
        except BaseException as err:
            self._discard()
            if isinstance(err, Exception):
                raise OutputError(f"{self.path}: cannot finish the output ({err})") from err
            raise
        try:
            if self.overwrite:
                os.replace(self._tmp, self.path)
            else:
                # Refuse to clobber a file that appeared while we ran.
                os.link(self._tmp, self.path)
                os.unlink(self._tmp)
        except FileExistsError as err:
            self._discard()
            raise OutputError(
                f"{self.path}: appeared while tiledepth ran; pass --overwrite or choose another -o"
            ) from err
        except OSError:
            try:
                os.replace(self._tmp, self.path)  # file systems without hard links
            except OSError as err:
                self._discard()
                raise OutputError(f"{self.path}: cannot move the output in place ({err})") from err

    def _discard(self) -> None:
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            for aux in self._tmp.parent.glob(self._tmp.name + ".*"):
                aux.unlink(missing_ok=True)


def remove_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left behind.

    A :class:`GeoTiffWriter` removes its temporary file on any error or
    signal it can catch; a SIGKILL or a power cut leaves it. Call this only
    while no other writer of ``path`` can run (tiledepth.run holds the output's
    checkpoint lock). Returns the removed paths.
    """
    path = Path(path)
    pattern = f".{glob.escape(path.name)}.{'[0-9a-f]' * 8}.partial*"
    removed = sorted(path.parent.glob(pattern))
    for stale in removed:
        stale.unlink(missing_ok=True)
        log.info("removed %s, left by a run that was killed", stale)
    return removed


#: Below this many free bytes a failed write is reported as a full disk.
LOW_DISK = 16 * 2**20


def write_error(path: str | os.PathLike, exc: BaseException, option: str) -> WriteError:
    """A one-line WriteError for a failed write of ``path``, saying when the disk is full.

    GDAL and NumPy rarely pass ``ENOSPC`` on (``TIFFAppendToStrip: Write error``,
    ``65536 requested and 53216 written``), so a write that failed on a file
    system with less than :data:`LOW_DISK` free is reported as a full disk too.

    Parameters
    ----------
    path : str or os.PathLike
        The file being written.
    exc : BaseException
        The error the write raised.
    option : str
        The option that chooses another place, for the message (``-o``, ``--scratch``).

    Examples
    --------
    >>> import errno
    >>> err = write_error("/tmp/o.tif", OSError(errno.ENOSPC, "No space left on device"), "-o")
    >>> str(err).startswith("/tmp/o.tif: no space left on device")
    True
    """
    path = Path(path)
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    free = None
    for folder in (path.parent, *path.parents):
        try:
            free = shutil.disk_usage(folder).free
            break
        except OSError:
            continue
    full = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain) or (
        free is not None and free < LOW_DISK)
    if full:
        left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return WriteError(f"{path}: no space left on device{left}; free some space or choose "
                          f"another place with {option}")
    return WriteError(f"{path}: write failed ({first_line(chain[-1])}); check the disk, or "
                      f"choose another "
                      f"place with {option}")



class ArraySink:
    """The writer interface over an array (for :func:`tiledepth.estimate`, and the
    on-disk intermediate of ``--scale``: pass a ``numpy.memmap`` as ``array``)."""

    def __init__(self, height: int, width: int, array: np.ndarray | None = None) -> None:
        self.array = np.full((height, width), np.nan, np.float32) if array is None else array

    def __enter__(self) -> ArraySink:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def set_units(self, units: str) -> None:
        """Set the units of every band (e.g. ``"metre"``)."""
        for band in range(1, len(self.bands) + 1):
            self._ds.set_band_unit(band, units)

    def windows(self) -> Iterator[Window]:
        return output_windows(*self.array.shape)

    def write(self, window: Window, data: np.ndarray, band: int = 1) -> None:
        if band != 1:
            raise ValueError("an ArraySink holds one band")
        rows, cols = window.toslices()
        self.array[rows, cols] = data
