"""Surveys: depth maps of many rasters in one resumable, shardable batch.

:func:`tiledepth.batchrun.batch` (``tiledepth batch``) runs a survey; its
pieces are here, small functions usable alone: :func:`find_inputs`,
:func:`parse_shard` and :func:`in_shard`, :func:`check_output` (is an
existing output complete and valid?), :func:`foreign_output` (may it be replaced?),
:func:`append_record` and :func:`read_manifest`, :func:`summary`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import fnmatch
import hashlib
import json
import logging
import numbers
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tiledepth.errors import InputError, OptionError, OutputError, TiledepthError
from tiledepth.sources import is_gdal_source, redact, source_name, vsi_path

__all__ = [
    "DEFAULT_GLOB",
    "EXECUTORS",
    "MANIFEST_NAME",
    "ON_ERROR",
    "Record",
    "SurveyInput",
    "append_record",
    "check_output",
    "find_inputs",
    "foreign_output",
    "glob_match",
    "in_shard",
    "make_record",
    "parse_shard",
    "raster_size",
    "read_manifest",
    "refuse_foreign",
    "summary",
]

log = logging.getLogger(__name__)

#: File-name patterns a folder is searched for by default (case-insensitive).
DEFAULT_GLOB = ("*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.png", "*.jp2")
#: The manifest, in the output folder.
MANIFEST_NAME = "tiledepth-manifest.jsonl"
#: Suffix of every output; files ending in it are never picked up from a folder.
OUTPUT_SUFFIX = ".depth.tif"
#: Endings of every file a run writes (the output, its sidecar, its preview and the
#: preview's georeferencing): never picked up from a folder, so that a rerun into the input
#: folder does not take a preview ``x.depth.png`` for a new input (``x.depth.depth.tif``).
WRITTEN_SUFFIXES = (OUTPUT_SUFFIX, ".depth.png", ".depth.json", ".aux.xml")
#: The bytes at the start of a file that a tiledepth output's first directory (with its
#: tags) is looked for in, when the file is too damaged to open (:func:`foreign_output`):
#: the tags follow the directory's tile offsets, 8 bytes a tile in a BigTIFF (75 kB into a
#: 40000 x 40000 px output), so 8 MiB covers outputs of over 100 gigapixels.
_HEAD_BYTES = 8 << 20
#: What to do when an input fails.
ON_ERROR = ("skip", "stop")
#: Where the model runs: in this process, or on a pool of Ray actors.
EXECUTORS = ("local", "ray")

Status = Literal["done", "failed", "skipped", "busy"]


@dataclass(frozen=True)
class SurveyInput:
    """One input raster and where its output goes, relative to the output folder.

    Attributes
    ----------
    path : pathlib.Path or str
        The raster, as found; a URL or GDAL path (``/vsi...``) stays a str.
    relative : pathlib.PurePosixPath
        Where its output goes, never outside the output folder (no ``..``): its
        path under the folder it was found in; for a file named one by one (as
        an argument or in a list), its path under the current folder, or its
        name alone outside it; for a URL or GDAL path, its file name.
    """

    path: Path | str
    relative: PurePosixPath

    def output(self, output_dir: str | os.PathLike) -> Path:
        """``OUTDIR/<subfolders>/<stem>.depth.tif``.

        Examples
        --------
        >>> SurveyInput(Path("s/a/x.tif"), PurePosixPath("a/x.tif")).output("out").as_posix()
        'out/a/x.depth.tif'
        """
        rel = self.relative
        return Path(output_dir, *rel.parent.parts, f"{rel.stem}{OUTPUT_SUFFIX}")


@dataclass(frozen=True)
class Record:
    """One line of the manifest: what happened to one input.

    Attributes
    ----------
    input, output : str
        The raster and its depth map.
    status : {'done', 'failed', 'skipped', 'busy'}
        ``skipped``: ``resume`` found a complete, valid output. ``busy``: another run (a
        second batch into the same folder) was writing the output, so this one left it;
        that run's own record says how it ended, and a ``busy`` record is never an
        input's latest state while it has another (:func:`read_manifest`).
    bytes : int or None
        Size of the output file.
    height, width : int or None
        Raster size in pixels.
    tiles : int or None
        Tiles inferred (None when skipped or failed). A ``batch --mosaic``'s one
        fusion's are on the first input's record it was for, the others' are 0
        (:func:`tiledepth.mosaic.batch_mosaic`).
    consistency : float or None
        The fusion's tile consistency (see :mod:`tiledepth.report`; None when
        skipped or failed).
    flagged : int or None
        Tiles flagged as outliers (listed in the output's sidecar JSON).
    seconds : float
        Wall time spent on the input, checks included (a ``batch --mosaic``'s
        fusion: on the record that has its tiles). A pipelined batch starts an
        input while the one before finishes (:func:`tiledepth.batchrun.batch`):
        its seconds, from its start, overlap that one's, and may add up to more
        than the batch's wall time.
    error : str or None
        One line saying why it failed.
    host : str
        Machine that handled it.
    finished : str
        UTC time, ISO 8601.
    """

    input: str
    output: str
    status: Status
    bytes: int | None = None
    height: int | None = None
    width: int | None = None
    tiles: int | None = None
    consistency: float | None = None
    flagged: int | None = None
    seconds: float = 0.0
    error: str | None = None
    host: str = ""
    finished: str = ""

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))


def find_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], *,
                glob: Sequence[str] | str | None = None,
                exclude: str | os.PathLike | None = None,
                one_output_each: bool = True) -> list[SurveyInput]:
    """Expand files, folders and ``@list.txt`` files into input rasters, in order.

    A folder is searched recursively for files whose name matches one of
    ``glob`` (case-insensitive), skipping hidden files and folders, what runs
    write (:data:`WRITTEN_SUFFIXES`: ``*.depth.tif``, ``*.depth.png``,
    ``*.depth.json``, ``*.aux.xml``), the manifest and anything under
    ``exclude``; its files keep their path
    under it. Links to folders are followed, each folder searched once (a
    link loop ends). Files named one by one (as arguments or in a list) keep
    their path under the current folder, or their name alone outside it
    (``/elsewhere/x.tif``, ``../x.tif``): where one goes never depends on the
    other inputs, so adding a file to a list moves no other output and
    changes no other's shard. URLs and GDAL paths (``/vsicurl/...``) are kept
    as given and named by their file name. A list file (UTF-8, with or without
    a byte-order mark) holds one file, folder or URL per line, relative to the
    current folder; blank lines and ``#`` comments are ignored. Duplicates
    (the same file by any spelling: ``a/../a/x.tif``, a link) are dropped.

    Parameters
    ----------
    inputs : path or sequence of paths
        Files, folders and ``@`` list files.
    glob : str or sequence of str, optional
        Patterns matched against the end of each file's path under its folder
        (``*.tif``, ``rgb/*.tif``; ``**/`` is any number of folders, none
        included: ``rgb/**/*.tif``), see :func:`glob_match`; default
        :data:`DEFAULT_GLOB`.
    exclude : str or os.PathLike, optional
        A folder never searched (the output folder).
    one_output_each : bool
        Refuse two inputs that would write the same output (default); False for
        inputs fused into one output (``run --mosaic`` without ``--split``).

    Returns
    -------
    list of SurveyInput

    Raises
    ------
    InputError
        A named file or folder does not exist, no raster was found, or two
        inputs would write the same output (``one_output_each``).

    Examples
    --------
    >>> find_inputs(["survey/"], glob="*.tif")  # doctest: +SKIP
    [SurveyInput(path=PosixPath('survey/a/x.tif'), relative=PurePosixPath('a/x.tif')), ...]
    """
    patterns = _patterns(glob)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no inputs given; name raster files, folders or @list.txt files")
    skip = Path(exclude).absolute() if exclude is not None else None
    found: list[SurveyInput] = []
    for entry, listed in _expand_lists(inputs):
        if not entry:  # Path("") is ".": an unset "$SURVEY" would run the current folder
            raise InputError("an empty input was given; name a file, folder or @list.txt")
        if is_gdal_source(entry):  # a URL: Path() would fold its "//", and it is no local file
            found.append(SurveyInput(entry, _checked(entry, source_name(entry))))
            continue
        path = Path(entry)
        if path.is_dir():
            matches = list(_search(path, patterns, skip))
            if not matches:
                log.warning("%s: no file matches %s", path, ", ".join(patterns))
            found.extend(matches)
        elif path.exists() or listed:  # a missing listed file fails alone, when it is run
            found.append(SurveyInput(path, _checked(entry, _placed(path))))
        else:
            raise InputError(f"{path}: no such file or folder; check the path")
    if not found:
        raise InputError(f"no input rasters found (searched for {', '.join(patterns)}); "
                         "check the paths or pass --glob")
    unique: list[SurveyInput] = []
    seen: set[str | tuple[int, int]] = set()
    outputs: dict[PurePosixPath, Path | str] = {}
    for item in found:
        # the same file by another spelling (s/a/../a/x.tif, a link to it) would run twice,
        # both writing one output; the first spelling names the output
        key = vsi_path(item.path.strip()) if isinstance(item.path, str) \
            else _file_key(item.path)
        if key in seen:
            continue
        seen.add(key)
        target = item.relative.parent / f"{item.relative.stem}{OUTPUT_SUFFIX}"
        if target in outputs and one_output_each:
            raise InputError(f"{redact(str(outputs[target]))} and {redact(str(item.path))} "
                             f"would both write {target}; "
                             "rename one or narrow --glob")
        outputs[target] = item.path
        unique.append(item)
    return unique


def glob_match(path: str, pattern: str) -> bool:
    """Whether the relative ``path`` ends with ``pattern``, segment by segment.

    Each ``/``-separated segment of the pattern matches one folder or file name
    as :func:`fnmatch.fnmatchcase` does (``*``, ``?``, ``[...]``; case-sensitive:
    :func:`find_inputs` lowers both), except ``**``, which matches any number
    of folders, none included. The pattern may start anywhere in the path, as
    :meth:`pathlib.PurePath.match` has it (``b/*.tif`` matches ``a/b/x.tif``),
    whose ``**`` is a ``*`` before Python 3.13; empty and ``.`` segments are
    ignored, as there (``./*.tif`` is ``*.tif``).

    Examples
    --------
    >>> glob_match("top.tif", "**/*.tif"), glob_match("a/b/y.tif", "**/*.tif")
    (True, True)
    >>> [glob_match(p, "a/**/*.tif") for p in ("a/x.tif", "a/b/c/y.tif", "s/a/x.tif", "b/x.tif")]
    [True, True, True, False]
    >>> glob_match("a/b/x.tif", "b/*.tif"), glob_match("a/b/x.tif", "a/*.tif")
    (True, False)
    >>> glob_match("x.tif", "*.tif"), glob_match("a/x.tif", "?.tif"), glob_match("x.tif", "*.png")
    (True, True, False)
    >>> glob_match("a/b/x.tif", "a/**"), glob_match("ab/x.tif", "a**/x.tif")
    (True, True)
    >>> glob_match("a/x.tif", "./a//*.tif")
    True
    """
    pats = (p for p in pattern.split("/") if p not in ("", "."))
    return _glob_match(tuple(path.split("/")), ("**", *pats))


def _glob_match(parts: tuple[str, ...], pats: tuple[str, ...]) -> bool:
    """Whether ``parts`` match ``pats`` whole, ``**`` any number of segments."""
    while pats and pats[0] != "**":
        if not parts or not fnmatch.fnmatchcase(parts[0], pats[0]):
            return False
        parts, pats = parts[1:], pats[1:]
    if not pats:
        return not parts
    while len(pats) > 1 and pats[1] == "**":  # a/**/**/x is a/**/x: no repeated search
        pats = pats[1:]
    return any(_glob_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """Parse ``"i/N"`` (i from 0 to N - 1) into ``(i, N)``.

    Examples
    --------
    >>> parse_shard("3/8")
    (3, 8)
    >>> parse_shard("8/8")
    Traceback (most recent call last):
    ...
    tiledepth.errors.OptionError: shard 8/8: i must be from 0 to N - 1 = 7 (shards count from 0)
    >>> parse_shard((0.5, 2))
    Traceback (most recent call last):
    ...
    tiledepth.errors.OptionError: shard must be i/N or a pair of ints (i, N), got (0.5, 2)
    """
    if isinstance(shard, str):
        text = shard.strip()
        i, sep, n = text.partition("/")
        try:
            if not sep:
                raise ValueError
            index, count = int(i), int(n)
        except ValueError:
            raise OptionError(f"shard must be i/N, e.g. 0/4, got {shard!r}") from None
    else:
        # ints only: 0.5 would match no hash (an empty shard, silently), '1' fail deep in
        # in_shard, and True pass for 1
        if not (isinstance(shard, (tuple, list)) and len(shard) == 2
                and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                        for v in shard)):
            raise OptionError(f"shard must be i/N or a pair of ints (i, N), got {shard!r}")
        index, count = (int(v) for v in shard)
        text = f"{index}/{count}"
    if count < 1:
        raise OptionError(f"shard {text}: N must be >= 1")
    if not 0 <= index < count:
        raise OptionError(f"shard {text}: i must be from 0 to N - 1 = {count - 1} "
                          "(shards count from 0)")
    return index, count


def in_shard(relative: str | PurePosixPath, index: int, count: int) -> bool:
    """Whether the input at ``relative`` belongs to shard ``index`` of ``count``.

    A stable hash (SHA-1) of the input's path under its folder, modulo
    ``count``: the same on every machine and in every job, whatever the other
    inputs are, so files added between two jobs' starts are still done once.

    Examples
    --------
    >>> names = [f"a/frame{i:04d}.jpg" for i in range(1000)]
    >>> [sum(in_shard(n, i, 4) for n in names) for i in range(4)]
    [247, 264, 247, 242]
    """
    # os.fsencode: a name that is not valid UTF-8 (kept by Python as surrogate escapes)
    # hashes as its bytes on disk instead of crashing; a UTF-8 name hashes as before
    digest = hashlib.sha1(os.fsencode(PurePosixPath(relative).as_posix())).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def check_output(output: str | os.PathLike, input: str | os.PathLike, *,
                 uncertainty: bool | None = None) -> str | None:
    """Why ``output`` is not a complete, valid depth map of ``input``; None if it is.

    Opens both (the input as a run reads it: a STAC item's image, a remote one with
    the timeouts and retries of :func:`tiledepth.sources.remote_options`): the output
    must be one float32 band with tiledepth's
    ``TILEDEPTH_VERSION`` tag (two with ``uncertainty``, band 2 named
    ``uncertainty``), on the input's grid (size, CRS, transform or GCPs), and
    its first and last blocks must decode (a truncated file fails there). Other
    options are not compared: pass ``overwrite`` to redo outputs made with
    other options.

    Parameters
    ----------
    output, input : str or os.PathLike
        The existing output and its input raster (a file, a URL or GDAL path, a STAC
        item: :func:`tiledepth.sources.resolve`).
    uncertainty : bool, optional
        Whether the run makes the uncertainty band: an output without it (True)
        or with it (False) is not the run's. None takes either.

    Examples
    --------
    >>> check_output("depth/x.depth.tif", "survey/x.tif")  # doctest: +SKIP
    "size 700 x 600 px differs from the input's 800 x 600"
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    from tiledepth.rasterfile import open_raster
    from tiledepth.read import GDAL_OPTIONS
    from tiledepth.sources import remote_options, resolve
    from tiledepth.write import OutputGrid

    try:
        with rasterio.Env(**GDAL_OPTIONS):
            with open_raster(output) as dst:
                if "TILEDEPTH_VERSION" not in dst.tags():
                    return "no TILEDEPTH_VERSION tag: not a tiledepth output"
                # one float32 band, and with --uncertainty its spread as band 2
                spread = dst.count == 2 and dst.descriptions[1] == "uncertainty"
                if (dst.count != 1 and not spread) or set(dst.dtypes) != {"float32"}:
                    return (f"{dst.count} band(s) of {dst.dtypes[0]}, not one float32 band "
                            "(and its uncertainty)")
                # a resume with --uncertainty keeps no output without its band, and one
                # without keeps none with it: the kept output is the one this run would write
                if uncertainty is not None and spread != uncertainty:
                    return ("no uncertainty band, which --uncertainty adds" if uncertainty
                            else "an uncertainty band, which this run (no --uncertainty) "
                                 "does not make")
                got = OutputGrid.from_dataset(dst)
                bh, bw = dst.block_shapes[0]
                for r, c in ((0, 0), ((dst.height - 1) // bh, (dst.width - 1) // bw)):
                    dst.read(window=Window(c * bw, r * bh, min(bw, dst.width - c * bw),
                                           min(bh, dst.height - r * bh)))
            # what the run read: a STAC item's image, not the item's JSON (no output of one
            # was ever kept); a remote one within the run's timeouts (none: a stalled server
            # hung the resume for ever, deaf to SIGTERM)
            source = resolve(input)
            with rasterio.Env(**remote_options(source)), open_raster(source) as src:
                want = OutputGrid.from_dataset(src)
    except (RasterioIOError, OSError) as exc:  # (InputError is an OSError: a STAC item's)
        return f"cannot read it ({redact(one_line(exc))})"
    if (got.height, got.width) != (want.height, want.width):
        return (f"size {got.width} x {got.height} px differs from the input's "
                f"{want.width} x {want.height}")
    if got.crs != want.crs and not want.gcps:
        return f"CRS {got.crs} differs from the input's {want.crs}"
    if got.transform != want.transform:
        return "its transform differs from the input's"
    if len(got.gcps) != len(want.gcps):
        return "its ground control points differ from the input's"
    # what a run keeps of the input's (an output written before it did lacks them)
    if (got.rpcs is None) != (want.rpcs is None):
        return "it has no RPCs, the input has" if got.rpcs is None else \
            "it has RPCs, the input has none"
    if got.area_or_point != want.area_or_point:
        return (f"its pixels are {'points' if got.area_or_point else 'areas'} "
                "(AREA_OR_POINT), the input's are not")
    return None


def foreign_output(output: str | os.PathLike) -> str | None:
    """Why the existing file ``output`` is not provably one tiledepth wrote; None if it is.

    Only such a file may be replaced without ``overwrite`` (``resume`` redoes a
    broken or incomplete output): it carries tiledepth's ``TILEDEPTH_VERSION``
    tag. A file that opens as a raster is asked for the tag. One that does not
    open (cut short by a copy or a full disk: GDAL rewrites a GeoTIFF's directory
    at its end, so a cut file does not open) is tiledepth's when it starts as a
    TIFF whose first directory, in its first bytes, still holds the tag; anything
    else cannot be told from a user's file and is not replaced.
    """
    import stat

    import rasterio
    from rasterio.errors import RasterioIOError

    from tiledepth.rasterfile import open_raster
    from tiledepth.read import GDAL_OPTIONS

    try:
        mode = os.stat(output).st_mode
    except OSError as exc:
        return f"cannot check it ({exc.strerror})"
    if not stat.S_ISREG(mode):  # a folder, a FIFO (opening it would block): never ours
        return "not a regular file"
    try:
        with rasterio.Env(**GDAL_OPTIONS), open_raster(output) as ds:
            tags = ds.tags()
    except (RasterioIOError, OSError):
        tags = None
    if tags is not None:
        return None if "TILEDEPTH_VERSION" in tags else \
            "no TILEDEPTH_VERSION tag: not a tiledepth output"
    try:
        with open(output, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+") \
            and b'<Item name="TILEDEPTH_VERSION">' in head:
        return None  # a tiledepth GeoTIFF cut short: ours to redo
    return "cannot read it as a raster and no TILEDEPTH_VERSION tag shows in it"


def refuse_foreign(output: str | os.PathLike, why: str) -> OutputError:
    """The one-line error for an existing ``output`` that :func:`foreign_output` says is
    not tiledepth's (``why``)."""
    return OutputError(f"{output}: exists and is not a tiledepth output ({why}); move it "
                       "or pass --overwrite to replace it")


def raster_size(path: Path) -> dict[str, int]:
    """``{'height': ..., 'width': ...}`` of a raster (an output, for its record)."""
    from tiledepth.rasterfile import open_raster

    with open_raster(path) as ds:  # (the output of a JPEG frame has no georeferencing)
        return {"height": ds.height, "width": ds.width}


def make_record(item: SurveyInput, out: Path, status: Status, t0: float,
                **fields: Any) -> Record:
    """The manifest record of ``item``, handled since ``t0`` (``time.perf_counter()``)."""
    size = out.stat().st_size if status in ("done", "skipped") and out.exists() else None
    if fields.get("error") is not None:  # a URL's password or signature, kept out of the file
        fields["error"] = redact(fields["error"])
    return Record(input=redact(str(item.path)), output=str(out), status=status, bytes=size,
                  seconds=round(time.perf_counter() - t0, 3), host=socket.gethostname(),
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)


def append_record(manifest: str | os.PathLike, record: Record) -> None:
    """Append one record to the manifest, as one line, under an exclusive file lock.

    Several jobs (shards) can share one manifest: each line is written whole,
    in one ``write``, while the lock is held. A last line cut short by a killed
    job is ended first, so it cannot swallow this record.
    """
    line = (record.to_json() + "\n").encode()
    fd = os.open(manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a job killed mid-write cut the last line: end it first
            os.write(fd, line)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_manifest(manifest: str | os.PathLike, *, latest: bool = False) -> list[Record]:
    """Read a manifest's records, in the order written.

    Parameters
    ----------
    manifest : str or os.PathLike
    latest : bool
        Keep only the last record of each input (runs append; the last wins), a ``busy``
        one only where the input has no other: another run was writing its output, and
        that run's record (done, or failed), appended before or after it, says how it
        ended.

    Returns
    -------
    list of Record
        A line cut short (a job killed mid-write) is ignored, never the record after it.
    """
    records: list[Record] = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            record = _parse_record(line)
            if record is None:  # a record glued to a cut line (older tiledepth) is kept
                start = line.rfind('{"input":', 1)
                record = _parse_record(line[start:]) if start > 0 else None
                if record is not None:
                    log.warning("%s: ignoring a cut-short record before: %.60s", manifest,
                                line[start:])
            if record is None:
                log.warning("%s: ignoring a malformed line: %.60s", manifest, line)
            else:
                records.append(record)
    if latest:
        last = {r.input: r for r in records if r.status == "busy"}
        last.update({r.input: r for r in records if r.status != "busy"})
        records = [r for r in records if last[r.input] is r]
    return records


def _parse_record(line: str) -> Record | None:
    try:
        return Record(**json.loads(line))
    except (ValueError, TypeError):
        return None


def summary(records: Iterable[Record], *, seconds: float | None = None) -> str:
    """A table of records by status, then one line per failure (and per ``busy`` input).

    Parameters
    ----------
    records : iterable of Record
    seconds : float, optional
        The total row's seconds, the batch's wall time (as ``tiledepth batch``
        passes it); by default the records' sum. Each status row sums
        its records' seconds, which overlap in a pipelined batch: they may add
        up to more than the total.

    Examples
    --------
    >>> print(summary([Record("a.tif", "o/a.depth.tif", "done", tiles=12, seconds=3.0),
    ...                Record("b.tif", "o/b.depth.tif", "failed", seconds=0.5,
    ...                       error="ModelError: out of memory")]))
    status   files  tiles  seconds
    done         1     12      3.0
    skipped      0      0      0.0
    failed       1      0      0.5
    total        2     12      3.5
    failed: b.tif: ModelError: out of memory
    >>> print(summary([Record("a.tif", "o/a.depth.tif", "done", seconds=3.0),
    ...                Record("b.tif", "o/b.depth.tif", "done", seconds=2.0)],
    ...               seconds=4.2).splitlines()[-1])  # two inputs that overlapped
    total        2      0      4.2

    A ``busy`` row is there only where an input was: another run was writing its output.
    """
    records = list(records)
    rows = []
    busy = any(r.status == "busy" for r in records)
    for status in ("done", "skipped", "failed", "busy")[:4 if busy else 3]:
        group = [r for r in records if r.status == status]
        rows.append((status, len(group), sum(r.tiles or 0 for r in group),
                     sum(r.seconds for r in group)))
    rows.append(("total", len(records), sum(r[2] for r in rows),
                 sum(r[3] for r in rows) if seconds is None else seconds))
    lines = [f"{'status':<8}{'files':>6}{'tiles':>7}{'seconds':>9}"]
    lines += [f"{s:<8}{n:>6}{t:>7}{sec:>9.1f}" for s, n, t, sec in rows]
    for r in records:
        if r.status in ("failed", "busy"):  # most errors name their file already
            named = (r.error or "").startswith(r.input)
            line = f"{r.status}: {r.error}" if named else f"{r.status}: {r.input}: {r.error}"
            lines.append(redact(line))  # (records of a manifest written before they were)
    return "\n".join(lines)


# -- internals -----------------------------------------------------------------------------


def _expand_lists(inputs: Iterable[str | os.PathLike]) -> Iterator[tuple[str, bool]]:
    """Each input, with ``@list.txt`` files replaced by their lines; (entry, from a list)."""
    for entry in inputs:
        text = os.fspath(entry)
        if not text.startswith("@"):
            yield text, False
            continue
        path = Path(text[1:])
        try:  # utf-8-sig: a list saved by Notepad or Excel starts with a byte-order mark
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise InputError(f"{path}: cannot read the input list ({exc.strerror})") from exc
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line, True


def _search(folder: Path, patterns: tuple[str, ...], skip: Path | None) -> Iterator[SurveyInput]:
    """Files under ``folder`` matching ``patterns``, sorted, hidden files and what runs
    write left out.

    Links to folders are followed (a survey is often assembled from links to
    the flights' folders), each folder entered once by its device and inode, so
    that a link to a folder above ends instead of looping.
    """
    seen = {_folder_key(folder)}
    # the output folder by its identity: also when reached through a link
    skip_key = _folder_key(skip) if skip is not None else None
    for root, dirs, names in os.walk(folder, followlinks=True):
        rootp = Path(root)
        kept = []
        for d in sorted(dirs):
            key = _folder_key(rootp / d)
            if d.startswith(".") or key is None or key in seen or key == skip_key:
                continue  # hidden, unreadable, already searched (a link loop), the output
            seen.add(key)
            kept.append(d)
        dirs[:] = kept
        for name in sorted(names):
            if name.startswith(".") or name.lower().endswith(WRITTEN_SUFFIXES) \
                    or name == MANIFEST_NAME:
                continue
            rel = PurePosixPath((rootp / name).relative_to(folder).as_posix())
            if any(glob_match(rel.as_posix().lower(), p) for p in patterns):
                yield SurveyInput(rootp / name, rel)


def _folder_key(folder: Path) -> tuple[int, int] | None:
    """A folder's identity, ``(st_dev, st_ino)`` (None if it cannot be read)."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _file_key(path: Path) -> str | tuple[int, int]:
    """A local file's identity, ``(st_dev, st_ino)``: a hard link is the file it links,
    which its real path does not tell; the real path of a file that cannot be read (a
    missing listed one, failed when it is run)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return os.path.realpath(path)
    # (a file system that numbers no inodes would make every file one)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def _placed(path: Path) -> PurePosixPath:
    """Where the output of a file named one by one goes: its path under the current
    folder, or its name alone outside it.

    The rule looks at no other input, so that adding a file to a list moves no
    other output (nor its shard, a hash of this path). The path is normalised
    (``a/../b/x.tif`` is ``b/x.tif``), so it never climbs out of the output folder.
    """
    here = os.getcwd()
    full = os.path.abspath(path)
    for folder in (os.path.dirname(full), os.path.realpath(os.path.dirname(full))):
        # the second: a path spelt through a link to the current folder ($PWD on a
        # link), whose real path is under it
        rel = os.path.relpath(folder, here)
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return PurePosixPath(Path(rel, os.path.basename(full)).as_posix())
    return PurePosixPath(os.path.basename(full))


def _checked(entry: str, relative: PurePosixPath | str) -> PurePosixPath:
    """``relative``, refused if it names no file or climbs out of the output folder."""
    rel = PurePosixPath(relative)
    if not rel.parts or rel.is_absolute() or any(p in ("", ".", "..") for p in rel.parts):
        raise InputError(f"{redact(entry)}: cannot name an output for it (from "
                         f"{redact(str(relative))!r}); "
                         "name the file itself")
    return rel


def _patterns(glob: Sequence[str] | str | None) -> tuple[str, ...]:
    if glob is None:
        return DEFAULT_GLOB
    patterns = (glob,) if isinstance(glob, str) else tuple(glob)
    patterns = tuple(p.strip().lower() for part in patterns for p in part.split(",")
                     if p.strip())
    if not patterns:
        raise OptionError("glob must name at least one pattern, e.g. '*.tif'")
    return patterns


def one_line(exc: BaseException) -> str:
    if isinstance(exc, TiledepthError):
        text = str(exc).strip()
    else:
        text = f"{type(exc).__name__}: {str(exc).strip()}".rstrip(": ")
    return text.splitlines()[0] if text else type(exc).__name__
