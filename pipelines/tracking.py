"""MLflow helpers: reachability checks, run creation, idempotent epoch logging."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
EXPERIMENT = "fsnn"


class TrackingError(RuntimeError):
    """MLflow is unreachable or a run lacks what was asked of it."""


def resolve_tracking_uri(uri: str | None) -> str:
    """The URI to use: the argument, $MLFLOW_TRACKING_URI, or a SQLite file in the cwd.

    A relative SQLite path is made absolute so Ray workers (other working directories) write to
    the same database.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds if an MLflow server URI does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # reachable; authentication is MLflow's business (MLFLOW_TRACKING_USERNAME)
        raise TrackingError(f"MLflow server {uri} answered {exc.code} on /health") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it "
            f"(`mlflow server --host 127.0.0.1 --port 5000`) or omit --tracking-uri to use "
            f"the local store") from None


def flatten_params(doc: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = str(v)
    return out


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def create_run(uri: str, *, run_name: str, params: dict[str, Any], tags: dict[str, str],
               experiment: str = EXPERIMENT, parent_run_id: str | None = None) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else c.create_experiment(experiment)
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    flat = flatten_params(params)
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def logged_steps(c: Any, run_id: str, key: str) -> set[int]:
    return {m.step for m in c.get_metric_history(run_id, key)}


def log_epoch(c: Any, run_id: str, metrics: dict[str, float], step: int) -> bool:
    """Log one epoch's metrics once: a step already present (a re-run epoch after a worker
    failure) is not logged again. Returns whether anything was logged."""
    from mlflow.entities import Metric

    if not metrics:
        return False
    probe = next(iter(metrics))
    if step in logged_steps(c, run_id, probe):
        return False
    import time

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
    return True


def set_tags(c: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
