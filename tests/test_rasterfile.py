import threading
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from tiledepth.rasterfile import open_raster


def _png(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=8, height=8, count=1,
                           dtype="uint8") as ds:
            ds.write(np.zeros((1, 8, 8), np.uint8))


def test_two_threads_opening_leave_no_filter_and_show_no_warning(tmp_path):
    """A batch's two raster threads open non-georeferenced frames at once: each open's
    "ignore" filter must neither be left in the process nor be dropped by the other's
    restore (a warning line). Unserialised ``catch_warnings`` blocks did both (checked:
    this test fails with the lock taken out)."""
    png = tmp_path / "frame.png"
    _png(png)
    start = threading.Barrier(2)

    def opens():
        start.wait()
        for _ in range(300):
            with open_raster(png) as ds:
                assert ds.width == 8

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        threads = [threading.Thread(target=opens) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = list(warnings.filters)
    assert after == before
    assert [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)] == []


def test_opening_a_georeferenced_raster_passes_every_argument(tmp_path):
    path = tmp_path / "g.tif"
    with open_raster(path, "w", driver="GTiff", width=4, height=3, count=1, dtype="float32",
                     crs="EPSG:32611", transform=rasterio.Affine(2, 0, 500000, 0, -2, 4e6)) \
            as ds:
        ds.write(np.ones((1, 3, 4), np.float32))
    with open_raster(path) as ds:
        assert (ds.width, ds.height, ds.crs.to_epsg()) == (4, 3, 32611)
        assert ds.transform.c == 500000


def test_an_open_past_the_wait_leaves_the_filters_alone(tmp_path, monkeypatch):
    """Past the wait for another open (a slow remote one), a file is opened without touching
    the warning filters: an unserialised filter block could leave its "ignore" behind."""
    from tiledepth import rasterfile

    png = tmp_path / "frame.png"
    _png(png)
    monkeypatch.setattr(rasterfile, "WAIT", 0.05)
    before = list(warnings.filters)
    assert rasterfile._FILTERS.acquire()  # another open holds the filters
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            inside = list(warnings.filters)
            real = warnings.catch_warnings
            monkeypatch.setattr(warnings, "catch_warnings",
                                lambda *a, **k: pytest.fail("filters touched"))
            with open_raster(png) as ds:
                assert ds.width == 8
            monkeypatch.setattr(warnings, "catch_warnings", real)
            assert list(warnings.filters) == inside
    finally:
        rasterfile._FILTERS.release()
    assert list(warnings.filters) == before
