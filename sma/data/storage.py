"""Object storage through fsspec: one place that knows about S3 endpoints and webdataset's URL openers.

Endpoint resolution for ``s3://`` (first wins): an explicit ``endpoint_url`` argument (``--endpoint-url``
or ``data.endpoint_url``), ``S3_ENDPOINT_URL`` (what mosaicml-streaming reads), ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``. Credentials come from the usual AWS variables and files.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import fsspec

_ENDPOINT_VARS = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint(explicit: str = "") -> str:
    """The S3 endpoint URL to use ("" for AWS itself)."""
    if explicit:
        return explicit
    return next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), "")


def use_endpoint(explicit: str = "") -> None:
    """Export the endpoint so libraries that read only the environment (streaming) use it too."""
    endpoint = s3_endpoint(explicit)
    if endpoint:
        os.environ["S3_ENDPOINT_URL"] = endpoint


def storage_options(url: str, endpoint_url: str = "") -> dict[str, Any]:
    if url.startswith("s3://"):
        endpoint = s3_endpoint(endpoint_url)
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def filesystem(url: str, endpoint_url: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for any fsspec URL or local path."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, endpoint_url))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URL path components with ``/`` (``os.path.join`` would break ``s3://`` URLs on Windows)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def open_url(url: str, mode: str = "rb", endpoint_url: str = "", compression: str | None = None) -> IO:
    """Open a file at any fsspec URL; ``compression="infer"`` decompresses ``.gz``/``.bz2``/... ."""
    return fsspec.open(url, mode, compression=compression, **storage_options(url, endpoint_url)).open()


def read_json(url: str, endpoint_url: str = "", missing_ok: bool = False) -> Any:
    """A JSON document at any URL (None if absent and ``missing_ok``)."""
    fs, path = filesystem(url, endpoint_url)
    if not fs.exists(path):
        if missing_ok:
            return None
        raise FileNotFoundError(f"{url} does not exist")
    with fs.open(path, "rb") as f:
        return json.load(f)


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url.removeprefix("file://")


def expand_sources(patterns: list[str], endpoint_url: str = "") -> list[str]:
    """Expand files, globs and URLs (with globs) to a sorted list of URLs; a pattern matching nothing
    raises ``FileNotFoundError`` naming it."""
    out: list[str] = []
    for pattern in patterns:
        fs, path = filesystem(pattern, endpoint_url)
        matches = sorted(fs.glob(path)) if fsspec.core.has_magic(path) else ([path] if fs.exists(path) else [])
        if not matches:
            raise FileNotFoundError(f"--src {pattern!r} matches no file")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        out.extend(m if protocol in ("file", "local") else f"{protocol}://{m}" for m in matches)
    return out


def register_webdataset_s3(endpoint_url: str = "") -> None:
    """Let webdataset open ``s3://`` (and any other fsspec) URLs; 1.0.2 has no handler for them."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module; ``webdataset.gopen`` is also a function

    def fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO:
        return open_url(url, mode, endpoint_url)

    for scheme in ("s3", "gs", "gcs", "az", "abfs", "memory"):
        gopen.gopen_schemes.setdefault(scheme, fsspec_gopen)
