"""Run tiledepth:estimate in QGIS's own Python, cancelling through the feedback (test_qgis.py).

Usage: python3 qgis_script.py PLUGINS_DIR RUNS_JSON. RUNS_JSON is a list of runs, done in turn
in one QGIS session: ``{"params": {...}, "cancel_at": percent or -1, "env": {...},
"python": path or null, "alg": id, "style": bool}`` (``python``: the tiledepth Python to
record for that run; ``alg``: default tiledepth:estimate; ``style``: apply the output's style
for depth and for height). A parameter ``{"raster": URI, "provider": NAME}`` is that raster
layer (a WMS/XYZ layer, say). Prints one JSON line: for each run ok, results, errors, the
progress seen, the renderers and CRS of the styled output, the raster formats its OUTPUT
offers and the checkpoint folders left in QGIS's temporary folder.
"""

import json
import os
import sys
from pathlib import Path


def main():
    from qgis.core import (
        QgsApplication,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingUtils,
        QgsRasterLayer,
    )

    plugins, runs = sys.argv[1], json.loads(sys.argv[2])
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.insert(0, plugins)
    import tiledepth_provider
    from tiledepth_provider import algorithms, child

    plugin = tiledepth_provider.classFactory(None)
    plugin.initProcessing()

    class Feedback(QgsProcessingFeedback):
        def __init__(self, cancel_at):
            super().__init__()
            self.cancel_at, self.errors, self.progress = cancel_at, [], []
            self.progressChanged.connect(self.on_progress)

        def on_progress(self, percent):
            self.progress.append(percent)
            if self.cancel_at >= 0 and percent >= self.cancel_at:
                self.cancel()

        def reportError(self, error, fatalError=False):  # noqa: N802, N803
            self.errors.append(error)

    out = []
    recorded = Path(child.CONFIG).read_text()
    for run in runs:
        os.environ.update(run.get("env", {}))
        if run.get("python"):
            Path(child.CONFIG).write_text(json.dumps({"python": run["python"]}))
        alg = QgsApplication.processingRegistry().createAlgorithmById(
            run.get("alg", "tiledepth:estimate"))
        feedback = Feedback(run.get("cancel_at", -1))
        params = {k: QgsRasterLayer(v["raster"], k, v["provider"]) if isinstance(v, dict)
                  else v for k, v in run["params"].items()}
        results, ok = alg.run(params, QgsProcessingContext(), feedback)
        styles = []
        if ok and run.get("style"):  # the style the output gets when it loads, depth, height
            for hillshade in (False, True):
                layer = QgsRasterLayer(results["OUTPUT"], "out")
                algorithms._Style(hillshade).postProcessLayer(layer, QgsProcessingContext(),
                                                              None)
                styles.append([type(layer.renderer()).__name__, layer.crs().authid()])
        output = alg.parameterDefinition("OUTPUT")
        formats = output.supportedOutputRasterLayerExtensions() \
            if hasattr(output, "supportedOutputRasterLayerExtensions") else []
        temp = Path(QgsProcessingUtils.tempFolder())
        out.append({"ok": ok, "results": results, "errors": feedback.errors,
                    "progress": feedback.progress, "styles": styles, "formats": formats,
                    "checkpoints": sorted(p.name for p in temp.glob("*/.*.tiledepth-*"))})
        Path(child.CONFIG).write_text(recorded)
    print(json.dumps(out, default=str))
    plugin.unload()


if __name__ == "__main__":  # run by QGIS's Python; the tests' Python only imports it
    main()
