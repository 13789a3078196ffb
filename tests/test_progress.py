"""Training progress travels from a worker to the driver through a Ray actor and is drawn
there: plain lines off a terminal, a progress bar (with the epoch lines above it) on one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import local_ray

from fsnn.pipelines.console import ray_init_options, set_verbosity, verbose


@pytest.fixture(scope="module")
def ray_one_cpu() -> Iterator[None]:
    with local_ray(1):
        yield


def _events() -> list[dict[str, object]]:
    batch = {"kind": "batch", "epoch": 1, "epochs": 2, "batches": 10, "img_s": 512.0}
    return [{**batch, "batch": 5, "loss": 0.75}, {"kind": "note", "text": "retrying the epoch"},
            {**batch, "batch": 10, "loss": 0.5}, {"kind": "epoch", "text": "[fsnn] epoch 1/2 ok"}]


@pytest.mark.parametrize("live", [False, True])
def test_events_reach_the_driver_in_order(ray_one_cpu: None, live: bool,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from fsnn.pipelines.progress import ProgressView, pusher, start_channel

    channel = start_channel()
    push = pusher(channel)
    with ProgressView(channel, live=live):
        for e in _events():
            push(e)
    out = capsys.readouterr().out
    if live:  # the bar is transient: the lines above it stay
        assert out.index("retrying the epoch") < out.index("[fsnn] epoch 1/2 ok"), out
    else:
        assert out.splitlines() == [
            "[fsnn] epoch 1/2  batch 5/10  loss 0.7500  512 img/s",
            "retrying the epoch",
            "[fsnn] epoch 1/2  batch 10/10  loss 0.5000  512 img/s",
            "[fsnn] epoch 1/2 ok"]
    pusher(None)({"kind": "note", "text": "nowhere"})  # no channel: nothing, no error


def test_verbosity_switches_ray_and_mlflow_output(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("FSNN_VERBOSE", "MLFLOW_LOGGING_LEVEL", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.delenv(k, raising=False)
    set_verbosity(False)
    assert not verbose() and ray_init_options()["log_to_driver"] is False
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    set_verbosity(True)
    assert verbose() and ray_init_options() == {"log_to_driver": True}
