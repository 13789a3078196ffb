"""Every exit path of `fsnn` that a user can provoke, against a real MLflow server on loopback and
a real local Ray: each refusal is exit 2 with one line naming the problem and the fix, comes
before Ray starts and before any MLflow run exists; failures after a run was created mark it
FAILED (with the reason) or KILLED; at the end no run in the store is left RUNNING.

With FSNN_FAILURE_TABLE=PATH the cases are written there as a table (case, exit code, seconds,
message), the one the reliability issue's closing note quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import RAY_TEST_ENV, mlflow_server
from trainrun import DEMO, FSNN, SMALL, runs, train, wait_for_epochs

from fsnn.platform.data.cache import cache_root

pytestmark = pytest.mark.slow
ROWS: list[dict[str, object]] = []


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracking server of this module's own: its runs are all the ones these cases made."""
    with mlflow_server(tmp_path_factory.mktemp("failures-mlflow")) as uri:
        yield uri
    if os.environ.get("FSNN_FAILURE_TABLE"):
        lines = ["| case | exit | seconds | message |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['code']} | {r['seconds']:.1f} | "
                  f"{str(r['message']).replace('|', '/')} |" for r in ROWS]
        Path(os.environ["FSNN_FAILURE_TABLE"]).write_text("\n".join(lines) + "\n")


@dataclass
class Outcome:
    code: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def last(self) -> str:
        """fsnn's closing line (with -v, Ray's log lines may still trail it)."""
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.startswith("fsnn ")]
        return lines[-1] if lines else ""


def fsnn(case: str, tmp: Path, *args: str, env: dict[str, str] | None = None,
         timeout: int = 300) -> Outcome:
    t0 = time.perf_counter()
    out = subprocess.run([*FSNN, *args], cwd=tmp, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **RAY_TEST_ENV, **(env or {})})
    res = Outcome(out.returncode, time.perf_counter() - t0, out.stdout, out.stderr)
    ROWS.append({"case": case, "code": res.code, "seconds": res.seconds, "message": res.last})
    return res


def assert_refused(res: Outcome, *needles: str) -> None:
    """Exit 2, no traceback, and the last line says it all."""
    assert res.code == 2, (res.code, res.stdout[-2000:], res.stderr[-3000:])
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert res.last.startswith("fsnn "), res.stderr[-2000:]
    for n in needles:
        assert n in res.last, (n, res.last)


def count_runs(uri: str) -> int:
    return len(runs(uri)[1])


def _serve(handler: Callable[[socket.socket], None]) -> tuple[int, Callable[[], None]]:
    """A TCP server on loopback that is not Ray; returns its port and a stopper."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.5)
    stop = threading.Event()

    def loop() -> None:
        conns = []
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            handler(conn)
        for c in conns:
            c.close()
        srv.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1], stop.set


def _silent(conn: socket.socket) -> None:
    pass  # accepts, then says nothing (an SSH tunnel to nothing, a wedged service)


def _http(conn: socket.socket) -> None:
    conn.recv(64)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def _empty(tmp: Path) -> str:
    p = tmp / "empty.yaml"
    p.write_text("# nothing here\n")
    return str(p)


# (case, arguments given the tmp folder and the store, what the line must say)
REFUSALS: list[tuple[str, Callable[[Path, str], list[str]], tuple[str, ...]]] = [
    ("config: optim.lr=.inf", lambda t, u: ["train", DEMO, "--set", "optim.lr=.inf"],
     ("optim.lr: must be a finite number",)),
    ("config: invalid YAML in --set", lambda t, u: ["train", DEMO, "--set", "optim.lr=[1"],
     ("--set 'optim.lr=[1'", "not valid YAML")),
    ("config: empty file", lambda t, u: ["train", _empty(t)], ("CONFIG is empty",)),
    ("storage: not writable", lambda t, u: ["train", DEMO, "--tracking-uri", u, "--storage",
                                            "/proc/fsnn-runs"], ("--storage", "not writable")),
    ("storage: unknown URI scheme", lambda t, u: ["train", DEMO, "--tracking-uri", u,
                                                  "--storage", "nosuch://bucket/runs"],
     ("no filesystem for the scheme 'nosuch'",)),
    ("tracking: file store", lambda t, u: ["train", DEMO, "--tracking-uri",
                                           (t / "mlruns").as_uri()],
     ("MLFLOW_ALLOW_FILE_STORE",)),
    ("tracking: database driver missing", lambda t, u: ["train", DEMO, "--tracking-uri",
                                                        "postgresql://u@127.0.0.1:9/db"],
     ("database driver", "pip install")),
    ("tracking: misspelt scheme", lambda t, u: ["train", DEMO, "--tracking-uri",
                                                f"sqlit:///{t}/m.db"], ("unknown scheme",)),
    ("tracking: server unreachable", lambda t, u: ["train", DEMO, "--tracking-uri",
                                                   "http://127.0.0.1:9"], ("unreachable",)),
    ("ray: nothing listens", lambda t, u: ["train", DEMO, "--tracking-uri", u, "--address",
                                           "127.0.0.1:9"], ("127.0.0.1:9", "unreachable")),
    ("deploy: --option of the wrong type",
     lambda t, u: ["deploy", "nowhere", "--backend", "spinnaker-emulated", "--tracking-uri", u,
                   "--option", "quantize=maybe"], ("quantize", "expected bool")),
    ("export: --out is a folder", lambda t, u: ["export", "nowhere", "--out", str(t)],
     ("is a folder",)),
]


@pytest.mark.parametrize(("case", "args", "needles"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_before_any_work(case: str, args: Callable[[Path, str], list[str]],
                                 needles: tuple[str, ...], tmp_path: Path, store: str) -> None:
    before = count_runs(store)
    res = fsnn(case, tmp_path, *args(tmp_path, store))
    assert_refused(res, *needles)
    assert count_runs(store) == before, "a refused command created an MLflow run"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("case", "handler", "needle"), [
    ("ray: a port that answers nothing", _silent, "did not answer as Ray within 10 s"),
    ("ray: an HTTP port, not Ray", _http, "not as Ray (an HTTP/1 server answered)"),
])
def test_an_address_that_is_not_ray_is_refused_in_bounded_time(
        case: str, handler: Callable[[socket.socket], None], needle: str, tmp_path: Path,
        store: str) -> None:
    port, stop = _serve(handler)
    try:
        t0 = time.perf_counter()
        res = fsnn(case, tmp_path, "train", DEMO, "--tracking-uri", store, "--address",
                   f"127.0.0.1:{port}", timeout=120)
        assert time.perf_counter() - t0 < 60
    finally:
        stop()
    assert_refused(res, f"127.0.0.1:{port}", needle)


def test_a_corrupt_data_header_fails_before_ray(tmp_path: Path, store: str) -> None:
    """A bit flip after the cache was stamped: found on the driver, not in every worker."""
    src = cache_root(None) / "fashion-mnist"
    data = tmp_path / "data"
    shutil.copytree(src, data / "fashion-mnist")
    f = data / "fashion-mnist" / "t10k-images-idx3-ubyte"
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.write(b"\x00\x00\x0d\x03")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the stamp still vouches for it
    before = count_runs(store)
    res = fsnn("data: corrupt idx header", tmp_path, "-v", "train", DEMO, "--tracking-uri",
               store, env={"FSNN_DATA": str(data)})
    assert_refused(res, "corrupt idx header", "t10k-images-idx3-ubyte", "fsnn data fetch")
    assert count_runs(store) == before
    assert "Started a local Ray" not in res.stderr + res.stdout


def test_resume_refusals(tmp_path: Path, store: str) -> None:
    """--resume is checked in full on the driver: the store holds the run, the run is not
    finished, the config is the one it was trained with, the checkpoint reads and fits."""
    out = train(tmp_path, store, "--set", "name=resumable", "--set", "train.epochs=1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    c, found = runs(store, "resumable")
    rid = found[0].info.run_id
    before = count_runs(store)
    res = fsnn("resume: a finished run", tmp_path, "train", "--resume", rid, "--tracking-uri",
               store)
    assert_refused(res, "finished", f"--init {rid}")
    c.set_terminated(rid, "KILLED")  # as if it had been interrupted
    res = fsnn("resume: another config", tmp_path, "train", DEMO, *SMALL, "--set",
               "optim.lr=0.3", "--resume", rid, "--tracking-uri", store)
    assert_refused(res, "differs", "optim.lr (0.05 -> 0.3)", "resume without CONFIG")
    ckpt = sorted(p for p in (tmp_path / "storage" / f"fsnn-{rid}").glob("checkpoint_*")
                  if p.is_dir())[-1]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    res = fsnn("resume: its run is in another store", tmp_path, "train", "--resume", str(ckpt),
               "--tracking-uri", other)
    assert_refused(res, rid, "does not hold", "--tracking-uri")
    torn = tmp_path / "torn"
    shutil.copytree(ckpt, torn)
    state = torn / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    res = fsnn("resume: a corrupt checkpoint", tmp_path, "train", "--resume", str(torn),
               "--tracking-uri", store)
    assert_refused(res, "corrupt")
    meta = json.loads((ckpt / "fsnn-checkpoint.json").read_text())
    assert meta["run_id"] == rid
    assert count_runs(store) == before
    assert c.get_run(rid).info.status == "KILLED"  # refusals leave the run as it was


def test_divergence_fails_the_run_at_once(tmp_path: Path, store: str) -> None:
    """A loss gone NaN is not a lost worker: no retry, one line, the run FAILED with it."""
    res = fsnn("training: weights diverge (optim.lr=1e30)", tmp_path, "-v", "train", DEMO, *SMALL,
               "--tracking-uri", store, "--storage", str(tmp_path / "runs"), "--set",
               "optim.lr=1e30", "--set", "name=diverges", "--set", "train.max_failures=3")
    assert_refused(res, "training failed:", "non-finite", "at batch", "of epoch 1",
                   "lower optim.lr")
    # -v lets Ray's controller speak: the worker group started once, never restarted
    assert (res.stdout + res.stderr).count("Started training worker group") == 1
    _, found = runs(store, "diverges")
    assert [r.info.status for r in found] == ["FAILED"]
    assert "non-finite" in found[0].data.tags["fsnn.failure"]


def test_interrupted_pipeline_closes_its_runs_and_resumes(tmp_path: Path, store: str) -> None:
    """Ctrl-C in `fsnn pipeline`'s training: exit 130, the pipeline and the training run
    KILLED; the next pipeline of the same config resumes that training run and finishes."""
    args = [*FSNN, "pipeline", DEMO, *SMALL, "--tracking-uri", store, "--storage",
            str(tmp_path / "runs"), "--set", "name=piped", "--set", "train.epochs=3",
            "--set", "deploy.backends=[torch]", "--set", "deploy.samples=100"]
    env = {**os.environ, **RAY_TEST_ENV}
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    rid = wait_for_epochs(proc, store, "piped", 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    ROWS.append({"case": "Ctrl-C in `fsnn pipeline`", "code": proc.returncode,
                 "seconds": time.perf_counter() - t0, "message": out.strip().splitlines()[-1]})
    assert proc.returncode == 130, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert "training run" in last and "pipeline run" in last and "KILLED" in last, last
    c, found = runs(store)
    by_kind = {r.data.tags.get("fsnn.kind"): r for r in found
               if r.data.tags.get("fsnn.kind") in ("pipeline", "train")
               and r.data.params.get("name") == "piped"}
    assert by_kind["train"].info.run_id == rid
    assert by_kind["train"].info.status == by_kind["pipeline"].info.status == "KILLED"

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming the interrupted training run {rid}" in again.stdout
    assert c.get_run(rid).info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(rid, "test_accuracy")) == [0, 1, 2]


def test_no_run_is_left_running(store: str) -> None:
    """Runs last in this module: whatever the cases above did, nothing is RUNNING."""
    _, found = runs(store)
    assert found, "the cases above created runs"
    assert [r.info.run_id for r in found if r.info.status == "RUNNING"] == []
