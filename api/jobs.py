"""fsnn's jobs as Python functions: the CLI (``fsnn train``, ``tune``, ``deploy``, ``pipeline``,
``export``, ``data``) is argument parsing and printing over these.

Each checks its input before any work starts and raises a `FsnnError` (one line
naming the problem and the fix); Ray, MLflow and the simulators are imported only when a job
runs. Ray's and MLflow's own log lines are off unless `set_verbosity` (or
``FSNN_VERBOSE=1``) turns them on.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fsnn.platform.config import (
    FORWARDS,
    Config,
    ConfigError,
    apply_overrides,
    config_doc,
    config_from_dict,
)
from fsnn.platform.config import load_config as _load_file
from fsnn.platform.errors import FsnnError
from fsnn.platform.spec import Network, save_spec

if TYPE_CHECKING:
    from fsnn.pipelines.deploy import DeployResult
    from fsnn.pipelines.pipeline import PipelineResult
    from fsnn.pipelines.train.driver import TrainResult
    from fsnn.pipelines.tune.search import TuneResult
    from fsnn.platform.data import VerifyReport

ConfigSource = Config | str | Path | Mapping[str, Any]


def set_verbosity(verbose: bool) -> None:
    """Show (True) or hide (False, the default) Ray's and MLflow's own log lines in the jobs
    that follow; fsnn's progress and results are shown either way."""
    from fsnn.pipelines.console import set_verbosity as _set

    _set(verbose)


def _quiet_unless_asked() -> None:
    from fsnn.pipelines.console import set_verbosity as _set
    from fsnn.pipelines.console import verbose

    _set(verbose())


def load_config(source: ConfigSource, overrides: Sequence[str] = (), *,
                num_workers: int | None = None, gpu: bool | None = None,
                forward: str | None = None) -> Config:
    """A validated `Config`.

    ``source``: a YAML file, a config document (a mapping, e.g. `saved_config`'s) or a
    Config. ``overrides``: ``"KEY=VALUE"`` strings with dotted keys (``"optim.lr=0.1"``), values
    read as YAML. ``num_workers`` and ``gpu`` set ``train.num_workers`` and ``train.use_gpu``.
    ``forward``: where training's forward rates come from (``engine`` or a simulator, i.e.
    hardware in the loop); a simulator also sets ``dropout=0`` (the simulator runs the spec,
    which has no dropout masks) unless an override sets dropout.
    Raises ConfigError naming the field.
    """
    extra = list(overrides)
    if num_workers is not None:
        extra.append(f"train.num_workers={num_workers}")
    if gpu is not None:
        extra.append(f"train.use_gpu={str(bool(gpu)).lower()}")
    if forward is not None:
        if forward not in FORWARDS:
            raise ConfigError(f"forward: {forward!r} is not one of {', '.join(FORWARDS)}")
        extra.append(f"forward={forward}")
        if forward != "engine" and not any(o.strip().startswith("dropout=") for o in overrides):
            extra.append("dropout=0")
            print(f"[fsnn] forward {forward}: dropout 0 (the simulator runs the spec, which has "
                  f"no dropout masks)", file=sys.stderr)
    if isinstance(source, Config):
        return config_from_dict(apply_overrides(config_doc(source), extra)) if extra else source
    if isinstance(source, Mapping):
        return config_from_dict(apply_overrides(copy.deepcopy(dict(source)), extra))
    return _load_file(source, extra)


def saved_config(run: str, *, tracking_uri: str | None = None, flag: str = "--resume"
                 ) -> dict[str, Any]:
    """The config document saved with run ``run``'s checkpoint (an MLflow run id of this
    tracking store, or a checkpoint directory). ``flag`` names the option in messages."""
    from fsnn.pipelines.tracking import resolve_tracking_uri
    from fsnn.pipelines.train.resume import locate_checkpoint

    _, _, meta = locate_checkpoint(run, resolve_tracking_uri(tracking_uri), flag)
    doc = meta.get("config")
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{flag} {run}: its checkpoint holds no config; pass a config")
    return doc


def _config(config: ConfigSource | None, overrides: Sequence[str], *, resume: str | None = None,
            init: str | None = None, tracking_uri: str | None = None,
            num_workers: int | None = None, gpu: bool | None = None,
            forward: str | None = None) -> tuple[Config, str | None]:
    """The config to run, and its file's path (recorded with the run) if it came from one."""
    knobs: dict[str, Any] = {"num_workers": num_workers, "gpu": gpu, "forward": forward}
    if config is None:
        if not (resume or init):
            raise ConfigError("give a config, resume=RUN_ID to continue a run, or init=RUN_ID "
                              "to fine-tune a trained run with the config it was trained with")
        ref, flag = (resume, "--resume") if resume else (init, "--init")
        assert ref is not None
        return load_config(saved_config(ref, tracking_uri=tracking_uri, flag=flag), overrides,
                           **knobs), None
    path = str(config) if isinstance(config, str | Path) else None
    return load_config(config, overrides, **knobs), path


def train(config: ConfigSource | None = None, overrides: Sequence[str] = (), *,
          num_workers: int | None = None, gpu: bool | None = None, forward: str | None = None,
          resume: str | None = None, init: str | None = None, address: str | None = None,
          tracking_uri: str | None = None, storage: str | None = None,
          register: str | None = None) -> TrainResult:
    """Train a network with Ray Train and track it in MLflow; returns the run's id, final
    metrics and checkpoint. Its spec is the run's artifact ``spec/`` (``runs:/RUN_ID/spec``)
    and its MLflow Model ``model`` (``runs:/RUN_ID/model``: pyfunc + fsnn flavors).

    ``config``: a YAML file, a mapping or a Config; ``overrides``, ``num_workers``, ``gpu``
    and ``forward`` change it as in `load_config`; ``None`` with ``resume``/``init``
    takes the config saved with that run. ``resume``: continue an
    interrupted or failed run (its id, or a checkpoint directory) in the same MLflow run.
    ``init``: start a new run from a trained run's weights (fresh optimiser and schedule).
    ``address``: a Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``; default: start a
    local Ray). ``tracking_uri``: MLflow (default ``$MLFLOW_TRACKING_URI`` or
    ``sqlite:///mlflow.db``). ``storage``: where checkpoints go (a shared path or URI on a
    cluster; default ``./runs``). ``register``: register the run's model as a new version of
    this registered model (tagged with data set, T, neuron model, test accuracy; the result's
    ``model_version`` is ``models:/NAME/VERSION``); the name and the store's registry are
    checked before training. Ctrl-C ends the run KILLED and raises
    `Interrupted`, saying how to continue.
    """
    if init and resume:
        raise ConfigError("init starts a new run from trained weights, resume continues a run; "
                          "give one of them")
    cfg, path = _config(config, overrides, resume=resume, init=init, tracking_uri=tracking_uri,
                        num_workers=num_workers, gpu=gpu, forward=forward)
    _quiet_unless_asked()
    from fsnn.pipelines.train.driver import TrainOptions, run_train

    return run_train(cfg, TrainOptions(address=address, tracking_uri=tracking_uri,
                                       storage=storage, resume=resume, config_path=path,
                                       init=init, register=register))


def tune(config: ConfigSource, overrides: Sequence[str] = (), *, name: str | None = None,
         resume: bool = False, address: str | None = None, tracking_uri: str | None = None,
         storage: str | None = None, register: str | None = None) -> TuneResult:
    """Run a Ray Tune search over the config's ``search:`` section (every trial an MLflow run
    nested under the search's run); returns the trials ranked by the search's metric.

    ``name``: the experiment's name under ``storage`` (default ``tune-<config name>``);
    ``resume``: continue that interrupted search (finished trials are kept). The search's run
    gets the best trial's config, spec (also as the MLflow Model ``model``) and a plot of the
    metric over T and V_th. ``register``: register that model as a new version of this
    registered model (checked before the search starts).
    """
    cfg, path = _config(config, overrides)
    _quiet_unless_asked()
    from fsnn.pipelines.tune.search import TuneOptions, run_tune

    return run_tune(cfg, TuneOptions(address=address, tracking_uri=tracking_uri,
                                     storage=storage, name=name, resume=resume,
                                     config_path=path, register=register))


def deploy(source: str | Path | Network, backend: str = "torch", *, samples: int = 500,
           workers: int = 1, data: str | None = None, options: Mapping[str, Any] | None = None,
           tracking_uri: str | None = None, address: str | None = None,
           log: bool = True) -> DeployResult:
    """Evaluate a trained network on a backend (``torch``, ``nest``, ``spinnaker-emulated``,
    ``spinnaker``) over ``samples`` test images, sharded over ``workers`` Ray actors; a
    simulator is compared with the torch engine on the same images (prediction and
    spike-count agreement).

    ``source``: an MLflow run id (of `train`), a spec directory, an MLflow Model URI
    (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/model``; a registered
    version gets ``<backend>.accuracy`` and ``<backend>.agreement_*`` tags), or a
    `Network`. ``data``: the data set (default: the one the spec
    names). ``options``: the backend's constructor options (e.g. ``{"threads": 2}`` for nest).
    ``log``: record an MLflow run (nested under the training run when there is one).
    """
    from fsnn.pipelines.deploy import DeployError, run_deploy

    if samples <= 0 or workers <= 0:
        raise DeployError(f"samples and workers must be positive (got samples={samples}, "
                          f"workers={workers})")
    _quiet_unless_asked()
    opts = dict(options or {})
    if isinstance(source, Network):
        with tempfile.TemporaryDirectory() as d:
            spec = save_spec(source, Path(d) / "spec")
            return run_deploy(str(spec), backend, samples=samples, workers=workers,
                              tracking_uri=tracking_uri, address=address, dataset=data,
                              options=opts, log=log)
    return run_deploy(str(source), backend, samples=samples, workers=workers,
                      tracking_uri=tracking_uri, address=address, dataset=data, options=opts,
                      log=log)


def pipeline(config: ConfigSource, overrides: Sequence[str] = (), *,
             num_workers: int | None = None, gpu: bool | None = None, force: bool = False,
             address: str | None = None, tracking_uri: str | None = None,
             storage: str | None = None, register: str | None = None) -> PipelineResult:
    """Train, export the spec and deploy it to every backend of ``deploy.backends``; returns
    the runs and the comparison table. Finished steps of the same config are reused unless
    ``force``; an interrupted training run of the same config is resumed. ``overrides``,
    ``num_workers`` and ``gpu`` as in `load_config`. ``register``: as in `train`
    (the deploys then run the registered version and tag it)."""
    cfg, path = _config(config, overrides, num_workers=num_workers, gpu=gpu)
    _quiet_unless_asked()
    from fsnn.pipelines.pipeline import run_pipeline

    return run_pipeline(cfg, config_path=path, force=force, address=address,
                        tracking_uri=tracking_uri, storage=storage, register=register)


def export_nir(source: str | Path | Network, out: str | Path | None = None, *,
               tracking_uri: str | None = None) -> Path:
    """Write a trained network as a NIR graph (``nir`` extra); returns the file written.
    ``source``: a run id, a spec directory or a Network; ``out`` defaults to ``SOURCE.nir``
    in the working directory (the path is checked before anything is loaded)."""
    from fsnn.pipelines.export import ExportError, check_out_path, run_export
    from fsnn.pipelines.export import export_nir as _write

    if isinstance(source, Network):
        if out is None:
            raise ExportError("exporting a Network needs out= (the file to write)")
        return _write(source, check_out_path(out))
    return run_export(str(source), "nir", None if out is None else str(out), tracking_uri)


def run_spec(source: str, *, tracking_uri: str | None = None) -> Network:
    """The spec a run exported (``source``: a training run's id, or anything
    `deploy` takes as a source), read without unpickling anything."""
    from fsnn.pipelines.deploy import resolve_source
    from fsnn.pipelines.tracking import resolve_tracking_uri

    with tempfile.TemporaryDirectory() as d:
        net, _ = resolve_source(source, resolve_tracking_uri(tracking_uri), Path(d))
    return net


def load_data(name: str, split: str = "test", *, limit: int | None = None,
              root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a cached data set (fetched first if need be), normalised as
    training and deployment see them: ``x`` [N, *input shape] (spike frames [N, T, ...] for
    event data), ``y`` [N]. ``split``: ``train`` or ``test``; ``limit``: the first N."""
    from fsnn.platform.data import load_dataset

    if split not in ("train", "test"):
        raise ConfigError(f"load_data: split must be 'train' or 'test' (got {split!r})")
    return load_dataset(name, "train" if split == "train" else "test",
                        Path(root) if root else None, limit=limit, progress=False)


def fetch_data(name: str, root: str | Path | None = None) -> Path:
    """Make data set ``name`` (mnist, fashion-mnist, cifar10, cifar100, nmnist) present and
    verified in the cache (``root``, default ``$FSNN_DATA`` or ``~/.cache/fsnn/data``);
    returns its folder."""
    from fsnn.platform.data import fetch_dataset

    return fetch_dataset(name, Path(root) if root else None)


def verify_data(name: str, root: str | Path | None = None) -> VerifyReport:
    """Re-hash every cached file of data set ``name`` against the catalog (nothing fetched or
    deleted); the report's ``ok`` says whether all match, ``lines()`` says per file."""
    from fsnn.platform.data import verify_dataset

    return verify_dataset(name, Path(root) if root else None)


__all__ = ["ConfigSource", "FsnnError", "deploy", "export_nir", "fetch_data", "load_config",
           "load_data", "pipeline", "run_spec", "saved_config", "set_verbosity", "train", "tune",
           "verify_data"]
