"""The deployment material (deploy/, docker-compose.yml), checked without a Docker engine or a
cluster: every file parses, names only files that exist in the repository (or paths the image
provides), uses only metric names the worker exposes, and passes Prometheus' own checks. The
secured variants (deploy/compose.secure.yml, deploy/k8s-secure/) are held to the same, and to
keeping every secret out of committed files and ConfigMaps.

promtool comes from Debian's `prometheus` package; kubectl's built-in kustomize renders the
manifests. Tests that need either skip when it is not on PATH.
"""

from __future__ import annotations

import copy
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

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKER_TOML = DEPLOY / "config" / "worker.toml"
DEMO_TOML = ROOT / "stream_infer" / "configs" / "demo.toml"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stream-infer.json"
K8S = DEPLOY / "k8s"
COMPOSE_SECURE = DEPLOY / "compose.secure.yml"
COMPOSE_SECURE_DIR = DEPLOY / "compose-secure"
K8S_SECURE = DEPLOY / "k8s-secure"

# The in-image folders that deploy/config/worker.toml names, and what provides them in the
# repository (deploy/Dockerfile links them to the installed package's folders).
IMAGE_PATHS = {
    "/opt/stream-infer/models": ROOT / "stream_infer" / "models",
    "/opt/stream-infer/schemas": ROOT / "stream_infer" / "schemas",
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
            return (ROOT / source / container_path[len(target) :].lstrip("/")).resolve()
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
    # Run-time files come with the installed wheel; only the package sources and the worker
    # config are copied into the image.
    assert set(destinations) == {"pyproject.toml", "README.md", "stream_infer", "deploy/config/worker.toml"}, destinations


def test_dockerignore():
    for path in (
        ".venv",
        ".git",
        "bench-results",
        ".gpu",
        ".pytest_cache",
        "stream_infer/__pycache__",
        "stream_infer/models/__pycache__/x.pyc",
    ):
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
        "stream_infer_consumer_lag_messages",
        "stream_infer_consumer_lag_seconds",
        "stream_infer_events_consumed_total",
        "stream_infer_predictions_total",
        "stream_infer_batch_size_bucket",
        "stream_infer_controller_batch_size",
        "stream_infer_controller_mode",
        "stream_infer_end_to_end_latency_seconds_bucket",
        "stream_infer_inference_seconds_bucket",
        "stream_infer_dead_letters_total",
        "stream_infer_alerts_total",
        "stream_infer_events_skipped_total",
        "stream_infer_paused_partitions",
        "stream_infer_in_flight_batches",
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
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(WEB_PORT),
        "prometheus.io/path": "/metrics",
    }
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


# --- Secured variants: shared helpers ------------------------------------------------------------

# A value the worker resolves when it starts (stream_infer.kafka.connection): the secret stays out.
REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")
SECRET_WORDS = ("password", "secret")


def properties(text: str) -> dict[str, str]:
    """The key=value lines of a librdkafka properties file (the format `kcat -F` reads)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def secret_values(name: str, text: str) -> dict[str, str]:
    """Settings in a config file (TOML by its name, else properties) whose key names a secret."""
    if name.endswith(".toml"):
        flat: dict[str, str] = {}

        def walk(prefix: str, node: dict) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(f"{prefix}{key}.", value)
                elif isinstance(value, list):
                    for i, item in enumerate(value):
                        if isinstance(item, dict):
                            walk(f"{prefix}{key}[{i}].", item)
                else:
                    flat[prefix + key] = str(value)

        walk("", tomllib.loads(text))
    else:
        flat = properties(text)
    return {key: value for key, value in flat.items() if any(word in key.lower() for word in SECRET_WORDS)}


def repo_worker_toml(tmp_path: Path) -> Path:
    """deploy/config/worker.toml with its in-image paths pointed at the repository's files."""
    text = WORKER_TOML.read_text()
    for prefix, repo_dir in IMAGE_PATHS.items():
        text = text.replace(prefix + "/", repo_dir.as_posix() + "/")
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


def materialize(text: str, mount_dir: str, files: dict[str, str], tmp_path: Path) -> Path:
    """A properties file as a container sees it: `files` written to a folder standing in for the
    mount at `mount_dir`, and the file's paths pointed there. Returns the properties file."""
    folder = tmp_path / "mount"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content)
    path = tmp_path / "client.properties"
    path.write_text(text.replace(mount_dir.rstrip("/") + "/", folder.as_posix() + "/"))
    return path


# --- Secured compose stack (deploy/compose.secure.yml) -------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost")
MAKE_SECRETS = COMPOSE_SECURE_DIR / "make-secrets.sh"


@pytest.fixture(scope="module")
def compose_secure() -> dict:
    return load_yaml(COMPOSE_SECURE)


def compose_merge(base: dict, override: dict) -> dict:
    """Compose's merge of one service across files: mappings merge key by key (environment,
    depends_on, healthcheck), volumes and ports add up, anything else (command, entrypoint,
    healthcheck.test) is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = compose_merge(out[key], value)
        elif key in ("volumes", "ports", "expose") and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = copy.deepcopy(value)
    return out


def secure_service(compose: dict, compose_secure: dict, name: str) -> dict:
    """A service as `docker compose -f docker-compose.yml -f deploy/compose.secure.yml` runs it."""
    return compose_merge(compose["services"].get(name, {}), compose_secure["services"].get(name, {}))


def named_volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (named volume, read-only) for a service's named-volume mounts."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if not parts[0].startswith((".", "/", "~")):
                out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
        elif volume.get("type") == "volume":
            out[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return out


def written_by_make_secrets(folder: str) -> list[str]:
    """The files make-secrets.sh copies into its folder `folder` (broker_dir or client_dir)."""
    return re.search(rf'cp (.*) "\${folder}/"', MAKE_SECRETS.read_text()).group(1).split()


def volume_dir(service: dict, volume: str) -> str:
    (target,) = [path for path, (name, _) in named_volumes(service).items() if name == volume]
    return target


def listener_map(value: str) -> dict[str, tuple[str, str]]:
    """NAME://host:port,... -> {NAME: (host, port)}."""
    out = {}
    for entry in value.split(","):
        name, address = entry.split("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, port)
    return out


def broker_env(compose: dict, compose_secure: dict) -> dict[str, str]:
    return {k: str(v) for k, v in secure_service(compose, compose_secure, "kafka")["environment"].items()}


def loopback_address(env: dict[str, str]) -> str:
    """host:port of the secured broker's plaintext loopback listener (the setup jobs' way in)."""
    protocols = dict(entry.split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = listener_map(env["KAFKA_ADVERTISED_LISTENERS"])
    (address,) = [
        f"{host}:{port}" for name, (host, port) in advertised.items() if protocols[name] == "PLAINTEXT" and host in LOOPBACK
    ]
    return address


def test_compose_secure_services(compose, compose_secure):
    services = compose_secure["services"]
    new = {name for name in services if name not in compose["services"]}
    assert new == {"kafka-secrets", "acls"}, new
    worker = compose["services"]["worker"]
    for name in new:
        service = services[name]
        assert service["restart"] == "no", f"{name} is a one-shot job"
        assert service["image"] == worker["image"]
        # Without a build, compose would try to pull stream-infer:local before building it.
        assert service["build"] == worker["build"]
    # Paths in an override file are relative to the first file's folder: the repository root.
    mounts = [(name, source) for name in services for source, _ in bind_mounts(services[name])]
    assert mounts
    missing = [f"{name}: {source}" for name, source in mounts if not (ROOT / source).exists()]
    assert not missing, f"bind-mounted paths missing (relative to the repository root): {missing}"
    used = {volume for name in services for volume, _ in named_volumes(services[name]).values()}
    assert used == set(compose_secure["volumes"]) == {"broker-secrets", "client-secrets"}


def test_compose_secure_secrets_job(compose, compose_secure):
    job = compose_secure["services"]["kafka-secrets"]
    assert job["user"] == "0:0", "fresh named volumes are root's"
    (script,) = [arg for arg in job["entrypoint"] if arg.endswith("make-secrets.sh")]
    assert host_path(job, script) == MAKE_SECRETS
    assert job["command"] == [volume_dir(job, "broker-secrets"), volume_dir(job, "client-secrets")]
    assert not any(read_only for _, read_only in named_volumes(job).values())
    # Who sees which volume: the broker's keystore only the broker; the worker's password and the CA
    # the workers and the job that registers the password.
    users = {
        name: {volume for volume, _ in named_volumes(secure_service(compose, compose_secure, name)).values()}
        for name in set(compose["services"]) | set(compose_secure["services"])
    }
    assert {name for name, volumes in users.items() if "broker-secrets" in volumes} == {"kafka-secrets", "kafka"}
    assert {name for name, volumes in users.items() if "client-secrets" in volumes} == {"kafka-secrets", "topics", "worker"}
    for name in ("kafka", "topics", "worker"):
        assert all(read_only for _, read_only in named_volumes(secure_service(compose, compose_secure, name)).values()), name


def test_compose_secure_broker(compose, compose_secure):
    kafka = secure_service(compose, compose_secure, "kafka")
    env = broker_env(compose, compose_secure)
    # The image writes each KAFKA_* variable as a server.properties line and silently drops a value
    # that contains "=".
    assert not [key for key, value in env.items() if key.startswith("KAFKA_") and "=" in value and key != "KAFKA_OPTS"]

    listeners = listener_map(env["KAFKA_LISTENERS"])
    advertised = listener_map(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(entry.split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    assert len({port for _, port in listeners.values()}) == len(listeners)
    for name, (host, _) in listeners.items():
        if protocols[name] == "PLAINTEXT":
            assert host in LOOPBACK, f"{name} is unencrypted and unauthenticated: it must not leave the container"
        else:
            assert protocols[name] == "SASL_SSL", name
    inter_broker = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert inter_broker in advertised and protocols[inter_broker] == "PLAINTEXT"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert listeners[controller][0] in LOOPBACK
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@{}:{}".format(*listeners[controller])
    # The workers' address (as in the plain stack) and the host's published port are SASL_SSL.
    by_address = {f"{host}:{port}": name for name, (host, port) in advertised.items()}
    assert protocols[by_address["kafka:19092"]] == "SASL_SSL"
    assert protocols[by_address["localhost:9092"]] == "SASL_SSL"
    assert "127.0.0.1:9092:9092" in kafka["ports"]

    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "User:ANONYMOUS" in env["KAFKA_SUPER_USERS"].split(";")  # the loopback listeners' principal

    # The image demands KAFKA_OPTS with a JAAS file once a SASL listener is advertised, and reads
    # its keystore and the password files from /etc/kafka/secrets once an SSL one is.
    assert re.search(r"SASL_\w*://", env["KAFKA_ADVERTISED_LISTENERS"]) and "SSL://" in env["KAFKA_ADVERTISED_LISTENERS"]
    jaas = re.search(r"-Djava\.security\.auth\.login\.config=(\S+)", env["KAFKA_OPTS"]).group(1)
    jaas_text = host_path(kafka, jaas).read_text()
    assert "KafkaServer" in jaas_text and "org.apache.kafka.common.security.scram.ScramLoginModule required;" in jaas_text
    assert "password=" not in jaas_text.replace(" ", ""), "SCRAM needs no credentials in the broker's JAAS file"
    assert named_volumes(kafka)["/etc/kafka/secrets"] == ("broker-secrets", True)
    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == "PKCS12"
    for key in ("KAFKA_SSL_KEYSTORE_FILENAME", "KAFKA_SSL_KEYSTORE_CREDENTIALS", "KAFKA_SSL_KEY_CREDENTIALS"):
        assert env[key] in written_by_make_secrets("broker_dir"), f"make-secrets.sh does not write {env[key]}"
    assert not [key for key in env if "PASSWORD" in key], "passwords come from files, not from this file"

    assert kafka["depends_on"]["kafka-secrets"]["condition"] == "service_completed_successfully"
    test = kafka["healthcheck"]["test"]
    assert test[test.index("--bootstrap-server") + 1] == loopback_address(env)


def test_compose_secure_worker(compose, compose_secure):
    worker = secure_service(compose, compose_secure, "worker")
    env = {key: str(value) for key, value in worker["environment"].items()}
    # No inline password: the environment names a file of settings, which refers to the password.
    assert not [key for key in env if any(word in key.lower() for word in SECRET_WORDS)]
    assert not [key for key, value in env.items() if "password" in value.lower()]
    props_file = host_path(worker, env["STREAM_INFER_KAFKA_PROPERTIES"])
    assert props_file == COMPOSE_SECURE_DIR / "worker.properties"
    props = properties(props_file.read_text())
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.username"] == "svc"
    for key, value in secret_values("worker.properties", props_file.read_text()).items():
        assert REFERENCE.match(value), f"{key} is a literal in worker.properties"
    kind, path = REFERENCE.match(props["sasl.password"]).groups()
    secrets_dir = volume_dir(worker, "client-secrets")
    for file in (path, props["ssl.ca.location"]):
        assert Path(file).parent.as_posix() == secrets_dir, file
        assert Path(file).name in written_by_make_secrets("client_dir"), file
    assert kind == "file"
    # Same broker address as the plain stack: now the SASL_SSL listener.
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert worker["depends_on"]["acls"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_compose_secure_worker_settings_load(tmp_path, monkeypatch):
    """worker.properties is valid for the worker's own loader once its files exist: references
    resolve, and only connection settings are used."""
    from stream_infer.kafka.connection import resolve

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("STREAM_INFER_KAFKA_PROPERTIES", raising=False)
    text = (COMPOSE_SECURE_DIR / "worker.properties").read_text()
    path = materialize(text, "/run/secrets/kafka", {"svc.password": "pw-from-file\n", "ca.pem": "ca"}, tmp_path)
    connection = resolve(bootstrap="kafka:19092", properties_file=path)
    assert connection.settings["sasl.password"] == "pw-from-file"
    assert connection.settings["ssl.ca.location"] == (tmp_path / "mount" / "ca.pem").as_posix()
    config = load_config(repo_worker_toml(tmp_path), kafka_properties=path)
    assert config.kafka.connection().settings["sasl.username"] == "svc"


def test_compose_secure_setup_jobs(compose, compose_secure):
    env = broker_env(compose, compose_secure)
    loopback = loopback_address(env)
    username = properties((COMPOSE_SECURE_DIR / "worker.properties").read_text())["sasl.username"]
    # The jobs join the broker's network namespace to reach its loopback listener.
    for name in ("topics", "acls", "replay"):
        service = secure_service(compose, compose_secure, name)
        assert service["network_mode"] == "service:kafka", name
        assert "networks" not in service and "ports" not in service, name

    topics = secure_service(compose, compose_secure, "topics")
    script = " ".join(topics["command"])
    assert f"--bootstrap-server {loopback}" in script and "kafka:19092" not in script
    assert "/opt/kafka/bin/kafka-configs.sh" in script
    assert f"--entity-type users --entity-name {username}" in script
    password_file = re.search(r"SCRAM-SHA-512=\[password=\$\$\(cat (\S+)\)\]", script).group(1)
    assert Path(password_file).parent.as_posix() == volume_dir(topics, "client-secrets")
    assert (
        Path(password_file).name
        == Path(
            REFERENCE.match(properties((COMPOSE_SECURE_DIR / "worker.properties").read_text())["sasl.password"]).group(2)
        ).name
    )
    for pipeline in tomllib.loads(WORKER_TOML.read_text())["pipelines"]:
        assert pipeline["input_topic"] in script
    assert f"--partitions {INPUT_PARTITIONS}" in script

    acls = compose_secure["services"]["acls"]
    command = acls["command"]
    assert command[0] == "acls" and "--apply" in command
    assert command[command.index("-c") + 1] == IMAGE_CONFIG
    assert command[command.index("-p") + 1] == f"User:{username}"
    assert command[command.index("--bootstrap-servers") + 1] == loopback
    assert acls["depends_on"]["kafka"]["condition"] == "service_healthy"

    replay = secure_service(compose, compose_secure, "replay")
    assert replay["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == loopback
    assert replay["profiles"] == ["replay"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")
def test_make_secrets_script(tmp_path):
    """make-secrets.sh makes a keystore whose certificate the CA verifies for both names clients
    use, the worker's password, and keeps them on a second run."""
    broker, client = tmp_path / "broker", tmp_path / "client"
    run = subprocess.run(["sh", str(MAKE_SECRETS), str(broker), str(client)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in broker.iterdir()) == ["kafka.keystore.p12", "keystore.password"]
    assert sorted(p.name for p in client.iterdir()) == ["ca.pem", "svc.password"]
    assert len((client / "svc.password").read_text().strip()) >= 32
    cert = subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-in",
            str(broker / "kafka.keystore.p12"),
            "-passin",
            f"file:{broker / 'keystore.password'}",
            "-clcerts",
            "-nokeys",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cert.returncode == 0, cert.stderr
    (tmp_path / "kafka.pem").write_text(cert.stdout)
    for name in ("kafka", "localhost"):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(client / "ca.pem"), "-verify_hostname", name, str(tmp_path / "kafka.pem")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    keytool = shutil.which("keytool")
    if keytool:  # Java (the broker) reads the keystore with the password file's content
        listing = subprocess.run(
            [
                keytool,
                "-list",
                "-storetype",
                "PKCS12",
                "-keystore",
                str(broker / "kafka.keystore.p12"),
                "-storepass",
                (broker / "keystore.password").read_text().strip(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0 and "PrivateKeyEntry" in listing.stdout, listing.stdout + listing.stderr
    before = {p.name: p.read_bytes() for p in [*broker.iterdir(), *client.iterdir()]}
    again = subprocess.run(["sh", str(MAKE_SECRETS), str(broker), str(client)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "keeping them" in again.stdout
    assert before == {p.name: p.read_bytes() for p in [*broker.iterdir(), *client.iterdir()]}


# --- Secured Kubernetes overlay (deploy/k8s-secure) ----------------------------------------------


@pytest.fixture(scope="module")
def secure_overlay() -> dict[str, list]:
    """Every YAML file of the overlay, parsed: file name -> its documents."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(K8S_SECURE.glob("*.yaml"))
    }


def overlay_doc(secure_overlay: dict, name: str):
    (doc,) = secure_overlay[name]
    return doc


def example_secret(secure_overlay: dict) -> dict:
    secret = overlay_doc(secure_overlay, "secret-kafka.example.yaml")
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    return secret


def json_patch(document: dict, operations: list[dict]) -> dict:
    """RFC 6902 add / replace / test, as kustomize applies them."""
    document = copy.deepcopy(document)
    for op in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].lstrip("/").split("/")]
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) else last
        if op["op"] == "test":
            assert target[key] == op["value"], f"JSON patch test failed at {op['path']}"
        elif op["op"] == "replace":
            assert key in target if isinstance(target, dict) else key < len(target), op["path"]
            target[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(target, list):
                target.insert(key, copy.deepcopy(op["value"]))
            else:
                target[key] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unexpected JSON patch op {op['op']}")
    return document


def secure_worker(secure_overlay: dict) -> tuple[dict, dict, dict]:
    """The overlay's worker container patch: (container, env by name, volumes by name)."""
    patch = overlay_doc(secure_overlay, "deployment-patch.yaml")
    pod = patch["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container, {e["name"]: e for e in container["env"]}, {v["name"]: v for v in pod["volumes"]}


def secure_mounts(secure_overlay: dict) -> tuple[str, dict, str, dict]:
    """(properties file path, its settings, the Secret's mount path, the Secret volume)."""
    container, env, volumes = secure_worker(secure_overlay)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    props_path = env["STREAM_INFER_KAFKA_PROPERTIES"]["value"]
    config_volume = volumes[mounts[str(Path(props_path).parent)]["name"]]
    configmap = overlay_doc(secure_overlay, "kafka-client-configmap.yaml")
    assert config_volume["configMap"]["name"] == configmap["metadata"]["name"]
    props = properties(configmap["data"][Path(props_path).name])
    (secret_mount,) = [path for path, m in mounts.items() if "secret" in volumes[m["name"]]]
    return props_path, props, secret_mount, volumes[mounts[secret_mount]["name"]]


def test_secure_overlay_files(secure_overlay, manifests):
    kustomization = overlay_doc(secure_overlay, "kustomization.yaml")
    resources = kustomization["resources"]
    assert (K8S_SECURE / resources[0]).resolve() == K8S.resolve(), "the overlay builds on the plain manifests"
    patches = [patch["path"] for patch in kustomization["patches"]]
    used = set(resources[1:]) | set(patches)
    assert all((K8S_SECURE / name).is_file() for name in used)
    # The example Secret is documentation: applying the overlay must never overwrite a real one.
    assert "secret-kafka.example.yaml" not in used
    assert set(secure_overlay) == used | {"kustomization.yaml", "secret-kafka.example.yaml"}
    kinds = {name: [doc["kind"] for doc in docs] for name, docs in secure_overlay.items() if name in resources}
    assert kinds == {"kafka-client-configmap.yaml": ["ConfigMap"], "keda-trigger-authentication.yaml": ["TriggerAuthentication"]}
    (scaled_patch,) = [p for p in kustomization["patches"] if p["path"] == "scaledobject-patch.yaml"]
    assert scaled_patch["target"]["kind"] == "ScaledObject"
    assert scaled_patch["target"]["name"] == manifests["ScaledObject"]["metadata"]["name"]
    # The plain setup stays the default: nothing of the overlay in deploy/k8s.
    base_env = {e["name"] for e in manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "STREAM_INFER_KAFKA_PROPERTIES" not in base_env
    assert not [v for v in manifests["Deployment"]["spec"]["template"]["spec"]["volumes"] if "secret" in v]


def test_secure_deployment_takes_credentials_from_the_secret(secure_overlay, manifests):
    patch = overlay_doc(secure_overlay, "deployment-patch.yaml")
    deployment = manifests["Deployment"]
    assert patch["metadata"]["name"] == deployment["metadata"]["name"]
    container, env, volumes = secure_worker(secure_overlay)
    assert container["name"] == deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    secret = example_secret(secure_overlay)
    secret_name, secret_keys = secret["metadata"]["name"], set(secret["stringData"])
    assert env["KAFKA_BOOTSTRAP_SERVERS"]["value"]

    # Read-only mounts, none inside the ConfigMap volume at /etc/stream-infer (read-only: the
    # runtime could not make a mount point there).
    config_dir = str(Path(IMAGE_CONFIG).parent)
    for mount in container["volumeMounts"]:
        assert mount["readOnly"] is True, mount["mountPath"]
        assert not (mount["mountPath"] + "/").startswith(config_dir + "/"), mount["mountPath"]

    props_path, props, secret_mount, secret_volume = secure_mounts(secure_overlay)
    assert secret_volume["secret"]["secretName"] == secret_name
    assert secret_volume["secret"]["defaultMode"] & 0o007 == 0, "no access for other users"
    items = {item["path"]: item["key"] for item in secret_volume["secret"]["items"]}
    assert set(items.values()) <= secret_keys
    assert props["security.protocol"] == "SASL_SSL" and props["sasl.mechanisms"].startswith("SCRAM-")
    # Every reference in the settings reaches the Secret: a file of its volume, or an environment
    # variable set from one of its keys.
    for key, value in props.items():
        match = REFERENCE.match(value)
        if not match:
            continue
        kind, target = match.groups()
        if kind == "file":
            assert Path(target).parent.as_posix() == secret_mount and Path(target).name in items, (key, target)
        else:
            ref = env[target]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret_name and ref["key"] in secret_keys, (key, target)
    assert REFERENCE.match(props["sasl.password"]).group(1) == "file"
    assert REFERENCE.match(props["sasl.username"])
    assert Path(props["ssl.ca.location"]).parent.as_posix() == secret_mount
    assert Path(props["ssl.ca.location"]).name in items


def test_secure_client_settings_load(secure_overlay, tmp_path, monkeypatch):
    """The ConfigMap's settings, with the example Secret mounted as the pod sees it, load with the
    worker's own loader and resolve to the Secret's values."""
    from stream_infer.kafka.connection import resolve

    props_path, props, secret_mount, secret_volume = secure_mounts(secure_overlay)
    secret = example_secret(secure_overlay)["stringData"]
    _, env, _ = secure_worker(secure_overlay)
    for name, item in env.items():
        if "secretKeyRef" in item.get("valueFrom", {}):
            monkeypatch.setenv(name, secret[item["valueFrom"]["secretKeyRef"]["key"]])
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("STREAM_INFER_KAFKA_PROPERTIES", raising=False)
    files = {item["path"]: secret[item["key"]] for item in secret_volume["secret"]["items"]}
    text = overlay_doc(secure_overlay, "kafka-client-configmap.yaml")["data"][Path(props_path).name]
    path = materialize(text, secret_mount, files, tmp_path)
    settings = resolve(bootstrap="kafka:9093", properties_file=path).settings
    assert settings["sasl.username"] == secret["sasl-username"]
    assert settings["sasl.password"] == secret["sasl-password"]
    config = load_config(repo_worker_toml(tmp_path), kafka_properties=path)
    assert config.kafka.connection().settings["security.protocol"] == "SASL_SSL"


def test_no_password_literal_in_any_configmap(secure_overlay):
    secret = example_secret(secure_overlay)["stringData"]
    configmaps = [doc for doc in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if doc]
    configmaps += [
        doc for docs in secure_overlay.values() for doc in docs if isinstance(doc, dict) and doc.get("kind") == "ConfigMap"
    ]
    assert len(configmaps) >= 2
    for configmap in configmaps:
        where = f"ConfigMap {configmap['metadata']['name']}"
        for name, text in configmap["data"].items():
            assert "PRIVATE KEY" not in text, f"{where}: {name} holds a private key"
            assert secret["sasl-password"] not in text, f"{where}: {name} holds the Secret's password"
            for key, value in secret_values(name, text).items():
                assert REFERENCE.match(value), f"{where}: {name} sets {key} literally; use ${{file:...}} or ${{env:...}}"
    # Nor anywhere in the compose stack.
    for path in (COMPOSE, COMPOSE_SECURE, *COMPOSE_SECURE_DIR.iterdir()):
        assert secret["sasl-password"] not in path.read_text(), path


def test_secure_keda_trigger_authentication(secure_overlay, manifests):
    auth = overlay_doc(secure_overlay, "keda-trigger-authentication.yaml")
    assert auth["apiVersion"].startswith("keda.sh/") and auth["kind"] == "TriggerAuthentication"
    secret = example_secret(secure_overlay)
    params = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    # The Kafka scaler's authentication parameters (keda.sh, scalers/apache-kafka).
    assert set(params) <= {"sasl", "saslTokenProvider", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
    assert {"username", "password", "ca"} <= set(params)
    for ref in params.values():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], ref
    # The same keys the workers read for the same purpose.
    _, env, _ = secure_worker(secure_overlay)
    _, props, _, secret_volume = secure_mounts(secure_overlay)
    items = {item["path"]: item["key"] for item in secret_volume["secret"]["items"]}
    username_env = REFERENCE.match(props["sasl.username"]).group(2)
    assert params["username"]["key"] == env[username_env]["valueFrom"]["secretKeyRef"]["key"]
    assert params["password"]["key"] == items[Path(REFERENCE.match(props["sasl.password"]).group(2)).name]
    assert params["ca"]["key"] == items[Path(props["ssl.ca.location"]).name]

    # The ScaledObject as the overlay patches it: every Kafka trigger authenticates with it, SASL
    # and TLS as the workers use them, and the lag settings exactly as in the plain manifests.
    base = manifests["ScaledObject"]
    scaled = json_patch(base, overlay_doc(secure_overlay, "scaledobject-patch.yaml"))
    keda_sasl = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256", "PLAIN": "plaintext"}
    mechanism = keda_sasl[props["sasl.mechanisms"]]
    kafka_triggers = [(t, b) for t, b in zip(scaled["spec"]["triggers"], base["spec"]["triggers"]) if t["type"] == "kafka"]
    assert kafka_triggers
    for trigger, base_trigger in kafka_triggers:
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        meta = trigger["metadata"]
        assert meta.get("sasl", secret["stringData"].get(params.get("sasl", {}).get("key"))) == mechanism
        assert meta.get("tls", secret["stringData"].get(params.get("tls", {}).get("key"))) == "enable"
        assert meta["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]["value"]
        unchanged = {k: v for k, v in base_trigger["metadata"].items() if k != "bootstrapServers"}
        assert {k: v for k, v in meta.items() if k not in ("bootstrapServers", "sasl", "tls")} == unchanged
        assert {"lagThreshold", "offsetResetPolicy", "consumerGroup", "topic"} <= unchanged.keys()

    def without_triggers(spec: dict) -> dict:
        return {k: v for k, v in spec.items() if k != "triggers"}

    assert without_triggers(scaled["spec"]) == without_triggers(base["spec"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_secure_kustomize_renders(secure_overlay, manifests):
    result = subprocess.run(["kubectl", "kustomize", str(K8S_SECURE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "ScaledObject",
        "Service",
        "TriggerAuthentication",
    ]
    rendered = {doc["kind"]: doc for doc in docs}
    expected = json_patch(manifests["ScaledObject"], overlay_doc(secure_overlay, "scaledobject-patch.yaml"))
    assert rendered["ScaledObject"]["spec"] == expected["spec"]
    (container,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert {"STREAM_INFER_KAFKA_PROPERTIES", "STREAM_INFER_INSTANCE_ID", "KAFKA_BOOTSTRAP_SERVERS"} <= env
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/stream-infer", "/var/lib/stream-infer", "/tmp"} <= mounts and len(mounts) == 5
