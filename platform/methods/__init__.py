"""Training methods for feedback SNNs: IDE (default), SPIDE, DSR and TSBP.

Every method implements :class:`~fsnn.platform.methods.base.Method`::

    rates(model, circuit, T, spike_input, input_rate) -> dict[str, Tensor]

returning each population's simulated rates (the value) with the method's gradient attached, plus
``stats(model)`` for metrics. :func:`method_from_config` builds one from a validated
:class:`~fsnn.platform.config.MethodConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsnn.platform.methods.base import Method
from fsnn.platform.methods.dsr import DSRMethod
from fsnn.platform.methods.ide import IDEMethod
from fsnn.platform.methods.spide import SPIDEMethod
from fsnn.platform.methods.tsbp import TSBPMethod

if TYPE_CHECKING:
    from fsnn.platform.config import MethodConfig

METHODS = ("ide", "tsbp", "dsr", "spide")


def method_from_config(cfg: MethodConfig) -> Method:
    """The method ``cfg.name`` with its settings (IDE's solver settings go to the model)."""
    if cfg.name == "ide":
        return IDEMethod()
    if cfg.name == "tsbp":
        return TSBPMethod(surrogate=cfg.surrogate, width=cfg.surrogate_width,
                          reset_grad=cfg.reset_grad)
    if cfg.name == "dsr":
        return DSRMethod(alpha=cfg.alpha, vth_bound=cfg.vth_bound, train_vth=cfg.train_vth,
                         unroll=cfg.unroll)
    return SPIDEMethod(backward_T=cfg.backward_T, backward_vth=cfg.backward_vth,
                       modified_reset=cfg.modified_reset, forward_warmup=cfg.forward_warmup,
                       backward_warmup=cfg.backward_warmup)


__all__ = ["METHODS", "DSRMethod", "IDEMethod", "Method", "SPIDEMethod", "TSBPMethod",
           "method_from_config"]
