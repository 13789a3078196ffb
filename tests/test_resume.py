"""`fsnn train --resume`: a run interrupted by Ctrl-C, then by SIGKILL of its driver, resumes in
the same MLflow run, logs every epoch once, and ends with the weights of an uninterrupted run
with the same seed (real Ray, a real MLflow server on loopback, real Fashion-MNIST)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from trainrun import runs, steps, train, wait_for_epochs

from fsnn.pipelines.train.resume import checkpoints_in
from fsnn.platform.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
EPOCHS = ["--set", "train.epochs=4"]


def _final_weights(c, run_id: str) -> tuple[int, dict[str, torch.Tensor]]:
    run_dir = c.get_run(run_id).data.tags["fsnn.run_dir"]
    epoch, path = checkpoints_in(Path(run_dir))[-1]
    return epoch, load_checkpoint(path).model


def _no_ray_left(timeout: float = 60) -> None:
    """A SIGKILLed driver takes its local Ray with it (Ray's processes share its fate)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = subprocess.run(["pgrep", "-f", "raylet|gcs_server|RayTrainWorker"],
                              capture_output=True, text=True).stdout.split()
        if not left:
            return
        time.sleep(0.5)
    raise AssertionError(f"Ray processes outlived their driver: {left}")


def test_interrupted_and_killed_run_resumes_to_the_uninterrupted_weights(
        tmp_path: Path, tracking: str) -> None:
    straight = train(tmp_path, tracking, "--set", "name=straight", *EPOCHS)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

    # Ctrl-C after the first epoch: exit 130, one line, the run KILLED
    proc = train(tmp_path, tracking, "--set", "name=bumpy", *EPOCHS, wait=False)
    assert isinstance(proc, subprocess.Popen)
    rid = wait_for_epochs(proc, tracking, "bumpy", 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("fsnn train: interrupted: training run") and "KILLED" in last, out
    assert f"fsnn train --resume {rid}" in last and "checkpoints up to epoch" in last, last
    c, found = runs(tracking, "bumpy")
    assert [r.info.status for r in found] == ["KILLED"]
    assert found[0].data.tags["fsnn.failure"] == "interrupted"
    _no_ray_left()

    # --resume RUN_ID without CONFIG (the run's own), then SIGKILL of the driver mid-run, once
    # it has logged an epoch of its own (on a loaded machine the interrupted run may have
    # finished a second epoch while it stopped)
    done_before = len(steps(c, rid, "test_accuracy"))
    assert 1 <= done_before <= 2, done_before
    proc = train(tmp_path, tracking, "--resume", rid, config=None, wait=False)
    assert isinstance(proc, subprocess.Popen)
    wait_for_epochs(proc, tracking, "bumpy", done_before + 1)
    proc.kill()
    proc.communicate(timeout=60)
    _no_ray_left()
    assert c.get_run(rid).info.status == "RUNNING"  # nothing can close a run on SIGKILL

    done = train(tmp_path, tracking, "--resume", rid, config=None)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming run {rid} after epoch" in done.stdout
    c, found = runs(tracking, "bumpy")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    for key in ("train_loss", "test_accuracy", "lr", "epoch_seconds"):
        assert steps(c, rid, key) == [0, 1, 2, 3], key
    assert int(found[0].data.tags["fsnn.resumed_from_epoch"]) == done_before + 1
    assert "spec" in {a.path for a in c.list_artifacts(rid)}

    # same seed, same data order, dropout drawn per epoch: the weights of the straight run
    (ea, wa), (eb, wb) = (_final_weights(c, straight_id) for straight_id in
                          (runs(tracking, "straight")[1][0].info.run_id, rid))
    assert ea == eb == 4
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
