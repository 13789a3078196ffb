"""Hardware in the loop: does fine-tuning with the target in the loop recover what deployment
lost, and what does a simulator forward cost?

1. Train F400 (IF, T=5) on Fashion-MNIST with the engine; evaluate its spec on the torch
   reference and on the targets: the SpiNNaker emulation as sPyNNaker runs it by default
   (16-bit weights, reset to v_reset, IF_trunc_delta) and with a neuron-model mismatch
   (IF_curr_delta with a short membrane time constant, ``--if-leak``).
2. Fine-tune copies for one pass over ``--tune-samples`` images: with the mismatched target in
   the loop (``forward: spinnaker-emulated``, a Ray actor) and, as the control, with the engine
   (same data, steps and learning rate). Evaluate both on the torch reference and the target.
3. Cost: seconds per training epoch on ``--cost-samples`` images with the forward on the engine,
   the torch backend, NEST (1 and 2 Ray actors) and the emulated board.

Prints a table and writes ``benchmarks/results/hil.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import torch
from common import table, write_json

from fsnn.backends.base import get_backend
from fsnn.pipelines.hil.pool import ForwardPool, attach
from fsnn.platform.config import Config, load_config
from fsnn.platform.data import load_dataset, make_loader
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import Network
from fsnn.platform.trainer import build_optimizer, build_scheduler, model_from_config, train_epoch

RESULTS = Path(__file__).parent / "results" / "hil.json"


def accuracy(net: Network, backend: str, options: dict[str, Any], x: torch.Tensor,
             y: torch.Tensor) -> float:
    b = get_backend(backend, **options)
    b.build(net)
    correct = 0
    for s in range(0, x.shape[0], 1000):
        correct += int((b.run(x[s:s + 1000]).logits.argmax(1) == y[s:s + 1000]).sum())
    b.close()
    return correct / x.shape[0]


def fine_tune(base: FeedbackSNN, cfg: Config, x: torch.Tensor, y: torch.Tensor,
              pool: ForwardPool | None, lr: float) -> tuple[FeedbackSNN, float]:
    model = copy.deepcopy(base)
    model.freeze_bn()
    for layer in [model.input_layer, *model.ring]:
        layer.dropout = 0.0
    if pool is not None:
        attach(model, pool)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = make_loader(x, y, cfg.data.batch_size, shuffle=True, seed=1)
    loader.set_epoch(0)
    start = time.perf_counter()
    train_epoch(model, loader, opt, None, torch.device("cpu"))
    seconds = time.perf_counter() - start
    model.set_rate_source(None)
    return model.eval(), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-limit", type=int, default=20000)
    ap.add_argument("--base-epochs", type=int, default=2)
    ap.add_argument("--tune-samples", type=int, default=5000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--if-leak", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--cost-samples", type=int, default=512)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    cfg = load_config(None, ["data.name=fashion-mnist", "T=5", "optim.schedule=constant",
                             f"train.epochs={args.base_epochs}"])
    xtr, ytr = load_dataset("fashion-mnist", "train", progress=False)
    xte, yte = load_dataset("fashion-mnist", "test", limit=args.test, progress=False)
    torch.manual_seed(0)
    base = model_from_config(cfg, num_classes=10)
    opt = build_optimizer(cfg, base)
    loader = make_loader(xtr[:args.train_limit], ytr[:args.train_limit], cfg.data.batch_size,
                         shuffle=True, seed=0)
    sched = build_scheduler(cfg, opt, len(loader))
    for epoch in range(args.base_epochs):
        loader.set_epoch(epoch)
        train_epoch(base, loader, opt, sched, torch.device("cpu"))
    base.eval()
    board = ("spinnaker-emulated", {})
    mismatch = ("spinnaker-emulated", {"if_model": "IF_curr_delta", "if_leak": args.if_leak})
    xt = xte.double()

    def row(name: str, model: FeedbackSNN, seconds: float | None = None) -> dict[str, Any]:
        net = model.to_network()
        out: dict[str, Any] = {"model": name,
                               "torch": accuracy(net, "torch", {}, xt, yte),
                               "board (default)": accuracy(net, *board, xt, yte),
                               "board (mismatch)": accuracy(net, *mismatch, xt, yte)}
        if seconds is not None:
            out["tune_s"] = seconds
        return out

    rows = [row("base (engine)", base)]
    tune_x = xtr[args.train_limit:args.train_limit + args.tune_samples]
    tune_y = ytr[args.train_limit:args.train_limit + args.tune_samples]
    pool = ForwardPool(mismatch[0], options=mismatch[1])
    hil, hil_s = fine_tune(base, cfg, tune_x, tune_y, pool, args.lr)
    pool.close()
    rows.append(row("fine-tuned, target in the loop", hil, hil_s))
    control, control_s = fine_tune(base, cfg, tune_x, tune_y, None, args.lr)
    rows.append(row("fine-tuned, engine (control)", control, control_s))
    lost = rows[0]["torch"] - rows[0]["board (mismatch)"]
    regained = rows[1]["board (mismatch)"] - rows[0]["board (mismatch)"]
    print(table(rows, ["model", "torch", "board (default)", "board (mismatch)", "tune_s"]))
    print(f"\nmismatch (IF_curr_delta, leak {args.if_leak}): lost {lost:.4f}, regained "
          f"{regained:.4f} in the loop ({regained / lost if lost > 0 else float('nan'):.2f} "
          f"of the loss); control regained "
          f"{rows[2]['board (mismatch)'] - rows[0]['board (mismatch)']:.4f}")

    cost = []
    cx, cy = xtr[:args.cost_samples], ytr[:args.cost_samples]
    for backend, workers, options in [("engine", 0, {}), ("torch", 1, {"dtype": torch.float32}),
                                      ("spinnaker-emulated", 1, {}), ("nest", 1, {}),
                                      ("nest", 2, {})]:
        pool = None if backend == "engine" else ForwardPool(backend, workers=workers,
                                                            options=options)
        _, seconds = fine_tune(base, cfg, cx, cy, pool, args.lr)
        stats = pool.take_stats() if pool is not None else None
        if pool is not None:
            pool.close()
        cost.append({"forward": backend, "workers": workers, "epoch_s": seconds,
                     "img_per_s": args.cost_samples / seconds,
                     "sim_s": stats.sim_seconds if stats else 0.0,
                     "push_s": stats.push_seconds if stats else 0.0,
                     "full_epoch_min": 60000 / (args.cost_samples / seconds) / 60})
    print()
    print(table(cost, ["forward", "workers", "epoch_s", "img_per_s", "sim_s", "push_s",
                       "full_epoch_min"]))
    write_json(args.out, {"args": vars(args), "accuracy": rows, "lost": lost,
                          "regained_in_loop": regained, "cost": cost})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
