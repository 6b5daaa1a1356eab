"""Run tiledepth:estimate in QGIS's own Python, cancelling through the feedback (test_qgis.py).

Usage: python3 qgis_script.py PLUGINS_DIR PARAMS_JSON CANCEL_AT_PERCENT; prints one JSON
line: ok, results, errors, and the progress seen.
"""

import json
import sys

from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback

plugins, params, cancel_at = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
app = QgsApplication([], False)
app.initQgis()
sys.path.insert(0, plugins)
import tiledepth_provider  # noqa: E402

plugin = tiledepth_provider.classFactory(None)
plugin.initProcessing()


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.errors, self.progress = [], []
        self.progressChanged.connect(self.on_progress)

    def on_progress(self, percent):
        self.progress.append(percent)
        if cancel_at >= 0 and percent >= cancel_at:
            self.cancel()

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        self.errors.append(error)


alg = QgsApplication.processingRegistry().createAlgorithmById("tiledepth:estimate")
feedback = Feedback()
results, ok = alg.run(params, QgsProcessingContext(), feedback)
print(json.dumps({"ok": ok, "results": results, "errors": feedback.errors,
                  "progress": feedback.progress}, default=str))
plugin.unload()
