"""The anchor made of several model calls of the coarse image.

Every tile is aligned to the coarse prediction, so the coarse call's own error (a
per-call tone curve, a warp, a dropped region: the draw of one sample) reaches the
whole fused map's low frequencies, and no overlap term can take it out. Several calls of
the same coarse image, each mapped onto the first by a robust scale and shift (an
affine-invariant model's calls differ by one), and their median at every pixel make an
anchor whose per-call error is partly averaged out, and from which a wrong patch of one
call (an inverted region) is voted out by the others. A model whose calls repeat exactly
gets its one call back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["MAP_K", "MAP_ROUNDS", "anchor_of_calls", "map_onto"]

#: Rounds of the robust scale-and-shift fit of one call onto another (:func:`map_onto`).
MAP_ROUNDS = 3
#: ... each fitted on the pixels within this many robust standard deviations of the last.
MAP_K = 3.0


def map_onto(y: np.ndarray, x: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Scale and shift taking ``y`` onto ``x`` on the ``valid`` pixels, robustly.

    Least squares over :data:`MAP_ROUNDS` rounds: on every pixel, then on the half that
    fits best, then on the pixels whose residual is within :data:`MAP_K` robust standard
    deviations (1.4826 times the median absolute deviation of the kept ones) of the median
    residual, so a region where one map is grossly wrong does not bend the fit.

    Parameters
    ----------
    y, x : ndarray of shape (h, w)
        Two predictions of the same image.
    valid : ndarray of shape (h, w), bool
        The pixels to fit on (those finite in both; at least two).

    Returns
    -------
    scale, shift : float
        ``scale * y + shift`` is ``y`` on ``x``'s values.

    Raises
    ------
    ValueError
        Fewer than 2 pixels finite in both, or ``y`` flat over them: no map to fit.

    Examples
    --------
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> y = 0.5 * x - 3
    >>> y[0, 0] = 4.5  # one wrong pixel (in range: the top value where the bottom is)
    >>> [round(v, 6) for v in map_onto(y, x, np.ones((4, 4), bool))]
    [2.0, 6.0]
    """
    both = valid & np.isfinite(x) & np.isfinite(y)  # (a model's NaN left out of the fit)
    yv, xv = y[both].astype(np.float64), x[both].astype(np.float64)
    keep = np.ones(yv.size, bool)
    scale, shift = 1.0, 0.0
    tiny = 1e-12 * max(float(np.ptp(xv)) if xv.size else 0.0, 1e-300)
    for k in range(MAP_ROUNDS):
        if keep.sum() < 2 or not np.ptp(yv[keep]) > 0:
            if k == 0:
                raise ValueError("no scale and shift to fit: fewer than 2 pixels finite in "
                                 "both, or one of them flat there")
            break
        design = np.stack([yv[keep], np.ones(int(keep.sum()))], axis=1)
        scale, shift = (float(v) for v in np.linalg.lstsq(design, xv[keep], rcond=None)[0])
        r = scale * yv + shift - xv
        dev = np.abs(r - np.median(r[keep]))
        if k == 0:  # the better half first: a wrong region bends the first fit
            keep = dev <= np.median(dev)
        else:
            keep = dev <= MAP_K * max(1.4826 * float(np.median(dev[keep])), tiny)
    return scale, shift


def anchor_of_calls(calls: Sequence[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """One anchor from several calls of the coarse image: each mapped onto the first
    (:func:`map_onto`), then the median at every pixel.

    Parameters
    ----------
    calls : sequence of ndarray of shape (h, w)
        The model's predictions of the same coarse image (at least one; a NaN of one call
        is left out of its pixel's median).
    valid : ndarray of shape (h, w), bool
        The image's valid pixels (the maps are fitted there).

    Returns
    -------
    ndarray of shape (h, w), float32
        In the first call's values; the first call itself where there is one, or where no
        other can be mapped onto it (:func:`map_onto`: a flat call, too few valid pixels).

    Examples
    --------
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> second, third = 2 * x + 1, x.copy()
    >>> third[1, 1] = -50.0  # one call's wrong pixel is outvoted
    >>> float(anchor_of_calls([x, second, third], np.ones((4, 4), bool))[1, 1])
    5.0
    """
    first = np.asarray(calls[0], dtype=np.float32)
    if len(calls) == 1:
        return first
    stack = np.empty((len(calls), *first.shape))  # float64: one cast, of the median
    stack[0] = first
    used = 1
    for call in calls[1:]:
        try:
            scale, shift = map_onto(call, first, valid)
        except ValueError:  # no map onto the first (a flat call, too few pixels): left out
            continue
        stack[used] = scale * np.asarray(call, dtype=np.float64) + shift
        used += 1
    if used == 1:
        return first
    stack = stack[:used]
    if np.isfinite(stack).all():
        return np.median(stack, axis=0).astype(np.float32)
    with warnings.catch_warnings():  # a pixel NaN in every call stays NaN, as in one call
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stack, axis=0).astype(np.float32)
