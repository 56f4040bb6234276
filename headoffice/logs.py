"""Head-office logging: uvicorn's line formats, with every line (tracebacks included) passed through
``protocol.carddata.redact``, and head office's own loggers routed to the same handler.

Without this, uvicorn's default configuration covers only its own loggers: head office's warnings and errors fell
to Python's last-resort handler (an unredacted traceback on stderr) and its info lines were dropped, and the
optional access log printed request paths as they came.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from uvicorn.logging import AccessFormatter, DefaultFormatter

from protocol.carddata import redact


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingFormatter(_Redacting, DefaultFormatter):
    pass


class RedactingAccessFormatter(_Redacting, AccessFormatter):
    pass


def log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document for ``uvicorn.run(log_config=...)``; every worker applies it."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": f"{__name__}.RedactingFormatter", "fmt": "%(levelprefix)s %(name)s: %(message)s",
                        "use_colors": None},
            "access": {"()": f"{__name__}.RedactingAccessFormatter",
                       "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'},
        },
        "handlers": {
            "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
            "smartpos": {"handlers": ["default"], "level": level, "propagate": False},
        },
        # Libraries' warnings (SQLAlchemy, httpx, a plugin acquirer's own loggers) go through the same redaction.
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test runner may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_cli_logging() -> None:
    """Admin commands: head office's warnings and errors (e.g. a failed acquirer reversal in `authorizations
    reverse-owed`) go to stderr, redacted. Only head office's logger gets a handler; the root logger is left alone."""
    logger = logging.getLogger("smartpos.headoffice")
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(RedactingFormatter("%(levelprefix)s %(name)s: %(message)s", use_colors=False))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
