"""Bad config input is refused before any work, in one line naming the field and the fix:
infinite or NaN numbers (every float field, search spaces and lists included), invalid YAML in
a ``--set`` value, and an empty config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import refused

from fsnn.platform.config import Config, ConfigError, _allows_float, _leaf_paths, load_config

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def _float_fields() -> list[str]:
    return sorted(k for k, ann in _leaf_paths(Config).items() if _allows_float(ann))


def test_every_float_field_is_found() -> None:
    fields = _float_fields()
    assert {"optim.lr", "vth", "leak", "dropout", "method.tol", "hil.cpus_per_worker"} \
        <= set(fields)


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
def test_every_float_field_must_be_finite(field: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [f"{field}={value}"])
    msg = str(err.value)
    assert f"{field}: must be a finite number" in msg and "\n" not in msg, msg
    assert msg.count(";") == 0, msg  # one complaint, not one per member of a union


@pytest.mark.parametrize(("override", "where"), [
    ("search={space: {optim.lr: {uniform: [0.01, .inf]}}}", "search.space.optim.lr.uniform.1"),
    ("search={space: {vth: {choice: [1.0, .nan]}}}", "search.space.vth.choice.1"),
    ("search={space: {vth: {grid: [.inf]}}}", "search.space.vth.grid.0"),
    ("optim.milestones=[3, .inf]", "optim.milestones.1"),
    ("backend_options={spinnaker: {probe_timeout: .inf}}",
     "backend_options.spinnaker.probe_timeout"),
    ("T=.inf", "T"),
])
def test_numbers_in_lists_and_spaces_must_be_finite(override: str, where: str) -> None:
    with pytest.raises(ConfigError, match=rf"{where.replace('.', '[.]')}: must be a finite "):
        load_config(DEMO, [override])


def test_finite_numbers_still_pass() -> None:
    cfg = load_config(DEMO, ["optim.lr=1e-3", "search={space: {vth: {uniform: [0.5, 3]}}}"])
    assert cfg.optim.lr == 1e-3


def test_a_new_float_field_is_checked_too() -> None:
    """The check lives in the sections' base class: a float field added later gets it."""
    from fsnn.platform.config import _Strict

    class Extra(_Strict):
        rate: float = 1.0
        pair: tuple[float, float] = (0.0, 1.0)

    Extra(rate=2.0)
    with pytest.raises(ValueError, match="finite"):
        Extra(rate=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        Extra(pair=(0.0, float("nan")))


def test_invalid_yaml_in_set_names_the_override() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["optim.lr=[1"])
    msg = str(err.value)
    assert msg.startswith("--set 'optim.lr=[1': not valid YAML (") and "\n" not in msg, msg


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n"])
def test_empty_config_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"CONFIG is empty; start from configs/demo\.yaml"):
        load_config(path)


def test_config_file_yaml_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert "\n" not in str(err.value)


# the command line, as a user runs it


def test_cli_refuses_an_infinite_learning_rate(tmp_path: Path) -> None:
    line = refused("train", DEMO, "--set", "optim.lr=.inf", cwd=tmp_path)
    assert "optim.lr: must be a finite number" in line, line


def test_cli_refuses_nan_in_tune_space(tmp_path: Path) -> None:
    line = refused("tune", DEMO, "--set", "search={space: {vth: {choice: [1, .nan]}}}",
                   cwd=tmp_path)
    assert "search.space.vth.choice.1: must be a finite number" in line, line


def test_cli_refuses_invalid_yaml_in_set(tmp_path: Path) -> None:
    line = refused("train", DEMO, "--set", "optim.lr=[1", cwd=tmp_path)
    assert "--set 'optim.lr=[1': not valid YAML" in line, line


def test_cli_refuses_an_empty_config(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("# nothing set yet\n")
    line = refused("train", "c.yaml", cwd=tmp_path)
    assert "c.yaml: CONFIG is empty; start from configs/demo.yaml" in line, line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
