"""Ray Train scaling: images/s of `fsnn train` with 1 vs 2 workers (CPU here; GPUs with --gpu).

    python benchmarks/scaling.py [--workers 1,2] [--train-limit 12000] [--gpu]

Each configuration is a real `fsnn train` run (local Ray, a throw-away MLflow store); images/s
is the throughput of the last epoch as logged. Efficiency = images/s(N) / (N x images/s(1)); the
DDP overhead is 1 - efficiency.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, args: argparse.Namespace) -> dict[str, float | int]:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "fsnn.pipelines.cli", "train", str(ROOT / args.config),
               "--num-workers", str(workers), "--storage", f"{d}/runs",
               "--tracking-uri", f"sqlite:///{d}/mlflow.db",
               "--set", f"train.epochs={args.epochs}",
               "--set", f"data.train_limit={args.train_limit}", "--set", "data.test_limit=500"]
        if args.gpu:
            cmd.append("--gpu")
        subprocess.run(cmd, check=True, capture_output=True, cwd=d)
        c = MlflowClient(f"sqlite:///{d}/mlflow.db")
        run_ = c.search_runs([c.get_experiment_by_name("fsnn").experiment_id])[0]
        hist = c.get_metric_history(run_.info.run_id, "images_per_s")
        return {"workers": workers, "images_per_s": max(hist, key=lambda m: m.step).value,
                "epoch_s": run_.data.metrics["epoch_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/scaling.json")
    args = ap.parse_args()
    rows = [run(int(w), args) for w in args.workers.split(",")]
    base = rows[0]["images_per_s"]
    for r in rows:
        r["efficiency"] = r["images_per_s"] / (int(r["workers"]) * float(base))
        r["ddp_overhead"] = 1 - float(r["efficiency"])
    print(table(rows, list(rows[0])))
    write_json(args.out, {"config": args.config, "gpu": args.gpu, "rows": rows})


if __name__ == "__main__":
    main()
