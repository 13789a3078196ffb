"""docs/gen/figures.py draws the documentation's pictures: run for real (real Fashion-MNIST, real
NEST, a real Ray Tune search) at its --quick settings into a temporary folder, never docs/img/."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from servers import RAY_TEST_ENV

SCRIPT = Path(__file__).parents[1] / "docs" / "gen" / "figures.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figures(out: Path, *names: str, timeout: int) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out),
                           "--only", *names], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **RAY_TEST_ENV}, cwd=out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _check_png(path: Path) -> tuple[int, int]:
    """A complete PNG of a sane size; returns (width, height) from its header."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", path
    width, height = struct.unpack(">II", data[16:24])
    assert 5_000 < len(data) < 200_000, (path, len(data))
    assert 300 <= width <= 2000 and 200 <= height <= 1200, (path, width, height)
    return width, height


def test_flow_rates_and_raster_with_zero_differing_spikes(tmp_path: Path) -> None:
    out = _figures(tmp_path, "flow", "rates", "raster", timeout=120)
    for name in ("flow", "rates", "raster"):
        assert f"[figures] {name}.png:" in out, out
        _check_png(tmp_path / f"{name}.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.png", "raster.png", "rates.png"]
    found = re.search(r"(\d+) spikes on torch, (\d+) on NEST, (\d+) differing spikes", out)
    assert found is not None, out
    torch_spikes, nest_spikes, differ = map(int, found.groups())
    assert differ == 0 and torch_spikes == nest_spikes > 100
    gaps = [float(g) for g in re.findall(r"gap at T=\d+: ([0-9.]+)", out)]
    assert len(gaps) >= 3 and gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.01, out


@pytest.mark.slow
def test_t_vth_heat_map_from_a_real_grid_search(tmp_path: Path) -> None:
    out = _figures(tmp_path, "t_vth", timeout=300)
    _check_png(tmp_path / "t_vth.png")
    assert re.search(r"9 trials in \d+ s", out), out
