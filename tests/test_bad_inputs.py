"""Every odd input, one row each: it works (and the output is checked), or the CLI exits 2 (bad
input or options) or 1 (failure while running) with one line naming the file at fault, what is
wrong and what to do; no traceback; nothing left behind in the output folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import CRS, TRANSFORM, depth_field, depth_image, write_raster
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp as C
from rasterio.transform import from_origin

from tiledepth.cli import main

ROTATED = from_origin(500000, 5400000, 0.5, 0.5) @ rasterio.Affine.rotation(20)
GCPS = [GroundControlPoint(0, 0, 500000, 5400000), GroundControlPoint(0, 99, 500050, 5400000),
        GroundControlPoint(79, 0, 500000, 5399960)]


@dataclass(frozen=True)
class Case:
    """One row: ``make(folder)`` writes the input and returns the CLI arguments after ``run``."""

    make: Callable[[Path], list]
    code: int
    says: tuple[str, ...] = ()
    check: Callable[[Path, Path], None] | None = None  # (input, output) of a run that works
    flags: list = field(default_factory=lambda: ["--model", "toy_models:red", "--tile-size", 64])


# -- inputs ------------------------------------------------------------------------------------


def rgb(folder: Path, name="rgb.tif", h=120, w=150, **kw) -> Path:
    return write_raster(folder / name, depth_image(h, w), **kw)


def text_file(folder: Path) -> Path:
    path = folder / "notes.tif"
    path.write_text("flight log, not a raster\n")
    return path


def empty_file(folder: Path) -> Path:
    path = folder / "empty.tif"
    path.touch()
    return path


def truncated(folder: Path) -> Path:
    full = write_raster(folder / "full.tif", depth_image(300, 300), compress="deflate")
    data = full.read_bytes()
    full.unlink()
    path = folder / "cut.tif"
    path.write_bytes(data[: len(data) // 2])  # the header (at the start) survives
    return path


def bands(folder: Path, n: int, name: str) -> Path:
    data = np.concatenate([depth_image(80, 100)] * 2)[:n]
    return write_raster(folder / name, data, colorinterp=[C.gray] * n)


def rgba(folder: Path) -> Path:
    data = np.concatenate([depth_image(130, 170), np.full((1, 130, 170), 255, np.uint8)])
    data[3, 40:90, 60:120] = 0
    return write_raster(folder / "rgba.tif", data, colorinterp=[C.red, C.green, C.blue, C.alpha])


def typed(folder: Path, dtype: str) -> Path:
    d = depth_field(140, 160)
    if dtype == "float32":
        data = np.repeat(d[None], 3, 0)
        data[:, 50:70, 30:90] = np.nan
    else:
        info = np.iinfo(dtype)
        data = np.repeat((info.min / 2 + d * (info.max / 2 - info.min / 2))[None], 3, 0)
    return write_raster(folder / f"{dtype}.tif", data.astype(dtype))


def complex_raster(folder: Path) -> Path:
    d = depth_field(80, 100)
    return write_raster(folder / "sar.tif", np.repeat((d + 1j * d)[None], 3, 0).astype("complex64"))


def exif_jpeg(folder: Path, orientation: str = "6") -> Path:
    path = folder / "photo.jpg"
    with rasterio.open(path, "w", driver="JPEG", width=150, height=120, count=3,
                       dtype="uint8") as dst:
        dst.write(depth_image(120, 150))
        dst.update_tags(EXIF_Orientation=orientation)
    return path


def config(folder: Path, text: str) -> list:
    path = folder / "opts.yaml"
    path.write_text(text)
    return [rgb(folder), "--config", path]


def black_border(folder: Path) -> Path:
    """An orthomosaic whose black border (no nodata declared) covers most tiles."""
    data = depth_image(160, 200)
    data[:, :, :175] = 0
    return write_raster(folder / "border.tif", data)


def all_masked(folder: Path) -> Path:
    return write_raster(folder / "masked.tif", np.zeros((3, 90, 90), np.uint8), nodata=0)


def gcp_raster(folder: Path, crs=CRS) -> Path:
    path = folder / "gcp.tif"
    with rasterio.open(path, "w", driver="GTiff", height=80, width=100, count=3, dtype="uint8",
                       gcps=GCPS, crs=crs or rasterio.crs.CRS()) as dst:
        dst.write(depth_image(80, 100))
    return path


def taken_checkpoint_name(folder: Path, by: str) -> Path:
    """An RGB input whose checkpoint name (for -o out.tif) holds a link or a folder not ours.

    The link points to a user's folder outside ``folder``, which must stay as it was.
    """
    from tiledepth.checkpoint import checkpoint_folder

    name = checkpoint_folder(folder / "out.tif", folder)
    if by == "link":
        victim = folder.parent / "precious"
        victim.mkdir()
        (victim / "notes.txt").write_text("field notes")
        name.symlink_to(victim, target_is_directory=True)
    else:
        name.mkdir()
        (name / "notes.txt").write_text("field notes")
    return rgb(folder)


def binary(folder: Path, name: str) -> Path:
    """A file of bytes that are no UTF-8 text where a text file is expected."""
    path = folder / name
    path.write_bytes(bytes(range(128, 256)) * 4)
    return path


def neighbours(folder: Path) -> list[Path]:
    """Two RGB rasters side by side on one grid (a --mosaic), 100 px wide each."""
    right = from_origin(500000.0 + 100 * 0.5, 5400000.0, 0.5, 0.5)
    return [rgb(folder, "west.tif", h=80, w=100), rgb(folder, "east.tif", h=80, w=100,
                                                       transform=right)]


def vrt_file(folder: Path) -> Path:
    """``m.vrt`` reading ``tiles/src.tif`` relative to itself (relativeToVRT="1")."""
    (folder / "tiles").mkdir()
    rgb(folder / "tiles", "src.tif", h=80, w=100)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
        f'relativeToVRT="1">tiles/src.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    path = folder / "m.vrt"
    path.write_text(f'<VRTDataset rasterXSize="100" rasterYSize="80"><SRS>{CRS}</SRS>'
                    f"<GeoTransform>500000, 0.5, 0, 5400000, 0, -0.5</GeoTransform>{bands}"
                    "</VRTDataset>")
    return path


def stac_item(folder: Path) -> Path:
    """``item.json``, a STAC item whose visual asset is ``scene.tif`` beside it."""
    rgb(folder, "scene.tif", h=80, w=100)
    path = folder / "item.json"
    path.write_text('{"type": "Feature", "assets": {"visual": {"href": "scene.tif"}}}')
    return path


def mask_raster(folder: Path, name: str = "mask.tif", **kw) -> Path:
    """A mask of ``rgb``'s 120 x 150 px: its left 50 columns 0 (masked)."""
    mask = np.ones((1, 120, 150), np.uint8)
    mask[:, :, :50] = 0
    return write_raster(folder / name, mask, **kw)


def masked_left(src: Path) -> np.ndarray:
    masked = np.zeros((120, 150), bool)
    masked[:, :50] = True
    return masked


def fake_checkpoint(folder: Path) -> Path:
    model = folder / "my-marigold"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


# -- checks of runs that work --------------------------------------------------------------------


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), {"crs": ds.crs, "transform": ds.transform, "gcps": ds.gcps[0],
                            "shape": ds.shape}


def nan_exactly_where(mask_of: Callable[[Path], np.ndarray], r: float = 0.999):
    def check(src: Path, out: Path) -> None:
        depth, meta = read(out)
        np.testing.assert_array_equal(np.isnan(depth), mask_of(src))
        with rasterio.open(src) as ds:
            assert meta["shape"] == ds.shape
            good = ~mask_of(src)
            truth = ds.read(1).astype(np.float64)[good]
        # depth is the (stretched) red band: one global linear map
        assert np.corrcoef(depth[good], truth)[0, 1] > r
    return check


def alpha_zero(src: Path) -> np.ndarray:
    with rasterio.open(src) as ds:
        return ds.read(4) == 0


def nan_in_band(src: Path) -> np.ndarray:
    with rasterio.open(src) as ds:
        return np.isnan(ds.read(1))


def nothing_masked(src: Path) -> np.ndarray:
    with rasterio.open(src) as ds:
        return np.zeros(ds.shape, bool)


def finite_depth_on_the_image(src: Path, out: Path) -> None:
    depth, _ = read(out)
    assert np.isfinite(depth).all()
    with rasterio.open(src) as ds:
        red = ds.read(1)[:, 175:].astype(np.float64)
    assert np.corrcoef(depth[:, 175:].ravel(), red.ravel())[0, 1] > 0.99


def georef(**expected):
    def check(src: Path, out: Path) -> None:
        depth, meta = read(out)
        assert np.isfinite(depth).all()
        for key, value in expected.items():
            if key == "transform":
                assert meta["transform"].almost_equals(value)
            elif key == "gcps":
                assert [(g.row, g.col, g.x, g.y) for g in meta["gcps"]] == [
                    (g.row, g.col, g.x, g.y) for g in value]
            else:
                assert meta[key] == value
    return check


# -- the table ------------------------------------------------------------------------------------

CASES = {
    "missing file": Case(lambda d: [d / "missing.tif"], 2, ("missing.tif", "no such file")),
    "folder as input": Case(lambda d: [(d / "frames").mkdir() or d / "frames"], 2,
                            ("frames", "is a folder", "pass one image file")),
    "text file": Case(lambda d: [text_file(d)], 2,
                      ("notes.tif", "cannot read it as a raster", "complete GeoTIFF")),
    "zero-byte file": Case(lambda d: [empty_file(d)], 2, ("empty.tif", "0 bytes", "re-export")),
    "truncated TIFF": Case(lambda d: [truncated(d)], 2,
                           ("cut.tif", "truncated or corrupt", "re-download")),
    "2-band raster": Case(lambda d: [bands(d, 2, "two.tif")], 2,
                          ("two.tif", "2 colour bands", "--bands 1")),
    "6 bands without --bands": Case(lambda d: [bands(d, 6, "six.tif")], 2,
                                    ("six.tif", "6 bands", "--bands 1,2,3")),
    "6 bands with --bands": Case(lambda d: [bands(d, 6, "six.tif"), "--bands", "4,5,6"], 0,
                                 check=nan_exactly_where(nothing_masked)),
    "--bands out of range": Case(lambda d: [rgb(d), "--bands", "1,2,5"], 2,
                                 ("rgb.tif", "band 5 is out of range", "1..3")),
    "RGBA with alpha": Case(lambda d: [rgba(d)], 0, check=nan_exactly_where(alpha_zero)),
    "uint16": Case(lambda d: [typed(d, "uint16")], 0, check=nan_exactly_where(nothing_masked)),
    "int16": Case(lambda d: [typed(d, "int16")], 0, check=nan_exactly_where(nothing_masked)),
    "float32 with NaN": Case(lambda d: [typed(d, "float32")], 0,
                             check=nan_exactly_where(nan_in_band)),
    "black border over most tiles, no nodata": Case(
        lambda d: [black_border(d)], 0, check=finite_depth_on_the_image),
    "all pixels masked": Case(lambda d: [all_masked(d)], 2,
                              ("masked.tif", "nothing to estimate", "nodata")),
    "no CRS": Case(lambda d: [rgb(d, crs=None)], 0,
                   check=georef(crs=None, transform=TRANSFORM)),
    "no georeferencing (PNG)": Case(
        lambda d: [rgb(d, "frame.png", crs=None, transform=None, driver="PNG", tiled=False,
                       blockxsize=None, blockysize=None)], 0, check=georef(crs=None)),
    "rotated transform": Case(lambda d: [rgb(d, transform=ROTATED)], 0,
                              check=georef(transform=ROTATED)),
    "GCP georeferenced": Case(lambda d: [gcp_raster(d)], 0, check=georef(gcps=GCPS)),
    "GCPs without a CRS": Case(lambda d: [gcp_raster(d, crs=None)], 0,
                               check=georef(gcps=GCPS, crs=None)),
    "100000 x 40 raster": Case(
        lambda d: [write_raster(d / "strip.tif", depth_image(100_000, 40), tiled=False,
                                blockxsize=None, blockysize=None)], 0,
        # the coarse overview is squeezed 195 x along the strip, so it blurs what tiles see
        check=nan_exactly_where(nothing_masked, r=0.99),
        flags=["--model", "toy_models:red", "--tile-size", 512, "--overlap", 0.1,
               "--batch-size", 16]),
    "smaller than one tile": Case(lambda d: [rgb(d, h=40, w=50)], 0,
                                  check=nan_exactly_where(nothing_masked)),
    "overlap < 0": Case(lambda d: [rgb(d), "--overlap", -0.1], 2,
                        ("rgb.tif", "overlap must be in [0, 0.9)", "got -0.1")),
    "overlap = 0.9": Case(lambda d: [rgb(d), "--overlap", 0.9], 2,
                          ("rgb.tif", "overlap must be in [0, 0.9)", "got 0.9")),
    "tile size below the engine's minimum": Case(lambda d: [rgb(d), "--tile-size", 16], 2,
                                                 ("rgb.tif", "tile_size must be >= 32")),
    "tile size below the model's minimum": Case(
        lambda d: [rgb(d), "--model", "toy_models:needs_64", "--tile-size", 48], 2,
        ("rgb.tif", "below 64", "toy_models:needs_64", "--tile-size 64 or more")),
    "tile size not a multiple the model needs": Case(
        lambda d: [rgb(d), "--model", "toy_models:vit14", "--tile-size", 100], 2,
        ("rgb.tif", "not a multiple of 14", "toy_models:vit14", "--tile-size 98 or 112")),
    "tile size a multiple the model needs": Case(
        lambda d: [rgb(d), "--model", "toy_models:vit14", "--tile-size", 56], 0,
        check=nan_exactly_where(nothing_masked)),
    "complex-valued bands": Case(lambda d: [complex_raster(d)], 2,
                                 ("sar.tif", "complex-valued bands (complex64)",
                                  "real-valued bands (integers or floats)")),
    "config: scratch a number": Case(lambda d: config(d, "scratch: 5\n"), 2,
                                     ("opts.yaml", "scratch must be a folder path", "got 5")),
    "config: reference a number": Case(lambda d: config(d, "reference: 7\n"), 2,
                                       ("opts.yaml", "reference must be a raster path", "got 7")),
    "config: model a list": Case(lambda d: config(d, "model: [1, 2]\n"), 2,
                                 ("opts.yaml", "model must be a model name", "got list [1, 2]"),
                                 flags=["--tile-size", 64]),
    "config: resume a word": Case(lambda d: config(d, "resume: maybe\n"), 2,
                                  ("opts.yaml", "resume must be true or false", "'maybe'")),
    "--coarse-weight inf": Case(lambda d: [rgb(d), "--coarse-weight", "inf"], 2,
                                ("rgb.tif", "coarse_weight must be a finite number", "got inf")),
    "--coarse-weight nan": Case(lambda d: [rgb(d), "--coarse-weight", "nan"], 2,
                                ("rgb.tif", "coarse_weight must be a finite number", "got nan")),
    "--coarse-weight negative": Case(lambda d: [rgb(d), "--coarse-weight", -1], 2,
                                     ("rgb.tif", "coarse_weight must be a finite number > 0",
                                      "got -1.0")),
    "--anchor-blur inf": Case(lambda d: [rgb(d), "--anchor-blur", "inf"], 2,
                              ("rgb.tif", "anchor_blur must be a finite number", "got inf")),
    "--overlap nan": Case(lambda d: [rgb(d), "--overlap", "nan"], 2,
                          ("rgb.tif", "overlap must be a finite number", "got nan")),
    "--tile-size 100000": Case(lambda d: [rgb(d), "--tile-size", 100000], 2,
                               ("rgb.tif", "tile_size must be <= 8192 px", "got 100000")),
    "--coarse-size 100000": Case(lambda d: [rgb(d), "--coarse-size", 100000], 2,
                                 ("rgb.tif", "coarse_size must be <= 8192 px", "got 100000")),
    "--workers 1000 (capped at the cores)": Case(lambda d: [rgb(d), "--workers", 1000], 0,
                                                 check=nan_exactly_where(nothing_masked)),
    "JPEG with an EXIF orientation (warned, not applied)": Case(
        lambda d: [exif_jpeg(d)], 0, check=georef(crs=None, shape=(120, 150))),
    "output folder missing": Case(lambda d: [rgb(d), "-o", d / "nope" / "o.tif"], 2,
                                  ("nope", "does not exist", "create it first")),
    "output path is the input": Case(lambda d: [rgb(d), "-o", d / "rgb.tif", "--overwrite"], 2,
                                     ("rgb.tif", "is the input", "choose another with -o")),
    # Files a run must never write over: every derived path, checked before any work.
    "--preview would replace the input": Case(
        lambda d: [rgb(d, "photo.png", crs=None, transform=None, driver="PNG", tiled=False,
                       blockxsize=None, blockysize=None), "-o", d / "photo.tif", "--preview"],
        2, ("photo.png", "the preview of -o photo.tif would replace the input")),
    "-o out.png --preview": Case(lambda d: [rgb(d), "-o", d / "out.png", "--preview"], 2,
                                 ("out.png", "the preview would be the output", ".tif")),
    "-o out.json": Case(lambda d: [rgb(d), "-o", d / "out.json"], 2,
                        ("out.json", "the sidecar would be the output", ".tif")),
    "an unrelated out.json": Case(
        lambda d: [(d / "out.json").write_text("{}") and rgb(d)], 2,
        ("out.json", "already exists (it would be this run's sidecar)", "--overwrite")),
    "an unrelated out.png with --preview": Case(
        lambda d: [(d / "out.png").write_bytes(b"png") and rgb(d), "--preview"], 2,
        ("out.png", "already exists (it would be this run's preview)", "--overwrite")),
    "-o a FIFO --overwrite": Case(
        lambda d: [os.mkfifo(d / "pipe.tif") or rgb(d), "-o", d / "pipe.tif", "--overwrite"], 2,
        ("pipe.tif", "would replace a FIFO", "only regular files", "choose another -o")),
    "-o a folder --overwrite": Case(
        lambda d: [(d / "dir.tif").mkdir() or rgb(d), "-o", d / "dir.tif", "--overwrite"], 2,
        ("dir.tif", "is a folder", "end it with /")),
    "-o a missing folder/": Case(lambda d: [rgb(d), "-o", f"{d / 'newdir'}/"], 2,
                                 ("newdir/", "output folder does not exist", "ending in /")),
    "-o a hard link to the input --overwrite": Case(
        lambda d: [os.link(rgb(d), d / "link.tif") or d / "rgb.tif", "-o", d / "link.tif",
                   "--overwrite"], 2, ("link.tif", "is the input")),
    "-o the --reference --overwrite": Case(
        lambda d: [rgb(d), "--reference", rgb(d, "dem.tif"), "-o", d / "dem.tif",
                   "--overwrite"], 2, ("dem.tif", "is the input")),
    # ... nor any other file the run reads (each was replaced, its bytes lost, --overwrite
    # given): a --mosaic member, a .vrt's source (relative to the .vrt, not to the current
    # folder), a STAC item (by the sidecar) and its asset, the --mask, the --control.
    "--mosaic -o one of its inputs --overwrite": Case(
        lambda d: [*neighbours(d), "--mosaic", "-o", d / "east.tif", "--overwrite"], 2,
        ("east.tif", "is the input", "choose another with -o")),
    "-o the source of a .vrt --overwrite": Case(
        lambda d: [vrt_file(d), "-o", d / "tiles" / "src.tif", "--overwrite"], 2,
        ("tiles/src.tif", "is the input", "choose another with -o")),
    "-o whose sidecar is the STAC item --overwrite": Case(
        lambda d: [stac_item(d), "-o", d / "item.tif", "--overwrite"], 2,
        ("item.json", "the sidecar of -o item.tif would replace the input", "item.json")),
    "-o the asset of the STAC item --overwrite": Case(
        lambda d: [stac_item(d), "-o", d / "scene.tif", "--overwrite"], 2,
        ("scene.tif", "is the input")),
    "-o the --mask --overwrite": Case(
        lambda d: [rgb(d), "--mask", mask_raster(d), "-o", d / "mask.tif", "--overwrite"], 2,
        ("mask.tif", "is the input")),
    "-o the --control --overwrite": Case(
        lambda d: [rgb(d), "--control", (d / "pts.csv").write_text("x,y,z\n") and d / "pts.csv",
                   "-o", d / "pts.csv", "--overwrite"], 2, ("pts.csv", "is the input")),
    # A --mask must lie on the input's pixels: one on another grid masked the wrong ones.
    "--mask in another CRS": Case(
        lambda d: [rgb(d), "--mask", mask_raster(d, crs="EPSG:4326",
                                                 transform=from_origin(8.0, 47.0, 1e-5, 1e-5))],
        2, ("mask.tif", "the mask is not on the input's grid",
            "its CRS is EPSG:4326, the input's EPSG:32611", "gdalwarp -t_srs EPSG:32611")),
    "--mask shifted by 10 px": Case(
        lambda d: [rgb(d), "--mask", mask_raster(
            d, transform=from_origin(500000.0 + 10 * 0.5, 5400000.0, 0.5, 0.5))],
        2, ("mask.tif", "the mask is not on the input's grid",
            "its origin is 500005, 5400000 with 0.5 x -0.5 pixels",
            "-te 500000.0 5399940.0 500075.0 5400000.0 -ts 150 120")),
    "--mask without georeferencing, same size": Case(
        lambda d: [rgb(d), "--mask", mask_raster(d, crs=None, transform=None)], 0,
        check=nan_exactly_where(masked_left)),
    "a link planted at the checkpoint folder's name": Case(
        lambda d: [taken_checkpoint_name(d, "link")], 2,
        ("out.tif.tiledepth-", "is a symbolic link", "choose another --scratch")),
    "a folder not made by tiledepth at the checkpoint folder's name": Case(
        lambda d: [taken_checkpoint_name(d, "folder")], 2,
        ("out.tif.tiledepth-", "was not made by tiledepth", "choose another --scratch")),
    "--steps and --ensemble for a Python callable": Case(
        lambda d: [rgb(d), "--model", "toy_models:red", "--steps", 7, "--ensemble", 3], 2,
        ("toy_models:red is a Python callable", "--steps 7, --ensemble 3", "leave them unset")),
    "--device for a Python callable": Case(
        lambda d: [rgb(d), "--model", "toy_models:red", "--device", "cuda"], 2,
        ("toy_models:red is a Python callable", "--device cuda", "leave it unset")),
    "--model a Python file without its function": Case(
        lambda d: [rgb(d), "--model", binary(d, "mymodel.py")], 2,
        ("mymodel.py is a Python file", "mymodel.py:FUNCTION")),
    "--model a file that is no checkpoint": Case(
        lambda d: [rgb(d), "--model", binary(d, "weights.bin")], 2,
        ("weights.bin is a file, not a checkpoint folder", "/path/to/folder")),
    "--config a binary file": Case(
        lambda d: [rgb(d), "--config", binary(d, "c.yaml")], 2,
        ("c.yaml", "not a text file", "YAML")),
    "--control a binary file": Case(
        lambda d: [rgb(d), "--control", binary(d, "points.csv")], 2,
        ("points.csv", "not a text file", "CSV")),
    "model folder not a Marigold checkpoint": Case(
        lambda d: [rgb(d), "--model", fake_checkpoint(d), "--device", "cpu"], 2,
        ("my-marigold", "not a Marigold checkpoint", "model_index.json")),
    "--model module:function that does not import": Case(
        lambda d: [rgb(d), "--model", "no_such_module:depth"], 2,
        ("rgb.tif", "cannot import module 'no_such_module'", "PYTHONPATH")),
    "--model module:function that does not exist": Case(
        lambda d: [rgb(d), "--model", "toy_models:no_such_function"], 2,
        ("rgb.tif", "has no attribute 'no_such_function'")),
    "model returns the wrong shape": Case(
        lambda d: [rgb(d), "--model", "toy_models:wrong_shape"], 1,
        # the coarse call's (1, 26, 32) or a tile batch's (4, 32, 32): whichever comes first
        ("rgb.tif", "toy_models:wrong_shape", "returned shape (", "(B, H, W)")),
    "model returns NaN": Case(lambda d: [rgb(d), "--model", "toy_models:returns_nan"], 1,
                              ("rgb.tif", "toy_models:returns_nan", "returned 1 NaN and 0 inf")),
    "model returns inf": Case(lambda d: [rgb(d), "--model", "toy_models:returns_inf"], 1,
                              ("rgb.tif", "toy_models:returns_inf", "returned 0 NaN and 1 inf")),
    "CUDA out of memory": Case(
        lambda d: [rgb(d), "--model", "toy_models:oom_above_2", "--batch-size", 8], 0,
        check=nan_exactly_where(nothing_masked)),
}


def contents(folder: Path) -> dict[str, str]:
    """The MD5 of every regular file under ``folder``, by relative path (a FIFO is not read)."""
    import hashlib
    import stat

    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                found[str(path.relative_to(folder))] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def invoke(args: list) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    src, *extra = case.make(work)
    args = [src, *case.flags, *extra, "--no-progress"]  # the row's own flags win
    out = work / "out.tif"
    if "-o" not in args:
        args += ["-o", out]
    before = set(os.listdir(work))
    owned = contents(work)
    code, output = invoke(args)
    assert code == case.code, output
    assert "Traceback" not in output
    after = set(os.listdir(work))
    # nothing the user had is changed, whatever the run did (the inputs read, -o with
    # --overwrite refused): every file's bytes as they were
    assert {k: v for k, v in contents(work).items() if k in owned} == owned
    if case.code:
        lines = output.strip().splitlines()
        assert len(lines) == 1, output
        assert lines[0].startswith("tiledepth: error: ")
        for text in case.says:
            assert text in lines[0], lines[0]
        assert after == before, "left behind: " + ", ".join(sorted(after - before))
        if (tmp_path / "precious").exists():  # what a planted link points to is untouched
            assert os.listdir(tmp_path / "precious") == ["notes.txt"]
    else:
        assert after - before == {"out.tif", "out.json"}, after - before  # and its sidecar
        case.check(Path(args[0]), out)


def test_read_only_output_folder(tmp_path, monkeypatch):
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root may write anywhere: the mode bits
        import stat

        import tiledepth.safe_write

        def access(path, mode):
            return not (mode & os.W_OK) or bool(os.stat(path).st_mode & stat.S_IWUSR)

        monkeypatch.setattr(tiledepth.safe_write.os, "access", access)
    src = rgb(tmp_path)
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, output = invoke([src, "-o", folder / "o.tif", "--model", "toy_models:red"])
        assert code == 2
        assert output.strip() == (f"tiledepth: error: {folder}: output folder is not writable; "
                                  "choose another with -o")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_debug_shows_the_traceback(tmp_path):
    """--debug adds the traceback and keeps the exit code (2: bad input; it was 1)."""
    result = CliRunner().invoke(main, ["run", str(tmp_path / "missing.tif"), "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.output
    assert "no such file" in result.output.strip().splitlines()[-1]


def test_an_alignment_without_solution_writes_nothing(tmp_path, monkeypatch):
    from tiledepth import fusion

    real = fusion.solve_alignment

    def singular(*args, **kwargs):
        result = real(*args, **kwargs)
        judged = kwargs.get("return_judged")
        nan = {k: fusion.Affine1D(np.nan, np.nan) for k in (result[0] if judged else result)}
        return (nan, result[1]) if judged else nan

    monkeypatch.setattr(fusion.solve, "solve_alignment", singular)
    code, output = invoke([rgb(tmp_path), "-o", tmp_path / "o.tif", "--model", "toy_models:red",
                           "--tile-size", 64, "--no-progress"])
    assert code == 1
    assert output.startswith("tiledepth: error: the alignment of the tiles has no solution")
    assert not (tmp_path / "o.tif").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".partial")] == []


def test_unexpected_errors_are_one_line_too(tmp_path, monkeypatch):
    import tiledepth.engine

    def boom(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(tiledepth.engine, "fuse", boom)
    code, output = invoke([rgb(tmp_path), "-o", tmp_path / "o.tif", "--model", "toy_models:red"])
    assert code == 1
    assert output.strip() == ("tiledepth: error: unexpected KeyError: 'surprise' (--debug shows "
                              "the traceback)")


def test_a_singular_alignment_prints_no_numpy_warning(tmp_path, monkeypatch, caplog):
    """NaN statistics (a corrupt tile, say) make NumPy and SciPy warn while solving; the
    solve is checked, so the one error line is all that shows."""
    import dataclasses

    from tiledepth import fusion

    real = fusion.blurred_tile_stats

    def nan_stats(*args, **kwargs):
        return [dataclasses.replace(ts, gram=ts.gram * np.nan, fc=ts.fc * np.nan)
                for ts in real(*args, **kwargs)]

    monkeypatch.setattr(fusion, "blurred_tile_stats", nan_stats)
    code, output = invoke([rgb(tmp_path), "-o", tmp_path / "o.tif", "--model", "toy_models:red",
                           "--tile-size", 64, "--no-progress", "--no-resume"])
    assert code == 1
    assert len(output.strip().splitlines()) == 1, output
    assert output.startswith("tiledepth: error: the alignment of the tiles has no solution")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_python_warnings_are_one_log_line(tmp_path, monkeypatch, caplog):
    import warnings

    import tiledepth.engine

    real = tiledepth.engine.fuse

    def fuse(*args, **kwargs):
        warnings.warn("something odd\nover two lines", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiledepth.engine, "fuse", fuse)
    code, output = invoke([rgb(tmp_path), "-o", tmp_path / "o.tif", "--model", "toy_models:red",
                           "--tile-size", 64, "--no-progress"])
    assert code == 0, output
    assert "something odd" not in output  # not printed raw
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "something odd over two lines (UserWarning)"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs resource limits")
def test_gdal_and_libtiff_messages_do_not_print_raw(tmp_path):
    """A real write failure (a file-size limit: libtiff's ``_tiffWriteProc: File too large``,
    as on a full disk) ends in the one error line, nothing printed raw before it."""
    import resource
    import subprocess
    import sys

    from conftest import child_env

    src = rgb(tmp_path, h=300, w=700)
    limit = 64 * 1024  # the scratch files fit (16 KiB a tile), the 840 KB output does not

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "tiledepth.cli", "run", str(src), "-o", str(tmp_path / "o.tif"),
         "--model", "toy_models:red", "--tile-size", "64", "--no-progress", "--no-overviews"],
        capture_output=True, text=True, env=child_env(), timeout=120, preexec_fn=limited)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiledepth: error: "), proc.stderr
    assert "o.tif" in lines[0]
    assert not (tmp_path / "o.tif").exists()  # nothing half-written at the output path


def test_an_exif_orientation_is_warned_about(tmp_path, caplog):
    for orientation, warned in (("1", False), ("6", True)):
        caplog.clear()
        folder = tmp_path / orientation
        folder.mkdir()
        code, output = invoke([exif_jpeg(folder, orientation), "-o", folder / "o.tif",
                               "--model", "toy_models:red", "--tile-size", 64, "--no-progress"])
        assert code == 0, output
        said = [r.getMessage() for r in caplog.records if "EXIF" in r.getMessage()]
        assert said == (["photo.jpg has EXIF orientation 6 (viewers show it rotated 90 degrees "
                         "clockwise); tiledepth uses the pixels as stored, so the model sees "
                         "them that way and the output is on the stored grid; to have it "
                         "upright, rotate the pixels first (e.g. exiftran -ai, or mogrify "
                         "-auto-orient)"] if warned else [])


def test_a_remote_output_is_never_a_remote_input(tmp_path):
    """``-o s3://...`` naming the input object (another spelling too), or a companion
    uploaded beside it naming an object a VRT reads: refused before any request or upload
    (``--overwrite`` would have replaced the user's object)."""
    from tiledepth.errors import OutputError
    from tiledepth.options import make_options
    from tiledepth.plan import check_paths

    opts = make_options(scratch=str(tmp_path))
    vrt = ('<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" '
           'band="1"><SimpleSource><SourceFilename relativeToVRT="0">/vsis3/b/in/o.json'
           "</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>")
    same = "s3://b/in/k.tif: the output path is the input"
    for source, output, says in [
            ("s3://b/in/k.tif", "s3://b/in/k.tif", same),
            ("/vsis3/b/in/k.tif", "s3://b/in/k.tif", same),
            (vrt, "s3://b/in/o.tif", "s3://b/in/o.json: the sidecar of -o o.tif would replace")]:
        with pytest.raises(OutputError, match=f"^{says}"):
            check_paths(source, output, opts, config=None, overwrite=True)
    assert os.listdir(tmp_path) == []  # not even a staging folder


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_input_that_is_no_regular_file_says_what_it_is(tmp_path):
    """A FIFO named x.tif (or a device) was reported as "an empty file (0 bytes)"; it is
    refused as what it is, from a stat (opening a FIFO would block)."""
    fifo = tmp_path / "x.tif"
    os.mkfifo(fifo)
    for path, kind in [(fifo, "a FIFO (named pipe)"), (Path("/dev/null"), "a character device")]:
        if not path.exists():
            continue
        code, output = invoke([path, "-o", tmp_path / "out.tif", "--model", "toy_models:red",
                               "--no-progress"])
        assert code == 2 and output.strip() == (
            f"tiledepth: error: {path}: is not a regular file but {kind}; GDAL reads a raster "
            "from a file: save the image to one and pass that"), output
    assert sorted(os.listdir(tmp_path)) == ["x.tif"]


def test_an_input_name_that_is_not_utf8_is_one_line(tmp_path):
    """A file name of bytes that are not UTF-8 (a surrogate-escaped str, as Python gives
    argv and os.listdir) failed with rasterio's raw UnicodeEncodeError; it is one line
    that says what to do."""
    import tiledepth
    from tiledepth.errors import InputError

    folder = os.fsencode(tmp_path)
    try:
        os.replace(rgb(tmp_path), folder + b"/\xff.tif")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes no such names")
    name = os.fsdecode(folder + b"/\xff.tif")
    says = (f"{tmp_path}/\\xff.tif: the file name is not valid UTF-8, so it cannot be passed "
            "to GDAL; rename the file (e.g. to ASCII letters and digits)")
    for given in (name, Path(name)):
        with pytest.raises(InputError) as caught:
            tiledepth.run(given, tmp_path / "out.tif", model="toy_models:red")
        assert str(caught.value) == says
    code, output = invoke([name, "-o", tmp_path / "out.tif", "--model", "toy_models:red",
                           "--no-progress"])
    assert code == 2 and output.strip() == f"tiledepth: error: {says}", output
    assert os.listdir(folder) == [b"\xff.tif"]


def test_a_callable_refusing_an_option_names_it_as_the_library_does_too(tmp_path):
    """tiledepth.run(..., ensemble=2) with a Python callable was told "--ensemble 2 would do
    nothing", the CLI's spelling only; the message names it both ways, on one line."""
    import tiledepth
    from tiledepth.errors import OptionError

    src = rgb(tmp_path)
    with pytest.raises(OptionError) as caught:
        tiledepth.run(src, tmp_path / "out.tif", model="toy_models:red", ensemble=2,
                      dtype="fp16")
    assert str(caught.value) == (
        f"{src}: toy_models:red is a Python callable: --ensemble 2, --dtype fp16 would do "
        "nothing for it (ensemble=2, dtype='fp16' in Python; they set the built-in models); "
        "leave them unset")
    assert os.listdir(tmp_path) == ["rgb.tif"]


def _with_orientation(path: Path, orientation: int) -> Path:
    """Give the TIFF, PNG or WebP file ``path`` (as GDAL wrote it) EXIF orientation
    ``orientation``: tag 274 in the TIFF's first directory, or a PNG ``eXIf`` / WebP ``EXIF``
    chunk holding a TIFF stream with it."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    entry = struct.pack("<HHI4s", 274, 3, 1, struct.pack("<H", orientation))
    if data[:4] == b"II*\0":  # a new first directory at the end: the old one's entries + 274
        (offset,) = struct.unpack_from("<I", data, 4)
        (count,) = struct.unpack_from("<H", data, offset)
        entries = [bytes(data[offset + 2 + 12 * i:offset + 14 + 12 * i]) for i in range(count)]
        entries = sorted([*entries, entry], key=lambda e: struct.unpack_from("<H", e)[0])
        struct.pack_into("<I", data, 4, len(data))
        data += struct.pack("<H", len(entries)) + b"".join(entries) + bytes(4)
    else:
        exif = b"II*\0" + struct.pack("<IH", 8, 1) + entry + bytes(4)
        if data[:4] == b"\x89PNG":  # after IHDR (8 + 25 bytes)
            chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + \
                struct.pack(">I", zlib.crc32(b"eXIf" + exif))
            data[33:33] = chunk
        else:  # WebP: the extended format (a VP8X chunk flagging EXIF), the EXIF chunk last
            with rasterio.open(path) as ds:
                size = (ds.width - 1).to_bytes(3, "little") + (ds.height - 1).to_bytes(3, "little")
            body = b"VP8X" + struct.pack("<I", 10) + bytes([8, 0, 0, 0]) + size + data[12:] + \
                b"EXIF" + struct.pack("<I", len(exif)) + exif
            data = bytearray(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_exif_orientation_is_warned_about_in_tiff_png_and_webp(tmp_path, caplog):
    """GDAL reports an EXIF orientation for a JPEG alone: a TIFF, PNG or WebP photo with
    orientation 6 was processed without the warning the docs promise. Their headers are read
    now (orientation 1, or none, says nothing)."""
    from tiledepth.readers import RasterReader

    for driver, suffix in (("GTiff", "tif"), ("PNG", "png"), ("WEBP", "webp")):
        for orientation in (None, 1, 6):
            path = tmp_path / f"photo{orientation}.{suffix}"
            with rasterio.open(path, "w", driver=driver, width=150, height=120, count=3,
                               dtype="uint8") as dst:
                dst.write(depth_image(120, 150))
            if orientation is not None:
                _with_orientation(path, orientation)
            caplog.clear()
            with RasterReader(path) as reader:
                tile, _ = reader.read_tile(rasterio.windows.Window(0, 0, 150, 120))
            assert tile.shape == (3, 120, 150)  # still a file GDAL reads, as it was
            said = [r.getMessage() for r in caplog.records if "EXIF" in r.getMessage()]
            assert said == ([f"{path.name} has EXIF orientation 6 (viewers show it rotated 90 "
                             "degrees clockwise); tiledepth uses the pixels as stored, so the "
                             "model sees them that way and the output is on the stored grid; "
                             "to have it upright, rotate the pixels first (e.g. exiftran -ai, "
                             "or mogrify -auto-orient)"] if orientation == 6 else []), driver


def test_a_float_input_with_nan_in_every_coarse_pixel_is_estimated(tmp_path):
    """NaN scan-line gaps (a row in every 4, no declared nodata), ``--scale 0.25``: each
    reduced pixel has a NaN under it, and GDAL's average made it NaN, so the run was
    refused as "every pixel is masked" (exit 2) where a declared nodata ran. Now it runs,
    NaN exactly where the input is."""
    rows, cols = np.mgrid[0:160, 0:200]
    ramp = ((rows + cols) / 360).astype(np.float32)
    src = write_raster(tmp_path / "gaps.tif", np.where(rows % 4 == 1, np.nan, ramp)[None])
    out = tmp_path / "out.tif"
    code, output = invoke([src, "-o", out, "--model", "toy_models:red", "--tile-size", 64,
                           "--scale", 0.25, "--no-progress"])
    assert code == 0, output
    depth, meta = read(out)
    assert meta["shape"] == (160, 200)  # the input's grid
    good = rows % 4 != 1
    np.testing.assert_array_equal(np.isfinite(depth), good)
    assert np.corrcoef(depth[good], (rows + cols)[good])[0, 1] > 0.99


def test_a_float_input_of_nothing_but_a_huge_fill_value_runs(tmp_path):
    """A float32 raster holding only -3.4e38 (a fill declared nowhere) failed "unexpected
    ZeroDivisionError": a constant image's scaling spans lo - 1 .. lo + 1, which was lo ..
    lo there. It runs, a constant image (mid-grey to the model)."""
    src = write_raster(tmp_path / "fill.tif", np.full((1, 90, 120), -3.4028235e38, np.float32))
    out = tmp_path / "out.tif"
    code, output = invoke([src, "-o", out, "--model", "toy_models:red", "--tile-size", 64,
                           "--no-progress"])
    assert code == 0, output
    depth, meta = read(out)
    assert meta["shape"] == (90, 120) and np.isfinite(depth).all()


def test_local_inputs_and_masks_named_like_a_url_scheme_run(tmp_path, monkeypatch):
    """``tiledepth run zip:a.tif`` (a local file, named relative to the current folder)
    failed "'/vsizip/a.tif' does not exist", ``s3:x.tif`` asked for AWS credentials:
    rasterio took the name's head for a scheme. They run as the same file named otherwise
    does, and so does a ``--mask`` so named."""
    monkeypatch.chdir(tmp_path)
    data = depth_image(90, 120)
    keep = np.ones((1, 90, 120), np.uint8)
    keep[:, :, :30] = 0
    write_raster(tmp_path / "zip:m.tif", keep)
    depths = []
    for i, name in enumerate(("plain.tif", "zip:a.tif", "s3:x.tif")):
        write_raster(tmp_path / name, data)
        code, output = invoke([name, "-o", f"out{i}.tif", "--mask", "zip:m.tif", "--model",
                               "toy_models:red", "--tile-size", 64, "--no-progress"])
        assert code == 0, output
        depths.append(read(tmp_path / f"out{i}.tif")[0])
    for depth in depths[1:]:
        np.testing.assert_array_equal(depth, depths[0])
    assert np.isnan(depths[0][:, :30]).all() and np.isfinite(depths[0][:, 30:]).all()
    (tmp_path / "zip:bad.tif").write_bytes(b"II*\0" + bytes(100))
    code, output = invoke(["zip:bad.tif", "-o", "bad.tif", "--model", "toy_models:red",
                           "--no-progress"])
    assert code == 2 and output.startswith("tiledepth: error: zip:bad.tif: cannot read it"), \
        output
