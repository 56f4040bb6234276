"""Head-office tables. The schema itself is created by the Alembic migrations in ``migrations/``;
these definitions must match them (a test compares the two).

Card data: ``transactions`` holds the masked PAN, the keyed token and ``card_data`` — the clearing data from the
terminal's sealed envelope, re-encrypted with the keystore's data key (AES-GCM). Never a PAN in clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Merchant(Base):
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Terminal(Base):
    __tablename__ = "terminals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    public_key: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Head of the terminal's hash chain as head office has verified it: the next upload must continue from here.
    head_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    head_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EnrollmentCode(Base):
    __tablename__ = "enrollment_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    terminal_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Nonce(Base):
    __tablename__ = "nonces"
    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[int] = mapped_column(BigInteger, index=True)


class ParameterSet(Base):
    __tablename__ = "parameter_sets"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    deny_list: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("terminal_id", "batch_no", name="uq_batches_terminal_batch"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.id"))
    merchant_id: Mapped[str] = mapped_column(String(64))
    batch_no: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default="open", index=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Last time its status, differences or missing sequences were evaluated (close, a late transaction).
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    terminal_totals: Mapped[Any] = mapped_column(JSON, nullable=True)
    differences: Mapped[Any] = mapped_column(JSON, nullable=True)
    missing: Mapped[Any] = mapped_column(JSON, nullable=True)
    first_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # as the terminal closed it
    last_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("terminal_id", "sequence", name="uq_transactions_terminal_sequence"),
        Index("ix_transactions_batch", "batch_id", "sequence"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    terminal_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    uuid: Mapped[str] = mapped_column(String(36))
    batch_id: Mapped[int] = mapped_column(BigInteger)
    batch_no: Mapped[int] = mapped_column(BigInteger)
    merchant_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(10))  # accepted | rejected (kept so the chain stays continuous)
    reject_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    type: Mapped[str] = mapped_column(String(10))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    scheme: Mapped[str | None] = mapped_column(String(20), nullable=True)
    aid: Mapped[str | None] = mapped_column(String(32), nullable=True)
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    entry_mode: Mapped[str | None] = mapped_column(String(20), nullable=True)
    masked_pan: Mapped[str | None] = mapped_column(String(19), nullable=True)
    pan_last4: Mapped[str | None] = mapped_column(String(4), nullable=True)
    wallet: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    auth_mode: Mapped[str | None] = mapped_column(String(10), nullable=True)
    auth_code: Mapped[str | None] = mapped_column(String(12), nullable=True)
    auth_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    auth_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    void_of: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))  # the terminal's UTC timestamp, ISO 8601, as chained
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))
    envelope_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    card_data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class Authorization(Base):
    __tablename__ = "authorizations"
    __table_args__ = (UniqueConstraint("terminal_id", "idempotency_key", name="uq_authorizations_terminal_key"),)
    auth_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.id"))
    idempotency_key: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(10))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    masked_pan: Mapped[str | None] = mapped_column(String(19), nullable=True)
    token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved: Mapped[bool] = mapped_column(Boolean)
    code: Mapped[str | None] = mapped_column(String(12), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when the terminal reversed it (its answer came too late, or the sale was not completed). A reversal can
    # arrive before the authorization it reverses: the row is then a tombstone (approved false) that answers the
    # late authorization, which is reversed at the acquirer if it approved.
    reversed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reversal_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Head office owes the acquirer a reversal of this approval (it arrived after the terminal's reversal, and the
    # acquirer did not confirm the reversal yet): the next attempt is due at this time. None when nothing is owed.
    acquirer_reversal_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True,
                                                                      index=True)
    acquirer_reversal_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Setting(Base):
    """Small documents that every ``serve`` process must see the same (simulated acquirer rules)."""

    __tablename__ = "hq_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
