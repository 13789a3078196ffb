"""MLflow helpers: reachability checks, run creation, idempotent epoch logging."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fsnn.pipelines.run_status import one_line
from fsnn.platform.errors import FsnnError

DEFAULT_DB = "mlflow.db"
EXPERIMENT = "fsnn"


class TrackingError(FsnnError, RuntimeError):
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


DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SCHEMES = ("http", "https", "file", "databricks", "databricks-uc", "uc", *DB_SCHEMES)
_USE = ("use sqlite:///PATH/mlflow.db (a local store), http(s)://HOST:PORT (an MLflow server) "
        "or a database URI (postgresql://, mysql://, mssql://)")


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail with one line, before any work, unless ``uri`` names a usable MLflow store: a known
    scheme, its database driver importable, a server that answers its health check within
    ``timeout`` seconds, a local store whose folder is writable, and a store that answers."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    base = scheme.split("+", 1)[0]
    if base not in SCHEMES:
        raise TrackingError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; {_USE}")
    if base in ("http", "https"):
        _check_server(uri, timeout)
    elif base == "file":
        _check_file_store(uri)
    elif base in DB_SCHEMES:
        _check_database(uri)
    _check_store(uri)


def _check_server(uri: str, timeout: float) -> None:
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


def _check_file_store(uri: str) -> None:
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("1", "true"):
        raise TrackingError(f"tracking URI {uri}: MLflow 3 refuses its file store unless "
                            f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH/mlflow.db "
                            f"instead (or set that variable)")
    from urllib.parse import unquote, urlparse

    _check_writable_dir(Path(unquote(urlparse(uri).path)), uri, create=True)


_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary",
                    "MySQLdb": "mysqlclient", "pymysql": "pymysql", "pyodbc": "pyodbc"}


def _check_database(uri: str) -> None:
    try:
        from sqlalchemy.engine import make_url

        url = make_url(uri)
        dialect = url.get_dialect()
    except Exception as exc:
        raise TrackingError(f"tracking URI {uri!r}: not a database URI SQLAlchemy reads "
                            f"({exc}); {_USE}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (getattr(exc, "name", None) or "").split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module or "the driver")
        raise TrackingError(f"tracking URI {uri}: its database driver {module!r} is not "
                            f"installed; `pip install '{package}'` (or name an installed "
                            f"driver in the scheme, e.g. postgresql+psycopg2://)") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database)
        _check_writable_dir(db.parent, uri, create=False)
        if db.exists():
            try:
                with open(db, "ab"):
                    pass
            except OSError as exc:
                raise TrackingError(f"tracking URI {uri}: the database file is not writable "
                                    f"({exc.strerror}); use a writable copy or another "
                                    f"sqlite:///PATH") from None


def _check_writable_dir(folder: Path, uri: str, *, create: bool) -> None:
    """``create``: the store makes the folder itself (a file store); else it must exist."""
    from fsnn.pipelines.storage import unwritable

    why = unwritable(folder) if create or folder.is_dir() else "no such folder"
    if why:
        raise TrackingError(f"tracking URI {uri}: the folder {folder} is not writable ({why}); "
                            f"create it or point the URI at a writable place")


def _check_store(uri: str) -> None:
    """One real request to the store (a database's schema is created here if new, quietly)."""
    import logging

    import mlflow.tracking  # noqa: F401  (configures its loggers on import: set levels after)

    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        client(uri).search_experiments(max_results=1)
    except Exception as exc:
        text = one_line(exc)
        hint = ("; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                if any(k in text for k in ("401", "403", "Unauthorized", "PERMISSION_DENIED"))
                else "")
        raise TrackingError(f"tracking store {uri} did not answer a query ({text}){hint}"
                            ) from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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
