"""moto's S3 in server mode, as a subprocess on a loopback port: the real S3 REST protocol over HTTP.

``MotoS3`` starts it, makes the bucket, and can be stopped and started again on
the same port (an outage and a recovery). moto keeps its state in memory, so a
restarted server has no objects: ``start()`` recreates the bucket, as a provider
coming back would still have it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.lifecycle import free_port

BUCKET = "lift3d-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class MotoS3:
    log_dir: Path
    bucket: str = BUCKET
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a lift3d process needs to find this store through the AWS SDK's own chain."""
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            # Nothing from the developer's own ~/.aws may leak into the tests.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_MAX_ATTEMPTS": "2",
        }

    def start(self, timeout: float = 30.0) -> "MotoS3":
        log = (self.log_dir / f"moto-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"moto server exited with {self.process.returncode}")
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            self.stop()
            raise AssertionError("moto server did not start")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("s3", endpoint_url=self.endpoint, config=Config(retries={"max_attempts": 1}, signature_version="s3v4"))

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, key -> bytes, as the provider holds them."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                try:
                    found[item["Key"]] = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                except client.exceptions.NoSuchKey:
                    continue  # deleted between the listing and the read: a sweep in flight
        return found


def moto_fixture(tmp_path_factory: Any) -> Any:
    """Body of a ``moto_s3`` fixture: one moto server for the module, stopped afterwards."""
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()
