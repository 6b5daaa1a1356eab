"""Evaluation scenes with dense ground-truth depth, shared by the quality benchmarks.

* ``../shared/data`` (see its README): Middlebury 2014 quarter, Middlebury 2006 half, and the
  Kootenay drone ortho with its canopy height model;
* procedurally generated aerial-like scenes (terrain, buildings, trees) of any size.

Every loader returns ``(name, depth)``: depth float32 (H, W), NaN where unknown.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
#: The shared data folder where a checkout expects it: ``../shared/data`` from the repository
#: root (:func:`default_data` also looks further up, and honours ``TILEDEPTH_DATA``).
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
#: Flying height assumed for the Kootenay ortho (nadir camera): depth = altitude - canopy height.
KOOTENAY_ALTITUDE = 60.0
#: The named geometries of the quality benchmarks (``fusion_quality.geometries``); besides
#: them, ``custom:TILE:COARSE`` (:func:`custom_geometry`).
GEOMETRIES = ("quarter", "gigapixel")


def default_data() -> Path | None:
    """The shared data folder: ``TILEDEPTH_DATA`` if set, else the first ``shared/data`` in
    the repository root or a folder above it (``../shared/data`` from a fresh clone, and from
    a worktree nested deeper); None if there is none."""
    import os

    env = os.environ.get("TILEDEPTH_DATA")
    if env:
        return Path(env)
    for folder in (HERE.parent, *HERE.parent.parents):
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return None


def read_pfm(path: Path) -> np.ndarray:
    """A one-channel PFM as float32 (H, W), rows top to bottom."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"Pf":
            raise ValueError(f"{path}: not a one-channel PFM")
        width, height = (int(v) for v in f.readline().split())
        scale = float(f.readline())
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4", count=width * height)
    return np.flipud(data.reshape(height, width)).astype(np.float32)


def middlebury_scene(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Middlebury 2014: RGB float32 (H, W, 3) in [0, 1] and depth in metres (NaN = unknown)."""
    from PIL import Image

    rgb = np.asarray(Image.open(folder / "im0.png").convert("RGB"), dtype=np.float32) / 255.0
    return rgb, middlebury_depth(folder)


def middlebury_depth(folder: Path) -> np.ndarray:
    """Middlebury 2014: depth in metres (NaN = unknown), float32 (H, W)."""
    disp = read_pfm(folder / "disp0GT.pfm")
    text = (folder / "calib.txt").read_text()
    focal = float(text.split("cam0=[")[1].split()[0])
    baseline = float(text.split("baseline=")[1].split()[0])
    doffs = float(text.split("doffs=")[1].split()[0])
    depth = baseline * focal / (disp + doffs) / 1000.0  # metres
    depth[~np.isfinite(disp) | (disp <= 0)] = np.nan
    return depth.astype(np.float32)


def middlebury2006_depth(folder: Path) -> np.ndarray:
    """Middlebury 2006 half size: depth in metres from ``disp1.png`` (0 = unknown)."""
    from PIL import Image

    v = np.asarray(Image.open(folder / "disp1.png"), dtype=np.float32)
    if v.ndim == 3:
        v = v[..., 0]
    dmin = float((folder / "dmin.txt").read_text().split()[0])
    depth = 160.0 * 3740.0 / (v + dmin) / 1000.0
    depth[v == 0] = np.nan
    return depth.astype(np.float32)


def kootenay_depth(folder: Path) -> np.ndarray:
    """Depth below a nadir camera at :data:`KOOTENAY_ALTITUDE` from the canopy height model."""
    import rasterio

    with rasterio.open(folder / "kootenayCHM.tif") as src:
        chm = src.read(1, masked=True).astype(np.float32).filled(np.nan)
    return (KOOTENAY_ALTITUDE - chm).astype(np.float32)


def aerial_scene(size: int, seed: int) -> np.ndarray:
    """A procedural nadir depth map (metres below a camera 300 m up): terrain, buildings, trees.

    Terrain: smooth noise at three scales (about 40 m of relief); buildings: boxes of 10-60 m
    with flat or gabled roofs 4-25 m high; trees: Gaussian crowns 3-15 m high.
    """
    rng = np.random.default_rng(seed)
    h = np.zeros((size, size), np.float64)
    for cells, amp in ((4, 15.0), (16, 3.0), (64, 0.6)):
        noise = rng.standard_normal((cells + 3, cells + 3))
        h += amp * ndimage.zoom(noise, size / cells, order=3)[:size, :size]
    px = 0.25 * size / 1000  # building and tree sizes scale with the scene
    for _ in range(int(60 * (size / 1000) ** 2)):
        bh, bw = (rng.uniform(40, 240, 2) * px).astype(int) + 2
        r, c = rng.integers(0, size - bh), rng.integers(0, size - bw)
        roof = rng.uniform(4, 25)
        block = np.full((bh, bw), roof)
        if rng.random() < 0.5:  # gabled: a ridge along the longer side
            ax = 0 if bh > bw else 1
            n = block.shape[ax]
            ridge = 1 - np.abs(np.linspace(-1, 1, n))
            block += (rng.uniform(2, 6) * ridge)[:, None] if ax == 0 else \
                rng.uniform(2, 6) * ridge[None, :]
        base = h[r:r + bh, c:c + bw].min()
        h[r:r + bh, c:c + bw] = base + block
    yy, xx = np.mgrid[-20:21, -20:21]
    for _ in range(int(900 * (size / 1000) ** 2)):
        rad = rng.uniform(3, 12) * max(px * 4, 0.5)
        crown = rng.uniform(3, 15) * np.exp(-(yy**2 + xx**2) / (2 * rad**2))
        r, c = rng.integers(20, size - 21, 2)
        patch = h[r - 20:r + 21, c - 20:c + 21]
        np.maximum(patch, patch.min() + crown, out=patch)
    return (300.0 - h).astype(np.float32)


def periodic_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A periodic texture as depth (metres, about 10 to 14): crossed sinusoids and mild noise.

    The scene of issue 17's exactly consistent model: every tile looks like its neighbours.
    """
    rng = np.random.default_rng([seed, 77])
    r, c = np.mgrid[0:height, 0:width].astype(np.float64)
    z = np.sin(2 * np.pi * r / 37.0) + np.sin(2 * np.pi * c / 53.0) \
        + 0.5 * np.sin(2 * np.pi * (r + c) / 91.0)
    z += 0.05 * ndimage.gaussian_filter(rng.standard_normal((height, width)), 1.0)
    return (12.0 + z).astype(np.float32)


def shared_scenes(data: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every scene of ``data`` (the shared folder), as (name, depth).

    A Middlebury 2014 scene whose depth is another's (the exposure and lighting variants:
    MotorcycleE is Motorcycle's, PianoL Piano's) is left out: the simulated models see the
    depth and a synthetic texture, never the photo, so it would count the same scene twice.
    """
    root = data / "middlebury2014_quarter"
    if root.is_dir():
        seen: dict[bytes, str] = {}
        for folder in sorted(p for p in root.iterdir() if (p / "disp0GT.pfm").exists()):
            depth = middlebury_depth(folder)
            key = hashlib.sha256(depth.tobytes()).digest()
            if key in seen:
                print(f"mb2014/{folder.name}: the depth of {seen[key]}; left out",
                      file=sys.stderr)
                continue
            seen[key] = f"mb2014/{folder.name}"
            yield f"mb2014/{folder.name}", depth
    root = data / "middlebury2006_half"
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if (p / "disp1.png").exists()):
            yield f"mb2006/{folder.name}", middlebury2006_depth(folder)
    root = data / "kootenay_aerial"
    if (root / "kootenayCHM.tif").exists():
        yield "kootenay", kootenay_depth(root)


def benchmark_scenes(data: Path | None, *, scenes: int, procedural: int,
                     size: int) -> list[tuple[str, np.ndarray]]:
    """The first ``scenes`` (0: all) scenes of ``data`` (none where it is not a folder), then
    ``procedural`` aerial scenes of ``size`` px, as (name, depth)."""
    out = []
    if data is not None and data.is_dir():
        for k, scene in enumerate(shared_scenes(data)):
            if scenes and k >= scenes:
                break
            out.append(scene)
    else:
        print(f"no shared data at {data}: procedural scenes only", file=sys.stderr)
    return out + [(f"procedural/{s}", aerial_scene(size, s)) for s in range(procedural)]


def custom_geometry(spec: str) -> dict:
    """``'custom:TILE:COARSE'`` as a geometry: tiles of TILE px, a coarse map of COARSE px.

    >>> custom_geometry("custom:256:120")
    {'tile_size': 256, 'coarse_size': 120}
    """
    kind, *sizes = spec.split(":")
    if kind != "custom" or len(sizes) != 2 or not all(v.isdigit() for v in sizes):
        raise ValueError(f"geometry {spec!r}: expected custom:TILE:COARSE (two integers)")
    tile, coarse = map(int, sizes)
    if tile < 16 or coarse < 2:
        raise ValueError(f"geometry {spec!r}: TILE must be >= 16 and COARSE >= 2 px")
    return {"tile_size": tile, "coarse_size": coarse}


def fill_nearest(depth: np.ndarray) -> np.ndarray:
    """Unknown pixels take the nearest known value (simulated models need a full scene)."""
    unknown = ~np.isfinite(depth)
    if not unknown.any():
        return depth
    idx = ndimage.distance_transform_edt(unknown, return_distances=False, return_indices=True)
    return depth[tuple(idx)]
