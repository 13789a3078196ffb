"""`fsnn pipeline`: train (Ray Train) -> export the spec -> deploy to every configured backend
-> a comparison table, in the terminal and as an MLflow artifact.

Runs are linked: a ``pipeline`` run is the parent of the training run, which is the parent of
each deploy run. A finished training run with the same configuration (hash of the resolved
config, the ``deploy`` section excluded) and a finished deploy of it with the same backend and
sample count are reused unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnn.pipelines.run_status import closing_run
from fsnn.pipelines.tracking import (
    check_tracking_uri,
    client,
    create_run,
    resolve_tracking_uri,
    set_tags,
)
from fsnn.platform.config import Config

COLUMNS: list[tuple[str, str, str]] = [
    # (header, metric, format)
    ("accuracy", "accuracy", ".4f"),
    ("agree pred", "agreement_predictions", ".4f"),
    ("agree spikes", "agreement_counts", ".4f"),
    ("spikes/sample", "spikes_per_sample", ".0f"),
    ("syn events/sample", "synaptic_events_per_sample", ".3g"),
    ("E est 45nm J", "energy_est/cmos45nm_j", ".3g"),
    ("E est Loihi J", "energy_est/loihi_j", ".3g"),
    ("E est SpiNNaker J", "energy_est/spinnaker_j", ".3g"),
    ("E meas CPU J/inf", "energy/cpu_j_per_inference", ".3g"),
    ("E meas GPU J/inf", "energy/gpu_j_per_inference", ".3g"),
    ("wall s", "wall_time_s", ".2f"),
]


def config_hash(cfg: Config) -> str:
    doc = cfg.model_dump(mode="json")
    doc.pop("deploy", None)
    doc.pop("name", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PipelineResult:
    """What `fsnn pipeline` ran: the pipeline's MLflow run (parent of the others), the
    training run, one deploy run per backend, the comparison's ``rows`` (one dict per backend:
    accuracy, agreement, spikes, synaptic events, energy, ...) and that ``table`` as text."""

    pipeline_run: str
    train_run: str
    deploy_runs: dict[str, str]  # backend -> its deploy run
    rows: list[dict[str, Any]]
    reused: list[str]  # the steps taken from earlier finished runs of the same config
    table: str


def _finished(c: Any, filter_string: str) -> Any | None:
    exp = c.get_experiment_by_name("fsnn")
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string + " and attributes.status = "
                         "'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _interrupted(c: Any, key: str) -> str | None:
    """The newest training run of this config that was interrupted or failed and left a
    checkpoint to resume from."""
    from fsnn.pipelines.train.resume import checkpoints_in

    exp = c.get_experiment_by_name("fsnn")
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], f"tags.`fsnn.kind` = 'train' and "
                         f"tags.`fsnn.config_hash` = '{key}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or runs[0].info.status not in ("KILLED", "FAILED"):
        return None
    run_dir = runs[0].data.tags.get("fsnn.run_dir", "")
    if "://" in run_dir or not run_dir or not checkpoints_in(Path(run_dir)):
        return None
    return str(runs[0].info.run_id)


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = ["backend", *(h for h, _, _ in COLUMNS)]
    cells = []
    for r in rows:
        line = [r["backend"]]
        for _, key, fmt in COLUMNS:
            v = r.get(key)
            line.append("-" if v is None else format(v, fmt))
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
           "-|-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(out)


def run_pipeline(cfg: Config, *, config_path: str | None = None, force: bool = False,
                 address: str | None = None, tracking_uri: str | None = None,
                 storage: str | None = None, register: str | None = None) -> PipelineResult:
    from fsnn.backends.base import get_backend
    from fsnn.pipelines.deploy import run_deploy
    from fsnn.pipelines.storage import check_storage, resolve_storage
    from fsnn.pipelines.train.driver import TrainOptions, run_train

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    if register:
        from fsnn.pipelines.mlflow_model import check_registry

        check_registry(uri, register)
    check_storage(resolve_storage(storage))
    for b in cfg.deploy.backends:  # an unknown or uninstallable backend fails before training
        get_backend(b)
    key = config_hash(cfg)
    pipeline_run = create_run(uri, run_name=f"pipeline-{cfg.name}",
                              params=cfg.model_dump(mode="json"),
                              tags={"fsnn.kind": "pipeline", "fsnn.config_hash": key})
    c = client(uri)
    with closing_run(c, pipeline_run, what=f"pipeline run {pipeline_run}",
                     kept=lambda: "the next `fsnn pipeline` of the same config reuses the "
                                  "finished steps and resumes an interrupted training"):
        reused: list[str] = []
        version: str | None = None  # models:/NAME/VERSION with register: the deploys' source
        prev = None if force else _finished(
            c, f"tags.`fsnn.kind` = 'train' and tags.`fsnn.config_hash` = '{key}'")
        if prev is not None and "spec" in {a.path for a in c.list_artifacts(prev.info.run_id)}:
            train_run = prev.info.run_id
            reused.append("train")
            print(f"[fsnn] reusing training run {train_run} (same config; --force retrains)")
            if register:
                from fsnn.pipelines.mlflow_model import register as _register
                from fsnn.pipelines.mlflow_model import version_tags

                number = _register(uri, train_run, register,
                                   version_tags(cfg, dict(prev.data.metrics)))
                version = f"models:/{register}/{number}"
                print(f"[fsnn] registered {version}")
        else:
            resume = None if force else _interrupted(c, key)
            if resume is not None:
                print(f"[fsnn] resuming the interrupted training run {resume} (same config; "
                      f"--force starts afresh)")
            out = run_train(cfg, TrainOptions(address=address, tracking_uri=uri, storage=storage,
                                              config_path=config_path, resume=resume,
                                              tags={"fsnn.config_hash": key,
                                                    "fsnn.pipeline_run_id": pipeline_run},
                                              parent_run_id=pipeline_run, register=register))
            train_run, version = out.run_id, out.model_version
        rows: list[dict[str, Any]] = []
        deploy_runs: dict[str, str] = {}
        for backend in cfg.deploy.backends:
            done = None if force else _finished(
                c, f"tags.`fsnn.kind` = 'deploy' and tags.`fsnn.train_run_id` = '{train_run}' "
                   f"and tags.`fsnn.backend` = '{backend}' "
                   f"and params.samples = '{cfg.deploy.samples}'")
            if done is not None:
                reused.append(f"deploy:{backend}")
                run_id, metrics = done.info.run_id, dict(done.data.metrics)
                print(f"[fsnn] reusing {backend} deploy run {run_id}")
            else:
                rep = run_deploy(version or train_run, backend, samples=cfg.deploy.samples,
                                 workers=cfg.deploy.workers, tracking_uri=uri, address=address,
                                 dataset=cfg.data.name,
                                 options=dict(cfg.backend_options.get(backend, {})))
                assert rep.run_id is not None
                run_id, metrics = rep.run_id, rep.metrics
            set_tags(c, run_id, {"fsnn.pipeline_run_id": pipeline_run})
            deploy_runs[backend] = run_id
            rows.append({"backend": backend, "run_id": run_id, **metrics})
        table = format_table(rows)
        set_tags(c, pipeline_run, {"fsnn.train_run_id": train_run,
                                   **{f"fsnn.deploy_run.{b}": r for b, r in deploy_runs.items()}})
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "comparison.md").write_text(table + "\n")
            (Path(d) / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
            c.log_artifacts(pipeline_run, d)
        c.set_terminated(pipeline_run, "FINISHED")
    return PipelineResult(pipeline_run, train_run, deploy_runs, rows, reused, table)
