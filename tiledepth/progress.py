"""Progress: a redrawn bar on a terminal, periodic log lines anywhere else.

A batch job, a CI log or a file (``tiledepth run ... 2> log.txt``) cannot show a
redrawn bar: there :func:`progress_bar` writes one line every ``interval``
seconds (and at the end) instead.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

__all__ = ["LogProgress", "progress_bar"]

#: Seconds between two progress lines when stderr is not a terminal; the environment
#: variable TILEDEPTH_PROGRESS_INTERVAL overrides it (the QGIS plugin sets 0: every tile).
LOG_INTERVAL = 30.0


class LogProgress:
    """Progress as periodic lines: ``tiledepth: tiles 12/40 (30%), 8 s, about 19 s left``.

    Parameters
    ----------
    total : int
        Units of work.
    desc : str
        What is counted.
    stream : file, optional
        Where lines go (default ``sys.stderr``).
    interval : float
        Seconds between lines; the last unit always gets a line.
    """

    def __init__(self, total: int, desc: str = "tiles", *, stream: TextIO | None = None,
                 interval: float = LOG_INTERVAL) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream
        self.interval = interval
        self.n = 0
        self._start = self._last = time.monotonic()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last < self.interval and self.n < self.total:
            return
        self._last = now
        elapsed = now - self._start
        line = f"tiledepth: {self.desc} {self.n}/{self.total}"
        if self.total:
            line += f" ({100 * self.n / self.total:.0f}%)"
        line += f", {elapsed:.0f} s"
        if 0 < self.n < self.total:
            line += f", about {elapsed * (self.total - self.n) / self.n:.0f} s left"
        print(line, file=self.stream or sys.stderr, flush=True)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def progress_bar(total: int, *, enabled: bool, desc: str = "tiles",
                 stream: TextIO | None = None):
    """A progress reporter with ``update(n)``, used as a context manager.

    A tqdm bar when ``stream`` (default stderr) is a terminal, a
    :class:`LogProgress` otherwise, nothing when not ``enabled``.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with progress_bar(2, enabled=True, stream=out) as bar:
    ...     bar.update(); bar.update()
    >>> out.getvalue().splitlines()[-1].startswith("tiledepth: tiles 2/2 (100%)")
    True
    """
    if not enabled:
        return _NoProgress()
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="tile", leave=False, file=stream)
    interval = os.environ.get("TILEDEPTH_PROGRESS_INTERVAL")
    return LogProgress(total, desc, stream=stream,
                       interval=LOG_INTERVAL if interval is None else float(interval))
