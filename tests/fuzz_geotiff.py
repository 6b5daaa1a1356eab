"""Mutated GeoTIFFs for the fuzz test, and the child process that runs tiledepth on them.

``python fuzz_geotiff.py FOLDER`` runs ``tiledepth.run`` on every ``*.tif`` in FOLDER and
prints one line per file, as soon as it is done::

    <name> <seconds> ok|error <ExceptionClass>|BUG <ExceptionClass>: <message>

``error`` is a clean tiledepth error (the CLI prints one line); ``ok`` a run whose output
was checked; ``BUG`` anything else. It runs in a child process so that a crash in GDAL or a
hang cannot take the test session down with it, and the parent knows which file it was.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def mutants(data: bytes, n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` mutations of ``data``: byte flips, truncations, or both, from a fixed seed.

    Half the flips land in the first 512 bytes, where the TIFF header, the IFD and the
    GeoTIFF keys of a small file live; the rest anywhere.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = bytearray(data)
        kind = ("flip", "cut", "both")[i % 3]
        if kind in ("flip", "both"):
            for _ in range(int(rng.integers(1, 9))):
                end = 512 if rng.random() < 0.5 else len(buf)
                pos = int(rng.integers(0, min(end, len(buf))))
                buf[pos] = int(rng.integers(0, 256))
        if kind in ("cut", "both"):
            buf = buf[: int(rng.integers(8, len(buf)))]
        out.append((f"m{i:03d}-{kind}.tif", bytes(buf)))
    return out


def check_output(src: Path, out: Path) -> None:
    """The output must be a whole float32 GeoTIFF on the input's grid."""
    import rasterio

    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert (b.width, b.height, b.count, b.dtypes[0]) == (a.width, a.height, 1, "float32")
        depth = b.read(1)
    assert np.isfinite(depth).any(), "an output without one value"
    assert not np.isinf(depth).any()


def main(folder: Path) -> None:
    import logging
    import warnings

    import tiledepth
    from tiledepth.errors import TiledepthError

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")

    def red(batch):
        return batch[..., 0].copy()

    for path in sorted(folder.glob("*.tif")):
        out = folder / "out" / path.name
        t0 = time.perf_counter()
        try:
            tiledepth.run(path, out, model=red, tile_size=32, overwrite=True)
            check_output(path, out)
            verdict = "ok"
        except TiledepthError as exc:
            verdict = f"error {type(exc).__name__}"
        except BaseException as exc:  # noqa: B036 - the point is to catch everything
            text = str(exc).splitlines()[0] if str(exc).strip() else ""
            verdict = f"BUG {type(exc).__name__}: {text}"
        print(f"{path.name} {time.perf_counter() - t0:.3f} {verdict}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
