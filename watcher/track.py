"""`backup-watcher track`: follow one job (or the job an operation starts) until it ends.

Exit status tells a pipeline how it ended: 0 Completed, 3 CompletedWithWarnings, 4 Failed,
5 Cancelled, 6 gave up (timeout), 2 usage or config, 1 anything else (auth, not found, ...).
On a terminal one line is redrawn in place; otherwise a plain line (or a JSON object with `--json`)
is written whenever the status, current task or progress changes. An operation URL is never printed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from watcher.app import build_azure
from watcher.azure.backup import BackupApi
from watcher.azure.client import ArmClient
from watcher.azure.models import Job, OperationStatus, VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.config import Config
from watcher.errors import AzureError, ForeignHostError, RetryableError

EXIT_BY_STATUS = {"Completed": 0, "CompletedWithWarnings": 3, "Failed": 4, "Cancelled": 5}
EXIT_TIMEOUT = 6
EXIT_USAGE = 2
EXIT_ERROR = 1
# When several jobs are followed, the worst outcome decides.
SEVERITY = {0: 0, 3: 1, 5: 2, 4: 3}
# Looks in a row that failed even after the client's own retries before track gives up (exit 1).
MAX_FAILED_LOOKS = 5
_PROBLEMS = frozenset({"error", "timeout"})


@dataclass
class Display:
    """Live line on a terminal, plain lines otherwise, JSON lines with --json."""

    out: TextIO
    mode: str  # live | plain | json
    err: TextIO  # errors go here unless --json, where every record goes to `out`
    _last_shown: tuple[Any, ...] = ()
    _live_width: int = 0

    def job(self, job: Job) -> None:
        task = job.current_task
        task_id = task.task_id if task is not None and not job.is_final else None
        progress = job.progress_percent if not job.is_final else None
        if self.mode == "live":
            parts = [job.vault.name if job.vault else "", job.entity, job.operation, job.status]
            parts += [_elapsed(job), task_id or "", f"{progress:.0f}%" if progress is not None else ""]
            self._redraw("  ".join(p for p in parts if p), final=job.is_final)
            return
        # Plain and JSON lines only when something a reader cares about changed, not every poll.
        key = (job.job_id, job.status, task_id, None if progress is None else round(progress))
        if key == self._last_shown:
            return
        self._last_shown = key
        if self.mode == "json":
            self._json(_job_record(job))
            return
        parts = [job.vault.name if job.vault else "", job.entity, job.operation, job.status, _elapsed(job)]
        parts += [task_id or "", f"{progress:.0f}%" if progress is not None else ""]
        self._line("  ".join(p for p in parts if p))

    def operation(self, op: OperationStatus) -> None:
        if self.mode == "json":
            key: tuple[Any, ...] = ("operation", op.status)
            if key != self._last_shown:
                self._last_shown = key
                self._json(
                    {
                        "event": "operation",
                        "operation_id": op.operation_id,
                        "status": op.status,
                        "job_ids": list(op.job_ids),
                    }
                )
            return
        text = " ".join(p for p in ("operation", op.operation_id, op.status) if p)
        if self.mode == "live":
            self._redraw(text, final=op.is_final)
        elif ("operation", text) != self._last_shown:
            self._last_shown = ("operation", text)
            self._line(text)

    def final(self, record: dict[str, Any]) -> None:
        if self.mode == "json":
            self._json(record)
        elif record.get("message"):
            stream = self.err if record.get("event") in _PROBLEMS else self.out
            self._line(str(record["message"]), stream)

    def _redraw(self, text: str, *, final: bool) -> None:
        self.out.write("\r" + text.ljust(self._live_width))
        self._live_width = 0 if final else len(text)
        if final:
            self.out.write("\n")
        self.out.flush()

    def _line(self, text: str, stream: TextIO | None = None) -> None:
        if self._live_width:
            self.out.write("\n")  # end a live line before printing below it
            self.out.flush()
            self._live_width = 0
        stream = stream or self.out
        stream.write(text + "\n")
        stream.flush()

    def _json(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()


def _seconds(job: Job) -> float | None:
    if job.is_final:
        return job.final_duration()
    if job.duration_seconds is not None:
        return job.duration_seconds
    if job.start_time is not None:
        return max(0.0, (datetime.now(UTC) - job.start_time).total_seconds())
    return None


def _elapsed(job: Job) -> str:
    seconds = _seconds(job)
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _job_record(job: Job) -> dict[str, Any]:
    task = job.current_task
    return {
        "event": "job",
        "job_id": job.job_id,
        "vault": job.vault.name if job.vault else None,
        "status": job.status,
        "operation": job.operation,
        "operation_detail": job.operation_detail,
        "job_type": job.job_type,
        "entity": job.entity,
        "start_time": job.start_time.isoformat() if job.start_time else None,
        "end_time": job.end_time.isoformat() if job.end_time else None,
        "duration_seconds": _seconds(job),
        "current_task": task.task_id if task else None,
        "progress_percent": job.progress_percent,
        "errors": [e.as_dict() for e in job.errors],
    }


def vault_of_url(url: str) -> VaultRef | None:
    """The vault an operation URL belongs to; None for a location-scoped one (Backup vaults' Location)."""
    try:
        return VaultRef.from_arm_id(urlsplit(url).path)
    except ValueError:
        return None


_OPERATION_WORDS = frozenset(
    {"operationsstatus", "operationstatus", "backupoperations", "operationresults", "backupoperationresults"}
)


def is_operation_url(url: str) -> bool:
    """Whether a URL names an operation of a subscription: `.../{operationStatus|...}/{id}`."""
    words = [w.lower() for w in urlsplit(url).path.strip("/").split("/")]
    return (
        len(words) >= 4 and words[0] == "subscriptions" and words[-2] in _OPERATION_WORDS and bool(words[-1])
    )


def job_ref(job: str, vault: VaultRef | None) -> tuple[VaultRef, str] | None:
    """(vault, job id) of an operation's job: a Backup vault names the job by its full ARM id."""
    if "/" in job:
        try:
            return VaultRef.from_arm_id(job), job.rstrip("/").rsplit("/", 1)[-1]
        except ValueError:
            return None
    return (vault, job) if vault is not None else None


async def follow_job(
    api: BackupApi,
    vault: VaultRef,
    job_id: str,
    display: Display,
    *,
    interval: float,
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> Job | None:
    """Poll one job until final; None if the deadline passed first."""
    failures = 0
    while True:
        try:
            job = await api.get_job(vault, job_id)
            failures = 0
        except RetryableError as exc:
            # The client already retried; look again later, slower, a bounded number of times.
            failures += 1
            if failures >= MAX_FAILED_LOOKS:
                raise
            delay = api.client.backoff.delay(failures - 1, exc.retry_after)
            if deadline is not None and clock() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            continue
        display.job(job)
        if job.is_final:
            return job
        if deadline is not None and clock() >= deadline:
            return None
        wait = interval if deadline is None else min(interval, max(0.0, deadline - clock()))
        await asyncio.sleep(wait)


async def _operation_jobs(
    client: ArmClient,
    url: str,
    display: Display,
    *,
    interval: float,
    deadline: float | None,
    give_up_after: float | None,
) -> list[tuple[VaultRef, str]] | int:
    """The jobs an operation names once it succeeded, or the exit status it ends the run with."""
    if not is_operation_url(url):
        display.final(
            {
                "event": "error",
                "message": "error: --operation-url is not an operation URL (.../operationsStatus/ID, "
                ".../operationStatus/ID, .../backupOperations/ID or .../operationResults/ID)",
            }
        )
        return EXIT_USAGE
    vault = vault_of_url(url)
    try:
        client.check_host(url)
    except ForeignHostError as exc:
        display.final({"event": "error", "reason": exc.reason, "message": f"error: --operation-url: {exc}"})
        return EXIT_USAGE
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        op = await client.wait_operation(
            url, give_up_after=left, interval=interval, on_poll=display.operation
        )
    except TimeoutError:
        display.final(
            {
                "event": "timeout",
                "message": f"gave up after {give_up_after:g}s: the operation is still running",
            }
        )
        return EXIT_TIMEOUT
    if op.status == "Failed":
        display.final(
            {
                "event": "operation_failed",
                "status": op.status,
                "error": {"code": op.error_code, "message": op.error_message},
                "message": f"operation failed: {op.error_code or ''} {op.error_message or ''}".rstrip(),
            }
        )
        return EXIT_BY_STATUS["Failed"]
    if op.status == "Canceled":
        display.final(
            {"event": "operation_canceled", "status": op.status, "message": "operation was canceled"}
        )
        return EXIT_BY_STATUS["Cancelled"]
    if not op.job_ids:
        display.final(
            {
                "event": "operation_succeeded",
                "status": op.status,
                "job_ids": [],
                "message": "operation succeeded; it names no job to follow",
            }
        )
        return 0
    jobs = [job_ref(j, vault) for j in op.job_ids]
    found = [j for j in jobs if j is not None]
    if len(found) != len(jobs):
        display.final(
            {
                "event": "error",
                "message": "error: the operation names a job outside any vault this URL or its id shows",
            }
        )
        return EXIT_ERROR
    return found


async def track(
    config: Config,
    *,
    vault_id: str | None,
    job_id: str | None,
    operation_url: str | None,
    give_up_after: float | None,
    interval: float,
    mode: str,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Follow a job or an operation's job(s) to the end; the exit status of the outcome.

    `out` and `err` default to the process's stdout and stderr at the time of the call.
    """
    display = Display(out or sys.stdout, mode, err or sys.stderr)
    jobs: list[tuple[VaultRef, str]]
    if operation_url is None:
        assert vault_id is not None
        assert job_id is not None
        try:
            jobs = [(VaultRef.from_arm_id(vault_id), job_id)]
        except ValueError as exc:
            display.final({"event": "error", "message": f"error: --vault-id: {exc}"})
            return EXIT_USAGE
    limiter = SubscriptionLimiter(config.poll.ratelimit_burst, config.poll.ratelimit_per_second)
    azure = build_azure(config, None, limiter)
    api = azure.api
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    try:
        if operation_url is not None:
            found = await _operation_jobs(
                azure.client,
                operation_url,
                display,
                interval=interval,
                deadline=deadline,
                give_up_after=give_up_after,
            )
            if isinstance(found, int):
                return found
            jobs = found
        worst = 0
        for vault, jid in jobs:
            job = await follow_job(api, vault, jid, display, interval=interval, deadline=deadline)
            if job is None:
                display.final(
                    {
                        "event": "timeout",
                        "job_id": jid,
                        "message": f"gave up after {give_up_after:g}s: job {jid} is still running",
                    }
                )
                return EXIT_TIMEOUT
            code = EXIT_BY_STATUS.get(job.status, EXIT_ERROR)
            if job.errors and mode != "json":
                for detail in job.errors:
                    display.final({"message": f"  error {detail.code} {detail.title}: {detail.message}"})
            display.final({"event": "done", "job_id": jid, "status": job.status, "exit_code": code})
            if SEVERITY.get(code, 4) > SEVERITY.get(worst, 4):
                worst = code
        return worst
    except AzureError as exc:
        display.final({"event": "error", "reason": exc.reason, "message": f"error: {exc}"})
        return EXIT_ERROR
    finally:
        await azure.close()
