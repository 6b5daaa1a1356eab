"""The plugin and its Processing provider, ``tiledepth``."""

from qgis.core import QgsApplication, QgsProcessingProvider

from .algorithms import EstimateAlgorithm, ExportPointCloudAlgorithm, PreviewAlgorithm


class TiledepthProvider(QgsProcessingProvider):
    def id(self):
        return "tiledepth"

    def name(self):
        return "tiledepth"

    def longName(self):  # noqa: N802
        return "tiledepth: seamless depth maps of huge rasters"

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        # tiledepth writes GeoTIFF only: the dialog offers no other format for OUTPUT
        return ["tif"]

    def loadAlgorithms(self):  # noqa: N802
        for alg in (EstimateAlgorithm(), PreviewAlgorithm(), ExportPointCloudAlgorithm()):
            self.addAlgorithm(alg)


class TiledepthPlugin:
    """Registers the provider: in QGIS's GUI (initGui) and in qgis_process (initProcessing)."""

    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802
        if self.provider is None:
            self.provider = TiledepthProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
