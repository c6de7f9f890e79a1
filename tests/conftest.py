"""Shared pytest fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sma.train.env import free_port


@dataclass(frozen=True)
class S3:
    """A real S3 endpoint (moto's server on loopback) and a fresh bucket on it."""

    endpoint: str
    bucket: str

    def url(self, *path: str) -> str:
        return "/".join([f"s3://{self.bucket}", *path])


def start_moto_server() -> tuple[subprocess.Popen, str]:
    """Start ``python -m moto.server`` on a free loopback port; return the process and its endpoint URL.
    It is a process of its own, so every process of a test (or benchmark) reaches it over HTTP."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on port {port}") from None
            time.sleep(0.1)


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables users export for a bucket: ``AWS_*`` for s3fs/boto, ``S3_ENDPOINT_URL`` for streaming."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 endpoint (moto) on 127.0.0.1, started once per test run, with its variables exported."""
    proc, endpoint = start_moto_server()
    env = s3_env(endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_server: str) -> S3:
    """A new, empty bucket on the session's S3 server."""
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return S3(s3_server, bucket)


@pytest.fixture(scope="session")
def streaming_shm_cleanup() -> Iterator[None]:
    """Remove the shared memory streaming's datasets leave in /dev/shm once the tests using them end.
    Only segments no live process maps: another test session or job on the machine keeps its own."""
    yield
    import gc

    from sma.data.shm import release_stale_shared_memory

    gc.collect()  # drop the datasets first, so nothing still uses the segments
    release_stale_shared_memory(None)
