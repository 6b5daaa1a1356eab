"""The anchor made of several model calls of the coarse image (tiledepth.fusion.anchor)."""

import numpy as np
import pytest
from conftest import depth_field

import tiledepth
from tiledepth.fusion.anchor import anchor_of_calls, map_onto
from tiledepth.infer import COARSE_KEY, RETRY_STRIDE, coarse_key, is_coarse_key


def _unit(a):
    return (a - a.min()) / np.ptp(a)


def test_calls_that_repeat_give_the_first_back_to_the_bit():
    """A model whose calls repeat (an exactly consistent model) loses nothing: the anchor is
    its one call, not a rounded copy of it."""
    first = (3.0 + 40.0 * _unit(depth_field(48, 64))).astype(np.float32)
    valid = np.ones(first.shape, bool)
    out = anchor_of_calls([first, first.copy(), first.copy()], valid)
    assert out.dtype == np.float32 and np.array_equal(out, first)
    assert np.array_equal(anchor_of_calls([first], valid), first)


def test_each_call_is_mapped_onto_the_first_then_the_median_taken():
    """Three calls of an affine-invariant model: the truth under each call's own scale and
    shift and its own smooth error. The anchor is in the first call's values, and closer to
    the truth than the first call alone; a call's inverted patch is voted out."""
    truth = _unit(depth_field(60, 80).astype(np.float64))
    rows, cols = np.mgrid[0:60, 0:80] / 80.0
    warps = [0.08 * np.sin(2 * np.pi * (rows + 0.3 * k)) * np.cos(np.pi * (cols - 0.2 * k))
             for k in range(3)]
    maps = [(1.0, 0.0), (2.5, -1.0), (0.4, 7.0)]
    calls = [(s * (truth + w) + t).astype(np.float32) for (s, t), w in zip(maps, warps,
                                                                           strict=True)]
    patched = calls[2].copy()
    lo, hi = patched.min(), patched.max()
    patched[5:20, 50:65] = lo + hi - patched[5:20, 50:65]
    valid = np.ones(truth.shape, bool)
    # a map is found despite an inverted patch: 2.5 y - 1 onto y is 0.4 y' + 0.4
    other = 2.5 * calls[0] - 1
    other[5:20, 50:65] = other.min() + other.max() - other[5:20, 50:65]
    scale, shift = map_onto(other, calls[0], valid)
    assert scale == pytest.approx(0.4, rel=1e-6) and shift == pytest.approx(0.4, rel=1e-5)
    anchor = anchor_of_calls([calls[0], calls[1], patched], valid)

    def rmse(a):
        return float(np.sqrt(np.mean((a - truth) ** 2)))

    # measured: the first call 0.0397 (its warp), the anchor 0.0331
    assert rmse(anchor) < 0.9 * rmse(calls[0])
    assert np.abs(anchor[5:20, 50:65] - truth[5:20, 50:65]).max() < 0.2  # no inverted patch


def test_the_coarse_keys_are_distinct_and_no_tiles():
    """Each coarse call has its own key (a model seeding its noise per key draws a new
    sample for each), the first is -1 as it always was, the later ones are not negative (a
    model seeding with ``key + 1`` works), and none is a tile's or a tile's retry's; the
    out-of-memory message names the coarse image for each of its calls."""
    from tiledepth.errors import ModelError
    from tiledepth.infer import retry_key
    from tiledepth.models.oom import Halving

    keys = [coarse_key(k) for k in range(4)]
    assert keys[0] == COARSE_KEY == -1 and len(set(keys)) == 4
    assert keys[1] == RETRY_STRIDE - 1 and all(k >= 0 for k in keys[1:])
    assert all(is_coarse_key(k) for k in keys)
    tiles = [0, 5, 10**6, retry_key(5, 1), retry_key(10**6, 2)]
    assert not any(is_coarse_key(k) for k in tiles)

    def out_of_memory(batch, keys):
        raise RuntimeError("CUDA out of memory")

    for key in keys + tiles:
        with pytest.raises(ModelError) as info:
            Halving()(out_of_memory, np.zeros((1, 8, 8, 3), np.float32), [key], name="m")
        assert ("on the coarse image" in str(info.value)) == is_coarse_key(key), key
    with pytest.raises(ValueError, match="call must be >= 0"):
        coarse_key(-1)
    with pytest.raises(ValueError, match=r"tile_id must be in \[0, 4294967295\)"):
        retry_key(RETRY_STRIDE - 1, 1)  # the coarse image's: its later calls are coarse_key's


class _DrawnModel:
    """An affine-invariant model whose every call draws its own smooth error (a tilt and a
    bump, a new scale and shift) from its key, as a diffusion model's samples differ; the
    coarse calls' larger (a whole image's tone and tilt, where a tile's is small)."""

    kind, name, batch_size = "depth", "drawn", 16

    def __init__(self):
        self.keys = []

    def predict(self, batch, keys):
        out = []
        for x, key in zip(batch, keys, strict=True):
            self.keys.append(int(key))
            rng = np.random.default_rng(int(key) % 2**64)
            h, w = x.shape[:2]
            r, c = np.mgrid[0:h, 0:w] / max(h, w)
            a, b, f = rng.normal(0, 0.15 if is_coarse_key(key) else 0.03, 3)  # coarse: more
            error = a * r + b * c + f * np.sin(np.pi * r) * np.sin(np.pi * c)
            out.append(rng.uniform(0.5, 2) * (x[..., 0] + error) + rng.uniform(-1, 1))
        return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("calls", [3, 5])
def test_an_anchor_of_more_calls_takes_out_more_of_the_calls_own_error(calls):
    """Run end to end: the coarse image is called ``anchor_calls`` times, with the keys
    coarse_key(0), coarse_key(1), ..., before the tiles; the fused map's error, which the
    anchor's own error sets on this model, falls with more calls."""
    truth = _unit(depth_field(384, 384)).astype(np.float32)
    errors = {}
    for n in (1, calls):
        model = _DrawnModel()
        fused = tiledepth.estimate(truth, model=model, tile_size=128, overlap=0.25,
                                   coarse_size=96, anchor_calls=n, workers=0)
        coarse = [k for k in model.keys if is_coarse_key(k)]
        assert coarse == [coarse_key(k) for k in range(n)]
        a, b = np.polyfit(fused.ravel(), truth.ravel(), 1)
        errors[n] = float(np.sqrt(np.mean((a * fused + b - truth) ** 2)))
    # measured: 1 call 0.0444, 3 calls 0.0269, 5 calls 0.0240
    assert errors[calls] < 0.7 * errors[1]


def test_a_calls_nan_is_left_out_of_its_map_and_its_median():
    """A model that returns NaN at some pixels of one call: the map is fitted on the rest and
    the median taken of the other calls there; a pixel NaN in every call stays NaN."""
    truth = _unit(depth_field(40, 50).astype(np.float64)).astype(np.float32)
    second = 3 * truth + 2
    second[:5, :5] = np.nan
    third = truth.copy()
    third[:5, :5] = np.nan
    first = truth.copy()
    first[0, 0] = np.nan
    valid = np.ones(truth.shape, bool)
    assert [round(v, 6) for v in map_onto(second, truth, valid)] == [round(1 / 3, 6),
                                                                     round(-2 / 3, 6)]
    out = anchor_of_calls([first, second, third], valid)
    assert np.isnan(out[0, 0]) and np.isfinite(out).sum() == out.size - 1
    np.testing.assert_allclose(out[1:, 1:], truth[1:, 1:], atol=1e-5)


def test_a_call_that_cannot_be_mapped_is_left_out():
    """A call with no scale and shift onto the first (flat over the valid pixels, or too few
    of them) is left out of the median: the anchor stays in the first call's values."""
    x = _unit(depth_field(20, 30).astype(np.float64)).astype(np.float32)
    valid = np.zeros(x.shape, bool)
    valid[3, 4] = True  # one valid pixel: nothing can be fitted
    out = anchor_of_calls([x, 10 * x + 5, 20 * x + 5], valid)
    assert np.array_equal(out, x)
    flat = np.full(x.shape, 7.0, np.float32)
    ones = np.ones(x.shape, bool)
    assert np.array_equal(anchor_of_calls([x, flat], ones), x)
    with pytest.raises(ValueError, match="no scale and shift to fit"):
        map_onto(flat, x, ones)


def test_a_model_whose_calls_repeat_makes_two_and_its_first_is_the_anchor():
    """The second coarse call equal to the first ends the calls (a deterministic model, a
    Python callable): two calls, not three, and the output is the one-call run's, to the
    bit."""
    truth = _unit(depth_field(200, 240)).astype(np.float32)
    calls = []

    def model(batch):
        calls.append(batch.shape[1:3])
        return 2.0 * batch[..., 0] + 1.0

    kw = dict(tile_size=96, overlap=0.25, coarse_size=64, workers=0)
    three = tiledepth.estimate(truth, model=model, anchor_calls=3, **kw)
    coarse = [c for c in calls if c != (96, 96)]
    calls.clear()
    one = tiledepth.estimate(truth, model=model, anchor_calls=1, **kw)
    assert len(coarse) == 2 and len([c for c in calls if c != (96, 96)]) == 1
    assert np.array_equal(three, one)
