"""The benchmark (bench/) runs at a tiny size, prints every figure as a sane number, and never leaves its
children behind.

No figure is held to its target here (performance is judged by the benchmark's own verdicts, and
docs/performance.md has the figures): each is checked to parse, to lie in a plausible range, and, for
the request counts, to agree between the watcher and the simulator.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = [sys.executable, "-m", "bench.bench", "--quick"]
NUMBER = r"(-?\d+(?:\.\d+)?|nan|inf)"


@pytest.fixture
def env() -> dict[str, str]:
    """This environment without any WATCHER_ setting, output unbuffered."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    out["PYTHONUNBUFFERED"] = "1"
    return out


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    """One `--quick` run, shared by the tests that read its figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")} | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(QUICK, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100, check=False)


@pytest.fixture(scope="module")
def figures(quick_run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each figure line of the quick run, by the words before its first colon."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    out: dict[str, str] = {}
    for line in quick_run.stdout.splitlines():
        name, sep, value = line.partition(": ")
        if sep and not line.startswith("#"):
            out[name] = value
    return out


def numbers(text: str, pattern: str) -> list[float]:
    """The numbers `pattern` (with NUMBER groups) captures in `text`; fails if it does not match."""
    match = re.search(pattern.replace("{N}", NUMBER), text)
    assert match is not None, f"{pattern!r} not found in {text!r}"
    return [float(group) for group in match.groups()]


def _refuses(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) != 0


def _simulator_url(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("# simulator at "))
    return line.removeprefix("# simulator at ").split(";")[0]


def test_quick_run_exits_cleanly_and_stops_its_simulator(quick_run: subprocess.CompletedProcess[str]) -> None:
    """`--quick` exits 0 within the test's time and its simulator no longer listens afterwards."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    assert _refuses(_simulator_url(quick_run.stdout)), "the simulator still listens after the benchmark ended"


def test_memory_figures_are_plausible(figures: dict[str, str]) -> None:
    """Peak RSS and every RSS sample through the run lie between 20 MB and 2 GB."""
    (peak,) = numbers(figures["peak rss"], r"^{N} MB")
    assert 20 <= peak <= 2000
    samples = [float(v) for v in figures["rss through the run"].split(" MB")[0].split(", ")]
    assert samples
    assert all(20 <= mb <= 2000 for mb in samples), samples
    assert max(samples) <= peak + 1


@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_metrics_latencies_are_plausible(figures: dict[str, str], encoding: str) -> None:
    """/metrics p50 and p99 over HTTP, with and without gzip, are positive, ordered and under a minute."""
    p50, p99, worst, scrapes = numbers(
        figures[f"metrics {encoding} p50"], r"^{N} ms; p99: {N} ms; max {N} ms over {N} scrapes"
    )
    assert scrapes >= 1
    assert 0 < p50 <= p99 <= worst < 60_000


def test_metrics_body_has_series(figures: dict[str, str]) -> None:
    """The body is non-empty both ways, gzip is smaller than plain, and it has series."""
    plain, gz, count = numbers(figures["metrics body"], r"^{N} MB plain, {N} MB gzip; {N} series")
    assert 0 < gz < plain < 2000
    assert count > 0


def test_status_page_figure_is_timed_or_says_why_not(figures: dict[str, str]) -> None:
    """The status page line has two latencies under a minute, or says plainly that there is no page."""
    text = figures["status page p50/p99"]
    if text.startswith("n/a"):
        assert text == "n/a (no status page)"
        return
    p50, p99 = numbers(text, r"^{N} ms / {N} ms")
    assert 0 < p50 <= p99 < 60_000


def test_event_loop_lag_is_plausible(figures: dict[str, str]) -> None:
    """The lag probe ran: its p50, p99 and max are ordered, non-negative and under a minute."""
    p99, p50, worst, sleeps = numbers(
        figures["event-loop lag p99"], r"^{N} ms \(p50 {N} ms, max {N} ms over {N} sleeps"
    )
    assert sleeps > 0
    assert 0 <= p50 <= p99 <= worst < 60_000


def test_restart_figure_is_plausible(figures: dict[str, str]) -> None:
    """A restart reached a complete /metrics, in a positive time under a minute."""
    seconds, vaults, items = numbers(
        figures["restart to complete metrics"],
        r"^{N} s \(process start to a /metrics with {N} vaults' "
        r"jobs_watched and {N} items' item_info",
    )
    assert 0 < seconds < 60
    assert vaults > 0
    assert items > 0


def test_get_cpu_figures_are_plausible(figures: dict[str, str]) -> None:
    """Each client's CPU per GET is positive and under a minute, and the ratio matches them."""
    per_get = {}
    for label in ("bare aiohttp + json.loads", "official async sdk", "ours"):
        (cpu,) = numbers(figures[f"get cpu ({label})"], r"^{N} ms per GET")
        assert 0 < cpu < 60_000
        per_get[label] = cpu
    (ratio,) = numbers(figures["get cpu ratio ours/bare"], r"^{N} ")
    assert ratio == pytest.approx(per_get["ours"] / per_get["bare aiohttp + json.loads"], rel=0.02, abs=0.01)


def test_request_figures_are_plausible(figures: dict[str, str]) -> None:
    """Requests per round and their budget are positive counts; 429s are a count."""
    mean, most, budget_mean, budget_max = numbers(
        figures["requests per steady round"], r"^mean {N}, max {N}; budget mean {N}, max {N}"
    )
    assert 0 < mean <= most
    assert 0 < budget_mean <= budget_max
    (throttled,) = numbers(figures["throttled"], r"^{N} 429s")
    assert throttled >= 0
    assert throttled == int(throttled)


def test_watcher_and_simulator_count_the_same_requests(figures: dict[str, str]) -> None:
    """Every request the watcher processes counted is one the simulator answered, and no other."""
    counted, answered = numbers(figures["requests counted"], r"^watcher {N}, simulator {N}")
    assert counted > 0
    assert counted == answered


def test_rows_written_are_plausible(figures: dict[str, str]) -> None:
    """Rows written per round are non-negative counts."""
    (mean, most, changes) = numbers(
        figures["rows written per steady round"],
        r"^jobs mean {N}, max {N} \(jobs that started or ended in the round: mean {N}\)",
    )
    assert 0 <= mean <= most
    assert changes >= 0


def test_shard_figures_are_plausible(figures: dict[str, str]) -> None:
    """Each of the two shards polled some vaults, within plausible memory, and together all of them."""
    vaults = 0
    for name in ("shard-0", "shard-1"):
        key = next(k for k in figures if k.startswith(f"{name} ("))
        (count,) = numbers(key, r"\({N} vaults\)")
        rss, mean = numbers(figures[key], r"^peak rss {N} MB; requests per steady round mean {N}")
        assert 20 <= rss <= 2000
        assert mean > 0
        vaults += int(count)
    (total,) = numbers(figures["estate"], r"^{N} vaults")
    assert vaults == total


def test_every_target_has_a_verdict(quick_run: subprocess.CompletedProcess[str]) -> None:
    """Each figure that names a target says whether it was met."""
    targets = [
        line for line in quick_run.stdout.splitlines() if "target" in line and not line.startswith("#")
    ]
    assert len(targets) >= 7
    for line in targets:
        assert re.search(r"target[^:]*: (met|MISSED)\)", line), line


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
            if line.startswith("# main run: round 1 done"):
                break
        assert url, "the benchmark did not report its simulator"
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _refuses(url), "the simulator still listens after the benchmark was interrupted"


def test_memory_by_dimension_prints_a_growth_for_each_step(env: dict[str, str]) -> None:
    """`python -m bench.memory` at a tiny size prints every step with its heap and RSS, and a positive
    heap growth per vault, per item and per running job."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--vaults=10", "--items=2", "--running=10", "--ended=40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    per_unit = {
        unit: float(value.replace(",", ""))
        for value, unit in re.findall(r"; (-?[\d,]+) B per ([a-z ]+) \(heap\)", run.stdout)
    }
    assert set(per_unit) == {"vault", "item", "running job", "ended job"}
    assert per_unit["vault"] > 0
    assert per_unit["item"] > 0
    assert per_unit["running job"] > 0
    assert "/metrics rendered once" in run.stdout
