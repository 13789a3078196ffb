"""Training and evaluation throughput (images/s) and peak memory of zoo models, random data.

    python benchmarks/throughput.py [--models f64c5,alexnet_f] [--T 30,100] [--batch 128]
        [--variants eager+br,eager,graphs,graphs+bf16]

Variants, measured side by side in one run: ``eager`` (the time loop launched op by op),
``graphs`` (the loop replayed as a CUDA graph: ``train.cuda_graphs``), ``+bf16`` (spikes
multiplied in bfloat16: ``train.spike_dtype``), ``+cl`` (channels-last state, weights and inputs:
``train.channels_last``),
``+m4`` (Broyden keeps 4 update pairs / Anderson mixes 4: ``method.memory``), ``+br``, ``+fp``,
``+aa`` (the adjoint solver, ``method.solver``: Broyden as in the IDE paper, fixed point,
Anderson; without one, the default: Anderson), ``+c4`` (the adjoint residual read on the host
every 4 iterations instead of after each: ``method.check_every``), ``+fu`` (each population's
neuron update compiled into one kernel: ``train.fused_step``; its compile time is outside the
timed steps, after the warm-up).

Each configuration runs in a fresh subprocess. Peak memory: on CUDA the peak of torch's
allocator over the training steps (also the peak it reserved from the driver, which includes
CUDA graphs' private memory pools); on CPU (no allocator statistics) the bytes of tensors that
autograd saves for the backward pass of one step — the part of training memory that would grow
with T under backpropagation through time.
The IDE paper's official code on an H100 (fp32, batch 128) is the anchor: MNIST F64C5 LIF T=30
802 train img/s (579 MiB), 16,116 eval img/s; AlexNet-F LIF T=30 506 train img/s (1,396 MiB),
2,711 eval img/s; AlexNet-F LIF T=100 333 train img/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import checked_variants, run_one, saved_graph_mib, table, write_json

ANCHOR = {("f64c5", 30): (802, 579, 16116), ("alexnet_f", 30): (506, 1396, 2711),
          ("alexnet_f", 100): (333, 1396, 987)}
SHAPES = {"f64c5": (1, 28, 28), "f400": (1, 28, 28), "alexnet_f": (3, 32, 32),
          "cifarnet_f": (3, 32, 32)}


PARTS = ("eager", "graphs", "bf16", "cl", "br", "fp", "aa", "fu")
NUMBERED = {"m": "solver memory", "c": "adjoint residual read every N iterations"}


def variant_parts(variant: str) -> list[str]:
    parts = variant.split("+")
    for part in parts:
        if part not in PARTS and not (part[:1] in NUMBERED and part[1:].isdigit()):
            raise ValueError(f"--variants: unknown part {part!r} in {variant!r}; known: "
                             f"{', '.join(PARTS)}, " + ", ".join(
                                 f"{k}<N> ({v})" for k, v in NUMBERED.items()))
    return parts


def numbered(parts: list[str], letter: str) -> int | None:
    """The N of part ``<letter>N`` (e.g. ``c4``), if the variant has one."""
    return next((int(p[1:]) for p in parts if p[:1] == letter and p[1:].isdigit()), None)


def measure(model_name: str, T: int, batch: int, iters: int, device: str,
            neuron: str, variant: str = "eager") -> dict[str, float | str | int]:
    import torch.nn.functional as F

    from fsnn.platform.spec import Neuron
    from fsnn.platform.zoo import build_model

    dev = torch.device(device)
    n = Neuron("LIF", v_th=2.0, leak=0.95 if model_name != "alexnet_f" else 0.99) \
        if neuron == "LIF" else Neuron("IF", v_th=2.0)
    from fsnn.platform.ide import AdjointConfig

    parts = variant_parts(variant)
    solver = {"br": "broyden", "fp": "fixed_point", "aa": "anderson"}
    adjoint = AdjointConfig(next((solver[p] for p in parts if p in solver),
                                 AdjointConfig().method), memory=numbered(parts, "m"),
                            check_every=numbered(parts, "c") or 1)
    model = build_model(model_name, T=T, neuron=n, adjoint=adjoint).to(dev)
    model.set_speed(cuda_graphs="graphs" in parts,
                    spike_dtype=torch.bfloat16 if "bf16" in parts else None,
                    fused_step="fu" in parts, channels_last="cl" in parts)
    x = torch.randn(batch, *SHAPES[model_name], device=dev)
    if "cl" in parts:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    step()  # warm-up
    sync()
    graph = saved_graph_mib(step)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    train_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else graph
    # reserved: what the process holds from the driver, CUDA graphs' private pools included
    reserved = torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda" else None
    model.eval()
    with torch.no_grad():
        model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync()
        eval_s = time.perf_counter() - t0
    graphs = model.graphs.stats if model.graphs is not None else None
    return {"model": model_name, "neuron": neuron, "T": T, "variant": variant, "batch": batch,
            "device": device,
            "graphs": "-" if graphs is None else
            f"off: {graphs.disabled}" if graphs.disabled else
            f"{graphs.captures} captured, {graphs.replays} replays" if graphs.captures else
            "eager (no CUDA)",
            "train_img_s": batch * iters / train_s, "eval_img_s": batch * iters / eval_s,
            "train_peak_mib": peak, "train_reserved_mib": reserved or "-", "graph_mib": graph,
            "adjoint_iters": model.adjoint_log.summary().get("adjoint_iterations", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="f64c5,alexnet_f")
    ap.add_argument("--T", default="30,100")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--neuron", default="LIF")
    ap.add_argument("--variants", default="eager+br,eager,graphs,graphs+bf16",
                    help=f"comma-separated; each joins parts with +: {', '.join(PARTS)}, "
                    + ", ".join(f"{k}<N>" for k in NUMBERED))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    variants = checked_variants(ap, args.variants, variant_parts)
    if args.one:
        model_name, T, variant = args.one.split(":")
        print(json.dumps(measure(model_name, int(T), args.batch, args.iters, args.device,
                                 args.neuron, variant)))
        return
    rows = []
    for model_name in args.models.split(","):
        for T in (int(t) for t in args.T.split(",")):
            for variant in variants:
                row = run_one(__file__, ["--one", f"{model_name}:{T}:{variant}", "--batch",
                                         str(args.batch), "--iters", str(args.iters), "--device",
                                         args.device, "--neuron", args.neuron, "--variants",
                                         variant], f"{model_name} T={T} {variant}")
                if row is None:
                    continue
                anchor = ANCHOR.get((model_name, T))
                if anchor and args.device == "cuda":
                    row["train_vs_anchor"] = row["train_img_s"] / anchor[0]
                    row["eval_vs_anchor"] = row["eval_img_s"] / anchor[2]
                    row["peak_vs_anchor"] = row["train_peak_mib"] / anchor[1]
                base = next((r for r in rows if (r["model"], r["T"]) == (model_name, T)), None)
                if base is not None:
                    row["train_vs_first"] = row["train_img_s"] / base["train_img_s"]
                    row["eval_vs_first"] = row["eval_img_s"] / base["eval_img_s"]
                rows.append(row)
                print(table(rows[-1:], list(rows[-1])), flush=True)
                write_json(args.out, {"rows": rows, "anchor_h100": {
                    f"{k[0]}@T{k[1]}": v for k, v in ANCHOR.items()}})
    for m in args.models.split(","):
        for variant in variants:
            mine = {r["T"]: r["train_peak_mib"] for r in rows
                    if r["model"] == m and r["variant"] == variant}
            if 30 in mine and 100 in mine and mine[30] > 0:
                print(f"{m} {variant}: training peak memory T=100 / T=30 = "
                      f"{mine[100] / mine[30]:.2f}")
    if not rows:
        sys.exit("no configuration ran")
    print()
    columns = ["model", "neuron", "T", "variant", "train_img_s", "eval_img_s", "train_peak_mib",
               "train_reserved_mib",
               "train_vs_anchor", "eval_vs_anchor", "peak_vs_anchor", "train_vs_first",
               "eval_vs_first", "adjoint_iters", "graphs"]
    print(table(rows, [c for c in columns if any(c in r for r in rows)]))


if __name__ == "__main__":
    main()
