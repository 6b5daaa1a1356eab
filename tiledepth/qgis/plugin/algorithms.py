"""The Processing algorithms: thin adapters from QGIS parameters to tiledepth's CLI."""

import hashlib
import math
import os
import re
import uuid

from qgis.core import (
    QgsColorRampShader,
    QgsCoordinateReferenceSystem,
    QgsHillshadeRenderer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsReferencedRectangle,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)

from .child import (
    TiledepthNotFound,
    failure_message,
    run_child,
    split_extra,
    tiledepth_python,
)

#: tiledepth.options.OUTPUT_KINDS (QGIS's Python has no tiledepth to import; a test compares them).
OUTPUT_KINDS = ["depth", "height", "inverse-depth"]
DEFAULT_MODEL = "prs-eth/marigold-depth-v1-1"
#: tiledepth.options' MIN_TILE, MAX_TILE and MAX_OVERLAP, the CLI's ranges of --tile-size and
#: --overlap (the dialog's are the same; a test compares them).
MIN_TILE = 32
MAX_TILE = 8192
MAX_OVERLAP = 0.9
#: ``wrote OUT: N points, values LO to HI``, the summary line of ``tiledepth export``.
_POINTS = re.compile(r"^wrote .+: (\d+) points, values ")
#: Post-processors must outlive processAlgorithm (QGIS keeps no reference to them).
_STYLES = []


class _Base(QgsProcessingAlgorithm):
    """What every algorithm shares: its names and help from class attributes, the CLI run."""

    #: The algorithm's id, its name in the toolbox and its help text.
    NAME = DISPLAY_NAME = HELP = ""

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.DISPLAY_NAME

    def shortHelpString(self):  # noqa: N802
        return self.HELP

    def group(self):
        return ""

    def groupId(self):  # noqa: N802
        return ""

    def createInstance(self):  # noqa: N802
        return type(self)()

    def _input(self, parameters, context):
        """The INPUT raster layer; a one-line error where it is none."""
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("INPUT: not a raster layer")
        return layer

    def _run(self, args, feedback, seen=None):
        """Run the CLI with ``args``; return ``(tiles, resumed)`` or raise one line.

        ``seen``, a list, receives the child's lines (their text).
        """
        try:
            python = tiledepth_python()
        except TiledepthNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushCommandInfo("tiledepth " + " ".join(_quote(a) for a in args))
        seen = [] if seen is None else seen

        def on_line(kind, text):
            seen.append(text)
            # an error line too is the child's output: the one that explains a failure is
            # raised below, and QGIS reports that (reported here as well, it showed twice)
            feedback.pushConsoleInfo(text)

        try:
            rc, summary, errors, canceled = run_child(
                python, args, on_progress=feedback.setProgress, on_line=on_line,
                canceled=feedback.isCanceled)
        except TiledepthNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        if canceled and (summary is not None or rc == 0):
            # Cancel came as the child was exiting, after it had written its output whole
            # (its summary line): the output is there, any earlier file replaced
            feedback.pushWarning("Cancel came after tiledepth had completed the output; "
                                 "it is kept")
            return summary or (0, 0)
        if canceled:
            raise QgsProcessingException("canceled; " + (
                failure_message(python, rc, seen, errors) if rc < 0  # names the signal
                else errors[-1] if errors else f"tiledepth exited {rc}"))
        if rc != 0:
            raise QgsProcessingException(failure_message(python, rc, seen, errors))
        return summary or (0, 0)


class EstimateAlgorithm(_Base):
    """``tiledepth:estimate``: a depth (or height) map of a raster layer."""

    NAME = "estimate"
    DISPLAY_NAME = "Estimate depth"
    HELP = ("Estimates a seamless depth (or height) map of a raster layer with tiled monocular "
            "depth (Marigold by default). Restrict it to an EXTENT (the map canvas's, say) "
            "and/or the polygons of an AOI layer: pixels outside are NaN and never reach the "
            "model. A REFERENCE DEM calibrates the output to metres. Options left empty "
            "take tiledepth's defaults, or an EXTRA --config file's values. With OUTPUT "
            "saved to a file, Cancel keeps the predicted tiles: running it again with the "
            "same parameters resumes; a temporary output cannot be resumed.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        # no defaults for tiledepth's options: a value set here would override an EXTRA
        # --config file (its model: too) and the model's native tile size; empty passes nothing
        self.addParameter(QgsProcessingParameterString(
            "MODEL", f"Model (name, hub id, folder or module:function; empty: {DEFAULT_MODEL})",
            optional=True))
        # the CLI's ranges: tiles of 32 to 8192 px, an overlap in [0, 0.9) (a maximum is
        # allowed: the largest float below 0.9 is OVERLAP's)
        self.addParameter(QgsProcessingParameterNumber(
            "TILE_SIZE", "Tile size (pixels; empty: the model's)",
            QgsProcessingParameterNumber.Integer, None, optional=True, minValue=MIN_TILE,
            maxValue=MAX_TILE))
        self.addParameter(QgsProcessingParameterNumber(
            "OVERLAP", "Overlap (fraction of a tile; empty: 0.25)",
            QgsProcessingParameterNumber.Double, None, optional=True, minValue=0.0,
            maxValue=math.nextafter(MAX_OVERLAP, 0.0)))
        # (not set: passes nothing, as the options above; an EXTRA --config file's wins)
        self.addParameter(QgsProcessingParameterEnum("OUTPUT_KIND", "Output (empty: depth)",
                                                     OUTPUT_KINDS, optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "REFERENCE", "Reference DEM (calibrates to metres)", optional=True))
        self.addParameter(QgsProcessingParameterString(
            "DEVICE", "Device (auto, cpu, cuda, cuda:N, mps; empty: auto)", optional=True))
        for param in (
            QgsProcessingParameterNumber("STEPS", "Denoising steps (empty: the model's)",
                                         QgsProcessingParameterNumber.Integer, None,
                                         optional=True, minValue=1),
            QgsProcessingParameterNumber("ENSEMBLE", "Predictions per tile (empty: 1)",
                                         QgsProcessingParameterNumber.Integer, None,
                                         optional=True, minValue=1),
            QgsProcessingParameterNumber("SEED", "Seed (empty: 0)",
                                         QgsProcessingParameterNumber.Integer, None,
                                         optional=True, minValue=0),  # the CLI's: >= 0
            QgsProcessingParameterString("BATCH_SIZE",
                                         "Batch size (a number or auto; empty: 4)",
                                         optional=True),
            QgsProcessingParameterNumber("SCALE", "Process at this fraction of the resolution "
                                         "(empty: 1)", QgsProcessingParameterNumber.Double,
                                         None, optional=True, minValue=0.01, maxValue=1.0),
            # on (the default) passes nothing: tiledepth resumes, unless an EXTRA --config
            # file says resume: false; off passes --no-resume
            QgsProcessingParameterBoolean("RESUME", "Resume an interrupted run", True),
            QgsProcessingParameterString("EXTRA", "Other tiledepth run options",
                                         optional=True),
        ):
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Depth map"))
        self.addOutput(QgsProcessingOutputNumber("TILES", "Tiles"))
        self.addOutput(QgsProcessingOutputNumber("RESUMED", "Tiles resumed"))

    #: The options passed only when set: (parameter, flag, parameterAs... method name).
    OPTIONS = (("TILE_SIZE", "--tile-size", "parameterAsInt"),
               ("OVERLAP", "--overlap", "parameterAsDouble"),
               ("DEVICE", "--device", "parameterAsString"),
               ("ENSEMBLE", "--ensemble", "parameterAsInt"),
               ("SEED", "--seed", "parameterAsInt"),
               ("BATCH_SIZE", "--batch-size", "parameterAsString"),
               ("SCALE", "--scale", "parameterAsDouble"),
               ("STEPS", "--steps", "parameterAsInt"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self._input(parameters, context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        if not output.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(f"OUTPUT: {output}: tiledepth writes a GeoTIFF; "
                                         "name it .tif or .tiff")
        # OUTPUT_KIND passed only when set, RESUME only when off (tiledepth's default is
        # on): left as they are, an EXTRA --config file's values win
        kind = OUTPUT_KINDS[self.parameterAsEnum(parameters, "OUTPUT_KIND", context)] \
            if _is_set(parameters, "OUTPUT_KIND") else None
        # a temporary output is a new path on every run: nothing to resume, so keep no
        # checkpoint (and promise no resume) for it, whatever a --config file says
        resume = self.parameterAsBool(parameters, "RESUME", context) and \
            not _is_temporary(output)
        args = ["run", _raster_file(layer, "INPUT"), "-o", output]
        # MODEL passed only when set, as the options below: empty, an EXTRA --config file's
        # model: applies, else tiledepth's default
        model = self.parameterAsString(parameters, "MODEL", context)
        if model.strip():
            args += ["--model", model]
        if kind is not None:
            args += ["--output-kind", kind]
        if not resume:
            args.append("--no-resume")
        if os.path.lexists(output):
            # QGIS's dialog asked before replacing OUTPUT; its companions (.json, .png, ...)
            # were never asked about: without the file they are the CLI's to refuse
            args.append("--overwrite")
        for name, flag, as_value in self.OPTIONS:
            if _is_set(parameters, name):
                args += [flag, getattr(self, as_value)(parameters, name, context)]
        # (a null QgsRectangle is QGIS's "not set", as None or "")
        if _is_set(parameters, "EXTENT"):
            # the rectangle in its own CRS (the map canvas's, say) with --bounds-crs:
            # tiledepth masks outside the reprojected rectangle, as on the command line
            # (its bounding box in the input's CRS, passed before, masked nothing)
            rect = self.parameterAsExtent(parameters, "EXTENT", context)
            crs = _extent_crs(self, parameters, context)
            if rect.isNull() or rect.isEmpty():
                # a point or a line (a one-point layer's extent, a typo): dropped, the
                # whole raster was run
                raise QgsProcessingException(
                    f"EXTENT: {_extent_text(parameters['EXTENT'], rect)}: has no area; draw "
                    "a rectangle or leave EXTENT empty")
            args += ["--bounds", repr(rect.xMinimum()), repr(rect.yMinimum()),
                     repr(rect.xMaximum()), repr(rect.yMaximum())]
            # (an input without a CRS is drawn unprojected: the numbers are its own)
            if crs is not None and crs.isValid() and layer.crs().isValid() \
                    and crs != layer.crs():
                args += ["--bounds-crs", _crs_text(crs)]
        if parameters.get("AOI") not in (None, ""):
            # a Shapefile as it is; any other layer (memory, GeoPackage, selection only), or
            # one with a CRS set in QGIS that its file has not (a Shapefile without .prj),
            # exported to a temporary GeoPackage, in the layer's CRS, that tiledepth's
            # Python can read
            formats = [] if _crs_set_in_qgis(_vector_layer(self, parameters, "AOI", context)) \
                else ["shp"]
            args += ["--aoi", self.parameterAsCompatibleSourceLayerPath(
                parameters, "AOI", context, formats, "gpkg", feedback)]
        reference = self.parameterAsRasterLayer(parameters, "REFERENCE", context)
        if reference is not None:
            args += ["--reference", _raster_file(reference, "REFERENCE")]
        extra = self.parameterAsString(parameters, "EXTRA", context)
        if extra:
            try:  # backslashes kept on Windows (C:\data\mask.tif)
                args += split_extra(extra)
            except ValueError as exc:
                raise QgsProcessingException(str(exc)) from None
        tiles, resumed = self._run(args, feedback)
        if context.willLoadLayerOnCompletion(output):
            style = _Style((kind or _output_kind(output)) == "height")
            _STYLES.append(style)
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(style)
        return {"OUTPUT": output, "TILES": tiles, "RESUMED": resumed}


class PreviewAlgorithm(_Base):
    """``tiledepth:preview``: a colour-mapped PNG quicklook of a tiledepth output."""

    NAME = "preview"
    DISPLAY_NAME = "Preview (PNG quicklook)"
    HELP = ("Writes a colour-mapped, georeferenced PNG of a tiledepth output: a 2-98 "
            "percentile stretch, transparent where there is no data.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "tiledepth output"))
        self.addParameter(QgsProcessingParameterBoolean("HILLSHADE", "Hillshade", False))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_SIZE", "Long side (pixels)", QgsProcessingParameterNumber.Integer, 2048,
            minValue=1))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Preview",
                                                                "PNG files (*.png)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self._input(parameters, context)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["preview", _raster_file(layer, "INPUT"), "-o", output, "--max-size",
                self.parameterAsInt(parameters, "MAX_SIZE", context)]
        if os.path.lexists(output):
            # QGIS's dialog asked before replacing OUTPUT: a PNG tiledepth did not mark (an
            # older preview, any other) is refused by the CLI without --overwrite
            args.append("--overwrite")
        if self.parameterAsBool(parameters, "HILLSHADE", context):
            args.append("--hillshade")
        self._run(args, feedback)
        return {"OUTPUT": output}


class ExportPointCloudAlgorithm(_Base):
    """``tiledepth:export_point_cloud``: a georeferenced point cloud of a depth or height map."""

    NAME = "export_point_cloud"
    DISPLAY_NAME = "Export point cloud"
    HELP = ("Exports a tiledepth depth or height map as a point cloud: one point per pixel with "
            "a value (every STEP-th row and column) at the pixel's centre, in the map's CRS; "
            "z is the value, depth negated so that up is up. The format comes from the "
            "output's extension: .laz/.las (LAS 1.4, CRS as WKT) or .ply. An IMAGE (the "
            "orthophoto, say) colours the points.")
    #: The point-cloud extensions of ``tiledepth export`` (tiledepth.export.FORMATS).
    EXTENSIONS = (".laz", ".las", ".ply")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "tiledepth output"))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "IMAGE", "Image that colours the points (RGB)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "STEP", "Keep every N-th row and column", QgsProcessingParameterNumber.Integer, 1,
            minValue=1))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Point cloud",
            "LAZ files (*.laz);;LAS files (*.las);;PLY files (*.ply)"))
        self.addOutput(QgsProcessingOutputNumber("POINTS", "Points"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self._input(parameters, context)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith(self.EXTENSIONS):
            raise QgsProcessingException(f"OUTPUT: {output}: a point cloud ends in "
                                         + ", ".join(self.EXTENSIONS))
        args = ["export", _raster_file(layer, "INPUT"), output, "--overwrite",
                "--step", self.parameterAsInt(parameters, "STEP", context)]
        image = self.parameterAsRasterLayer(parameters, "IMAGE", context)
        if image is not None:
            args += ["--image", _raster_file(image, "IMAGE")]
        seen = []
        self._run(args, feedback, seen)
        feedback.setProgress(100)
        # ``wrote OUT: N points, values LO to HI``, the export's summary
        points = [int(m.group(1)) for m in map(_POINTS.match, seen) if m]
        return {"OUTPUT": output, "POINTS": points[-1] if points else None}


class _Style(QgsProcessingLayerPostProcessorInterface):
    """The output's style: a viridis 2-98 % stretch, or a hillshade for heights."""

    def __init__(self, hillshade):
        super().__init__()
        self.hillshade = hillshade

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if not isinstance(layer, QgsRasterLayer):
            return
        provider = layer.dataProvider()
        if self.hillshade:
            renderer = QgsHillshadeRenderer(provider, 1, 315.0, 45.0)
            renderer.setMultiDirectional(True)
        else:
            lo, hi = provider.cumulativeCut(1, 0.02, 0.98)
            ramp = QgsStyle.defaultStyle().colorRamp("Viridis")
            function = QgsColorRampShader(lo, hi, ramp, QgsColorRampShader.Interpolated)
            function.classifyColorRamp(5, -1)
            shader = QgsRasterShader()
            shader.setRasterShaderFunction(function)
            renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
            renderer.setClassificationMin(lo)
            renderer.setClassificationMax(hi)
        layer.setRenderer(renderer)
        layer.triggerRepaint()


def _path(layer, name):
    """The file behind a GDAL raster layer (its source without ``|option`` suffixes).

    Raises a one-line QgsProcessingException, naming the parameter ``name``, for what
    tiledepth cannot open: a layer of another provider (WMS/XYZ, PostGIS, ...), or a
    table of a file with several (``GPKG:path:table``, ``NETCDF:"path":var``).
    """
    provider = layer.providerType()
    if provider != "gdal":
        raise QgsProcessingException(f"{name}: a {provider} layer is not a raster file; "
                                     "save it as a GeoTIFF first (Export > Save As)")
    path = layer.source().split("|")[0]
    # DRIVER:path:table (not a URL's scheme://, not a Windows drive letter, not a file)
    driver = re.match(r"([A-Za-z][A-Za-z0-9_]+):(?!//)", path)
    if driver and not os.path.exists(path):
        raise QgsProcessingException(
            f"{name}: {path}: a table of a {driver.group(1)} file, not a raster file; "
            "export the table as a GeoTIFF first (Export > Save As)")
    return path


def _raster_file(layer, name):
    """The file tiledepth reads for the raster layer ``layer`` (:func:`_path`); where QGIS
    gives the layer a CRS its file has not (set in QGIS for a GeoTIFF without one: a drone
    ortho with a world file, say), a VRT of it that assigns that CRS.

    The VRT is in QGIS's temporary folder, named after the file and the CRS, and rewritten
    only when its content changes: a canceled run resumes (its checkpoint is keyed by the
    input's path and modification time) within the QGIS session.
    """
    path = _path(layer, name)
    if not _crs_set_in_qgis(layer):
        return path
    from osgeo import gdal

    source = os.path.abspath(path) if os.path.exists(path) else path
    crs = _crs_text(layer.crs())
    digest = hashlib.sha256(f"{source}\n{crs}".encode()).hexdigest()[:16]
    folder = os.path.join(QgsProcessingUtils.tempFolder(), "tiledepth-crs-" + digest)
    os.makedirs(folder, exist_ok=True)
    vrt = os.path.join(folder, os.path.splitext(os.path.basename(source))[0] + ".vrt")
    # this call's own temporary name: two algorithms on the layer at once (a batch, two
    # dialogs) each write theirs, and the VRT replaced by either is whole
    new = f"{vrt}.{os.getpid()}-{uuid.uuid4().hex[:8]}.new"
    try:
        try:
            # opened first: without gdal.UseExceptions() (QGIS's default) Translate of a
            # file GDAL cannot open (gone since the layer was loaded) raises ValueError
            # ("Received a NULL pointer"), not GDAL's message
            opened = gdal.Open(source)
            written = None if opened is None else \
                gdal.Translate(new, opened, format="VRT", outputSRS=crs)
        except RuntimeError:  # where GDAL raises (gdal.UseExceptions())
            written = None
        opened = None  # closed
        if written is None:
            raise QgsProcessingException(
                f"{name}: {path}: cannot give it the layer's CRS ({gdal.GetLastErrorMsg()}); "
                "save the layer as a GeoTIFF with its CRS first (Export > Save As)")
        written = None  # closed: the VRT is on disk
        with open(new, "rb") as f:
            text = f.read()
        try:
            with open(vrt, "rb") as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:
            os.replace(new, vrt)
    finally:
        if os.path.lexists(new):  # the same VRT, or one GDAL left half written
            os.remove(new)
    return vrt


def _vector_layer(alg, parameters, name, context):
    """The vector layer of the feature source parameter ``name`` (of a selection too), or
    None."""
    value = parameters.get(name)
    if isinstance(value, QgsProcessingFeatureSourceDefinition):
        value = value.source  # its layer (a QgsProperty)
    return alg.parameterAsVectorLayer({name: value}, name, context)


def _crs_set_in_qgis(layer):
    """Whether QGIS gives ``layer`` a CRS its file has not (none, or another): set in QGIS
    (Layer Properties > Source), which tiledepth, reading the file, would not know."""
    provider = None if layer is None else layer.dataProvider()
    if provider is None:
        return False
    return layer.crs().isValid() and layer.crs() != provider.crs()


def _extent_crs(alg, parameters, context):
    """The CRS the EXTENT value carries: a QgsReferencedRectangle's, a string's ``[CRS]``
    suffix, a layer's; None where it carries none (a plain QgsRectangle, a string of four
    numbers): those are the input's own coordinates, as they always were, not the
    project's CRS, which QGIS's parameterAsExtentCrs gives them."""
    value = parameters.get("EXTENT")
    if isinstance(value, QgsReferencedRectangle):
        return value.crs() if value.crs().isValid() else None
    if isinstance(value, QgsRectangle):
        return None
    if isinstance(value, str) and _four_numbers(value):
        return None
    return alg.parameterAsExtentCrs(parameters, "EXTENT", context)


def _extent_text(value, rect):
    """The EXTENT as the user gave it (a string), else ``rect``'s ``x0,x1,y0,y1``."""
    if isinstance(value, str):
        return value
    return ",".join(repr(v) for v in (rect.xMinimum(), rect.xMaximum(), rect.yMinimum(),
                                      rect.yMaximum()))


def _four_numbers(text):
    """Whether ``text`` is four numbers, comma-separated: an extent without ``[CRS]``."""
    parts = text.split(",")
    try:
        return len(parts) == 4 and all(math.isfinite(float(part)) for part in parts)
    except ValueError:
        return False


def _crs_text(crs):
    """``crs`` as tiledepth takes it: ``EPSG:N`` where it has an EPSG code, else its WKT."""
    if crs.authid().upper().startswith("EPSG:"):
        return crs.authid()
    return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)


def _output_kind(path):
    """The output kind tiledepth wrote ``path`` as (its ``TILEDEPTH_OUTPUT_KIND`` tag: the
    default's or a --config file's, OUTPUT_KIND not set); None where it cannot be read."""
    try:
        from osgeo import gdal

        ds = gdal.Open(path)
        return None if ds is None else ds.GetMetadataItem("TILEDEPTH_OUTPUT_KIND")
    except Exception:  # only the style depends on it: a depth map's, as before
        return None


def _is_set(parameters, name):
    """Whether the optional parameter ``name`` has a value (not missing, None or "")."""
    value = parameters.get(name)
    if hasattr(value, "isNull"):  # a QVariant NULL
        return not value.isNull()
    return value not in (None, "")


def _is_temporary(path):
    """Whether ``path`` is in QGIS's temporary Processing folder (a TEMPORARY_OUTPUT)."""
    folder = os.path.abspath(QgsProcessingUtils.tempFolder())
    try:
        return os.path.commonpath([folder, os.path.abspath(path)]) == folder
    except ValueError:  # Windows: on another drive
        return False


def _quote(arg):
    import shlex

    return shlex.quote(str(arg))
