"""Sources: any GDAL source as input, object storage as output.

:func:`resolve` turns what a user names into what GDAL opens: a local path
stays a :class:`pathlib.Path`; ``https://`` and ``http://`` URLs become
``/vsicurl/`` paths, ``s3://`` ``/vsis3/``, ``gs://`` ``/vsigs/``, ``az://``
``/vsiaz/``; any ``/vsi...`` path and an in-memory VRT (XML text) pass as
they are; a STAC item (a ``.json`` file or URL) becomes its image asset.
Remote sources are read window by window straight from the object (GDAL's
range requests through its shared download cache, :data:`REMOTE_OPTIONS`);
nothing is downloaded whole.

:func:`identity` is what names a remote input for resume (its size and ETag
or Last-Modified, as the server reports them); :func:`upload` copies a
finished local output to object storage. Credentials are whatever GDAL reads
from the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``); nothing here
logs them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import glob
import hashlib
import json
import logging
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from tiledepth.errors import InputError, OutputError

__all__ = ["REMOTE_OPTIONS", "check_local", "check_remote_output", "identity", "is_remote",
           "is_remote_output", "is_stac_item", "no_answer", "reads_remote", "redact",
           "remote_companions", "remote_options", "resolve", "source_name", "stac_asset",
           "staging_path", "timed_out", "upload", "upload_outputs", "vsi_path"]

log = logging.getLogger(__name__)

#: URL scheme -> GDAL virtual file system.
SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
           "az": "/vsiaz/"}
#: GDAL virtual file systems that reach over a network: each also as ``..._streaming/`` (read
#: once, front to back), and ``/vsicurl?url=...`` (a URL with GDAL's options in the path).
NETWORK_VSI = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/",
               "/vsiswift/", "/vsiwebhdfs/", "/vsihdfs/", "/vsicurl?", "/vsicurl_streaming/",
               "/vsis3_streaming/", "/vsigs_streaming/", "/vsiaz_streaming/",
               "/vsioss_streaming/", "/vsiswift_streaming/")
#: GDAL's archive file systems: a path in one names a file inside an archive (``/vsigzip/``:
#: the one file a .gz holds).
ARCHIVE_VSI = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")
#: GDAL file systems that read a part of another file named in their path: the text that
#: comes before that file's name (``/vsisubfile/OFFSET_SIZE,FILE``, ``/vsicrypt/...,file=FILE``,
#: ``/vsicached?file=FILE``).
WRAPPER_VSI = {"/vsisubfile/": ",", "/vsicrypt/": "file=", "/vsicached?": "file="}
#: Seconds a remote request may wait to connect; a request that moves under 1 byte a second
#: for 30 seconds (a stalled server) fails. GDAL waits forever by default: a server that
#: accepts and never answers hung the run, deaf to Ctrl-C and SIGTERM while GDAL waited. No
#: cap on a whole request's time (``GDAL_HTTP_TIMEOUT``): a slow but moving transfer, a
#: large upload over a slow uplink or a large merged range read, is not a stalled one. The
#: same variables set in the environment win.
HTTP_TIMEOUTS = {"GDAL_HTTP_CONNECTTIMEOUT": "20",
                 "GDAL_HTTP_LOW_SPEED_TIME": "30", "GDAL_HTTP_LOW_SPEED_LIMIT": "1"}
#: GDAL settings of reads from a remote source: no directory listing on open, adjacent range
#: requests merged (the blocks a read needs go as parallel single-range requests, GDAL's
#: default: object stores answer no multi-range request), a failed request retried 3 times
#: (connection resets, 5xx, a timeout: :data:`HTTP_TIMEOUTS`), and a shared download
#: cache of 256 MiB: a band of tiles of a 60 000 px wide RGB raster, so that the overlapping
#: tiles of one tile row and the next fetch each byte once. Any of them set in the
#: environment wins, as GDAL's own reading of it would (a scoped ``rasterio.Env`` sets
#: them over the environment: ``GDAL_HTTP_MAX_RETRY=8`` was ignored).
REMOTE_OPTIONS = {key: os.environ.get(key) or value for key, value in {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "CPL_VSIL_CURL_CACHE_SIZE": str(256 * 2**20),
    **HTTP_TIMEOUTS,
}.items()}
#: Query parameters of a URL whose values are secrets (or name whose they are): a signature
#: (AWS, Google, Azure SAS ``sig``, CloudFront), a credential, a token, an API key. Messages,
#: manifests and checkpoint manifests show them as ``REDACTED`` (:func:`redact`).
SECRET_PARAMS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
                 "X-Goog-Signature", "X-Goog-Credential", "AWSAccessKeyId", "Signature",
                 "sig", "token", "access_token", "key", "api_key", "apikey", "password")
#: STAC asset roles and media types that mark an image.
IMAGE_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/jp2")


def vsi_path(source: str) -> str:
    """The GDAL path of a URL (``s3://b/k`` -> ``/vsis3/b/k``); anything else as it is.

    Examples
    --------
    >>> vsi_path("s3://bucket/ortho.tif")
    '/vsis3/bucket/ortho.tif'
    >>> vsi_path("https://example.com/a.tif")
    '/vsicurl/https://example.com/a.tif'
    >>> vsi_path("/vsicurl/http://h/a.tif")
    '/vsicurl/http://h/a.tif'
    """
    scheme, sep, rest = source.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        return source
    vsi = SCHEMES[scheme.lower()]
    return vsi + source if vsi == "/vsicurl/" else vsi + rest


def is_gdal_source(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a URL, a ``/vsi`` path or VRT text rather than a local file.

    Examples
    --------
    >>> is_gdal_source("s3://b/k.tif"), is_gdal_source("/vsimem/x.tif"), is_gdal_source("a.tif")
    (True, True, False)
    """
    if isinstance(source, os.PathLike):
        return False
    text = str(source).lstrip()
    return (text.startswith(("/vsi", "<VRTDataset"))
            or text.partition("://")[0].lower() in SCHEMES and "://" in text)


def is_remote(source: str | os.PathLike) -> bool:
    """Whether ``source`` (a URL, a GDAL path or VRT text) reaches over a network: itself, the
    archive or file it reads within (:func:`archive_of`, :func:`wrapped_file`), or, for VRT
    text (``--mosaic``), any file it reads.

    Examples
    --------
    >>> is_remote("/vsis3/b/k.tif"), is_remote("https://h/a.tif"), is_remote("a.tif")
    (True, True, False)
    >>> is_remote("/vsicurl?url=https%3A%2F%2Fh%2Fa.tif"), is_remote("/vsis3_streaming/b/k")
    (True, True)
    >>> is_remote("/vsizip//vsis3/b/k.zip/a.tif"), is_remote("/vsizip//data/k.zip/a.tif")
    (True, False)
    >>> is_remote('<VRTDataset><VRTRasterBand><SimpleSource><SourceFilename>'
    ...           '/vsicurl/https://h/a.tif</SourceFilename></SimpleSource>'
    ...           '</VRTRasterBand></VRTDataset>')
    True
    """
    if not is_gdal_source(source):
        return False
    text = vsi_path(str(source))
    if text.lstrip().startswith("<VRTDataset"):
        # a mosaic of URLs is read as each URL alone is: with the timeouts and retries, and
        # by one thread (without them a stalled server hung it, and it fetched 3x the bytes)
        from tiledepth.identity import vrt_sources

        return any(is_remote(member) for member in vrt_sources(text))
    if text.startswith(NETWORK_VSI):
        return True
    within = archive_of(text) or wrapped_file(text)
    return within is not None and is_remote(within)


def reads_remote(source: str | os.PathLike, _seen: frozenset = frozenset()) -> bool:
    """Whether a read of ``source`` reaches over a network: :func:`is_remote`, or a local VRT
    file (``gdalbuildvrt`` of URLs) or VRT text that reads, directly or through a VRT file
    it names, a remote file.

    :func:`is_remote` tells a source by its name; a local VRT file's is that of a local
    file. Read as a local file is (by several threads at once, without the timeouts and
    retries of :data:`REMOTE_OPTIONS`), a VRT of URLs fetched each shared block 3 times.

    Examples
    --------
    >>> reads_remote("s3://b/k.tif"), reads_remote("no-such-file.tif")
    (True, False)
    """
    from tiledepth.identity import is_vrt_file, vrt_sources

    if is_remote(source):
        return True
    text = os.fspath(source)
    if text.lstrip().startswith("<VRTDataset"):
        return any(_member_reads_remote(member, _seen) for member in vrt_sources(text))
    if is_gdal_source(source) or not is_vrt_file(text):
        return False
    real = os.path.realpath(text)
    try:
        stat = os.stat(real)
    except OSError:
        return False
    return _vrt_file_reads_remote(real, stat.st_mtime_ns, stat.st_size, _seen)


def _member_reads_remote(member: str, seen: frozenset) -> bool:
    """:func:`reads_remote` of a VRT's member: a local one is followed only where named
    ``.vrt`` (a gdalbuildvrt of 20 000 local tiles: their files are not opened, 3.7 s a call
    when each was sniffed)."""
    return is_remote(member) or (member.lower().endswith(".vrt")
                                 and os.path.realpath(member) not in seen
                                 and reads_remote(member, seen))


@functools.lru_cache(maxsize=64)
def _vrt_file_reads_remote(real: str, mtime_ns: int, size: int, seen: frozenset) -> bool:
    """:func:`reads_remote` of a local VRT file, once per version of it (a run asks at each
    open and tile pass); ``seen``: the VRT files above it (a cycle of them ends)."""
    from tiledepth.identity import vrt_sources

    seen = seen | {real}
    return any(_member_reads_remote(member, seen) for member in vrt_sources(real))


def check_local(value: str | os.PathLike | None, command: str, then: str, *,
                output: str | None = None) -> None:
    """Raise where ``value`` (None: nothing to check) is a URL or a GDAL path
    (:func:`is_gdal_source`), not a local file, for a ``tiledepth`` ``command`` that reads and
    writes local files only (its checks, lock and renames are on disk): InputError for a
    file it reads, OutputError for one it writes (``output``: how the command names it).
    ``then``: what to do instead. Said before ``Path`` folds a URL's ``//`` into "no such
    file".

    Examples
    --------
    >>> check_local("o.tif", "export", "export the local copy")  # a local file: nothing
    >>> check_local("https://h/o.tif", "export", "export the local copy")
    Traceback (most recent call last):
    ...
    tiledepth.errors.InputError: https://h/o.tif: tiledepth export reads local files only, \
not a URL or GDAL /vsi path; download it first and export the local copy
    """
    if value is None or not is_gdal_source(os.fspath(value)):
        return
    if output is None:
        raise InputError(f"{value}: tiledepth {command} reads local files only, not a URL or "
                         f"GDAL /vsi path; download it first and {then}")
    raise OutputError(f"{value}: tiledepth {command} writes local files only, not a URL or "
                      f"GDAL /vsi path ({output}); {then}")


def remote_options(source: str | os.PathLike) -> dict[str, str]:
    """The GDAL settings a read of ``source`` takes: :data:`REMOTE_OPTIONS` where it reads a
    remote file (:func:`reads_remote`), none for a local file.

    VRT text that reads local files as well as remote ones (a ``--mosaic`` of both), and
    a local VRT file of remote ones, take them with the directory listing on open left to
    GDAL (``EMPTY_DIR`` would hide a local file's ``.msk``, ``.aux.xml`` nodata and
    ``.ovr`` from GDAL: masked pixels read as valid): ``TRUE``, which lists no folder but
    looks for each such file by its name.

    Examples
    --------
    >>> remote_options("a.tif"), remote_options("s3://b/k.tif")["GDAL_HTTP_MAX_RETRY"]
    ({}, '3')
    """
    if not reads_remote(source):
        return {}
    text = str(source)
    if text.lstrip().startswith("<VRTDataset"):
        from tiledepth.identity import vrt_sources

        if not all(is_gdal_source(m) for m in vrt_sources(text)):
            return {**REMOTE_OPTIONS, "GDAL_DISABLE_READDIR_ON_OPEN": "TRUE"}
    elif not is_gdal_source(source):  # a local VRT file (its .aux.xml, .ovr: local files)
        return {**REMOTE_OPTIONS, "GDAL_DISABLE_READDIR_ON_OPEN": "TRUE"}
    return dict(REMOTE_OPTIONS)


def is_remote_output(output: str | os.PathLike | None) -> bool:
    """Whether an output path names object storage (``s3://``, ``gs://``, ``/vsis3/`` ...)."""
    if output is None or not is_gdal_source(output):
        return False
    text = str(output)
    read_only = ("/vsicurl/", "/vsicurl?", *(v for v in NETWORK_VSI if "_streaming" in v))
    # an object itself, not a file inside a remote archive
    return vsi_path(text).startswith(NETWORK_VSI) and not text.startswith(read_only)


def source_name(source: str | os.PathLike) -> str:
    """A short name of a source for messages and output names: its file name.

    That of the URL in a ``/vsicurl?url=...`` path, of the file in a ``/vsicached?file=...``
    one; an HTTP URL's name unquoted (``my%20file.tif`` is ``my file.tif``, as the server
    reads it). May be empty, ``.`` or ``..`` (``https://h/``): no file name
    (:func:`tiledepth.safe_write.default_output` refuses to name an output after it).

    Examples
    --------
    >>> source_name("/vsicurl/https://h/data/a.tif?x=1")
    'a.tif'
    >>> source_name("<VRTDataset rasterXSize='2'/>")
    'mosaic.vrt'
    >>> source_name("/vsicurl?url=https%3A%2F%2Fh%2Fmy%2520file.tif&use_head=no")
    'my file.tif'
    """
    if not isinstance(source, (str, os.PathLike)):  # (a run's option error names its input
        raise InputError(_not_a_source(source))  # here: an array's is the error to give)
    text = os.fspath(source)
    if text.lstrip().startswith("<VRTDataset"):
        return "mosaic.vrt"
    if text.startswith("/vsicurl?"):
        url = _curl_url(text)
        return source_name(url) if url is not None else ""
    wrapped = wrapped_file(text) if text.startswith("/vsicached?") else None
    if wrapped is not None:
        return source_name(wrapped)
    url = next((text[len(vsi):] for vsi in ("/vsicurl/", "/vsicurl_streaming/")
                if text.startswith(vsi)), text)
    if url.partition("://")[0].lower() in ("http", "https"):
        # the name in its path (not its host's: https://h/ names no file), unquoted but for
        # a "/" or a NUL, which no file name holds
        name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        return urllib.parse.unquote(re.sub(r"%(2[fF]|00)", r"%25\1", name))
    return text.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def _curl_url(source: str) -> str | None:
    """The URL a ``/vsicurl?url=...`` path names (GDAL's options in a query, the URL,
    URL-encoded, one of them), decoded; None for any other path, and for one without
    ``url=``.

    Examples
    --------
    >>> _curl_url("/vsicurl?use_head=no&url=https%3A%2F%2Fh%2Fa.tif%3Fsig%3Dx")
    'https://h/a.tif?sig=x'
    >>> _curl_url("/vsicurl?use_head=no"), _curl_url("/vsicurl/https://h/a.tif")
    (None, None)
    """
    if not source.startswith("/vsicurl?"):
        return None
    found = urllib.parse.parse_qs(source[len("/vsicurl?"):]).get("url")
    return found[0] if found else None


def redact(text: str | os.PathLike) -> str:
    """``text`` (a URL, a GDAL path, a message naming one) with the credentials a URL may
    carry left out: its user name and password (``user:pass@``) dropped, the values of
    its secret query parameters (:data:`SECRET_PARAMS`: ``X-Amz-Signature``, Azure's
    ``sig``, ``token``, ...) replaced with ``REDACTED``. Also inside the URL-encoded URL of
    a ``/vsicurl?url=...`` path and VRT text (``&amp;``).

    Examples
    --------
    >>> redact("/vsicurl/https://alice:hunter2@h/a.tif?X-Amz-Expires=60&X-Amz-Signature=f00")
    '/vsicurl/https://h/a.tif?X-Amz-Expires=60&X-Amz-Signature=REDACTED'
    >>> redact("/vsicurl?url=https%3A%2F%2Fu%3Ap%40h%2Fa.tif%3Fsig%3Dx%26sp%3Dr")
    '/vsicurl?url=https%3A%2F%2Fh%2Fa.tif%3Fsig%3DREDACTED%26sp%3Dr'
    >>> redact("https://h/a.tif?sig=f00: cannot read it")  # a message's ': ' kept
    'https://h/a.tif?sig=REDACTED: cannot read it'
    >>> redact("/data/a@b.tif"), redact("s3://bucket/a@b.tif")  # no credentials in these
    ('/data/a@b.tif', 's3://bucket/a@b.tif')
    """
    text = os.fspath(text)
    text = _USERINFO.sub(r"\1", text)
    text = _ENCODED_USERINFO.sub(r"\1", text)
    return _SECRET_VALUE.sub(r"\1REDACTED", text)


#: ``scheme://user:pass@``: what :func:`redact` drops (the part before the host).
_USERINFO = re.compile(r"(://)[^/?#@\s\"'<>]*@")
#: The same, URL-encoded (``%3A%2F%2Fuser%3Apass%40``), in a ``/vsicurl?url=`` path.
_ENCODED_USERINFO = re.compile(r"(?i)(%3A%2F%2F)(?:(?!%2F|%3F|%23)[^/?#@\s\"'<>&])*?%40")
#: A secret query parameter's name and ``=`` (plain or URL-encoded, after ``?``, ``&``, or the
#: ``;`` of an XML ``&amp;``), then its value: :func:`redact` keeps the first.
_SECRET_VALUE = re.compile(
    r"(?i)((?:[?&;]|%3F|%26)(?:" + "|".join(re.escape(k) for k in SECRET_PARAMS)
    + r")(?:=|%3D))(?:(?!%26|:\s|:$)[^&#\s\"'<>])*")  # (a message's ': ' after the URL kept)


def resolve(source: str | os.PathLike, *, asset: str | None = None) -> Path | str:
    """What GDAL opens for ``source``: a local Path, or a GDAL path string.

    Parameters
    ----------
    source : str or os.PathLike
        A local file, a URL (``http(s)://``, ``s3://``, ``gs://``, ``az://``),
        a ``/vsi...`` path, VRT text, or a STAC item (``*.json``, local or remote).
    asset : str, optional
        The STAC asset to read; default ``visual``, else the first GeoTIFF
        asset with red, green and blue bands.

    Returns
    -------
    pathlib.Path or str

    Raises
    ------
    InputError
        A STAC item without a usable asset, or one that cannot be read.

    Examples
    --------
    >>> resolve("ortho.tif")
    PosixPath('ortho.tif')
    >>> resolve("s3://bucket/ortho.tif")
    '/vsis3/bucket/ortho.tif'
    """
    if not isinstance(source, (str, os.PathLike)):  # Path() said only "expected str, ..."
        raise InputError(_not_a_source(source))
    if not is_gdal_source(source):
        path = Path(source)
        if is_stac_item(path):
            return _asset_source(stac_asset(path.read_bytes(), str(path.absolute()),
                                            asset=asset), path)
        if asset is not None:
            raise InputError(f"{path}: --asset needs a STAC item (a .json file or URL)")
        return path
    text = str(source)
    if text.lstrip().startswith("<VRTDataset"):
        return text
    gdal = vsi_path(text)
    if is_stac_item(text):
        return _asset_source(stac_asset(read_bytes(gdal), text, asset=asset), text)
    if asset is not None:
        raise InputError(f"{redact(text)}: --asset needs a STAC item (a .json file or URL)")
    return gdal


def _not_a_source(source: object) -> str:
    """The one line for an input that is no path: an array, an open dataset, anything else.

    Examples
    --------
    >>> import numpy as np
    >>> _not_a_source(np.zeros((4, 5, 3)))  # doctest: +ELLIPSIS
    'input is an array (ndarray of shape (4, 5, 3)), not a path; ... tiledepth.estimate(...)'
    >>> _not_a_source(5)
    'input must be the path or URL of a raster (str or os.PathLike), got int'
    """
    if hasattr(source, "__array__") and hasattr(source, "shape"):  # (numpy not imported)
        return (f"input is an array ({type(source).__name__} of shape "
                f"{tuple(source.shape)}), not a path; tiledepth.run reads raster files: for "
                "an array in memory use tiledepth.estimate(image, model=...)")
    name = getattr(source, "name", None)
    if isinstance(name, str) and callable(getattr(source, "read", None)):
        return (f"input is an open {type(source).__name__}, not a path; pass the path it "
                f"was opened from, its .name ({redact(name)!r})")
    return (f"input must be the path or URL of a raster (str or os.PathLike), got "
            f"{type(source).__name__}")


def _asset_source(href: str, item: str | os.PathLike) -> Path | str:
    """:func:`resolve` of the asset ``href`` of the STAC item ``item``: an image, never a STAC
    item again (one level only: an asset that leads back to an item would loop)."""
    if is_stac_item(href):
        raise InputError(f"{redact(item)}: its asset {redact(href)} is a STAC item itself, "
                         "not an image; give the item of the image, or choose an image asset "
                         "with --asset")
    return resolve(href)


def is_stac_item(source: str | os.PathLike) -> bool:
    """Whether :func:`resolve` reads ``source`` as a STAC item, without reading it: a local
    ``.json`` file, or a remote one.

    Examples
    --------
    >>> is_stac_item("s3://bucket/items/x.json"), is_stac_item("s3://bucket/ortho.tif")
    (True, False)
    """
    if not is_gdal_source(source):
        path = Path(source)
        return path.suffix.lower() == ".json" and path.is_file()
    text = str(source)
    return not text.lstrip().startswith("<VRTDataset") and \
        source_name(vsi_path(text)).lower().endswith(".json")


def stac_asset(item: bytes | str, location: str, *, asset: str | None = None) -> str:
    """The href of a STAC item's image asset, absolute (relative hrefs from ``location``).

    Parameters
    ----------
    item : bytes or str
        The item's JSON.
    location : str
        Where the item was read (a path or URL), for relative hrefs and messages.
    asset : str, optional
        The asset's key; default ``visual``, else the first GeoTIFF asset whose
        bands are red, green and blue (``common_name`` in ``eo:bands``, STAC 1.0;
        ``eo:common_name`` in ``bands``, STAC 1.1), else the first GeoTIFF asset.

    Examples
    --------
    >>> item = '{"type": "Feature", "assets": {"visual": {"href": "img/v.tif"}}}'
    >>> stac_asset(item, "https://h/items/x.json")
    'https://h/items/img/v.tif'
    >>> stac_asset(item, "https://h/items/x.json?sig=a/b")  # the query is not the folder
    'https://h/items/img/v.tif'
    """
    try:
        doc = json.loads(item)
        assets = doc["assets"]
        if not isinstance(assets, dict) or not all(isinstance(a, dict)
                                                   for a in assets.values()):
            raise TypeError  # every asset is an object with its href
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{redact(location)}: not a STAC item (a JSON Feature with "
                         "assets)") from None
    if asset is not None:
        if asset not in assets:
            raise InputError(f"{redact(location)}: no asset {asset!r}; it has {', '.join(assets)}")
        chosen = asset
    elif "visual" in assets:
        chosen = "visual"
    else:
        tiffs = [k for k, a in assets.items()
                 if any(t in str(a.get("type", "")) for t in IMAGE_TYPES)
                 or str(a.get("href", "")).lower().endswith((".tif", ".tiff"))]
        rgb = [k for k in tiffs if {"red", "green", "blue"} <= {
            b.get(name) for key in ("eo:bands", "bands") for name in ("common_name",
                                                                      "eo:common_name")
            for b in _as_list(assets[k].get(key)) if isinstance(b, dict)}]
        if not tiffs:
            raise InputError(f"{redact(location)}: no GeoTIFF asset; choose one with --asset "
                             f"({', '.join(assets)})")
        chosen = (rgb or tiffs)[0]
    href = str(assets[chosen].get("href", ""))
    if not href:
        raise InputError(f"{redact(location)}: asset {chosen!r} has no href")
    return _join(location, href)


def _join(location: str, href: str) -> str:
    """``href`` relative to ``location`` (a STAC item's path, URL or GDAL path); an absolute
    one as it is.

    A URL's query (a signature, ``?sig=a/b``) and fragment are no part of its folder.

    Examples
    --------
    >>> _join("s3://b/items/x.json", "../img/v.tif"), _join("/data/x.json", "v.tif")
    ('s3://b/img/v.tif', '/data/v.tif')
    >>> _join("/vsicurl/https://h/x.json?sig=a/b", "v.tif")
    '/vsicurl/https://h/v.tif'
    """
    if "://" in href or href.startswith("/"):
        return href
    if location.startswith("/vsicurl/") and "://" in location:
        return "/vsicurl/" + _join(location[len("/vsicurl/"):], href)
    scheme, sep, _ = location.partition("://")
    if sep and "/" not in scheme:  # joined as an http URL is (urljoin knows no s3://)
        parts = urllib.parse.urlsplit(location)
        base = parts._replace(scheme="http", fragment="").geturl()
        joined = urllib.parse.urlsplit(urllib.parse.urljoin(base, href))
        return joined._replace(scheme=parts.scheme).geturl()
    base = location.rsplit("/", 1)[0] if "/" in location else "."
    return f"{base}/{href}"


def _as_list(value: Any) -> list:
    """``value`` if it is a list, else an empty one (an item's ``eo:bands: null``)."""
    return value if isinstance(value, list) else []


# -- GDAL's virtual file system, through the libgdal rasterio loaded -----------------------

def _libgdal() -> ctypes.CDLL | None:
    """The GDAL library rasterio runs on (the same instance: its settings apply), or None."""
    import rasterio._base  # noqa: F401  (loads libgdal)

    # rasterio's own copy first: another package's GDAL (pyogrio's wheel brings one) may be
    # loaded in the same process, and its settings are not rasterio's
    here = Path(rasterio._base.__file__).parent
    candidates = glob.glob(str(here.parent / "rasterio.libs" / "libgdal*"))
    candidates += glob.glob(str(here / ".dylibs" / "libgdal*"))
    try:
        with open("/proc/self/maps") as maps:
            candidates += [line.split()[-1] for line in maps if "libgdal" in line
                           and not any(other in line for other in ("pyogrio", "fiona"))]
    except OSError:
        pass
    candidates += [ctypes.util.find_library("gdal") or ""]
    for name in candidates:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
            lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
            lib.VSIIngestFile.restype = ctypes.c_int
            lib.VSIIngestFile.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                          ctypes.POINTER(ctypes.c_void_p),
                                          ctypes.POINTER(ctypes.c_uint64), ctypes.c_int64]
            lib.VSICopyFile.restype = ctypes.c_int
            lib.VSICopyFile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                        ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_void_p]
            lib.VSIUnlink.argtypes = [ctypes.c_char_p]
            lib.VSIFOpenExL.restype = ctypes.c_void_p
            lib.VSIFOpenExL.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
            lib.VSIFCloseL.argtypes = [ctypes.c_void_p]
            lib.VSIGetLastErrorMsg.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


def headers(path: str) -> dict[str, str]:
    """The HTTP headers GDAL sees for a remote object (``Content-Length``, ``ETag``, ...).

    Empty where GDAL's library cannot be reached or the object does not answer.
    """
    lib = _libgdal()
    if lib is None:
        return {}
    found = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
    out: dict[str, str] = {}
    i = 0
    while found and found[i]:
        key, _, value = found[i].decode(errors="replace").partition("=")
        out[key.lower()] = value
        i += 1
    if found:
        lib.CSLDestroy(found)
    return out


def object_size(head: dict[str, str]) -> int | None:
    """The size of a remote object from its headers (those of a HEAD or a range GET).

    Examples
    --------
    >>> object_size({"content-length": "16384", "content-range": "bytes 0-16383/30396"})
    30396
    >>> object_size({"content-length": "512"})
    512
    """
    total = head.get("content-range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = head.get("content-length", "")
    return int(length) if length.isdigit() else None


def read_bytes(path: str, limit: int = 16 * 2**20) -> bytes:
    """The whole content of a (small) file GDAL reaches, such as a STAC item."""
    import rasterio

    lib = _libgdal()
    if lib is None:
        raise InputError(f"{redact(path)}: cannot read it (GDAL's library was not found)")
    data, size = ctypes.c_void_p(), ctypes.c_uint64()
    with rasterio.Env(**REMOTE_OPTIONS):
        lib.VSIErrorReset()
        # opened with its error kept (VSIGetLastErrorMsg: a timeout, an HTTP status), which
        # VSIIngestFile's own open drops
        handle = lib.VSIFOpenExL(path.encode(), b"rb", 1)
        ok = bool(handle) and lib.VSIIngestFile(handle, path.encode(), ctypes.byref(data),
                                                ctypes.byref(size), limit)
        if handle:
            lib.VSIFCloseL(handle)
        said = (lib.VSIGetLastErrorMsg() or b"").decode(errors="replace").strip()
    if not ok:
        if timed_out(said):
            raise no_answer(path, said)
        raise InputError(f"{redact(path)}: cannot read it; check the URL and the credentials")
    try:
        return ctypes.string_at(data, size.value)
    finally:
        lib.VSIFree(data)


def timed_out(message: str) -> bool:
    """Whether GDAL's error ``message`` says a request timed out (:data:`HTTP_TIMEOUTS`).

    Examples
    --------
    >>> timed_out("CURL error: Operation timed out after 2001 milliseconds")
    True
    >>> timed_out("CURL error: Operation too slow. Less than 1 bytes/sec transferred")
    True
    """
    text = message.lower()
    return "timed out" in text or "too slow" in text or "timeout" in text


def no_answer(source: str | os.PathLike, said: str) -> InputError:
    """The error of a read of ``source`` that GDAL gave up on, saying ``said``, where it
    :func:`timed_out`: the source and GDAL's words redacted (:func:`redact`).

    Examples
    --------
    >>> print(no_answer("/vsicurl/https://h/a.tif?sig=f00", "Operation timed out"))
    /vsicurl/https://h/a.tif?sig=REDACTED: cannot read it: no answer in time (Operation timed \
out); check the URL and the connection (a slow server: raise GDAL_HTTP_LOW_SPEED_TIME or \
GDAL_HTTP_CONNECTTIMEOUT, in seconds)
    """
    return InputError(f"{redact(source)}: cannot read it: no answer in time ({redact(said)}); "
                      "check the URL and the connection (a slow server: raise "
                      "GDAL_HTTP_LOW_SPEED_TIME or GDAL_HTTP_CONNECTTIMEOUT, in seconds)")


def archive_of(source: str) -> str | None:
    """The archive (a local path, a URL or a GDAL path) a ``/vsizip/``, ``/vsitar/``,
    ``/vsigzip/``, ``/vsi7z/`` or ``/vsirar/`` path reads from; None for any other source.

    Examples
    --------
    >>> archive_of("/vsizip//data/survey.zip/tiles/a.tif")
    '/data/survey.zip'
    >>> archive_of("/vsizip/{/data/odd name.zip}/a.tif")
    '/data/odd name.zip'
    >>> archive_of("/vsitar//vsicurl/https://h/b.tar.gz/a.tif")
    '/vsicurl/https://h/b.tar.gz'
    >>> archive_of("/vsigzip//data/a.tif.gz"), archive_of("/vsimem/a.tif")
    ('/data/a.tif.gz', None)
    """
    import re

    for prefix in ARCHIVE_VSI:
        if source.startswith(prefix):
            rest = source[len(prefix):]
            if rest.startswith("{"):  # GDAL's braces: a path holding an archive extension
                return rest[1:rest.index("}")] if "}" in rest else None
            if prefix == "/vsigzip/":  # one compressed file: the path is the archive
                return rest
            found = re.search(r"\.(zip|kmz|tar|tgz|tar\.gz|7z|rar)(?=/|$)", rest, re.IGNORECASE)
            return rest[:found.end()] if found else None
    return None


def wrapped_file(source: str) -> str | None:
    """The file a ``/vsisubfile/``, ``/vsicrypt/`` or ``/vsicached?`` path reads a part of
    (:data:`WRAPPER_VSI`); None for any other source.

    Examples
    --------
    >>> wrapped_file("/vsisubfile/1000_5000,/data/a.bin")
    '/data/a.bin'
    >>> wrapped_file("/vsicached?file=%2Fvsicurl%2Fhttps%3A%2F%2Fh%2Fa.tif&chunk_size=1MB")
    '/vsicurl/https://h/a.tif'
    >>> wrapped_file("/vsimem/a.tif") is None
    True
    """
    for prefix, before in WRAPPER_VSI.items():
        if source.startswith(prefix):
            rest = source[len(prefix):]
            if prefix.endswith("?"):  # a query string: file=..., URL-encoded
                found = urllib.parse.parse_qs(rest).get("file")
                return found[0] if found else None
            _, sep, name = rest.partition(before)  # file= is /vsicrypt/'s last option
            return name if sep and name else None
    return None


def identity(source: str) -> dict[str, Any]:
    """What identifies a GDAL source for resume, without reading it.

    Remote objects: the path, size and ETag (else Last-Modified) the server
    reports; an HTTP URL's path without its query, user name and password
    (:func:`_object_url`: a presigned URL signed again, after the first
    expired, resumes), the whole URL (redacted: :func:`redact`) only where the
    server reports neither ETag nor Last-Modified. VRT text: a hash of it (its
    remote members' URLs without their queries) and the identity of each file
    it names. A
    file in an archive (:func:`archive_of`): the archive's identity (a local
    archive's size, mtime and a hash of its ends), so that a resume never takes
    the tiles of the archive's earlier content; a part of a file
    (:func:`wrapped_file`), that file's identity likewise. Anything else whose
    content cannot be identified (``/vsimem/``, ``/vsistdin/``, a remote object
    whose server reports neither ETag nor Last-Modified, ...) gets a random token
    (``unidentified``): its key never matches another run's, so it is never
    resumed with tiles of unknown provenance.

    Examples
    --------
    >>> identity("<VRTDataset/>")["vrt_sha256"][:8]
    '4cf0080a'
    """
    import rasterio

    text = source.strip()
    if text.startswith("<VRTDataset"):
        from xml.sax.saxutils import escape

        from tiledepth.identity import input_identity, vrt_sources

        members, keyed = [], text
        for name in sorted(set(vrt_sources(text))):  # (XML-unescaped, as GDAL reads them)
            members.append(identity(name) if is_gdal_source(name) else input_identity(name))
            if is_remote(name) and _object_url(name) != name:  # (as the VRT spells it)
                keyed = keyed.replace(escape(name), escape(_object_url(name)))
        return {"vrt_sha256": hashlib.sha256(keyed.encode()).hexdigest(), "members": members}
    container = archive_of(text)
    if container is not None:  # a file inside an archive: the archive's identity
        return {"path": redact(source), "archive": _file_identity(container)}
    wrapped = wrapped_file(text)
    if wrapped is not None:  # a part of another file: that file's identity
        inner = _file_identity(wrapped)
        return {"path": redact(source), "file": inner} if inner is not None \
            else _unidentified(source)
    if not is_remote(source):  # /vsimem/, /vsistdin/, ...: nothing says what it holds
        return _unidentified(source)
    # the streaming file systems answer no HEADERS query: their seekable twin does
    streaming = next((vsi for vsi in NETWORK_VSI if vsi.endswith("_streaming/")
                      and text.startswith(vsi)), None)
    asked = text if streaming is None else streaming.replace("_streaming", "") + text[
        len(streaming):]
    with rasterio.Env(**REMOTE_OPTIONS):
        head = headers(asked)
    found = {"path": _object_url(source), "size": object_size(head),
             "etag": head.get("etag") or head.get("x-goog-hash"),
             "last_modified": head.get("last-modified")}
    if found["etag"] is None and found["last_modified"] is None:  # no answer, or no version
        return {**found, **_unidentified(source)}
    return found


def _object_url(source: str) -> str:
    """The remote object ``source`` (a GDAL path or URL) names, as one name whatever the
    request's credentials: an HTTP URL without its query (a presigned URL's signature and
    expiry, signed anew for each run), user name and password, and fragment; a
    ``/vsicurl?url=...`` path as ``/vsicurl/`` and its URL; any other as it is.

    Examples
    --------
    >>> _object_url("/vsicurl/https://u:p@h/a.tif?X-Amz-Signature=f00#x")
    '/vsicurl/https://h/a.tif'
    >>> _object_url("/vsicurl?url=https%3A%2F%2Fh%2Fa.tif%3Fsig%3Dx&use_head=no")
    '/vsicurl/https://h/a.tif'
    >>> _object_url("/vsis3/b/k.tif")
    '/vsis3/b/k.tif'
    """
    text = source.strip()
    if text.startswith("/vsicurl?"):
        url = _curl_url(text)
        return "/vsicurl/" + _object_url(url) if url is not None else redact(source)
    prefix = next((vsi for vsi in ("/vsicurl/", "/vsicurl_streaming/") if text.startswith(vsi)),
                  "")
    url = text[len(prefix):]
    if url.partition("://")[0].lower() not in ("http", "https"):
        return source
    parts = urllib.parse.urlsplit(url)
    return prefix + urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2],
                                             parts.path, "", ""))


def _file_identity(name: str) -> dict[str, Any] | None:
    """The identity of a file a GDAL path reads within (an archive, a wrapped file): a GDAL
    path's :func:`identity`, a local file's :func:`tiledepth.identity.input_identity`; None
    for a local name that is no file (GDAL's open says what is wrong)."""
    from tiledepth.identity import input_identity

    if is_gdal_source(name):
        return identity(name)
    if os.path.isfile(name):
        return input_identity(name)
    return None


def _unidentified(source: str) -> dict[str, Any]:
    """The identity of a source whose content cannot be identified: a random token, so that
    its key never equals another run's (a resume starts over rather than reuse tiles of
    content that may have changed)."""
    import secrets

    log.info("%s: its content cannot be identified, so an interrupted run of it is not "
             "resumed", redact(source))
    return {"path": redact(source), "unidentified": secrets.token_hex(8)}


# -- remote output -----------------------------------------------------------------------

def staging_path(output: str, folder: str | os.PathLike | None) -> Path:
    """Where a remote output is written locally before its upload: a stable path, for resume.

    Examples
    --------
    >>> staging_path("s3://b/out/x.tif", "/tmp").name
    'x.tif'
    """
    import tempfile

    key = hashlib.sha256(vsi_path(output).encode()).hexdigest()[:16]
    base = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    path = base / f"tiledepth-upload-{key}" / source_name(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def upload(local: str | os.PathLike, output: str, *, overwrite: bool = False) -> None:
    """Copy a finished, verified local file to object storage.

    GDAL streams it with one PUT (a multipart upload for large files, aborted
    on failure), so the key holds either the whole file or what it held before.

    Raises
    ------
    OutputError
        The key exists (without ``overwrite``), or the upload failed.
    """
    import rasterio

    target = vsi_path(output)
    lib = _libgdal()
    if lib is None:
        raise OutputError(f"{redact(output)}: cannot upload (GDAL's library was not found)")
    with rasterio.Env(**REMOTE_OPTIONS):
        if not overwrite and headers(target):
            raise OutputError(f"{redact(output)}: already exists; pass --overwrite or choose "
                              "another -o")
        size = Path(local).stat().st_size
        rc = lib.VSICopyFile(os.fspath(local).encode(), target.encode(), None, size, None,
                             None, None)
        if rc != 0:
            raise OutputError(f"{redact(output)}: the upload failed; check the bucket, the "
                              "credentials and the endpoint (AWS_S3_ENDPOINT, ...)")
        got = object_size(headers(target))
    if got is not None and got != size:
        raise OutputError(f"{redact(output)}: the upload is incomplete ({got} of {size} bytes)")
    log.info("uploaded %s (%d bytes)", redact(output), size)


def remote_companions(output: str, *, preview: bool = False) -> list[tuple[str, str]]:
    """(what, key) of each object a run uploads beside ``output``, named as
    :func:`upload_outputs` names them: the sidecar (every run's) and, with ``preview``,
    the preview and its georeferencing (``.aux.xml``).

    Examples
    --------
    >>> for what, key in remote_companions("s3://b/out/x.depth.tif", preview=True):
    ...     print(what, key)
    sidecar s3://b/out/x.depth.json
    preview s3://b/out/x.depth.png
    preview's .aux.xml s3://b/out/x.depth.png.aux.xml
    """
    from tiledepth.safe_write import preview_path, sidecar_path

    base, name = output.rsplit("/", 1)
    png = preview_path(name)
    named = [("sidecar", sidecar_path(name))] + (
        [("preview", png), ("preview's .aux.xml", png.with_name(png.name + ".aux.xml"))]
        if preview else [])
    return [(what, f"{base}/{path.name}") for what, path in named]


def check_remote_output(output: str, *, overwrite: bool, preview: bool = False) -> None:
    """Raise OutputError if an object the run uploads exists and ``overwrite`` is not set:
    ``output``, and beside it its sidecar and, with ``preview``, its preview
    (:func:`remote_companions`), each uploaded over what is there."""
    import rasterio

    if overwrite:
        return
    with rasterio.Env(**REMOTE_OPTIONS):
        if headers(vsi_path(output)):
            raise OutputError(f"{redact(output)}: already exists; pass --overwrite or choose "
                              "another -o")
        for what, key in remote_companions(output, preview=preview):
            if headers(vsi_path(key)):
                raise OutputError(f"{redact(key)}: already exists (it would be this run's "
                                  f"{what}); pass --overwrite or choose another -o")


def upload_outputs(output: str, local: Path, *extras: Path | None) -> tuple:
    """Verify the local output, upload it and its companions beside ``output``, remove them.

    Each file of ``extras`` (the sidecar report, the preview and the preview's
    ``.aux.xml`` where it has one) beside it under its own name, then the depth map
    last: an output seen there has its companions beside it.

    Returns
    -------
    tuple
        ``output`` and the remote name of each of ``extras`` (None stays None).
    """
    import rasterio

    try:  # verify: the file opens and its last block row decodes
        with rasterio.open(local) as ds:
            ds.read(1, window=((ds.height - 1, ds.height), (0, ds.width)))
    except rasterio.errors.RasterioError as exc:
        raise OutputError(f"{local}: the finished output does not read back ({exc}); "
                          f"nothing was uploaded to {redact(output)}") from exc
    # every key checked before the run (check_remote_output), the companions' too
    base = output.rsplit("/", 1)[0]
    remote_extras, uploaded = [], []
    for extra in extras:
        if extra is None:
            remote_extras.append(None)
            continue
        aux = extra.with_name(extra.name + ".aux.xml")  # a preview's georeferencing
        for path in (extra, aux) if aux.exists() else (extra,):
            upload(path, f"{base}/{path.name}", overwrite=True)
            uploaded.append(path)
        remote_extras.append(f"{base}/{extra.name}")
    upload(local, output, overwrite=True)
    for path in (local, *uploaded):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        local.parent.rmdir()  # the staging folder, unless a checkpoint is left in it
    return (output, *remote_extras)
