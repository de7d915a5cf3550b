"""what an idempotency key answered, as a kind (app/idempotency/answers.py) beside the HTTP status
the releases before stored

Expand only (docs/operations.md): `response_kind` is added and filled in for the rows finished
so far; `response_status` stays, written beside the kind, for the release before this one, which
reads nothing else. A later contract migration drops it.

Revision ID: 0012
Revises: 0006
Create Date: 2026-12-02 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("response_kind", sa.String(16), nullable=True))
    # One status per kind of success (a link session 201, an unlink 200, transfers and links
    # 202); every 4xx and 5xx that was stored is a rejection. Keys live 10 days, so the table
    # is small enough for one statement.
    op.execute(
        """
        UPDATE idempotency_keys
        SET response_kind = CASE
            WHEN response_status = 202 THEN 'accepted'
            WHEN response_status = 201 THEN 'created'
            WHEN response_status = 200 THEN 'done'
            WHEN response_status >= 400 THEN 'rejected'
        END
        WHERE response_status IS NOT NULL AND response_kind IS NULL
        """
    )


def downgrade() -> None:
    op.drop_column("idempotency_keys", "response_kind")
