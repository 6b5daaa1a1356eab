"""The scratch store: parts of evicted tiles, shared all-valid masks, reads from two threads."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from tiledepth.scratch import DiskStore, MemoryStore, all_valid, checksum, read_npy, save_npy


@pytest.mark.parametrize("background", [False, True])
def test_get_pred_reads_a_part_of_an_evicted_tile(tmp_path, background):
    rng = np.random.default_rng(0)
    preds = [rng.random((60, 50)).astype(np.float32) for _ in range(6)]
    with DiskStore(tmp_path, cache_bytes=60 * 50 * 4, background=background) as store:
        for i, p in enumerate(preds):
            store.put(i, p, np.ones((60, 50), bool))
        assert list(store._cache) == [5]  # the others were evicted
        for i, p in enumerate(preds):
            part = (slice(45, 60), slice(10, 50))
            np.testing.assert_array_equal(store.get_pred(i, part), p[part])
        assert list(store._cache) == [5]  # parts are not cached


def test_tiles_with_every_pixel_valid_share_one_mask(tmp_path):
    rng = np.random.default_rng(1)
    some = rng.random((40, 30)) > 0.3
    with DiskStore(tmp_path, cache_bytes=2**20) as store:
        store.put(0, np.zeros((40, 30), np.float32), np.ones((40, 30), bool))
        store.put(1, np.zeros((40, 30), np.float32), some)
        assert store._cached == 2 * 40 * 30 * 4 + some.nbytes  # the shared mask costs nothing
        store._cache.clear()
        (_, v0), (_, v1) = store.get(0), store.get(1)
    assert v0 is all_valid((40, 30)) and not v0.flags.writeable
    np.testing.assert_array_equal(v1, some)
    assert v1.flags.writeable


@pytest.mark.parametrize("shape", [(7, 9), (8, 8), (1, 1)])
def test_the_all_valid_test_ignores_the_padding_bits(tmp_path, shape):
    with DiskStore(tmp_path, cache_bytes=0) as store:
        almost = np.ones(shape, bool)
        almost[-1, -1] = False
        store.put(0, np.zeros(shape, np.float32), almost)
        store.put(1, np.zeros(shape, np.float32), np.ones(shape, bool))
        store._cache.clear()
        np.testing.assert_array_equal(store.get(0)[1], almost)
        assert store.get(1)[1] is all_valid(shape)


def test_memory_store_gives_parts_too():
    store = MemoryStore()
    pred = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.put(3, pred, np.ones((3, 4), bool))
    np.testing.assert_array_equal(store.get_pred(3, (slice(1, 3), slice(0, 2))), pred[1:, :2])


def test_read_npy_falls_back_on_another_header(tmp_path):
    path = tmp_path / "f.npy"
    array = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(4, 5))
    np.save(path, array)  # Fortran order: not what save_npy writes
    np.testing.assert_array_equal(read_npy(path, np.float32, (4, 5), rows=slice(1, 3)),
                                  array[1:3])
    save_npy(path, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="truncated"):
        path.write_bytes(path.read_bytes()[:-4])
        read_npy(path, np.float32, (3,))


def test_parts_and_puts_from_two_threads(tmp_path):
    """The engine's statistics thread reads parts while the main thread puts tiles."""
    rng = np.random.default_rng(2)
    preds = [rng.random((32, 32)).astype(np.float32) for _ in range(200)]
    errors = []
    with DiskStore(tmp_path, cache_bytes=3 * 32 * 32 * 4, background=True) as store:
        done = threading.Event()

        def reader():
            try:
                for i in range(len(preds)):
                    while i not in store:
                        if done.wait(0.001):
                            return
                    k = max(0, i - 5)
                    np.testing.assert_array_equal(store.get_pred(k, (slice(24, 32), slice(None))),
                                                  preds[k][24:])
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        for i, p in enumerate(preds):
            store.put(i, p, np.ones((32, 32), bool))
        thread.join(60)
        done.set()
        store.flush()
    assert not errors, errors


def test_a_slow_disk_bounds_the_queued_writes(tmp_path, monkeypatch):
    import time

    from tiledepth import scratch

    save = DiskStore._save

    def slow_save(self, tile_id, pred, valid):
        time.sleep(0.005)
        save(self, tile_id, pred, valid)

    monkeypatch.setattr(DiskStore, "_save", slow_save)
    most = 0
    with DiskStore(tmp_path, background=True) as store:
        for i in range(40):
            store.put(i, np.zeros((16, 16), np.float32), np.ones((16, 16), bool))
            most = max(most, len(store._pending))
        store.flush()
        assert all(store.get_pred(i, (slice(0, 1), slice(0, 1))).shape == (1, 1)
                   for i in range(40))
    assert most <= scratch.MAX_PENDING + 1


@pytest.mark.parametrize("background", [False, True])
def test_a_store_removes_only_the_files_it_wrote(tmp_path, background):
    with DiskStore(tmp_path, background=background) as store:
        store.put(0, np.ones((8, 8), np.float32), np.ones((8, 8), bool))
        store.put_coarse(np.zeros((4, 4), np.float32))
        store.flush()
        folder = store.path
        assert sorted(os.listdir(folder)) == ["coarse.npy", "tile0000000.pred.npy",
                                              "tile0000000.valid.npy"]
    assert not folder.exists() and os.listdir(tmp_path) == []
    with DiskStore(tmp_path, background=background) as store:
        store.put(1, np.ones((8, 8), np.float32), np.ones((8, 8), bool))
        store.flush()
        folder = store.path
        (folder / "theirs.txt").write_text("not the store's")
        (folder / "tile0000002.pred.npy").write_text("nor this")
    assert sorted(os.listdir(folder)) == ["theirs.txt", "tile0000002.pred.npy"]
    assert (folder / "theirs.txt").read_text() == "not the store's"


def test_checksum_tells_arrays_apart():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert checksum(a) == checksum(a.copy()) == checksum(np.asfortranarray(a))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(99))  # one ulp
    assert checksum(a) != checksum(b)


@pytest.mark.parametrize("background", [False, True])
def test_tiles_within_the_memory_budget_are_written_but_never_read_back(
        tmp_path, monkeypatch, background):
    rng = np.random.default_rng(2)
    preds = [rng.random((60, 50)).astype(np.float32) for _ in range(6)]
    reads = []
    monkeypatch.setattr("tiledepth.scratch.read_npy",
                        lambda path, *a, **k: reads.append(path) or read_npy(path, *a, **k))
    # the budget holds all six tiles: each is on disk (for a resume) and served from memory
    with DiskStore(tmp_path, cache_bytes=6 * 60 * 50 * 4, background=background) as store:
        for i, p in enumerate(preds):
            store.put(i, p, np.ones((60, 50), bool))
        store.flush()
        assert len(list(store.path.glob("tile*.pred.npy"))) == 6
        for i, p in enumerate(preds):
            np.testing.assert_array_equal(store.get(i)[0], p)
        assert reads == [] and list(store._cache) == [0, 1, 2, 3, 4, 5]


def _fill(store, monkeypatch, *, tiles: int, seed: int):
    """Put ``tiles`` random 60 x 50 tiles into ``store``; the tiles, and the list of the
    files it reads back from then on (names)."""
    rng = np.random.default_rng(seed)
    preds = [rng.random((60, 50)).astype(np.float32) for _ in range(tiles)]
    reads = []
    monkeypatch.setattr("tiledepth.scratch.read_npy",
                        lambda path, *a, **k: reads.append(path.name) or read_npy(path, *a, **k))
    for i, p in enumerate(preds):
        store.put(i, p, np.ones((60, 50), bool))
    return preds, reads


def test_tiles_beyond_the_memory_budget_spill_and_are_read_back(tmp_path, monkeypatch):
    with DiskStore(tmp_path, cache_bytes=2 * 60 * 50 * 4) as store:  # two tiles' worth
        preds, reads = _fill(store, monkeypatch, tiles=6, seed=3)
        assert list(store._cache) == [4, 5]
        for i in reversed(range(6)):  # 5 and 4 first, while they are still in memory
            np.testing.assert_array_equal(store.get(i)[0], preds[i])
        # tiles 0-3 came back from disk (prediction and mask each), 4 and 5 from memory
        assert sorted(reads) == sorted(f"tile{i:07d}.{k}.npy" for i in range(4)
                                       for k in ("pred", "valid"))


def test_reading_the_tiles_in_order_keeps_those_cached_it_reaches_soonest(tmp_path, monkeypatch):
    """As blending reads them: tiles 0-2 were evicted while tiles were put, so reading 0-2
    back evicts the tiles read last (8, 7, 6), not 3-5 (least recently used): 6 of the 9
    tiles come from disk, not all 9."""
    with DiskStore(tmp_path, cache_bytes=6 * 60 * 50 * 4) as store:  # six tiles' worth
        preds, reads = _fill(store, monkeypatch, tiles=9, seed=4)
        assert list(store._cache) == [3, 4, 5, 6, 7, 8]  # the latest, for the overlaps
        for i in range(9):
            for _ in range(2):  # each tile under two output windows
                np.testing.assert_array_equal(store.get(i)[0], preds[i])
    assert sorted({name[:11] for name in reads}) == [f"tile{i:07d}" for i in (0, 1, 2, 6, 7, 8)]


@pytest.mark.parametrize("background", [False, True])
def test_release_empties_the_cache_and_every_tile_is_read_from_disk(tmp_path, background):
    rng = np.random.default_rng(2)
    preds = [rng.random((40, 30)).astype(np.float32) for _ in range(4)]
    masks = [np.ones((40, 30), bool), rng.random((40, 30)) > 0.5, *[np.ones((40, 30), bool)] * 2]
    with DiskStore(tmp_path, cache_bytes=2**20, background=background) as store:
        for i, (p, v) in enumerate(zip(preds, masks, strict=True)):
            store.put(i, p, v)
        store.flush()
        assert len(store._cache) == 4
        store.release()
        assert (len(store._cache), store._cached) == (0, 0)
        for i, (p, v) in enumerate(zip(preds, masks, strict=True)):
            assert i in store
            np.testing.assert_array_equal(store.get_pred(i, (slice(5, 9), slice(0, 30))), p[5:9])
            pred, valid = store.get(i)  # from the file, not the array put
            assert pred is not p
            np.testing.assert_array_equal(pred, p)
            np.testing.assert_array_equal(valid, v)


def test_a_memory_store_keeps_its_tiles_on_release():
    store = MemoryStore()
    pred, valid = np.ones((4, 5), np.float32), np.ones((4, 5), bool)
    store.put(3, pred, valid)
    store.release()
    assert store.get(3) == (pred, valid)
