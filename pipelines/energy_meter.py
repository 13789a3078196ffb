"""Measured energy over a window: NVIDIA GPUs through NVML, the CPU through RAPL (powercap).

GPU: the official NVML bindings (``nvidia-ml-py``) and the cumulative energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules since driver load). We use the bindings
directly rather than Zeus: one counter read at each end of a window is all we need, and Zeus would
add a dependency tree (and its own GPU ownership model) for that.
CPU: Linux powercap RAPL zones (``/sys/class/powercap/intel-rapl:*``, also used for AMD
packages), package and DRAM domains, with counter wrap-around handled. Reading them often needs
root. A counter that is absent or unreadable gives no metric; ``reasons`` says why (never 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")


@dataclass
class RaplZone:
    name: str
    path: Path
    max_uj: int

    def read(self) -> int:
        return int((self.path / "energy_uj").read_text())


def rapl_zones(root: Path = POWERCAP) -> tuple[list[RaplZone], str | None]:
    """Package and DRAM zones, or a reason why none is readable."""
    if not root.is_dir():
        return [], f"RAPL unavailable: {root} does not exist (no powercap driver in this kernel)"
    zones: list[RaplZone] = []
    problem = None
    for d in sorted(root.glob("intel-rapl:*")):
        try:
            name = (d / "name").read_text().strip()
            if not (name.startswith("package") or name == "dram"):
                continue
            zone = RaplZone(name, d, int((d / "max_energy_range_uj").read_text()))
            zone.read()
            zones.append(zone)
        except (OSError, ValueError) as exc:
            problem = f"RAPL zone {d.name} unreadable ({exc.__class__.__name__}: {exc}); " \
                      "reading energy_uj usually needs root"
    if not zones:
        return [], problem or f"RAPL unavailable: no package/dram zone under {root}"
    return zones, None


def _nvml() -> tuple[Any, list[Any], str | None]:
    try:
        import pynvml
    except ImportError:
        return None, [], "GPU energy unavailable: nvidia-ml-py is not installed " \
                         "(pip install 'fsnn[energy]')"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return None, [], f"GPU energy unavailable: no NVIDIA driver or GPU (NVML: {exc})"
    count = pynvml.nvmlDeviceGetCount()
    if count == 0:
        return None, [], "GPU energy unavailable: NVML sees no GPU"
    return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)], None


@dataclass
class EnergyMeter:
    """``start()`` … ``stop()`` → ``{"energy/gpu_j": J, "energy/cpu_j": J}`` for what exists."""

    gpus: list[int] | None = None  # NVML indices to read (None: all)
    cpu: bool = True
    rapl_root: Path = POWERCAP
    shared_reason: str = "CPU energy measured by another worker on this node"  # cpu=False
    reasons: dict[str, str] = field(default_factory=dict)
    _start: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pynvml, handles, why = _nvml()
        if why:
            self.reasons["energy/gpu_j"] = why
        self._handles = [h for i, h in enumerate(handles) if self.gpus is None or i in self.gpus]
        if handles and not self._handles:
            self.reasons["energy/gpu_j"] = "no GPU is used by this worker (CPU training)"
        self._zones: list[RaplZone] = []
        if self.cpu:
            self._zones, why = rapl_zones(self.rapl_root)
            if why:
                self.reasons["energy/cpu_j"] = why
        else:
            self.reasons["energy/cpu_j"] = self.shared_reason

    @property
    def gpu_handles(self) -> list[Any]:
        """The NVML handles of the GPUs this meter reads (empty where it has no GPU counter)."""
        return list(self._handles)

    def _read(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        if self._handles:
            out["gpu_mj"] = [self._pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
                             for h in self._handles]
        if self._zones:
            out["rapl_uj"] = [z.read() for z in self._zones]
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        metrics: dict[str, float] = {}
        if "gpu_mj" in end:
            metrics["energy/gpu_j"] = sum(b - a for a, b in
                                          zip(self._start["gpu_mj"], end["gpu_mj"],
                                              strict=True)) / 1e3
        if "rapl_uj" in end:
            total = 0
            for z, a, b in zip(self._zones, self._start["rapl_uj"], end["rapl_uj"], strict=True):
                total += b - a if b >= a else b + z.max_uj - a  # one wrap-around at most
            metrics["energy/cpu_j"] = total / 1e6
        return metrics
