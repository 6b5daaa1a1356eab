"""Readers: serve normalised tiles, masks and a coarse overview from a raster or an array.

A reader gives every other stage band-first arrays, as rasterio reads them:

* ``read_tile(window)``: ``(3, h, w)`` float32 in [0, 1] and a ``(h, w)`` bool
  validity mask, for one window at full resolution;
* ``read_coarse(long_side)``: the same for the whole raster at reduced
  resolution (a decimated read, or overviews where the file has them);
* ``read_valid(window)``: the validity mask alone.

The full-resolution image is never loaded whole. Two readers implement this
interface: :class:`RasterReader` for anything GDAL opens, and
:class:`ArrayReader` for an in-memory array (used by :func:`tiledepth.estimate`);
:class:`ScaledReader` serves a file at reduced resolution (see :func:`reduced`).
The helpers they share (scaling, band choice, the GDAL environment) are in
:mod:`tiledepth.read`.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.windows import Window

from tiledepth.errors import InputError, OptionError, first_line
from tiledepth.fusion.resample import area_average
from tiledepth.rasterfile import open_raster
from tiledepth.read import (
    GDAL_ERRORS,
    GDAL_OPTIONS,
    PALETTE_MASKED,
    SAMPLE_SIZE,
    Scaling,
    check_input_path,
    check_real,
    coarse_shape,
    file_orientation,
    fit_scaling,
    keep_band,
    palette_lut,
    read_ahead,
    route_libtiff_messages,
    sample_cache,
    select_bands,
    tile_cache,
    vrt_band,
    vrt_xml,
    warn_orientation,
)
from tiledepth.sources import (
    no_answer,
    reads_remote,
    redact,
    remote_options,
    resolve,
    source_name,
    timed_out,
)

__all__ = ["ArrayReader", "RasterReader", "ScaledReader", "reduced"]

class RasterReader:
    """Read normalised tiles from any raster GDAL opens, window by window.

    Use as a context manager; the dataset stays open inside it, within a
    scoped :class:`rasterio.Env`.

    Parameters
    ----------
    path : str or os.PathLike
        The raster: a local file, or any source :func:`tiledepth.sources.resolve`
        takes (a URL, ``s3://``, a ``/vsi`` path, VRT text), read window by window.
    bands : tuple of int, optional
        Band indexes for the model (1 or 3); default as in :func:`select_bands`.
    env_options : dict, optional
        GDAL configuration for the scoped ``rasterio.Env``, on top of
        :data:`GDAL_OPTIONS`. The output is written inside the same scope.
    nodata : float, optional
        The no-data value, instead of the one the raster declares: pixels whose
        model bands all equal it are invalid (an alpha band or internal mask
        still applies); for a colour-map band, the index that is invalid.
    mask : str or os.PathLike, optional
        A raster of the same width and height: 0 = invalid, on top of the rest (left
        out of averaged reads too: :meth:`_averaged_source`).

    Examples
    --------
    >>> with RasterReader("ortho.tif") as src:  # doctest: +SKIP
    ...     image, valid = src.read_tile(Window(0, 0, 768, 768))
    """

    def __init__(self, path: str | os.PathLike, *, bands: tuple[int, ...] | None = None,
                 env_options: dict | None = None, nodata: float | None = None,
                 mask: str | os.PathLike | None = None) -> None:
        self.path = resolve(path)  # a local Path, or a GDAL path (str)
        self.nodata = nodata
        self.mask_path = None if mask is None else Path(mask)
        # read over a network: a URL, or a VRT of URLs (a local .vrt file's too)
        self.remote = reads_remote(self.path)
        self._mask_ds = None
        self._mask_lock = threading.Lock()
        self.bands_option = bands
        # (a mosaic of local and remote files too: remote_options keeps its local members'
        # .msk, .aux.xml and .ovr found)
        self.env_options = {**GDAL_OPTIONS, **remote_options(self.path), **(env_options or {})}
        self._env = None
        self._ds = None
        self._pixels = None  # what pixel reads open: the input, or a VRT over it
        self._pixel_ds = None  # it, open (the input's dataset when that is what they read)
        self._averaged = None  # what averaged reads open where they differ: a VRT (--mask)
        self._averaged_ds = None  # it, open
        self._read_bands = None  # the model bands' indexes in it
        self._palette = False
        self._all_valid = False
        # only NaN declared as the model bands' nodata (float bands that declare none, set by
        # _pixel_source): a full-resolution read's validity is its finite values
        self._nan_only = False
        # NaN declared for a finite nodata as well (:meth:`_pixel_source`): a window's read at
        # its own size is valid where finite too (averaged reads still read the mask)
        self._nan_for_nodata = False
        self._sampled = None  # (shape, validity) of the last whole-raster sample
        self._tile_cache = None  # GDAL's cache tile reads hold (:meth:`_hold_tile_cache`)
        self._reading = weakref.WeakSet()  # the read-ahead iterators (:meth:`_read_ahead`)

    # -- context management ---------------------------------------------------
    def __enter__(self) -> RasterReader:
        if isinstance(self.path, Path):
            check_input_path(self.path)
        route_libtiff_messages()
        self._env = rasterio.Env(**self.env_options)
        self._env.__enter__()
        try:
            self._ds = open_raster(gdal_name(self.path))
            self.bands = select_bands(list(self._ds.colorinterp), self.bands_option,
                                      source_name(self.path))
            check_real(self._ds.dtypes[self.bands[0] - 1], source_name(self.path))
            check_nodata(self.nodata, [self._ds.dtypes[b - 1] for b in self.bands],
                         source_name(self.path))
            warn_orientation(self._orientation(), source_name(self.path))
            if self.mask_path is not None:
                self._mask_ds = self._open_mask()
            self._pixels, self._read_bands = self._pixel_source()
            if self._pixels is self.path:
                self._pixel_ds = self._ds
            else:
                self._pixel_ds = open_raster(gdal_name(self._pixels))
            # No alpha, internal mask or nodata on the model bands: every pixel is valid
            # (another band's nodata, a near-infrared one's say, masks nothing); a --mask
            # is read on top of it (:meth:`_valid`)
            flags = self._pixel_ds.mask_flag_enums
            self._all_valid = all(MaskFlags.all_valid in flags[b - 1]
                                  for b in set(self._read_bands))
            if self._mask_ds is not None:  # averaged reads through a VRT masked by it too
                self._averaged = self._averaged_source(self._pixel_ds)
                self._averaged_ds = open_raster(self._averaged)
            self.scaling = self._fit_scaling()
        except GDAL_ERRORS as exc:
            self.__exit__(None, None, None)
            if self.remote:
                said = first_line(exc)
                if timed_out(said):  # (GDAL tries a timed-out open once, no retry)
                    raise no_answer(_shown(self.path), said) from exc
                raise InputError(f"{_shown(self.path)}: cannot read it ({said}) after "
                                 f"retries; check the URL, the connection and the "
                                 "credentials") from exc
            raise InputError(
                f"{self.path}: cannot read it as a raster ({first_line(exc)}); "
                "check that it is a complete GeoTIFF, JPEG or PNG"
            ) from exc
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for reads in list(self._reading):  # first: their threads read the --mask handle
            reads.close()  # ends the threads, closes their handles (done: nothing)
        if self._mask_ds is not None:
            self._mask_ds.close()
            self._mask_ds = None
        if self._averaged_ds is not None:
            self._averaged_ds.close()
            self._averaged_ds = None
        if self._pixel_ds is not None and self._pixel_ds is not self._ds:
            self._pixel_ds.close()
        self._pixel_ds = None
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        if self._env is not None:
            self._env.__exit__(*exc_info)
            self._env = None

    # -- metadata ---------------------------------------------------------------
    @property
    def dataset(self) -> rasterio.io.DatasetReader:
        if self._ds is None:
            raise RuntimeError("RasterReader is not open; use it in a `with` block")
        return self._ds

    @property
    def height(self) -> int:
        return self.dataset.height

    @property
    def width(self) -> int:
        return self.dataset.width

    # -- reads ------------------------------------------------------------------
    def read_tile(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read one window: (3, h, w) float32 in [0, 1] and (h, w) bool validity."""
        return self._read_tile_from(self.dataset, window)

    def _read_tile_from(self, ds, window: Window, out_shape: tuple[int, int] | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
        resampling = Resampling.nearest if out_shape is None else Resampling.average
        if self._tile_cache is not None and rasterio.env.hasenv():
            # GDAL's cache is one for the process: another thread's scoped environment (the
            # anchor's whole-raster read, beside the read-ahead) restores the cache it found
            # on entry when it exits, lower; set again, the loss is the blocks cached then
            rasterio.env.setenv(GDAL_CACHEMAX=self._tile_cache)
        raw = self._read(window=window, out_shape=out_shape, resampling=resampling, ds=ds)
        valid = self._valid(raw, window=window, out_shape=out_shape, ds=ds)
        return self.scaling.apply(raw), valid

    def _worker_dataset(self) -> rasterio.io.DatasetReader | _Handles:
        """A dataset handle of this raster for one read-ahead thread, opened now (two where
        averaged reads read another source: :class:`_Handles`).

        Called in the thread that reads the tiles (:meth:`iter_tiles`): it opens
        the handle, silencing the NotGeoreferencedWarning of a file without
        georeferencing as :meth:`__enter__` does; the worker thread reads with it
        in its own scoped ``rasterio.Env`` (:func:`_used_in_own_env`); the worker
        thread never opens one (:func:`tiledepth.rasterfile.open_raster` serialises the
        opens' warning filters, but a worker need not wait for them at all).
        """
        with rasterio.Env(**self.env_options):
            pixels = open_raster(gdal_name(self._pixels))
            if self._averaged is None:
                return pixels
            try:
                return _Handles(pixels, open_raster(self._averaged))
            except BaseException:
                pixels.close()
                raise

    def _read_ahead(self, windows: Iterable[Window], read, workers: int) -> Iterator:
        """``read(handle, window)`` of each window, in order, by ``workers`` threads, each with
        a handle of this raster opened in this thread (:meth:`_worker_dataset`); at most
        ``2 * workers + 2`` results wait (:func:`tiledepth.read.read_ahead`).

        The iterator is kept until this reader exits, which closes it if its consumer has
        not (an error raised between two tiles, whose traceback holds the iterator): its
        threads end and its handles close with the reader, not when the garbage collector
        finds it.
        """
        reads = self._reads_ahead(list(windows), read, workers)
        self._reading.add(reads)
        return reads

    def _reads_ahead(self, windows: list[Window], read, workers: int) -> Iterator:
        """:meth:`_read_ahead`'s generator. Every handle it opens is closed when it ends,
        however it ends: also one that no thread took (opening the next one or starting a
        thread failed), after the threads that took theirs have ended."""
        with contextlib.ExitStack() as opened:
            handles = []
            for _ in range(workers):
                ds = self._worker_dataset()
                opened.callback(ds.close)  # (a second close of a worker's handle: nothing)
                handles.append(_used_in_own_env(ds, self.env_options))
            yield from read_ahead(windows, handles.pop, read, workers=workers,
                                  ahead=2 * workers + 2)

    def read_valid(self, window: Window) -> np.ndarray:
        """The (h, w) bool validity mask of one window."""
        raw = self._read(window=window)
        return self._valid(raw, window=window)

    def iter_tiles(self, windows: Iterable[Window], *,
                   workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``read_tile`` of each window, in order, read ahead by ``workers`` threads.

        Each worker thread reads with its own dataset handle (opened in this
        thread: :meth:`_worker_dataset`) inside its own scoped ``rasterio.Env``
        (GDAL handles are not shared between threads); at most
        ``2 * workers + 2`` tiles wait decoded in memory. ``workers=0`` reads in
        the calling thread, one tile at a time; both give identical arrays. A
        remote source is read by one thread at most: two would fetch the blocks
        that neighbouring tiles share twice (both miss GDAL's download cache).
        """
        workers = min(workers, 1) if self.remote else workers
        windows = list(windows)
        self._hold_tile_cache(windows, workers)
        if workers <= 0:
            for window in windows:
                yield self.read_tile(window)
            return
        yield from self._read_ahead(windows, self._read_tile_from, workers)

    def _hold_tile_cache(self, windows: list[Window], workers: int) -> None:
        """Raise GDAL's block cache, for the rest of this reader's scope, to what reading
        ``windows`` (full-resolution, in order) by ``workers`` threads needs where the
        raster's blocks are whole rows (:func:`tiledepth.read.tile_cache`); other rasters
        keep :data:`tiledepth.read.GDAL_OPTIONS`' cache.

        The rows one handle's reads span at a time: those of two consecutive windows (the
        last tile of a row and the first of the next share rows, which stay cached). Every
        band, as a pixel-interleaved file's line decodes them all, and a ``--mask``'s own
        rows, read by one handle. GDAL's cache is one for the process: the worker threads'
        scoped environments take it from :attr:`env_options`, as do the whole-raster reads'
        (:meth:`_whole_raster_cache`), so that none lowers it; this thread's is this
        reader's own environment (restored when the reader exits); each tile read sets it
        again (:meth:`_read_tile_from`).
        """
        if not windows:
            return
        spans = [math.ceil(max(w.row_off + w.height for w in pair))
                 - math.floor(min(w.row_off for w in pair))
                 for pair in (windows[i:i + 2] for i in range(len(windows)))]
        base = self.env_options["GDAL_CACHEMAX"]
        ds = self.dataset
        cache = tile_cache(ds, range(1, ds.count + 1), max(spans), max(workers, 0) + 1, base)
        if self._mask_ds is not None:
            cache += tile_cache(self._mask_ds, (1,), max(spans), 1, 0)
        if cache > base:
            self.env_options["GDAL_CACHEMAX"] = self._tile_cache = cache
            if rasterio.env.hasenv():  # (none: a thread that did not enter the reader)
                rasterio.env.setenv(GDAL_CACHEMAX=cache)

    def read_coarse(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole raster at reduced resolution: (3, h, w) float32 and (h, w) bool.

        An average-resampled decimated read (GDAL uses the file's overviews
        where it has them); the long side is ``long_side`` pixels. Validity is
        sampled at the coarse pixels' centres; where that finds none (every
        valid area is smaller than a coarse pixel), a coarse pixel is valid if
        any pixel under it is.
        """
        shape = coarse_shape(self.height, self.width, long_side)
        with self._whole_raster_cache():
            raw = self._read(out_shape=shape, resampling=Resampling.average)
            valid = self._valid(raw, out_shape=shape)
            if not valid.any():
                valid = self._valid(raw, out_shape=shape, resampling=Resampling.average)
        return self.scaling.apply(raw), valid

    def sample_valid(self, shape: tuple[int, int]) -> np.ndarray:
        """Which pixels at the centres of a ``(h, w)`` lattice over the raster are valid, as
        :meth:`read_tile` judges them (masks, nodata, ``--nodata``, NaN, ``--mask``): what
        ``tiledepth info`` estimates the masked fraction and the empty tiles from."""
        if self._sampled is not None and self._sampled[0] == shape:
            return self._sampled[1]  # the stretch's sample (:meth:`_fit_scaling`) judged them
        floats = np.dtype(self._pixel_ds.dtypes[self._read_bands[0] - 1]).kind == "f"
        return self._sample(shape, pixels=floats)[1]

    def _sample(self, shape: tuple[int, int], *,
                pixels: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """A decimated read of the whole raster, ``shape`` pixels (nearest; the pixels only
        with ``pixels``: their validity needs them for floats alone), and its validity,
        kept for :meth:`sample_valid`."""
        with self._whole_raster_cache():
            raw = self._read(out_shape=shape) if pixels else np.empty((0, *shape), np.uint8)
            valid = self._valid(raw, out_shape=shape)
        self._sampled = (shape, valid)
        return raw, valid

    def _whole_raster_cache(self) -> rasterio.Env:
        """A scoped GDAL block cache for a decimated read of the whole raster (pixels and
        validity): :func:`sample_cache` of the bands it decodes. Those are the model bands,
        and where pixels can be masked every band of the input (GDAL's mask of a nodata reads
        each band, an alpha band is one, an internal mask a byte a pixel), and a ``--mask``'s
        own block rows: with less than a block row of them, GDAL decodes each block row again
        for every row it samples (a 12 000 px RGB input with a nodata: the coarse read took
        23 s instead of 1.5 s)."""
        base = self.env_options["GDAL_CACHEMAX"]
        ds = self.dataset
        bands = self.bands if self._all_valid else range(1, ds.count + 1)
        cache = sample_cache(ds, bands, base)
        if self._mask_ds is not None:
            cache = max(cache, sample_cache(self._mask_ds, (1,), base))
        return rasterio.Env(GDAL_CACHEMAX=cache)

    # -- internals --------------------------------------------------------------
    def _orientation(self) -> str | None:
        """The input's EXIF orientation: GDAL's tag of a JPEG's, else the header's of a local
        TIFF, PNG or WebP (:func:`file_orientation`; GDAL does not report theirs)."""
        orientation = self._ds.tags().get("EXIF_Orientation")
        if orientation is None and isinstance(self.path, Path):
            orientation = file_orientation(self.path, self._ds.driver)
        return orientation

    def _pixel_source(self) -> tuple[Path | str, tuple[int, ...]]:
        """What pixel reads open, and the model bands' indexes in it.

        The input itself, or an in-memory VRT over it (:func:`vrt_xml`, over
        each of its overviews too) where GDAL's mask of the input would not say
        what tiledepth means; declared in the VRT, masked pixels are skipped by
        every read, the decimated average reads (``--scale``, the coarse image,
        pyramid levels) included:

        * a colour-map band: its colours, as three bands (:func:`palette_lut`);
        * ``--nodata``: declared instead of the input's own nodata (GDAL would
          average the undeclared value into its valid neighbours);
        * an alpha band GDAL's mask leaves out (a declared nodata wins over
          it): the VRT masks both. It reads the input without its overviews
          (decimated reads at full resolution, as of a file that has none): they
          are made without the alpha band as their mask, so their alpha marks
          transparent areas valid (``gdaladdo -r average`` left 8 in a fully
          transparent one) and their colours have transparent pixels averaged in;
        * NaN in float model bands that declare no nodata: declared as their nodata
          (GDAL's average of pixels one of which is NaN is NaN: a coarse pixel with
          a NaN under it was lost); where they declare a finite one (or ``--nodata``),
          NaN is declared and the finite value's pixels read as NaN (a ComplexSource
          leaves them unpainted): one nodata, that every read skips;
        * a declared nodata of model bands that are not all the bands: the VRT holds
          the model bands alone, so that their nodata judges a pixel (GDAL's mask of
          the input is valid where any band, a near-infrared one say, is not nodata).
        """
        ds = self.dataset
        unique = sorted(set(self.bands))
        flags = [ds.mask_flag_enums[b - 1] for b in unique]
        dtypes = [ds.dtypes[b - 1] for b in unique]
        source = gdal_name(self.path)
        # the band's own mask is an alpha band or an internal mask: keep it (UseMaskBand)
        per_dataset = [MaskFlags.per_dataset in f for f in flags]
        alphas = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
        read_bands = tuple(unique.index(b) + 1 for b in self.bands)  # in a VRT of `unique`
        nodata = self.nodata if self.nodata is not None else ds.nodatavals[unique[0] - 1]
        table = self._colour_table(unique)
        beside_nodata = table is None and bool(alphas) and not all(per_dataset)
        own = [ds.nodatavals[b - 1] for b in unique]
        if self.nodata is not None:
            declare = [self.nodata] * len(unique)
        elif all(np.dtype(dt).kind == "f" for dt in dtypes) and all(v is None for v in own):
            declare = [math.nan] * len(unique)  # NaN masks them: declared, averages skip it
            # (and no alpha or internal mask: a full-resolution read's validity is then its
            # finite values, read without GDAL's mask, :meth:`_valid`)
            self._nan_only = all(MaskFlags.all_valid in f for f in flags)
        elif any(MaskFlags.nodata in f for f in flags) and len(unique) < ds.count:
            declare = own  # judged on the model bands alone
        else:
            declare = None
        # float bands with a finite nodata (their own, or --nodata) may hold NaN too (a GIS
        # export's holes beside its -9999 fill): GDAL's mask keeps NaN valid, and its average
        # of pixels one of which is NaN is NaN (a coarse or --scale pixel beside a hole was
        # lost). A band declares one nodata: the VRT declares NaN and leaves the finite value's
        # pixels unpainted (NaN too), so that every read skips both as one nodata
        finite = own if declare is None else declare
        skip = [None] * len(unique)
        if table is None and not beside_nodata and not any(per_dataset) and \
                all(np.dtype(dt).kind == "f" for dt in dtypes) and \
                all(v is not None and math.isfinite(v) for v in finite):
            skip, declare = finite, [math.nan] * len(unique)
            self._nan_for_nodata = True

        def describe(width: int, height: int, level: int | None, overviews=()) -> str | None:
            """The VRT at full resolution (level None) or over an overview; None: none."""
            if table is not None:
                bands = [vrt_band(source, unique[0], "uint16", nodata=PALETTE_MASKED,
                                  use_mask=per_dataset[0], level=level,
                                  lut=palette_lut(table, component, nodata))
                         for component in range(3)]
                return vrt_xml(width, height, bands, overviews=overviews)
            if beside_nodata:
                # GDAL's mask is a declared nodata (or none) and leaves the alpha band out: a
                # VRT whose mask is the alpha band, under one declaring the nodata if any;
                # over the input without its overviews (see above)
                bands = [vrt_band(source, b, dt, overviews=False)
                         for b, dt in zip(unique, dtypes, strict=True)]
                mask = vrt_band(source, alphas[0], "uint8", overviews=False)
                if nodata is None or not representable(nodata, dtypes[0]):
                    return vrt_xml(width, height, bands, mask=mask, overviews=overviews)
                inner = vrt_xml(width, height, bands, mask=mask)
                return vrt_xml(width, height, [vrt_band(inner, k, dt, nodata=nodata, use_mask=True)
                                               for k, dt in enumerate(dtypes, 1)],
                               overviews=overviews)
            if declare is None:
                return None
            return vrt_xml(width, height,
                           [vrt_band(source, b, dt, nodata=value, use_mask=keep, level=level,
                                     skip=hidden)
                            for b, dt, value, keep, hidden in zip(unique, dtypes, declare,
                                                                  per_dataset, skip, strict=True)],
                           overviews=overviews)

        if describe(ds.width, ds.height, None) is None:
            return self.path, self.bands
        overviews = () if beside_nodata else \
            tuple(describe(*size, level)
                  for level, size in enumerate(self._overview_sizes(unique[0])))
        return describe(ds.width, ds.height, None, overviews), \
            (1, 2, 3) if table is not None else read_bands

    def _averaged_source(self, pixel_ds) -> str:
        """An in-memory VRT of the pixels (``pixel_ds``: the input, or the VRT of
        :meth:`_pixel_source`; its bands, numbered as there) whose mask masks the pixels
        ``--mask`` masks as well: decimated average reads (``--scale``, the coarse image,
        pyramid levels) read it, and skip them as they skip a nodata (they were averaged into
        their valid neighbours: only :meth:`_valid` applied ``--mask``). Other reads read the
        pixels as they are (the same values; their validity is :meth:`_valid`'s).

        The mask joins the one the model bands have (:func:`tiledepth.read.keep_band`):

        * none: it is the VRT's mask band;
        * a nodata on each: the VRT declares it, and leaves the pixels ``--mask`` masks
          unpainted (read through a VRT whose mask is ``--mask``): they hold it;
        * an alpha band or internal mask: the VRT's mask band is ``--mask``'s, painted
          where the pixels' own mask is not 0.

        GDAL skips a mask band in an average only where the band declares a nodata its
        source does not have (it otherwise has the source average itself): the first and
        last declare one, which the mask band overrides. The sources are opened without
        their overviews (their full resolution averaged, not an overview); the VRT's own
        overviews are the input's, read as they are, as ``--nodata``'s (made without
        ``--mask``, they average its masked pixels in at its edge).
        """
        source = gdal_name(self._pixels)
        model = sorted(set(self._read_bands))
        every = range(1, pixel_ds.count + 1)
        dtypes, own = pixel_ds.dtypes, pixel_ds.nodatavals
        flags = [pixel_ds.mask_flag_enums[b - 1] for b in model]
        width, height = pixel_ds.width, pixel_ds.height
        keep = keep_band(gdal_name(self.mask_path), self._mask_ds.dtypes[0], width, height,
                         masks=MaskFlags.all_valid not in self._mask_ds.mask_flag_enums[0]
                         and self._mask_ds.nodatavals[0] != 0)
        levels = self._overview_sizes(model[0], pixel_ds, source)  # the pixels' overviews
        # (model bands with a nodata and without: valid wherever one is, as GDAL's dataset
        # mask says: the --mask alone)
        per_dataset = not all(MaskFlags.all_valid in f or MaskFlags.nodata in f for f in flags)
        nodata = not per_dataset and all(MaskFlags.nodata in f for f in flags)
        theirs = f"mask,{model[0]}"  # the pixels' own mask band, where it is per dataset
        # the overviews: the pixels' own, with their nodata or mask
        overviews = tuple(
            vrt_xml(*size, [vrt_band(source, b, dtypes[b - 1], level=level,
                                     nodata=own[b - 1] if nodata and b in model else None)
                            for b in every],
                    mask=vrt_band(source, theirs, "uint8", level=level) if per_dataset else None)
            for level, size in enumerate(levels))
        if nodata:
            inner = vrt_xml(width, height, [vrt_band(source, b, dtypes[b - 1], overviews=False)
                                            for b in every], mask=keep)
            return vrt_xml(width, height,
                           [vrt_band(inner, b, dtypes[b - 1], nodata=own[b - 1], use_mask=True)
                            if b in model else vrt_band(inner, b, dtypes[b - 1]) for b in every],
                           overviews=overviews)
        mask = keep
        if per_dataset:  # --mask's value where the pixels' own mask is not 0, else 0
            both = vrt_xml(width, height, [keep],
                           mask=vrt_band(source, theirs, "uint8", overviews=False))
            mask = vrt_band(both, 1, "uint8", use_mask=True)
        # any nodata the source lacks has GDAL average through the mask band
        return vrt_xml(width, height,
                       [vrt_band(source, b, dtypes[b - 1], overviews=False,
                                 nodata=(0 if own[b - 1] != 0 else 1) if b in model else None)
                        for b in every], mask=mask, overviews=overviews)

    def _colour_table(self, unique: list[int]) -> dict | None:
        """The colour table of a colour-map model band, or None (no such band)."""
        ds = self.dataset
        palette = [b for b in unique if ds.colorinterp[b - 1] == ColorInterp.palette]
        if not palette:
            return None
        if len(unique) > 1:
            raise InputError(f"{source_name(self.path)}: band {palette[0]} is a colour-map "
                             "(palette) band among others; expand it first (gdal_translate "
                             "-expand rgb) or choose other bands with --bands")
        try:
            table = ds.colormap(unique[0])
        except ValueError:  # no colour table after all: the band is read as grey
            return None
        self._palette = bool(table)
        return table or None

    def _overview_sizes(self, band: int, ds=None, source: str | None = None
                        ) -> list[tuple[int, int]]:
        """(width, height) of each of the input's overviews (those of ``ds``, opened as
        ``source``, where given), the largest first."""
        ds, source = (self.dataset, gdal_name(self.path)) if ds is None else (ds, source)
        sizes = []
        for level in range(len(ds.overviews(band))):
            with open_raster(source, overview_level=level) as opened:
                sizes.append((opened.width, opened.height))
        return sizes

    def _pixels_of(self, ds, averaged: bool = False):
        """The dataset pixel reads use: ``ds`` (a worker's), else this reader's; for an
        ``averaged`` read, the one masked by ``--mask`` too (:meth:`_averaged_source`)."""
        if isinstance(ds, _Handles):
            return ds.averaged if averaged else ds.pixels
        if ds is not None and ds is not self._ds:
            return ds
        return self._averaged_ds if averaged and self._averaged_ds is not None \
            else self._pixel_ds

    def _read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None,
              resampling: Resampling = Resampling.nearest, ds=None) -> np.ndarray:
        unique = sorted(set(self._read_bands))
        kwargs = {"window": window, "resampling": resampling}
        if out_shape is not None:
            kwargs["out_shape"] = (len(unique), *out_shape)
        try:
            averaged = out_shape is not None and resampling != Resampling.nearest
            data = self._pixels_of(ds, averaged).read(unique, **kwargs)
        except GDAL_ERRORS as exc:
            if self.remote:
                raise InputError(f"{_shown(self.path)}: remote read failed after retries "
                                 f"({first_line(exc)}); check the connection") from exc
            raise InputError(
                f"{self.path}: read failed ({first_line(exc)}); the file may be truncated "
                "or corrupt: re-export or re-download it"
            ) from exc
        order = [unique.index(b) for b in self._read_bands]
        return data if order == list(range(len(data))) else data[order]  # (1, 2, 3): as read

    def _valid(self, raw: np.ndarray, window: Window | None = None,
               out_shape: tuple[int, int] | None = None,
               resampling: Resampling = Resampling.nearest, ds=None) -> np.ndarray:
        full = out_shape is None or window is None or \
            tuple(out_shape) == (int(window.height), int(window.width))
        own_size = out_shape is None or (window is not None and full)
        if self._all_valid or (self._nan_only and full) or (self._nan_for_nodata and own_size):
            # what dataset_mask would say, without computing it (a NaN nodata at full
            # resolution: the finite values below; 22-55 % of a float run's time otherwise)
            valid = np.ones(raw.shape[1:], bool)
        else:
            try:
                mask = self._pixels_of(ds).dataset_mask(window=window, out_shape=out_shape,
                                                        resampling=resampling)
            except GDAL_ERRORS as exc:
                raise InputError(f"{self.path}: mask read failed ({first_line(exc)})") from exc
            valid = mask > 0
        if raw.dtype.kind == "f":
            valid &= np.isfinite(raw).all(axis=0)
        if self._mask_ds is not None:
            with self._mask_lock:  # one handle, shared by the read-ahead threads
                try:
                    m = self._mask_ds.read(1, window=window, out_shape=out_shape or None,
                                           resampling=Resampling.nearest, masked=True)
                except GDAL_ERRORS as exc:
                    raise InputError(f"{self.mask_path}: mask read failed "
                                     f"({first_line(exc)})") from exc
            valid &= mask_keeps(m)
        return valid

    def _open_mask(self) -> rasterio.io.DatasetReader:
        """Open ``--mask``: a raster of the input's width and height."""
        if not self.mask_path.is_file():
            raise InputError(f"{self.mask_path}: no such file; check --mask")
        try:
            ds = open_raster(gdal_name(self.mask_path))
        except GDAL_ERRORS as exc:
            raise InputError(f"{self.mask_path}: cannot read it as a raster "
                             f"({first_line(exc)})") from exc
        if (ds.width, ds.height) != (self.width, self.height):
            ds.close()
            raise InputError(f"{self.mask_path}: the mask is {ds.width} x {ds.height} px, the "
                             f"input {self.width} x {self.height}; it must be on the input's "
                             "grid")
        differs = grid_difference(self.dataset, ds)
        if differs is not None:
            ds.close()
            raise InputError(f"{self.mask_path}: the mask is not on the input's grid ({differs}); "
                             f"warp it onto the input's grid first "
                             f"({warp_hint(self.dataset, self.mask_path)})")
        return ds

    def _fit_scaling(self) -> Scaling:
        dtype = self.dataset.dtypes[self.bands[0] - 1]
        if self._palette:  # a colour table's colours are 8-bit
            return Scaling(0.0, 255.0)
        bits = sample_bits(self.dataset, self.bands[0])
        if bits is not None:  # fewer than 8 bits (a 4-bit PNG): its white is 2**bits - 1
            return Scaling(0.0, float(2**bits - 1))
        if np.dtype(dtype) == np.uint8:
            return Scaling(0.0, 255.0)
        sample, valid = self._sample(coarse_shape(self.height, self.width, SAMPLE_SIZE))
        return fit_scaling(sample, valid, dtype)


def gdal_name(path: Path | str) -> str:
    """The name GDAL opens ``path`` by: a local Path by its absolute name, a GDAL path (a URL,
    a ``/vsi`` path, VRT text) as it is. rasterio reads a name's leading ``zip:``, ``s3:``,
    ``https:``... as a scheme: a local file named ``zip:a.tif`` or ``s3:x.tif``, opened by the
    relative name, was read as ``/vsizip/a.tif`` or an S3 object; its absolute name starts with
    ``/`` (messages still name the path as typed: :attr:`RasterReader.path`).

    Examples
    --------
    >>> gdal_name(Path("/data/zip:a.tif")), gdal_name("/vsis3/b/k.tif")
    ('/data/zip:a.tif', '/vsis3/b/k.tif')
    """
    return str(path.absolute()) if isinstance(path, Path) else path


class _Handles:
    """A read-ahead thread's datasets where averaged reads read another source
    (:meth:`RasterReader._averaged_source`): the pixels', and the averaged reads'."""

    def __init__(self, pixels, averaged) -> None:
        self.pixels, self.averaged = pixels, averaged

    def close(self) -> None:
        try:
            self.pixels.close()
        finally:
            self.averaged.close()

    def __enter__(self) -> _Handles:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@contextlib.contextmanager
def _used_in_own_env(ds: rasterio.io.DatasetReader,
                     env_options: dict) -> Iterator[rasterio.io.DatasetReader]:
    """``ds``, opened by another thread, read in this thread's own scoped ``rasterio.Env``
    (GDAL's configuration is per thread); closed on exit."""
    with rasterio.Env(**env_options), ds:
        yield ds


def sample_bits(ds, band: int) -> int | None:
    """The bits per sample of ``band`` where fewer than 8 (a 1, 2 or 4-bit PNG, a TIFF of
    1 to 7 bits: GDAL reads them as Byte and tags ``NBITS`` in their IMAGE_STRUCTURE
    metadata), else None."""
    try:
        bits = int(ds.tags(band, ns="IMAGE_STRUCTURE").get("NBITS", 8))
    except ValueError:
        return None
    return bits if 1 <= bits < 8 else None


def representable(value: float, dtype: str | np.dtype) -> bool:
    """Whether a pixel of ``dtype`` can hold ``value`` (a float type holds any finite one, as
    the nearest it has: GDAL compares a nodata value so).

    Examples
    --------
    >>> representable(250, "uint8"), representable(-1, "uint8"), representable(0.5, "int16")
    (True, False, False)
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def check_nodata(value: float | None, dtypes: Iterable[str], name: str = "input") -> None:
    """Raise OptionError where ``--nodata`` ``value`` is one no pixel of the model bands'
    ``dtypes`` can hold (:func:`representable`): it masked nothing, without a word, while the
    output's tags recorded it. Float bands hold any value.

    Examples
    --------
    >>> check_nodata(255, ["uint8"]), check_nodata(-1.5, ["float32"]), check_nodata(None, ["uint8"])
    (None, None, None)
    >>> check_nodata(300, ["uint8"], "ortho.tif")
    Traceback (most recent call last):
    ...
    tiledepth.errors.OptionError: ortho.tif: --nodata 300 cannot occur in a uint8 band (whole \
numbers 0-255): it would mask nothing; give the value its empty pixels hold, or leave --nodata out
    """
    if value is None:
        return
    for dtype in dict.fromkeys(np.dtype(d) for d in dtypes):
        if not representable(value, dtype):
            text = f"{value:g}" if float(f"{value:g}") == value else repr(float(value))
            info = np.iinfo(dtype)
            raise OptionError(f"{name}: --nodata {text} cannot occur in a {dtype} band (whole "
                              f"numbers {info.min}-{info.max}): it would mask nothing; give the "
                              "value its empty pixels hold, or leave --nodata out")


def georeferenced(ds) -> bool:
    """Whether ``ds`` is placed on the earth by a CRS and a transform (not GCPs, not the
    identity that rasterio reports for an image without georeferencing)."""
    return ds.crs is not None and bool(ds.crs) and not ds.transform.is_identity


def mask_keeps(values: np.ma.MaskedArray) -> np.ndarray:
    """Where the values of a ``--mask`` raster (read ``masked=True``) keep a pixel: any
    value but 0, and not the mask's own nodata.

    Examples
    --------
    >>> mask_keeps(np.ma.masked_equal([0, 1, -1, 255, 7], 7))
    array([False,  True,  True,  True, False])
    """
    return np.ma.filled(np.ma.asarray(values) != 0, False)


def grid_difference(ds, other) -> str | None:
    """What puts ``other`` (of the same size) off the grid of ``ds``: its CRS, or its
    transform beyond float noise (1e-6 of a pixel); None where they agree, or where either
    is not georeferenced (a mask without georeferencing is taken as on the input's grid)."""
    if not (georeferenced(ds) and georeferenced(other)):
        return None
    if ds.crs != other.crs:
        return f"its CRS is {crs_name(other.crs)}, the input's {crs_name(ds.crs)}"
    a, b = ds.transform, other.transform
    pixel = max(math.hypot(a.a, a.d), math.hypot(a.b, a.e))
    if any(abs(x - y) > 1e-6 * pixel for x, y in zip(a[:6], b[:6], strict=True)):
        return (f"its origin is {b.c:.10g}, {b.f:.10g} with {b.a:.10g} x {b.e:.10g} pixels, "
                f"the input's {a.c:.10g}, {a.f:.10g} with {a.a:.10g} x {a.e:.10g}")
    return None


def crs_name(crs) -> str:
    """A CRS as a user names it: ``EPSG:32611``, else its name."""
    import re

    epsg = crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}"
    name = re.search(r'"([^"]+)"', crs.to_wkt())  # the WKT's first quoted text: its name
    return name.group(1) if name else "a custom CRS"


def warp_hint(ds, path: Path) -> str:
    """The gdalwarp command that puts the raster ``path`` on the grid of ``ds``: its CRS,
    extent and size (for a rotated grid, the CRS and size: the extent cannot say the
    rotation), nearest neighbour (a mask's values are classes)."""
    size = f"-ts {ds.width} {ds.height}"
    target = f"-t_srs {crs_name(ds.crs)}" if ds.crs.to_epsg() is not None else \
        "-t_srs <the input's CRS>"
    if ds.transform.b == 0 and ds.transform.d == 0:
        left, bottom, right, top = ds.bounds
        size = f"-te {left!r} {bottom!r} {right!r} {top!r} {size}"
    return f"gdalwarp {target} {size} -r near {path.name} {path.stem}.on_grid{path.suffix}"


class ScaledReader:
    """A :class:`RasterReader` seen at reduced resolution (``--scale``).

    Window ``(r, c, h, w)`` of the scaled grid reads the full-resolution window
    ``(r / scale, c / scale, h / scale, w / scale)`` (fractional offsets and
    all) with average resampling to ``(h, w)`` pixels.

    Parameters
    ----------
    base : RasterReader
        An open reader.
    scale : float
        In (0, 1]: 0.5 halves each side.
    """

    def __init__(self, base: RasterReader, scale: float) -> None:
        self.base = base
        self.scale = scale
        self.path = base.path
        # read over a network: the raster's reader says (an array's has no such thing)
        remote = getattr(base, "remote", None)
        self.remote = reads_remote(self.path) if remote is None else remote
        self.height = max(1, round(base.height * scale))
        self.width = max(1, round(base.width * scale))

    def _full(self, window: Window) -> Window:
        fy, fx = self.base.height / self.height, self.base.width / self.width
        return Window(window.col_off * fx, window.row_off * fy, window.width * fx,
                      window.height * fy)

    def read_tile(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        return self.base._read_tile_from(self.base.dataset, self._full(window),
                                         (int(window.height), int(window.width)))

    def iter_tiles(self, windows: Iterable[Window], *,
                   workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        workers = min(workers, 1) if self.remote else workers  # as RasterReader's
        windows = list(windows)
        raster = self.base
        while not isinstance(raster, RasterReader) and hasattr(raster, "base"):
            raster = raster.base  # (an area's reader: the raster's, the same rows a window)
        if isinstance(raster, RasterReader):
            raster._hold_tile_cache([self._full(w) for w in windows], workers)
        if workers <= 0:
            for window in windows:
                yield self.read_tile(window)
            return

        def read(ds, window: Window) -> tuple[np.ndarray, np.ndarray]:
            return self.base._read_tile_from(ds, self._full(window),
                                             (int(window.height), int(window.width)))

        yield from self.base._read_ahead(windows, read, workers)

    def read_coarse(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        return self.base.read_coarse(long_side)


class ArrayReader:
    """The reader interface over an in-memory image (for :func:`tiledepth.estimate`).

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8, other integer, or float (NaN = masked); a masked array's masked
        pixels (those masked in every band, as a raster's nodata) are masked too.
    mask : ndarray of shape (H, W), optional
        True where the pixel is valid.
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray | None = None) -> None:
        if isinstance(image, (str, os.PathLike)):  # read as an array of shape ()
            raise OptionError(f"image is a path ({os.fspath(image)!r}), not an array; "
                              "tiledepth.estimate takes an image in memory: for a raster "
                              "file use tiledepth.run(path, output, model=...)")
        if np.ma.isMaskedArray(image):  # rasterio's read(masked=True), reshaped
            hidden = np.ma.getmaskarray(image)
            kept = ~hidden.all(axis=-1) if hidden.ndim == 3 else ~hidden
            mask = kept if mask is None else np.asarray(mask, bool) & kept \
                if np.shape(mask) == kept.shape else mask  # a wrong shape: refused below
            image = np.ma.getdata(image)
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise OptionError(
                f"image must have shape (H, W, 3) or (H, W), got {np.shape(image)}"
            )
        if image.dtype.kind not in "uifb":
            raise OptionError(f"image must hold real numbers (integers or floats), got "
                              f"{image.dtype}")
        if image.dtype.kind == "b":  # a binary image: False 0, True 255, as a uint8 one
            image = image.astype(np.uint8) * np.uint8(255)
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        self.image = np.moveaxis(image, -1, 0)  # (3, H, W), a view
        valid = np.ones(image.shape[:2], bool) if mask is None else np.asarray(mask, bool)
        if valid.shape != image.shape[:2]:
            raise OptionError(f"mask shape {valid.shape} does not match image {image.shape[:2]}")
        if image.dtype.kind == "f":
            valid = valid & np.isfinite(self.image).all(axis=0)
        self.valid = valid
        self.height, self.width = image.shape[:2]
        step = max(1, math.ceil(max(self.height, self.width) / SAMPLE_SIZE))
        self.scaling = fit_scaling(self.image[:, ::step, ::step], valid[::step, ::step],
                                   image.dtype)
        self._coarse: tuple[int, np.ndarray, np.ndarray] | None = None  # the last read_coarse

    def __enter__(self) -> ArrayReader:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def read_tile(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = window.toslices()
        return self.scaling.apply(self.image[:, rows, cols]), self.valid[rows, cols].copy()

    def read_valid(self, window: Window) -> np.ndarray:
        rows, cols = window.toslices()
        return self.valid[rows, cols].copy()

    def iter_tiles(self, windows: Iterable[Window], *,
                   workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``read_tile`` of each window, in order (in memory: nothing to read ahead)."""
        for window in windows:
            yield self.read_tile(window)

    def read_coarse(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`RasterReader.read_coarse`: averages with exact area weights
        (:func:`area_average`), normalised by the valid pixels under each.

        The last result is kept: asked again (a pyramid level's fusion reads the
        coarse image the run read), it comes back as a copy, not computed again.
        """
        if self._coarse is None or self._coarse[0] != long_side:
            self._coarse = (long_side, *self._read_coarse(long_side))
        return self._coarse[1].copy(), self._coarse[2].copy()

    def _read_coarse(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        shape = coarse_shape(self.height, self.width, long_side)
        image = self.scaling.apply(self.image)
        image[:, ~self.valid] = 0.0
        if shape == (self.height, self.width):
            return image, self.valid.copy()
        small = area_average(image, shape)
        if not self.valid.all():  # normalised: masked pixels (zeros) must not darken the rest
            weight = area_average(self.valid[None].astype(np.float32), shape)[0]
            small = np.where(weight > 1e-6, small / np.maximum(weight, 1e-6), 0.0)
        # validity sampled at the coarse pixels' centres
        r = ((np.arange(shape[0]) + 0.5) * (self.height / shape[0])).astype(np.intp)
        c = ((np.arange(shape[1]) + 0.5) * (self.width / shape[1])).astype(np.intp)
        valid = self.valid[np.ix_(r, c)]
        if not valid.any() and self.valid.any():
            # every valid area is smaller than a coarse pixel: keep the coarse pixels holding
            # any, with the mean colour of the valid pixels under them
            rows, cols = np.nonzero(self.valid)
            at = (rows * shape[0] // self.height, cols * shape[1] // self.width)
            count = np.zeros(shape)
            np.add.at(count, at, 1.0)
            valid = count > 0
            for band in range(3):
                total = np.zeros(shape)
                np.add.at(total, at, image[band, rows, cols])
                small[band][valid] = total[valid] / count[valid]
        return small.astype(np.float32), valid


def reduced(reader, long_side: int):
    """The same raster seen at reduced resolution, its long side ``long_side`` pixels.

    A :class:`ScaledReader` over a file (averaged windowed reads, nothing held
    in memory), or a resized :class:`ArrayReader` over an in-memory image (the
    same one when it is no larger). Used by the fusion's pyramid levels
    (:func:`tiledepth.engine.fuse`).
    """
    if isinstance(reader, ArrayReader):
        if max(reader.height, reader.width) <= long_side:
            return reader  # the same pixels, and the same tiles and coarse image of them
        image, valid = reader.read_coarse(long_side)  # (3, h, w), (h, w)
        return ArrayReader(np.moveaxis(image, 0, -1), valid)
    factor = long_side / max(reader.height, reader.width)
    if isinstance(reader, ScaledReader):
        return ScaledReader(reader.base, reader.scale * factor)
    return ScaledReader(reader, factor)


def _shown(path) -> str:
    """A remote input as a message names it: its URL without credentials
    (:func:`tiledepth.sources.redact`), a mosaic's VRT text by the files it reads."""
    text = str(path)
    if text.lstrip().startswith("<VRTDataset"):
        from tiledepth.identity import vrt_sources

        members = vrt_sources(text)
        return redact(f"the mosaic of {members[0]} and {len(members) - 1} other file(s)"
                      if members else "the mosaic")
    return redact(text)
