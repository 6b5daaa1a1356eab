"""Mosaics: many adjacent rasters fused as one, so no seam appears between files.

:func:`build_vrt` lays the inputs side by side in a GDAL VRT held in memory
(XML text, never written): they must share CRS, resolution, band count and
data type, and sit on one pixel grid. :func:`run_mosaic` fuses that VRT with
:func:`tiledepth.run`; tiles cross the file boundaries. With ``split`` it
writes one output per input instead, each cut from that one fusion
(:func:`split_outputs`), named as ``tiledepth batch`` names them.

A split (``run --mosaic --split``, ``batch --mosaic``) holds a lock on its output folder
from its first check to its last file, so a second one into the same folder is refused
at its start (:class:`~tiledepth.errors.BusyError`) instead of cutting, or removing,
the first one's fused map. The fused map is removed once every output is cut; a split
that fails or is stopped while cutting keeps it, with the key of what it was fused from
(:func:`fusion_key`: the key of that fusion's output, every option in it) beside it, and
the next split into the folder whose fusion has that key cuts from it instead of predicting
again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from affine import Affine
from rasterio.windows import Window

from tiledepth import sources
from tiledepth.errors import BusyError, InputError, OptionError, OutputError, TiledepthError

__all__ = ["Member", "Mosaic", "SplitInterrupted", "build_vrt", "check_split_target",
           "fusion_key", "run_mosaic", "split_outputs"]

if TYPE_CHECKING:
    from tiledepth.safe_write import ReadFiles

log = logging.getLogger(__name__)

#: Inputs' pixel sizes and offsets may differ by this fraction of a pixel.
GRID_TOLERANCE = 1e-3
#: Name of the fused map while ``split`` cuts it (hidden, in the output folder).
FUSED_NAME = ".tiledepth-mosaic.depth.tif"
#: Beside the fused map: its :func:`fusion_key` and what the fusion found, written once it
#: is complete; a later split whose fusion has the same key cuts from it.
KEY_NAME = ".tiledepth-mosaic.key.json"
#: What a split locks in its output folder (:func:`tiledepth.lock.lock_path`: the lock
#: file is ``..tiledepth-mosaic.tiledepth-lock``, not the fused map's own).
LOCK_NAME = ".tiledepth-mosaic"


class SplitInterrupted(TiledepthError, KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while ``split`` cut the outputs from the fused map, which is kept.

    A :class:`KeyboardInterrupt` to its callers, and a :class:`TiledepthError` whose
    message says what is kept and how to go on; exit code 130 (143 for SIGTERM).
    """

    exit_code = 130


@dataclass(frozen=True)
class Member:
    """One input of a mosaic: its GDAL path, where its output goes, its window in the mosaic,
    and its own transform, which its output keeps, as it keeps the input's ``rpcs`` (a
    ``rasterio.rpc.RPC``, else None) and ``area_or_point`` (``"Point"`` or None), as a run
    of the input alone does (:meth:`tiledepth.write.OutputGrid.from_dataset`).

    The window is its offset on the mosaic's grid rounded to whole pixels (within
    :data:`GRID_TOLERANCE`): the transform the fused map gives that window may differ from
    the input's by that much, and an output on any other transform than its input's is
    not the input's map (``batch --resume`` would redo it every time).
    """

    source: str
    relative: str
    window: Window
    transform: Affine
    rpcs: object = field(default=None, hash=False)  # (a rasterio RPC is not hashable)
    area_or_point: str | None = None


@dataclass(frozen=True)
class Mosaic:
    """A VRT (XML text) of many inputs and each input's place in it."""

    vrt: str
    members: tuple[Member, ...]
    height: int
    width: int


def build_vrt(inputs: Sequence[str | os.PathLike],
              relatives: Sequence[str] | None = None, *,
              asset: str | None = None, bands: Sequence[int] | None = None,
              nodata: float | None = None) -> Mosaic:
    """Lay rasters side by side in an in-memory VRT.

    Parameters
    ----------
    inputs : sequence of str or os.PathLike
        Rasters (local or any :func:`tiledepth.sources.resolve` source) on one
        pixel grid: same CRS, resolution, band count and data type, north up.
    relatives : sequence of str, optional
        Each input's name under the output folder (``a/x.tif``); default its
        file name.
    asset : str, optional
        The asset read of every STAC item among ``inputs`` (default ``visual``, else
        the first RGB GeoTIFF, as :func:`tiledepth.sources.resolve` chooses).
    bands : sequence of int, optional
        The bands the model reads (``--bands``); default as
        :func:`tiledepth.read.select_bands` chooses them for the mosaic.
    nodata : float, optional
        ``--nodata``: declared instead of each input's own nodata value.

    Returns
    -------
    Mosaic
        Pixels outside every input are masked; inside one, the VRT's mask band is
        that input's dataset mask as a run of it alone reads it (an alpha band or
        internal mask; a nodata value, or ``nodata``, where all the bands the model
        reads equal it: another band's, a near-infrared one's, masks nothing). Where inputs
        overlap, a later one's valid pixels are drawn over an earlier one's, and
        its masked pixels leave them as they are. Each input is georeferenced as a
        run of it alone sees it (a ``.aux.xml`` or world file beside a local one too),
        and inputs of fewer than 8 bits are scaled as that run scales them
        (:func:`_bit_depth`).

    Raises
    ------
    InputError
        An input cannot be opened, is rotated or not north up (south up,
        mirrored), or differs from the first in CRS, resolution, bands or grid;
        the message names it. ``asset`` with no STAC
        item among the inputs, or that an item does not have.
    OptionError
        ``nodata`` is a value the inputs' bands cannot hold, as a run of the VRT
        refuses it (:func:`tiledepth.readers.check_nodata`).
    """
    if len(inputs) < 1:
        raise InputError("a mosaic needs at least one input")
    _check_asset(inputs, asset)
    paths = [os.fspath(_resolve(p, asset)) for p in inputs]
    names = list(relatives) if relatives is not None else [sources.source_name(p)
                                                           for p in paths]
    infos, grids = zip(*_open_all(paths), strict=True)
    _check_one_grid(paths, infos)
    tables = _one_colour_table(paths, [tables for *_, tables, _ in infos])
    # a colour-map band's indexes are read as their (8-bit) colours, whatever their bits
    nbits, ratios = _bit_depth([None if tables else bits for *_, bits in infos])
    crs, t0, _, _, count, dtype, colorinterp, *_ = infos[0]
    # each input's offset on the grid of the union of them all
    left = min(t.c for _, t, *_ in infos)
    top = max(t.f for _, t, *_ in infos)
    members, right, bottom = [], 0, 0
    for path, name, (_, t, h, w, *_), grid in zip(paths, names, infos, grids, strict=True):
        col, row = (t.c - left) / t0.a, (t.f - top) / t0.e
        if abs(col - round(col)) > GRID_TOLERANCE or abs(row - round(row)) > GRID_TOLERANCE:
            raise InputError(f"{path}: is not on {paths[0]}'s pixel grid (offset by "
                             f"{col - round(col):.3f}, {row - round(row):.3f} px)")
        members.append(Member(path, name, Window(round(col), round(row), w, h), t,
                              rpcs=grid.rpcs, area_or_point=grid.area_or_point))
        right, bottom = max(right, round(col) + w), max(bottom, round(row) + h)
    vrt_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                "int32": "Int32", "float32": "Float32", "float64": "Float64",
                "int8": "Int8"}.get(dtype)
    if vrt_type is None:
        raise InputError(f"{paths[0]}: data type {dtype} cannot be mosaicked")
    # refused here, in the run's words (the VRT's name is mosaic.vrt: sources.source_name),
    # not by the run of the VRT: before a split makes its output folder
    from tiledepth.readers import check_nodata

    check_nodata(nodata, [dtype], "mosaic.vrt")
    gt = f"{left!r}, {t0.a!r}, 0, {top!r}, 0, {t0.e!r}"
    # each input masked as a run of it alone masks it: by the bands the model reads (those
    # of the VRT, whose colour interpretation is the first input's), and by --nodata
    model = _model_bands(colorinterp, bands)
    palette = any(b in tables for b in (model or ()))
    maskings = [_masking(flags, ci, model, nodata=nodata, own=own, dtype=dtype, palette=palette)
                for *_, ci, own, flags, _, _ in infos]
    # the fused map's pixels are points only where every input's are; its RPCs none: an
    # input's model only that input's pixels
    point = all(g.area_or_point == "Point" for g in grids)
    return Mosaic(_vrt_text(members, maskings, vrt_type, colorinterp, crs, gt,
                            (bottom, right), tables, nbits=nbits, ratios=ratios, point=point),
                  tuple(members), bottom, right)


def _check_asset(inputs: Sequence[str | os.PathLike], asset: str | None) -> None:
    """Raise InputError if ``asset`` is given and no input is a STAC item (as a run of one
    raster refuses ``--asset``)."""
    if asset is not None and not any(sources.is_stac_item(p) for p in inputs):
        raise InputError(f"{os.fspath(inputs[0])}: --asset needs a STAC item (a .json file "
                         "or URL), and no input of the mosaic is one")


def _resolve(source: str | os.PathLike, asset: str | None) -> Path | str:
    """:func:`tiledepth.sources.resolve` of ``source``, a STAC item's ``asset`` read."""
    return sources.resolve(source, asset=asset if sources.is_stac_item(source) else None)


def _open_all(paths: list[str]) -> list[tuple[tuple, Any]]:
    """Each raster's (crs, transform, height, width, count, dtype, colorinterp, nodata,
    mask flags of each band, colour tables: band -> table of each colour-map band, bits
    per sample where fewer than 8: :func:`tiledepth.readers.sample_bits`, else None),
    with its :class:`tiledepth.write.OutputGrid` (its RPCs and ``AREA_OR_POINT``).

    Each is opened as :class:`tiledepth.readers.RasterReader` opens it alone: a remote one
    without a directory listing (:data:`tiledepth.sources.REMOTE_OPTIONS`), a local one
    with it, so that GDAL finds the georeferencing in a ``.aux.xml`` or world file beside
    it (a PNG's), which the VRT then carries.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    from tiledepth.rasterfile import open_raster
    from tiledepth.read import GDAL_OPTIONS
    from tiledepth.readers import sample_bits
    from tiledepth.write import OutputGrid

    infos = []
    for path in paths:
        remote = sources.remote_options(path)
        try:
            with rasterio.Env(**GDAL_OPTIONS, **remote), open_raster(path) as ds:
                infos.append(((ds.crs, ds.transform, ds.height, ds.width, ds.count,
                               ds.dtypes[0], list(ds.colorinterp), ds.nodata,
                               ds.mask_flag_enums, _colour_tables(ds), sample_bits(ds, 1)),
                              OutputGrid.from_dataset(ds)))
        except (RasterioIOError, OSError) as exc:
            raise InputError(f"{path}: cannot open it for the mosaic ({exc})") from exc
    return infos


def _bit_depth(bits: Sequence[int | None]) -> tuple[int | None, list[float | None]]:
    """The mosaic's bits per sample where fewer than 8, and the scale of each input onto
    them, from each input's bits (``bits``: :func:`tiledepth.readers.sample_bits`; None
    for all of its type's, 8 for Byte).

    A run of one input of n < 8 bits takes its white as 2**n - 1, not 255 (GDAL reads
    it as Byte): the VRT carries the inputs' ``NBITS`` where they share it, and an input
    of fewer bits than another is drawn scaled onto the most bits among them (its white
    onto their white: exact where 2**n - 1 divides theirs, as 4 bits into 8; else to
    the nearest level), so that each input's white is white.

    Examples
    --------
    >>> _bit_depth([None, None])  # 8-bit (or wider) inputs: as they are
    (None, [None, None])
    >>> _bit_depth([4, 4])  # 4-bit inputs: the VRT says NBITS=4
    (4, [None, None])
    >>> _bit_depth([4, None, 1])  # a 4-bit and a 1-bit input among 8-bit ones
    (None, [17.0, None, 255.0])
    >>> _bit_depth([2, 4])
    (4, [5.0, None])
    """
    most = 8 if None in bits else max(bits)
    ratios = [None if b is None or b == most else (2**most - 1) / (2**b - 1) for b in bits]
    return (most if most < 8 else None), ratios


def _colour_tables(ds) -> dict[int, dict]:
    """The colour table of each colour-map (palette) band of ``ds``, by band index."""
    from rasterio.enums import ColorInterp

    tables = {}
    for band, ci in enumerate(ds.colorinterp, 1):
        if ci == ColorInterp.palette:
            try:
                tables[band] = ds.colormap(band)
            except ValueError:  # no colour table after all: the band is read as grey
                pass
    return tables


def _one_colour_table(paths: list[str], tables: list[dict[int, dict]]) -> dict[int, dict]:
    """The colour tables every input shares (``tables``: :func:`_colour_tables` of each),
    which the mosaic's bands carry, so that its indexes are read as their colours, as a
    run of one input reads them; InputError naming the first input whose tables differ
    from the first input's (one VRT band has one table)."""
    for path, other in zip(paths[1:], tables[1:], strict=True):
        if other != tables[0]:
            raise InputError(f"{path}: its colour table differs from {paths[0]}'s; expand "
                             "them first: gdal_translate -expand rgb")
    return tables[0]


def _colour_table_xml(table: dict) -> str:
    """A VRT ``<ColorTable>`` of ``table`` (index -> (red, green, blue, alpha)); indexes
    the table skips are transparent black.

    Examples
    --------
    >>> _colour_table_xml({0: (255, 0, 0, 255), 2: (0, 0, 255, 0)})
    '<ColorTable><Entry c1="255" c2="0" c3="0" c4="255"/><Entry c1="0" c2="0" c3="0" \
c4="0"/><Entry c1="0" c2="0" c3="255" c4="0"/></ColorTable>'
    """
    entries = "".join('<Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(
        *table.get(i, (0, 0, 0, 0))) for i in range(max(table) + 1))
    return f"<ColorTable>{entries}</ColorTable>"


def _check_one_grid(paths: list[str], infos: list[tuple]) -> None:
    """Raise InputError naming the first raster without georeferencing, not north up, or
    whose CRS, resolution, band count or data type differ from the first's."""
    crs, t0, _, _, count, dtype, *_ = infos[0]
    for path, (c, t, _, _, n, dt, *_) in zip(paths, infos, strict=True):
        # every input, before its CRS and orientation are compared: one without CRS or
        # transform was told to reproject (CRS None) or that it is south up (its identity
        # transform's e is 1)
        if c is None or t.is_identity:
            raise InputError(f"{path}: has no georeferencing; a mosaic needs CRS and transform")
        if c != crs:
            raise InputError(f"{path}: CRS {c} differs from {paths[0]}'s {crs}; "
                             "reproject it first (gdalwarp)")
        _check_north_up(path, t)
        if not (math.isclose(t.a, t0.a, rel_tol=1e-6)
                and math.isclose(t.e, t0.e, rel_tol=1e-6)):
            raise InputError(f"{path}: resolution {t.a:g} x {-t.e:g} differs from {paths[0]}'s "
                             f"{t0.a:g} x {-t0.e:g}; resample it first (gdalwarp -tr)")
        if n != count:
            raise InputError(f"{path}: {n} band(s) of {dt} differ from {paths[0]}'s {count} "
                             f"of {dtype}")
        if dt != dtype:  # one VRT band has one data type; each alone would run
            raise InputError(f"{path}: data type {dt} differs from {paths[0]}'s {dtype}; "
                             f"convert it first: {_convert_to(dtype, path)}")


def _convert_to(dtype: str, path: str) -> str:
    """The GDAL command that converts ``path`` to ``dtype``, its values scaled onto it (its
    min..max where that is Byte's 0..255, which ``-scale`` alone gives).

    Examples
    --------
    >>> _convert_to("uint8", "b.tif")
    'gdal_translate -ot Byte -scale b.tif OUT (its min..max onto 0..255)'
    >>> _convert_to("uint16", "b.tif")
    'gdal_translate -ot UInt16 -scale SRC_MIN SRC_MAX 0 65535 b.tif OUT'
    >>> _convert_to("float32", "b.tif")
    'gdal_translate -ot Float32 -scale SRC_MIN SRC_MAX 0 1 b.tif OUT'
    """
    if dtype == "uint8":
        return f"gdal_translate -ot Byte -scale {path} OUT (its min..max onto 0..255)"
    gdal = dtype.capitalize().replace("Uint", "UInt")  # uint16 -> UInt16, float32 -> Float32
    bits = int("".join(ch for ch in dtype if ch.isdigit()))
    low, high = ((0, 2 ** bits - 1) if dtype.startswith("uint") else
                 (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if dtype.startswith("int") else (0, 1))
    return f"gdal_translate -ot {gdal} -scale SRC_MIN SRC_MAX {low} {high} {path} OUT"


def _check_north_up(path: str, t) -> None:
    """Raise InputError if the transform ``t`` of ``path`` is rotated or not north up.

    The mosaic's grid is the inputs' windows on one north-up grid (its top the
    greatest top, its left the least left): a south-up or mirrored input
    (``t.e > 0`` or ``t.a < 0``) would land outside it, and a rotated one's
    rotation would be dropped, both silently. A run of one such raster alone
    takes it as it is.
    """
    if t.b != 0 or t.d != 0:
        raise InputError(f"{path}: is rotated (transform rotation terms b {t.b:g}, d {t.d:g}); "
                         "a mosaic needs north-up rasters; warp it first (gdalwarp "
                         "INPUT OUTPUT makes it north up)")
    if t.a <= 0 or t.e >= 0:
        raise InputError(f"{path}: is not north-up (south-up or mirrored: transform a {t.a:g}, "
                         f"e {t.e:g}, where north up has a > 0, e < 0); a mosaic needs "
                         "north-up rasters; warp it first (gdalwarp INPUT OUTPUT makes it "
                         "north up)")


@dataclass(frozen=True)
class _Declared:
    """The input's bands ``bands`` in a VRT of their own (:func:`_declared_vrt`) that
    declares ``nodata`` their nodata (None: none), drawn through the input's own mask
    (``own``: an alpha band or internal mask GDAL gives every band) or through its alpha
    band ``alpha`` (one a declared nodata shadows in GDAL's mask): the masks of that VRT's
    bands, OR'd, are the dataset mask a run of the input alone reads where GDAL's mask of
    the input is not (:meth:`tiledepth.readers.RasterReader._pixel_source` reads the same
    VRT)."""

    nodata: float | None
    bands: tuple[int, ...]
    own: bool = False
    alpha: int | None = None


@dataclass(frozen=True)
class _Masking:
    """How a VRT draws one input's dataset mask (:func:`_masking`).

    ``bands``: the bands whose masks, OR'd, are that mask; empty where band 1's mask
    is it. ``wrap``: each band drawn through its own mask (a ComplexSource's
    UseMaskBand takes a band's nodata, and an alpha band's own values) would not be
    drawn exactly where the dataset mask is valid, so a VRT of the input with that
    mask for every band is drawn instead. ``all_valid``: the input has no mask.
    ``declared``: the masks are those of the bands of a VRT of the input
    (:class:`_Declared`), not the input's own.
    """

    bands: tuple[int, ...]
    wrap: bool
    all_valid: bool
    declared: _Declared | None = None


def _model_bands(colorinterp: Sequence, bands: Sequence[int] | None) -> tuple[int, ...] | None:
    """The bands (sorted, each once) the model reads of a raster of these colour
    interpretations, ``bands`` (``--bands``) if given, as
    :func:`tiledepth.read.select_bands` chooses them; None where it refuses them (the
    fusion's run says why).

    Examples
    --------
    >>> from rasterio.enums import ColorInterp as C
    >>> _model_bands([C.red, C.green, C.blue, C.undefined], None)  # RGB + near-infrared
    (1, 2, 3)
    >>> _model_bands([C.red, C.green, C.blue, C.undefined], (4, 2, 1))
    (1, 2, 4)
    """
    from tiledepth.read import select_bands

    try:
        return tuple(sorted(set(select_bands(list(colorinterp), None if bands is None
                                             else tuple(bands)))))
    except (InputError, OptionError):
        return None


def _masking(flags: Sequence, colorinterp: Sequence, model: Sequence[int] | None = None, *,
             nodata: float | None = None, own: float | None = None, dtype: str = "uint8",
             palette: bool = False) -> _Masking:
    """How a VRT draws the dataset mask of a raster with these bands' mask flags and colour
    interpretations, as :class:`tiledepth.readers.RasterReader` reads it: its dataset mask
    as rasterio's ``dataset_mask`` makes it, but a nodata value judged on the bands the
    model reads alone (``model``: their indexes, default all), an alpha band that the
    raster's nodata (``own``) shadows in GDAL's mask masking too, and ``nodata``
    (``--nodata``, one ``dtype`` holds: :func:`build_vrt` refuses any other) declared instead
    of its own. ``dtype``: its data type (a nodata value of its own it cannot hold masks
    nothing); ``palette``: a model band is a colour map (its nodata is an index; no alpha
    band is looked at).

    Examples
    --------
    >>> from rasterio.enums import ColorInterp as C, MaskFlags as F
    >>> _masking([[F.per_dataset, F.alpha]] * 3 + [[F.all_valid]],
    ...          [C.red, C.green, C.blue, C.alpha])  # an alpha band: band 1's mask
    _Masking(bands=(), wrap=False, all_valid=False, declared=None)
    >>> _masking([[F.nodata]] * 3, [C.red, C.green, C.blue])  # masked where all bands are
    _Masking(bands=(1, 2, 3), wrap=True, all_valid=False, declared=None)
    >>> _masking([[F.nodata]] * 4, [C.red, C.green, C.blue, C.undefined],
    ...          (1, 2, 3))  # RGB + near-infrared: where the model's bands all are
    _Masking(bands=(1, 2, 3), wrap=True, all_valid=False, declared=None)
    >>> _masking([[F.per_dataset]] * 4, [C.red, C.green, C.blue, C.alpha])  # internal mask
    _Masking(bands=(), wrap=True, all_valid=False, declared=None)
    >>> _masking([[F.all_valid]] * 3, [C.red, C.green, C.blue], nodata=0)  # --nodata 0
    ... # doctest: +NORMALIZE_WHITESPACE
    _Masking(bands=(1, 2, 3), wrap=True, all_valid=False,
             declared=_Declared(nodata=0, bands=(1, 2, 3), own=False, alpha=None))
    """
    from rasterio.enums import ColorInterp, MaskFlags

    from tiledepth.readers import representable

    model = tuple(model) if model else tuple(range(1, len(flags) + 1))
    per_dataset = MaskFlags.per_dataset in flags[0]
    alphas = [b for b, ci in enumerate(colorinterp, 1) if ci == ColorInterp.alpha]
    # an alpha band GDAL's mask leaves out, a declared nodata winning over it: masks too
    beside = alphas[0] if alphas and not per_dataset and not palette else None
    if nodata is not None or beside is not None:
        value = nodata if nodata is not None else own
        numbered = tuple(range(1, len(model) + 1))  # the bands of the VRT of the model's
        if value is not None and representable(value, dtype):
            return _Masking(numbered, True, False,
                            _Declared(value, model, own=per_dataset, alpha=beside))
        if beside is not None:  # no nodata a pixel can hold: the alpha band's mask alone
            return _Masking((1,), True, False, _Declared(None, model, alpha=beside))
    all_valid = all(MaskFlags.all_valid in flags[b - 1] for b in model)
    if per_dataset or (all_valid and MaskFlags.all_valid in flags[0]):
        bands: tuple[int, ...] = ()
    elif all_valid:  # (another band's nodata: a model band's mask, all valid)
        bands = model[:1]
    else:  # nodata per band: masked where every model band's mask is (where all equal it)
        bands = model
    # UseMaskBand takes a band's nodata as its mask, and an alpha band as its own mask
    alpha = ColorInterp.alpha in colorinterp and MaskFlags.alpha not in flags[0]
    return _Masking(bands, bool(bands) or alpha, all_valid)


def _declared_vrt(member: Member, declared: _Declared, vrt_type: str) -> str:
    """The VRT (text) of ``member`` that ``declared`` describes: its bands ``declared.bands``,
    each declaring ``declared.nodata``, drawn through its own mask or its alpha band."""
    whole = Window(0, 0, member.window.width, member.window.height)
    source, bands, through = member.source, declared.bands, declared.own
    size = f"rasterXSize=\"{whole.width}\" rasterYSize=\"{whole.height}\""
    if declared.alpha is not None:  # its bands under a mask band that is its alpha band
        inner = "".join(f"<VRTRasterBand dataType=\"{vrt_type}\" band=\"{k}\">"
                        f"{_source('SimpleSource', source, b, whole)}</VRTRasterBand>"
                        for k, b in enumerate(bands, 1))
        alpha = _source("SimpleSource", source, declared.alpha, whole)
        source = (f"<VRTDataset {size}>{inner}<MaskBand><VRTRasterBand dataType=\"Byte\">"
                  f"{alpha}</VRTRasterBand></MaskBand></VRTDataset>")
        if declared.nodata is None:  # its mask band is the alpha band
            return source
        bands, through = tuple(range(1, len(bands) + 1)), True
    # drawn through the mask, masked pixels are left unpainted: they hold the nodata
    value = "" if declared.nodata is None else \
        f"<NoDataValue>{float(declared.nodata)!r}</NoDataValue>"
    drawn = "".join(f"<VRTRasterBand dataType=\"{vrt_type}\" band=\"{k}\">{value}"
                    + (_source("ComplexSource", source, b, whole,
                               "<UseMaskBand>true</UseMaskBand>") if through
                       else _source("SimpleSource", source, b, whole))
                    + "</VRTRasterBand>" for k, b in enumerate(bands, 1))
    return f"<VRTDataset {size}>{drawn}</VRTDataset>"


def _overlapping(windows: Sequence[Window]) -> list[bool]:
    """Which of ``windows`` share a pixel with another.

    Examples
    --------
    >>> _overlapping([Window(0, 0, 10, 10), Window(10, 0, 10, 10), Window(19, 9, 5, 5)])
    [False, True, True]
    """
    spans = sorted((w.row_off, w.row_off + w.height, w.col_off, w.col_off + w.width, i)
                   for i, w in enumerate(windows))
    found = [False] * len(spans)
    for n, (_, bottom, left, right, i) in enumerate(spans):
        for top2, _, left2, right2, j in spans[n + 1:]:
            if top2 >= bottom:  # sorted by top: none further down reaches this one's rows
                break
            if left2 < right and left < right2:
                found[i] = found[j] = True
    return found


def _source(kind: str, name: str, band: int | str, window: Window, extra: str = "") -> str:
    """A VRT source (``kind``: SimpleSource, ComplexSource) drawing band ``band`` of the
    dataset ``name`` (a path or VRT text), whole, at ``window``."""
    return (f"<{kind}><SourceFilename relativeToVRT=\"0\">{escape(name)}"
            f"</SourceFilename><SourceBand>{band}</SourceBand>"
            f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{window.width}\" "
            f"ySize=\"{window.height}\"/><DstRect xOff=\"{window.col_off}\" "
            f"yOff=\"{window.row_off}\" xSize=\"{window.width}\" "
            f"ySize=\"{window.height}\"/>{extra}</{kind}>")


def _mask_sources(source: str, window: Window, bands: tuple[int, ...], *,
                  complex_: bool) -> str:
    """The sources, in a VRT's mask band, of the dataset mask of ``source`` drawn at
    ``window``: a SimpleSource of band 1's mask where that is the dataset mask (``bands``
    empty) and ``complex_`` is false; else ComplexSources with NODATA 0 of the masks of
    ``bands`` (band 1's if none), whose masked pixels are not drawn and leave what is
    below: the masks OR'd, over what an earlier input drew.

    A nodata input always takes the second: GDAL 3.10 reads the nodata mask of a Byte
    band wrong below its first row when it reads it straight into a window of a wider
    buffer, as a SimpleSource does (a regression, fixed by OSGeo/gdal#12818); a
    ComplexSource reads it into a buffer of its own.
    """
    if not bands and not complex_:
        return _source("SimpleSource", source, "mask,1", window)
    return "".join(_source("ComplexSource", source, f"mask,{b}", window, "<NODATA>0</NODATA>")
                   for b in bands or (1,))


def _mask_source(member: Member, masking: _Masking, vrt_type: str) -> str:
    """What the masks ``masking.bands`` of ``member`` are read from: the input, or the VRT
    of it that ``masking.declared`` describes (:func:`_declared_vrt`)."""
    if masking.declared is None:
        return member.source
    return _declared_vrt(member, masking.declared, vrt_type)


def _masked_member(member: Member, masking: _Masking, vrt_type: str, count: int) -> str:
    """``member`` as a dataset whose every band's mask is its dataset mask: itself, or
    (``masking.wrap``) a VRT of it whose mask band is that mask."""
    if not masking.wrap:
        return member.source
    whole = Window(0, 0, member.window.width, member.window.height)
    values = "".join(f"<VRTRasterBand dataType=\"{vrt_type}\" band=\"{b}\">"
                     f"{_source('SimpleSource', member.source, b, whole)}</VRTRasterBand>"
                     for b in range(1, count + 1))
    mask = _mask_sources(_mask_source(member, masking, vrt_type), whole, masking.bands,
                         complex_=True)
    return (f"<VRTDataset rasterXSize=\"{whole.width}\" rasterYSize=\"{whole.height}\">"
            f"{values}<MaskBand><VRTRasterBand dataType=\"Byte\">{mask}</VRTRasterBand>"
            f"</MaskBand></VRTDataset>")


def _vrt_text(members: list[Member], maskings: list[_Masking], vrt_type: str,
              colorinterp: list, crs, gt: str, shape: tuple[int, int],
              tables: dict[int, dict] | None = None, *, nbits: int | None = None,
              ratios: Sequence[float | None] | None = None, point: bool = False) -> str:
    """The VRT of ``members`` side by side on a grid of ``shape`` (rows, cols), with a
    mask band made of each member's dataset mask (``maskings``: :func:`_masking` of
    each), and ``tables`` (band -> colour table) on the colour-map bands; ``nbits``
    (bits per sample, fewer than 8) on every band, and each member's values scaled by
    its ``ratios`` where not None (:func:`_bit_depth`); with ``point``, the VRT's
    ``AREA_OR_POINT`` is ``Point`` (an output of it says so, as its inputs do).

    An input that overlaps another and has a mask is drawn where that mask is valid
    (ComplexSources: its values through the mask with UseMaskBand, the mask's valid
    pixels), so that its masked pixels leave an earlier input's valid ones as they are;
    any other is drawn whole (SimpleSources), as it is. (A float input's NaN pixels that
    its mask leaves valid are drawn: the run masks them, over an earlier input's too.)
    """
    through = [over and not k.all_valid for over, k in
               zip(_overlapping([m.window for m in members]), maskings, strict=True)]

    # each input drawn through its mask as a dataset (its VRT text), built once for all bands
    drawn = [_masked_member(m, k, vrt_type, len(colorinterp)) if masked else None
             for m, k, masked in zip(members, maskings, through, strict=True)]

    # a member of fewer bits than the others': its values scaled onto theirs
    scales = ["" if r is None else f"<ScaleRatio>{r!r}</ScaleRatio>"
              for r in (ratios or [None] * len(members))]

    def values(band: int) -> str:
        return "".join(
            _source("ComplexSource", source, band, m.window,
                    f"{scale}<UseMaskBand>true</UseMaskBand>") if source is not None
            else _source("ComplexSource", m.source, band, m.window, scale) if scale
            else _source("SimpleSource", m.source, band, m.window)
            for m, source, scale in zip(members, drawn, scales, strict=True))

    # sub-byte samples: the reader scales by their own white (tiledepth.readers.sample_bits)
    structure = ("" if nbits is None else '<Metadata domain="IMAGE_STRUCTURE"><MDI key='
                 f'"NBITS">{nbits}</MDI></Metadata>')
    bands = "".join(
        f"<VRTRasterBand dataType=\"{vrt_type}\" band=\"{b}\">{structure}"
        f"<ColorInterp>{colorinterp[b - 1].name.capitalize()}</ColorInterp>"
        f"{_colour_table_xml(tables[b]) if b in (tables or {}) else ''}"
        f"{values(b)}</VRTRasterBand>" for b in range(1, len(colorinterp) + 1))
    sources = "".join(_mask_sources(_mask_source(m, k, vrt_type), m.window, k.bands,
                                    complex_=masked)
                      for m, k, masked in zip(members, maskings, through, strict=True))
    mask = f"<MaskBand><VRTRasterBand dataType=\"Byte\">{sources}</VRTRasterBand></MaskBand>"
    # (only there: an Area mosaic's VRT, and so its fusion key, as before)
    meta = '<Metadata><MDI key="AREA_OR_POINT">Point</MDI></Metadata>' if point else ""
    return (f"<VRTDataset rasterXSize=\"{shape[1]}\" rasterYSize=\"{shape[0]}\">"
            f"<SRS>{escape(crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>"
            f"{meta}{bands}{mask}</VRTDataset>")


def run_mosaic(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *,
               split: bool = False, glob: Sequence[str] | str | None = None,
               overwrite: bool = False, progress: bool = False,
               config: str | os.PathLike | None = None, asset: str | None = None,
               **options: Any):
    """Fuse many rasters as one; write one map, or one per input (``split``).

    Parameters
    ----------
    inputs : sequence of str or os.PathLike
        Raster files, folders, ``@list.txt`` files (as ``tiledepth batch``
        finds them) and remote sources, on one pixel grid; drawn in this order
        (where they overlap, a later one's valid pixels cover an earlier one's).
    output : str or os.PathLike
        The fused map; with ``split``, the output folder.
    split : bool
        One output per input, ``<output>/<subfolders>/<stem>.depth.tif``, cut
        from the one fusion. Every file it will write (with ``preview``, each
        output's PNG and ``.aux.xml`` too) is checked before the fusion
        (:func:`check_split_target`: none of them, nor with ``overwrite`` an
        old output's companion it removes, a file the split reads). The folder
        (OutputError where it cannot be made) is locked from then to the
        end: a second split into it is refused at its start (BusyError). If
        cutting fails or is interrupted, the fused map is kept in the folder
        (hidden, :data:`FUSED_NAME`) with its :func:`fusion_key`; the same
        call again cuts the outputs not yet cut from it, without predicting
        again, and keeps the ones this fused map's cut already wrote (not
        with ``resume=False``, ``--no-resume``: it fuses again).
    glob : str or sequence of str, optional
        File-name patterns for folders, as in :func:`tiledepth.survey.find_inputs`.
    asset : str, optional
        The asset of the STAC items among the inputs (refused if none is one).
    overwrite, progress, config, **options
        As :func:`tiledepth.run`.

    Returns
    -------
    tiledepth.engine.RunResult or list of pathlib.Path
        The fusion's result; with ``split``, the outputs written, in input order.

    Raises
    ------
    SplitInterrupted
        Ctrl-C while ``split`` cut the outputs (the fused map kept).
    """
    from tiledepth.engine import run
    from tiledepth.options import OPTION_NAMES, ReadConfig, load_config, make_options
    from tiledepth.plan import read_files

    paths, names = _find(inputs, glob, asset, split=split)
    if config is not None:  # read once, here; the run below reads what was read: a config
        config = ReadConfig(config, load_config(config))  # from a pipe reads empty again
    opts = make_options(config, **{k: v for k, v in options.items() if k in OPTION_NAMES})
    mosaic = build_vrt(paths, names, asset=asset, bands=opts.bands, nodata=opts.nodata)
    # the STAC items among the inputs: read, but not in the VRT (it names their assets),
    # so the run's own check cannot see them; no output of the mosaic may replace one
    items = [Path(p) for p in paths if not sources.is_gdal_source(p) and sources.is_stac_item(p)]
    if not split:
        if items and not sources.is_remote(os.fspath(output)):
            _check_not_items(Path(output), items, preview=opts.preview)
        return run(mosaic.vrt, output, overwrite=overwrite, progress=progress, config=config,
                   **options)
    _refuse_keep(opts)
    folder = Path(output)
    if sources.is_remote(folder.as_posix()) or \
            str(output).lower().endswith((".tif", ".tiff")):  # (out.TIF too)
        raise OptionError(f"{output}: with split (--split), -o is a local output folder")
    area = {k: v for k, v in options.items() if k not in OPTION_NAMES}  # aoi, bounds
    if area.get("bounds") is not None or area.get("aoi") is not None:
        # the fused map would cover the area's window, not the members' windows on the
        # mosaic each output is cut from: outputs of the wrong pixels
        raise OptionError(f"--{'aoi' if area.get('aoi') is not None else 'bounds'} cannot "
                          "be used with --split; give only the inputs the area covers, or "
                          "fuse one map without --split")
    _make_folder(folder, output)
    targets = [folder / _output_name(m.relative) for m in mosaic.members]
    # every file the split reads (the members, the STAC items, the reference, mask, control
    # and config), none of which it may write or remove as an old output's companion
    from tiledepth.safe_write import ReadFiles

    read = ReadFiles([*items, *read_files(mosaic.vrt, mosaic.vrt, opts, config=config)])
    with _locked(folder):
        fused = folder / FUSED_NAME
        _remove_partials(targets)  # a killed split's, the kept outputs' too
        # outputs the kept fused map's split already cut: kept, if it is this fusion's
        cut = _cut_from(fused, mosaic.members, targets)
        # every file the split will write, checked now as the run checks its own: one found
        # only when the outputs are placed would fail the run after all its model calls, with
        # some outputs placed and the rest not
        for target, done in zip(targets, cut, strict=True):
            _check_not_items(target, items, preview=opts.preview)
            if not done:
                check_split_target(target, preview=opts.preview, overwrite=overwrite,
                                   read=read)
        fusion = _Fusion(mosaic, folder, opts, area, progress=progress)
        if not fusion.reusable:  # another fusion's outputs: in the way after all
            for target, done in zip(targets, cut, strict=True):
                if done:
                    check_split_target(target, preview=opts.preview, overwrite=overwrite,
                                       read=read)
            cut = [False] * len(targets)
        fusion.fuse()
        todo = [i for i, done in enumerate(cut) if not done]
        try:
            split_outputs(fused, _members(mosaic, todo), [targets[i] for i in todo],
                          overwrite=overwrite, preview=opts.preview, hillshade=opts.hillshade)
        except Exception as exc:
            from tiledepth.plan import add_note

            add_note(exc, _KEPT.format(fused=fused, again="again"))
            raise
        except BaseException as exc:  # Ctrl-C, SIGTERM (the CLI's): say what is kept
            sigterm = not isinstance(exc, KeyboardInterrupt)
            stopped = SplitInterrupted(
                f"{'terminated (SIGTERM)' if sigterm else 'interrupted'} while the outputs "
                f"were cut from the fused map; {_KEPT.format(fused=fused, again='again')}")
            stopped.exit_code = 143 if sigterm else 130
            raise stopped from exc
        _remove_fused(folder)
    return targets


def _make_folder(folder: Path, output: str | os.PathLike) -> None:
    """Create ``folder``, the output folder of a split (``-o output``); OutputError, in one
    line, where it cannot be (a file at its name or in its path)."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"{output}: is not a folder; with split (--split), -o is the output "
                          "folder; choose another -o")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output}: cannot create the output folder "
                          f"({exc.strerror or exc}); choose another -o") from exc


def _remove_partials(targets: Sequence[Path]) -> None:
    """Remove what killed writers of ``targets`` left beside them
    (:func:`tiledepth.safe_write.remove_partials_if_free`, under each one's lock: nothing
    of one that another run writes now): for an output the split keeps too (it is not
    cut again: :func:`split_outputs` does it for those it cuts), whose placement journal
    and lock file stayed for good when it was killed just after placing it."""
    from tiledepth.safe_write import remove_partials_if_free

    for target in targets:
        remove_partials_if_free(target)


def _refuse_keep(opts: Any) -> None:
    """Refuse ``keep_predictions`` for a split: its fused map's checkpoint would be kept in
    the output folder, hidden, under a fused map the split removes."""
    if opts.keep_predictions:
        raise OptionError("keep_predictions (--keep-predictions) does not combine with a split "
                          "(--split) yet; fuse one map (--mosaic without --split) to keep its "
                          "predictions, or leave it out")


#: What a split that failed or was stopped while cutting leaves, and how to go on.
_KEPT = ("the fused map {fused} is kept: the same command {again} cuts the outputs not "
         "yet written from it, without predicting again (delete it to start over)")


def fusion_key(vrt: str, opts: Any, model: Any, area: dict | None = None) -> str:
    """The key of a fusion of ``vrt``: the key of its output
    (:func:`tiledepth.checkpoint.output_key`: the identity of every file the VRT reads,
    the content of the ``reference`` or ``control`` file the fused map is calibrated to, not
    its path alone, every option that changes the output, the fusion's too, the model's
    identity, the tiledepth version; not its checkpoint's key, which leaves out the options
    that change no prediction),
    with ``area`` (the ``aoi``, ``bounds`` and ``bounds_crs`` given, all unset: a split
    refuses an area) where given. 64 hex digits."""
    from tiledepth.checkpoint import output_key
    from tiledepth.plan import input_key

    identity = input_key(vrt)
    if area:
        identity["split_area"] = {k: str(v) for k, v in area.items()}
    return output_key(identity, opts, model)


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold the lock of a split into ``folder`` (:data:`LOCK_NAME`) in the block."""
    from tiledepth.lock import lock_output, unlock_output

    try:
        fd = lock_output(folder / LOCK_NAME)
    except BusyError as exc:
        raise BusyError(f"{folder}: another tiledepth mosaic (--mosaic --split, batch --mosaic) "
                        "is writing into this folder now; wait for it to finish or choose "
                        "another -o") from exc
    try:
        yield
    finally:
        unlock_output(folder / LOCK_NAME, fd)


class _Fusion:
    """The fused map of a split in ``folder``: the kept one if its key is this fusion's
    (``reusable``), else fused by :meth:`fuse`; ``summary``: its tiles, consistency and
    flagged tiles, for the manifest.

    The model is loaded here (once: :func:`tiledepth.run` is given it, as batch gives
    its runs), since the key holds its identity.
    """

    def __init__(self, mosaic: Mosaic, folder: Path, opts: Any, area: dict | None = None, *,
                 progress: bool) -> None:
        import dataclasses

        from tiledepth.checkpoint import read_json_dict
        from tiledepth.plan import open_model
        from tiledepth.progress import statuses

        self.mosaic, self.folder, self.area, self.progress = mosaic, folder, area, progress
        self.fused = folder / FUSED_NAME
        with statuses(progress):
            model = open_model(opts)
        self.options = {**{f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)},
                        "model": model}
        self.key = fusion_key(mosaic.vrt, opts, model, area)
        kept = read_json_dict(folder / KEY_NAME)  # None: missing or unreadable
        # (--no-resume: predicted again, as a run's checkpoint is not resumed)
        self.reusable = opts.resume and kept is not None and kept.get("key") == self.key \
            and os.path.isfile(self.fused)
        self.summary = {k: kept.get(k) for k in ("tiles", "consistency", "flagged")} \
            if self.reusable else None

    def fuse(self) -> None:
        """Fuse the mosaic into the fused map unless the kept one is reused; then write its
        key beside it."""
        from tiledepth.engine import run

        if self.reusable:
            log.info("cutting the outputs from %s, the fused map of an interrupted split of "
                     "these inputs and options", self.fused)
            return
        # the old key first: a fused map replaced from here on is never taken for the old
        (self.folder / KEY_NAME).unlink(missing_ok=True)
        result = run(self.mosaic.vrt, self.fused, overwrite=True, progress=self.progress,
                     **(self.area or {}), **self.options)
        self.summary = {"tiles": result.tiles, "consistency": result.consistency,
                        "flagged": result.flagged}
        _write_key(self.folder / KEY_NAME, {"key": self.key, **self.summary})


def _write_key(path: Path, content: dict) -> None:
    """Write the key file (renamed into place complete)."""
    from tiledepth.safe_write import atomic_file

    with atomic_file(path, option="-o") as tmp:
        tmp.write_text(json.dumps(content))


def _cut_from(fused: Path, members: Sequence[Member], targets: Sequence[Path]) -> list[bool]:
    """Which of ``targets`` are outputs :func:`split_outputs` cut from ``fused`` for
    ``members`` (a split of it was stopped): each a regular file, of its member's size,
    with every tag of the fused map and its place in it. One placed is complete (its
    preview placed before it)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from tiledepth.rasterfile import open_raster

    found = [False] * len(targets)
    if not os.path.isfile(fused):
        return found
    try:
        with rasterio.open(fused) as src:
            tags, shape = src.tags(), (src.height, src.width)
    except RasterioIOError:
        return found
    for i, (member, target) in enumerate(zip(members, targets, strict=True)):
        w = member.window
        want = _split_tags(tags, member, shape)
        try:
            if not stat.S_ISREG(os.lstat(target).st_mode):
                continue
            with open_raster(target) as ds:
                have = ds.tags()
                found[i] = (ds.height, ds.width) == (int(w.height), int(w.width)) \
                    and all(have.get(k) == v for k, v in want.items())
        except (OSError, RasterioIOError):
            continue
    return found


def _stale(fused: Path, mosaic: Mosaic, targets: Sequence[Path], keep: Sequence[bool],
           refused: dict[int, str]) -> list[int]:
    """The inputs whose output ``--resume`` keeps (``keep``) but that :func:`_cut_from`
    finds not cut from ``fused``: an earlier fusion's (or a run's of the input alone),
    which differs from this one's where an input changed since."""
    kept = [i for i, k in enumerate(keep) if k and i not in refused]
    if not kept:
        return []
    found = _cut_from(fused, [mosaic.members[i] for i in kept], [targets[i] for i in kept])
    return [i for i, cut in zip(kept, found, strict=True) if not cut]


def _read_files(paths: Sequence[str], opts: Any,
                config: str | os.PathLike | None) -> list[Path]:
    """Every local file a split of the inputs ``paths`` reads: each input (a local STAC
    item and its asset; a VRT file and its sources), the reference, mask and control
    (:func:`tiledepth.plan.read_files`) and ``config``."""
    from tiledepth.plan import read_files

    files: dict[Path, None] = {}
    for path in paths:
        source: str | Path = path
        if not sources.is_gdal_source(path) and sources.is_stac_item(path):
            with contextlib.suppress(TiledepthError):  # (build_vrt says what is wrong)
                source = _resolve(path, None)
        files.update(dict.fromkeys(read_files(path, source, opts, config=config)))
    return list(files)


def _members(mosaic: Mosaic, keep: Sequence[int]) -> Mosaic:
    """``mosaic`` with only the members ``keep`` (indices) to cut."""
    import dataclasses

    return dataclasses.replace(mosaic, members=tuple(mosaic.members[i] for i in keep))


def _check_not_items(output: Path, items: list[Path], *, preview: bool) -> None:
    """Raise OutputError if ``output``, or a file written beside it (sidecar, preview), is
    one of the STAC ``items`` read (with ``--overwrite`` too)."""
    if items:
        from tiledepth.safe_write import check_output_paths, output_paths

        check_output_paths(output_paths(output, output, preview=preview), items,
                           overwrite=True)


def check_split_target(target: Path, *, preview: bool, overwrite: bool,
                       read: Sequence[str | os.PathLike] | ReadFiles = ()) -> None:
    """Raise OutputError, in one line, if :func:`split_outputs` must not write ``target``
    or, with ``preview``, its ``<stem>.png`` and ``<stem>.png.aux.xml``: one exists
    without ``overwrite``, or is not a regular file
    (:func:`tiledepth.safe_write.check_target`), or is one of the files the split reads
    (``read``: its inputs, reference, mask...; a :class:`tiledepth.safe_write.ReadFiles`
    built once for all the targets), or, with ``overwrite``, one of those is an
    old output's companion that replacing it removes (as a run checks its own files:
    :func:`tiledepth.safe_write.check_output_paths`)."""
    from tiledepth.safe_write import OutputPaths, check_output_paths, check_target, preview_path

    png = preview_path(target) if preview else None
    aux = None if png is None else png.with_name(png.name + ".aux.xml")
    if target.parent.is_dir():  # (a subfolder not made yet holds no file the split reads)
        # (which ends with check_target of each of these files, as below)
        check_output_paths(OutputPaths(target, None, png, aux), read, overwrite=overwrite)
        return
    check_target(target, overwrite=overwrite)
    if preview:
        check_target(png, overwrite=overwrite, what="preview")
        check_target(aux, overwrite=overwrite, what="preview's .aux.xml")


def _place_tags(window: Window, shape: tuple[int, int]) -> dict[str, str]:
    """The tags that say where an output cut at ``window`` sits in a fused map of ``shape``
    (rows, cols): written by :func:`split_outputs`, looked for by :func:`_cut_from`."""
    return {"TILEDEPTH_TILE_ORIGIN": f"{int(window.row_off)},{int(window.col_off)}",
            "TILEDEPTH_FUSED_SHAPE": f"{shape[0]},{shape[1]}"}


def _split_tags(tags: dict[str, str], member: Member, shape: tuple[int, int]) -> dict[str, str]:
    """The tags of ``member``'s output cut from a fused map of ``shape`` whose tags are
    ``tags``: those, where it sits (:func:`_place_tags`), and its own input's
    ``AREA_OR_POINT`` where that says ``Point`` (the fused map's says ``Point`` only where
    every input's does)."""
    own = {"AREA_OR_POINT": member.area_or_point} if member.area_or_point else {}
    return {**tags, **_place_tags(member.window, shape), **own}


def _remove_fused(folder: Path) -> None:
    """Remove the fused map of a split in ``folder``, what its run wrote beside it (its
    sidecar and preview) and its key, the key first."""
    from tiledepth.safe_write import preview_path, sidecar_path

    fused = folder / FUSED_NAME
    (folder / KEY_NAME).unlink(missing_ok=True)
    png = preview_path(fused)
    for path in (fused, sidecar_path(fused), png,
                 png.with_name(png.name + ".aux.xml")):  # the preview's georeferencing
        path.unlink(missing_ok=True)


def split_outputs(fused: str | os.PathLike, mosaic: Mosaic, targets: Sequence[Path], *,
                  overwrite: bool | Sequence[bool] = False, preview: bool = False,
                  hillshade: bool = False) -> list[Path]:
    """Cut each member's window out of the fused map into its own GeoTIFF.

    Each output is on its input's grid (its transform the input's own, exactly),
    with the fused map's bands, tags, units,
    overviews and layout, written by :class:`tiledepth.write.GeoTiffWriter`
    (complete or absent); with ``preview``, its own ``<stem>.png`` beside it
    (``hillshade``: shaded), renamed into place with it. ``overwrite``: for all
    targets, or one for each.

    The fused map's tile size and overlap tags describe the fused map's tile grid,
    not one cut from the output's own corner: each output also gets
    ``TILEDEPTH_TILE_ORIGIN`` (``"row,col"``, its offset in the fused map) and
    ``TILEDEPTH_FUSED_SHAPE`` (``"height,width"`` of the fused map), from which
    ``tiledepth eval`` rebuilds the tiles it was fused from.
    """
    import rasterio

    from tiledepth.lock import lock_output, unlock_output
    from tiledepth.safe_write import preview_path, remove_partials
    from tiledepth.write import GeoTiffWriter, OutputGrid

    replace = [overwrite] * len(targets) if isinstance(overwrite, bool) else list(overwrite)
    with rasterio.open(fused) as src:
        tags = src.tags()
        bands = tuple(d or f"band{i}" for i, d in enumerate(src.descriptions, start=1))
        cog = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        overviews = bool(src.overviews(1))
        units = src.units[0]  # metres for a calibrated or metric map, every band
        for member, target, again in zip(mosaic.members, targets, replace, strict=True):
            w = member.window
            # the input's own transform, not the window's on the fused map: they differ where
            # the input is off the grid by less than GRID_TOLERANCE (or by float rounding);
            # its own RPCs and AREA_OR_POINT, as a run of it alone keeps them
            grid = OutputGrid(int(w.height), int(w.width), crs=src.crs,
                              transform=member.transform, rpcs=member.rpcs,
                              area_or_point=member.area_or_point)
            target.parent.mkdir(parents=True, exist_ok=True)
            # under the target's own lock, as a run of it: a `run -o` of the same file
            # meanwhile is refused, and neither recovers the other's placement as it places
            fd = lock_output(target)
            try:
                remove_partials(target)  # a killed split's: its placement finished or undone
                with GeoTiffWriter(target, grid, tags=_split_tags(tags, member, src.shape),
                                   overwrite=again,
                                   bands=bands, overviews=overviews, cog=cog) as sink:
                    for window in sink.windows():
                        at = Window(w.col_off + window.col_off, w.row_off + window.row_off,
                                    window.width, window.height)
                        for band in range(1, len(bands) + 1):
                            sink.write(window, src.read(band, window=at), band)
                    if units:
                        sink.set_units(units)
                    if preview:
                        _add_preview(sink, preview_path(target), hillshade=hillshade)
            finally:
                unlock_output(target, fd)
    return list(targets)


def _add_preview(sink: Any, png: Path, *, hillshade: bool) -> None:
    """Write ``png``, the preview of the map ``sink`` writes, renamed into place with it."""
    from tiledepth.preview import render_preview

    sink.companion(png, lambda src, tmp: render_preview(src, tmp, hillshade=hillshade),
                   extra=png.with_name(png.name + ".aux.xml"))


def _find(inputs: Sequence[str | os.PathLike], glob: Sequence[str] | str | None,
          asset: str | None = None, *, split: bool = True) -> tuple[list[str], list[str]]:
    """Inputs and their output names, in the order given (where inputs overlap, a later one
    is drawn over an earlier one): as batch finds them (:func:`tiledepth.survey.find_inputs`,
    one search of them all), a remote STAC item named by its ``asset``'s name.

    Raises InputError, as batch does, if two inputs would write the same output (two
    remote ones of one file name, or a remote one and a local one) with ``split``; without
    it the inputs make one output, their names none (``s3://b/1/x.tif`` and
    ``s3://b/2/x.tif`` are fused as they are).
    """
    from glob import glob as expand

    from tiledepth.survey import find_inputs

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    entries: list[str | os.PathLike] = []
    for entry in inputs:
        text = os.fspath(entry)
        if not sources.is_gdal_source(entry) and any(ch in text for ch in "*?[") \
                and not Path(text).exists():
            matches = sorted(expand(text))  # a quoted glob
            if not matches:
                raise InputError(f"{text}: no file matches")
            entries.extend(matches)
        else:
            entries.append(entry)
    paths, names = [], []
    for item in find_inputs(entries, glob=glob, one_output_each=False):
        path = os.fspath(item.path)
        paths.append(path)
        names.append(sources.source_name(_resolve(path, asset))
                     if sources.is_gdal_source(path) and sources.is_stac_item(path)
                     else item.relative.as_posix())
    if split:
        _one_output_each(paths, names)
    return paths, names


def _one_output_each(paths: Sequence[str], names: Sequence[str]) -> None:
    """Raise InputError if two of ``paths`` would write one output, their ``names`` (under
    the output folder) the same: as :func:`tiledepth.survey.find_inputs` says it, here on the
    final names (a remote STAC item is named by its asset, not by the item's file name).

    Examples
    --------
    >>> _one_output_each(["/vsizip/a.zip/x.tif", "s/x.tif"], ["x.tif", "s/x.tif"])
    >>> _one_output_each(["/vsizip/a.zip/x.tif", "/vsizip/b.zip/x.tif"], ["x.tif", "x.tif"])
    Traceback (most recent call last):
    ...
    tiledepth.errors.InputError: /vsizip/a.zip/x.tif and /vsizip/b.zip/x.tif would both \
write x.depth.tif; rename one or narrow --glob
    """
    outputs: dict[str, str] = {}
    for path, name in zip(paths, names, strict=True):
        target = _output_name(name)
        if target in outputs:
            raise InputError(f"{outputs[target]} and {path} would both write {target}; "
                             "rename one or narrow --glob")
        outputs[target] = path


def _output_name(relative: str) -> str:
    """``a/x.tif`` -> ``a/x.depth.tif``, as :meth:`tiledepth.survey.SurveyInput.output`.

    Examples
    --------
    >>> _output_name("a/x.tif")
    'a/x.depth.tif'
    """
    from pathlib import PurePosixPath

    from tiledepth.survey import OUTPUT_SUFFIX

    rel = PurePosixPath(relative)
    return (rel.parent / f"{rel.stem}{OUTPUT_SUFFIX}").as_posix()


def batch_mosaic(items: Sequence, output_dir: Path, manifest: Path, *, resume: bool,
                 overwrite: bool, progress: bool, options: dict[str, Any],
                 on_error: str = "skip", config: str | os.PathLike | None = None) -> list:
    """``tiledepth batch --mosaic``: the survey fused as one raster, one output cut per input.

    Parameters
    ----------
    items : sequence of tiledepth.survey.SurveyInput
        The inputs, as :func:`tiledepth.survey.find_inputs` found them.
    output_dir, manifest : pathlib.Path
        The output folder and its JSON-lines manifest.
    resume : bool
        Keep the outputs that are complete and valid; when any is missing (or
        broken), fuse again (the interrupted fusion's tile predictions are reused)
        and write those; or, if a split that failed or was stopped while cutting
        kept its fused map and that map's key is this fusion's, cut them from it
        (as :func:`run_mosaic`). A kept output that was not cut from the fused map
        its missing ones are cut from (an earlier fusion's, of inputs changed
        since) is cut again from it, so that no seam lies between the outputs of
        two fusions. A file tiledepth did not write at an output's
        path, or at its preview's, fails that input, untouched
        (:func:`tiledepth.survey.foreign_output`), before the fusion. The output
        folder is locked throughout (a second split into it: BusyError).
    overwrite, progress : bool
        As :func:`tiledepth.batchrun.batch`.
    options : dict
        Run options, as :func:`tiledepth.run` takes them.
    config : str or os.PathLike, optional
        The config file they were read from, which no output may replace.
    on_error : {'skip', 'stop'}
        As :func:`tiledepth.batchrun.batch`: with ``'stop'``, the first input
        refused before the fusion (its output, or its preview's, in the way) ends
        the batch there, before any model call: nothing is fused or cut.

    Returns
    -------
    list of tiledepth.survey.Record
        One per input; ``done`` ones carry the fusion's consistency and flagged
        tiles. The fusion's tile count and seconds are on the first input's record
        among those it was for (done or failed), once; the others' are 0 tiles and
        the seconds of their own checks, so totals over the records are what was done.
        An input whose output exists without ``resume`` or ``overwrite`` fails (as
        without ``mosaic``); the others are fused and cut. With ``on_error='stop'``
        and an input refused, only the inputs up to it that were checked: those
        before it that ``resume`` keeps (skipped), then it (failed).
    """
    import dataclasses
    import time

    from tiledepth.errors import OutputError
    from tiledepth.options import make_options
    from tiledepth.survey import (
        append_record,
        check_output,
        foreign_output,
        make_record,
        one_line,
        raster_size,
        refuse_foreign,
    )

    targets = [item.output(output_dir) for item in items]
    keep, replace, refused = [], [], {}  # refused: input index -> why it is not written
    checked = []  # each input's own seconds: the check of its output
    opts = make_options(None, **options)
    # every file the split reads, none of which it may write or remove as an old companion
    from tiledepth.safe_write import ReadFiles

    read = ReadFiles(_read_files([os.fspath(item.path) for item in items], opts, config))
    with _locked(output_dir):  # from the first check to the last file: no other split here
        for i, (item, out) in enumerate(zip(items, targets, strict=True)):
            t0 = time.perf_counter()
            if resume:  # a killed split's, as batch without --mosaic (kept outputs' too)
                _remove_partials([out])
            exists = os.path.lexists(out)
            why, again = "missing", overwrite
            if exists and not (resume or overwrite):
                # as batch without --mosaic: this input fails, the others are still cut
                why = OutputError(f"{out}: already exists; pass --resume to keep complete "
                                  "outputs or --overwrite to replace them")
            elif exists and resume:
                # only a file that carries tiledepth's tag is ours to redo (as batch without
                # --mosaic): a user's file there fails its input and is left as it is
                foreign = foreign_output(out)
                why = refuse_foreign(out, foreign) if foreign is not None \
                    else check_output(out, item.path, uncertainty=bool(options.get("uncertainty")))
                again = why is not None
            keep.append(why is None)
            replace.append(again)
            if isinstance(why, OutputError):
                refused[i] = one_line(why)
            elif why is not None:
                try:  # every file to be written, checked before the fusion's model calls
                    check_split_target(out, preview=bool(options.get("preview")),
                                       overwrite=again, read=read)
                except OutputError as exc:
                    refused[i] = one_line(exc)
            checked.append(time.perf_counter() - t0)
            if i in refused and on_error == "stop":
                break
        for i, why in refused.items():
            log.warning("%s: failed: %s", items[i].path, why)
        # on_error 'stop': the batch ends at the first refused input, before the fusion (one
        # fusion is for all the inputs: those before it are not fused alone); an input not
        # written is not recorded, as batch without --mosaic records none after the failure
        stopped = on_error == "stop" and bool(refused)
        if stopped:
            log.warning("stopping after the first failure (on_error='stop'): nothing fused")
        error, done, fusing = None, {}, 0.0
        todo = [] if stopped else [i for i, k in enumerate(keep) if not k and i not in refused]
        mosaic, t0 = None, time.perf_counter()
        if todo:
            try:
                mosaic = build_vrt([os.fspath(it.path) for it in items],
                                   [it.relative.as_posix() for it in items],
                                   bands=opts.bands, nodata=opts.nodata)
            except OptionError as exc:  # --nodata the inputs' bands cannot hold: every input
                error = one_line(exc)  # the fusion was for fails with it, before any model call
                log.warning("the mosaic failed: %s", error)
                fusing = time.perf_counter() - t0
        if mosaic is not None:
            fused = output_dir / FUSED_NAME
            cutting = False
            try:
                fusion = _Fusion(mosaic, output_dir, opts, progress=progress)
                fusion.fuse()
                cutting = True  # a failure from here on keeps the fused map for --resume
                # outputs kept by --resume that another fusion cut (of inputs changed since):
                # cut again from this one, else a seam lies between them and the new ones
                stale = _stale(fused, mosaic, targets, keep, refused)
                for i in stale:
                    log.warning("%s: not cut from this fusion of the inputs (an earlier "
                                "one's, of inputs changed since); cutting it again", targets[i])
                    try:
                        check_split_target(targets[i], preview=bool(options.get("preview")),
                                           overwrite=True, read=read)
                    except OutputError as exc:
                        refused[i] = one_line(exc)
                        log.warning("%s: failed: %s", items[i].path, refused[i])
                    keep[i], replace[i] = False, True
                todo = sorted(todo + [i for i in stale if i not in refused])
                split_outputs(fused, _members(mosaic, todo), [targets[i] for i in todo],
                              overwrite=[replace[i] for i in todo],
                              preview=bool(options.get("preview")),
                              hillshade=bool(options.get("hillshade")))
                _remove_fused(output_dir)
                done = fusion.summary
            except Exception as exc:  # the one fusion failed: every input it was for did
                error = one_line(exc)
                log.warning("the mosaic failed: %s", error)
                if cutting:
                    log.warning(_KEPT.format(fused=fused, again="with --resume"))
            fusing = time.perf_counter() - t0
        elif not todo and not stopped:
            # nothing left to cut: a fused map an interrupted split kept is done with (a
            # stopped batch has cut nothing from it: kept for its --resume)
            _remove_fused(output_dir)
    # the one fusion's tiles and seconds are the first input's it was for, once: summed over
    # the records (the summary), they are what was done; every output's record carries the
    # consistency and flagged tiles of the fusion it was cut from
    first = todo[0] if todo else None
    records = []
    reached = len(keep)  # every input; with on_error 'stop', those up to the first refused
    for i, (item, out, kept) in enumerate(zip(items[:reached], targets[:reached], keep,
                                              strict=True)):
        if stopped and not kept and i not in refused:
            continue  # to be cut from the fusion that was stopped: not reached
        now = time.perf_counter()
        if kept:
            record = make_record(item, out, "skipped", now, **raster_size(out))
        elif i in refused:
            record = make_record(item, out, "failed", now, error=refused[i])
        elif error is None:
            record = make_record(item, out, "done", now, **raster_size(out),
                                 **{**done, "tiles": done.get("tiles") if i == first else 0})
        else:
            record = make_record(item, out, "failed", now, error=error)
        record = dataclasses.replace(
            record, seconds=round(checked[i] + (fusing if i == first else 0.0), 3))
        records.append(record)
        append_record(manifest, record)
    return records
