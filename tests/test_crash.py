"""Crash campaign: SIGKILL the watcher at random moments while jobs keep ending; nothing lost, nothing counted twice.

The seed drives both the estate and the kill moments; it is printed, and CRASH_SEED=<n> replays it
(the kill moments are then the same, though what the watcher was doing at each still varies with load).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SUB, TOKEN_ENV, cli, free_port
from watcher.sim import Estate, SimJob, start_simulator
from watcher.state import DURATION, DURATION_BUCKETS, FINISHED
from watcher.store import Store

SEED_ENV = "CRASH_SEED"
RG = "rg-crash"
MIN_KILLS = 24
# Live jobs end between 2 s and this long after the test starts; the kills go on at least as long.
END_SPAN = 50.0
# The product's rule: a job that ended more than this long before the store's created_at is history.
COUNT_SLACK = 60.0
FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
OUTCOME_WEIGHTS = (45, 20, 20, 15)
# (job_type, operation, backup_management_type)
KINDS = (
    ("AzureIaaSVMJob", "Backup", "AzureIaasVM"),
    ("AzureWorkloadJob", "Backup (Full)", "AzureWorkload"),
    ("AzureStorageJob", "Backup", "AzureStorage"),
    ("AzureIaaSVMJob", "Restore", "AzureIaasVM"),
)
# (vault, lists the vault for new jobs, share of its jobs named in the config)
VAULTS = (
    ("vault-d1", True, 0.0),
    ("vault-d2", True, 0.0),
    ("vault-n1", False, 1.0),
    ("vault-n2", False, 1.0),
    ("vault-m", True, 0.5),
)
JOBS_PER_VAULT = 22
# Duration bands of jobs that started before the test, clear of the histogram's bucket bounds.
DURATION_BANDS = ((5, 55), (65, 295), (305, 895), (905, 1795), (1805, 3500))


def _scenario(rng: random.Random, t0: float) -> tuple[list[SimJob], list[dict[str, Any]]]:
    """Jobs of every vault (old history, recent history, live ones ending all through the campaign) and the vault config."""
    jobs: list[SimJob] = []
    vaults: list[dict[str, Any]] = []
    n = 0
    for name, discovers, named_share in VAULTS:
        named: list[str] = []
        for i in range(JOBS_PER_VAULT):
            n += 1
            job_type, operation, management = rng.choice(KINDS)
            outcome = rng.choices(FINAL, OUTCOME_WEIGHTS)[0]
            appears_after = 0.0
            if i < 2:
                # Ended long before the store existed: recorded, never counted.
                end = t0 - rng.uniform(3600, 7200)
                duration = rng.uniform(*rng.choice(DURATION_BANDS))
            elif i < 4:
                # Ended shortly before the first start, within the slack: counted.
                end = t0 - rng.uniform(5, 20)
                duration = rng.uniform(*rng.choice(DURATION_BANDS))
            elif rng.random() < 0.65:
                # Running when the campaign starts, ending during it.
                end = t0 + rng.uniform(2, END_SPAN)
                duration = rng.uniform(*rng.choice(DURATION_BANDS))
            else:
                # Starts during the campaign (some listed late, as agent-reported jobs are) and ends in it.
                end = t0 + rng.uniform(6, END_SPAN)
                duration = min(rng.uniform(3, 25), end - t0 - 1)
                if rng.random() < 0.3:
                    appears_after = rng.uniform(1, 6)
            job = SimJob(
                subscription_id=SUB,
                resource_group=RG,
                vault=name,
                job_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                job_type=job_type,
                operation=operation,
                entity=f"item-{n:03d}",
                backup_management_type=management,
                start=end - duration,
                duration=duration,
                outcome=outcome,
                appears_after=appears_after,
            )
            jobs.append(job)
            if rng.random() < named_share:
                named.append(job.job_id)
        vault: dict[str, Any] = {"subscription_id": SUB, "resource_group": RG, "name": name}
        if named:
            vault["jobs"] = named
        if discovers:
            vault["discover"] = True
        vaults.append(vault)
    return jobs, vaults


def _write_config(path: Path, endpoint: str, store: Path, port: int, vaults: list[dict[str, Any]]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "azure": {
                    "management_endpoint": endpoint,
                    "credential": "static_token",
                    "static_token_env": TOKEN_ENV,
                },
                "poll": {
                    "interval": "0.5s",
                    "discovery_interval": "2s",
                    "backoff_initial": "0.1s",
                    "backoff_max": "2s",
                    "request_timeout": "5s",
                },
                "store": {"path": str(store)},
                "http": {"listen": f"127.0.0.1:{port}"},
                "logging": {"format": "json", "level": "info"},
                "vaults": vaults,
            }
        )
    )
    return path


def _spawn(config: Path, env: dict[str, str], log: Path, run: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        # A leading newline keeps a line the previous run was killed in the middle of apart.
        sink.write(f"\n=== run {run}\n".encode())
        sink.flush()
        return subprocess.Popen(cli("run", "--config", str(config)), env=env, stdout=sink, stderr=sink)


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def _reap(proc: subprocess.Popen[bytes], limit: float = 15.0) -> int:
    deadline = time.monotonic() + limit
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"watcher pid {proc.pid} did not exit within {limit}s")
        await asyncio.sleep(0.02)
    return proc.returncode


async def _wait_up(http: aiohttp.ClientSession, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until /healthz answers 200; fail at once if the process dies on its own."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited by itself with {proc.returncode}:\n{_tail(log)}")
        try:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"watcher not up within 30s:\n{_tail(log)}")
        await asyncio.sleep(0.02)


async def _wait_all_final(
    http: aiohttp.ClientSession, proc: subprocess.Popen[bytes], port: int, want: dict[str, str], log: Path
) -> None:
    """Until /api/jobs shows every job of the estate in its final status."""
    deadline = time.monotonic() + 45
    missing: dict[str, str | None] = {}
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited by itself with {proc.returncode}:\n{_tail(log)}")
        async with http.get(f"http://127.0.0.1:{port}/api/jobs?limit=1000") as resp:
            seen = {j["job_id"].lower(): j["status"] for j in (await resp.json())["jobs"]}
        missing = {job_id: seen.get(job_id) for job_id, status in want.items() if seen.get(job_id) != status}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs never seen in their final status (job: seen status): {missing}")
        await asyncio.sleep(0.2)


def _kill_delay(rng: random.Random) -> float:
    """How long after /healthz first answers to kill: at once, mid-round, or after a few rounds."""
    draw = rng.random()
    if draw < 0.25:
        return rng.uniform(0.0, 0.15)
    if draw < 0.8:
        return rng.uniform(0.15, 2.5)
    return rng.uniform(2.5, 4.5)


def _logged_transitions(log: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut short by a SIGKILL
        if event.get("event") == "job_status_changed":
            out.append((event["job_id"].lower(), event["from_status"], event["to_status"]))
    return out


def _metric_sums(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """azure_backup_jobs_finished_total and the duration histogram's _count, each summed by status."""
    finished: dict[str, float] = defaultdict(float)
    durations: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "azure_backup_jobs_finished_total":
                finished[sample.labels["status"]] += sample.value
            elif sample.name == "azure_backup_job_duration_seconds_count":
                durations[sample.labels["status"]] += sample.value
    return _nonzero(finished), _nonzero(durations)


def _nonzero(values: dict[Any, float]) -> dict[Any, float]:
    return {k: v for k, v in values.items() if v}


@pytest.mark.timeout(240)
async def test_sigkill_campaign_neither_loses_nor_double_counts(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Killed with SIGKILL 24+ times at random moments while jobs end, the watcher still counts each finished job exactly once and records each final transition once."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"crash campaign seed={seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    t0 = time.time()
    jobs, vaults = _scenario(rng, t0)
    estate = Estate()
    for job in jobs:
        estate.add(job)
    sim = await start_simulator(estate)
    store_path = tmp_path / "state.sqlite3"
    port = free_port()
    config = _write_config(tmp_path / "c.yaml", sim.url, store_path, port, vaults)
    log = tmp_path / "watcher.log"
    kills: list[float] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            # Kill until enough kills have landed and every live job has ended under fire.
            while len(kills) < MIN_KILLS or time.time() < t0 + END_SPAN:
                proc = _spawn(config, cli_env, log, len(kills))
                await _wait_up(http, proc, port, log)
                delay = _kill_delay(rng)
                await asyncio.sleep(delay)
                assert proc.poll() is None, f"watcher exited by itself with {proc.returncode}:\n{_tail(log)}"
                proc.kill()
                assert await _reap(proc) == -signal.SIGKILL
                kills.append(delay)
            # Undisturbed: until every job has ended and been seen, then a clean stop.
            proc = _spawn(config, cli_env, log, len(kills))
            await _wait_up(http, proc, port, log)
            await _wait_all_final(http, proc, port, {j.job_id: j.outcome for j in jobs}, log)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics_text = await resp.text()
            proc.send_signal(signal.SIGTERM)
            code = await _reap(proc)
            assert code == 0, f"SIGTERM exit status {code}:\n{_tail(log)}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await sim.close()
    took = time.monotonic() - started
    print(
        f"crash campaign seed={seed}: {len(kills)} SIGKILLs (delays after up {min(kills):.2f}-{max(kills):.2f}s), "
        f"{len(jobs)} jobs in {len(VAULTS)} vaults, {took:.0f}s"
    )

    store = Store.open(store_path, read_only=True)
    try:
        integrity = [tuple(r) for r in store.conn.execute("PRAGMA integrity_check")]
        created_at = store.created_at
        counters = store.counters()
        transitions = store.all_transitions()
        rows = {r.job_id.lower(): r for r in store.jobs()}
    finally:
        store.close()

    problems: list[str] = []
    if integrity != [("ok",)]:
        problems.append(f"integrity_check: {integrity}")

    # The truth: which jobs count (ended at most COUNT_SLACK before the store was created).
    cutoff = created_at - COUNT_SLACK
    ambiguous = [j.job_id for j in jobs if abs(j.end - cutoff) < 5]
    assert not ambiguous, f"seed {seed}: scenario ends too close to the counting cutoff: {ambiguous}"
    counted = [j for j in jobs if j.end >= cutoff]
    assert len(counted) < len(jobs), "the scenario must include uncounted history"
    want_finished = Counter((j.vault, j.outcome) for j in counted)

    got_finished: dict[tuple[str, str], float] = defaultdict(float)
    duration_rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for metric, labels, value in counters:
        if metric == FINISHED:
            parsed = json.loads(labels)
            got_finished[(parsed["vault"], parsed["status"])] += value
        elif metric == DURATION:
            op, job_type, status, part = json.loads(labels)
            duration_rows[(op, job_type, status)][str(part)] = value
    if _nonzero(got_finished) != dict(want_finished):
        diff = {
            k: (got_finished.get(k, 0), want_finished.get(k, 0))
            for k in set(got_finished) | set(want_finished)
            if got_finished.get(k, 0) != want_finished.get(k, 0)
        }
        problems.append(f"jobs_finished (vault, status): (store, truth) differ: {diff}")

    # Duration histogram: per status, count, buckets and sum as the jobs' durations give them.
    want_hist: dict[str, tuple[int, Counter[int], float]] = {}
    for status in FINAL:
        durations = [j.duration for j in counted if j.outcome == status]
        buckets = Counter(bisect.bisect_left(DURATION_BUCKETS, d) for d in durations)
        want_hist[status] = (len(durations), buckets, sum(durations))
    got_count: dict[str, float] = defaultdict(float)
    got_buckets: dict[str, Counter[int]] = defaultdict(Counter)
    got_sum: dict[str, float] = defaultdict(float)
    for key, parts in duration_rows.items():
        count = parts.get("count", 0.0)
        for part, value in parts.items():
            if part not in ("count", "sum"):
                got_buckets[key[2]][int(part)] += int(value)
                if value > count:
                    problems.append(f"duration bucket {key} {part} = {value} exceeds its count {count}")
        got_count[key[2]] += count
        got_sum[key[2]] += parts.get("sum", 0.0)
    if sum(got_count.values()) != len(counted):
        problems.append(f"duration histogram count {sum(got_count.values())} != {len(counted)} counted jobs")
    for status, (count, buckets, total) in want_hist.items():
        in_range = Counter({i: n for i, n in buckets.items() if i < len(DURATION_BUCKETS)})
        if got_count.get(status, 0) != count or got_buckets.get(status, Counter()) != in_range:
            problems.append(
                f"duration histogram {status}: count {got_count.get(status, 0)} buckets "
                f"{sorted(got_buckets.get(status, Counter()).items())}, "
                f"truth count {count} buckets {sorted(in_range.items())}"
            )
        if abs(got_sum.get(status, 0.0) - total) > 0.001 * max(count, 1):
            problems.append(f"duration histogram {status}: sum {got_sum.get(status, 0.0)} != truth {total}")

    # Transitions: exactly one into a final status per job, and it is the job's outcome; no status twice.
    by_job: dict[str, list[str]] = defaultdict(list)
    for _vault_key, job_id, _from, to, _at in transitions:
        by_job[job_id.lower()].append(to)
    truth = {j.job_id: j for j in jobs}
    for job in jobs:
        tos = by_job.get(job.job_id, [])
        finals = [t for t in tos if t in FINAL]
        if finals != [job.outcome]:
            problems.append(f"{job.vault}/{job.job_id} ({job.outcome}): final transitions {finals}")
        twice = sorted(t for t, n in Counter(tos).items() if n > 1)
        if twice:
            problems.append(f"{job.vault}/{job.job_id}: several transitions to {twice} (all: {tos})")
        row = rows.get(job.job_id)
        want_counted = job.end >= cutoff
        if row is None:
            problems.append(f"{job.vault}/{job.job_id}: not in the jobs table")
        elif (row.status, row.state, bool(row.counted)) != (job.outcome, "final", want_counted):
            problems.append(
                f"{job.vault}/{job.job_id}: stored (status, state, counted) "
                f"{(row.status, row.state, bool(row.counted))}, truth {(job.outcome, 'final', want_counted)}"
            )
    strangers = (set(by_job) | set(rows)) - set(truth)
    if strangers:
        problems.append(f"jobs in the store that the estate never had: {sorted(strangers)}")

    # What was logged is on disk, whichever moment the process died at.
    logged = _logged_transitions(log)
    stored = {(job_id.lower(), frm, to) for _vk, job_id, frm, to, _at in transitions}
    lost = [t for t in logged if t not in stored]
    if lost:
        problems.append(f"logged but not stored: {lost}")
    text = log.read_text(errors="replace")
    for marker in ("scheduler_crashed", "poll_pass_crashed", "Traceback"):
        if marker in text:
            problems.append(f"the log has {marker!r}")

    # The final run's /metrics agrees with the store.
    metric_finished, metric_counts = _metric_sums(metrics_text)
    store_by_status: dict[str, float] = defaultdict(float)
    for (_vault, status), value in got_finished.items():
        store_by_status[status] += value
    if metric_finished != _nonzero(store_by_status):
        problems.append(
            f"/metrics jobs_finished by status {metric_finished} != store {dict(store_by_status)}"
        )
    if metric_counts != _nonzero(got_count):
        problems.append(f"/metrics duration _count by status {metric_counts} != store {dict(got_count)}")

    assert not problems, f"seed {seed} ({len(kills)} kills):\n" + "\n".join(problems)
