"""Progress: a redrawn bar on a terminal, periodic log lines anywhere else.

A batch job, a CI log or a file (``tiledepth run ... 2> log.txt``) cannot show a
redrawn bar: there :func:`progress_bar` writes one line every ``interval``
seconds (and at the end) instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

__all__ = ["LABEL", "LogProgress", "lap", "progress_bar", "progress_interval", "status",
           "statuses"]

#: Seconds between two progress lines when stderr is not a terminal; the environment
#: variable TILEDEPTH_PROGRESS_INTERVAL overrides it (the QGIS plugin sets 0: every tile).
LOG_INTERVAL = 30.0
INTERVAL_VARIABLE = "TILEDEPTH_PROGRESS_INTERVAL"

#: What the progress lines of the code run in this context are for, put before what they
#: count (``tiledepth: a/x.tif (file 2/5): tiles 12/40 ...``): ``tiledepth batch`` sets it
#: for each input's run, since a log file has no files bar to say which file is running.
LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("tiledepth_progress_label",
                                                                   default=None)


def progress_interval() -> float:
    """Seconds between two progress lines: ``TILEDEPTH_PROGRESS_INTERVAL`` where it is set
    (non-empty), else :data:`LOG_INTERVAL`.

    The CLI asks before a run starts, so that a bad value stops it at the door (exit 2)
    rather than when the first progress line is due, after the coarse prediction.

    Raises
    ------
    OptionError
        Where the variable is not a finite number of seconds >= 0.

    Examples
    --------
    >>> import os
    >>> os.environ[INTERVAL_VARIABLE] = "0"
    >>> progress_interval()
    0.0
    >>> os.environ[INTERVAL_VARIABLE] = ""  # empty: as unset
    >>> progress_interval()
    30.0
    >>> del os.environ[INTERVAL_VARIABLE]
    """
    text = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return LOG_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        from tiledepth.errors import OptionError

        raise OptionError(f"{INTERVAL_VARIABLE}: must be seconds between progress lines, a "
                          f"number >= 0 (0: one line per tile), got {text!r}; set it so or "
                          "unset it (30 s)")
    return seconds


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

    The time left is estimated from the pace since the first update: the wait before
    the first unit (a pipelined batch's run waiting for the model, a coarse prediction)
    is not taken for the pace of the rest.
    """

    def __init__(self, total: int, desc: str = "tiles", *, stream: TextIO | None = None,
                 interval: float = LOG_INTERVAL) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream
        self.interval = interval
        self.n = 0
        self._start = self._last = time.monotonic()
        self._first: tuple[float, int] | None = None  # the first update's time and count
        self._gone = False  # the stream broke (a closed pipe): no more lines

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self._first is None:
            self._first = (now, self.n)
        if now - self._last < self.interval and self.n < self.total:
            return
        self._last = now
        elapsed = now - self._start
        line = f"tiledepth: {self.desc} {self.n}/{self.total}"
        if self.total:
            line += f" ({100 * self.n / self.total:.0f}%)"
        line += f", {elapsed:.0f} s"
        since, first = self._first
        if first < self.n < self.total:  # the pace since the first update
            left = (now - since) * (self.total - self.n) / (self.n - first)
            line += f", about {left:.0f} s left"
        if self._gone:
            return
        stream = self.stream or sys.stderr
        try:  # one write: a signal's line never lands between the text and its newline
            stream.write(line + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):  # nobody reads it any more (a closed pipe):
            self._gone = True  # the run goes on without progress lines


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
    :class:`LogProgress` otherwise (its ``desc`` after the :data:`LABEL` set, if
    any), nothing when not ``enabled``.

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
    label = LABEL.get()
    return LogProgress(total, f"{label}: {desc}" if label else desc, stream=stream,
                       interval=progress_interval())


#: Whether :func:`status` lines without an explicit ``enabled`` are shown: set by the engine
#: for the duration of a model load (see :func:`statuses`), off elsewhere.
_STATUSES: contextvars.ContextVar[bool] = contextvars.ContextVar("tiledepth_statuses",
                                                                 default=False)


@contextlib.contextmanager
def statuses(enabled: bool) -> Iterator[None]:
    """Show (or hide) the status lines of the code run in the block, e.g. a model's loader."""
    token = _STATUSES.set(enabled)
    try:
        yield
    finally:
        _STATUSES.reset(token)


#: A status line appears only for a step still running after this many seconds (a quick
#: step, or a quick failure, stays silent: an error is still one line).
STATUS_DELAY_S = 2.0


@contextlib.contextmanager
def status(message: str, *, enabled: bool | None = None, stream: TextIO | None = None,
           delay: float | None = None) -> Iterator[None]:
    """Say on stderr what a long step is doing, then how long it took (two lines).

    For steps without a bar that can take minutes (loading a model, the
    coarse prediction on a CPU), so that a run never looks hung. Nothing is
    said for a step done within ``delay`` seconds (:data:`STATUS_DELAY_S`).
    ``enabled=None``: as the enclosing :func:`statuses` block says (off outside one).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with status("loading the model", enabled=True, stream=out, delay=0):
    ...     pass
    >>> out.getvalue().splitlines()[0]
    'tiledepth: loading the model ...'
    """
    if enabled is None:
        enabled = _STATUSES.get()
    if not enabled:
        yield
        return
    import threading

    stream = stream or sys.stderr
    said = threading.Event()

    def say() -> None:
        said.set()
        print(f"tiledepth: {message} ...", file=stream, flush=True)

    t0 = time.perf_counter()
    wait = STATUS_DELAY_S if delay is None else delay
    timer = threading.Timer(wait, say)
    timer.daemon = True
    if wait <= 0:
        say()
    else:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if said.is_set():
        print(f"tiledepth: {message}: done in {time.perf_counter() - t0:.1f} s", file=stream,
              flush=True)


def lap(seconds: dict[str, float], name: str, since: float) -> float:
    """Record in ``seconds[name]`` the time since ``since`` (``time.perf_counter()``);
    return now, the start of the next step."""
    now = time.perf_counter()
    seconds[name] = now - since
    return now
