"""QGIS: install tiledepth's Processing provider into a QGIS user profile.

The provider itself is the QGIS plugin in ``tiledepth/qgis/plugin/`` (it imports
QGIS's own Python, never this package). :func:`install` copies it into
``<profile>/python/plugins/tiledepth_provider/``, records there which Python
runs tiledepth (``tiledepth.json``: this interpreter), and enables it in the
profile's ``QGIS/QGIS3.ini``. The plugin runs ``<that python> -m tiledepth.cli
run ...`` as a child process and reads its progress lines: QGIS's Python is the
system's, without torch, and its GDAL is not rasterio's.

Profiles live under ``$QGIS_CUSTOM_CONFIG_PATH/profiles`` when that is set (as
QGIS itself does), else the platform's QGIS folder (Linux:
``~/.local/share/QGIS/QGIS3/profiles``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from tiledepth.errors import OptionError, OutputError

__all__ = ["PLUGIN_NAME", "install", "profiles_root", "uninstall"]

#: The plugin's folder name in a profile (and its key in QGIS3.ini).
PLUGIN_NAME = "tiledepth_provider"
#: What the plugin reads to find tiledepth.
CONFIG = "tiledepth.json"
SOURCE = Path(__file__).resolve().parent / "plugin"


def profiles_root() -> Path:
    """The folder of QGIS's user profiles on this machine.

    Examples
    --------
    >>> import os
    >>> os.environ["QGIS_CUSTOM_CONFIG_PATH"] = "/tmp/q"
    >>> profiles_root().as_posix()
    '/tmp/q/profiles'
    >>> del os.environ["QGIS_CUSTOM_CONFIG_PATH"]
    """
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "QGIS" / "QGIS3" / "profiles"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "QGIS" / "QGIS3" / "profiles"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "QGIS" / "QGIS3" / "profiles"


def install(profile: str = "default", *, root: str | os.PathLike | None = None,
            python: str | None = None) -> Path:
    """Install and enable the provider in a QGIS profile; return the plugin's folder.

    Parameters
    ----------
    profile : str
        The QGIS user profile (created if it does not exist yet).
    root : str or os.PathLike, optional
        The profiles folder; default :func:`profiles_root`.
    python : str, optional
        The Python that runs tiledepth; default this one (``sys.executable``).
    """
    folder = _plugin_folder(profile, root)
    try:
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        from tiledepth import __version__

        (folder / CONFIG).write_text(json.dumps(
            {"python": python or sys.executable, "tiledepth": __version__}, indent=1) + "\n")
        _enable(folder.parents[2] / "QGIS" / "QGIS3.ini", True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot install the QGIS plugin ({exc.strerror or exc})") \
            from exc
    return folder


def uninstall(profile: str = "default", *, root: str | os.PathLike | None = None) -> Path | None:
    """Remove the provider from a QGIS profile; return the folder removed (None: none was)."""
    folder = _plugin_folder(profile, root)
    ini = folder.parents[2] / "QGIS" / "QGIS3.ini"
    if ini.exists():
        _enable(ini, None)
    if not folder.exists():
        return None
    shutil.rmtree(folder)
    return folder


def _plugin_folder(profile: str, root: str | os.PathLike | None) -> Path:
    if not profile or Path(profile).name != profile or profile in (".", ".."):
        raise OptionError(f"profile must be a profile's name, got {profile!r}")
    return Path(root or profiles_root()) / profile / "python" / "plugins" / PLUGIN_NAME


def _enable(ini: Path, enabled: bool | None) -> None:
    """Set (None: remove) ``tiledepth_provider=true`` under ``[PythonPlugins]`` in a Qt ini.

    Line by line, so that QGIS's other settings are kept exactly as they are.
    """
    lines = ini.read_text().splitlines() if ini.exists() else []
    key = f"{PLUGIN_NAME}="
    lines = [line for line in lines if not line.startswith(key)]
    if enabled is not None:
        entry = f"{key}{'true' if enabled else 'false'}"
        if "[PythonPlugins]" in lines:
            lines.insert(lines.index("[PythonPlugins]") + 1, entry)
        else:
            lines += ["", "[PythonPlugins]", entry] if lines else ["[PythonPlugins]", entry]
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("\n".join(lines) + "\n")
