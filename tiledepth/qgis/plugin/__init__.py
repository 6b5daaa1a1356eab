"""tiledepth's QGIS plugin: a Processing provider (installed by ``tiledepth qgis install``).

This folder is copied into a QGIS profile as ``tiledepth_provider``; QGIS's own
Python imports it. Only :mod:`.child` (no QGIS import) is importable elsewhere.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .provider import TiledepthPlugin

    return TiledepthPlugin(iface)
