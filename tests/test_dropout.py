"""Variational dropout: boolean masks (1 byte a neuron) with the 1/keep scale in the weights."""

from __future__ import annotations

from dataclasses import replace

import torch
from nets import small_model

from fsnn.platform.engine import Circuit, equilibrium_map
from fsnn.platform.spec import Neuron


def test_masks_are_boolean_keep_the_right_fraction_and_vanish_in_eval() -> None:
    torch.manual_seed(0)
    model = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), dropout=0.3).train()
    circuit, _, _ = model.prepare(torch.rand(400, 1, 8, 8), 10)
    assert set(circuit.masks) == {"fb"}
    mask = circuit.masks["fb"]
    assert mask.dtype == torch.bool and mask.shape == (400, 3, 4, 4)
    assert abs(float(mask.float().mean()) - 0.7) < 0.02
    assert model.ring[0].dropout_scale == 1 / 0.7
    circuit, _, _ = model.eval().prepare(torch.rand(4, 1, 8, 8), 10)
    assert not circuit.masks


def test_the_folded_scale_equals_inverted_dropout_values_and_gradients() -> None:
    """The reference applies float masks m/keep to the unscaled weights' outputs (textbook
    inverted dropout); the model folds 1/keep into the weights and multiplies by the boolean
    mask. Currents, equilibrium-map values and weight gradients must agree."""
    torch.manual_seed(1)
    keep = 0.6
    model = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), dropout=1 - keep)
    model.train()
    x = torch.rand(6, 1, 8, 8) * 3
    torch.manual_seed(2)
    circuit, _, _ = model.prepare(x, 10)
    torch.manual_seed(2)  # the same masks again (prepare draws the ring's first)
    fb_mask = model.ring[0].sample_mask(6, x.device)
    in_mask = model.input_layer.sample_mask(6, x.device)
    assert in_mask is not None and fb_mask is not None
    assert torch.equal(fb_mask, circuit.masks["fb"])
    w_fb, _ = model.ring[0].folded()
    current = model.input_layer.current(x) * (in_mask.float() / keep)
    torch.testing.assert_close(circuit.const["h0"], current)
    (fb,) = circuit.projections
    torch.testing.assert_close(fb.weight, w_fb / keep)
    reference = Circuit(circuit.populations, [replace(fb, weight=w_fb)], {"h0": current},
                        {"fb": fb_mask.float() / keep})
    rates = {"h0": torch.rand(6, 3, 4, 4)}
    ours = equilibrium_map(circuit, rates, None)["h0"]
    theirs = equilibrium_map(reference, rates, None)["h0"]
    torch.testing.assert_close(ours, theirs)
    assert float((ours > 0).float().mean()) > 0.2 and float((ours < 1).float().mean()) > 0.2
    probe = torch.rand_like(ours)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad((ours * probe).sum(), params, allow_unused=True,
                                 retain_graph=True)
    g_theirs = torch.autograd.grad((theirs * probe).sum(), params, allow_unused=True)
    compared = 0
    for a, b in zip(g_ours, g_theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
            compared += int(a.abs().sum() > 0)
    assert compared >= 2  # the feedback weight and the input layer's
