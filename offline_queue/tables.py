"""The queue's schema as SQLAlchemy Core tables: the target of the Alembic migrations and of the reads.

Times are ISO 8601 UTC strings with microseconds and a ``Z`` (``2026-11-23T12:00:00.000000Z``): they sort as text,
and they are what goes on the wire and into the hash chain, so nothing is converted twice.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, MetaData, Table, Text, text

metadata = MetaData()

UNSYNCED_SQL = "sync_state IN ('queued', 'uploaded')"

transactions = Table(
    "transactions",
    metadata,
    Column("sequence", Integer, primary_key=True, autoincrement=False),
    Column("uuid", Text, nullable=False, unique=True),
    Column("terminal_id", Text, nullable=False),
    Column("batch", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("amount_minor", Integer, nullable=False),
    Column("currency", Text, nullable=False),
    # +1 sale, -1 refund; a void carries the opposite sign of what it voids. Local only (not chained).
    Column("net_sign", Integer, nullable=False),
    Column("scheme", Text),
    Column("masked_pan", Text),
    Column("pan_last4", Text),
    Column("token", Text),
    Column("aid", Text),
    Column("label", Text),
    Column("entry_mode", Text),
    Column("wallet", Boolean, nullable=False),
    Column("auth_mode", Text, nullable=False),
    Column("auth_code", Text),
    Column("auth_reason", Text),
    Column("auth_id", Text),
    Column("reference", Text),
    Column("void_of", Text),
    Column("voided_by", Text),
    Column("envelope", Text),
    Column("envelope_sha256", Text),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Column("idempotency_key", Text, unique=True),
    Column("payment_id", Text),
    Column("sync_state", Text, nullable=False),
    Column("sync_code", Text),
    Column("sync_reason", Text),
    Column("synced_at", Text),
    # Printed on receipts; local only (head office gets them inside the sealed clearing data).
    Column("atc", Integer),
    Column("tvr", Text),
    # Few indexes on purpose: each one is one more page written in every sale's fsynced commit. No index on the
    # sync state: unsynced rows are found on the primary key from meta.sync_floor (every row below it is accepted
    # or rejected), so a page of the backlog costs the same first and last. None on batch or payment_id either: a
    # batch is a contiguous sequence range (batches.first_sequence) and a payment points at its transaction.
    Index("ix_transactions_token", "token", "created_at"),
    Index("ix_transactions_rejected", "sequence", sqlite_where=text("sync_state = 'rejected'")),
)

batches = Table(
    "batches",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("status", Text, nullable=False),
    Column("opened_at", Text, nullable=False),
    # Sequence of the batch's first transaction (whether or not it exists yet): batches are sequence ranges.
    Column("first_sequence", Integer, nullable=False),
    Column("closed_at", Text),
    Column("totals", Text),
    Column("hq_status", Text),
    Column("hq_detail", Text),
    # At most one open batch, enforced by the database rather than by care.
    Index("uq_batches_open", "status", unique=True, sqlite_where=text("status = 'open'")),
)

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text),
)

payments = Table(
    "payments",
    metadata,
    Column("id", Text, primary_key=True),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("type", Text, nullable=False),
    Column("amount_minor", Integer),
    Column("currency", Text),
    Column("reference", Text),
    Column("mode", Text, nullable=False),
    Column("void_of", Text),
    Column("state", Text, nullable=False),
    Column("card", Text),
    Column("authorization", Text),
    Column("error", Text),
    Column("txn_uuid", Text),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Index("ix_payments_state", "state"),
    Index("ix_payments_created", "created_at"),
)

print_jobs = Table(
    "print_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("txn_uuid", Text),
    Column("request_id", Text, nullable=False, unique=True),
    Column("payload", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Index("ix_print_jobs_state", "state", "id"),
    Index("ix_print_jobs_txn", "txn_uuid"),
)

parameters = Table(
    "parameters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
)

deny_list = Table(
    "deny_list",
    metadata,
    Column("token", Text, primary_key=True),
)

counters = Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Integer, nullable=False),
)

reversals = Table(
    "reversals",
    metadata,
    # The authorization's idempotency key at head office (the payment id).
    Column("idempotency_key", Text, primary_key=True),
    Column("payment_id", Text),
    Column("type", Text, nullable=False),
    Column("amount_minor", Integer, nullable=False),
    Column("currency", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("state", Text, nullable=False),  # pending -> done
    Column("hq_status", Text),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Index("ix_reversals_pending", "created_at", sqlite_where=text("state = 'pending'")),
)
