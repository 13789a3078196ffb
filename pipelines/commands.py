"""What each ``fsnn`` command prints: argument handling and printing over the Python API
(:mod:`fsnn.jobs`), no logic of its own. A :class:`~fsnn.FsnnError` from the API reaches
:func:`fsnn.pipelines.cli.main`, which prints it as one line (exit code 2)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from fsnn import jobs
from fsnn.platform.errors import FsnnError


class CLIError(FsnnError):
    """A command-line problem (options that exclude each other, a malformed one)."""


def data_fetch(args: argparse.Namespace) -> int:
    print(jobs.fetch_data(args.name, args.dir))
    return 0


def data_verify(args: argparse.Namespace) -> int:
    report = jobs.verify_data(args.name, args.dir)
    for line in report.lines():
        print(line)
    note = report.stamp_note()
    if note is not None:
        print(f"fsnn: {note}", file=sys.stderr)
    return 0 if report.ok else 1


def train(args: argparse.Namespace) -> int:
    if args.init and args.resume:
        raise CLIError("--init starts a new run from trained weights, --resume continues a run; "
                       "give one of them")
    if args.config is None and not (args.resume or args.init):
        raise CLIError("give a CONFIG file, --resume RUN_ID to continue a run, or --init RUN_ID "
                       "to fine-tune a trained run with the config it was trained with")
    out = jobs.train(args.config, args.set, num_workers=args.num_workers,
                     gpu=True if args.gpu else None, forward=args.forward, resume=args.resume,
                     init=args.init, address=args.address, tracking_uri=args.tracking_uri,
                     storage=args.storage, register=args.register)
    m = out.metrics
    print(f"[fsnn] run {out.run_id}: test accuracy {m.get('test_accuracy', float('nan')):.4f} "
          f"after {m.get('epoch', '?')} epochs")
    print(f"[fsnn] checkpoint: {out.checkpoint}")
    print(f"[fsnn] spec: runs:/{out.run_id}/spec   "
          f"MLflow UI: mlflow ui --backend-store-uri {out.tracking_uri}")
    if out.model_version:
        print(f"[fsnn] model: {out.model_version} (deploy it with `fsnn deploy "
              f"{out.model_version}`)")
    return 0


def deploy(args: argparse.Namespace) -> int:
    from fsnn.backends.base import parse_options

    rep = jobs.deploy(args.source, args.backend, samples=args.samples, workers=args.workers,
                      data=args.data, options=parse_options(args.option),
                      tracking_uri=args.tracking_uri, address=args.address)
    m = rep.metrics
    print(f"[fsnn] {rep.backend}: accuracy {m['accuracy']:.4f} on {rep.samples} samples, "
          f"{m['samples_per_s']:.1f} samples/s, {m['spikes_per_sample']:.0f} spikes and "
          f"{m['synaptic_events_per_sample']:.0f} synaptic events per sample")
    if "agreement_predictions" in m:
        print(f"[fsnn] agreement with torch: predictions {m['agreement_predictions']:.4f}, "
              f"spike counts {m['agreement_counts']:.4f} (torch accuracy "
              f"{m['reference_accuracy']:.4f})")
    if rep.run_id:
        print(f"[fsnn] MLflow run {rep.run_id}")
    return 0


def pipeline(args: argparse.Namespace) -> int:
    from fsnn.pipelines.tracking import resolve_tracking_uri

    res = jobs.pipeline(args.config, args.set, num_workers=args.num_workers,
                        gpu=True if args.gpu else None, force=args.force, address=args.address,
                        tracking_uri=args.tracking_uri, storage=args.storage,
                        register=args.register)
    print()
    print(res.table)
    print()
    print(f"[fsnn] pipeline run {res.pipeline_run}; training run {res.train_run}")
    print(f"[fsnn] open the MLflow UI: mlflow ui --backend-store-uri "
          f"{resolve_tracking_uri(args.tracking_uri)}")
    return 0


def tune(args: argparse.Namespace) -> int:
    from fsnn.pipelines.tune.report import print_table

    out = jobs.tune(args.config, args.set, name=args.name, resume=args.resume,
                    address=args.address, tracking_uri=args.tracking_uri, storage=args.storage,
                    register=args.register)
    metric = out.metric
    print_table(out.rows, metric, out.space,
                f"{len(out.rows)} trials, ranked by {metric} ({out.mode})")
    best = out.best
    if best is not None:
        print(f"[fsnn] best trial {best.trial_id}: {metric} "
              f"{float(best.metrics[metric]):.4f} (MLflow run {best.run_id}) with "
              f"{json.dumps(best.params, sort_keys=True)}")
    print(f"[fsnn] search run {out.parent_run_id}: best_config.yaml, spec/, plots/tune.png   "
          f"MLflow UI: mlflow ui --backend-store-uri {out.tracking_uri}")
    failed = [r for r in out.rows if r.error is not None]
    if failed:
        print(f"[fsnn] {len(failed)} trial(s) failed: "
              + ", ".join(f"{r.trial_id} ({r.error})" for r in failed)
              + f"; their tracebacks: {out.experiment_path}/trial_*/error.txt", flush=True)
    if out.interrupted:
        done = sum(1 for r in out.rows if r.error is None and r.epochs > 0)
        print(f"[fsnn] interrupted with {done} of {out.expected} trials reported; continue "
              f"with `fsnn tune {args.config} --resume`"
              + (f" --name {args.name}" if args.name else ""), flush=True)
        return 130
    if best is None or math.isnan(float(best.metrics[metric])):
        print("[fsnn] no trial finished an epoch", flush=True)
        return 1
    return 0


def export(args: argparse.Namespace) -> int:
    path = jobs.export_nir(args.source, args.out, tracking_uri=args.tracking_uri)
    print(f"[fsnn] wrote {path} (NIR graph)")
    return 0


__all__ = ["CLIError", "data_fetch", "data_verify", "deploy", "export", "pipeline", "train",
           "tune"]
