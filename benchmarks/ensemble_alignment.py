"""Ensemble alignment: diffusers' BFGS (official Marigold settings) against tiledepth's device fit.

Synthetic members of a smooth random depth field, each with its own scale, shift and smooth
noise, the first also off by a large smooth error: the ensembled map's RMSE to the truth after
its best affine fit (the output is affine-invariant), the largest difference between the two
methods, and their seconds (CPU; the device fit makes no host sync, BFGS one per member pair
per cost evaluation).

    python benchmarks/ensemble_alignment.py [--members 10] [--side 192] [--tiles 4]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--side", type=int, default=192)
    ap.add_argument("--tiles", type=int, default=4)
    args = ap.parse_args()

    import torch
    from diffusers import MarigoldDepthPipeline
    from scipy.ndimage import gaussian_filter

    from tiledepth.models.marigold_ensemble import ENSEMBLING, ensemble_depth

    rng = np.random.default_rng(0)
    side = args.side
    rmse: dict[str, list[float]] = {"bfgs": [], "device": []}
    seconds = {"bfgs": 0.0, "device": 0.0}
    diff = 0.0
    for _ in range(args.tiles):
        truth = gaussian_filter(rng.standard_normal((side, side)), 12)
        truth = (truth - truth.min()) / np.ptp(truth)
        members = []
        for e in range(args.members):
            m = (truth + gaussian_filter(rng.standard_normal((side, side)), 3) * 0.05) \
                * rng.uniform(0.6, 1.4) + rng.uniform(-0.2, 0.2)
            if e == 0:  # one poor member
                m = m + 0.3 * gaussian_filter(rng.standard_normal((side, side)), 30)
            members.append(np.clip(m, 0, 1))
        depth = torch.tensor(np.stack(members)[:, None], dtype=torch.float32)  # [E,1,H,W]
        out = {}
        for name, fn in (("bfgs", lambda d: MarigoldDepthPipeline.ensemble_depth(
                              d, True, True, False, **ENSEMBLING)),
                         ("device", lambda d: ensemble_depth(d, True, True, False))):
            t0 = time.perf_counter()
            out[name] = fn(depth)[0][0, 0].numpy().astype(np.float64)
            seconds[name] += time.perf_counter() - t0
            a = np.stack([out[name].ravel(), np.ones(out[name].size)], 1)
            fit = a @ np.linalg.lstsq(a, truth.ravel(), rcond=None)[0]
            rmse[name].append(float(np.sqrt(np.mean((fit - truth.ravel()) ** 2))))
        diff = max(diff, float(np.abs(out["bfgs"] - out["device"]).max()))
    print(json.dumps({"members": args.members, "side": side, "tiles": args.tiles,
                      "rmse_bfgs": float(np.mean(rmse["bfgs"])),
                      "rmse_device": float(np.mean(rmse["device"])),
                      "max_abs_difference": diff, "seconds_bfgs": seconds["bfgs"],
                      "seconds_device": seconds["device"]}, indent=1))


if __name__ == "__main__":
    main()
