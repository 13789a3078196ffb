"""benchmarks/energy_check.py: power samples integrate to the right joules, a metered window
agrees with a counter of the same power, and on a CPU machine the check runs an epoch and leaves
the GPU figures absent with the meter's reason (never 0)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "energy_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("energy_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ec = _load()


def test_constant_power_is_power_times_time() -> None:
    samples = [(0.02 * i, 250.0) for i in range(501)]  # 0 .. 10 s
    assert ec.integrate_power(samples) == pytest.approx(2500.0)
    assert ec.integrate_power(samples, 1.005, 7.5) == pytest.approx(250.0 * 6.495)


def test_linear_ramp_gives_the_exact_area_with_irregular_unsorted_samples() -> None:
    rng = np.random.default_rng(0)
    times = np.concatenate([[0.0, 30.0], rng.uniform(0, 30, 200)])
    samples = [(float(t), 100.0 + 20.0 * t) for t in rng.permutation(times)]
    a, b = 3.3, 27.1  # bounds between samples: the trapezoid is exact for a line

    def area(lo: float, hi: float) -> float:
        return 100.0 * (hi - lo) + 10.0 * (hi**2 - lo**2)

    assert ec.integrate_power(samples) == pytest.approx(area(0.0, 30.0))
    assert ec.integrate_power(samples, a, b) == pytest.approx(area(a, b))


def test_irregular_samples_match_a_fine_grid_of_the_interpolant() -> None:
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 5, 40))
    w = rng.uniform(50, 400, 40)
    grid = np.linspace(1.0, 4.0, 600_001)
    mids = (grid[1:] + grid[:-1]) / 2
    expected = float(np.sum(np.interp(mids, t, w)) * (grid[1] - grid[0]))
    got = ec.integrate_power(list(zip(t.tolist(), w.tolist(), strict=True)), 1.0, 4.0)
    assert got == pytest.approx(expected, rel=1e-6)


def test_bounds_outside_the_samples_hold_the_nearest_reading() -> None:
    samples = [(1.0, 10.0), (2.0, 20.0)]
    assert ec.integrate_power(samples, 0.0, 3.0) == pytest.approx(10.0 + 15.0 + 20.0)
    assert ec.integrate_power([(5.0, 80.0)], 4.0, 6.0) == pytest.approx(160.0)
    with pytest.raises(ValueError):
        ec.integrate_power([])
    with pytest.raises(ValueError):
        ec.integrate_power(samples, 2.0, 1.0)


class _RampMeter:
    """A cumulative counter of the power ``watts(t)`` below, integrated exactly."""

    def __init__(self, base: float) -> None:
        self.base = base
        self.begin = 0.0

    def joules(self, t: float) -> float:
        s = t - self.base
        return 100.0 * s + 25.0 * s * s  # power 100 + 50 s watts

    def start(self) -> None:
        self.begin = self.joules(time.perf_counter())

    def stop(self) -> dict[str, float]:
        return {"energy/gpu_j": self.joules(time.perf_counter()) - self.begin}


def test_a_metered_window_agrees_with_a_counter_of_the_sampled_power() -> None:
    base = time.perf_counter()
    meter = _RampMeter(base)
    probes = {"power": lambda: 100.0 + 50.0 * (time.perf_counter() - base)}
    _, win = ec.metered(lambda: time.sleep(0.4), meter, probes, 0.005, torch.device("cpu"))
    row, absent = ec.energy_figures(win, images=10)
    assert absent == {}
    assert win.t1 - win.t0 >= 0.4
    assert row["power_samples"] > 20
    assert row["counter_over_power"] == pytest.approx(1.0, abs=0.01)
    assert row["counter_gpu_j_per_image"] == pytest.approx(row["counter_gpu_j"] / 10)
    assert "rapl_cpu_j" not in row


def _fake_pynvml(instant: Any) -> SimpleNamespace:
    class NVMLError(Exception):
        pass

    def fields(handle: int, ids: list[int]) -> list[Any]:
        if instant is None:
            raise NVMLError("Not Supported")
        return [instant]

    return SimpleNamespace(NVMLError=NVMLError, NVML_SUCCESS=0, NVML_FI_DEV_POWER_INSTANT=186,
                           nvmlDeviceGetPowerUsage=lambda h: 100_000 + 1_000 * h,
                           nvmlDeviceGetFieldValues=fields)


def test_nvml_probes_sum_the_gpus_and_give_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(None))
    probes, reasons = ec.nvml_probes([0, 1])
    assert probes["power"]() == pytest.approx(201.0)
    assert "instant" not in probes and "Not Supported" in reasons["instant"]
    value = SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=350_000))
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(value))
    probes, reasons = ec.nvml_probes([0])
    assert reasons == {} and probes["instant"]() == pytest.approx(350.0)


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_training_images_read_mnist_idx_else_random_with_reason(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    pixels = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    _idx(folder / "train-images-idx3-ubyte", pixels)
    _idx(folder / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]))
    x, y, source = ec.training_images(tmp_path, 4)
    assert x.shape == (4, 1, 28, 28) and y.tolist() == [3, 1, 4, 1]
    expected = (torch.tensor(pixels[:4], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected, atol=1e-6)
    assert str(folder) in source
    x, y, source = ec.training_images(tmp_path / "none", 7)
    assert x.shape == (7, 1, 28, 28) and y.shape == (7,)
    assert source.startswith("random images") and "none" in source


def test_cpu_epoch_writes_json_with_gpu_energy_absent(tmp_path: Path) -> None:
    out = tmp_path / "energy.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--model", "f400",
                          "--T", "3", "--images", "64", "--batch", "32", "--warmup", "1",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    result, absent = doc["result"], doc["absent"]
    assert result["images"] == 64 and result["seconds"] > 0 and result["images_per_s"] > 0
    reason = absent["energy/gpu_j"]
    assert isinstance(reason, str) and reason
    assert f"absent energy/gpu_j: {reason}" in run.stdout
    assert "counter_gpu_j" not in result and "power_integrated_j" not in result
    assert doc["verdict"] is None
    if "rapl_cpu_j" in result:
        assert result["rapl_cpu_j"] > 0
    else:
        assert "RAPL" in absent["energy/cpu_j"]
    energy_keys = [k for k in result if k.endswith(("_j", "_w", "_per_image"))]
    assert all(result[k] > 0 for k in energy_keys)  # absent, never a fake zero
