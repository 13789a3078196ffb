"""Backend constructor options are checked against the constructor's annotations before
anything is built: an unknown name lists the accepted ones, a value of the wrong type says what
was expected (an int is a float, a bool is no int); ``--option`` values that are not YAML are
named."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Literal

import pytest
from clirun import refused
from nets import dense_net

from fsnn.backends.base import (
    BACKENDS,
    BackendError,
    check_options,
    get_backend,
    parse_option,
    parse_options,
)
from fsnn.platform.spec import save_spec


def _factory(name: str) -> type:
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def test_a_str_where_a_bool_is_expected() -> None:
    with pytest.raises(BackendError) as err:
        get_backend("spinnaker-emulated", quantize="maybe")
    assert "option quantize: expected bool, got 'maybe' (str)" in str(err.value)


def test_an_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(BackendError) as err:
        get_backend("spinnaker-emulated", speed=9)
    msg = str(err.value)
    assert "unknown option 'speed'" in msg
    assert "accepted: quantize, neuron, if_model, if_leak" in msg, msg


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("nest", {"threads": True}, "option threads: expected int, got True (bool)"),
    ("nest", {"threads": 2.0}, "option threads: expected int, got 2.0 (float)"),
    ("spinnaker-emulated", {"if_leak": False}, "option if_leak: expected float, got False"),
    ("spinnaker", {"host": 5}, "option host: expected str or None, got 5 (int)"),
    ("spinnaker", {"virtual": "yes"}, "option virtual: expected bool or None, got 'yes'"),
    ("torch", {"dtype": "float32"}, "option dtype: expected torch.dtype, got 'float32' (str)"),
])
def test_wrong_types_are_named(name: str, options: dict[str, object], expected: str) -> None:
    with pytest.raises(BackendError) as err:
        check_options(name, _factory(name), options)
    assert expected in str(err.value), str(err.value)


def test_right_types_pass() -> None:
    check_options("spinnaker-emulated", _factory("spinnaker-emulated"),
                  {"if_leak": 1, "quantize": False, "neuron": "spec"})  # an int is a float
    check_options("spinnaker", _factory("spinnaker"), {"host": None, "version": 5,
                                                        "probe_timeout": 2})
    backend = get_backend("spinnaker-emulated", quantize=False, neuron="spec", if_leak=1)
    assert backend.quantize is False  # type: ignore[attr-defined]


def test_literal_and_kwargs() -> None:
    class Fake:
        def __init__(self, *, mode: Literal["a", "b"] = "a", level: Literal[1, 2] = 1) -> None:
            pass

    check_options("fake", Fake, {"mode": "b", "level": 2})
    with pytest.raises(BackendError, match=r"expected one of 'a', 'b', got 'c'"):
        check_options("fake", Fake, {"mode": "c"})
    with pytest.raises(BackendError, match=r"expected one of 1, 2, got True"):
        check_options("fake", Fake, {"level": True})  # True == 1, but it is no 1

    class Open:
        def __init__(self, **options: object) -> None:
            pass

    check_options("open", Open, {"anything": 1})


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_constructor_takes_the_check(name: str) -> None:
    """Every annotation resolves, and every default passes its own annotation."""
    factory = _factory(name)
    import typing

    hints = typing.get_type_hints(factory.__init__)
    params = {n: p for n, p in inspect.signature(factory.__init__).parameters.items()
              if n != "self"}
    assert params and set(params) <= set(hints), (name, set(params) - set(hints))
    check_options(name, factory, {n: p.default for n, p in params.items()})


def test_parse_option() -> None:
    assert parse_option("quantize=false") == ("quantize", False)
    assert parse_option(" host =10.0.0.2") == ("host", "10.0.0.2")
    assert parse_option("workdir=") == ("workdir", "")
    assert parse_options(["a=1", "b=[1, 2]"]) == {"a": 1, "b": [1, 2]}
    with pytest.raises(BackendError) as err:
        parse_option("if_leak=[1")
    msg = str(err.value)
    assert msg.startswith("--option 'if_leak=[1': not valid YAML (") and "\n" not in msg, msg
    for bad in ("novalue", "=3"):
        with pytest.raises(BackendError, match="expected KEY=VALUE"):
            parse_option(bad)


# the command line, as a user runs it


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder (one spec, one local MLflow store made once) for the command-line tests."""
    path = tmp_path_factory.mktemp("deploy")
    save_spec(dense_net(), path / "spec")
    return path


def test_cli_refuses_a_mistyped_option(work: Path) -> None:
    line = refused("deploy", "spec", "--backend", "spinnaker-emulated",
                   "--option", "quantize=maybe", cwd=work)
    assert "option quantize: expected bool, got 'maybe' (str)" in line, line


def test_cli_refuses_an_unknown_option(work: Path) -> None:
    line = refused("deploy", "spec", "--backend", "spinnaker-emulated",
                   "--option", "speed=9", cwd=work)
    assert "unknown option 'speed'" in line and "accepted: quantize" in line, line


def test_cli_refuses_an_option_that_is_not_yaml(work: Path) -> None:
    line = refused("deploy", "spec", "--backend", "spinnaker-emulated",
                   "--option", "if_leak=[1", cwd=work)
    assert "--option 'if_leak=[1': not valid YAML" in line, line
