"""The payment object of the local API, as its OpenAPI document describes it. Imported only when the document is
built (the models cost the idle daemon memory for nothing else); ``tests/e2e`` checks what the daemon really sends
against ``PaymentView``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class CardView(BaseModel):
    scheme: str | None = None
    masked_pan: str | None = Field(default=None, description="first 6 (or 8) and last 4 digits only")
    entry_mode: str | None = None
    aid: str | None = None
    label: str | None = None


class AuthorizationView(BaseModel):
    method: Literal["online", "offline"] | None = None
    code: str | None = None
    reason: str | None = Field(default=None, description="why it was declined (machine-readable), if it was")
    auth_id: str | None = None
    fallback: str | None = Field(default=None, description="why a prefer-online payment was decided offline")


class PaymentView(BaseModel):
    """Documented shape of a payment as ``GET /v1/payments/{id}`` (and every payment answer) returns it."""

    id: str
    state: Literal["waiting_for_card", "reading", "authorizing", "approved", "declined", "failed", "cancelled",
                   "timed_out"]
    type: Literal["sale", "refund", "void"]
    amount_minor: int
    currency: str
    reference: str | None = None
    mode: str | None = None
    void_of: str | None = Field(default=None, description="for a void: the id of the payment it voids")
    created_at: str | None = None
    updated_at: str | None = None
    transaction_id: str | None = Field(default=None, description="the recorded transaction, once approved")
    sequence: int | None = None
    batch: int | None = None
    card: CardView | None = None
    authorization: AuthorizationView | None = None
    error: dict[str, str] | None = Field(default=None, description='{"code", "message"} of a failure')
    voided_by: str | None = None
    sync_state: Literal["queued", "uploaded", "accepted", "rejected"] | None = None
    receipt: Literal["pending", "printed", "failed"] | None = None


# (path, method, status) of the answers that are a payment object
PAYMENT_ANSWERS = (("/v1/payments", "post", "201"), ("/v1/payments/{payment_id}", "get", "200"),
                   ("/v1/payments/{payment_id}/cancel", "post", "200"),
                   ("/v1/payments/{payment_id}/void", "post", "201"))


def document_payment_object(spec: dict[str, Any]) -> None:
    """Add ``PaymentView`` (and the models it uses) to ``spec``'s schemas and make it the body of the answers that
    are a payment object."""
    schema = PaymentView.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["PaymentView"] = schema
    for path, method, status in PAYMENT_ANSWERS:
        operation = spec.get("paths", {}).get(path, {}).get(method)
        if operation is not None:
            operation.setdefault("responses", {})[status] = {
                "description": "the payment object",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PaymentView"}}},
            }
