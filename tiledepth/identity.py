"""Identity: what a checkpoint's key is made of, the input's identity and the model's.

:func:`input_identity` identifies an input file cheaply (absolute path, size,
modification time and a hash of both ends); :func:`raster_identity` adds the files
GDAL reads with a raster (a VRT's sources, an ``.aux.xml``, a ``.msk``, ...);
:func:`model_identity` digests what determines a model's output (its code,
constants, configuration and weights).
:func:`tiledepth.checkpoint.checkpoint_key` combines them with the options.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import secrets
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["companion_files", "companions_identity", "input_identity", "is_vrt_file",
           "model_identity", "raster_files", "raster_identity", "vrt_sources"]

#: Bytes hashed at each end of the input for its identity.
HASH_BYTES = 2**20
#: Model files up to this size are hashed whole; larger ones by size and both ends.
SMALL_FILE = 2**20
#: Arrays up to this size are hashed whole in a model's identity; larger ones by both ends.
SMALL_ARRAY = 16 * 2**20
#: VRT elements whose text names a dataset GDAL reads: a band's source (simple, complex,
#: averaged, kernel-filtered; a mask band's and an overview's too) and a warped VRT's source.
VRT_FILE_TAGS = ("SourceFilename", "SourceDataset")
#: VRTs nested deeper than this (a VRT of VRTs of ...) are not followed further: GDAL
#: itself refuses such chains long before. A cycle ends where a VRT comes round again.
VRT_DEPTH = 16


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file: absolute path, size, mtime and a hash of both ends.

    Cheap for any file size: it reads at most 2 MiB.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ends_sha256": _ends_digest(path, stat.st_size, HASH_BYTES, hashlib.sha256())}


def is_vrt_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local GDAL VRT file (by its content, as GDAL recognises one,
    whatever its extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:  # missing, a folder, unreadable: GDAL reports it when it opens it
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<VRTDataset")


def vrt_sources(vrt: str | os.PathLike) -> list[str]:
    """The datasets a VRT reads, as GDAL finds them, in order, each once.

    Parameters
    ----------
    vrt : str or os.PathLike
        A VRT file, or VRT text (``<VRTDataset ...``, what ``--mosaic`` builds).

    Returns
    -------
    list of str
        Each ``SourceFilename`` and ``SourceDataset``: a name with
        ``relativeToVRT="1"`` joined to the VRT file's folder (to the current
        folder for VRT text, as GDAL does), any other as written; GDAL paths
        (``/vsi...``, URLs) as they are. Empty for a VRT that does not parse
        (GDAL's own error says why when it opens it).

    Examples
    --------
    >>> vrt_sources('<VRTDataset><VRTRasterBand><SimpleSource>'
    ...             '<SourceFilename relativeToVRT="0">/data/a.tif</SourceFilename>'
    ...             '</SimpleSource></VRTRasterBand></VRTDataset>')
    ['/data/a.tif']
    """
    import xml.etree.ElementTree as ET

    from tiledepth.sources import is_gdal_source

    text = os.fspath(vrt)
    folder = ""
    if not text.lstrip().startswith("<VRTDataset"):  # a file
        folder = os.path.dirname(text)
        try:
            with open(text, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
    try:
        root = ET.fromstring(text.lstrip("\ufeff \t\r\n"))
    except ET.ParseError:
        return []
    found: dict[str, None] = {}  # in order, each once (a list's `in` was quadratic: 20 000
    for element in root.iter():  # members took seconds)
        if element.tag not in VRT_FILE_TAGS or not (element.text or "").strip():
            continue
        name = element.text.strip()
        if element.get("relativeToVRT") == "1" and not is_gdal_source(name):
            name = os.path.join(folder, name)  # an absolute name stays as it is
        found[name] = None
    return list(found)


def raster_files(source: str | os.PathLike, *, _seen: set | None = None) -> list[Path]:
    """Every local file GDAL reads for the raster ``source``: the file itself and, for a
    VRT (a file or VRT text), the files it names, recursively; for a file in a local
    archive (``/vsizip/...``), the archive. Remote objects are left out.

    What a run must never write over (:func:`tiledepth.plan.check_paths`).
    """
    from tiledepth.sources import archive_of, is_gdal_source

    seen = set() if _seen is None else _seen  # each VRT followed once: a cycle ends
    text = os.fspath(source)
    files: list[Path] = []
    members: list[str] = []
    if text.lstrip().startswith("<VRTDataset"):
        members = vrt_sources(text)
    elif is_gdal_source(text):
        archive = archive_of(text)
        if archive is not None and not is_gdal_source(archive):
            files.append(Path(archive))
    else:
        files.append(Path(text))
        if os.path.realpath(text) not in seen and is_vrt_file(text):
            seen.add(os.path.realpath(text))
            members = vrt_sources(text)
    for member in members:
        files += [f for f in raster_files(member, _seen=seen) if f not in files]
    return files


def raster_identity(path: str | os.PathLike, *, _seen: frozenset = frozenset()
                    ) -> dict[str, Any]:
    """:func:`input_identity` of a local raster; for a VRT file, with ``sources``: the
    identity of each dataset it reads (recursively; a remote one's as
    :func:`tiledepth.sources.identity` gives it, a missing one's path), so that a resume
    never takes the tiles of a source's earlier content; with ``companions``, the
    :func:`input_identity` of each other file GDAL reads with it (:func:`companion_files`:
    an ``.aux.xml`` with a no-data value, a ``.msk``, ...), for the same reason. Any other
    file's identity is :func:`input_identity`'s, unchanged (the keys of existing
    checkpoints hold).
    """
    identity = input_identity(path)
    if identity["path"] not in _seen and len(_seen) < VRT_DEPTH and is_vrt_file(path):
        within = _seen | {identity["path"]}  # a VRT among its own sources: named, not followed
        identity["sources"] = [source_identity(name, _seen=within)
                               for name in vrt_sources(path)]
    companions = companions_identity(companion_files(path))
    if companions:  # only then: the keys of rasters without any are as they were
        identity["companions"] = companions
    return identity


#: Elements of a GDAL ``.aux.xml`` (PAM) that change what a run reads: no-data, scaling,
#: colours, georeferencing, masks. Statistics and histograms (QGIS writes them on opening a
#: layer, GDAL on ``-stats``) change nothing a run reads, and must not end a resume.
PAM_READING = ("NoDataValue", "Offset", "Scale", "ColorInterp", "ColorTable", "GeoTransform",
               "SRS", "GCPList", "MaskBand", "UnitType")


def companions_identity(files: list[Path]) -> list[dict[str, Any]]:
    """The identity of files GDAL reads beside a raster (:func:`companion_files`), for a
    checkpoint key: :func:`input_identity` of each, but for an ``.aux.xml`` only the
    elements that change what a run reads (:data:`PAM_READING`, hashed); one that holds
    none (statistics only) is left out.

    Examples
    --------
    >>> companions_identity([])
    []
    """
    import xml.etree.ElementTree as ET

    out = []
    for f in files:
        if not f.name.lower().endswith(".aux.xml"):
            out.append(input_identity(f))
            continue
        try:
            root = ET.parse(f).getroot()
        except (ET.ParseError, OSError):
            out.append(input_identity(f))  # unreadable here: whatever GDAL makes of it
            continue
        parts = [ET.tostring(e) for e in root.iter() if e.tag in PAM_READING]
        if parts:
            out.append({"path": str(f), "reading_sha256":
                        hashlib.sha256(b"\0".join(parts)).hexdigest()})
    return out


def companion_files(path: str | os.PathLike) -> list[Path]:
    """The other local files GDAL reads with the raster ``path``, as it lists them.

    Its ``.aux.xml`` (no-data, scaling: what ``gdal_edit`` writes beside a PNG or a
    JPEG), an external ``.msk`` mask, ``.ovr`` overviews, a world file and the like:
    they change the pixels a run takes as valid, and so its stored tiles, without
    touching the raster's own file. A VRT's sources are left out (:func:`raster_identity`
    follows them), and so are remote files (each would cost a request).

    Parameters
    ----------
    path : str or os.PathLike
        A local raster file.

    Returns
    -------
    list of pathlib.Path
        Resolved, sorted; empty for a raster without any, and for a file GDAL does not
        open (the run's reader says why).
    """
    import rasterio
    from rasterio.errors import RasterioError

    from tiledepth.rasterfile import open_raster
    from tiledepth.sources import is_gdal_source

    try:
        with rasterio.Env(), open_raster(path) as ds:
            names = ds.files
    except (RasterioError, OSError, ValueError):
        return []
    own = {os.path.realpath(f) for f in raster_files(path)}
    found = {os.path.realpath(name) for name in names
             if not is_gdal_source(name) and os.path.isfile(name)}
    return sorted(Path(f) for f in found - own)


def source_identity(name: str, *, _seen: frozenset = frozenset()) -> dict[str, Any]:
    """The identity of a dataset a VRT names: :func:`raster_identity` of a local file,
    :func:`tiledepth.sources.identity` of a GDAL path, and the path alone of anything else
    (a missing file, a ``NETCDF:...`` subdataset name)."""
    from tiledepth import sources

    if sources.is_gdal_source(name):
        return sources.identity(name)
    if os.path.isfile(name):
        return raster_identity(name, _seen=_seen)
    return {"path": name, "missing": True}


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
    constants, defaults, closures, attributes and the globals it reads (a module
    of the user's, ``import helper``: the content of its file and of the user's
    modules it imports, and the code loaded from them, the functions and the
    classes' methods they define; an installed one: its name; a class of the
    user's: its file and its methods' code), and the content of the file
    that defines it; for a loaded pipeline or torch
    model its configs and a digest of its parameters (names, shapes, dtypes
    and values at both ends of each tensor); for a checkpoint folder its file
    names and sizes, the content of its small files and both ends of the large
    ones. The code as loaded counts as well as the files on disk: a helper
    edited on disk but not reloaded (a notebook, a QGIS session) still runs its
    old code, and a fresh process that runs the new code must not take its
    tiles. When a part cannot be identified the identity ends in ``?`` plus a
    random token, so a checkpoint is never resumed with it (the run starts
    clean and says so). A model with a string attribute ``identity`` (a pool of
    Ray actors: computed where the model was loaded) is that. A path in the model's
    name (``m.py:f``, a checkpoint folder) counts resolved: ``./m.py:f`` is the same
    model.

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
    # the name as typed (m.py:f, ./m.py:f, weights, ./weights/) would only discard the
    # checkpoint of the same model: its path resolved, here and in the wrapper's settings
    name = _one_spelling(name)
    digest = _Digest()
    parts = [(attr, getattr(model, attr)) for attr in ("fn", "pipe", "model")
             if getattr(model, attr, None) is not None]
    for attr, part in parts or [("self", model)]:
        digest.update(attr)
        digest.add(part)
    if parts and _has_state(model):  # the wrapper's settings (steps, noise, ...)
        digest.add({k: name if k == "name" and isinstance(v, str) else v
                    for k, v in vars(model).items()
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


def _one_spelling(name: str) -> str:
    """A model's name with the local path in it resolved (:func:`tiledepth.models.local_path`:
    the file of a ``file.py:function``, a checkpoint folder); any other name (a hub id, a
    registry name, ``module:function``) as it is, so its identity is as it was.

    Examples
    --------
    >>> _one_spelling("org/hub-model")
    'org/hub-model'
    """
    from tiledepth.models import local_path

    local = local_path(name)
    if local is None:
        return name
    path, attr = local
    return str(path.resolve()) if attr is None else f"{path.resolve()}:{attr}"


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

    def add(self, obj: Any, depth: int = 0) -> None:
        """Add ``obj``: a plain value or an array here, containers and objects once each."""
        if obj is None or obj is Ellipsis or obj is NotImplemented \
                or isinstance(obj, (bool, int, float, complex, str, bytes, slice, range)):
            # a leaf, no node of its own (its container is one): the limits are for the
            # objects followed, and the code loaded from a user's files holds many constants
            self.update(f"{type(obj).__name__}:{obj!r}")
            return
        self._nodes += 1
        if depth > self.MAX_DEPTH or self._nodes > self.MAX_NODES:
            self.unsure.append("too deep")
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
        if isinstance(obj, (tuple, list, set, frozenset, dict)):
            self.container(obj, depth)
        else:
            self.instance(obj, depth)

    def container(self, obj: tuple | list | set | frozenset | dict, depth: int) -> None:
        """Add a tuple, list, set or dict: its length and its items (sets and dicts sorted)."""
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

    def instance(self, obj: Any, depth: int) -> None:  # noqa: C901 - one case per kind
        """Add any other object: code, a function, a class, a torch module, an instance..."""
        if isinstance(obj, types.CodeType):
            self.code(obj, depth)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, depth)
        elif isinstance(obj, types.MethodType):
            self.add(obj.__func__, depth + 1)
            self.add(obj.__self__, depth + 1)
        elif isinstance(obj, types.ModuleType):
            self.update(f"module:{obj.__name__}")
            if _users_file(getattr(obj, "__file__", None)):  # a helper beside the model
                self.module(obj, depth)
        elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            self.update(f"builtin:{getattr(obj, '__module__', '')}.{obj.__qualname__}")
        elif isinstance(obj, type):
            self.update(f"class:{obj.__module__}.{obj.__qualname__}")
            self.source_file(obj)
            if _users_class(obj):  # its code as loaded too: the file may have changed since
                self.loaded(_methods(obj), depth)
        elif isinstance(obj, functools.partial):
            self.update("partial")
            for part in (obj.func, obj.args, obj.keywords):
                self.add(part, depth + 1)
        elif callable(getattr(obj, "named_parameters", None)):
            self.torch_module(obj)
        elif _is_tensor(obj):
            self.tensor("", obj)
        elif isinstance(getattr(obj, "components", None), dict):  # a diffusers pipeline
            self.pipeline(obj, depth)
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

    def pipeline(self, obj: Any, depth: int) -> None:
        """Add a diffusers pipeline: its class, configuration and each of its components."""
        self.update(f"pipeline:{type(obj).__qualname__}")
        self.config(obj)
        for name, part in sorted(obj.components.items()):
            self.update(f"component:{name}")
            if callable(getattr(part, "named_parameters", None)):
                self.torch_module(part)
            else:  # a scheduler, a tokenizer: its class and config
                self.update(f"{type(part).__module__}.{type(part).__qualname__}:"
                            f"{_one_spelling(str(getattr(part, 'name_or_path', '')))}")
                self.config(part)
        self.add(getattr(obj, "empty_text_embedding", None), depth + 1)

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
        except (TypeError, OSError):  # built in, or typed in (a console, python -c): no file
            return
        if not path or path in self._files or not os.path.isfile(path):
            return
        self._files.add(path)
        with open(path, "rb") as f:
            self.update(f"file:{os.path.basename(path)}")
            self._hash.update(f.read())

    def module(self, module: types.ModuleType, depth: int) -> None:
        """A module of the user's (:func:`_users_file`), read as a global: the content of its
        file, what it takes from the user's other files (their modules, recursively,
        and the functions and classes it imports from them), and the code loaded from it
        (the functions and classes it defines, by name).

        A library's module is its name alone (its code changes with its version only): an
        edited helper of the model (``import helper``, then ``helper.f(...)``) is the
        model's code as much as the file that defines it. Its file alone is not enough: a
        process that imported it before an edit (a notebook, a QGIS session) runs the old
        code, and its tiles would be stored under the key a fresh process with the new code
        computes.
        """
        self.source_file(module)
        for name, value in sorted(vars(module).items()):
            if isinstance(value, (types.FunctionType, type)):  # from helper2 import g
                value = sys.modules.get(getattr(value, "__module__", None) or "")
            if isinstance(value, types.ModuleType) and value is not module \
                    and _users_file(getattr(value, "__file__", None)):
                self.update(f"global:{name}")
                self.add(value, depth)  # each once (_seen): a cycle or a long chain ends
        # after the modules above: the code below meets them as seen, one level deeper each
        self.loaded([(name, value) for name, value in sorted(vars(module).items())
                     if isinstance(value, (types.FunctionType, type))
                     and getattr(value, "__module__", None) == module.__name__], depth)

    def loaded(self, parts: list[tuple[str, Any]], depth: int) -> None:
        """The code loaded from a user's file, by name: each function's code (bytecode,
        names, constants, nested functions') and its defaults where plain values; each
        class's methods the same (:func:`_methods`), and its user-defined bases'.

        What a process runs, which its file on disk no longer says once edited without a
        reload. Code alone: not the values of the globals the functions read nor their
        closures, which are the process's state (a network loaded on first use, a call log, a
        counter): counted, they changed the identity as the model ran, so an interrupted run
        never resumed in the same session, and a large package of the user's made it unsure.
        A module constant edited on disk is seen in the file's content (a fresh process), not
        in the values a process that has not reloaded it still holds.
        """
        for name, value in parts:
            self.update(f"loaded:{name}")
            if isinstance(value, types.FunctionType):
                self.code(value.__code__, depth + 1)
                defaults = (*(value.__defaults__ or ()),
                            *sorted((value.__kwdefaults__ or {}).items()))
                self.update("defaults:" + repr([d for d in defaults if _plain(d)]))
            elif isinstance(value, type):
                self.update(f"class:{value.__module__}.{value.__qualname__}")
                self.loaded(_methods(value), depth + 1)


    def config(self, obj: Any) -> None:
        config = getattr(obj, "config", None)
        if config is None:
            return
        to_dict = getattr(config, "to_dict", None)
        data = to_dict() if callable(to_dict) else config
        if isinstance(data, dict) and isinstance(data.get("_name_or_path"), str):
            # where it was loaded from, as typed: weights and ./weights/ are one checkpoint
            data = {**data, "_name_or_path": _one_spelling(data["_name_or_path"])}
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


def _users_file(path: str | None) -> bool:
    """Whether ``path`` (a module's ``__file__``) is a file of the user's: not of Python's
    installation (``sys.prefix``, ``sys.base_prefix``), of an installed package
    (``site-packages``, ``dist-packages``) nor of tiledepth; False for no file (a built-in
    module, a namespace package)."""
    if not path or not os.path.isfile(path):
        return False
    real = os.path.realpath(path)
    if {"site-packages", "dist-packages"} & set(Path(real).parts):
        return False
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.abspath(__file__))}  # tiledepth's own package
    for root in {os.path.realpath(r) for r in roots if r}:
        if root != os.sep and (real + os.sep).startswith(root + os.sep):
            return False
    return True


def _methods(cls: type) -> list[tuple[str, Any]]:
    """A class's own functions, by name: its methods, static and class methods, and its
    properties' getters and setters; and its base classes of the user's (:func:`_users_class`),
    whose methods it inherits."""
    found = [(f"base:{base.__qualname__}", base) for base in cls.__bases__ if _users_class(base)]
    for name, member in sorted(vars(cls).items()):
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            found += [(f"{name}.{part}", getattr(member, part)) for part in ("fget", "fset")
                      if isinstance(getattr(member, part), types.FunctionType)]
        elif isinstance(member, types.FunctionType):
            found.append((name, member))
    return found


def _plain(value: Any) -> bool:
    """Whether ``value`` is a plain immutable value (a number, a string, None, a tuple of
    them): a default that says what a function computes, not state."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes))


def _users_class(cls: type) -> bool:
    """Whether the class ``cls`` is defined in a file of the user's (:func:`_users_file`)."""
    module = sys.modules.get(getattr(cls, "__module__", None) or "")
    return _users_file(getattr(module, "__file__", None))


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
