"""Run tiledepth as a child process of its own Python and follow its progress lines.

No QGIS import here: the algorithms hand in callables for progress, log lines
and cancellation. Why a child process and not an import: QGIS's Python is the
system's and has no torch; even where it could import tiledepth, rasterio's
GDAL and QGIS's GDAL in one process may clash, and a model run would block
QGIS's memory and its Python. A child can also be stopped cleanly (SIGTERM:
tiledepth keeps its checkpoint, as on Ctrl-C).
"""

import json
import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

#: Written next to this file by ``tiledepth qgis install``.
CONFIG = Path(__file__).resolve().parent / "tiledepth.json"
INSTALL_HINT = ("run `tiledepth qgis install` from the Python environment where tiledepth "
                "is installed (pip install -e . in a tiledepth checkout), then restart QGIS")
#: ``tiledepth: tiles 12/40 (30%), ...``, the CLI's progress lines (tiledepth.progress).
PROGRESS = re.compile(r"^tiledepth: (\w[\w ]*?) (\d+)/(\d+)\b")
#: ``wrote X (W x H px, N tiles, K from an interrupted run, T s)``, the run's summary.
SUMMARY = re.compile(r"^wrote (.+) \((\d+) x (\d+) px, (\d+) tiles(?:, (\d+) from an "
                     r"interrupted run)?")


class TiledepthNotFound(RuntimeError):
    """tiledepth's Python is not recorded, gone, or has no tiledepth."""


def tiledepth_python(config=CONFIG):
    """The Python that runs tiledepth, as ``tiledepth qgis install`` recorded it."""
    try:
        python = json.loads(Path(config).read_text())["python"]
    except (OSError, ValueError, KeyError):
        raise TiledepthNotFound(f"tiledepth is not set up for QGIS ({config} is missing); "
                                + INSTALL_HINT) from None
    if not Path(python).exists():
        raise TiledepthNotFound(f"tiledepth's Python {python} no longer exists; "
                                + INSTALL_HINT)
    return python


def parse_line(line):
    """What a line of the child's output says: ``('progress', done, total)``,
    ``('summary', tiles, resumed)``, ``('error', text)`` or ``('info', text)``.

    Examples
    --------
    >>> parse_line("tiledepth: tiles 3/12 (25%), 1 s, about 3 s left")
    ('progress', 3, 12)
    >>> parse_line("wrote /o.tif (256 x 256 px, 4 tiles, 2 from an interrupted run, 1.0 s)")
    ('summary', 4, 2)
    >>> parse_line("tiledepth: error: /x.tif: no such file; check the path")
    ('error', 'tiledepth: error: /x.tif: no such file; check the path')
    """
    line = line.rstrip("\n")
    match = PROGRESS.match(line)
    if match:
        return "progress", int(match.group(2)), int(match.group(3))
    match = SUMMARY.match(line)
    if match:
        return "summary", int(match.group(4)), int(match.group(5) or 0)
    if line.startswith(("tiledepth: error:", "tiledepth: interrupted", "tiledepth: terminated")):
        return "error", line
    return "info", line


def run_child(python, args, *, on_progress, on_line, canceled, poll=0.1):
    """Run ``python -m tiledepth.cli ARGS``; return its exit code and the parsed lines.

    Parameters
    ----------
    python : str
        tiledepth's Python.
    args : list of str
        The CLI's arguments (``run INPUT -o OUTPUT ...``).
    on_progress : callable
        Called with a percentage in [0, 100] for each progress line.
    on_line : callable
        Called with ``(kind, text)`` for every other line.
    canceled : callable
        Polled every ``poll`` seconds; once True the child is sent SIGTERM (it
        keeps its checkpoint and exits 143), and waited for.

    Returns
    -------
    rc : int
    summary : tuple of int or None
        ``(tiles, resumed)`` from the summary line.
    errors : list of str
        Its error lines.
    was_canceled : bool
    """
    env = dict(os.environ, TILEDEPTH_PROGRESS_INTERVAL="0", PYTHONUNBUFFERED="1")
    kwargs = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} \
        if sys.platform == "win32" else {}
    try:
        proc = subprocess.Popen([python, "-m", "tiledepth.cli", *map(str, args)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, **kwargs)
    except OSError as exc:
        raise TiledepthNotFound(f"cannot start tiledepth's Python {python} ({exc}); "
                                + INSTALL_HINT) from exc
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    summary, errors, was_canceled, stopped = None, [], False, False
    while True:
        try:
            line = lines.get(timeout=poll)
        except queue.Empty:
            if not stopped and canceled():
                was_canceled = stopped = True
                proc.terminate()  # SIGTERM: tiledepth keeps its checkpoint
            continue
        if line is None:
            break
        kind, *rest = parse_line(line)
        if kind == "progress":
            on_progress(100.0 * rest[0] / max(rest[1], 1))
        elif kind == "summary":
            summary = tuple(rest)
            on_line("info", line.rstrip("\n"))
        else:
            if kind == "error":
                errors.append(rest[0])
            on_line(kind, rest[0])
    rc = proc.wait()
    reader.join(timeout=5)
    proc.stdout.close()
    return rc, summary, errors, was_canceled


def not_found_message(python, lines):
    """The explanation when ``python`` could not run tiledepth, or None when it could.

    Examples
    --------
    >>> not_found_message("/usr/bin/python3", ["ModuleNotFoundError: No module named 'click'"])
    'tiledepth cannot be found: /usr/bin/python3 has tiledepth but not its dependency click; ...'
    >>> not_found_message("/usr/bin/python3", ["/usr/bin/python3: Error while finding module "
    ...                   "specification for 'tiledepth.cli' (ModuleNotFoundError: No module "
    ...                   "named 'tiledepth')"]).split(";")[0]
    'tiledepth cannot be found: /usr/bin/python3 has no tiledepth module'
    """
    for line in lines:
        match = re.search(r"No module named '?([\w.]+)", line)
        if match:
            module = match.group(1).split(".")[0]
            what = "no tiledepth module" if module == "tiledepth" else \
                f"tiledepth but not its dependency {module}"
            return f"tiledepth cannot be found: {python} has {what}; " + INSTALL_HINT
    return None
