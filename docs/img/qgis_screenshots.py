"""Take docs/img/qgis-result.png and qgis-dialog.png of a real QGIS under Xvfb.

Needs /tmp/shot/ortho.tif and /tmp/shot/field.shp (a 512 x 512 synthetic ortho and a polygon,
made with tests/conftest.py's depth_image) and the provider installed
(`tiledepth qgis install`). Then::

    Xvfb :99 -screen 0 1400x900x24 &
    DISPLAY=:99 SHOT_OUT=/tmp/shot PYTHONPATH=$PWD:$PWD/tests \
        qgis --nologo --noversioncheck --code docs/img/qgis_screenshots.py
    convert /tmp/shot/qgis-result.png -strip -colors 255 PNG8:docs/img/qgis-result.png
"""

import os
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QApplication
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.utils import iface
import processing

OUT = os.environ["SHOT_OUT"]
ortho = QgsRasterLayer("/tmp/shot/ortho.tif", "ortho")
field = QgsVectorLayer("/tmp/shot/field.shp", "field", "ogr")
field.renderer().symbol().setColor(QColor(0, 0, 0, 0))
field.renderer().symbol().symbolLayer(0).setStrokeColor(QColor("red"))
field.renderer().symbol().symbolLayer(0).setStrokeWidth(0.8)
QgsProject.instance().addMapLayer(ortho)
processing.runAndLoadResults("tiledepth:estimate", {
    "INPUT": "/tmp/shot/ortho.tif", "AOI": "/tmp/shot/field.shp", "MODEL": "toy_models:affine_red",
    "TILE_SIZE": 128, "OUTPUT": "/tmp/shot/ortho.depth.tif"})
QgsProject.instance().addMapLayer(field)
iface.mapCanvas().setExtent(ortho.extent())
iface.mapCanvas().refresh()
dialog = None

def grab_main():
    iface.mainWindow().grab().save(os.path.join(OUT, "qgis-result.png"))
    global dialog
    dialog = processing.createAlgorithmDialog("tiledepth:estimate", {
        "INPUT": ortho, "AOI": field, "TILE_SIZE": 768, "OVERLAP": 0.25})
    dialog.show()
    QTimer.singleShot(3000, grab_dialog)

def grab_dialog():
    dialog.grab().save(os.path.join(OUT, "qgis-dialog.png"))
    QTimer.singleShot(500, QApplication.instance().quit)

QTimer.singleShot(6000, grab_main)
