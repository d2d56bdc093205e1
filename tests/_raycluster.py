"""A real multi-node Ray cluster on one machine for tests: a head and worker nodes started with `ray start`
as separate processes (each worker node on its own loopback address, 127.0.0.2, 127.0.0.3, ...), token
authentication with a fresh token, and a private temp dir.

Every process of the cluster carries INTERLOOM_TEST_CLUSTER=<id> (and INTERLOOM_TEST_NODE=<node>) in its
environment, inherited by the raylet, its workers and agents. Killing a node or the whole cluster sends
SIGKILL to exactly the processes whose environment carries those values: other Ray instances on the machine
(other test sessions) are never touched, and no global `ray stop` is run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


class LocalCluster:
    def __init__(self, env: dict[str, str] | None = None, object_store_bytes: int = 150_000_000):
        self.id = secrets.token_hex(6)
        self.temp_dir = tempfile.mkdtemp(prefix="ilc-", dir="/tmp")  # short: unix socket paths are limited
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.object_store_bytes = object_store_bytes
        self.env = {
            **os.environ,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_USAGE_STATS_ENABLED": "0",
            "INTERLOOM_TEST_CLUSTER": self.id,
        }
        self.env.pop("RAY_ADDRESS", None)
        self.workers: list[str] = []

    def client_env(self) -> dict[str, str]:
        """Environment for a driver (e.g. `interloom build --address ...`) of this cluster."""
        env = {k: v for k, v in self.env.items() if k != "INTERLOOM_TEST_CLUSTER"}
        return {**env, "INTERLOOM_TEST_DRIVER": self.id}

    def _start(self, node: str, args: list[str]) -> None:
        env = {**self.env, "INTERLOOM_TEST_NODE": f"{self.id}-{node}"}
        r = subprocess.run(
            [RAY, "start", *args, f"--object-store-memory={self.object_store_bytes}", "--disable-usage-stats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if r.returncode != 0:
            raise RuntimeError(f"ray start ({node}) failed:\n{r.stdout}\n{r.stderr}")

    def start_head(self, num_cpus: int = 1) -> None:
        self._start(
            "head",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                '--resources={"head": 1}',
                "--include-dashboard=false",
                f"--temp-dir={self.temp_dir}",
            ],
        )

    def add_worker(self, num_cpus: int = 1) -> str:
        node = f"w{len(self.workers) + 1}"
        ip = f"127.0.0.{len(self.workers) + 2}"
        self._start(
            node,
            [
                f"--address={self.address}",
                f"--node-ip-address={ip}",
                f"--num-cpus={num_cpus}",
                f'--resources={{"{node}": 1}}',
            ],
        )
        self.workers.append(node)
        return node

    def pids(self, node: str | None = None) -> list[int]:
        """Processes of the whole cluster, or of one node (by their inherited environment)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            env = _environ_of(int(entry))
            if env.get("INTERLOOM_TEST_CLUSTER") != self.id:
                continue
            if node is None or env.get("INTERLOOM_TEST_NODE") == f"{self.id}-{node}":
                out.append(int(entry))
        return out

    def kill_node(self, node: str) -> int:
        """SIGKILL every process of a node (raylet, workers, agents), as a lost machine. Returns how many."""
        pids = self.pids(node)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def wait_nodes(self, n_alive: int, timeout: float = 120) -> None:
        import json

        code = (
            f"import ray,json; ray.init(address={self.address!r}, log_to_driver=False); "
            "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))"
        )
        t0 = time.time()
        while time.time() - t0 < timeout:
            r = subprocess.run(
                [sys.executable, "-c", code], env=self.client_env(), capture_output=True, text=True, timeout=120
            )
            if r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1]) == n_alive:
                return
            time.sleep(2)
        raise TimeoutError(f"cluster did not reach {n_alive} alive nodes")

    def shutdown(self) -> None:
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
