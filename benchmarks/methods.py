"""The training methods side by side: Fashion-MNIST F400 (IF, V_th=2) at equal epochs for IDE,
SPIDE, DSR and TSBP with and without the reset's temporal term, over T.

    python benchmarks/methods.py [--epochs 1] [--train-limit 10000] [--T 5,30,100]
                                 [--methods ide,spide,dsr,tsbp,tsbp-noreset]

Per method and T: test accuracy, training time, and the training memory that depends on the
method: the MiB of tensors autograd saves for the backward pass of one step (batch 128), as in
benchmarks/throughput.py (on CUDA also the allocator's peak). BPTT's grows with T; the implicit
methods' does not. The papers' own numbers are printed beside where they exist for this setting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import saved_graph_mib, table, write_json

from fsnn.platform.config import load_config
from fsnn.platform.data import DATASETS, load_dataset, make_loader
from fsnn.platform.trainer import (
    build_optimizer,
    build_scheduler,
    evaluate,
    model_from_config,
    train_epoch,
)

CASES: dict[str, list[str]] = {
    "ide": ["method.name=ide"],
    "spide": ["method.name=spide"],
    "dsr": ["method.name=dsr"],
    "tsbp": ["method.name=tsbp", "method.reset_grad=true"],
    "tsbp-noreset": ["method.name=tsbp", "method.reset_grad=false"],
}
# What each paper reports for this setting (Fashion-MNIST, F400 feedback net).
PAPER = {
    "ide": "90.04% (IF, T=5, 100 epochs; arXiv 2109.14247)",
    "spide": "not checked here (arXiv 2302.00232)",
    "dsr": "no F-MNIST result (CIFAR, ImageNet, DVS-CIFAR10)",
    "tsbp": "no F-MNIST result (toy set, CIFAR-10)",
    "tsbp-noreset": "no F-MNIST result (toy set, CIFAR-10)",
}
STAT_KEYS = ("adjoint_iterations", "spide_residual", "spide_backward_rate", "dsr_vth_h0")


def run(case: str, T: int, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    extra = [f"method.backward_T={args.spide_backward_T}"] if case == "spide" else []
    cfg = load_config(None, ["model=f400", "neuron=IF", f"T={T}", "data.name=fashion-mnist",
                             f"train.epochs={args.epochs}", f"train.seed={args.seed}",
                             *CASES[case], *extra])
    device = torch.device(args.device)
    torch.manual_seed(cfg.train.seed)
    info = DATASETS[cfg.data.name]
    model = model_from_config(cfg, num_classes=info.num_classes).to(device)
    train = make_loader(*data["train"], cfg.data.batch_size, shuffle=True, seed=cfg.train.seed)
    test = make_loader(*data["test"], cfg.data.test_batch_size, shuffle=False, seed=0)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, len(train))
    train_s, stats = 0.0, {}
    for epoch in range(cfg.train.epochs):
        train.set_epoch(epoch)
        tr = train_epoch(model, train, opt, sched, device)
        train_s += tr.seconds
        stats = tr.adjoint
    te = evaluate(model, test, device)
    x, y = (t[: cfg.data.batch_size].clone().to(device) for t in data["train"])  # own storage

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    graph = saved_graph_mib(step)
    row: dict[str, Any] = {
        "method": case, "T": T, "epochs": cfg.train.epochs, "test_acc": te.accuracy,
        "train_loss": tr.loss, "train_s": train_s,
        "img_per_s": tr.samples * cfg.train.epochs / max(train_s, 1e-9), "graph_mib": graph,
        "rate_h0": tr.rates.get("h0", 0.0),
    }
    if device.type == "cuda":
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    row.update({k: stats[k] for k in STAT_KEYS if k in stats})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(CASES))
    ap.add_argument("--T", default="5,30,100")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--spide-backward-T", type=int, default=250)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/methods.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.methods.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known: {', '.join(CASES)}")
    data = {"train": load_dataset("fashion-mnist", "train", limit=args.train_limit),
            "test": load_dataset("fashion-mnist", "test", limit=args.test_limit)}
    rows = []
    start = time.perf_counter()
    for T in (int(t) for t in args.T.split(",")):
        for case in cases:
            rows.append(run(case, T, args, data))
            print(table(rows[-1:], list(rows[-1])), flush=True)
    columns = ["method", "T", "test_acc", "train_s", "img_per_s", "graph_mib", "rate_h0"]
    print()
    print(table(rows, columns))
    print("\ngraph memory T=max / T=min:")
    for case in cases:
        mine = {r["T"]: r["graph_mib"] for r in rows if r["method"] == case}
        lo, hi = min(mine), max(mine)
        print(f"  {case}: {mine[hi] / max(mine[lo], 1e-9):.2f}x  ({mine[lo]:.1f} -> "
              f"{mine[hi]:.1f} MiB)")
    print("\npapers (Fashion-MNIST F400):")
    for case in cases:
        print(f"  {case}: {PAPER[case]}")
    write_json(args.out, {"args": vars(args), "rows": rows, "paper": PAPER,
                          "seconds": time.perf_counter() - start,
                          "train_samples": len(data["train"][1]),
                          "test_samples": len(data["test"][1])})


if __name__ == "__main__":
    main()
