"""Logging never stops the daemon: a log stream that breaks is dropped, not raised; secrets stay redacted."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml

from tests.conftest import SUB, TOKEN_ENV, FakeClock, cli, free_port
from watcher.logs import configure_logging, get_logger
from watcher.sim import Estate, SimJob, Simulator

RG = "rg-logs"
VAULT = "vault-logs"
ENDS = "7d2e4f60-1a3b-4c5d-9e8f-0a1b2c3d4e5f"
RUNS_ON = "8e3f5a71-2b4c-4d6e-8f9a-1b2c3d4e5f60"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put structlog and stdlib logging back as they were: each test here reconfigures both."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    azure_level = logging.getLogger("azure").level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("azure").setLevel(azure_level)


class FailingStream(io.StringIO):
    """A text stream whose write or flush fails with `error`; counts the calls made after that failure."""

    def __init__(self, error: Exception, fails: str) -> None:
        super().__init__()
        self.error = error
        self.fails = fails
        self.failed = False
        self.calls_after_failure = 0

    def _call(self, op: str) -> None:
        if self.failed:
            self.calls_after_failure += 1
        if op == self.fails:
            self.failed = True
            raise self.error

    def write(self, text: str) -> int:
        self._call("write")
        return super().write(text)

    def flush(self) -> None:
        self._call("flush")


def log_everything() -> None:
    """One call down every path the daemon logs through: structlog levels, exceptions, stdlib."""
    log = get_logger("test")
    log.info("polled", vault=VAULT)
    log.warning("slow", vault=VAULT)
    log.error("failed", vault=VAULT)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("crashed")
    logging.getLogger("azure").warning("token refresh failed")
    logging.getLogger("asyncio").error("Task exception was never retrieved")


BROKEN = [
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
    OSError(errno.EBADF, "Bad file descriptor"),
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError("I/O operation on closed file."),
]


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("fails", ["write", "flush"])
@pytest.mark.parametrize("error", BROKEN, ids=["EPIPE", "EBADF", "ENOSPC", "closed"])
def test_a_failing_stream_never_raises_and_is_not_tried_again(
    fmt: str, fails: str, error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    """EPIPE, EBADF, ENOSPC or a closed file on write or flush: no log call raises, none reports to stderr, and the stream is not touched again."""
    stream = FailingStream(error, fails)
    configure_logging(fmt, "info", stream=stream)
    log_everything()
    log_everything()
    assert stream.failed
    assert stream.calls_after_failure == 0
    assert capsys.readouterr() == ("", "")


@pytest.fixture
def broken_pipe() -> Iterator[io.TextIOWrapper]:
    """A real pipe's write end, buffered as stderr is, whose read end is already closed."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    stream = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115 (closed below, where EPIPE is expected)
    yield stream
    with contextlib.suppress(BrokenPipeError):
        stream.close()  # flushes what the failed writes left in the buffer


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_real_broken_pipe_never_raises(
    fmt: str, broken_pipe: io.TextIOWrapper, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a pipe nobody reads any more as the log stream, every log call returns normally and nothing reaches stderr."""
    configure_logging(fmt, "info", stream=broken_pipe)
    log_everything()
    log_everything()
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_closed_file_never_raises(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log file closed under the logger (even before configuring) is neither an error at setup nor on any log call."""
    stream = (tmp_path / "watcher.log").open("w", encoding="utf-8")
    stream.close()
    configure_logging(fmt, "info", stream=stream)
    log_everything()
    assert capsys.readouterr() == ("", "")


def test_a_line_the_stream_cannot_encode_is_dropped_alone() -> None:
    """A line an ASCII stream cannot encode is lost without raising, and the lines after it are still written."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    configure_logging("console", "info", stream=stream)
    get_logger("test").info("vault_seen", vault="caf\u00e9")
    logging.getLogger("azure").warning("caf\u00e9 unreachable")
    get_logger("test").info("after_the_bad_line")
    logging.getLogger("azure").warning("stdlib after the bad line")
    text = raw.getvalue().decode("ascii")
    assert "after_the_bad_line" in text
    assert "stdlib after the bad line" in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_are_redacted_on_both_paths(fmt: str) -> None:
    """Bearer tokens, JWTs, SAS signatures and secret-named fields never reach the log, from structlog or stdlib."""
    stream = io.StringIO()
    configure_logging(fmt, "info", stream=stream)
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3YXRjaGVyIn0.c2lnbmF0dXJlLXNlY3JldA"
    get_logger("test").info(
        "request",
        url="https://vault.example/operations/1?api-version=1&sig=SASSECRET&se=2030",
        header="Bearer BEARERSECRET",
        client_secret="PLAINSECRET",
        nested={"authorization": "NESTEDSECRET", "ok": jwt},
        token_expires_on=1234567890,
    )
    logging.getLogger("azure").warning("retrying with Authorization: Bearer STDLIBSECRET")
    text = stream.getvalue()
    for secret in ("SASSECRET", "BEARERSECRET", "PLAINSECRET", "NESTEDSECRET", jwt, "STDLIBSECRET"):
        assert secret not in text
    assert "1234567890" in text  # an expiry time is not a secret
    if fmt == "json":
        event = json.loads(text.splitlines()[0])
        assert event["url"] == "https://vault.example/operations/1?api-version=1&sig=<redacted>&se=<redacted>"
        assert event["client_secret"] == "<redacted>"


# -- the daemon with its log pipe gone ------------------------------------------------------------


async def _status(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return None


async def _api_jobs(base: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/api/jobs") as resp:
        return list((await resp.json())["jobs"])


async def _until(
    proc: asyncio.subprocess.Process, check: Callable[[], Awaitable[bool]], what: str, limit: float = 20.0
) -> None:
    """Await `check()` until true; fail naming `what`, or at once if the daemon has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        assert proc.returncode is None, f"daemon exited with {proc.returncode} before: {what}"
        assert loop.time() < deadline, f"{what}: not within {limit}s"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("fmt", "first_line"),
    [("json", True), ("json", False), ("console", True), ("console", False)],
    ids=["json-after-first-line", "json-before-any", "console-after-first-line", "console-before-any"],
)
async def test_run_keeps_working_and_stops_on_sigterm_with_its_log_pipe_gone(
    fmt: str,
    first_line: bool,
    sim: Simulator,
    estate: Estate,
    clock: FakeClock,
    tmp_path: Path,
    cli_env: dict[str, str],
) -> None:
    """`run | head -1`: with stdout and stderr a pipe nobody reads, the daemon keeps polling and serving /healthz 200 and /metrics, and SIGTERM ends it with 0 within 10 s."""
    for job_id, duration in ((ENDS, 600), (RUNS_ON, 3600)):
        estate.add(
            SimJob(
                subscription_id=SUB,
                resource_group=RG,
                vault=VAULT,
                job_id=job_id,
                job_type="AzureIaaSVMJob",
                operation="Backup",
                entity=f"vm-{job_id[:4]}",
                backup_management_type="AzureIaasVM",
                start=clock.now - 60,
                duration=duration,
            )
        )
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "azure": {
                    "management_endpoint": sim.url,
                    "credential": "static_token",
                    "static_token_env": TOKEN_ENV,
                },
                "poll": {"interval": "200ms", "discovery_interval": "500ms"},
                "store": {"path": str(tmp_path / "state.sqlite3")},
                "http": {"listen": f"127.0.0.1:{port}"},
                "logging": {"format": fmt, "level": "info"},
                "vaults": [
                    {"subscription_id": SUB, "resource_group": RG, "name": VAULT, "jobs": [ENDS, RUNS_ON]}
                ],
            }
        )
    )
    # As a shell pipeline starts it: stderr buffered, so what a failed write leaves is flushed at exit.
    env = {k: v for k, v in cli_env.items() if k != "PYTHONUNBUFFERED"}
    read_fd, write_fd = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        *cli("run", "--config", str(config)),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=write_fd,
        stderr=write_fd,
    )
    os.close(write_fd)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            if first_line:
                line = await asyncio.wait_for(asyncio.to_thread(os.read, read_fd, 65536), 20)
                assert b"watcher_started" in line
        finally:
            os.close(read_fd)
        # The read end is closed: from here on every write the daemon makes fails with EPIPE.

        async def healthy() -> bool:
            return await _status(f"{base}/healthz") == 200

        await _until(proc, healthy, "/healthz 200")
        clock.advance(600)  # one job ends; the daemon logs the change into the dead pipe

        async def ended() -> bool:
            statuses = {j["job_id"]: j["status"] for j in await _api_jobs(base)}
            return statuses == {ENDS: "Completed", RUNS_ON: "InProgress"}

        await _until(proc, ended, "one job seen Completed, the other InProgress")
        assert await _status(f"{base}/healthz") == 200
        assert await _status(f"{base}/metrics") == 200
        polled = len(sim.requests)

        async def still_polling() -> bool:
            return len(sim.requests) >= polled + 3

        await _until(proc, still_polling, "three more requests for the job still running")
        assert await _status(f"{base}/healthz") == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
