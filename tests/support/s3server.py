"""A real S3 endpoint for the tests: moto's server as a subprocess on a free port, spoken to over HTTP
by boto3 exactly as AWS would be (no patching of the client)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# what could make a client reach real AWS, or read this machine's own credentials
REAL_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_aws_env(home: Path) -> dict[str, str]:
    """Fake credentials, and no config file or metadata service of this machine's: with these set and
    REAL_AWS_VARS unset, whatever a test does, it cannot sign a request as a real AWS identity."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **FAKE_CREDENTIALS,
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def s3_env(endpoint: str) -> dict[str, str]:
    """What a subprocess (the service) needs in its environment to use the test endpoint."""
    return {**FAKE_CREDENTIALS, "S3_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


class MotoServer:
    """`python -m moto.server` on 127.0.0.1; `endpoint` once `start()` returned."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = 0
        self.endpoint = ""
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "moto.log"

    def start(self, deadline_seconds: float = 60) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **FAKE_CREDENTIALS, **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        self._wait(time.monotonic() + deadline_seconds)
        return self

    def _wait(self, deadline: float) -> None:
        """Polled until a real request is answered: a listening socket alone may not serve yet."""
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                # moto's own endpoint that answers without signing: the server routes requests
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.05)  # a poll interval under a deadline, not a wait for readiness
        self.stop()
        raise RuntimeError(f"moto server did not answer at {self.endpoint} in time ({last}): {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


_buckets = itertools.count()


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket with a valid, unique name (lowercase, 3-63 characters)."""
    import boto3

    name = f"test-{os.getpid()}-{next(_buckets)}-{os.urandom(3).hex()}"
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    return name
