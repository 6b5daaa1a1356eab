"""Checkpoint: the scratch store of a file run, kept until the output is complete.

:func:`tiledepth.run` keeps its tile predictions, and the coarse prediction, in a
checkpoint folder beside the output (or in ``--scratch``)::

    .<output name>.tiledepth-<8 hex digits of the output's absolute path>/
        .tiledepth-checkpoint          the marker: a random token and the output
        manifest.json                  what the predictions belong to (see below)
        files.jsonl                    name, CRC-32, shape and dtype of each file
        coarse.npy                     the coarse prediction
        tile0000012.pred.npy           one tile's prediction ...
        tile0000012.valid.npy          ... and its packed validity mask

Every file is written under a temporary name and renamed when complete; its
line in ``files.jsonl`` (the record of what the run wrote, with the checksum
of its contents) is written before it. The folder is removed when the output
is complete and kept when a run fails or is interrupted. A later run writing
the same output finds it: it reuses every stored prediction when the
manifest's key matches, and otherwise empties the folder first (with a
warning), so predictions of different inputs or options are never mixed.
``resume=False`` (``--no-resume``) always empties it. A resumed file whose
contents, shape or dtype do not match its record is predicted again (one
warning line).

The folder is never trusted by its name alone: a symbolic link, a file, a
folder of another user or a folder without tiledepth's marker at that name is
refused (:class:`~tiledepth.errors.OutputError`, nothing in it touched), and a
run deletes only the files recorded in ``files.jsonl``: anything else found in
the folder stays, and so does the folder then.

The key is a SHA-256 of the input's identity (absolute path, size, modification
time, and a hash of its first and last MiB; with an area of interest, its window
and a hash of its polygons, see :meth:`tiledepth.aoi.Area.identity`), of every
option except those that do not change the output (``batch_size``, ``scratch``,
``resume``), of the
model's identity (:func:`model_identity`) and of the tiledepth version.

The folder name depends on the output path only, so two runs writing different
outputs into one folder never share a checkpoint. Two runs writing the same
output at the same time, whatever their ``--scratch``, are refused by a lock
on the output path (:func:`lock_output`, :class:`~tiledepth.errors.BusyError`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import stat
import sys
import types
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth.errors import BusyError, OutputError
from tiledepth.options import Options
from tiledepth.scratch import DiskStore, _remove_folder, _unlink_file, checksum

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["Checkpoint", "checkpoint_folder", "checkpoint_key", "input_identity", "lock_output",
           "lock_path", "model_identity", "unlock_output"]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout; part of the key.
FORMAT = 2
#: Bytes hashed at each end of the input for its identity.
HASH_BYTES = 2**20
#: Options that do not change the output, left out of the key.
NOT_IN_KEY = frozenset({"model", "batch_size", "scratch", "resume", "workers"})
MANIFEST = "manifest.json"
MARKER = ".tiledepth-checkpoint"
FILES = "files.jsonl"
_TILE_FILE = re.compile(r"^tile(-?\d+)\.pred\.npy$")
#: Names of the files a store writes (files.jsonl and the marker aside).
_STORE_FILE = re.compile(r"^(tile-?\d+\.(pred|valid)\.npy|coarse\.npy|manifest\.json)(\.tmp)?$")
#: Model files up to this size are hashed whole; larger ones by size and both ends.
SMALL_FILE = 2**20
#: Arrays up to this size are hashed whole in a model's identity; larger ones by both ends.
SMALL_ARRAY = 16 * 2**20


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
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ends_sha256": _ends_digest(path, stat.st_size, HASH_BYTES, hashlib.sha256())}


def _ends_digest(path: str | os.PathLike, size: int, nbytes: int, digest: Any) -> str:
    """Hex digest of a file's first and last ``nbytes`` (all of it when small)."""
    with open(path, "rb") as f:
        digest.update(f.read(nbytes))
        if size > nbytes:
            f.seek(max(nbytes, size - nbytes))
            digest.update(f.read(nbytes))
    return digest.hexdigest()


# -- model identity -------------------------------------------------------------------------


def model_identity(model: Any) -> str:
    """What determines a model's output, as its name and a digest.

    The digest covers, recursively: for a Python callable its code with its
    constants, defaults, closures, attributes and the globals it reads, and
    the content of the file that defines it; for a loaded pipeline or torch
    model its configs and a digest of its parameters (names, shapes, dtypes
    and values at both ends of each tensor); for a checkpoint folder its file
    names and sizes, the content of its small files and both ends of the large
    ones. When a part cannot be identified the identity ends in ``?`` plus a
    random token, so a checkpoint is never resumed with it (the run starts
    clean and says so). A model with a string attribute ``identity`` (a pool of
    Ray actors: computed where the model was loaded) is that.

    Examples
    --------
    >>> from tiledepth.models import CallableModel
    >>> a = model_identity(CallableModel(lambda b: b[..., 0] * 0.5, name="mine"))
    >>> b = model_identity(CallableModel(lambda b: b[..., 0] * 7.0, name="mine"))
    >>> a.startswith("mine#"), a == b
    (True, False)
    """
    name = str(getattr(model, "name", None) or type(model).__qualname__)
    if isinstance(getattr(model, "identity", None), str):  # computed where it was loaded
        return model.identity
    digest = _Digest()
    parts = [(attr, getattr(model, attr)) for attr in ("fn", "pipe", "model")
             if getattr(model, attr, None) is not None]
    for attr, part in parts or [("self", model)]:
        digest.update(attr)
        digest.add(part)
    if parts and _has_state(model):  # the wrapper's settings (steps, noise, ...)
        digest.add({k: v for k, v in vars(model).items()
                    if not k.startswith("_") and k not in _NOT_IDENTITY
                    and isinstance(v, (type(None), bool, int, float, str, tuple, dict))})
    if os.path.isdir(os.path.expanduser(name)):
        digest.update("folder")
        digest.folder(os.path.expanduser(name))
    text = name + "#" + digest.hexdigest()
    if digest.unsure:
        text += "?" + secrets.token_hex(8)  # never equal to another run's
    return text


#: Attributes of a model wrapper left out of its identity (they do not change the output).
_NOT_IDENTITY = frozenset({"fn", "pipe", "model", "batch_size", "device"})


class _Digest:
    """A BLAKE2b digest of Python objects, for :func:`model_identity`."""

    MAX_DEPTH = 12
    MAX_NODES = 20000

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._seen: set[int] = set()
        self._alive: list[Any] = []
        self._files: set[str] = set()
        self._nodes = 0
        self.unsure: list[str] = []  # what could not be identified

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def update(self, text: str | bytes) -> None:
        self._hash.update(text if isinstance(text, bytes) else text.encode())
        self._hash.update(b"\0")

    def add(self, obj: Any, depth: int = 0) -> None:  # noqa: C901 - one case per kind
        self._nodes += 1
        if depth > self.MAX_DEPTH or self._nodes > self.MAX_NODES:
            self.unsure.append("too deep")
            return
        if obj is None or obj is Ellipsis or obj is NotImplemented \
                or isinstance(obj, (bool, int, float, complex, str, bytes, slice, range)):
            self.update(f"{type(obj).__name__}:{obj!r}")
            return
        if isinstance(obj, (np.generic, np.dtype)):
            self.update(f"np:{obj!r}")
            return
        if isinstance(obj, np.ndarray):
            self.array(obj)
            return
        if id(obj) in self._seen:  # a cycle, or the same object twice
            self.update("seen")
            return
        self._seen.add(id(obj))
        self._alive.append(obj)  # its id is not reused by another object meanwhile
        if isinstance(obj, (tuple, list, dict)) and len(obj) > 64:
            try:  # a large table of plain values: one JSON text
                self.update("json:" + json.dumps(obj, sort_keys=True))
                return
            except (TypeError, ValueError):
                pass
        if isinstance(obj, (tuple, list)):
            self.update(f"{type(obj).__name__}:{len(obj)}")
            for item in obj:
                self.add(item, depth + 1)
        elif isinstance(obj, (set, frozenset)):
            self.update(f"set:{len(obj)}")
            for item in sorted(obj, key=repr):
                self.add(item, depth + 1)
        elif isinstance(obj, dict):
            self.update(f"dict:{len(obj)}")
            for key in sorted(obj, key=repr):
                self.add(key, depth + 1)
                self.add(obj[key], depth + 1)
        elif isinstance(obj, types.CodeType):
            self.code(obj, depth)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, depth)
        elif isinstance(obj, types.MethodType):
            self.add(obj.__func__, depth + 1)
            self.add(obj.__self__, depth + 1)
        elif isinstance(obj, types.ModuleType):
            self.update(f"module:{obj.__name__}")
        elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            self.update(f"builtin:{getattr(obj, '__module__', '')}.{obj.__qualname__}")
        elif isinstance(obj, type):
            self.update(f"class:{obj.__module__}.{obj.__qualname__}")
            self.source_file(obj)
        elif isinstance(obj, functools.partial):
            self.update("partial")
            for part in (obj.func, obj.args, obj.keywords):
                self.add(part, depth + 1)
        elif callable(getattr(obj, "named_parameters", None)):
            self.torch_module(obj)
        elif _is_tensor(obj):
            self.tensor("", obj)
        elif isinstance(getattr(obj, "components", None), dict):  # a diffusers pipeline
            self.update(f"pipeline:{type(obj).__qualname__}")
            self.config(obj)
            for name, part in sorted(obj.components.items()):
                self.update(f"component:{name}")
                if callable(getattr(part, "named_parameters", None)):
                    self.torch_module(part)
                else:  # a scheduler, a tokenizer: its class and config
                    self.update(f"{type(part).__module__}.{type(part).__qualname__}:"
                                f"{getattr(part, 'name_or_path', '')}")
                    self.config(part)
            self.add(getattr(obj, "empty_text_embedding", None), depth + 1)
        elif isinstance(obj, re.Pattern):
            self.update(f"re:{obj.pattern!r}:{obj.flags}")
        elif _has_state(obj):  # an instance: its class (and file) and its state
            self.add(type(obj), depth + 1)
            self.config(obj)
            self.add({k: v for k, v in vars(obj).items() if not k.startswith("__")},
                     depth + 1)
        else:
            self.update(f"opaque:{type(obj).__module__}.{type(obj).__qualname__}")
            self.unsure.append(type(obj).__qualname__)

    def array(self, array: np.ndarray) -> None:
        self.update(f"ndarray:{array.dtype.str}:{array.shape}")
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8) if array.size else b""
        if len(flat) <= SMALL_ARRAY:
            self._hash.update(flat)
        else:
            self._hash.update(flat[:SMALL_FILE])
            self._hash.update(flat[-SMALL_FILE:])

    def code(self, code: types.CodeType, depth: int) -> None:
        self.update(code.co_code)
        self.update(repr((code.co_names, code.co_varnames, code.co_freevars)))
        for const in code.co_consts:  # nested functions' code objects too
            self.add(const, depth + 1)

    def function(self, fn: types.FunctionType, depth: int) -> None:
        self.update(f"function:{fn.__module__}.{fn.__qualname__}")
        self.code(fn.__code__, depth)
        self.add(fn.__defaults__, depth + 1)
        self.add(fn.__kwdefaults__, depth + 1)
        self.add({k: v for k, v in vars(fn).items() if not k.startswith("__")}, depth + 1)
        for cell in fn.__closure__ or ():
            try:
                self.add(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                self.update("empty cell")
        globals_ = fn.__globals__
        for name in sorted(_global_names(fn.__code__)):
            if name in globals_:
                self.update(f"global:{name}")
                self.add(globals_[name], depth + 1)
        self.source_file(fn)

    def source_file(self, obj: Any) -> None:
        """The content of the file that defines ``obj`` (once per file)."""
        try:
            path = inspect.getsourcefile(obj)
        except TypeError:
            return
        if not path or path in self._files or not os.path.isfile(path):
            return
        self._files.add(path)
        with open(path, "rb") as f:
            self.update(f"file:{os.path.basename(path)}")
            self._hash.update(f.read())

    def config(self, obj: Any) -> None:
        config = getattr(obj, "config", None)
        if config is None:
            return
        to_dict = getattr(config, "to_dict", None)
        data = to_dict() if callable(to_dict) else config
        self.update("config:" + json.dumps(data, sort_keys=True, default=repr))

    def torch_module(self, module: Any) -> None:
        self.update(f"module:{type(module).__module__}.{type(module).__qualname__}")
        self.config(module)
        for name, tensor in module.named_parameters():
            self.tensor(name, tensor)
        for name, tensor in module.named_buffers():
            self.tensor(name, tensor)

    def tensor(self, name: str, tensor: Any, ends: int = 64) -> None:
        """A tensor by name, shape, dtype and its values at both ends (cheap on a GPU too)."""
        import torch

        flat = tensor.detach().reshape(-1)
        self.update(f"tensor:{name}:{tuple(tensor.shape)}:{tensor.dtype}")
        if flat.numel():
            sample = flat if flat.numel() <= 2 * ends else torch.cat([flat[:ends], flat[-ends:]])
            self._hash.update(sample.float().cpu().numpy().tobytes())

    def folder(self, path: str) -> None:
        """A checkpoint folder: names, sizes, small files whole and large ones' ends."""
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                try:
                    size = os.stat(full).st_size
                    self.update(f"{os.path.relpath(full, path)}:{size}")
                    self.update(_ends_digest(full, size, SMALL_FILE, hashlib.blake2b()))
                except OSError:
                    self.unsure.append(full)


def _has_state(obj: Any) -> bool:
    """Whether ``obj`` keeps its state in a ``__dict__`` (``vars(obj)`` works)."""
    try:
        vars(obj)
    except TypeError:
        return False
    return True


def _is_tensor(obj: Any) -> bool:
    """Whether ``obj`` is a torch tensor (only once torch is imported can one exist)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _global_names(code: types.CodeType) -> set[str]:
    """The global names a code object and the code nested in it may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


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


# -- the lock of an output ------------------------------------------------------------------


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output``, beside it (whatever the scratch folder).

    Examples
    --------
    >>> lock_path("/data/ortho.depth.tif").as_posix()
    '/data/.ortho.depth.tif.tiledepth-lock'
    """
    output = Path(output)
    return output.parent / f".{output.name}.tiledepth-lock"


def lock_output(output: str | os.PathLike) -> int:
    """Lock ``output`` for this process (non-blocking); return the lock's fd.

    The lock is a file beside the output, opened without following a link and
    locked with ``flock``; :func:`unlock_output` removes it. Two runs writing
    one output, whatever their ``--scratch``, cannot both hold it.

    Raises
    ------
    BusyError
        Another run holds the lock.
    OutputError
        The lock cannot be created, or something other than a plain file is at its name.
    """
    path = lock_path(output)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{path}: is a symbolic link, not tiledepth's lock file; "
                                  "remove it") from exc
            raise OutputError(f"{path}: cannot create the lock file of {output} "
                              f"({exc.strerror}); choose a writable folder with -o") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutputError(f"{path}: is not a plain file, so not tiledepth's lock file; "
                              "remove it")
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise BusyError(
                    f"{output}: another tiledepth run is writing the same output now; wait for "
                    "it to finish or choose another -o"
                ) from exc
            raise
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a lock file that its run had just removed: try again
    raise BusyError(f"{output}: another tiledepth run keeps locking and releasing this output; "
                    "wait for it to finish or choose another -o")


def unlock_output(output: str | os.PathLike, fd: int) -> None:
    """Release the lock of :func:`lock_output` and remove its file (while still held)."""
    path = lock_path(output)
    try:
        if os.fstat(fd).st_ino == os.lstat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)  # closing releases the flock


# -- the checkpoint -------------------------------------------------------------------------


class Checkpoint(DiskStore):
    """A :class:`~tiledepth.scratch.DiskStore` in a fixed folder that outlives a failed run.

    Use as a context manager. On entry it locks ``output`` (:func:`lock_output`),
    creates ``folder`` (or checks that the one there is tiledepth's: a real
    folder of this user with the marker, never a link) and either resumes
    (the stored manifest has this ``key`` and ``resume`` is true; files that
    fail their checksum are dropped) or empties it of the files it recorded.
    On a clean exit it removes the files it recorded and the folder; on an
    error or interruption it keeps them when it holds any prediction.

    Parameters
    ----------
    folder : str or os.PathLike
        The checkpoint folder (:func:`checkpoint_folder`); its parent must exist.
    key : str
        The run's key (:func:`checkpoint_key`).
    manifest : dict, optional
        Written to ``manifest.json`` with the key, for people reading the folder.
    output : str or os.PathLike
        The output the run writes: what is locked, and recorded in the marker.
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
                 output: str | os.PathLike, resume: bool = True,
                 cache_bytes: int = 16 * 2**20, background: bool = False) -> None:
        folder = Path(folder)
        super().__init__(folder.parent, cache_bytes=cache_bytes, background=background)
        self.folder = folder
        self.output = Path(output)
        self.key = key
        self.manifest = {**(manifest or {}), "key": key}
        self.resume = resume
        self.resumed = 0
        self.kept = False
        self._lock_fd: int | None = None
        self._files_fd: int | None = None
        self._records: dict[str, dict] = {}

    def __enter__(self) -> Checkpoint:
        if not self.parent.is_dir():
            raise OutputError(f"{self.parent}: scratch folder does not exist; create it first")
        self._lock_fd = lock_output(self.output)
        try:
            created = _make_folder(self.folder, self.output)
            self.path = self.folder
            self._records = {} if created else _read_records(self.folder / FILES)
            self._created = set(self._records)
            _check_names(self.folder, self._records)
            old = None if created else _read_manifest(self.folder / MANIFEST)
            if self.resume and old is not None and old.get("key") == self.key:
                self._scan()
            else:
                if old is not None and self.resume and self._has_work():
                    log.warning("%s: holds predictions of a run with another input, model or "
                                "options%s; starting over", self.folder, _what_changed(
                                    old, self.manifest))
                self._clear()
                self._record(MANIFEST, None)
                _write_text(self.folder / MANIFEST,
                            json.dumps(self.manifest, indent=1, sort_keys=True))
        except BaseException:
            self._close_files()
            self.path = None
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
            self._close_files()
            if not self.kept:
                self._remove_created()
                _unlink_file(self.folder / FILES)
                if os.listdir(self.folder) == [MARKER]:
                    _unlink_file(self.folder / MARKER)
                _remove_folder(self.folder)  # with others' files in it: left, marker and all
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
    def _record(self, name: str, array: np.ndarray | None) -> None:
        """Append ``name`` (its checksum, shape and dtype) to ``files.jsonl``; remember it.

        Written before the file itself, so every file this run may leave is recorded.
        """
        entry = {"name": name}
        if array is not None:
            entry.update(crc32=checksum(array), shape=list(array.shape), dtype=array.dtype.str)
        line = (json.dumps(entry) + "\n").encode()
        with self._created_lock:
            if self._files_fd is None:
                self._files_fd = _open_records(self.folder / FILES)
            os.write(self._files_fd, line)
            self._records[name] = entry
            self._created.add(name)

    def _close_files(self) -> None:
        if self._files_fd is not None:
            os.close(self._files_fd)
            self._files_fd = None

    def _has_work(self) -> bool:
        return any(self.folder.glob("tile*.pred.npy")) or (self.folder / "coarse.npy").exists()

    def _scan(self) -> None:
        """Find the complete, intact tile predictions of an earlier run; drop the others.

        Each recorded file is read once and checked against its record (CRC-32,
        shape, dtype); a tile whose files fail, or were never recorded, is
        predicted again, and one warning line lists the files that failed.
        """
        failed = []
        for name in self._created:
            _unlink_file(self.folder / (name + ".tmp"))
        for pred_file in sorted(self.folder.glob("tile*.pred.npy")):
            match = _TILE_FILE.match(pred_file.name)
            if match is None or pred_file.name not in self._records:
                continue  # not this store's: left alone, never read
            tile_id = int(match.group(1))
            valid_file = self._file(tile_id, "valid")
            pred = self._verified(pred_file)
            valid = self._verified(valid_file)
            if pred is None or valid is None or pred.ndim != 2 \
                    or valid.shape != (-(-pred.shape[0] * pred.shape[1] // 8),):
                failed += [f.name for f, a in ((pred_file, pred), (valid_file, valid))
                           if a is None and f.exists()]
                _unlink_file(pred_file)
                _unlink_file(valid_file)
                continue
            self._shapes[tile_id] = pred.shape
        coarse = self.folder / "coarse.npy"
        if coarse.exists() and self._verified(coarse) is None:
            failed.append(coarse.name)
            _unlink_file(coarse)
        if failed:
            log.warning("%s: %d file(s) failed their checksum, shape or dtype check (%s); "
                        "predicting them again", self.folder, len(failed),
                        ", ".join(sorted(failed)[:4]) + (", ..." if len(failed) > 4 else ""))
        self.resumed = len(self._shapes)

    def _verified(self, path: Path) -> np.ndarray | None:
        """The array in ``path`` if it matches its record, else None."""
        entry = self._records.get(path.name)
        if entry is None or "crc32" not in entry:
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if (list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]
                or checksum(array) != entry["crc32"]):
            return None
        return array

    def get_coarse(self) -> np.ndarray | None:
        """The stored coarse prediction if intact, or None."""
        if not (self.folder / "coarse.npy").exists():
            return None
        return self._verified(self.folder / "coarse.npy")

    def _clear(self) -> None:
        """Remove the files recorded in ``files.jsonl`` (only those) and the record."""
        self._close_files()
        self._remove_created()
        _unlink_file(self.folder / FILES)
        self._records = {}
        self._shapes.clear()

    def _release(self) -> None:
        if self._lock_fd is not None:
            unlock_output(self.output, self._lock_fd)
            self._lock_fd = None


def _make_folder(folder: Path, output: Path) -> bool:
    """Create the checkpoint folder with its marker, or check the one there; True if created.

    Raises OutputError, touching nothing, for a link, a file, a folder of
    another user or one without tiledepth's marker for ``output``.
    """
    hint = "move it away or choose another --scratch"
    try:
        os.mkdir(folder, 0o700)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the checkpoint folder ({exc.strerror}); "
                          "choose a writable folder with --scratch") from exc
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{folder}: is a symbolic link, not a checkpoint folder of tiledepth "
                          f"(never written through); {hint}")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{folder}: is not a folder, so not a checkpoint of tiledepth; {hint}")
    if st.st_uid != os.geteuid():
        raise OutputError(f"{folder}: belongs to another user (uid {st.st_uid}), so it is not "
                          f"this run's checkpoint; {hint}")
    marker = folder / MARKER
    if created:
        text = json.dumps({"token": secrets.token_hex(16), "output": str(output.resolve())})
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_file(marker)
            _remove_folder(folder)
            raise OutputError(f"{folder}: cannot write to the checkpoint folder "
                              f"({exc.strerror}); choose a writable folder with --scratch") \
                from exc
        return True
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = json.loads(os.read(fd, 4096)) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not data.get("token"):
        raise OutputError(f"{folder}: exists but was not made by tiledepth (it has no "
                          f"{MARKER} marker), so nothing in it is used or removed; {hint}")
    if data.get("output") != str(output.resolve()):
        raise OutputError(f"{folder}: is the checkpoint of another output "
                          f"({data.get('output')}); {hint}")
    return False


def _check_names(folder: Path, records: dict[str, dict]) -> None:
    """Refuse a folder holding a file with a name the store writes that it did not record.

    Such a file is not this run's to replace or remove; any other file is left alone.
    """
    for name in sorted(os.listdir(folder)):
        if _STORE_FILE.match(name) and name not in records \
                and name.removesuffix(".tmp") not in records:
            raise OutputError(f"{folder / name}: was not written by tiledepth, and a run would "
                              "replace it; move it away or choose another --scratch")


def _open_records(path: Path) -> int:
    """Open ``files.jsonl`` to append, after a newline if a killed run cut its last line."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
    return fd


def _read_records(path: Path) -> dict[str, dict]:
    """The records of ``files.jsonl`` by name (the last of a name wins; broken lines skipped)."""
    records: dict[str, dict] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return records
    with os.fdopen(fd, "rb") as f:
        for line in f:
            try:
                entry = json.loads(line)
                name = entry["name"]
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
                records[name] = entry
    return records


def _what_changed(old: dict, new: dict) -> str:
    """`` (the model changed ...)`` when the model's identity is what differs, else ''."""
    if old.get("model") == new.get("model"):
        return ""
    if "?" in str(new.get("model")):
        return " (the model cannot be identified for sure, so its predictions are not reused)"
    return " (the model changed)"


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_text(path: Path, text: str) -> None:
    from tiledepth.errors import write_error

    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc, "--scratch") from exc
        raise
