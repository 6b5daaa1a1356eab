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
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Written next to this file by ``tiledepth qgis install``.
CONFIG = Path(__file__).resolve().parent / "tiledepth.json"
INSTALL_HINT = ("run `tiledepth qgis install` from the Python environment where tiledepth "
                "is installed (pip install -e . in a tiledepth checkout), then restart QGIS")
#: ``tiledepth: tiles 12/40 (30%), ...``, the CLI's progress lines (tiledepth.progress).
PROGRESS = re.compile(r"^tiledepth: (\w[\w ]*?) (\d+)/(\d+)\b")
#: ``wrote X (W x H px, N tiles, K from an earlier run, T s)``, the run's summary (``an
#: interrupted run`` before the predictions could be kept after a complete run).
SUMMARY = re.compile(r"^wrote (.+) \((\d+) x (\d+) px, (\d+) tiles(?:, (\d+) from an "
                     r"(?:earlier|interrupted) run)?")
#: What QGIS's own process sets for its Python, PROJ and GDAL (QGIS.app's launcher, OSGeo4W's
#: etc/ini scripts, conda): in tiledepth's Python they name another Python's standard library
#: ("No module named 'math'"), another PROJ's proj.db ("It comes from another PROJ
#: installation") or another GDAL's data and drivers. Not passed on (:func:`child_environment`).
QGIS_ONLY = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "__PYVENV_LAUNCHER__", "PROJ_LIB",
             "PROJ_DATA", "GDAL_DATA", "GDAL_DRIVER_PATH")
#: Seconds the output of a child that has exited is still read: a process it started (a
#: model's helper) may hold the pipe open for long after, or for good.
EXIT_GRACE = 1.0
#: Seconds past :data:`EXIT_GRACE` the lines already read are still taken (a slow progress
#: callback behind a backlog: the summary and error lines come last).
DRAIN_LIMIT = 30.0


class TiledepthNotFound(RuntimeError):
    """tiledepth's Python is not recorded, gone, or has no tiledepth."""


def tiledepth_python(config=CONFIG):
    """The Python that runs tiledepth, as ``tiledepth qgis install`` recorded it.

    Raises TiledepthNotFound, one line saying what is wrong, for a missing, unreadable or
    damaged ``tiledepth.json`` and for a recorded Python that is none or is gone.
    """
    def broken(what):
        return TiledepthNotFound(f"tiledepth's QGIS setup is broken ({config} {what}); "
                                 + INSTALL_HINT)

    try:
        data = Path(config).read_bytes()
    except FileNotFoundError:
        raise TiledepthNotFound(f"tiledepth is not set up for QGIS ({config} is missing); "
                                + INSTALL_HINT) from None
    except OSError as exc:
        raise broken(f"cannot be read: {exc.strerror or exc}") from None
    try:
        record = json.loads(data)  # bytes: UTF-8, or UTF-16/32 as an editor may save it
    except ValueError as exc:  # not JSON, or bytes of no Unicode encoding
        raise broken(f"is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or "python" not in record:
        raise broken('has no "python" entry')
    python = record["python"]
    if not isinstance(python, str) or not python.strip():
        raise broken(f'records no Python: "python": {json.dumps(python)}')
    if not Path(python).exists():
        raise TiledepthNotFound(f"tiledepth's Python {python} no longer exists; "
                                + INSTALL_HINT)
    if not Path(python).is_file():
        raise broken(f"records {python} as tiledepth's Python, which is not a file")
    return python


def split_extra(text, posix=os.name != "nt"):
    r"""The EXTRA parameter's options as arguments, split as a shell splits a command line.

    ``posix=False`` (the default on Windows) keeps backslashes as they are (``C:\data``);
    there too, double or single quotes group a path with spaces and are removed. A quote
    left open raises ValueError, one line.

    Examples
    --------
    >>> split_extra("--mask '/my data/m.tif' --no-calibrate")
    ['--mask', '/my data/m.tif', '--no-calibrate']
    >>> split_extra(r'--mask C:\data\m.tif --aoi "C:\my data\f.gpkg"', posix=False)
    ['--mask', 'C:\\data\\m.tif', '--aoi', 'C:\\my data\\f.gpkg']
    """
    import shlex

    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""  # as shlex.split
    if not posix:
        lexer.escape = ""  # a backslash separates folders; it escapes nothing
    try:
        return list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        what = "a quote is not closed; close it" if "quotation" in str(exc) else \
            "it ends in a backslash; remove it"
        raise ValueError(f"EXTRA: {text}: {what}") from None


def parse_line(line):
    """What a line of the child's output says: ``('progress', done, total)``,
    ``('summary', tiles, resumed)``, ``('error', text)`` or ``('info', text)``.

    Examples
    --------
    >>> parse_line("tiledepth: tiles 3/12 (25%), 1 s, about 3 s left")
    ('progress', 3, 12)
    >>> parse_line("wrote /o.tif (256 x 256 px, 4 tiles, 2 from an earlier run, 1.0 s)")
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


def child_environment(environ=None):
    """The environment of tiledepth's child: ``environ`` (default ``os.environ``, QGIS's)
    less :data:`QGIS_ONLY`, with ``TILEDEPTH_PYTHONPATH`` (where set) as its PYTHONPATH, and
    the settings the plugin reads its output by.

    Examples
    --------
    >>> env = child_environment({"PATH": "/bin", "PYTHONHOME": "/qgis/python",
    ...                          "PYTHONPATH": "/qgis/python/lib", "PROJ_LIB": "/qgis/proj",
    ...                          "TILEDEPTH_PYTHONPATH": "/my/models"})
    >>> sorted(k for k in env if k.startswith(("PYTHON", "PROJ", "PATH")))
    ['PATH', 'PYTHONIOENCODING', 'PYTHONPATH', 'PYTHONUNBUFFERED']
    >>> env["PYTHONPATH"]
    '/my/models'
    """
    environ = os.environ if environ is None else environ
    env = {name: value for name, value in environ.items() if name not in QGIS_ONLY}
    if environ.get("TILEDEPTH_PYTHONPATH"):
        env["PYTHONPATH"] = environ["TILEDEPTH_PYTHONPATH"]
    # the child writes UTF-8 whatever its locale (Windows: cp1252 to a pipe) and never fails
    # on a character; its output is read as UTF-8, a byte that is none replaced (U+FFFD)
    env.update(TILEDEPTH_PROGRESS_INTERVAL="0", PYTHONUNBUFFERED="1",
               PYTHONIOENCODING="utf-8:backslashreplace")
    return env


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
        Polled for each line of output, and every ``poll`` seconds without one; once
        True the child is sent SIGTERM (it keeps its checkpoint and exits 143), and
        waited for. On POSIX the child leads a process group of its own, and the signal
        goes to the whole group: the processes it started too.

    The child runs in :func:`child_environment`. Once it has exited, its output is read
    for :data:`EXIT_GRACE` seconds more, not until the pipe's end: a process it started
    that keeps the pipe open does not keep QGIS waiting; the lines read by then are all
    taken (up to :data:`DRAIN_LIMIT` seconds more).

    Returns
    -------
    rc : int
    summary : tuple of int or None
        ``(tiles, resumed)`` from the summary line.
    errors : list of str
        Its error lines.
    was_canceled : bool
    """
    env = child_environment()
    # POSIX: a group of its own, which Cancel signals whole (a model's helper process too)
    kwargs = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} \
        if sys.platform == "win32" else {"start_new_session": True}
    try:
        proc = subprocess.Popen([python, "-m", "tiledepth.cli", *map(str, args)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                                bufsize=1, env=env, **kwargs)
    except OSError as exc:
        raise TiledepthNotFound(f"cannot start tiledepth's Python {python} ({exc}); "
                                + INSTALL_HINT) from exc
    lines = queue.Queue()

    def pump():
        try:
            for line in proc.stdout:
                lines.put(line)
        finally:  # whatever stops the reading, the loop below ends
            lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    summary, errors, was_canceled, stopped, until = None, [], False, False, None
    while True:
        # on every pass, not only when the child is quiet: one progress line per tile
        # (a fast model: several a second) would hide Cancel until the run ends
        if not stopped and canceled():
            was_canceled = stopped = True
            _terminate(proc)  # SIGTERM: tiledepth keeps its checkpoint
        if until is None and proc.poll() is not None:
            # exited: what it wrote is in the pipe, read at once; the pipe's end may never
            # come (a process it started holds the pipe), so it is not waited for
            until = time.monotonic() + EXIT_GRACE
        late = until is not None and time.monotonic() >= until
        if late and (lines.empty() or time.monotonic() >= until + DRAIN_LIMIT):
            break  # the lines already read are read to the last (its summary, its errors),
            # only the wait for more is bounded; a process it started writing on for good too
        try:
            line = lines.get(timeout=poll)
        except queue.Empty:
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
    reader.join(timeout=0 if until is not None and time.monotonic() >= until else 5)
    if not reader.is_alive():
        # (where a process the child started still holds the pipe, the reader, a daemon
        # thread, ends with it: closing the pipe under its read would wait for it)
        proc.stdout.close()
    return rc, summary, errors, was_canceled


def _terminate(proc):
    """SIGTERM to the child and, on POSIX, to its process group (the processes it started);
    Windows: TerminateProcess."""
    if sys.platform == "win32":
        proc.terminate()
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the group has ended
        pass
    except PermissionError:  # (a member that is not ours): the child at least
        proc.terminate()


def not_found_message(python, lines):
    """The explanation when ``python`` could not run tiledepth, or None when it could.

    Only a start-up failure counts: the child's last line is the ModuleNotFoundError of a
    traceback, or Python's own ``-m`` error. A line earlier in the output that mentions a
    missing module (a library's warning, ``No module named 'triton'``) is not the failure.

    Examples
    --------
    >>> not_found_message("/usr/bin/python3", ["ModuleNotFoundError: No module named 'click'"])
    'tiledepth cannot be found: /usr/bin/python3 has tiledepth but not its dependency click; ...'
    >>> not_found_message("/usr/bin/python3", ["/usr/bin/python3: Error while finding module "
    ...                   "specification for 'tiledepth.cli' (ModuleNotFoundError: No module "
    ...                   "named 'tiledepth')"]).split(";")[0]
    'tiledepth cannot be found: /usr/bin/python3 has no tiledepth module'

    A run that got as far as tiledepth's own error line explains itself (``--model
    typo:depth``: no module named 'typo', a model to find, not a broken install):

    >>> not_found_message("/usr/bin/python3", ["tiledepth: error: --model 'typo:depth': "
    ...                   "cannot import module 'typo' (ModuleNotFoundError: No module "
    ...                   "named 'typo'); check that it is on PYTHONPATH"]) is None
    True
    >>> not_found_message("/usr/bin/python3", ["WARNING: xformers: No module named 'triton'",
    ...                   "tiledepth: tiles 1/4 (25%)"]) is None
    True
    """
    last = _last_line(lines)
    if not (last.startswith("ModuleNotFoundError: ")  # a traceback's last line
            or ": Error while finding module specification for " in last  # python -m X.Y
            or re.search(r": No module named [\w.]+$", last)):  # python -m X
        return None
    match = re.search(r"No module named '?([\w.]+)", last)
    if match is None:
        return None
    module = match.group(1).split(".")[0]
    what = "no tiledepth module" if module == "tiledepth" else \
        f"tiledepth but not its dependency {module}"
    return f"tiledepth cannot be found: {python} has {what}; " + INSTALL_HINT


def failure_message(python, rc, lines, errors):
    """The one line that says why the child, which exited ``rc`` (not 0), failed.

    In turn: a signal that killed it (``rc`` < 0: the out-of-memory killer sends SIGKILL,
    and the child printed nothing about it); a start-up failure
    (:func:`not_found_message`); its last ``tiledepth: error:`` line; a command-line usage
    error (click's ``Error: ...`` line, exit 2: a BATCH_SIZE or an EXTRA option tiledepth
    refuses) as ``tiledepth: error: ...``; a traceback's last line; else its exit code. Any
    other last line (an INFO line, a library's warning) is no explanation: it stays in the
    log.

    Examples
    --------
    >>> failure_message("/py", -9, ["tiledepth: INFO: reference r.tif: ..."], [])
    'tiledepth was killed by signal 9 (SIGKILL; out of memory?)'
    >>> failure_message("/py", 2, ["x"], ["tiledepth: error: /x.tif: no such file; check it"])
    'tiledepth: error: /x.tif: no such file; check it'
    >>> failure_message("/py", 1, ["Traceback (most recent call last):", '  File "a.py"',
    ...                            "ZeroDivisionError: division by zero"], [])
    'ZeroDivisionError: division by zero'
    >>> failure_message("/py", 2, ["Usage: python -m tiledepth.cli run [OPTIONS] INPUT...",
    ...                            "", "Error: No such option: --bogus"], [])
    'tiledepth: error: No such option: --bogus'
    >>> failure_message("/py", 1, ["tiledepth: INFO: reading"], [])
    'tiledepth exited 1'
    """
    if rc < 0:  # POSIX only: Windows has no signals to report
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = "an unknown signal"
        hint = "; out of memory?" if name == "SIGKILL" else ""
        return f"tiledepth was killed by signal {-rc} ({name}{hint})"
    message = not_found_message(python, lines)
    if message:
        return message
    if errors:
        return errors[-1]
    # click's usage errors (exit 2) end in one "Error: ..." line after the usage text
    usage = next((line for line in reversed(lines) if line.startswith("Error: ")), None)
    if rc == 2 and usage is not None:
        return "tiledepth: error: " + usage[len("Error: "):].strip()
    last = _last_line(lines)
    if "Traceback (most recent call last):" in lines and re.match(r"[A-Za-z_][\w.]*(:|$)",
                                                                   last):
        return last
    return f"tiledepth exited {rc}"


def _last_line(lines):
    """The last line of ``lines`` that is not blank, or ""."""
    return next((line for line in reversed(lines) if line.strip()), "")
