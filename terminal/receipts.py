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
        profile = configured_profile(settings)  # a bad URI or profile stops the start, not the first receipt
        factory = functools.partial(open_printer, p.uri, profile=profile, timeout=p.timeout_s,
                                    status_timeout=p.status_timeout_s)
        merchant = dict(enrollment.merchant or {})
        from zoneinfo import ZoneInfo

        spooler = PrintSpooler(ledger.store, factory, profile=profile, merchant=merchant,
                               terminal_id=enrollment.terminal_id,
                               tz=ZoneInfo(p.timezone) if p.timezone else None, retry_window_s=p.retry_window_s,
                               header=functools.partial(receipt_header, ledger.store, enrollment))
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

    def close(self) -> None:
        if self.spooler is not None:
            self.spooler.stop()


def configured_profile(settings: Settings) -> Any:
    """The printer profile the ``[printer]`` section describes (profile name plus its overrides), after checking
    its URI; ``ValidationError`` (``PrinterUriError`` for the URI) says what is wrong. What the daemon prints with,
    and what ``run --check``, ``selftest`` and ``smartpos printer`` check and use."""
    from drivers.printer import load_profile, parse_uri

    p = settings.printer
    if p.uri:
        parse_uri(p.uri)
    return load_profile(p.profile, columns=p.columns, width_px=p.width_px, native_qr=p.native_qr,
                        codepages=p.codepages)


def startup_problems(settings: Settings) -> list[str]:
    """What would stop the daemon from starting with ``settings`` that can be told without opening a device."""
    from protocol.errors import ValidationError

    problems = []
    if settings.printer.uri:
        try:
            configured_profile(settings)
        except ValidationError as exc:
            problems.append(f"printer: {exc.message}")
    if not settings.readers.pcsc and not settings.readers.nfcpy:
        problems.append("no card reader configured: set readers.pcsc = true or list readers.nfcpy paths")
    return problems


def receipt_header(store: Any, enrollment: Enrollment) -> list[str]:
    """Head office's ``receipt_header`` lines: from the parameters last synced, else those of the enrollment."""
    stored = store.parameters()
    params = stored.parameters if stored is not None else (enrollment.parameters or {})
    lines = params.get("receipt_header") if isinstance(params, dict) else None
    return [line for line in lines if isinstance(line, str)] if isinstance(lines, list) else []
