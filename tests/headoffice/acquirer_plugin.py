"""A stand-in for a real acquirer integration, loaded by `smartpos-hq serve --acquirer` in a test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from headoffice.acquirer import AcquirerResult, AuthRequest, ReversalRequest


class RefundsOnly:
    """Approves refunds with a fixed code, declines sales: behaviour the built-in simulator cannot produce."""

    def authorize(self, request: AuthRequest, *, denied: bool) -> AcquirerResult:
        if request.type == "refund":
            return AcquirerResult(True, "REF001", None)
        return AcquirerResult(False, None, "plugin_declines_sales")

    def reverse(self, auth_id: str | None, request: ReversalRequest) -> None:
        """Fails while the file named by $PLUGIN_ACQUIRER_DOWN exists; confirmed reversals are appended to
        $PLUGIN_ACQUIRER_LOG (one idempotency key and auth id per line)."""
        down = os.environ.get("PLUGIN_ACQUIRER_DOWN")
        if down and Path(down).exists():
            raise ConnectionError("acquirer link down")
        log = os.environ.get("PLUGIN_ACQUIRER_LOG")
        if log:
            with open(log, "a") as out:
                out.write(f"{request.idempotency_key} {auth_id}\n")


def connector(_session: Any) -> RefundsOnly:
    return RefundsOnly()
