"""The Grafana dashboard against the JSON schemas of the Grafana it is shipped for.

The dashboard names no Grafana version itself (the `__requires` of an exported dashboard is no part
of the dashboard kind, whose schema forbids keys it does not know); the project runs it on the
Grafana that deploy/compose/compose.yaml pins, 11.5.2. The schemas in tests/data/grafana/ are those of
Grafana 11.5.x, exactly that release line: the dashboard kind and the Prometheus query, as the Grafana
Foundation SDK generates them from Grafana's CUE kinds (SOURCES.md there).

The generator gets a few types wrong (CUE's `_`, any value, comes out as "object"), and the 11.5 kind
lacks a key Grafana itself writes. Those places are corrected here, in memory, each with its reason;
every correction must still be needed, so the list cannot outlive its cause.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.test_dashboard_queries import panels

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "backup-watcher-dashboard.json"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
SCHEMAS = ROOT / "tests" / "data" / "grafana"
DASHBOARD_SCHEMA = SCHEMAS / "dashboard.jsonschema.json"
PROMETHEUS_SCHEMA = SCHEMAS / "prometheus.jsonschema.json"
# The release line the schemas were generated for (the SDK branch SOURCES.md names).
SCHEMA_GRAFANA = "11.5"


@dataclass(frozen=True)
class Correction:
    """One place where the generated schema says less or other than Grafana's kind."""

    pointer: str  # JSON pointer into the dashboard schema; the last key may be new
    replacement: dict[str, Any]  # what stands there instead (its description is kept)
    reason: str


CORRECTIONS = (
    Correction(
        "/definitions/Threshold/properties/value",
        {"type": ["number", "null"]},
        "Grafana writes null for a base step (-Infinity), as the field's own description says; "
        "the SDK's later schemas allow null",
    ),
    Correction(
        "/definitions/MatcherConfig/properties/options",
        {},
        "CUE `options?: _` is any value: a byName matcher's options is a field name, a string "
        "(grafana/grafana#121296)",
    ),
    Correction(
        "/definitions/DynamicConfigValue/properties/value",
        {},
        "CUE `value?: _` is any value: an override sets a unit (a string) or mappings (a list) "
        "(grafana/grafana#121394)",
    ),
    Correction(
        "/definitions/VariableModel/properties/query/oneOf/1/additionalProperties",
        {},
        "CUE `query?: string | {...}` leaves the object's values open; Grafana's Prometheus "
        "variable editor writes {query, refId}, both strings",
    ),
    Correction(
        "/definitions/VariableModel/properties/definition",
        {"type": "string"},
        "Grafana writes `definition` (the query as the variable list shows it) for every query "
        "variable; the 11.5 kind omits it, the SDK's later schemas define it as a string",
    ),
)


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def corrected(schema: dict[str, Any], corrections: tuple[Correction, ...]) -> dict[str, Any]:
    """A copy of `schema` with each correction in place; KeyError if a pointer's parent is gone."""
    fixed = copy.deepcopy(schema)
    for correction in corrections:
        *path, last = correction.pointer.strip("/").split("/")
        node: Any = fixed
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        old = node.get(last, {})
        kept = {"description": old["description"]} if "description" in old else {}
        node[last] = {**kept, **correction.replacement}
    return fixed


def errors(schema: dict[str, Any], instance: Any) -> list[str]:
    """Every error, with where in the instance it is, and for a failed oneOf why each branch failed."""
    found = []
    for error in jsonschema.Draft7Validator(schema).iter_errors(instance):
        where = "/".join(str(part) for part in error.absolute_path)
        found.append(f"{where}: {error.message[:200]}")
        found.extend(
            f"{where} ({'/'.join(map(str, e.schema_path))}): {e.message[:200]}" for e in error.context
        )
    return found


def test_schemas_are_the_copied_files() -> None:
    """Each schema file is byte for byte the git blob SOURCES.md names, and a valid draft-07 schema."""
    sources = (SCHEMAS / "SOURCES.md").read_text(encoding="utf-8")
    for path in (DASHBOARD_SCHEMA, PROMETHEUS_SCHEMA):
        row = next(line for line in sources.splitlines() if line.startswith(f"| {path.name} |"))
        blob = re.search(r"blob ([0-9a-f]{40})", row)
        assert blob, row
        assert _git_blob_id(path) == blob.group(1), f"{path.name} differs from the copied file"
        schema = _load(path)
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        jsonschema.Draft7Validator.check_schema(schema)


def test_schemas_are_for_the_grafana_the_dashboard_ships_with() -> None:
    """Compose runs the Grafana release line of the schemas, and the dashboard has that line's schemaVersion."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    image = compose["services"]["grafana"]["image"]
    version = re.fullmatch(r"grafana/grafana(?:-oss)?:(\d+\.\d+)\.\d+", image)
    assert version, image
    assert version.group(1) == SCHEMA_GRAFANA, (
        f"compose runs {image}: copy the schemas of Grafana {version.group(1)} into tests/data/grafana"
    )
    current = _load(DASHBOARD_SCHEMA)["definitions"]["Dashboard"]["properties"]["schemaVersion"]["default"]
    assert _load(DASHBOARD)["schemaVersion"] == current


def test_dashboard_passes_the_dashboard_schema() -> None:
    """The dashboard, rows and the panels in them included, is valid against Grafana 11.5's dashboard kind."""
    schema = corrected(_load(DASHBOARD_SCHEMA), CORRECTIONS)
    assert errors(schema, _load(DASHBOARD)) == []


@pytest.mark.parametrize("correction", CORRECTIONS, ids=lambda c: c.pointer.rsplit("/", 2)[-2])
def test_each_schema_correction_is_still_needed(correction: Correction) -> None:
    """Without this one correction the dashboard fails the schema: the list names no cause that is gone."""
    others = tuple(c for c in CORRECTIONS if c is not correction)
    schema = corrected(_load(DASHBOARD_SCHEMA), others)
    assert errors(schema, _load(DASHBOARD)), f"no longer needed ({correction.reason}): remove it"


def test_every_query_passes_the_prometheus_query_schema() -> None:
    """Every panel query is a Prometheus query as Grafana 11.5's Prometheus kind defines one."""
    schema = _load(PROMETHEUS_SCHEMA)
    targets = [(panel["title"], t) for panel in panels(_load(DASHBOARD)) for t in panel.get("targets", [])]
    assert targets
    for title, target in targets:
        assert target["datasource"]["type"] == "prometheus", title
        assert errors(schema, target) == [], title
