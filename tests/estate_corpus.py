"""Read the estate corpus the tests carry (`tests/data/azure-estate`): Backup vault jobs, vault listings,
protected items, backup instances, recovery points and Resource Graph rows.

Its files come in several shapes (spec examples, recordings transcribed step by step, Docs bodies keyed
by what they are; see its SOURCES.md), so bodies are found by what they are, wherever they sit: every
JSON object of every `.json` file is looked at, and its ident is the file and the JSON path to it
(`dataprotection-jobs/x.json#responses/200/body/value[1]`). A kind of body is recognised by the keys
that only it has; `tests/test_dataprotection.py` checks that every occurrence of such a key in the
files is found, so a new file can never be skipped silently.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ESTATE: Path = Path(__file__).resolve().parent / "data" / "azure-estate"

Body = dict[str, Any]


def json_files() -> list[Path]:
    """Every JSON file of the estate corpus (a missing folder fails here, never skips)."""
    if not ESTATE.is_dir():
        raise FileNotFoundError(f"the estate corpus is missing at {ESTATE}: it belongs to the repository")
    return sorted(ESTATE.rglob("*.json"))


def _walk(value: Any, where: str) -> Iterator[tuple[str, Body]]:
    if isinstance(value, dict):
        yield where, value
        for key, child in value.items():
            yield from _walk(child, f"{where}/{key}" if "#" in where else f"{where}#{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk(child, f"{where}[{i}]")


@functools.cache
def _objects() -> tuple[tuple[str, Body], ...]:
    out: list[tuple[str, Body]] = []
    for path in json_files():
        data = json.loads(path.read_text(encoding="utf-8"))
        out.extend(_walk(data, path.relative_to(ESTATE).as_posix()))
    return tuple(out)


def bodies(predicate: Callable[[Body], bool]) -> list[tuple[str, Body]]:
    """(ident, deep copy) of every object that `predicate` accepts."""
    return [(ident, copy.deepcopy(body)) for ident, body in _objects() if predicate(body)]


def _props(body: Body) -> Body:
    props = body.get("properties")
    return props if isinstance(props, dict) else {}


def is_backup_vault_job(body: Body) -> bool:
    """A Backup vault job: its properties carry `operationCategory`."""
    return "operationCategory" in _props(body)


def is_recovery_services_job(body: Body) -> bool:
    """A Recovery Services job: its properties carry `jobType`."""
    return "jobType" in _props(body)


def key_occurrences(key: str) -> int:
    """How many times `"key":` appears in the corpus' JSON files: what a loader must find."""
    return sum(path.read_text(encoding="utf-8").count(f'"{key}":') for path in json_files())


def params(pairs: list[tuple[str, Body]]) -> list[Any]:
    """`pytest.param(ident, body, id=ident)` per pair."""
    return [pytest.param(ident, body, id=ident) for ident, body in pairs]
