"""`fsnn deploy`: evaluate a trained spec on a backend, sharded over Ray actors, logged to MLflow.

Each Ray actor builds the network once on its own simulator instance (for NEST: its own kernel)
and evaluates chunks of samples; the driver compares every sample with the torch reference
(identical prediction, identical spike count for every neuron) and logs one MLflow run linked to
the training run.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsnn.backends.base import BackendError, BatchResult, check_backend_options, get_backend
from fsnn.platform.errors import FsnnError
from fsnn.platform.spec import Network, SpecError, load_spec


@dataclass
class ShardOutput:
    """What one chunk of samples produced (numpy, so it travels cheaply between processes)."""

    start: int
    predictions: np.ndarray  # [n]
    counts: dict[str, np.ndarray]  # per population [n, neurons], int32
    events: np.ndarray  # [n]
    wall_time: float
    energy: dict[str, float] = field(default_factory=dict)


def _shard(result: BatchResult, start: int) -> ShardOutput:
    return ShardOutput(start, result.logits.argmax(1).numpy(),
                       {k: v.flatten(1).round().to(torch.int32).numpy()
                        for k, v in result.counts.items()},
                       result.synaptic_events.numpy(), result.wall_time, dict(result.energy))


class Evaluator:
    """Builds a backend once and evaluates chunks; used in-process or as a Ray actor."""

    def __init__(self, backend: str, spec_json: dict[str, Any], tensors: dict[str, Any],
                 options: dict[str, Any] | None = None) -> None:
        from fsnn.platform.spec import network_from_json

        t0 = time.perf_counter()
        # Ray hands actors read-only arrays: copy them into tensors the network owns
        self.net = network_from_json(spec_json, {k: torch.from_numpy(np.array(v)) for k, v in
                                                 tensors.items()})
        self.backend = get_backend(backend, **(options or {}))
        self.backend.build(self.net)
        self.build_time = time.perf_counter() - t0

    def build_seconds(self) -> float:
        return self.build_time

    def run(self, start: int, x: np.ndarray) -> ShardOutput:
        return _shard(self.backend.run(torch.as_tensor(x)), start)


@dataclass
class DeployResult:
    """One evaluation on a backend: ``metrics`` (accuracy, samples_per_s, spikes_per_sample,
    synaptic_events_per_sample, estimated and measured energies; on a simulator also
    agreement_predictions, agreement_counts and reference_accuracy, against the torch engine
    on the same images), the deploy's MLflow ``run_id`` (None with log=False) and the
    predicted class of every sample."""

    backend: str
    samples: int
    metrics: dict[str, float]
    run_id: str | None = None
    predictions: np.ndarray | None = None


class DeployError(FsnnError, RuntimeError):
    """The source, the data or the backend cannot be used; the message says why."""


@dataclass
class Source:
    """What a deploy runs: the spec, its training run, and the model version it came from."""

    net: Network
    train_run: str | None
    model: Any = None  # a fsnn.pipelines.mlflow_model.ModelRef for models:/ and runs:/ URIs


def resolve(source: str, tracking_uri: str, workdir: Path) -> Source:
    """A spec directory, an MLflow run id whose ``spec`` artifact is fetched, or an MLflow
    Model URI (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/model``) whose
    fsnn flavor names the spec; an unknown one is a DeployError naming it, before any work."""
    if source.startswith(("models:/", "runs:/")):
        from fsnn.pipelines.mlflow_model import ModelError, download_spec, model_ref

        try:
            ref = model_ref(source, tracking_uri)
            spec, run = download_spec(ref, tracking_uri, workdir)
        except ModelError as exc:
            raise DeployError(str(exc)) from None
        net = load_spec(spec)
        return Source(net, run or net.metadata.get("mlflow_run_id"), ref)
    net, run = _spec_or_run(source, tracking_uri, workdir)
    return Source(net, run)


def resolve_source(source: str, tracking_uri: str, workdir: Path) -> tuple[Network, str | None]:
    """The spec of ``source`` (see `resolve`) and its training run."""
    found = resolve(source, tracking_uri, workdir)
    return found.net, found.train_run


def _spec_or_run(source: str, tracking_uri: str, workdir: Path) -> tuple[Network, str | None]:
    """A spec directory, or an MLflow run id whose ``spec`` artifact is fetched."""
    path = Path(source)
    if path.exists():
        net = load_spec(path)
        return net, net.metadata.get("mlflow_run_id")
    from fsnn.pipelines.tracking import client

    c = client(tracking_uri)
    try:
        c.get_run(source)
    except Exception as exc:
        raise DeployError(f"{source!r} is neither a spec directory nor a run in "
                          f"{tracking_uri} ({type(exc).__name__}); a model URI works too: "
                          f"models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model") \
            from None
    names = {a.path for a in c.list_artifacts(source)}
    if "spec" not in names:
        raise DeployError(f"run {source} has no 'spec' artifact (was it trained to the end by "
                          f"`fsnn train`?); pass a spec directory instead")
    local = c.download_artifacts(source, "spec", str(workdir))
    return load_spec(local), source


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def evaluate(net: Network, backend: str, x: torch.Tensor, *, workers: int = 1,
             chunk: int = 25, options: dict[str, Any] | None = None,
             progress: bool = True, remote: bool = False) -> tuple[list[ShardOutput], float]:
    """Run ``x`` through ``backend`` on ``workers`` simulator instances (Ray actors when more
    than one, or ``remote``); returns shards in order and the mean build time."""
    from fsnn.platform.spec import network_to_json

    doc = network_to_json(net)
    tensors = {k: v.numpy() for k, v in net.tensors().items()}
    spans = _chunks(x.shape[0], chunk)
    outs: list[ShardOutput] = []
    from rich.console import Console
    from rich.progress import Progress

    # a bar only on a terminal (elsewhere a transient bar leaves blank lines)
    with Progress(disable=not (progress and Console().is_terminal), transient=True) as bar:
        task = bar.add_task(f"{backend}: samples", total=x.shape[0])
        if workers <= 1 and not remote:
            ev = Evaluator(backend, doc, tensors, options)
            for s, e in spans:
                outs.append(ev.run(s, x[s:e].numpy()))
                bar.advance(task, e - s)
            build = ev.build_seconds()
        else:
            import ray
            from ray.util import ActorPool

            remote = ray.remote(num_cpus=1)(Evaluator)
            actors = [remote.remote(backend, doc, tensors, options) for _ in range(workers)]
            try:
                build = float(np.mean(ray.get([a.build_seconds.remote() for a in actors])))
            except ray.exceptions.RayActorError as exc:
                raise DeployError(f"a {backend} worker failed to build the network: {exc}") \
                    from None
            pool = ActorPool(actors)
            for out in pool.map_unordered(lambda a, se: a.run.remote(se[0], x[se[0]:se[1]]
                                                                     .numpy()), spans):
                outs.append(out)
                bar.advance(task, len(out.predictions))
            for a in actors:
                ray.kill(a)
    return sorted(outs, key=lambda o: o.start), build


def _merge(outs: list[ShardOutput]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    preds = np.concatenate([o.predictions for o in outs])
    counts = {k: np.concatenate([o.counts[k] for o in outs]) for k in outs[0].counts}
    events = np.concatenate([o.events for o in outs])
    return preds, counts, events


def compare(backend: str, outs: list[ShardOutput], y: torch.Tensor,
            reference: list[ShardOutput] | None, wall: float, build: float) -> dict[str, float]:
    preds, counts, events = _merge(outs)
    n = len(preds)
    spikes = sum(c.sum(1) for c in counts.values())
    m: dict[str, float] = {
        "accuracy": float((preds == y.numpy()).mean()),
        "samples": float(n),
        "spikes_per_sample": float(np.mean(spikes)),
        "synaptic_events_per_sample": float(events.mean()),
        "wall_time_s": wall,
        "build_time_s": build,
        "samples_per_s": n / max(wall, 1e-9),
        "sim_time_s": float(sum(o.wall_time for o in outs)),
    }
    for k, c in counts.items():
        m[f"rate_{k}"] = float(c.mean())
    if reference is not None:
        rpreds, rcounts, _ = _merge(reference)
        same = np.ones(n, dtype=bool)
        for k in counts:
            same &= (counts[k] == rcounts[k]).all(1)
        m["agreement_predictions"] = float((preds == rpreds).mean())
        m["agreement_counts"] = float(same.mean())
        m["reference_accuracy"] = float((rpreds == y.numpy()).mean())
    energy: dict[str, float] = {}
    for o in outs:
        for k, v in o.energy.items():
            energy[k] = energy.get(k, 0.0) + v
    m.update(energy)
    return m


def load_test_data(net: Network, dataset: str | None, samples: int,
                   root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from fsnn.platform.data import load_dataset

    name = dataset or net.metadata.get("dataset")
    if not name:
        raise DeployError("the spec does not name its data set; pass --data NAME")
    x, y = load_dataset(str(name), "test", Path(root) if root else None, limit=samples,
                        progress=False)
    x = x.to(torch.float64) if net.input.kind == "analog" else x[:, :net.T].to(torch.float64)
    return x, y


def run_deploy(source: str, backend: str, *, samples: int = 500, workers: int = 1,
               tracking_uri: str | None = None, address: str | None = None,
               dataset: str | None = None, log: bool = True,
               options: dict[str, Any] | None = None) -> DeployResult:
    from fsnn.pipelines.tracking import check_tracking_uri, resolve_tracking_uri

    check_backend_options(backend, options or {})
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as d:
        try:
            found = resolve(source, uri, Path(d))
        except SpecError as exc:
            raise DeployError(str(exc)) from None
    net, train_run = found.net, found.train_run
    # refuse a spec the backend cannot express before any data is loaded or simulator built
    get_backend(backend, **(options or {})).check(net)
    x, y = load_test_data(net, dataset, samples)
    if workers > 1:
        from fsnn.pipelines.raycluster import check_resources, connect

        connect(address)
        check_resources(workers, 1.0, False)
    from fsnn.pipelines.energy_meter import EnergyMeter

    meter = EnergyMeter()  # package-wide counters: covers actors on this node too
    meter.start()
    t0 = time.perf_counter()
    outs, build = evaluate(net, backend, x, workers=workers, options=options)
    wall = time.perf_counter() - t0
    measured = meter.stop()
    reference = None
    if backend != "torch":
        reference, _ = evaluate(net, "torch", x, workers=1, progress=False)
    metrics = compare(backend, outs, y, reference, wall, build)
    from fsnn.platform.energy import estimate_metrics

    metrics.update(estimate_metrics(net, metrics["synaptic_events_per_sample"]))
    for k, v in measured.items():
        metrics[k] = v
        metrics[f"{k}_per_inference"] = v / len(y)
    run_id = None
    if log:
        run_id = _log(uri, net, backend, metrics, train_run, source, samples, workers,
                      meter.reasons, found.model)
        if found.model is not None:
            from fsnn.pipelines.mlflow_model import tag_version

            tag_version(uri, found.model, backend, metrics, run_id)
    preds, _, _ = _merge(outs)
    return DeployResult(backend, len(y), metrics, run_id, preds)


def _log(uri: str, net: Network, backend: str, metrics: dict[str, float], train_run: str | None,
         source: str, samples: int, workers: int, absent: dict[str, str],
         model: Any = None) -> str:
    from fsnn.pipelines.plots import plot_energy
    from fsnn.pipelines.tracking import client, create_run

    tags = {"fsnn.kind": "deploy", "fsnn.backend": backend, "fsnn.source": source,
            **{f"fsnn.absent.{k}": v for k, v in absent.items()}}
    if train_run:
        tags["fsnn.train_run_id"] = train_run
    if model is not None:
        tags["fsnn.model_uri"] = model.label
        if model.name:
            tags["fsnn.model_name"], tags["fsnn.model_version"] = model.name, model.version
    run_id = create_run(uri, run_name=f"deploy-{backend}",
                        params={"backend": backend, "samples": samples, "workers": workers,
                                "T": net.T, "model": net.metadata.get("model", "")},
                        tags=tags, parent_run_id=train_run)
    c = client(uri)
    from mlflow.entities import Metric

    from fsnn.pipelines.run_status import closing_run

    with closing_run(c, run_id, what=f"deploy run {run_id}",
                     kept=lambda: "the evaluation's results were not all logged; deploy again"):
        now = int(time.time() * 1000)
        c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        with tempfile.TemporaryDirectory() as d:
            c.log_artifact(run_id, str(plot_energy(metrics, backend, Path(d) / "energy.png")),
                           "plots")
        c.set_terminated(run_id, "FINISHED")
    return run_id


__all__ = ["BackendError", "DeployError", "DeployResult", "Source", "evaluate", "resolve",
           "resolve_source", "run_deploy"]
