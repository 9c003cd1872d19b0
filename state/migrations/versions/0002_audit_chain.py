"""Audit chain: every audit row carries the hash of the one before it, and its own.

Adds ``prev_hash`` and ``hash`` to ``audit_log``, chains the rows already there in
``seq`` order (state.audit_chain), then makes both required and ``prev_hash``
unique (a second row claiming the same predecessor, a fork, is refused). On
PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE of the log; its owner can
still drop the trigger, which is why ``moodwire audit verify`` checks the chain.

Revision ID: 0002_audit_chain
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from state.audit_chain import GENESIS, row_hash

revision = "0002_audit_chain"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

# The columns as this revision reads them (frozen: not state.store.schema).
audit_log = sa.table(
    "audit_log",
    sa.column("seq", sa.Integer),
    sa.column("ts", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("target", sa.String),
    sa.column("reason", sa.Text),
    sa.column("details", sa.JSON),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)

REFUSE_CHANGE = """
CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    _chain_existing_rows()
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
        batch.create_unique_constraint("uq_audit_log_prev_hash", ["prev_hash"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(REFUSE_CHANGE)
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()"
        )


def _chain_existing_rows() -> None:
    bind = op.get_bind()
    cols = [c for c in audit_log.c if c.name not in ("prev_hash", "hash")]
    rows = bind.execute(sa.select(*cols).order_by(audit_log.c.seq)).mappings()
    prev, updates = GENESIS, []
    for row in rows:
        chained = dict(row, prev_hash=prev)
        prev = row_hash(chained)
        updates.append({"b_seq": row["seq"], "prev_hash": chained["prev_hash"], "hash": prev})
    if updates:
        bind.execute(
            audit_log.update()
            .where(audit_log.c.seq == sa.bindparam("b_seq"))
            .values(prev_hash=sa.bindparam("prev_hash"), hash=sa.bindparam("hash")),
            updates,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_refuse_change()")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_log_prev_hash", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
