"""Run tiledepth from the QGIS Python console and add the result as a layer.

In QGIS: Plugins > Python Console > Show Editor, open this file, set INPUT below (or
keep the active raster layer), and Run. tiledepth must be installed in QGIS's Python
from a checkout (it is not on the package index): `python -m pip install -e /path/to/tiledepth`
with QGIS's interpreter; on Windows in the OSGeo4W shell.

Offline it uses the example callable model; set MODEL to a Marigold checkpoint for real
depth (slow on a CPU: try a small area first, and see `tiledepth info`). Outside QGIS
(no `iface`) it runs the same and prints instead of adding layers:

    TILEDEPTH_INPUT=ortho.tif python examples/qgis_console.py
"""

import os
import sys
from pathlib import Path

import tiledepth

try:  # the QGIS console defines `iface`; `__file__` may be unset there
    HERE = Path(__file__).resolve().parent
except NameError:
    HERE = Path.cwd() / "examples"
sys.path.insert(0, str(HERE.parent))
from examples.custom_model import brightness_depth  # noqa: E402

MODEL = os.environ.get("TILEDEPTH_MODEL") or brightness_depth
iface = globals().get("iface")  # noqa: F821 (defined by QGIS)
active = iface.activeLayer() if iface is not None else None
if active is not None and active.type() == active.RasterLayer:
    INPUT = active.source()
else:
    INPUT = os.environ.get("TILEDEPTH_INPUT", "ortho.tif")

# <stem>.height.tif, its own name: a rerun replaces it, never a real model's .depth.tif
result = tiledepth.run(INPUT, Path(INPUT).with_name(f"{Path(INPUT).stem}.height.tif"),
                       model=MODEL, tile_size=256, output_kind="height", preview=True,
                       overwrite=True)
print(f"tiledepth: wrote {result.output} ({result.width} x {result.height} px, "
      f"{result.tiles} tiles, {result.seconds['total']:.1f} s)")

if iface is not None:  # add the height model, shaded like a surface model
    from qgis.core import QgsHillshadeRenderer

    layer = iface.addRasterLayer(str(result.output), f"{Path(INPUT).stem} height")
    shade = QgsHillshadeRenderer(layer.dataProvider(), 1, 315, 45)
    layer.setRenderer(shade)
    layer.setOpacity(0.9)
    layer.triggerRepaint()
