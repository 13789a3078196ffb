"""The trained spec as an MLflow Model and the model registry, against a real MLflow server:
`fsnn train --register`, deploy from ``models:/NAME@ALIAS`` (tags on the version), the pyfunc
against the torch backend bit for bit, one-line errors, and `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from servers import BIN, RAY_TEST_ENV, free_port, wait_answering
from trainrun import DEMO, train

import fsnn
from fsnn.pipelines.deploy import DeployError

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]
SAMPLES = 50


@pytest.fixture(scope="module")
def registered(tracking: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny training run (1 epoch on 1200 images, 1 worker) registered as a new model,
    its version aliased ``champion``."""
    name = f"fsnn-test-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("registered")
    t0 = time.perf_counter()
    out = train(tmp, tracking, "--set", "train.epochs=1", "--num-workers", "1",
                "--register", name)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"models:/{name}/1" in out.stdout, out.stdout[-2000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking)
    mv = c.get_model_version(name, "1")
    c.set_registered_model_alias(name, "champion", "1")
    return {"name": name, "client": c, "version": mv, "run_id": mv.run_id,
            "seconds": time.perf_counter() - t0}


@pytest.fixture
def registry_uri(tracking: str) -> Iterator[None]:
    """mlflow.pyfunc.load_model reads the global tracking URI: set it for one test."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    yield
    mlflow.set_tracking_uri(before)


def test_training_logs_model_and_registers_version(registered: dict[str, Any],
                                                   tracking: str, registry_uri: None) -> None:
    mv, c = registered["version"], registered["client"]
    assert mv.tags["dataset"] == "fashion-mnist" and mv.tags["T"] == "4"
    assert mv.tags["neuron"] == "IF" and 0.0 < float(mv.tags["test_accuracy"]) <= 1.0
    run = c.get_run(registered["run_id"])
    assert run.data.tags["fsnn.model_version"] == f"models:/{registered['name']}/1"
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    local = Path(download_artifacts(f"runs:/{registered['run_id']}/model",
                                    tracking_uri=tracking))
    meta = Model.load(str(local / "MLmodel"))
    flavor = meta.flavors["fsnn"]
    assert flavor["fsnn_version"] == fsnn.__version__
    assert sorted(p.name for p in (local / flavor["spec"]).iterdir()) == \
        ["spec.json", "weights.safetensors"]
    assert "model_code_path" in meta.flavors["python_function"]  # models from code
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))
    assert meta.signature is not None and meta.saved_input_example_info is not None
    assert meta.signature.inputs.inputs[0].shape == (-1, 1, 28, 28)


def test_deploy_from_alias_on_nest_tags_the_version(registered: dict[str, Any],
                                                    tracking: str) -> None:
    name, c = registered["name"], registered["client"]
    rep = fsnn.deploy(f"models:/{name}@champion", "nest", samples=SAMPLES,
                      tracking_uri=tracking)
    tags = c.get_model_version(name, "1").tags
    assert float(tags["nest.accuracy"]) == pytest.approx(rep.metrics["accuracy"], abs=1e-6)
    assert float(tags["nest.agreement_predictions"]) == rep.metrics["agreement_predictions"]
    assert rep.metrics["agreement_predictions"] == 1.0
    assert tags["nest.deploy_run_id"] == rep.run_id
    run = c.get_run(rep.run_id)
    assert run.data.tags["fsnn.model_version"] == "1"
    assert run.data.tags["fsnn.model_uri"] == f"models:/{name}/1"
    assert run.data.tags["fsnn.train_run_id"] == registered["run_id"]


def _torch_reference(x: np.ndarray, registered: dict[str, Any], tracking: str, tmp: Path
                     ) -> Any:
    from fsnn.backends.base import get_backend
    from fsnn.pipelines.deploy import resolve_source

    net, _ = resolve_source(f"runs:/{registered['run_id']}/model", tracking, tmp)
    backend = get_backend("torch")
    backend.build(net)
    return backend.run(torch.from_numpy(x))


def test_pyfunc_equals_torch_backend(registered: dict[str, Any], tracking: str,
                                     registry_uri: None, tmp_path: Path) -> None:
    import mlflow

    from fsnn.pipelines.deploy import load_test_data
    from fsnn.platform.spec import load_spec

    name = registered["name"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    ref = fsnn.deploy(f"models:/{name}@champion", "torch", samples=SAMPLES,
                      tracking_uri=tracking, log=False)
    via_run = fsnn.deploy(f"runs:/{registered['run_id']}/model", "torch", samples=SAMPLES,
                          tracking_uri=tracking, log=False)
    from mlflow.artifacts import download_artifacts

    spec = Path(download_artifacts(f"runs:/{registered['run_id']}/spec", tracking_uri=tracking,
                                   dst_path=str(tmp_path / "spec")))
    x, _ = load_test_data(load_spec(spec), None, SAMPLES)
    xs = x.numpy()
    probs = model.predict(xs)
    assert probs.dtype == np.float64 and probs.shape == (SAMPLES, 10)
    assert np.array_equal(probs.argmax(1), ref.predictions)
    assert np.array_equal(via_run.predictions, ref.predictions)
    res = _torch_reference(xs, registered, tracking, tmp_path / "ref")
    assert np.array_equal(probs, torch.softmax(res.logits, dim=1).numpy())  # bit for bit
    counts = model.predict(xs, params={"output": "counts"})
    expect = np.concatenate([c.flatten(1).round().to(torch.int64).numpy()
                             for c in res.counts.values()], axis=1)
    assert np.array_equal(counts, expect)


def _fsnn_deploy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*FSNN, "deploy", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, **RAY_TEST_ENV})


@pytest.mark.filterwarnings("ignore:.*type hints:UserWarning")
def test_model_uri_errors_are_one_line(registered: dict[str, Any], tracking: str,
                                       tmp_path: Path) -> None:
    name = registered["name"]
    cases = {f"models:/{name}@nope": f"model {name!r} has no alias 'nope'",
             f"models:/{name}/99": f"model {name!r} has no version '99'",
             "models:/no-such-model/1": "no registered model 'no-such-model'"}
    for source, message in cases.items():
        with pytest.raises(DeployError, match=message):
            fsnn.deploy(source, tracking_uri=tracking, log=False)
    out = _fsnn_deploy(f"models:/{name}@nope", "--tracking-uri", tracking, cwd=tmp_path)
    assert out.returncode == 2 and "has no alias 'nope'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # a registered model that is not an fsnn model (a plain pyfunc from code)
    import mlflow

    code = tmp_path / "plain.py"
    code.write_text("import mlflow\n\nclass Plain(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input, params=None):\n"
                    "        return model_input\n\nmlflow.models.set_model(Plain())\n")
    other = f"{name}-plain"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    try:
        exp = mlflow.set_experiment("fsnn-test-plain")
        with mlflow.start_run(experiment_id=exp.experiment_id):
            mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                    registered_model_name=other, pip_requirements=["mlflow"])
    finally:
        mlflow.set_tracking_uri(before)
    with pytest.raises(DeployError, match=r"not an fsnn model .*no 'fsnn' flavor"):
        fsnn.deploy(f"models:/{other}/1", tracking_uri=tracking, log=False)


def test_register_is_checked_before_training(tracking: str, tmp_path: Path) -> None:
    from fsnn.pipelines.mlflow_model import ModelError

    with pytest.raises(ModelError, match="'bad/name' is not a valid model name"):
        fsnn.train(DEMO, register="bad/name", tracking_uri=tracking,
                   storage=str(tmp_path / "storage"))
    out = subprocess.run([*FSNN, "pipeline", DEMO, "--register", "a b", "--tracking-uri",
                          tracking, "--storage", str(tmp_path / "storage")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "'a b' is not a valid model name" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_served_model_answers_invocations(registered: dict[str, Any], tracking: str,
                                          tmp_path: Path) -> None:
    """`mlflow models serve -m models:/NAME@champion --env-manager local` answers POST
    /invocations with the torch backend's predictions."""
    from fsnn.pipelines.deploy import load_test_data
    from fsnn.platform.spec import load_spec

    name = registered["name"]
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion",
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking,  # uvicorn: this venv's
             "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answering(url + "/ping", proc, tmp_path / "serve.log", 180, "mlflow models serve")
        ref = fsnn.deploy(f"models:/{name}@champion", "torch", samples=SAMPLES,
                          tracking_uri=tracking, log=False)
        from mlflow.artifacts import download_artifacts

        spec = download_artifacts(f"runs:/{registered['run_id']}/spec", tracking_uri=tracking,
                                  dst_path=str(tmp_path / "spec"))
        x, _ = load_test_data(load_spec(spec), None, SAMPLES)
        body = json.dumps({"inputs": x.numpy().tolist()}).encode()
        req = urllib.request.Request(url + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        probs = np.asarray(answer["predictions"], dtype=np.float64)
        assert probs.shape == (SAMPLES, 10)
        assert np.array_equal(probs.argmax(1), ref.predictions)
        body = json.dumps({"inputs": x.numpy()[:3].tolist(),
                           "params": {"output": "counts"}}).encode()
        req = urllib.request.Request(url + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            counts = np.asarray(json.loads(r.read())["predictions"])
        assert counts.shape[0] == 3 and counts.sum() > 0
    finally:  # the server and its workers: the session this test started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
