"""Byte identity of tiledepth's outputs over a fixed set of runs, for refactors that must not
change a single value.

Runs a fixed set of small runs (several rasters, options and both executors) with the tests'
toy models and records the sha256 of every output: the GeoTIFF's bytes, and each JSON file
(fusion sidecar, batch manifest) with the fields that legitimately vary from run to run
(timings, paths, dates) removed. Two such records compare hash by hash::

    python benchmarks/identity.py --json before.json      # on the old code
    python benchmarks/identity.py --json after.json       # on the new code
    python benchmarks/identity.py --compare before.json after.json

``--skip-ray`` leaves out the Ray run (for machines without Ray); ``--cases a,b`` runs (or,
with ``--compare``, compares) only those cases. The whole set takes about a
minute on 2 cores. ``benchmarks/identity_b05156b.json`` is the record of commit b05156b.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

#: JSON keys whose values vary between identical runs: wall times, absolute paths, dates.
VOLATILE = {"seconds", "elapsed", "started", "finished", "time", "date", "input", "output",
            "sidecar", "path", "scratch", "host", "pid"}


def _rasters(folder: Path) -> dict[str, Path]:
    """The test rasters: RGB GeoTIFF with nodata, PNG without georeference, uint16 4-band, RGBA."""
    from conftest import depth_field, depth_image, write_raster
    from rasterio.enums import ColorInterp as C

    rgb = depth_image(300, 340)
    rgb[:, :40, :60] = 0  # nodata corner
    out = {"rgb_nodata": write_raster(folder / "rgb_nodata.tif", rgb, nodata=0)}
    out["png"] = write_raster(folder / "plain.png", depth_image(180, 230), driver="PNG",
                              crs=None, transform=None, tiled=False, blockxsize=None,
                              blockysize=None)
    d = depth_field(260, 250)
    u16 = np.stack([d, 1 - d, 0.5 + 0 * d, d ** 2]) * 60000
    out["uint16_4band"] = write_raster(folder / "u16.tif", u16.astype(np.uint16))
    rgba = depth_image(600, 700)
    yy, xx = np.mgrid[0:600, 0:700]
    alpha = np.full((600, 700), 255, np.uint8)
    alpha[(yy - 300) ** 2 + (xx - 420) ** 2 < 60**2] = 0
    out["rgba_600x700"] = write_raster(folder / "rgba.tif", np.concatenate([rgba, alpha[None]]),
                                       colorinterp=[C.red, C.green, C.blue, C.alpha])
    return out


def _cases() -> list[tuple[str, str, dict]]:
    """(case name, raster name, options) of every ``tiledepth.run`` in the set."""
    from toy_models import RedWithSpread, affine_red

    small = dict(model=affine_red, tile_size=96, overlap=0.25)
    return [
        ("rgb_default", "rgb_nodata", small),
        ("rgb_affine", "rgb_nodata", dict(small, alignment="affine")),
        ("rgb_bilinear", "rgb_nodata", dict(small, alignment="bilinear")),
        ("rgb_no_robust", "rgb_nodata", dict(small, robust=False)),
        ("rgb_anchor_blur0_weight", "rgb_nodata", dict(small, anchor_blur=0, coarse_weight=0.3)),
        ("png_default", "png", dict(small, tile_size=64)),
        ("uint16_bands", "uint16_4band", dict(small, bands=(4, 2, 1))),
        ("pyramid_level", "rgba_600x700",
         dict(model=affine_red, tile_size=32, coarse_size=32, anchor_blur=0, pyramid=True)),
        ("no_pyramid", "rgba_600x700",
         dict(model=affine_red, tile_size=32, coarse_size=32, anchor_blur=0, pyramid=False)),
        ("scale_half", "rgba_600x700", dict(small, scale=0.5)),
        ("ensemble_uncertainty", "rgb_nodata",
         dict(model=RedWithSpread(), tile_size=96, ensemble=2, uncertainty=True)),
    ]


def case_names() -> list[str]:
    """Every case of the set, in order: the runs of :func:`_cases`, then the batches."""
    return [name for name, _, _ in _cases()] + ["batch_local", "batch_ray"]


def _strip(value):
    """``value`` without the :data:`VOLATILE` keys, at any depth."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _digest(path: Path) -> str:
    """sha256 of a file; JSON files are hashed canonically without :data:`VOLATILE` keys."""
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".jsonl":
        data = "\n".join(json.dumps(_strip(json.loads(line)), sort_keys=True)
                         for line in data.decode().splitlines() if line.strip()).encode()
    return hashlib.sha256(data).hexdigest()


def _hash_folder(folder: Path, exclude: set[Path]) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p not in exclude}


def record(*, ray: bool = True, cases: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Run the set (or the named ``cases`` of it); return ``{case: {output file: sha256}}``."""
    import tiledepth

    def wanted(name: str) -> bool:
        return cases is None or name in cases

    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        rasters = _rasters(tmp / "in")
        inputs = set((tmp / "in").rglob("*"))
        for name, raster, opts in _cases():
            if not wanted(name):
                continue
            folder = tmp / name
            folder.mkdir()
            tiledepth.run(rasters[raster], folder / "out.tif", **opts)
            out[name] = _hash_folder(folder, inputs)
        survey = tmp / "in"
        kw = dict(model="toy_models:affine_red", tile_size=96, overlap=0.25, batch_size=2,
                  glob="*.tif")
        if wanted("batch_local"):
            tiledepth.batch([survey], tmp / "batch_local", **kw)
            out["batch_local"] = _hash_folder(tmp / "batch_local", inputs)
        if ray and wanted("batch_ray"):
            import ray as ray_module

            # Ray's workers import the toy models by name too
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])

            ray_module.init(num_cpus=2, include_dashboard=False,
                            object_store_memory=200 * 2**20, log_to_driver=False)
            try:
                tiledepth.batch([survey], tmp / "batch_ray", executor="ray", ray_actors=2, **kw)
            finally:
                ray_module.shutdown()
            out["batch_ray"] = _hash_folder(tmp / "batch_ray", inputs)
    return out


def compare(a: dict, b: dict) -> list[str]:
    """Lines naming every case or file whose hash differs (empty when identical)."""
    diffs = []
    for case in sorted(set(a) | set(b)):
        fa, fb = a.get(case, {}), b.get(case, {})
        for name in sorted(set(fa) | set(fb)):
            if fa.get(name) != fb.get(name):
                diffs.append(f"{case}/{name}: {fa.get(name)} != {fb.get(name)}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Write the record here.")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                        help="Compare two records; exit 1 if any hash differs.")
    parser.add_argument("--skip-ray", action="store_true", help="Leave out the Ray run.")
    parser.add_argument("--cases", help="Comma-separated case names: run (or compare) only "
                        "those.")
    args = parser.parse_args(argv)
    cases = args.cases.split(",") if args.cases else None
    unknown = [name for name in cases or () if name not in case_names()]
    if unknown:  # else nothing would run for it, and an empty record would pass a compare
        parser.error(f"--cases: unknown {', '.join(map(repr, unknown))}; choose from "
                     f"{', '.join(case_names())}")
    if cases is not None and args.skip_ray and set(cases) == {"batch_ray"} and not args.compare:
        parser.error("--cases batch_ray with --skip-ray: nothing to run; drop --skip-ray")
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        if args.skip_ray:
            a.pop("batch_ray", None)
            b.pop("batch_ray", None)
        if cases is not None:  # the cases asked for alone, as a run with --cases records
            a, b = ({k: v for k, v in r.items() if k in cases} for r in (a, b))
        diffs = compare(a, b)
        if cases is not None:  # else a case neither record holds would compare as identical
            diffs += [f"{case}: in neither record" for case in cases
                      if case not in a and case not in b
                      and not (args.skip_ray and case == "batch_ray")]
        n = sum(len(v) for v in a.values())
        print("\n".join(diffs) if diffs else f"identical: {len(a)} cases, {n} files")
        return 1 if diffs else 0
    t0 = time.perf_counter()
    rec = record(ray=not args.skip_ray, cases=cases)
    text = json.dumps(rec, indent=1, sort_keys=True) + "\n"
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    n = sum(len(v) for v in rec.values())
    print(f"{len(rec)} cases, {n} files, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
