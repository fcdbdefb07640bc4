"""Read the Azure Backup corpus the tests carry (`tests/data/azure`), for tests.

The corpus holds real response bodies in three shapes (see its SOURCES.md):

* spec examples `<api-version>/**/*.json`: `{"parameters": ..., "responses": {"200": {"body": ...}}}`;
* recordings `recordings/*.json`: `{"source", "request", "status", "headers", "body" | "body_text"}`;
* docs excerpts `docs-excerpts/*.http` (status line or `Status Code:` block, headers, blank line,
  JSON body) and `docs-excerpts/*.json.txt` (a JSON body). The docs captures end with a stray `}`:
  this loader trims it; the product never has to.

`swagger-excerpt-*.json` (schemas, not traffic) and `*.md` are not bodies. Any other file kind makes
the loader raise `CorpusFormatError`, so a new file can never be skipped silently.

Public API (`from tests import corpus`; pyproject puts the repository root on pytest's `pythonpath`):

* `CORPUS`: where the corpus is, `tests/data/azure` in this checkout.
* `iter_responses()`: every recorded/example response as `Response(ident, status, headers, body)`.
* `iter_job_bodies()`, `iter_operation_bodies()`, `iter_list_bodies()`: `(ident, body)` pairs.
  Idents read like `recordings/ps-TestGetJobsTimeFilter-2016__01.json#value[3]` or
  `2017-07-01/Common/ListJobs.json#responses/200/value[1]`.
* `get_body(ident)`: the body with that ident.
* `is_job_body`, `is_operation_body`, `is_list_body`: the rules the iterators above sort bodies by
  (a job has `properties.jobType`; an operation has `status` and is no job; a list has `value[]`).
* `data_files()`: the relative paths of every body-bearing file; `require_corpus()`: the directory.
* `load_http(path)`: `(status, headers, body)` of a docs `.http` capture.
* `params(source)`: `pytest.param(ident, body, id=ident)` for each pair of `source()`, to parametrize.

Bodies are deep copies: a test may change them freely. A corpus that is missing is an error
(`CorpusMissingError`), never a skip: the data is part of the repository.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple

import pytest

DATA = Path(__file__).resolve().parent / "data"
CORPUS: Path = DATA / "azure"


class CorpusMissingError(RuntimeError):
    """The corpus directory is not where the tests look for it."""


class CorpusFormatError(ValueError):
    """A corpus file the loader does not know how to read."""


class Response(NamedTuple):
    """One HTTP response of the corpus; `body` is None when there is none."""

    ident: str
    status: int
    headers: dict[str, str]
    body: Any


def _root() -> Path:
    if not CORPUS.is_dir():
        raise CorpusMissingError(
            f"Azure corpus not found at {CORPUS}: it belongs to the repository (tests/data)"
        )
    return CORPUS


def require_corpus() -> Path:
    """The corpus directory; CorpusMissingError when it is missing."""
    return _root()


# ------------------------------------------------------------------------------------------
# file formats


def _loads_tolerant(text: str, where: str) -> Any:
    """One JSON value; a stray closing brace after it (docs captures) is trimmed, nothing else."""
    text = text.strip()
    if not text:
        return None
    value, end = json.JSONDecoder().raw_decode(text)
    rest = text[end:].strip()
    if rest not in ("", "}"):
        raise CorpusFormatError(f"{where}: unexpected text after the JSON body: {rest[:40]!r}")
    return value


_STATUS_BY_PHRASE = {s.phrase.lower(): s.value for s in HTTPStatus}


def _status_code(text: str, where: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return _STATUS_BY_PHRASE[text.lower()]
    except KeyError:
        raise CorpusFormatError(f"{where}: unknown status {text!r}") from None


def _headers(lines: Iterable[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if line.strip():
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    return headers


def load_http(path: Path | str) -> tuple[int, dict[str, str], Any]:
    """A docs `.http` capture as (status, headers, body); body None when the capture has none.

    Two layouts occur: `HTTP/1.1 200 OK` + headers + blank line + body, and PowerShell's
    `Status Code:` / `Headers:` / `Body:` blocks.
    """
    path = Path(path)
    where = str(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("HTTP/"):
        try:
            blank = next(i for i, line in enumerate(lines) if not line.strip())
        except StopIteration:
            blank = len(lines)
        status = _status_code(lines[0].split()[1], where)
        body_text = "\n".join(lines[blank + 1 :])
        return status, _headers(lines[1:blank]), _loads_tolerant(body_text, where)
    if lines and lines[0].strip() == "Status Code:":
        sections: dict[str, list[str]] = {}
        current = None
        for line in lines:
            if line.strip() in ("Status Code:", "Headers:", "Body:"):
                current = line.strip()
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
        status_lines = [s for s in sections.get("Status Code:", []) if s.strip()]
        if len(status_lines) != 1:
            raise CorpusFormatError(f"{where}: no single status under 'Status Code:'")
        return (
            _status_code(status_lines[0], where),
            _headers(sections.get("Headers:", [])),
            _loads_tolerant("\n".join(sections.get("Body:", [])), where),
        )
    raise CorpusFormatError(f"{where}: neither an HTTP status line nor a 'Status Code:' block")


def _is_schema(path: Path) -> bool:
    if not path.name.endswith(".json"):
        return False
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    return isinstance(data, dict) and "swagger" in data


def _responses_of(path: Path, rel: str) -> Iterator[Response]:
    name = path.name
    if name.endswith(".http"):
        status, headers, body = load_http(path)
        yield Response(rel, status, headers, body)
    elif name.endswith(".json.txt"):
        yield Response(rel, 200, {}, _loads_tolerant(path.read_text(encoding="utf-8"), rel))
    elif name.endswith(".json"):
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        if isinstance(data, dict) and {"request", "status"} <= data.keys():  # a recording
            if "body" in data:
                body = data["body"]
            else:
                text = str(data.get("body_text") or "")
                try:
                    body = _loads_tolerant(text, rel)
                except ValueError:
                    body = text
            yield Response(rel, int(data["status"]), dict(data.get("headers") or {}), body)
        elif isinstance(data, dict) and isinstance(data.get("responses"), dict):  # a spec example
            for code, response in data["responses"].items():
                response = response or {}
                headers = {k: str(v) for k, v in (response.get("headers") or {}).items()}
                yield Response(f"{rel}#responses/{code}", int(code), headers, response.get("body"))
        else:
            raise CorpusFormatError(f"{rel}: a JSON file that is neither a recording nor an example")
    else:
        raise CorpusFormatError(f"{rel}: unknown corpus file kind (teach tests/corpus.py to read it)")


def data_files() -> list[str]:
    """Relative paths of every body-bearing file (all but `*.md` and swagger excerpts)."""
    root = _root()
    return [
        p.relative_to(root).as_posix()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".md" and not _is_schema(p)
    ]


@functools.cache
def _all_responses(root: Path) -> tuple[Response, ...]:
    return tuple(r for rel in data_files() for r in _responses_of(root / rel, rel))


def iter_responses() -> Iterator[Response]:
    """Every response of every data file, spec examples one per status code."""
    for response in _all_responses(_root()):
        yield response._replace(body=copy.deepcopy(response.body))


# ------------------------------------------------------------------------------------------
# bodies


def is_job_body(value: Any) -> bool:
    """An object with `properties.jobType`."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("properties"), dict)
        and "jobType" in value["properties"]
    )


def is_list_body(value: Any) -> bool:
    """A list page: an object with a `value` array."""
    return isinstance(value, dict) and isinstance(value.get("value"), list)


def is_operation_body(value: Any) -> bool:
    """An operation status: an object with `status` that is not a job."""
    return isinstance(value, dict) and "status" in value and not is_job_body(value)


def _child(ident: str, fragment: str) -> str:
    return f"{ident}/{fragment}" if "#" in ident else f"{ident}#{fragment}"


def _job_pairs() -> Iterator[tuple[str, dict[str, Any]]]:
    for response in _all_responses(_root()):
        if is_job_body(response.body):
            yield response.ident, response.body
        elif is_list_body(response.body):
            for i, item in enumerate(response.body["value"]):
                if is_job_body(item):
                    yield _child(response.ident, f"value[{i}]"), item


def _copies(pairs: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    for ident, body in pairs:
        yield ident, copy.deepcopy(body)


def iter_job_bodies() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every job body: GET bodies and the job items of list pages."""
    return _copies(_job_pairs())


def iter_operation_bodies() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every operation-status body (operationsStatus / backupOperations answers, examples, docs)."""
    return _copies((r.ident, r.body) for r in _all_responses(_root()) if is_operation_body(r.body))


def iter_list_bodies() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every list page (`backupJobs` list answers)."""
    return _copies((r.ident, r.body) for r in _all_responses(_root()) if is_list_body(r.body))


@functools.cache
def _by_ident(root: Path) -> dict[str, Any]:
    bodies = {r.ident: r.body for r in _all_responses(root)}
    bodies.update(_job_pairs())
    return bodies


def get_body(ident: str) -> Any:
    """The body of the response, or the list item, named by `ident`."""
    bodies = _by_ident(require_corpus())
    if ident not in bodies:
        raise KeyError(f"no body {ident!r} in the corpus at {CORPUS}")
    return copy.deepcopy(bodies[ident])


def params(source: Callable[[], Iterable[tuple[str, Any]]]) -> list[Any]:
    """`pytest.param(ident, body, id=ident)` per pair of `source()`."""
    return [pytest.param(ident, body, id=ident) for ident, body in source()]
