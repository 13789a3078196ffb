"""The prepared GPU session script runs end to end (shrunk, on the CPU) and writes its results.

A GPU is lent to this project only now and then, for minutes: the script must work the first
time it runs there. Here every part runs with tiny settings; CUDA graphs fall back to the eager
run and the GPU energy is absent with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"graph_check.json", "throughput_f64c5.json", "throughput_alexnet.json",
         "throughput_t100.json", "throughput_if.json", "speed_accuracy.json", "energy_check.json"}


def test_gpu_session_script_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PY": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert ": exit " not in log, log[-3000:]  # no part failed or ran out of time
    written = {p.name for p in out.iterdir()}
    assert written >= PARTS, sorted(written)
    assert "\ndone " in (out / "session.log").read_text()  # the last line: "done HH:MM:SS"

    checks = json.loads((out / "graph_check.json").read_text())["rows"]
    assert [r["variant"] for r in checks] == ["graphs", "graphs+bf16", "eager+bf16",
                                              "eager+fu", "graphs+fu", "graphs+cl"]
    assert checks[0]["logits_equal"] and checks[0]["grads_equal"]  # eager fallback off CUDA
    for same in checks[3:]:  # the compiled step, NHWC: the same spikes but for threshold ties
        assert same["logits_max_diff"] < 1e-3 and same["grad_rel_diff"] < 1e-3, same
    for name in ("throughput_f64c5.json", "throughput_alexnet.json"):
        rows = json.loads((out / name).read_text())["rows"]
        assert [r["variant"] for r in rows] == ["eager+br", "graphs+fu", "graphs+bf16+fu",
                                                "graphs+fu+cl", "eager"]
        assert all(r["train_img_s"] > 0 and r["eval_img_s"] > 0 for r in rows)
    accuracy = json.loads((out / "speed_accuracy.json").read_text())
    assert not accuracy["failed"]
    assert len(accuracy["summary"]) == 4  # three variants and a second seed of the first
    energy = json.loads((out / "energy_check.json").read_text())
    assert "energy/gpu_j" in energy["absent"] and "counter_gpu_j" not in energy["result"]


def test_only_runs_the_parts_it_names(tmp_path: Path) -> None:
    """ONLY="a b": the rest of a session after a part that failed or ran out of time."""
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PY": sys.executable,
           "ONLY": "throughput-if energy"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    written = {p.name for p in out.iterdir()}
    assert written == {"session.log", "throughput_if.json", "energy_check.json"}, written
