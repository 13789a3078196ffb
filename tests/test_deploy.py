"""`fsnn deploy` end to end: a spec on NEST (2 Ray actors) against the torch reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from servers import RAY_TEST_ENV

from fsnn.platform.data import load_dataset
from fsnn.platform.engine import readout, simulate
from fsnn.platform.spec import Neuron, save_spec
from fsnn.platform.zoo import build_model

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]


def _spec(tmp: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("f400", T=5, neuron=Neuron("LIF", v_th=1.0, leak=0.9)).eval()
    return save_spec(model.to_network(metadata={"dataset": "fashion-mnist"}), tmp / "spec")


def _deploy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([*FSNN, "deploy", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, **RAY_TEST_ENV})


def test_deploy_on_nest_agrees_with_torch_and_is_logged(tmp_path: Path, tracking: str) -> None:
    spec = _spec(tmp_path)
    out = _deploy(str(spec), "--backend", "nest", "--samples", "40", "--workers", "2",
                  "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking)
    exp = c.get_experiment_by_name("fsnn")
    runs = c.search_runs([exp.experiment_id], "tags.`fsnn.kind` = 'deploy'")
    run = next(r for r in runs if r.data.tags["fsnn.source"] == str(spec))
    m = run.data.metrics
    assert m["agreement_counts"] == 1.0 and m["agreement_predictions"] == 1.0
    assert m["samples"] == 40 and run.data.params["workers"] == "2"
    # accuracy and spike numbers against an independent torch computation
    from fsnn.platform.spec import load_spec

    net = load_spec(spec).to(torch.float64)
    x, y = load_dataset("fashion-mnist", "test", limit=40, progress=False)
    res = simulate(net, x.to(torch.float64), timing="deploy")
    acc = float((readout(net, res.rates).argmax(1) == y).double().mean())
    spikes = float(sum(c.flatten(1).sum(1) for c in res.counts.values()).mean())
    assert abs(m["accuracy"] - acc) < 1e-12
    assert abs(m["spikes_per_sample"] - spikes) < 1e-9 and spikes > 10
    h0 = res.counts["h0"].flatten(1)
    events = float((h0 * 400).sum(1).mean())  # dense 400x400 feedback: fan-out 400 (nonzero)
    assert abs(m["synaptic_events_per_sample"] - events) < 1e-6


def test_deploy_errors_are_clear(tmp_path: Path, tracking: str) -> None:
    spec = _spec(tmp_path)
    out = _deploy(str(spec), "--backend", "loihi", "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 2 and "unknown backend 'loihi'" in out.stderr
    from fsnn.pipelines.tracking import create_run

    bare = create_run(tracking, run_name="no-spec", params={}, tags={})
    out = _deploy(bare, "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 2 and "has no 'spec' artifact" in out.stderr
    out = _deploy(str(tmp_path / "nowhere"), "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 2 and "neither a spec directory nor a run" in out.stderr


def test_deploy_backend_options(tmp_path: Path, tracking: str) -> None:
    """--option reaches the backend: the emulated board without fixed point and with the spec's
    neuron runs the torch engine's arithmetic, so every sample agrees; a wrong option is named."""
    spec = _spec(tmp_path)
    out = _deploy(str(spec), "--backend", "spinnaker-emulated", "--samples", "40",
                  "--option", "quantize=false", "--option", "neuron=spec",
                  "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "spike counts 1.0000" in out.stdout
    out = _deploy(str(spec), "--backend", "spinnaker-emulated", "--option", "speed=9",
                  "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 2 and "--option" in out.stderr and "speed" in out.stderr, out.stderr
    out = _deploy(str(spec), "--option", "novalue", "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 2 and "expected KEY=VALUE" in out.stderr
