"""Structure of the deployment files, which cannot run here (no Docker engine, no cluster).

What is checked is what would break in production: a compose or ConfigMap
variable that no Settings field reads (silently ignored), probes on the wrong
port or path, a worker pinned to a host port (no ``--scale``), autoscaling past
the partition count, a kustomization that forgets a manifest, and dashboard
queries on metrics the worker does not export.
"""

from __future__ import annotations

import itertools

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from streamrec.config import Settings
from streamrec.stream.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "streamrec-dashboard.json"

ENV_PREFIX = "STREAMREC_"
# Exported by the retrainer (streamrec retrainer); the type of the duration is
# left open (gauge or histogram), so both spellings are accepted.
RETRAINER_METRICS = {
    "streamrec_retrain_rounds_total": {"outcome"},
    "streamrec_retrain_duration_seconds": set(),
    "streamrec_retrain_duration_seconds_bucket": {"le"},
    "streamrec_retrain_duration_seconds_sum": set(),
    "streamrec_retrain_duration_seconds_count": set(),
    "streamrec_retrain_events": set(),
    "streamrec_retrain_holdout_ndcg10": {"model"},
    "streamrec_retrain_online_hit10": {"model"},
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "service", "node"}


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def settings_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAMREC_* variable from the developer's shell leaks into Settings()."""
    import os

    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    objs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_docs(path):
            objs.append((path.name, doc))
    return objs


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects() if doc.get("kind") == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def configmap_data() -> dict[str, str]:
    return k8s_object("ConfigMap", "streamrec-config")["data"]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_objects():
        if doc.get("kind") in {"Deployment", "StatefulSet", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def worker_metric_catalog() -> dict[str, set[str]]:
    """Exposed sample names of WorkerMetrics -> their label names (read from its registry)."""
    metrics = WorkerMetrics()
    labels_by_family: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, (Counter, Gauge, Histogram)):
            # Counter('x') is registered as family 'x' and exposes 'x_total'.
            family = value._name  # noqa: SLF001 - prometheus_client keeps the name here
            labels_by_family[family] = set(value._labelnames)  # noqa: SLF001
    catalog: dict[str, set[str]] = {}
    families = list(metrics.registry.collect())
    assert families, "WorkerMetrics registered nothing"
    for family in families:
        labels = labels_by_family.get(family.name, set())
        if family.type == "counter":
            catalog[family.name + "_total"] = labels
        elif family.type == "histogram":
            catalog[family.name + "_bucket"] = labels | {"le"}
            catalog[family.name + "_sum"] = labels
            catalog[family.name + "_count"] = labels
        else:
            catalog[family.name] = labels
    return catalog


# --------------------------------------------------------------------------- #
# docker-compose.yml
# --------------------------------------------------------------------------- #
def test_compose_has_the_services_with_healthchecks() -> None:
    services = compose()["services"]
    for name in ("kafka", "cassandra", "init", "worker", "retrainer"):
        assert name in services, f"compose lacks service {name}"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["cassandra"]["image"] == "cassandra:5.0"
    for name in ("kafka", "cassandra", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} healthcheck must run a command"
    assert "/health" in " ".join(services["worker"]["healthcheck"]["test"])
    assert f":{Settings.model_fields['web_port'].default}/health" in " ".join(services["worker"]["healthcheck"]["test"])


def test_compose_worker_scales_without_a_fixed_host_port() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker, "container_name prevents --scale"
    for port in worker.get("ports", []):
        if isinstance(port, dict):  # long syntax
            assert "published" not in port, f"worker publishes a fixed host port ({port})"
        else:
            assert ":" not in str(port), f"worker publishes a fixed host port ({port}); --scale worker=3 would clash"


def test_compose_dependencies_wait_for_healthy_servers() -> None:
    services = compose()["services"]
    for name in ("init", "worker", "retrainer"):
        deps = services[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["cassandra"]["condition"] == "service_healthy"
    for name in ("worker", "retrainer"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_compose_runs_the_cli_verbs_on_one_image_with_a_shared_models_volume() -> None:
    doc = compose()
    services = doc["services"]
    assert "models" in doc["volumes"]
    images = {services[n]["image"] for n in ("init", "worker", "retrainer")}
    assert len(images) == 1, "init, worker and retrainer must run the same image"
    for name in ("init", "worker", "retrainer"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    # ENTRYPOINT is `streamrec`, so the command is the verb.
    assert services["worker"]["command"] == ["worker"]
    assert services["retrainer"]["command"] == ["retrainer"]
    mounts = {n: {str(v).split(":")[0]: str(v) for v in services[n]["volumes"]} for n in ("worker", "retrainer")}
    assert mounts["worker"]["models"].startswith("models:/models")
    assert mounts["retrainer"]["models"] == "models:/models", "the retrainer writes the registry"
    init = " ".join(services["init"]["entrypoint"] + services["init"]["command"])
    assert "streamrec topics create" in init and "streamrec cassandra migrate" in init


def test_compose_env_names_are_settings_fields_and_values_parse(clean_env: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    known = settings_env_names()
    checked = 0
    for name, service in services.items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        ours = {k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}
        unknown = set(ours) - known
        assert not unknown, f"service {name}: {sorted(unknown)} are not Settings fields (they would be ignored)"
        for key, value in ours.items():
            clean_env.setenv(key, value)
        if ours:
            Settings()  # every value is valid for its field
            checked += 1
            for key in ours:
                clean_env.delenv(key)
    assert checked >= 3
    env = services["worker"]["environment"]
    assert env["STREAMREC_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["STREAMREC_CASSANDRA_HOSTS"] == "cassandra"
    assert env["STREAMREC_MODEL_DIR"] == "/models"


def test_compose_kafka_advertises_the_in_network_listener() -> None:
    services = compose()["services"]
    bootstrap = services["worker"]["environment"]["STREAMREC_KAFKA_BOOTSTRAP"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.split("://", 1)[1] == bootstrap for a in advertised), (
        f"workers bootstrap from {bootstrap}, but Kafka advertises {advertised}: clients would be sent elsewhere"
    )
    import base64

    cluster_id = str(services["kafka"]["environment"]["CLUSTER_ID"])
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64 UUID"


def test_compose_partitions_agree() -> None:
    services = compose()["services"]
    partitions = services["worker"]["environment"]["STREAMREC_TOPIC_PARTITIONS"]
    init = shlex.split(" ".join(services["init"]["command"]))
    assert init[init.index("--partitions") + 1] == str(partitions)


def command_words(args: list[str]) -> tuple[str, ...]:
    """The CLI verb of an argument list: its words up to the first option (``items embedder --x`` → items, embedder)."""
    return tuple(itertools.takewhile(lambda word: not word.startswith("-"), args))


def test_the_item_embedder_runs_on_the_same_image_in_compose_and_kubernetes() -> None:
    services = compose()["services"]
    embedder = services["item-embedder"]
    assert embedder["image"] == services["worker"]["image"] and embedder["command"] == ["items", "embedder"]
    assert embedder["depends_on"]["init"]["condition"] == "service_completed_successfully"
    specs = {name: spec for name, spec in pod_specs() if "item-embedder" in name}
    assert specs, "no Kubernetes Deployment runs `streamrec items embedder`"
    (container,) = next(iter(specs.values()))["containers"]
    assert container["args"] == ["items", "embedder"]
    # The text encoder is an optional extra: the image must carry it for this verb.
    assert "[content]" in DOCKERFILE.read_text()


def test_cli_has_the_verbs_the_manifests_run() -> None:
    from streamrec import cli as cli_module

    cli_module._register_commands()  # noqa: SLF001
    verbs: set[tuple[str, ...]] = set()
    for service in compose()["services"].values():
        if service.get("image", "").startswith("streamrec") and "command" in service:
            if service.get("entrypoint"):
                for cmd in " ".join(service["command"]).split("&&"):
                    verbs.add(tuple(shlex.split(cmd)[1:3]))
            else:
                verbs.add(command_words(service["command"]))
    for _, spec in pod_specs():
        for c in spec["containers"]:
            if c["command"] == ["streamrec"]:
                verbs.add(command_words(c["args"]))
            else:
                for cmd in " ".join(c["args"]).split("&&"):
                    verbs.add(tuple(shlex.split(cmd)[1:3]))
    missing = []
    for verb in sorted(verbs):
        group: Any = cli_module.cli
        for word in verb:
            if not hasattr(group, "commands") or word not in group.commands:
                missing.append(verb)
                break
            group = group.commands[word]
    assert {("worker",), ("retrainer",), ("items", "embedder"), ("topics", "create"), ("cassandra", "migrate")} <= verbs
    assert not missing, f"manifests run CLI verbs that do not exist: {missing}"


# --------------------------------------------------------------------------- #
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------- #
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_user_port_and_healthcheck(clean_env: pytest.MonkeyPatch) -> None:
    instr = dockerfile_instructions()
    ops = [op for op, _ in instr]
    assert instr[0] == ("FROM", "python:3.11-slim")
    entry = [json.loads(arg) for op, arg in instr if op == "ENTRYPOINT"]
    assert entry == [["streamrec"]], "ENTRYPOINT must be exec-form [\"streamrec\"]"
    users = [arg for op, arg in instr if op == "USER"]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    assert any(op == "RUN" and "pip install" in arg for op, arg in instr), "the package must be pip-installed"
    exposed = [arg for op, arg in instr if op == "EXPOSE"]
    assert exposed == [str(Settings().web_port)]
    health = [arg for op, arg in instr if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for must in (".venv", ".git", "out"):
        assert must in ignored
    # pyproject's package-dir and readme must reach the build context.
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for needed in ("pyproject.toml", "README.md", *folders, "*", "."):
        assert needed not in ignored, f".dockerignore drops {needed}, which `pip install .` needs"


# --------------------------------------------------------------------------- #
# Kubernetes
# --------------------------------------------------------------------------- #
def test_every_k8s_object_is_well_formed() -> None:
    objs = k8s_objects()
    assert len(objs) >= 10
    for filename, doc in objs:
        assert doc.get("apiVersion") and doc.get("kind"), filename
        assert doc.get("metadata", {}).get("name"), filename
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "streamrec", f"{filename}: {doc['kind']} outside the namespace"


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    listed = kust["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))


def test_k8s_env_names_are_settings_fields_and_values_parse(clean_env: pytest.MonkeyPatch) -> None:
    known = settings_env_names()
    data = configmap_data()
    secret = k8s_object("Secret", "streamrec-secrets")["stringData"]
    for source, names in (("configmap", data), ("secret", secret)):
        unknown = {k for k in names if k.startswith(ENV_PREFIX)} - known
        assert not unknown, f"{source}: {sorted(unknown)} are not Settings fields"
        assert all(k.startswith(ENV_PREFIX) for k in names), f"{source} holds a non-STREAMREC_ key"
    for _, spec in pod_specs():
        for c in spec["containers"]:
            for var in c.get("env", []):
                if var["name"].startswith(ENV_PREFIX):
                    assert var["name"] in known, var["name"]
    for key, value in {**data, **secret}.items():
        clean_env.setenv(key, value)
    s = Settings()
    assert s.kafka_security_protocol.startswith("SASL")
    assert s.kafka_sasl_password is not None and s.cassandra_password is not None


def test_secret_example_holds_placeholders_only() -> None:
    secret = k8s_object("Secret", "streamrec-secrets")
    assert "data" not in secret, "use stringData placeholders, never encoded values"
    for key, value in secret["stringData"].items():
        if "PASSWORD" in key:
            assert value.startswith("CHANGE-ME"), f"{key} must be an obvious placeholder"
    assert "example" in " ".join(secret["metadata"].get("annotations", {})).lower()


def _container_ports(container: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for p in container.get("ports", []):
        ports[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def test_worker_probes_hit_health_on_the_web_port(clean_env: pytest.MonkeyPatch) -> None:
    web_port = Settings().web_port
    deploy = k8s_object("Deployment", "streamrec-worker")
    spec = deploy["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["streamrec"] and container["args"] == ["worker"]
    ports = _container_ports(container)
    assert web_port in ports.values(), f"containerPort must be Settings().web_port ({web_port})"
    assert int(configmap_data()["STREAMREC_WEB_PORT"]) == web_port
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert ports.get(get["port"]) == web_port, f"{probe} targets {get['port']}, not the web port"
    if "startupProbe" in container:
        assert ports.get(container["startupProbe"]["httpGet"]["port"]) == web_port
    # Liveness must outlast a short Cassandra outage (the worker backs off; /health is 503 meanwhile).
    live = container["livenessProbe"]
    assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) >= 60


def test_worker_pod_is_production_shaped() -> None:
    deploy = k8s_object("Deployment", "streamrec-worker")
    assert "replicas" not in deploy["spec"], "KEDA owns replicas; a fixed value fights the autoscaler on every apply"
    template = deploy["spec"]["template"]
    spec = template["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert spec["securityContext"]["runAsNonRoot"] is True
    ann = template["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    (container,) = spec["containers"]
    assert int(ann["prometheus.io/port"]) in _container_ports(container).values()
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    env_from = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert env_from == {"configMapRef": "streamrec-config", "secretRef": "streamrec-secrets"}
    # The shared model registry, via an RWX claim that exists.
    claim = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    pvc = k8s_object("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert configmap_data()["STREAMREC_MODEL_DIR"] in mounts
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert configmap_data()["STREAMREC_STATE_DIR"] in mounts, "the state dir must be writable"


def test_retrainer_is_a_single_writer_on_the_same_volume() -> None:
    deploy = k8s_object("Deployment", "streamrec-retrainer")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate", "a rolling update would run two retrainers"
    spec = deploy["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["streamrec"] and container["args"] == ["retrainer"]
    worker_claim = next(v for v in k8s_object("Deployment", "streamrec-worker")["spec"]["template"]["spec"]["volumes"]
                        if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    claims = [v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert [c["claimName"] for c in claims] == [worker_claim]
    assert not claims[0].get("readOnly")


def test_selectors_match_the_worker_pods() -> None:
    pod_labels = k8s_object("Deployment", "streamrec-worker")["spec"]["template"]["metadata"]["labels"]
    deploy_sel = k8s_object("Deployment", "streamrec-worker")["spec"]["selector"]["matchLabels"]
    svc = k8s_object("Service", "streamrec-worker")
    pdb = k8s_object("PodDisruptionBudget", "streamrec-worker")
    for selector in (deploy_sel, svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    retrainer_labels = k8s_object("Deployment", "streamrec-retrainer")["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= retrainer_labels.items(), "the worker Service must not select the retrainer"
    (container,) = k8s_object("Deployment", "streamrec-worker")["spec"]["template"]["spec"]["containers"]
    ports = _container_ports(container)
    (port,) = svc["spec"]["ports"]
    assert ports.get(port["targetPort"]) == int(configmap_data()["STREAMREC_WEB_PORT"])
    assert "maxUnavailable" in pdb["spec"] or pdb["spec"].get("minAvailable", 0) == 0


def test_keda_scales_on_event_lag_up_to_the_partition_count() -> None:
    data = configmap_data()
    scaled = k8s_object("ScaledObject", "streamrec-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "streamrec-worker"
    assert spec["maxReplicaCount"] == int(data["STREAMREC_TOPIC_PARTITIONS"]), (
        "workers beyond the partition count sit idle: maxReplicaCount must equal STREAMREC_TOPIC_PARTITIONS"
    )
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == f"{data['STREAMREC_TOPIC_PREFIX']}.events"
    assert meta["consumerGroup"] == data["STREAMREC_CONSUMER_GROUP"]
    assert meta["bootstrapServers"] == data["STREAMREC_KAFKA_BOOTSTRAP"]
    assert meta.get("allowIdleConsumers", "false") == "false"
    int(meta["lagThreshold"])
    # Security must agree with what the workers use.
    mechanism = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    protocol = data["STREAMREC_KAFKA_SECURITY_PROTOCOL"]
    if protocol.startswith("SASL"):
        assert meta["sasl"] == mechanism[data["STREAMREC_KAFKA_SASL_MECHANISM"]]
        auth = k8s_object("TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert {"username", "password"} <= set(params)
        secret = k8s_object("Secret", params["password"]["name"])
        assert params["password"]["key"] in secret["stringData"]
    assert (meta.get("tls") == "enable") == protocol.endswith("SSL")


# --------------------------------------------------------------------------- #
# Grafana dashboard
# --------------------------------------------------------------------------- #
def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        out.append((f"variable {var['name']}", query["query"] if isinstance(query, dict) else query))
    return out


_METRIC = re.compile(r"\bstreamrec_[a-zA-Z0-9_]+")
_SELECTOR = re.compile(r"\b(streamrec_[a-zA-Z0-9_]+)\{([^}]*)\}")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_RATE = re.compile(r"\b(?:rate|irate|increase)\(\s*(streamrec_[a-zA-Z0-9_]+)")


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    catalog = {**worker_metric_catalog(), **RETRAINER_METRICS}
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 15
    used: set[str] = set()
    for title, expr in exprs:
        names = set(_METRIC.findall(expr))
        assert names, f"{title}: {expr!r} queries no streamrec metric"
        unknown = names - set(catalog)
        assert not unknown, f"{title}: {sorted(unknown)} are not exported (worker: stream/metrics.py; retrainer)"
        used |= names
        allowed_labels = TARGET_LABELS | set().union(*(catalog[n] for n in names))
        for name, matchers in _SELECTOR.findall(expr):
            for matcher in filter(None, (m.strip() for m in matchers.split(","))):
                label = re.split(r"=~|!~|!=|=", matcher)[0].strip()
                assert label in TARGET_LABELS | catalog[name], f"{title}: {name} has no label {label!r}"
        for group in _BY.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in allowed_labels, f"{title}: grouping by {label!r}, which no queried metric has"
        for name in _RATE.findall(expr):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{title}: rate() of gauge {name}"
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, f"{title}: histogram_quantile needs _bucket series"
    # Every worker metric family appears somewhere on the dashboard.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in worker_metric_catalog()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    missing = families - shown
    assert not missing, f"worker metrics without a panel: {sorted(missing)}"
    assert {"streamrec_retrain_rounds_total", "streamrec_retrain_events", "streamrec_retrain_holdout_ndcg10"} <= used


def test_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            ids.append(p["id"])
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
                for t in p["targets"]:
                    assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            walk(p.get("panels", []))

    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and dash["title"]


def test_online_quality_panel_divides_hits_by_evaluated() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [e for _, e in dashboard_exprs(dash) if "streamrec_online_hits_total" in e]
    assert exprs, "no online hit@10 panel"
    assert any(re.search(r"rate\(streamrec_online_hits_total.*\)\s*\)\s*/\s*sum by \(model\) \(rate\(streamrec_online_evaluated_total", e)
               for e in exprs)
