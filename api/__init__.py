"""fsnn: feedback spiking neural networks trained with implicit differentiation on the
equilibrium state (IDE), distributed with Ray Train, searched with Ray Tune, deployed through
PyNN to NEST and SpiNNaker, tracked in MLflow.

The Python API (the ``fsnn`` command is argument parsing and printing over it)::

    import fsnn

    cfg = fsnn.load_config("configs/demo.yaml", ["train.epochs=1"])
    run = fsnn.train(cfg)                          # Ray Train + an MLflow run -> TrainResult
    nest = fsnn.deploy(run.run_id, "nest", samples=100)   # spikes on NEST -> DeployResult
    print(nest.metrics["accuracy"], nest.metrics["agreement_predictions"])

Jobs (each checks its input first and raises `FsnnError` naming the problem and fix):
    `train`, `tune`, `deploy`, `pipeline`, `export_nir`,
    `fetch_data`, `verify_data`.
Configs: `load_config`, `saved_config`, `Config`.
Specs (what training exports and every backend runs; safetensors + JSON, never pickle):
    `run_spec` (a run's), `load_spec`, `save_spec`, `Network`.
Data: `load_data` (images and labels as the engines take them).
Models: `fsnn.zoo` (the IDE paper's networks: ``zoo.build_model(name, ...)``, ``zoo.ZOO``).
Backends: `fsnn.backends.get` (``torch``, ``nest``, ``spinnaker-emulated``,
    ``spinnaker``), `fsnn.backends.names`.
Results: `TrainResult`, `TuneResult`, `DeployResult`,
    `PipelineResult`. Ctrl-C in a job raises `Interrupted` once its run is closed.

Ray, MLflow, PyNN and the simulators are imported only when a job needs them.
"""

from __future__ import annotations

import sys as _sys
from importlib import import_module as _import
from importlib.machinery import ModuleSpec as _ModuleSpec
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any


class _CheckoutPlatform:
    """Finds ``fsnn.platform`` in a source checkout installed in editable mode.

    platform/ has no ``__init__.py`` (see DESIGN.md) and the editable install's own finder
    only finds such a folder under a namespace parent; this package is a regular one. In an
    installed wheel the folder sits beside this file and the standard finder takes it."""

    folder = _Path(__file__).resolve().parent.parent / "platform"

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None
                  ) -> _ModuleSpec | None:
        if fullname != "fsnn.platform":
            return None
        spec = _ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(cls.folder)]
        return spec


if _Path(__file__).parent.name == "api" and (_CheckoutPlatform.folder / "spec.py").is_file():
    _sys.meta_path.append(_CheckoutPlatform)

# The names below are imported when first used (``import fsnn.platform.spec`` runs this file
# first, and must not pull in the jobs and the pipelines behind them); ``dir(fsnn)`` and
# ``help(fsnn)`` list them all.
_WHERE = {
    "deploy": "fsnn.jobs", "export_nir": "fsnn.jobs", "fetch_data": "fsnn.jobs",
    "load_config": "fsnn.jobs", "load_data": "fsnn.jobs", "pipeline": "fsnn.jobs",
    "run_spec": "fsnn.jobs", "saved_config": "fsnn.jobs",
    "set_verbosity": "fsnn.jobs", "train": "fsnn.jobs", "tune": "fsnn.jobs",
    "verify_data": "fsnn.jobs",
    "DeployResult": "fsnn.pipelines.deploy", "PipelineResult": "fsnn.pipelines.pipeline",
    "Interrupted": "fsnn.pipelines.run_status", "TrainResult": "fsnn.pipelines.train.driver",
    "TuneResult": "fsnn.pipelines.tune.search", "Config": "fsnn.platform.config",
    "ConfigError": "fsnn.platform.config", "FsnnError": "fsnn.platform.errors",
    "Network": "fsnn.platform.spec", "SpecError": "fsnn.platform.spec",
    "load_spec": "fsnn.platform.spec", "save_spec": "fsnn.platform.spec",
}
_MODULES = {"backends": "fsnn.backends", "zoo": "fsnn.platform.zoo"}

if TYPE_CHECKING:
    from fsnn import backends
    from fsnn.jobs import (
        deploy,
        export_nir,
        fetch_data,
        load_config,
        load_data,
        pipeline,
        run_spec,
        saved_config,
        set_verbosity,
        train,
        tune,
        verify_data,
    )
    from fsnn.pipelines.deploy import DeployResult
    from fsnn.pipelines.pipeline import PipelineResult
    from fsnn.pipelines.run_status import Interrupted
    from fsnn.pipelines.train.driver import TrainResult
    from fsnn.pipelines.tune.search import TuneResult
    from fsnn.platform import zoo
    from fsnn.platform.config import Config, ConfigError
    from fsnn.platform.errors import FsnnError
    from fsnn.platform.spec import Network, SpecError, load_spec, save_spec


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = _import(_MODULES[name])
    elif name in _WHERE:
        value = getattr(_import(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'fsnn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DeployResult",
    "FsnnError",
    "Interrupted",
    "Network",
    "PipelineResult",
    "SpecError",
    "TrainResult",
    "TuneResult",
    "backends",
    "deploy",
    "export_nir",
    "fetch_data",
    "load_config",
    "load_data",
    "load_spec",
    "pipeline",
    "run_spec",
    "save_spec",
    "saved_config",
    "set_verbosity",
    "train",
    "tune",
    "verify_data",
    "zoo",
]
