"""Safe write: the paths a run writes, checked, and each finished file put in place whole.

:func:`output_paths` derives every file a run writes in one place (the GeoTIFF,
its sidecar JSON, the preview PNG and its ``.aux.xml``), :func:`check_output_paths`
checks them against the inputs and each other, :func:`temp_path` names the
temporary file each is written under, :func:`verify_geotiff` reopens a finished
GeoTIFF, and :func:`place` moves each finished temporary file to its name;
:func:`set_aside` and :func:`put_back` keep the files an ``--overwrite`` replaces until
the whole set is in place; :func:`write_placement` writes those renames down first, so that
:func:`recover_placement` finishes or undoes the placement of a run killed among them.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rasterio.windows import Window

from tiledepth.errors import OutputError, write_error

__all__ = ["OutputPaths", "aside_path", "atomic_file", "check_free_space", "check_output_path",
           "check_output_paths", "check_target", "check_world_files", "companion_paths",
           "default_output", "gdal_sidecars", "output_file", "output_paths", "place",
           "placement_journal", "png_chunks", "preview_path", "put_back", "recover_placement",
           "remove_partials", "set_aside", "sidecar_path", "temp_path", "tiledepth_png",
           "verify_geotiff", "world_files", "write_placement"]

log = logging.getLogger(__name__)

#: The extensions of a run's output, a GeoTIFF (compared ignoring case).
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def default_output(input_path: str | os.PathLike) -> Path:
    """``<input stem>.depth.tif`` beside the input."""
    p = Path(input_path)
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
    its ``TILEDEPTH_PNG_RANGE`` tag (the world file beside such a PNG is tiledepth's too)."""
    try:
        with open(path, "rb") as f:
            for kind, length in png_chunks(f):
                if kind in (b"tEXt", b"iTXt", b"zTXt") and \
                        f.read(length).startswith(b"TILEDEPTH_PNG_RANGE\0"):
                    return True
    except OSError:
        pass
    return False


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
    preview's ``.aux.xml`` (an ``--overwrite`` run removes those it does not write), the
    world files that would place the preview (:func:`world_files`), which an ``--overwrite``
    run removes where they are tiledepth's (:func:`check_target` refuses others), and the
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
    if text.endswith(("/", os.sep)) or (os.altsep and text.endswith(os.altsep)) or \
            os.path.basename(text) in (".", ".."):
        if not out.is_dir():
            raise OutputError(f"{text}: output folder does not exist; create it first (an -o "
                              "ending in / names a folder)")
        out = out / default_name
    return out


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
    else:
        out = output_file(output, default_output(input_path).name)
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
    The output of an ``overwrite`` where a PNG sits at its preview's name: the same (that PNG,
    which the overwrite would remove as the old preview, is a user's when a world file
    tiledepth did not write places it). Without such a PNG a world file there is left alone
    (an input's own, ``frame.jpg`` and ``frame.wld`` with ``-o frame.tif``).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path) and not overwrite:  # a dangling link
            raise OutputError(f"{path}: already exists (a broken link); pass --overwrite or "
                              f"choose another {option}") from None
        if what == "preview" or (what == "output" and overwrite
                                 and os.path.lexists(preview_path(path))):
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
    # (with overwrite: the old preview is replaced, or removed with the output)
    if what == "preview" or (what == "output" and os.path.lexists(preview_path(path))):
        check_world_files(preview_path(path), option=option)


def check_output_paths(paths: OutputPaths, inputs: Iterable[str | os.PathLike | None], *,
                       overwrite: bool, geotiff: bool = True) -> None:
    """Raise OutputError, with what to do, if any file of ``paths`` cannot or must not be
    written: one of the ``inputs`` (the raster, the reference, ...), two files in one,
    a run's output (``geotiff``: a GeoTIFF) not named ``.tif`` or ``.tiff``, not a regular
    file, existing without ``overwrite``, or its folder missing or read-only.

    A placement that a run of the output left half done when it was killed is first
    finished or undone (:func:`recover_placement`, under the output's lock; none while
    another run holds it): its new sidecar beside no output is not taken for an output.
    """
    inputs = [Path(p) for p in inputs if p is not None]
    if os.path.lexists(placement_journal(paths.output)):  # a run killed while it moved its
        _recover_locked(paths.output)  # files in place: checked as it finished, or before
    files = paths.files()
    for what, path in files:
        for src in inputs:
            if _same(path, src):
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
    if overwrite:  # the old output's companions this run does not write are removed with it
        written = [path for _, path in files]
        gdal = gdal_sidecars(paths.output)
        for path in companion_paths(paths.output):
            for src in inputs:
                if path not in written and _same(path, src):
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


def put_back(aside: Path, path: Path) -> None:
    """Undo :func:`set_aside`: the old file back at ``path``, over what a failed run placed
    there. Logs, never raises, where it cannot (the old file then stays at ``aside``)."""
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


def placement_journal(output: str | os.PathLike) -> Path:
    """The journal of the placement of ``output`` and its companions (:func:`write_placement`):
    ``.<name>.placing.json`` beside it, a name that :func:`remove_partials` never removes and
    :func:`check_output_paths` never takes for a file of the run.

    Examples
    --------
    >>> placement_journal("survey/ortho.depth.tif").as_posix()
    'survey/.ortho.depth.tif.placing.json'
    """
    output = Path(output)
    return output.with_name(f".{output.name}.placing.json")


def write_placement(output: Path, tmp: Path,
                    files: Iterable[tuple[Path, Path | None, Path | None, bool]]) -> Path:
    """Write down, before the first rename, every rename that places ``output`` and its
    companions: what :func:`recover_placement` finishes or undoes after a run killed among
    them (SIGKILL, power cut), which loses what the run held in memory.

    Parameters
    ----------
    output, tmp : pathlib.Path
        The output and the temporary file it is written as (:func:`temp_path`), renamed
        last: until ``tmp`` has become the output, the output is not in place.
    files : iterable of (path, new, aside, old)
        Each name the placement changes, in the order it does, the output last: ``path``;
        ``new``, the temporary file renamed to it (None: an old file only set aside, one the
        run does not write); ``aside``, the name its old file is kept under
        (:func:`set_aside`; None: not kept); ``old``, whether a file is there now.

    Returns
    -------
    pathlib.Path
        The journal (:func:`placement_journal`), written whole: under a temporary name that
        :func:`remove_partials` removes, synced, renamed, and its folder synced, so that it is
        on the disk before any rename is. The caller removes it once the files kept aside are
        removed (the output placed) or put back.
    """
    def name(path: Path | None) -> str | None:
        return None if path is None else path.name

    record = {"output": output.name, "tmp": tmp.name,
              "files": [{"path": path.name, "new": name(new), "aside": name(aside), "old": old}
                        for path, new, aside, old in files]}
    journal = placement_journal(output)
    part = tmp.with_name(tmp.name + ".placing")  # a partial file of the output's
    try:
        with open(part, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, journal)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename on the disk too (not everywhere possible)
        fd = os.open(journal.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return journal


def recover_placement(output: str | os.PathLike) -> str | None:
    """Finish or undo the placement of ``output`` that a run killed while it renamed its
    files into place left half done (:func:`write_placement`): all the old files, or all
    the new ones, never new companions beside an old output.

    While the output's temporary file is there (and not linked at its name, :func:`place`
    without ``overwrite``), or where neither is there, the output was never placed: each
    old file is put back (:func:`put_back`) and each new one placed where there was none
    is removed, and so are the run's temporary files. Once it has become the output, the
    output is in place: the old files kept aside are removed. The journal goes last: a
    recovery that is itself killed is done again the same way. Call it only while no other
    run can write ``output`` (under its lock: :func:`remove_partials` calls it).

    Returns
    -------
    str or None
        ``"undone"`` or ``"finished"``; None where there is no journal, or one that cannot
        be read or a file it names that cannot be moved (logged; the journal is kept).
    """
    output = Path(output)
    journal = placement_journal(output)
    try:
        with open(journal, encoding="utf-8") as f:
            record = json.load(f)
        tmp = _beside(output, record["tmp"] or "")  # (never None)
        files = [(_beside(output, f["path"]), _beside(output, f["new"]),
                  _beside(output, f["aside"]), bool(f["old"])) for f in record["files"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cannot read %s, left by a run killed while it moved its files in "
                    "place (%s); check the files beside the output, then remove it", output,
                    journal, exc)
        return None
    ok = True
    if not _placed(tmp, output):  # the output never placed: back to the old files
        done, back, removed = "undone", 0, 0
        for path, new, aside, old in reversed(files):
            if aside is not None and os.path.lexists(aside):
                put_back(aside, path)  # (logs where it cannot)
                ok &= not os.path.lexists(aside)
                back += 1
            elif not old and new is not None and _placed(new, path):
                ok &= _unlink(path)  # a new file where there was none
                removed += 1
        what = f"put {back} previous file(s) back and removed {removed} new one(s)"
    else:  # the output in place: the old files kept aside go (and its temporary name, where
        done, what = "finished", "removed the previous files it kept aside"  # it was linked)
        for aside in (*(aside for _, _, aside, _ in files), tmp):
            if aside is not None and os.path.lexists(aside):
                ok &= _unlink(aside)
    if not ok or not _unlink(journal):
        log.warning("%s: a run killed while it moved its files in place is not wholly %s; "
                    "%s is kept, to do it again next run", output, done, journal)
        return None
    if done == "undone":  # the killed run's temporary files
        for new in (tmp, *(new for _, new, _, _ in files)):
            if new is not None:
                _unlink(new)
    log.info("%s: a run was killed while it moved its files in place; %s that: %s", output,
             done, what)
    return done


def _beside(output: Path, name: object) -> Path | None:
    """The file ``name`` (of a journal) beside ``output``; ValueError for anything but a
    plain name (never a path elsewhere)."""
    if name is None:
        return None
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or \
            os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"{name!r} is not a file name")
    return output.with_name(name)


def _placed(new: Path, path: Path) -> bool:
    """Whether the temporary file ``new`` is at ``path`` now: renamed there (``new`` gone),
    or linked there and not yet removed (:func:`place` without ``overwrite``)."""
    try:
        at = os.lstat(path)
    except FileNotFoundError:
        return False
    try:
        return os.path.samestat(os.lstat(new), at)
    except FileNotFoundError:
        return True


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
    (it places its files now)."""
    from tiledepth.lock import lock_output, unlock_output

    try:
        fd = lock_output(output)
    except OutputError:  # busy (BusyError), or no lock to be had: left for the run that is
        return
    try:
        recover_placement(output)
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


def remove_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left behind.

    A :class:`GeoTiffWriter` removes its temporary file on any error or
    signal it can catch; a SIGKILL or a power cut leaves it. Call this only
    while no other writer of ``path`` can run (tiledepth.run holds the output's
    checkpoint lock). A placement that such a writer left half done is first finished
    or undone (:func:`recover_placement`: it tells by the output's temporary file).
    Returns the removed paths.
    """
    path = Path(path)
    recover_placement(path)
    pattern = f".{glob.escape(path.name)}.{'[0-9a-f]' * 8}.partial*"
    removed = sorted(path.parent.glob(pattern))
    for stale in removed:
        stale.unlink(missing_ok=True)
        log.info("removed %s, left by a run that was killed", stale)
    return removed


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
