"""Structured logs: one JSON object per line, with the request's fields when there are any, and the
OpenTelemetry trace id (``trace_id``) of a line written inside a traced request."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed through `extra=` and is a field of ours.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
_STANDARD |= {"message", "asctime", "taskName", "color_message"}  # color_message: uvicorn's ANSI copy


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if "trace_id" not in entry and (current := trace_id()) is not None:
            entry["trace_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def trace_id() -> str | None:
    """The current OpenTelemetry trace's id as 32 hex digits, or None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class RepeatLimit(logging.Filter):
    """Lines that abuse can repeat (warnings and errors, and the request lines of failed requests) pass
    at most ``burst`` times per ``window_s`` for each kind (logger, message template, outcome); the
    next one to pass after a quiet spell says how many were suppressed (``suppressed``, and in its
    text). A million bad requests or refused connections write a few lines a minute, not a gigabyte."""

    def __init__(self, burst: int = 20, window_s: float = 10.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._kinds: dict[tuple[str, str, str], list[float]] = {}  # kind → [window start, passed, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        outcome = str(getattr(record, "outcome", "ok"))
        if record.levelno < logging.WARNING and outcome == "ok":
            return True
        kind = (record.name, str(record.msg), outcome)
        now = time.monotonic()
        with self._lock:
            state = self._kinds.setdefault(kind, [now, 0, 0])
            if now - state[0] >= self.window_s:
                state[0], state[1] = now, 0
            if state[1] >= self.burst:
                state[2] += 1
                return False
            state[1] += 1
            suppressed, state[2] = int(state[2]), 0
            if len(self._kinds) > 10_000:  # many kinds (templates are few; outcomes are codes): start over
                self._kinds = {kind: state}
        if suppressed:
            record.suppressed = suppressed
            record.msg = f"{record.msg} [{suppressed} similar lines suppressed]"
        return True


def configure_logging(level: str, fmt: str) -> None:
    """Root logger to stderr, JSON or plain text, repeats limited (:class:`RepeatLimit`); uvicorn's
    and asyncio's loggers follow the same handler."""
    handler = logging.StreamHandler()
    handler.addFilter(RepeatLimit())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
