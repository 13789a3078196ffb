"""The pieces of the exit discipline, without Ray: divergence named by batch, solvers that meet
NaN, the newest readable checkpoint, per-epoch seeds, storage and tracking-URI checks, Ray's
stale checkpoint index, and how a run is closed on each way out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nets import small_model
from servers import mlflow_server

from fsnn.pipelines.run_status import FAILURE_TAG, Interrupted, closing_run
from fsnn.pipelines.storage import StorageError, check_storage
from fsnn.pipelines.tracking import TrackingError, check_tracking_uri, client, create_run
from fsnn.pipelines.train.resume import RAY_SNAPSHOT, set_aside_stale_snapshot
from fsnn.pipelines.train.worker import epoch_seed, newest_state
from fsnn.platform.checkpoint import TrainingState, save_checkpoint
from fsnn.platform.solvers import SOLVERS, DivergenceError, anderson, broyden, fixed_point
from fsnn.platform.trainer import train_epoch


def _batches(bad_at: int | None, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.rand(16, 8, generator=g)
        if i + 1 == bad_at:
            x[3, 2] = float("nan")
        out.append((x, torch.randint(0, 4, (16,), generator=g)))
    return out


def test_training_names_the_batch_whose_numbers_went_bad() -> None:
    model = small_model("dense", T=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_epoch(model, _batches(None), opt, None, torch.device("cpu"))
    assert stats.samples == 64
    with pytest.raises(DivergenceError, match=r"at batch 3$"):
        train_epoch(small_model("dense", T=6), _batches(3), opt, None, torch.device("cpu"))


def test_a_nan_loss_without_a_solver_is_found_at_the_epoch_end() -> None:
    """TSBP has no adjoint solve: the loss itself, summed on the device, names the batch."""
    from fsnn.platform.config import load_config
    from fsnn.platform.trainer import model_from_config

    cfg = load_config(None, ["model=f400", "T=3", "dropout=0", "method.name=tsbp"])
    model = model_from_config(cfg, num_classes=10)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def poison(i: int, loss: torch.Tensor) -> None:  # after batch 1: weights gone NaN
        if i == 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(DivergenceError, match=r"loss became NaN or infinite at batch 2$"):
        train_epoch(model, batches, opt, None, torch.device("cpu"), on_batch=poison)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("every", [1, 4])
def test_solvers_refuse_non_finite_values(solver: str, every: int) -> None:
    fn = {"anderson": anderson, "broyden": broyden, "fixed_point": fixed_point}[solver]
    x0 = torch.zeros(2, 5)
    with pytest.raises(DivergenceError, match="non-finite"):
        fn(lambda x: x * 0.5 + float("nan"), x0, max_iter=8, tol=1e-6, check_every=every)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = 0.5 * a / torch.linalg.matrix_norm(a, 2)  # a contraction
    b = torch.randn(2, 5, generator=g, dtype=torch.float64)
    x, stats = fn(lambda x: x @ a.T + b, x0.double(), max_iter=100, tol=1e-10,
                  check_every=every)
    fixed = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - a, b.T).T
    assert torch.allclose(x, fixed, atol=1e-8) and stats.converged


def _state(epoch: int) -> TrainingState:
    return TrainingState(epoch, {"w": torch.full((3,), float(epoch))}, {}, {}, "run", {}, [])


def test_newest_readable_checkpoint_wins(tmp_path: Path) -> None:
    run = tmp_path / "fsnn-run"
    for e in (1, 2, 3):
        save_checkpoint(_state(e), run / f"checkpoint_{e}")
    other = save_checkpoint(_state(2), tmp_path / "copy")
    assert newest_state([run, other]).epoch == 3
    torn = run / "checkpoint_3" / "state.safetensors"
    torn.write_bytes(torn.read_bytes()[:50])  # a kill while it was written
    state = newest_state([str(run), str(other)])
    assert state is not None and state.epoch == 2 and float(state.model["w"][0]) == 2.0
    assert newest_state([tmp_path / "nothing", "s3://bucket/run"]) is None


def test_each_epoch_has_its_own_seed() -> None:
    seeds = {epoch_seed(s, e) for s in range(3) for e in range(50)}
    assert len(seeds) == 150 and epoch_seed(0, 4) == epoch_seed(0, 4)


def test_stale_ray_snapshot_is_set_aside(tmp_path: Path) -> None:
    run = tmp_path / "fsnn-r"
    (run / "checkpoint_a").mkdir(parents=True)
    snap = run / RAY_SNAPSHOT
    snap.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}]}))
    assert set_aside_stale_snapshot(str(run)) is None and snap.exists()
    snap.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_b"}]}))
    aside = set_aside_stale_snapshot(str(run))
    assert aside is not None and not snap.exists() and Path(aside).exists()
    snap.write_text("{torn")
    assert set_aside_stale_snapshot(str(run)) is not None


def test_storage_checks(tmp_path: Path) -> None:
    check_storage(str(tmp_path / "new" / "runs"))  # creatable: fine, and nothing is made
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    for bad, why in [(str(tmp_path / "file" / "runs"), "is a file"),
                     ("/proc/fsnn-runs", "not writable"),
                     ("nosuch://bucket/runs", "no filesystem for the scheme")]:
        with pytest.raises(StorageError, match=why):
            check_storage(bad)
    check_storage("s3://bucket/runs")  # a known scheme: credentials are not tried


def test_tracking_uri_checks(tmp_path: Path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path}/ok.db")
    assert (tmp_path / "ok.db").exists()  # the store answered a query
    for uri, why in [(f"sqlit:///{tmp_path}/m.db", "unknown scheme"),
                     (tmp_path.as_uri(), "MLFLOW_ALLOW_FILE_STORE"),
                     ("postgresql://u@127.0.0.1:9/db", "driver 'psycopg"),
                     (f"sqlite:///{tmp_path}/no/such/m.db", "is not writable"),
                     ("http://127.0.0.1:9", "unreachable")]:
        with pytest.raises(TrackingError, match=why):
            check_tracking_uri(uri)


def test_closing_run_marks_each_way_out(tmp_path: Path) -> None:
    with mlflow_server(tmp_path / "mlflow") as uri:
        c = client(uri)

        def new() -> str:
            return create_run(uri, run_name="guarded", params={}, tags={})

        ok = new()
        with closing_run(c, ok, what="run"):
            pass
        assert c.get_run(ok).info.status == "RUNNING"  # success: the caller's to close
        failed = new()
        with pytest.raises(ValueError), closing_run(c, failed, what="run"):
            raise ValueError("the data went away\nsecond line")
        run = c.get_run(failed)
        assert run.info.status == "FAILED"
        assert run.data.tags[FAILURE_TAG] == "the data went away"
        killed = new()
        with pytest.raises(Interrupted) as err, closing_run(c, killed, what=f"run {killed}",
                                                            kept=lambda: "epoch 2 kept"):
            raise KeyboardInterrupt
        assert str(err.value) == f"interrupted: run {killed} marked KILLED; epoch 2 kept"
        assert err.value.code == 130 and c.get_run(killed).info.status == "KILLED"
        outer, inner = new(), new()
        with (pytest.raises(Interrupted) as err, closing_run(c, outer, what="pipeline run"),
              closing_run(c, inner, what="training run")):
            raise KeyboardInterrupt
        assert str(err.value) == ("interrupted: training run marked KILLED; pipeline run "
                                  "marked KILLED")
        assert {c.get_run(r).info.status for r in (outer, inner)} == {"KILLED"}
