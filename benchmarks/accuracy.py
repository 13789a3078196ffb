"""Train a zoo model on real data in one process and report test accuracy per epoch.

Default: Fashion-MNIST F400, IF neurons, T=5, V_th=2 (IDE paper: 90.04% mean after 100 epochs).
    python benchmarks/accuracy.py [--epochs 30] [--model f64c5 --data mnist --T 30]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from fsnn.platform.config import load_config
from fsnn.platform.data import DATASETS, load_dataset, make_loader
from fsnn.platform.trainer import (
    build_optimizer,
    build_scheduler,
    evaluate,
    model_from_config,
    train_epoch,
)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import table, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="f400")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--neuron", default="IF")
    ap.add_argument("--T", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--milestones", default="15,25", help="LR x0.1 at these epochs")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solver", default=None, help="IDE adjoint solver (default: the config's)")
    ap.add_argument("--out", default="benchmarks/results/accuracy.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"model={args.model}", f"neuron={args.neuron}", f"T={args.T}",
                             f"data.name={args.data}", f"train.epochs={args.epochs}",
                             f"optim.milestones=[{args.milestones}]", f"train.seed={args.seed}",
                             *([f"method.solver={args.solver}"] if args.solver else [])])
    torch.manual_seed(cfg.train.seed)
    info = DATASETS[cfg.data.name]
    xtr, ytr = load_dataset(cfg.data.name, "train", limit=args.train_limit)
    xte, yte = load_dataset(cfg.data.name, "test", limit=args.test_limit)
    train_loader = make_loader(xtr, ytr, cfg.data.batch_size, shuffle=True, seed=cfg.train.seed)
    test_loader = make_loader(xte, yte, cfg.data.test_batch_size, shuffle=False, seed=0)
    model = model_from_config(cfg, num_classes=info.num_classes, labels=list(info.classes))
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, len(train_loader))
    device = torch.device("cpu")
    rows = []
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        train_loader.set_epoch(epoch)
        tr = train_epoch(model, train_loader, opt, sched, device)
        te = evaluate(model, test_loader, device)
        rows.append({"epoch": epoch + 1, "train_loss": tr.loss, "train_acc": tr.accuracy,
                     "test_acc": te.accuracy, "epoch_s": tr.seconds,
                     "adjoint_iters": tr.adjoint.get("adjoint_iterations", 0.0),
                     "rate_h0": tr.rates.get("h0", 0.0)})
        print(table(rows[-1:], list(rows[-1])) if epoch == 0 else
              " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in rows[-1].values()),
              flush=True)
    total = time.perf_counter() - start
    best = max(r["test_acc"] for r in rows)
    print()
    print(table(rows, list(rows[0])))
    print(f"\n{cfg.model} {cfg.neuron} T={cfg.T} on {cfg.data.name}: final test accuracy "
          f"{rows[-1]['test_acc']:.4f}, best {best:.4f}, {cfg.train.epochs} epochs "
          f"in {total:.0f} s")
    write_json(args.out, {"config": cfg.model_dump(mode="json"), "epochs": rows,
                          "final_test_accuracy": rows[-1]["test_acc"], "best_test_accuracy": best,
                          "seconds": total, "train_samples": len(ytr), "test_samples": len(yte)})


if __name__ == "__main__":
    main()
