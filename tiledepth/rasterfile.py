"""Open a raster with rasterio, without its warning for a file that has no georeferencing.

A drone JPEG, a PNG or a map written on such a frame's grid has no transform: rasterio warns
(``NotGeoreferencedWarning``) each time one is opened, although tiledepth handles them on
purpose. :func:`open_raster` opens one with that warning silenced for the open alone (it is
raised there and nowhere else), without leaving a filter behind in the caller's process.

``warnings.catch_warnings`` swaps the process's one filter list: two threads in it at once
(a batch's two raster threads) can restore each other's list, leaving one's "ignore" filter
in place for good or dropping the other's. The blocks here are serialised by a lock, each as
short as one ``rasterio.open``; the lock is taken with a timeout, so a thread never waits for
long on one left held (a Ctrl-C landing between a main thread's acquire and its release) or
on a slow remote open: past it, the file is opened without touching the filters, at worst
with a warning line.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning

__all__ = ["open_raster"]

_FILTERS = threading.Lock()
#: Seconds a thread waits for another's open before opening unfiltered.
WAIT = 10.0


def open_raster(path: Any, mode: str = "r", **kwargs: Any) -> Any:
    """``rasterio.open(path, mode, **kwargs)``, without ``NotGeoreferencedWarning``.

    Parameters
    ----------
    path : str, os.PathLike or file object
        What :func:`rasterio.open` takes.
    mode : str
        ``"r"``, ``"r+"`` or ``"w"``.
    **kwargs
        Passed on (a writer's profile, ``overview_level``, ...).

    Returns
    -------
    rasterio.io.DatasetReader or DatasetWriter
        The open dataset (a context manager, as :func:`rasterio.open` returns).
    """
    if not _FILTERS.acquire(timeout=WAIT):
        # another open holds the filters (a slow remote one, or a lock a Ctrl-C left held):
        # opened without touching them, at worst with a warning line (a filter block here,
        # unserialised, could leave its "ignore" in the process for good)
        return rasterio.open(path, mode, **kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, mode, **kwargs)
    finally:
        _FILTERS.release()
