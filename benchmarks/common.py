"""Shared helpers for the benchmarks: a table printer, a JSON writer with machine info, and the
size of the graph autograd keeps for the backward pass."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "python": platform.python_version(),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "-+-".join("-" * w for w in widths)
    body = [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])


def checked_variants(ap: argparse.ArgumentParser, text: str,
                     check: Callable[[str], object]) -> list[str]:
    """The comma-separated variants, each passed through ``check`` (a ValueError from it ends
    the program with the parser's usage message, before any work)."""
    variants = text.split(",")
    try:
        for v in variants:
            check(v)
    except ValueError as exc:
        ap.error(str(exc))
    return variants


def run_one(script: str, args: list[str], label: str,
            env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """One configuration in a fresh process (``script *args``), whose last line of output is a
    JSON row; None, with the reason printed, if it failed."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"{label}: failed\n{out.stderr[-2000:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return out


def saved_graph_mib(step: Callable[[], Any]) -> float:
    """MiB of distinct tensors autograd saves for backward during ``step()``."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2**20
