"""The Kubernetes manifests, as `kubectl apply -k` would send them: each overlay is rendered
by the real kustomize, the built-in kinds are validated against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict: unknown fields are errors), and the custom resources
(KEDA ScaledObject and TriggerAuthentication, the prometheus-operator's ServiceMonitor),
which have no schema there, are checked by structure. Then the ties between the pieces:
the worker accepts the ConfigMap's config, the grace period covers its shutdown deadline,
KEDA watches the group and topic the worker consumes, and so on."""
from __future__ import annotations

import functools
import os
import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from worker.config import load_config

from .tooling import DEPLOY, ROOT, run_tool

K8S = DEPLOY / "k8s"
OVERLAYS = ("gpu", "cpu")
# The oldest Kubernetes minor these manifests promise to work on, and the newest schema.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def _build(path) -> list[dict]:
    result = run_tool("kustomize", "build", str(path))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.lru_cache(maxsize=None)
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(_build(K8S / "overlays" / overlay))


def one(docs, kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def worker_config(docs, tmp_path):
    """The config the worker would run with: the ConfigMap's worker.toml plus the literal
    environment variables of the container, through the worker's own loader."""
    toml = one(docs, "ConfigMap")["data"]["worker.toml"]
    path = tmp_path / "worker.toml"
    path.write_text(toml)
    env = {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}
    return load_config(path, env=env)


@pytest.fixture(params=OVERLAYS)
def docs(request):
    return rendered(request.param)


def test_the_overlays_render_the_expected_objects():
    kinds = {overlay: sorted(d["kind"] for d in rendered(overlay)) for overlay in OVERLAYS}
    core = ["ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Secret", "Service"]
    assert kinds["cpu"] == core
    assert kinds["gpu"] == sorted(core + ["ScaledObject", "ServiceMonitor", "TriggerAuthentication"])
    for overlay in OVERLAYS:
        assert {d["metadata"].get("namespace", "moderation") for d in rendered(overlay)} == {"moderation"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_in_kinds_validate_against_the_kubernetes_schemas(docs, version):
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {error.message} at "
                        f"{'.'.join(map(str, error.path))}")


def test_every_custom_resource_is_one_the_structure_checks_cover():
    custom = {d["kind"] for o in OVERLAYS for d in rendered(o) if d["apiVersion"].startswith(CUSTOM_GROUPS)}
    assert custom == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


def test_the_worker_accepts_the_config_and_the_device_fits_the_overlay(tmp_path):
    for overlay, device in (("gpu", "cuda"), ("cpu", "cpu")):
        cfg = worker_config(rendered(overlay), tmp_path)
        assert cfg.model.device == device
        assert cfg.model.config.startswith("/models/")
        assert cfg.metrics.port == 9400


def test_the_grace_period_covers_the_shutdown_deadline(docs, tmp_path):
    cfg = worker_config(docs, tmp_path)
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 15 <= grace - cfg.worker.shutdown_deadline_s <= 60, (grace, cfg.worker.shutdown_deadline_s)


def test_probes_and_ports(docs, tmp_path):
    cfg = worker_config(docs, tmp_path)
    c = container(docs)
    (port,) = c["ports"]
    assert port == {"name": "metrics", "containerPort": cfg.metrics.port, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Readiness must be allowed to fail for longer than a model load; liveness must not wait.
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] >= 300
    (service_port,) = one(docs, "Service")["spec"]["ports"]
    assert service_port["targetPort"] == "metrics"


def test_pod_security_and_volumes(docs, tmp_path):
    cfg = worker_config(docs, tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user.group(1)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # the one writable place
    models = mounts[os.path.dirname(cfg.model.config)]
    assert models["readOnly"] and volumes[models["name"]]["persistentVolumeClaim"]["readOnly"]
    assert volumes[mounts["/etc/moderation"]["name"]]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    requests = c["resources"]["requests"]
    assert requests["cpu"] and requests["memory"] and c["resources"]["limits"]["memory"]


def test_kafka_credentials_come_from_the_secret(docs):
    secret = one(docs, "Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    assert not any(secret.get("stringData", {}).values()), "real credentials must not be committed"
    env = {e["name"]: e for e in container(docs)["env"]}
    for key in ("sasl_username", "sasl_password"):
        ref = env[f"MODERATION_KAFKA_{key.upper()}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": key}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if "secret" in v]
    assert tls["secret"]["secretName"] == secret["metadata"]["name"]
    (item,) = tls["secret"]["items"]
    assert item["key"] in keys
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == tls["name"]]
    # The path the ConfigMap tells SASL_SSL users to set as kafka.ssl_cafile.
    cafile = f"{mount['mountPath']}/{item['path']}"
    assert f'ssl_cafile = "{cafile}"' in one(docs, "ConfigMap")["data"]["worker.toml"]


def test_gpu_overlay_asks_for_one_gpu_and_cpu_overlay_for_none():
    gpu = container(rendered("gpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerations = one(rendered("gpu"), "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert "nvidia.com/gpu" not in yaml.safe_dump(list(rendered("cpu")))
    assert one(rendered("cpu"), "Deployment")["spec"]["replicas"] == 1
    # KEDA owns the count in the gpu overlay: a fixed one would be reset on every apply.
    assert "replicas" not in one(rendered("gpu"), "Deployment")["spec"]


def test_keda_scales_on_the_lag_of_the_group_and_topic_the_worker_consumes(tmp_path):
    docs = rendered("gpu")
    cfg = worker_config(docs, tmp_path)
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    deployment = one(docs, "Deployment")
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert meta["bootstrapServers"] == cfg.kafka.bootstrap_servers
    assert meta["consumerGroup"] == cfg.kafka.group_id
    assert meta["topic"] == cfg.kafka.upload_topic
    assert int(meta["lagThreshold"]) >= 1
    assert meta["allowIdleConsumers"] == "false"  # never more replicas than partitions
    assert meta["offsetResetPolicy"] == "earliest"  # as the worker's consumer
    # The PDB keeps one pod serving through a drain when KEDA runs its minimum.
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] < spec["minReplicaCount"]

    auth = one(docs, "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    secret = one(docs, "Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in ("username", "password", "ca")
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_the_service_monitor_scrapes_the_service_as_job_moderation_worker():
    docs = rendered("gpu")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The prometheus-operator names the job after the Service; the alerts select on it.
    assert "jobLabel" not in spec and service["metadata"]["name"] == "moderation-worker"
    rules = (DEPLOY / "prometheus" / "rules" / "moderation-alerts.yml").read_text()
    assert 'up{job="moderation-worker"}' in rules
    # ...and the annotation-based scrape is off, or the pods would be scraped twice.
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"


def test_the_cpu_overlay_is_scraped_through_its_annotations():
    docs = rendered("cpu")
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container(docs)["ports"][0]["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    # deploy/prometheus/prometheus.yml names these pods' job after this label.
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/name"] == "moderation-worker"


def test_the_pdb_and_service_select_the_pods(docs):
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        selector = one(docs, kind)["spec"]["selector"]["matchLabels"]
        assert all(pod_labels.get(k) == v for k, v in selector.items())
    selector = one(docs, "Service")["spec"]["selector"]
    assert all(pod_labels.get(k) == v for k, v in selector.items())


def test_an_overlay_of_ones_own_replaces_the_secret_as_the_readme_says(tmp_path):
    """deploy/README.md tells operators to supply credentials from an overlay outside git
    with a secretGenerator that replaces the base's empty Secret. Do exactly that."""
    (tmp_path / "kafka.env").write_text("sasl_username=svc-moderation\nsasl_password=s3cret\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    gpu = os.path.relpath(K8S / "overlays" / "gpu", tmp_path)
    readme = (DEPLOY / "README.md").read_text()
    block = re.search(r"```yaml\n(# kustomization.yaml of your own overlay.*?)```", readme, re.DOTALL)
    assert block, "deploy/README.md lost its private-overlay example"
    kustomization = yaml.safe_load(block.group(1))
    kustomization["resources"] = [gpu]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = _build(tmp_path)
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "moderation-worker-kafka"  # references still hold
    assert "stringData" not in secret
    assert set(secret["data"]) == {"sasl_username", "sasl_password", "ca.crt"}


def test_the_apply_paths_in_the_docs_are_kustomizations():
    texts = [(DEPLOY / "README.md").read_text(), (ROOT / "README.md").read_text()]
    texts += [p.read_text() for p in K8S.rglob("*.yaml")]
    paths = {m for text in texts for m in re.findall(r"kubectl apply -k (deploy/[\w/.-]+)", text)}
    assert paths >= {"deploy/k8s/overlays/gpu", "deploy/k8s/overlays/cpu"}
    for path in paths:
        assert (ROOT / path / "kustomization.yaml").is_file(), path


def test_the_configmap_toml_parses():
    toml = yaml.safe_load((K8S / "base" / "configmap.yaml").read_text())["data"]["worker.toml"]
    assert tomllib.loads(toml)["worker"]["shutdown_deadline_s"] == 60
