"""A real S3 API on loopback for tests: moto's threaded server, stoppable and restartable on the same port
(moto keeps its buckets in this process, so a restart loses nothing, like an S3 endpoint that was
unreachable for a while)."""

from __future__ import annotations

import contextlib
import os
import threading
import time

BUCKET = "interloom-test"


class S3Server:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{self.host}:{self.port}"
        self.up = True

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )

    def stop(self) -> None:
        self.server.stop()
        self.up = False

    def start(self) -> None:
        for _ in range(50):  # the port may linger for a moment after stop
            try:
                self.server = self._cls(ip_address=self.host, port=self.port, verbose=False)
                self.server.start()
                self.up = True
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"could not restart moto on port {self.port}")

    def outage(self, seconds: float) -> threading.Thread:
        """Stop the endpoint now and bring it back after `seconds` (in a thread)."""
        self.stop()
        t = threading.Thread(target=lambda: (time.sleep(seconds), self.start()), daemon=True)
        t.start()
        return t


@contextlib.contextmanager
def environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
