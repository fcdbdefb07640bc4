"""Property tests of the Azure body parsers: any input is parsed within the documented limits or refused.

Whatever JSON value, job-shaped body or byte string arrives, `watcher.azure.models` returns its result or
raises `BadResponseError`, nothing else. Hypothesis runs derandomized and without an example database, so
every run, locally and in CI, tries the same inputs; the per-example deadline only catches runaway
(quadratic, unbounded) work, it measures no performance.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.azure.models import (
    KNOWN_STATUSES,
    MAX_ITEMS,
    MAX_LABEL_CHARS,
    MAX_RECOMMENDATIONS,
    MAX_TEXT_CHARS,
    Job,
    JobPage,
    OperationStatus,
    normalise_operation,
    normalise_status,
    parse_duration,
    parse_operation,
    parse_size,
    parse_time,
)
from watcher.azure.recoveryservices import parse_job, parse_job_page
from watcher.errors import BadResponseError

T = TypeVar("T")

FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=150,
    # Generous: a parse takes milliseconds even on megabyte strings; only unbounded work comes near it.
    deadline=timedelta(seconds=2),
    # Megabyte strings and 5,000-deep nesting are slow to build on purpose.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)

# ------------------------------------------------------------------------------------------
# strategies: any JSON value

# Characters that steer the parsers' branches, plus a lone surrogate (JSON's `"\ud800"` decodes to one).
ODD_CHARS = [*"()P.T:/ 0123456789HMSDWZ+-", "\x00", "\u00a0", "\u0663", "\ud800", "\udfff", "…", "😀"]
chars = st.one_of(st.characters(), st.sampled_from(ODD_CHARS))
short_texts = st.text(chars, max_size=40)
# Up to a megabyte and a half: one piece repeated, since Hypothesis cannot draw that many characters.
long_texts = st.builds(
    lambda piece, n: piece * n, st.text(chars, min_size=1, max_size=5), st.integers(1, 300_000)
)
texts = st.one_of(short_texts, long_texts)

# Up to the 4,300 digits json.loads reads; built from small draws so reports stay readable.
huge_ints = st.one_of(
    st.builds(lambda digits, sign: sign * (10**digits - 1), st.integers(16, 4300), st.sampled_from([1, -1])),
    st.sampled_from([63, 64, 1024]).map(lambda bits: 2**bits),
)
numbers = st.one_of(st.integers(), huge_ints, st.floats())  # floats: NaN and +-inf, as json.loads reads them
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(short_texts, kids, max_size=5)),
    max_leaves=25,
)


class Nested(list[Any]):
    """A JSON array holding `leaf` under `depth` levels, shown by its depth when Hypothesis reports it."""

    def __init__(self, depth: int, in_dicts: bool, leaf: Any) -> None:
        value = leaf
        for _ in range(depth - 1):  # a loop: building it must not recurse
            value = {"properties": value} if in_dicts else [value]
        super().__init__([value])
        self.shown = f"Nested({depth}, {in_dicts}, {leaf!r:.40})"

    def __repr__(self) -> str:
        return self.shown

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.shown)


deep_values = st.builds(Nested, st.integers(1, 5000), st.booleans(), st.one_of(st.none(), short_texts))
any_json = st.one_of(json_values, deep_values)


def either(specific: st.SearchStrategy[Any], random: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field as Azure might send it (three times in four, so deep paths are reached), or any value."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda real: specific if real else random)


def many(item: st.SearchStrategy[T]) -> st.SearchStrategy[list[T]]:
    """A short list of items, or one item repeated from just under MAX_ITEMS to 20,000 times."""
    return st.one_of(
        st.lists(item, max_size=6),
        st.builds(lambda one, n: [one] * n, item, st.integers(MAX_ITEMS - 1, 20_000)),
    )


# ------------------------------------------------------------------------------------------
# strategies: bodies close to what Azure sends, any field of any type


offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)),
)
instants = st.one_of(
    st.datetimes(
        min_value=datetime(2002, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.none() | offsets
    ),
    # the whole calendar: year-0001 sentinels, and 9999 with an offset that carries past it in UTC
    st.datetimes(timezones=st.none() | offsets),
)
time_texts = st.one_of(
    instants.map(datetime.isoformat),
    instants.map(lambda t: t.replace(tzinfo=None).isoformat() + "Z"),
    st.sampled_from(["0001-01-01T00:00:00", "2001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"]),
)
digits = st.integers(0, 10**30).map(str)
duration_texts = st.one_of(
    st.builds(
        lambda d, h, m, s: f"{d}.{h:02}:{m:02}:{s}",
        digits,
        st.integers(0, 99),
        st.integers(0, 99),
        st.floats(0, 100, allow_nan=False).map(lambda s: f"{s:010.7f}"),
    ),
    st.builds(
        lambda w, d, h, s: f"P{w}W{d}DT{h}H{s}S",
        digits,
        digits,
        digits,
        st.floats(0, 1e30, allow_nan=False).map(lambda s: f"{s:.7f}"),
    ),
    st.sampled_from(["PT30M46.18S", "00:20:23.0896697", "1.02:00:00", "P", "PT", "P9999999999D"]),
)
size_texts = st.builds(
    lambda n, unit: f"{n} {unit}",
    st.one_of(digits, st.floats(0, allow_nan=False).map(repr)),
    st.sampled_from(["B", "KB", "MB", "gb", "TB", "PB", "XB", ""]),
)
guids = st.uuids().map(str)
statuses = st.sampled_from([*sorted(KNOWN_STATUSES), "completed", " InProgress ", "canceled", "Paused", ""])


def job_bodies(
    values: st.SearchStrategy[Any], text: st.SearchStrategy[str] = texts
) -> st.SearchStrategy[dict[str, Any]]:
    """A `backupJobs` body whose every field is realistic (its texts drawn from `text`) or one of `values`."""
    operations = st.one_of(
        st.sampled_from(
            ["Backup", "Backup (Full)", "Restore", "Backup ((x)", "(Full)", "Backup (Full) x", ""]
        ),
        st.builds(lambda base, detail: f"{base} ({detail})", text, text),
    )
    arm_ids = st.builds(
        lambda sub, rg, vault, job: (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{vault}"
            f"/backupJobs/{job}"
        ),
        short_texts,
        short_texts,
        text,
        st.one_of(guids, text),
    )
    task = st.fixed_dictionaries(
        {},
        optional={
            "taskId": either(text, values),
            "status": either(statuses, values),
            "duration": either(duration_texts, values),
        },
    )
    bag_keys = st.one_of(st.sampled_from(["Backup Size", "backup size ", "VM Name"]), text)
    bag = st.one_of(
        st.dictionaries(bag_keys, either(size_texts, values), max_size=6),
        st.builds(
            lambda n, v: {f"k{i}": v for i in range(n)}, st.integers(0, 5_000), either(size_texts, values)
        ),
    )
    extended = st.fixed_dictionaries(
        {
            "tasksList": either(many(either(task, values)), values),
            "propertyBag": either(bag, values),
            "progressPercentage": either(st.floats(-10, 110), values),
        },
    )
    error = st.fixed_dictionaries(
        {},
        optional={
            "errorCode": either(st.integers(0, 10**6), values),
            "errorTitle": either(text, values),
            "errorString": either(text, values),
            "recommendations": either(many(either(text, values)), values),
        },
    )
    # Every key present: the parser reads a missing key as null, which `values` includes.
    props = st.fixed_dictionaries(
        {
            "jobType": either(text, values),
            "entityFriendlyName": either(text, values),
            "operation": either(operations, values),
            "status": either(statuses, values),
            "startTime": either(time_texts, values),
            "endTime": either(time_texts, values),
            "duration": either(duration_texts, values),
            "backupManagementType": either(text, values),
            "workloadType": either(text, values),
            "errorDetails": either(many(either(error, values)), values),
            "extendedInfo": either(extended, values),
        },
    )
    return st.fixed_dictionaries(
        {"properties": props, "name": either(st.one_of(guids, text), values)},
        optional={"id": either(arm_ids, values)},
    )


job_like = job_bodies(any_json)
# Distinct ids: repeats of one id would hide work that grows with the square of their number.
distinct_ids = st.sampled_from([MAX_ITEMS + 1, 100_000]).map(lambda n: [f"job-{i}" for i in range(n)])
operation_like = st.fixed_dictionaries(
    {
        "status": either(
            st.sampled_from(["InProgress", "succeeded", "Cancelled", "Invalid", "", "Paused"]), any_json
        )
    },
    optional={
        "id": either(texts, any_json),
        "name": either(st.one_of(guids, texts), any_json),
        "startTime": either(time_texts, any_json),
        "endTime": either(time_texts, any_json),
        "properties": either(
            st.fixed_dictionaries(
                {},
                optional={
                    "objectType": either(texts, any_json),
                    "jobId": either(texts, any_json),
                    "jobIds": st.one_of(many(either(texts, any_json)), distinct_ids, any_json),
                },
            ),
            any_json,
        ),
        "error": either(
            st.fixed_dictionaries(
                {}, optional={"code": either(texts, any_json), "message": either(texts, any_json)}
            ),
            any_json,
        ),
    },
)
# A real page holds about 200 jobs in well under 16 MB (client.MAX_BODY_BYTES): many items are small, big ones few.
small_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, short_texts),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(short_texts, kids, max_size=3)),
    max_leaves=8,
)
page_items = st.one_of(
    st.lists(either(job_like, any_json), max_size=4),
    st.builds(
        lambda one, n: [one] * n,
        either(job_bodies(small_values, short_texts), small_values),
        st.integers(0, 500),
    ),
)
pages = st.fixed_dictionaries(
    {"value": page_items},
    optional={"nextLink": either(st.sampled_from(["https://management.azure.com/next", ""]), any_json)},
)


def mutate(raw: bytes, at: int, cut: int, patch: bytes) -> bytes:
    """`raw` with `cut` bytes at position `at` replaced by `patch`: JSON that is almost right."""
    at %= len(raw) + 1
    return raw[:at] + patch + raw[at + cut :]


encoded = st.builds(
    lambda body, ascii_only: json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"),
    st.one_of(
        job_bodies(small_values, short_texts),
        st.fixed_dictionaries({"value": st.lists(job_bodies(small_values, short_texts), max_size=3)}),
        json_values,
    ),
    st.booleans(),
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    encoded,
    st.builds(mutate, encoded, st.integers(0, 10**6), st.integers(0, 8), st.binary(max_size=4)),
    st.sampled_from(
        [b"[" * 100_000, b'{"properties":' * 100_000, b"\xef\xbb\xbf{}", b"NaN", b"1e999", b"-0"]
    ),
)


# ------------------------------------------------------------------------------------------
# what every result must satisfy


def utf8(text: str) -> bool:
    """The store and /metrics write UTF-8: a lone surrogate would fail them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def label(text: str) -> bool:
    return isinstance(text, str) and len(text) <= MAX_LABEL_CHARS and utf8(text)


def free_text(text: str) -> bool:
    return isinstance(text, str) and len(text) <= MAX_TEXT_CHARS and utf8(text)


def seconds(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value) and value >= 0)


def instant(value: datetime | None) -> bool:
    return value is None or (value.utcoffset() == timedelta(0) and value.year >= 2002)


def check_job(job: Job) -> None:
    """Every field of a parsed job has its type and stays within the module's documented limits."""
    assert isinstance(job, Job)
    for text in (job.job_id, job.entity, job.job_type, job.operation, job.operation_detail, job.status):
        assert label(text), text[:100]
    assert job.job_id
    assert job.job_type
    assert job.operation
    assert job.status
    assert job.vault is None or all(
        utf8(part) for part in (job.vault.subscription_id, job.vault.resource_group, job.vault.name)
    )
    assert free_text(job.backup_management_type)
    assert job.workload_type is None or free_text(job.workload_type)
    assert instant(job.start_time)
    assert instant(job.end_time)
    assert seconds(job.duration_seconds)
    assert seconds(job.final_duration())
    assert job.progress_percent is None or 0 <= job.progress_percent <= 100
    assert job.backup_size_bytes is None or 0 <= job.backup_size_bytes < 2**63
    assert len(job.tasks) <= MAX_ITEMS
    assert len(job.errors) <= MAX_ITEMS
    assert len(job.property_bag) <= MAX_ITEMS
    for task in job.tasks:
        assert free_text(task.task_id)
        assert free_text(task.status)
        assert seconds(task.duration_seconds)
    for err in job.errors:
        assert all(free_text(t) for t in (err.code, err.title, err.message, *err.recommendations))
        assert len(err.recommendations) <= MAX_RECOMMENDATIONS
    assert all(free_text(k) and free_text(v) for k, v in job.property_bag.items())
    assert job.current_task is None or job.current_task in job.tasks
    # Tracked jobs are logged as JSON: no NaN or infinity may reach a record.
    json.dumps([t.as_dict() for t in job.tasks] + [e.as_dict() for e in job.errors], allow_nan=False)


def check_page(page: JobPage, items: list[Any]) -> None:
    """The page splits its items, in order, into the jobs parse_job reads and the items it refuses."""
    rejected = {r.index: r for r in page.rejected}
    assert [r.index for r in page.rejected] == sorted(rejected)
    assert all(0 <= i < len(items) for i in rejected)
    assert page.jobs == [parse_job(item) for i, item in enumerate(items) if i not in rejected]
    for job in page.jobs:
        check_job(job)
    for index, item in rejected.items():
        assert label(item.ident)
        assert item.reason
        assert isinstance(items[index], dict) or item.ident == ""
        assert refused(parse_job, items[index])
    assert page.next_link is None or (isinstance(page.next_link, str) and page.next_link)


def check_operation(op: OperationStatus) -> None:
    """Every field of a parsed operation has its type and stays within the documented limits."""
    assert isinstance(op, OperationStatus)
    assert label(op.status)
    assert op.status
    assert label(op.operation_id) or op.operation_id == ""
    assert len(op.job_ids) <= MAX_ITEMS
    assert len(set(op.job_ids)) == len(op.job_ids)
    # A Backup vault names its job by full ARM id: job ids are free texts, not labels.
    assert all(free_text(j) and j for j in op.job_ids)
    for text in (op.object_type, op.error_code, op.error_message):
        assert text is None or free_text(text)
    assert instant(op.start_time)
    assert instant(op.end_time)


def check_scalars(value: Any) -> None:
    """The scalar parsers never raise: they read the value or give None (or "Unknown")."""
    assert seconds(parse_duration(value))
    assert instant(parse_time(value))
    size = parse_size(value)
    assert size is None or 0 <= size < 2**63
    operation, detail = normalise_operation(value)
    assert label(operation)
    assert operation
    assert label(detail)
    status = normalise_status(value)
    assert label(status)
    assert status


def refused(parse: Callable[[Any], object], body: Any) -> bool:
    """Whether `parse` refuses `body` with BadResponseError; any other exception fails the test."""
    try:
        parse(body)
    except BadResponseError:
        return True
    return False


def parse_everything(body: Any) -> None:
    """Every body parser and scalar parser on `body`: a checked result or BadResponseError."""
    with contextlib.suppress(BadResponseError):
        check_job(parse_job(body))
    try:
        page = parse_job_page(body)
    except BadResponseError:
        assert not (isinstance(body, dict) and isinstance(body.get("value"), list))
    else:
        check_page(page, body["value"])
    with contextlib.suppress(BadResponseError):
        check_operation(parse_operation(body))
    check_scalars(body)


# ------------------------------------------------------------------------------------------
# the properties


@FUZZ
@given(any_json)
def test_any_json_value_is_parsed_within_limits_or_refused(value: Any) -> None:
    """Any JSON value (deep, huge, NaN, surrogates) gives every parser a bounded result or BadResponseError."""
    parse_everything(value)


@FUZZ
@given(st.one_of(texts, numbers, st.sampled_from([math.nan, math.inf, -math.inf])))
def test_scalar_parsers_never_raise_and_stay_in_range(value: Any) -> None:
    """Durations, times, sizes, operations and statuses from any scalar are in range or None, never an exception."""
    check_scalars(value)


@FUZZ
@given(either(time_texts, texts), either(duration_texts, texts), either(size_texts, texts))
def test_realistic_scalar_texts_never_raise(time_text: str, duration_text: str, size_text: str) -> None:
    """Timestamps at either end of the calendar with any offset, vast durations and sizes give a value in range or None."""
    assert instant(parse_time(time_text))
    assert seconds(parse_duration(duration_text))
    size = parse_size(size_text)
    assert size is None or 0 <= size < 2**63


@FUZZ
@given(job_like)
def test_job_shaped_body_is_parsed_leniently_within_limits(body: dict[str, Any]) -> None:
    """A job body with fields of random types parses within the limits; only one without a name or id is refused."""
    try:
        job = parse_job(body)
    except BadResponseError:
        name, arm_id = body.get("name"), body.get("id")
        assert not (isinstance(name, str) and name)
        assert not (isinstance(arm_id, str) and arm_id.rsplit("/", 1)[-1])
        return
    check_job(job)


@FUZZ
@given(pages)
def test_list_page_keeps_good_items_and_rejects_only_bad_ones(body: dict[str, Any]) -> None:
    """A page of job-shaped and arbitrary items never fails: good items are jobs, the others rejections with their index."""
    parse_everything(body)


@FUZZ
@given(operation_like)
def test_operation_shaped_body_is_parsed_within_limits_or_refused(body: dict[str, Any]) -> None:
    """An operation body with fields of random types parses within the limits, or is refused for want of a status."""
    try:
        op = parse_operation(body)
    except BadResponseError:
        status = body.get("status")
        assert status is None or status == "" or isinstance(status, list | dict)
        return
    check_operation(op)


@FUZZ
@given(raw_bodies)
def test_arbitrary_bytes_decoded_as_json_are_parsed_or_refused(raw: bytes) -> None:
    """Bytes that decode as JSON (random, near-JSON or real-shaped) give every parser a checked result or BadResponseError."""
    try:
        # As the client reads a body: UTF-8 (BOM allowed), undecodable bytes replaced.
        body = json.loads(raw.decode("utf-8-sig", errors="replace"))
    except (ValueError, RecursionError):
        return  # not JSON, or nested deeper than json.loads reads: not a body a parser is given
    parse_everything(body)
