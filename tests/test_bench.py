"""The benchmark (bench/) still runs at a tiny size, prints every figure, and never leaves its simulator behind.

Only that it runs: no figure is checked against a threshold here (docs/performance.md has the figures).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = [sys.executable, "-m", "bench.bench", "--quick"]

# One line per figure the benchmark reports, by its leading words.
FIGURES = (
    "requests first round:",
    "requests steady round:",
    "round time:",
    "cpu per 1000 job checks:",
    "peak rss:",
    "peak rss every job ended:",
    "metrics render (every job running):",
    "metrics via http (every job running):",
    "metrics render (end of run):",
    "metrics via http (end of run):",
    "metrics render (every job ended):",
    "detection latency:",
    "metrics scrapes:",
    "cpu per 1000 GETs (our client):",
    "cpu per 1000 GETs (sdk):",
    "cpu ratio ours/sdk:",
    "target peak rss <= 150 MB:",
    "target round <= 250 requests:",
    "target cpu <= 1/3 of sdk:",
    "target metrics < 100 ms:",
)

pytestmark = pytest.mark.skipif(
    not (ROOT / "bench" / "bench.py").is_file(), reason="bench/ is not in this checkout"
)


@pytest.fixture
def env() -> dict[str, str]:
    """This environment without any WATCHER_ setting, output unbuffered."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    out["PYTHONUNBUFFERED"] = "1"
    return out


def _refuses(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) != 0


def _simulator_url(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("# simulator at "))
    return line.removeprefix("# simulator at ").split(";")[0]


def test_quick_run_prints_every_figure(env: dict[str, str]) -> None:
    """`--quick` (5 vaults x 10 jobs) exits 0, prints each figure's line, and its simulator is gone after."""
    pytest.importorskip("azure.mgmt.recoveryservicesbackup.aio", reason="the SDK baseline needs the SDK")
    done = subprocess.run(QUICK, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for figure in FIGURES:
        assert any(line.startswith(figure) for line in lines), f"no line {figure!r} in:\n{done.stdout}"
    assert _refuses(_simulator_url(done.stdout)), "the simulator still listens after the benchmark ended"


def test_interrupt_stops_the_simulator(env: dict[str, str]) -> None:
    """Ctrl-C (SIGINT) mid-run ends the benchmark with 130 and takes its simulator's process along."""
    with subprocess.Popen(
        QUICK, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if line.startswith("# simulator at "):
                url = _simulator_url(line)
            if line.startswith("# round 1 done"):
                break
        assert url, "the benchmark did not report its simulator"
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _refuses(url), "the simulator still listens after the benchmark was interrupted"
