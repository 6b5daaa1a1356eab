"""Scratch store: tile predictions wait here between inference and blending.

:class:`DiskStore` keeps them on disk (one ``.npy`` per tile plus its packed
validity mask) in a temporary folder next to the output or in ``--scratch``,
removed when the store closes; a small LRU cache, bounded in bytes, holds the
tiles in use. Every file is written atomically (:func:`save_npy`), and a store
removes only the files it wrote itself (it keeps their names): a file someone
else put in its folder is left, and so is the folder then.
:class:`tiledepth.checkpoint.Checkpoint`, the store of :func:`tiledepth.run`,
is a DiskStore in a fixed folder that outlives a failed run. :class:`MemoryStore`
keeps them in a dict, for in-memory estimates of small images.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import tempfile
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tiledepth.errors import OutputError
from tiledepth.safe_write import atomic_file

__all__ = ["DiskStore", "MemoryStore", "all_valid", "checksum", "read_npy", "save_npy"]

log = logging.getLogger(__name__)

#: Background writes queued at most: a slow disk makes the model wait, not memory grow.
MAX_PENDING = 8


class MemoryStore:
    """Tile predictions in memory."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._coarse: np.ndarray | None = None

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self._items.clear()

    def __contains__(self, tile_id: int) -> bool:
        return tile_id in self._items

    def put(self, tile_id: int, pred: np.ndarray, valid: np.ndarray) -> None:
        self._items[tile_id] = (pred, valid)

    def get(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self._items[tile_id]

    def get_pred(self, tile_id: int, index: tuple[slice, slice]) -> np.ndarray:
        """Part ``pred[index]`` of one tile's prediction."""
        return self._items[tile_id][0][index]

    def put_coarse(self, coarse: np.ndarray) -> None:
        self._coarse = coarse

    def get_coarse(self) -> np.ndarray | None:
        return self._coarse

    def flush(self) -> None:
        """Nothing to wait for: every tile is kept when put."""

    def release(self) -> None:
        """Nothing to release: the dict is the only copy of the tiles (they stay)."""

    def disk_bytes(self) -> int:
        """0: nothing is on disk."""
        return 0


class DiskStore:
    """Tile predictions on disk, with an LRU cache of at most ``cache_bytes``.

    Parameters
    ----------
    parent : str or os.PathLike
        Folder in which the scratch folder is created.
    cache_bytes : int
        Memory budget of the in-memory cache.
    background : bool
        Write files in a background thread, so the model does not wait on the
        disk; a tile is always readable right after ``put``.

    ``put``, ``get`` and ``get_pred`` may be called from different threads.
    """

    def __init__(self, parent: str | os.PathLike, *, cache_bytes: int = 16 * 2**20,
                 background: bool = False) -> None:
        self.parent = Path(parent)
        self.cache_bytes = cache_bytes
        self._writer = ThreadPoolExecutor(1, "tiledepth-scratch") if background else None
        self._pending: dict[int, Future] = {}
        self.path: Path | None = None
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cached = 0
        self._shapes: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()  # guards the cache and the pending writes
        self._created: set[str] = set()  # names of the files this store wrote
        self._created_lock = threading.Lock()

    def __enter__(self) -> DiskStore:
        if not self.parent.is_dir():
            raise OutputError(f"{self.parent}: scratch folder does not exist; create it first")
        try:
            self.path = Path(tempfile.mkdtemp(prefix=".tiledepth-scratch-", dir=self.parent))
        except OSError as exc:
            raise OutputError(
                f"{self.parent}: cannot create the scratch folder ({exc.strerror}); "
                "choose a writable folder with --scratch"
            ) from exc
        return self

    def __exit__(self, *exc_info) -> None:
        self._drain()
        self._cache.clear()
        if self.path is not None:
            self._remove_created()
            _remove_folder(self.path)
            self.path = None

    def __contains__(self, tile_id: int) -> bool:
        return tile_id in self._shapes

    def put(self, tile_id: int, pred: np.ndarray, valid: np.ndarray) -> None:
        """Store one tile: (h, w) float32 prediction and (h, w) bool validity.

        Each file is written under a temporary name and renamed when complete,
        the prediction last: a tile whose prediction file exists is whole.
        """
        pred = np.ascontiguousarray(pred, dtype=np.float32)
        self._shapes[tile_id] = pred.shape
        self._remember(tile_id, pred, valid)
        if self._writer is None:
            self._save(tile_id, pred, valid)
            return
        with self._lock:
            queued = list(self._pending.values())
        for future in queued[:max(0, len(queued) - MAX_PENDING)]:
            future.result()  # the oldest writes finish first: memory stays bounded
        with self._lock:
            done = [self._pending.pop(k) for k, f in list(self._pending.items()) if f.done()]
        for future in done:
            future.result()  # raises a failed write (disk full) here
        with self._lock:
            self._pending[tile_id] = self._writer.submit(self._save, tile_id, pred, valid)

    def _save(self, tile_id: int, pred: np.ndarray, valid: np.ndarray) -> None:
        self._write(self._file(tile_id, "valid"), np.packbits(valid))
        self._write(self._file(tile_id, "pred"), pred)

    def _write(self, path: Path, array: np.ndarray) -> None:
        """Write one file of the store: its name is recorded first, then the file."""
        self._record(path.name, array)
        save_npy(path, array)

    def _record(self, name: str, array: np.ndarray) -> None:
        """Remember that this store writes ``name`` (a Checkpoint also keeps its checksum)."""
        with self._created_lock:
            self._created.add(name)

    def _remove_created(self) -> None:
        """Remove the files this store wrote (and their temporary names), nothing else."""
        with self._created_lock:
            names, self._created = sorted(self._created), set()
        for name in names:
            for victim in (name, name + ".tmp"):
                _unlink_file(self.path / victim)

    def get(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Load one tile's (prediction, validity).

        A tile with every pixel valid gets a shared read-only all-true mask.
        """
        with self._lock:
            cached = self._cache.get(tile_id)
            if cached is not None:
                self._cache.move_to_end(tile_id)
                return cached
            pending = self._pending.get(tile_id)  # left for put or flush to remove
        if pending is not None:
            pending.result()
        shape = self._shapes[tile_id]
        pred = read_npy(self._file(tile_id, "pred"), np.float32, shape)
        bits = read_npy(self._file(tile_id, "valid"), np.uint8, (-(-shape[0] * shape[1] // 8),))
        if _all_set(bits, shape[0] * shape[1]):
            valid = all_valid(shape)
        else:
            valid = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        self._remember(tile_id, pred, valid, read=True)
        return pred, valid

    def get_pred(self, tile_id: int, index: tuple[slice, slice]) -> np.ndarray:
        """Part ``pred[index]`` of one tile's prediction, read from disk without the rest.

        For the overlaps of tiles no longer in the cache: only the rows of the
        part are read (a memory map), and the cache is left as it was.
        """
        with self._lock:
            cached = self._cache.get(tile_id)
            pending = None if cached is not None else self._pending.get(tile_id)
        if cached is not None:
            return cached[0][index]
        if pending is not None:
            pending.result()
        rows, cols = index
        return read_npy(self._file(tile_id, "pred"), np.float32, self._shapes[tile_id],
                        rows=rows)[:, cols]

    def _drain(self) -> None:
        """Finish the background writes (errors are the caller's to raise, by flush)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self._pending.clear()

    def flush(self) -> None:
        """Wait until every tile is on disk; raise the first failed write."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.result()

    def release(self) -> None:
        """Drop the in-memory cache (up to ``cache_bytes``); every tile stays on disk.

        For the end of a run's fusion, once every output window is blended and written:
        the cached tiles are not read again, and the writer's finish (overviews, the
        check, the companions) need not run beside them. The files are untouched, so a
        run killed after this still resumes from them; a later :meth:`get` reads the
        tile from disk (and caches it again).
        """
        with self._lock:
            self._cache.clear()
            self._cached = 0

    def put_coarse(self, coarse: np.ndarray) -> None:
        """Store the (ch, cw) float32 coarse prediction."""
        self._write(self._file(-1, "coarse"), np.ascontiguousarray(coarse, dtype=np.float32))

    def get_coarse(self) -> np.ndarray | None:
        """The stored coarse prediction, or None."""
        try:
            return np.load(self._file(-1, "coarse"))
        except FileNotFoundError:
            return None

    def disk_bytes(self) -> int:
        """Bytes the scratch folder holds now."""
        if self.path is None:
            return 0
        return sum(f.lstat().st_size for f in self.path.iterdir())

    def _file(self, tile_id: int, kind: str) -> Path:
        if self.path is None:
            raise RuntimeError("DiskStore is not open; use it in a `with` block")
        if kind == "coarse":
            return self.path / "coarse.npy"
        return self.path / f"tile{tile_id:07d}.{kind}.npy"

    def _remember(self, tile_id: int, pred: np.ndarray, valid: np.ndarray, *,
                  read: bool = False) -> None:
        """Cache a tile put (``read``: read back from disk), within the budget.

        A tile put evicts the least recently used ones (inference needs the
        latest tiles, for their overlaps). A tile read back evicts first the
        cached tile of the highest id above its own: blending reads the tiles
        in their order, so that one is needed last, while least recently used
        would evict the tiles put last just before blending reaches them (every
        tile read from disk again).
        """
        if valid.flags.writeable and valid.all():
            valid = all_valid(valid.shape)  # shared, costs nothing in the cache
        with self._lock:
            old = self._cache.pop(tile_id, None)
            if old is not None:
                self._cached -= _cost(*old)
            self._cache[tile_id] = (pred, valid)
            self._cached += _cost(pred, valid)
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                ahead = max(self._cache, default=tile_id) if read else tile_id
                p, v = self._cache.pop(ahead) if ahead > tile_id else \
                    self._cache.popitem(last=False)[1]
                self._cached -= _cost(p, v)


def checksum(array: np.ndarray) -> int:
    """CRC-32 of a C-contiguous array's bytes: what a store records with every file.

    Examples
    --------
    >>> checksum(np.zeros(4, np.float32)) == checksum(np.zeros(4, np.float32))
    True
    >>> checksum(np.zeros(4, np.float32)) == checksum(np.ones(4, np.float32))
    False
    """
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _unlink_file(path: Path) -> bool:
    """Remove ``path`` if it is a file or a link (never what a link points to); True if removed."""
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False
    return True


def _remove_folder(path: Path) -> None:
    """Remove an (emptied) store folder; one holding files tiledepth did not write is left."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("%s: left in place: it holds files tiledepth did not write", path)


@functools.lru_cache(maxsize=8)
def all_valid(shape: tuple[int, int]) -> np.ndarray:
    """A shared, read-only all-true mask of ``shape``: the mask of most tiles.

    Examples
    --------
    >>> mask = all_valid((2, 3))
    >>> bool(mask.all()), mask.flags.writeable, mask is all_valid((2, 3))
    (True, False, True)
    """
    mask = np.ones(shape, bool)
    mask.flags.writeable = False
    return mask


def _cost(pred: np.ndarray, valid: np.ndarray) -> int:
    """Bytes a cached tile holds (a shared all-true mask counts nothing)."""
    return pred.nbytes + (0 if valid is all_valid(valid.shape) else valid.nbytes)


def _all_set(bits: np.ndarray, count: int) -> bool:
    """Whether the first ``count`` bits of a ``np.packbits`` array are all 1."""
    full, rest = divmod(count, 8)
    if not (bits[:full] == 255).all():
        return False
    return rest == 0 or int(bits[full]) >> (8 - rest) == (1 << rest) - 1


def read_npy(path: Path, dtype: np.dtype | type, shape: tuple[int, ...], *,
             rows: slice | None = None) -> np.ndarray:
    """Read a C-ordered .npy file of known ``dtype`` and ``shape`` (``rows``: those only).

    The header is compared with the one :func:`save_npy` writes for that array
    instead of being parsed (``np.load`` parses it as Python); a file with
    another header is read by ``np.load``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.npy"
    >>> save_npy(path, np.arange(12, dtype=np.float32).reshape(4, 3))
    >>> read_npy(path, np.float32, (4, 3), rows=slice(1, 3)).tolist()
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    """
    header = _npy_header(np.dtype(dtype).str, tuple(shape))
    rows = slice(0, shape[0], 1) if rows is None else slice(*rows.indices(shape[0]))
    row_items = int(np.prod(shape[1:], dtype=np.int64))
    with open(path, "rb") as f:
        if f.read(len(header)) != header or rows.step != 1:
            f.seek(0)
            return np.load(f)[rows]
        count = max(rows.stop - rows.start, 0) * row_items
        f.seek(len(header) + rows.start * row_items * np.dtype(dtype).itemsize)
        data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
        raise ValueError(f"{path}: truncated .npy file")
    return data.reshape((count // row_items if row_items else 0, *shape[1:]))


@functools.lru_cache(maxsize=16)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The .npy header ``np.save`` writes for a C-ordered array of ``descr`` and ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as .npy, atomically: a temporary name, then a rename.

    On any error or interruption the temporary file is removed; a failed
    write (a full disk) raises :class:`~tiledepth.errors.WriteError`.
    """
    with atomic_file(path, option="--scratch") as tmp, open(tmp, "wb") as f:
        np.save(f, array)
