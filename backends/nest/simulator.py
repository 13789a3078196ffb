"""Importing PyNN's NEST module and NEST itself (quietly), or saying how to install them."""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from fsnn.backends.base import BackendError

INSTALL = "pip install 'fsnn[nest]'"


def load_simulator() -> tuple[ModuleType, ModuleType]:
    """Import ``pyNN.nest`` and ``nest`` (quietly), or say how to install them."""
    os.environ.setdefault("PYNEST_QUIET", "1")  # no banner on import
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyNN: "Cannot find nest-config" (no extensions)
            import nest
            import pyNN.nest as sim
    except ImportError as exc:
        raise BackendError(f"the NEST backend needs PyNN and NEST ({exc}); install them with: "
                           f"{INSTALL}") from exc
    return sim, nest


__all__ = ["INSTALL", "load_simulator"]
