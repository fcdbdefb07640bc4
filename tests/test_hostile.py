"""The daemon against a hostile ARM: one vault's faults never take down the daemon or the healthy vault.

Each case runs `python -m watcher run` against tests/hostile_arm.py, where vault-bad answers every
request with one fault and vault-ok behaves, and holds it to one standard: /healthz 200 throughout;
vault-ok fresh and polled on its cadence; the fault counted under its reason; logged without a
traceback; vault-ok's jobs all in /api/jobs; RSS bounded; no request to a foreign host; SIGTERM ends
it with exit 0 within 10 s.

A case takes several seconds by nature (it measures cadence), so cases run side by side in batches:
the first test of a batch runs the whole batch, and every test judges its own case's outcome.

Not here: a daemon whose stderr is a pipe nobody reads any more; see
tests/test_logs.py::test_run_keeps_working_and_stops_on_sigterm_with_its_log_pipe_gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests import hostile_arm as fake
from tests.conftest import cli, free_port
from tests.hostile_arm import BAD_DONE, BAD_RUNNING, RG, SUB, VAULT_BAD, VAULT_OK, FakeArm, Fault
from watcher.azure.client import MAX_PAGES

TOKEN_ENV = "HOSTILE_ARM_TOKEN"
INTERVAL = 1.0  # poll.interval of every daemon here
WINDOW = 6.0  # the standard is measured for at least this long once the fault is in force
FRESH = 5.0  # vault-ok's last good poll may be this old at most: five intervals, a margin for load
MAX_GAP = 4.0  # longest silence allowed between two vault-ok requests
RSS_LIMIT_KB = 300 * 1024
STOP_LIMIT = 10.0  # the contract: SIGTERM ends the daemon with 0 within 10 s
START_LIMIT = 30.0  # how long a daemon may take to start and poll both vaults, on a loaded machine
# After WINDOW, how long to wait for the count: a timeout is counted after up to four 2 s attempts.
COUNT_LIMIT = 15.0
SAMPLE_EVERY = 0.5
MAX_METRICS_LINE = 4096
BATCH = 18  # daemons run at once

LAST_OK_POLL = "azure_backup_watcher_last_successful_poll_timestamp_seconds"
POLL_ERRORS = "azure_backup_watcher_poll_errors_total"


# -- cases ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fault of vault-bad and the poll-error reasons it may be counted under (None: no count required)."""

    name: str
    fault: Callable[[], Fault]
    reasons: frozenset[str] | None
    # Before the daemon is stopped, wait (up to COUNT_LIMIT) for this as well as for the count.
    until: Callable[[Sample, FakeArm], bool] | None = None

    def __str__(self) -> str:
        return self.name


def _asked_again(sample: Sample, arm: FakeArm) -> bool:
    # A capped or ignored Retry-After still lets vault-bad be tried again within backoff_max.
    return len(arm.vault_requests(VAULT_BAD)) >= 3


def _bad_done_listed(sample: Sample, arm: FakeArm) -> bool:
    return BAD_DONE.lower() in _job_ids(sample.jobs or [], VAULT_BAD)


def _bad_series_shown(sample: Sample, arm: FakeArm) -> bool:
    shown = {name for name, _ in sample.bad_entity_series}
    return {
        "azure_backup_job_running_start_timestamp_seconds",
        "azure_backup_last_success_timestamp_seconds",
    } <= shown


def _one(reason: str) -> frozenset[str]:
    return frozenset({reason})


BAD_BODIES = [
    Case("deep-nesting", fake.deep_nesting, _one("bad_response")),
    Case("json-list", fake.json_list, _one("bad_response")),
    Case("json-string", lambda: fake.json_scalar(b'"InProgress"'), _one("bad_response")),
    Case("json-null", lambda: fake.json_scalar(b"null"), _one("bad_response")),
    Case("value-not-a-list", fake.value_not_a_list, _one("bad_response")),
]

RETRY_REASON = {429: "throttled", 503: "server_error"}
HUGE_RETRY_AFTER = [
    Case(
        f"{status}-retry-after-{label}",
        lambda status=status, value=value: fake.status_fault(status, value),
        _one(RETRY_REASON[status]),
        _asked_again,
    )
    for status in (429, 503)
    for label, value in (("999999999s", "999999999"), ("year-9999", "Fri, 31 Dec 9999 23:59:59 GMT"))
]
ODD_RETRY_AFTER = [
    Case(
        f"{status}-retry-after-{label}",
        lambda status=status, value=value: fake.status_fault(status, value),
        _one(RETRY_REASON[status]),
        _asked_again,
    )
    for status in (429, 503)
    for label, value in (("negative", "-5"), ("unparseable", "soon, maybe"))
]

SLOW = [
    Case("hung", fake.hang, _one("timeout")),
    Case("trickle", fake.trickle, _one("timeout")),
    # Which limit ends it first, the 16 MB or the request timeout, depends on the machine's speed.
    Case("endless-body", fake.endless_body, frozenset({"bad_response", "timeout"})),
]

OVERSIZED = [
    Case("over-16mb", fake.oversized, _one("bad_response")),
    Case("gzip-bomb", fake.gzip_bombed, _one("bad_response")),
]

MALFORMED_ITEMS = Case("malformed-items", fake.malformed_items, _one("bad_response"), _bad_done_listed)

LOOPING_NEXT_LINKS = [
    Case("nextlink-to-itself", fake.next_link_to_itself, _one("bad_response")),
    # Pages that never repeat get past a seen-URL check: such a listing must be cut short and counted too.
    Case("nextlink-endless", fake.next_link_endless, frozenset({"bad_response", "timeout"})),
]

FOREIGN_NEXT_LINK = Case("nextlink-foreign-host", fake.next_link_foreign, _one("bad_response"))

STATUS_REASON = {
    400: "bad_response",
    401: "auth",
    403: "forbidden",
    404: "not_found",
    409: "bad_response",
    410: "bad_response",
    418: "bad_response",
    451: "bad_response",
    500: "server_error",
    502: "server_error",
    504: "server_error",
    599: "server_error",
}
STATUSES = [
    Case(f"status-{status}", lambda status=status: fake.status_fault(status), _one(reason))
    for status, reason in STATUS_REASON.items()
]

DROPPED = Case("dropped-mid-response", fake.dropped, _one("connection"))

HUGE_ENTITY = Case("entity-10mib", fake.huge_entity, None, _bad_series_shown)

CASES = {
    c.name: c
    for c in [
        *BAD_BODIES,
        *HUGE_RETRY_AFTER,
        *ODD_RETRY_AFTER,
        *SLOW,
        *OVERSIZED,
        MALFORMED_ITEMS,
        *LOOPING_NEXT_LINKS,
        FOREIGN_NEXT_LINK,
        *STATUSES,
        DROPPED,
        HUGE_ENTITY,
    ]
}


# -- what one run saw -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One look at the daemon from outside."""

    at: float
    health: int | None = None
    ok_age: float | None = None  # seconds since vault-ok's last good poll, None if not shown
    errors: dict[str, float] = field(default_factory=dict)  # vault-bad's poll errors by reason
    ok_errors: dict[str, float] = field(default_factory=dict)
    longest_line: int = 0
    bad_entity_series: list[tuple[str, str]] = field(default_factory=list)  # (metric, entity) of vault-bad
    rss_kb: int | None = None
    jobs: list[dict[str, Any]] | None = None


@dataclass
class Outcome:
    """Everything a case's run recorded, judged afterwards by its test."""

    case: str
    failure: str | None = None
    forced_at: float = 0.0  # monotonic: vault-bad's first request, vault-ok polled once
    ended_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    ok_requests: list[float] = field(default_factory=list)
    bad_requests: int = 0
    bad_requests_observed: int = 0
    foreign_requests: list[str] = field(default_factory=list)
    ok_expected: dict[str, str] = field(default_factory=dict)
    bad_expected: dict[str, str] = field(default_factory=dict)
    final: Sample | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None
    stderr: str = ""
    stdout: str = ""

    @property
    def observed(self) -> float:
        return self.ended_at - self.forced_at

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def log_problems(self) -> list[str]:
        """Lines that are not JSON events, tracebacks, `exception` keys, crashed passes."""
        problems = []
        for line in self.stderr.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                problems.append(f"not a JSON line: {line[:300]}")
                continue
            if not isinstance(event, dict):
                problems.append(f"not a JSON object: {line[:300]}")
            elif "exception" in event or "exc_info" in event or "Traceback" in line:
                problems.append(f"traceback: {line[:1500]}")
            elif event.get("event") == "poll_pass_crashed":
                problems.append(f"crashed pass: {line[:1500]}")
        if "Traceback" in self.stdout:
            problems.append(f"traceback on stdout: {self.stdout[:1500]}")
        return problems

    def describe(self) -> str:
        """What the daemon did, for a failure message."""
        final = self.final or (self.samples[-1] if self.samples else Sample(0.0))
        warnings = [
            {k: (str(v)[:300]) for k, v in e.items() if k not in ("timestamp", "logger")}
            for e in self.events()
            if e.get("level") in ("warning", "error", "critical")
        ]
        seen: list[str] = []
        for w in warnings:
            text = json.dumps(w)
            if text not in seen:
                seen.append(text)
        return "\n".join(
            [
                f"case {self.case}: observed {self.observed:.1f}s, exit {self.exit_code} after {self.stop_seconds}s",
                f"vault-bad poll errors {final.errors}; vault-ok poll errors {final.ok_errors}",
                f"requests: vault-bad {self.bad_requests} ({self.bad_requests_observed} while observed), "
                f"vault-ok {len(self.ok_requests)} while observed; foreign {self.foreign_requests[:3]}",
                f"max RSS {max((s.rss_kb or 0 for s in self.samples), default=0)} kB",
                "distinct warnings/errors logged (first 8):",
                *seen[:8],
            ]
        )


# -- running a case ---------------------------------------------------------------------------------


def _job_ids(jobs: list[dict[str, Any]], vault: str) -> dict[str, str]:
    return {str(j["job_id"]).lower(): str(j["status"]) for j in jobs if j.get("vault") == vault}


_LABEL = re.compile(r'([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the Prometheus text format: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        labels: dict[str, str] = {}
        if "{" in line:
            name, _, rest = line.partition("{")
            block, _, value = rest.rpartition("}")
            labels = dict(_LABEL.findall(block))
        else:
            name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError, IndexError):
            samples.append((name, labels, float(value.split()[0])))
    return samples


def rss_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int | None, str]:
    try:
        async with http.get(url) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None, ""


async def take_sample(http: aiohttp.ClientSession, base: str, pid: int) -> Sample:
    sample = Sample(time.monotonic())
    sample.health, _ = await _get(http, f"{base}/healthz")
    status, text = await _get(http, f"{base}/metrics")
    if status == 200:
        sample.longest_line = max((len(line) for line in text.splitlines()), default=0)
        now = time.time()
        for name, labels, value in parse_metrics(text):
            vault = labels.get("vault")
            if name == LAST_OK_POLL and vault == VAULT_OK:
                sample.ok_age = now - value
            elif name == POLL_ERRORS and vault in (VAULT_OK, VAULT_BAD):
                into = sample.errors if vault == VAULT_BAD else sample.ok_errors
                into[labels.get("reason", "")] = value
            if vault == VAULT_BAD and "entity" in labels:
                sample.bad_entity_series.append((name, labels["entity"]))
    status, text = await _get(http, f"{base}/api/jobs?limit=1000")
    if status == 200:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            sample.jobs = list(json.loads(text)["jobs"])
    sample.rss_kb = rss_kb(pid)
    return sample


def write_config(workdir: Path, arm: FakeArm, port: int) -> Path:
    data = {
        "azure": {
            "management_endpoint": arm.url,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {
            "interval": "1s",
            # Short, so vault-bad's passes mix listings and GETs, and every vault-ok pass asks something.
            "discovery_interval": "2s",
            "request_timeout": "2s",
            "backoff_initial": "1s",
            "backoff_max": "5s",
        },
        "discovery": {"enabled": True},
        "store": {"path": str(workdir / "state.sqlite3")},
        "http": {"listen": f"127.0.0.1:{port}"},
        "logging": {"format": "json", "level": "info"},
        "vaults": [
            {"subscription_id": SUB, "resource_group": RG, "name": VAULT_OK},
            {"subscription_id": SUB, "resource_group": RG, "name": VAULT_BAD, "jobs": [BAD_RUNNING]},
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_") and "proxy" not in k.lower()}
    env[TOKEN_ENV] = fake.TOKEN
    env["NO_PROXY"] = "127.0.0.1,localhost"  # the daemon's session trusts the environment
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _until(check: Callable[[], bool], limit: float, proc: asyncio.subprocess.Process) -> bool:
    """Wait for `check()`; False after `limit` seconds or once the daemon has exited."""
    deadline = time.monotonic() + limit
    while not check():
        if proc.returncode is not None or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def run_case(case: Case, workdir: Path) -> Outcome:
    """Start the fake and the daemon, watch, stop; never raises (a harness failure is recorded)."""
    out = Outcome(case.name)
    arm = FakeArm(case.fault())
    err_path, out_path = workdir / "stderr.log", workdir / "stdout.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        await arm.start()
        port = free_port()
        config = write_config(workdir, arm, port)
        with err_path.open("wb") as err_file, out_path.open("wb") as out_file:
            proc = await asyncio.create_subprocess_exec(
                *cli("run", "--config", str(config)),
                env=daemon_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
            )
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await _watch(case, arm, proc, http, f"http://127.0.0.1:{port}", out)
    except Exception:
        out.failure = traceback.format_exc()
    finally:
        if proc is not None:
            await _stop(proc, out)
        await arm.close()
    out.stderr, out.stdout = _read(err_path), _read(out_path)
    out.foreign_requests = list(arm.foreign_requests)
    out.bad_requests = len(arm.vault_requests(VAULT_BAD))
    return out


async def _watch(
    case: Case,
    arm: FakeArm,
    proc: asyncio.subprocess.Process,
    http: aiohttp.ClientSession,
    base: str,
    out: Outcome,
) -> None:
    latest = Sample(0.0)

    async def look() -> Sample:
        nonlocal latest
        latest = await take_sample(http, base, proc.pid)
        return latest

    async def up() -> bool:
        return (await look()).health == 200

    deadline = time.monotonic() + START_LIMIT
    while not await up():
        assert proc.returncode is None, f"the daemon exited with {proc.returncode} while starting"
        assert time.monotonic() < deadline, "the daemon did not serve /healthz 200 in time"
        await asyncio.sleep(0.2)
    # The fault is in force once vault-bad has been asked; vault-ok must have had one good pass.
    while not (arm.vault_requests(VAULT_BAD) and (await look()).ok_age is not None):
        assert proc.returncode is None, f"the daemon exited with {proc.returncode}"
        assert time.monotonic() < deadline, "vault-bad not asked, or vault-ok not polled, in time"
        await asyncio.sleep(0.2)
    out.forced_at = time.monotonic()
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            out.samples.append(await look())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)

    task = asyncio.create_task(sampler())
    try:
        await asyncio.sleep(WINDOW)

        def settled() -> bool:
            counted = case.reasons is None or any(latest.errors.get(r, 0) > 0 for r in case.reasons)
            return counted and (case.until is None or case.until(latest, arm))

        # Not asserted here: the test judges the final state, with the whole record in its message.
        await _until(settled, COUNT_LIMIT, proc)
    finally:
        stop.set()
        await task
    out.ended_at = time.monotonic()
    out.ok_requests = [s.at for s in arm.vault_requests(VAULT_OK, out.forced_at, out.ended_at)]
    out.bad_requests_observed = len(arm.vault_requests(VAULT_BAD, out.forced_at, out.ended_at))
    out.ok_expected = {k.lower(): v for k, v in arm.statuses(VAULT_OK).items()}
    out.bad_expected = {k.lower(): v for k, v in arm.statuses(VAULT_BAD).items()}
    out.final = await take_sample(http, base, proc.pid)


async def _stop(proc: asyncio.subprocess.Process, out: Outcome) -> None:
    if proc.returncode is not None:
        out.exit_code = proc.returncode
        return
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out.exit_code = await asyncio.wait_for(proc.wait(), STOP_LIMIT + 5)
        out.stop_seconds = round(time.monotonic() - began, 2)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        out.exit_code = None


class Campaign:
    """Runs the selected cases in batches, in the order the tests run, and keeps every outcome."""

    def __init__(self, order: list[str], root: Path) -> None:
        self.order = order
        self.root = root
        self.outcomes: dict[str, Outcome] = {}

    async def outcome(self, case: Case) -> Outcome:
        if case.name not in self.outcomes:
            waiting = [n for n in self.order if n not in self.outcomes and n != case.name]
            batch = [case.name, *waiting[: BATCH - 1]]
            results = await asyncio.gather(*(run_case(CASES[n], self.root / n) for n in batch))
            self.outcomes.update({r.case: r for r in results})
        return self.outcomes[case.name]


@pytest.fixture(scope="module")
def campaign(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    me = sys.modules[__name__]
    order = [
        item.callspec.params["case"].name
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is me
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
    ]
    # Built here, not on the first request: building them would stall every fake of a batch.
    fake.gzip_bomb()
    fake.oversized_body()
    return Campaign(order, tmp_path_factory.mktemp("hostile"))


# -- the standard -----------------------------------------------------------------------------------


def assert_standard(out: Outcome, case: Case) -> None:
    """Everything the contract asks of the daemon under any fault of one vault."""
    report = out.describe()
    failure, observed, final = out.failure, out.observed, out.final or Sample(0.0)
    assert failure is None, f"{failure}\n{report}"
    assert observed >= WINDOW, report
    # Stays up.
    looks = len(out.samples)
    down = [(round(s.at - out.forced_at, 1), s.health) for s in out.samples if s.health != 200]
    assert looks > 0, report
    assert not down, f"/healthz not 200 at (seconds in, status): {down[:10]}\n{report}"
    # vault-ok stays fresh, error-free and on its cadence.
    ages = [(round(s.at - out.forced_at, 1), s.ok_age and round(s.ok_age, 1)) for s in out.samples]
    stale = [(at, age) for at, age in ages if age is None or age > FRESH]
    assert not stale, (
        f"vault-ok's last good poll older than {FRESH}s at (seconds in, age): {stale[:10]}\n{report}"
    )
    ok_errors = {r: n for r, n in final.ok_errors.items() if n > 0}
    assert not ok_errors, f"vault-ok has poll errors\n{report}"
    marks = [out.forced_at, *out.ok_requests, out.ended_at]
    gap = max(b - a for a, b in itertools.pairwise(marks))
    asked, passes = len(out.ok_requests), observed / INTERVAL
    assert gap <= MAX_GAP, f"vault-ok got no request for {gap:.1f}s\n{report}"
    assert passes / 2 <= asked <= 4 * passes + 4, (
        f"{asked} vault-ok requests in {passes:.0f} intervals\n{report}"
    )
    # Counted under the right reason.
    counted = {r for r, n in final.errors.items() if n > 0}
    if case.reasons is not None:
        wanted = sorted(case.reasons)
        assert counted & case.reasons, f"wanted a count under {wanted}\n{report}"
    # Logged without a traceback.
    problems = out.log_problems()
    assert not problems, "\n".join(problems[:5]) + f"\n{report}"
    # Nothing recorded is lost.
    recorded, expected = _job_ids(final.jobs or [], VAULT_OK), out.ok_expected
    assert recorded == expected, f"vault-ok jobs in /api/jobs differ from the fake's\n{report}"
    # Memory bounded.
    peak = max((s.rss_kb or 0 for s in out.samples), default=0)
    assert 0 < peak <= RSS_LIMIT_KB, f"peak RSS {peak} kB\n{report}"
    # No request, so no token, left for another host.
    foreign = out.foreign_requests
    assert foreign == [], report
    # SIGTERM ends it with 0 within 10 s.
    code, took = out.exit_code, out.stop_seconds
    assert code == 0, report
    assert took is not None, report
    assert took < STOP_LIMIT, report


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_BODIES, ids=str)
async def test_a_body_that_is_not_what_azure_documents(campaign: Campaign, case: Case) -> None:
    """A 200 whose JSON is 100,000 levels deep, a list, a string, null, or a page whose value is no list is a bad_response of vault-bad alone."""
    assert_standard(await campaign.outcome(case), case)


@pytest.mark.parametrize("case", HUGE_RETRY_AFTER, ids=str)
async def test_a_huge_retry_after_is_capped(campaign: Campaign, case: Case) -> None:
    """A 429 or 503 asking to wait 999999999 s or until 9999 is counted, and vault-bad is still tried again within backoff_max."""
    out = await campaign.outcome(case)
    assert_standard(out, case)
    asked = out.bad_requests
    assert asked >= 3, f"vault-bad asked only {asked} times\n{out.describe()}"


@pytest.mark.parametrize("case", ODD_RETRY_AFTER, ids=str)
async def test_a_negative_or_unparseable_retry_after_is_ignored(campaign: Campaign, case: Case) -> None:
    """A 429 or 503 with Retry-After -5 or text is counted, and vault-bad is tried again on its own backoff."""
    out = await campaign.outcome(case)
    assert_standard(out, case)
    asked = out.bad_requests
    assert asked >= 3, f"vault-bad asked only {asked} times\n{out.describe()}"


@pytest.mark.parametrize("case", SLOW, ids=str)
async def test_a_server_that_never_finishes_answering(campaign: Campaign, case: Case) -> None:
    """A hung server, a one-byte-per-0.5-s trickle and an endless chunked body each end in a counted error."""
    assert_standard(await campaign.outcome(case), case)


@pytest.mark.parametrize("case", OVERSIZED, ids=str)
async def test_a_body_past_16_mb(campaign: Campaign, case: Case) -> None:
    """A 17 MiB body and a 2 MB gzip that inflates to 2 GiB are refused as bad_response with RSS bounded."""
    if case.name == "gzip-bomb":
        # The bomb is real: well past the 16 MB limit within its first 32 MiB of output.
        assert fake.check_gzip_bomb() == 32 * 1024 * 1024
        assert len(fake.gzip_bomb()) < 4 * 1024 * 1024
    assert_standard(await campaign.outcome(case), case)


@pytest.mark.parametrize("case", [MALFORMED_ITEMS], ids=str)
async def test_a_malformed_item_is_skipped_and_its_page_kept(campaign: Campaign, case: Case) -> None:
    """A page with a number and an item whose properties is a string among good jobs: the bad items count as bad_response, the good ones are recorded."""
    out = await campaign.outcome(case)
    assert_standard(out, case)
    recorded, expected = _job_ids((out.final or Sample(0.0)).jobs or [], VAULT_BAD), out.bad_expected
    # BAD_DONE can only come from the listing: it is not in the config.
    assert recorded == expected, f"vault-bad's good items not recorded as listed\n{out.describe()}"


@pytest.mark.parametrize("case", LOOPING_NEXT_LINKS, ids=str)
async def test_a_next_link_that_loops_is_cut_short(campaign: Campaign, case: Case) -> None:
    """A nextLink to the page itself, or to a new page for ever, is counted as bad_response and vault-bad is not hammered."""
    out = await campaign.outcome(case)
    assert_standard(out, case)
    # A listing is cut after MAX_PAGES pages and vault-bad then waits backoff_max (5 s here) before the
    # next try: at most MAX_PAGES requests per backoff_max, plus the odd GET.
    asked, observed = out.bad_requests_observed, out.observed
    bound = MAX_PAGES * (observed / 5.0 + 1) + 10
    assert asked <= bound, f"vault-bad asked {asked} times in {observed:.0f}s\n{out.describe()}"


@pytest.mark.parametrize("case", [FOREIGN_NEXT_LINK], ids=str)
async def test_a_next_link_to_another_host_gets_no_request(campaign: Campaign, case: Case) -> None:
    """A nextLink to another local port is refused as bad_response and that server receives no request at all."""
    out = await campaign.outcome(case)
    assert_standard(out, case)
    foreign, asked = out.foreign_requests, out.bad_requests
    assert foreign == [], out.describe()
    assert asked > 0, out.describe()


@pytest.mark.parametrize("case", STATUSES, ids=str)
async def test_an_error_status(campaign: Campaign, case: Case) -> None:
    """400, 401, 403, 404, 409, 410, 418, 451, 500, 502, 504 and 599, with ARM-shaped and garbage bodies in turn, each counted under its reason."""
    assert_standard(await campaign.outcome(case), case)


@pytest.mark.parametrize("case", [DROPPED], ids=str)
async def test_a_connection_dropped_mid_response(campaign: Campaign, case: Case) -> None:
    """Headers promising 64 KiB, a few bytes, then a closed connection: counted as connection."""
    assert_standard(await campaign.outcome(case), case)


@pytest.mark.parametrize("case", [HUGE_ENTITY], ids=str)
async def test_a_10_mib_entity_name_keeps_metrics_bounded(campaign: Campaign, case: Case) -> None:
    """Jobs whose entityFriendlyName is 10 MiB are recorded, no /metrics line passes 4 KiB, and the item keeps one series across scrapes."""
    out = await campaign.outcome(case)
    assert_standard(out, case)
    final, report = out.final or Sample(0.0), out.describe()
    longest = max(s.longest_line for s in [*out.samples, final])
    assert longest <= MAX_METRICS_LINE, f"a /metrics line of {longest} characters\n{report}"
    scrapes = [s for s in [*out.samples, final] if s.bad_entity_series]
    assert scrapes, f"no series of vault-bad's item ever shown\n{report}"
    entities = {entity for s in scrapes for _, entity in s.bad_entity_series}
    assert len(entities) == 1, f"{len(entities)} distinct entity labels across scrapes\n{report}"
    for s in scrapes:
        names = [name for name, _ in s.bad_entity_series]
        assert len(names) == len(set(names)), f"one metric with several series of the item: {names}\n{report}"
    recorded, expected = _job_ids(final.jobs or [], VAULT_BAD), out.bad_expected
    assert recorded == expected, f"vault-bad jobs in /api/jobs differ from the fake's\n{report}"
