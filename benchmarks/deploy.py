"""Deployment throughput: the NEST backend (1 and 2 Ray workers) against the torch backend.

For each zoo model (untrained weights; real test images): build time, samples/s and synaptic
events/s. NEST runs in Ray tasks, each its own process and so its own NEST kernel, on an equal
share of the samples; samples/s counts the simulation only (the slowest worker's run time), and
the efficiency of 2 workers is samples/s(2) / (2 * samples/s(1)). The torch backend (float64,
deployment timing, the parity reference) runs in this process on all cores. The NEST spike
counts are compared with torch's for every neuron and sample ("parity").

    python benchmarks/deploy.py [--models f400,f64c5] [--f400-samples 1000] [--f64c5-samples 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from fsnn.backends.base import BatchResult, fan_out
from fsnn.backends.torch_backend import TorchBackend
from fsnn.platform.data import load_dataset
from fsnn.platform.spec import Network
from fsnn.platform.zoo import build_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import table, write_json

MODELS = {"f400": ("fashion-mnist", 5), "f64c5": ("mnist", 30)}
COLUMNS = ["model", "backend", "workers", "samples", "T", "neurons", "synapses", "build_s",
           "run_s", "samples_per_s", "events_per_s", "spikes_per_sample", "efficiency",
           "parity"]


def nest_shard(net: Network, x: torch.Tensor, batch: int) -> dict[str, Any]:
    """One worker: build NEST, run its samples in batches, return timings and counts."""
    from fsnn.backends.nest.backend import NestBackend

    backend = NestBackend()
    backend.build(net)
    backend.run(x[:1])  # warm-up: the first run imports what torch's autograd needs (~0.6 s)
    results = []
    start = time.perf_counter()
    for lo in range(0, x.shape[0], batch):
        results.append(backend.run(x[lo:lo + batch]))
    run_s = time.perf_counter() - start
    out = {"build_s": backend.build_time, "run_s": run_s, "synapses": backend.synapse_count,
           "counts": merge(results).counts,
           "events": float(torch.cat([r.synaptic_events for r in results]).sum())}
    backend.close()
    return out


def merge(results: list[BatchResult]) -> BatchResult:
    first = results[0]
    return BatchResult(counts={k: torch.cat([r.counts[k] for r in results]) for k in first.counts},
                       rates={k: torch.cat([r.rates[k] for r in results]) for k in first.rates},
                       logits=torch.cat([r.logits for r in results]),
                       synaptic_events=torch.cat([r.synaptic_events for r in results]),
                       wall_time=sum(r.wall_time for r in results))


def torch_row(name: str, net: Network, x: torch.Tensor, batch: int
              ) -> tuple[dict[str, Any], BatchResult]:
    backend = TorchBackend()
    start = time.perf_counter()
    backend.build(net)
    build_s = time.perf_counter() - start
    backend.run(x[:1])  # warm-up
    start = time.perf_counter()
    res = merge([backend.run(x[lo:lo + batch]) for lo in range(0, x.shape[0], batch)])
    run_s = time.perf_counter() - start
    synapses = int(sum(float(f.sum()) for f in fan_out(net).values()))
    return row(name, "torch", f"in-process ({torch.get_num_threads()} threads)", net, x,
               build_s, run_s, float(res.synaptic_events.sum()), res.counts, synapses), res


def row(name: str, backend: str, workers: Any, net: Network, x: torch.Tensor, build_s: float,
        run_s: float, events: float, counts: dict[str, torch.Tensor], synapses: int
        ) -> dict[str, Any]:
    n = x.shape[0]
    spikes = sum(float(c.sum()) for c in counts.values())
    return {"model": name, "backend": backend, "workers": workers, "samples": n, "T": net.T,
            "neurons": sum(p.size for p in net.populations), "synapses": synapses,
            "build_s": build_s, "run_s": run_s, "samples_per_s": n / run_s,
            "events_per_s": events / run_s, "spikes_per_sample": spikes / n}


def nest_rows(name: str, net: Network, x: torch.Tensor, batch: int, workers: list[int],
              reference: BatchResult) -> list[dict[str, Any]]:
    import ray

    task = ray.remote(num_cpus=1)(nest_shard)
    net_ref = ray.put(net)
    rows = []
    for w in workers:
        shards = torch.tensor_split(x, w)
        outs = ray.get([task.remote(net_ref, s, batch) for s in shards])
        counts = {k: torch.cat([o["counts"][k] for o in outs]) for k in outs[0]["counts"]}
        r = row(name, "nest", w, net, x, max(o["build_s"] for o in outs),
                max(o["run_s"] for o in outs), sum(o["events"] for o in outs), counts,
                outs[0]["synapses"])
        same = all(torch.equal(counts[k], reference.counts[k]) for k in counts)
        r["parity"] = "all counts equal" if same else "DIFFERENT"
        rows.append(r)
    base = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if base is not None:
            r["efficiency"] = r["samples_per_s"] / (r["workers"] * base["samples_per_s"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="f400,f64c5")
    ap.add_argument("--f400-samples", type=int, default=1000)
    ap.add_argument("--f64c5-samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100, help="samples per Backend.run call")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/deploy.json")
    args = ap.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    workers = [int(w) for w in args.workers.split(",")]
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        data, T = MODELS[name]
        torch.manual_seed(args.seed)
        net = build_model(name, T=T).eval().to_network()
        n = args.f400_samples if name == "f400" else args.f64c5_samples
        x, _ = load_dataset(data, "test", limit=n, progress=False)
        trow, ref = torch_row(name, net, x, args.batch)
        rows.append(trow)
        rows.extend(nest_rows(name, net, x, args.batch, workers, ref))
        print(table(rows[-1 - len(workers):], COLUMNS), flush=True)
        print()
    ray.shutdown()
    print(table(rows, COLUMNS))
    path = write_json(args.out, {"rows": rows, "args": vars(args),
                                 "note": "untrained zoo weights (IF, V_th=2), real test images; "
                                         "NEST threads=1 per worker; torch float64"})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
