"""Errors raised by tiledepth.

Every error has one root, :class:`TiledepthError`. The specific errors also
inherit a built-in type, so callers can catch them either way (``except
OSError`` still catches an unreadable input). The CLI maps each class to a
one-line message and an exit code in one place (:mod:`tiledepth.cli`).
"""

from __future__ import annotations


class TiledepthError(Exception):
    """Root of every error tiledepth raises on purpose."""

    #: Exit code the CLI uses: 2 for bad input or options, 1 for failures while running.
    exit_code = 1


class InputError(TiledepthError, OSError):
    """The input raster is missing, unreadable or unusable."""

    exit_code = 2


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
