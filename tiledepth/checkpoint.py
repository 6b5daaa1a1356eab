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
        spread.tile0000012.pred.npy    with --uncertainty: the tile's spread (never resumed)

Every file is written under a temporary name and renamed when complete; its
line in ``files.jsonl`` (the record of what the run wrote, with the checksum
of its contents) is written before it. The folder is removed when the output
is complete (kept, with ``keep_predictions``, for a rerun with ``overwrite`` and other
options of the fusion) and kept when a run fails or is interrupted. A later run writing
the same output finds it: it reuses every stored prediction when the
manifest's key matches, and otherwise empties the folder first (with a
warning), so predictions of different inputs or options are never mixed.
``resume=False`` (``--no-resume``, and every ``--uncertainty`` run: the spreads are
not kept for a resume) always empties it, and keeps nothing when the run fails: a
killed run's files (``SIGKILL``) are removed by the next run of the output, which never
resumes them (the manifest says ``"resumable": false``). A resumed
file whose contents, shape or dtype do not match its record is predicted again (one
warning line).

The folder is never trusted by its name alone: a symbolic link, a file, a
folder of another user or a folder without tiledepth's marker at that name is
refused (:class:`~tiledepth.errors.OutputError`, nothing in it touched; an empty
folder of this user, what a run killed before writing the marker leaves, is taken), and a
run deletes only the files recorded in ``files.jsonl``: anything else found in
the folder stays, and so does the folder then.

The key is a SHA-256 of the input's identity (absolute path, size, modification
time, and a hash of its first and last MiB; for a VRT, that of every file it reads;
that of the files GDAL reads beside it, an ``.aux.xml``, a ``.msk``...; with an area
of interest, its window and a hash of its polygons, see
:meth:`tiledepth.aoi.Area.identity`), of the ``mask`` file's identity (likewise; then
not its path as written: ``in/mask.tif`` and ``./in/mask.tif`` are one key), of every
option that changes a prediction, of the model's identity
(:func:`tiledepth.identity.model_identity`) and of the tiledepth version. Left out are the
options that do not change the output (``batch_size``, ``scratch``, ``resume``, ``workers``,
``memory``, ``keep_predictions``: :data:`NOT_IN_KEY`) and those that change how the
predictions are fused, calibrated and written, not the predictions (``coarse_weight``,
``fusion``, ``reference``, ``cog``...: :data:`FUSION_ONLY`): a run resumed with another
``--coarse-weight``, or with a ``--reference`` added or corrected in place, reuses every
prediction. The options of the
coarse prediction alone (``coarse_size``, ``pyramid``, ``anchor_calls``, ``anchor``:
:data:`COARSE_OPTIONS`) are in the manifest beside the key: a run resumed with others
predicts the coarse image again and reuses every tile. A split's fused map has the key of
the output (:func:`output_key`), with every option.

The folder name depends on the output path only, so two runs writing different
outputs into one folder never share a checkpoint. A run with ``--scratch`` elsewhere also
takes in the checkpoint of its output beside the output (a run killed without
``--scratch``, rerun with it): its intact predictions with this run's key are moved into
``--scratch``, and the rest of it is removed. A checkpoint in another ``--scratch`` folder
than this run's is not found (nothing says where it is): rerun with that ``--scratch``, or
delete it. Two runs writing the same
output (or two outputs sharing a sidecar: ``x.tif`` and ``x.tiff``) at the same
time, whatever their ``--scratch``, are refused by a lock on the output's stem
(:func:`tiledepth.lock.lock_output`, :class:`~tiledepth.errors.BusyError`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from tiledepth.errors import OutputError, WriteError, write_error
from tiledepth.identity import input_identity, model_identity, raster_identity
from tiledepth.infer import RETRY_STRIDE
from tiledepth.lock import lock_output, unlock_output
from tiledepth.options import Options
from tiledepth.scratch import DiskStore, _remove_folder, _unlink_file, checksum, save_npy

__all__ = ["Checkpoint", "SpreadStore", "checkpoint_folder", "checkpoint_key", "output_key",
           "reusable"]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout; part of the key (3: the fusion's options left out, the
#: coarse prediction's beside the key).
FORMAT = 3
#: Version of the key of what a run writes (:func:`output_key`): 2, as the checkpoint's was
#: when it held every option, so a split's fused map kept before is still reused.
OUTPUT_FORMAT = 2
#: Options that do not change the output, left out of every key.
NOT_IN_KEY = frozenset({"model", "batch_size", "scratch", "resume", "workers", "memory",
                        "keep_predictions"})
#: Options that change the output but no prediction the checkpoint keeps, neither a tile's
#: nor the coarse one: how the tiles are aligned, blended, calibrated and written. Left out
#: of :func:`checkpoint_key` (a run resumed with another of them reuses every prediction),
#: kept in :func:`output_key` (the key of a split's fused map). A flagged tile's second
#: prediction is kept under its own key (``id + attempt * RETRY_STRIDE``) whatever flagged
#: it, so ``robust`` and ``retry_flagged`` are among them. An option not named here or in
#: :data:`COARSE_OPTIONS` is in the key: a new option starts over until it is shown to
#: change no prediction (``tests/test_checkpoint.py`` resumes with each of these changed).
FUSION_ONLY = frozenset({"coarse_weight", "alignment", "fusion", "robust", "retry_flagged",
                         "estimate_weights", "overlap_weighting", "bend_from_anchor",
                         "anchor_blur", "output_kind", "reference", "control", "control_crs",
                         "overviews", "cog", "preview", "hillshade"})
#: Options that change the coarse prediction but no tile's: its size, the pyramid levels its
#: image is read through, its calls (and a reference anchor's, which makes one). Out of the
#: key too, they are the manifest's ``"coarse"``: a run resumed with other values of them
#: predicts the coarse image again and reuses every tile.
COARSE_OPTIONS = ("coarse_size", "pyramid", "anchor_calls", "anchor")
MANIFEST = "manifest.json"
MARKER = ".tiledepth-checkpoint"
FILES = "files.jsonl"
_TILE_FILE = re.compile(r"^tile(-?\d+)\.pred\.npy$")
#: Names of the files a store writes (files.jsonl and the marker aside).
_STORE_FILE = re.compile(
    r"^((spread\.)?(tile-?\d+\.(pred|valid)\.npy|coarse\.npy)|manifest\.json)(\.tmp)?$")
#: What the names of a :class:`SpreadStore`'s files start with.
SPREAD_PREFIX = "spread."


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


def checkpoint_key(identity: dict[str, Any], opts: Options, model: Any) -> tuple[str, dict]:
    """The key of a run's predictions, and the manifest that spells it out.

    Parameters
    ----------
    identity : dict
        :func:`tiledepth.identity.raster_identity` of the input (for a VRT, with its
        sources'), or :func:`tiledepth.sources.identity` of a GDAL source.
    opts : Options
        The run's options; those in :data:`NOT_IN_KEY` and :data:`FUSION_ONLY` are left
        out, those in :data:`COARSE_OPTIONS` go to the manifest's ``"coarse"`` instead. A
        ``mask`` file adds its :func:`tiledepth.identity.raster_identity`, in place of its
        path.
    model : DepthModel
        The loaded model (see :func:`tiledepth.identity.model_identity`).

    Returns
    -------
    key : str
        64 hex digits.
    manifest : dict
        What went into the key, JSON-serialisable; and ``"coarse"``, the options of the
        coarse prediction (:meth:`Checkpoint.__enter__` compares them), not in the key.
    """
    key, manifest = _key(identity, opts, model, NOT_IN_KEY | FUSION_ONLY | set(COARSE_OPTIONS),
                         FORMAT)
    manifest["coarse"] = json.loads(json.dumps(coarse_recipe(opts), default=str))
    return key, manifest


def coarse_recipe(opts: Options) -> dict[str, Any]:
    """What the coarse prediction is made with (:data:`COARSE_OPTIONS`), as it is used: its
    long side (``coarse_size``, else the tile size), the pyramid, the anchor and its calls
    (one with a reference anchor, whatever ``anchor_calls``).

    Examples
    --------
    >>> coarse_recipe(Options(tile_size=512))
    {'coarse_size': 512, 'pyramid': True, 'anchor_calls': 3, 'anchor': 'model'}
    >>> coarse_recipe(Options(anchor="reference", reference="dem.tif"))["anchor_calls"]
    1
    """
    return {"coarse_size": opts.coarse_long_side, "pyramid": opts.pyramid,
            "anchor_calls": 1 if opts.anchor == "reference" else opts.anchor_calls,
            "anchor": opts.anchor}


def output_key(identity: dict[str, Any], opts: Options, model: Any) -> str:
    """The key of what a run writes (a split's fused map: :func:`tiledepth.mosaic.fusion_key`):
    that of :func:`checkpoint_key` with every option that changes the output, those of
    :data:`FUSION_ONLY` and :data:`COARSE_OPTIONS` too, and the ``reference`` and
    ``control`` files' identity (:func:`_file_identity`: a reference corrected in place is
    another fused map). 64 hex digits."""
    return _key(identity, opts, model, NOT_IN_KEY, OUTPUT_FORMAT)[0]


def _key(identity: dict[str, Any], opts: Options, model: Any,
         leave_out: frozenset[str] | set[str], layout: int) -> tuple[str, dict]:
    """The key of ``identity``, the options of ``opts`` not in ``leave_out``, the model, the
    tiledepth version and the key's ``layout`` version, and the manifest that spells it out."""
    from tiledepth import __version__, sources

    options = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in leave_out}
    manifest = {"format": layout, "tiledepth": __version__, "input": identity,
                "model": model_identity(model), "options": options}
    # the files a run reads beside its input, by their identity (resolved path and content),
    # not the path as typed (in/mask.tif, ./in/mask.tif, its absolute path would only discard
    # a checkpoint of the same file): the stored validity of each tile is the mask's, the
    # calibration (and with anchor reference the fused map a split keeps) the reference's and
    # the control's; only where given (the keys of other runs are as they were), and a mask
    # only as a local file (another is keyed by its path, as before)
    for option in ("mask", "reference", "control"):
        if option not in options:
            continue
        value = options[option]
        if value is None or (option == "mask" and not os.path.isfile(value)):
            if value is not None and sources.is_gdal_source(value):  # a URL's signature: not
                options[option] = sources.redact(value)  # left in the folder's manifest.json
            continue
        manifest[option] = _file_identity(options.pop(option), raster=option != "control")
    text = json.dumps(manifest, sort_keys=True, default=str)
    manifest = json.loads(text)
    return hashlib.sha256(text.encode()).hexdigest(), manifest


def _file_identity(path: str | os.PathLike, *, raster: bool) -> dict[str, Any]:
    """The identity of a file a run reads (``--mask``, ``--reference``, ``--control``) for its
    key.

    A local raster's :func:`tiledepth.identity.raster_identity`, another local file's
    :func:`tiledepth.identity.input_identity`, a GDAL path's
    :func:`tiledepth.sources.identity`; a path that names nothing (the run says so when it
    reads it) is the path, as typed.
    """
    from tiledepth import sources

    if raster and sources.is_gdal_source(path):
        return sources.identity(os.fspath(path))
    if os.path.isfile(path):
        return raster_identity(path) if raster else input_identity(path)
    return {"path": sources.redact(os.fspath(path))}


# -- the lock of an output ------------------------------------------------------------------


# -- the checkpoint -------------------------------------------------------------------------


class _SaysRemoved:
    """A store in the checkpoint folder whose file that cannot be written or read says, where
    the folder was removed during the run (a cleaner of temporary files, a user), that it was
    (:meth:`Checkpoint._if_removed` of :meth:`_owner`), in place of "write failed (No such
    file or directory); check the disk". Put before :class:`~tiledepth.scratch.DiskStore`."""

    def _owner(self) -> Checkpoint:
        raise NotImplementedError

    @contextlib.contextmanager
    def _removal_said(self) -> Iterator[None]:
        """A failure to write or read a file in the folder, said as its removal where it was."""
        try:
            yield
        except OSError as exc:
            self._owner()._if_removed(exc)
            raise

    def _write(self, path: Path, array: np.ndarray) -> None:
        with self._removal_said():
            super()._write(path, array)

    def get(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        with self._removal_said():
            return super().get(tile_id)

    def get_pred(self, tile_id: int, index: tuple[slice, slice]) -> np.ndarray:
        with self._removal_said():
            return super().get_pred(tile_id, index)


class Checkpoint(_SaysRemoved, DiskStore):
    """A :class:`~tiledepth.scratch.DiskStore` in a fixed folder that outlives a failed run.

    Use as a context manager. On entry it locks ``output`` (:func:`tiledepth.lock.lock_output`;
    not with ``lock_held``), creates ``folder`` (or checks that the one there is tiledepth's: a real
    folder of this user with the marker, never a link) and either resumes
    (the stored manifest has this ``key``, was written by a run that resumes, and ``resume``
    is true; files that fail their checksum are dropped) or empties it of the files it
    recorded. Where ``folder`` is not the one beside ``output`` (``--scratch``), it then takes
    in the checkpoint of ``output`` beside it, if any (:meth:`_take_in`).
    On a clean exit it removes the files it recorded and the folder; on an
    error or interruption it keeps them when it holds any prediction and
    ``resume`` is true (a run that does not resume leaves nothing to resume),
    unless a file the key covers cannot be identified (:func:`reusable`: no
    later key can equal this one), which it says in one warning.

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
        Reuse a matching checkpoint and keep this one when the run fails; False always
        starts clean and keeps nothing (and its manifest says so: a killed run's files are
        never resumed).
    cache_bytes : int
        Memory budget of the in-memory tile cache.
    background : bool
        Write tile files in a background thread (see DiskStore).
    keep : bool
        Keep the folder on a clean exit too (``keep_predictions``: a rerun with other
        options of the fusion fuses its predictions again without the model); with
        ``resume`` only.
    lock_held : bool
        The caller holds the lock of ``output`` for the whole ``with`` block
        (:func:`tiledepth.lock.locked`: :func:`tiledepth.run` takes it before it loads the
        model): it is neither taken nor released here.

    Attributes
    ----------
    resumed : int
        Tile predictions found from an earlier run.
    kept : bool
        After exit: whether the folder was kept for a later run (a failed one's, or with
        ``keep``, a complete one's).
    """

    def __init__(self, folder: str | os.PathLike, key: str, manifest: dict | None = None, *,
                 output: str | os.PathLike, resume: bool = True,
                 cache_bytes: int = 16 * 2**20, background: bool = False,
                 keep: bool = False, lock_held: bool = False) -> None:
        folder = Path(folder)
        super().__init__(folder.parent, cache_bytes=cache_bytes, background=background)
        self.folder = folder
        self.output = Path(output)
        self.key = key
        # "resumable": a killed (SIGKILL) run that does not resume leaves its files to the
        # next run of the output, which must not take them (--no-resume is for models whose
        # state the key cannot see)
        self.manifest = {**(manifest or {}), "key": key, "resumable": resume}
        self.resume = resume
        self.keep = keep
        self.lock_held = lock_held
        self.resumed = 0
        self.kept = False
        self._lock_fd: int | None = None
        self._files_fd: int | None = None
        self._records: dict[str, dict] = {}
        self._scratch: set[str] = set()  # names handed out by scratch_file
        self._identity: tuple[int, int] | None = None  # the folder's (device, inode)

    def __enter__(self) -> Checkpoint:
        if not self.parent.is_dir():
            raise OutputError(f"{self.parent}: scratch folder does not exist; create it first")
        if not self.lock_held:
            self._lock_fd = lock_output(self.output)
        try:
            created = _make_folder(self.folder, self.output)
            st = os.lstat(self.folder)
            self._identity = (st.st_dev, st.st_ino)
            self.path = self.folder
            self._records = {} if created else _read_records(self.folder / FILES)
            self._created = set(self._records)
            _check_names(self.folder, self._records)
            old = None if created else read_json_dict(self.folder / MANIFEST)
            if self.resume and _resumes(old, self.key):
                self._scan()
                if old.get("coarse") != self.manifest.get("coarse"):
                    self._renew_coarse(old.get("coarse"))
            else:
                if self.resume and self._has_work():  # (a folder just created has none)
                    _say_not_taken(self.folder, old, self.manifest, "starting over")
                elif self._has_work():
                    _say_removed_unresumed(self.folder, old)
                self._clear()
                self._record(MANIFEST, None)
                _write_text(self.folder / MANIFEST,
                            json.dumps(self.manifest, indent=1, sort_keys=True))
            self._take_in(checkpoint_folder(self.output, self.output.parent))
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
            # kept for a resume only: a run that does not resume (--no-resume,
            # --uncertainty) would say "run the same command again" of tiles never reused,
            # and so would one of an input nothing identifies (its key is never met again);
            # with keep, a complete run's too (for a rerun with other fusion options)
            kept = (exc_type is not None or self.keep) and self.resume and self._has_work()
            self.kept = kept and reusable(self.manifest)
            if kept and not self.kept:
                log.warning("%s: %d tile prediction(s) not kept: what the run reads cannot be "
                            "identified (a server that reports neither ETag nor "
                            "Last-Modified, /vsimem/, ...), so a rerun could not reuse them "
                            "and starts over", self.folder, self.tiles)
            self._close_files()
            if not self.kept:
                self._remove_created()
                _remove_checkpoint(self.folder)
            else:
                # a working file is never reused (a resumed run writes it again): kept, it
                # would only hold the disk (--scale's reduced map: a third of the folder)
                for name in sorted(self._scratch):
                    for victim in (name, name + ".tmp"):
                        _unlink_file(self.folder / victim)
        finally:
            self._release()
            self.path = None

    # -- the folder removed during the run (_SaysRemoved) ---------------------------------
    def _owner(self) -> Checkpoint:
        return self

    def disk_bytes(self) -> int:
        """Bytes the folder holds now: none once it is removed (after the last output window
        was written, which is all the run read from it: the run goes on)."""
        try:
            return super().disk_bytes()
        except FileNotFoundError:
            return 0

    def _if_removed(self, exc: OSError) -> None:
        """Raise the :class:`~tiledepth.errors.WriteError` that says the folder was removed
        during the run, where ``exc``, a failure to write or read a file in it, is that
        removal's (the folder gone, or another in its place); else return, for the caller
        to raise ``exc``."""
        try:
            st = os.lstat(self.folder)
            there = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            there = False
        if not there:
            raise WriteError(f"{self.folder}: the checkpoint folder was removed during the run; "
                             "run the same command again and leave the folder until the run "
                             "ends (or put it elsewhere with --scratch)") from exc

    @property
    def tiles(self) -> int:
        """Tiles whose prediction is on disk now (complete files: a later run can reuse them).

        A flagged tile's second prediction (its key ``id + RETRY_STRIDE``) is no tile of its
        own: not counted.
        """
        names = (_TILE_FILE.match(f.name) for f in self.folder.glob("tile*.pred.npy"))
        return sum(1 for m in names if m is not None and int(m.group(1)) < RETRY_STRIDE)

    def resume_hint(self, *, rerun: bool = True) -> str:
        """One sentence for an error message: what was kept and (``rerun``) how to use it."""
        kept = f"{self.tiles} tile prediction(s) kept in {self.folder}"
        return f"{kept}; run the same command again to resume" if rerun else kept

    def spreads(self) -> SpreadStore:
        """A store for the tiles' spreads (``--uncertainty``), in this folder: its files
        are recorded in ``files.jsonl``, so a killed run's are removed by the next run of
        the output, while it holds the output's lock (nothing else's)."""
        return SpreadStore(self)

    def scratch_file(self, name: str) -> Path:
        """A path in the folder for a working file of this run (``--scale``'s reduced map).

        Recorded as this run's before it is created, so it is removed when the run ends, even
        when the predictions are kept for a resume: not a prediction, so never reused by a
        resumed run (a killed run's is written over by the next, or removed with the rest).
        """
        self._scratch.add(name)
        self._record(name, None)
        return self.folder / name

    # -- internals ----------------------------------------------------------------------
    def _take_in(self, other: Path) -> None:
        """Take in ``other``, the checkpoint of this output beside it, where this one is in
        ``--scratch`` elsewhere (a run killed without ``--scratch``, rerun with it).

        Its intact predictions (:func:`_load_verified`) that this folder lacks are moved
        here, renamed (copied from another file system) and recorded here first, when its
        manifest has this run's key and was written by a run that resumes, and this run
        resumes; the rest of it, every file it recorded, is then removed (with a warning
        where it held predictions of another input, model or options), so that it is
        neither lost nor left holding its disk. A run killed midway leaves both folders
        valid: the next takes in what is left. Anything at that name that is not a
        checkpoint of this output (:func:`_is_checkpoint_of`) is left alone.
        """
        try:
            if os.path.samefile(other, self.folder) or not _is_checkpoint_of(other, self.output):
                return
        except OSError:  # nothing there (the usual case)
            return
        records = _read_records(other / FILES)
        old = read_json_dict(other / MANIFEST)
        busy = _has_work(other)
        taken = 0
        if self.resume and _resumes(old, self.key):
            for name in sorted(records):
                match = _TILE_FILE.match(name)
                if match is not None and int(match.group(1)) not in self._shapes:
                    valid_name = self._file(int(match.group(1)), "valid").name
                    pred = _load_verified(other / name, records[name])
                    valid = _load_verified(other / valid_name, records.get(valid_name))
                    moved = valid is None  # by a run killed before it moved the prediction
                    if moved:
                        valid = self._verified(self.folder / valid_name)
                    if pred is None or valid is None or pred.ndim != 2 \
                            or valid.shape != (-(-pred.shape[0] * pred.shape[1] // 8),):
                        continue  # predicted again
                    if not moved:
                        self._move_in(other, valid_name, valid)  # the prediction last: whole
                    self._move_in(other, name, pred)
                    self._shapes[int(match.group(1))] = pred.shape
                    taken += 1
                elif name == "coarse.npy" and not (self.folder / name).exists() \
                        and old.get("coarse") == self.manifest.get("coarse"):
                    coarse = _load_verified(other / name, records[name])
                    if coarse is not None:
                        self._move_in(other, name, coarse)
            self.resumed = sum(1 for i in self._shapes if i < RETRY_STRIDE)
        elif busy and self.resume:
            _say_not_taken(other, old, self.manifest,
                           f"removed (this run's checkpoint is {self.folder})")
        elif busy:
            _say_removed_unresumed(other, old)
        if taken:
            log.info("%s: took in %d tile prediction(s) from %s, the checkpoint beside the "
                     "output", self.folder, taken, other)
        for name in sorted(records):
            for victim in (name, name + ".tmp"):
                _unlink_file(other / victim)
        _remove_checkpoint(other)

    def _move_in(self, other: Path, name: str, array: np.ndarray) -> None:
        """Record ``name`` here (``array``: its verified contents), then move it here from
        ``other``: renamed, or written from ``array`` where it cannot be (another file
        system)."""
        self._record(name, array)
        try:
            _move_file(other / name, self.folder / name)
        except OSError:
            save_npy(self.folder / name, array)

    def _record(self, name: str, array: np.ndarray | None) -> None:
        """Append ``name`` (its checksum, shape and dtype) to ``files.jsonl``; remember it.

        Written before the file itself, so every file this run may leave is recorded.
        """
        entry = {"name": name}
        if array is not None:
            entry.update(crc32=checksum(array), shape=list(array.shape), dtype=array.dtype.str)
        line = (json.dumps(entry) + "\n").encode()
        with self._created_lock:
            try:
                if self._files_fd is None:
                    self._files_fd = _open_records(self.folder / FILES)
                os.write(self._files_fd, line)
            except OSError as exc:  # a full disk: the one line that says so
                self._if_removed(exc)
                raise write_error(self.folder / FILES, exc, "--scratch") from exc
            self._records[name] = entry
            self._created.add(name)

    def _close_files(self) -> None:
        if self._files_fd is not None:
            os.close(self._files_fd)
            self._files_fd = None

    def _has_work(self) -> bool:
        return _has_work(self.folder)

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
        # tiles, not predictions: a retried tile's second one (under its retry key) is not
        # a tile of its own
        self.resumed = sum(1 for i in self._shapes if i < RETRY_STRIDE)

    def _renew_coarse(self, old: dict | None) -> None:
        """Resumed with other options of the coarse prediction (``old``, the stored manifest's
        ``"coarse"``, against this run's, :data:`COARSE_OPTIONS`): remove the stored coarse
        prediction, then write this run's manifest (in that order: a run killed between
        them leaves no coarse prediction under the manifest of other options)."""
        old, new = old or {}, self.manifest.get("coarse") or {}
        changed = [f"{k} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v]
        if (self.folder / "coarse.npy").exists():
            log.info("%s: the coarse prediction is made again (%s); the tiles' are reused",
                     self.folder, ", ".join(changed) or "its options changed")
        _unlink_file(self.folder / "coarse.npy")
        _write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True))

    def _verified(self, path: Path) -> np.ndarray | None:
        """The array in ``path`` if it matches its record, else None."""
        return _load_verified(path, self._records.get(path.name))

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


class SpreadStore(_SaysRemoved, DiskStore):
    """The tiles' spreads (``--uncertainty``) in a :class:`Checkpoint`'s folder.

    A :class:`~tiledepth.scratch.DiskStore` whose files are named ``spread.<name>``
    beside the checkpoint's own and recorded in its ``files.jsonl`` before they are
    written: on exit it removes them (only them); a killed run's are removed by the
    next run of the output (a run with spreads never resumes), where a scratch folder
    of its own would stay for good. Enter it inside the checkpoint's ``with`` block.
    """

    def __init__(self, checkpoint: Checkpoint, *, cache_bytes: int = 16 * 2**20) -> None:
        super().__init__(checkpoint.folder, cache_bytes=cache_bytes)
        self.checkpoint = checkpoint

    def __enter__(self) -> SpreadStore:
        if self.checkpoint.path is None:
            raise RuntimeError("SpreadStore: enter its Checkpoint first")
        self.path = self.checkpoint.folder
        return self

    def __exit__(self, *exc_info) -> None:
        self._drain()
        self._cache.clear()
        if self.path is not None:
            self._remove_created()  # the folder is the checkpoint's
            self.path = None

    def _file(self, tile_id: int, kind: str) -> Path:
        path = super()._file(tile_id, kind)
        return path.with_name(SPREAD_PREFIX + path.name)

    def _owner(self) -> Checkpoint:  # its files' failures said as the checkpoint's own
        return self.checkpoint

    def _record(self, name: str, array: np.ndarray | None) -> None:
        # in files.jsonl, before the file is written: by name alone (as scratch_file's), which
        # is all the next run needs to remove it; a spread is never resumed, so no checksum
        self.checkpoint._record(name, None)
        super()._record(name, array)

    def disk_bytes(self) -> int:
        """Bytes its files hold now."""
        if self.path is None:
            return 0
        return sum(f.lstat().st_size for f in self.path.glob(SPREAD_PREFIX + "*"))


def _make_folder(folder: Path, output: Path) -> bool:
    """Create the checkpoint folder with its marker, or check the one there; True if created.

    Raises OutputError, touching nothing, for a link, a file, a folder of
    another user or one without tiledepth's marker for ``output``. A folder of this user
    that holds nothing (or only an empty marker) is one a run killed before its marker
    was written created (:func:`_unfinished`): taken as created, its marker written.
    """
    hint = "move it away or choose another --scratch"
    try:
        os.mkdir(folder, 0o700)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # the output's name and 20 more: no --scratch helps
            raise OutputError(f"{folder}: cannot create the checkpoint folder (its name is "
                              "too long); choose a shorter output name with -o") from exc
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
        _write_marker(folder, output)
        return True
    data = _read_marker(folder)
    if (not isinstance(data, dict) or not data.get("token")) and _unfinished(folder):
        # a run killed between creating the folder and writing its marker: nothing to keep
        # (--no-resume too was refused by it); never a folder with anything else in it
        _unlink_file(marker)
        os.chmod(folder, 0o700)
        _write_marker(folder, output)
        return True
    if not isinstance(data, dict) or not data.get("token"):
        raise OutputError(f"{folder}: exists but was not made by tiledepth (it has no "
                          f"{MARKER} marker), so nothing in it is used or removed; {hint}")
    if data.get("output") != str(output.resolve()):
        raise OutputError(f"{folder}: is the checkpoint of another output "
                          f"({data.get('output')}); {hint}")
    return False


def _read_marker(folder: Path) -> Any:
    """The JSON in the marker of ``folder`` (never through a link), or None."""
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            return json.loads(os.read(fd, 4096)) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


def _is_checkpoint_of(folder: Path, output: Path) -> bool:
    """Whether ``folder`` is a checkpoint folder of ``output`` that a run may take in and
    remove: a real folder of this user (never a link) with tiledepth's marker for
    ``output`` (what :func:`_make_folder` accepts, less the folder a killed run left
    without a marker: nothing to take)."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    data = _read_marker(folder)
    return isinstance(data, dict) and bool(data.get("token")) \
        and data.get("output") == str(output.resolve())


def _remove_checkpoint(folder: Path) -> None:
    """Remove the record, the marker and ``folder`` once its recorded files are removed; a
    folder that holds others' files is left, marker and all, and one already gone (removed
    by hand during the run) is nothing to remove."""
    _unlink_file(folder / FILES)
    try:
        names = os.listdir(folder)
    except OSError:  # gone (or unreadable): the run's output does not depend on it
        return
    if names == [MARKER]:
        _unlink_file(folder / MARKER)
    _remove_folder(folder)  # with others' files in it: left, marker and all


def _move_file(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (OSError across file systems)."""
    os.rename(source, target)


def _load_verified(path: Path, entry: dict | None) -> np.ndarray | None:
    """The array in ``path`` if it matches ``entry``, its record (CRC-32, shape, dtype), else
    None (no record, a record by name alone, a missing or damaged file)."""
    if not isinstance(entry, dict) or "crc32" not in entry:
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (list(array.shape) != entry.get("shape") or array.dtype.str != entry.get("dtype")
            or checksum(array) != entry["crc32"]):
        return None
    return array


def _resumes(old: dict | None, key: str) -> bool:
    """Whether a checkpoint with the manifest ``old`` may be resumed by a run of ``key``: its
    key, written by a run that resumes (a manifest without ``resumable``, of an older
    tiledepth, is one)."""
    return old is not None and old.get("key") == key and old.get("resumable", True) is True


def _write_marker(folder: Path, output: Path) -> None:
    """Write the marker of a new checkpoint folder (removed with the folder on failure)."""
    marker = folder / MARKER
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


def _unfinished(folder: Path) -> bool:
    """Whether ``folder`` (a real folder of this user) holds nothing but, at most, an empty
    regular marker file: what a run killed (SIGKILL, a power cut) between creating it and
    writing the marker's one line leaves."""
    names = os.listdir(folder)
    if not names:
        return True
    if names != [MARKER]:
        return False
    st = os.lstat(folder / MARKER)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _check_names(folder: Path, records: dict[str, dict]) -> None:
    """Refuse a folder holding a file with a name the store writes that it did not record.

    Such a file is not this run's to replace or remove; any other file is left alone.
    """
    for name in sorted(os.listdir(folder)):
        if _STORE_FILE.match(name) and name not in records \
                and name.removesuffix(".tmp") not in records:
            raise OutputError(f"{folder / name}: was not written by tiledepth (or its record "
                              f"in {FILES} was lost), and a run would replace it; move it "
                              "away, or delete the folder to start over, or choose another "
                              "--scratch")


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


def _has_work(folder: Path) -> bool:
    """Whether ``folder`` holds a tile prediction or the coarse one."""
    return any(folder.glob("tile*.pred.npy")) or (folder / "coarse.npy").exists()


def _say_not_taken(folder: Path, old: dict | None, new: dict, then: str) -> None:
    """Warn, in one line, that the predictions in ``folder`` (a checkpoint that holds some)
    are not this run's: of another input, model or options (``old``, its manifest, against
    ``new``, this run's), or of a manifest missing or damaged; ``then``, what becomes of
    them. Nothing is said of a killed run's that did not resume (its manifest says
    ``"resumable": false``): never resumed, so nothing lost.

    The one place of these lines: the run's own checkpoint (:meth:`Checkpoint.__enter__`)
    and the one beside the output it takes in (:meth:`Checkpoint._take_in`) say them alike.
    """
    if old is None:
        log.warning("%s: its manifest is missing or damaged, so its predictions cannot be "
                    "matched to this run; %s", folder, then)
    elif old.get("resumable", True) is True:
        log.warning("%s: holds predictions of a run with another input, model or options%s; "
                    "%s", folder, _what_changed(old, new), then)


def _say_removed_unresumed(folder: Path, old: dict | None) -> None:
    """Warn, in one line, that a run that does not resume (``--no-resume``,
    ``--uncertainty``) removes the predictions in ``folder`` that a rerun could have reused
    (``old``, its manifest, says a resuming run of an identified input kept them: an
    interrupted run's, ``--keep-predictions``'); nothing for a killed run's that did not
    resume, nor for an input nothing identifies (no rerun could reuse them)."""
    if old is not None and old.get("resumable", True) is True and reusable(old):
        log.warning("%s: holds tile predictions a rerun could reuse; removed (this run does "
                    "not resume: --no-resume or --uncertainty)", folder)


def _what_changed(old: dict, new: dict) -> str:
    """`` (kept by another version of tiledepth)`` when the version or the layout differs,
    `` (the model changed ...)`` when the model's identity does, `` (the --mask file
    changed)`` when the mask's content does (the ``--reference`` and ``--control`` files
    are in no checkpoint's key: no prediction depends on them), else ''."""
    if any(old.get(k) != new.get(k) for k in ("format", "tiledepth")):
        return " (kept by another version of tiledepth)"
    if old.get("model") == new.get("model"):
        if old.get("mask") != new.get("mask") and all(
                old.get(k) == new.get(k) for k in ("input", "options")):
            return " (the --mask file changed)"
        return ""
    if "?" in str(new.get("model")):
        return " (the model cannot be identified for sure, so its predictions are not reused)"
    return " (the model changed)"


def reusable(manifest: dict) -> bool:
    """Whether a later run can have the key of ``manifest`` (:func:`checkpoint_key`): not
    where the input (a VRT member, an archive...) or the mask (the key holds no other file)
    is a source whose content nothing identifies (:func:`tiledepth.sources.identity`: a
    random ``unidentified`` token, never the same twice).

    Examples
    --------
    >>> reusable({"input": {"path": "/vsis3/b/k.tif", "etag": '"1"'}})
    True
    >>> reusable({"input": {"members": [{"path": "/vsimem/a.tif", "unidentified": "9f"}]}})
    False
    """
    def unidentified(value: Any) -> bool:
        if isinstance(value, dict):
            return "unidentified" in value or any(unidentified(v) for v in value.values())
        return isinstance(value, list) and any(unidentified(v) for v in value)

    return not any(unidentified(manifest.get(k)) for k in ("input", "mask"))


def read_json_dict(path: Path) -> dict | None:
    """The JSON object in ``path``, or None (missing, unreadable, or not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_text(path: Path, text: str) -> None:
    from tiledepth.safe_write import atomic_file

    with atomic_file(path, option="--scratch") as tmp:
        tmp.write_text(text)
