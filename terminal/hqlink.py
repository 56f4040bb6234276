"""The daemon's link to head office: online authorization with a short deadline, and the sync engine's thread.

Two clients: the authorization one uses ``[payments] online_timeout_s`` (prefer-online falls back to the offline
rules after that), the sync one ``[headoffice] timeout_s``. Head-office errors become the flow's two cases:
``OnlineUnavailable`` (network, timeout, 5xx: fall back) and ``OnlineRefused`` (4xx: never fall back).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from config.provisioning import Enrollment
from config.settings import Settings
from terminal.authorization import OnlineRefused, OnlineUnavailable

log = logging.getLogger("smartpos.headoffice")


class HeadOfficeLink:
    def __init__(self, client: Any, sync: Any, store: Any, *, online_timeout_s: float = 3.0) -> None:
        self.client = client
        self.online_timeout_s = online_timeout_s
        self.sync = sync
        self.store = store
        self._wake = threading.Event()
        self._last_auth_ok: float | None = None
        self._last_auth_error: str | None = None
        self.interval_s = 10.0

    @classmethod
    def build(cls, settings: Settings, enrollment: Enrollment, ledger: Any, url: str) -> HeadOfficeLink:
        from offline_queue.hqclient import HeadOfficeClient
        from offline_queue.sync import SyncEngine

        # One client (one connection pool, one TLS context); authorizations pass their own shorter deadline.
        client = HeadOfficeClient(url, enrollment.terminal_id, enrollment.terminal_key,
                                  timeout=settings.headoffice.timeout_s)
        # Retry at most every 3 sync intervals while head office is away, so its return is noticed soon even
        # when no payment (whose online attempt also wakes the sync) comes along.
        sync = SyncEngine(ledger.store, client, page_size=settings.sync.page_size,
                          backoff_max_s=min(60.0, max(1.0, 3 * settings.sync.interval_s)),
                          on_envelope_versions=getattr(ledger, "use_envelope_versions", None))
        link = cls(client, sync, ledger.store, online_timeout_s=settings.payments.online_timeout_s)
        link.interval_s = settings.sync.interval_s
        return link

    # ----- online authorization ----------------------------------------------------------------------------------
    def authorize(self, request: dict[str, Any]) -> dict[str, Any]:
        from offline_queue.hqclient import HeadOfficeRejected, HeadOfficeUnreachable

        try:
            answer = self.client.authorize(**request, timeout=self.online_timeout_s)
        except HeadOfficeUnreachable as exc:
            self._last_auth_error = str(getattr(exc, "code", None) or "unreachable")
            self._note_contact(False)
            raise OnlineUnavailable(self._last_auth_error, "head office did not answer",
                                    maybe_delivered=getattr(exc, "maybe_delivered", True)) from None
        except HeadOfficeRejected as exc:
            code = str(getattr(exc, "code", None) or "rejected")
            self._last_auth_error = code
            self._note_contact(not exc.is_auth)  # a refused terminal is no successful contact
            raise OnlineRefused(code, str(exc)) from None
        self._last_auth_ok = time.time()
        self._last_auth_error = None
        self._note_contact(True)
        self.wake()  # head office is reachable: a good moment to drain anything queued while it was not
        return answer.to_dict() if hasattr(answer, "to_dict") else dict(answer)

    # ----- reversals --------------------------------------------------------------------------------------------
    def owed(self) -> None:
        """A reversal was queued: the sync engine sends it on its next pass, which starts now."""
        self.wake()

    def send_now(self, reversal: dict[str, Any]) -> None:
        """Send a reversal the store could not take (disk full): the one chance it has. Raises when it fails."""
        self.client.reverse(**reversal, timeout=self.online_timeout_s)

    def _note_contact(self, ok: bool) -> None:
        note = getattr(self.sync, "note_contact", None)
        if note is not None:
            try:
                note(ok)
            except Exception:
                log.exception("sync.note_contact_failed")

    # ----- sync --------------------------------------------------------------------------------------------------
    def wake(self) -> None:
        wake = getattr(self.sync, "wake", None)
        if wake is not None:
            wake()
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """The sync thread: the engine's own loop (it backs off on errors and wakes on ``wake()``)."""
        try:
            self.sync.run_forever(stop, interval_s=self.interval_s)
        except Exception:
            log.exception("sync.crashed")

    def status(self) -> dict[str, Any]:
        engine: dict[str, Any] = {}
        status = getattr(self.sync, "status", None)
        if status is not None:
            try:
                engine = dict(status())
            except Exception:
                log.exception("sync.status_failed")
        last_contact = None
        try:
            contact = self.store.last_contact()
            last_contact = contact.isoformat() if contact is not None else None
        except Exception:
            log.exception("sync.last_contact_failed")
        pending_reversals = None
        try:
            pending_reversals = self.store.pending_reversal_count()
        except Exception:
            log.exception("sync.reversal_count_failed")
        online = engine.get("online")
        if online is None:
            online = self._last_auth_error is None and (last_contact is not None or self._last_auth_ok is not None)
        return {
            "online": bool(online),
            "url": getattr(self.client, "base_url", None),
            "last_contact_at": last_contact,
            "last_error": engine.get("last_error") or self._last_auth_error,
            "detail": engine.get("detail") or "",
            "pending_reversals": pending_reversals,
            **{k: v for k, v in engine.items() if k not in ("online", "last_error", "detail")},
        }

    def close_batch(self, batch: dict[str, Any], wait_s: float = 5.0) -> dict[str, Any]:
        """Let the sync engine upload what is left and report the closed batch; wait briefly for the answer."""
        number = batch["batch"]
        self.wake()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            stored = self.store.batch(number)
            if stored is not None and stored.hq_status not in (None, "pending"):
                return {"status": stored.hq_status, "detail": stored.hq_detail}
            time.sleep(0.1)
        return {"status": "pending", "detail": "head office will be told at the next sync"}

    def close(self) -> None:
        self.client.close()
