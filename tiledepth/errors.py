"""Errors raised by tiledepth.

Every error has one root, :class:`TiledepthError`. The specific errors also
inherit a built-in type, so callers can catch them either way (``except
OSError`` still catches an unreadable input). The CLI maps each class to a
one-line message and an exit code in one place (:mod:`tiledepth.cli`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class TiledepthError(Exception):
    """Root of every error tiledepth raises on purpose."""

    #: Exit code the CLI uses: 2 for bad input or options, 1 for failures while running.
    exit_code = 1


class InputError(TiledepthError, OSError):
    """The input raster is missing, unreadable or unusable."""

    exit_code = 2


class PersistentInputError(InputError):
    """An unusable input known only once tiles are predicted, that the same command meets
    again (a calibration that cannot be fitted, valid pixels too thin for ``--scale``): the
    engine keeps the tiles without advising a rerun."""


class OptionError(TiledepthError, ValueError):
    """An option has a bad value, or options contradict each other."""

    exit_code = 2


class OutputError(TiledepthError, OSError):
    """The output cannot be written where it was asked for."""

    exit_code = 2


class ModelError(TiledepthError, RuntimeError):
    """The depth model cannot be loaded, or returned something unusable."""

    exit_code = 1


class ModelLoadError(ModelError):
    """The model named by ``model=`` could not be found or loaded."""

    exit_code = 2


class DependencyError(TiledepthError, ImportError):
    """An optional dependency (such as Ray) is needed but not installed."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    r"""The first line of an exception's root cause (its type name if it has none).

    Library errors (GDAL's, diffusers') can run to many lines and come wrapped
    (rasterio's around GDAL's); tiledepth's own messages quote the first line of
    the innermost cause.

    Examples
    --------
    >>> first_line(ValueError("bad value\nmore detail"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    seen = []
    while exc.__cause__ is not None and exc.__cause__ not in seen:
        seen.append(exc)
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WriteError(TiledepthError, OSError):
    """Writing the output or the scratch store failed while running (a full disk, say)."""

    exit_code = 1


class BusyError(OutputError):
    """Another run is writing the same output right now."""


#: Below this many free bytes a failed write is reported as a full disk.
LOW_DISK = 16 * 2**20


def write_error(path: str | os.PathLike, exc: BaseException, option: str) -> WriteError:
    """A one-line WriteError for a failed write of ``path``, saying when the disk is full.

    GDAL and NumPy rarely pass ``ENOSPC`` on (``TIFFAppendToStrip: Write error``,
    ``65536 requested and 53216 written``), so a write that failed on a file
    system with less than :data:`LOW_DISK` free is reported as a full disk too.

    Parameters
    ----------
    path : str or os.PathLike
        The file being written.
    exc : BaseException
        The error the write raised.
    option : str
        The option that chooses another place, for the message (``-o``, ``--scratch``).

    Examples
    --------
    >>> import errno
    >>> err = write_error("/tmp/o.tif", OSError(errno.ENOSPC, "No space left on device"), "-o")
    >>> str(err).startswith("/tmp/o.tif: no space left on device")
    True
    """
    path = Path(path)
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    free = None
    for folder in (path.parent, *path.parents):
        try:
            free = shutil.disk_usage(folder).free
            break
        except OSError:
            continue
    full = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain) or (
        free is not None and free < LOW_DISK)
    if full:
        left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return WriteError(f"{path}: no space left on device{left}; free some space or choose "
                          f"another place with {option}")
    return WriteError(f"{path}: write failed ({first_line(chain[-1])}); check the disk, or "
                      f"choose another "
                      f"place with {option}")
