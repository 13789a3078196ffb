"""Energy: measured counters are absent with a reason where they cannot be read; estimates are
operation counts times the hardware models' constants; event counts are right."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from nets import dense_net

from fsnn.backends.base import get_backend
from fsnn.pipelines.energy_meter import POWERCAP, EnergyMeter, rapl_zones
from fsnn.platform.counting import synaptic_events
from fsnn.platform.energy import HARDWARE, estimate_metrics, input_macs, op_counts
from fsnn.platform.engine import simulate


def _nvidia_present() -> bool:
    return Path("/proc/driver/nvidia").exists() and torch.cuda.is_available()


def test_gpu_energy_absent_with_reason_on_cpu_machine() -> None:
    meter = EnergyMeter()
    meter.start()
    out = meter.stop()
    if _nvidia_present():
        assert out["energy/gpu_j"] >= 0
    else:
        assert "energy/gpu_j" not in out
        assert "GPU energy unavailable" in meter.reasons["energy/gpu_j"]


def test_rapl_used_when_readable_else_absent_with_reason() -> None:
    zones, why = rapl_zones()
    meter = EnergyMeter()
    meter.start()
    sum(i * i for i in range(200_000))
    out = meter.stop()
    readable = any(p.name.startswith("intel-rapl:") and (p / "energy_uj").exists()
                   and _can_read(p / "energy_uj") for p in POWERCAP.glob("*")) \
        if POWERCAP.is_dir() else False
    if readable:
        assert zones and why is None and out["energy/cpu_j"] > 0
    else:
        assert "energy/cpu_j" not in out and "RAPL" in meter.reasons["energy/cpu_j"]


def _can_read(p: Path) -> bool:
    try:
        int(p.read_text())
        return True
    except OSError:
        return False


def test_rapl_counters_are_summed_with_wraparound(tmp_path: Path) -> None:
    """The powercap reader on a tree in the kernel's format (package + dram + an ignored core)."""
    def zone(name: str, label: str, value: int, max_uj: int) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "name").write_text(label + "\n")
        (d / "energy_uj").write_text(f"{value}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
        return d

    pkg = zone("intel-rapl:0", "package-0", 999_000_000, 1_000_000_000)
    dram = zone("intel-rapl:0:1", "dram", 5_000_000, 1_000_000_000)
    core = zone("intel-rapl:0:0", "core", 0, 1_000_000_000)
    meter = EnergyMeter(gpus=[], rapl_root=tmp_path)
    meter.start()
    (pkg / "energy_uj").write_text("2000000\n")  # wrapped: +3,000,000 uJ
    (dram / "energy_uj").write_text("6500000\n")  # +1,500,000 uJ
    (core / "energy_uj").write_text("9000000\n")  # a subdomain of the package: not added
    assert meter.stop()["energy/cpu_j"] == 4.5


def test_estimate_is_counts_times_constants() -> None:
    net = dense_net()
    x = torch.rand(5, 6, dtype=torch.float64)
    res = simulate(net, x, timing="deploy")
    events = float(synaptic_events(net, res.counts).mean())
    m = estimate_metrics(net, events)
    counts = op_counts(net, events)
    assert counts.neuron_updates == (5 + 4) * net.T
    assert input_macs(net) == float((net.projections[0].weight != 0).sum())
    for name, hw in HARDWARE.items():
        expected = sum(n * c for n, c in ((counts.synaptic_events, hw.synaptic_event_j),
                                          (counts.neuron_updates, hw.neuron_update_j),
                                          (counts.macs, hw.mac_j)) if c is not None)
        assert math.isclose(m[f"energy_est/{name}_j"], expected, rel_tol=1e-12)
    assert math.isclose(m["energy_est/loihi_j"],
                        events * 23.6e-12 + (9 * net.T) * 81e-12, rel_tol=1e-12)


def test_synaptic_events_match_an_independent_count() -> None:
    """events = sum over source neurons of spikes x number of nonzero outgoing weights."""
    net = dense_net()
    net.projections[1].weight[0, 0] = 0.0  # a zero weight is no synapse
    x = torch.rand(4, 6, dtype=torch.float64)
    out = get_backend("torch")
    out.build(net)
    r = out.run(x)
    expected = torch.zeros(4, dtype=torch.float64)
    for q in net.projections[1:]:
        nonzero = (q.weight != 0).sum(0).to(torch.float64)  # per source neuron
        expected += (r.counts[q.source] * nonzero).sum(1)
    assert torch.equal(r.synaptic_events, expected)
    assert float(expected.sum()) > 0
