"""The ``fsnn`` command line: the parser and ``main``. Each command is printing over the
Python API (:mod:`fsnn.pipelines.commands` over :mod:`fsnn.jobs`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fsnn.pipelines import commands
from fsnn.platform.config import FORWARDS

COMMANDS = ("train", "tune", "deploy", "pipeline", "export", "data")


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
    p.add_argument("--register", default=None, metavar="NAME",
                   help="register the trained model as a new version of model NAME in the "
                        "MLflow model registry (checked before training)")
    _add_cluster_arguments(p, storage="checkpoint storage: a shared path or URI "
                                       "(default: ./runs)")


def _add_cluster_arguments(p: argparse.ArgumentParser, *, storage: str) -> None:
    """--address, --tracking-uri and --storage, shared by train, tune and pipeline."""
    p.add_argument("--address", default=None,
                   help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                        "(default: start a local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db)")
    p.add_argument("--storage", default=None, help=storage)


def _add_tune_arguments(p: argparse.ArgumentParser) -> None:
    from fsnn.pipelines.tune.search import TUNE_HELP

    p.description = "Ray Tune search over a config's `search:` section, tracked in MLflow."
    p.epilog = TUNE_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("config", help="YAML config with a `search:` section (configs/tune-demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set search.num_samples=16 (repeatable)")
    _add_cluster_arguments(p, storage="where the search's state and checkpoints go: a shared "
                                      "path or URI (default: $FSNN_STORAGE or ./runs)")
    p.add_argument("--name", default=None,
                   help="experiment name under --storage (default: tune-<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search STORAGE/NAME (same config)")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="register the best trial's model as a new version of model NAME in "
                        "the MLflow model registry (checked before the search)")


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
    p.set_defaults(func=commands.train)

    p = sub.add_parser("tune", help="Ray Tune search over T, V_th, leak, learning rate, ...")
    _add_tune_arguments(p)
    p.set_defaults(func=commands.tune)

    p = sub.add_parser("deploy", help="evaluate a trained spec on a backend (torch, nest, ...)")
    p.add_argument("source", help="MLflow run id (of `fsnn train`), spec directory, or model "
                                  "URI: models:/NAME/VERSION, models:/NAME@ALIAS, "
                                  "runs:/RUN_ID/model")
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
    p.set_defaults(func=commands.deploy)

    p = sub.add_parser("pipeline", help="train, export, deploy to every backend, compare")
    _add_common_train(p)
    p.add_argument("--force", action="store_true",
                   help="re-run every step (default: reuse finished runs of the same config)")
    p.set_defaults(func=commands.pipeline)

    p = sub.add_parser("export", help="export a trained model (spec or NIR)")
    p.add_argument("source", help="MLflow run id or spec directory")
    p.add_argument("--format", default="nir", choices=["nir"])
    p.add_argument("--out", default=None, help="output file (default: SOURCE.nir here)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (for a run id)")
    p.set_defaults(func=commands.export)

    p = sub.add_parser("data", help="fetch data sets into the cache")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = dsub.add_parser("fetch", help="fetch and verify a data set (mnist, fashion-mnist, ...)")
    f.add_argument("name", help="mnist | fashion-mnist | cifar10 | cifar100")
    f.add_argument("--dir", default=None, help="cache directory (default: $FSNN_DATA or "
                                               "~/.cache/fsnn/data)")
    f.set_defaults(func=commands.data_fetch)
    v = dsub.add_parser("verify", help="re-hash every file of a cached data set (mnist, "
                                       "fashion-mnist) and refresh its stamp")
    v.add_argument("name", help="mnist | fashion-mnist")
    v.add_argument("--dir", default=None, help="cache directory (default: $FSNN_DATA or "
                                               "~/.cache/fsnn/data)")
    v.set_defaults(func=commands.data_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fsnn.pipelines.console import set_verbosity
    from fsnn.pipelines.run_status import Interrupted, interrupt_code, terminate_as_interrupt
    from fsnn.platform.errors import FsnnError

    args = build_parser().parse_args(argv)
    set_verbosity(args.verbose)
    terminate_as_interrupt()
    try:
        return int(args.func(args))
    except FsnnError as exc:
        print(f"fsnn {args.command}: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"fsnn {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt as exc:
        print(f"fsnn {args.command}: interrupted before any run was created", file=sys.stderr)
        return interrupt_code(exc)


if __name__ == "__main__":
    # run the importable module's main, so lazily imported code raises the same error classes
    from fsnn.pipelines.cli import main as _main

    sys.exit(_main())
