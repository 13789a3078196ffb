"""The ``fsnn`` command line."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence

from fsnn.platform.config import (
    FORWARDS,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
)

COMMANDS = ("train", "tune", "deploy", "pipeline", "export", "data")


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _not_built(name: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"fsnn {name}: not built yet ({issue}); nothing was run.", file=sys.stderr)
        return 3
    return run


def _cmd_data(args: argparse.Namespace) -> int:
    from fsnn.platform.data import DataError, fetch_dataset

    try:
        path = fetch_dataset(args.name, args.dir)
    except DataError as exc:
        raise CLIError(str(exc)) from None
    print(path)
    return 0


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fsnn.platform.data import DataError, verify_dataset

    try:
        report = verify_dataset(args.name, Path(args.dir) if args.dir else None)
    except DataError as exc:
        raise CLIError(str(exc)) from None
    for line in report.lines():
        print(line)
    note = report.stamp_note()
    if note is not None:
        print(f"fsnn: {note}", file=sys.stderr)
    return 0 if report.ok else 1


def _add_common_train(p: argparse.ArgumentParser, *, config_optional: bool = False) -> None:
    if config_optional:
        p.add_argument("config", nargs="?", default=None,
                       help="YAML config (see configs/); with --init: default the config the "
                            "run was trained with")
    else:
        p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=0.1 (repeatable)")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    add_cluster_arguments(p, storage="checkpoint storage: a shared path or URI "
                                      "(default: ./runs)")


def add_cluster_arguments(p: argparse.ArgumentParser, *, storage: str) -> None:
    """--address, --tracking-uri and --storage, shared by train, tune and pipeline."""
    p.add_argument("--address", default=None,
                   help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                        "(default: start a local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db)")
    p.add_argument("--storage", default=None, help=storage)


def _load(args: argparse.Namespace, base: dict | None = None) -> Config:
    """The config file (or ``base``, a saved config document) with the command line's
    overrides; ``--forward SIM`` also turns dropout off unless ``--set dropout=`` says."""
    overrides = list(args.set)
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    if args.gpu:
        overrides.append("train.use_gpu=true")
    forward = getattr(args, "forward", None)
    if forward is not None:
        overrides.append(f"forward={forward}")
        given = [o.strip() for o in args.set]
        if forward != "engine" and not any(o.startswith("dropout=") for o in given):
            overrides.append("dropout=0")
            print(f"[fsnn] --forward {forward}: dropout 0 (the simulator runs the spec, which "
                  f"has no dropout masks)", file=sys.stderr)
    try:
        if base is not None and args.config is None:
            return config_from_dict(apply_overrides(copy.deepcopy(base), overrides))
        return load_config(args.config, overrides)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def _saved_config(args: argparse.Namespace) -> dict | None:
    """Without CONFIG: the config document saved with the checkpoint of ``--resume`` (the run
    continued) or ``--init`` (the run fine-tuned)."""
    if args.config is not None:
        return None
    flag, ref = ("--resume", args.resume) if args.resume else ("--init", args.init)
    if not ref:
        raise CLIError("give a CONFIG file, --resume RUN_ID to continue a run, or --init RUN_ID "
                       "to fine-tune a trained run with the config it was trained with")
    from fsnn.pipelines.tracking import TrackingError, resolve_tracking_uri
    from fsnn.pipelines.train import locate_checkpoint
    from fsnn.platform.checkpoint import CheckpointError

    try:
        _, _, meta = locate_checkpoint(ref, resolve_tracking_uri(args.tracking_uri), flag)
    except (CheckpointError, TrackingError) as exc:
        raise CLIError(str(exc)) from None
    doc = meta.get("config")
    if not isinstance(doc, dict) or not doc:
        raise CLIError(f"{flag} {ref}: its checkpoint holds no config; pass a CONFIG")
    return doc


def _cmd_train(args: argparse.Namespace) -> int:
    if args.init and args.resume:
        raise CLIError("--init starts a new run from trained weights, --resume continues a run; "
                       "give one of them")
    cfg = _load(args, _saved_config(args))
    from fsnn.backends.base import BackendError
    from fsnn.pipelines.raycluster import RayConnectError
    from fsnn.pipelines.storage import StorageError
    from fsnn.pipelines.tracking import TrackingError
    from fsnn.pipelines.train import TrainOptions, run_train
    from fsnn.platform.checkpoint import CheckpointError
    from fsnn.platform.data import DataError

    opts = TrainOptions(address=args.address, tracking_uri=args.tracking_uri,
                        storage=args.storage, resume=args.resume, config_path=args.config,
                        init=args.init)
    try:
        out = run_train(cfg, opts)
    except (RayConnectError, TrackingError, CheckpointError, DataError, BackendError,
            StorageError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    m = out.metrics
    print(f"[fsnn] run {out.run_id}: test accuracy {m.get('test_accuracy', float('nan')):.4f} "
          f"after {m.get('epoch', '?')} epochs")
    print(f"[fsnn] checkpoint: {out.checkpoint}")
    print(f"[fsnn] spec: runs:/{out.run_id}/spec   "
          f"MLflow UI: mlflow ui --backend-store-uri {out.tracking_uri}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from fsnn.backends.base import BackendError
    from fsnn.pipelines.deploy import DeployError, run_deploy
    from fsnn.pipelines.raycluster import RayConnectError
    from fsnn.pipelines.tracking import TrackingError
    from fsnn.platform.data import DataError

    if args.samples <= 0 or args.workers <= 0:
        raise CLIError("--samples and --workers must be positive")
    options = _backend_options(args.option)
    try:
        rep = run_deploy(args.source, args.backend, samples=args.samples, workers=args.workers,
                         tracking_uri=args.tracking_uri, address=args.address,
                         dataset=args.data, options=options)
    except TypeError as exc:  # an option the backend's constructor does not take
        raise CLIError(f"--option: {exc}") from None
    except (BackendError, DeployError, TrackingError, RayConnectError, DataError) as exc:
        raise CLIError(str(exc)) from None
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


def _backend_options(items: list[str]) -> dict[str, object]:
    """``--option KEY=VALUE`` (repeatable) as constructor options; values parsed as YAML."""
    from fsnn.backends.base import BackendError, parse_options

    try:
        return parse_options(items)
    except BackendError as exc:
        raise CLIError(str(exc)) from None


def _cmd_pipeline(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from fsnn.backends.base import BackendError
    from fsnn.pipelines.deploy import DeployError
    from fsnn.pipelines.pipeline import run_pipeline
    from fsnn.pipelines.raycluster import RayConnectError
    from fsnn.pipelines.storage import StorageError
    from fsnn.pipelines.tracking import TrackingError
    from fsnn.platform.checkpoint import CheckpointError
    from fsnn.platform.data import DataError

    try:
        res = run_pipeline(cfg, config_path=args.config, force=args.force, address=args.address,
                           tracking_uri=args.tracking_uri, storage=args.storage)
    except (BackendError, DeployError, RayConnectError, TrackingError, CheckpointError,
            DataError, StorageError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    from fsnn.pipelines.tracking import resolve_tracking_uri

    print()
    print(res.table)
    print()
    print(f"[fsnn] pipeline run {res.pipeline_run}; training run {res.train_run}")
    print(f"[fsnn] open the MLflow UI: mlflow ui --backend-store-uri "
          f"{resolve_tracking_uri(args.tracking_uri)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsnn",
        description="Feedback spiking neural networks: train with implicit differentiation "
                    "(Ray Train), search (Ray Tune), deploy to NEST/SpiNNaker (PyNN), track "
                    "in MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show Ray's and MLflow's own log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model with Ray Train (IDE by default)")
    _add_common_train(p, config_optional=True)
    p.add_argument("--resume", default=None, metavar="RUN_ID|PATH",
                   help="continue an interrupted or failed run (in the same MLflow run) from "
                        "its last checkpoint, or from a checkpoint directory; without CONFIG "
                        "the run's own config is used")
    p.add_argument("--init", default=None, metavar="RUN_ID|PATH",
                   help="fine-tune: start a new run from a trained run's weights (fresh "
                        "optimiser and schedule)")
    p.add_argument("--forward", default=None, choices=FORWARDS,
                   help="where training's forward rates come from: engine (default) or a "
                        "simulator (hardware in the loop; implies dropout 0)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="Ray Tune search over T, V_th, leak, learning rate, ...")
    from fsnn.pipelines.tune import add_arguments as add_tune_arguments
    from fsnn.pipelines.tune import cmd_tune

    add_tune_arguments(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("deploy", help="evaluate a trained spec on a backend (torch, nest, ...)")
    p.add_argument("source", help="MLflow run id (of `fsnn train`) or spec directory")
    p.add_argument("--backend", default="torch",
                   help="torch | nest | spinnaker-emulated | spinnaker")
    p.add_argument("--samples", type=int, default=500, help="test samples to evaluate")
    p.add_argument("--workers", type=int, default=1,
                   help="simulator instances (Ray actors) to shard the samples over")
    p.add_argument("--data", default=None, help="data set (default: the one the spec names)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend constructor option, e.g. --option host=10.0.0.2 (spinnaker) "
                        "or --option quantize=false (spinnaker-emulated); repeatable")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--address", default=None, help="Ray cluster address (with --workers > 1)")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("pipeline", help="train, export, deploy to every backend, compare")
    _add_common_train(p)
    p.add_argument("--force", action="store_true",
                   help="re-run every step (default: reuse finished runs of the same config)")
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser("export", help="export a trained model (spec or NIR)")
    p.add_argument("source", help="MLflow run id or spec directory")
    p.add_argument("--format", default="nir", choices=["nir"])
    p.add_argument("--out", default=None, help="output file (default: SOURCE.nir here)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (for a run id)")

    def _cmd_export(args: argparse.Namespace) -> int:
        from fsnn.pipelines.export import cli_export

        return cli_export(args)

    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("data", help="fetch data sets into the cache")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = dsub.add_parser("fetch", help="fetch and verify a data set (mnist, fashion-mnist, ...)")
    f.add_argument("name", help="mnist | fashion-mnist | cifar10 | cifar100")
    f.add_argument("--dir", default=None, help="cache directory (default: $FSNN_DATA or "
                                               "~/.cache/fsnn/data)")
    f.set_defaults(func=_cmd_data)
    v = dsub.add_parser("verify", help="re-hash every file of a cached data set (mnist, "
                                       "fashion-mnist) and refresh its stamp")
    v.add_argument("name", help="mnist | fashion-mnist")
    v.add_argument("--dir", default=None, help="cache directory (default: $FSNN_DATA or "
                                               "~/.cache/fsnn/data)")
    v.set_defaults(func=_cmd_data_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fsnn.pipelines.console import set_verbosity
    from fsnn.pipelines.run_status import Interrupted, interrupt_code, terminate_as_interrupt

    args = build_parser().parse_args(argv)
    set_verbosity(args.verbose)
    terminate_as_interrupt()
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"fsnn {args.command}: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"fsnn {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt as exc:
        print(f"fsnn {args.command}: interrupted before any run was created", file=sys.stderr)
        return interrupt_code(exc)


if __name__ == "__main__":
    # run the importable module's main, so lazily imported code raises the same CLIError class
    from fsnn.pipelines.cli import main as _main

    sys.exit(_main())
