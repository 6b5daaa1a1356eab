"""Checkpoint: the scratch store of a file run, kept until the output is complete.

:func:`tiledepth.run` keeps its tile predictions, and the coarse prediction, in a
checkpoint folder beside the output (or in ``--scratch``)::

    .<output name>.tiledepth-<8 hex digits of the output's absolute path>/
        manifest.json                  what the predictions belong to (see below)
        coarse.npy                     the coarse prediction
        tile0000012.pred.npy           one tile's prediction ...
        tile0000012.valid.npy          ... and its packed validity mask
        lock                           locked (flock) while a run uses the folder

Every file is written under a temporary name and renamed when complete. The
folder is removed when the output is complete and kept when a run fails or is
interrupted. A later run writing the same output finds it: it reuses every
stored prediction when the manifest's key matches, and otherwise empties the
folder first (with a warning), so predictions of different inputs or options
are never mixed. ``resume=False`` (``--no-resume``) always empties it.

The key is a SHA-256 of the input's identity (absolute path, size, modification
time, and a hash of its first and last MiB; with an area of interest, its window
and a hash of its polygons, see :meth:`tiledepth.aoi.Area.identity`), of every
option except those that do not change the output (``batch_size``, ``scratch``, ``resume``), of the
model's identity (its name: hub id, folder or ``module:function``, and for a
Python callable a hash of its bytecode) and of the tiledepth version.

The folder name depends on the output path only, so two runs writing different
outputs into one folder never share a checkpoint; two runs writing the same
output at the same time are refused by the lock (:class:`~tiledepth.errors.BusyError`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth.errors import BusyError, OutputError
from tiledepth.options import Options
from tiledepth.scratch import DiskStore

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["Checkpoint", "checkpoint_folder", "checkpoint_key", "input_identity",
           "model_identity"]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout; part of the key.
FORMAT = 1
#: Bytes hashed at each end of the input for its identity.
HASH_BYTES = 2**20
#: Options that do not change the output, left out of the key.
NOT_IN_KEY = frozenset({"model", "batch_size", "scratch", "resume", "workers"})
MANIFEST = "manifest.json"
LOCK = "lock"
_TILE_FILE = re.compile(r"^tile(-?\d+)\.pred\.npy$")


def checkpoint_folder(output: str | os.PathLike, parent: str | os.PathLike) -> Path:
    """The checkpoint folder of a run writing ``output``, inside ``parent``.

    Examples
    --------
    >>> checkpoint_folder("/data/ortho.depth.tif", "/data").name
    '.ortho.depth.tif.tiledepth-...'
    """
    output = Path(output)
    digest = hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:8]
    return Path(parent) / f".{output.name}.tiledepth-{digest}"


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file: absolute path, size, mtime and a hash of both ends.

    Cheap for any file size: it reads at most 2 MiB.
    """
    path = Path(path).resolve()
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HASH_BYTES))
        if stat.st_size > HASH_BYTES:
            f.seek(max(HASH_BYTES, stat.st_size - HASH_BYTES))
            digest.update(f.read(HASH_BYTES))
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ends_sha256": digest.hexdigest()}


def model_identity(model: Any) -> str:
    """A model's name, plus a hash of the bytecode when it wraps a Python callable.

    Examples
    --------
    >>> from tiledepth.models import CallableModel
    >>> model_identity(CallableModel(lambda b: b[..., 0], name="mine"))
    'mine#...'
    """
    name = str(getattr(model, "name", None) or type(model).__qualname__)
    fn = getattr(model, "fn", None)
    code = getattr(fn, "__code__", None)
    if code is None and callable(fn):  # a callable object: its __call__ method
        code = getattr(type(fn).__call__, "__code__", None)
    if code is not None:
        name += "#" + hashlib.sha256(code.co_code).hexdigest()[:16]
    return name


def checkpoint_key(identity: dict[str, Any], opts: Options, model: Any) -> tuple[str, dict]:
    """The key of a run's predictions, and the manifest that spells it out.

    Parameters
    ----------
    identity : dict
        :func:`input_identity` of the input.
    opts : Options
        The run's options; those in :data:`NOT_IN_KEY` are left out.
    model : DepthModel
        The loaded model (see :func:`model_identity`).

    Returns
    -------
    key : str
        64 hex digits.
    manifest : dict
        What went into the key, JSON-serialisable.
    """
    from tiledepth import __version__

    options = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in NOT_IN_KEY}
    manifest = {"format": FORMAT, "tiledepth": __version__, "input": identity,
                "model": model_identity(model), "options": options}
    text = json.dumps(manifest, sort_keys=True, default=str)
    manifest = json.loads(text)
    return hashlib.sha256(text.encode()).hexdigest(), manifest


class Checkpoint(DiskStore):
    """A :class:`~tiledepth.scratch.DiskStore` in a fixed folder that outlives a failed run.

    Use as a context manager. On entry it creates and locks ``folder`` and
    either resumes (the stored manifest has this ``key`` and ``resume`` is
    true) or empties it. On a clean exit it removes the folder; on an error or
    interruption it keeps it when it holds any prediction.

    Parameters
    ----------
    folder : str or os.PathLike
        The checkpoint folder (:func:`checkpoint_folder`); its parent must exist.
    key : str
        The run's key (:func:`checkpoint_key`).
    manifest : dict, optional
        Written to ``manifest.json`` with the key, for people reading the folder.
    resume : bool
        Reuse a matching checkpoint; False always starts clean.
    cache_bytes : int
        Memory budget of the in-memory tile cache.
    background : bool
        Write tile files in a background thread (see DiskStore).

    Attributes
    ----------
    resumed : int
        Tile predictions found from an earlier run.
    kept : bool
        After exit: whether the folder was kept for a later run.
    """

    def __init__(self, folder: str | os.PathLike, key: str, manifest: dict | None = None, *,
                 resume: bool = True, cache_bytes: int = 16 * 2**20,
                 background: bool = False) -> None:
        folder = Path(folder)
        super().__init__(folder.parent, cache_bytes=cache_bytes, background=background)
        self.folder = folder
        self.key = key
        self.manifest = {**(manifest or {}), "key": key}
        self.resume = resume
        self.resumed = 0
        self.kept = False
        self._lock_fd: int | None = None

    def __enter__(self) -> Checkpoint:
        if not self.parent.is_dir():
            raise OutputError(f"{self.parent}: scratch folder does not exist; create it first")
        try:
            self._lock_fd = _lock(self.folder)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(
                f"{self.folder}: cannot create the checkpoint folder ({exc.strerror}); "
                "choose a writable folder with --scratch"
            ) from exc
        self.path = self.folder
        try:
            old = _read_manifest(self.folder / MANIFEST)
            if self.resume and old is not None and old.get("key") == self.key:
                self._scan()
            else:
                if old is not None and self.resume and self._has_work():
                    log.warning("%s: holds predictions of a run with another input, model or "
                                "options; starting over", self.folder)
                self._clear()
                text = json.dumps(self.manifest, indent=1, sort_keys=True)
                _write_text(self.folder / MANIFEST, text)
        except BaseException:
            self._release()
            raise
        if self.resumed:
            log.info("%s: resuming with %d tile predictions", self.folder, self.resumed)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._drain()
        self._cache.clear()
        try:
            self.kept = exc_type is not None and self._has_work()
            if not self.kept:
                shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self._release()
            self.path = None

    @property
    def tiles(self) -> int:
        """Tile predictions on disk now (complete files: a later run can reuse them)."""
        return sum(1 for _ in self.folder.glob("tile*.pred.npy"))

    def resume_hint(self) -> str:
        """One sentence for an error message: what was kept and how to use it."""
        return (f"{self.tiles} tile prediction(s) kept in {self.folder}; run the same command "
                "again to resume")

    # -- internals ----------------------------------------------------------------------
    def _has_work(self) -> bool:
        return any(self.folder.glob("tile*.pred.npy")) or (self.folder / "coarse.npy").exists()

    def _scan(self) -> None:
        """Find the complete tile predictions of an earlier run; drop broken files."""
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for pred_file in sorted(self.folder.glob("tile*.pred.npy")):
            match = _TILE_FILE.match(pred_file.name)
            if match is None:
                continue
            tile_id = int(match.group(1))
            valid_file = self._file(tile_id, "valid")
            shape = _npy_shape(pred_file)
            if shape is None or len(shape) != 2 or _npy_shape(valid_file) is None:
                pred_file.unlink(missing_ok=True)
                valid_file.unlink(missing_ok=True)
                continue
            self._shapes[tile_id] = shape
        coarse = self.folder / "coarse.npy"
        if coarse.exists() and _npy_shape(coarse) is None:
            coarse.unlink()
        self.resumed = len(self._shapes)

    def _clear(self) -> None:
        for entry in self.folder.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        self._shapes.clear()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None


def _lock(folder: Path) -> int:
    """Create ``folder`` if needed and lock it for this process; return the lock's fd."""
    for _ in range(5):
        folder.mkdir(exist_ok=True)
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed meanwhile: try again
            continue
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise BusyError(
                    f"{folder}: another tiledepth run is writing the same output now; wait for "
                    "it to finish or choose another -o"
                ) from exc
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(folder / LOCK).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a lock file that its run had just removed: try again
    raise BusyError(f"{folder}: another tiledepth run keeps creating and removing this "
                    "checkpoint; wait for it to finish or choose another -o")


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_text(path: Path, text: str) -> None:
    from tiledepth.write import write_error

    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc, "--scratch") from exc
        raise


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in a .npy file's header, or None if the file is missing or broken."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    shape = tuple(array.shape)
    del array
    return shape
