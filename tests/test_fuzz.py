"""Fuzzing: a few hundred mutated GeoTIFFs (byte flips and truncations of valid ones, from a
fixed seed) each end in a clean tiledepth error or a valid output: never a crash, a hang or
a traceback."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import child_env, depth_image, write_raster
from fuzz_geotiff import mutants

TESTS = Path(__file__).resolve().parent
N = 300  # files in all
BUDGET = 300  # seconds for all of them; a hang fails the test with the file it hung on
SLOWEST = 10  # seconds for any one file


def originals(folder: Path) -> list[bytes]:
    """Small valid GeoTIFFs: tiled and deflated with an alpha band, and striped uint16."""
    rgba = np.concatenate([depth_image(48, 64), np.full((1, 48, 64), 255, np.uint8)])
    rgba[3, 10:20, 30:50] = 0
    a = write_raster(folder / "a.tif", rgba, compress="deflate", blockxsize=32, blockysize=32)
    b = write_raster(folder / "b.tif", depth_image(40, 56).astype(np.uint16) * 200, tiled=False,
                     blockxsize=None, blockysize=None, nodata=0)
    data = [a.read_bytes(), b.read_bytes()]
    a.unlink()
    b.unlink()
    return data


def test_mutated_geotiffs_end_cleanly(tmp_path):
    work = tmp_path / "fuzz"
    (work / "out").mkdir(parents=True)
    first, second = originals(tmp_path)
    files = mutants(first, N // 2, seed=1) + mutants(second, N - N // 2, seed=2)
    for k, (name, data) in enumerate(files):
        (work / f"{'ab'[k >= N // 2]}-{name}").write_bytes(data)
    env = child_env()
    try:
        proc = subprocess.run([sys.executable, str(TESTS / "fuzz_geotiff.py"), str(work)],
                              capture_output=True, text=True, env=env, timeout=BUDGET)
    except subprocess.TimeoutExpired as exc:
        done = (exc.stdout or b"").decode().splitlines() if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "").splitlines()
        raise AssertionError(f"hung after {len(done)} files; next: "
                             f"{sorted(work.glob('*.tif'))[len(done)].name}") from None
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (
        f"the child died (code {proc.returncode}) after {len(lines)} files: "
        f"{sorted(work.glob('*.tif'))[len(lines)].name}\n{proc.stderr[-2000:]}")
    assert len(lines) == N
    results = [line.split(" ", 2) for line in lines]
    bugs = [line for line in lines if " BUG " in line]
    assert not bugs, "\n".join(bugs)
    slow = [(name, float(s)) for name, s, _ in results if float(s) > SLOWEST]
    assert not slow, slow
    verdicts = collections.Counter(v.split()[0] for _, _, v in results)
    assert verdicts["ok"] > 0 and verdicts["error"] > 0, verdicts  # both outcomes happen
    # nothing left behind by the failed ones: only complete outputs and their sidecars
    ok = [name for name, _, v in results if v == "ok"]
    assert sorted(os.listdir(work / "out")) == sorted(
        ok + [name.removesuffix(".tif") + ".json" for name in ok])
