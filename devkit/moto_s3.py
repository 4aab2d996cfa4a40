"""moto's S3 emulator in server mode, for the tests and the object-storage benchmarks.

`moto_server` (moto[server], requirements-dev.txt) speaks the real S3 HTTP protocol on
a loopback port; the workers reach it through AWS_ENDPOINT_URL as they would reach
MinIO or AWS. Runs in the test (or benchmark) process, which starts and stops it.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import boto3

from devkit.harness import VENV_BIN, eventually, free_port, stop_group

AWS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}


class MotoS3:
    """moto's S3 emulator in server mode on a free port.

    `enforce_auth`: every request is checked against the emulator's IAM, so the
    workers' made-up keys are refused with 403.
    """

    def __init__(self, log_path: Path, port: int | None = None,
                 enforce_auth: bool = False) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.enforce_auth = enforce_auth
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MotoS3:
        env = {**os.environ, **AWS}
        if self.enforce_auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        eventually(self._listening, timeout, lambda: f"moto_server up:\n{self.log()}")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, **AWS}

    def stop(self) -> None:
        stop_group(self.proc, grace=5)
