"""fsnn's Ray Train V2 trainer: deterministic failures end the run at once, Ctrl-C aborts it.

Ray Train retries every worker-group failure up to ``FailureConfig.max_failures`` times, which is
right for a lost node and wrong for a corrupt data file or a loss gone NaN: those fail again on
every retry. A worker that meets such a failure raises :class:`FatalTrainingError`; the failure
policy here ends the run on it, without a retry. Ctrl-C aborts the controller (its workers and
their placement group) and raises :class:`KeyboardInterrupt` in the driver, so the caller can
close its MLflow run as KILLED (Ray's own handler calls ``sys.exit``).

Both hooks override private methods of Ray 2.60's ``DataParallelTrainer`` (Ray is pinned to that
version in pyproject.toml); tests/test_failures.py exercises both with a real Ray.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import ray
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import (
    DefaultFailurePolicy,
    FailurePolicy,
)
from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

ABORT_TIMEOUT_S = 30.0


class FatalTrainingError(RuntimeError):
    """A failure that a retry would meet again (data, config, checkpoint, divergence); raised
    by a training worker, it ends the run without Ray Train's retries."""


def fatal_error(exc: BaseException) -> FatalTrainingError | None:
    """The first worker's :class:`FatalTrainingError` inside a Ray Train failure, if any."""
    if isinstance(exc, WorkerGroupError):
        for err in exc.worker_failures.values():
            if isinstance(err, FatalTrainingError):
                return err
    return None


def describe_failure(exc: BaseException) -> str:
    """One line for a Ray Train failure: the first worker's error, else the failure's own."""
    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        rank, err = sorted(exc.worker_failures.items(), key=lambda kv: kv[0])[0]
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        return f"rank {rank}: {type(err).__name__}" + (f": {lines[-1].strip()}" if lines else "")
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


class FatalAwarePolicy(DefaultFailurePolicy):
    """Ray's default policy, except that a worker's :class:`FatalTrainingError` is raised at
    once (the driver prints the reason). A retry is announced on ``channel`` (the driver's
    progress, pipelines/progress.py) in one line."""

    def __init__(self, failure_config: Any, channel: Any = None) -> None:
        super().__init__(failure_config)
        self.channel = channel
        self.retries = 0

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        if fatal_error(training_failed_error) is not None:
            return FailureDecision.RAISE
        decision = super().make_decision(training_failed_error)
        if decision == FailureDecision.RETRY and self.channel is not None:
            self.retries += 1
            limit = self.failure_config.max_failures
            from fsnn.pipelines.progress import pusher

            pusher(self.channel)({"kind": "note", "text": (
                f"[fsnn] training failed ({describe_failure(training_failed_error)}); "
                f"restarting the workers from the last checkpoint (restart {self.retries}"
                + (f" of {limit})" if limit >= 0 else ")"))})
        return decision


class FsnnTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` with :class:`FatalAwarePolicy` and a Ctrl-C that raises
    :class:`KeyboardInterrupt` in the driver after aborting the run's workers."""

    def __init__(self, *args: Any, progress_channel: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress_channel = progress_channel

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        policy = controller_init_kwargs.get("failure_policy")
        if isinstance(policy, FailurePolicy):
            controller_init_kwargs["failure_policy"] = FatalAwarePolicy(
                policy.failure_config, self.progress_channel)
        return super()._initialize_and_run_controller(**controller_init_kwargs)

    def _register_sigint_handler(self, controller: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigint(signum: int, frame: Any) -> None:
            # a second Ctrl-C while the workers are being stopped interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
            except Exception as exc:  # the controller exits inside abort: that is success
                logging.getLogger(__name__).debug("controller abort: %r", exc)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)


__all__ = ["FatalAwarePolicy", "FatalTrainingError", "FsnnTorchTrainer", "describe_failure",
           "fatal_error"]
