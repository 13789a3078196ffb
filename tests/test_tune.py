"""`fsnn tune` with a real local Ray (2 CPUs), a real MLflow server on loopback and real data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from servers import RAY_TEST_ENV

from fsnn.platform.spec import load_spec

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]
CONFIG = str(Path(__file__).parents[1] / "configs" / "tune-demo.yaml")
SMALL = ["--set", "data.train_limit=600", "--set", "data.test_limit=200",
         "--set", "data.batch_size=64",
         "--set", "search.space={T: {choice: [2, 4]}, vth: {uniform: [1.0, 2.5]}, "
                  "leak: {choice: [1.0, 0.95]}}"]


def _tune(tmp: Path, uri: str, *extra: str, timeout: int = 300,
          wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [*FSNN, "tune", CONFIG, "--tracking-uri", uri, "--storage", str(tmp / "storage"),
           *SMALL, *extra]
    env = {**os.environ, **RAY_TEST_ENV}
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _search(uri: str, name: str):
    """(client, the search's parent run, its nested trial runs)."""
    c = _client(uri)
    exp = c.get_experiment_by_name("fsnn")
    parents = c.search_runs([exp.experiment_id], f"attributes.run_name = '{name}-tune'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    nested = c.search_runs([exp.experiment_id],
                           f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return c, parent, nested


def _steps(c, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def test_search_logs_parent_and_nested_runs_and_the_best(tmp_path: Path, tracking: str) -> None:
    out = _tune(tmp_path, tracking, "--set", "name=search4", "--set", "train.epochs=2",
                "--set", "search.num_samples=4", "--set", "search.seed=1",
                "--register", "search4-best")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    c, parent, nested = _search(tracking, "search4")
    assert parent.data.tags["fsnn.kind"] == "tune"
    assert len(nested) == 4 and all(r.info.status == "FINISHED" for r in nested)
    assert len({r.data.tags["fsnn.trial_id"] for r in nested}) == 4
    for r in nested:
        sampled = json.loads(r.data.tags["fsnn.sampled"])
        assert r.data.params["T"] == str(sampled["T"])
        assert r.data.params["neuron"] == ("IF" if sampled["leak"] == 1.0 else "LIF")
        steps = _steps(c, r.info.run_id, "test_accuracy")
        assert steps in ([0], [0, 1]), steps  # ASHA may stop a trial after its first epoch
        assert _steps(c, r.info.run_id, "train_loss") == steps
        # measured energy: absent with its reason (no GPU here; trials share the CPU package)
        assert "energy/gpu_j" not in r.data.metrics
        assert r.data.tags["fsnn.absent.energy/gpu_j"]
        assert "search.max_concurrent: 1" in r.data.tags["fsnn.absent.energy/cpu_j"]
        assert "energy/cpu_j" not in r.data.metrics
    finals = {r.info.run_id: r.data.metrics["test_accuracy"] for r in nested}
    best_run = parent.data.tags["fsnn.best_run_id"]
    assert finals[best_run] == max(finals.values())  # ties (200 test images) either way
    assert parent.data.metrics["best_test_accuracy"] == finals[best_run]
    assert best_run in out.stdout and "ranked by test_accuracy" in out.stdout
    assert f"{finals[best_run]:.4f}" in out.stdout
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "config.yaml", "spec", "plots", "trials.json"} <= arts
    assert "plots/tune.png" in {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    dl = tmp_path / "dl"
    best_cfg = yaml.safe_load(Path(c.download_artifacts(parent.info.run_id, "best_config.yaml",
                                                        str(dl))).read_text())
    best_params = c.get_run(best_run).data.params
    assert str(best_cfg["T"]) == best_params["T"] and str(best_cfg["vth"]) == best_params["vth"]
    assert "search" not in best_cfg or best_cfg["search"] is None
    net = load_spec(c.download_artifacts(parent.info.run_id, "spec", str(dl)))
    assert best_cfg["T"] == net.T and net.metadata["mlflow_run_id"] == best_run
    # the best trial's spec is also the search run's MLflow Model, registered as version 1
    assert "registered models:/search4-best/1" in out.stdout
    (version,) = c.search_model_versions("name='search4-best'")
    assert version.run_id == parent.info.run_id
    assert version.tags["T"] == str(net.T) and version.tags["dataset"] == "fashion-mnist"
    assert float(version.tags["test_accuracy"]) == pytest.approx(finals[best_run], abs=1e-6)
    import mlflow.pyfunc
    import numpy as np
    import torch

    from fsnn.backends.base import get_backend

    x = torch.rand(3, *net.input.shape, dtype=torch.float64)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    try:
        probs = mlflow.pyfunc.load_model("models:/search4-best/1").predict(x.numpy())
    finally:
        mlflow.set_tracking_uri(before)
    backend = get_backend("torch")
    backend.build(net)
    want = torch.softmax(backend.run(x).logits, 1).numpy()
    assert np.array_equal(probs, want)


def test_interrupted_search_resumes_without_rerunning_finished_trials(
        tmp_path: Path, tracking: str) -> None:
    opts = ["--set", "name=resumed", "--set", "train.epochs=1", "--set", "search.num_samples=4",
            "--set", "search.max_concurrent=1", "--set", "search.scheduler=none"]
    proc = _tune(tmp_path, tracking, *opts, wait=False)
    assert isinstance(proc, subprocess.Popen)
    finished: list = []
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            _, _, nested = _search(tracking, "resumed")
        except (AssertionError, Exception):
            nested = []
        finished = [r for r in nested if r.info.status == "FINISHED"]
        if len(finished) >= 2:
            proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and stops
            break
        time.sleep(0.3)
    output, _ = proc.communicate(timeout=120)
    assert len(finished) >= 2, output[-4000:]
    assert proc.returncode == 130, output[-4000:]
    assert "--resume" in output
    c, parent, nested = _search(tracking, "resumed")
    assert parent.info.status == "KILLED"
    assert len([r for r in nested if r.info.status == "FINISHED"]) < 4
    before = {r.data.tags["fsnn.trial_id"]: (r.info.run_id, r.info.end_time)
              for r in nested if r.info.status == "FINISHED"}
    assert len(before) >= 2

    out = _tune(tmp_path, tracking, *opts, "--resume")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    c, parent2, nested = _search(tracking, "resumed")
    assert parent2.info.run_id == parent.info.run_id and parent2.info.status == "FINISHED"
    by_trial = {r.data.tags["fsnn.trial_id"]: r for r in nested}
    assert len(nested) == 4 and len(by_trial) == 4
    assert all(r.info.status == "FINISHED" for r in nested)
    for tid, (run_id, end_time) in before.items():  # finished trials were left alone
        assert by_trial[tid].info.run_id == run_id and by_trial[tid].info.end_time == end_time
        assert _steps(c, run_id, "test_accuracy") == [0]
    exp_dir = tmp_path / "storage" / "tune-resumed"
    trial_dirs = sorted(p for p in exp_dir.iterdir() if p.name.startswith("trial_"))
    assert [p.name.removeprefix("trial_") for p in trial_dirs] == sorted(by_trial)
    for d in trial_dirs:  # each trial reported its one epoch exactly once
        assert len((d / "result.json").read_text().splitlines()) == 1, d
    for tid in before:
        assert tid in out.stdout
    again = _tune(tmp_path, tracking, *opts)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "--resume" in again.stderr


def test_bad_search_inputs_fail_before_any_trial(tmp_path: Path, tracking: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from fsnn.pipelines.cli import main

    base = ["tune", CONFIG, "--tracking-uri", tracking, "--storage", str(tmp_path / "storage"),
            *SMALL, "--set", "name=bad"]
    cases = [
        (["--set", "search.space={}"], ["search.space:", "empty"]),
        (["--set", "search.space={T: [4, 8]}"], ["search.space.T"]),
        (["--set", "search.space={T: {choise: [4, 8]}}"], ["search.space.T.choise",
                                                           "unknown distribution"]),
        (["--set", "search.space={optim.lrr: {loguniform: [0.001, 0.1]}}"],
         ["search.space.optim.lrr", "unknown config path", "optim.lr"]),
        (["--set", "search.space={T: {choice: [0, 4]}}"], ["search.space.T", "value 0"]),
        (["--set", "search.space={T: {uniform: [2, 8]}}"], ["search.space.T", "randint"]),
        (["--set", "search.metric=test_acc"], ["search.metric", "test_acc", "test_accuracy"]),
        (["--set", "search.num_samples=0"], ["search.num_samples"]),
        (["--resume"], ["--resume", "no search to continue"]),
        (["--register", "bad name!"], ["register", "not a valid model name"]),
        (["--set", "forward=nest", "--set", "dropout=0"], ["forward: nest", "--init"]),
    ]
    for extra, needles in cases:  # in this process: each is refused before Ray starts
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, (extra, needle, err)
        assert not ray.is_initialized()
    out = _tune(tmp_path, tracking, "--set", "name=bad", "--set", "search.resources.cpus=64",
                timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "search.resources.cpus" in out.stderr and "has 2" in out.stderr
    c = _client(tracking)
    exp = c.get_experiment_by_name("fsnn")
    assert exp is None or not c.search_runs([exp.experiment_id],
                                            "attributes.run_name = 'bad-tune'")
    assert not (tmp_path / "storage" / "tune-bad").exists()


def test_space_becomes_tune_distributions_and_leak_sets_the_neuron() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    from fsnn.pipelines.tune.search import expected_trials, param_space
    from fsnn.platform.config import config_from_dict, trial_config

    space = {"T": {"choice": [4, 8]}, "vth": {"uniform": [0.5, 3.0]},
             "leak": {"choice": [1.0, 0.95]}, "optim.lr": {"loguniform": [1e-3, 0.1]},
             "data.batch_size": {"randint": [32, 34]}, "dropout": {"grid": [0.0, 0.2]}}
    cfg = config_from_dict({"search": {"space": space, "num_samples": 3}})
    assert cfg.search is not None
    ps = param_space(cfg.search)
    assert isinstance(ps["T"], Categorical) and ps["T"].categories == [4, 8]
    assert isinstance(ps["vth"], Float) and (ps["vth"].lower, ps["vth"].upper) == (0.5, 3.0)
    assert isinstance(ps["data.batch_size"], Integer) and ps["data.batch_size"].upper == 35
    assert ps["dropout"] == {"grid_search": [0.0, 0.2]}
    assert expected_trials(cfg.search) == 3 * 2
    grid = config_from_dict({"search": {"space": {"T": {"choice": [4, 8]},
                                                  "data.batch_size": {"randint": [32, 34]}},
                                        "algorithm": "grid"}})
    assert grid.search is not None
    assert param_space(grid.search)["data.batch_size"] == {"grid_search": [32, 33, 34]}
    assert expected_trials(grid.search) == 8 * 2 * 3
    lif = trial_config(cfg, {"leak": 0.95, "T": 8, "optim.lr": 0.01})
    assert (lif.neuron, lif.leak, lif.T, lif.optim.lr, lif.search) == ("LIF", 0.95, 8, 0.01, None)
    assert (trial_config(cfg, {"leak": 1.0}).neuron, trial_config(cfg, {"leak": 1.0}).leak) == \
        ("IF", 1.0)
    both = config_from_dict({"neuron": "LIF", "search": {"space": {"neuron": {
        "choice": ["IF", "LIF"]}}}})
    assert trial_config(both, {"neuron": "IF"}).leak == 1.0
    assert trial_config(both, {"neuron": "LIF"}).leak == 0.95
