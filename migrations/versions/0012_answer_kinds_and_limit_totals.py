"""what an idempotency key answered, as a kind (app/idempotency/answers.py) beside the HTTP status
the releases before stored; running totals for the limits (party_limit_usage, kept by a trigger)

Both are expand only (docs/operations.md):
- `response_kind` is added and filled in for the rows finished so far; `response_status` stays,
  written beside the kind, for the release before this one, which reads nothing else. A later
  contract migration drops it.
- `party_limit_usage` holds, per party, direction and UTC hour of creation, what the party's
  counted transfers add up to. A trigger on `transactions` keeps it whoever writes the row (a
  request, a webhook, recovery, an operator's SQL): a counted transfer adds its amount, a move
  to FAILED / DECLINED / CANCELLED takes it away. The release before this one never reads it.

Revision ID: 0012
Revises: 0006
Create Date: 2026-12-02 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What counts against a limit: a partner's own transfer that may move money. The same rule as
# app/funding/repository.py NOT_COUNTED; a change to one is a migration of the other.
_COUNTS = "{row}.origin = 'PARTNER' AND {row}.status NOT IN ('FAILED', 'DECLINED', 'CANCELLED')"
_HOUR = "date_trunc('hour', {row}.created_at, 'UTC')"

_FUNCTION = f"""
CREATE FUNCTION party_limit_usage_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND {_COUNTS.format(row="OLD")} THEN
        UPDATE party_limit_usage
        SET amount_cents = amount_cents - OLD.amount_cents
        WHERE party_ref = OLD.party_ref AND direction = OLD.type
          AND hour = {_HOUR.format(row="OLD")};
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND {_COUNTS.format(row="NEW")} THEN
        INSERT INTO party_limit_usage AS u (party_ref, direction, hour, amount_cents)
        VALUES (NEW.party_ref, NEW.type, {_HOUR.format(row="NEW")}, NEW.amount_cents)
        ON CONFLICT (party_ref, direction, hour)
        DO UPDATE SET amount_cents = u.amount_cents + EXCLUDED.amount_cents;
    END IF;
    RETURN NULL;
END
$$
"""  # noqa: S608 - built from this file's constants
# An update fires it only when it touches what the totals depend on and changes it: the
# recovery jobs' `next_check_at` claims and every other update cost nothing.
_WATCHED = ("status", "origin", "amount_cents", "party_ref", "type", "created_at")
_TRIGGERS = (
    "CREATE TRIGGER transactions_limit_usage_insert AFTER INSERT ON transactions "
    "FOR EACH ROW EXECUTE FUNCTION party_limit_usage_follow()",
    "CREATE TRIGGER transactions_limit_usage_update AFTER UPDATE OF "
    + ", ".join(_WATCHED)
    + " ON transactions FOR EACH ROW WHEN ("
    + " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _WATCHED)
    + ") EXECUTE FUNCTION party_limit_usage_follow()",
    "CREATE TRIGGER transactions_limit_usage_delete AFTER DELETE ON transactions "
    "FOR EACH ROW EXECUTE FUNCTION party_limit_usage_follow()",
)


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

    op.create_table(
        "party_limit_usage",
        sa.Column("party_ref", sa.String(255), nullable=False),
        sa.Column("direction", sa.String(32), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "party_ref", "direction", "hour", name=op.f("pk_party_limit_usage")
        ),
    )
    op.execute(_FUNCTION)
    # The table and its trigger before the backfill, in one transaction (Alembic runs each
    # migration in one): a transfer written while this runs waits for the table lock below and
    # is then counted by the trigger, never twice and never not at all.
    op.execute("LOCK TABLE transactions IN SHARE ROW EXCLUSIVE MODE")
    for trigger in _TRIGGERS:
        op.execute(trigger)
    op.execute(
        f"""
        INSERT INTO party_limit_usage (party_ref, direction, hour, amount_cents)
        SELECT t.party_ref, t.type, {_HOUR.format(row="t")}, sum(t.amount_cents)
        FROM transactions AS t
        WHERE {_COUNTS.format(row="t")}
        GROUP BY 1, 2, 3
        """  # noqa: S608 - built from this file's constants
    )


def downgrade() -> None:
    for name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER transactions_limit_usage_{name} ON transactions")
    op.execute("DROP FUNCTION party_limit_usage_follow()")
    op.drop_table("party_limit_usage")
    op.drop_column("idempotency_keys", "response_kind")
