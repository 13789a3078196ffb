"""Validated training configuration, loaded from YAML.

Every field has a default; a bad value fails with the field's dotted path and the reason before
any work starts. ``overrides`` (``["optim.lr=0.1", "T=8"]``) apply on top of the file.
"""

from __future__ import annotations

import copy
import difflib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from fsnn.platform.errors import FsnnError


class ConfigError(FsnnError, ValueError):
    """A configuration is invalid; the message names the field and the reason."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every float of every section (lists, tuples and search spaces
    # included) must be finite; pydantic checks it before the field's bounds
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    name: Literal["mnist", "fashion-mnist", "cifar10", "cifar100", "nmnist"] = Field(
        "fashion-mnist", description="data set to train and test on, read from the data cache")
    root: str | None = Field(None, description="data cache directory (default: $FSNN_DATA)")
    train_limit: int | None = Field(None, gt=0, description="use only the first N train samples")
    test_limit: int | None = Field(None, gt=0, description="use only the first N test samples")
    batch_size: int = Field(128, gt=0, description="global train batch (split across workers)")
    test_batch_size: int = Field(200, gt=0, description="batch size of the test-set evaluation "
                                 "after every epoch (per worker)")
    augment: bool = Field(False, description="random crop + flip (CIFAR)")


_METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "ide": ("solver", "max_iter", "tol", "memory", "check_every"),
    "tsbp": ("surrogate", "surrogate_width", "reset_grad"),
    "dsr": ("alpha", "vth_bound", "train_vth", "unroll"),
    "spide": ("backward_T", "backward_vth", "modified_reset", "forward_warmup",
              "backward_warmup"),
}


class MethodConfig(_Strict):
    """The training method and its settings; a field of another method than ``name`` is an
    error (it would be silently ignored otherwise)."""

    name: Literal["ide", "tsbp", "dsr", "spide"] = Field(
        "ide", description="ide | tsbp (BPTT, surrogate) | dsr (spike representation) | spide")
    # ide
    solver: Literal["anderson", "broyden", "fixed_point"] = Field(
        "anderson", description="adjoint solver (README: 'Speed on a GPU' has the measurements)")
    max_iter: int = Field(30, gt=0, description="adjoint solver iteration cap")
    tol: float = Field(1e-4, gt=0, description="relative residual to stop the adjoint solve")
    memory: int | None = Field(None, gt=0, description="Broyden: update pairs kept (each two "
                               "state-sized tensors; unset: all, up to max_iter); Anderson: "
                               "iterates mixed (unset: 3)")
    check_every: int = Field(1, gt=0, description="read the adjoint residual on the host every "
                             "k iterations (fewer GPU syncs, up to k-1 extra iterations; "
                             ">= max_iter: a fixed budget)")
    # tsbp
    surrogate: Literal["rectangle", "sigmoid"] = Field(
        "rectangle", description="surrogate derivative of the spike's Heaviside")
    surrogate_width: float = Field(1.0, gt=0, description="surrogate width in units of V_th")
    reset_grad: bool = Field(True, description="keep the reset's temporal term in the graph")
    # dsr
    alpha: float = Field(0.5, gt=0, le=1,
                         description="fire at alpha*V_th, subtract V_th (DSR's hyperparameter)")
    vth_bound: float = Field(1e-3, gt=0, description="lower bound of the trained thresholds")
    train_vth: bool = Field(True, description="train a threshold per population")
    unroll: int = Field(1, gt=0, description="representation sweeps through feedback loops")
    # spide
    backward_T: int = Field(250, gt=0, description="time steps of the spiking backward")
    backward_vth: float = Field(1.0, gt=0, description="backward threshold, in units of the "
                                "largest incoming gradient of the sample")
    modified_reset: bool = Field(True, description="forward neurons fire at V_th/2 "
                                 "(initial potential V_th/2)")
    forward_warmup: int = Field(0, ge=0, description="forward steps left out of the rates the "
                                "backward is evaluated at (two-stage average)")
    backward_warmup: int = Field(0, ge=0, description="backward steps left out of the average")

    @model_validator(mode="after")
    def _fields_of_the_method(self) -> MethodConfig:
        mine = _METHOD_FIELDS[self.name]
        for other, fields in _METHOD_FIELDS.items():
            for f in fields:
                # a full dump carries every field at its default: only a changed value is wrong
                changed = getattr(self, f) != type(self).model_fields[f].default
                if other != self.name and f in self.model_fields_set and f not in mine \
                        and changed:
                    raise ValueError(f"{f}: a setting of method {other!r}, but method.name is "
                                     f"{self.name!r}")
        if self.name == "spide" and self.backward_warmup >= self.backward_T:
            raise ValueError(f"backward_warmup: must be < backward_T ({self.backward_T})")
        return self


class OptimConfig(_Strict):
    name: Literal["sgd", "adam"] = Field(
        "sgd", description="optimiser: `sgd` (torch.optim.SGD with `momentum`) or `adam` "
        "(torch.optim.Adam; `momentum` unused)")
    lr: float = Field(0.05, gt=0, description="learning rate (the schedule multiplies it)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (unused by `adam`)")
    weight_decay: float = Field(5e-4, ge=0,
                                description="weight decay, the optimiser's `weight_decay`")
    schedule: Literal["step", "cosine", "constant"] = Field(
        "step", description="learning-rate factor, updated every iteration: `step` (× `gamma` "
        "for each milestone reached), `cosine` (half a cosine from 1 to 0 over all iterations "
        "of `train.epochs`) or `constant`")
    milestones: list[int] = Field(
        default_factory=lambda: [30, 60, 90], description="`step` schedule: the factor is "
        "`gamma` to the number of milestones m with epoch ≥ m (epochs counted from 0)")
    gamma: float = Field(0.1, gt=0, le=1,
                         description="`step` schedule: the factor applied at each milestone")
    warmup_iters: int = Field(0, ge=0, description="iterations of linear warm-up: iteration i "
                              "(from 0) has the factor min(1, (i + 1) / warmup_iters) on top of "
                              "the schedule's; 0: none")


class TrainConfig(_Strict):
    epochs: int = Field(100, gt=0,
                        description="epochs to train (in `fsnn tune` also ASHA's `max_t`)")
    seed: int = Field(0, description="random seed: initialisation, training data order and each "
                      "epoch's dropout masks (which depend only on the seed and the epoch)")
    num_workers: int = Field(1, gt=0, description="Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per Ray Train worker (`--gpu` sets it)")
    checkpoint_every: int = Field(1, gt=0, description="checkpoint every K epochs")
    max_failures: int = Field(2, ge=0, description="worker failures tolerated (Ray)")
    log_every: int = Field(50, gt=0, description="batches between progress updates")
    cuda_graphs: bool = Field(True, description="replay the simulation's time loop as CUDA "
                              "graphs on a GPU (checked against the eager run once per shape)")
    spike_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="type spikes are multiplied in by the simulation (bfloat16: "
        "exact spikes, weights rounded to 8 bits of mantissa; membranes stay float32)")
    fused_step: bool | Literal["auto"] = Field(
        "auto", description="compile each population's neuron update into one kernel "
        "(torch.compile: Triton on a GPU, C++ on a CPU; compiles once per process). auto: on "
        "a GPU (where it pays: 1.07-1.14x training, 1.3-1.4x evaluation on an H200), off on a "
        "CPU, and off with a warning where it cannot compile")
    channels_last: bool = Field(False, description="convolutional state and weights in NHWC "
                                "(the layout tensor-core convolutions read without transposing)")


Scalar = bool | int | float | str
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


class ParamSpace(_Strict):
    """One dimension of a search space: exactly one of the keys, e.g. ``{choice: [4, 8, 16]}``.

    ``choice`` samples one value, ``grid`` tries every value (grid search), ``uniform`` and
    ``loguniform`` sample a float in ``[low, high]``, ``randint`` an integer in ``[low, high]``
    (both ends included).
    """

    choice: list[Scalar] | None = Field(None, min_length=1,
                                        description="sample one of these values")
    grid: list[Scalar] | None = Field(None, min_length=1, description="try every value (a grid "
                                      "dimension; `num_samples` repeats the whole grid)")
    uniform: tuple[float, float] | None = Field(
        None, description="a float drawn uniformly from [low, high]")
    loguniform: tuple[float, float] | None = Field(
        None, description="a float drawn log-uniformly from [low, high], 0 < low")
    randint: tuple[int, int] | None = Field(
        None, description="an integer from [low, high], both ends included")

    @model_validator(mode="after")
    def _one(self) -> ParamSpace:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} "
                             f"(e.g. {{choice: [4, 8]}}), got {given or 'none'}")
        if self.kind in ("uniform", "loguniform", "randint"):
            lo, hi = self.bounds
            if hi < lo or (hi == lo and self.kind != "randint"):
                raise ValueError(f"{self.kind}: needs [low, high] with low < high, got "
                                 f"[{lo}, {hi}]")
            if self.kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: needs 0 < low, got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def bounds(self) -> tuple[float, float]:
        lo, hi = getattr(self, self.kind)
        return lo, hi

    @property
    def discrete(self) -> bool:
        return self.kind in ("choice", "grid", "randint")

    def candidates(self) -> list[Any]:
        """The values a config must accept: every listed value, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(getattr(self, self.kind))
        return list(self.bounds)


class TrialResources(_Strict):
    cpus: float = Field(1.0, gt=0, description="CPUs per trial (also torch's thread count)")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial (> 0 trains on CUDA)")


class SearchConfig(_Strict):
    """The `search:` section that `fsnn tune` reads; `fsnn train` ignores it."""

    space: dict[str, ParamSpace] = Field(
        description="dotted config path -> distribution, e.g. optim.lr: {loguniform: [1e-3, 0.1]}")
    metric: str = Field("test_accuracy", description="a metric every trial reports per epoch")
    mode: Literal["max", "min"] = Field(
        "max", description="`max`: the best trial has the largest `metric`; `min`: the smallest")
    num_samples: int = Field(8, gt=0, description="trials (with grid: repeats of the grid)")
    scheduler: Literal["asha", "none"] = Field(
        "asha", description="`asha` (stops weak trials early: after `grace_period` epochs, "
        "keeping 1/`reduction_factor` of them) or `none` (every trial runs `train.epochs`)")
    grace_period: int = Field(1, gt=0, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor")
    algorithm: Literal["random", "grid", "optuna"] = Field(
        "random", description="how trials are drawn: `random` (Ray Tune's variant generator), "
        "`grid` (every combination of the discrete dimensions) or `optuna` (OptunaSearch)")
    max_concurrent: int | None = Field(None, gt=0, description="trials running at once")
    seed: int | None = Field(None, description="seed of the search algorithm's sampling")
    resources: TrialResources = Field(default_factory=TrialResources,
                                      description="what Ray reserves for each trial")

    @model_validator(mode="after")
    def _space(self) -> SearchConfig:
        if not self.space:
            raise ValueError("search.space: empty; give at least one dotted config path and "
                             "its distribution, e.g. T: {choice: [4, 8]}")
        for key, dim in self.space.items():
            if self.algorithm == "optuna" and dim.kind == "grid":
                raise ValueError(f"search.space.{key}: grid needs algorithm random or grid, "
                                 f"optuna samples (use choice)")
            if self.algorithm == "grid" and not dim.discrete:
                raise ValueError(f"search.space.{key}: algorithm grid enumerates every value; "
                                 f"{dim.kind} is continuous (use choice, grid or randint)")
        if "leak" in self.space and "neuron" in self.space:
            raise ValueError("search.space: sample leak or neuron, not both (a sampled leak "
                             "sets the neuron: 1.0 -> IF, < 1 -> LIF)")
        return self


BackendName = Literal["torch", "nest", "spinnaker-emulated", "spinnaker"]
FORWARDS: tuple[str, ...] = ("engine", *get_args(BackendName))


class DeployConfig(_Strict):
    """What `fsnn pipeline` deploys the trained spec to (and `fsnn deploy`'s defaults)."""

    backends: list[BackendName] = Field(
        default_factory=lambda: ["torch", "nest"], description="backends `fsnn pipeline` "
        "deploys the trained spec to, in this order (one row of its table each)")
    samples: int = Field(300, gt=0, description="test samples per backend")
    workers: int = Field(1, gt=0, description="simulator instances (Ray actors) per backend")


class HILConfig(_Strict):
    """Hardware in the loop: the simulator actors that produce training's forward rates."""

    workers: int = Field(1, gt=0, description="simulator instances (Ray actors) per training "
                         "worker; each batch is split across them")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs each simulator actor "
                                   "reserves")
    retries: int = Field(2, ge=0, description="times an epoch is retried after a simulator "
                         "worker died (Ray restarts the worker)")


class TargetEvalConfig(_Strict):
    """In-training evaluation: every K epochs the current spec runs on these backends."""

    every: int | None = Field(None, ge=0, description="epochs between evaluations (0: off; "
                              "unset: every epoch with a simulator forward, off with the engine)")
    backends: list[BackendName] | None = Field(None, description="unset: the forward's simulator")
    samples: int = Field(500, gt=0, description="test samples per backend")
    workers: int = Field(1, gt=0, description="simulator instances (Ray actors) per backend")


Scalars = dict[str, bool | int | float | str]


class Config(_Strict):
    name: str = Field(
        "fsnn", description="run name: `fsnn train` names its MLflow run after it, "
        "`fsnn pipeline` its run `pipeline-NAME`, `fsnn tune` its parent run `NAME-tune`, each "
        "trial `NAME-TRIAL` and its default experiment `tune-NAME`. Not part of the hash by "
        "which `fsnn pipeline` recognises a configuration it has already trained.")
    # the reference (docs/gen/config_reference.py) appends the zoo's entries to this description
    model: str = Field("f400", description="network from the model zoo")
    neuron: Literal["IF", "LIF"] = Field(
        "IF", description="neuron model of every population: `IF` (integrate-and-fire, "
        "leak 1.0) or `LIF` (leaky, leak < 1)")
    T: int = Field(5, gt=0, description="time steps of the forward simulation")
    vth: float = Field(2.0, gt=0, description="firing threshold V_th")
    leak: float | None = Field(None, gt=0, le=1, description="LIF leak (IF: 1.0)")
    reset: Literal["subtract", "to_value"] = Field(
        "subtract", description="what a spike does to the membrane: `subtract` (V − V_th) or "
        "`to_value` (V = 0, the spec's `v_reset`)")
    dropout: float = Field(
        0.2, ge=0, lt=1, description="dropout probability in training: one boolean mask per "
        "sample on the input current and on each ring projection's output, the same for all T "
        "steps, kept values scaled by 1/(1 − p). Off in evaluation and absent from the exported "
        "spec; must be 0 with a simulator `forward`")
    timing: Literal["ide", "deploy"] = Field(
        "ide", description="when projections act in training's simulation: `ide` (feed-forward "
        "projections within the step, the feedback projection one step later: the IDE "
        "paper's) or `deploy` (every projection `delay` steps after the spike, as the backends "
        "run the exported spec, whose projections all have delay 1)")
    data: DataConfig = Field(default_factory=DataConfig,
                             description="the data set and how its batches are loaded")
    method: MethodConfig = Field(default_factory=MethodConfig, description="how training "
                                 "differentiates through the spiking simulation")
    optim: OptimConfig = Field(default_factory=OptimConfig,
                               description="the optimiser and its learning-rate schedule")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training run: "
                               "epochs, seed, Ray workers, checkpoints and simulation speed")
    search: SearchConfig | None = Field(None, description="the space of `fsnn tune`")
    deploy: DeployConfig = Field(default_factory=lambda: DeployConfig(),
                                 description="deployment of the trained spec after training")
    forward: Literal["engine"] | BackendName = Field(
        "engine", description="where training's forward rates come from: engine (the batched "
        "torch engine, with dropout and batch statistics) or a backend (hardware in the loop)")
    hil: HILConfig = Field(default_factory=lambda: HILConfig(), description="the simulator "
                           "workers of a hardware-in-the-loop `forward`")
    target_eval: TargetEvalConfig = Field(default_factory=lambda: TargetEvalConfig(),
                                          description="evaluation of the current spec on "
                                          "simulators during training")
    backend_options: dict[BackendName, Scalars] = Field(
        default_factory=dict, description="constructor options per backend, e.g. "
        "spinnaker: {host: 10.0.0.2} (used by forward, target_eval and deploy)")

    @model_validator(mode="after")
    def _leak(self) -> Config:
        if self.leak is None:
            object.__setattr__(self, "leak", 1.0 if self.neuron == "IF" else 0.95)
        if self.neuron == "IF" and self.leak != 1.0:
            raise ValueError("leak: an IF neuron has leak 1.0; set neuron: LIF for a leaky one")
        if self.neuron == "LIF" and self.leak == 1.0:
            raise ValueError("leak: a LIF neuron needs leak < 1; set neuron: IF for leak 1.0")
        from fsnn.platform.zoo import ZOO

        if self.model not in ZOO:
            known = ", ".join(sorted(ZOO))
            raise ValueError(f"model: unknown model {self.model!r}; known: {known}")
        if self.search is not None:
            _check_space(self)
        _check_forward(self)
        return self

    @property
    def leak_value(self) -> float:
        assert self.leak is not None
        return self.leak

    def target_eval_plan(self) -> tuple[int, list[str]]:
        """(every, backends) of the in-training evaluation with the defaults resolved: with a
        simulator forward every epoch on that simulator, with the engine off."""
        te, simulator = self.target_eval, self.forward != "engine"
        every = te.every if te.every is not None else int(simulator)
        if te.backends is not None:
            return every, list(te.backends)
        return every, [self.forward] if simulator else []


def _check_forward(cfg: Config) -> None:
    """A simulator forward needs IDE and the spec's semantics (no dropout); an in-training
    evaluation needs backends."""
    if cfg.forward != "engine":
        where = f"forward: {cfg.forward}"
        if cfg.method.name != "ide":
            raise ValueError(f"{where} needs method ide (only the forward's rates reach the "
                             f"implicit backward; {cfg.method.name} differentiates through the "
                             f"simulation); set method.name: ide or forward: engine")
        if cfg.dropout != 0.0:
            raise ValueError(f"dropout: must be 0 with {where} (the simulator runs the spec, "
                             f"which has no dropout masks); set dropout: 0")
    every, backends = cfg.target_eval_plan()
    if every > 0 and not backends:
        raise ValueError("target_eval.backends: empty; name the backends to evaluate on every "
                         f"{every} epochs (e.g. [nest]) or set every: 0")


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every settable leaf of a config model by dotted path -> its annotation."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaf_paths(ann, f"{prefix}{name}."))
        elif name != "search":
            out[f"{prefix}{name}"] = ann
    return out


def _allows_float(ann: Any) -> bool:
    if ann is float:
        return True
    return get_origin(ann) in (Union, types.UnionType) and float in get_args(ann)


def apply_sample(doc: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A config document with sampled ``params`` (dotted paths) set, and ``search`` dropped.

    A sampled ``leak`` sets the neuron (1.0 -> IF, < 1 -> LIF); a sampled ``neuron`` alone gets
    its default leak (IF: 1.0, LIF: the config's leak if < 1, else 0.95).
    """
    out = copy.deepcopy(doc)
    out.pop("search", None)
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if "leak" in params and "neuron" not in params:
        out["neuron"] = "IF" if float(params["leak"]) == 1.0 else "LIF"
    elif "neuron" in params and "leak" not in params:
        if out["neuron"] == "IF":
            out["leak"] = 1.0
        elif out.get("leak") is None or float(out["leak"]) == 1.0:
            out["leak"] = None
    return out


def config_doc(cfg: Config) -> dict[str, Any]:
    """The fields ``cfg`` was given (defaults left out): a document that validates again."""
    return cfg.model_dump(mode="json", exclude_unset=True)


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The config one tune trial trains: ``base`` with the sampled ``params`` applied."""
    return config_from_dict(apply_sample(config_doc(base), params))


def _check_space(cfg: Config) -> None:
    assert cfg.search is not None
    leaves = _leaf_paths(Config)
    doc = config_doc(cfg)
    for key, dim in cfg.search.space.items():
        where = f"search.space.{key}"
        if key not in leaves:
            near = difflib.get_close_matches(key, list(leaves), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"{where}: unknown config path (a dotted path to a field such as "
                             f"T, vth, leak, optim.lr){hint}")
        if dim.kind in ("uniform", "loguniform") and not _allows_float(leaves[key]):
            raise ValueError(f"{where}: {dim.kind} samples floats, {key} is not a float field "
                             f"(use choice or randint)")
        for value in dim.candidates():
            try:
                config_from_dict(apply_sample(doc, {key: value}))
            except ConfigError as exc:
                reason = str(exc).removeprefix("invalid config: ")
                raise ValueError(f"{where}: the value {value!r} gives an invalid config "
                                 f"({reason})") from None


_UNION_MEMBERS = ("bool", "int", "float", "str")  # the tags pydantic adds to a union's errors
Loc = tuple[int | str, ...]


def _base_loc(loc: Loc) -> Loc:
    return loc[:-1] if loc and loc[-1] in _UNION_MEMBERS else loc


def _message(e: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; `fsnn train --help` lists the sections)"
        if loc.startswith("search.space."):
            msg = f"unknown distribution; use one of {', '.join(DISTRIBUTIONS)}"
    named = not loc or msg.startswith((f"{loc}.", f"{loc}:"))
    return msg if named else f"{loc}: {msg}"


def _format(err: ValidationError) -> str:
    errors = err.errors()
    # an infinite or NaN number: one message, not one per member of the field's union
    not_finite = {_base_loc(tuple(e["loc"])): e["input"] for e in errors
                  if e["type"] == "finite_number"}
    lines: list[str] = []
    for e in errors:
        base = _base_loc(tuple(e["loc"]))
        if base not in not_finite:
            lines.append(_message(e))
        elif e["type"] == "finite_number":
            line = f"{'.'.join(map(str, base))}: must be a finite number (got {e['input']!r})"
            if line not in lines:
                lines.append(line)
    return "invalid config: " + "; ".join(lines)


def yaml_reason(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (line, column)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def _parse_value(item: str, text: str) -> Any:
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: not valid YAML ({yaml_reason(exc)}); check its "
                          "brackets and quotes (values are YAML, e.g. optim.milestones=[30,60])"
                          ) from None


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = doc
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(item, value)
    return doc


def config_from_dict(doc: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({yaml_reason(exc)})") from None
        if loaded is None:  # empty, or only comments: defaults everywhere is not a request
            raise ConfigError(f"{p}: CONFIG is empty; start from configs/demo.yaml (copy it "
                              "and edit), or give at least one field")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of fields")
        doc = loaded
    return config_from_dict(apply_overrides(doc, overrides or []))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
