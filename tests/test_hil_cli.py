"""`fsnn train --init RUN --forward nest`: fine-tuning with NEST in the loop, end to end (real
Ray, real MLflow server, real NEST, real Fashion-MNIST); and the checks that refuse a forward
that cannot run before any step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from servers import RAY_TEST_ENV

from fsnn.platform.data import load_dataset
from fsnn.platform.engine import readout, simulate
from fsnn.platform.spec import load_spec

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]
DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
SMALL = ["--set", "data.train_limit=1200", "--set", "data.test_limit=300",
         "--set", "data.batch_size=64", "--num-workers", "1"]


def _fsnn(tmp: Path, *args: str, env: dict[str, str] | None = None,
          timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([*FSNN, *args], cwd=tmp, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **RAY_TEST_ENV, **(env or {})})


def _run(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("fsnn")
    runs = c.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'") if exp else []
    return c, runs


def test_fine_tune_with_nest_in_the_loop(tmp_path: Path, tracking: str) -> None:
    store = ["--tracking-uri", tracking, "--storage", str(tmp_path / "storage")]
    base = _fsnn(tmp_path, "train", DEMO, *store, *SMALL, "--set", "name=hil-base",
                 "--set", "train.epochs=1", "--set", "T=4")
    assert base.returncode == 0, base.stdout[-2000:] + base.stderr[-2000:]
    c, runs = _run(tracking, "hil-base")
    base_id = runs[0].info.run_id
    base_acc = runs[0].data.metrics["test_accuracy"]

    tuned = _fsnn(tmp_path, "train", "--init", base_id, "--forward", "nest", *store,
                  "--set", "name=hil-tuned", "--set", "train.epochs=1",
                  "--set", "data.train_limit=256", "--set", "data.test_limit=300",
                  "--set", "target_eval.samples=120", "--set", "optim.lr=0.01",
                  "--set", "train.log_every=2", "--num-workers", "1")
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    assert "dropout 0" in tuned.stderr
    assert "batch 2/4" in tuned.stdout + tuned.stderr  # progress every train.log_every batches
    c, runs = _run(tracking, "hil-tuned")
    assert len(runs) == 1
    run = runs[0]
    rid, m = run.info.run_id, run.data.metrics
    assert run.data.tags["fsnn.init_run_id"] == base_id
    assert run.data.tags["fsnn.forward"] == "nest"
    assert run.data.params["forward"] == "nest" and run.data.params["T"] == "4"
    # the simulator ran every batch, on the weights of the step before (NEST rebuilds: on
    # NEST 3.10 that is faster than setting weights in place, see nest_update)
    assert m["hil/samples"] == 256 and m["hil/rebuilds"] == 256 / 64
    assert m["hil/in_place_updates"] == 0
    assert m["hil/epoch_retries"] == 0
    # started from the trained weights: already as good as the run it came from
    assert m["train_accuracy"] > 0.5 and abs(m["test_accuracy"] - base_acc) < 0.1
    # target accuracy logged per epoch, equal to an independent simulation of the final spec
    assert [x.step for x in c.get_metric_history(rid, "target/nest/accuracy")] == [0]
    assert m["target/nest/agreement_predictions"] == 1.0
    assert m["target/nest/agreement_counts"] == 1.0
    net = load_spec(c.download_artifacts(rid, "spec", str(tmp_path / "dl"))).to(torch.float64)
    x, y = load_dataset("fashion-mnist", "test", limit=120, progress=False)
    with torch.no_grad():
        pred = readout(net, simulate(net, x.double(), timing="deploy").rates).argmax(1)
    assert abs(float((pred == y).double().mean()) - m["target/nest/accuracy"]) < 1e-9


def test_a_forward_that_cannot_run_fails_before_the_first_step(tmp_path: Path,
                                                               tracking: str) -> None:
    store = ["--tracking-uri", tracking, "--storage", str(tmp_path / "storage")]
    # an unreachable board: refused in seconds, naming the host; no run, no Ray
    t0 = time.monotonic()
    out = _fsnn(tmp_path, "train", DEMO, *store, *SMALL, "--forward", "spinnaker",
                "--set", "name=hil-board", "--set", "backend_options.spinnaker.host=127.0.0.1",
                timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "forward: spinnaker cannot run this model" in out.stderr and "127.0.0.1" in out.stderr
    assert time.monotonic() - t0 < 60
    # no board named: a virtual board maps but cannot run
    out = _fsnn(tmp_path, "train", DEMO, *store, *SMALL, "--forward", "spinnaker",
                "--set", "name=hil-virtual", timeout=120,
                env={"FSNN_SPINNAKER_HOST": "", "FSNN_SPINNAKER_SPALLOC": ""})
    assert out.returncode == 2 and "virtual board cannot run" in out.stderr, out.stderr
    # NEST missing: a `nest` that cannot be imported
    fake = tmp_path / "fake"
    (fake / "nest").mkdir(parents=True)
    (fake / "nest" / "__init__.py").write_text("raise ImportError('no NEST here')\n")
    out = _fsnn(tmp_path, "train", DEMO, *store, *SMALL, "--forward", "nest",
                "--set", "name=hil-nonest", env={"PYTHONPATH": str(fake)}, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "needs PyNN and NEST" in out.stderr and "pip install" in out.stderr
    # an option the backend does not have
    out = _fsnn(tmp_path, "train", DEMO, *store, *SMALL, "--forward", "nest",
                "--set", "name=hil-badopt", "--set", "backend_options.nest.speed=9",
                timeout=120)
    assert out.returncode == 2 and "backend_options.nest" in out.stderr, out.stderr
    # too many simulator actors for the cluster: named before training starts
    out = _fsnn(tmp_path, "train", DEMO, *store, "--forward", "torch", "--set", "name=hil-cpu",
                "--set", "hil.workers=3", "--num-workers", "1", timeout=120)
    assert out.returncode == 2 and "hil.workers" in out.stderr, out.stderr
    _, runs = _run(tracking, "hil-board")
    assert not runs, "nothing was logged"
    for name in ("hil-virtual", "hil-nonest", "hil-badopt"):
        assert not _run(tracking, name)[1]


def test_two_training_workers_restart_from_the_checkpoint_when_a_simulator_dies(
        tmp_path: Path, tracking: str) -> None:
    """With several training workers a dead simulator actor fails its rank: Ray Train restarts
    the group from the last checkpoint and the epoch runs again, in the same MLflow run."""
    import shutil
    import signal
    import tempfile

    from servers import free_port, ray_cmd

    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="fsnnhil", dir="/tmp"))  # short socket paths
    address = f"127.0.0.1:{port}"
    head = ray_cmd("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                   "--num-cpus", "4", "--include-dashboard", "false", "--temp-dir", str(temp),
                   "--disable-usage-stats")
    assert head.returncode == 0, head.stderr
    try:
        proc = subprocess.Popen(
            [*FSNN, "train", DEMO, "--address", address, "--tracking-uri", tracking,
             "--storage", str(tmp_path / "storage"), "--forward", "torch",
             "--set", "name=hil-two", "--set", "train.epochs=4",
             "--set", "data.train_limit=4800", "--set", "data.test_limit=200",
             "--set", "data.batch_size=64", "--set", "T=4", "--set", "target_eval.every=0",
             "--num-workers", "2"],
            cwd=tmp_path, env={**os.environ, **RAY_TEST_ENV}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        killed = None
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            c, runs = _run(tracking, "hil-two")
            if runs and c.get_metric_history(runs[0].info.run_id, "test_accuracy"):
                found = subprocess.run(["pgrep", "-f", "ray::ForwardWorker"],
                                       capture_output=True, text=True).stdout.split()
                if found:
                    killed = int(found[0])
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=400)
    finally:
        ray_cmd("stop", "--force")
        shutil.rmtree(temp, ignore_errors=True)
    assert killed is not None, "training ended before a simulator could be killed:\n" + \
        output[-3000:]
    assert proc.returncode == 0, output[-4000:]
    c, runs = _run(tracking, "hil-two")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    rid = runs[0].info.run_id
    for key in ("train_loss", "test_accuracy", "hil/samples"):
        assert [m.step for m in c.get_metric_history(rid, key)] == [0, 1, 2, 3], key
    assert int(runs[0].data.tags["fsnn.resumed_from_epoch"]) >= 1, output[-6000:]
    # the driver's one line about the restart names the lost simulator worker
    assert "restarting the workers from the last checkpoint (restart 1 of" in output, output
    assert "simulator worker died" in output
