"""Safe write: the paths a run writes, checked, and each finished file put in place whole.

:func:`output_paths` derives every file a run writes in one place (the GeoTIFF,
its sidecar JSON, the preview PNG and its ``.aux.xml``), :func:`check_output_paths`
checks them against the inputs and each other, :func:`temp_path` names the
temporary file each is written under, :func:`verify_geotiff` reopens a finished
GeoTIFF, and :func:`place` moves each finished temporary file to its name;
:func:`set_aside` and :func:`put_back` keep the files an ``--overwrite`` replaces until
the whole set is in place; :func:`write_placement` writes those renames down first, so that
:func:`recover_placement` finishes or undoes the placement of a run killed among them
(:func:`place_together` does the same for ``tiledepth export`` and ``preview``, under
:func:`output_lock`).
:func:`check_free_space` and :func:`tiledepth.errors.write_error` say, before and after, when a
disk is too full. The GeoTIFF itself is written by :mod:`tiledepth.write`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import stat
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rasterio.windows import Window

from tiledepth.errors import InputError, OutputError, write_error

__all__ = ["OutputPaths", "Placement", "ReadFiles", "aside_path", "atomic_file", "check_free_space",
           "check_name_length", "check_output_path", "check_output_paths", "check_target",
           "check_world_files", "companion_paths", "default_output", "discard",
           "gdal_sidecars", "mark_png", "output_file", "output_lock", "output_paths", "place",
           "place_together", "placement_journal", "plan_placement", "png_chunks",
           "preview_path", "put_back", "recover_placement", "remove_partials",
           "remove_partials_if_free", "removed_on_replace", "set_aside", "sidecar_path",
           "temp_path", "tiledepth_png", "tiledepth_sidecar", "tiledepth_wrote_png",
           "verify_geotiff", "world_files", "write_placement"]

log = logging.getLogger(__name__)

#: The extensions of a run's output, a GeoTIFF (compared ignoring case).
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def default_output(input_path: str | os.PathLike) -> Path:
    """``<input stem>.depth.tif`` beside the input.

    Raises
    ------
    InputError
        ``input_path`` names no file (empty, ``.`` or ``..``: the name of a URL that ends
        in ``/`` or ``/.``, :func:`tiledepth.sources.source_name`), so nothing to name
        the output after.
    """
    p = Path(input_path)
    if p.name in ("", ".", ".."):  # (with_name raised ValueError: "unexpected", exit 1)
        raise InputError("the input names no file (a URL that ends in '/', '.' or '..'), so "
                         "no output can be named after it; name the output with -o")
    return p.with_name(f"{p.stem}.depth.tif")


def check_output_path(input_path: Path, output: Path, *, overwrite: bool) -> None:
    """Raise OutputError, with what to do, if ``output`` cannot or must not be written."""
    paths = OutputPaths(output=output, sidecar=None)
    check_output_paths(paths, [input_path], overwrite=overwrite)


@dataclass(frozen=True)
class OutputPaths:
    """Every file a run writes, derived in one place by :func:`output_paths`.

    Attributes
    ----------
    output : pathlib.Path
        The GeoTIFF (the uncertainty is its band 2, not a file of its own).
    sidecar : pathlib.Path or None
        The fusion report, ``<output stem>.json``.
    preview, preview_aux : pathlib.Path or None
        The preview PNG, ``<output stem>.png``, and its georeferencing,
        ``<output stem>.png.aux.xml``; None without a preview.
    """

    output: Path
    sidecar: Path | None
    preview: Path | None = None
    preview_aux: Path | None = None

    def files(self) -> list[tuple[str, Path]]:
        """(what, path) of every file, the output first."""
        named = [("output", self.output), ("sidecar", self.sidecar),
                 ("preview", self.preview), ("preview's .aux.xml", self.preview_aux)]
        return [(what, path) for what, path in named if path is not None]


def sidecar_path(output: str | os.PathLike) -> Path:
    """``<output stem>.json`` beside the output (the fusion report).

    Examples
    --------
    >>> sidecar_path("survey/ortho.depth.tif").as_posix()
    'survey/ortho.depth.json'
    """
    output = Path(output)
    return output.with_name(output.stem + ".json")


#: How every fusion report a run writes begins (:func:`tiledepth.report.save_json`: indented by
#: one, the ``tiledepth`` version its first key, :func:`tiledepth.report.fusion_report`).
_REPORT_START = b'{\n "tiledepth": "'


def tiledepth_sidecar(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a fusion report that a run wrote (:func:`sidecar_path`): it
    begins as every report does, ``{`` and its ``"tiledepth"`` version first (only its start
    is read: a user's JSON may be large). A user's JSON at a sidecar's name is not, and is
    never removed as an old output's sidecar."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_REPORT_START)) == _REPORT_START
    except OSError:
        return False


def preview_path(output: str | os.PathLike) -> Path:
    """``<output stem>.png`` beside the output: ``ortho.depth.tif`` -> ``ortho.depth.png``."""
    return Path(output).with_name(f"{Path(output).stem}.png")


def world_files(path: str | os.PathLike) -> list[Path]:
    """The world files GDAL reads to place the raster ``path``: ``<stem>.`` the first and
    last letters of its extension and ``w``, ``<stem>.<extension>w`` and ``<stem>.wld``,
    each in lower case and in upper case (GDAL tries both, whatever the raster's own case:
    ``x.PGW`` places ``x.png``).

    For a PNG GDAL reads one ahead of the ``.aux.xml``, so a stale one beside a new PNG
    places it wrongly.

    Examples
    --------
    >>> [p.name for p in world_files("survey/ortho.depth.png")]  # doctest: +NORMALIZE_WHITESPACE
    ['ortho.depth.pgw', 'ortho.depth.PGW', 'ortho.depth.pngw', 'ortho.depth.PNGW',
     'ortho.depth.wld', 'ortho.depth.WLD']
    """
    path = Path(path)
    ext = path.suffix[1:]
    names = [f"{ext[0]}{ext[-1]}w", f"{ext}w"] if len(ext) >= 2 else []
    cases = dict.fromkeys(case for name in (*names, "wld") for case in (name.lower(),
                                                                       name.upper()))
    return [path.with_name(f"{path.stem}.{name}") for name in cases]


#: The first 8 bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(f) -> Iterator[tuple[bytes, int]]:
    """The chunks of the PNG file open (binary) as ``f``, up to ``IEND``: ``(kind, length)``
    each, with ``f`` at the chunk's data; whatever the caller reads of it, the next chunk is
    found from the data's start (past the data and its CRC, neither read). Nothing where
    ``f`` is no PNG; the walk ends at a truncated chunk header."""
    if f.read(8) != PNG_SIGNATURE:
        return
    while len(head := f.read(8)) == 8:
        length, kind = struct.unpack(">I4s", head)
        start = f.tell()
        yield kind, length
        if kind == b"IEND":
            return
        f.seek(start + length + 4)


def tiledepth_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that ``tiledepth export`` wrote: a text chunk of it holds
    its ``TILEDEPTH_PNG_RANGE`` tag (the world file beside such a PNG is tiledepth's too).
    Only the start of each text chunk is read: a user's PNG may hold a large one."""
    return _png_marks(path, stop_at_data=False)[0]


#: The text chunk that marks a PNG as tiledepth's own (a preview, :func:`mark_png`): the PNG
#: spec's ``Software`` keyword ("software used to create the image"), its text ``tiledepth``
#: (and the version).
PNG_MARK = (b"Software", b"tiledepth")
#: The bytes of a PNG file before its second chunk: the signature, and the ``IHDR`` chunk
#: (always first, 13 bytes of data) with its length, kind and CRC.
_PNG_HEAD = len(PNG_SIGNATURE) + 8 + 13 + 4


def mark_png(path: str | os.PathLike) -> None:
    """Mark the PNG file at ``path`` as tiledepth's: a ``tEXt`` chunk ``Software`` =
    ``tiledepth <version>`` (:data:`PNG_MARK`) inserted right after its ``IHDR``, every
    other byte as it was (GDAL reads it as the metadata item ``Software``). What
    :func:`tiledepth_wrote_png` looks for: a preview replaces a PNG without ``--overwrite``
    only where tiledepth wrote it. First, ahead of the image data, it is found without
    walking a large PNG's chunks, and it stays in a preview cut short.

    Raises OSError where ``path`` is no whole PNG (no ``IHDR`` first, or no ``IEND``),
    changing nothing.
    """
    from tiledepth import __version__

    key, text = PNG_MARK
    data = key + b"\0" + text + f" {__version__}".encode("latin-1")
    chunk = struct.pack(">I4s", len(data), b"tEXt") + data + \
        struct.pack(">I", zlib.crc32(b"tEXt" + data))
    with open(path, "r+b") as f:
        chunks = list(png_chunks(f))  # (a preview: a few chunks)
        if chunks[:1] != [(b"IHDR", 13)] or chunks[-1][0] != b"IEND":
            raise OSError(f"{path}: is no whole PNG (no IHDR first or no IEND chunk), so it "
                          "cannot be marked")
        f.seek(_PNG_HEAD)
        rest = f.read()
        f.seek(_PNG_HEAD)
        f.write(chunk + rest)


def tiledepth_wrote_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that tiledepth wrote: a preview (marked by :func:`mark_png`)
    or an export (:func:`tiledepth_png`). A preview of a tiledepth that did not mark them is
    not told from a user's PNG (nothing else in it or beside it is tiledepth's alone).

    Only the chunks before the first ``IDAT`` are looked at (both marks come before the
    image data: :func:`mark_png`'s right after ``IHDR``, GDAL writes an export's text chunks
    ahead of it), and only the start of each text chunk is read: a user's PNG, however large,
    costs a few small reads."""
    return _png_marks(path, stop_at_data=True)[1]


def _png_marks(path: str | os.PathLike, *, stop_at_data: bool) -> tuple[bool, bool]:
    """:func:`tiledepth_png` and :func:`tiledepth_wrote_png` of ``path``, from one walk of
    its chunks (:func:`removed_on_replace` asks both of the old preview): whether a text
    chunk holds an export's ``TILEDEPTH_PNG_RANGE`` tag, anywhere in the file; whether one
    before the first ``IDAT`` holds it or :data:`PNG_MARK`. ``stop_at_data``: the walk
    ends at the first ``IDAT`` (the first answer is then of the chunks before it only).
    Only the start of each text chunk is read: a user's PNG may hold a large one."""
    key, text = PNG_MARK
    mark = key + b"\0" + text
    wrote = False
    try:
        with open(path, "rb") as f:
            before_data = True
            for kind, length in png_chunks(f):
                if kind == b"IDAT":
                    if stop_at_data:
                        break
                    before_data = False
                if kind not in (b"tEXt", b"iTXt", b"zTXt"):
                    continue
                data = f.read(min(length, 64))
                if data.startswith(b"TILEDEPTH_PNG_RANGE\0"):
                    # (found: the second answer is settled too, by this chunk or those
                    # before the image data)
                    return True, wrote or before_data
                if before_data and kind == b"tEXt" and data.startswith(mark) and \
                        data[len(mark):len(mark) + 1] in (b"", b" "):
                    wrote = True
    except OSError:
        pass
    return False, wrote


def check_world_files(png: str | os.PathLike, *, option: str = "-o") -> list[Path]:
    """The world files beside ``png`` that writing a new PNG there must remove, else GDAL
    places the new PNG by them (:func:`world_files`): those of a PNG of ``tiledepth
    export`` at ``png``, which the new one replaces.

    Raises OutputError for a world file beside anything else: tiledepth did not write it,
    and never removes it.
    """
    png = Path(png)
    found = [w for w in world_files(png) if os.path.lexists(w)]
    if found and not tiledepth_png(png):
        raise OutputError(f"{found[0]}: a world file tiledepth did not write, which GDAL would "
                          f"read to place {png.name} (ahead of its .aux.xml); move it away or "
                          f"choose another {option}")
    return found


def gdal_sidecars(path: str | os.PathLike) -> list[Path]:
    """The files GDAL reads beside the raster ``path`` and applies to it, whatever it holds:
    ``<name>.aux.xml`` (statistics, no-data, scaling), ``<name>.ovr`` (external overviews,
    what ``gdaladdo -ro`` and QGIS's "build pyramids" write) and ``<name>.msk`` (an external
    mask). Those of an old file at ``path`` would be applied to a new one written there.

    Examples
    --------
    >>> [p.name for p in gdal_sidecars("survey/ortho.depth.tif")]
    ['ortho.depth.tif.aux.xml', 'ortho.depth.tif.ovr', 'ortho.depth.tif.msk']
    """
    path = Path(path)
    return [path.with_name(path.name + ext) for ext in (".aux.xml", ".ovr", ".msk")]


def companion_paths(output: str | os.PathLike) -> list[Path]:
    """Every file a run may write beside ``output``: the sidecar, the preview and the
    preview's ``.aux.xml`` (an ``--overwrite`` run removes those it does not write where
    tiledepth wrote them: :func:`tiledepth_sidecar`, :func:`tiledepth_wrote_png`), the
    world files that would place the preview (:func:`world_files`), which an ``--overwrite``
    run removes where they are tiledepth's (others stay; :func:`check_target` refuses them
    beside a run's preview), and the
    old output's GDAL sidecars (:func:`gdal_sidecars`), which a run never writes and an
    ``--overwrite`` run removes: GDAL would apply them to the new output.

    Examples
    --------
    >>> [p.name for p in companion_paths("survey/ortho.depth.tif")][:3]
    ['ortho.depth.json', 'ortho.depth.png', 'ortho.depth.png.aux.xml']
    >>> [p.suffix for p in companion_paths("survey/ortho.depth.tif")][3:]
    ['.pgw', '.PGW', '.pngw', '.PNGW', '.wld', '.WLD', '.xml', '.ovr', '.msk']
    """
    png = preview_path(output)
    return [sidecar_path(output), png, png.with_name(png.name + ".aux.xml"), *world_files(png),
            *gdal_sidecars(output)]


def removed_on_replace(output: str | os.PathLike,
                       written: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The companions of an old output at ``output`` (:func:`companion_paths`) that a run
    replacing it (``--overwrite``) removes, of those it does not write itself (``written``):
    the sidecar where it is tiledepth's (:func:`tiledepth_sidecar`), the preview and its
    ``.aux.xml`` where the PNG is tiledepth's (:func:`tiledepth_wrote_png`: a marked preview
    or an export) or the run writes a new one (the old ``.aux.xml``), the preview's world
    files where the PNG is an export (:func:`tiledepth_png`), and the GDAL sidecars
    (:func:`gdal_sidecars`) always. A user's file at one of the other names is never
    removed. The one rule for what a run removes (:class:`tiledepth.write.GeoTiffWriter`)
    and for the checks that it removes no file the run, a batch or a split reads
    (:func:`check_output_paths`); each file there is looked at now (only its start).

    Examples
    --------
    >>> [p.name for p in removed_on_replace("no/such/ortho.depth.tif")]
    ['ortho.depth.tif.aux.xml', 'ortho.depth.tif.ovr', 'ortho.depth.tif.msk']
    """
    written = {Path(p) for p in written}
    sidecar, png, aux = companion_paths(output)[:3]
    kept = set(written)
    export, wrote = _png_marks(png, stop_at_data=False)  # (one walk of the old preview)
    if not export:  # (another's world file: an input's georeferencing)
        kept.update(world_files(png))
    if png not in written and not wrote:
        kept.update((png, aux))
    if sidecar not in written and not tiledepth_sidecar(sidecar):
        kept.add(sidecar)
    return [path for path in companion_paths(output) if path not in kept]


def output_file(output: str | os.PathLike, default_name: str, *, option: str = "-o") -> Path:
    """The file ``-o output`` names: ``output``, or ``default_name`` inside it where it names a
    folder: it ends in a path separator, or is ``.`` or ``..`` (the folder must exist).

    Examples
    --------
    >>> output_file("out.tif", "a.depth.tif").as_posix(), output_file(".", "a.depth.tif").as_posix()
    ('out.tif', 'a.depth.tif')
    """
    text = os.fspath(output)
    if not text:  # Path("") is the current folder, never what an empty -o meant
        raise OutputError(f"{option} '': names no file; give a file name (or a folder ending "
                          "in /)")
    out = Path(text)
    if _names_folder(text):
        if not out.is_dir():
            raise OutputError(f"{text}: output folder does not exist; create it first (an -o "
                              "ending in / names a folder)")
        out = out / default_name
    return out


def _names_folder(output: str) -> bool:
    """Whether ``-o output`` names a folder (:func:`output_file`): it ends in a path
    separator, or is ``.`` or ``..``."""
    return output.endswith(("/", os.sep)) or bool(os.altsep and output.endswith(os.altsep)) \
        or os.path.basename(output) in (".", "..")


def output_paths(input_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 preview: bool = False) -> OutputPaths:
    """Every path a run of ``input_path`` writes, derived from ``-o`` in one place.

    ``output`` ending in a path separator (or ``.`` or ``..``) names a folder: the default
    name, ``<input stem>.depth.tif``, is written inside it (the folder must exist);
    never a file named after the folder (:func:`output_file`).

    Examples
    --------
    >>> paths = output_paths("survey/ortho.tif", preview=True)
    >>> [p.as_posix() for _, p in paths.files()]  # doctest: +NORMALIZE_WHITESPACE
    ['survey/ortho.depth.tif', 'survey/ortho.depth.json', 'survey/ortho.depth.png',
     'survey/ortho.depth.png.aux.xml']
    """
    if output is None:
        out = default_output(input_path)
    elif _names_folder(os.fspath(output)):
        out = output_file(output, default_output(input_path).name)
    else:  # a file: the input's name is not needed (a URL ending in "/" may have none)
        out = output_file(output, "")
    sidecar, png, aux = companion_paths(out)[:3]
    return OutputPaths(output=out, sidecar=sidecar, preview=png if preview else None,
                       preview_aux=aux if preview else None)


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same inode (hard links, case-insensitive
    names) where both exist, else the same resolved path."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


class ReadFiles:
    """The files a command reads, looked up by identity as :func:`_same` compares them (the
    same inode where both exist, else the same resolved path), each stat'ed and resolved
    once: a split of N inputs checks its N outputs against them in N lookups, where
    comparing every pair took N x N (four system calls each; minutes for a survey).

    ``find`` gives the first of the files, in their order, that ``path`` is.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike | None]) -> None:
        self.paths = [Path(p) for p in inputs if p is not None]
        self._by_inode: dict[tuple[int, int], Path] = {}
        self._by_real: dict[str, Path] = {}
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:  # missing: found by its resolved path only
                pass
            else:
                self._by_inode.setdefault((st.st_dev, st.st_ino), path)
            self._by_real.setdefault(os.path.realpath(path), path)

    def find(self, path: Path) -> Path | None:
        """The first file read that ``path`` is (:func:`_same`), or None. Where ``path``
        exists, one resolved to it exists too and is the same inode: its inode decides."""
        try:
            st = os.stat(path)
        except OSError:
            return self._by_real.get(os.path.realpath(path))
        return self._by_inode.get((st.st_dev, st.st_ino))


def _clash(a: Path, b: Path) -> bool:
    """Whether two paths to be written may name one file (compared ignoring case, as on a
    case-insensitive file system)."""
    return _same(a, b) or os.path.realpath(a).casefold() == os.path.realpath(b).casefold()


def check_target(path: Path, *, overwrite: bool, what: str = "output",
                 option: str = "-o") -> None:
    """Raise OutputError if ``path`` must not be written: not a regular file (a device,
    FIFO, socket or folder, even with ``overwrite``), or existing without ``overwrite``.

    The preview (``what="preview"``): also a world file beside it that tiledepth did not
    write (:func:`check_world_files`; the output of ``tiledepth preview`` is the PNG itself).
    The output's own check looks at no world file: a run without a preview removes one only
    where it is tiledepth's, and a PNG at the preview's name only where tiledepth wrote it
    (:func:`removed_on_replace`), so a user's PNG placed by their own world file is kept, as
    is an input's own world file (``frame.jpg`` and ``frame.wld`` with ``-o frame.tif``).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path) and not overwrite:  # a dangling link
            raise OutputError(f"{path}: already exists (a broken link); pass --overwrite or "
                              f"choose another {option}") from None
        if what == "preview":
            check_world_files(preview_path(path), option=option)
        return
    except OSError as exc:
        raise OutputError(f"{path}: cannot check the {what} ({exc.strerror}); choose another "
                          f"{option}") from exc
    kind = _kind(st.st_mode)
    if kind == "a folder" and what == "output":
        raise OutputError(f"{path}: is a folder; give a file name with -o (or end it with / to "
                          "write the default name inside it)")
    if kind is not None:
        raise OutputError(f"{path}: the {what} would replace {kind}; --overwrite replaces only "
                          f"regular files a run wrote; choose another {option}")
    if not overwrite:
        which = "" if what == "output" else f" (it would be this run's {what})"
        raise OutputError(f"{path}: already exists{which}; pass --overwrite or choose another "
                          f"{option}")
    # (with overwrite: the old preview is replaced, or removed with the output where
    # tiledepth wrote it: removed_on_replace)
    if what == "preview":
        check_world_files(preview_path(path), option=option)


def check_output_paths(paths: OutputPaths,
                       inputs: Iterable[str | os.PathLike | None] | ReadFiles, *,
                       overwrite: bool, geotiff: bool = True) -> None:
    """Raise OutputError, with what to do, if any file of ``paths`` cannot or must not be
    written: one of the ``inputs`` (the raster, the reference, ...) or, with ``overwrite``,
    an old output's companion that the run removes (:func:`removed_on_replace`), two files
    in one, a run's output (``geotiff``: a GeoTIFF) not named ``.tif`` or ``.tiff``, not a
    regular file, existing without ``overwrite``, or its folder missing or read-only.

    A placement that a run of the output left half done when it was killed is first
    finished or undone (:func:`recover_placement`, under the output's lock; none while
    another run holds it): its new sidecar beside no output is not taken for an output.
    ``inputs`` may be a :class:`ReadFiles` built once for many outputs (a split's).
    """
    read = inputs if isinstance(inputs, ReadFiles) else ReadFiles(inputs)
    if os.path.lexists(placement_journal(paths.output)):  # a run killed while it moved its
        _recover_locked(paths.output)  # files in place: checked as it finished, or before
    files = paths.files()
    for what, path in files:
        src = read.find(path)
        if src is not None:
            if what == "output":
                raise OutputError(f"{path}: the output path is the input; choose another "
                                  "with -o")
            raise OutputError(f"{path}: the {what} of -o {paths.output.name} would replace "
                              f"the input {src}; choose another -o")
    for i, (what, path) in enumerate(files):
        for other, earlier in files[:i]:
            if _clash(path, earlier):
                raise OutputError(f"{path}: the {what} would be the {other}; choose an -o "
                                  "ending in .tif")
    if overwrite and read.paths:  # the old output's companions removed with it (a user's stay)
        gdal = gdal_sidecars(paths.output)
        for path in removed_on_replace(paths.output, [path for _, path in files]):
            src = read.find(path)
            if src is not None:
                old = "GDAL sidecar" if path in gdal else "sidecar" \
                    if path.suffix == ".json" else "preview" \
                    if path.suffix in (".png", ".xml") else "preview's world file"
                raise OutputError(
                    f"{path}: is the input {src}, and --overwrite of -o "
                    f"{paths.output.name} would remove it as the old output's {old}; "
                    "choose another -o")
    for what, path in files:
        check_target(path, overwrite=overwrite, what=what)
    out = paths.output
    if geotiff and out.suffix.lower() not in GEOTIFF_SUFFIXES:
        # a GeoTIFF named .png, .jpg or .vrt, which every tool would misread by its name
        named = f"a {out.suffix} file" if out.suffix else "a file without an extension"
        raise OutputError(f"{out}: a run writes a GeoTIFF, not {named}; name it "
                          f"{out.with_suffix('.tif').name} (a PNG: tiledepth preview or "
                          "tiledepth export)")
    if not overwrite:  # an old output's, left without it: GDAL would apply it to the new one
        for path in gdal_sidecars(paths.output):
            if os.path.lexists(path):
                raise OutputError(f"{path}: already exists, and GDAL would apply it (an earlier "
                                  f"file's statistics, overviews or mask) to the new "
                                  f"{paths.output.name}; remove it (or pass --overwrite), or "
                                  "choose another -o")
    folder = paths.output.parent
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{folder}: output folder is not writable; choose another with -o")


def temp_path(path: Path) -> Path:
    """The temporary name a file is written under before :func:`place` renames it:
    ``.<name>.<8 hex digits>.partial``, beside it (what :func:`remove_partials` removes)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def place(tmp: Path, path: Path, *, overwrite: bool, option: str = "-o") -> None:
    """Rename the finished ``tmp`` to ``path``; on failure ``tmp`` is left for the caller.

    Without ``overwrite`` a file that appeared at ``path`` meanwhile is never
    clobbered (a hard link, which fails if the name exists); with it only a
    regular file (or a link) is replaced, never a device, FIFO, socket or folder.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        kind = None if stat.S_ISLNK(st.st_mode) else _kind(st.st_mode)
        if kind is not None:
            raise OutputError(f"{path}: would replace {kind}; choose another {option}")
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except FileExistsError as err:
        raise OutputError(
            f"{path}: appeared while tiledepth ran; pass --overwrite or choose another {option}"
        ) from err
    except OSError:
        if overwrite or os.path.lexists(path):
            raise
        try:
            os.replace(tmp, path)  # file systems without hard links
        except OSError as err:
            raise OutputError(f"{path}: cannot move the output in place ({err})") from err


def discard(path: Path) -> None:
    """Remove the temporary file ``path`` if it is there, never raising: a cleanup's error
    would hide the one being raised, or fail a command whose output is in place (a name
    too long to look up, ENAMETOOLONG: the ``.aux.xml`` GDAL never wrote beside a temporary
    file whose name is near the limit). Logged for ``--debug``."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("%s: not removed (%s)", path, exc.strerror or exc)


def check_name_length(path: Path, longest: str, *, option: str) -> None:
    """Raise OutputError where ``longest``, the longest name of a file written beside
    ``path`` (a temporary file: ``.<name>.<8 hex digits>.partial``, and what GDAL adds to
    it), is longer than the file system of ``path``'s folder allows (its ``NAME_MAX``,
    else 255 bytes): refused before anything is written, in one line, with the longest
    name that fits.

    Examples
    --------
    >>> check_name_length(Path("o.las"), ".o.las.0123abcd.partial.las", option="OUTPUT")
    """
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):  # (no such setting on this system)
        limit = 255
    size, extra = len(os.fsencode(path.name)), len(os.fsencode(longest)) - \
        len(os.fsencode(path.name))
    if size + extra > limit:
        raise OutputError(f"{path}: name too long: the files written beside it under "
                          f"temporary names add {extra} bytes to its {size}, and its folder "
                          f"allows {limit}; choose a shorter name with {option} (at most "
                          f"{limit - extra} bytes)")


def aside_path(path: Path) -> Path:
    """A name to keep the file at ``path`` under (:func:`set_aside`):
    ``.<name>.<8 hex digits>.old`` beside it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")


def set_aside(path: Path, *, keep_name: bool, aside: Path | None = None) -> Path | None:
    """Keep the file at ``path`` under a name beside it, ``aside`` (by default a new
    :func:`aside_path`), until the run that replaces or removes it has placed its output
    (then the caller removes it) or has failed (then :func:`put_back` restores it).

    ``keep_name``: the file stays at ``path`` too (a hard link), for one that a new file
    will replace in one rename: ``path`` is never missing meanwhile (a file system without
    hard links: it is moved). Otherwise it is moved. Returns the name it is kept under;
    None where ``path`` holds no regular file or link (nothing, or a folder, FIFO or
    device, which is never moved: :func:`place` refuses to replace those).
    The name is not :func:`remove_partials`': a run killed meanwhile leaves the old
    file there, for :func:`recover_placement` (``aside`` is the name its journal gives).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return None
    aside = aside_path(path) if aside is None else aside
    if keep_name:
        try:
            os.link(path, aside, follow_symlinks=False)
            return aside
        except OSError:
            pass  # no hard links here (or not of another user's file): moved instead
    os.rename(path, aside)
    return aside


def put_back(aside: Path, path: Path) -> bool:
    """Undo :func:`set_aside`: the old file back at ``path``, over what a failed run placed
    there. Logs, never raises, where it cannot (the old file then stays at ``aside``);
    returns whether the old file is back."""
    try:
        same = os.path.samestat(os.lstat(aside), os.lstat(path))
    except OSError:
        same = False
    try:
        if same:  # still at its name (kept there by a hard link, never replaced): a rename
            os.unlink(aside)  # of one file onto itself would do nothing, leaving both names
        else:
            os.replace(aside, path)
    except OSError as exc:
        log.error("%s: cannot put the previous file back (%s); it is kept as %s", path,
                  exc.strerror or exc, aside)
        return False
    return True


def place_together(main: tuple[Path, Path], companions: Iterable[tuple[Path, Path]] = (),
                   gone: Iterable[Path] = (), *, option: str) -> None:
    """Move finished files to their names, all or nothing: each of ``companions``
    (temporary file, name), then each of ``gone`` removed, then ``main`` (temporary file,
    name) last, as :class:`tiledepth.write.GeoTiffWriter` places a run's files.

    Each old file at those names is kept aside (:func:`set_aside`)
    until ``main`` is placed. An exception before that (a failed rename, Ctrl-C) puts every
    old file back (:func:`put_back`), removes the new ones placed where
    there was none, and is raised; the temporary files are the caller's to remove. Once
    ``main`` is placed the files kept aside are removed, and an interruption meanwhile
    is raised only after that, :data:`tiledepth.write.PLACED` saying that ``main`` is
    complete. As a run's, every rename is first written down, with each file's identity
    (:func:`write_placement`: ``.<stem>.placing.json`` of ``main``'s name, a run's journal),
    and the journal is removed once the files are placed or put back: a SIGKILL or power cut
    among the renames is finished or undone by whichever export, preview or run of that stem
    comes next (:func:`recover_placement`), never new companions beside the old file.

    The caller holds the lock of ``main``'s name (:func:`output_lock`), and has recovered a
    journal left there (:func:`recover_placement`): one that is still there is never
    overwritten (OutputError, before anything is renamed).

    Parameters
    ----------
    main : tuple of pathlib.Path
        The file whose rename completes the work, and its name.
    companions : iterable of tuple of pathlib.Path
        Files placing or describing it (``.aux.xml``, world files), and their names.
    gone : iterable of pathlib.Path
        Old files to remove (an old export's world file that the new one does not write).
    option : str
        The option naming the output, for :func:`place`'s refusals.
    """
    from tiledepth.write import PLACED

    tmp, path = main
    files = [*((dst, src, aside_path(dst)) for src, dst in companions),
             *((dst, None, aside_path(dst)) for dst in gone)]
    # one rename alone (a point cloud) is whole or not done: nothing to write down, and its
    # caller may hold the lock of its own name only, not of its stem's journal
    journaled = bool(files)
    placement = None
    stop = None
    try:  # written down first, its asides named beforehand: a Ctrl-C landing as a file is
        # linked aside or renamed (the call done, its result not yet kept) is undone too, and
        # a SIGKILL by whoever comes next (as a run's: GeoTiffWriter._finish)
        placement = write_placement(path, tmp, files) if journaled else \
            plan_placement(path, tmp, files)
        for move in placement.moves:
            set_aside(move.path, keep_name=move.new is not None, aside=move.aside)
            if move.new is not None:
                place(move.new, move.path, overwrite=True, option=option)
        place(tmp, path, overwrite=True, option=option)
    except BaseException as exc:
        if placement is None:  # nothing renamed, no journal (write_placement removed its own)
            raise
        if not placement.placed():  # ``main`` not placed: back to the old files, all of them
            try:
                ok, _, foreign = placement.undo()
            except OSError as err:  # (a name that cannot be looked at)
                log.warning("%s: cannot undo the placement (%s)", path, err)
                ok, foreign = False, []
            _left_alone(path, foreign)
            if journaled and (not ok or not _unlink(placement_journal(path))):  # kept: the
                # next one undoes it
                log.warning("%s: not every previous file is back; %s is kept, for the next "
                            "export, preview or run of it to put them back", path,
                            placement_journal(path))
            raise
        stop = exc  # (a Ctrl-C right after the last rename) the new files are all in place
    PLACED.set(path)
    while True:  # the old files go, even if a Ctrl-C comes meanwhile: else they would stay
        try:  # beside the new ones as .old files (the interruption is raised once they are)
            ok, foreign = placement.finish()
            _left_alone(path, foreign)
            if ok and journaled:  # else kept, for the next one to remove them
                _unlink(placement_journal(path))
            break
        except Exception as err:  # (a name that cannot be looked at)
            log.warning("%s: cannot remove the previous files kept aside (%s)", path, err)
            break
        except BaseException as exc:
            stop = stop or exc
    if stop is not None:
        raise stop


@contextlib.contextmanager
def output_lock(path: Path, *, option: str, own_name: bool = False) -> Iterator[None]:
    """Hold the lock of ``path`` for the block (:func:`tiledepth.lock.lock_output`, by its
    stem: a run writing ``<stem>.tif`` holds the same one): what ``tiledepth export`` and
    ``tiledepth preview`` hold from before they remove what a killed writer left until their
    files are in place, so that no other run, export or preview of the stem removes their
    temporary files or interleaves its renames with theirs. With ``own_name``, the lock of
    ``path``'s whole name instead (``.o.laz.tiledepth-lock``, the lock's ``by_name``): a file
    that nothing beside it is named after, placed by one rename (a point cloud), shares
    nothing with its stem's writers (``o.tif``, ``o.png``), which it does not hold off.

    Raises
    ------
    BusyError
        Another run, export or preview holds it: one line, what to do (``option`` names the
        output).
    OutputError
        No lock to be had (a read-only folder): :func:`tiledepth.lock.lock_output`'s line.
    """
    from tiledepth.errors import BusyError
    from tiledepth.lock import lock_output, unlock_output

    try:
        fd = lock_output(path, option=option, by_name=own_name)
    except BusyError as exc:  # (its line speaks of a run)
        stem = "" if own_name else f", or a file with its stem ({path.stem}.*),"
        raise BusyError(f"{path}: another tiledepth command (a run, export or preview) is "
                        f"writing it{stem} now; wait for it to finish or choose another "
                        f"{option}") from exc
    try:
        yield
    finally:
        unlock_output(path, fd, by_name=own_name)


def placement_journal(output: str | os.PathLike) -> Path:
    """The journal of the placement of ``output`` and its companions (:func:`write_placement`):
    ``.<stem>.placing.json`` beside it, named after the output's stem as its lock is
    (:func:`tiledepth.lock.lock_path`): outputs with one stem (``x.tif`` and ``x.tiff``) share
    their sidecar and preview, so a run of either finds the journal of the other. A name that
    :func:`remove_partials` never removes and :func:`check_output_paths` never takes for a
    file of the run.

    Examples
    --------
    >>> placement_journal("survey/ortho.depth.tif").as_posix()
    'survey/.ortho.depth.placing.json'
    >>> placement_journal("survey/ortho.depth.tiff") == placement_journal("survey/ortho.depth.tif")
    True
    """
    output = Path(output)
    return output.with_name(f".{output.stem}.placing.json")


#: A file's identity, ``(st_dev, st_ino, st_size, st_mtime_ns)``: a rename and a hard link
#: keep it, so a journal tells the files of its run from any written at their names since
#: (the size and time too: a file removed frees its inode number for the next one written).
FileId = tuple[int, int, int, int]


def _file_id(path: Path) -> FileId | None:
    """The identity of the file (or link) at ``path``; None where there is none."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Move:
    """One name that a placement changes (:class:`Placement`).

    Attributes
    ----------
    path : pathlib.Path
        The name.
    new, new_id : pathlib.Path or None, FileId or None
        The temporary file renamed to it, and its identity (None: an old file only set
        aside, one the run does not write).
    aside, old_id : pathlib.Path or None, FileId or None
        The name its old file is kept under (:func:`set_aside`; None: not kept), and the
        identity of the file at ``path`` before the placement (None: none).
    """

    path: Path
    new: Path | None
    new_id: FileId | None
    aside: Path | None
    old_id: FileId | None


@dataclass(frozen=True)
class Placement:
    """The renames that place ``output`` (its temporary file ``tmp``, of identity ``tmp_id``,
    renamed last) and its companions (``moves``, in the order they are done), as
    :func:`write_placement` writes them down: what the run undoes or finishes when it is
    stopped among them, and the next run when it was killed (:func:`recover_placement`).

    Each name is touched only where it holds a file of the run (by its identity, never by
    its name: a file written there since is another's), or nothing.
    """

    output: Path
    tmp: Path
    tmp_id: FileId | None
    moves: tuple[Move, ...]

    def placed(self) -> bool:
        """Whether the output is in place: its name holds the temporary file (renamed, or
        linked there by :func:`place` without ``overwrite``)."""
        return self.tmp_id is not None and _file_id(self.output) == self.tmp_id

    def undo(self) -> tuple[bool, str, list[str]]:
        """The output not placed: put each old file kept aside back, over the run's new
        file or an empty name, and remove each new file where no old one comes back.

        Returns whether all of it is done, what was done (for a message), and the names
        left alone: a file there that is neither the old one nor the run's."""
        ok, back, removed, foreign = True, 0, 0, []
        for move in reversed(self.moves):
            kept = self._kept(move, foreign)
            at = _file_id(move.path)
            if at is not None and at not in (move.old_id, move.new_id):
                foreign.append(move.path.name if not kept else
                               f"{move.path.name} (its previous file kept as {move.aside.name})")
            elif kept:
                ok &= put_back(move.aside, move.path)
                back += 1
            elif at is not None and at == move.new_id:  # a new file where none was, or the
                ok &= _unlink(move.path)  # old one not kept
                removed += 1
        return ok, f"put {back} previous file(s) back and removed {removed} new one(s)", foreign

    def finish(self) -> tuple[bool, list[str]]:
        """The output in place: remove the old files kept aside, and the output's temporary
        name where it is still linked there. Returns whether all of it is done, and the
        names left alone (another file at an aside's name)."""
        ok, foreign = True, []
        for move in self.moves:
            if self._kept(move, foreign):
                ok &= _unlink(move.aside)
        if self.tmp_id is not None and _file_id(self.tmp) == self.tmp_id:
            ok &= _unlink(self.tmp)
        return ok, foreign

    def discard(self) -> None:
        """Remove the run's temporary files still at their temporary names (once undone)."""
        for new, new_id in ((self.tmp, self.tmp_id), *((m.new, m.new_id) for m in self.moves)):
            if new is not None and new_id is not None and _file_id(new) == new_id:
                _unlink(new)

    @staticmethod
    def _kept(move: Move, foreign: list[str]) -> bool:
        """Whether the old file of ``move`` is at its aside name; another file there (not the
        one the run set aside) goes to ``foreign``."""
        at = None if move.aside is None else _file_id(move.aside)
        if at is not None and at != move.old_id:
            foreign.append(move.aside.name)
        return at is not None and at == move.old_id


def plan_placement(output: Path, tmp: Path,
                   files: Iterable[tuple[Path, Path | None, Path | None]]) -> Placement:
    """The :class:`Placement` of ``output`` (its temporary file ``tmp``) and of ``files``
    (``(path, new, aside)`` each, as :func:`write_placement` takes them), with the identity of
    each file now: the record a run undoes or finishes by, written down or not."""
    return Placement(output, tmp, _file_id(tmp), tuple(
        Move(path, new, None if new is None else _file_id(new), aside, _file_id(path))
        for path, new, aside in files))


def write_placement(output: Path, tmp: Path,
                    files: Iterable[tuple[Path, Path | None, Path | None]]) -> Placement:
    """Write down, before the first rename, every rename that places ``output`` and its
    companions: what :func:`recover_placement` finishes or undoes after a run killed among
    them (SIGKILL, power cut), which loses what the run held in memory.

    Parameters
    ----------
    output, tmp : pathlib.Path
        The output and the temporary file it is written as (:func:`temp_path`), renamed
        last: until ``output`` holds that file, the output is not in place.
    files : iterable of (path, new, aside)
        Each other name the placement changes, in the order it does: ``path``; ``new``, the
        temporary file renamed to it (None: an old file only set aside, one the run does
        not write); ``aside``, the name its old file is kept under (:func:`set_aside`;
        None: not kept).

    Returns
    -------
    Placement
        The renames, with the identity of each file now (the temporary ones, and the old one
        at each name), as written in the journal (:func:`placement_journal`), written whole:
        under a temporary name that :func:`remove_partials` removes, synced, renamed, and its
        folder synced, so that it is on the disk before any rename is. The caller removes it
        once the files kept aside are removed (the output placed) or put back.

    Raises
    ------
    OutputError
        The journal of another placement of the output (or of one with its stem) is there
        and cannot be recovered now (another run places its files, or this process holds
        the output's lock): it is never overwritten.
    """
    journal = placement_journal(output)
    if os.path.lexists(journal):  # never overwritten: finished or undone first, under the lock
        _recover_locked(output)
        if os.path.lexists(journal):
            try:  # (where it cannot be read, no run ends it: waiting would never help)
                _read_placement(journal)
            except FileNotFoundError:  # (ended meanwhile: another's, as said below)
                pass
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise OutputError(_unreadable_journal(journal, exc)) from exc
            raise OutputError(f"{journal}: another run of {output.name} (or of an output with "
                              f"its stem) is moving its files in place, or was killed while it "
                              "did; wait for it to end, then run again (which finishes or "
                              "undoes it)")
    placement = plan_placement(output, tmp, files)

    def name(path: Path | None) -> str | None:
        return None if path is None else path.name

    def ident(file_id: FileId | None) -> list[int] | None:
        return None if file_id is None else list(file_id)

    record = {"output": output.name, "tmp": tmp.name, "tmp_id": ident(placement.tmp_id),
              "files": [{"path": m.path.name, "new": name(m.new), "new_id": ident(m.new_id),
                         "aside": name(m.aside), "old_id": ident(m.old_id)}
                        for m in placement.moves]}
    part = tmp.with_name(tmp.name + ".placing")  # a partial file of the output's
    part_id = None
    try:
        with open(part, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        part_id = _file_id(part)
        os.replace(part, journal)
        with contextlib.suppress(OSError):  # the rename on the disk too (not everywhere
            fd = os.open(journal.parent, os.O_RDONLY)  # possible)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:  # (Ctrl-C too) nothing renamed yet: no journal left
        part.unlink(missing_ok=True)
        if part_id is not None and _file_id(journal) == part_id:
            journal.unlink(missing_ok=True)
        raise
    return placement


def recover_placement(output: str | os.PathLike) -> str | None:
    """Finish or undo the placement of ``output`` that a run killed while it renamed its
    files into place left half done (:func:`write_placement`): all the old files, or all
    the new ones, never new companions beside an old output.

    The journal is that of the output's stem (:func:`placement_journal`: the run it names
    may have written ``x.tif`` where this is ``x.tiff``). Where the output's name does not
    hold the run's temporary file (renamed or linked there), the output was never placed:
    each old file is put back (:func:`put_back`) and each new one placed where there was
    none is removed, and so are the run's temporary files. Where it does, the output is in
    place: the old files kept aside are removed. A name is touched only where it holds the
    killed run's file or nothing (:class:`Placement`): one written there since is left
    alone, in one warning. The journal goes last: a recovery that is itself killed is done
    again the same way. Call it only while no other run can write ``output`` (under its
    lock: :func:`remove_partials` calls it).

    Returns
    -------
    str or None
        ``"undone"`` or ``"finished"``; None where there is no journal, or one that cannot
        be read or a file it names that cannot be moved (logged; the journal is kept).
    """
    journal = placement_journal(output)
    try:
        placement = _read_placement(journal)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s", _unreadable_journal(journal, exc))
        return None
    output = placement.output
    try:
        if placement.placed():  # the old files kept aside go (and its temporary name, where
            done, what = "finished", "removed the previous files it kept aside"  # linked)
            ok, foreign = placement.finish()
        else:  # the output never placed: back to the old files
            done = "undone"
            ok, what, foreign = placement.undo()
    except OSError as exc:  # (a name that cannot be looked at: whose file it is is unknown)
        log.warning("%s: %s", output, exc)
        ok, foreign = False, []
    _left_alone(output, foreign)
    if not ok or not _unlink(journal):
        log.warning("%s: a run (or export, preview) killed while it moved its files in place "
                    "is not wholly %s; %s is kept, to do it again next time", output, done,
                    journal)
        return None
    if done == "undone":  # the killed run's temporary files
        placement.discard()
    log.info("%s: a run (or export, preview) was killed while it moved its files in place; "
             "%s that: %s", output, done, what)
    return done


def _unreadable_journal(journal: Path, exc: BaseException) -> str:
    """The one line for a placement journal that cannot be read (``exc``): no run finishes or
    undoes it, so the user looks at the files (those it names, where it is JSON that names
    them) and removes it by hand."""
    stem = journal.name[1:-len(".placing.json")]  # (placement_journal's name)
    problem = f"no {exc.args[0]!r} in it" if isinstance(exc, KeyError) else \
        exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    names = _journal_names(journal)
    look = f"the files it names ({', '.join(names)})" if names else \
        f"{stem}.* and the .{stem}.*.old files beside it (previous files it kept aside)"
    return (f"{journal}: cannot read it ({problem}), so the run, export or preview of {stem}.* "
            "that was killed while it moved its files in place is neither finished nor undone; "
            f"check {look}, then remove {journal.name} by hand while no other tiledepth "
            f"command writes {stem}.*")


def _journal_names(journal: Path) -> list[str]:
    """The file names a journal gives, as far as it is JSON of the shape
    :func:`write_placement` writes (for :func:`_unreadable_journal`); none where it is not."""
    try:
        with open(journal, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict):
        return []
    names = [record.get("output"), record.get("tmp")]
    files = record.get("files")
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict):
            names += [entry.get("path"), entry.get("new"), entry.get("aside")]
    # (plain names only, one line: a name with a line break is no file of a journal's)
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n
                              and n.isprintable()))


def _left_alone(output: Path, foreign: list[str]) -> None:
    """Say, in one line, the names of a placement that hold another file than its run's."""
    if foreign:
        log.warning("%s: left alone %s: not the file(s) of the run that moved its files in "
                    "place there, but written since; check them", output, ", ".join(foreign))


def _read_placement(journal: Path) -> Placement:
    """The :class:`Placement` that ``journal`` holds; FileNotFoundError where there is none,
    and ValueError (KeyError, TypeError) for one that names a file elsewhere, or of another
    output than the journal's, or is malformed."""
    with open(journal, encoding="utf-8") as f:
        record = json.load(f)
    output = _beside(journal, record["output"] or "")  # (never None)
    if placement_journal(output) != journal:
        raise ValueError(f"{record['output']!r} is not the output of this journal")
    return Placement(output, _beside(output, record["tmp"] or ""), _file_ident(record["tmp_id"]),
                     tuple(Move(_beside(output, f["path"] or ""), _beside(output, f["new"]),
                                _file_ident(f["new_id"]), _beside(output, f["aside"]),
                                _file_ident(f["old_id"])) for f in record["files"]))


def _file_ident(value: object) -> FileId | None:
    """A file's identity as a journal gives it (a list of four integers, or null)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4 or \
            not all(type(v) is int for v in value):
        raise ValueError(f"{value!r} is not a file's identity")
    return value[0], value[1], value[2], value[3]


def _beside(output: Path, name: object) -> Path | None:
    """The file ``name`` (of a journal) beside ``output``; ValueError for anything but a
    plain name (never a path elsewhere)."""
    if name is None:
        return None
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or \
            os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"{name!r} is not a file name")
    return output.with_name(name)


def _unlink(path: Path) -> bool:
    """Remove ``path`` (gone already: fine); False, logged, where it cannot."""
    try:
        path.unlink(missing_ok=True)
        return True
    except OSError as exc:
        log.warning("%s: cannot remove it (%s)", path, exc.strerror or exc)
        return False


def _recover_locked(output: Path) -> None:
    """:func:`recover_placement` under the output's lock; nothing while another run holds it
    (it places its files now), nor where this process holds it (as a run does from its start:
    :func:`remove_partials` recovered then)."""
    with _lock_if_free(output) as held:
        if held:
            recover_placement(output)


@contextlib.contextmanager
def _lock_if_free(output: Path) -> Iterator[bool]:
    """Hold the output's lock (:func:`tiledepth.lock.lock_output`, by the stem) for the
    block, taken without waiting: True; False, holding nothing, while another run or job
    holds it (it writes that output now) or where no lock can be had (a read-only folder)."""
    from tiledepth.lock import lock_output, unlock_output

    try:
        fd = lock_output(output)
    except OutputError:  # busy (BusyError), or no lock to be had: leave everything
        fd = None
    if fd is None:  # (yielded outside the handler: an error of the block is not its context)
        yield False
        return
    try:
        yield True
    finally:
        unlock_output(output, fd)


def verify_geotiff(path: Path, *, height: int, width: int, count: int,
                   overviews: bool = False) -> None:
    """Reopen a finished GeoTIFF and read its last block and its smallest overview, in each
    band: a file that a full disk cut short fails here, before it is renamed into place.

    Raises the reading error (a ``RasterioIOError``), or ``OSError`` for a file of the
    wrong size or without the overviews it should have.
    """
    from tiledepth.cog import overview_factors
    from tiledepth.rasterfile import open_raster

    with open_raster(path) as ds:
        if (ds.height, ds.width, ds.count) != (height, width, count):
            raise OSError(f"reads as {ds.width} x {ds.height} x {ds.count}, not "
                          f"{width} x {height} x {count}")
        bh, bw = ds.block_shapes[0]
        r0, c0 = (height - 1) // bh * bh, (width - 1) // bw * bw
        last = Window(c0, r0, width - c0, height - r0)
        want = overview_factors(height, width) if overviews else []
        for band in range(1, count + 1):
            ds.read(band, window=last)
            factors = ds.overviews(band)  # as GDAL reads them back (a skinny raster's
            if len(factors) != len(want):  # differ from the factors asked for)
                raise OSError(f"has {len(factors)} overview(s), not {len(want)}")
            if factors:  # the smallest overview, whole
                ds.read(band, out_shape=(-(-height // factors[-1]), -(-width // factors[-1])))


def remove_partials(path: str | os.PathLike, *, recover: bool = True,
                    left_by: str = "a run") -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left behind.

    A :class:`GeoTiffWriter` removes its temporary file on any error or
    signal it can catch; a SIGKILL or a power cut leaves it. Call this only
    while no other writer of ``path`` can run (tiledepth.run holds the output's
    checkpoint lock). A placement that such a writer left half done is first finished
    or undone (:func:`recover_placement`: it tells by whether the output holds its temporary
    file); ``recover=False`` for a companion of an output just recovered (they share its
    journal: a second try would only repeat a warning), or for a writer that does not hold
    the lock of the stem (a point cloud's export: its own name's).

    The files are ``.<name>.<8 hex digits>.partial`` (:func:`temp_path`) and every name that
    begins so: an export's ``.partial<extension>`` and the files written beside it by that
    name (its ``.aux.xml``, a PNG's ``.strips.tif``, the ``.placing`` of its journal), its
    world files (``.partial.wld``: named after its stem), a preview's ``.partial.aux.xml``.
    Regular files only: a link or a folder there is no writer's, and is left alone. One
    that cannot be removed stays, in a warning (the caller goes on). ``left_by`` says whose
    they are, in the log.

    Returns
    -------
    list of pathlib.Path
        The removed paths.
    """
    path = Path(path)
    if recover:
        recover_placement(path)
    pattern = f".{glob.escape(path.name)}.{'[0-9a-f]' * 8}.partial*"
    removed = []
    for stale in sorted(path.parent.glob(pattern)):
        try:
            if not stat.S_ISREG(stale.lstat().st_mode):
                continue
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # the caller goes on; the file stays, as it did
            log.warning("%s: cannot remove it, left by %s that was killed (%s)", stale,
                        left_by, exc.strerror or exc)
            continue
        log.info("removed %s, left by %s that was killed", stale, left_by)
        removed.append(stale)
    return removed


def remove_partials_if_free(path: str | os.PathLike) -> list[Path]:
    """:func:`remove_partials` of ``path`` under its output's lock (:func:`tiledepth.lock.
    lock_output`, by the stem), taken without waiting: nothing while another run or job
    holds it (it writes that output now: its temporary files, its placement), nor where no
    lock can be had (a missing or read-only folder). Returns the removed paths."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    with _lock_if_free(path) as held:
        return remove_partials(path) if held else []


def check_free_space(needs: Iterable[tuple[Path, int, str]]) -> None:
    """Raise OutputError if a file system has less room than a run needs on it.

    Parameters
    ----------
    needs : iterable of (folder, bytes, what)
        Bytes a run will write into each folder, and what for (``"scratch"``,
        ``"output"``); folders on one file system add up.

    Examples
    --------
    >>> import tempfile
    >>> try:
    ...     check_free_space([(Path(tempfile.gettempdir()), 2**60, "scratch")])
    ... except OutputError as err:
    ...     print(str(err).split(": ", 1)[1][:63])
    not enough free space: the scratch needs about 1073741824.0 GiB
    """
    by_device: dict[int, list] = {}
    for folder, nbytes, what in needs:
        if nbytes <= 0:
            continue
        entry = by_device.setdefault(os.stat(folder).st_dev, [folder, 0, []])
        entry[1] += nbytes
        entry[2].append(f"the {what} needs about {_gib(nbytes)}")
    for folder, total, parts in by_device.values():
        free = shutil.disk_usage(folder).free
        if total > free:
            raise OutputError(
                f"{folder}: not enough free space: {' and '.join(parts)}, "
                f"{_gib(free)} free; free some space, or put the scratch on another disk "
                "with --scratch (the output with -o)")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@contextlib.contextmanager
def atomic_file(path: Path, *, option: str) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; move it to ``path`` when the block ends well.

    On any error or interruption the temporary file is removed; a failed write
    (a full disk) raises :class:`~tiledepth.errors.WriteError` naming ``option``.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc, option) from exc
        raise
