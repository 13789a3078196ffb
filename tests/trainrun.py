"""`fsnn train` as a user runs it (a subprocess with a real local Ray) and what it left in an
MLflow store: shared by the Ray training, resume and failure tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servers import RAY_TEST_ENV

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]
DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
SMALL = ["--set", "data.train_limit=1200", "--set", "data.test_limit=300",
         "--set", "data.batch_size=64", "--set", "T=4"]


def train(tmp: Path, uri: str, *extra: str, config: str | None = DEMO, timeout: int = 400,
          wait: bool = True, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess | subprocess.Popen:
    """``fsnn train [CONFIG] --tracking-uri URI --storage TMP/storage SMALL... EXTRA...``."""
    cmd = [*FSNN, "train", *([config] if config else []), "--tracking-uri", uri,
           "--storage", str(tmp / "storage"), *(SMALL if config else []), *extra]
    full_env = {**os.environ, **RAY_TEST_ENV, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def runs(uri: str, name: str | None = None) -> tuple[Any, list[Any]]:
    """The client and the runs of experiment fsnn (those named ``name``, if given)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("fsnn")
    if exp is None:
        return c, []
    flt = f"attributes.run_name = '{name}'" if name else ""
    return c, list(c.search_runs([exp.experiment_id], flt, max_results=1000))


def steps(c: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def wait_for_epochs(proc: subprocess.Popen, uri: str, name: str, epochs: int,
                    timeout: float = 300) -> str:
    """Wait until run ``name`` has logged ``epochs`` epochs; its run id."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            c, found = runs(uri, name)
        except Exception:
            found = []
        if found and len(steps(c, found[0].info.run_id, "test_accuracy")) >= epochs:
            return str(found[0].info.run_id)
        time.sleep(0.3)
    out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
    raise AssertionError(f"run {name} did not reach {epochs} epochs:\n{out[-3000:]}")
