"""tiledepth.sources: URLs (HTTP range requests), STAC items and S3 in and out, on loopback."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import rasterio
from conftest import child_env, depth_image, silent_server, write_raster

import tiledepth
from tiledepth.errors import InputError, OutputError
from tiledepth.readers import RasterReader
from tiledepth.sources import check_remote_output, identity, resolve, stac_asset

OPTS = dict(model="toy_models:affine_red", tile_size=96, overlap=0.25, coarse_size=96,
            batch_size=4)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_resolve_maps_urls_to_gdal_paths(tmp_path):
    assert resolve("s3://bkt/a/o.tif") == "/vsis3/bkt/a/o.tif"
    assert resolve("gs://bkt/o.tif") == "/vsigs/bkt/o.tif"
    assert resolve("az://ctr/o.tif") == "/vsiaz/ctr/o.tif"
    assert resolve("HTTPS://h/o.tif") == "/vsicurl/HTTPS://h/o.tif"
    assert resolve("/vsizip/a.zip/o.tif") == "/vsizip/a.zip/o.tif"
    assert resolve(str(tmp_path / "o.tif")) == tmp_path / "o.tif"
    with pytest.raises(InputError, match="--asset needs a STAC item"):
        resolve("o.tif", asset="visual")


def test_url_and_vsicurl_runs_equal_the_local_run_fetching_under_3x_the_file(tmp_path,
                                                                              http_root):
    root, base = http_root.root, http_root.base
    src = write_raster(root / "ortho.tif", depth_image(240, 300))
    with rasterio.open(src, "r+") as ds:  # as a COG has: GDAL reads the coarse map from them
        ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    size = src.stat().st_size
    (root / "copy.tif").write_bytes(src.read_bytes())  # a fresh object: GDAL caches per URL
    local = tiledepth.run(src, tmp_path / "local.tif", **OPTS)
    for name, url in [("url", f"{base}/ortho.tif"), ("vsi", f"/vsicurl/{base}/copy.tif")]:
        http_root.get("__reset__")
        result = tiledepth.run(url, tmp_path / f"{name}.tif", **OPTS)
        assert result.tiles == local.tiles
        np.testing.assert_allclose(_read(result.output), _read(local.output), atol=1e-5)
        assert 0 < http_root.served() <= 3 * size, (name, http_root.served(), size)


def test_remote_identity_is_size_and_etag(http_root):
    root, base = http_root.root, http_root.base
    src = write_raster(root / "ortho.tif", depth_image(64, 64))
    ident = identity(resolve(f"{base}/ortho.tif"))
    assert ident["size"] == src.stat().st_size
    assert ident["etag"] == f'"{src.stat().st_mtime_ns}-{src.stat().st_size}"'


def test_a_stac_item_runs_its_visual_asset(tmp_path, http_root):
    root, base = http_root.root, http_root.base
    (root / "img").mkdir()
    write_raster(root / "img" / "rgb.tif", depth_image(160, 200))
    write_raster(root / "img" / "dark.tif", depth_image(160, 200) // 4)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "x",
            "assets": {"thumbnail": {"href": "img/thumb.png", "type": "image/png"},
                       "dark": {"href": "img/dark.tif", "type": "image/tiff"},
                       "visual": {"href": "img/rgb.tif", "type": "image/tiff"}}}
    (root / "item.json").write_text(json.dumps(item))
    local = tiledepth.run(root / "img" / "rgb.tif", tmp_path / "local.tif", **OPTS)
    remote = tiledepth.run(f"{base}/item.json", tmp_path / "stac.tif", **OPTS)
    np.testing.assert_allclose(_read(remote.output), _read(local.output), atol=1e-5)
    # --asset picks another; a local item file resolves its relative hrefs too
    other = tiledepth.run(root / "item.json", tmp_path / "dark.tif", asset="dark", **OPTS)
    assert not np.allclose(_read(other.output), _read(local.output), atol=1e-3)
    with pytest.raises(InputError, match="no asset 'nir'; it has thumbnail, dark, visual"):
        tiledepth.run(f"{base}/item.json", tmp_path / "x.tif", asset="nir", **OPTS)


def test_stac_asset_without_visual_takes_the_first_rgb_geotiff():
    item = {"assets": {
        "nir": {"href": "s3://b/nir.tif", "type": "image/tiff; application=geotiff",
                "eo:bands": [{"common_name": "nir"}]},
        "rgb": {"href": "s3://b/rgb.tif", "type": "image/tiff; application=geotiff",
                "eo:bands": [{"common_name": c} for c in ("red", "green", "blue")]}}}
    assert stac_asset(json.dumps(item), "item.json") == "s3://b/rgb.tif"
    with pytest.raises(InputError, match="no GeoTIFF asset"):
        stac_asset('{"assets": {"t": {"href": "t.png", "type": "image/png"}}}', "i.json")
    with pytest.raises(InputError, match="not a STAC item"):
        stac_asset("[1, 2]", "i.json")
    # malformed items: one line, not an AttributeError or TypeError (exit 1, "unexpected")
    for bad in ('{"assets": {"visual": "v.tif"}}', '{"assets": {"a": "v.tif"}}'):
        with pytest.raises(InputError, match=r"^i\.json: not a STAC item"):
            stac_asset(bad, "i.json")
    nulls = {"assets": {"a": {"href": "a.tif", "type": "image/tiff", "eo:bands": None,
                              "bands": {"red": 1}}}}
    assert stac_asset(json.dumps(nulls), "i.json") == "./a.tif"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server, a child process on 127.0.0.1 (one for this module): (host, port)."""
    pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.1)
    yield "127.0.0.1", port
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3(s3_server):
    """(boto3 client, rasterio.Env options) of the moto S3 server, with an empty bucket ``bkt``."""
    boto3 = pytest.importorskip("boto3")
    from rasterio.session import AWSSession

    host, port = s3_server
    keys = dict(aws_access_key_id="testing", aws_secret_access_key="testing",
                region_name="us-east-1")
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", **keys)
    client.create_bucket(Bucket="bkt")
    env = dict(session=AWSSession(**keys, endpoint_url=f"{host}:{port}"), AWS_HTTPS="NO",
               AWS_VIRTUAL_HOSTING="FALSE")
    yield client, env
    # moto keeps its buckets while it runs: empty them for the next test
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset",
                                                  method="POST"), timeout=10)


def test_s3_input_and_output_against_a_local_s3_server(tmp_path, s3):
    client, env = s3
    src = write_raster(tmp_path / "ortho.tif", depth_image(200, 240))
    client.upload_file(str(src), "bkt", "in/ortho.tif")
    local = tiledepth.run(src, tmp_path / "local.tif", **OPTS)
    with rasterio.Env(**env):
        assert identity(resolve("s3://bkt/in/ortho.tif"))["size"] == src.stat().st_size
        result = tiledepth.run("s3://bkt/in/ortho.tif", "s3://bkt/out/ortho.depth.tif",
                               scratch=str(tmp_path / "stage"), **OPTS)
        assert result.output == "s3://bkt/out/ortho.depth.tif"
        # an existing key is refused before any work, unless overwrite
        with pytest.raises(OutputError, match="already exists"):
            tiledepth.run("s3://bkt/in/ortho.tif", "s3://bkt/out/ortho.depth.tif", **OPTS)
    client.download_file("bkt", "out/ortho.depth.tif", str(tmp_path / "back.tif"))
    np.testing.assert_allclose(_read(tmp_path / "back.tif"), _read(local.output), atol=1e-5)
    listed = {o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]}
    assert listed == {"in/ortho.tif", "out/ortho.depth.tif", "out/ortho.depth.json"}
    assert not any((tmp_path / "stage").rglob("*.tif"))  # the local copy is gone
    # a preview goes up with its georeferencing (the .aux.xml stayed behind)
    with rasterio.Env(**env):
        tiledepth.run("s3://bkt/in/ortho.tif", "s3://bkt/p/ortho.depth.tif", preview=True,
                      scratch=str(tmp_path / "stage"), **OPTS)
    listed = {o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]}
    assert {k for k in listed if k.startswith("p/")} == {
        "p/ortho.depth.tif", "p/ortho.depth.json", "p/ortho.depth.png",
        "p/ortho.depth.png.aux.xml"}
    assert not any((tmp_path / "stage").rglob("*.png*"))


def test_an_existing_sidecar_or_preview_key_is_refused_before_any_work(tmp_path, s3):
    """The objects written beside the output are checked as the output is: none is uploaded
    over an existing key without overwrite."""
    client, env = s3
    src = write_raster(tmp_path / "ortho.tif", depth_image(120, 120))
    theirs = {"out/o.json": b'{"users own": "metadata"}', "out/p.png": b"user's own png"}
    for key, body in theirs.items():
        client.put_object(Bucket="bkt", Key=key, Body=body)

    def objects():
        return {o["Key"]: client.get_object(Bucket="bkt", Key=o["Key"])["Body"].read()
                for o in client.list_objects_v2(Bucket="bkt")["Contents"]}

    with rasterio.Env(**env):
        with pytest.raises(OutputError, match=r"^s3://bkt/out/o.json: already exists \(it "
                                              r"would be this run's sidecar\); pass --overwrite"):
            tiledepth.run(src, "s3://bkt/out/o.tif", scratch=str(tmp_path / "stage"), **OPTS)
        assert objects() == theirs  # nothing uploaded, nothing replaced
        check_remote_output("s3://bkt/out/p.tif", overwrite=False)  # no preview: p.png stays
        with pytest.raises(OutputError, match=r"^s3://bkt/out/p.png: already exists \(it "
                                              r"would be this run's preview\)"):
            check_remote_output("s3://bkt/out/p.tif", overwrite=False, preview=True)
        check_remote_output("s3://bkt/out/p.tif", overwrite=True, preview=True)
        result = tiledepth.run(src, "s3://bkt/out/o.tif", scratch=str(tmp_path / "stage"),
                               overwrite=True, **OPTS)
    assert result.sidecar == "s3://bkt/out/o.json"
    assert json.loads(objects()["out/o.json"])["tiles"]  # with overwrite: this run's report


def test_a_failed_upload_leaves_nothing_at_the_key(tmp_path, s3):
    client, env = s3
    src = write_raster(tmp_path / "ortho.tif", depth_image(120, 120))
    with rasterio.Env(**env), pytest.raises(OutputError, match="the upload failed"):
        tiledepth.run(src, "s3://nobucket/ortho.depth.tif", scratch=str(tmp_path / "stage"),
                      **OPTS)
    assert "Contents" not in client.list_objects_v2(Bucket="bkt")
    # the verified local output stays for a retry
    assert len(list((tmp_path / "stage").rglob("ortho.depth.tif"))) == 1


def test_a_reset_connection_is_retried_then_a_clear_error(http_root, monkeypatch):
    """One reset is retried transparently; a source that keeps resetting fails in one line."""
    from tiledepth import sources
    from tiledepth.readers import RasterReader

    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.01")
    root, base = http_root.root, http_root.base
    write_raster(root / "a.tif", depth_image(128, 128))
    write_raster(root / "b.tif", depth_image(128, 128))
    http_root.get("__resets__/a.tif/1")  # the first range request of a.tif is reset
    http_root.get("__resets__/b.tif/1000")  # every one of b.tif
    with RasterReader(f"{base}/a.tif") as src:
        image, valid = src.read_tile(rasterio.windows.Window(0, 0, 64, 64))
    assert valid.all() and image.shape == (3, 64, 64)
    np.testing.assert_array_equal(np.round(image * 255), depth_image(128, 128)[:, :64, :64])
    http_root.get("__reset__")
    with pytest.raises(InputError, match=r"b.tif: cannot read it .* after retries; check"):
        with RasterReader(f"{base}/b.tif") as src:
            src.read_tile(rasterio.windows.Window(0, 0, 64, 64))


def test_a_mosaics_identity_reads_its_members_names_as_gdal_does(tmp_path):
    """The members of VRT text are read as GDAL reads them (XML unescaped, by
    identity.vrt_sources): a member named "b & c.tif" was looked for as "b &amp; c.tif"
    and the run failed with FileNotFoundError."""
    from tiledepth.mosaic import build_vrt

    a = write_raster(tmp_path / "a.tif", depth_image(40, 50))
    b = write_raster(tmp_path / "b & c.tif", depth_image(40, 50))
    members = identity(build_vrt([a, b]).vrt)["members"]
    assert [m["path"] for m in members] == [str(a), str(b)]


def _gzip(src, path):
    import gzip

    path.write_bytes(gzip.compress(src.read_bytes(), mtime=0))
    return path


def test_a_vsigzip_input_replaced_in_place_is_not_resumed(tmp_path, monkeypatch):
    """GDAL's prefix is /vsigzip/ (the archive list had /vsigz/): the key of such an input was
    its path alone, and a resume after the .gz was replaced took the old content's tiles."""
    a = write_raster(tmp_path / "a.tif", depth_image(128, 160))
    b = write_raster(tmp_path / "b.tif", depth_image(128, 160)[::-1].copy())
    gz = tmp_path / "x.tif.gz"
    src = f"/vsigzip/{gz}"
    opts = dict(model="toy_models:slow", tile_size=64, overlap=0.25, batch_size=1)
    _gzip(a, gz)
    # interrupted in a child process, as a rerun is (GDAL keeps a .gz's index per process)
    child = subprocess.run(
        [sys.executable, "-m", "tiledepth.cli", "run", src, "-o", str(tmp_path / "x.depth.tif"),
         "--model", "toy_models:slow", "--tile-size", "64", "--overlap", "0.25",
         "--batch-size", "1", "--no-progress"], capture_output=True, text=True, timeout=120,
        env=child_env(TILEDEPTH_TEST_DELAY="0", TILEDEPTH_TEST_STOP_AFTER="6",
                      TILEDEPTH_TEST_CALLS=str(tmp_path / "calls.txt")))
    assert "kept in" in child.stderr, child.stderr
    monkeypatch.setenv("TILEDEPTH_TEST_DELAY", "0")
    _gzip(b, gz)  # new content, the same path
    result = tiledepth.run(src, tmp_path / "x.depth.tif", **opts)
    fresh = tiledepth.run(b, tmp_path / "b.depth.tif", **opts)
    assert result.resumed == 0
    np.testing.assert_array_equal(_read(result.output), _read(fresh.output))


def test_other_gdal_paths_are_keyed_on_their_content_or_never_resumed(tmp_path, http_root):
    """/vsisubfile/ takes its file's identity; /vsicurl?url= and /vsicurl_streaming/ are
    remote (size and ETag); a path whose content nothing identifies (/vsimem/) gets a new
    key each time, so its stale tiles are never taken."""
    from urllib.parse import quote

    from tiledepth.sources import is_remote, wrapped_file

    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 100 + b"a" * 5000)
    sub = f"/vsisubfile/100_5000,{blob}"
    before = identity(sub)
    blob.write_bytes(b"x" * 100 + b"b" * 5000)
    assert wrapped_file(sub) == str(blob)
    assert identity(sub)["file"]["ends_sha256"] != before["file"]["ends_sha256"]
    root, base = http_root.root, http_root.base
    src = write_raster(root / "ortho.tif", depth_image(64, 64))
    etag = f'"{src.stat().st_mtime_ns}-{src.stat().st_size}"'
    for path in (f"/vsicurl?url={quote(base + '/ortho.tif', safe='')}",
                 f"/vsicurl_streaming/{base}/ortho.tif"):
        assert is_remote(path)
        assert (identity(path)["size"], identity(path)["etag"]) == (src.stat().st_size, etag)
    assert identity("/vsimem/x.tif")["unidentified"] != identity("/vsimem/x.tif")["unidentified"]
    gz = _gzip(src, tmp_path / "x.tif.gz")
    before = identity(f"/vsigzip/{gz}")
    _gzip(write_raster(tmp_path / "b.tif", depth_image(64, 64)[::-1].copy()), gz)
    assert identity(f"/vsigzip/{gz}")["archive"]["ends_sha256"] != \
        before["archive"]["ends_sha256"]


def test_a_server_that_never_answers_fails_in_time_saying_so(tmp_path, monkeypatch):
    """No HTTP timeout was set: a server that accepts and never answers hung the run for
    ever (deaf to Ctrl-C and SIGTERM). The timeouts are shortened here to keep it quick."""
    from tiledepth import sources

    for key in ("GDAL_HTTP_CONNECTTIMEOUT", "GDAL_HTTP_LOW_SPEED_TIME"):
        assert 0 < float(sources.REMOTE_OPTIONS[key]) <= 60, key  # not GDAL's default: none
    # no cap on a whole request: a slow upload or a large range read is not a stalled one
    assert "GDAL_HTTP_TIMEOUT" not in sources.REMOTE_OPTIONS
    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_LOW_SPEED_TIME", "1")
    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_TIMEOUT", "2")
    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.01")
    server, base = silent_server()
    try:
        for name in ("item.json", "ortho.tif"):  # (GDAL tries a timed-out open once: no
            start = time.monotonic()  # "after retries" for it)
            with pytest.raises(InputError, match=rf"{name}: .*no answer in time .*"
                               r"(too slow|timed out)") as info:
                tiledepth.run(f"{base}/{name}", tmp_path / "o.tif", **OPTS)
            assert "after retries" not in str(info.value)
            assert time.monotonic() - start < 15
    finally:
        server.close()


def test_stac_11_bands_name_their_colours_eo_common_name():
    t = "image/tiff; application=geotiff; profile=cloud-optimized"
    item = {"type": "Feature", "stac_version": "1.1.0", "assets": {
        "coastal": {"href": "B01.tif", "type": t,
                    "bands": [{"name": "B01", "eo:common_name": "coastal"}]},
        "rgb": {"href": "RGB.tif", "type": t,
                "bands": [{"name": n, "eo:common_name": c}
                          for n, c in (("B04", "red"), ("B03", "green"), ("B02", "blue"))]}}}
    assert stac_asset(json.dumps(item), "https://h/i.json") == "https://h/RGB.tif"


def test_a_stac_url_with_a_query_joins_hrefs_to_its_folder(tmp_path, http_root):
    """A signed item URL (``?sig=a/b``): the relative href was joined to the query, and the
    result, still "a .json", taken for an item again (hundreds of requests)."""
    item = '{"type": "Feature", "assets": {"visual": {"href": "../img/visual.tif"}}}'
    assert stac_asset(item, "https://h/items/scene2.json?sig=a/b") == "https://h/img/visual.tif"
    assert stac_asset(item, "s3://b/items/x.json") == "s3://b/img/visual.tif"
    assert stac_asset(item, "/vsicurl/https://h/items/x.json?s=a/b") == \
        "/vsicurl/https://h/img/visual.tif"
    root, base = http_root.root, http_root.base
    (root / "img").mkdir()
    (root / "items").mkdir()
    write_raster(root / "img" / "visual.tif", depth_image(96, 96))
    (root / "items" / "scene.json").write_text(item)
    http_root.get("__reset__")
    assert resolve(f"{base}/items/scene.json?sig=a/b") == f"/vsicurl/{base}/img/visual.tif"
    # an asset that is an item again: one line, not a loop
    (root / "items" / "loop.json").write_text(
        '{"type": "Feature", "assets": {"visual": {"href": "loop.json?x=1"}}}')
    with pytest.raises(InputError, match=r"loop.json: its asset .*loop.json\?x=1 is a STAC "
                                         r"item itself"):
        resolve(f"{base}/items/loop.json")
    assert int(http_root.get("__served__").split()[1]) < 10  # requests


def test_a_mosaic_of_urls_is_remote_and_keeps_a_local_members_mask(tmp_path, http_root):
    """VRT text whose members are URLs (``--mosaic``) was not remote: read without the
    timeouts, retries and single reading thread of each URL alone (a stalled server hung it,
    3x the bytes were fetched). A mosaic of local and remote members reads with
    GDAL_DISABLE_READDIR_ON_OPEN=TRUE, which still finds a local member's .msk (EMPTY_DIR
    hides it: every pixel valid)."""
    from conftest import TRANSFORM

    from tiledepth import sources
    from tiledepth.mosaic import build_vrt
    from tiledepth.readers import RasterReader

    root, base = http_root.root, http_root.base
    write_raster(root / "w.tif", depth_image(64, 64))
    write_raster(root / "e.tif", depth_image(64, 64),  # the 64 columns east of w.tif
                 transform=TRANSFORM @ rasterio.Affine.translation(64, 0))
    urls = build_vrt([f"{base}/w.tif", f"{base}/e.tif"]).vrt
    local = build_vrt([root / "w.tif", root / "e.tif"]).vrt
    assert sources.is_remote(urls) and not sources.is_remote(local)
    assert sources.remote_options(urls) == sources.REMOTE_OPTIONS
    assert sources.remote_options(local) == {}
    options = RasterReader(urls).env_options  # the timeouts: a stalled server fails in time
    assert options["GDAL_HTTP_LOW_SPEED_TIME"] == sources.REMOTE_OPTIONS[
        "GDAL_HTTP_LOW_SPEED_TIME"]
    # a local member with an external mask (its left half masked) beside a remote one
    masked = write_raster(tmp_path / "m.tif", depth_image(64, 64))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(masked, "r+") as ds:
        ds.write_mask(np.repeat([[0] * 32 + [255] * 32], 64, axis=0).astype(np.uint8))
    assert (tmp_path / "m.tif.msk").exists()
    mixed = build_vrt([masked, f"{base}/e.tif"]).vrt
    assert sources.is_remote(mixed)
    with rasterio.Env(**sources.REMOTE_OPTIONS), rasterio.open(mixed) as ds:
        assert ds.dataset_mask()[:, :64].mean() == 255  # EMPTY_DIR: the .msk unseen
    with rasterio.Env(**sources.remote_options(mixed)), rasterio.open(mixed) as ds:
        assert ds.dataset_mask()[:, :64].mean() == 127.5  # half of the local member masked


def _interrupt_after(monkeypatch, tmp_path, calls: int) -> None:
    monkeypatch.setenv("TILEDEPTH_TEST_DELAY", "0")
    monkeypatch.setenv("TILEDEPTH_TEST_CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("TILEDEPTH_TEST_STOP_AFTER", str(calls))


def test_a_presigned_url_signed_again_resumes_and_its_secrets_stay_out_of_the_folder(
        tmp_path, http_root, monkeypatch):
    """The key of a remote input held its URL's query: a presigned URL signed again (the
    first expired mid-run) never resumed, though the message said to run again; and the
    checkpoint's manifest.json, left in the output's folder, held the signature."""
    root, base = http_root.root, http_root.base
    src = write_raster(root / "ortho.tif", depth_image(128, 160))
    old = f"{base}/ortho.tif?X-Amz-Expires=60&X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=OLD5"
    new = f"{base}/ortho.tif?X-Amz-Expires=60&X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=NEW7"
    assert identity(resolve(old)) == identity(resolve(new))
    assert identity(resolve(old))["path"] == f"/vsicurl/{base}/ortho.tif"
    user = base.replace("http://", "http://alice:hunter2@")
    assert identity(resolve(f"{user}/ortho.tif"))["path"] == f"/vsicurl/{base}/ortho.tif"
    out = tmp_path / "o.tif"
    opts = dict(model="toy_models:slow", tile_size=64, overlap=0.25, batch_size=1,
                anchor_calls=1)  # (one coarse call: the calls counted below)
    _interrupt_after(monkeypatch, tmp_path, 6)
    with pytest.raises(KeyboardInterrupt) as stop:
        tiledepth.run(old, out, **opts)
    assert "run the same command again to resume" in stop.value.__notes__[0]
    (manifest,) = tmp_path.glob(".o.tif.tiledepth-*/manifest.json")
    text = manifest.read_text()
    assert "OLD5" not in text and "AKIDEXAMPLE" not in text
    monkeypatch.delenv("TILEDEPTH_TEST_STOP_AFTER")
    result = tiledepth.run(new, out, **opts)
    assert result.resumed >= 4  # the coarse map and 5 tiles, or 6 tiles
    fresh = tiledepth.run(src, tmp_path / "fresh.tif", **opts)
    np.testing.assert_array_equal(_read(out), _read(fresh.output))


def test_credentials_in_urls_are_redacted_in_messages_and_info(tmp_path, http_root):
    """A URL's password and signature were written verbatim: error lines, `info`."""
    from tiledepth.info import describe, format_info
    from tiledepth.sources import redact

    secret = "X-Amz-Credential=AKIDEXAMPLE%2F20260101&X-Amz-Signature=5ECRET&X-Amz-Expires=9"
    assert redact(f"https://alice:hunter2@h/a.tif?{secret}") == (
        "https://h/a.tif?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=9")
    assert redact("https://h/a.tif?sv=2024&sig=abc%2Bd%3D&se=2") == \
        "https://h/a.tif?sv=2024&sig=REDACTED&se=2"  # Azure SAS
    assert redact("gs://b/k?X-Goog-Signature=ab12&x=1") == \
        "gs://b/k?X-Goog-Signature=REDACTED&x=1"
    assert redact("/vsicurl?url=https%3A%2F%2Fu%3Ap%40h%2Fa.tif%3Ftoken%3Dt0k%26x%3D1") == \
        "/vsicurl?url=https%3A%2F%2Fh%2Fa.tif%3Ftoken%3DREDACTED%26x%3D1"
    assert redact("/data/a@b.tif") == "/data/a@b.tif"
    root, base = http_root.root, http_root.base
    write_raster(root / "a.tif", depth_image(64, 64))
    user = base.replace("http://", "http://alice:hunter2@")
    line = format_info(describe(f"{user}/a.tif?{secret}")).splitlines()[0]
    assert line == f"file:            /vsicurl/{base}/a.tif?X-Amz-Credential=REDACTED&" \
                   "X-Amz-Signature=REDACTED&X-Amz-Expires=9 (GTiff)"
    with pytest.raises(InputError) as info:  # a STAC item that is not there
        resolve(f"{user}/items/none.json?{secret}")
    assert "hunter2" not in str(info.value) and "5ECRET" not in str(info.value)
    assert str(info.value).startswith(f"/vsicurl/{base}/items/none.json?")


def test_a_urls_default_output_is_named_by_its_file_name(tmp_path, http_root, monkeypatch):
    """/vsicurl?url=... wrote vsicurl.depth.tif (two such inputs collided), my%20file.tif
    wrote my%20file.depth.tif, and http://h/. failed with "unexpected ValueError" (exit 1)."""
    from pathlib import Path
    from urllib.parse import quote

    from click.testing import CliRunner

    from tiledepth.cli import main
    from tiledepth.safe_write import output_paths
    from tiledepth.sources import source_name

    root, base = http_root.root, http_root.base
    write_raster(root / "my file.tif", depth_image(64, 64))
    monkeypatch.chdir(tmp_path)
    opts = dict(model="toy_models:affine_red", tile_size=64, overlap=0.25)
    wrapped = f"/vsicurl?url={quote(base + '/my%20file.tif', safe='')}"
    assert source_name(wrapped) == source_name(f"{base}/my%20file.tif") == "my file.tif"
    assert source_name("/vsicached?file=%2Fvsicurl%2Fhttps%3A%2F%2Fh%2Fa.tif") == "a.tif"
    assert source_name("https://h/") == "" and source_name("https://h/.") == "."
    assert tiledepth.run(wrapped, **opts).output == Path("my file.depth.tif")
    assert tiledepth.run(f"{base}/my%20file.tif", overwrite=True, **opts).output == \
        Path("my file.depth.tif")
    result = CliRunner().invoke(main, ["run", f"{base}/.", "--model",
                                       "toy_models:affine_red"])
    assert result.exit_code == 2, result.output
    assert "names no file" in result.output and "-o" in result.output
    # with -o the input's name is not needed
    assert output_paths(Path(source_name("https://h/")), "x.tif").output == Path("x.tif")


def test_retry_and_cache_settings_in_the_environment_win():
    """GDAL_HTTP_MAX_RETRY and GDAL_HTTP_RETRY_DELAY (and the cache size) set in the
    environment were overridden by tiledepth's own (only the timeouts took the
    environment's)."""
    code = ("from tiledepth.sources import REMOTE_OPTIONS as R; print(R['GDAL_HTTP_MAX_RETRY'],"
            " R['GDAL_HTTP_RETRY_DELAY'], R['CPL_VSIL_CURL_CACHE_SIZE'],"
            " R['GDAL_HTTP_LOW_SPEED_TIME'])")
    env = child_env(GDAL_HTTP_MAX_RETRY="8", GDAL_HTTP_RETRY_DELAY="0.1",
                    CPL_VSIL_CURL_CACHE_SIZE="1048576", GDAL_HTTP_LOW_SPEED_TIME="")
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True).stdout.split()
    assert said == ["8", "0.1", "1048576", "30"]  # an empty variable: the default


def test_the_readers_error_for_a_url_leaves_its_credentials_out():
    """The library's own error for a URL it cannot read (not only the CLI's line) names the
    URL without its user name, password or signature."""
    url = "https://alice:hunter2@127.0.0.1:9/a.tif?X-Amz-Expires=60&X-Amz-Signature=f00d"
    with pytest.raises(InputError) as info:
        with RasterReader(url):
            pass
    said = str(info.value)
    assert "127.0.0.1:9/a.tif" in said and "X-Amz-Signature=REDACTED: cannot" in said, said
    assert "hunter2" not in said and "f00d" not in said


def test_wrong_input_types_are_one_line_errors_that_say_what_to_pass(tmp_path):
    """An array, an open dataset, an aoi or config of no path, and a path to estimate were
    bare TypeErrors ("expected str, bytes or os.PathLike object, not ndarray"), or for
    estimate "image must have shape (H, W, 3) or (H, W), got ()"."""
    import re

    from tiledepth.errors import OptionError

    src = write_raster(tmp_path / "in.tif", depth_image(40, 48))
    out = tmp_path / "out.tif"
    model = dict(model=lambda b: b.mean(-1), tile_size=32)
    image = np.zeros((40, 48, 3), np.float32)
    with pytest.raises(InputError, match=r"^input is an array \(ndarray of shape \(40, 48, 3\)"
                                         r"\), not a path; .* use tiledepth.estimate"):
        tiledepth.run(image, out, **model)
    with pytest.raises(InputError, match="input is an array"):  # also before an option error
        tiledepth.run(image, out, **dict(model, tile_size=0))
    with rasterio.open(src) as ds, pytest.raises(
            InputError, match=r"^input is an open DatasetReader, not a path; pass the path it "
                              rf"was opened from, its .name \('{re.escape(ds.name)}'\)$"):
        tiledepth.run(ds, out, **model)
    with pytest.raises(OptionError, match=r"in.tif: aoi must be the path of a vector file of "
                                          r"polygons \(str or os.PathLike\), got int; for a "
                                          r"rectangle use bounds="):
        tiledepth.run(src, out, aoi=5, **model)
    with pytest.raises(OptionError, match=r"config must be the path of a YAML file of options "
                                          r"\(str or os.PathLike\), got int"):
        tiledepth.run(src, out, config=5, **model)
    with pytest.raises(OptionError, match=r"^image is a path \('.*in.tif'\), not an array; "
                                          r".* use tiledepth.run\(path, output"):
        tiledepth.estimate(src, **model)
    with pytest.raises(OptionError, match="image is a path"):
        tiledepth.estimate(str(src), **model)
    assert not out.exists()


def test_a_url_without_overviews_is_not_fetched_twice_at_once(tmp_path, http_root):
    """Without overviews the coarse map's decimated read fetches the whole image, and the
    tiles read it again (from GDAL's download cache where it still holds the blocks: here
    all, a 12 MB file). The coarse read on the anchor's thread and the tiles' read-ahead
    ran at once, each missing the cache for the blocks they share: 1.20-1.23x the file here,
    2.0-2.3x against 1.53x on benchmarks/remote_bytes.py's 4096 px file (BENCHMARKS.md,
    "Bytes fetched by a run on a URL"). A remote raster's tiles are now read once the coarse
    read is done."""
    root, base = http_root.root, http_root.base
    image = depth_image(2048, 2048)  # with grain, so the blocks are not all alike
    image = (image * 0.8 + np.random.default_rng(0).integers(0, 50, image.shape)).astype(np.uint8)
    src = write_raster(root / "plain.tif", image, compress="deflate", blockxsize=512,
                       blockysize=512)
    size = src.stat().st_size
    opts = dict(model="toy_models:affine_red", tile_size=384, overlap=0.25, coarse_size=768,
                overviews=False, workers=2)
    local = tiledepth.run(src, tmp_path / "local.tif", **opts)
    http_root.get("__reset__")
    result = tiledepth.run(f"{base}/plain.tif", tmp_path / "url.tif", **opts)
    np.testing.assert_array_equal(_read(result.output), _read(local.output))
    assert http_root.served() <= 1.1 * size, (http_root.served(), size)  # 1.20-1.23 before


def test_a_timed_out_read_says_so_in_the_one_line_of_sources_no_answer(monkeypatch):
    """The "no answer in time" line was written twice, by the reader's open and by
    sources.read_bytes (a STAC item's): both give sources.no_answer's now, the same line."""
    import re

    from tiledepth import sources

    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_LOW_SPEED_TIME", "1")
    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.01")
    server, base = silent_server()
    try:
        with pytest.raises(InputError) as opened, RasterReader(f"{base}/ortho.tif"):
            pass
        with pytest.raises(InputError) as read:
            sources.read_bytes(f"/vsicurl/{base}/item.json")
    finally:
        server.close()
    for info, name in ((opened, f"/vsicurl/{base}/ortho.tif"),
                       (read, f"/vsicurl/{base}/item.json")):
        said = re.search(r"no answer in time \((.*)\); check", str(info.value))
        assert said is not None and sources.timed_out(said[1]), str(info.value)
        assert str(info.value) == str(sources.no_answer(name, said[1]))
    assert str(sources.no_answer("https://h/a.tif?sig=f00", "timed out: /a.tif?sig=f00")) == (
        "https://h/a.tif?sig=REDACTED: cannot read it: no answer in time (timed out: "
        "/a.tif?sig=REDACTED); check the URL and the connection (a slow server: raise "
        "GDAL_HTTP_LOW_SPEED_TIME or GDAL_HTTP_CONNECTTIMEOUT, in seconds)")


def test_a_vsicurl_url_path_is_unwrapped_by_one_function():
    """source_name and the remote identity's _object_url each parsed the URL out of a
    ``/vsicurl?url=...`` path; both take sources._curl_url's now."""
    from tiledepth.sources import _curl_url, _object_url, source_name

    path = "/vsicurl?use_head=no&url=https%3A%2F%2Fu%3Ap%40h%2Fd%2Fmy%2520file.tif%3Fsig%3Dx"
    assert _curl_url(path) == "https://u:p@h/d/my%20file.tif?sig=x"
    assert source_name(path) == "my file.tif"
    assert _object_url(path) == "/vsicurl/https://h/d/my%20file.tif"
    for other in ("/vsicurl?use_head=no", "/vsicurl/https://h/a.tif", "https://h/a.tif"):
        assert _curl_url(other) is None
    assert source_name("/vsicurl?use_head=no") == ""
    assert _object_url("/vsicurl?use_head=no&sig=x") == "/vsicurl?use_head=no&sig=REDACTED"


def test_a_local_vrt_of_urls_is_read_as_a_url_and_fetches_each_block_about_once(
        tmp_path, http_root):
    """A local .vrt file whose sources are URLs (gdalbuildvrt's) was a local file to the
    reader and the engine: read by several threads at once while the coarse read fetched
    the same blocks, without the timeouts and retries of a URL (3.3x its files' bytes
    here). It is remote now (sources.reads_remote): 1.24x, as a --mosaic of the URLs."""
    from conftest import TRANSFORM

    from tiledepth import sources
    from tiledepth.mosaic import build_vrt

    root, base = http_root.root, http_root.base
    image = depth_image(2048, 2048)  # with grain, so the blocks are not all alike
    image = (image * 0.8 + np.random.default_rng(0).integers(0, 50, image.shape)).astype(np.uint8)
    kw = dict(compress="deflate", blockxsize=512, blockysize=512)
    whole = write_raster(tmp_path / "whole.tif", image, **kw)
    halves = [write_raster(root / "w.tif", image[:, :, :1024].copy(), **kw),
              write_raster(root / "e.tif", image[:, :, 1024:].copy(), **kw,
                           transform=TRANSFORM @ rasterio.Affine.translation(1024, 0))]
    size = sum(p.stat().st_size for p in halves)
    vrt = tmp_path / "urls.vrt"
    vrt.write_text(build_vrt([f"{base}/w.tif", f"{base}/e.tif"]).vrt)
    nested = tmp_path / "nested.vrt"  # a VRT of that VRT file
    nested.write_text(build_vrt([vrt]).vrt)
    assert not sources.is_remote(vrt)  # (by its name, a local file)
    assert sources.reads_remote(vrt) and sources.reads_remote(str(nested))
    assert not sources.reads_remote(whole) and not sources.reads_remote(build_vrt([whole]).vrt)
    assert sources.remote_options(vrt) == {**sources.REMOTE_OPTIONS,
                                           "GDAL_DISABLE_READDIR_ON_OPEN": "TRUE"}
    assert sources.remote_options(whole) == {}
    assert RasterReader(vrt).remote and not RasterReader(whole).remote
    opts = dict(model="toy_models:affine_red", tile_size=512, overlap=0.25, coarse_size=768,
                overviews=False, workers=2)
    local = tiledepth.run(whole, tmp_path / "local.tif", **opts)
    http_root.get("__reset__")
    result = tiledepth.run(vrt, tmp_path / "vrt.tif", **opts)
    np.testing.assert_array_equal(_read(result.output), _read(local.output))
    assert http_root.served() <= 1.5 * size, (http_root.served(), size)  # 3.3x before
