"""benchmarks/memory.py runs and measures something real (a tiny model, on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_memory_benchmark_measures_each_variant(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"),
                           "--models", "f64c5", "--T", "5", "--batch", "64",
                           "--variants", "aa+m2,br", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["aa+m2", "br"]
    for r in rows:
        # the step holds at least the state's rates and one solver iterate beyond its start
        assert r["backward_peak_mib"] > 2 * r["state_mib"] > 0, r
        assert r["adjoint_iters"] > 0 and 0 < r["vs_anchor"] < 1
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"),
                          "--variants", "aa+x"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert bad.returncode != 0 and "unknown part 'x'" in bad.stderr
