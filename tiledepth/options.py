"""Options of a run: one frozen dataclass, its checks, and YAML config files.

Every option has the same name in the library (``tiledepth.run(...,
tile_size=512)``), in a config file (``tile_size: 512``, or ``tile-size``) and
on the CLI (``--tile-size 512``). ``configs/default.yaml`` lists them all with
their defaults; a test keeps it in step with :class:`Options`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from tiledepth.errors import OptionError

__all__ = ["DEFAULT_MODEL", "Options", "alignments", "load_config", "make_options",
           "parse_bands"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "prs-eth/marigold-depth-v1-1"
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Model precisions (``dtype``), ``"auto"`` first; :mod:`tiledepth.models.torchutil` maps them.
DTYPES = ("auto", "fp32", "fp16", "bf16")
#: Smallest tile the engine accepts (Marigold works in 8x downsampled latents).
MIN_TILE = 32
#: Largest tile (and coarse prediction) side: one 8192 px tile is a 0.75 GiB float32 RGB model
#: input (12 bytes a pixel) before the model's own memory, times the batch size; a 100000 px
#: tile asked 447 GiB of a batch of four.
MAX_TILE = 8192
MAX_OVERLAP = 0.9
#: Largest anchor blur (a Gaussian's sigma in the anchor's pixels): the automatic blur picks
#: at most 6 and the gradient fusion's estimate at most 8; a blur's kernel reaches 4 sigma to
#: either side of every cell of every tile, so 1e5 took 50 s on a 300 px raster, 1e6 over
#: 10 min, for a map no anchor has.
MAX_ANCHOR_BLUR = 64.0
#: Most model calls of the coarse image an anchor is made of: a median of more gains little
#: (its error falls as one over the square root of the calls) for a model call each.
MAX_ANCHOR_CALLS = 16
#: What the output's values are (see :mod:`tiledepth.calibrate`).
OUTPUT_KINDS = ("depth", "height", "inverse-depth")
#: The global anchor of the fusion: the model's coarse prediction or the reference raster.
ANCHORS = ("model", "reference")
#: How the aligned tiles become one map: blended (``tiles``), or blended and corrected in
#: the gradient domain toward the anchor's low frequencies (``gradient``,
#: :mod:`tiledepth.fusion.gradient`).
FUSIONS = ("tiles", "gradient")


def alignments() -> tuple[str, ...]:
    """The ``alignment`` values: ``'auto'``, which picks one per run and pyramid level
    (:func:`tiledepth.fusion.pyramid.resolve_alignment`), and the names of the fusion's value
    maps (:data:`tiledepth.fusion.maps.ALIGNMENTS`).

    Written out, not imported: the fusion imports numpy, scipy and rasterio, which every
    command's ``--help`` (``--alignment [auto|affine|bilinear]``) would wait for;
    tests/test_cli_help.py keeps the two equal.

    Examples
    --------
    >>> alignments()
    ('auto', 'affine', 'bilinear')
    """
    return ("auto", "affine", "bilinear")


def parse_bands(text: str) -> tuple[int, ...]:
    """Band numbers written ``1,2,3`` (as on the CLI, or ``bands: 1,2,3`` in a config).

    The one parser of that form: the CLI's ``--bands`` and :func:`make_options` both use it.
    Whether the numbers are valid (1 or 3 of them, each from 1) is :meth:`Options.check`'s.

    Raises
    ------
    ValueError
        Where a part is not a whole number.

    Examples
    --------
    >>> parse_bands("1,2,3"), parse_bands(" 4 ")
    ((1, 2, 3), (4,))
    """
    return tuple(int(v) for v in str(text).split(","))


def overlap_weightings() -> tuple[str, ...]:
    """The ``overlap_weighting`` values (:data:`tiledepth.fusion.blend.OVERLAP_WEIGHTINGS`),
    written out as :func:`alignments`' are (tests/test_cli_help.py keeps them equal).

    Examples
    --------
    >>> overlap_weightings()
    ('uniform', 'blend')
    """
    return ("uniform", "blend")


@dataclass(frozen=True)
class Options:
    """Everything that shapes a run's output, with defaults.

    Attributes
    ----------
    model : str or object
        Hub id, local folder, ``package.module:function``, a loaded
        ``MarigoldDepthPipeline``, any callable ``(B, H, W, 3) -> (B, H, W)``, or a loaded
        model (``name``, ``batch_size``, ``predict(batch, keys)``), which runs as it was
        loaded (:func:`tiledepth.plan.open_model`).
    tile_size : int
        Tile side in pixels (Marigold's native resolution is 768).
    overlap : float
        Overlap between neighbouring tiles, as a fraction of the tile, in [0, 0.9).
    coarse_size : int or None
        Long side of the coarse global prediction; None = ``tile_size``.
    coarse_weight : float
        Per-pixel weight of agreement with the coarse prediction, relative to
        agreement between overlapping tiles; with ``estimate_weights`` (the default) the
        starting point of the estimated weight, which stays within
        :data:`tiledepth.fusion.solve.BALANCE_BOUND` times it either way.
    anchor_calls : int
        Model calls of the coarse image the anchor is made of (at least 1): their robust
        median (:func:`tiledepth.fusion.anchor_of_calls`), where a model's calls differ
        (a new noise sample each, a per-call tone curve), averages out part of the
        anchor's own error, which every tile inherits; a model whose calls repeat gets its
        one call back. Each call costs one model call of ``coarse_size`` pixels. A
        reference anchor (``anchor='reference'``) makes one call.
    anchor_blur : float, 'auto' or None
        The anchor's own blur, a Gaussian's sigma in the anchor's pixels: tiles
        are compared with it through that blur. ``'auto'`` or None: estimated
        per run (and pyramid level) from the tiles, the blur among
        :data:`tiledepth.fusion.coarse.BLUR_CANDIDATES` that best explains the
        anchor (0 for a sharp model, more for a blurry one); 0 for a reference
        raster as the anchor.
    alignment : {'auto', 'affine', 'bilinear'}
        Each tile's value map: one scale and shift, or a scale and shift that
        vary bilinearly across the tile (see :mod:`tiledepth.fusion.maps`); ``auto``:
        bilinear where the anchor has at least 300 pixels across a tile (it can
        then tell a tilt within a tile), else one scale and shift.
    fusion : {'tiles', 'gradient'}
        ``tiles``: the aligned tiles blended. ``gradient``: the blend's detail (its
        gradients) with the low frequencies of the anchor, a screened Poisson
        correction solved on the anchor's grid (see :mod:`tiledepth.fusion.gradient`);
        it undoes errors that bend within a tile, which per-tile maps cannot.
    robust : bool
        Down-weight tiles that disagree grossly with their neighbours
        (iteratively re-weighted least squares); outliers are flagged in the
        sidecar and replaced by the coarse prediction.
    retry_flagged : bool
        Predict each tile the robust step flags once more (a new sample: another noise seed
        for Marigold) and solve again with the new prediction, kept where it is consistent;
        a tile flagged again is predicted a third time (unless it repeated an earlier
        prediction), and is filled from the coarse prediction if that fails too. One or two
        model calls per flagged tile (none where nothing is flagged). A tile its
        neighbours follow weakly, as no typical tile of the run
        (:func:`tiledepth.fusion.diagnosis.tile_suspects`), gets a second call too, kept
        where they follow the new sample. On by default.
    estimate_weights : bool
        Estimate the weight of the coarse prediction against the overlaps from the data
        (variance component estimation, ``coarse_weight`` the starting point): each group
        of terms weighted by the inverse of its measured mean square residual (see
        :func:`tiledepth.fusion.solve.balance`). On by default; off: ``coarse_weight`` as
        given.
    overlap_weighting : {'uniform', 'blend'}
        How the alignment weights the pixels of an overlap of two tiles: each the same
        (``uniform``), or by the product of the two tiles' blending weights (``blend``:
        most in the middle of the overlap band, least at either tile's edge, where a
        warp or tilt within a model call is largest; see
        :func:`tiledepth.fusion.blend.overlap_weights`). The overlap's total weight
        against the coarse prediction is the same either way.
    bend_from_anchor : bool
        Bilinear value maps: how a tile's map bends across it from the coarse prediction
        alone, the overlaps setting only its one scale and shift on top (see
        :func:`tiledepth.fusion.solve.anchor_bend`); off: every corner from the whole
        problem (with ``estimate_weights``, the weights estimated on it first). Refused
        with alignment ``affine`` (it would do nothing).
    pyramid : bool
        Where the raster is 4x finer than a level 4x finer than the coarse
        prediction (at most 2048 px: 16x the coarse map, 8192 px and up with a
        768 px one), fuse intermediate resolutions first (each aligned to the one
        above; see :func:`tiledepth.fusion.pyramid.pyramid_levels`) and align the tiles
        to the finest; under 16 % more model calls at the default overlap.
    batch_size : int or 'auto'
        Tiles per model call. ``'auto'``: on CUDA the largest batch that fits,
        probed once when the model loads (up to 64); elsewhere 4 (see
        :mod:`tiledepth.models.autobatch`).
    device : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}
        ``auto`` picks CUDA, then MPS, then CPU; a ``torch.device`` is read as its text,
        and any case as lower case (``CPU``, ``CUDA:0``).
    dtype : {'auto', 'fp32', 'fp16', 'bf16'}
        ``auto`` is fp16 on CUDA and fp32 elsewhere.
    steps : int or None
        Denoising steps; None = the checkpoint's default.
    ensemble : int
        Predictions per tile, ensembled.
    seed : int
        Seed of the model's noise; the same seed gives the same output.
    bands : tuple of int or None
        Input bands for the model (1 or 3, 1-based); None = first three colour bands.
    scratch : str or None
        Folder for the scratch store; None = the output's folder.
    scale : float
        Process at this fraction of the input resolution, in (0, 1], for
        speed; the output is still written on the input's grid.
    workers : int
        Background threads that read and decode tiles ahead of the model and
        write scratch and output while it runs (the alignment statistics
        run in up to 3 more); 0 runs every step in turn. The output is
        the same either way.
    memory : int
        MiB of tile predictions kept in memory between inference and blending;
        beyond it they are read back from the checkpoint folder (every tile is
        written there anyway, for a resume). The output is the same either way.
    nodata : float or None
        The input's no-data value, instead of the one it declares (or to declare
        one): pixels whose model bands all equal it are masked.
    mask : str or None
        A raster on the input's grid (same width and height): 0 masks a pixel,
        anything else keeps it; on top of the input's own mask.
    resume : bool
        Reuse the tile predictions of an interrupted run of the same input,
        model and options (see :mod:`tiledepth.checkpoint`); False starts clean.
    keep_predictions : bool
        Keep the checkpoint (every tile prediction) when the run succeeds, not only when
        it fails: a rerun of the same output with ``overwrite`` and other options of the
        fusion, calibration or writing (``coarse_weight``, ``fusion``, ``reference``...)
        fuses them again without predicting its tiles again (the model still loads, and
        predicts the pyramid levels' few tiles, which no checkpoint keeps). About 7.3 bytes
        a pixel of disk at the default overlap; delete the folder when done. Needs
        ``resume``; not with ``uncertainty`` (its spreads are never kept); a file run's
        (:func:`tiledepth.run`), not a batch's.
    output_kind : {'depth', 'height', 'inverse-depth'}
        What the output's values are; ``height`` is far minus depth.
    reference : str or None
        A DEM/DSM raster (heights, any CRS and resolution) to calibrate to metres.
    control : str or None
        A CSV of control points (x, y, z) to calibrate to metres.
    control_crs : str or None
        CRS of the control points' x, y; None = the output's CRS.
    anchor : {'model', 'reference'}
        The fusion's global anchor: the model's coarse prediction or the reference.
    overviews : bool
        Build average overviews in the output.
    cog : bool
        Write the output as a Cloud Optimized GeoTIFF.
    uncertainty : bool
        Add the ensemble's uncertainty as a second band (needs ensemble >= 2; Marigold,
        3), or that of a loaded model that gives its own (``predict_with_uncertainty``,
        no ``ensemble``; it needs none).
    preview : bool
        Also write ``<output stem>.png``, a colour-mapped quicklook.
    hillshade : bool
        Shade the preview with a hillshade of the output.
    """

    model: Any = DEFAULT_MODEL
    tile_size: int = 768
    overlap: float = 0.25
    coarse_size: int | None = None
    coarse_weight: float = 0.6
    anchor_calls: int = 3
    anchor_blur: float | str | None = None
    alignment: Literal["auto", "affine", "bilinear"] = "auto"
    fusion: Literal["tiles", "gradient"] = "tiles"
    robust: bool = True
    retry_flagged: bool = True
    estimate_weights: bool = True
    overlap_weighting: Literal["uniform", "blend"] = "uniform"
    bend_from_anchor: bool = False
    pyramid: bool = True
    batch_size: int | Literal["auto"] = 4
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    steps: int | None = None
    ensemble: int = 1
    seed: int = 0
    bands: tuple[int, ...] | None = None
    scratch: str | None = None
    scale: float = 1.0
    workers: int = 2
    memory: int = 512
    nodata: float | None = None
    mask: str | None = None
    resume: bool = True
    keep_predictions: bool = False
    output_kind: Literal["depth", "height", "inverse-depth"] = "depth"
    reference: str | None = None
    control: str | None = None
    control_crs: str | None = None
    anchor: Literal["model", "reference"] = "model"
    overviews: bool = True
    cog: bool = False
    uncertainty: bool = False
    preview: bool = False
    hillshade: bool = False

    def __post_init__(self) -> None:
        # a whole number for a float option (`scale: 1` in a config, `nodata=0` in the
        # library) is that float, as the CLI gives it: the same tags ("1.0", not "1") and
        # the same checkpoint key (json writes 1 and 1.0 apart). Here, not in make_options:
        # Options(...) and dataclasses.replace come through here too. Anything else
        # ("auto", None, a bool, text) is left to check() to judge.
        for name in FLOAT_OPTIONS:
            value = getattr(self, name)
            if (isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and type(value) is not float):
                try:
                    object.__setattr__(self, name, float(value))
                except OverflowError:  # an int too large for a float: left as given
                    pass
        # NumPy's integers and booleans (a tile size computed with NumPy, np.False_) are
        # the Python values they stand for, as NumPy's floats are above: check() takes
        # them, and the tags and the checkpoint key see plain ints and bools
        for name in INT_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and type(value) not in (int, bool):
                object.__setattr__(self, name, int(value))
        for name in BOOL_OPTIONS:
            value = getattr(self, name)
            if not isinstance(value, bool) and _numpy_bool(value):
                object.__setattr__(self, name, bool(value))
        bands = self.bands
        if hasattr(bands, "tolist"):  # a NumPy array or scalar: its Python ints (or floats)
            bands = bands.tolist()
        if isinstance(bands, int) and not isinstance(bands, bool):  # one band, as
            bands = (bands,)  # make_options reads an int
        if isinstance(bands, (list, tuple)):
            bands = tuple(int(b) if isinstance(b, numbers.Integral) and not isinstance(b, bool)
                          else b for b in bands)
        if bands is not self.bands:
            object.__setattr__(self, "bands", bands)
        # a device in any case (CPU, CUDA:0, as people write it) is torch's lower-case name:
        # torch.device("CUDA") fails, and `--device CPU` was refused (any other name is left
        # as typed, for check() to name it)
        if isinstance(self.device, str) and self.device.lower().split(":")[0] in DEVICES:
            object.__setattr__(self, "device", self.device.lower())

    @property
    def coarse_long_side(self) -> int:
        return self.coarse_size if self.coarse_size is not None else self.tile_size

    def check(self) -> Options:
        """Raise OptionError naming the first bad option; return self."""
        _check_types(self)
        _check_int("tile_size", self.tile_size, MIN_TILE)
        _check_max_tile("tile_size", self.tile_size)
        if not 0 <= self.overlap < MAX_OVERLAP:
            raise OptionError(
                f"overlap must be in [0, {MAX_OVERLAP}) (a fraction of the tile), "
                f"got {self.overlap}"
            )
        if self.coarse_size is not None:
            _check_int("coarse_size", self.coarse_size, MIN_TILE)
            _check_max_tile("coarse_size", self.coarse_size)
        if not self.coarse_weight > 0:
            raise OptionError(f"coarse_weight must be a finite number > 0, "
                              f"got {self.coarse_weight!r}")
        _check_int("anchor_calls", self.anchor_calls, 1)
        if self.anchor_calls > MAX_ANCHOR_CALLS:
            raise OptionError(f"anchor_calls must be <= {MAX_ANCHOR_CALLS} (each is a model "
                              f"call of the coarse image; 3 is the default), got "
                              f"{self.anchor_calls}")
        if self.anchor_blur not in (None, "auto") and not self.anchor_blur >= 0:
            raise OptionError(f"anchor_blur must be a number >= 0 (pixels of the anchor) or "
                              f"auto, got {self.anchor_blur!r}")
        if self.anchor_blur not in (None, "auto") and self.anchor_blur > MAX_ANCHOR_BLUR:
            raise OptionError(f"anchor_blur must be <= {MAX_ANCHOR_BLUR:g} pixels of the anchor "
                              f"(a model's blur is a few: auto picks at most 6; a larger one "
                              f"only slows the run), got {self.anchor_blur!r}")
        if self.alignment not in alignments():
            raise OptionError(f"alignment must be one of {', '.join(alignments())}, "
                              f"got {self.alignment!r}")
        if self.fusion not in FUSIONS:
            raise OptionError(f"fusion must be one of {', '.join(FUSIONS)}, "
                              f"got {self.fusion!r}")
        if self.overlap_weighting not in overlap_weightings():
            raise OptionError(f"overlap_weighting must be one of "
                              f"{', '.join(overlap_weightings())}, got {self.overlap_weighting!r}")
        # bend_from_anchor acts in one place (fusion/solve.py, _solve): only on bilinear
        # maps (affine statistics have one corner); with affine ones it changed no pixel,
        # only the output's BEND_FROM_ANCHOR tag (alignment auto choosing affine maps: a
        # warning and no tag, :func:`tiledepth.plan.settle_bend`)
        if self.bend_from_anchor and self.alignment == "affine":
            raise OptionError("bend_from_anchor (--bend-from-anchor) bends bilinear value maps "
                              "only: with alignment affine it would do nothing; leave it off, "
                              "or use alignment bilinear or auto")
        if self.batch_size != "auto":
            _check_int("batch_size", self.batch_size, 1, also="or 'auto'")
        if self.steps is not None:
            _check_int("steps", self.steps, 1)
        _check_int("ensemble", self.ensemble, 1)
        _check_int("seed", self.seed, 0)
        if self.seed != Options.seed:  # (0, the default, cannot be told from one given)
            self._check_seed()
        _check_int("workers", self.workers, 0)
        _check_int("memory", self.memory, 0)
        if not 0 < self.scale <= 1:
            raise OptionError(f"scale must be a number in (0, 1], got {self.scale!r}")
        dev = str(self.device)
        # exactly a name or cuda:N (cuda:abc, cuda:, cuda:-1, cpu:0, mps:3 passed here on the
        # name before the colon and failed in torch; no leading 0: torch refuses cuda:01)
        if dev not in DEVICES and re.fullmatch(r"cuda:(0|[1-9][0-9]*)", dev) is None:
            raise OptionError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {dev!r}")
        if self.dtype not in DTYPES:
            raise OptionError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.bands is not None:
            if len(self.bands) not in (1, 3) or not all(
                isinstance(b, int) and b >= 1 for b in self.bands
            ):
                raise OptionError(
                    f"bands must be 1 or 3 band numbers from 1, e.g. 1,2,3; got {self.bands!r}"
                )
        self._check_scratch()
        self._check_outputs()
        return self

    def _check_scratch(self) -> None:
        # '' is Path('.'): the current folder, silently, not the output's folder (the
        # default) that leaving it unset gives
        if isinstance(self.scratch, str) and not self.scratch.strip():
            raise OptionError(f"scratch (--scratch) is empty ({self.scratch!r}); give a "
                              "folder path, or leave it unset (the output's folder)")
        # a file was told "scratch folder does not exist", which it does, as a file
        if self.scratch is not None and os.path.exists(self.scratch) \
                and not os.path.isdir(self.scratch):
            raise OptionError(f"{self.scratch}: scratch (--scratch) is a file, not a folder; "
                              "give a folder, or leave it unset (the output's folder)")

    def _check_outputs(self) -> None:
        if self.output_kind not in OUTPUT_KINDS:
            raise OptionError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, "
                              f"got {self.output_kind!r}")
        if self.anchor not in ANCHORS:
            raise OptionError(f"anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        if self.reference is not None and self.control is not None:
            raise OptionError("reference and control both given; calibrate with one of them")
        if self.anchor == "reference" and self.reference is None:
            raise OptionError("anchor 'reference' needs a reference raster (--reference DEM.tif)")
        if self.control_crs is not None and self.control is None:
            raise OptionError("control_crs given without control points (--control points.csv)")
        if self.scale != 1 and (self.reference or self.control or self.uncertainty):
            raise OptionError("scale below 1 does not combine with reference, control or "
                              "uncertainty yet; run at scale 1.0 for those")
        if self.output_kind == "inverse-depth" and (self.reference or self.control):
            raise OptionError("output_kind inverse-depth cannot be calibrated to metres; "
                              "use height or depth with --reference or --control")
        if self.uncertainty:  # a deterministic model first: no ensemble would give it one
            from tiledepth.models import deterministic_family

            family = deterministic_family(self.model)
            if family is not None:
                raise OptionError(f"uncertainty: {family} gives no uncertainty (it is "
                                  "deterministic, every prediction the same); leave uncertainty "
                                  "off, or use Marigold with ensemble 3 or more")
        if self.uncertainty and self.ensemble < 2 and not self._own_uncertainty():
            raise OptionError(f"uncertainty needs ensemble >= 2 (predictions to compare; "
                              f"Marigold: 3 or more), got ensemble {self.ensemble}")
        if self.hillshade and not self.preview:
            raise OptionError("hillshade shades the preview; pass preview too (--preview)")
        if self.keep_predictions and self.uncertainty:
            raise OptionError("keep_predictions (--keep-predictions) keeps predictions for a "
                              "rerun, and an uncertainty run (--uncertainty) is never resumed; "
                              "drop one of them")
        if self.keep_predictions and not self.resume:
            raise OptionError("keep_predictions (--keep-predictions) needs resume; drop "
                              "--no-resume (resume: false) or --keep-predictions")

    def _check_seed(self) -> None:
        """Refuse a seed for a deterministic model (Depth Anything, Depth Pro): it draws no
        noise, so the seed changed no pixel, only the output's SEED tag."""
        from tiledepth.models import deterministic_family

        family = deterministic_family(self.model)
        if family is not None:
            raise OptionError(
                f"seed={self.seed}: {family} is deterministic and draws no noise, a seed would "
                "change nothing; leave seed unset (0)"
            )

    def _own_uncertainty(self) -> bool:
        """Whether ``model`` is a loaded model that gives its own uncertainty, with no
        ensemble (:func:`tiledepth.uncertainty.gives_own_uncertainty`): it needs none, and
        runs none whatever ``ensemble`` says."""
        from tiledepth.uncertainty import gives_own_uncertainty

        return self._model_object() is not None and gives_own_uncertainty(self.model)

    def _model_object(self) -> Any:
        """``model`` where it is a loaded model (used as it is, see
        :func:`tiledepth.plan.open_model`), else None."""
        from tiledepth.protocols import DepthModel

        return self.model if isinstance(self.model, DepthModel) else None

    def provenance(self) -> dict[str, str]:
        """The options worth recording in the output's tags."""
        return {
            "TILE_SIZE": str(self.tile_size),
            "OVERLAP": str(self.overlap),
            "COARSE_SIZE": str(self.coarse_long_side),
            "COARSE_WEIGHT": str(self.coarse_weight),
            "ANCHOR_CALLS": str(self.anchor_calls),
            "ANCHOR_BLUR": "auto" if self.anchor_blur in (None, "auto") else str(self.anchor_blur),
            "ALIGNMENT": self.alignment,
            **({"FUSION": self.fusion} if self.fusion != "tiles" else {}),
            "ROBUST": str(self.robust),
            **({"RETRY_FLAGGED": "False"} if not self.retry_flagged else {}),  # on: untagged
            # always: off was untagged before it became the default
            "ESTIMATE_WEIGHTS": str(self.estimate_weights),
            **({"OVERLAP_WEIGHTING": self.overlap_weighting}
               if self.overlap_weighting != "uniform" else {}),
            **({"BEND_FROM_ANCHOR": "True"} if self.bend_from_anchor else {}),
            "PYRAMID": str(self.pyramid),
            "STEPS": "default" if self.steps is None else str(self.steps),
            # a loaded model runs with its own ensemble and seed (where it has them); one
            # that gives its own uncertainty runs none (1), whatever ensemble says
            "ENSEMBLE": str(getattr(self._model_object(), "ensemble",
                                    1 if self._own_uncertainty() else self.ensemble)),
            "SEED": str(getattr(self._model_object(), "seed", self.seed)),
            "SCALE": str(self.scale),
            "OUTPUT_KIND": self.output_kind,
            "ANCHOR": self.anchor,
            **({"BANDS": ",".join(str(b) for b in self.bands)} if self.bands is not None
               else {}),  # given only: the default outputs' tags as before
            **({"NODATA": _number_text(self.nodata)} if self.nodata is not None else {}),
            # the file's name only: the path as typed (in/mask.tif, ./in/mask.tif, its
            # absolute path) would give one mask's outputs other bytes
            **({"MASK": Path(self.mask).name} if self.mask is not None else {}),
        }


OPTION_NAMES = tuple(f.name for f in fields(Options))
#: The options whose numbers are floats (``float``, ``float | None``, ``float | str | None``:
#: not one that also takes an ``int``), which :class:`Options` stores as floats.
FLOAT_OPTIONS = tuple(f.name for f in fields(Options)
                      if "float" in (parts := str(f.type).split(" | ")) and "int" not in parts)
#: The options that take a whole number (or None, or ``auto``).
INT_OPTIONS = tuple(f.name for f in fields(Options) if "int" in str(f.type).split(" | "))
#: The options that take true or false.
BOOL_OPTIONS = tuple(f.name for f in fields(Options) if str(f.type) == "bool")
#: The options that take a number or ``auto`` (the CLI's ``OrAuto``), whose ``auto``
#: :func:`make_options` reads in any case, as the command line does: ``anchor_blur: AUTO``
#: in a config was refused where ``--anchor-blur AUTO`` ran.
AUTO_OPTIONS = ("anchor_blur", "batch_size")


def _number_text(value: float) -> str:
    """``value`` as text that reads back as the same number: ``%g`` where that is exact (the
    tags of every such value as before: ``0``, ``-9999``, ``-3.4e+38``), else the shortest
    round-trip form (``%g`` wrote 16777215 as ``1.67772e+07``), an integer without ``.0``.

    Examples
    --------
    >>> _number_text(0), _number_text(-9999.0), _number_text(16777215.0), _number_text(0.1)
    ('0', '-9999', '16777215', '0.1')
    """
    text = f"{value:g}"
    if float(text) != value:
        text = repr(float(value)).removesuffix(".0")
    return text


#: Options that set only Marigold's sampling, the families they do nothing for and how
#: messages name those (:func:`tiledepth.models.registry.family_of`).
_MARIGOLD_ONLY = ("steps", "ensemble", "seed")
_NOT_MARIGOLD = {"depth_anything": "Depth Anything (deterministic, a single pass)",
                 "depth_pro": "Depth Pro (deterministic, a single pass)",
                 "callable": "a Python callable"}


def _skip_inapplicable(merged: dict[str, Any], from_config: set[str],
                       config: str | os.PathLike) -> None:
    """Drop from ``merged`` the Marigold-only options the config file set (``from_config``)
    for a model they do nothing for, with an info line: a preset (``steps: 1``,
    ``ensemble: 5``) serves every model (the zero-noise ``marigold-e2e-ft``: its
    ensemble and seed, :func:`_skip_for_zero_noise`). Given as flags or keywords they stay, and are
    refused where the model is known (steps, ensemble, seed of a deterministic model; steps
    and ensemble of a callable, whose seed is only recorded, with an info line where it
    loads)."""
    from tiledepth.protocols import DepthModel

    model = merged.get("model", Options.model)
    if isinstance(model, DepthModel):  # a loaded model, which runs as it was loaded
        _skip_for_object(model, merged, from_config, config)
        return
    keys = [k for k in _MARIGOLD_ONLY
            if k in from_config and merged[k] != getattr(Options, k)]
    if not keys:
        return
    from tiledepth.models.registry import CALLABLE, family_of

    family = family_of(merged.get("model", Options.model))
    if family == "marigold":  # marigold-e2e-ft (zero noise): deterministic, one prediction
        _skip_for_zero_noise(merged, keys, config)
        return
    if family not in _NOT_MARIGOLD:
        return
    if family == CALLABLE:  # (ensemble stays with uncertainty: its check says what it needs)
        keys = [k for k in keys if k == "steps" or (k == "ensemble"
                                                    and not merged.get("uncertainty"))]
    for key in keys:
        _skipped("%s: %s %s skipped: it sets Marigold only, and the model is %s", config,
                 key, merged.pop(key), _NOT_MARIGOLD[family])


def _skipped(message: str, config: str | os.PathLike, *args: Any) -> None:
    """Say at info level that the config's key was skipped (``message % (config, *args)``),
    once for a :class:`ReadConfig`: the run it is passed on to settles its options again."""
    said = getattr(config, "said", None)
    if said is not None:
        line = message % (config, *args)
        if line in said:
            return
        said.add(line)
    log.info(message, config, *args)


def _skip_for_zero_noise(merged: dict[str, Any], keys: list[str],
                         config: str | os.PathLike) -> None:
    """Drop from ``merged`` the ``ensemble`` and ``seed`` among ``keys`` (set by the config
    file) where the Marigold model runs from zero noise (``marigold-e2e-ft``, its hub id or a
    folder holding it), with an info line: it draws no noise and predicts the same map each
    time, so the loader refuses both, and the quality preset's ``ensemble: 5`` (or a
    config's ``seed``) was refused for it, blaming an option never typed. Its steps stay."""
    from tiledepth.models import deterministic_family

    keys = [k for k in keys if k in ("ensemble", "seed")]
    family = deterministic_family(merged.get("model", Options.model)) if keys else None
    if family is None:  # a diffusion Marigold: its noise is seeded, its members differ
        return
    for key in keys:
        _skipped("%s: %s %s skipped: the model %s is %s, deterministic (it draws no noise)",
                 config, key, merged.pop(key), merged.get("model", Options.model), family)


def _skip_for_object(model: Any, merged: dict[str, Any], from_config: set[str],
                     config: str | os.PathLike) -> None:
    """Drop from ``merged`` the loading options (:data:`tiledepth.plan.LOADING_OPTIONS`) the
    config file set that the loaded model object ``model`` cannot take, with an info line,
    as :func:`_skip_inapplicable` does for a model they do nothing for: the presets' ``steps:
    1`` and ``ensemble: 5`` were refused for such an object ("steps=1 (it has none) would do
    nothing"), blaming options never typed. What :func:`tiledepth.plan.check_object_options`
    lets pass stays (the model's own value; a batch size it sets on the model), and so does
    everything given as a flag or keyword, for that check to refuse."""
    from tiledepth.plan import LOADING_OPTIONS, check_object_options, own_option, set_plain

    uncertainty = merged.get("uncertainty") is True
    for key in LOADING_OPTIONS:
        if key not in from_config or merged[key] == getattr(Options, key):
            continue
        own = own_option(model, key)
        if key == "batch_size":  # tiles per call: taken where the model's is a plain
            # attribute (tried with its own value: nothing set here, the check sets it)
            value = merged[key]
            auto = isinstance(value, str) and value.strip().lower() == "auto"
            takes = auto or value == own or (own is not None and set_plain(model, key, own))
        else:
            trial = dataclasses.replace(Options(), model=model, uncertainty=uncertainty,
                                        **{key: merged[key]})
            try:
                check_object_options(model, trial)
                takes = True
            except OptionError:
                takes = False
        if not takes:
            _skipped("%s: %s %s skipped: the model is a loaded model, run as it was loaded "
                     "(it has %s)", config, key, merged.pop(key),
                     "none" if own is None else own)


def make_options(config: str | os.PathLike | None = None, *,
                 config_data: dict[str, Any] | None = None, **options: Any) -> Options:
    """Build checked Options from a config file and keyword options (which win).

    Parameters
    ----------
    config : str or os.PathLike, optional
        A YAML file of ``option: value`` lines. ``tile_size: null`` (as in the
        presets) is the model's native size, as when the key is left out.
    config_data : dict, optional
        ``config`` as :func:`load_config` read it already, used instead of reading
        the file again (a config from a pipe reads once); ``config`` then only names it.
    **options
        Option values; None means "not given" and leaves the config's or the
        default value.

    Examples
    --------
    >>> make_options(tile_size=512).overlap
    0.25
    """
    merged: dict[str, Any] = {}
    if config is not None:
        merged.update(load_config(config) if config_data is None else config_data)
    for key, value in options.items():
        if key not in OPTION_NAMES:
            raise OptionError(_unknown(key, "option"))
        if value is not None:
            merged[key] = value
    if config is not None:
        _skip_inapplicable(merged, set(merged) - {k for k, v in options.items()
                                                  if v is not None}, config)
    if merged.get("tile_size") is None:  # a built-in model's native resolution, else the
        merged.pop("tile_size", None)  # default: a config's `tile_size: null` as no key
        from tiledepth.models.registry import native_tile_size

        native = native_tile_size(merged.get("model", Options.model))
        if native is not None:
            merged["tile_size"] = native
    for key in AUTO_OPTIONS:  # AUTO, Auto in a config or a keyword: as the CLI's OrAuto reads
        value = merged.get(key)
        if isinstance(value, str) and value.strip().lower() == "auto":
            merged[key] = "auto"
    if _device(merged.get("device")) and not isinstance(merged["device"], str):
        merged["device"] = str(merged["device"])  # a torch.device: "cpu", "cuda:0", as text
    if isinstance(merged.get("bands"), str):  # `bands: 1,2,3` in a config: as --bands reads
        try:
            merged["bands"] = parse_bands(merged["bands"])
        except ValueError:  # left as text: the type check names it
            pass
    if isinstance(merged.get("bands"), (list, int)):
        b = merged["bands"]
        merged["bands"] = (b,) if isinstance(b, int) else tuple(b)
    for key in ("scratch", "reference", "control"):
        if isinstance(merged.get(key), os.PathLike):
            merged[key] = os.fspath(merged[key])
    try:
        return dataclasses.replace(Options(), **merged).check()
    except OptionError as exc:  # a bad value from the config file names the file
        if config is not None and str(exc).split()[0] in set(merged) - {
                k for k, v in options.items() if v is not None}:
            raise OptionError(f"{config}: {exc}") from exc
        raise


class ReadConfig(str):
    """A config file's path that carries its options as :func:`load_config` read them, to
    pass on as ``config`` where the config is read again (:func:`tiledepth.run` inside a
    ``--mosaic``): :func:`load_config` gives back what it carries, reading nothing. A
    config from a pipe (``--config <(...)``, ``/dev/stdin``) reads empty a second time,
    and the run would go on without its options. As text it is the path, for messages.

    Examples
    --------
    >>> config = ReadConfig("fast.yaml", {"tile_size": 512})
    >>> config, load_config(config)
    ('fast.yaml', {'tile_size': 512})
    """

    data: dict[str, Any]
    #: The info lines said of its keys (a key skipped for the model): each once.
    said: set[str]

    def __new__(cls, path: str | os.PathLike, data: dict[str, Any]) -> ReadConfig:
        self = super().__new__(cls, os.fspath(path))
        self.data, self.said = dict(data), set()
        return self


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config: a mapping of option names (``tile_size`` or ``tile-size``).

    A :class:`ReadConfig` is not read again: its options are returned."""
    import yaml

    if isinstance(path, ReadConfig):
        return dict(path.data)
    if not isinstance(path, (str, os.PathLike)):  # Path() said only "expected str, ..."
        raise OptionError(f"config must be the path of a YAML file of options (str or "
                          f"os.PathLike), got {type(path).__name__}; pass options as keywords")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise OptionError(f"{path}: cannot read the config ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise OptionError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); a "
                          "config is a YAML text file of options") from exc
    try:
        data = yaml.load(text, Loader=_config_loader())
    except yaml.YAMLError as exc:
        raise OptionError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"{path}: a config must be a mapping of option: value lines")
    _refuse_flags_elsewhere(path, [str(key) for key in data])
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in _COMMAND_FLAGS:  # not "did you mean 'bands'" for bounds
            raise OptionError(f"{path}: " + _command_flag(str(key), name))
        if name not in OPTION_NAMES:
            raise OptionError(f"{path}: " + _unknown(str(key), "key"))
        out[name] = value
    return out


#: A number in exponent notation without a dot or without a sign in the exponent (``1e-1``,
#: ``-3.4e38``, ``1e3``, ``1.5e3``): text to YAML 1.1, which PyYAML reads, a float to
#: YAML 1.2 and on the command line. ``.5``, ``1.5e-3`` and ``.inf`` were floats already.
_EXPONENT_FLOAT = r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"


@functools.cache
def _config_loader() -> type:
    """PyYAML's safe loader that also reads exponent notation as a float (YAML 1.2's rule),
    as the command line takes it: ``nodata: -3.4e38`` was the text '-3.4e38', refused where
    ``--nodata -3.4e38`` ran. Every other scalar reads as before (YAML 1.1: ``yes`` a bool)."""
    import re

    import yaml

    class ConfigLoader(yaml.SafeLoader):
        pass

    # after the YAML 1.1 float rule (add_implicit_resolver copies the class's table first)
    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_EXPONENT_FLOAT),
                                       list("-+0123456789."))
    return ConfigLoader


#: The flags of ``tiledepth run`` and ``tiledepth batch`` that are no options (a config holds
#: what every raster of a run shares), each as the command line spells it: a config's
#: ``bounds:`` was told "did you mean 'bands'?", ``overwrite:`` "did you mean 'overviews'?".
_COMMAND_FLAGS = {
    "input": "INPUT", "inputs": "INPUTS", "output": "-o/--output", "output_dir": "-o/--output-dir",
    "bounds": "--bounds", "bounds_crs": "--bounds-crs", "aoi": "--aoi", "asset": "--asset",
    "mosaic": "--mosaic", "split": "--split", "overwrite": "--overwrite", "config": "--config",
    "progress": "--progress/--no-progress", "verbose": "-v/--verbose", "quiet": "-q/--quiet",
    "debug": "--debug", "glob": "--glob", "on_error": "--on-error", "shard": "--shard",
    "executor": "--executor", "ray_address": "--ray-address", "ray_actors": "--ray-actors",
}
#: Those of them that say which raster, which output or which part of it: one run's own.
_PER_RASTER = ("input", "inputs", "output", "output_dir", "bounds", "bounds_crs", "aoi", "asset")


#: Set by a command that lacks some of the flags of :data:`_COMMAND_FLAGS` (``rio depth``:
#: ``--mosaic``, ``--split``; ``tiledepth run``: ``batch``'s; ``info`` and ``batch``: those of
#: the others they have not): its name, those flags' config keys (or a mapping of each to the
#: flag as the command lacks it: ``batch`` has ``-o``, not ``--output``) and what to use
#: instead (text, or a function of the config's path and the flags found that gives it). A
#: config that holds any of them is refused in one line that says so (:func:`load_config`),
#: not told to give the flag on the command line, where the command has no such flag.
FLAGS_ELSEWHERE: ContextVar[
    tuple[str, tuple[str, ...] | Mapping[str, str], str | Callable[[str, list[str]], str]]
    | None] = ContextVar("tiledepth_flags_elsewhere", default=None)


def _refuse_flags_elsewhere(path: str | os.PathLike, keys: list[str]) -> None:
    """Raise OptionError where the config at ``path`` holds ``keys`` that are flags the
    running command does not have (:data:`FLAGS_ELSEWHERE`), naming every one.

    Examples
    --------
    >>> token = FLAGS_ELSEWHERE.set(("rio depth", ("mosaic", "split"), "use tiledepth run"))
    >>> try:
    ...     _refuse_flags_elsewhere("c.yaml", ["tile_size", "split", "mosaic"])
    ... except OptionError as exc:
    ...     print(exc)
    c.yaml: 'split', 'mosaic' are not config keys, and rio depth has no --split or --mosaic; use
    tiledepth run; remove them from the config
    >>> FLAGS_ELSEWHERE.reset(token)
    """
    elsewhere = FLAGS_ELSEWHERE.get()
    if elsewhere is None:
        return
    command, flags, instead = elsewhere
    found = [key for key in keys if key.replace("-", "_") in flags]
    if not found:
        return
    one = len(found) == 1
    named = [(flags if isinstance(flags, Mapping) else _COMMAND_FLAGS)[key.replace("-", "_")]
             for key in found]
    if callable(instead):
        instead = instead(os.fspath(path), named)
    raise OptionError(
        f"{path}: {', '.join(map(repr, found))} "
        f"{'is not a config key' if one else 'are not config keys'}, and {command} has no "
        f"{' or '.join(named)}; {instead}; remove {'it' if one else 'them'} from the config")


def _command_flag(key: str, name: str) -> str:
    """The message for a config key that is a command-line flag, not an option.

    Examples
    --------
    >>> print(_command_flag("overwrite", "overwrite"))
    'overwrite' is not a config key: --overwrite is a command flag; give it on the command line,
    not in a config
    """
    what = ("per raster (one run's input, output or area)" if name in _PER_RASTER
            else "a command flag")
    return (f"{key!r} is not a config key: {_COMMAND_FLAGS[name]} is {what}; give it on the "
            "command line, not in a config")


def _unknown(key: str, what: str) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("-", "_"), OPTION_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {key!r}{hint}; valid: {', '.join(OPTION_NAMES)}"


def _check_int(name: str, value: Any, minimum: int, *, also: str = "") -> None:
    also = f" {also}" if also else ""
    if not isinstance(value, int) or isinstance(value, bool):
        raise OptionError(f"{name} must be a whole number{also}, got {value!r}")
    if value < minimum:
        raise OptionError(f"{name} must be >= {minimum}{also}, got {value}")


def _check_max_tile(name: str, value: int) -> None:
    if value > MAX_TILE:
        raise OptionError(
            f"{name} must be <= {MAX_TILE} px (one {MAX_TILE} px tile is a "
            f"{MAX_TILE ** 2 * 12 / 2 ** 30:.2g} GiB model input before the model's own memory, "
            f"times the batch size), got {value}")


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numpy_bool(v: Any) -> bool:
    """Whether ``v`` is a NumPy boolean scalar (``np.True_``), without importing NumPy."""
    return getattr(v, "dtype", None) is not None and v.dtype.kind == "b" \
        and getattr(v, "ndim", None) == 0


def _finite(v: Any) -> bool:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return False
    try:  # an integer too large for a float (a config's 1 followed by 400 zeros) is not one
        return math.isfinite(v)
    except OverflowError:
        return False


def _path(v: Any) -> bool:
    return isinstance(v, (str, os.PathLike))


def _model(v: Any) -> bool:
    from tiledepth.protocols import DepthModel

    return _path(v) or callable(v) or isinstance(v, DepthModel)


def _device(v: Any) -> bool:
    # a torch.device too, which make_options turns into its text
    return isinstance(v, str) or type(v).__name__ == "device"


def _crs(v: Any) -> bool:
    from rasterio.crs import CRS

    return isinstance(v, (str, CRS)) or _whole(v)


def _optional(test):
    return lambda v: v is None or test(v)


def _choice(values: Callable[[], tuple[str, ...]]) -> tuple[Any, Callable[[], str]]:
    return (lambda v: isinstance(v, str)), lambda: f"one of {', '.join(values())}"


_BOOL = (lambda v: isinstance(v, bool), "true or false")
#: What each option's value may be, checked first and in one place (a config file's
#: ``scratch: 5`` or ``model: [1, 2]`` is refused here, not deep inside a run): a test for
#: its type (numbers also finite) and how the message says what is allowed (text, or for a
#: choice a function that lists its registry when a message needs it).
TYPES: dict[str, tuple[Any, str]] = {
    "model": (_model, "a model name, hub id, folder or package.module:function (text), "
                      "a pipeline, a callable or a loaded model (an object with name, "
                      "batch_size and predict(batch, keys))"),
    "tile_size": (_whole, "a whole number"),
    "overlap": (_finite, "a finite number"),
    "coarse_size": (_optional(_whole), "a whole number or null (the tile size)"),
    "coarse_weight": (_finite, "a finite number"),
    "anchor_calls": (_whole, "a whole number"),
    "anchor_blur": (_optional(lambda v: v == "auto" or _finite(v)),
                    "a finite number, auto or null (automatic)"),
    "alignment": _choice(alignments),
    "fusion": _choice(lambda: FUSIONS),
    "robust": _BOOL,
    "retry_flagged": _BOOL,
    "estimate_weights": _BOOL,
    "overlap_weighting": _choice(overlap_weightings),
    "bend_from_anchor": _BOOL,
    "pyramid": _BOOL,
    "batch_size": (lambda v: _whole(v) or (isinstance(v, str) and v == "auto"),
                   "a whole number or 'auto'"),
    "device": (_device, "text (auto, cpu, cuda, cuda:N or mps)"),
    "dtype": _choice(lambda: DTYPES),
    "steps": (_optional(_whole), "a whole number or null (the checkpoint's)"),
    "ensemble": (_whole, "a whole number"),
    "seed": (_whole, "a whole number"),
    "bands": (_optional(lambda v: isinstance(v, tuple) and all(_whole(b) for b in v)),
              "1 or 3 band numbers from 1, e.g. 1,2,3"),
    "scratch": (_optional(_path), "a folder path or null"),
    "scale": (_finite, "a finite number"),
    "workers": (_whole, "a whole number"),
    "memory": (_whole, "a whole number (MiB)"),
    "resume": _BOOL,
    "keep_predictions": _BOOL,
    "output_kind": _choice(lambda: OUTPUT_KINDS),
    "reference": (_optional(_path), "a raster path or null"),
    "control": (_optional(_path), "a CSV path or null"),
    "control_crs": (_optional(_crs), "a CRS such as EPSG:4326, or null"),
    "anchor": _choice(lambda: ANCHORS),
    "overviews": _BOOL,
    "cog": _BOOL,
    "uncertainty": _BOOL,
    "preview": _BOOL,
    "hillshade": _BOOL,
    "nodata": (_optional(_finite), "a finite number or null (the input's own)"),
    "mask": (_optional(_path), "a mask raster path or null"),
}


def _check_types(opts: Options) -> None:
    """Raise OptionError naming the first option whose value has the wrong type."""
    for name in OPTION_NAMES:
        test, allowed = TYPES[name]
        value = getattr(opts, name)
        if not test(value):
            shown = f"{type(value).__name__} {value!r}" if isinstance(
                value, (list, dict, tuple, set)) else repr(value)
            allowed = allowed() if callable(allowed) else allowed
            raise OptionError(f"{name} must be {allowed}, got {shown}")
