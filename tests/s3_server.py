"""A real S3-compatible server for the tests: moto's standalone server (``moto[server]``) as its own process on
127.0.0.1, spoken to over HTTP by boto3, streaming and Composer exactly as they would speak to S3."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bertforge-test", "AWS_SECRET_ACCESS_KEY": "bertforge-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def require_moto() -> None:
    if importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None:
        return
    reason = "moto's S3 server is not installed; `pip install -e '.[test]'` (moto[server]) provides it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the object-store tests: {reason}")
    pytest.skip(reason)


class S3Server:
    """One moto server; ``env`` points boto3 (and every subprocess given it) at it."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "S3_ENDPOINT_URL": self.url}

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                             str(self.port)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log.read_text()}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moto server did not answer on {self.url} in {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                     if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket=name)
