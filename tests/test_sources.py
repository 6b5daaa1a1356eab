"""tiledepth.sources: URLs (HTTP range requests), STAC items and S3 in and out, on loopback."""

import functools
import http.server
import json
import os
import re
import threading

import numpy as np
import pytest
import rasterio
from conftest import depth_image, write_raster

import tiledepth
from tiledepth.errors import InputError, OutputError
from tiledepth.sources import identity, resolve, stac_asset

OPTS = dict(model="toy_models:affine_red", tile_size=96, overlap=0.25, coarse_size=96,
            batch_size=4)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP range requests and an ETag; counts the body bytes it serves."""

    served = None  # set per server: a one-element list

    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        first, last = 0, size - 1
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            first = int(match.group(1))
            last = min(int(match.group(2)) if match.group(2) else last, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{os.stat(path).st_mtime_ns}-{size}"')
        self.end_headers()
        f = open(path, "rb")  # noqa: SIM115 (closed by the base class)
        f.seek(first)
        self._left = last - first + 1
        return f

    def copyfile(self, source, outputfile):
        data = source.read(self._left)
        self.served[0] += len(data)
        outputfile.write(data)


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL, served-bytes counter) of a threaded HTTP server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    served = [0]
    handler = type("Handler", (RangeHandler,), {"served": served})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


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
    root, base, served = http_root
    src = write_raster(root / "ortho.tif", depth_image(240, 300))
    size = src.stat().st_size
    (root / "copy.tif").write_bytes(src.read_bytes())  # a fresh object: GDAL caches per URL
    local = tiledepth.run(src, tmp_path / "local.tif", **OPTS)
    for name, url in [("url", f"{base}/ortho.tif"), ("vsi", f"/vsicurl/{base}/copy.tif")]:
        served[0] = 0
        result = tiledepth.run(url, tmp_path / f"{name}.tif", **OPTS)
        assert result.tiles == local.tiles
        np.testing.assert_allclose(_read(result.output), _read(local.output), atol=1e-5)
        assert 0 < served[0] <= 3 * size, (name, served[0], size)


def test_remote_identity_is_size_and_etag(http_root):
    root, base, _ = http_root
    src = write_raster(root / "ortho.tif", depth_image(64, 64))
    ident = identity(resolve(f"{base}/ortho.tif"))
    assert ident["size"] == src.stat().st_size
    assert ident["etag"] == f'"{src.stat().st_mtime_ns}-{src.stat().st_size}"'


def test_a_stac_item_runs_its_visual_asset(tmp_path, http_root):
    root, base, _ = http_root
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


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 (one for this module): (host, port)."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()
    server.stop()


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
    import urllib.request  # moto keeps its buckets per process: empty them for the next test

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
    import socket
    import struct

    from tiledepth import sources
    from tiledepth.read import RasterReader

    monkeypatch.setitem(sources.REMOTE_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.01")
    root, base, _ = http_root
    write_raster(root / "a.tif", depth_image(128, 128))
    write_raster(root / "b.tif", depth_image(128, 128))
    resets = {"a.tif": [1], "b.tif": [10**6]}  # connections to reset, per file
    original = RangeHandler.send_head

    def send_head(self):
        left = resets.get(self.path.rsplit("/", 1)[-1])
        if self.headers.get("Range") and left and left[0] > 0:
            left[0] -= 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()  # a TCP reset, no response
            self.close_connection = True
            return None
        return original(self)

    monkeypatch.setattr(RangeHandler, "send_head", send_head)
    monkeypatch.setattr(RangeHandler, "finish", lambda self: None)
    with RasterReader(f"{base}/a.tif") as src:
        image, valid = src.read_tile(rasterio.windows.Window(0, 0, 64, 64))
    assert resets["a.tif"] == [0] and valid.all() and image.shape == (3, 64, 64)
    with pytest.raises(InputError, match=r"b.tif: cannot read it .* after retries; check"):
        with RasterReader(f"{base}/b.tif") as src:
            src.read_tile(rasterio.windows.Window(0, 0, 64, 64))
    assert resets["b.tif"][0] < 10**6 - 3  # it was tried again before giving up
