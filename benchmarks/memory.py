"""Peak training memory of one IDE step, forward and backward apart, per adjoint-solver variant.

    python benchmarks/memory.py [--models f64c5,alexnet_f] [--T 30] [--batch 128]
        [--variants aa,aa+m3,aa+m5,br]

Variants: ``aa`` / ``br`` / ``fp`` (Anderson, Broyden, fixed point), ``+m<N>`` (the solver's
memory: Anderson's window, Broyden's pairs). Each runs in a fresh subprocess. On CUDA the
numbers are torch's allocator peaks (``max_memory_allocated``) above what is allocated before the
step. On a CPU, where torch keeps no allocator statistics, they are the process's peak resident
memory (VmHWM, reset through /proc/self/clear_refs) above its resident memory before the step,
with glibc told to serve every allocation above 128 KiB by mmap (``MALLOC_MMAP_THRESHOLD_``), so
that a freed tensor leaves the resident set at once: a close estimate of the tensors alive at the
peak (it also counts a convolution's scratch buffers). The IDE paper's official code on an H100:
F64C5 579 MiB, AlexNet-F 1,396 MiB (total allocated, T=30, batch 128).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import checked_variants, run_one, table, write_json

ANCHOR_MIB = {"f64c5": 579.0, "alexnet_f": 1396.0}
SOLVERS = {"aa": "anderson", "br": "broyden", "fp": "fixed_point"}


def _parse(variant: str) -> tuple[str, int | None]:
    solver, memory = None, None
    for part in variant.split("+"):
        if part in SOLVERS:
            solver = SOLVERS[part]
        elif part[:1] == "m" and part[1:].isdigit():
            memory = int(part[1:])
        else:
            raise ValueError(f"--variants: unknown part {part!r} in {variant!r}; known: "
                             f"{', '.join(SOLVERS)}, m<N>")
    if solver is None:
        raise ValueError(f"--variants: {variant!r} names no solver ({', '.join(SOLVERS)})")
    return solver, memory


class _Meter:
    """Peak memory above a baseline: the allocator's on CUDA, the resident set's on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM"))
        return int(line.split()[1]) / 1024


def measure(model: str, T: int, batch: int, variant: str, device: str) -> dict[str, Any]:
    from fsnn.platform.ide import AdjointConfig
    from fsnn.platform.spec import Neuron
    from fsnn.platform.zoo import ZOO, build_model

    solver, memory = _parse(variant)
    dev = torch.device(device)
    torch.manual_seed(0)
    net = build_model(model, T=T, neuron=Neuron("LIF", v_th=2.0,
                                                leak=0.99 if model == "alexnet_f" else 0.95),
                      adjoint=AdjointConfig(solver, memory=memory)).to(dev)
    x = torch.randn(batch, *ZOO[model].input_shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    meter = _Meter(dev)
    net.train()
    rows = []
    for _ in range(2):  # the first step creates the optimiser's state; the second is measured
        base = meter.now()
        meter.reset_peak()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        forward = meter.peak() - base
        held = meter.now() - base
        meter.reset_peak()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        backward = meter.peak() - base
        del loss
        opt.step()
        rows.append((forward, held, backward))
    forward, held, backward = rows[-1]
    state = sum(torch.Size(s).numel() for s in net.shapes) * batch * 4 / 2**20
    params = sum(p.numel() for p in net.parameters()) * 4 / 2**20
    return {"model": model, "T": T, "batch": batch, "variant": variant, "device": device,
            "state_mib": state, "params_mib": params, "forward_peak_mib": forward,
            "held_after_forward_mib": held, "backward_peak_mib": backward,
            "adjoint_iters": net.adjoint_log.summary().get("adjoint_iterations", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="f64c5,alexnet_f")
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--variants", default="aa,aa+m3,aa+m5,br")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/memory.json")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    variants = checked_variants(ap, args.variants, _parse)
    if args.one:
        model, variant = args.one.split(":")
        print(json.dumps(measure(model, args.T, args.batch, variant, args.device)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        for variant in variants:
            row = run_one(__file__, ["--one", f"{model}:{variant}", "--T", str(args.T),
                                     "--batch", str(args.batch), "--device", args.device],
                          f"{model} {variant}", env)
            if row is None:
                continue
            # plus weights and momentum (allocated before the step; gradients are in the peak)
            peak = max(row["forward_peak_mib"], row["backward_peak_mib"]) + 2 * row["params_mib"]
            row["step_peak_mib"] = peak
            if model in ANCHOR_MIB:
                row["vs_anchor"] = peak / ANCHOR_MIB[model]
            rows.append(row)
            print(table(rows[-1:], list(rows[-1])), flush=True)
            write_json(args.out, {"rows": rows, "anchor_mib": ANCHOR_MIB})
    if not rows:
        sys.exit("no configuration ran")
    print()
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
