"""The public Python API (`import fsnn`): what it exposes, that it stays light, that its
functions are documented and typed, and that it computes what the engines compute."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fsnn
from fsnn.platform.data import load_dataset
from fsnn.platform.spec import Neuron

HEAVY = ("ray", "mlflow", "pyNN", "nest", "spynnaker", "tonic", "matplotlib")
JOBS = ("train", "tune", "deploy", "pipeline", "export_nir", "load_spec", "save_spec",
        "load_config", "saved_config", "fetch_data", "verify_data")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_import_is_light_and_help_shows_the_api(tmp_path: Path) -> None:
    code = ("import sys, fsnn; help(fsnn); "
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env={"PAGER": "cat", "PATH": "/usr/bin"}
                         ).stdout
    assert "HEAVY []" in out
    for name in (*JOBS, "zoo", "backends", "TrainResult", "DeployResult", "FsnnError"):
        assert name in out, name


def test_every_public_name_is_documented_and_typed() -> None:
    for name in fsnn.__all__:
        obj = getattr(fsnn, name)
        assert inspect.getdoc(obj), f"fsnn.{name} has no docstring"
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert sig.return_annotation is not inspect.Signature.empty, name
            for p in sig.parameters.values():
                assert p.annotation is not inspect.Parameter.empty, f"fsnn.{name}({p.name})"
    assert set(fsnn.backends.names()) >= {"torch", "nest", "spinnaker", "spinnaker-emulated"}


def test_every_user_facing_error_is_an_fsnn_error() -> None:
    from fsnn.backends.base import BackendError
    from fsnn.pipelines.deploy import DeployError
    from fsnn.pipelines.export import ExportError
    from fsnn.pipelines.raycluster import RayConnectError
    from fsnn.pipelines.storage import StorageError
    from fsnn.pipelines.tracking import TrackingError
    from fsnn.pipelines.train.driver import TrainingError
    from fsnn.pipelines.tune.search import TuneSetupError
    from fsnn.platform.checkpoint import CheckpointError
    from fsnn.platform.data import DataError

    for cls in (fsnn.ConfigError, fsnn.SpecError, BackendError, DeployError, ExportError,
                RayConnectError, StorageError, TrackingError, TrainingError, TuneSetupError,
                CheckpointError, DataError):
        assert issubclass(cls, fsnn.FsnnError), cls


def test_load_config_sources_and_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fsnn.load_config(CONFIG, ["optim.lr=0.3"], num_workers=1, gpu=False)
    assert (cfg.optim.lr, cfg.train.num_workers, cfg.train.use_gpu) == (0.3, 1, False)
    assert cfg.dropout > 0  # the demo trains with dropout
    # a simulator forward turns dropout off (the spec has no masks) and says so ...
    hil = fsnn.load_config(cfg, forward="nest")
    assert (hil.forward, hil.dropout) == ("nest", 0.0)
    assert "dropout 0" in capsys.readouterr().err
    # ... unless an override sets it: then the config's own rule names the conflict
    with pytest.raises(fsnn.ConfigError, match="dropout: must be 0 with forward: nest"):
        fsnn.load_config(cfg, ["dropout=0.1"], forward="nest")
    # a mapping (e.g. a saved config document) is a source too, and is not modified
    doc = cfg.model_dump(mode="json")
    again = fsnn.load_config(doc, ["T=7"])
    assert again.T == 7 and doc["T"] == cfg.T
    assert fsnn.load_config(cfg) is cfg
    with pytest.raises(fsnn.ConfigError, match="forward"):
        fsnn.load_config(cfg, forward="loihi")
    with pytest.raises(fsnn.ConfigError, match=r"optim\.nope"):
        fsnn.load_config(CONFIG, ["optim.nope=1"])


def test_jobs_refuse_bad_input_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(fsnn.FsnnError, match="give a config"):
        fsnn.train()
    with pytest.raises(fsnn.FsnnError, match="give one of them"):
        fsnn.train(CONFIG, resume="a", init="b")
    with pytest.raises(fsnn.FsnnError, match="samples and workers must be positive"):
        fsnn.deploy("whatever", samples=0)
    with pytest.raises(fsnn.backends.BackendError, match="unknown backend 'loihi'"):
        fsnn.backends.get("loihi")
    net = fsnn.zoo.build_model("f400", T=3).eval().to_network()
    with pytest.raises(fsnn.FsnnError, match="out="):
        fsnn.export_nir(net)


def test_deploy_a_network_equals_the_model_in_eval_mode(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """fsnn.deploy of an in-memory Network on the torch backend predicts what the model's own
    forward pass predicts (an independent path: nn.Module layers with batch norm unfolded)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(3)
    model = fsnn.zoo.build_model("f400", T=6, neuron=Neuron("LIF", v_th=1.0, leak=0.9))
    model.train()
    x, _ = load_dataset("fashion-mnist", "test", limit=256, progress=False)
    with torch.no_grad():  # give batch norm real running statistics
        for _ in range(3):
            model(x)
    model = model.double().eval()
    net = model.to_network(metadata={"dataset": "fashion-mnist"})
    res = fsnn.deploy(net, "torch", samples=64, log=False,
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert isinstance(res, fsnn.DeployResult) and res.samples == 64 and res.run_id is None
    x, y = load_dataset("fashion-mnist", "test", limit=64, progress=False)
    with torch.no_grad():
        expected = model(x.double()).argmax(1).numpy()
    assert res.predictions is not None
    assert (res.predictions == expected).all()
    assert res.metrics["accuracy"] == pytest.approx(float((expected == y.numpy()).mean()))


def test_spec_and_nir_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("nir")
    net = fsnn.zoo.build_model("f400", T=4).eval().to_network(metadata={"dataset": "mnist"})
    back = fsnn.load_spec(fsnn.save_spec(net, tmp_path / "spec"))
    assert [q.name for q in back.projections] == [q.name for q in net.projections]
    for a, b in zip(back.projections, net.projections, strict=True):
        assert torch.equal(a.weight, b.weight)
    out = fsnn.export_nir(net, tmp_path / "net.nir")
    import nir

    graph = nir.read(out)
    assert set(graph.nodes) >= {"input", "output"}
