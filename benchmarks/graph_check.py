"""CUDA-graph replay against the eager simulation, on the GPU (CI has none; run it where one is).

    python benchmarks/graph_check.py [--models f400,f64c5,f64c5_nmnist,alexnet_f] [--T 30]

For each model: evaluation logits and one IDE training step's gradients, eager and with
``set_speed(cuda_graphs=True)`` from the same weights and batch, the same with bfloat16 spikes,
with the compiled neuron step (``fused_step``, eager and in graphs) and with channels-last
state (``channels_last``). Prints the largest
differences and whether the graphs stayed on (a replay that disagreed with the eager run
switches them off, with the reason).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json


def step(model: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for p in model.parameters()]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return logits, grads


def check(name: str, T: int, batch: int, device: torch.device) -> list[dict[str, Any]]:
    from fsnn.platform.spec import Neuron
    from fsnn.platform.zoo import ZOO, build_model

    torch.manual_seed(0)
    base = build_model(name, T=T, neuron=Neuron("LIF", v_th=2.0, leak=0.95),
                       dropout=0.0).to(device)
    entry = ZOO[name]
    shape = entry.input_shape
    x = (torch.rand(batch, T, *shape, device=device) < 0.3).float() \
        if entry.input_kind == "spikes" else torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    eager = copy.deepcopy(base)
    step(eager, x, y)  # each variant takes two steps: the second replays the captured graphs
    ref_logits, ref_grads = step(eager, x, y)
    rows = []
    for variant, kw in (("graphs", {"cuda_graphs": True}),
                        ("graphs+bf16", {"cuda_graphs": True, "spike_dtype": torch.bfloat16}),
                        ("eager+bf16", {"spike_dtype": torch.bfloat16}),
                        ("eager+fu", {"fused_step": True}),
                        ("graphs+fu", {"cuda_graphs": True, "fused_step": True}),
                        ("graphs+cl", {"cuda_graphs": True, "channels_last": True})):
        model = copy.deepcopy(base).set_speed(**kw)
        step(model, x, y)
        logits, grads = step(model, x, y)
        stats = model.graphs.stats if model.graphs is not None else None
        rows.append({
            "model": name, "T": T, "variant": variant,
            "logits_equal": bool(torch.equal(logits, ref_logits)),
            "logits_max_diff": float((logits - ref_logits).abs().max()),
            "grads_equal": all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True)),
            "grad_rel_diff": float(torch.cat([(a - b).flatten() for a, b in
                                              zip(grads, ref_grads, strict=True)]).norm()
                                   / torch.cat([b.flatten() for b in ref_grads]).norm()),
            "graphs": "-" if stats is None else stats.disabled or
            f"{stats.captures} captured, {stats.replays} replays",
        })
        print(table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="f400,f64c5,f64c5_nmnist,alexnet_f")
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/graph_check.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda":
        print("no CUDA device: graphs fall back to the eager run here (this checks the rest)")
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += check(name, args.T, args.batch, device)
    print()
    print(table(rows, list(rows[0])))
    write_json(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
