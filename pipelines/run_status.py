"""One exit discipline for every command that opens an MLflow run.

``closing_run`` wraps the work done after a run was created (or set RUNNING again): Ctrl-C (or
SIGTERM, see `terminate_as_interrupt`) marks the run KILLED and raises `Interrupted`
with one line saying what was kept and how to continue; any other failure marks it FAILED with
the reason in the tag ``fsnn.failure`` and re-raises. No fsnn command leaves a run RUNNING
unless its process is killed outright (SIGKILL), and ``--resume`` continues such a run.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

FAILURE_TAG = "fsnn.failure"
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """The user interrupted a command; ``str()`` says what was kept and how to go on."""

    def __init__(self, message: str, code: int = EXIT_INTERRUPTED) -> None:
        super().__init__(message)
        self.code = code


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler, ``kill``): handled like Ctrl-C, exit 143."""


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise in the main thread like Ctrl-C, so runs are closed the same way."""

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, on_term)


def interrupt_code(exc: BaseException) -> int:
    return 128 + signal.SIGTERM if isinstance(exc, _Terminated) else EXIT_INTERRUPTED


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message is empty."""
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def _close(c: Any, run_id: str, status: str, reason: str) -> None:
    """Best effort: the store itself may be what failed."""
    with suppress(Exception):
        c.set_tag(run_id, FAILURE_TAG, reason[:5000])
    with suppress(Exception):
        c.set_terminated(run_id, status)


@contextmanager
def closing_run(c: Any, run_id: str, *, what: str,
                kept: Callable[[], str] | None = None) -> Iterator[None]:
    """Close run ``run_id`` (client ``c``) KILLED on Ctrl-C / SIGTERM and FAILED on any error.

    ``what`` names the run in the interruption line ("training run 3f2a…"); ``kept()`` says
    what survives and how to continue (called only on interruption). A successful block leaves
    the run's status to the caller.
    """
    try:
        yield
    except Interrupted as exc:  # an inner command closed its own run and said what was kept
        _close(c, run_id, "KILLED", "interrupted")
        raise Interrupted(f"{exc}; {what} marked KILLED", exc.code) from None
    except KeyboardInterrupt as exc:
        _close(c, run_id, "KILLED", "interrupted")
        more = kept() if kept is not None else ""
        raise Interrupted(f"interrupted: {what} marked KILLED" + (f"; {more}" if more else ""),
                          interrupt_code(exc)) from None
    except BaseException as exc:
        _close(c, run_id, "FAILED", one_line(exc))
        raise


__all__ = ["FAILURE_TAG", "Interrupted", "closing_run", "interrupt_code", "one_line",
           "terminate_as_interrupt"]
