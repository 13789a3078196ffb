"""Real services for integration tests: an MLflow tracking server and Ray nodes on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
# loopback-only test clusters: no token authentication (a real cluster shares RAY_AUTH_TOKEN)
RAY_TEST_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(url: str, proc: subprocess.Popen, log: Path, timeout: float,
                   what: str) -> None:
    """Wait until ``url`` answers 200 (the server ``proc`` started); fail with its log if it
    exits or does not answer within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{what} did not start: " + log.read_text()[-3000:])
        time.sleep(0.5)


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_answering(uri + "/health", proc, root / "server.log", 90, "mlflow server")
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def ray_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True,
                          env={**os.environ, **RAY_TEST_ENV, **(env or {})},
                          timeout=120)


@contextmanager
def two_ray_nodes(tmp: Path) -> Iterator[str]:
    """A Ray head and a second Ray node on this machine, one CPU each."""
    port = free_port()
    # Ray's socket paths must stay under 107 bytes: a short directory, not pytest's tmp_path
    temp = Path(tempfile.mkdtemp(prefix="fsnnray", dir="/tmp"))
    address = f"127.0.0.1:{port}"
    try:
        head = ray_cmd("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                       "--num-cpus", "1", "--include-dashboard", "false",
                       "--temp-dir", str(temp), "--disable-usage-stats")
        assert head.returncode == 0, head.stderr
        worker = ray_cmd("start", "--address", address, "--node-ip-address", "127.0.0.1",
                         "--num-cpus", "1")
        assert worker.returncode == 0, worker.stderr
        yield address
    finally:
        ray_cmd("stop", "--force")
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A local Ray in this process for the tests (no dashboard, no worker output), the test
    environment set while it runs."""
    import ray

    saved = {k: os.environ.get(k) for k in RAY_TEST_ENV}
    os.environ.update(RAY_TEST_ENV)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
