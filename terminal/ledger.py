"""The payment flow's view of the durable queue: payments, card protection, offline rules, recording.

Adapts ``offline_queue.store.QueueStore`` to what ``terminal.flow.PaymentFlow`` needs. The card read is turned
into a ``ProtectedCard`` (masked PAN, keyed token, envelope sealed to head office) once per tap; the clear PAN
never goes further than that call.
"""

from __future__ import annotations

import threading
from typing import Any

from config.provisioning import Enrollment
from config.settings import Settings
from drivers.cardread import EmvCardRead
from protocol.errors import ValidationError
from terminal.authorization import Authorization, OfflineDecision
from terminal.flow import FlowError
from terminal.payment import ACTIVE, State

Payment = dict[str, Any]


class LedgerError(Exception):
    """The queue cannot be opened; one line with what to do."""


def open_queue(settings: Settings, enrollment: Enrollment) -> Any:
    """Open the terminal's offline queue (``QueueStore``). A queue whose chain has no start yet (the file was
    missing because a damaged queue was moved aside, see docs/offline-queue.md, or a start was killed before its
    start was stored) continues the chain head office holds for this terminal: its next sequence, the hash it
    chains to and its next batch number come from head office, so what the terminal records next is accepted
    there. Head office must answer for that; while it does not, a missing file is not created. Raises
    ``LedgerError`` (one line)."""
    from offline_queue.errors import StoreError
    from offline_queue.store import QueueStore

    path = settings.db_path
    chain = None if path.exists() else _hq_chain_head(settings, enrollment)
    try:
        store = QueueStore.open(path, terminal_id=enrollment.terminal_id)
    except StoreError as exc:
        raise LedgerError(exc.message if str(path) in exc.message else f"queue {path}: {exc.message}") from None
    try:
        if not store.chain_decided():
            chain = chain or _hq_chain_head(settings, enrollment)
            store.continue_chain(chain["sequence"], chain["hash"], chain["batch"])
    except (ValidationError, StoreError) as exc:
        store.close()
        raise LedgerError(f"queue {path}: cannot continue head office's chain ({exc.message})") from None
    except BaseException:
        store.close()
        raise
    return store


def _hq_chain_head(settings: Settings, enrollment: Enrollment) -> dict[str, Any]:
    """Head office's record of this terminal's chain (``chain`` in its ping answer); an empty chain when no head
    office is configured, or from one that sends none (older than this terminal: the queue starts at 1, as before)."""
    from offline_queue.hqclient import HeadOfficeClient, HeadOfficeError

    url = settings.headoffice.url or enrollment.hq_url
    missing = (f"the offline queue {settings.db_path} is missing or new; it must continue this terminal's sequence "
               "and batch numbers from head office")
    if not url:
        return {"sequence": 0, "hash": None, "batch": 0}  # no head office to sync to: no chain but this queue's own
    try:
        with HeadOfficeClient(url, enrollment.terminal_id, enrollment.terminal_key,
                              timeout=settings.headoffice.timeout_s) as client:
            answer = client.ping()
    except HeadOfficeError as exc:
        raise LedgerError(f"{missing}, which did not answer ({exc}); start again once it is reachable") from None
    chain = answer.get("chain") or {"sequence": 0, "hash": None, "batch": 0}
    try:
        return {"sequence": int(chain["sequence"]), "hash": chain.get("hash"), "batch": int(chain["batch"])}
    except (TypeError, KeyError, ValueError, AttributeError):
        raise LedgerError(f"{missing}; head office's answer about it is malformed") from None


class QueueLedger:
    def __init__(self, store: Any, protection: Any, settings: Settings, enrollment: Enrollment) -> None:
        self.store = store
        self.protection = protection
        self.settings = settings
        self.enrollment = enrollment
        self._protected: dict[int, Any] = {}
        self._lock = threading.Lock()
        # Voids are checked (already voided?) and then written in two store calls: two voids of one payment sent
        # at once (different Idempotency-Keys, two front ends) must not both pass the check.
        self._void_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, enrollment: Enrollment) -> QueueLedger:
        from offline_queue.cardprotect import CardProtection

        store = open_queue(settings, enrollment)
        from protocol.envelope import newest_opened

        # Seal in the newest envelope format head office has said it opens: what it last said in a sync answer
        # (kept in the queue), else what it announced at enrollment; v1 for a head office that said nothing (0.1).
        announced = store.hq_envelope_versions()
        protection = CardProtection(
            enrollment.token_key,
            enrollment.hq_public_key,
            pan_mask=settings.card_data.pan_mask,
            envelope_version=newest_opened(announced if announced is not None else enrollment.envelope_versions),
        )
        version = enrollment.parameters_version
        if store.parameters() is None and isinstance(version, int) and not isinstance(version, bool):
            # Until the first sync, the parameters and deny list head office gave at enrollment are the rules.
            store.save_parameters(version, dict(enrollment.parameters or {}), enrollment.deny_list)
        if store.last_contact() is None:
            from offline_queue.store import parse_utc_iso

            # Enrollment itself was a successful head-office contact: the offline-age rule counts from there.
            enrolled = parse_utc_iso(enrollment.enrolled_at)
            if enrolled is not None:
                store.record_contact(enrolled)
        return cls(store, protection, settings, enrollment)

    def use_envelope_versions(self, versions: Any) -> None:
        """Head office announced the envelope formats it opens (``SyncEngine.on_envelope_versions``)."""
        from protocol.envelope import newest_opened

        setter = getattr(self.protection, "set_envelope_version", None)
        if setter is not None:
            setter(newest_opened(versions))

    def close(self) -> None:
        close = getattr(self.protection, "close", None)
        if close is not None:
            close()
        self.store.close()

    # ----- payments ----------------------------------------------------------------------------------------------
    def create_payment(self, *, idempotency_key: str, request: dict[str, Any]) -> Payment:
        payment = self.store.create_payment(
            idempotency_key,
            type=request["type"],
            amount_minor=request["amount_minor"],
            currency=request["currency"],
            reference=request.get("reference"),
            mode=request["mode"],
        )
        return payment.to_dict()

    def payment(self, payment_id: str) -> Payment | None:
        payment = self.store.get_payment(payment_id)
        return payment.to_dict() if payment is not None else None

    def payment_by_key(self, idempotency_key: str) -> Payment | None:
        payment = self.store.get_payment_by_key(idempotency_key)
        return payment.to_dict() if payment is not None else None

    def active_payments(self) -> list[Payment]:
        return [p.to_dict() for p in self.store.payments_in_states([s.value for s in ACTIVE])]

    def recent_payments(self, limit: int) -> list[Payment]:
        recent = getattr(self.store, "recent_payments", None)
        if recent is not None:
            rows = recent(limit)
        else:
            rows = sorted(self.store.payments_in_states([s.value for s in State]),
                          key=lambda p: p.created_at, reverse=True)[:limit]
        return [self._view(p.to_dict()) for p in rows]

    def set_state(self, payment_id: str, state: State, **fields: Any) -> Payment:
        kwargs = {k: v for k, v in fields.items() if k in ("card", "authorization", "error") and v is not None}
        return self.store.set_payment_state(payment_id, State(state).value, **kwargs).to_dict()

    def is_recorded(self, payment_id: str) -> bool:
        return self.store.transaction_for_payment(payment_id) is not None

    # ----- deciding ----------------------------------------------------------------------------------------------
    def _protect(self, card: EmvCardRead) -> Any:
        # One sealing per tap: the offline rules, the online request and the record all use the same envelope.
        key = id(card)
        with self._lock:
            cached = self._protected.get(key)
            if cached is not None and cached[0] is card:
                return cached[1]
        protected = self.protection.protect(card)
        with self._lock:
            self._protected = {key: (card, protected)}
        return protected

    def hq_parameters(self) -> dict[str, Any]:
        """Head office's parameters document: as last synced, else as given at enrollment."""
        stored = self.store.parameters()
        params = stored.parameters if stored is not None else self.enrollment.parameters
        return params if isinstance(params, dict) else {}

    def risk_parameters(self) -> Any:
        from offline_queue.risk import merge_parameters

        hq = self.hq_parameters()
        risk = hq.get("risk", hq)
        # merge_parameters ignores what head office sends beyond the risk fields (receipt header, ...)
        return merge_parameters(risk if isinstance(risk, dict) else None, self.settings.risk or None)

    def offline_decision(self, payment: Payment, card: EmvCardRead) -> OfflineDecision:
        from offline_queue.risk import RiskPayment, evaluate

        protected = self._protect(card)
        stats = self.store.risk_stats(protected.token, payment["currency"])
        decision = evaluate(
            self.risk_parameters(),
            stats,
            protected.token,
            RiskPayment(payment["type"], payment["amount_minor"], payment["currency"],
                        card_expiry=getattr(card, "expiry", None) or None),
            denied=self.store.is_denied(protected.token),
        )
        return OfflineDecision(decision.approved, decision.reason)

    def online_request(self, payment: Payment, card: EmvCardRead) -> dict[str, Any]:
        protected = self._protect(card)
        return {
            "idempotency_key": payment["id"],
            "type": payment["type"],
            "amount_minor": payment["amount_minor"],
            "currency": payment["currency"],
            "token": protected.token,
            "masked_pan": protected.masked_pan,
            "scheme": protected.scheme,
            "entry_mode": protected.entry_mode,
            "reference": payment.get("reference"),
            "envelope": protected.envelope,
        }

    def queue_reversal(self, reversal: dict[str, Any]) -> None:
        """Durably owe head office ``reversal`` (``terminal.authorization.reversal_for``); its key is the payment id."""
        self.store.queue_reversal(**reversal, payment_id=reversal["idempotency_key"])

    # ----- recording ---------------------------------------------------------------------------------------------
    def record_approval(self, payment: Payment, card: EmvCardRead, auth: Authorization) -> Payment:
        from offline_queue.models import Authorization as StoredAuth

        protected = self._protect(card)
        self.store.record(
            type=payment["type"],
            amount_minor=payment["amount_minor"],
            currency=payment["currency"],
            card=protected,
            auth=StoredAuth(mode=auth.method, code=auth.code, reason=auth.reason, auth_id=auth.auth_id,
                            fallback=auth.fallback),
            reference=payment.get("reference"),
            idempotency_key=payment["id"],
            payment_id=payment["id"],
        )
        with self._lock:
            self._protected = {}
        stored = self.payment(payment["id"])
        assert stored is not None
        return stored

    def record_void(self, payment: Payment, *, idempotency_key: str) -> tuple[Payment, bool]:
        with self._void_lock:
            return self._record_void(payment, idempotency_key=idempotency_key)

    def _record_void(self, payment: Payment, *, idempotency_key: str) -> tuple[Payment, bool]:
        from offline_queue.models import Authorization as StoredAuth

        existing = self.payment_by_key(idempotency_key)
        if existing is not None:
            if existing.get("void_of") != payment["id"]:
                raise FlowError(422, "idempotency_key_reused", "this Idempotency-Key was used for another request")
            if existing["state"] == State.APPROVED:
                return existing, False
            if existing["state"] == State.FAILED and existing.get("error"):
                # A retry of a void that was refused is refused again for the same reason (a void is final).
                error = existing["error"]
                raise FlowError(409, str(error.get("code")), str(error.get("message")))
        original = self.store.transaction_for_payment(payment["id"])
        if original is None:
            raise FlowError(409, "not_voidable", "this payment has no recorded transaction")
        if original.voided_by:
            done = self.store.transaction(original.voided_by)
            if done is not None and done.payment_id:
                view = self.payment(done.payment_id)
                if view is not None:
                    return view, False
            raise FlowError(409, "already_voided", "this payment is already voided")
        void = existing or self.store.create_payment(
            idempotency_key,
            type="void",
            amount_minor=payment["amount_minor"],
            currency=payment["currency"],
            reference=payment.get("reference"),
            mode="force-offline",
            void_of=payment["id"],
        ).to_dict()
        try:
            self.store.void(
                original.uuid,
                auth=StoredAuth(mode="offline"),
                reference=payment.get("reference"),
                idempotency_key=idempotency_key,
                payment_id=void["id"],
            )
        except ValidationError as exc:
            self.store.set_payment_state(void["id"], State.FAILED.value,
                                         error={"code": exc.code, "message": exc.message})
            raise FlowError(409, exc.code, exc.message) from None
        stored = self.payment(void["id"])
        assert stored is not None
        return stored, True

    # ----- views ---------------------------------------------------------------------------------------------------
    def transaction_for(self, payment_id: str) -> Any:
        return self.store.transaction_for_payment(payment_id)

    def payment_view(self, payment_id: str) -> Payment | None:
        payment = self.payment(payment_id)
        return self._view(payment) if payment is not None else None

    def view_of(self, payment: Payment) -> Payment:
        """The public view of this payment dict (e.g. one the flow published), as ``payment_view`` shows it."""
        return self._view(payment)

    def _view(self, payment: Payment) -> Payment:
        txn = self.store.transaction_for_payment(payment["id"]) if payment["state"] == State.APPROVED else None
        card = payment.get("card") or None
        if txn is not None:
            card = {"scheme": txn.scheme, "masked_pan": txn.masked_pan, "entry_mode": txn.entry_mode,
                    "aid": txn.aid, "label": txn.label}
        elif card:
            card = {k: card.get(k) for k in ("scheme", "masked_pan", "entry_mode", "aid", "label")}
        view = {
            "id": payment["id"],
            "state": payment["state"],
            "type": payment["type"],
            "amount_minor": payment["amount_minor"],
            "currency": payment["currency"],
            "reference": payment.get("reference"),
            "mode": payment.get("mode"),
            "void_of": payment.get("void_of"),
            "created_at": payment.get("created_at"),
            "updated_at": payment.get("updated_at"),
            "transaction_id": txn.uuid if txn else None,
            "sequence": txn.sequence if txn else None,
            "batch": txn.batch if txn else None,
            "card": card,
            "authorization": _public_auth(payment.get("authorization")),
            "error": payment.get("error") if payment["state"] != State.APPROVED else None,
            "voided_by": txn.voided_by if txn else None,
            "sync_state": txn.sync_state if txn else None,
            "receipt": None,
        }
        if txn is not None and txn.sync_state == "rejected":
            view["sync_rejection"] = {"code": txn.sync_code, "reason": txn.sync_reason}
        return view

    def queue_status(self) -> dict[str, Any]:
        stats = self.store.stats().to_dict()
        rejected = []
        if stats.get("rejected_count"):
            # The dead letters a technician must look at (`smartpos sync --requeue SEQ` sends one again).
            rejected = [{"sequence": t.sequence, "code": t.sync_code, "reason": t.sync_reason}
                        for t in self.store.rejected(limit=10)]
        return {
            "unsynced_count": stats.get("unsynced_count", 0),
            "unsynced_amount": stats.get("unsynced_amount_minor", {}),
            "oldest_unsynced_age_s": stats.get("oldest_unsynced_age_s"),
            "rejected_count": stats.get("rejected_count", 0),
            "rejected": rejected,
            "last_sequence": stats.get("last_sequence"),
            "last_contact_at": stats.get("last_contact_at"),
        }

    def open_batch(self) -> dict[str, Any]:
        batch = self.store.open_batch()
        return {"number": batch.number, "opened_at": batch.opened_at, "count": (batch.totals or {}).get("count", 0),
                "totals": batch.totals}

    def close_batch(self, expected: int | None = None) -> dict[str, Any]:
        return _closed_doc(self.store.close_batch(expected))

    def closed_batch(self, number: int) -> dict[str, Any] | None:
        """Batch ``number`` as its close answered, with what head office said of it since; None unless closed."""
        batch = self.store.batch(number)
        if batch is None or batch.status != "closed":
            return None
        return {**_closed_doc(batch), "headoffice": {"status": batch.hq_status, "detail": batch.hq_detail}}

    def versions(self) -> dict[str, Any]:
        stored = self.store.parameters()
        return {"parameters": stored.version if stored is not None else self.enrollment.parameters_version}


def _closed_doc(batch: Any) -> dict[str, Any]:
    totals = batch.totals or {}
    return {"batch": batch.number, "opened_at": batch.opened_at, "closed_at": batch.closed_at,
            "count": totals.get("count", 0), "totals": totals}


def _public_auth(auth: Any) -> dict[str, Any] | None:
    if not isinstance(auth, dict):
        return None
    method = auth.get("method") or auth.get("mode")
    return {"method": method, "code": auth.get("code"), "reason": auth.get("reason"),
            "auth_id": auth.get("auth_id"), "fallback": auth.get("fallback")}
