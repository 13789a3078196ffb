"""Run ``fsnn`` as a user does (a subprocess) and check a refusal: exit code 2, one line on
stderr naming the problem, no traceback. Shared by the input-error tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

FSNN = [sys.executable, "-m", "fsnn.pipelines.cli"]


def fsnn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([*FSNN, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


# a library's own log record (MLflow: "2026/01/02 10:11:12 INFO mlflow...: ..."), not fsnn's
_LOG_RECORD = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO) ")


def refused(*args: str, cwd: Path) -> str:
    """The one line a command that must be refused prints (``fsnn COMMAND: ...``); asserts exit
    code 2, no traceback, and nothing else on stderr but libraries' info records."""
    out = fsnn(*args, cwd=cwd)
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    lines = [x for x in out.stderr.strip().splitlines() if not _LOG_RECORD.match(x)]
    assert len(lines) == 1 and lines[0].startswith(f"fsnn {args[0]}: "), out.stderr
    return lines[0]
