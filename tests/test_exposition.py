"""The hand-written /metrics renderer against prometheus_client on the same data, and its gzip form.

/metrics is built from per-vault cached chunks, not by prometheus_client; these tests hold the two to
each other byte for byte (label values with quotes, backslashes, newlines, `%`, unicode), check that the
cache never serves something a fresh render would not, and that the gzip body is one valid gzip member
whose content is exactly the plain body.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import FakeClock
from watcher.azure.models import ItemHealth, Job, ProtectedItem, ProtectionState, VaultKind, VaultRef
from watcher.metrics import Metrics, crc32_combine, generate_openmetrics
from watcher.state import Tracker, VaultState
from watcher.store import Store
from watcher.web import accepts_gzip, create_app

SUB = "00000000-0000-4000-8000-0000000000e1"
HOSTILE = (
    'quote " inside',
    "back\\slash",
    "new\nline",
    "percent %s %d %% done",
    "unicode: Z\u00fcrich \u2013 \u6771\u4eac \u2013 \U0001f680",
    "</script><script>alert(1)</script>",
    "trailing backslash \\",
    "",
)


def _job(vault: VaultRef, job_id: str, status: str, start: float, end: float | None, **kw: str) -> Job:
    return Job(
        job_id=job_id,
        vault=vault,
        job_type=kw.get("job_type", "AzureIaaSVMJob"),
        operation=kw.get("operation", "Backup"),
        operation_detail="",
        status=status,
        entity=kw.get("entity", "vm-1"),
        backup_management_type="AzureIaasVM",
        start_time=datetime.fromtimestamp(start, UTC),
        end_time=datetime.fromtimestamp(end, UTC) if end is not None else None,
        duration_seconds=None,
    )


def _item(
    vault: VaultRef, name: str, entity: str, state: ProtectionState, point: float | None
) -> ProtectedItem:
    return ProtectedItem(
        vault=vault,
        name=name,
        entity=entity,
        item_type="AzureIaaSVM",
        policy=f"policy {entity}",
        source_resource_id=f"/subscriptions/{SUB}/resourceGroups/rg/providers/x/{entity}",
        protection_state=state,
        azure_state="Protected",
        health=ItemHealth.HEALTHY if point is not None else None,
        azure_health="Passed",
        last_recovery_point=point,
    )


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    clock = FakeClock()
    tracker = Tracker(Store.open(tmp_path / "s.sqlite3"), clock=clock)
    yield tracker
    tracker.store.close()


def _estate(tracker: Tracker, names: tuple[str, ...]) -> list[VaultRef]:
    """Vaults, jobs (running, finished, failed) and items whose names are `names`."""
    now = tracker.clock()
    refs = [
        VaultRef(SUB, f"rg {i} {name}", f"vault {name}", kind)
        for i, name in enumerate(names)
        for kind in (VaultKind.RECOVERY_SERVICES, VaultKind.BACKUP_VAULT)
    ]
    tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in refs])
    for n, ref in enumerate(refs):
        name = names[n // 2]
        tracker.observe(
            ref, _job(ref, f"run-{n}", "InProgress", now - 300, None, entity=name, operation=name)
        )
        tracker.observe(ref, _job(ref, f"ok-{n}", "Completed", now - 900, now - 60, entity=name))
        tracker.observe(
            ref, _job(ref, f"bad-{n}", "Failed", now - 900, now - 30, entity="vm-1", job_type=name)
        )
        tracker.record_inventory(
            ref,
            [
                _item(ref, f"item;{name}", name, ProtectionState.PROTECTED, now - 3600),
                _item(ref, "never", "vm never", ProtectionState.PENDING, None),
            ],
        )
        tracker.poll_error(ref, "throttled")
        tracker.vault_polled(ref, now)
    return refs


def _metrics(tracker: Tracker) -> Metrics:
    metrics = Metrics(CollectorRegistry(), "test")
    metrics.watch(tracker)
    return metrics


@contextlib.asynccontextmanager
async def _serve(metrics: Metrics, tracker: Tracker) -> AsyncIterator[int]:
    """The watcher's HTTP app for `metrics` on a free loopback port; the port."""
    app = create_app(render=metrics.body, healthy=lambda: True, ready=lambda: True, jobs=tracker.api_jobs)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _same_as_prometheus_client(metrics: Metrics) -> None:
    assert metrics.render(False) == generate_latest(metrics.registry)
    assert metrics.render(True) == generate_openmetrics(metrics.registry)


def test_the_renderer_writes_what_prometheus_client_writes_with_hostile_labels(tracker: Tracker) -> None:
    """Quotes, backslashes, newlines, `%`, unicode and markup in every label: byte-identical to
    prometheus_client's generate_latest, in both the Prometheus and the OpenMetrics form."""
    _estate(tracker, HOSTILE)
    metrics = _metrics(tracker)
    text = metrics.render(False).decode()
    assert 'entity="new\\nline"' in text
    assert 'vault="vault quote \\" inside"' in text
    assert "Z\u00fcrich" in text
    _same_as_prometheus_client(metrics)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=3, unique=True))
def test_any_label_text_renders_as_prometheus_client_renders_it(tmp_path: Path, names: list[str]) -> None:
    """Whatever text Azure gives as a name, the renderer agrees with prometheus_client byte for byte."""
    path = tmp_path / f"s{abs(hash(tuple(names)))}.sqlite3"
    path.unlink(missing_ok=True)
    tracker = Tracker(Store.open(path), clock=FakeClock())
    try:
        _estate(tracker, tuple(names))
        _same_as_prometheus_client(_metrics(tracker))
    finally:
        tracker.store.close()
        path.unlink(missing_ok=True)


def test_cached_chunks_never_outlive_the_facts_they_were_rendered_from(tracker: Tracker) -> None:
    """After each kind of change the cached render equals a fresh renderer's output: nothing stale."""
    refs = _estate(tracker, ("a", "b", "c"))
    metrics = _metrics(tracker)
    now = tracker.clock()

    def check() -> None:
        assert metrics.render(False) == _metrics(tracker).render(False)
        assert metrics.render(True) == _metrics(tracker).render(True)

    check()
    tracker.observe(refs[0], _job(refs[0], "run-0", "Completed", now - 300, now))  # a job ends
    check()
    tracker.observe(refs[1], _job(refs[1], "new", "InProgress", now, None, entity="vm-new"))  # a job starts
    check()
    tracker.record_inventory(refs[2], [])  # every item leaves
    check()
    tracker.hide_inventory(refs[3])  # an inventory gone out of date
    check()
    tracker.poll_error(refs[4], "timeout")
    tracker.vault_polled(refs[5], now + 1)
    tracker.discovery_gap(refs[5], now - 10 * 86400, now - 86400)
    check()
    tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in refs[2:]])  # two vaults dropped
    check()
    assert 'vault="vault a"' not in metrics.render(False).decode()
    respelt = VaultRef(SUB, refs[2].resource_group.upper(), refs[2].name.upper(), refs[2].kind)
    tracker.set_vaults(
        [VaultState(ref=respelt, discover=True), *[VaultState(ref=r, discover=True) for r in refs[3:]]]
    )
    check()
    assert 'vault="VAULT B"' in metrics.render(False).decode()


async def test_a_gzip_scrape_is_one_gzip_member_holding_exactly_the_plain_body(tracker: Tracker) -> None:
    """Asked with Accept-Encoding: gzip, /metrics sends one gzip member (CRC and length checked by a
    strict single-member decoder) whose content is byte for byte the uncompressed answer; still so
    after the cached chunks changed."""
    refs = _estate(tracker, HOSTILE)
    metrics = _metrics(tracker)
    async with _serve(metrics, tracker) as port, aiohttp.ClientSession(auto_decompress=False) as http:

        async def scrape(encoding: str, accept: str = "") -> tuple[bytes, CIMultiDictProxy[str]]:
            headers = {"Accept-Encoding": encoding, "Accept": accept}
            async with http.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
                assert resp.status == 200
                return await resp.read(), resp.headers

        for round_ in range(3):
            plain, headers = await scrape("identity")
            assert "Content-Encoding" not in headers
            packed, headers = await scrape("gzip")
            assert headers["Content-Encoding"] == "gzip"
            assert headers["Vary"] == "Accept-Encoding"
            assert int(headers["Content-Length"]) == len(packed)
            strict = zlib.decompressobj(wbits=31)  # one member; verifies CRC-32 and ISIZE
            assert strict.decompress(packed) + strict.flush() == plain
            assert strict.eof
            assert strict.unused_data == b""
            assert gzip.decompress(packed) == plain
            om_plain, _ = await scrape("identity", "application/openmetrics-text; version=1.0.0")
            om_packed, _ = await scrape("deflate, gzip;q=0.5", "application/openmetrics-text; version=1.0.0")
            assert gzip.decompress(om_packed) == om_plain
            assert om_plain.endswith(b"# EOF\n")
            now = tracker.clock() + round_
            tracker.observe(refs[round_], _job(refs[round_], f"more-{round_}", "Failed", now - 5, now))
        refused, headers = await scrape("gzip;q=0, identity")
        assert "Content-Encoding" not in headers
        assert refused.startswith(b"# HELP")


def test_accept_encoding_is_read_as_http_says() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=1.0, *;q=0.5")
    assert accepts_gzip("GZIP ; q=0.3")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("identity")
    assert not accepts_gzip("")


@given(a=st.binary(max_size=300), b=st.binary(max_size=300))
def test_crc32_of_a_concatenation_is_combined_from_the_parts(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_crc32_combine_holds_for_long_parts() -> None:
    a, b = b"x" * 5_000_003, bytes(range(256)) * 40_000
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


async def test_a_plain_scrape_written_in_many_groups_is_the_whole_body(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain /metrics inflates its cached chunks as it writes them: written a few KiB at a time, the
    body over HTTP is byte for byte the rendered one, in order, with the announced length."""
    monkeypatch.setattr("watcher.web.WRITE_BYTES", 2048)
    _estate(tracker, tuple(f"vault {n}" for n in range(40)))
    metrics = _metrics(tracker)
    async with _serve(metrics, tracker) as port:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "identity"}) as resp,
        ):
            body = await resp.read()
            assert int(resp.headers["Content-Length"]) == len(body)
        expected = metrics.render(False)
        assert len(expected) > 20 * 2048
        assert body == expected
