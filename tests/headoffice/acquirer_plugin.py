"""A stand-in for a real acquirer integration, loaded by `smartpos-hq serve --acquirer` in a test."""

from __future__ import annotations

from typing import Any

from headoffice.acquirer import AcquirerResult, AuthRequest


class RefundsOnly:
    """Approves refunds with a fixed code, declines sales: behaviour the built-in simulator cannot produce."""

    def authorize(self, request: AuthRequest, *, denied: bool) -> AcquirerResult:
        if request.type == "refund":
            return AcquirerResult(True, "REF001", None)
        return AcquirerResult(False, None, "plugin_declines_sales")


def connector(_session: Any) -> RefundsOnly:
    return RefundsOnly()
