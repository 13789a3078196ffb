"""The end of a search: trials ranked, the table printed, and the best trial's config, spec and
the search plot logged to the search's MLflow run."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fsnn.platform.config import Config, dump_config, trial_config

TRIAL_DIR_PREFIX = "trial_"


@dataclass
class TrialRow:
    """One trial of a search: its sampled ``params`` (config paths), the ``metrics`` of the
    last epoch it reported, its MLflow ``run_id`` (nested under the search's run), and
    ``error`` if it failed."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]  # the last epoch the trial reported
    error: str | None = None
    checkpoint: Any = None  # ray.tune.Checkpoint of the last epoch
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("epoch", 0))

    @property
    def rate(self) -> float:
        rates = [float(v) for k, v in self.metrics.items() if k.startswith("rate_")]
        return sum(rates) / len(rates) if rates else math.nan


def trial_dirname(trial: Any) -> str:
    return f"{TRIAL_DIR_PREFIX}{trial.trial_id}"


def collect(results: Any, runs: list[Any]) -> list[TrialRow]:
    """One row per trial of a Tune ResultGrid, joined with its nested MLflow run."""
    from fsnn.pipelines.tune.trial import TRIAL_TAG

    by_trial = {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in runs}
    rows = []
    for res in results:
        metrics = dict(res.metrics or {})
        tid = str(metrics.get("trial_id") or
                  PurePosixPath(str(res.path)).name.removeprefix(TRIAL_DIR_PREFIX))
        rows.append(TrialRow(tid, dict(res.config or {}), metrics,
                             None if res.error is None else f"{type(res.error).__name__}",
                             res.checkpoint, by_trial.get(tid)))
    return rows


def rank(rows: list[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Best first; trials that never reported ``metric`` last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(r: TrialRow) -> tuple[int, float]:
        v = r.metrics.get(metric)
        return (1, 0.0) if v is None or math.isnan(float(v)) else (0, sign * float(v))

    return sorted(rows, key=key)


def print_table(rows: list[TrialRow], metric: str, keys: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "trial", *keys, "epochs", metric, "rate"):
        table.add_column(col, justify="left" if col == "trial" else "right")
    table.add_column("MLflow run", no_wrap=True, min_width=32)
    for i, r in enumerate(rows, 1):
        value = r.metrics.get(metric)
        shown = f"{float(value):.4f}" if value is not None else (r.error or "-")
        table.add_row(str(i), r.trial_id, *(_fmt(r.params.get(k)) for k in keys),
                      str(r.epochs), shown, _fmt(r.rate), r.run_id or "-")
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(160, console.width))
    console.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def _best_spec(base: Config, best: TrialRow, parent_run_id: str, out: str) -> None:
    from fsnn.platform.checkpoint import load_checkpoint
    from fsnn.platform.data import DATASETS
    from fsnn.platform.spec import save_spec
    from fsnn.platform.trainer import model_from_config

    cfg = trial_config(base, best.params)
    info = DATASETS[cfg.data.name]
    model = model_from_config(cfg, num_classes=info.num_classes, labels=list(info.classes))
    with best.checkpoint.as_directory() as d:
        model.load_state_dict(load_checkpoint(d).model)
    net = model.eval().to_network(metadata={"mlflow_run_id": best.run_id or "",
                                            "tune_run_id": parent_run_id,
                                            "dataset": cfg.data.name})
    save_spec(net, out)


def _best_model(c: Any, base: Config, best: TrialRow, parent_run_id: str, spec: Path) -> None:
    """The best trial's spec as the search run's MLflow Model ``model`` (registrable)."""
    from fsnn.pipelines.mlflow_model import log_spec_model
    from fsnn.platform.data import load_dataset
    from fsnn.platform.spec import load_spec

    cfg = trial_config(base, best.params)
    x, _ = load_dataset(cfg.data.name, "test", Path(cfg.data.root) if cfg.data.root else None,
                        limit=2, progress=False)
    log_spec_model(c, parent_run_id, spec, load_spec(spec), x)


def log_search(c: Any, parent_run_id: str, base: Config, rows: list[TrialRow]) -> None:
    """Best metric and trial, the best config (best_config.yaml) and spec (spec/), the search
    plot (plots/tune.png) and every trial (trials.json) on the search's run."""
    from fsnn.pipelines.plots import plot_tune
    from fsnn.pipelines.tracking import set_tags

    assert base.search is not None
    metric = base.search.metric
    scored = [r for r in rows if r.metrics.get(metric) is not None]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        table = [{"rank": i, "trial_id": r.trial_id, "run_id": r.run_id, "params": r.params,
                  "epochs": r.epochs, "error": r.error,
                  "metrics": {k: v for k, v in r.metrics.items()
                              if isinstance(v, int | float) and not isinstance(v, bool)}}
                 for i, r in enumerate(rows, 1)]
        (tmp / "trials.json").write_text(json.dumps(table, indent=1, default=str))
        c.log_artifact(parent_run_id, str(tmp / "trials.json"))
        (tmp / "plots").mkdir()
        configs = [trial_config(base, r.params) for r in scored]
        points = [{"T": float(t.T), "vth": t.vth, metric: float(r.metrics[metric]),
                   "rate": r.rate} for t, r in zip(configs, scored, strict=True)]
        plot_tune(points, metric, tmp / "plots" / "tune.png")
        c.log_artifacts(parent_run_id, str(tmp / "plots"), "plots")
        if not scored:
            return
        best = scored[0]
        c.log_metric(parent_run_id, f"best_{metric}", float(best.metrics[metric]))
        set_tags(c, parent_run_id, {"fsnn.best_trial_id": best.trial_id,
                                    "fsnn.best_run_id": best.run_id or "",
                                    "fsnn.best_params": json.dumps(best.params, sort_keys=True)})
        (tmp / "best_config.yaml").write_text(dump_config(trial_config(base, best.params)))
        c.log_artifact(parent_run_id, str(tmp / "best_config.yaml"))
        if best.checkpoint is not None:
            _best_spec(base, best, parent_run_id, str(tmp / "spec"))
            c.log_artifacts(parent_run_id, str(tmp / "spec"), "spec")
            c.set_tag(parent_run_id, "fsnn.spec", "spec")
            _best_model(c, base, best, parent_run_id, tmp / "spec")
