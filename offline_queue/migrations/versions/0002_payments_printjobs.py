"""Payments (the daemon's stored state machine), print jobs, parameters with the deny list, counters; and the
link from a transaction to the payment that recorded it.

Revision ID: 0002_payments_printjobs
Revises: 0001_transactions
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_payments_printjobs"
down_revision = "0001_transactions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN of a nullable column is an in-place change in SQLite: existing rows (and their hashes) stay.
    op.add_column("transactions", sa.Column("payment_id", sa.Text))
    op.create_table(
        "payments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("amount_minor", sa.Integer),
        sa.Column("currency", sa.Text),
        sa.Column("reference", sa.Text),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("void_of", sa.Text),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("card", sa.Text),
        sa.Column("authorization", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("txn_uuid", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_index("ix_payments_state", "payments", ["state"])
    op.create_index("ix_payments_created", "payments", ["created_at"])
    op.create_table(
        "print_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("txn_uuid", sa.Text),
        sa.Column("request_id", sa.Text, nullable=False, unique=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_index("ix_print_jobs_state", "print_jobs", ["state", "id"])
    op.create_index("ix_print_jobs_txn", "print_jobs", ["txn_uuid"])
    op.create_table(
        "parameters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_table("deny_list", sa.Column("token", sa.Text, primary_key=True))
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("deny_list")
    op.drop_table("parameters")
    op.drop_table("print_jobs")
    op.drop_table("payments")
    with op.batch_alter_table("transactions") as batch:
        batch.drop_column("payment_id")
