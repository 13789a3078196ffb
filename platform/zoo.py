"""The model zoo of the IDE paper (arXiv 2109.14247), built as `FeedbackSNN` s.

- ``f400`` (Fashion-MNIST): dense 784->400 with BN; feedback dense 400->400 (spectral norm).
- ``f64c5`` (MNIST): conv 1->64 k5 s2 p2 with BN; feedback conv 64->64 k5 p2 (spectral norm).
- ``f64c5_nmnist`` (N-MNIST, spike input 2x34x34): conv 2->64 k5 s2 p1 with BN; feedback as f64c5.
- ``alexnet_f`` (CIFAR): conv 3->96 k3 s2 p1 with BN; ring 96->256, 256->384 (s2), 384->384,
  384->256 (all k3, BN); feedback convT 256->96 k3 s2 (spectral norm).
- ``cifarnet_f`` (CIFAR): as alexnet_f with channels 128, 256, 512, 1024, 512.

Every projection has dropout (a mask fixed over time) during training; defaults V_th = 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fsnn.platform.ide import AdjointConfig
from fsnn.platform.layers import ProjectionLayer
from fsnn.platform.methods.base import Method
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import InputKind, Neuron, SpecError


@dataclass(frozen=True)
class ZooEntry:
    input_kind: InputKind
    input_shape: tuple[int, ...]
    build: Callable[[tuple[int, ...], float], tuple[ProjectionLayer, list[ProjectionLayer]]]
    description: str


def _f400(shape: tuple[int, ...], p: float) -> tuple[ProjectionLayer, list[ProjectionLayer]]:
    inp = ProjectionLayer("dense", shape, 400, bias=True, batch_norm=True, dropout=p)
    fb = ProjectionLayer("dense", (400,), 400, bias=False, spectral_norm=1.0, dropout=p)
    return inp, [fb]


def _conv64(padding: int) -> Callable[[tuple[int, ...], float],
                                      tuple[ProjectionLayer, list[ProjectionLayer]]]:
    def build(shape: tuple[int, ...], p: float) -> tuple[ProjectionLayer, list[ProjectionLayer]]:
        inp = ProjectionLayer("conv", shape, 64, kernel=5, stride=2, padding=padding, bias=True,
                              batch_norm=True, dropout=p)
        fb = ProjectionLayer("conv", inp.out_shape, 64, kernel=5, stride=1, padding=2,
                             bias=False, spectral_norm=1.0, dropout=p)
        return inp, [fb]
    return build


def _multilayer(channels: tuple[int, int, int, int, int]) -> Callable[
        [tuple[int, ...], float], tuple[ProjectionLayer, list[ProjectionLayer]]]:
    c0, c1, c2, c3, c4 = channels

    def build(shape: tuple[int, ...], p: float) -> tuple[ProjectionLayer, list[ProjectionLayer]]:
        inp = ProjectionLayer("conv", shape, c0, kernel=3, stride=2, padding=1, bias=True,
                              batch_norm=True, dropout=p)
        ring: list[ProjectionLayer] = []
        prev = inp.out_shape
        for out, stride in ((c1, 1), (c2, 2), (c3, 1), (c4, 1)):
            layer = ProjectionLayer("conv", prev, out, kernel=3, stride=stride, padding=1,
                                    bias=True, batch_norm=True, dropout=p)
            ring.append(layer)
            prev = layer.out_shape
        ring.append(ProjectionLayer("conv_transpose", prev, c0, kernel=3, stride=2, padding=1,
                                    output_padding=1, bias=False, spectral_norm=1.0, dropout=p))
        return inp, ring
    return build


ZOO: dict[str, ZooEntry] = {
    "f400": ZooEntry("analog", (1, 28, 28), _f400, "Fashion-MNIST F400 (IDE paper)"),
    "f64c5": ZooEntry("analog", (1, 28, 28), _conv64(2), "MNIST 64C5s (F64C5) (IDE paper)"),
    "f64c5_nmnist": ZooEntry("spikes", (2, 34, 34), _conv64(1), "N-MNIST 64C5s (F64C5)"),
    "alexnet_f": ZooEntry("analog", (3, 32, 32), _multilayer((96, 256, 384, 384, 256)),
                          "CIFAR AlexNet-F (IDE paper)"),
    "cifarnet_f": ZooEntry("analog", (3, 32, 32), _multilayer((128, 256, 512, 1024, 512)),
                           "CIFAR CIFARNet-F (IDE paper)"),
}


def build_model(name: str, *, num_classes: int = 10, T: int = 30, neuron: Neuron | None = None,
                dropout: float = 0.2, input_shape: tuple[int, ...] | None = None,
                timing: str = "ide", adjoint: AdjointConfig | None = None,
                labels: list[str] | None = None, method: Method | None = None) -> FeedbackSNN:
    """Model ``name`` of the zoo (see the module's list) as an untrained
    `FeedbackSNN`: ``T`` time steps, ``neuron`` (default IF with V_th 2), ``dropout`` on every
    projection while training, ``timing`` ``"ide"`` (training) or ``"deployment"``, the
    training ``method`` (default IDE with ``adjoint``). ``model.eval().to_network()`` is its
    spec."""
    if name not in ZOO:
        raise SpecError(f"model: unknown model {name!r}; known: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    shape = tuple(input_shape or entry.input_shape)
    inp, ring = entry.build(shape, dropout)
    return FeedbackSNN(input_kind=entry.input_kind, input_shape=shape, input_layer=inp,
                       ring=ring, neuron=neuron or Neuron("IF", v_th=2.0), num_classes=num_classes,
                       T=T, timing=timing, adjoint=adjoint, labels=labels, name=name,
                       method=method)
