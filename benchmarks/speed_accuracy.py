"""Do the speed-ups change what training learns? The same short real-data run, with and without.

    python benchmarks/speed_accuracy.py [--variants eager+br,graphs,graphs+bf16] [--epochs 2]
        [--model f64c5] [--data mnist] [--T 30] [--train-limit 20000]

Every variant starts from the same seed (same initial weights, same batches, same dropout
masks) and trains through the project's own config, loaders and training loop; per epoch it
records train loss, test accuracy and images per second. The curves should agree within noise:
the table prints each variant's largest test-accuracy difference from the first one. For scale,
``--seeds 2`` also runs the first variant with another seed (the noise between two seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json

SETTINGS = {"eager": ["train.cuda_graphs=false"], "graphs": ["train.cuda_graphs=true"],
            "bf16": ["train.spike_dtype=bfloat16"], "fp": ["method.solver=fixed_point"],
            "aa": ["method.solver=anderson"], "br": ["method.solver=broyden"],
            "fu": ["train.fused_step=true"], "cl": ["train.channels_last=true"]}


def overrides_for(variant: str) -> list[str]:
    out = ["train.cuda_graphs=false", "train.fused_step=false"]  # each part turns one on
    for part in variant.split("+"):
        if part[:1] == "c" and part[1:].isdigit():  # c<N>: method.check_every=N
            out.append(f"method.check_every={part[1:]}")
        elif part[:1] == "m" and part[1:].isdigit():  # m<N>: method.memory=N
            out.append(f"method.memory={part[1:]}")
        elif part in SETTINGS:
            out += SETTINGS[part]
        else:
            raise SystemExit(f"--variants: unknown part {part!r}; known: {', '.join(SETTINGS)}, "
                             "c<N> (adjoint residual read every N iterations), "
                             "m<N> (solver memory)")
    return out


def run(args: argparse.Namespace, variant: str, seed: int) -> list[dict[str, Any]]:
    from fsnn.pipelines.train.recipe import build_training
    from fsnn.platform.config import load_config
    from fsnn.platform.trainer import evaluate, train_epoch

    cfg = load_config(None, [
        f"model={args.model}", f"data.name={args.data}", f"neuron={args.neuron}", f"T={args.T}",
        f"data.train_limit={args.train_limit}", f"data.test_limit={args.test_limit}",
        f"data.batch_size={args.batch}", f"train.epochs={args.epochs}", f"train.seed={seed}",
        "optim.schedule=constant", *overrides_for(variant)])
    torch.manual_seed(seed)
    t = build_training(cfg)
    device = torch.device(args.device)
    model = t.model.to(device)
    rows = []
    for epoch in range(args.epochs):
        tr = train_epoch(model, t.train_loader, t.optimizer, t.scheduler, device)
        te = evaluate(model, t.test_loader, device)
        rows.append({"variant": variant, "seed": seed, "epoch": epoch + 1,
                     "train_loss": tr.loss, "train_accuracy": tr.accuracy,
                     "test_accuracy": te.accuracy, "train_img_s": tr.samples / tr.seconds,
                     "eval_img_s": te.samples / te.seconds,
                     "adjoint_iters": tr.adjoint.get("adjoint_iterations", 0.0)})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    if model.graphs is not None:
        s = model.graphs.stats
        print(f"{variant}: graphs {s.captures} captured, {s.replays} replays, {s.eager} eager"
              + (f", off: {s.disabled}" if s.disabled else ""), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="eager+br,graphs,graphs+bf16")
    ap.add_argument("--model", default="f64c5")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--neuron", default="LIF")
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-limit", type=int, default=20000)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=1, help="2: also the first variant, seed 1")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/speed_accuracy.json")
    args = ap.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        overrides_for(v)  # unknown names fail before any work
    rows: list[dict[str, Any]] = []
    runs = [(v, 0) for v in variants] + ([(variants[0], 1)] if args.seeds > 1 else [])
    failed: dict[str, str] = {}
    for variant, seed in runs:
        try:
            rows += run(args, variant, seed)
        except Exception as exc:  # one variant failing (e.g. no compiler) must not lose the rest
            failed[f"{variant} seed {seed}"] = f"{exc.__class__.__name__}: {exc}"
            print(f"{variant} seed {seed}: failed: {failed[f'{variant} seed {seed}']}",
                  flush=True)
        write_json(args.out, {"args": vars(args), "rows": rows, "failed": failed})
    if not rows:
        raise SystemExit("every variant failed")
    first = {r["epoch"]: r["test_accuracy"] for r in rows
             if r["variant"] == variants[0] and r["seed"] == 0}
    summary = []
    for variant, seed in runs:
        mine = [r for r in rows if r["variant"] == variant and r["seed"] == seed]
        if not mine or not first:
            continue
        summary.append({"variant": variant, "seed": seed,
                        "final_test_accuracy": mine[-1]["test_accuracy"],
                        "max_abs_diff_vs_first": max(abs(r["test_accuracy"] - first[r["epoch"]])
                                                     for r in mine),
                        "train_img_s": sum(r["train_img_s"] for r in mine) / len(mine),
                        "eval_img_s": sum(r["eval_img_s"] for r in mine) / len(mine)})
    print()
    print(table(rows, list(rows[0])))
    print()
    print(table(summary, list(summary[0])))
    write_json(args.out, {"args": vars(args), "rows": rows, "summary": summary,
                          "failed": failed})


if __name__ == "__main__":
    main()
