"""Spec: bit-exact round trip, export from a model, and clear errors on bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nets import dense_net, small_model

from fsnn.platform.engine import readout, simulate
from fsnn.platform.spec import (
    SPEC_JSON,
    SPEC_WEIGHTS,
    Neuron,
    SpecError,
    load_spec,
    network_to_json,
    save_spec,
)


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    net = dense_net(neuron=Neuron("LIF", v_th=0.7, leak=0.9))
    save_spec(net, tmp_path)
    back = load_spec(tmp_path)
    assert network_to_json(back) == network_to_json(net)
    for key, t in net.tensors().items():
        got = back.tensors()[key]
        assert got.dtype == t.dtype and torch.equal(got, t), key
    x = torch.rand(4, 6, dtype=torch.float64)
    a, b = simulate(net, x), simulate(back, x)
    for k in a.counts:
        assert torch.equal(a.counts[k], b.counts[k])
    # and a second save writes identical bytes
    save_spec(back, tmp_path / "again")
    assert (tmp_path / SPEC_JSON).read_bytes() == (tmp_path / "again" / SPEC_JSON).read_bytes()
    assert (tmp_path / SPEC_WEIGHTS).read_bytes() == \
        (tmp_path / "again" / SPEC_WEIGHTS).read_bytes()


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_model_export_reproduces_eval_forward(kind: str, tmp_path: Path) -> None:
    model = small_model(kind, neuron=Neuron("LIF", v_th=1.0, leak=0.95), dropout=0.2).double()
    x = torch.randn(32, *model.input_shape, dtype=torch.float64)
    model.train()
    for _ in range(3):  # move the batch-norm statistics away from their initial values
        model(x * 2 + 0.5)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    save_spec(model.to_network(), tmp_path)
    net = load_spec(tmp_path)
    got = readout(net, simulate(net, x).rates)
    assert net.populations[0].neuron.leak == 0.95
    assert (got.argmax(1) == logits.argmax(1)).all()
    torch.testing.assert_close(got, logits, rtol=1e-6, atol=1e-6)


def _write(tmp_path: Path, mutate) -> Path:
    net = dense_net()
    save_spec(net, tmp_path)
    doc = json.loads((tmp_path / SPEC_JSON).read_text())
    mutate(doc)
    (tmp_path / SPEC_JSON).write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["populations"][0]["neuron"].update(model="HH"), "neuron.model"),
    (lambda d: d["populations"][0]["neuron"].update(v_th=-1.0), "neuron.v_th"),
    (lambda d: d.update(T=-3), "T"),
    (lambda d: d["populations"][0].update(shape=[7]), "projections.in"),
    (lambda d: d["projections"][1].update(target="nowhere"), "projections.ab.target"),
    (lambda d: d["projections"][1].update(delay=0), "projections.ab.delay"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.pop("readout"), "spec.readout"),
])
def test_bad_spec_names_the_field(tmp_path: Path, mutate, field: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load_spec(path)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    net = dense_net()
    net.projections[2].weight[0, 0] = float("nan")
    with pytest.raises(SpecError, match=r"projections\.ba\.weight: contains NaN"):
        save_spec(net, tmp_path)


def test_corrupt_files_are_refused(tmp_path: Path) -> None:
    save_spec(dense_net(), tmp_path)
    (tmp_path / SPEC_WEIGHTS).write_bytes(b"\x00garbage")
    with pytest.raises(SpecError, match="corrupt"):
        load_spec(tmp_path)
    save_spec(dense_net(), tmp_path)
    (tmp_path / SPEC_JSON).write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(tmp_path)
    with pytest.raises(SpecError, match="missing"):
        load_spec(tmp_path / "absent")


def test_spec_files_hold_no_pickle(tmp_path: Path) -> None:
    save_spec(dense_net(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPEC_JSON, SPEC_WEIGHTS]
    json.loads((tmp_path / SPEC_JSON).read_text())  # plain JSON
    assert not (tmp_path / SPEC_WEIGHTS).read_bytes().startswith(b"\x80")  # not a pickle
