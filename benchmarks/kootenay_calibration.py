"""Metric calibration on real data: a 4x coarser canopy height model as the reference.

On ``../shared/data/kootenay_aerial`` (a 287 x 218 px drone orthophoto at 0.5 m with a
canopy height model, CHM, on the same grid), the CHM is block-averaged 4x (2 m pixels) and
given to ``tiledepth run --reference``; the output (``--output-kind height``, metres) is
evaluated at full resolution against the original CHM, and compared with simply upsampling
the coarse reference (bilinear, GDAL's warper).

No real depth model runs here (no weights, no GPU). Two stand-ins, both callables:

* ``brightness``: the project's example model (``examples/custom_model.py``: smoothed
  luminance), a cheap model run on the real RGB, which knows nothing about trees;
* ``simulated``: the true CHM as an affine-invariant model would return it, with an
  unknown scale and shift per prediction, a random tilt of a few percent of the range and
  noise (kept in this script): it shows what calibration and fusion do with a model whose
  detail is right, not how good any real model is.

    python benchmarks/kootenay_calibration.py [--data ../shared/data/kootenay_aerial] \
        [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from large_raster import work_folder  # noqa: E402

import tiledepth  # noqa: E402
from examples.custom_model import brightness_depth  # noqa: E402

FACTOR = 4


def simulated(batch: np.ndarray) -> np.ndarray:
    """Band 1 is the normalised CHM: return it as depth, per-image affine, tilt and noise."""
    out = []
    for img in batch:
        height = img[..., 0].astype(np.float64)
        rng = np.random.default_rng(int(height.sum() * 1000) % 2**32)
        h, w = height.shape
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        tilt = rng.normal(0, 0.03) * (xx - 0.5) + rng.normal(0, 0.03) * (yy - 0.5)
        noise = rng.normal(0, 0.01, height.shape)
        out.append(rng.uniform(0.5, 2.0) * (1.0 - height + tilt + noise) + rng.uniform(-1, 1))
    return np.stack(out).astype(np.float32)


def errors(pred: np.ndarray, truth: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    d = pred[ok].astype(np.float64) - truth[ok]
    return float(np.sqrt(np.mean(d * d))), float(np.mean(np.abs(d)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" /
                    "kootenay_aerial")
    ap.add_argument("--tile-size", type=int, default=96)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the reference and outputs here (default: a temporary folder, "
                    "removed after)")
    args = ap.parse_args()
    ortho, chm_path = args.data / "kootenayOrtho.tif", args.data / "kootenayCHM.tif"
    if not chm_path.exists():
        sys.exit(f"skipped: {chm_path} not found (the shared evaluation data is absent)")
    with work_folder(args.workdir, "tiledepth-kootenay-") as work:
        bench(args, work, ortho, chm_path)


def bench(args: argparse.Namespace, work: Path, ortho: Path, chm_path: Path) -> None:
    """Evaluate the upsampled reference and the runs, with their files in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    with rasterio.open(chm_path) as ds:
        chm = ds.read(1, masked=True).astype(np.float64).filled(np.nan)
        profile, transform, crs = ds.profile, ds.transform, ds.crs
    h, w = chm.shape
    ch, cw = h // FACTOR, w // FACTOR
    coarse = chm[: ch * FACTOR, : cw * FACTOR].reshape(ch, FACTOR, cw, FACTOR).mean(axis=(1, 3))
    ref = work / "chm_4x_coarser.tif"
    with rasterio.open(ref, "w", driver="GTiff", height=ch, width=cw, count=1,
                       dtype="float32", crs=crs, nodata=np.nan,
                       transform=transform @ transform.scale(FACTOR)) as dst:
        dst.write(coarse[None].astype(np.float32))
    # The baseline: the coarse reference upsampled onto the full grid.
    ok = np.isfinite(chm)
    ok[ch * FACTOR:, :] = ok[:, cw * FACTOR:] = False  # the reference's footprint
    ups = {}
    for name in ("bilinear", "cubic", "nearest"):
        up = np.full((h, w), np.nan)
        reproject(coarse, up, src_transform=transform @ transform.scale(FACTOR), src_crs=crs,
                  dst_transform=transform, dst_crs=crs, resampling=Resampling[name],
                  src_nodata=np.nan, dst_nodata=np.nan)
        ups[name] = up
        ok &= np.isfinite(up)
    print(f"CHM {w} x {h} px at {transform.a} m, heights {np.nanmin(chm):.2f} to "
          f"{np.nanmax(chm):.2f} m (std {np.nanstd(chm[ok]):.2f} m); reference {cw} x {ch} px "
          f"at {FACTOR * transform.a} m; {ok.sum()} evaluated pixels")
    print(f"{'method':<56} {'RMSE m':>7} {'MAE m':>7} {'fit RMSE m':>10}")
    for name, up in ups.items():
        rmse, mae = errors(up, chm, ok)
        print(f"{'upsampled reference, ' + name:<56} {rmse:>7.3f} {mae:>7.3f}")
    # The simulated model reads the CHM, normalised, as its "image".
    sim_src = work / "chm_as_image.tif"
    norm = (chm - np.nanmin(chm)) / np.nanmax(chm - np.nanmin(chm))
    with rasterio.open(sim_src, "w", **{**profile, "count": 3, "dtype": "float32",
                                        "nodata": np.nan}) as dst:
        dst.write(np.repeat(norm[None], 3, 0).astype(np.float32))
    for model_name, model, src in [("brightness (example model, real RGB)", brightness_depth,
                                    ortho), ("simulated model", simulated, sim_src)]:
        for anchor in ("model", "reference"):
            r = tiledepth.run(src, work / f"{model_name[:5]}_{anchor}.tif", model=model,
                              tile_size=args.tile_size, reference=ref, anchor=anchor,
                              output_kind="height", overwrite=True)
            with rasterio.open(r.output) as ds:
                out = ds.read(1)
            rmse, mae = errors(out, chm, ok)
            print(f"{model_name + ', anchor ' + anchor:<56} {rmse:>7.3f} {mae:>7.3f} "
                  f"{r.calibration.rmse:>10.3f}")


if __name__ == "__main__":
    main()
