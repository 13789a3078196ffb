"""`fsnn pipeline` end to end on a tiny config: real Ray, a real MLflow server, real NEST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import RAY_TEST_ENV

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]
TINY = ["--set", "name=tinypipe", "--set", "train.epochs=1", "--set", "data.train_limit=800",
        "--set", "data.test_limit=200", "--set", "data.batch_size=64", "--set", "T=4",
        "--set", "deploy.samples=30"]


def _pipeline(tmp: Path, uri: str, *extra: str) -> subprocess.CompletedProcess:
    cfg = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
    return subprocess.run([*FSNN, "pipeline", cfg, "--tracking-uri", uri, "--storage",
                           str(tmp / "storage"), *TINY, *extra], cwd=tmp, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **RAY_TEST_ENV})


# what Ray's and MLflow's internals print when they are let through (`--verbose`)
LIBRARY_LINES = ("Traceback", "(TrainController", "(RayTrainWorker", "core_worker.cc",
                 "INFO worker.py", "Started a local Ray instance", "View run",
                 "mlflow.store.db.utils", "PlacementGroupCleaner", "TrainingReport(")


def assert_quiet_console(text: str) -> None:
    """fsnn's progress and table, nothing from Ray's or MLflow's internals."""
    assert "[fsnn] epoch 1/1" in text and "agree spikes" in text, text[-3000:]
    for marker in LIBRARY_LINES:
        assert marker not in text, (marker, text[-4000:])


def test_verbose_lets_ray_speak(tmp_path: Path, tracking: str) -> None:
    out = subprocess.run([*FSNN, "--verbose", "train", str(Path(__file__).parents[1] / "configs"
                          / "demo.yaml"), "--tracking-uri", tracking, "--storage",
                          str(tmp_path / "storage"), *TINY, "--set", "name=loud",
                          "--num-workers", "1"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, **RAY_TEST_ENV})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "(RayTrainWorker" in text and "Started a local Ray instance" in text, text[-3000:]
    assert text.count("[fsnn] epoch 1/1  loss") == 1  # progress once, not once per channel


def test_pipeline_links_runs_and_table_matches_metrics(tmp_path: Path, tracking: str) -> None:
    from mlflow.tracking import MlflowClient

    out = _pipeline(tmp_path, tracking, "--register", "tinypipe-model")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "agree spikes" in out.stdout and "mlflow ui --backend-store-uri" in out.stdout
    assert_quiet_console(out.stdout + out.stderr)
    c = MlflowClient(tracking)
    exp = c.get_experiment_by_name("fsnn")
    pipe = c.search_runs([exp.experiment_id], "attributes.run_name = 'pipeline-tinypipe'")[0]
    train_id = pipe.data.tags["fsnn.train_run_id"]
    train = c.get_run(train_id)
    assert train.data.tags["mlflow.parentRunId"] == pipe.info.run_id
    rows = json.loads(Path(c.download_artifacts(pipe.info.run_id, "comparison.json",
                                                str(tmp_path))).read_text())
    assert [r["backend"] for r in rows] == ["torch", "nest"]
    for row in rows:
        run = c.get_run(pipe.data.tags[f"fsnn.deploy_run.{row['backend']}"])
        assert run.data.tags["mlflow.parentRunId"] == train_id
        assert run.data.tags["fsnn.train_run_id"] == train_id
        for key in ("accuracy", "spikes_per_sample", "synaptic_events_per_sample",
                    "energy_est/loihi_j"):
            assert row[key] == run.data.metrics[key], key
        assert row["samples"] == 30
    nest = rows[1]
    assert nest["agreement_predictions"] >= 29 / 30 and nest["agreement_counts"] >= 0.9
    assert f"{nest['accuracy']:.4f}" in out.stdout
    # --register: the training run's model is version 1; the deploys ran from that version
    # and left their results on it
    (version,) = c.search_model_versions("name='tinypipe-model'")
    assert version.run_id == train_id and version.version == "1"
    for row in rows:
        run = c.get_run(pipe.data.tags[f"fsnn.deploy_run.{row['backend']}"])
        assert run.data.tags["fsnn.model_version"] == "1"
    assert float(version.tags["nest.accuracy"]) == pytest.approx(nest["accuracy"], abs=1e-6)
    assert float(version.tags["nest.agreement_predictions"]) == pytest.approx(
        nest["agreement_predictions"], abs=1e-6)
    # a second run of the same config reuses the finished training and deploys
    again = _pipeline(tmp_path, tracking)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reusing training run {train_id}" in again.stdout
    assert "reusing nest deploy run" in again.stdout
    trains = c.search_runs([exp.experiment_id],
                           f"tags.`fsnn.kind` = 'train' and tags.`fsnn.config_hash` = "
                           f"'{train.data.tags['fsnn.config_hash']}'")
    assert len(trains) == 1


def test_pipeline_refuses_unknown_backend_before_training(tmp_path: Path, tracking: str) -> None:
    out = _pipeline(tmp_path, tracking, "--set", "deploy.backends=[torch, loihi]")
    assert out.returncode == 2 and "deploy.backends" in out.stderr
