"""The network spec: the portable description that every engine runs.

A spec is a small directory with two files:

* ``spec.json`` – populations, projections, input encoding, readout, T and labels;
* ``weights.safetensors`` – every tensor the JSON refers to by key.

Loading never executes code (JSON + safetensors only). The in-memory form is `Network`;
`save_spec` / `load_spec` convert it to and from disk bit-exactly.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fsnn.platform.errors import FsnnError

SPEC_FORMAT = "fsnn-spec"
SPEC_VERSION = 1
SPEC_JSON = "spec.json"
SPEC_WEIGHTS = "weights.safetensors"
INPUT = "input"

NeuronModel = Literal["IF", "LIF"]
ResetRule = Literal["subtract", "to_value"]
ProjectionKind = Literal["dense", "conv", "conv_transpose"]
InputKind = Literal["analog", "spikes"]
Timing = Literal["ide", "deploy"]

NEURON_MODELS = ("IF", "LIF")
RESET_RULES = ("subtract", "to_value")
PROJECTION_KINDS = ("dense", "conv", "conv_transpose")
INPUT_KINDS = ("analog", "spikes")
TIMINGS = ("ide", "deploy")


class SpecError(FsnnError, ValueError):
    """A spec (in memory or on disk) is malformed; the message names the field."""


@dataclass(frozen=True)
class Neuron:
    """Neuron parameters of one population.

    Discrete-time dynamics, one step per time unit::

        u[t] = leak * u_after_reset[t-1] + I[t]
        s[t] = u[t] >= v_th
        subtract: u_after_reset[t] = u[t] - v_th * s[t];  to_value: u[t] = v_reset where s[t]
    """

    model: NeuronModel = "IF"
    v_th: float = 1.0
    leak: float = 1.0
    reset: ResetRule = "subtract"
    v_reset: float = 0.0
    v_init: float = 0.0

    def validate(self, where: str) -> None:
        if self.model not in NEURON_MODELS:
            raise SpecError(f"{where}.neuron.model: unknown neuron model {self.model!r}; "
                            f"known: {', '.join(NEURON_MODELS)}")
        if self.reset not in RESET_RULES:
            raise SpecError(f"{where}.neuron.reset: unknown reset rule {self.reset!r}; "
                            f"known: {', '.join(RESET_RULES)}")
        for name in ("v_th", "leak", "v_reset", "v_init"):
            if not math.isfinite(getattr(self, name)):
                raise SpecError(f"{where}.neuron.{name}: must be a finite number")
        if self.v_th <= 0:
            raise SpecError(f"{where}.neuron.v_th: must be > 0 (got {self.v_th})")
        if not 0.0 < self.leak <= 1.0:
            raise SpecError(f"{where}.neuron.leak: must be in (0, 1] (got {self.leak})")
        if self.model == "IF" and self.leak != 1.0:
            raise SpecError(f"{where}.neuron.leak: an IF neuron has leak 1.0 (got {self.leak}); "
                            "use model LIF for a leaky neuron")


@dataclass(frozen=True)
class Population:
    name: str
    shape: tuple[int, ...]
    neuron: Neuron

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Projection:
    """A weighted connection from ``source`` (a population or ``"input"``) to ``target``.

    ``bias`` is a constant current added to the target every step (per output channel for convs,
    per neuron for dense). ``delay`` counts steps in deployment timing; in IDE timing feed-forward
    projections act within the step and feedback projections after one step.
    """

    name: str
    source: str
    target: str
    kind: ProjectionKind
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    delay: int = 1
    feedback: bool = False


@dataclass(frozen=True)
class InputEncoding:
    kind: InputKind
    shape: tuple[int, ...]


@dataclass
class Readout:
    """Linear map of ``source``'s (flattened) firing rates to class scores."""

    source: str
    weight: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class Network:
    """The in-memory spec."""

    input: InputEncoding
    populations: list[Population]
    projections: list[Projection]
    readout: Readout
    T: int
    labels: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise SpecError(f"no population named {name!r}")

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.input.shape if name == INPUT else self.population(name).shape

    def incoming(self, target: str) -> list[Projection]:
        return [q for q in self.projections if q.target == target]

    def with_T(self, T: int) -> Network:
        return replace(self, T=T)

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for q in self.projections:
            out[f"projections.{q.name}.weight"] = q.weight
            if q.bias is not None:
                out[f"projections.{q.name}.bias"] = q.bias
        out["readout.weight"] = self.readout.weight
        if self.readout.bias is not None:
            out["readout.bias"] = self.readout.bias
        return out

    def validate(self) -> None:
        validate_network(self)

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Network:
        """A copy with every tensor detached and cast (e.g. float64 for reference runs)."""
        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(device, dtype)

        projections = [replace(q, weight=cast(q.weight), bias=cast(q.bias))
                       for q in self.projections]
        r = self.readout
        return replace(self, projections=projections,
                       readout=replace(r, weight=cast(r.weight), bias=cast(r.bias)))


def projection_output_shape(q: Projection, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape a projection produces from an input of ``in_shape`` (no batch dimension)."""
    w = q.weight
    if q.kind == "dense":
        if w.dim() != 2:
            raise SpecError(f"projections.{q.name}.weight: a dense weight is 2-D [out, in], "
                            f"got shape {tuple(w.shape)}")
        if w.shape[1] != math.prod(in_shape):
            raise SpecError(f"projections.{q.name}.weight: expects {w.shape[1]} inputs but "
                            f"source {q.source!r} has shape {in_shape} "
                            f"({math.prod(in_shape)} values)")
        return (int(w.shape[0]),)
    if w.dim() != 4:
        raise SpecError(f"projections.{q.name}.weight: a {q.kind} weight is 4-D, "
                        f"got shape {tuple(w.shape)}")
    if len(in_shape) != 3:
        raise SpecError(f"projections.{q.name}: a {q.kind} needs a [C, H, W] source, "
                        f"{q.source!r} has shape {in_shape}")
    c, h, wd = in_shape
    k_h, k_w = int(w.shape[2]), int(w.shape[3])
    if q.kind == "conv":
        if w.shape[1] != c:
            raise SpecError(f"projections.{q.name}.weight: expects {w.shape[1]} input channels, "
                            f"source {q.source!r} has {c}")
        oh = (h + 2 * q.padding - k_h) // q.stride + 1
        ow = (wd + 2 * q.padding - k_w) // q.stride + 1
        return (int(w.shape[0]), oh, ow)
    if w.shape[0] != c:
        raise SpecError(f"projections.{q.name}.weight: a conv_transpose weight is "
                        f"[in, out, kh, kw]; expects {w.shape[0]} input channels, "
                        f"source {q.source!r} has {c}")
    oh = (h - 1) * q.stride - 2 * q.padding + k_h + q.output_padding
    ow = (wd - 1) * q.stride - 2 * q.padding + k_w + q.output_padding
    return (int(w.shape[1]), oh, ow)


def _check_tensor(name: str, t: torch.Tensor) -> None:
    if not torch.is_floating_point(t):
        raise SpecError(f"{name}: must be a floating-point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise SpecError(f"{name}: contains NaN or infinite values")


def validate_network(net: Network) -> None:
    """Check names, shapes, parameters and tensors; raise `SpecError` naming the field."""
    if not isinstance(net.T, int) or net.T <= 0:
        raise SpecError(f"T: must be a positive integer (got {net.T!r})")
    if net.input.kind not in INPUT_KINDS:
        raise SpecError(f"input.kind: unknown input kind {net.input.kind!r}; "
                        f"known: {', '.join(INPUT_KINDS)}")
    if not net.populations:
        raise SpecError("populations: a network needs at least one population")
    names = [p.name for p in net.populations]
    if len(set(names)) != len(names) or INPUT in names:
        raise SpecError(f"populations: names must be unique and not {INPUT!r} (got {names})")
    for p in net.populations:
        if not p.shape or any(int(d) <= 0 for d in p.shape):
            raise SpecError(f"populations.{p.name}.shape: dimensions must be positive "
                            f"(got {p.shape})")
        p.neuron.validate(f"populations.{p.name}")
    known = {*names, INPUT}
    order = {n: i for i, n in enumerate(names)}
    for q in net.projections:
        where = f"projections.{q.name}"
        if q.kind not in PROJECTION_KINDS:
            raise SpecError(f"{where}.kind: unknown projection kind {q.kind!r}; "
                            f"known: {', '.join(PROJECTION_KINDS)}")
        if q.source not in known:
            raise SpecError(f"{where}.source: unknown population {q.source!r}")
        if q.target not in order:
            raise SpecError(f"{where}.target: unknown population {q.target!r}")
        if not isinstance(q.delay, int) or q.delay < 1:
            raise SpecError(f"{where}.delay: must be an integer >= 1 step (got {q.delay!r})")
        if q.stride < 1 or q.padding < 0 or q.output_padding < 0:
            raise SpecError(f"{where}: stride must be >= 1 and paddings >= 0")
        _check_tensor(f"{where}.weight", q.weight)
        out_shape = projection_output_shape(q, net.shape_of(q.source))
        target_shape = net.population(q.target).shape
        if out_shape != target_shape:
            raise SpecError(f"{where}: produces shape {out_shape} but target {q.target!r} "
                            f"has shape {target_shape}")
        if q.bias is not None:
            _check_tensor(f"{where}.bias", q.bias)
            if q.bias.numel() != out_shape[0]:
                raise SpecError(f"{where}.bias: needs {out_shape[0]} values (one per output "
                                f"{'neuron' if q.kind == 'dense' else 'channel'}), "
                                f"got {q.bias.numel()}")
        if q.source != INPUT and not q.feedback and order[q.source] >= order[q.target]:
            raise SpecError(f"{where}: a feed-forward projection must go from an earlier to a "
                            f"later population (list order); mark it feedback=true otherwise")
    r = net.readout
    if r.source not in order:
        raise SpecError(f"readout.source: unknown population {r.source!r}")
    _check_tensor("readout.weight", r.weight)
    size = net.population(r.source).size
    if r.weight.dim() != 2 or r.weight.shape[1] != size:
        raise SpecError(f"readout.weight: needs shape [classes, {size}], "
                        f"got {tuple(r.weight.shape)}")
    if r.bias is not None:
        _check_tensor("readout.bias", r.bias)
        if r.bias.shape != (r.weight.shape[0],):
            raise SpecError(f"readout.bias: needs shape [{r.weight.shape[0]}]")
    if net.labels and len(net.labels) != r.weight.shape[0]:
        raise SpecError(f"labels: {len(net.labels)} labels for {r.weight.shape[0]} classes")


# ---------------------------------------------------------------------------------------------
# serialisation


def _neuron_to_json(n: Neuron) -> dict[str, Any]:
    return {"model": n.model, "v_th": n.v_th, "leak": n.leak, "reset": n.reset,
            "v_reset": n.v_reset, "v_init": n.v_init}


def network_to_json(net: Network) -> dict[str, Any]:
    """The JSON description (tensors referenced by key into the safetensors file)."""
    projections = []
    for q in net.projections:
        projections.append({
            "name": q.name, "source": q.source, "target": q.target, "kind": q.kind,
            "weight": f"projections.{q.name}.weight",
            "bias": None if q.bias is None else f"projections.{q.name}.bias",
            "stride": q.stride, "padding": q.padding, "output_padding": q.output_padding,
            "delay": q.delay, "feedback": q.feedback,
        })
    return {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "T": net.T,
        "input": {"kind": net.input.kind, "shape": list(net.input.shape)},
        "populations": [{"name": p.name, "shape": list(p.shape),
                         "neuron": _neuron_to_json(p.neuron)} for p in net.populations],
        "projections": projections,
        "readout": {"source": net.readout.source, "weight": "readout.weight",
                    "bias": None if net.readout.bias is None else "readout.bias"},
        "labels": list(net.labels),
        "metadata": net.metadata,
    }


def save_spec(net: Network, path: str | Path) -> Path:
    """Write ``net`` as ``path/spec.json`` + ``path/weights.safetensors`` (validated first)."""
    net.validate()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.tensors().items()}
    save_file(tensors, str(out / SPEC_WEIGHTS), metadata={"format": SPEC_FORMAT})
    (out / SPEC_JSON).write_text(json.dumps(network_to_json(net), indent=2) + "\n")
    return out


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}
_EXPECTED: dict[Any, str] = {dict: "an object", list: "a list", str: "a string",
                             bool: "true or false", int: "an integer"}


def _got(value: Any) -> str:
    if value is None:
        return "null"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f"{_JSON_KINDS.get(type(value), type(value).__name__)} " \
           f"({text if len(text) <= 40 else text[:37] + '...'})"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object (JSON mapping), got {_got(value)}")
    return value


def _get(d: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in _mapping(d, where):
        raise SpecError(f"{where}.{key}: missing")
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SpecError(f"{where}.{key}: expected {_EXPECTED.get(kind, 'a number')}, "
                        f"got {_got(value)}")
    return value


def _number(d: Any, key: str, where: str) -> float:
    return float(_get(d, key, where, (int, float)))


def _shape(d: Any, where: str) -> tuple[int, ...]:
    dims = _get(d, "shape", where, list)
    if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in dims):
        raise SpecError(f"{where}.shape: expected a list of integers, got {_got(dims)}")
    return tuple(int(x) for x in dims)


def _tensor(tensors: dict[str, torch.Tensor], key: Any, where: str) -> torch.Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise SpecError(f"{where}: tensor {key!r} is not in {SPEC_WEIGHTS}")
    return tensors[key]


def _population(p: Any, where: str) -> Population:
    nd, nw = _get(p, "neuron", where, dict), f"{where}.neuron"
    neuron = Neuron(model=_get(nd, "model", nw, str), v_th=_number(nd, "v_th", nw),
                    leak=_number(nd, "leak", nw), reset=_get(nd, "reset", nw, str),
                    v_reset=_number(nd, "v_reset", nw), v_init=_number(nd, "v_init", nw))
    return Population(name=_get(p, "name", where, str), shape=_shape(p, where), neuron=neuron)


def _projection(q: Any, where: str, tensors: dict[str, torch.Tensor]) -> Projection:
    bias_key = _mapping(q, where).get("bias")
    return Projection(
        name=_get(q, "name", where, str), source=_get(q, "source", where, str),
        target=_get(q, "target", where, str), kind=_get(q, "kind", where, str),
        weight=_tensor(tensors, _get(q, "weight", where, str), f"{where}.weight"),
        bias=None if bias_key is None else _tensor(tensors, bias_key, f"{where}.bias"),
        stride=_get(q, "stride", where, int), padding=_get(q, "padding", where, int),
        output_padding=_get(q, "output_padding", where, int),
        delay=_get(q, "delay", where, int), feedback=_get(q, "feedback", where, bool))


def _readout(doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Readout:
    rd = _get(doc, "readout", "spec", dict)
    bias_key = rd.get("bias")
    return Readout(source=_get(rd, "source", "readout", str),
                   weight=_tensor(tensors, _get(rd, "weight", "readout", str),
                                  "readout.weight"),
                   bias=None if bias_key is None else _tensor(tensors, bias_key, "readout.bias"))


def network_from_json(doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Network:
    """The `Network` a spec.json document describes (SpecError naming the entry of any
    structural mistake: a missing key, a wrong type, a list where an object belongs)."""
    if not isinstance(doc, dict) or doc.get("format") != SPEC_FORMAT:
        raise SpecError(f"{SPEC_JSON}: not an fsnn spec (format field is not {SPEC_FORMAT!r})")
    version = doc.get("version")
    if version != SPEC_VERSION:
        raise SpecError(f"version: this fsnn reads spec version {SPEC_VERSION}, "
                        f"the file is version {version!r}")
    try:
        net = _network(doc, tensors)
    except SpecError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a safety net
        raise SpecError(f"{SPEC_JSON}: malformed ({type(exc).__name__}: {exc})") from None
    net.validate()
    return net


def _network(doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Network:
    inp = _get(doc, "input", "spec", dict)
    populations = [_population(p, f"populations[{i}]")
                   for i, p in enumerate(_get(doc, "populations", "spec", list))]
    projections = [_projection(q, f"projections[{i}]", tensors)
                   for i, q in enumerate(_get(doc, "projections", "spec", list))]
    labels = doc.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str | int | float) for x in labels):
        raise SpecError(f"spec.labels: expected a list of names, got {_got(labels)}")
    return Network(input=InputEncoding(kind=_get(inp, "kind", "input", str),
                                       shape=_shape(inp, "input")),
                   populations=populations, projections=projections,
                   readout=_readout(doc, tensors), T=_get(doc, "T", "spec", int),
                   labels=[str(x) for x in labels],
                   metadata=dict(_mapping(doc.get("metadata", {}), "spec.metadata")))


def load_spec(path: str | Path) -> Network:
    """Read a spec directory written by `save_spec`. Executes no code."""
    root = Path(path)
    if root.is_file() and root.name in (SPEC_JSON, SPEC_WEIGHTS):
        root = root.parent
    js, wt = root / SPEC_JSON, root / SPEC_WEIGHTS
    for f in (js, wt):
        if not f.is_file():
            raise SpecError(f"{f}: missing; a spec directory holds {SPEC_JSON} and {SPEC_WEIGHTS}")
    try:
        doc = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{js}: not valid JSON ({exc}); the spec is corrupt, export it again")\
            from exc
    try:
        tensors = load_file(str(wt))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError(f"{wt}: not a readable safetensors file ({exc}); the spec is corrupt, "
                        "export it again") from exc
    try:
        return network_from_json(doc, tensors)
    except SpecError as exc:  # name the file: the message names the entry within it
        raise SpecError(f"{js}: {str(exc).removeprefix(f'{SPEC_JSON}: ')}") from None
