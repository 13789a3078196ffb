"""Accuracy gap between the float reference and what a SpiNNaker board computes (emulated).

Trains Fashion-MNIST F400 (IF, T=5, V_th=2; the defaults of ``fsnn train``) for a few epochs in
this process on the real data, exports the spec, and evaluates the test set with

* ``torch``: the float64 reference in deployment timing;
* ``spinnaker-emulated`` with each source of mismatch on its own and together: fixed-point
  weights/currents/membrane (``quantize``), the board's neuron (``IF_trunc_delta``: reset to
  v_reset instead of subtracting v_th, membrane floored at v_reset), and the alternative
  ``IF_curr_delta`` mapping of an IF neuron (leak 1 - 2**-8, no floor).

It reports accuracy, prediction agreement with the reference and the fraction of spike counts
that differ, for the trained T and for longer deployments (``--deploy-T``).

    python benchmarks/spinnaker_gap.py [--epochs 2] [--deploy-T 5,10,30]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from fsnn.backends.spinnaker.emulation import SpinnakerEmulatedBackend
from fsnn.backends.spinnaker.plan import plan_scales
from fsnn.backends.torch_backend import TorchBackend
from fsnn.platform.config import load_config
from fsnn.platform.data import DATASETS, load_dataset, make_loader
from fsnn.platform.spec import Network
from fsnn.platform.trainer import (
    build_optimizer,
    build_scheduler,
    evaluate,
    model_from_config,
    train_epoch,
)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import table, write_json

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("ideal (no fixed point, spec neuron)", {"quantize": False, "neuron": "spec"}),
    ("fixed point only", {"quantize": True, "neuron": "spec"}),
    ("board neuron only (IF_trunc_delta)", {"quantize": False, "neuron": "board"}),
    ("board: fixed point + IF_trunc_delta", {"quantize": True, "neuron": "board"}),
    ("board: fixed point + IF_curr_delta", {"quantize": True, "neuron": "board",
                                            "if_model": "IF_curr_delta"}),
]
COLUMNS = ["T", "engine", "accuracy", "gap", "agree_pred", "counts_differ", "spikes_per_sample",
           "run_s"]


def train(epochs: int, train_limit: int | None, seed: int) -> tuple[Network, float]:
    cfg = load_config(None, ["model=f400", "data.name=fashion-mnist",
                             f"train.epochs={epochs}", f"train.seed={seed}"])
    torch.manual_seed(seed)
    info = DATASETS[cfg.data.name]
    xtr, ytr = load_dataset(cfg.data.name, "train", limit=train_limit, progress=False)
    xte, yte = load_dataset(cfg.data.name, "test", progress=False)
    loader = make_loader(xtr, ytr, cfg.data.batch_size, shuffle=True, seed=seed)
    model = model_from_config(cfg, num_classes=info.num_classes, labels=list(info.classes))
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, len(loader))
    device = torch.device("cpu")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        stats = train_epoch(model, loader, opt, sched, device)
        print(f"epoch {epoch + 1}: loss {stats.loss:.4f}, train accuracy {stats.accuracy:.4f}",
              flush=True)
    ide = evaluate(model, make_loader(xte, yte, 500, shuffle=False, seed=0), device).accuracy
    return model.eval().to_network(), ide


def run(backend: Any, net: Network, x: torch.Tensor, batch: int = 1000
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    backend.build(net)
    preds, counts, start = [], [], time.perf_counter()
    for lo in range(0, x.shape[0], batch):
        r = backend.run(x[lo:lo + batch])
        preds.append(r.logits.argmax(1))
        counts.append(torch.cat([c.flatten(1) for c in r.counts.values()], 1))
    backend.close()
    return torch.cat(preds), {"all": torch.cat(counts)}, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--deploy-T", default="5,10,30")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/spinnaker_gap.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    net, ide_acc = train(args.epochs, args.train_limit, args.seed)
    train_s = time.perf_counter() - t0
    x, y = load_dataset("fashion-mnist", "test", limit=args.test_limit, progress=False)
    x = x.to(torch.float64)
    scales = {k: {"max_summed_weight": list(v.max_weight), "shift": list(v.shift),
                  "weight_lsb": [1 / s for s in v.scale]} for k, v in plan_scales(net).items()}
    rows = []
    for T in [int(t) for t in args.deploy_T.split(",")]:
        spec = net.with_T(T)
        ref_pred, ref_counts, ref_s = run(TorchBackend(), spec, x)
        ref_acc = float((ref_pred == y).double().mean())
        rows.append({"T": T, "engine": "torch reference (float64)", "accuracy": ref_acc,
                     "gap": 0.0, "agree_pred": 1.0, "counts_differ": 0.0,
                     "spikes_per_sample": float(ref_counts["all"].sum(1).mean()),
                     "run_s": ref_s})
        for label, opts in VARIANTS:
            pred, counts, secs = run(SpinnakerEmulatedBackend(**opts), spec, x)
            acc = float((pred == y).double().mean())
            rows.append({"T": T, "engine": label, "accuracy": acc, "gap": ref_acc - acc,
                         "agree_pred": float((pred == ref_pred).double().mean()),
                         "counts_differ": float((counts["all"] != ref_counts["all"])
                                                .double().mean()),
                         "spikes_per_sample": float(counts["all"].sum(1).mean()),
                         "run_s": secs})
        print(table([r for r in rows if r["T"] == T], COLUMNS), flush=True)
    print()
    print(table(rows, COLUMNS))
    print(f"\nF400 IF T=5 V_th=2 after {args.epochs} epochs (IDE-timing test accuracy "
          f"{ide_acc:.4f}); weight scaling per population: {scales}")
    write_json(args.out, {"model": "f400", "dataset": "fashion-mnist", "epochs": args.epochs,
                          "train_s": train_s, "ide_test_accuracy": ide_acc,
                          "test_samples": int(y.numel()), "scales": scales, "rows": rows})


if __name__ == "__main__":
    main()
