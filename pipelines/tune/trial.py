"""What runs inside one Ray Tune trial, and the driver-side callback that closes its MLflow run.

A trial trains one process (``search.resources`` CPUs/GPUs) on its sampled config, logs every
epoch to an MLflow run nested under the search's run (tag ``mlflow.parentRunId``), reports each
epoch to Tune (so ASHA can stop it early) with a checkpoint, and picks up from that checkpoint when
the search is resumed or the trial is retried. A trial is found again by its tag
``fsnn.trial_id``, so a resumed trial continues its own run instead of opening another.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import torch
from ray import tune

from fsnn.pipelines.tracking import client, create_run, log_epoch, set_tags
from fsnn.pipelines.train.recipe import build_training, epoch_metrics
from fsnn.platform.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from fsnn.platform.config import Config, config_doc, config_from_dict, trial_config
from fsnn.platform.trainer import evaluate, pick_device, train_epoch

TRIAL_TAG = "fsnn.trial_id"


def trial_runs(c: Any, parent_run_id: str, trial_id: str | None = None) -> list[Any]:
    """The MLflow runs nested under a search (or the one of ``trial_id``)."""
    exp_id = c.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'"
    return list(c.search_runs([exp_id], filter_string=query, max_results=10000))


def _open_run(uri: str, parent_run_id: str, trial_id: str, cfg: Config,
              params: dict[str, Any]) -> str:
    c = client(uri)
    found = trial_runs(c, parent_run_id, trial_id)
    if found:
        run_id: str = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return run_id
    return create_run(uri, run_name=f"{cfg.name}-{trial_id}", params=cfg.model_dump(mode="json"),
                      parent_run_id=parent_run_id, tags={
                          "fsnn.kind": "tune-trial", TRIAL_TAG: trial_id,
                          "fsnn.model": cfg.model,
                          "fsnn.sampled": json.dumps(params, sort_keys=True)})


def run_trial(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str,
              tracking_uri: str, threads: float, use_gpu: bool,
              exclusive_cpu: bool = False) -> None:
    """The Tune trainable: ``params`` are the sampled dotted paths, ``base`` the search's config.

    Measured energy per epoch as in `fsnn train`: the trial's GPU through NVML; the CPU package
    through RAPL only when trials run one at a time (``exclusive_cpu``), since concurrent
    trials share the package's counter."""
    cfg = trial_config(config_from_dict(base), params)
    trial_id = tune.get_context().get_trial_id()
    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(cfg.train.seed)
    device = pick_device(use_gpu)
    setup = build_training(cfg)
    model = setup.model.to(device)
    start, history = 0, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d)
        model.load_state_dict(state.model)
        setup.optimizer.load_state_dict(state.optimizer)
        setup.scheduler.load_state_dict(state.scheduler)
        start, history = state.epoch, state.history
    run_id = _open_run(tracking_uri, parent_run_id, trial_id, cfg, params)
    c = client(tracking_uri)
    for row in history:  # epochs checkpointed before an interruption but never logged
        log_epoch(c, run_id, {k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))
    from fsnn.pipelines.energy_meter import EnergyMeter

    meter = EnergyMeter(gpus=[device.index or 0] if device.type == "cuda" else [],
                        cpu=exclusive_cpu,
                        shared_reason="trials may run at once and share the CPU package's "
                                      "counter (set search.max_concurrent: 1 to measure it)")
    set_tags(c, run_id, {"fsnn.resumed_from_epoch": str(start),
                         **{f"fsnn.absent.{k}": v for k, v in meter.reasons.items()}})
    doc = config_doc(cfg)
    for epoch in range(start, cfg.train.epochs):
        setup.train_loader.set_epoch(epoch)
        meter.start()
        tr = train_epoch(model, setup.train_loader, setup.optimizer, setup.scheduler, device)
        energy = meter.stop()
        te = evaluate(model, setup.test_loader, device)
        metrics = epoch_metrics(tr, te, setup.optimizer.param_groups[0]["lr"], energy=energy)
        history.append({"epoch": float(epoch), **metrics})
        log_epoch(c, run_id, metrics, epoch)  # before the report: ASHA may stop us there
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(TrainingState(epoch + 1, model.state_dict(),
                                          setup.optimizer.state_dict(),
                                          setup.scheduler.state_dict(), run_id, doc, history), d)
            tune.report({**metrics, "epoch": epoch + 1},
                        checkpoint=tune.Checkpoint.from_directory(d))


class TrialLines(tune.Callback):
    """fsnn's progress during a search, one line per trial epoch and per ended trial (Ray
    Tune's own status tables only with -v)."""

    def __init__(self, metric: str, epochs: int, expected: int) -> None:
        self.metric, self.epochs, self.expected = metric, epochs, expected
        self.ended = 0

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        value = result.get(self.metric)
        shown = f"{float(value):.4f}" if isinstance(value, int | float) else "-"
        print(f"[fsnn] trial {trial.trial_id} epoch {int(result.get('epoch', 0))}/"
              f"{self.epochs}: {self.metric} {shown}", flush=True)

    def _ended(self, trial: Any, how: str) -> None:
        self.ended += 1
        print(f"[fsnn] trial {trial.trial_id} {how} ({self.ended} of {self.expected} ended)",
              flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._ended(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trial, "failed")


class TrialRuns(tune.Callback):
    """Closes each trial's nested MLflow run when Tune ends the trial (also when ASHA stops it
    early, which the trial function itself never sees)."""

    def __init__(self, tracking_uri: str, parent_run_id: str, epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.epochs = epochs

    def _close(self, trial: Any, status: str) -> None:
        c = client(self.tracking_uri)
        for run in trial_runs(c, self.parent_run_id, trial.trial_id):
            done = int((trial.last_result or {}).get("epoch", 0))
            set_tags(c, run.info.run_id, {"fsnn.epochs_run": str(done),
                                          "fsnn.early_stopped": str(status == "FINISHED"
                                                                    and done < self.epochs)})
            c.set_terminated(run.info.run_id, status)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")
