"""events: the transactional outbox every state change writes, numbered after commit

`seq` is the public order and is NULL until the sequencer (app/events/sequencer.py) numbers the
committed rows; an insert trigger wakes it (docs/events.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("local_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("party_ref", sa.Text(), nullable=False),
        sa.Column("subject_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("local_id", name=op.f("pk_events")),
        sa.UniqueConstraint("id", name=op.f("uq_events_id")),
        sa.UniqueConstraint("seq", name=op.f("uq_events_seq")),
    )
    op.create_index("ix_events_party_ref_seq", "events", ["party_ref", "seq"])
    op.create_index(
        "ix_events_unsequenced",
        "events",
        ["local_id"],
        postgresql_where=sa.text("seq IS NULL"),
    )
    # Statement-level, so a flush that writes several events wakes the sequencer once; the
    # notification is delivered at commit (and not at all on rollback), which is exactly when
    # there is something new to number.
    op.execute(
        """
        CREATE FUNCTION events_notify_pending() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('events_pending', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_notify_pending AFTER INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_notify_pending()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER events_notify_pending ON events")
    op.execute("DROP FUNCTION events_notify_pending()")
    op.drop_index(
        "ix_events_unsequenced", table_name="events", postgresql_where=sa.text("seq IS NULL")
    )
    op.drop_index("ix_events_party_ref_seq", table_name="events")
    op.drop_table("events")
