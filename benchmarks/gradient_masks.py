"""``--fusion gradient`` beside masked pixels, against ``--fusion tiles``: an exact model.

The truth is the tests' smooth depth field (600 x 600 px); the model is exactly affine per
tile (``toy_models.affine_red``), the anchor sharp (``anchor_blur=0``), so any error is the
fusion's. Two rectangles are masked. The fused map is fitted to the truth by one global
scale and shift over the valid pixels; printed: the largest remaining error, and that more
than 40 px from the mask, as fractions of the truth's range::

    python benchmarks/gradient_masks.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def errors(fusion: str, coarse: int) -> tuple[float, float]:
    """(largest error, largest more than 40 px from the mask), fractions of the range."""
    from conftest import depth_field
    from scipy import ndimage
    from toy_models import affine_red

    import tiledepth

    truth = depth_field(600, 600)
    valid = np.ones(truth.shape, bool)
    valid[:300, :260] = False
    valid[400:, 400:450] = False
    rgb = (np.stack([truth] * 3, -1) * 255).astype(np.uint8)
    out = tiledepth.estimate(rgb, mask=valid, model=affine_red, tile_size=96,
                             coarse_size=coarse, anchor_blur=0, fusion=fusion)
    t = (rgb[..., 0] / 255.0)[valid]
    a = np.stack([out[valid], np.ones(valid.sum())], 1)
    coef = np.linalg.lstsq(a, t, rcond=None)[0]
    err = np.abs(coef[0] * out + coef[1] - rgb[..., 0] / 255.0) / np.ptp(t)
    far = valid & (ndimage.distance_transform_edt(valid) > 40)
    return float(err[valid].max()), float(err[far].max())


def main(argv: list[str] | None = None) -> None:
    # no options; a parser all the same, so that --help describes the run instead of doing it
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print("| coarse size | fusion | largest error | more than 40 px from the mask |")
    print("| --- | --- | --- | --- |")
    for coarse in (32, 200):
        for fusion in ("tiles", "gradient"):
            worst, far = errors(fusion, coarse)
            print(f"| {coarse} | {fusion} | {worst:.1e} | {far:.1e} |")


if __name__ == "__main__":
    main()
