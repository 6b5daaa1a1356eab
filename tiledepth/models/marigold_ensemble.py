"""Ensembling of Marigold's members: affine alignment to their median, on their device.

``ensemble=N`` runs N predictions per tile (each from its own seeded noise) and
merges them with an affine-aligned median. diffusers aligns the members with
BFGS, a ``.item()`` host sync per member pair per cost evaluation, tile by tile
(the official settings, 50 iterations to 1e-6, took seconds per tile and idled
the GPU); :func:`ensemble_depth` aligns them on their device instead, by least
squares against the members' median, without a host sync (:data:`ENSEMBLING`;
on synthetic members it is as close to the truth as BFGS with the official
settings, BENCHMARKS.md). The spread of the aligned members
(median absolute deviation, in the tile's own units) is the tile's uncertainty,
returned by :meth:`tiledepth.models.marigold_model.MarigoldModel.predict_with_uncertainty`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ENSEMBLING", "ensemble_depth"]

#: Ensembling settings, passed to :func:`ensemble_depth` in place of the pipeline's
#: (the solver's settings are those of the official Marigold repository, for comparison runs
#: with diffusers' own ``ensemble_depth``; :func:`ensemble_depth` ignores them).
ENSEMBLING = {"reduction": "median", "regularizer_strength": 0.02, "max_iter": 50, "tol": 1e-6,
              "max_res": 1024}


def ensemble_depth(depth: torch.Tensor, scale_invariant: bool = True,
                   shift_invariant: bool = True, output_uncertainty: bool = False,
                   reduction: str = "median", max_res: int | None = 1024, iterations: int = 3,
                   **_ignored: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Align ensemble members and merge them, on their device, without one host sync.

    A drop-in for diffusers' ``MarigoldDepthPipeline.ensemble_depth`` (same
    arguments and outputs), which aligns members with BFGS and a ``.item()`` per
    member pair per cost evaluation. Here each member is normalised to [0, 1]
    (the same start as diffusers'), then ``iterations`` times fitted by least
    squares (a scale and shift, or a scale) to the members' median, in float32
    on a copy at most ``max_res`` pixels on a side; the aligned members are
    reduced (median, or mean) and the result rescaled to [0, 1], as in diffusers.

    Parameters
    ----------
    depth : torch.Tensor of shape (E, 1, H, W)
        The members of one tile.
    scale_invariant, shift_invariant : bool
        The checkpoint's invariances.
    output_uncertainty : bool
        Also return the members' spread (median absolute deviation, or std with
        ``reduction="mean"``), in the output's units.
    reduction : {'median', 'mean'}
    max_res : int, optional
        Longest side the fit sees.
    iterations : int
        Fits against the median.

    Returns
    -------
    (torch.Tensor of shape (1, 1, H, W), torch.Tensor of shape (1, 1, H, W) or None)
    """
    import torch

    if not scale_invariant:
        raise ValueError("ensembling needs a scale-invariant (or affine-invariant) model")
    members = depth.shape[0]
    full = depth.to(torch.float32)  # [E,1,H,W]
    fit = full
    side = max(full.shape[-2:])
    if max_res is not None and side > max_res:
        step = -(-side // max_res)
        fit = full[..., ::step, ::step]
    x = fit.reshape(members, -1)  # [E,P]
    low = x.amin(dim=1, keepdim=True)
    high = x.amax(dim=1, keepdim=True)
    if shift_invariant:
        scale = 1.0 / (high - low).clamp(min=1e-6)
        shift = -scale * low
    else:
        scale = 1.0 / high.clamp(min=1e-6)
        shift = torch.zeros_like(scale)
    for _ in range(max(0, iterations)):
        aligned = x * scale + shift  # [E,P]
        target = aligned.median(dim=0).values  # [P]
        if shift_invariant:
            xm, tm = x.mean(dim=1, keepdim=True), target.mean()
            dx = x - xm
            scale = (dx * (target - tm)).mean(dim=1, keepdim=True) / \
                (dx * dx).mean(dim=1, keepdim=True).clamp(min=1e-12)
            shift = tm - scale * xm
        else:
            scale = (x * target).mean(dim=1, keepdim=True) / \
                (x * x).mean(dim=1, keepdim=True).clamp(min=1e-12)
    aligned = full * scale.view(members, 1, 1, 1) + shift.view(members, 1, 1, 1)  # [E,1,H,W]
    prediction, uncertainty = _reduce(aligned, reduction, output_uncertainty)  # [1,1,H,W]
    high = prediction.amax()
    low = prediction.amin() if shift_invariant else torch.zeros_like(high)
    span = (high - low).clamp(min=1e-6)
    prediction = (prediction - low) / span  # [1,1,H,W]
    if uncertainty is not None:
        uncertainty = uncertainty / span
    return prediction, uncertainty


def _reduce(aligned: torch.Tensor, reduction: str,
            output_uncertainty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge aligned members (E, 1, H, W): their median and median absolute deviation, or their
    mean and standard deviation; the spread is None unless ``output_uncertainty``."""
    uncertainty = None
    if reduction == "mean":
        prediction = aligned.mean(dim=0, keepdim=True)
        if output_uncertainty:
            uncertainty = aligned.std(dim=0, keepdim=True)
    elif reduction == "median":
        prediction = aligned.median(dim=0, keepdim=True).values
        if output_uncertainty:
            uncertainty = (aligned - prediction).abs().median(dim=0, keepdim=True).values
    else:
        raise ValueError(f"reduction must be 'median' or 'mean', got {reduction!r}")
    return prediction, uncertainty
