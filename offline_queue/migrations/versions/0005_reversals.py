"""Reversals the terminal owes head office: an online authorization whose answer did not arrive in time (head
office may have approved it), or one approved online whose sale then could not be recorded. Queued durably before
the payment's outcome is stored, sent by the sync engine until head office acknowledges them.

Revision ID: 0005_reversals
Revises: 0004_receipt_emv_fields
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_reversals"
down_revision = "0004_receipt_emv_fields"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reversals",
        sa.Column("idempotency_key", sa.Text(), primary_key=True),
        sa.Column("payment_id", sa.Text()),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.Integer(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("hq_status", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
    )
    op.create_index("ix_reversals_pending", "reversals", ["created_at"], sqlite_where=sa.text("state = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_reversals_pending", "reversals")
    op.drop_table("reversals")
