"""Transactions with their hash chain, batches, and the store's key/value facts.

Revision ID: 0001_transactions
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_transactions"
down_revision = None
branch_labels = None
depends_on = None

UNSYNCED = "sync_state IN ('queued', 'uploaded')"


def upgrade() -> None:
    op.create_table(
        "transactions",
        sa.Column("sequence", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("uuid", sa.Text, nullable=False, unique=True),
        sa.Column("terminal_id", sa.Text, nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("amount_minor", sa.Integer, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("net_sign", sa.Integer, nullable=False),
        sa.Column("scheme", sa.Text),
        sa.Column("masked_pan", sa.Text),
        sa.Column("pan_last4", sa.Text),
        sa.Column("token", sa.Text),
        sa.Column("aid", sa.Text),
        sa.Column("label", sa.Text),
        sa.Column("entry_mode", sa.Text),
        sa.Column("wallet", sa.Boolean, nullable=False),
        sa.Column("auth_mode", sa.Text, nullable=False),
        sa.Column("auth_code", sa.Text),
        sa.Column("auth_reason", sa.Text),
        sa.Column("auth_id", sa.Text),
        sa.Column("reference", sa.Text),
        sa.Column("void_of", sa.Text),
        sa.Column("voided_by", sa.Text),
        sa.Column("envelope", sa.Text),
        sa.Column("envelope_sha256", sa.Text),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("sync_state", sa.Text, nullable=False),
        sa.Column("sync_code", sa.Text),
        sa.Column("sync_reason", sa.Text),
        sa.Column("synced_at", sa.Text),
    )
    op.create_index("ix_transactions_unsynced", "transactions", ["sequence"], sqlite_where=sa.text(UNSYNCED))
    op.create_index("ix_transactions_token", "transactions", ["token", "created_at"])
    op.create_index(
        "ix_transactions_rejected", "transactions", ["sequence"], sqlite_where=sa.text("sync_state = 'rejected'")
    )
    op.create_table(
        "batches",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("opened_at", sa.Text, nullable=False),
        sa.Column("first_sequence", sa.Integer, nullable=False),
        sa.Column("closed_at", sa.Text),
        sa.Column("totals", sa.Text),
        sa.Column("hq_status", sa.Text),
        sa.Column("hq_detail", sa.Text),
    )
    op.create_index("uq_batches_open", "batches", ["status"], unique=True, sqlite_where=sa.text("status = 'open'"))
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("batches")
    op.drop_table("transactions")
