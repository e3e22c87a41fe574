"""The deployment material (deploy/, docker-compose.yml), checked without a Docker engine or a
cluster: every file parses, names only files that exist in the repository (or paths the image
provides), uses only metric names the worker exposes, and passes Prometheus' own checks.

promtool comes from Debian's `prometheus` package; kubectl's built-in kustomize renders the
manifests. Tests that need either skip when it is not on PATH.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from stream_infer.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKER_TOML = DEPLOY / "config" / "worker.toml"
DEMO_TOML = ROOT / "stream_infer" / "configs" / "demo.toml"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stream-infer.json"
K8S = DEPLOY / "k8s"

# The in-image folders that deploy/config/worker.toml names, and what provides them in the
# repository (deploy/Dockerfile copies schemas/ and links the installed package's models).
IMAGE_PATHS = {
    "/opt/stream-infer/models": ROOT / "stream_infer" / "models",
    "/opt/stream-infer/schemas": ROOT / "schemas",
}
IMAGE_CONFIG = "/etc/stream-infer/worker.toml"
WEB_PORT = 6066
INPUT_PARTITIONS = 6

METRIC_NAME = re.compile(r"stream_infer_[a-z_]+")
REQUIRED_ALERTS = {"ConsumerLagRising", "LagSecondsOverSLO", "DeadLetterRate", "WorkerDown", "WorkerNotReady"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian package `prometheus`)")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


# --- metric names --------------------------------------------------------------------------------

# What a family of each type is exposed as (prometheus_client drops a counter's _total from the
# family name and adds it back on the sample).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
    "summary": ("", "_sum", "_count"),
}


def exposed_metric_names() -> set[str]:
    """The stream_infer_* series names the worker's /metrics can expose. Labelled metrics have no
    samples until first used, so the names come from the registered families and their types."""
    import prometheus_client

    importlib.import_module("stream_infer.metrics")  # registers the worker's metrics

    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        if family.name.startswith("stream_infer_"):
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def assert_known_metrics(expressions: dict[str, str], where: str) -> None:
    exposed = exposed_metric_names()
    unknown: dict[str, list[str]] = {}
    for label, expr in expressions.items():
        for name in sorted(set(METRIC_NAME.findall(expr)) - exposed):
            unknown.setdefault(name, []).append(label)
    assert not unknown, (
        f"{where} uses metric names that stream_infer.metrics does not expose: "
        + "; ".join(f"{name} (in {', '.join(used)})" for name, used in sorted(unknown.items()))
        + f". Exposed: {', '.join(sorted(exposed))}"
    )


# --- docker-compose.yml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host source, container target) of each bind mount, short or long syntax."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/", "~")):  # otherwise a named volume
                out.append((source, target))
        elif volume.get("type") == "bind":
            out.append((volume["source"], volume["target"]))
    return out


def host_path(service: dict, container_path: str) -> Path:
    """The repository file behind a path inside a container, through the service's bind mounts."""
    for source, target in bind_mounts(service):
        target = target.rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            return (ROOT / source / container_path[len(target):].lstrip("/")).resolve()
    raise AssertionError(f"{container_path} is not inside a bind mount of the service")


def test_compose_services_and_images(compose):
    services = compose["services"]
    assert {"kafka", "topics", "worker", "prometheus", "grafana"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    # The topics job runs the broker image's own kafka-topics.sh.
    assert services["topics"]["image"] == services["kafka"]["image"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_compose_bind_mounts_exist(compose):
    mounts = [(name, source) for name, svc in compose["services"].items() for source, _ in bind_mounts(svc)]
    assert mounts, "expected bind mounts (Prometheus and Grafana config)"
    missing = [f"{name}: {source}" for name, source in mounts if not (ROOT / source).exists()]
    assert not missing, f"bind-mounted host paths missing from the repository: {missing}"


def test_compose_kafka_listeners(compose):
    env = compose["services"]["kafka"]["environment"]

    def names(listener_list: str) -> set[str]:
        return {entry.split("://")[0] for entry in listener_list.split(",")}

    listeners = names(env["KAFKA_LISTENERS"])
    protocol_map = {entry.split(":")[0] for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert listeners <= protocol_map, "every listener needs a security protocol"
    assert names(env["KAFKA_ADVERTISED_LISTENERS"]) <= listeners
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    # The host keeps localhost:9092; containers reach the broker as kafka:19092.
    assert "PLAINTEXT://localhost:9092" in advertised
    assert any(entry.endswith("://kafka:19092") for entry in advertised)
    assert "127.0.0.1:9092:9092" in compose["services"]["kafka"]["ports"]
    assert "healthcheck" in compose["services"]["kafka"]


def test_compose_topics_job_creates_the_input_topics(compose):
    topics = compose["services"]["topics"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = " ".join(topics["command"]) if isinstance(topics["command"], list) else topics["command"]
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    assert "--if-not-exists" in script and f"--partitions {INPUT_PARTITIONS}" in script
    assert "--bootstrap-server kafka:19092" in script
    for pipeline in tomllib.loads(WORKER_TOML.read_text())["pipelines"]:
        assert pipeline["input_topic"] in script


def test_compose_worker(compose):
    worker = compose["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    # Replicas must not clash: no fixed name, no published host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert str(WEB_PORT) in [str(port) for port in worker["expose"]]
    context = ROOT / worker["build"]["context"]
    assert context.is_dir()
    assert (context / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "STREAM_INFER_INSTANCE_ID" not in worker["environment"], "one fixed id for every replica would clash"


def test_compose_prometheus_finds_every_worker(compose):
    prometheus = compose["services"]["prometheus"]
    flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_file = host_path(prometheus, flag.split("=", 1)[1])
    assert config_file == (PROMETHEUS / "prometheus.yml").resolve()
    config = load_yaml(config_file)
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "stream-infer")
    (sd,) = job["dns_sd_configs"]
    # Docker's DNS answers a service name with every replica's address.
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == WEB_PORT
    assert sd["names"][0] in compose["services"]


def test_compose_grafana_provisioning(compose):
    grafana = compose["services"]["grafana"]
    assert host_path(grafana, "/etc/grafana/provisioning") == (DEPLOY / "grafana" / "provisioning").resolve()
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    for provider in providers:
        assert host_path(grafana, provider["options"]["path"]) == DASHBOARD.parent.resolve()
    assert host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == DASHBOARD
    (datasource,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


# --- deploy/Dockerfile and .dockerignore ---------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerignore_matches(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    def regex(pattern: str) -> re.Pattern:
        out = ""
        for part in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + r"\Z")

    ignored = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!")
        if any(regex(pattern).match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def copy_sources_and_dest(args: str) -> tuple[list[str], str, list[str]]:
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    rest = [w for w in words if not w.startswith("--")]
    return rest[:-1], rest[-1], flags


def test_dockerfile_runtime_settings():
    instructions = dockerfile_instructions()
    text = DOCKERFILE.read_text()
    for keyword, args in instructions:
        if keyword == "FROM":
            assert "python:" in args and "-slim" in args, args
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(keyword == "HEALTHCHECK" and "http://127.0.0.1:6066/healthz" in args for keyword, args in instructions)
    assert ("EXPOSE", str(WEB_PORT)) in instructions
    assert ("ENTRYPOINT", '["stream-infer"]') in instructions
    assert ("CMD", f'["worker", "-c", "{IMAGE_CONFIG}"]') in instructions
    for image_dir in IMAGE_PATHS:
        assert image_dir in text, f"the Dockerfile does not provide {image_dir}, which worker.toml uses"


def test_dockerfile_copy_sources_exist_and_are_in_the_context():
    copies = [copy_sources_and_dest(args) for keyword, args in dockerfile_instructions() if keyword in {"COPY", "ADD"}]
    from_context = [(sources, dest) for sources, dest, flags in copies if not any(f.startswith("--from") for f in flags)]
    assert from_context
    for sources, _ in from_context:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist in the build context"
            assert not dockerignore_matches(source), f"COPY source {source} is excluded by .dockerignore"
    destinations = {source.rstrip("/"): dest.rstrip("/") for sources, dest in from_context for source in sources}
    assert destinations["deploy/config/worker.toml"] == IMAGE_CONFIG
    assert destinations["schemas"] == "/opt/stream-infer/schemas"


def test_dockerignore():
    for path in (".venv", ".git", "bench-results", ".gpu", ".pytest_cache", "stream_infer/__pycache__",
                 "stream_infer/models/__pycache__/x.pyc"):
        assert dockerignore_matches(path), f".dockerignore should exclude {path}"
    # Everything the image build reads stays in the context.
    needed = ["pyproject.toml", "README.md", "stream_infer/cli/__init__.py", "deploy/config/worker.toml"]
    needed += [str(p.relative_to(ROOT)) for folder in IMAGE_PATHS.values() for p in folder.iterdir()]
    assert not [p for p in needed if dockerignore_matches(p)]


# --- deploy/config/worker.toml -------------------------------------------------------------------


def test_container_config_loads_with_repo_paths(tmp_path, monkeypatch):
    """worker.toml is valid for load_config once its in-image paths point at the repository files
    the image holds, and differs from demo.toml only where the container needs it."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    text = WORKER_TOML.read_text()
    raw = tomllib.loads(text)
    for pipeline in raw["pipelines"]:
        for key in ("model", "schema"):
            assert any(pipeline[key].startswith(prefix + "/") for prefix in IMAGE_PATHS), pipeline[key]
    for prefix, repo_dir in IMAGE_PATHS.items():
        text = text.replace(prefix + "/", repo_dir.as_posix() + "/")
    (tmp_path / "worker.toml").write_text(text)
    for pipeline in tomllib.loads(text)["pipelines"]:
        assert not pipeline["model"].startswith("/opt/") and not pipeline["schema"].startswith("/opt/")

    config = load_config(tmp_path / "worker.toml")
    assert config.worker.web_host == "0.0.0.0"
    assert config.worker.web_port == WEB_PORT
    assert config.worker.data_dir.startswith("/var/lib/stream-infer/")

    demo = load_config(DEMO_TOML).model_dump()
    container = config.model_dump()
    for dump in (demo, container):
        for section, key in (("worker", "web_host"), ("worker", "data_dir"), ("kafka", "bootstrap_servers")):
            dump[section].pop(key)
    assert container == demo


# --- Prometheus ----------------------------------------------------------------------------------


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"] if "alert" in rule]


def test_alert_rules_are_complete():
    rules = alert_rules()
    assert REQUIRED_ALERTS <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert "Runbook:" in rule["annotations"]["description"], rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert 'up{job="stream-infer"} == 0' in by_name["WorkerDown"]["expr"]


def test_alert_rules_use_exposed_metrics():
    assert_known_metrics({rule["alert"]: rule["expr"] for rule in alert_rules()}, "deploy/prometheus/alerts.yml")


def test_prometheus_rule_files_exist():
    # rule_files entries are globs: one that matches nothing is not an error for Prometheus.
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS / config["rule_files"][0]).is_file()


def promtool(*args: str) -> None:
    result = subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


@needs_promtool
def test_promtool_check_rules():
    promtool("check", "rules", "deploy/prometheus/alerts.yml")


@needs_promtool
def test_promtool_check_config():
    promtool("check", "config", "deploy/prometheus/prometheus.yml")


@needs_promtool
def test_promtool_alert_unit_tests():
    """alerts.test.yml: WorkerDown and LagSecondsOverSLO fire on synthetic series, DeadLetterRate
    stays quiet at 0.5% dead letters and fires at 5%, and the other rules likewise."""
    tests = load_yaml(PROMETHEUS / "alerts.test.yml")["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {"WorkerDown", "LagSecondsOverSLO", "DeadLetterRate"} <= fired
    promtool("test", "rules", "deploy/prometheus/alerts.test.yml")


# --- Grafana -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    return [p for panel in panels for p in [panel, *all_panels(panel.get("panels", []))]]


def dashboard_expressions(dashboard: dict) -> dict[str, str]:
    out = {}
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            out[f"variable {variable['name']}"] = query["query"] if isinstance(query, dict) else query
    return out


def test_dashboard_structure(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = all_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert graphs and all(panel["type"] == "timeseries" for panel in graphs)
    for panel in graphs:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert "label_values(stream_infer_events_consumed_total, pipeline)" in dashboard_expressions(dashboard)["variable pipeline"]
    assert variables["pipeline"]["includeAll"] and variables["pipeline"]["multi"]


def test_dashboard_covers_the_operator_view(dashboard):
    exprs = dashboard_expressions(dashboard)
    used = {name for expr in exprs.values() for name in METRIC_NAME.findall(expr)}
    wanted = {
        "stream_infer_consumer_lag_messages", "stream_infer_consumer_lag_seconds",
        "stream_infer_events_consumed_total", "stream_infer_predictions_total",
        "stream_infer_batch_size_bucket", "stream_infer_controller_batch_size", "stream_infer_controller_mode",
        "stream_infer_end_to_end_latency_seconds_bucket", "stream_infer_inference_seconds_bucket",
        "stream_infer_dead_letters_total", "stream_infer_alerts_total", "stream_infer_events_skipped_total",
        "stream_infer_paused_partitions", "stream_infer_in_flight_batches",
    }
    assert not wanted - used, f"no panel shows {sorted(wanted - used)}"
    latency = " ".join(e for e in exprs.values() if "end_to_end_latency_seconds_bucket" in e)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in latency
    for name, expr in exprs.items():
        if name.startswith("panel") and "pipeline" in expr and "stream_infer_ready" not in expr:
            assert 'pipeline=~"$pipeline"' in expr, f"{name} ignores the pipeline variable"


def test_dashboard_uses_exposed_metrics(dashboard):
    assert_known_metrics(dashboard_expressions(dashboard), str(DASHBOARD.relative_to(ROOT)))


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = kustomization["resources"]
    assert sorted(files) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    docs = [doc for name in files for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    kinds = [doc["kind"] for doc in docs]
    assert sorted(kinds) == ["ConfigMap", "Deployment", "ScaledObject", "Service"]
    return {doc["kind"]: doc for doc in docs}


def test_configmap_is_the_image_config(manifests):
    data = manifests["ConfigMap"]["data"]["worker.toml"]
    assert data == WORKER_TOML.read_text(), "deploy/k8s/configmap.yaml and deploy/config/worker.toml differ"
    tomllib.loads(data)


def test_deployment(manifests):
    deployment = manifests["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(WEB_PORT), "prometheus.io/path": "/metrics"}
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"] == ["worker", "-c", IMAGE_CONFIG]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": WEB_PORT}, probe
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["resources"]["requests"]["memory"] and container["resources"]["requests"]["cpu"]
    env = {item["name"]: item for item in container["env"]}
    assert env["KAFKA_BOOTSTRAP_SERVERS"]["value"]
    assert env["STREAM_INFER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    # The ConfigMap lands where the image's command reads it, and with a read-only root file
    # system the worker's data_dir must be on a writable volume.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    config_dir = str(Path(IMAGE_CONFIG).parent)
    assert mounts[config_dir]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    data_dir = tomllib.loads(WORKER_TOML.read_text())["worker"]["data_dir"]
    assert any(data_dir.startswith(path + "/") and "emptyDir" in volume for path, volume in mounts.items())


def test_service(manifests):
    service, deployment = manifests["Service"], manifests["Deployment"]
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == WEB_PORT
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_keda_scaled_object(manifests):
    scaled, deployment = manifests["ScaledObject"], manifests["Deployment"]
    spec = scaled["spec"]
    assert scaled["apiVersion"].startswith("keda.sh/")
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] <= INPUT_PARTITIONS, "workers beyond the partition count sit idle"
    config = tomllib.loads(WORKER_TOML.read_text())
    inputs = {pipeline["input_topic"] for pipeline in config["pipelines"]}
    kafka = [trigger["metadata"] for trigger in spec["triggers"] if trigger["type"] == "kafka"]
    assert any(meta["topic"] == "engines.telemetry" for meta in kafka)
    for meta in kafka:
        assert meta["consumerGroup"] == config["kafka"]["group_id"] == "stream-infer-demo"
        assert meta["topic"] in inputs
        assert int(meta["lagThreshold"]) > 0


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kustomize_renders():
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc)
    assert kinds == ["ConfigMap", "Deployment", "ScaledObject", "Service"]
