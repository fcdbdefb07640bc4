"""The job/operation parser (watcher.azure.models) against real Azure bodies and hostile input.

Expectations marked "by hand" were read off the corpus files themselves, never from the parser.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import corpus
from watcher.azure.models import (
    ACTIVE_STATUSES,
    KNOWN_STATUSES,
    MAX_ITEMS,
    MAX_LABEL_CHARS,
    MAX_RECOMMENDATIONS,
    MAX_TEXT_CHARS,
    Job,
    JobPage,
    RejectedItem,
    VaultRef,
    bounded_label,
    normalise_operation,
    normalise_status,
    parse_duration,
    parse_operation,
    parse_size,
    parse_time,
)
from watcher.azure.recoveryservices import parse_job, parse_job_page
from watcher.errors import BadResponseError

MB = 1024 * 1024
GB = 1024 * MB
US = timedelta(microseconds=1)  # the parser keeps 6 of Azure's 7 fraction digits


def at(year: int, month: int, day: int, hour: int, minute: int, second: float) -> datetime:
    """A UTC instant written like the corpus text (`40.9488967` seconds); compare within 1 us."""
    whole = int(second)
    return datetime(year, month, day, hour, minute, whole, tzinfo=UTC) + timedelta(
        microseconds=round((second - whole) * 1e6)
    )


def same_instant(got: datetime | None, want: datetime | None) -> bool:
    if got is None or want is None:
        return got is want
    return got.utcoffset() == timedelta(0) and abs(got - want) <= US


# ------------------------------------------------------------------------------------------
# the loader finds everything


def test_every_file_mentioning_jobtype_yields_each_of_its_job_bodies() -> None:
    """Each corpus file whose text has `"jobType"` yields exactly that many job bodies (schemas aside)."""
    root = corpus.require_corpus()
    mentions: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix == ".md":
            continue
        text = path.read_text(encoding="utf-8")
        count = text.count('"jobType"')
        if not count:
            continue
        if path.name.endswith(".json") and "swagger" in json.loads(text):
            continue  # a swagger excerpt: a schema that names jobType, not a body
        mentions[path.relative_to(root).as_posix()] = count
    yielded = Counter(ident.split("#", 1)[0] for ident, _ in corpus.iter_job_bodies())
    assert len(mentions) >= 30, "the corpus should have dozens of job-bearing files"
    assert dict(yielded) == mentions


def test_every_operation_status_answer_yields_an_operation_body() -> None:
    """Each 200 operationsStatus/backupOperations recording and each *OperationStatus* file yields one."""
    root = corpus.require_corpus()
    expected = set()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if "OperationStatus" in path.name:
            expected.add(rel)
        elif rel.startswith("recordings/"):
            with path.open(encoding="utf-8") as fh:
                rec = json.load(fh)
            uri = rec["request"]["uri"].split("?", 1)[0]
            if rec["status"] == 200 and ("/operationsStatus/" in uri or "/backupOperations/" in uri):
                expected.add(rel)
    found = Counter(ident.split("#", 1)[0] for ident, _ in corpus.iter_operation_bodies())
    assert len(expected) >= 20
    assert set(found) == expected
    assert set(found.values()) == {1}


def test_docs_capture_stray_brace_is_trimmed_by_the_loader() -> None:
    """The docs `.http` captures end in a stray `}`: raw JSON parsing fails, the loader trims it."""
    root = corpus.require_corpus()
    path = root / "docs-excerpts" / "managejobs_JobGet_AzureIaaSVMJob_Completed_200.http"
    raw_body = path.read_text(encoding="utf-8").split("\n\n", 1)[1]
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        json.loads(raw_body)
    status, headers, body = corpus.load_http(path)
    assert status == 200
    assert headers["x-ms-ratelimit-remaining-subscription-reads"] == "14989"
    assert body["name"] == "7ddead57-bcb9-4269-ac31-6a1b57588700"


def test_load_http_reads_both_capture_layouts() -> None:
    """`load_http` reads the `HTTP/1.1` layout (with or without body) and the `Status Code:` layout."""
    docs = corpus.require_corpus() / "docs-excerpts"
    status, headers, body = corpus.load_http(docs / "vms_TriggerBackup_202.http")
    assert (status, body) == (202, None)
    assert headers["Retry-After"] == "60"
    assert headers["Azure-AsyncOperation"].endswith("?api-version=2016-12-01")
    status, headers, body = corpus.load_http(docs / "sql_StopProtection_OperationStatus.http")
    assert status == 200
    assert headers["x-ms-ratelimit-remaining-subscription-resource-requests"] == "107"
    assert body["properties"]["jobId"] == "68178d86-d564-460b-9643-829046aac1b1"


def test_a_missing_corpus_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its data folder the corpus loader raises, so no corpus test can pass by being skipped."""
    monkeypatch.setattr(corpus, "CORPUS", Path("/nonexistent/azure-corpus"))
    with pytest.raises(corpus.CorpusMissingError, match="/nonexistent/azure-corpus"):
        corpus.params(corpus.iter_job_bodies)


# ------------------------------------------------------------------------------------------
# every real body parses


@pytest.mark.parametrize(("ident", "body"), corpus.params(corpus.iter_job_bodies))
def test_every_corpus_job_body_parses(ident: str, body: dict[str, Any]) -> None:
    """A real job body gives a known status, its own jobType, a start, and an end exactly when final."""
    job = parse_job(body)
    props = body["properties"]
    assert job.status in KNOWN_STATUSES
    assert job.job_type == props["jobType"]
    assert job.job_id == body["name"]
    assert job.entity == props["entityFriendlyName"]
    assert job.start_time is not None
    # InProgress/Cancelling: no endTime, or 2016-05-01's `2001-01-01T00:00:00Z` sentinel.
    assert (job.end_time is None) == (job.status in ACTIVE_STATUSES), props.get("endTime")
    if job.end_time is not None:
        assert job.end_time >= job.start_time
    if "duration" in props:
        assert job.duration_seconds is not None
        assert job.duration_seconds >= 0


@pytest.mark.parametrize(("ident", "body"), corpus.params(corpus.iter_list_bodies))
def test_every_corpus_list_page_parses(ident: str, body: dict[str, Any]) -> None:
    """A real list page gives one Job per item and its nextLink verbatim (None when absent or null)."""
    page = parse_job_page(body)
    assert [j.job_id for j in page.jobs] == [item["name"] for item in body["value"]]
    assert page.rejected == []
    assert page.next_link == (body.get("nextLink") or None)


@pytest.mark.parametrize(("ident", "body"), corpus.params(corpus.iter_operation_bodies))
def test_every_corpus_operation_body_parses(ident: str, body: dict[str, Any]) -> None:
    """A real operation body parses; InProgress has no end and no job; a job-info success names one job."""
    op = parse_operation(body)
    assert op.status in {"InProgress", "Succeeded", "Failed", "Canceled"}  # swagger OperationStatusValues
    assert op.operation_id == body["name"]
    assert op.start_time is not None
    if op.status == "InProgress":
        assert not op.is_final
        assert op.end_time is None  # `0001-01-01T00:00:00`, with or without Z
        assert op.job_ids == ()
    else:
        assert op.is_final
        assert op.end_time is not None
    if (body.get("properties") or {}).get("objectType") == "OperationStatusJobExtendedInfo":
        assert op.job_ids == (body["properties"]["jobId"],)


# ------------------------------------------------------------------------------------------
# expectations written by hand from the files


@dataclass(frozen=True)
class Expect:
    status: str
    operation: str
    job_type: str
    entity: str
    start: datetime
    end: datetime | None
    duration: float
    vault: tuple[str, str, str] | None  # subscription, resource group, vault
    detail: str = ""
    error_codes: tuple[str, ...] = ()
    backup_size: int | None = None
    progress: float | None = None
    bag: dict[str, str] = field(default_factory=dict)  # entries the propertyBag must hold, keys verbatim
    workload: str | None = None
    tasks: tuple[tuple[str, str], ...] | None = None  # (taskId, status), when checked
    extended: bool | None = None  # whether the body has extendedInfo, when checked


ZERO_SUB = "00000000-0000-0000-0000-000000000000"
SWAGGER_VAULT = (ZERO_SUB, "SwaggerTestRg", "NetSDKTestRsVault")
CLI_VAULT = (ZERO_SUB, "clitest.rg000001", "clitest-vault000002")
SQL_VAULT = (ZERO_SUB, "sql-clitest-rg", "sql-clitestvault-donotuse")
PHANIKT = ("04cf684a-d41f-4550-9f70-7708a3a2283b", "phaniktRSV", "phaniktRs1")
KAZHENG = ("d22f872b-f3f1-425a-8100-c74a376452b1", "kazhengtest", "pshtesting")
AFS = ("38304e13-357e-405e-9e9a-220351dcce8c", "afs-pstest-rg", "afs-pstest-vault")
WAITJOB = ("f7424430-103b-4ba3-bd9e-b6f0986f848a", "RecoveryServicesBackupTestRg", "PsTestRsVault")
TIMEFILTER = "recordings/ps-TestGetJobsTimeFilter-2016__01.json"
TWO_TASKS_DONE = (("Take Snapshot", "Completed"), ("Transfer data to vault", "Completed"))

# A hand-written table, kept dense: one file per entry, the first eight fields in `Expect` order.
# fmt: off
EXPECTED: dict[str, Expect] = {
    # TimeSpan duration, lower-case provider, Backup Size
    "docs-excerpts/managejobs_JobGet_AzureIaaSVMJob_Completed_200.http": Expect(
        "Completed", "Backup", "AzureIaaSVMJob", "uttestvmub1",
        at(2018, 5, 21, 8, 35, 40.9488967), at(2018, 5, 21, 8, 56, 4.0385664), 20 * 60 + 23.0896697,
        (ZERO_SUB, "Default-RecoveryServices-ResourceGroup-centralindia", "abdemovault"),
        backup_size=2332 * MB, bag={"VM Name": "uttestvmub1", "Backup Size": "2332 MB"},
        tasks=TWO_TASKS_DONE,
    ),
    # `Backup (Full)`, numeric errorCode 510008 with recommendations, workload task without duration
    "docs-excerpts/sql_JobGet_AzureWorkloadJob_Failed_200.http": Expect(
        "Failed", "Backup", "AzureWorkloadJob", "MSSQLSERVER/msDB [sqlserver-0.contoso.com]",
        at(2018, 5, 28, 11, 43, 21.6516182), at(2018, 5, 28, 11, 46, 35.2955649), 3 * 60 + 13.6439467,
        ("00000000-0000-0000-0000-0000000000", "SQLServerSelfHost", "SQLServer2012"),
        detail="Full", error_codes=("510008",), workload="SQLDataBase",
        bag={"Data Transferred (in MB)": "0"}, tasks=(("Transfer data to vault", "Failed"),),
    ),
    # 2015-03-15 time-filter list: /Subscriptions/, explicit nulls, failed jobs with errorTitle ""
    f"{TIMEFILTER}#value[0]": Expect(
        "Failed", "Backup", "AzureIaaSVMJob", "dc1vm0",
        at(2016, 3, 21, 22, 2, 59.0700175), at(2016, 3, 21, 22, 2, 59.4435954), 0.3735779, PHANIKT,
        error_codes=("400001",), extended=False,
    ),
    f"{TIMEFILTER}#value[2]": Expect(
        "Failed", "Backup", "AzureIaaSVMJob", "anbhavm",
        at(2016, 3, 21, 22, 2, 57.5073827), at(2016, 3, 21, 22, 6, 6.5988434), 3 * 60 + 9.0914607,
        PHANIKT, error_codes=("400002",),
    ),
    f"{TIMEFILTER}#value[4]": Expect(
        "Failed", "Backup", "AzureIaaSVMJob", "opcvm",
        at(2016, 3, 21, 22, 1, 22.9050207), at(2016, 3, 21, 22, 42, 38.0093532), 41 * 60 + 15.1043325,
        PHANIKT, error_codes=("400160",),
    ),
    f"{TIMEFILTER}#value[6]": Expect(
        "Failed", "Backup", "AzureIaaSVMJob", "v1prjai1",
        at(2016, 3, 21, 22, 1, 8.0380734), at(2016, 3, 21, 22, 1, 8.0380734), 0.0,
        PHANIKT, error_codes=("400001",),
    ),
    f"{TIMEFILTER}#value[8]": Expect(
        "Failed", "Backup", "AzureIaaSVMJob", "dc1vm0",
        at(2016, 3, 21, 22, 1, 7.2325307), at(2016, 3, 21, 22, 4, 16.6871947), 3 * 60 + 9.454664,
        PHANIKT, error_codes=("400136",),
    ),
    f"{TIMEFILTER}#value[9]": Expect(  # `"errorDetails": null`
        "Completed", "Backup", "AzureIaaSVMJob", "oraclevm",
        at(2016, 3, 21, 22, 0, 41.5330096), at(2016, 3, 21, 22, 20, 20.5763811), 19 * 60 + 39.0433715,
        PHANIKT, extended=False,
    ),
    # Cancelling (2016-05-01): endTime `2001-01-01T00:00:00Z`, tasks Cancelling, progressPercentage null
    "recordings/ps-TestCancelJobScenario-2016__05.json": Expect(
        "Cancelling", "Backup", "AzureIaaSVMJob", "pikumartestvm",
        at(2016, 4, 14, 9, 44, 43.8893946), None, 52.7881883, KAZHENG,
        bag={"VM Name": "pikumartestvm"}, progress=None,
        tasks=(("Take Snapshot", "Cancelling"), ("Transfer data to vault", "Cancelling")),
    ),
    "recordings/ps-TestCancelJobScenario-2016__01.json#value[0]": Expect(  # InProgress, 2001 end
        "InProgress", "Backup", "AzureIaaSVMJob", "pikumartestvm",
        at(2016, 4, 14, 9, 44, 43.8893946), None, 32.7287673, KAZHENG, extended=False,
    ),
    "recordings/ps-TestGetJobsBackupManagementTypeFilter-2016__01.json#value[0]": Expect(
        "Cancelled", "Backup", "AzureIaaSVMJob", "pikumartestvm",
        at(2016, 4, 14, 9, 44, 43.8893946), at(2016, 4, 14, 9, 47, 49.0241425), 3 * 60 + 5.1347479,
        KAZHENG,
    ),
    # Cancelling SQL job, `Backup (Full)`, /Subscriptions/
    "recordings/ps-TestAzureVmWorkloadCancelJob-2020__01.json": Expect(
        "Cancelling", "Backup", "AzureWorkloadJob", "master [psbvtsqlvm]",
        at(2020, 12, 21, 17, 2, 27.4353019), None, 12.1147736,
        ("38304e13-357e-405e-9e9a-220351dcce8c", "pstestwlRG1bca8", "pstestwlRSV1bca8"),
        detail="Full", workload="SQLDataBase", tasks=(("Transfer data to vault", "InProgress"),),
    ),
    # AzureStorageJob
    "recordings/ps-TestAzureFSGetJob-2024__04.json": Expect(
        "Completed", "ConfigureBackup", "AzureStorageJob", "fs1",
        at(2024, 4, 22, 6, 51, 2.1758655), at(2024, 4, 22, 6, 51, 43.9909476), 41.8150821, AFS,
        bag={"File Share Name": "fs1", "Policy Name": "afspolicy1"}, tasks=(),
    ),
    "recordings/ps-TestAzureFSGetJob-2024__05.json#value[1]": Expect(
        "Completed", "Register", "AzureStorageJob", "afspstestsa",
        at(2024, 4, 22, 6, 49, 59.064024), at(2024, 4, 22, 6, 50, 9.2148486), 10.1508246, AFS,
    ),
    # progressPercentage 1.0; propertyBag "Job Type" and "Recovery point time " (trailing space)
    "recordings/cli-test_backup_job-2022__17.json": Expect(
        "InProgress", "Restore", "AzureIaaSVMJob", "clitest-vm000003",
        at(2022, 5, 13, 10, 52, 12.1188556), None, 1.2657289, CLI_VAULT, progress=1.0,
        bag={"Job Type": "Recover disks", "Recovery point time ": "5/13/2022 10:09:31 AM"},
        tasks=(("Transfer data from vault", "InProgress"),),
    ),
    # ISO duration with minutes, Backup Size 11370 MB, 6-digit endTime fraction
    "recordings/cli-test_backup_job-2022__19.json": Expect(
        "Completed", "Backup", "AzureIaaSVMJob", "clitest-vm000003",
        at(2022, 5, 13, 10, 9, 27.2801342), at(2022, 5, 13, 10, 50, 45.207162), 41 * 60 + 17.9270278,
        CLI_VAULT, backup_size=11370 * MB, bag={"Backup Size": "11370 MB"}, tasks=TWO_TASKS_DONE,
    ),
    "recordings/cli-test_backup_job-2022__01.json": Expect(
        "InProgress", "Backup", "AzureIaaSVMJob", "clitest-vm000003",
        at(2022, 5, 13, 10, 9, 27.2801342), None, 30 * 60 + 46.1844701, CLI_VAULT,
        tasks=(("Take Snapshot", "Completed"), ("Transfer data to vault", "InProgress")),
    ),
    "recordings/cli-test_backup_job-2022__10.json": Expect(  # startTime `10:52:22.884816Z`
        "Completed", "DeleteBackupData", "AzureIaaSVMJob", "clitest-vm000003",
        at(2022, 5, 13, 10, 52, 22.884816), at(2022, 5, 13, 10, 54, 14.2952976), 60 + 51.4104816,
        CLI_VAULT, bag={"Number of Recovery Points": "1"}, tasks=(),
    ),
    # AzureWorkloadJob; entity drifts by operation (`msdb [sql-clitestvm-d]` vs `msdb`)
    "recordings/cli-test_backup_wl_sql_protection-2022__06.json": Expect(
        "Completed", "Backup", "AzureWorkloadJob", "msdb [sql-clitestvm-d]",
        at(2022, 5, 16, 7, 17, 20.3241813), at(2022, 5, 16, 7, 20, 22.8893894), 3 * 60 + 2.5652081,
        SQL_VAULT, detail="Full", workload="SQLDataBase", bag={"Data Transferred (in MB)": "20.1147"},
        tasks=(("Transfer data to vault", "Completed"),),
    ),
    "recordings/cli-test_backup_wl_sql_protection-2022__07.json": Expect(
        "Completed", "DisableBackup", "AzureWorkloadJob", "msdb",
        at(2022, 5, 16, 7, 21, 13.1647664), at(2022, 5, 16, 7, 21, 45.1494711), 31.9847047, SQL_VAULT,
        workload="SQLDataBase", tasks=(),
    ),
    "recordings/cli-test_backup_wl_sql_restore-2021__02.json": Expect(
        "Completed", "DeleteBackupData", "AzureWorkloadJob", "msdb",
        at(2021, 6, 18, 13, 15, 44.6357404), at(2021, 6, 18, 13, 16, 17.6455157), 33.0097753,
        (ZERO_SUB, "sarath-rg", "sarath-vault"), workload="SQLDataBase",
    ),
    # TimeSpan over four hours, crossing midnight
    "recordings/ps-TestWaitJobScenario-2016__01.json#value[4]": Expect(
        "Completed", "Backup", "AzureIaaSVMJob", "pstestv2vm1",
        at(2016, 10, 27, 22, 33, 47.3095217), at(2016, 10, 28, 2, 38, 21.0745864),
        4 * 3600 + 4 * 60 + 33.7650647, WAITJOB,
    ),
    "recordings/ps-TestWaitJobScenario-2016__03.json": Expect(
        "Completed", "Backup", "AzureIaaSVMJob", "pstestv2vm1",
        at(2016, 10, 28, 8, 22, 9.9651359), at(2016, 10, 28, 8, 46, 30.5984879), 24 * 60 + 20.633352,
        WAITJOB, backup_size=18266 * MB, bag={"Backup Size": "18266 MB"}, tasks=TWO_TASKS_DONE,
    ),
    # 2016 propertyBag key "JobType"; dynamicErrorMessage ""; activityId not a GUID
    "recordings/ps-TestRestoreAzureVMItemScenario-2016__04.json": Expect(
        "InProgress", "Restore", "AzureIaaSVMJob", "pra-vm2",
        at(2016, 6, 15, 7, 23, 17.979637), None, 5.5111612,
        ("f2edfd5d-5496-4683-b94f-b3588c579009", "shankcanaryrg", "shankcanary2"),
        bag={"JobType": "Recover disks", "Target Storage Account Name": "shraccanseastorv2"}, tasks=(),
    ),
    # dogfood provider `Microsoft.RecoveryServicesBVTD` is not a Recovery Services vault id: no vault
    "recordings/ps-TestBackupItemScenario-2016__06.json": Expect(
        "Completed", "Backup", "AzureIaaSVMJob", "arpittestencvm1",
        at(2016, 6, 22, 15, 13, 58.1793674), at(2016, 6, 22, 15, 39, 15.5718426), 25 * 60 + 17.3924752,
        None, backup_size=7 * MB, tasks=TWO_TASKS_DONE,
    ),
    "recordings/py-test_iaasvm_e2e-2017__07.json": Expect(
        "InProgress", "Restore", "AzureIaaSVMJob", "swaggersdktest",
        at(2017, 10, 19, 7, 47, 11.0940995), None, 11.9355965,
        (ZERO_SUB, "PythonSDKBackupTestRg", "PySDKBackupTestRsVault"),
        bag={"Job Type": "Recover disks", "Recovery point time ": "10/19/2017 7:11:28 AM"},
    ),
    # spec examples, old and TypeSpec-era
    "2017-07-01/Common/ListJobs.json#responses/200/value[1]": Expect(
        "Completed", "ConfigureBackup", "AzureIaaSVMJob", "testvm",
        at(2017, 8, 3, 5, 30, 32.4487085), at(2017, 8, 3, 5, 31, 3.7553376), 31.3066291, SWAGGER_VAULT,
        extended=False,
    ),
    "2025-08-01/Common/GetJobDetails.json#responses/200": Expect(
        "InProgress", "Backup", "AzureIaaSVMJob", "testvm",
        at(2017, 8, 3, 5, 31, 7.014604), None, 9.8782791, SWAGGER_VAULT,
        tasks=(("Take Snapshot", "InProgress"), ("Transfer data to vault", "NotStarted")),
        bag={"VM Name": "testvm"}, extended=True,
    ),
}
# fmt: on


@pytest.mark.parametrize(("ident", "want"), list(EXPECTED.items()), ids=list(EXPECTED))
def test_job_matches_hand_written_expectation(ident: str, want: Expect) -> None:
    """Selected real bodies parse to exactly the values read off the files by hand."""
    job = parse_job(corpus.get_body(ident))
    assert (job.status, job.operation, job.operation_detail) == (want.status, want.operation, want.detail)
    assert (job.job_type, job.entity) == (want.job_type, want.entity)
    assert same_instant(job.start_time, want.start), job.start_time
    assert same_instant(job.end_time, want.end), job.end_time
    assert job.duration_seconds == pytest.approx(want.duration, abs=1e-6)
    if want.vault is None:
        assert job.vault is None
    else:
        assert job.vault is not None
        got = (job.vault.subscription_id, job.vault.resource_group, job.vault.name)
        assert tuple(s.lower() for s in got) == tuple(s.lower() for s in want.vault)
    assert tuple(e.code for e in job.errors) == want.error_codes
    assert job.backup_size_bytes == want.backup_size
    assert job.progress_percent == want.progress
    assert {k: job.property_bag.get(k) for k in want.bag} == want.bag
    if want.workload is not None:
        assert job.workload_type == want.workload
    if want.tasks is not None:
        assert tuple((t.task_id, t.status) for t in job.tasks) == want.tasks
    if want.extended is not None:
        assert job.has_extended_info is want.extended


def test_expectations_cover_enough_files() -> None:
    """The hand-written table spans at least a dozen distinct corpus files."""
    assert len({ident.split("#", 1)[0] for ident in EXPECTED}) >= 12


def test_workload_failure_keeps_numeric_code_title_message_and_recommendation() -> None:
    """`errorCode: 510008` (a number) becomes "510008"; title, message and recommendation are kept."""
    job = parse_job(corpus.get_body("docs-excerpts/sql_JobGet_AzureWorkloadJob_Failed_200.http"))
    (error,) = job.errors
    assert error.code == "510008"
    assert error.title == "OperationCancelledBecauseConflictingOperationRunningUserError"
    assert error.message == (
        "Operation cancelled as a conflicting operation was already running on the same database."
    )
    assert error.recommendations == ("Please try again after sometime.",)
    (task,) = job.tasks
    assert task.duration_seconds is None  # workload tasks carry no duration at all


def test_2016_time_filter_list_has_ten_failed_jobs_with_empty_titles() -> None:
    """The 11-job 2015-03-15 list: 10 Failed with numeric codes and `errorTitle: ""`, 1 Completed."""
    page = parse_job_page(corpus.get_body(TIMEFILTER))
    assert (page.next_link, page.rejected) == (None, [])  # `"nextLink": null`
    jobs = page.jobs
    codes = [tuple(e.code for e in j.errors) for j in jobs]
    assert codes == [
        ("400001",),
        ("400001",),
        ("400002",),
        ("400001",),
        ("400160",),
        ("400001",),
        ("400001",),
        ("400002",),
        ("400136",),
        (),
        ("400002",),
    ]
    assert [j.status for j in jobs] == ["Failed"] * 9 + ["Completed", "Failed"]
    errors = [e for j in jobs for e in j.errors]
    assert {e.title for e in errors} == {""}
    assert all(len(e.recommendations) == 1 and e.message for e in errors)
    assert not any(j.has_extended_info for j in jobs)  # list items: `"extendedInfo": null`


def test_unknown_future_job_type_parses_generically() -> None:
    """A real body relabelled `AzureFutureJob`, with unknown fields added, parses like any job."""
    body = corpus.get_body("recordings/cli-test_backup_job-2022__19.json")
    props = body["properties"]
    props["jobType"] = "AzureFutureJob"
    props["quantumState"] = {"entangled": [1, 2, {"x": None}]}
    props["actionsInfo"] = [1, "Retry", None]
    props["extendedInfo"]["tasksList"].append({"taskId": "Ship to Mars", "status": "NotStarted", "eta": 7})
    props["extendedInfo"]["futureBag"] = ["a", "b"]
    body["futureTopLevel"] = True
    job = parse_job(body)
    assert job.job_type == "AzureFutureJob"
    assert (job.status, job.operation, job.entity) == ("Completed", "Backup", "clitest-vm000003")
    assert same_instant(job.end_time, at(2022, 5, 13, 10, 50, 45.207162))
    assert job.duration_seconds == pytest.approx(2477.9270278, abs=1e-6)
    assert job.backup_size_bytes == 11370 * MB
    assert [t.task_id for t in job.tasks][-1] == "Ship to Mars"


# ------------------------------------------------------------------------------------------
# operations


DOCS_OPERATION_JOB_IDS = {
    "docs-excerpts/managejobs_OperationStatus_final_jobId.json.txt": "41f3e94b-ae6b-4a20-b422-65abfcaf03e5",
    "docs-excerpts/sql_OperationStatus_final_jobId.json.txt": "c22eca5d-0c1c-48a0-a40d-69bef708d92a",
    "docs-excerpts/sql_StopProtection_OperationStatus.http": "68178d86-d564-460b-9643-829046aac1b1",
    "docs-excerpts/vms_OperationStatus_200_jobId.http": "7ddead57-bcb9-4269-ac31-6a1b57588700",
}


@pytest.mark.parametrize(
    ("ident", "job_id"), list(DOCS_OPERATION_JOB_IDS.items()), ids=list(DOCS_OPERATION_JOB_IDS)
)
def test_docs_operation_status_resolves_to_its_job(ident: str, job_id: str) -> None:
    """Each docs OperationStatus capture is a final success naming the job id written in it."""
    op = parse_operation(corpus.get_body(ident))
    assert (op.status, op.is_final, op.job_ids) == ("Succeeded", True, (job_id,))
    assert op.object_type == "OperationStatusJobExtendedInfo"


def test_docs_operation_status_table_lists_every_capture() -> None:
    """The table above names every `docs-excerpts/*OperationStatus*` file."""
    root = corpus.require_corpus()
    found = {p.relative_to(root).as_posix() for p in (root / "docs-excerpts").glob("*OperationStatus*")}
    assert found == set(DOCS_OPERATION_JOB_IDS)


def test_succeeded_operation_without_properties_names_no_job() -> None:
    """`py-test_iaasvm_e2e-2017__09`: Succeeded without `properties` gives no job id."""
    op = parse_operation(corpus.get_body("recordings/py-test_iaasvm_e2e-2017__09.json"))
    assert (op.status, op.is_final, op.job_ids, op.object_type) == ("Succeeded", True, (), None)
    assert op.operation_id == "078b0d7b-9cb7-41f5-9525-11d4e54a1de3"
    assert same_instant(op.end_time, at(2017, 10, 19, 7, 58, 34.3613949))


def test_ilr_operation_names_no_job() -> None:
    """`py-test_iaasvm_e2e-2017__10` (OperationStatusProvisionILRExtendedInfo) gives no job id."""
    op = parse_operation(corpus.get_body("recordings/py-test_iaasvm_e2e-2017__10.json"))
    assert (op.status, op.job_ids) == ("Succeeded", ())
    assert op.object_type == "OperationStatusProvisionILRExtendedInfo"


@pytest.mark.parametrize(
    ("ident", "start"),
    [
        ("recordings/cli-test_afs_backup_protection-2021__01.json", at(2021, 1, 11, 9, 53, 50.9215387)),
        ("recordings/ps-TestBackupItemScenario-2016__02.json", at(2016, 6, 22, 15, 13, 58.1793674)),
        ("recordings/cli-test_backup_job-2022__03.json", at(2022, 5, 13, 10, 7, 50.6019865)),
        # `0001-01-01T00:00:00.00000Z`: Z and a 5-digit fraction
        (
            "2025-08-01/Common/ProtectedItem_Delete_OperationStatus.json#responses/200",
            at(2017, 8, 3, 6, 52, 53.886027),
        ),
    ],
)
def test_in_progress_operation_year_one_end_time_is_none(ident: str, start: datetime) -> None:
    """An InProgress operation's `0001-01-01T00:00:00` endTime means no end time."""
    op = parse_operation(corpus.get_body(ident))
    assert (op.status, op.is_final, op.end_time, op.job_ids) == ("InProgress", False, None, ())
    assert same_instant(op.start_time, start)


def test_restore_job_id_may_equal_operation_id() -> None:
    """`cli-test_backup_job-2022__16`: the restore's jobId is its own operation id."""
    op = parse_operation(corpus.get_body("recordings/cli-test_backup_job-2022__16.json"))
    assert op.operation_id == "1272e714-b655-44b7-9c8e-dde07d320bbc"
    assert op.job_ids == ("1272e714-b655-44b7-9c8e-dde07d320bbc",)


def test_jobs_extended_info_gives_every_job_id() -> None:
    """`OperationStatusJobsExtendedInfo` (swagger 2026-02-01: jobIds[], failedJobsError{}) gives all ids."""
    op = parse_operation(
        {
            "id": "5c5545ba-b56b-42d1-abbb-0a32bace384a",
            "name": "5c5545ba-b56b-42d1-abbb-0a32bace384a",
            "status": "Succeeded",
            "startTime": "2024-04-22T06:51:02.1758655Z",
            "endTime": "2024-04-22T06:52:02.1758655Z",
            "properties": {
                "objectType": "OperationStatusJobsExtendedInfo",
                "jobIds": ["job-1", "job-2", "job-3"],
                "failedJobsError": {"job-4": "UserErrorSomething"},
            },
        }
    )
    assert op.job_ids == ("job-1", "job-2", "job-3")
    assert op.object_type == "OperationStatusJobsExtendedInfo"
    assert same_instant(op.end_time, at(2024, 4, 22, 6, 52, 2.1758655))


def test_failed_operation_keeps_error_code_and_message() -> None:
    """A Failed operation (swagger `OperationStatusError`) keeps its code and message and names no job."""
    op = parse_operation(
        {
            "id": "op-1",
            "name": "op-1",
            "status": "Failed",
            "startTime": "2022-05-13T10:07:50.6019865Z",
            "endTime": "2022-05-13T10:08:50.6019865Z",
            "error": {"code": "UserErrorBackupOperationInProgress", "message": "Another backup is running."},
        }
    )
    assert (op.status, op.is_final, op.job_ids) == ("Failed", True, ())
    assert op.error_code == "UserErrorBackupOperationInProgress"
    assert op.error_message == "Another backup is running."


@pytest.mark.parametrize("body", [None, [], "Succeeded", 7, {}, {"status": None}, {"status": ""}])
def test_non_operation_body_is_a_bad_response(body: Any) -> None:
    """A body that is not an object, or has no status, is refused with BadResponseError."""
    with pytest.raises(BadResponseError):
        parse_operation(body)


def test_rest_api_500_error_body_is_not_an_operation() -> None:
    """The transient 500 `RestApiInternalError` body (`py-test_iaasvm_e2e-2017__04`) is refused."""
    body = corpus.get_body("recordings/py-test_iaasvm_e2e-2017__04.json")
    assert body["error"]["code"] == "RestApiInternalError"
    with pytest.raises(BadResponseError):
        parse_operation(body)


@pytest.mark.parametrize(
    ("properties", "allowed"),
    [
        ([1, 2], [()]),
        ({"objectType": None, "jobId": 5}, [()]),
        ({"jobIds": [None, 3, "", "job-1", "job-1"]}, [("job-1",)]),
        pytest.param(
            {"jobIds": "job-1"},
            [(), ("job-1",)],
            id="jobIds-string",
        ),
        pytest.param(
            {"jobIds": 5},
            [()],
            id="jobIds-int",
        ),
    ],
)
def test_odd_operation_properties_never_crash(properties: Any, allowed: list[tuple[str, ...]]) -> None:
    """Malformed operation `properties` give no (or only sane) job ids instead of an exception."""
    op = parse_operation({"name": "op", "status": "Succeeded", "properties": properties})
    assert op.job_ids in allowed


# ------------------------------------------------------------------------------------------
# hostile and malformed job bodies


def hostile(**props: Any) -> dict[str, Any]:
    """A minimal valid job body with `props` merged into its properties."""
    body: dict[str, Any] = {
        "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v/backupJobs/j",
        "name": "j",
        "properties": {
            "jobType": "AzureIaaSVMJob",
            "entityFriendlyName": "vm1",
            "operation": "Backup",
            "status": "Completed",
            "startTime": "2022-05-13T10:09:27.2801342Z",
            "endTime": "2022-05-13T10:50:45.207162Z",
            "duration": "PT41M17.9270278S",
        },
    }
    body["properties"].update(props)
    return body


NOT_JOBS = [
    pytest.param(None, id="null"),
    pytest.param([hostile()], id="list"),
    pytest.param("job", id="string"),
    pytest.param(42, id="number"),
    pytest.param({"name": "j"}, id="no-properties"),
    pytest.param({"name": "j", "properties": None}, id="properties-null"),
    pytest.param({"name": "j", "properties": [{"jobType": "AzureIaaSVMJob"}]}, id="properties-list"),
    pytest.param({"name": "j", "properties": "AzureIaaSVMJob"}, id="properties-string"),
    pytest.param({"properties": {"jobType": "AzureIaaSVMJob"}}, id="no-name-no-id"),
]


@pytest.mark.parametrize("body", NOT_JOBS)
def test_body_that_is_not_a_job_is_a_bad_response(body: Any) -> None:
    """Something that is not a job at all is refused with BadResponseError, nothing else."""
    with pytest.raises(BadResponseError):
        parse_job(body)


def _bag(**extended: Any) -> dict[str, Any]:
    return hostile(extendedInfo=extended)


HUGE = 1_000_000
DEEP: Any = None
for _ in range(5_000):  # str() or repr() of it raises RecursionError
    DEEP = [DEEP]
NO_NAME = {k: v for k, v in hostile().items() if k != "name"}
MANY_KEYS = {f"k{i}": "v" * 100 for i in range(10_000)}


def case(ident: str, body: Any, check: Any) -> Any:
    """One hostile-body case."""
    return pytest.param(body, check, id=ident)


HOSTILE_CASES = [
    case("status-null", hostile(status=None), lambda j: j.status == "Unknown" and not j.is_final),
    case("status-list", hostile(status=["Completed"]), lambda j: j.status == "Unknown"),
    case("status-new", hostile(status="Paused"), lambda j: j.status == "Paused" and not j.is_final),
    case("status-lower", hostile(status="completed"), lambda j: j.status == "Completed"),
    case("jobType-null", hostile(jobType=None), lambda j: j.job_type == "Unknown"),
    case("operation-null", hostile(operation=None), lambda j: j.operation == "Unknown"),
    case("operation-number", hostile(operation=17), lambda j: j.operation == "17"),
    case("duration-garbage", hostile(duration="about an hour"), lambda j: j.duration_seconds is None),
    case("duration-object", hostile(duration={"PT": 1}), lambda j: j.duration_seconds is None),
    case("endTime-garbage", hostile(endTime="yesterday"), lambda j: j.end_time is None),
    case("endTime-number", hostile(endTime=20220513), lambda j: j.end_time is None),
    case("startTime-garbage", hostile(startTime="soon"), lambda j: j.start_time is None),
    case("errorDetails-string", hostile(errorDetails="boom"), lambda j: j.errors == ()),
    case("errorDetails-object", hostile(errorDetails={"errorCode": 1}), lambda j: j.errors == ()),
    case(
        "errorDetails-odd-items",
        hostile(errorDetails=[None, "x", 3, {"errorCode": None, "recommendations": "retry"}]),
        lambda j: [(e.code, e.recommendations) for e in j.errors] == [("", ())],
    ),
    case(
        "recommendations-odd-items",
        hostile(errorDetails=[{"errorCode": 400001, "recommendations": [None, "wait", 3]}]),
        lambda j: j.errors[0].recommendations == ("wait", "3"),
    ),
    case(
        "tasksList-non-dicts",
        _bag(tasksList=[None, "Take Snapshot", 3, [], {"taskId": "t", "status": "Completed"}]),
        lambda j: [t.task_id for t in j.tasks] == ["t"],
    ),
    case("tasksList-string", _bag(tasksList="Take Snapshot"), lambda j: j.tasks == ()),
    case(
        "task-duration-garbage",
        _bag(tasksList=[{"taskId": "t", "duration": "later"}]),
        lambda j: j.tasks[0].duration_seconds is None,
    ),
    case("extendedInfo-string", hostile(extendedInfo="none"), lambda j: not j.has_extended_info),
    case("bag-list", _bag(propertyBag=["Backup Size", "2332 MB"]), lambda j: j.property_bag == {}),
    case("size-garbage", _bag(propertyBag={"Backup Size": "lots"}), lambda j: j.backup_size_bytes is None),
    case(
        "size-key-drift",
        _bag(propertyBag={"backup size ": "1.5 GB"}),
        lambda j: j.backup_size_bytes == 3 * GB // 2,
    ),
    case("progress-bool", _bag(progressPercentage=True), lambda j: j.progress_percent is None),
    case("id-garbage", {**hostile(), "id": "not/an/arm/id"}, lambda j: j.vault is None and j.job_id == "j"),
    case("no-name", NO_NAME, lambda j: j.job_id == "j"),
    case(
        "huge-entity", hostile(entityFriendlyName="e" * HUGE), lambda j: j.entity == bounded_label("e" * HUGE)
    ),
    case("huge-name", {**hostile(), "name": "n" * HUGE}, lambda j: j.job_id == bounded_label("n" * HUGE)),
    case(
        "huge-operation",
        hostile(operation="Backup" * (HUGE // 6)),
        lambda j: j.operation == bounded_label("Backup" * (HUGE // 6)),
    ),
    case(
        "huge-operation-detail",
        hostile(operation="Backup (" + "F" * HUGE + ")"),
        lambda j: (j.operation, j.operation_detail) == ("Backup", bounded_label("F" * HUGE)),
    ),
    case("huge-status", hostile(status="S" * HUGE), lambda j: j.status == bounded_label("S" * HUGE)),
    case("huge-jobType", hostile(jobType="T" * HUGE), lambda j: j.job_type == bounded_label("T" * HUGE)),
    case("huge-duration", hostile(duration="P" * HUGE), lambda j: j.duration_seconds is None),
    case("huge-endTime", hostile(endTime="2022" * HUGE), lambda j: j.end_time is None),
    case(
        "huge-bag",
        _bag(propertyBag=MANY_KEYS),
        lambda j: list(j.property_bag) == [f"k{i}" for i in range(MAX_ITEMS)],
    ),
    # found by the property tests (tests/test_properties.py)
    case("jobType-object", hostile(jobType={"name": "AzureIaaSVMJob"}), lambda j: j.job_type == "Unknown"),
    case("entity-list", hostile(entityFriendlyName=["vm1"]), lambda j: j.entity == ""),
    case("entity-deep", hostile(entityFriendlyName=DEEP), lambda j: j.entity == ""),
    case(
        "lone-surrogate",
        hostile(entityFriendlyName="vm\ud800", status="Odd\udfff"),
        lambda j: (j.entity, j.status) == ("vm\ufffd", "Odd\ufffd"),
    ),
    case("duration-negative", hostile(duration=-5), lambda j: j.duration_seconds is None),
    case("duration-nan", hostile(duration=math.nan), lambda j: j.duration_seconds is None),
    case("duration-infinity", hostile(duration=math.inf), lambda j: j.duration_seconds is None),
    case("duration-400-digit-int", hostile(duration=10**400), lambda j: j.duration_seconds is None),
    case("duration-seconds-number", hostile(duration=90), lambda j: j.duration_seconds == 90.0),
    case(
        "endTime-past-9999-in-utc",
        hostile(endTime="9999-12-31T23:59:59-01:00"),
        lambda j: j.end_time is None,
    ),
    case("progress-nan", _bag(progressPercentage=math.nan), lambda j: j.progress_percent is None),
    case("progress-negative", _bag(progressPercentage=-1), lambda j: j.progress_percent is None),
    case("progress-over-100", _bag(progressPercentage=150), lambda j: j.progress_percent is None),
    case("progress-400-digit-int", _bag(progressPercentage=10**400), lambda j: j.progress_percent is None),
    case("progress-int", _bag(progressPercentage=40), lambda j: j.progress_percent == 40.0),
    case(
        "task-duration-nan",
        _bag(tasksList=[{"taskId": "t", "duration": math.nan}]),
        lambda j: j.tasks[0].duration_seconds is None,
    ),
    # once known bugs
    case(
        "errorDetails-number",
        hostile(errorDetails=5),
        lambda j: j.errors == (),
    ),
    case(
        "errorDetails-true",
        hostile(errorDetails=True),
        lambda j: j.errors == (),
    ),
    case(
        "tasksList-number",
        _bag(tasksList=5),
        lambda j: j.tasks == (),
    ),
    case(
        "duration-too-many-days",
        hostile(duration="P9999999999D"),
        lambda j: j.duration_seconds in (None, 9999999999 * 86400.0),
    ),
    case(
        "task-duration-too-many-days",
        _bag(tasksList=[{"taskId": "t", "status": "Completed", "duration": "P9999999999D"}]),
        lambda j: len(j.tasks) == 1,
    ),
    case(
        "size-400-digits",
        _bag(propertyBag={"Backup Size": "9" * 400 + " MB"}),
        lambda j: j.backup_size_bytes in (None, int("9" * 400) * MB),
    ),
]


@pytest.mark.parametrize(("body", "check"), HOSTILE_CASES)
def test_hostile_job_body_parses_leniently(body: dict[str, Any], check: Any) -> None:
    """Odd, wrong-typed or huge fields in a real-shaped job body are read leniently, never crash."""
    job = parse_job(body)
    assert isinstance(job, Job)
    assert check(job)


def test_long_whitespace_in_operation_parses_in_linear_time() -> None:
    """An operation text with a million blanks is normalised (quadratic backtracking would never finish; the test timeout ends it)."""
    text = "Backup" + " " * 1_000_000 + "x"
    assert normalise_operation(text) == (bounded_label(text), "")
    text = "Backup (" + " " * 1_000_000 + "Full)"
    assert normalise_operation(text) == ("Backup", "Full")


# ------------------------------------------------------------------------------------------
# bounded labels and texts


def test_label_of_at_most_max_chars_is_unchanged() -> None:
    """Text of up to MAX_LABEL_CHARS (256) characters, "" included, is its own label."""
    for text in ("", "vm1", "é" * MAX_LABEL_CHARS, "x" * MAX_LABEL_CHARS):
        assert bounded_label(text) is text


@pytest.mark.parametrize("length", [MAX_LABEL_CHARS + 1, 10_000_000])
def test_longer_label_is_its_start_an_ellipsis_and_a_digest(length: int) -> None:
    """Longer text gives its first 240 characters, "…" and the first 12 hex digits of its SHA-256: 253 in all."""
    text = "".join(chr(0x61 + i % 26) for i in range(1000)) * (length // 1000) + "z" * (length % 1000)
    label = bounded_label(text)
    assert len(label) == 240 + 1 + 12 == 253
    assert label[:240] == text[:240]
    assert label[240] == "…"
    assert label[241:] == hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def test_long_label_is_deterministic_and_long_names_stay_distinct() -> None:
    """The same long text always gives the same label; two that differ only in their last character give two."""
    one = "vm-" + "a" * 5_000 + "1"
    two = "vm-" + "a" * 5_000 + "2"
    assert bounded_label(one) == bounded_label("vm-" + "a" * 5_000 + "1")
    assert bounded_label(one) != bounded_label(two)
    assert bounded_label(one)[:241] == bounded_label(two)[:241]


def test_long_label_with_a_lone_surrogate_does_not_raise() -> None:
    """A lone surrogate (JSON may escape one) in a long text is hashed, not an encoding error."""
    assert len(bounded_label("\ud800" * 1_000)) == 253


def test_parse_job_bounds_every_label_field() -> None:
    """A 10 MB entity, job type, operation, detail, unknown status and name each become a 253-character label."""
    ten_mb = 10 * 1024 * 1024
    body = hostile(
        entityFriendlyName="e" * ten_mb,
        jobType="t" * ten_mb,
        operation="o" * ten_mb + " (" + "d" * ten_mb + ")",
        status="s" * ten_mb,
    )
    body["name"] = "n" * ten_mb
    job = parse_job(body)
    fields = (job.entity, job.job_type, job.operation, job.operation_detail, job.status, job.job_id)
    assert [len(f) for f in fields] == [253] * 6
    assert fields == tuple(bounded_label(c * ten_mb) for c in "etodsn")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("completed", "Completed"),
        (" InProgress ", "InProgress"),
        ("Paused", "Paused"),
        ("", "Unknown"),
        (None, "Unknown"),
        (7, "Unknown"),
        (["Completed"], "Unknown"),
        ("Paused" * 100, bounded_label("Paused" * 100)),
    ],
)
def test_normalise_status(raw: Any, want: str) -> None:
    """Known statuses get their canonical spelling, unknown ones are kept as sent but bounded, non-text is Unknown."""
    assert normalise_status(raw) == want
    assert len(normalise_status(raw)) <= MAX_LABEL_CHARS


def test_free_texts_are_cut_to_max_text_chars() -> None:
    """Error texts, recommendations, task ids and propertyBag keys and values keep at most 4096 characters, "…" last."""
    long = "x" * 10_000
    exact = "y" * MAX_TEXT_CHARS
    body = hostile(
        errorDetails=[
            {"errorCode": long, "errorTitle": exact, "errorString": long, "recommendations": [long]}
        ],
        extendedInfo={"tasksList": [{"taskId": long, "status": long}], "propertyBag": {long: long}},
    )
    job = parse_job(body)
    cut = "x" * (MAX_TEXT_CHARS - 1) + "…"
    (error,) = job.errors
    assert (error.code, error.title, error.message, error.recommendations) == (cut, exact, cut, (cut,))
    assert (job.tasks[0].task_id, job.tasks[0].status) == (cut, cut)
    assert dict(job.property_bag) == {cut: cut}


def test_counts_of_tasks_errors_recommendations_and_bag_entries_are_bounded() -> None:
    """Of 1,000 tasks, errors and propertyBag entries the first 100 are kept; of 1,000 recommendations the first 10."""
    body = hostile(
        errorDetails=[
            {"errorCode": i, "recommendations": [f"r{j}" for j in range(1_000)]} for i in range(1_000)
        ],
        extendedInfo={
            "tasksList": [{"taskId": f"t{i}", "status": "Completed"} for i in range(1_000)],
            "propertyBag": {f"k{i}": "v" for i in range(1_000)},
        },
    )
    job = parse_job(body)
    assert [t.task_id for t in job.tasks] == [f"t{i}" for i in range(MAX_ITEMS)]
    assert [e.code for e in job.errors] == [str(i) for i in range(MAX_ITEMS)]
    assert job.errors[0].recommendations == tuple(f"r{j}" for j in range(MAX_RECOMMENDATIONS))
    assert list(job.property_bag) == [f"k{i}" for i in range(MAX_ITEMS)]


def test_items_that_are_not_objects_do_not_count_toward_the_bound() -> None:
    """Non-object entries of tasksList and errorDetails are skipped before the first 100 objects are taken."""
    tasks = [None] * 500 + [{"taskId": f"t{i}"} for i in range(200)]
    job = parse_job(hostile(extendedInfo={"tasksList": tasks}, errorDetails=["x"] * 500 + [{"errorCode": 1}]))
    assert [t.task_id for t in job.tasks] == [f"t{i}" for i in range(MAX_ITEMS)]
    assert [e.code for e in job.errors] == ["1"]


def test_operation_keeps_the_first_distinct_job_ids_up_to_the_bound() -> None:
    """20,000 distinct job ids (one repeated) give the first 100 distinct ones, in the order sent."""
    ids = [f"job-{i}" for i in range(20_000)]
    op = parse_operation(
        {"name": "op", "status": "Succeeded", "properties": {"jobId": "job-5", "jobIds": ids}}
    )
    assert op.job_ids == ("job-5", *(f"job-{i}" for i in range(MAX_ITEMS) if i != 5))[:MAX_ITEMS]


def test_operation_texts_are_bounded() -> None:
    """An operation's unknown status and id become labels; its job ids (ARM ids) and error texts are cut to 4096."""
    long = "z" * 10_000
    op = parse_operation(
        {
            "name": long,
            "status": long,
            "properties": {"objectType": long, "jobId": long},
            "error": {"code": long, "message": long},
        }
    )
    label = bounded_label(long)
    assert (op.operation_id, op.status) == (label, label)
    assert {len(t or "") for t in (op.object_type, op.error_code, op.error_message, *op.job_ids)} == {
        MAX_TEXT_CHARS
    }


# ------------------------------------------------------------------------------------------
# list pages with items that are not jobs


GOOD_ITEM = hostile()


def test_page_sets_aside_items_that_are_not_jobs() -> None:
    """Malformed items are rejected with their index, name (or id's last segment) and reason; the rest are jobs."""
    second = {**hostile(), "name": "j2"}
    page = parse_job_page(
        {
            "value": [
                GOOD_ITEM,
                5,
                {"name": "bad-1"},
                {"id": "/subscriptions/s/backupJobs/bad-2", "properties": None},
                {"name": 7, "id": ["x"], "properties": "x"},
                {"properties": {}},
                second,
            ],
            "nextLink": "https://management.azure.com/next",
        }
    )
    assert [j.job_id for j in page.jobs] == ["j", "j2"]
    assert page.rejected == [
        RejectedItem(index=1, ident="", reason="job body is not an object but int"),
        RejectedItem(index=2, ident="bad-1", reason="job body has no 'properties' object"),
        RejectedItem(index=3, ident="bad-2", reason="job body has no 'properties' object"),
        RejectedItem(index=4, ident="", reason="job body has no 'properties' object"),
        RejectedItem(index=5, ident="", reason="job body has neither 'name' nor 'id'"),
    ]
    assert page.next_link == "https://management.azure.com/next"


def test_rejected_item_ident_is_bounded() -> None:
    """A refused item's 10 MB name is reported as a bounded label, not copied whole."""
    name = "n" * 10_000_000
    (rejected,) = parse_job_page({"value": [{"name": name}]}).rejected
    assert rejected.ident == bounded_label(name)


@pytest.mark.parametrize(
    "body",
    [None, [], "page", {}, {"value": None}, {"value": "x"}, {"value": {"0": GOOD_ITEM}}, {"nextLink": "x"}],
)
def test_page_that_is_not_a_page_is_a_bad_response(body: Any) -> None:
    """A body that is not an object with a `value` array is refused as a whole."""
    with pytest.raises(BadResponseError, match="no 'value' array"):
        parse_job_page(body)


def test_page_next_link_must_be_non_empty_text() -> None:
    """A missing, empty, null or non-string nextLink means there is no next page, even of an empty page."""
    for link in ("", None, 7, ["https://x"]):
        assert parse_job_page({"value": [GOOD_ITEM], "nextLink": link}).next_link is None
    assert parse_job_page({"value": []}) == JobPage(jobs=[], rejected=[], next_link=None)


# ------------------------------------------------------------------------------------------
# scalar parsers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:32.7287673", 32.7287673),
        ("04:04:33.7650647", 4 * 3600 + 4 * 60 + 33.7650647),
        ("00:00:00", 0.0),
        ("00:00:00.3735779", 0.3735779),
        ("1.02:00:00", 86400 + 2 * 3600),
        ("3.00:00:00.5", 3 * 86400 + 0.5),
        ("10.01:02:03.25", 10 * 86400 + 3600 + 2 * 60 + 3.25),
        ("PT30M46.1844701S", 30 * 60 + 46.1844701),
        ("PT0S", 0.0),
        ("PT9.8782791S", 9.8782791),
        ("PT12.4S", 12.4),
        ("PT4H", 4 * 3600),
        ("P2D", 2 * 86400),
        ("P1DT2H3M4.5S", 86400 + 2 * 3600 + 3 * 60 + 4.5),
        ("P1DT0.5H", 86400 + 1800),
        (" PT1M31.7816139S ", 91.7816139),
    ],
)
def test_parse_duration_reads_timespan_and_iso(text: str, seconds: float) -> None:
    """.NET TimeSpan (with/without days and fractions) and ISO 8601 durations give seconds."""
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        *("", "garbage", "P", "PT", "12 minutes", "00:00", "1.2.3", "PT-5S", "T5M", None, [], {}, True),
        # found by the property tests: numbers that are no duration
        *(-1, -0.5, math.nan, math.inf, -math.inf, 10**400, 2**1024, 101 * 365 * 86400),
    ],
)
def test_parse_duration_garbage_is_none(value: Any) -> None:
    """Anything that is not a duration gives None."""
    assert parse_duration(value) is None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("P9999999999D", id="iso-days-beyond-timedelta"),
        pytest.param("PT" + "9" * 400 + "S", id="iso-400-digits"),
        pytest.param("9" * 400 + ".00:00:00", id="timespan-400-digit-days"),
        pytest.param("9" * 5000 + ".00:00:00", id="timespan-5000-digit-days"),
    ],
)
def test_parse_duration_out_of_range_is_none_or_finite(text: str) -> None:
    """An absurdly large duration gives None (or a finite float), never an exception."""
    result = parse_duration(text)
    assert result is None or math.isfinite(result)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2016-04-14T09:44:43.8893946Z", at(2016, 4, 14, 9, 44, 43.8893946)),  # 7-digit fraction
        ("2022-05-13T10:52:22.884816Z", at(2022, 5, 13, 10, 52, 22.884816)),  # trailing zero dropped
        ("2022-05-13T10:50:45.207162Z", at(2022, 5, 13, 10, 50, 45.207162)),
        ("2024-04-22T06:49:59.064024Z", at(2024, 4, 22, 6, 49, 59.064024)),
        ("2018-05-21T08:35:40Z", at(2018, 5, 21, 8, 35, 40)),
        ("2022-05-13T10:09:27.2801342", at(2022, 5, 13, 10, 9, 27.2801342)),  # no Z: UTC
        ("2018-05-21T10:35:40.9488967+02:00", at(2018, 5, 21, 8, 35, 40.9488967)),
        ("2018-05-21T03:05:40-05:30", at(2018, 5, 21, 8, 35, 40)),
        ("2002-01-01T00:00:00Z", at(2002, 1, 1, 0, 0, 0)),  # first year that counts as a time
        ("0001-01-01T00:00:00", None),  # operation bodies, no Z
        ("0001-01-01T00:00:00Z", None),
        ("0001-01-01T00:00:00.00000Z", None),
        ("2001-01-01T00:00:00Z", None),  # 2016-05-01 running jobs
        ("2001-01-01T00:00:00", None),
        ("", None),
        ("   ", None),
        ("garbage", None),
        ("2018-13-45T00:00:00Z", None),
        ("2018-05-21T25:00:00Z", None),
        (None, None),
        (1526891740, None),
        # found by the property tests: past year 9999 once converted to UTC
        ("9999-12-31T23:59:59-01:00", None),
        ("9999-12-31T23:00:00+01:00", at(9999, 12, 31, 22, 0, 0)),
        ("0001-01-01T00:00:00+01:00", None),
        ("2002-01-01T00:30:00+01:00", None),  # 2001-12-31 in UTC: before the first year that counts
    ],
)
def test_parse_time(text: Any, want: datetime | None) -> None:
    """ARM timestamps give aware UTC datetimes; sentinels before 2002 and garbage give None."""
    assert same_instant(parse_time(text), want)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2332 MB", 2332 * MB),
        ("11370 MB", 11370 * MB),
        ("18266 MB", 18266 * MB),
        ("7 MB", 7 * MB),
        ("1.5 GB", 3 * GB // 2),
        ("0 MB", 0),
        ("junk", None),
        ("", None),
        ("MB", None),
        ("-5 MB", None),
        ("1,024 MB", None),
        ("5 XB", None),
        (None, None),
    ],
)
def test_parse_size(text: Any, want: int | None) -> None:
    """propertyBag sizes (`2332 MB`, binary units) give bytes; anything else gives None."""
    assert parse_size(text) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Backup (Full)", ("Backup", "Full")),
        ("Backup (Log)", ("Backup", "Log")),
        ("Backup (Copy Only Full)", ("Backup", "Copy Only Full")),
        ("Backup", ("Backup", "")),
        ("ConfigureBackup", ("ConfigureBackup", "")),
        ("Restore", ("Restore", "")),
        ("DeleteBackupData", ("DeleteBackupData", "")),
        ("  Backup  (Differential) ", ("Backup", "Differential")),
        ("Cross Region Restore", ("Cross Region Restore", "")),
        ("(Full)", ("(Full)", "")),
        # found by the property tests: not text, or no text
        ("", ("Unknown", "")),
        ("   ", ("Unknown", "")),
        (None, ("Unknown", "")),
        (17, ("17", "")),
        ({"name": "Backup"}, ("Unknown", "")),
    ],
)
def test_normalise_operation(raw: Any, want: tuple[str, str]) -> None:
    """Free-text operations split into the metric label and the detail in parentheses; no text is Unknown."""
    assert normalise_operation(raw) == want


@pytest.mark.parametrize(
    ("arm_id", "want"),
    [
        (
            "/Subscriptions/04cf684a-d41f-4550-9f70-7708a3a2283b/resourceGroups/phaniktRSV/providers/"
            "Microsoft.RecoveryServices/vaults/phaniktRs1/backupJobs/a5e97e69-50d8-4861-886d-646522b81f52",
            ("04cf684a-d41f-4550-9f70-7708a3a2283b", "phaniktRSV", "phaniktRs1"),
        ),
        (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/Default-RG/providers/"
            "microsoft.recoveryservices/vaults/abdemovault/backupJobs/7ddead57",
            ("00000000-0000-0000-0000-000000000000", "Default-RG", "abdemovault"),
        ),
        (
            "/SUBSCRIPTIONS/ABC/RESOURCEGROUPS/rg/PROVIDERS/MICROSOFT.RECOVERYSERVICES/VAULTS/v",
            ("abc", "rg", "v"),
        ),
        (
            "subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v/",
            ("s", "rg", "v"),
        ),
        pytest.param(
            "/subscriptions/s/resourceGroups/vaults/providers/Microsoft.RecoveryServices/vaults/v/backupJobs/j",
            ("s", "vaults", "v"),
            id="resource-group-named-vaults",
        ),
    ],
)
def test_vault_ref_from_arm_id(arm_id: str, want: tuple[str, str, str]) -> None:
    """Vault ids parse case-insensitively (`/Subscriptions/`, lower-case provider, upper-case segments)."""
    vault = VaultRef.from_arm_id(arm_id)
    assert (vault.subscription_id.lower(), vault.resource_group, vault.name) == want


def test_vault_ref_key_ignores_case() -> None:
    """Two spellings of one vault id share a key."""
    a = VaultRef.from_arm_id(
        "/Subscriptions/ABC/resourceGroups/RG/providers/Microsoft.RecoveryServices/vaults/V"
    )
    b = VaultRef.from_arm_id(
        "/subscriptions/abc/resourcegroups/rg/providers/microsoft.recoveryservices/vaults/v"
    )
    assert a.key == b.key


@pytest.mark.parametrize(
    "arm_id",
    [
        "",
        "garbage",
        "/subscriptions/s/resourceGroups/rg",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DataProtection/vaults/v/backupJobs/j",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServicesBVTD/vaults/v/backupJobs/j",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults",
    ],
)
def test_vault_ref_rejects_other_ids(arm_id: str) -> None:
    """Ids that do not name a Recovery Services vault or a Backup vault raise ValueError."""
    with pytest.raises(ValueError, match="not the id of a Recovery Services vault or a Backup vault"):
        VaultRef.from_arm_id(arm_id)
