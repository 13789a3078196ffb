"""NIR export: a feedback spec becomes a NIR graph that round-trips through ``nir.write`` and
``nir.read`` with the same nodes, edges, shapes and weights, and whose nodes compute the spec's
maps (the transposed-conv rewrites included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import dense_net
from test_nest_parity import IF, LIF90, conv_net

from fsnn.pipelines.cli import main
from fsnn.pipelines.export import ExportError, compare_graphs, export_nir, network_to_nir
from fsnn.platform.engine import apply_projection
from fsnn.platform.spec import (
    INPUT,
    InputEncoding,
    Network,
    Neuron,
    Population,
    Projection,
    Readout,
    save_spec,
)
from fsnn.platform.zoo import build_model

nir = pytest.importorskip("nir")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def convt_stride1_net() -> Network:
    """input (2,6,6) -conv-> a (3,6,6) -conv s2-> b (4,3,3); feedback b -convT s1-> b."""
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64) - 0.5

    n = Neuron("LIF", v_th=1.0, leak=0.9, reset="to_value", v_reset=-0.1)
    pops = [Population("a", (3, 6, 6), n), Population("b", (4, 3, 3), n)]
    projs = [Projection("in", INPUT, "a", "conv", r(3, 2, 3, 3), r(3), padding=1),
             Projection("ab", "a", "b", "conv", r(4, 3, 3, 3), None, stride=2, padding=1),
             Projection("bb", "b", "b", "conv_transpose", r(4, 4, 3, 3), None, padding=1,
                        feedback=True, delay=2)]
    return Network(InputEncoding("analog", (2, 6, 6)), pops, projs,
                   Readout("b", r(5, 36), r(5)), T=10)


NETS = {"dense IF": lambda: dense_net(), "conv LIF, strided convT": lambda: conv_net(LIF90),
        "conv IF": lambda: conv_net(IF), "convT stride 1": convt_stride1_net,
        "f64c5": lambda: build_model("f64c5").eval().to_network()}


@pytest.mark.parametrize("name", list(NETS))
def test_feedback_net_round_trips(name: str, tmp_path: Path) -> None:
    net = NETS[name]()
    graph = network_to_nir(net)
    path = export_nir(net, tmp_path / "net.nir")
    back = nir.read(path)
    assert compare_graphs(graph, back) == []
    # every population is a neuron node of the right type, shape and parameters
    for p in net.populations:
        node = back.nodes[f"pop_{p.name}"]
        assert type(node).__name__ == ("IF" if p.neuron.leak == 1.0 else "LIF")
        assert tuple(node.v_threshold.shape) in (p.shape, (p.size,))
        assert np.all(node.v_threshold == p.neuron.v_th)
        assert np.all(node.v_reset == p.neuron.v_reset)
        if p.neuron.leak != 1.0:  # Euler at dt = 1: v <- (1 - 1/tau) v + (r/tau) I
            assert np.allclose(1 - 1 / node.tau, p.neuron.leak)
            assert np.allclose(node.r / node.tau, 1.0)
        else:
            assert np.all(node.r == 1.0)
    # every projection is there, feedback included, with its weights
    for q in net.projections:
        node = back.nodes[f"proj_{q.name}"]
        assert (f"proj_{q.name}", f"pop_{q.target}") in back.edges or \
            any(a == f"proj_{q.name}" for a, _ in back.edges)
        assert int(node.metadata["fsnn_delay"]) == q.delay
        assert int(node.metadata["fsnn_feedback"]) == int(q.feedback)
        if q.kind == "dense":
            assert np.array_equal(node.weight, q.weight.numpy())
        elif q.kind == "conv" and isinstance(node, nir.Conv2d):
            assert np.array_equal(node.weight, q.weight.numpy())
            assert tuple(np.atleast_1d(node.stride)) in ((q.stride,), (q.stride, q.stride))
    assert set(back.inputs) == {"input"} and set(back.outputs) == {"output"}
    assert np.array_equal(back.nodes["readout"].weight, net.readout.weight.numpy())


@pytest.mark.parametrize("name", ["conv LIF, strided convT", "convT stride 1"])
def test_exported_nodes_compute_the_projections(name: str) -> None:
    """Conv2d and Affine nodes (the rewrites of transposed convs included) apply the same
    linear maps as the spec's projections."""
    net = NETS[name]()
    graph = network_to_nir(net)
    g = torch.Generator().manual_seed(0)
    for q in net.projections:
        src = torch.rand(2, *net.shape_of(q.source), generator=g, dtype=torch.float64)
        tgt_shape = net.population(q.target).shape
        want = apply_projection(q, src, tgt_shape)
        if q.bias is not None:
            want = want + (q.bias.view(1, -1, *([1] * (len(tgt_shape) - 1))) if q.kind != "dense"
                           else q.bias)
        node = graph.nodes[f"proj_{q.name}"]
        if isinstance(node, nir.Conv2d):
            stride = tuple(int(v) for v in np.broadcast_to(node.stride, 2))
            padding = tuple(int(v) for v in np.broadcast_to(node.padding, 2))
            got = F.conv2d(src, _t(node.weight), _t(node.bias), stride=stride, padding=padding)
        else:
            got = src.flatten(1) @ _t(node.weight).T
            if isinstance(node, nir.Affine):
                got = got + _t(node.bias)
        assert torch.allclose(got.reshape(want.shape), want, atol=1e-12), q.name


def test_too_large_strided_convT_is_refused() -> None:
    net = build_model("alexnet_f").eval().to_network()
    with pytest.raises(ExportError, match="dense matrix"):
        network_to_nir(net)


def test_fsnn_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = save_spec(dense_net(), tmp_path / "spec")
    out = tmp_path / "model.nir"
    assert main(["export", str(spec), "--format", "nir", "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert set(nir.read(out).nodes) >= {"input", "output", "pop_a", "pop_b", "proj_ba"}
    (tmp_path / "not-a-spec").mkdir()
    assert main(["export", str(tmp_path / "not-a-spec")]) == 2
    assert "spec.json: missing" in capsys.readouterr().err
