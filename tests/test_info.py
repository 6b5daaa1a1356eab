"""tiledepth info: description, tile plan and labelled estimates."""

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from toy_models import red

import tiledepth
from tiledepth.cli import main
from tiledepth.info import describe, marigold_tflop


def test_describe_matches_the_raster_and_the_run(rgba_tif, tmp_path):
    info = describe(rgba_tif, tile_size=192, overlap=0.25)
    assert (info.height, info.width, info.count) == (600, 700, 4)
    assert info.crs == "EPSG:32611" and info.pixel_size == (0.5, 0.5) and info.units == "metre"
    assert info.model_bands == (1, 2, 3) and info.dtypes == ("uint8",) * 4
    alpha_masked = (np.pi * 60**2 + 50 * 80) / (600 * 700)
    assert abs(info.masked_fraction - alpha_masked) < 0.005
    assert info.overlap_pixels == 48 and info.grid_shape == (4, 5) and info.tiles == 20
    result = tiledepth.run(rgba_tif, tmp_path / "o.tif", model=red, tile_size=192)
    assert info.tiles - info.empty_tiles == result.tiles
    assert info.scratch_bytes == result.tiles * (192 * 192 * 4 + 192 * 192 // 8 + 256)
    # Marigold: estimates per device class, slower on the CPU, labelled with their basis
    assert len(info.estimates) == 4
    cpu, *gpus = info.estimates.values()
    assert all(cpu > 100 * g for g in gpus)
    assert "ESTIMATES" in info.basis and "TFLOP" in info.basis
    assert round(marigold_tflop(768, steps=1), 2) == 2.61 + 2.14 + 5.75


def test_info_command(rgba_tif):
    result = CliRunner().invoke(main, ["info", str(rgba_tif), "--tile-size", "256"])
    assert result.exit_code == 0, result.output
    text = result.output
    for line in ["size:            700 x 600 px", "crs:             EPSG:32611",
                 "pixel size:      0.5 x 0.5 metre", "tile plan:       4 x 3 = 12 tiles of 256 px",
                 "scratch disk:", "memory:", "time (estimate):", "GPU, data centre",
                 "basis:           ESTIMATES"]:
        assert line in text, line
    callable_model = CliRunner().invoke(main, ["info", str(rgba_tif), "--model", "toy_models:red"])
    assert "time (estimate)" not in callable_model.output
    assert "unknown for a Python callable" in callable_model.output
    bad = CliRunner().invoke(main, ["info", str(rgba_tif), "--overlap", "2"])
    assert bad.exit_code == 2 and "overlap" in bad.output


def test_run_help_lists_the_gis_flags():
    text = CliRunner().invoke(main, ["run", "--help"]).output
    for flag in ["--output-kind", "--reference", "--control", "--control-crs", "--anchor",
                 "--overviews / --no-overviews", "--cog", "--uncertainty", "--preview",
                 "--hillshade", "-v, --verbose", "-q, --quiet", "--progress / --no-progress"]:
        assert flag in text, flag
    assert "info" in CliRunner().invoke(main, ["--help"]).output


def test_info_counts_nan_as_masked_names_gcps_and_takes_bands(tmp_path):
    """NaN pixels count as masked (the reader masks them; info said 0 %), a map placed by
    ground control points says so (it said "not georeferenced"), and `--bands` chooses a
    five-band raster's three (info had no such option and refused the raster)."""
    import rasterio
    from conftest import depth_image, write_raster
    from rasterio.control import GroundControlPoint

    from tiledepth.info import format_info

    half = (depth_image(256, 256) / 255).astype(np.float32)
    half[:, :, 128:] = np.nan
    info = describe(write_raster(tmp_path / "half.tif", half), model=red)
    assert info.masked_fraction == pytest.approx(0.5, abs=0.01)
    assert info.empty_tiles == 0  # one tile, half of it valid
    gcps = [GroundControlPoint(r, c, 500000 + c / 2, 5400000 - r / 2)
            for r, c in ((0, 0), (0, 120), (100, 0), (100, 120))]
    placed = write_raster(tmp_path / "gcp.tif", depth_image(100, 120), transform=None)
    with rasterio.open(placed, "r+") as ds:
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(32611))
    assert "georeferenced by 4 ground control points (EPSG:32611)" in \
        format_info(describe(placed, model=red))
    five = write_raster(tmp_path / "five.tif",
                        np.concatenate([depth_image(100, 120)] * 2)[:5])
    result = CliRunner().invoke(main, ["info", str(five), "--bands", "3,2,1", "--model",
                                       "toy_models:red"])
    assert result.exit_code == 0, result.output
    assert "the model sees [3, 2, 1]" in result.output


def test_info_plans_the_pyramid_levels(rgba_tif):
    # 600 x 700 with a 32 px coarse map: one level of 128 px, 128 x 110 -> 3 x 3 tiles of 64
    # (a level's tiles overlap by half; at --overlap 0.25 it would be 3 x 2)
    info = describe(rgba_tif, tile_size=64, coarse_size=32)
    assert info.pyramid == ((128, 9),)
    assert describe(rgba_tif, tile_size=64, coarse_size=32, pyramid=False).pyramid == ()
    out = CliRunner().invoke(main, ["info", str(rgba_tif), "--tile-size", "64",
                                    "--coarse-size", "32"]).output
    assert "pyramid:         a level of 128 px (9 tiles)" in out


def test_the_memory_estimate_counts_the_tiles_kept_in_memory(rgba_tif):
    kept = describe(rgba_tif, tile_size=64)  # a small raster: every tile fits the budget
    none = describe(rgba_tif, tile_size=64, memory=0)
    assert kept.memory_bytes - none.memory_bytes == kept.scratch_bytes > 0


def test_the_plan_counts_nodata_masks_and_scale_as_the_run_does(tmp_path):
    """describe() with nodata, a mask file or a scale plans the tiles the run predicts (it
    planned 25 tiles, none empty, where the run predicted 15 or 9)."""
    from conftest import write_raster

    image = (np.random.default_rng(0).random((3, 512, 512)) * 200 + 20).astype(np.uint8)
    image[:, :256] = 0  # a black collar, no nodata declared
    src = write_raster(tmp_path / "collar.tif", image)
    mask = write_raster(tmp_path / "mask.tif", ((image[0] > 0) * 255).astype(np.uint8)[None])
    # a mask's rule is the reader's: any value but 0 keeps a pixel (-1 too), and the mask's
    # own nodata masks it (info took '> 0' and ignored the mask's nodata)
    negative = write_raster(tmp_path / "neg.tif", -(image[:1] > 0).astype(np.int16))
    holes = write_raster(tmp_path / "holes.tif",
                         np.where(image[:1] > 0, 1, 7).astype(np.uint8), nodata=7)
    for options in ({"nodata": 0}, {"mask": str(mask)}, {"scale": 0.5},
                    {"mask": str(negative)}, {"mask": str(holes)}):
        plan = describe(src, model=red, tile_size=128, **options)
        run = tiledepth.run(src, tmp_path / "o.tif", model=red, tile_size=128,
                            overwrite=True, **options)
        assert plan.tiles - plan.empty_tiles == run.tiles, options


def test_info_masks_as_the_reader_does_alpha_beside_nodata_and_a_colour_map(tmp_path):
    """info's masked fraction is the reader's: an alpha band beside a declared nodata masks
    (info took GDAL's mask, the nodata alone: 0 %); a colour map's nodata index too."""
    from conftest import write_raster
    from rasterio.enums import ColorInterp

    grey = np.full((2, 100, 120), 90, np.uint8)
    grey[1] = 255
    grey[1, :, :60] = 0  # transparent left half; no pixel is the nodata value
    src = write_raster(tmp_path / "ga.tif", grey, nodata=0,
                       colorinterp=[ColorInterp.gray, ColorInterp.alpha], alpha="YES")
    plan = describe(src, model=red, tile_size=64, bands=(1,))
    assert plan.masked_fraction == pytest.approx(0.5, abs=0.02)
    index = np.zeros((1, 100, 120), np.uint8)
    index[:, 50:] = 1  # entry 1, the nodata index
    pal = write_raster(tmp_path / "pal.tif", index, photometric="palette", nodata=1)
    with rasterio.open(pal, "r+") as ds:
        ds.write_colormap(1, {0: (200, 10, 10, 255), 1: (0, 0, 0, 255)})
    assert describe(pal, model=red, tile_size=64).masked_fraction == pytest.approx(0.5, abs=0.02)


def test_info_estimates_each_model_at_its_own_steps_and_only_marigold(rgba_tif, tmp_path):
    """Every non-callable model was costed as Marigold v1-1 at 4 steps: marigold-v1-0 (10
    steps) and e2e-ft (1) too, and Depth Anything got Marigold's times and weights."""
    import json

    from tiledepth.info import format_info

    v11 = describe(rgba_tif, tile_size=256)
    for model, steps in [("marigold-v1-0", 10), ("marigold-e2e-ft", 1), ("marigold-lcm", 1),
                         ("GonzaloMG/marigold-e2e-ft-depth", 1), ("marigold-v1-1", 4)]:
        info = describe(rgba_tif, tile_size=256, model=model)
        assert f"{steps} step{'s' if steps > 1 else ''}, ensemble 1" in info.basis, model
        ratio = marigold_tflop(256, steps) / marigold_tflop(256, 4)
        gpu = "GPU, data centre (H100 class, fp16)"
        engine = v11.height * v11.width / 1e6 / 11.0
        assert (info.estimates[gpu] - engine) == pytest.approx(
            (v11.estimates[gpu] - engine) * ratio, rel=1e-9), model
    assert "10 steps" in describe(rgba_tif, tile_size=256, model="marigold-lcm",
                                  steps=10).basis  # --steps wins
    folder = tmp_path / "da"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    for model in ("depth-anything-v2-small", "depth-pro", str(folder)):
        info = describe(rgba_tif, tile_size=256, model=model)
        assert info.estimates == {} and "Marigold only" in info.basis, model
        text = format_info(info)
        assert "time (estimate)" not in text and "GB" not in text and "TFLOP" not in text


def test_the_slow_cpu_warning_uses_the_models_steps_and_names_other_models(rgba_tif,
                                                                           monkeypatch, caplog):
    """An e2e-ft run (1 step) was costed at 4 steps and warned about, the warning
    recommending e2e-ft itself."""
    import types
    from pathlib import Path

    import torch

    from tiledepth import plan
    from tiledepth.models.marigold_model import MarigoldModel
    from tiledepth.options import make_options

    pipe = types.SimpleNamespace(default_denoising_steps=1, text_encoder=None,
                                 empty_text_embedding=object(), device=torch.device("cpu"),
                                 config={}, name_or_path="GonzaloMG/marigold-e2e-ft-depth")
    model = MarigoldModel(pipe)
    opts = make_options(model="marigold-e2e-ft", tile_size=256)
    cpu = {steps: describe(rgba_tif, tile_size=256, steps=steps).estimates[
        "CPU, 8 cores (fp32)"] for steps in (1, 4)}
    monkeypatch.setattr(plan, "SLOW_CPU_RUN_S", (cpu[1] + cpu[4]) / 2)  # slow at 4 steps only
    with caplog.at_level("WARNING", logger="tiledepth"):
        plan.warn_if_slow_on_cpu(Path(rgba_tif), opts, model)
    assert "on a CPU" not in caplog.text  # its one step is fast enough
    monkeypatch.setattr(plan, "SLOW_CPU_RUN_S", 0.0)
    with caplog.at_level("WARNING", logger="tiledepth"):
        plan.warn_if_slow_on_cpu(Path(rgba_tif), opts, model)
    (line,) = [r.getMessage() for r in caplog.records if "on a CPU" in r.getMessage()]
    assert "marigold-e2e-ft" not in line
    assert line.endswith("faster: a GPU (--device cuda), or --model depth-anything-v2-small")


def test_info_scratch_counts_the_reduced_map_and_takes_scale_nodata_and_mask(tmp_path):
    """Below ``--scale`` 1 the run's scratch holds the reduced map too (check_room counts
    it; info, labelled exact, did not), and info takes ``--scale``, ``--nodata`` and
    ``--mask`` as flags (only through --config before)."""
    from conftest import write_raster

    from tiledepth.info import tile_scratch_bytes

    image = (np.random.default_rng(0).random((3, 400, 500)) * 200 + 20).astype(np.uint8)
    image[:, :, :200] = 0
    src = write_raster(tmp_path / "in.tif", image)
    mask = write_raster(tmp_path / "mask.tif", ((image[0] > 0) * 255).astype(np.uint8)[None])
    half = describe(src, model=red, tile_size=128, scale=0.5)
    assert half.scratch_bytes == ((half.tiles - half.empty_tiles) * tile_scratch_bytes(128, 128)
                                  + 200 * 250 * 4)
    full = describe(src, model=red, tile_size=128)
    assert full.scratch_bytes == (full.tiles - full.empty_tiles) * tile_scratch_bytes(128, 128)
    for flags, options in [(["--scale", "0.5"], {"scale": 0.5}), (["--nodata", "0"],
                                                                    {"nodata": 0}),
                           (["--mask", str(mask)], {"mask": str(mask)})]:
        result = CliRunner().invoke(main, ["info", str(src), "--model", "toy_models:red",
                                           "--tile-size", "128", *flags])
        assert result.exit_code == 0, result.output
        info = describe(src, model=red, tile_size=128, **options)
        line = next(x for x in result.output.splitlines() if x.startswith("tile plan:"))
        assert f"= {info.tiles} tiles" in line and f"about {info.empty_tiles} entirely" in line
    assert describe(src, model=red, tile_size=128, nodata=0).empty_tiles > 0


def test_the_memory_estimate_leaves_out_the_reduced_map_of_scale(tmp_path):
    """Below ``--scale`` 1 the reduced map is a memory map of a scratch file: on the scratch
    disk, not among the tile predictions the cache keeps (``--memory``). The estimate raised
    that cap by its 200 x 250 x 4 bytes."""
    from conftest import write_raster

    from tiledepth.info import ENGINE_PEAK, tile_scratch_bytes

    src = write_raster(tmp_path / "in.tif", np.full((3, 400, 500), 120, np.uint8))
    half = describe(src, model=red, tile_size=128, scale=0.5)  # 3 x 2 tiles, none masked
    assert (half.tiles, half.empty_tiles) == (6, 0)
    assert half.scratch_bytes == 6 * tile_scratch_bytes(128, 128) + 200 * 250 * 4
    assert half.memory_bytes == ENGINE_PEAK + 6 * tile_scratch_bytes(128, 128)  # was + 200000
    assert describe(src, model=red, tile_size=128, scale=0.5, memory=0).memory_bytes \
        == ENGINE_PEAK


def test_info_says_the_bands_and_mask_the_reader_reads(tmp_path):
    """A file tagging its bands Blue, Green, Red: the model sees [3, 2, 1] without
    ``--bands`` (it saw [1, 2, 3], blue as red). An RGBA raster declaring a nodata, with
    average overviews: its transparent third is masked (info said 0.0 %: each overview's
    alpha marked it valid)."""
    from conftest import write_raster
    from rasterio.enums import ColorInterp, Resampling

    bgr = write_raster(tmp_path / "bgr.tif", np.zeros((3, 60, 80), np.uint8),
                       colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red])
    result = CliRunner().invoke(main, ["info", str(bgr), "--model", "toy_models:red"])
    assert result.exit_code == 0, result.output
    assert "(uint8, uint8, uint8; blue, green, red); the model sees [3, 2, 1]" in result.output
    rgba = np.full((4, 1200, 1800), 120, np.uint8)  # sampled decimated: from an overview
    rgba[3, :, :600] = 0
    path = write_raster(tmp_path / "rgba.tif", rgba, nodata=7, alpha="YES", photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.average)
    plan = describe(path, model=red, tile_size=256)
    assert plan.masked_fraction == pytest.approx(1 / 3, abs=0.01)


def test_info_scratch_counts_the_spreads_of_uncertainty_as_check_room_does(tmp_path,
                                                                           monkeypatch):
    """With ``--uncertainty`` the run keeps each tile's spread on the scratch disk beside
    its prediction: check_room asks twice the predictions' room, and info said once."""
    from conftest import write_raster
    from toy_models import RedWithSpread

    import tiledepth.plan
    from tiledepth.info import tile_scratch_bytes

    image = (np.random.default_rng(0).random((3, 200, 240)) * 200 + 20).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", image)
    options = dict(model=RedWithSpread(), tile_size=96, pyramid=False, overviews=False)
    once = describe(src, **options)
    twice = describe(src, **options, uncertainty=True, ensemble=2)
    assert twice.tiles - twice.empty_tiles == once.tiles - once.empty_tiles == 9
    assert once.scratch_bytes == 9 * tile_scratch_bytes(96, 96) == 9 * 38272
    assert twice.scratch_bytes == 2 * once.scratch_bytes == 688896
    asked = []
    free = tiledepth.plan.check_free_space
    monkeypatch.setattr(tiledepth.plan, "check_free_space",
                        lambda needs: asked.append(needs[0][1]) or free(needs))
    tiledepth.run(src, tmp_path / "o.tif", **options, uncertainty=True, ensemble=2)
    assert asked and asked[0] == twice.scratch_bytes  # what the run asks before predicting


def test_info_describes_an_uncertainty_output_band_1_and_lists_both_bands(tmp_path):
    """A tiledepth output with --uncertainty has two bands (the map, its spread): info
    describes band 1 (not refused as '2 colour bands'), and lists both bands' kinds."""
    from conftest import write_raster
    from toy_models import RedWithSpread

    image = (np.random.default_rng(0).random((3, 120, 150)) * 200 + 20).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", image)
    out = tiledepth.run(src, tmp_path / "o.tif", model=RedWithSpread(), tile_size=64,
                        uncertainty=True, ensemble=2).output
    info = describe(out)
    assert info.count == 2 and info.model_bands == ()  # a run refuses it (test below)
    assert info.descriptions == ("depth", "uncertainty")
    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "values:          depth (no units), uncertainty (no units)" in result.output
    # an explicit band choice is kept; another two-band raster is still refused
    assert describe(out, bands=(2,)).model_bands == (2, 2, 2)
    plain = write_raster(tmp_path / "two.tif", image[:2])
    with pytest.raises(Exception, match="2 colour bands"):
        describe(plain)


def test_info_on_a_url_it_cannot_read_says_what_the_server_said():
    """The check for a tiledepth output (band 1 of an --uncertainty one) opened a URL first
    and swallowed the failure; GDAL kept the failed open, and the reader's own open then
    said only "does not exist", not why (a connection refused, an unknown host)."""
    result = CliRunner().invoke(main, ["info", "http://127.0.0.1:9/x.tif"])
    assert result.exit_code == 2, result.output
    assert "CURL error" in result.output and "does not exist" not in result.output


def test_info_on_an_uncertainty_output_says_the_runs_band_refusal(tmp_path):
    """info said "the model sees [1, 1, 1]" of a tiledepth --uncertainty output, which
    run refuses ("has 2 colour bands; pass --bands 1"): it says the run's refusal now, and
    with --bands 1 what the run then takes."""
    from conftest import write_raster
    from toy_models import RedWithSpread

    from tiledepth.errors import InputError

    image = (np.random.default_rng(0).random((3, 60, 70)) * 200 + 20).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", image)
    out = tiledepth.run(src, tmp_path / "o.tif", model=RedWithSpread(), tile_size=64,
                        uncertainty=True).output
    with pytest.raises(InputError) as refused:  # what the run says
        tiledepth.run(out, tmp_path / "again.tif", model="toy_models:red", tile_size=64)
    info = describe(out, model="toy_models:red", tile_size=64)
    assert info.bands_refused == str(refused.value)
    assert info.bands_refused.startswith("o.tif has 2 colour bands; pass --bands 1")
    result = CliRunner().invoke(main, ["info", str(out), "--model", "toy_models:red"])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("bands:")]
    assert line == ("bands:           2 (float32, float32; gray, undefined); a run refuses "
                    f"them: {refused.value}")
    taken = describe(out, bands=(1,))
    assert taken.bands_refused is None and taken.model_bands == (1, 1, 1)
    tiledepth.run(out, tmp_path / "again.tif", model="toy_models:red", tile_size=64,
                  bands=(1,))  # as info says
    plain = describe(src)  # a raster the run takes: the bands it sees, as before
    assert plain.bands_refused is None and plain.model_bands == (1, 2, 3)


def test_info_costs_a_marigold_folder_at_its_own_default_steps(rgba_tif, tmp_path):
    """A local Marigold folder was costed at 4 steps (v1-1's) although the run takes its
    ``model_index.json``'s ``default_denoising_steps`` (a v1-0 folder: 10)."""
    import json

    folder = tmp_path / "marigold-v1-0"
    folder.mkdir()
    index = {"_class_name": "MarigoldDepthPipeline", "default_denoising_steps": 10}
    (folder / "model_index.json").write_text(json.dumps(index))
    gpu = "GPU, data centre (H100 class, fp16)"
    v10 = describe(rgba_tif, tile_size=256, model="marigold-v1-0")
    for model in (str(folder), folder):
        info = describe(rgba_tif, tile_size=256, model=model)
        assert "(Marigold v1-1, 10 steps, ensemble 1" in info.basis
        assert info.estimates[gpu] == pytest.approx(v10.estimates[gpu], rel=1e-12)
    assert "3 steps" in describe(rgba_tif, tile_size=256, model=str(folder), steps=3).basis
    index["default_denoising_steps"] = None  # says none: the loader refuses it; v1-1's here
    (folder / "model_index.json").write_text(json.dumps(index))
    assert "4 steps" in describe(rgba_tif, tile_size=256, model=str(folder)).basis


def test_info_refuses_the_e2e_ensemble_a_run_refuses_and_skips_a_presets(rgba_tif):
    """``info --model marigold-e2e-ft --ensemble 4`` estimated 4 members (34.2 TFLOP a 768 px
    tile) that the run refuses ("use ensemble=1"); the quality preset's ``ensemble: 5`` is
    skipped for it, as the run skips it."""
    from pathlib import Path

    from tiledepth.errors import OptionError

    for model in ("marigold-e2e-ft", "GonzaloMG/marigold-e2e-ft-depth"):
        with pytest.raises(OptionError, match=r"^ensemble=4 with a deterministic model \(one "
                                              r"step from zero noise\).*use ensemble=1$"):
            describe(rgba_tif, tile_size=256, model=model, ensemble=4)
    quality = Path(__file__).parent.parent / "configs" / "quality.yaml"
    info = describe(rgba_tif, tile_size=256, model="marigold-e2e-ft", config=quality)
    assert "1 step, ensemble 1" in info.basis
    assert "4 steps, ensemble 5" in describe(rgba_tif, tile_size=256, config=quality).basis


def test_info_refuses_an_option_a_loaded_model_object_does_not_have_as_run_does(tmp_path):
    """A loaded model object passed to the library (not named by text) was never checked by
    ``describe``: ``steps=5`` for a model that has 10 was planned, where ``run`` refuses it;
    its own value passes in both."""
    from conftest import depth_field, write_raster

    from tiledepth.errors import OptionError

    class Own:
        kind, name, batch_size, steps = "depth", "own", 4, 10

        def predict(self, batch, keys):
            return batch[..., 0].astype(np.float32)

    rgb = (np.stack([depth_field(96, 96)] * 3) * 255).astype(np.uint8)
    src = write_raster(tmp_path / "r.tif", rgb)
    assert describe(src, model=Own(), steps=10)
    for call in (lambda: describe(src, model=Own(), steps=5),
                 lambda: tiledepth.run(src, tmp_path / "o.tif", model=Own(), steps=5)):
        with pytest.raises(OptionError, match=r"steps=5 \(it has 10\)"):
            call()


@pytest.mark.parametrize(("text", "said"), [
    ("glob: '*.tif'\n", "'glob' is not a config key, and tiledepth info has no --glob; it is a "
     "flag of `tiledepth batch`: give it there (`tiledepth batch INPUT... -o DIR --config "
     "{cfg} --glob ...`); remove it"),
    ("overwrite: true\ntile_size: 256\n", "'overwrite' is not a config key, and tiledepth "
     "info has no --overwrite; it is a flag of `tiledepth run` and `tiledepth batch`: give it "
     "there; remove it"),
    ("split: true\nbounds: [0, 0, 1, 1]\n", "'split', 'bounds' are not config keys, and "
     "tiledepth info has no --split or --bounds; they are flags of `tiledepth run`: give them "
     "there; remove them"),
    ("shard: 0/2\noverwrite: true\noutput-dir: out\nglob: '*.tif'\n", "'shard', 'overwrite', "
     "'output-dir', 'glob' are not config keys, and tiledepth info has no --shard or "
     "--overwrite or -o/--output-dir or --glob; --shard and --glob are flags of `tiledepth "
     "batch`: give them there (`tiledepth batch INPUT... -o DIR --config {cfg} --shard ... "
     "--glob ...`); --overwrite is a flag of `tiledepth run` and `tiledepth batch`: give it "
     "there; -o/--output-dir is a flag of `tiledepth batch`: give it there; remove them"),
])
def test_info_says_whose_flags_a_configs_command_keys_are(text, said, rgba_tif, tmp_path):
    """``info --config c.yaml`` with a ``glob:`` (batch's) or ``overwrite:`` (run's and
    batch's) key said "give it on the command line", where info has no such flag: one line
    names every such key and the commands that have it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    result = CliRunner().invoke(main, ["info", str(rgba_tif), "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"tiledepth: error: {cfg}: {said.format(cfg=cfg)} from the config"]
    # run has --overwrite and --split: its message is as before
    run = CliRunner().invoke(main, ["run", str(rgba_tif), "-o", str(tmp_path / "o.tif"),
                                    "--config", str(cfg)])
    assert run.exit_code == 2 and "tiledepth info" not in run.output, run.output
