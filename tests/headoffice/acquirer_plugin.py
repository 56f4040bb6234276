"""A stand-in for a real acquirer integration, loaded by `smartpos-hq serve --acquirer` in a test."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from headoffice.acquirer import AcquirerResult, AuthRequest, ReversalRequest


class RefundsOnly:
    """Approves refunds with a fixed code, declines sales: behaviour the built-in simulator cannot produce."""

    def authorize(self, request: AuthRequest, *, denied: bool) -> AcquirerResult:
        """While the file named by $PLUGIN_ACQUIRER_HOLD exists the answer waits (up to 20 s): the acquirer is still
        thinking. ``<that name>.entered`` is written when a request starts waiting."""
        hold = os.environ.get("PLUGIN_ACQUIRER_HOLD")
        if hold and Path(hold).exists():
            Path(hold + ".entered").write_text(request.idempotency_key)
            deadline = time.monotonic() + 20
            while Path(hold).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        if request.type == "refund":
            return AcquirerResult(True, "REF001", None)
        return AcquirerResult(False, None, "plugin_declines_sales")

    def reverse(self, auth_id: str | None, request: ReversalRequest) -> None:
        """Fails while the file named by $PLUGIN_ACQUIRER_DOWN exists (with the file's text in the error, as a careless
        integration might put the card number there); confirmed reversals are appended to
        $PLUGIN_ACQUIRER_LOG (one idempotency key and auth id per line)."""
        down = os.environ.get("PLUGIN_ACQUIRER_DOWN")
        if down and Path(down).exists():
            detail = Path(down).read_text().strip()
            raise ConnectionError("acquirer link down" + (f": {detail}" if detail else ""))
        log = os.environ.get("PLUGIN_ACQUIRER_LOG")
        if log:
            with open(log, "a") as out:
                out.write(f"{request.idempotency_key} {auth_id}\n")


def connector(_session: Any) -> RefundsOnly:
    return RefundsOnly()
