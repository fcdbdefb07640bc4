"""structlog setup: JSON lines by default, a readable console form for humans, secrets redacted."""

from __future__ import annotations

import logging
import os
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


class LogSink:
    """The one stream every log line goes through; a write or flush that fails is dropped, never raised.

    Logging must not be able to stop the daemon from working or from stopping: a pipe whose reader
    left (EPIPE), a closed descriptor (EBADF), a full disk (ENOSPC) or a closed file (ValueError)
    marks the sink broken, and a broken sink does not try again.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.broken = stream is None  # Python starts with sys.stderr None when fd 2 is closed

    def write(self, text: str) -> int:
        """Characters written: all of them, or none when the line is dropped."""
        if self.broken or self.stream is None:
            return 0
        try:
            self.stream.write(text)
        except UnicodeError:
            return 0  # this line cannot be encoded for the stream; the stream itself is fine
        except (OSError, ValueError):
            self.broken = True
            return 0
        return len(text)

    def flush(self) -> None:
        if self.broken or self.stream is None:
            return
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.broken = True

    def isatty(self) -> bool:
        try:
            return self.stream is not None and not self.broken and self.stream.isatty()
        except (OSError, ValueError):
            return False


class _SinkLogger:
    """structlog's logger: each rendered line is one write and one flush into the sink."""

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write(message + "\n")
        self._sink.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_sink: LogSink | None = None


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog (and stdlib logging of our dependencies) to one stream in one format."""
    global _sink
    sink = _sink = LogSink(stream or sys.stderr)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sink.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: _SinkLogger(sink),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through stdlib; keep them quiet unless debugging, and redacted.
    handler = logging.StreamHandler(sink)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    logging.getLogger("azure").setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)


def release_broken_streams() -> None:
    """Point sys.stdout or sys.stderr at os.devnull once writing to it has failed, so exit cannot fail.

    Python flushes both as it exits; a flush that fails there prints "Exception ignored ...
    BrokenPipeError" and turns the exit status into 120. A stream counts as broken when the log
    sink found it so or when flushing it now fails; a working one is left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        broken = _sink is not None and _sink.broken and _sink.stream is stream
        try:
            stream.flush()
        except (OSError, ValueError):
            broken = True
        if broken:
            _to_devnull(stream)


def _to_devnull(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return  # closed, or no descriptor: Python does not flush it at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def get_logger(name: str = "backup_watcher") -> Any:
    """A structlog logger; the type is Any because structlog's bound loggers are dynamic."""
    return structlog.get_logger(name)
