"""The reference backend: the torch engine in deployment timing (float64 by default)."""

from __future__ import annotations

import time

import torch

from fsnn.backends.base import BatchResult, synaptic_events
from fsnn.platform.engine import readout, simulate
from fsnn.platform.spec import Network


class TorchBackend:
    name = "torch"

    def __init__(self, *, dtype: torch.dtype = torch.float64, device: str = "cpu",
                 timing: str = "deploy") -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.timing = timing
        self.net: Network | None = None

    def check(self, net: Network) -> None:
        net.validate()

    def build(self, net: Network) -> None:
        net.validate()
        self.net = net.to(self.dtype, self.device)

    def update(self, net: Network) -> bool:
        """Nothing to rebuild: the engine reads the new tensors directly."""
        self.build(net)
        return True

    def run(self, x: torch.Tensor) -> BatchResult:
        if self.net is None:
            raise RuntimeError("build() a spec before run()")
        start = time.perf_counter()
        with torch.no_grad():
            x = x.to(self.device, self.dtype)
            if self.net.input.kind == "spikes":  # protocol: [B, T, ...]; engine: [T, B, ...]
                x = x.transpose(0, 1)
            res = simulate(self.net, x, timing=self.timing)
            logits = readout(self.net, res.rates)
        wall = time.perf_counter() - start
        counts = {k: v.cpu() for k, v in res.counts.items()}
        events = synaptic_events(self.net, counts,
                                 None if res.input_counts is None else res.input_counts.cpu())
        return BatchResult(counts=counts, rates={k: v.cpu() for k, v in res.rates.items()},
                           logits=logits.cpu(), synaptic_events=events, wall_time=wall)

    def close(self) -> None:
        self.net = None
