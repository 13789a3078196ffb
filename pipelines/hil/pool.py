"""Hardware in the loop: training's forward rates come from simulator workers (Ray actors).

IDE needs only the equilibrium rates from the forward pass, so they may come from the deployment
target itself. A :class:`ForwardPool` holds ``workers`` Ray actors, each one simulator instance
(:class:`ForwardWorker`, any backend of :mod:`fsnn.backends`):

* :meth:`ForwardPool.push` sends the current spec (one object in Ray's store) to every actor,
  which loads it in place where the backend allows (NEST sets its synapse weights; see
  ``Backend.update``) or builds it anew;
* :meth:`ForwardPool.run` splits a batch into contiguous shards, one per actor, and joins their
  rates, spike counts and predictions in order.

Actors are created with ``max_restarts``: when one dies (a crashed simulator, a lost node) Ray
starts it again, the pool raises :class:`ForwardWorkerLost`, and :meth:`ForwardPool.recover`
waits for the restarted actor and loads the spec into every actor again, so the trainer can retry
the epoch (:func:`fsnn.pipelines.hil.train_epoch_in_loop`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fsnn.backends.base import BackendError, get_backend
from fsnn.platform.spec import Network, network_from_json, network_to_json

if TYPE_CHECKING:
    from fsnn.platform.model import FeedbackSNN


class ForwardWorkerLost(RuntimeError):
    """A simulator worker died during a call; Ray restarts it, the caller retries."""


@dataclass
class ShardResult:
    """One shard's output (numpy, so it travels cheaply between processes)."""

    rates: dict[str, np.ndarray]  # per population [n, *shape]
    counts: dict[str, np.ndarray]  # per population [n, neurons], int32
    logits: np.ndarray  # [n, classes]
    events: np.ndarray  # [n] synaptic events
    wall_time: float


class ForwardWorker:
    """One simulator instance; a Ray actor in a :class:`ForwardPool` (or used in-process)."""

    def __init__(self, backend: str, options: dict[str, Any] | None = None) -> None:
        self.backend = get_backend(backend, **(options or {}))
        probe = getattr(self.backend, "probe", None)
        if probe is not None:  # this node has the simulator (and reaches the board)
            probe()
        self.loaded = False

    def pid(self) -> int:
        return os.getpid()

    def load(self, doc: dict[str, Any], tensors: dict[str, np.ndarray],
             rebuild: bool = False) -> bool:
        """Load a spec: in place if one is built and the backend allows it (True), else build
        it (False)."""
        # Ray hands actors read-only arrays: copy them into tensors the network owns
        net = network_from_json(doc, {k: torch.from_numpy(np.array(v)) for k, v in
                                      tensors.items()})
        if self.loaded and not rebuild:
            return bool(self.backend.update(net))
        self.backend.build(net)
        self.loaded = True
        return False

    def run(self, x: np.ndarray) -> ShardResult:
        res = self.backend.run(torch.from_numpy(np.array(x)))
        return ShardResult({k: v.numpy() for k, v in res.rates.items()},
                           {k: v.flatten(1).round().to(torch.int32).numpy()
                            for k, v in res.counts.items()},
                           res.logits.numpy(), res.synaptic_events.numpy(), res.wall_time)

    def close(self) -> None:
        self.backend.close()


@dataclass
class PoolStats:
    """Where a pool's time went since the last :meth:`ForwardPool.take_stats`."""

    push_seconds: float = 0.0
    run_seconds: float = 0.0
    sim_seconds: float = 0.0  # summed over actors
    in_place: int = 0
    rebuilds: int = 0
    samples: int = 0
    spikes: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {"hil/push_seconds": self.push_seconds, "hil/run_seconds": self.run_seconds,
                "hil/sim_seconds": self.sim_seconds, "hil/in_place_updates": float(self.in_place),
                "hil/rebuilds": float(self.rebuilds), "hil/samples": float(self.samples),
                "hil/spikes_per_sample": self.spikes / max(self.samples, 1)}


def spec_payload(net: Network) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A spec as its JSON description and numpy tensors (what actors load)."""
    return network_to_json(net), {k: v.detach().cpu().numpy() for k, v in net.tensors().items()}


class ForwardPool:
    """``workers`` simulator actors of one backend; see the module docstring."""

    def __init__(self, backend: str, *, workers: int = 1, cpus_per_worker: float = 1.0,
                 options: dict[str, Any] | None = None, max_restarts: int = 2,
                 restart_timeout: float = 120.0) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"workers must be >= 1 (got {workers})")
        self.backend = backend
        self.restart_timeout = restart_timeout
        remote = ray.remote(ForwardWorker).options(num_cpus=cpus_per_worker,
                                                   max_restarts=max_restarts,
                                                   max_task_retries=0)
        self.actors = [remote.remote(backend, options) for _ in range(workers)]
        self.stats = PoolStats()
        self._payload: tuple[dict[str, Any], Any] | None = None
        try:  # constructed: the simulator imports (and the board answers) on the actors' nodes
            ray.get([a.pid.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            self.close()
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise BackendError(f"could not start a {backend} simulator worker: "
                               f"{lines[-1] if lines else type(exc).__name__}") from None

    # -- calls ----------------------------------------------------------------------------------
    def _get(self, refs: list[Any]) -> list[Any]:
        import ray

        try:
            return list(ray.get(refs))
        except ray.exceptions.RayActorError as exc:
            raise ForwardWorkerLost(f"a {self.backend} simulator worker died "
                                    f"({type(exc).__name__}); Ray restarts it") from exc

    def pids(self) -> list[int]:
        return [int(p) for p in self._get([a.pid.remote() for a in self.actors])]

    def push(self, net: Network, *, rebuild: bool = False) -> None:
        """Load ``net`` into every actor (in place where the backend allows it)."""
        import ray

        start = time.perf_counter()
        doc, tensors = spec_payload(net)
        ref = ray.put(tensors)
        self._payload = (doc, ref)
        flags = self._get([a.load.remote(doc, ref, rebuild) for a in self.actors])
        self.stats.in_place += sum(bool(f) for f in flags)
        self.stats.rebuilds += sum(not f for f in flags)
        self.stats.push_seconds += time.perf_counter() - start

    def run(self, x: torch.Tensor) -> ShardResult:
        """The batch ``x`` (``[B, ...]``) on the actors, split into contiguous shards."""
        if self._payload is None:
            raise BackendError("push() a spec before run()")
        start = time.perf_counter()
        x_np = x.detach().cpu().numpy()
        shards = [s for s in np.array_split(np.arange(x_np.shape[0]), len(self.actors)) if s.size]
        outs: list[ShardResult] = self._get(
            [a.run.remote(x_np[s[0]:s[-1] + 1]) for a, s in zip(self.actors, shards,
                                                                  strict=False)])
        joined = ShardResult(
            {k: np.concatenate([o.rates[k] for o in outs]) for k in outs[0].rates},
            {k: np.concatenate([o.counts[k] for o in outs]) for k in outs[0].counts},
            np.concatenate([o.logits for o in outs]), np.concatenate([o.events for o in outs]),
            sum(o.wall_time for o in outs))
        self.stats.run_seconds += time.perf_counter() - start
        self.stats.sim_seconds += joined.wall_time
        self.stats.samples += int(x_np.shape[0])
        self.stats.spikes += float(sum(c.sum() for c in joined.counts.values()))
        return joined

    def rates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.run(x).rates.items()}

    def take_stats(self) -> PoolStats:
        out, self.stats = self.stats, PoolStats()
        return out

    # -- failures -------------------------------------------------------------------------------
    def recover(self) -> None:
        """Wait until every actor answers again (Ray restarts a dead one), then load the last
        spec into every actor anew."""
        import ray

        deadline = time.monotonic() + self.restart_timeout
        for a in self.actors:
            while True:
                try:
                    ray.get(a.pid.remote(), timeout=10)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                    # a call sent while the actor restarts may fail too; one that fails after
                    # the deadline means its restarts are used up (or the node is gone)
                    if time.monotonic() > deadline:
                        raise ForwardWorkerLost(f"a {self.backend} simulator worker did not "
                                                f"come back within {self.restart_timeout:.0f} s "
                                                f"({type(exc).__name__}); its restarts may be "
                                                f"used up (hil.retries)") from None
                    time.sleep(0.5)
        if self._payload is not None:
            doc, ref = self._payload
            self._get([a.load.remote(doc, ref, True) for a in self.actors])

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def attach(model: FeedbackSNN, pool: ForwardPool) -> None:
    """Make ``pool`` the source of ``model``'s training forward: before every batch the current
    spec is pushed (weights after the last optimiser step), then the batch runs on the pool."""
    def source(x: torch.Tensor) -> dict[str, torch.Tensor]:
        pool.push(model.to_network())
        return pool.rates(x)

    model.set_rate_source(source)
