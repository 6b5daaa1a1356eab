"""Lock: one run at a time per output, by a lock file beside it.

The lock is named after the output's stem, not its whole name: outputs that share a
stem share their sidecar ``<stem>.json`` and preview ``<stem>.png`` (``x.tif`` and
``x.tiff``), so they are one output for the lock. ``by_name``: after its whole name instead,
for a file that shares nothing with its stem's (a point cloud export, ``o.laz`` beside
``o.tif`` and ``o.png``).

:func:`lock_output` takes the lock (non-blocking, :class:`~tiledepth.errors.BusyError`
when another run holds it) and :func:`unlock_output` releases it and removes its
file. :func:`tiledepth.run` holds it (:func:`locked`) from before it loads the model to the
end of the run, whatever its ``--scratch``; a :class:`tiledepth.checkpoint.Checkpoint` used on
its own takes it itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tiledepth.errors import BusyError, OutputError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["lock_output", "lock_path", "locked", "unlock_output"]


def lock_path(output: str | os.PathLike, *, by_name: bool = False) -> Path:
    """The lock file of ``output``, beside it (whatever the scratch folder), named after
    its stem: the one of every output with the same sidecar and preview; with ``by_name``,
    after its whole name: the one of that file alone.

    Examples
    --------
    >>> lock_path("/data/ortho.depth.tif").as_posix()
    '/data/.ortho.depth.tiledepth-lock'
    >>> lock_path("/data/ortho.depth.tiff") == lock_path("/data/ortho.depth.tif")
    True
    >>> lock_path("/data/o.laz", by_name=True).as_posix()
    '/data/.o.laz.tiledepth-lock'
    """
    output = Path(output)
    return output.with_name(f".{output.name if by_name else output.stem}.tiledepth-lock")


def lock_output(output: str | os.PathLike, *, option: str = "-o",
                by_name: bool = False) -> int:
    """Lock ``output`` for this process (non-blocking); return the lock's fd.

    The lock is a file beside the output, opened without following a link and
    locked with ``flock``; :func:`unlock_output` removes it. Two runs writing
    one output, or two outputs with one stem (and so one sidecar), whatever their
    ``--scratch``, cannot both hold it. ``option``: how the command names the output, in
    the messages (``-o``; ``OUTPUT`` for ``tiledepth export``'s positional argument).
    ``by_name``: the lock of ``output``'s whole name (:func:`lock_path`), which no other
    file shares.

    Raises
    ------
    BusyError
        Another run holds the lock.
    OutputError
        The lock cannot be created, or something other than a plain file is at its name.
    """
    path = lock_path(output, by_name=by_name)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{path}: is a symbolic link, not tiledepth's lock file; "
                                  "remove it") from exc
            if exc.errno == errno.EISDIR:  # another folder would not help: this one is in the way
                raise OutputError(f"{path}: is not a plain file, so not tiledepth's lock file; "
                                  "remove it") from exc
            if exc.errno == errno.ENAMETOOLONG:  # the lock's name: the stem (name) and 16 more
                raise OutputError(f"{path}: cannot create the lock file of {output} (its name "
                                  f"is too long); choose a shorter output name with {option}") \
                    from exc
            raise OutputError(f"{path}: cannot create the lock file of {output} "
                              f"({exc.strerror}); choose a writable folder with {option}") \
                from exc
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
                same = "" if by_name else \
                    f" (or one with the same sidecar, {Path(output).stem}.json)"
                raise BusyError(
                    f"{output}: another tiledepth run is writing the same output now{same}; "
                    f"wait for it to finish or choose another {option}"
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
                    f"wait for it to finish or choose another {option}")


@contextlib.contextmanager
def locked(output: str | os.PathLike, *, option: str = "-o") -> Iterator[int]:
    """Hold the lock of ``output`` for the block (:func:`lock_output`); yield its fd.

    Raises what :func:`lock_output` raises, before the block runs.
    """
    fd = lock_output(output, option=option)
    try:
        yield fd
    finally:
        unlock_output(output, fd)


def unlock_output(output: str | os.PathLike, fd: int, *, by_name: bool = False) -> None:
    """Release the lock of :func:`lock_output` and remove its file (while still held);
    ``by_name`` as it was taken."""
    path = lock_path(output, by_name=by_name)
    try:
        if os.fstat(fd).st_ino == os.lstat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)  # closing releases the flock
