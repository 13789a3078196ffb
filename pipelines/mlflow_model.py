"""A trained spec as an MLflow Model, and the model registry around it.

A finished training run logs its spec as the MLflow Model ``model`` (``runs:/RUN_ID/model``)
with two flavors:

* ``fsnn``: names the spec folder inside the model (``artifacts/spec``: ``spec.json`` +
  ``weights.safetensors``), the spec format and the fsnn version; :func:`resolve_model` reads it;
* ``python_function``: models-from-code (:mod:`fsnn.pipelines.pyfunc_spec`), so loading runs
  the installed fsnn and unpickles nothing. ``predict`` takes a float array
  ``[B, *input_shape]`` (numpy, float64; ``[B, T, *input_shape]`` for spike inputs) and runs
  the torch engine (the ``torch`` backend): it returns class probabilities ``[B, classes]``
  (softmax of the readout logits, float64), or with ``params={"output": "counts"}`` the spike
  counts ``[B, neurons]`` (int64; the spec's populations in order, each flattened).

``register`` makes a model version of a run's model, tagged with its data set, T, neuron model
and test accuracy; a deploy from the version adds ``<backend>.accuracy`` and
``<backend>.agreement_*`` tags.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from fsnn.platform.errors import FsnnError
from fsnn.platform.spec import SPEC_FORMAT, SPEC_JSON, SPEC_VERSION, SPEC_WEIGHTS, Network

FLAVOR = "fsnn"
MODEL = "model"  # the artifact name in the training run
OUTPUTS = ("probabilities", "counts")
CODE = Path(__file__).with_name("pyfunc_spec.py")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


class ModelError(FsnnError, RuntimeError):
    """A model name, version or alias cannot be used; the message says which."""


def input_shape(net: Network) -> tuple[int, ...]:
    """The per-sample shape ``predict`` takes (``[T, *shape]`` for spike inputs)."""
    shape = tuple(int(s) for s in net.input.shape)
    return (net.T, *shape) if net.input.kind == "spikes" else shape


def as_batch(model_input: Any, net: Network) -> np.ndarray:
    """``model_input`` as a float64 array ``[B, *input_shape]``; a flattened ``[B, pixels]``
    array (or a DataFrame of flattened pixels) is reshaped."""
    if hasattr(model_input, "to_numpy"):
        arr = np.asarray(model_input.to_numpy(), dtype=np.float64)
    else:
        arr = np.asarray(model_input, dtype=np.float64)
    shape = input_shape(net)
    if arr.shape[1:] == shape:
        return np.ascontiguousarray(arr)
    n = int(np.prod(shape))
    if arr.ndim >= 1 and arr.size % n == 0 and arr.size and int(np.prod(arr.shape[1:])) == n:
        return np.ascontiguousarray(arr.reshape(-1, *shape))
    raise ValueError(f"fsnn model: input of shape {tuple(arr.shape)}; expected "
                     f"[B, {', '.join(map(str, shape))}] (or [B, {n}] flattened)")


class SpecModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of a spec: the torch engine (the ``torch`` backend) on a batch of inputs."""

    # no type-hint validation (and no warning about its absence): the tensor signature
    # logged with the model is the input schema
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from fsnn.backends.base import get_backend
        from fsnn.platform.spec import load_spec

        self.net = load_spec(context.artifacts["spec"])
        self.backend = get_backend("torch")
        self.backend.build(self.net)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        output = str((params or {}).get("output") or "probabilities")
        if output not in OUTPUTS:
            raise ValueError(f"fsnn model: params output={output!r}; use one of "
                             f"{', '.join(OUTPUTS)}")
        res = self.backend.run(torch.from_numpy(as_batch(model_input, self.net)))
        if output == "counts":
            return np.concatenate([res.counts[p.name].flatten(1).round().to(torch.int64).numpy()
                                   for p in self.net.populations], axis=1)
        return torch.softmax(res.logits, dim=1).numpy()


def signature(net: Network) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    classes = int(net.readout.weight.shape[0])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, *input_shape(net)))]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, classes))]),
        params=ParamSchema([ParamSpec("output", "string", "probabilities")]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("fsnn", "mlflow", "torch", "safetensors", "numpy"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def save_model(path: str, mlflow_model: Any, *, spec_dir: str, net: Network,
               input_example: np.ndarray, **_: Any) -> None:
    """The flavor-module hook of :meth:`mlflow.models.Model.log`: the pyfunc (models from
    code) plus the ``fsnn`` flavor naming the spec's files."""
    from importlib.metadata import version

    mlflow.pyfunc.save_model(path, python_model=str(CODE), artifacts={"spec": spec_dir},
                             mlflow_model=mlflow_model, signature=signature(net),
                             input_example=input_example, pip_requirements=_requirements())
    spec = mlflow_model.flavors["python_function"]["artifacts"]["spec"]["path"]
    mlflow_model.add_flavor(FLAVOR, spec=spec, files=[SPEC_JSON, SPEC_WEIGHTS],
                            spec_format=SPEC_FORMAT, spec_version=SPEC_VERSION,
                            fsnn_version=version("fsnn"), input_kind=net.input.kind,
                            input_shape=list(input_shape(net)), T=net.T,
                            classes=int(net.readout.weight.shape[0]))
    mlflow_model.save(str(Path(path) / "MLmodel"))


def log_spec_model(c: Any, run_id: str, spec_dir: str | Path, net: Network,
                   example: torch.Tensor) -> str:
    """Log ``spec_dir`` as run ``run_id``'s MLflow Model ``model``; returns its model id (also
    the run's tag ``fsnn.model_id``). ``example``: inputs, the first two make the example."""
    import logging

    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    uri = c.tracking_uri
    exp = c.get_run(run_id).info.experiment_id
    lm = c.create_logged_model(exp, name=MODEL, source_run_id=run_id,
                               tags={"fsnn.kind": "spec"})
    x = example[:2]
    if net.input.kind == "spikes":
        x = x[:, :net.T]
    x_np = x.to(torch.float64).numpy().reshape(-1, *input_shape(net))
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        with _use_tracking_uri(uri), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's advice on type hints and requirements
            Model.log(None, name=MODEL, flavor=sys.modules[__name__], run_id=run_id,
                      model_id=lm.model_id, spec_dir=str(spec_dir), net=net, input_example=x_np)
    finally:
        quiet.setLevel(level)
    c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    c.set_tag(run_id, "fsnn.model_id", lm.model_id)
    return str(lm.model_id)


# -- the registry ---------------------------------------------------------------------------


def check_registry(uri: str, name: str) -> None:
    """Before training: ``name`` is a usable model name and the store has a model registry."""
    if not _NAME.fullmatch(name):
        raise ModelError(f"register: {name!r} is not a valid model name (letters, digits, "
                         f"'_', '.', '-', starting with a letter or digit, at most 200)")
    from fsnn.pipelines.run_status import one_line
    from fsnn.pipelines.tracking import client

    try:
        client(uri).search_registered_models(max_results=1)
    except Exception as exc:
        raise ModelError(f"register {name}: the tracking store {uri} has no usable model "
                         f"registry ({one_line(exc)}); use a database or server store") \
            from None


def register(uri: str, run_id: str, name: str, tags: dict[str, str]) -> str:
    """A new version of model ``name`` from run ``run_id``'s model; returns its version."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from fsnn.pipelines.run_status import one_line
    from fsnn.pipelines.tracking import client

    c = client(uri)
    model_id = c.get_run(run_id).data.tags.get("fsnn.model_id")
    if not model_id:
        raise ModelError(f"register {name}: run {run_id} logged no MLflow Model (no "
                         f"fsnn.model_id tag); train it to the end first")
    try:
        try:
            c.get_registered_model(name)
        except Exception:
            c.create_registered_model(name, description="fsnn spec (feedback SNN)")
        with _use_tracking_uri(uri):  # a local registry resolves models:/MODEL_ID through it
            mv = c.create_model_version(name, source=f"models:/{model_id}", run_id=run_id,
                                        tags=tags, model_id=model_id)
    except Exception as exc:
        raise ModelError(f"register {name}: {one_line(exc)}") from None
    c.set_tag(run_id, "fsnn.model_version", f"models:/{name}/{mv.version}")
    return str(mv.version)


@dataclass
class ModelRef:
    """A registered model version (``name`` and ``version``; None for a run's or a logged
    model) and the model's URI to download."""

    uri: str
    name: str | None = None
    version: str | None = None

    @property
    def label(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.name else self.uri


def is_model_uri(source: str) -> bool:
    return source.startswith("models:/") or source.startswith("runs:/")


def model_ref(source: str, uri: str) -> ModelRef:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/NAME/latest``,
    ``models:/MODEL_ID`` or ``runs:/RUN_ID/PATH`` checked against the store (one line naming
    what is unknown)."""
    from fsnn.pipelines.tracking import client

    c = client(uri)
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        try:
            c.get_run(run_id)
        except Exception:
            raise ModelError(f"{source}: no run {run_id!r} in {uri}") from None
        if not path:
            raise ModelError(f"{source}: name the model's path, e.g. runs:/{run_id}/{MODEL}")
        return ModelRef(source)
    rest = source.removeprefix("models:/").rstrip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        try:
            mv = c.get_model_version_by_alias(name, alias)
        except Exception:
            _known_model(c, name, source, uri)
            raise ModelError(f"{source}: model {name!r} has no alias {alias!r}") from None
        return ModelRef(f"models:/{name}/{mv.version}", name, str(mv.version))
    if "/" in rest:
        name, _, version = rest.partition("/")
        _known_model(c, name, source, uri)
        if version == "latest":
            versions = [int(v.version) for v in c.search_model_versions(f"name = '{name}'")]
            if not versions:
                raise ModelError(f"{source}: model {name!r} has no versions")
            version = str(max(versions))
        try:
            c.get_model_version(name, version)
        except Exception:
            raise ModelError(f"{source}: model {name!r} has no version {version!r}") from None
        return ModelRef(f"models:/{name}/{version}", name, version)
    try:
        c.get_logged_model(rest)
    except Exception:
        raise ModelError(f"{source}: no logged model {rest!r} in {uri}; use "
                         f"models:/NAME/VERSION or models:/NAME@ALIAS") from None
    return ModelRef(source)


def _known_model(c: Any, name: str, source: str, uri: str) -> None:
    try:
        c.get_registered_model(name)
    except Exception:
        raise ModelError(f"{source}: no registered model {name!r} in {uri}") from None


def download_spec(ref: ModelRef, uri: str, workdir: Path) -> tuple[Path, str | None]:
    """The spec folder of ``ref``'s model (downloaded under ``workdir``) and its training run;
    ModelError unless the model has an fsnn flavor."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from fsnn.pipelines.run_status import one_line

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with _use_tracking_uri(uri):  # runs:/ID/model finds the run's logged model through it
            local = Path(download_artifacts(artifact_uri=ref.uri, dst_path=str(workdir),
                                            tracking_uri=uri))
        meta = Model.load(str(local / "MLmodel"))
    except Exception as exc:
        raise ModelError(f"{ref.label}: its model cannot be read ({one_line(exc)})") from None
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
    flavor = meta.flavors.get(FLAVOR)
    if not isinstance(flavor, dict) or "spec" not in flavor:
        raise ModelError(f"{ref.label}: not an fsnn model (its MLmodel has no {FLAVOR!r} "
                         f"flavor; flavors: {', '.join(sorted(meta.flavors)) or 'none'})")
    return local / str(flavor["spec"]), meta.run_id


def tag_version(uri: str, ref: ModelRef, backend: str, metrics: dict[str, float],
                deploy_run: str | None) -> None:
    """The deploy's accuracy and agreement as tags of the model version it ran."""
    if not ref.name or not ref.version:
        return
    from fsnn.pipelines.tracking import client

    c = client(uri)
    tags = {f"{backend}.{k}": f"{metrics[k]:.6g}" for k in
            ("accuracy", "agreement_predictions", "agreement_counts", "samples") if k in metrics}
    if deploy_run:
        tags[f"{backend}.deploy_run_id"] = deploy_run
    for k, v in tags.items():
        c.set_model_version_tag(ref.name, ref.version, k, v)


def version_tags(cfg: Any, metrics: dict[str, Any]) -> dict[str, str]:
    """A training run's model version tags: data set, T, neuron model, test accuracy."""
    tags = {"dataset": str(cfg.data.name), "T": str(cfg.T), "neuron": str(cfg.neuron),
            "model": str(cfg.model)}
    if "test_accuracy" in metrics:
        tags["test_accuracy"] = f"{float(metrics['test_accuracy']):.6g}"
    return tags


__all__ = ["FLAVOR", "MODEL", "ModelError", "ModelRef", "SpecModel", "as_batch", "check_registry",
           "download_spec", "log_spec_model", "model_ref", "register", "tag_version",
           "version_tags"]
