"""admin actions: who made each history row, the disagreement a hold was about, who resolved an
alert, and the indexes the operators' lists read

- `transaction_history.actor`, `bank_account_history.actor`: the admin token's subject (or the
  CLI's `cli:<name>`) for rows an operator's action wrote; NULL for every other source.
- `transactions.review_mismatch`: what Bakkt's record and ours disagreed about when the
  transaction was held; once an operator releases the hold, Bakkt's word with that same
  disagreement applies instead of holding it again.
- `operator_alerts.resolved_by`, `operator_alerts.resolution_note`.
- Partial indexes on `(created_at, id)` of open and of held transactions, and on the open alerts:
  the admin lists page through those across every party, oldest first. Partial, so a transaction
  costs an index entry only while it is open or held. Built without CONCURRENTLY because dev and
  the tests migrate inside one transaction; on a large table this holds writes to `transactions`
  for the length of one scan of it (run it off-peak).

Expand only: nullable columns and new indexes, which the release before this one ignores.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')")


def upgrade() -> None:
    op.add_column("transaction_history", sa.Column("actor", sa.String(length=255), nullable=True))
    op.add_column("bank_account_history", sa.Column("actor", sa.String(length=255), nullable=True))
    op.add_column("transactions", sa.Column("review_mismatch", sa.Text(), nullable=True))
    op.add_column("operator_alerts", sa.Column("resolved_by", sa.String(length=255), nullable=True))
    op.add_column("operator_alerts", sa.Column("resolution_note", sa.Text(), nullable=True))
    op.create_index(
        "ix_transactions_open_created",
        "transactions",
        ["created_at", "id"],
        postgresql_where=_OPEN,
    )
    op.create_index(
        "ix_transactions_held_created",
        "transactions",
        ["created_at", "id"],
        postgresql_where=sa.text("held_for_review"),
    )
    op.create_index(
        "ix_operator_alerts_open",
        "operator_alerts",
        ["id"],
        postgresql_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_operator_alerts_open",
        table_name="operator_alerts",
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.drop_index(
        "ix_transactions_held_created",
        table_name="transactions",
        postgresql_where=sa.text("held_for_review"),
    )
    op.drop_index("ix_transactions_open_created", table_name="transactions", postgresql_where=_OPEN)
    op.drop_column("operator_alerts", "resolution_note")
    op.drop_column("operator_alerts", "resolved_by")
    op.drop_column("transactions", "review_mismatch")
    op.drop_column("bank_account_history", "actor")
    op.drop_column("transaction_history", "actor")
