"""Hardware in the loop: training's forward rates from simulator actors (real Ray, real NEST).

The gradients with a simulator forward are checked against the engine's IDE path, the epoch
retry against an uninterrupted run, with a simulator worker killed for real mid-epoch.
"""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from nets import small_model
from servers import local_ray

from fsnn.platform.config import ConfigError, load_config
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import Neuron, SpecError


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(2):
        yield


def _model(kind: str, *, neuron: Neuron | None = None, T: int = 12,
           dtype: torch.dtype = torch.float32) -> FeedbackSNN:
    if kind == "spikes":  # the N-MNIST model: spike-train input [B, T, 2, 34, 34]
        from fsnn.platform.zoo import build_model

        m = build_model("f64c5_nmnist", T=T, dropout=0.0, neuron=neuron or Neuron("IF", 1.0))
    else:
        m = small_model(kind, neuron=neuron, T=T)
    m = m.to(dtype)
    m.timing = "deploy"
    bn = m.input_layer.bn
    assert bn is not None and bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.uniform_(-0.3, 0.3)  # a non-trivial fold of batch norm into the weights
    bn.running_var.uniform_(0.5, 2.0)
    return m.freeze_bn().train()


def _grads(model: FeedbackSNN, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _pool(backend: str, dtype: torch.dtype, workers: int = 1, **kw):
    from fsnn.pipelines.hil.pool import ForwardPool

    options = {"dtype": dtype} if backend == "torch" else {}
    return ForwardPool(backend, workers=workers, options=options, **kw)


def _batch(model: FeedbackSNN, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if model.input_kind == "spikes":
        x = (torch.rand(n, model.T, *model.input_shape) < 0.3).float()
    else:
        x = torch.rand(n, *model.input_shape) * 2
    return x, torch.randint(0, 4, (n,))


@pytest.mark.parametrize("kind", ["dense", "conv", "spikes"])
def test_torch_forward_gives_the_engine_gradients_exactly(ray_local: None, kind: str) -> None:
    """forward: torch (the backend, in Ray actors, deployment timing) = the engine's IDE path."""
    from fsnn.pipelines.hil.pool import attach

    engine = _model(kind, T=12 if kind != "spikes" else 4)
    hil = copy.deepcopy(engine)
    pool = _pool("torch", torch.float32, workers=2)  # two shards: the join must keep order
    try:
        attach(hil, pool)
        for step in range(2):  # the second step runs on the weights pushed after the first
            x, y = _batch(engine, 10)
            want, got = _grads(engine, x, y), _grads(hil, x, y)
            assert want.keys() == got.keys() and len(want) >= 6
            for name in want:
                assert torch.equal(want[name], got[name]), (step, name)
            assert any(float(g.abs().max()) > 1e-4 for g in want.values())
            for m in (engine, hil):
                with torch.no_grad():
                    for p in m.parameters():
                        if p.grad is not None:
                            p -= 0.5 * p.grad
        stats = pool.take_stats()
        assert stats.samples == 20 and stats.in_place == 2 and stats.rebuilds == 2
    finally:
        pool.close()


@pytest.mark.parametrize("kind,neuron", [
    ("dense", Neuron("IF", v_th=1.0)),
    ("conv", Neuron("LIF", v_th=1.0, leak=0.9, reset="to_value")),
])
def test_nest_forward_gives_the_torch_forward_gradients(ray_local: None, kind: str,
                                                        neuron: Neuron) -> None:
    """forward: nest on the parity nets: the same spikes (and rates, bit for bit) as forward:
    torch, so exactly the same gradients (float64 end to end)."""
    from fsnn.pipelines.hil.pool import attach

    torch_model = _model(kind, neuron=neuron, dtype=torch.float64)
    nest_model = copy.deepcopy(torch_model)
    pools = [_pool("torch", torch.float64), _pool("nest", torch.float64)]
    try:
        attach(torch_model, pools[0])
        attach(nest_model, pools[1])
        x = torch.rand(8, *torch_model.input_shape, dtype=torch.float64) * 2
        y = torch.randint(0, 4, (8,))
        want, got = _grads(torch_model, x, y), _grads(nest_model, x, y)
        # the forwards agree spike for spike
        spec = nest_model.to_network()
        for p in pools:
            p.push(spec)
        a, b = pools[0].run(x), pools[1].run(x)
        for k in a.counts:
            assert (a.counts[k] == b.counts[k]).all(), k
        assert sum(int(c.sum()) for c in a.counts.values()) > 0
        for name in want:
            assert torch.equal(got[name], want[name]), name
    finally:
        for p in pools:
            p.close()


def test_dead_simulator_worker_is_restarted_and_the_epoch_retried(ray_local: None) -> None:
    """A NEST worker killed (SIGKILL) mid-epoch: Ray restarts it, the epoch runs again from its
    start, and the result equals an epoch that was never interrupted."""
    from fsnn.pipelines.hil.loop import train_epoch_in_loop
    from fsnn.pipelines.hil.pool import attach

    torch.manual_seed(1)
    base = _model("dense", T=8)
    g = torch.Generator().manual_seed(2)
    data = [(torch.rand(6, 8, generator=g) * 2, torch.randint(0, 4, (6,), generator=g))
            for _ in range(4)]

    def run(kill_at: int | None) -> tuple[FeedbackSNN, int, list[int], list[int]]:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
        pool = _pool("nest", torch.float32, max_restarts=1)
        seen: list[int] = []
        killed: list[int] = []
        try:
            attach(model, pool)

            def on_batch(i: int, loss: torch.Tensor) -> None:
                seen.append(i)
                if i == kill_at and not killed:
                    pid = pool.pids()[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

            stats, retries = train_epoch_in_loop(model, data, opt, sched, torch.device("cpu"),
                                                 pool, retries=1, on_batch=on_batch,
                                                 log=lambda _: None)
            assert stats.samples == 24
            if killed:
                assert pool.pids()[0] != killed[0], "the worker was restarted"
        finally:
            pool.close()
        return model, retries, seen, killed

    clean, clean_retries, clean_seen, _ = run(None)
    faulty, retries, seen, killed = run(1)
    assert clean_retries == 0 and clean_seen == [0, 1, 2, 3]
    assert killed and retries == 1
    assert seen == [0, 1, 0, 1, 2, 3], "the whole epoch ran again, nothing skipped"
    for (name, a), (_, b) in zip(clean.state_dict().items(), faulty.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_a_worker_that_stays_dead_fails_the_epoch_clearly(ray_local: None) -> None:
    from fsnn.pipelines.hil.loop import train_epoch_in_loop
    from fsnn.pipelines.hil.pool import ForwardWorkerLost, attach

    model = _model("dense", T=4)
    pool = _pool("torch", torch.float32, max_restarts=0, restart_timeout=5.0)
    try:
        attach(model, pool)
        data = [(torch.rand(4, 8), torch.randint(0, 4, (4,))) for _ in range(3)]

        def on_batch(i: int, loss: torch.Tensor) -> None:
            if i == 0:
                os.kill(pool.pids()[0], signal.SIGKILL)

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(ForwardWorkerLost, match=r"did not come back|failed 2 times"):
            train_epoch_in_loop(model, data, opt, None, torch.device("cpu"), pool, retries=1,
                                on_batch=on_batch, log=lambda _: None)
    finally:
        pool.close()


def test_rate_source_guards() -> None:
    m = small_model("dense", T=4)
    with pytest.raises(SpecError, match="freeze_bn"):
        m.set_rate_source(lambda x: {})
    m = small_model("dense", T=4, dropout=0.3).freeze_bn().train()
    m.set_rate_source(lambda x: {"h0": torch.zeros(x.shape[0], 12)})
    with pytest.raises(SpecError, match="dropout"):
        m(torch.rand(2, 8))
    from fsnn.platform.methods import TSBPMethod

    m = small_model("dense", T=4)
    m.method = TSBPMethod()
    with pytest.raises(SpecError, match="only IDE"):
        m.freeze_bn().set_rate_source(lambda x: {})


def test_config_forward_rules() -> None:
    cfg = load_config(None, ["forward=nest", "dropout=0"])
    assert cfg.target_eval_plan() == (1, ["nest"])
    again = load_config(None, ["forward=nest", "dropout=0", "target_eval.every=0"])
    assert again.target_eval_plan()[0] == 0
    with pytest.raises(ConfigError, match="dropout: must be 0 with forward: nest"):
        load_config(None, ["forward=nest"])
    with pytest.raises(ConfigError, match="needs method ide"):
        load_config(None, ["forward=nest", "dropout=0", "method.name=tsbp"])
    with pytest.raises(ConfigError, match=r"target_eval\.backends: empty"):
        load_config(None, ["target_eval.every=2"])
    with pytest.raises(ConfigError, match="forward"):
        load_config(None, ["forward=loihi"])


def test_fine_tuning_with_the_target_in_the_loop_recovers_the_deployment_loss(
        ray_local: None) -> None:
    """F400 (IF) deployed on the emulated board with a leaky neuron model (IF_curr_delta,
    leak 0.3) loses accuracy; one short pass with that target in the loop regains at least half
    of it, while the same pass with the engine's forward (the control) does not."""
    from fsnn.backends.base import get_backend
    from fsnn.pipelines.hil.pool import attach
    from fsnn.platform.data import load_dataset, make_loader
    from fsnn.platform.trainer import model_from_config, train_epoch

    target = {"if_model": "IF_curr_delta", "if_leak": 0.3}
    cfg = load_config(None, ["T=5", "dropout=0.2"])
    x, y = load_dataset("fashion-mnist", "train", limit=13000, progress=False)
    xt, yt = load_dataset("fashion-mnist", "test", limit=2000, progress=False)
    base = model_from_config(cfg, num_classes=10)
    opt = torch.optim.SGD(base.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = make_loader(x[:10000], y[:10000], 128, shuffle=True, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        train_epoch(base, loader, opt, None, torch.device("cpu"))

    def acc(model: FeedbackSNN, backend: str, options: dict) -> float:
        b = get_backend(backend, **options)
        b.build(model.eval().to_network())
        return float((b.run(xt.double()).logits.argmax(1) == yt).double().mean())

    def tune(pool) -> FeedbackSNN:
        model = copy.deepcopy(base).freeze_bn()
        model.input_layer.dropout = model.ring[0].dropout = 0.0
        if pool is not None:
            attach(model, pool)
        o = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        tl = make_loader(x[10000:], y[10000:], 128, shuffle=True, seed=1)
        tl.set_epoch(0)
        train_epoch(model, tl, o, None, torch.device("cpu"))
        model.set_rate_source(None)
        return model

    from fsnn.pipelines.hil.pool import ForwardPool

    reference, before = acc(base, "torch", {}), acc(base, "spinnaker-emulated", target)
    lost = reference - before
    pool = ForwardPool("spinnaker-emulated", options=target)
    try:
        in_loop = acc(tune(pool), "spinnaker-emulated", target)
    finally:
        pool.close()
    control = acc(tune(None), "spinnaker-emulated", target)
    print(f"torch {reference:.4f}, target {before:.4f} -> in the loop {in_loop:.4f}, "
          f"control {control:.4f}")
    assert lost >= 0.02, (reference, before)
    assert in_loop - before >= 0.5 * lost, (reference, before, in_loop)
    assert in_loop - control >= 0.25 * lost, (in_loop, control)


def test_in_training_evaluation_on_backends(ray_local: None) -> None:
    """target_eval: the spec on NEST (through the forward's own pool) and on the emulated board
    (its own Ray actor), accuracy and agreement against the torch reference."""
    from fsnn.pipelines.hil.loop import evaluate_targets
    from fsnn.platform.engine import readout, simulate

    cfg = load_config(None, ["target_eval.every=1",
                             "target_eval.backends=[nest, spinnaker-emulated]"])
    net = _model("dense", T=10).eval().to_network().to(torch.float64)
    x = torch.rand(30, 8, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (30,))
    with torch.no_grad():
        want = float((readout(net, simulate(net, x, timing="deploy").rates).argmax(1) == y)
                     .double().mean())
    pool = _pool("nest", torch.float64)
    try:
        pool.stats.samples = 7  # a training epoch's count must survive the evaluation
        m = evaluate_targets(cfg, net, x, y, pool=pool)
        assert pool.stats.samples == 7
    finally:
        pool.close()
    assert m["target/nest/accuracy"] == want
    assert m["target/nest/agreement_predictions"] == 1.0 == m["target/nest/agreement_counts"]
    assert 0.0 <= m["target/spinnaker-emulated/accuracy"] <= 1.0
    assert m["target/spinnaker-emulated/agreement_predictions"] > 0.5
    assert {k.split("/")[1] for k in m} == {"nest", "spinnaker-emulated"}


def test_train_command_line_checks(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from fsnn.pipelines.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train"]) == 2
    assert "give a CONFIG file, --resume RUN_ID to continue a run, or --init RUN_ID" in \
        capsys.readouterr().err
    assert main(["train", "--init", str(tmp_path / "nothing"), "--tracking-uri", uri]) == 2
    assert "neither a checkpoint path nor an MLflow run id" in capsys.readouterr().err
    demo = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert main(["train", demo, "--init", "a", "--resume", "b", "--tracking-uri", uri]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["train", demo, "--forward", "nest", "--set", "dropout=0.5",
                 "--tracking-uri", uri]) == 2
    assert "dropout: must be 0 with forward: nest" in capsys.readouterr().err


def test_a_simulator_worker_that_cannot_start_is_named(ray_local: None) -> None:
    """On the actor's own node: a constructor error (here an unknown option) says what failed."""
    from fsnn.backends.base import BackendError
    from fsnn.pipelines.hil.pool import ForwardPool

    with pytest.raises(BackendError, match=r"could not start a nest simulator worker: "
                                           r".*BackendError: .*unknown option 'bogus'"):
        ForwardPool("nest", options={"bogus": 1})
