"""A spec.json with a structural mistake (a number or a list where an object belongs, a missing
key, a wrong type) is refused with a SpecError naming the file and the entry: never a
TypeError, AttributeError or KeyError from inside the parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clirun import refused
from nets import dense_net

from fsnn.platform.spec import SPEC_JSON, SpecError, load_spec, network_from_json, save_spec

Doc = dict[str, Any]


def _spec(tmp: Path, mutate: Callable[[Doc], object]) -> Path:
    path = save_spec(dense_net(), tmp / "spec")
    doc = json.loads((path / SPEC_JSON).read_text())
    mutate(doc)
    (path / SPEC_JSON).write_text(json.dumps(doc))
    return path


def _set(path: str, value: object) -> Callable[[Doc], None]:
    """Set the entry at a dotted path (``projections.0.name``) of the document."""
    def mutate(doc: Doc) -> None:
        *parents, leaf = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return mutate


def _drop(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, leaf = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[leaf]
    return mutate


CASES: list[tuple[str, Callable[[Doc], object], str]] = [
    ("projections: [1]", _set("projections", [1]), r"projections\[0\]: expected an object"),
    ("a projection as a list", _set("projections.1", ["ab", "a", "b"]),
     r"projections\[1\]: expected an object"),
    ("a projection as null", _set("projections.0", None), r"projections\[0\]: expected an"),
    ("projections as an object", _set("projections", {"in": {}}),
     r"spec\.projections: expected a list"),
    ("a projection without a name", _drop("projections.2.name"), r"projections\[2\]\.name: "
                                                                 "missing"),
    ("a projection without a weight", _drop("projections.0.weight"),
     r"projections\[0\]\.weight: missing"),
    ("a bias key that is a number", _set("projections.0.bias", 5),
     r"projections\[0\]\.bias: tensor 5"),
    ("a stride that is a string", _set("projections.1.stride", "1"),
     r"projections\[1\]\.stride: expected an integer, got a string"),
    ("feedback as 1", _set("projections.2.feedback", 1),
     r"projections\[2\]\.feedback: expected true or false"),
    ("populations: [1]", _set("populations", [1]), r"populations\[0\]: expected an object"),
    ("a neuron as a list", _set("populations.0.neuron", [1.0]),
     r"populations\[0\]\.neuron: expected an object"),
    ("a threshold as a string", _set("populations.0.neuron.v_th", "1.0"),
     r"populations\[0\]\.neuron\.v_th: expected a number"),
    ("a neuron without a leak", _drop("populations.1.neuron.leak"),
     r"populations\[1\]\.neuron\.leak: missing"),
    ("a shape as a string", _set("populations.0.shape", "5"),
     r"populations\[0\]\.shape: expected a list"),
    ("a shape of floats", _set("populations.0.shape", [5.5]),
     r"populations\[0\]\.shape: expected a list of integers"),
    ("a shape of lists", _set("populations.0.shape", [[5]]),
     r"populations\[0\]\.shape: expected a list of integers"),
    ("readout as a list", _set("readout", ["b"]), r"spec\.readout: expected an object"),
    ("readout without a source", _drop("readout.source"), r"readout\.source: missing"),
    ("a readout weight key that is a list", _set("readout.weight", ["w"]),
     r"readout\.weight: expected a string"),
    ("input as a number", _set("input", 3), r"spec\.input: expected an object"),
    ("input shape null", _set("input.shape", None), r"input\.shape: expected a list"),
    ("T as a string", _set("T", "30"), r"spec\.T: expected an integer"),
    ("labels as a number", _set("labels", 3), r"spec\.labels: expected a list"),
    ("labels of lists", _set("labels", [[1], [2], [3]]), r"spec\.labels: expected a list"),
    ("metadata as a list", _set("metadata", [1]), r"spec\.metadata: expected an object"),
]


@pytest.mark.parametrize(("mutate", "entry"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_structural_mistakes_name_the_file_and_the_entry(tmp_path: Path, mutate: Callable[
        [Doc], object], entry: str) -> None:
    path = _spec(tmp_path, mutate)
    with pytest.raises(SpecError, match=entry) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(f"{path / SPEC_JSON}: ") and "\n" not in msg, msg


@pytest.mark.parametrize("doc", [[], 1, "spec", None])
def test_a_document_that_is_no_object(tmp_path: Path, doc: object) -> None:
    path = save_spec(dense_net(), tmp_path / "spec")
    (path / SPEC_JSON).write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="not an fsnn spec") as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path / SPEC_JSON}: not an fsnn spec")


def test_in_memory_documents_are_checked_the_same() -> None:
    """network_from_json (what deploy actors and the forward pool read) names the entry."""
    from fsnn.platform.spec import network_to_json

    net = dense_net()
    doc = network_to_json(net)
    doc["projections"] = [1]
    with pytest.raises(SpecError, match=r"projections\[0\]: expected an object"):
        network_from_json(doc, net.tensors())


def test_a_good_spec_still_loads(tmp_path: Path) -> None:
    net = load_spec(save_spec(dense_net(), tmp_path / "spec"))
    assert [q.name for q in net.projections] == ["in", "ab", "ba", "aa"]


def test_cli_names_the_file_and_the_entry(tmp_path: Path) -> None:
    path = _spec(tmp_path, _set("projections", [1]))
    line = refused("export", str(path), "--out", "x.nir", cwd=tmp_path)
    assert f"{path / SPEC_JSON}: projections[0]: expected an object" in line, line
    assert not (tmp_path / "x.nir").exists()
