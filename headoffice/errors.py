"""Errors head office answers with: an HTTP status, a machine-readable code and a message for people."""

from __future__ import annotations

from protocol.carddata import redact


class HQError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        # A message may quote what was sent: whatever in it is shaped like a PAN or track data is masked.
        return {"error": {"code": self.code, "message": redact(self.message)}}
