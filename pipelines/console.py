"""What fsnn's commands print: fsnn's own progress and results. Ray's and MLflow's internal
chatter (Ray's start-up lines, its controller's and workers' logs, MLflow's migrations and
"View run" links) is off unless ``-v/--verbose`` (or FSNN_VERBOSE=1) asks for it."""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "FSNN_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbosity(on: bool) -> None:
    """Called once by the CLI, before MLflow or Ray is imported: the environment carries the
    choice to the processes they start (Ray workers inherit the driver's environment)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.pop(VERBOSE_ENV, None)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a local Ray generates its token itself: the notice is for the operators of clusters
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)


def ray_init_options() -> dict[str, object]:
    """``ray.init`` keywords: worker output and Ray's INFO lines only when verbose."""
    if verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.WARNING}


__all__ = ["VERBOSE_ENV", "ray_init_options", "set_verbosity", "verbose"]
