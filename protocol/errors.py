"""Typed errors shared by terminal and head office."""


class ValidationError(ValueError):
    """Input that breaks a contract rule. ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
