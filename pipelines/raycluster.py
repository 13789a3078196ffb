"""Starting or joining Ray, with clear errors before any training starts."""

from __future__ import annotations

import os
import socket
from typing import Any

from fsnn.platform.errors import FsnnError


class RayConnectError(FsnnError, RuntimeError):
    """Ray cannot be started or reached, or lacks the resources asked for."""


ANSWER_TIMEOUT_S = 10.0
# HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the
# Ray Client server) answers with a SETTINGS frame of its own
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4


def _probe(host: str, port: int, timeout: float, answer_timeout: float = ANSWER_TIMEOUT_S
           ) -> None:
    """Fail unless ``host:port`` accepts a connection within ``timeout`` seconds and answers as
    a gRPC server (which Ray's GCS and Ray Client are) within ``answer_timeout`` seconds: an SSH
    tunnel to something else, the dashboard's HTTP port or a silent service would otherwise
    make ``ray.init`` wait without end."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RayConnectError(f"Ray cluster at {host}:{port} is unreachable ({exc}); check the "
                              f"address (the head's `ray start --head --port` value) or omit "
                              f"--address to start a local Ray") from None
    with sock:
        sock.settimeout(answer_timeout)
        try:
            sock.sendall(_H2_PREFACE)
            head = _read(sock, 9)
        except TimeoutError:
            raise RayConnectError(
                f"{host}:{port} accepted a connection but did not answer as Ray within "
                f"{answer_timeout:g} s (nothing came back); give the Ray head's GCS port "
                f"(`ray start --head --port`, default 6379) or a ray:// Ray Client address"
                ) from None
        except OSError as exc:
            head = b""
            if not isinstance(exc, ConnectionResetError):
                raise RayConnectError(f"{host}:{port}: the connection failed while asking "
                                      f"for Ray ({exc})") from None
    if len(head) == 9 and head[3] == _SETTINGS:
        return
    raise RayConnectError(f"{host}:{port} answered, but not as Ray ({_describe(head)}); give "
                          f"the Ray head's GCS port (`ray start --head --port`, default 6379) "
                          f"or a ray:// Ray Client address (port 10001), not the dashboard's "
                          f"(8265)")


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _describe(head: bytes) -> str:
    if not head:
        return "it closed the connection"
    if head.startswith(b"HTTP/"):
        return "an HTTP/1 server answered"
    if head.startswith(b"SSH-"):
        return "an SSH server answered"
    text = head.decode("ascii", "replace")
    shown = text if text.isprintable() else head.hex()
    return f"it answered {shown!r}"


def connect(address: str | None, *, num_cpus: int | None = None, timeout: float = 5.0,
            runtime_env: dict[str, Any] | None = None) -> None:
    """Start a local Ray (``address`` None) or join a cluster (``auto``, ``host:port``,
    ``ray://host:port``), probing the address first so a wrong one fails in seconds."""
    import ray

    if ray.is_initialized():
        return
    from fsnn.pipelines.console import ray_init_options

    kwargs: dict[str, Any] = {"include_dashboard": False, "runtime_env": runtime_env,
                              **ray_init_options()}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        # no dashboard, hence no state API: keep Ray Train's placement-group cleaner from
        # warning about it every second in every local run
        kwargs["runtime_env"] = {"worker_process_setup_hook":
                                 "fsnn.pipelines.raycluster.quiet_worker_logs",
                                 **(runtime_env or {})}
        try:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
        except Exception as exc:
            raise RayConnectError(f"could not start a local Ray: {exc}") from None
        return
    if address != "auto":
        hostport = address.removeprefix("ray://")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise RayConnectError(f"--address {address!r}: expected auto, HOST:PORT or "
                                  f"ray://HOST:PORT")
        _probe(host, int(port), timeout)
    try:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayConnectError(f"could not join the Ray cluster at {address!r}: {exc}") from None


def quiet_worker_logs() -> None:
    """Ray worker setup hook (local Ray without a dashboard): silence the warnings of loggers
    that poll the state API, which only the dashboard serves."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner"
                      ).setLevel(logging.ERROR)


def check_resources(num_workers: int, cpus_per_worker: float, use_gpu: bool, *,
                    total: float | None = None, what: str = "") -> None:
    """Fail unless the cluster has the CPUs (``total``, default workers x CPUs) and GPUs."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if total is not None and total > cpus and total > num_workers * cpus_per_worker:
        raise RayConnectError(f"this run needs {total:g} CPUs; the Ray cluster has {cpus:g}"
                              f"{what}")
    if num_workers * cpus_per_worker > cpus:
        raise RayConnectError(f"{num_workers} workers x {cpus_per_worker:g} CPU need "
                              f"{num_workers * cpus_per_worker:g} CPUs; the Ray cluster has "
                              f"{cpus:g}. Use --num-workers {max(1, int(cpus // cpus_per_worker))}"
                              f" or add nodes")
    if use_gpu and num_workers > gpus:
        raise RayConnectError(f"{num_workers} GPU workers need {num_workers} GPUs; the Ray "
                              f"cluster has {gpus:g}. Drop --gpu or use fewer workers")
