"""structlog setup: JSON lines by default, a readable console form for humans, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Bearer tokens, JWTs, SAS signatures and the signed query of 2024-era async-operation URLs.
_SECRET_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1<redacted>"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "<redacted-jwt>"),
    (
        re.compile(r"(?i)([?&](?:sig|se|sv|skoid|sktid|t|c|s|h|code|client_secret)=)[^&\s\"']+"),
        r"\1<redacted>",
    ),
]
_SECRET_KEYS = re.compile(r"(?i)(token|secret|password|authorization|signature|credential)")


def redact(text: str) -> str:
    """Text with every token-like or signature-like part replaced."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: "<redacted>" if _SECRET_KEYS.search(str(k)) else _redact_value(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no bearer token, secret or SAS key reaches a log line."""
    for key in list(event_dict):
        if key != "event" and _SECRET_KEYS.search(key) and key not in ("token_expires_on",):
            event_dict[key] = "<redacted>"
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog (and stdlib logging of our dependencies) to one stream in one format."""
    stream = stream or sys.stderr
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through stdlib; keep them quiet unless debugging, and redacted.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    logging.getLogger("azure").setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def get_logger(name: str = "backup_watcher") -> Any:
    """A structlog logger; the type is Any because structlog's bound loggers are dynamic."""
    return structlog.get_logger(name)
