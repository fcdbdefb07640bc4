"""deploy/compose: the demo stack's files fit together (checked offline, nothing is started)."""

from __future__ import annotations

import json
import posixpath
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_DIR = REPO / "deploy/compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
WATCHER = "backup-watcher"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_services(compose: dict[str, Any]) -> None:
    """The stack has the watcher, Prometheus, Alertmanager and Grafana, images pinned by tag."""
    services = compose["services"]
    assert set(services) == {WATCHER, "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        if name != WATCHER:
            image = service["image"]
            assert ":" in image
            assert not image.endswith(":latest"), image


def test_watcher_is_built_from_the_repository(compose: dict[str, Any]) -> None:
    """The watcher image comes from the repo's Dockerfile and runs the demo on 0.0.0.0:9464."""
    watcher = compose["services"][WATCHER]
    context = (COMPOSE_DIR / watcher["build"]["context"]).resolve()
    assert context == REPO
    assert (context / watcher["build"]["dockerfile"]).is_file()
    assert watcher["command"] == ["demo", "--listen", "0.0.0.0:9464"]
    assert watcher["read_only"] is True
    assert "/tmp" in watcher["tmpfs"]  # noqa: S108 - the container's tmpfs, not a file made here
    assert watcher["cap_drop"] == ["ALL"]
    state = watcher["environment"]["WATCHER_STORE_PATH"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in watcher["volumes"]}
    assert str(PurePosixPath(state).parent) in volumes


def test_every_bind_mount_is_a_repository_file(compose: dict[str, Any]) -> None:
    """Each host path mounted exists and lies inside the repository (files are used in place)."""
    for name, service in compose["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.is_relative_to(REPO), f"{name}: {source}"
            assert source.exists(), f"{name}: {source} (for {target}) is missing"


def test_prometheus_loads_the_repository_rules(compose: dict[str, Any]) -> None:
    """Prometheus' config is mounted where the image reads it, and its rule file is alerts.yml."""
    mounts = bind_mounts(compose["services"]["prometheus"])
    config_path = "/etc/prometheus/prometheus.yml"
    config = load(mounts[config_path])
    rule_files = [
        posixpath.normpath(posixpath.join(posixpath.dirname(config_path), f)) for f in config["rule_files"]
    ]
    assert rule_files
    for rule_file in rule_files:
        assert mounts[rule_file] == REPO / "deploy/prometheus/alerts.yml"


def test_prometheus_scrapes_the_watcher_and_alerts_alertmanager(compose: dict[str, Any]) -> None:
    """A scrape job named backup-watcher (the alerts' job) targets the watcher service on 9464."""
    config = load(bind_mounts(compose["services"]["prometheus"])["/etc/prometheus/prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs[WATCHER]["static_configs"] for t in sc["targets"]]
    assert f"{WATCHER}:9464" in targets
    port = compose["services"][WATCHER]["command"][-1].rpartition(":")[2]
    assert port == "9464"
    alertmanagers = [
        t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert alertmanagers == ["alertmanager:9093"]


def test_alertmanager_uses_the_repository_config(compose: dict[str, Any]) -> None:
    """Alertmanager reads deploy/alertmanager/alertmanager.yml at its default config path."""
    mounts = bind_mounts(compose["services"]["alertmanager"])
    assert mounts["/etc/alertmanager/alertmanager.yml"] == REPO / "deploy/alertmanager/alertmanager.yml"


def test_grafana_provisions_the_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    """Grafana gets the Prometheus service as default data source and the repo's dashboard."""
    mounts = bind_mounts(compose["services"]["grafana"])
    datasources = [
        ds
        for target, source in mounts.items()
        if target.startswith("/etc/grafana/provisioning/datasources/")
        for ds in load(source)["datasources"]
    ]
    assert [(ds["type"], ds["url"], ds["isDefault"]) for ds in datasources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    providers = [
        provider
        for target, source in mounts.items()
        if target.startswith("/etc/grafana/provisioning/dashboards/")
        for provider in load(source)["providers"]
    ]
    folders = {provider["options"]["path"] for provider in providers}
    dashboards = [t for t, s in mounts.items() if s == REPO / "deploy/grafana/backup-watcher-dashboard.json"]
    assert len(dashboards) == 1
    assert posixpath.dirname(dashboards[0]) in folders
    dashboard = json.loads(mounts[dashboards[0]].read_text(encoding="utf-8"))
    variables = dashboard.get("templating", {}).get("list", [])
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` (where the plugin is installed) parses the file."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        ).returncode
    ):
        pytest.skip("docker compose is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
