"""Config validation: the tests/configs table, durations, the shipped configs, the effective config.

Each `tests/configs/invalid-*.yml` carries its expected problems as leading comments, one per problem:
`# expect: LOCATION: MESSAGE FRAGMENT` (`# expect: FRAGMENT` for a problem of the whole file). The case
passes when loading it reports exactly those problems, each at exactly that location.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
import trustme
import yaml
from pydantic import BaseModel

from watcher.config import (
    AzureConfig,
    Config,
    DiscoveryConfig,
    HttpConfig,
    LoggingConfig,
    PollConfig,
    StoreConfig,
    VaultConfig,
    effective_config,
    format_duration,
    load_config,
    parse_duration,
    validate_config,
)
from watcher.demo import DEMO_TOKEN_ENV
from watcher.errors import ConfigError
from watcher.sim import demo_estate

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).resolve().parent / "configs"
EXAMPLE = ROOT / "config" / "example.yaml"
DEMO = ROOT / "config" / "demo.yaml"
INVALID = sorted(CASES.glob("invalid-*.yml"))
VALID = sorted(CASES.glob("valid-*.yml"))
SECTIONS: dict[str, type[BaseModel]] = {
    "azure": AzureConfig,
    "poll": PollConfig,
    "discovery": DiscoveryConfig,
    "store": StoreConfig,
    "http": HttpConfig,
    "logging": LoggingConfig,
}
VAULT = {
    "subscription_id": "00000000-0000-0000-0000-000000000000",
    "resource_group": "rg-backup",
    "name": "vault-prod",
    "discover": True,
}


def _expectations(path: Path) -> list[tuple[str, str]]:
    """(location, fragment) from the case's `# expect:` lines; location "" for the whole file."""
    text = path.read_bytes().decode("utf-8", "replace")
    out = []
    for want in re.findall(r"^# expect: (.*)$", text, re.MULTILINE):
        loc, sep, fragment = want.partition(": ")
        out.append((loc, fragment) if sep else ("", want))
    return out


def _problems(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def _write(tmp_path: Path, data: Any, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# -- the table of cases --------------------------------------------------------------------------


def test_case_folder_holds_only_named_cases() -> None:
    """Every file in tests/configs is a `valid-*.yml` or `invalid-*.yml` case, so none is skipped."""
    stray = [p.name for p in CASES.iterdir() if not re.fullmatch(r"(in)?valid-[a-z0-9-]+\.yml", p.name)]
    assert stray == []
    assert len(INVALID) >= 30
    assert len(VALID) >= 5


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_case_reports_exactly_its_problems_at_their_locations(path: Path) -> None:
    """An invalid case fails with exactly the problems its `# expect:` lines name, each at its location."""
    expected = _expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    err = _problems(path)
    remaining = list(err.details)
    for loc, fragment in expected:
        match = next((d for d in remaining if d[0] == loc and fragment in d[1]), None)
        assert match is not None, f"{path.name}: no problem {loc!r}: {fragment!r} among {err.lines()}"
        remaining.remove(match)
        if loc:
            assert any(line.startswith(f"{path}: {loc}: ") for line in err.lines())
    assert remaining == [], f"{path.name}: problems not expected: {remaining}"
    assert all("\n" not in line for line in err.lines())


@pytest.mark.parametrize("path", [*VALID, EXAMPLE, DEMO], ids=lambda p: p.stem)
def test_valid_config_round_trips_through_its_effective_config(path: Path, tmp_path: Path) -> None:
    """A valid file loads, and the effective config check-config prints loads back to the same config."""
    config = load_config(path)
    printed = yaml.safe_dump(effective_config(config), sort_keys=False)
    again = load_config(_write(tmp_path, printed, "effective.yml"))
    assert again == config
    assert effective_config(again) == effective_config(config)


def test_valid_cases_mean_what_they_say() -> None:
    """The valid cases' spellings turn into the values a user meant."""
    durations = load_config(CASES / "valid-durations.yml")
    assert durations.poll.interval == 90
    assert durations.poll.discovery_interval == 5400
    assert durations.poll.request_timeout == 2.5
    assert durations.poll.backoff_initial == 0.25
    assert durations.poll.backoff_max == 90
    assert durations.discovery.lookback == 86400

    empty = load_config(CASES / "valid-empty-sections.yml")
    assert (empty.azure, empty.poll, empty.store) == (AzureConfig(), PollConfig(), StoreConfig())
    assert empty.vaults[0].jobs == []

    assert load_config(CASES / "valid-utf8-bom.yml") == load_config(CASES / "valid-utf16-bom.yml")

    anchors = load_config(CASES / "valid-anchors.yml")
    assert [v.name for v in anchors.vaults] == ["vault-a", "vault-b"]
    assert anchors.vaults[1].resource_group == "rg-backup"

    sim = load_config(CASES / "valid-simulator.yml")
    assert (sim.logging.format, sim.logging.level) == ("console", "warning")

    full = load_config(CASES / "valid-full.yml")
    assert full.azure.api_version == "2017-07-01"  # unquoted, YAML would make it a date
    assert full.azure.management_endpoint == "https://proxy.example.org/arm"
    assert full.vaults[1].subscription_id == "b71e9d04-6a2c-4f38-8e15-93c0d7a2f5b6"
    for section, model in SECTIONS.items():
        assert getattr(full, section) != model(), f"valid-full.yml leaves {section} at its defaults"


# -- files that cannot carry an `# expect:` comment -------------------------------------------------


def test_zero_byte_file_is_reported_empty(tmp_path: Path) -> None:
    """A 0-byte file is one clear problem, not a crash on None."""
    path = _write(tmp_path, "")
    assert _problems(path).lines() == [
        f"{path}: the file is empty (no settings, only comments or blank lines)"
    ]


def test_missing_file_and_directory_are_one_line_each(tmp_path: Path) -> None:
    """A path that does not exist, or is a directory, is named in one line."""
    missing = tmp_path / "nope.yml"
    assert _problems(missing).lines() == [f"{missing}: no such file"]
    assert _problems(tmp_path).lines() == [f"{tmp_path}: is a directory, not a config file"]


def test_validating_a_mapping_reports_locations_without_lines() -> None:
    """validate_config (demo, tests) works on a dict: locations, no line numbers, every problem."""
    with pytest.raises(ConfigError) as info:
        validate_config({"poll": {"interval": "soon"}, "vaults": []}, "demo")
    assert info.value.details == [
        (
            "poll.interval",
            "expected a duration such as 30s, 5m, 1h, 1d, 1h30m or a number of seconds, got 'soon'",
        ),
        ("vaults", "at least one of subscriptions and vaults is needed"),
    ]


def test_vaults_may_be_absent_where_not_needed() -> None:
    """history and track load a config without vaults; the daemon does not."""
    assert validate_config({}, "x", require_vaults=False).vaults == []
    with pytest.raises(ConfigError, match="at least one of subscriptions and vaults is needed"):
        validate_config({}, "x")


def test_ca_bundle_must_be_a_pem_file(tmp_path: Path) -> None:
    """ca_bundle accepts a PEM CA file and rejects a non-PEM file and a directory, naming the path."""
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    config = validate_config({"azure": {"ca_bundle": str(ca)}, "vaults": [VAULT]}, "x")
    assert config.azure.ca_bundle == ca
    not_pem = _write(tmp_path, "not a certificate\n", "not-pem.pem")
    for bundle, problem in ((not_pem, "has no PEM certificates"), (tmp_path, "is not a file")):
        with pytest.raises(ConfigError) as info:
            validate_config({"azure": {"ca_bundle": str(bundle)}, "vaults": [VAULT]}, "x")
        assert info.value.details == [("azure.ca_bundle", f"CA bundle {problem}: {bundle}")]


def test_home_is_expanded_in_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`~/...` in store.path means the user's home, as in a shell."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = validate_config({"store": {"path": "~/state.sqlite3"}, "vaults": [VAULT]}, "x")
    assert config.store.path == tmp_path / "state.sqlite3"


def test_vault_discover_overrides_the_global_switch() -> None:
    """A vault's `discover` wins over discovery.enabled; unset, it follows it."""
    config = validate_config(
        {
            "discovery": {"enabled": True},
            "vaults": [
                {**VAULT, "name": "vault-a", "discover": None},
                {
                    **VAULT,
                    "name": "vault-b",
                    "discover": False,
                    "jobs": ["41f3e94b-ae6b-4a20-b422-65abfcaf03e5"],
                },
            ],
        },
        "x",
    )
    assert [config.discovers(v) for v in config.vaults] == [True, False]


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("250ms", 0.25),
        ("1h30m", 5400),
        ("1d12h", 129600),
        ("2.5m", 150),
        (" 45s ", 45),
        ("90", 90),
        ("0.5", 0.5),
        (90, 90),
        (1.5, 1.5),
    ],
)
def test_duration_spellings(value: Any, seconds: float) -> None:
    """Units, combinations, fractions and plain numbers of seconds all parse."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "must be positive"),
        (0, "must be positive"),
        ("-5m", "must be positive"),
        (-5, "must be positive"),
        ("5 minutes", "expected a duration"),
        ("5M", "expected a duration"),
        ("1h 30m", "expected a duration"),
        ("m5", "expected a duration"),
        ("", "expected a duration"),
        ("1e400", "expected a duration"),
        (True, "expected a duration"),
        (None, "expected a duration"),
        ([30], "expected a duration"),
        (float("inf"), "must be finite"),
        (float("nan"), "must be finite"),
    ],
)
def test_bad_durations_are_refused(value: Any, message: str) -> None:
    """Zero, negative, worded, boolean and infinite durations are refused with the value shown."""
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "spelling"),
    [
        (0.25, "0.25s"),
        (1, "1s"),
        (90, "90s"),
        (300, "5m"),
        (5400, "90m"),
        (3600, "1h"),
        (86400, "1d"),
        (172800, "2d"),
    ],
)
def test_durations_print_short_and_parse_back(seconds: float, spelling: str) -> None:
    """The effective config spells a duration in its largest exact unit, which parses back to itself."""
    assert format_duration(seconds) == spelling
    assert parse_duration(spelling) == seconds


def test_effective_config_spells_every_duration_with_a_unit() -> None:
    """Every duration key of the effective config is printed in its largest exact unit, e.g. `1m`."""
    data = effective_config(validate_config({"vaults": [VAULT]}, "x"))
    durations = {
        f"{section}.{key}": value
        for section in SECTIONS
        for key, value in data[section].items()
        if isinstance(value, str) and re.fullmatch(r"[\d.]+(ms|s|m|h|d)", value)
    }
    assert durations == {
        "poll.interval": "1m",
        "poll.discovery_interval": "5m",
        "poll.request_timeout": "30s",
        "poll.backoff_initial": "2s",
        "poll.backoff_max": "5m",
        "poll.vault_discovery_interval": "30m",
        "poll.inventory_interval": "15m",
        "discovery.lookback": "1d",
        "discovery.overlap": "1h",
        "store.retention": "30d",
        "http.ui_stale_after": "26h",
    }


# -- the shipped configs --------------------------------------------------------------------------


def _documented_keys(text: str) -> list[tuple[str, bool]]:
    """(key, has a comment right above it or on its line) for every key line of a YAML file."""
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(?:-\s+)?([a-z_]+):", line)
        if m:
            above = next((p.strip() for p in reversed(lines[:i]) if p.strip()), "")
            out.append((m.group(1), above.startswith("#") or " # " in line))
    return out


def test_example_sets_every_key_with_a_comment() -> None:
    """config/example.yaml names every key the models know, each with a comment."""
    text = EXAMPLE.read_text()
    raw = yaml.safe_load(text)
    for section, model in SECTIONS.items():
        assert set(raw[section]) == set(model.model_fields), section
    assert set(raw["vaults"][0]) == set(VaultConfig.model_fields)
    assert set(raw) == set(Config.model_fields)
    undocumented = [key for key, documented in _documented_keys(text) if not documented]
    assert undocumented == []


def test_example_shows_the_defaults_and_the_allowed_values() -> None:
    """Each example value is the default, and every allowed value of a choice appears in the comments."""
    config = load_config(EXAMPLE)
    for section, model in SECTIONS.items():
        assert getattr(config, section) == model(), section
    text = EXAMPLE.read_text()
    for model, field in (
        (AzureConfig, "cloud"),
        (AzureConfig, "credential"),
        (LoggingConfig, "format"),
        (LoggingConfig, "level"),
    ):
        annotation = model.model_fields[field].annotation
        for choice in get_args(annotation):
            assert re.search(rf"\b{choice}\b", text), f"{field}: {choice} is not documented"


def test_demo_config_points_at_the_simulator_and_its_vaults() -> None:
    """config/demo.yaml reaches `simulate --port 8080` with the demo token and watches every demo vault."""
    config = load_config(DEMO)
    assert config.azure.management_endpoint == "http://127.0.0.1:8080"
    assert config.azure.credential == "static_token"
    assert config.azure.static_token_env == DEMO_TOKEN_ENV
    assert config.discovery.enabled
    assert config.poll.interval <= 10
    assert config.poll.discovery_interval <= 60
    assert not config.store.path.is_absolute()
    assert {(v.subscription_id, v.resource_group, v.name) for v in config.vaults} == set(
        demo_estate().vaults()
    )


def test_lookback_shorter_than_the_discovery_interval_is_refused() -> None:
    """A lookback shorter than poll.discovery_interval would never see a job that starts and ends between two listings."""
    with pytest.raises(ConfigError) as info:
        validate_config(
            {"poll": {"discovery_interval": "10m"}, "discovery": {"lookback": "5m"}, "vaults": [VAULT]}, "x"
        )
    assert info.value.details == [
        (
            "discovery.lookback",
            "must be at least poll.discovery_interval (5m < 10m): jobs that start and end between two listings "
            "would never be seen",
        )
    ]


def test_overlap_is_derived_from_a_short_lookback_and_checked_when_set() -> None:
    """Unset, the overlap is an hour or a quarter of the lookback; set, it must be shorter than the lookback."""
    short = validate_config(
        {"poll": {"discovery_interval": "5m"}, "discovery": {"lookback": "20m"}, "vaults": [VAULT]}, "x"
    )
    assert short.discovery.overlap == 300.0
    assert validate_config({"vaults": [VAULT]}, "x").discovery.overlap == 3600.0
    with pytest.raises(ConfigError) as info:
        validate_config({"discovery": {"lookback": "2h", "overlap": "2h"}, "vaults": [VAULT]}, "x")
    assert info.value.details == [("discovery.overlap", "must be shorter than lookback (2h >= 2h)")]
