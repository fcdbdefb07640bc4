"""The Kubernetes manifests under deploy/kubernetes, rendered and checked offline.

No kustomize binary is available to the tests, so `render()` below applies the few kustomize
features these manifests use (resources, namespace, images, configMapGenerator with its name
reference, and `$patch: delete` patches) and refuses any other, so a new feature in a
kustomization shows up here as a failure rather than as an unchecked manifest.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy/kubernetes"
KUBERNETES_VERSION = "1.30.0"
PORT = 9464
UID = 10001
STATE_DIR = "/var/lib/backup-watcher"
TMP_DIR = "/tmp"  # noqa: S108 - the path the pod mounts an emptyDir on, not a file made here

Obj = dict[str, Any]

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "patches",
    "images",
    "configMapGenerator",
}


def _documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _pod_specs(obj: Obj) -> list[Obj]:
    template = obj.get("spec", {}).get("template", {})
    return [template["spec"]] if "spec" in template else []


def _rename_config_maps(objects: list[Obj], renames: dict[str, str]) -> None:
    for obj in objects:
        for pod in _pod_specs(obj):
            for volume in pod.get("volumes", []):
                ref = volume.get("configMap")
                if ref and ref["name"] in renames:
                    ref["name"] = renames[ref["name"]]
            for container in pod.get("containers", []):
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef")
                    if ref and ref["name"] in renames:
                        ref["name"] = renames[ref["name"]]


def _build(directory: Path, renames: dict[str, str]) -> list[Obj]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - SUPPORTED_KEYS
    assert not unsupported, f"render() does not implement {sorted(unsupported)} ({directory})"

    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += _build(path, renames) if path.is_dir() else _documents(path)

    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, generator
        data = {}
        for file in generator["files"]:
            key, _, source = file.rpartition("=") if "=" in file else (file, "", file)
            data[Path(key).name] = (directory / source).read_text(encoding="utf-8")
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{generator['name']}-{digest}"
        renames[generator["name"]] = name
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})

    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"only file patches are implemented: {patch}"
        for doc in _documents(directory / patch["path"]):
            assert doc.get("$patch") == "delete", "only `$patch: delete` is implemented"
            matches = [
                obj
                for obj in objects
                if (obj["kind"], obj["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
            ]
            assert matches, f"patch {patch['path']} matches nothing"
            objects = [obj for obj in objects if obj not in matches]

    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]

    for image in kustomization.get("images", []):
        for obj in objects:
            for pod in _pod_specs(obj):
                for container in pod.get("containers", []):
                    name, _, _ = container["image"].partition(":")
                    if name == image["name"]:
                        new = image.get("newName", name)
                        container["image"] = f"{new}:{image['newTag']}"

    _rename_config_maps(objects, renames)
    return objects


def render(directory: Path) -> list[Obj]:
    """Return the objects that `kustomize build directory` produces."""
    return copy.deepcopy(_build(directory, {}))


TARGETS = {"base": KUBE / "base", "sharded": KUBE / "overlays/sharded"}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def rendered(request: pytest.FixtureRequest) -> list[Obj]:
    return render(TARGETS[request.param])


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(objects: list[Obj]) -> Obj:
    found = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def container(objects: list[Obj]) -> Obj:
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_builtin_objects_pass_the_kubernetes_schemas(rendered: list[Obj]) -> None:
    """Every built-in object validates strictly (no unknown fields) against Kubernetes 1.30."""
    for obj in rendered:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            first = str(error).splitlines()[0]
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {first}")


def test_everything_lands_in_one_namespace(rendered: list[Obj]) -> None:
    """Each object gets the namespace that the federated credential's subject names."""
    assert {o["metadata"].get("namespace") for o in rendered} == {"backup-watcher"}


def test_pod_is_locked_down(rendered: list[Obj]) -> None:
    """Non-root UID 10001, read-only root, no privilege escalation, no capabilities, seccomp."""
    pod = workload(rendered)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["fsGroup"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(rendered)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container(rendered)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_probes_and_ports_use_9464(rendered: list[Obj]) -> None:
    """Liveness and startup probe /healthz, readiness /readyz, all on the metrics port 9464."""
    main = container(rendered)
    assert main["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        assert main[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    service = one(rendered, "Service", "backup-watcher")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_config_map_is_mounted_and_valid_for_the_image(rendered: list[Obj]) -> None:
    """The generated ConfigMap is what the pod mounts, and its config fits the pod."""
    pod = workload(rendered)["spec"]["template"]["spec"]
    config_map = one(rendered, "ConfigMap")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mounts = {m["name"]: m for m in container(rendered)["volumeMounts"]}
    assert mounts["config"]["readOnly"] is True
    path = f"{mounts['config']['mountPath']}/config.yaml"
    assert container(rendered)["args"][:3] == ["run", "--config", path]

    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["azure"]["credential"] == "workload_identity"
    assert config["http"]["listen"].endswith(f":{PORT}")
    assert mounts["state"]["mountPath"] == STATE_DIR
    assert config["store"]["path"].startswith(f"{STATE_DIR}/")
    assert mounts["tmp"]["mountPath"] == TMP_DIR
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp


def test_workload_identity_is_wired(rendered: list[Obj]) -> None:
    """The pod uses the annotated ServiceAccount and carries the webhook's opt-in label."""
    account = one(rendered, "ServiceAccount")
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    template = workload(rendered)["spec"]["template"]
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"


def test_selectors_find_the_pods(rendered: list[Obj]) -> None:
    """Service, PodDisruptionBudget and NetworkPolicy select the watcher's pod labels."""
    labels = workload(rendered)["spec"]["template"]["metadata"]["labels"]
    selectors = [
        workload(rendered)["spec"]["selector"]["matchLabels"],
        one(rendered, "Service", "backup-watcher")["spec"]["selector"],
        one(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(rendered, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()


def test_service_monitor_scrapes_only_the_metrics_service(rendered: list[Obj]) -> None:
    """Its selector matches the Service named backup-watcher (the alerts' job) and no other."""
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        o for o in rendered if o["kind"] == "Service" and selector.items() <= o["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["backup-watcher"]
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]


def test_network_policy_allows_dns_and_https_out_and_scrapes_in(rendered: list[Obj]) -> None:
    """Egress is DNS and 443 only; ingress is the metrics port only."""
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = sorted(
        (port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]
    )
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP")]
    ingress_ports = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert ingress_ports == ["metrics"]


def test_prometheus_rule_is_well_formed(rendered: list[Obj]) -> None:
    """Each rule records or alerts, and each alert has the labels and annotations of the contract."""
    rule = one(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "query_offset"}
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str | int)
    for alert in alerts:
        assert alert["alert"].startswith("AzureBackup")
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"])


def _generator() -> Any:
    path = REPO / "deploy/scripts/gen-prometheusrule.py"
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_rule_is_generated_from_alerts_yml() -> None:
    """base/prometheusrule.yaml is exactly what gen-prometheusrule.py makes of alerts.yml."""
    generated = (KUBE / "base/prometheusrule.yaml").read_text(encoding="utf-8")
    assert generated == _generator().render(), "run deploy/scripts/gen-prometheusrule.py"
    alerts = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8"))
    assert yaml.safe_load(generated)["spec"]["groups"] == alerts["groups"]


def test_base_runs_one_recreated_replica_on_a_claim() -> None:
    """One replica, replaced with Recreate, its store on the PersistentVolumeClaim."""
    objects = render(TARGETS["base"])
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = one(objects, "PersistentVolumeClaim")
    state = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_sharded_overlay_splits_by_pod_name() -> None:
    """replicas equals --shard-count, POD_NAME comes from the pod name, one claim per replica."""
    objects = render(TARGETS["sharded"])
    assert not [o for o in objects if o["kind"] in {"Deployment", "PersistentVolumeClaim"}]
    statefulset = one(objects, "StatefulSet")
    args = container(objects)["args"]
    assert int(args[args.index("--shard-count") + 1]) == statefulset["spec"]["replicas"] > 1
    assert "--shard-index" not in args
    env = {e["name"]: e for e in container(objects).get("env", [])}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert claims == ["state"]
    pod_volumes = [v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]]
    assert "state" not in pod_volumes
    headless = one(objects, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_statefulset_pod_matches_the_deployment_pod() -> None:
    """The sharded pod differs from the base pod only by shard args, POD_NAME and the claim."""
    base = workload(render(TARGETS["base"]))["spec"]["template"]
    sharded = workload(render(TARGETS["sharded"]))["spec"]["template"]
    base_container = base["spec"]["containers"][0]
    sharded_container = sharded["spec"]["containers"][0]
    assert sharded_container.pop("args")[:3] == base_container.pop("args")
    sharded_container.pop("env")
    assert sharded_container == base_container
    base["spec"]["volumes"] = [v for v in base["spec"]["volumes"] if v["name"] != "state"]
    assert sharded == base


def test_base_config_passes_check_config() -> None:
    """The watcher itself accepts the config that the ConfigMap is generated from."""
    if importlib.util.find_spec("watcher.cli") is None:
        pytest.skip("watcher.cli is not there yet")
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "--config", str(KUBE / "base/config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
