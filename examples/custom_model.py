"""A callable depth model: any function (B, H, W, 3) float32 in [0, 1] -> (B, H, W).

Use it from the CLI, from any folder (a path to this file, relative or absolute):

    tiledepth run ortho.tif --model examples/custom_model.py:brightness_depth

or from Python: ``tiledepth.run("ortho.tif", model=brightness_depth)``.

This toy calls darker pixels nearer; it stands in for your own network. Wrap a
real one the same way: convert the batch to your framework, predict, return a
NumPy array of shape (B, H, W). Each tile may come back with its own scale and
shift: tiledepth's fusion aligns them. A torch network's calls run under the grad
mode of the code that calls tiledepth.run: inside ``with torch.no_grad():`` its
``.numpy()`` works on tiledepth's threads too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def brightness_depth(batch: np.ndarray) -> np.ndarray:
    """Smoothed luminance as a stand-in for depth."""
    lum = batch @ np.array([0.299, 0.587, 0.114], np.float32)  # (B, H, W)
    return ndimage.uniform_filter(lum, size=(1, 9, 9)).astype(np.float32)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    import tiledepth

    # its own name: a rerun replaces it, never the <stem>.depth.tif of a real model's run
    source = Path(sys.argv[1])
    result = tiledepth.run(source, source.with_name(f"{source.stem}.brightness.tif"),
                           model=brightness_depth, overwrite=True)
    print(result)
