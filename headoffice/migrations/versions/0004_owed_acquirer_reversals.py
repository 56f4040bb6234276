"""acquirer reversals head office owes are stored, and retried until the acquirer confirms them

An approval that arrives after the terminal already reversed the payment (its tombstone) must be reversed at the
acquirer. The attempt that follows the approval can fail, and head office can stop before it is made: the row now
says that a reversal is owed and when to try again, and every serve process retries the due ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('authorizations') as batch:
        batch.add_column(sa.Column('acquirer_reversal_due_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('acquirer_reversal_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.create_index('ix_authorizations_acquirer_reversal_due_at', ['acquirer_reversal_due_at'])


def downgrade() -> None:
    with op.batch_alter_table('authorizations') as batch:
        batch.drop_index('ix_authorizations_acquirer_reversal_due_at')
        batch.drop_column('acquirer_reversal_attempts')
        batch.drop_column('acquirer_reversal_due_at')
