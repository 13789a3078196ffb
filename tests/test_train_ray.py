"""`fsnn train` with a real local Ray, a real MLflow server on loopback and real data."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from servers import two_ray_nodes
from trainrun import FSNN
from trainrun import runs as _runs
from trainrun import steps as _steps
from trainrun import train as _train

from fsnn.platform.data import load_dataset
from fsnn.platform.engine import readout, simulate
from fsnn.platform.spec import load_spec


def test_two_worker_run_logs_once_and_spec_reproduces_accuracy(tmp_path: Path,
                                                               tracking: str) -> None:
    out = _train(tmp_path, tracking, "--set", "name=twoworkers", "--set", "train.epochs=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    c, runs = _runs(tracking, "twoworkers")
    assert len(runs) == 1, "exactly one MLflow run"
    run = runs[0]
    assert run.info.run_id in out.stdout
    assert run.data.params["model"] == "f400" and run.data.params["train.num_workers"] == "2"
    assert run.data.tags["ray.num_workers"] == "2"
    for key in ("train_loss", "test_accuracy", "rate_h0", "adjoint_iterations", "images_per_s",
                "lr"):
        assert _steps(c, run.info.run_id, key) == [0, 1], key
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"spec", "plots", "config.yaml"} <= arts
    spec_dir = c.download_artifacts(run.info.run_id, "spec", str(tmp_path / "dl"))
    net = load_spec(spec_dir)
    x, y = load_dataset("fashion-mnist", "test", limit=300, progress=False)
    with torch.no_grad():
        pred = readout(net, simulate(net, x).rates).argmax(1)
    acc = float((pred == y).float().mean())
    logged = run.data.metrics["test_accuracy"]
    assert acc > 0.5
    assert abs(acc - logged) <= 0.01, (acc, logged)
    ckpts = list((tmp_path / "storage").rglob("fsnn-checkpoint.json"))
    assert ckpts and all(run.info.run_id in p.read_text() for p in ckpts)


def test_killed_worker_resumes_from_checkpoint_in_the_same_run(tmp_path: Path,
                                                               tracking: str) -> None:
    proc = _train(tmp_path, tracking, "--set", "name=faulty", "--set", "train.epochs=4",
                  "--set", "data.train_limit=3000", wait=False)
    assert isinstance(proc, subprocess.Popen)
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            c, runs = _runs(tracking, "faulty")
        except Exception:
            runs = []
        if runs and _steps(c, runs[0].info.run_id, "test_accuracy"):
            pids = c.get_run(runs[0].info.run_id).data.tags["fsnn.worker_pids"].split(",")
            killed = int(pids[1])  # rank 1's process
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.5)
    output, _ = proc.communicate(timeout=400)
    assert killed is not None, "training ended before a worker could be killed:\n" + output[-3000:]
    assert proc.returncode == 0, output[-4000:]
    c, runs = _runs(tracking, "faulty")
    assert len(runs) == 1
    rid = runs[0].info.run_id
    for key in ("train_loss", "test_accuracy", "epoch_seconds"):
        assert _steps(c, rid, key) == [0, 1, 2, 3], key
    assert int(runs[0].data.tags["fsnn.resumed_from_epoch"]) >= 1, output[-6000:]
    assert runs[0].info.status == "FINISHED"
    assert "restarting the workers from the last checkpoint (restart 1 of 2)" in output, output


def test_two_nodes_on_loopback_get_one_worker_each(tmp_path: Path, tracking: str) -> None:
    with two_ray_nodes(tmp_path) as address:
        out = _train(tmp_path, tracking, "--address", address, "--set", "name=twonodes",
                     "--set", "train.epochs=1")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _, runs = _runs(tracking, "twonodes")
    nodes = runs[0].data.tags["fsnn.worker_nodes"].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2


def test_bad_inputs_fail_fast_with_clear_messages(tmp_path: Path, tracking: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: f400\nT: 0\nepochz: 3\n")
    out = subprocess.run([*FSNN, "train", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "T:" in out.stderr and "epochz" in out.stderr and "unknown field" in out.stderr
    good = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
    t0 = time.time()
    out = subprocess.run([*FSNN, "train", good, "--address", "127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unreachable" in out.stderr and "127.0.0.1:9" in out.stderr
    out = subprocess.run([*FSNN, "train", good, "--tracking-uri", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "MLflow tracking server" in out.stderr
    assert time.time() - t0 < 50  # both refused within seconds, long before any training
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "fsnn-checkpoint.json").write_text("{broken")
    before = sorted(p.name for p in bad.iterdir())
    out = subprocess.run([*FSNN, "train", good, "--resume", str(bad), "--tracking-uri",
                          tracking], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "corrupt" in out.stderr
    assert sorted(p.name for p in bad.iterdir()) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.pt").write_bytes(b"\x80\x04not ours")
    out = subprocess.run([*FSNN, "train", good, "--resume", str(foreign), "--tracking-uri",
                          tracking], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not an fsnn checkpoint" in out.stderr
