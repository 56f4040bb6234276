"""Structured logs: one JSON object per line on stdout (journald keeps it as the message), PANs redacted.

Events are logged as ``log.info("payment.approved", extra={"payment_id": ..., "amount_minor": ...})``: the message
is the event name, the extras become fields. The formatter passes the whole line through
``protocol.carddata.redact`` so nothing that looks like a PAN or track data leaves the process, whatever a
library or an exception message put into it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

from protocol.carddata import redact

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is an event field.
# (uvicorn adds an ANSI-coloured copy of its message as ``color_message``.)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            # The type and message only: a traceback would spread over many journal lines and may quote card data.
            entry["error"] = f"{type(exc).__name__}: {exc}"
        line = orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return redact(line)


def _not_library_chatter(record: logging.LogRecord) -> bool:
    # python-escpos logs every connection open/close at INFO through the *root* logger, so it cannot be
    # silenced by name; one line per receipt would drown the payment events.
    return not (record.levelno < logging.WARNING and record.name == "root" and "escpos" in record.pathname)


def setup_logging(level: str = "info", stream: IO[str] | None = None) -> None:
    """Route every logger (ours, uvicorn's, libraries') through one JSON-lines handler."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    handler.addFilter(_not_library_chatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Per-request access lines would drown the payment events; the API logs what matters itself.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in ("nfc", "escpos", "sqlalchemy.engine", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
