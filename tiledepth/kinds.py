"""Output kinds of depth models, and the space each is fused in.

A model declares what its numbers mean with a ``kind`` attribute:

``"depth"``
    Affine-invariant depth (Marigold): depth up to an unknown scale and shift,
    larger is farther.
``"disparity"``
    Affine-invariant disparity, i.e. inverse depth up to an unknown scale and
    shift, larger is nearer (Depth Anything V2, Marigold disparity checkpoints).
``"metric_depth"``
    Depth in metres (Depth Pro, Depth Anything V2 metric checkpoints).

The fusion aligns every kind in its own space: tiles of an affine-invariant
kind get a scale and a shift, solved on the values as predicted, so disparity
is aligned as disparity (inverting it first would turn the unknown shift into
a non-affine distortion no per-tile fit can undo). Metric depth already has its
frame; its tiles get a scale only, which ``benchmarks/model_spaces.py`` shows
beats both a scale and shift and no alignment at all (see BENCHMARKS.md).
Aligned to a reference raster (``--anchor reference``) instead of the model's
own coarse prediction, metric tiles get a scale and a shift too (:func:`fit_for`):
the anchor then holds the reference's heights (or metres below its top), a frame
a metric depth reaches only through a shift and, for heights, a negative scale.

Examples
--------
>>> FIT_FOR_KIND["disparity"], FIT_FOR_KIND["metric_depth"]
('scale_shift', 'scale')
>>> fit_for("metric_depth", reference=True)
'scale_shift'
>>> check_kind("metric_depth", "my model")
'metric_depth'
"""

from __future__ import annotations

from typing import Literal

from tiledepth.errors import ModelError

__all__ = ["FITS", "FIT_FOR_KIND", "KINDS", "LABELS", "VALUES", "Fit", "Kind", "check_kind",
           "fit_for", "kind_of"]

Kind = Literal["depth", "disparity", "metric_depth"]
#: Every output kind, in the order the docs list them.
KINDS: tuple[str, ...] = ("depth", "disparity", "metric_depth")

Fit = Literal["scale_shift", "scale", "none"]
#: Per-tile value maps the alignment can solve (see :func:`tiledepth.fusion.solve_alignment`).
FITS: tuple[str, ...] = ("scale_shift", "scale", "none")

#: The per-tile fit each kind is aligned with, against its own coarse prediction (against a
#: reference raster: :func:`fit_for`).
FIT_FOR_KIND: dict[str, str] = {
    "depth": "scale_shift",
    "disparity": "scale_shift",
    "metric_depth": "scale",
}

#: Short human-readable label of each kind (``tiledepth models``).
LABELS: dict[str, str] = {
    "depth": "affine-invariant depth",
    "disparity": "affine-invariant disparity",
    "metric_depth": "metric depth",
}

#: What the model's values mean, per kind: the ``TILEDEPTH_VALUES`` tag of an uncalibrated
#: run of output kind ``depth``, which writes them as fused (a disparity stays disparity; the
#: other output kinds are described by :data:`tiledepth.tags.UNCALIBRATED_VALUES`).
VALUES: dict[str, str] = {
    "depth": "relative depth in the coarse prediction's frame (larger is farther)",
    "disparity": "relative disparity (inverse depth) in the coarse prediction's frame "
                 "(larger is nearer)",
    "metric_depth": "metric depth in metres, scaled to the coarse prediction",
}


def check_kind(kind: object, name: str) -> str:
    """Return ``kind`` if it is one of :data:`KINDS`, else raise ModelError naming the model."""
    if kind not in KINDS:
        raise ModelError(
            f"model {name!r} declares kind={kind!r}; use one of {', '.join(KINDS)}"
        )
    return str(kind)


def kind_of(model: object) -> str:
    """The output kind of a model: its ``kind`` attribute, ``"depth"`` when it has none.

    Examples
    --------
    >>> kind_of(object())
    'depth'
    """
    return check_kind(getattr(model, "kind", "depth"), str(getattr(model, "name", model)))


def fit_for(kind: str, *, reference: bool = False) -> str:
    """The per-tile fit a model of ``kind`` is aligned with.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    reference : bool
        The tiles are aligned to a reference raster (``anchor="reference"``), not to
        the model's own coarse prediction.

    Returns
    -------
    str
        :data:`FIT_FOR_KIND`'s fit; with ``reference``, ``'scale_shift'`` for every kind:
        a scale alone keeps the model's metric frame, which the reference's heights are not
        in (heights grow upwards from their datum, the output kind ``depth`` counts metres
        below the reference's top), so a scale-only fit could not reach them.

    Examples
    --------
    >>> fit_for("metric_depth"), fit_for("metric_depth", reference=True)
    ('scale', 'scale_shift')
    >>> fit_for("depth", reference=True)
    'scale_shift'
    """
    fit = FIT_FOR_KIND[kind]
    return "scale_shift" if reference and fit == "scale" else fit
