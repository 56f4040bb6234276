"""The daemon's receipt desk: hands recorded transactions and settlements to the durable print spooler.

Without a configured printer the desk still answers (state ``none``) so the flow and the API need no special
cases; receipts then exist only as what ``smartpos reprint`` would print once a printer is configured.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from config.provisioning import Enrollment
from config.settings import Settings

log = logging.getLogger("smartpos.receipts")


class ReceiptDesk:
    def __init__(self, spooler: Any, ledger: Any) -> None:
        self.spooler = spooler
        self.ledger = ledger

    @classmethod
    def build(cls, settings: Settings, enrollment: Enrollment, ledger: Any) -> ReceiptDesk:
        if not settings.printer.uri:
            return cls(None, ledger)
        from drivers.printer import open_printer
        from terminal.printjobs import PrintSpooler

        p = settings.printer
        profile = configured_profile(settings)  # a bad profile stops the start, not the first receipt
        factory = functools.partial(open_printer, p.uri, profile=profile, timeout=p.timeout_s,
                                    status_timeout=p.status_timeout_s)
        merchant = dict(enrollment.merchant or {})
        from zoneinfo import ZoneInfo

        spooler = PrintSpooler(ledger.store, factory, profile=profile, merchant=merchant,
                               terminal_id=enrollment.terminal_id,
                               tz=ZoneInfo(p.timezone) if p.timezone else None, retry_window_s=p.retry_window_s,
                               idle_probe_s=p.status_interval_s,
                               header=lambda: receipt_header(ledger.hq_parameters()))
        spooler.start()
        return cls(spooler, ledger)

    @property
    def enabled(self) -> bool:
        return self.spooler is not None

    def submit(self, payment: dict[str, Any], *, request_id: str, reprint: bool = False) -> None:
        if self.spooler is None:
            return
        txn = self.ledger.transaction_for(payment["id"])
        if txn is None:
            log.error("receipt.no_transaction", extra={"payment_id": payment["id"]})
            return
        if reprint:
            self.spooler.reprint(txn, request_id)
        else:
            # The customer's copy first, recorded on its own so the spooler can start sending it while the
            # merchant copy is being recorded: the customer is the one waiting at the counter.
            self.spooler.submit(txn.type, txn, request_id, copies=("customer",))
            self.spooler.submit(txn.type, txn, request_id, copies=("merchant",))

    def prepare(self) -> None:
        """A payment started: its receipt will follow, so the spooler loads its rendering stack now."""
        if self.spooler is not None:
            self.spooler.prepare()

    def submit_settlement(self, batch: dict[str, Any]) -> None:
        if self.spooler is None:
            return
        self.spooler.submit("settlement", batch, f"settlement:{batch['batch']}")

    def submit_test_page(self, request_id: str) -> int | None:
        """Queue the printer's test page; its job id, None when no printer is configured or it was not recorded."""
        if self.spooler is None:
            return None
        ids = self.spooler.submit("test", None, request_id)
        return int(ids[0]) if ids else None

    def job(self, job_id: int) -> dict[str, Any] | None:
        """A print job as the spooler has it (state, attempts, error), without what it prints."""
        if self.spooler is None:
            return None
        job = self.spooler.store.get_print_job(job_id)
        if job is None:
            return None
        return {k: v for k, v in job.to_dict().items() if k not in ("payload", "txn_uuid")}

    def receipt_state(self, txn_uuid: str | None) -> str | None:
        if self.spooler is None or txn_uuid is None:
            return None
        return self.spooler.receipt_state(txn_uuid)

    def status(self) -> dict[str, Any]:
        if self.spooler is None:
            return {"state": "none", "detail": "no printer configured"}
        st = dict(self.spooler.status())
        st["state"] = st.pop("printer", "unknown")
        return st

    def alive(self) -> bool:
        return self.spooler is None or self.spooler.alive()

    def close(self) -> None:
        if self.spooler is not None:
            self.spooler.stop()


def configured_profile(settings: Settings, name: str | None = None) -> Any:
    """The printer profile the ``[printer]`` section describes: profile ``name`` (default: the section's) with the
    section's overrides; ``ValidationError`` says what is wrong. What the daemon prints with, and what
    ``run --check``, ``selftest`` and ``smartpos printer`` check and use. (The URI is checked at config load.)"""
    from drivers.printer import load_profile

    p = settings.printer
    return load_profile(name or p.profile, columns=p.columns, width_px=p.width_px, native_qr=p.native_qr,
                        codepages=p.codepages)


def receipt_header(params: Any) -> list[str]:
    """Head office's ``receipt_header`` lines out of its parameters document."""
    lines = params.get("receipt_header") if isinstance(params, dict) else None
    return [line for line in lines if isinstance(line, str)] if isinstance(lines, list) else []
