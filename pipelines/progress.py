"""Training progress shown by the driver: rank 0 pushes events to a Ray actor, the driver draws
them (a rich progress bar on a terminal, one line per event elsewhere).

Ray's own forwarding of worker output is off by default (``--verbose`` turns it on), so this is
how fsnn's progress reaches the console: epoch, batch, loss, images per second, ETA, and each
epoch's summary line. Messages a worker must show (a retried epoch) travel the same way.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import ray

Event = dict[str, Any]
POLL_S = 0.5
FINAL_WAIT_S = 30.0


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressChannel:
    """Holds events until the driver takes them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def push(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        out, self.events = self.events, []
        return out


def pusher(channel: Any) -> Callable[[Event], None]:
    """The worker side: fire-and-forget pushes (a driver gone does not stop training)."""

    def push(event: Event) -> None:
        if channel is None:
            return
        with suppress(Exception):  # the channel died with the driver: nothing to show to
            channel.push.remote(event)
    return push


class ProgressView:
    """The driver side: a thread polls the channel and draws what it finds."""

    def __init__(self, channel: Any, *, live: bool | None = None) -> None:
        self.channel = channel
        self.live = sys.stdout.isatty() if live is None else live
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fsnn-progress", daemon=True)
        self._bar: Any = None
        self._task: Any = None
        self._epoch: int | None = None
        self._pending: Any = None

    def __enter__(self) -> ProgressView:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                 TimeRemainingColumn(), transient=True)
            self._bar.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain(FINAL_WAIT_S)  # what is still in flight, then the rest
        self._drain(FINAL_WAIT_S)
        if self._bar is not None:
            self._bar.stop()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drain(POLL_S)

    def _drain(self, wait_s: float) -> None:
        """Show what the channel holds. One request at a time: a request that is slow to
        answer (the actor still starting) is waited for again, never dropped with its events."""
        try:
            if self._pending is None:
                self._pending = self.channel.take.remote()
            ready, _ = ray.wait([self._pending], timeout=wait_s)
            if not ready:
                return
            events = ray.get(self._pending)
        except Exception:  # the channel is gone (Ray shut down): nothing more to show
            events = []
        self._pending = None
        for e in events:
            self.show(e)

    def show(self, e: Event) -> None:
        kind = e.get("kind")
        if kind == "batch":
            self._batch(e)
        elif kind in ("epoch", "note"):
            self._line(str(e["text"]))

    def _batch(self, e: Event) -> None:
        stats = f"loss {e['loss']:.4f}  {e['img_s']:.0f} img/s"
        if self._bar is None:
            self._line(f"[fsnn] epoch {e['epoch']}/{e['epochs']}  batch {e['batch']}/"
                       f"{e['batches']}  {stats}")
            return
        desc = f"epoch {e['epoch']}/{e['epochs']}"
        if self._epoch != e["epoch"]:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(desc, total=e["batches"], stats=stats)
            self._epoch = e["epoch"]
        self._bar.update(self._task, completed=e["batch"], stats=stats)

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)


def start_channel() -> Any:
    return ProgressChannel.remote()  # type: ignore[attr-defined]


__all__ = ["ProgressChannel", "ProgressView", "pusher", "start_channel"]
