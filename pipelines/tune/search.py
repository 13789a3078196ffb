"""`fsnn tune CONFIG`: a Ray Tune search over a config's `search:` section, tracked in MLflow.

Every trial trains one process on a sampled config and is an MLflow run nested under the
search's run (tag ``fsnn.kind=tune``); the search's run gets the best trial's config and spec and
a plot of accuracy against T and V_th. The experiment lives under ``--storage`` (default ./runs)
as ``--name`` (default ``tune-<config name>``); ``--resume`` continues an interrupted search
without re-running the trials that finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsnn.platform.config import (
    Config,
    ParamSpace,
    SearchConfig,
    config_doc,
)
from fsnn.platform.errors import FsnnError

TUNE_HELP = """\
The config's `search:` section (see configs/tune-demo.yaml):
  space:          dotted config path -> one distribution, e.g.
                    T: {choice: [4, 8, 16, 30]}        vth: {uniform: [0.5, 3.0]}
                    leak: {choice: [1.0, 0.99, 0.95]}  optim.lr: {loguniform: [1.0e-3, 0.1]}
                  distributions: choice, grid (every value), uniform, loguniform,
                  randint [low, high] (both ends included).
                  A sampled leak sets the neuron: 1.0 -> IF, < 1 -> LIF (so sample leak or
                  neuron, not both).
  metric, mode:   what to optimise (default test_accuracy, max); any per-epoch metric a
                  trial reports: train_loss, train_accuracy, test_loss, test_accuracy,
                  rate_h0, ..., adjoint_iterations, ...
  num_samples:    trials (default 8; with grid values: repeats of the whole grid)
  scheduler:      asha (default; stops weak trials after grace_period epochs, keeps
                  1/reduction_factor) or none
  algorithm:      random (default), grid (every combination of discrete values) or optuna
  max_concurrent: trials at once (default: as many as the resources allow)
  resources:      {cpus: 1, gpus: 0} per trial; each trial trains one process
                  (train.num_workers is for `fsnn train` and is ignored here)

Resuming: an interrupted search (Ctrl+C, a lost driver) keeps its state under
STORAGE/NAME; `fsnn tune CONFIG --resume` with the same config continues it: finished trials
are kept, unfinished ones continue from their last epoch's checkpoint, and the remaining
samples are drawn. Without --resume an existing search of that name is an error."""


class TuneSetupError(FsnnError, RuntimeError):
    """The search cannot start as configured; the message names the field."""


@dataclass
class TuneOptions:
    address: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    name: str | None = None
    resume: bool = False
    config_path: str | None = None
    register: str | None = None  # register the best trial's MLflow Model under this name


@dataclass
class TuneResult:
    """A search's outcome: ``rows`` are its trials (`TrialRow`:
    trial_id, run_id, params, metrics, epochs, error) ranked by ``metric`` (``mode`` max/min)."""

    parent_run_id: str  # the search's MLflow run (the trials' runs are nested under it)
    tracking_uri: str
    experiment_path: str  # Ray Tune's experiment folder (STORAGE/NAME)
    rows: list[Any]
    expected: int  # trials the search was to run
    interrupted: bool  # stopped before every trial ended (continue with resume=True)
    metric: str = "test_accuracy"
    mode: str = "max"
    space: list[str] = field(default_factory=list)  # the searched config paths
    model_version: str | None = None  # models:/NAME/VERSION of the best trial, if registered

    @property
    def best(self) -> Any | None:
        """The best trial that reported the metric (None if none did)."""
        return next((r for r in self.rows if r.metrics.get(self.metric) is not None), None)


def _config_sha(cfg: Config) -> str:
    doc = json.dumps(config_doc(cfg), sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def check_metric(cfg: Config) -> None:
    from fsnn.pipelines.train.recipe import reported_metrics

    assert cfg.search is not None
    known = reported_metrics(cfg)
    if cfg.search.metric not in known:
        raise TuneSetupError(f"search.metric: no trial reports {cfg.search.metric!r}; trials "
                             f"report {', '.join(known)}")


def check_trial_resources(search: SearchConfig) -> None:
    import ray

    res = ray.cluster_resources()
    have = {"cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0)}
    for name, need in (("cpus", search.resources.cpus), ("gpus", search.resources.gpus)):
        if need > have[name]:
            raise TuneSetupError(f"search.resources.{name}: a trial asks for {need:g} "
                                 f"{name.upper()[:-1]}s; the Ray cluster has {have[name]:g}. "
                                 f"Lower it or add nodes")


def _grid_values(dim: ParamSpace, algorithm: str) -> list[Any] | None:
    """The values a grid dimension enumerates; None for a sampled one."""
    if dim.kind == "grid" or (algorithm == "grid" and dim.discrete):
        if dim.kind == "randint":
            lo, hi = dim.bounds
            return list(range(int(lo), int(hi) + 1))
        return dim.candidates()
    return None


def expected_trials(search: SearchConfig) -> int:
    """Trials the search runs: num_samples, times the size of the grid."""
    grid = 1
    for dim in search.space.values():
        grid *= len(_grid_values(dim, search.algorithm) or [None])
    return search.num_samples * grid


def param_space(search: SearchConfig) -> dict[str, Any]:
    """The `search.space` as Tune's param_space (dotted config paths as keys)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dim in search.space.items():
        values = _grid_values(dim, search.algorithm)
        if values is not None:
            out[key] = tune.grid_search(values)
        elif dim.kind == "choice":
            out[key] = tune.choice(dim.candidates())
        else:
            lo, hi = dim.bounds
            out[key] = (tune.uniform(lo, hi) if dim.kind == "uniform" else
                        tune.loguniform(lo, hi) if dim.kind == "loguniform" else
                        tune.randint(int(lo), int(hi) + 1))
    return out


def _search_alg(search: SearchConfig) -> Any:
    if search.algorithm == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(seed=search.seed)
        except (ImportError, AssertionError):
            raise TuneSetupError("search.algorithm: optuna is not installed (pip install "
                                 "optuna; the fsnn[ray] extra has it)") from None
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=search.seed)


def _scheduler(cfg: Config) -> Any:
    assert cfg.search is not None
    if cfg.search.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                         grace_period=min(cfg.search.grace_period, cfg.train.epochs),
                         reduction_factor=cfg.search.reduction_factor)


def _find_parent(uri: str, experiment_path: str) -> Any | None:
    from fsnn.pipelines.tracking import EXPERIMENT, client

    c = client(uri)
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=(
        f"tags.`fsnn.kind` = 'tune' and tags.`fsnn.experiment_path` = '{experiment_path}'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _parent_run(cfg: Config, opts: TuneOptions, uri: str, experiment_path: str) -> str:
    import ray

    from fsnn.pipelines.tracking import client, create_run

    sha = _config_sha(cfg)
    if opts.resume:
        run = _find_parent(uri, experiment_path)
        if run is None:
            raise TuneSetupError(f"--resume: no `fsnn tune` run in {uri} started the search at "
                                 f"{experiment_path}; pass the --tracking-uri it started with")
        if run.data.tags.get("fsnn.config_sha") != sha:
            raise TuneSetupError(f"--resume: the config differs from the one the search at "
                                 f"{experiment_path} started with (MLflow run "
                                 f"{run.info.run_id}, artifact config.yaml); resume with that "
                                 f"config or start another search with --name")
        client(uri).update_run(run.info.run_id, status="RUNNING")
        return str(run.info.run_id)
    assert cfg.search is not None
    run_id = create_run(uri, run_name=f"{cfg.name}-tune", params=cfg.model_dump(mode="json"),
                        tags={"fsnn.kind": "tune", "fsnn.model": cfg.model,
                              "fsnn.experiment_path": experiment_path, "fsnn.config_sha": sha,
                              "fsnn.config_path": str(opts.config_path or ""),
                              "ray.version": ray.__version__,
                              "fsnn.search_algorithm": cfg.search.algorithm,
                              "fsnn.search_scheduler": cfg.search.scheduler})
    from tempfile import TemporaryDirectory

    from fsnn.platform.config import dump_config

    with TemporaryDirectory() as d:
        (Path(d) / "config.yaml").write_text(dump_config(cfg))
        client(uri).log_artifact(run_id, str(Path(d) / "config.yaml"))
    return run_id


def _prepare(cfg: Config, opts: TuneOptions) -> tuple[str, str, str]:
    """Everything checkable before Ray starts; returns (tracking uri, storage, experiment path)."""
    from ray.tune import Tuner

    from fsnn.pipelines.storage import check_storage, resolve_storage
    from fsnn.pipelines.tracking import check_tracking_uri, resolve_tracking_uri

    check_metric(cfg)
    uri = resolve_tracking_uri(opts.tracking_uri)
    check_tracking_uri(uri)
    storage = resolve_storage(opts.storage)
    check_storage(storage)
    name = opts.name or f"tune-{cfg.name}"
    path = f"{storage.rstrip('/')}/{name}"
    exists = Tuner.can_restore(path)
    if opts.resume and not exists:
        raise TuneSetupError(f"--resume: no search to continue at {path} (check --storage "
                             f"and --name)")
    if exists and not opts.resume:
        raise TuneSetupError(f"a search named {name!r} already exists at {path}; pass --resume "
                             f"to continue it or --name to start another")
    return uri, storage, path


def run_tune(cfg: Config, opts: TuneOptions) -> TuneResult:
    if cfg.search is None:
        raise TuneSetupError("search: the config has no `search:` section (the space to "
                             "search); see configs/tune-demo.yaml")
    search = cfg.search
    if cfg.forward != "engine" or cfg.target_eval_plan()[0] > 0:
        raise TuneSetupError(f"forward: {cfg.forward} / target_eval: a search trains every trial "
                             f"with the engine; search with forward: engine and target_eval.every"
                             f": 0, then fine-tune the best trial with the target in the loop "
                             f"(fsnn train --init RUN_ID --forward SIM)")
    uri, storage, path = _prepare(cfg, opts)
    if opts.register:
        from fsnn.pipelines.mlflow_model import check_registry

        check_registry(uri, opts.register)
    if cfg.data.root:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"root": str(Path(cfg.data.root).resolve())})})
    if opts.address is None:
        from fsnn.platform.data import check_dataset, fetch_dataset

        root = Path(cfg.data.root) if cfg.data.root else None
        fetch_dataset(cfg.data.name, root)
        check_dataset(cfg.data.name, root)
    from fsnn.pipelines.raycluster import connect
    from fsnn.pipelines.run_status import closing_run
    from fsnn.pipelines.tracking import client

    connect(opts.address)
    check_trial_resources(search)
    parent = _parent_run(cfg, opts, uri, path)
    print(f"[fsnn] search {path}: MLflow run {parent} ({uri})", flush=True)
    # Tune handles the first Ctrl-C itself (the search stops, _finish marks it KILLED); this
    # closes the run on anything else
    with closing_run(client(uri), parent, what=f"search run {parent}",
                     kept=lambda: f"continue with `fsnn tune CONFIG --resume` ({path})"):
        results = _fit(cfg, opts, uri, storage, path, parent)
        out = _finish(cfg, uri, path, parent, results)
    best = out.best
    if opts.register and best is not None and not out.interrupted:
        from fsnn.pipelines.mlflow_model import register, version_tags
        from fsnn.platform.config import trial_config

        number = register(uri, parent, opts.register,
                          version_tags(trial_config(cfg, best.params), best.metrics))
        out.model_version = f"models:/{opts.register}/{number}"
        print(f"[fsnn] registered {out.model_version} (the best trial's model)", flush=True)
    return out


def _fit(cfg: Config, opts: TuneOptions, uri: str, storage: str, path: str,
         parent: str) -> Any:
    # a checkpoint per epoch with num_to_keep forces a state snapshot each time (what makes
    # --resume exact); Tune warns about that on every fast epoch
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    from fsnn.pipelines.console import verbose
    from fsnn.pipelines.tune.report import trial_dirname
    from fsnn.pipelines.tune.trial import TrialLines, TrialRuns, run_trial

    search = cfg.search
    assert search is not None
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=config_doc(cfg), parent_run_id=parent,
                             tracking_uri=uri, threads=search.resources.cpus,
                             use_gpu=search.resources.gpus > 0,
                             exclusive_cpu=search.max_concurrent == 1),
        {"cpu": search.resources.cpus, "gpu": search.resources.gpus})
    if opts.resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(search),
            tune_config=tune.TuneConfig(
                metric=search.metric, mode=search.mode, search_alg=_search_alg(search),
                scheduler=_scheduler(cfg), num_samples=search.num_samples,
                max_concurrent_trials=search.max_concurrent, reuse_actors=True,
                trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=path.rsplit("/", 1)[1], storage_path=storage,
                verbose=1 if verbose() else 0,  # Tune's status tables only with -v
                callbacks=[TrialRuns(uri, parent, cfg.train.epochs),
                           TrialLines(search.metric, cfg.train.epochs, expected_trials(search))],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures)))
    return tuner.fit()


def _finish(cfg: Config, uri: str, path: str, parent: str, results: Any) -> TuneResult:
    from fsnn.pipelines.tracking import client
    from fsnn.pipelines.tune.report import collect, log_search, rank
    from fsnn.pipelines.tune.trial import trial_runs

    assert cfg.search is not None
    c = client(uri)
    nested = trial_runs(c, parent)
    rows = rank(collect(results, nested), cfg.search.metric, cfg.search.mode)
    expected = expected_trials(cfg.search)
    # Tune marks the trials an interruption stopped TERMINATED too; TrialRuns closed the runs of
    # the trials that really ended (finished, stopped by ASHA, or failed)
    status = {r.info.run_id: r.info.status for r in nested}
    ended = [row for row in rows
             if row.error is not None or status.get(row.run_id or "") in ("FINISHED", "FAILED")]
    interrupted = len(ended) < max(expected, len(rows))
    log_search(c, parent, cfg, rows)
    if interrupted:
        for run in nested:
            if run.info.status == "RUNNING":
                c.set_terminated(run.info.run_id, "KILLED")
    status = "KILLED" if interrupted else ("FAILED" if results.num_terminated == 0
                                           else "FINISHED")
    c.set_terminated(parent, status)
    return TuneResult(parent, uri, path, rows, expected, interrupted, cfg.search.metric,
                      cfg.search.mode, list(cfg.search.space))
