"""``fsnn export SOURCE --format nir``: a spec as a NIR graph (package ``nir``, NIR 1.0).

Nodes and how the spec's discrete-time semantics map to NIR's continuous ones at ``dt = 1``
(forward Euler, the discretisation NIR's PyTorch importers use):

====================  ========================================================================
spec                  NIR
====================  ========================================================================
input                 ``Input`` (shape of one time step; analog input is held constant)
dense (+ bias)        ``Affine`` (``Linear`` without bias); a multi-dimensional source is
                      ``Flatten``-ed first (C-order, as the spec)
conv (+ bias)         ``Conv2d`` (weight ``[out, in, kh, kw]``, stride, padding, bias per
                      output channel; zero bias when the spec has none)
conv_transpose        NIR 1.0 has no transposed convolution. Stride 1: the equivalent
                      ``Conv2d`` (kernel transposed to ``[out, in]`` and flipped, padding
                      ``k - 1 - p``). Stride > 1: an ``Affine`` holding the projection's dense
                      matrix; its target population then becomes a flat ``[N]`` node, and so
                      does every population a conv reaches from a flat one (NIR has no
                      unflatten): their convs become ``Affine`` too, other inputs are
                      ``Flatten``-ed; refused when a matrix would exceed ``MAX_DENSE``
                      entries (AlexNet-F: every layer would be dense)
IF neuron             ``IF``: ``dv/dt = R I`` with ``R = 1``: ``v[t] = v[t-1] + I[t]``
LIF neuron (leak l)   ``LIF``: ``tau dv/dt = (v_leak - v) + R I`` with ``tau = 1/(1-l)``,
                      ``R = tau``, ``v_leak = 0``: ``v[t] = l v[t-1] + I[t]``
threshold, reset      ``v_threshold = v_th``; ``v_reset``. NIR's neurons fire at
                      ``v > v_threshold`` and reset to ``v_reset``: the spec's ``>=`` and its
                      ``subtract`` rule are recorded in the node's metadata
                      (``fsnn_reset``, ``fsnn_threshold``), as are ``v_init`` and the leak
feedback              edges like any other (NIR graphs may be cyclic); every projection's
                      delay in steps and feedback flag are in its metadata (``fsnn_delay``,
                      ``fsnn_feedback``): NIR edges carry no delay
readout               ``Affine`` from the readout population to ``Output`` (it maps spikes;
                      averaged over time it is the spec's readout of rates)
====================  ========================================================================
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsnn.platform.engine import apply_projection
from fsnn.platform.errors import FsnnError
from fsnn.platform.spec import INPUT, Network, Population, Projection

MAX_DENSE = 1 << 24  # entries of a dense matrix an exported Affine may hold


class ExportError(FsnnError, RuntimeError):
    """The spec cannot be exported; the message says why."""


def _nir() -> Any:
    try:
        import nir
    except ImportError as exc:
        raise ExportError(f"NIR export needs the nir package ({exc}); install it with: "
                          "pip install 'fsnn[nir]'") from exc
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy().copy()


def _node(kind: str, name: str) -> str:
    return f"{kind}_{name}"


def dense_matrix(q: Projection, src_shape: tuple[int, ...],
                 tgt_shape: tuple[int, ...]) -> np.ndarray:
    """The projection's linear map as a ``[N_target, N_source]`` matrix."""
    n_src, n_tgt = math.prod(src_shape), math.prod(tgt_shape)
    if n_src * n_tgt > MAX_DENSE:
        raise ExportError(f"projection {q.name!r}: NIR has no node for a {q.kind} of stride "
                          f"{q.stride}; its dense matrix ({n_tgt} x {n_src}) is over the "
                          f"{MAX_DENSE}-entry limit")
    w = q.weight.detach().to(torch.float64)
    probe = Projection(q.name, q.source, q.target, q.kind, w, None, q.stride, q.padding,
                       q.output_padding)
    basis = torch.eye(n_src, dtype=torch.float64).view(n_src, *src_shape)
    return _np(apply_projection(probe, basis, tgt_shape).reshape(n_src, n_tgt).T)


def _flat_populations(net: Network) -> set[str]:
    """Populations that become flat ``[N]`` nodes: targets of a strided transposed conv, and
    (NIR has no unflatten) targets of any conv from a flat population."""
    flat = {q.target for q in net.projections if q.kind == "conv_transpose" and q.stride > 1}
    grown = True
    while grown:
        more = {q.target for q in net.projections if q.source in flat and q.kind != "dense"}
        grown = not more <= flat
        flat |= more
    return {name for name in flat if len(net.population(name).shape) > 1}


def _projection_node(q: Projection, net: Network, flat: set[str]) -> Any:
    nir = _nir()
    src_shape = net.shape_of(q.source)
    tgt_shape = net.population(q.target).shape
    meta = {"fsnn_delay": int(q.delay), "fsnn_feedback": int(q.feedback),
            "fsnn_kind": q.kind}
    bias = None if q.bias is None else _np(q.bias)
    as_dense = q.source in flat or (q.kind == "conv_transpose" and q.stride > 1)
    if q.kind == "dense" or as_dense:
        w = _np(q.weight) if q.kind == "dense" else dense_matrix(q, src_shape, tgt_shape)
        if bias is not None and q.kind != "dense":  # per channel -> per neuron
            bias = np.repeat(bias, math.prod(tgt_shape[1:]))
        if bias is None:
            return nir.Linear(weight=w, metadata=meta)
        return nir.Affine(weight=w, bias=bias, metadata=meta)
    w4 = _np(q.weight)
    padding = q.padding
    if q.kind == "conv_transpose":  # stride 1: an ordinary convolution
        w4 = np.ascontiguousarray(w4.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        padding = w4.shape[2] - 1 - q.padding
        if w4.shape[2] != w4.shape[3] or padding < 0:
            raise ExportError(f"projection {q.name!r}: a transposed conv needs a square kernel "
                              f"and padding < kernel size to become a Conv2d")
    return nir.Conv2d(input_shape=tuple(src_shape[1:]), weight=w4, stride=q.stride,
                      padding=padding, dilation=1, groups=1,
                      bias=np.zeros(w4.shape[0]) if bias is None else bias, metadata=meta)


def _neuron_node(p: Population, shape: tuple[int, ...]) -> Any:
    nir = _nir()
    n = p.neuron
    full = np.ones(shape)
    meta = {"fsnn_reset": n.reset, "fsnn_threshold": ">=", "fsnn_v_init": float(n.v_init),
            "fsnn_leak": float(n.leak), "dt": 1.0}
    if n.model == "IF" or n.leak == 1.0:
        return nir.IF(r=full.copy(), v_threshold=full * n.v_th, v_reset=full * n.v_reset,
                      metadata=meta)
    tau = 1.0 / (1.0 - n.leak)
    return nir.LIF(tau=full * tau, r=full * tau, v_leak=np.zeros(shape),
                   v_threshold=full * n.v_th, v_reset=full * n.v_reset, metadata=meta)


def network_to_nir(net: Network) -> Any:
    """The spec as a validated ``nir.NIRGraph`` (type-checked on construction)."""
    nir = _nir()
    net.validate()
    flat = _flat_populations(net)
    shapes = {p.name: ((p.size,) if p.name in flat else p.shape) for p in net.populations}
    nodes: dict[str, Any] = {"input": nir.Input(input_type=np.array(net.input.shape))}
    edges: list[tuple[str, str]] = []
    for p in net.populations:
        nodes[_node("pop", p.name)] = _neuron_node(p, shapes[p.name])

    def source(name: str, wanted_flat: bool, tag: str) -> str:
        node = "input" if name == INPUT else _node("pop", name)
        shape = net.shape_of(name) if name == INPUT else shapes[name]
        if wanted_flat and len(shape) > 1:
            flat_node = _node("flatten", tag)
            nodes[flat_node] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0,
                                           end_dim=-1)
            edges.append((node, flat_node))
            return flat_node
        return node

    for q in net.projections:
        node = _projection_node(q, net, flat)
        name = _node("proj", q.name)
        nodes[name] = node
        edges.append((source(q.source, isinstance(node, nir.Linear | nir.Affine), q.name),
                      name))
        out = name
        if q.target in flat and isinstance(node, nir.Conv2d):
            out = _node("flatten", f"{q.name}_out")
            nodes[out] = nir.Flatten(input_type={"input": np.array(net.population(q.target)
                                                                    .shape)},
                                     start_dim=0, end_dim=-1)
            edges.append((name, out))
        edges.append((out, _node("pop", q.target)))
    r = net.readout
    w = _np(r.weight)
    nodes["readout"] = nir.Linear(weight=w) if r.bias is None else \
        nir.Affine(weight=w, bias=_np(r.bias))
    edges.append((source(r.source, True, "readout"), "readout"))
    nodes["output"] = nir.Output(output_type=np.array([w.shape[0]]))
    edges.append(("readout", "output"))
    meta = {"fsnn_T": int(net.T), "fsnn_input_kind": net.input.kind, "dt": 1.0,
            "fsnn_labels": ",".join(net.labels)}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=True)


def export_nir(net: Network, path: str | Path) -> Path:
    """Write ``net`` as NIR (HDF5), read it back and check it matches; returns the path."""
    nir = _nir()
    graph = network_to_nir(net)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nir.write(out, graph)
    back = nir.read(out)
    problems = compare_graphs(graph, back)
    if problems:
        raise ExportError(f"{out}: the written NIR graph does not read back equal: "
                          + "; ".join(problems))
    return out


_ARRAYS = ("weight", "bias", "r", "tau", "v_leak", "v_threshold", "v_reset")


def compare_graphs(a: Any, b: Any) -> list[str]:
    """Differences between two NIR graphs: node names and types, edges, shapes, parameters."""
    problems: list[str] = []
    if set(a.nodes) != set(b.nodes):
        problems.append(f"nodes differ: {sorted(set(a.nodes) ^ set(b.nodes))}")
    if sorted(map(tuple, a.edges)) != sorted(map(tuple, b.edges)):
        problems.append("edges differ")
    for name in sorted(set(a.nodes) & set(b.nodes)):
        x, y = a.nodes[name], b.nodes[name]
        if type(x) is not type(y):
            problems.append(f"{name}: {type(x).__name__} vs {type(y).__name__}")
            continue
        for key in _ARRAYS:
            if hasattr(x, key) and not np.array_equal(np.asarray(getattr(x, key)),
                                                      np.asarray(getattr(y, key))):
                problems.append(f"{name}.{key} differs")
        for attr in ("input_type", "output_type"):
            tx, ty = getattr(x, attr), getattr(y, attr)
            if set(tx) != set(ty) or any(not np.array_equal(tx[k], ty[k]) for k in tx):
                problems.append(f"{name}.{attr} differs")
    return problems


def _writable_dir(what: str, folder: Path) -> Path:
    """The nearest existing folder at or above ``folder`` (where ``what`` is to be written), if
    a file can be created in it."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"{what}: {folder} is a file, not a folder; give a path in a "
                          "writable folder, e.g. --out model.nir")
    try:  # a real probe: permission bits lie to root, read-only and virtual file systems too
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ExportError(f"{what}: cannot write in {folder} ({exc.strerror or exc}); "
                          "give a path in a writable folder, e.g. --out model.nir") from None
    return folder


def check_out_path(out: str | Path) -> Path:
    """Refuse (ExportError, one line) an output path that is a folder or cannot be written."""
    path = Path(out)
    if path.is_dir():
        raise ExportError(f"--out {path}: is a folder; give a file name, e.g. "
                          f"--out {path / 'model.nir'}")
    _writable_dir(f"--out {path}", path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise ExportError(f"--out {path}: the file is read-only; give another path or make it "
                          "writable")
    return path


def run_export(source: str, fmt: str = "nir", out: str | None = None,
               tracking_uri: str | None = None) -> Path:
    """Export a spec directory or an MLflow run's spec; returns the written file. The output
    path is checked before anything is loaded."""
    if fmt != "nir":
        raise ExportError(f"unknown export format {fmt!r}; known: nir")
    if out is not None:
        check_out_path(out)
    else:
        _writable_dir("the default --out (SOURCE.nir, here)", Path.cwd())
    from fsnn.platform.spec import SpecError, load_spec

    try:
        if Path(source).exists():  # a spec directory: no tracking server involved
            net, run_id = load_spec(source), None
        else:
            from fsnn.pipelines.deploy import resolve_source
            from fsnn.pipelines.tracking import resolve_tracking_uri

            with tempfile.TemporaryDirectory() as d:
                net, run_id = resolve_source(source, resolve_tracking_uri(tracking_uri),
                                             Path(d))
    except SpecError as exc:
        raise ExportError(str(exc)) from None
    if out is None:
        stem = Path(source).name if Path(source).exists() else (run_id or source)
        out = str(check_out_path(f"{stem}.nir"))
    return export_nir(net, out)
