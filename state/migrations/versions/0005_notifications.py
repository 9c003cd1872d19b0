"""What each alert destination was told, and dead letters' hash of the raw message.

``alert_notifications`` (one row per alert and destination: the state, severity and
revision last announced, so a restarted or second worker never announces it again)
and ``rejected.raw_sha256`` (with masking on, a dead letter keeps the hash of the
message instead of its raw bytes).

Revision ID: 0005_notifications
Revises: 0004_shared_registry
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_notifications"
down_revision = "0004_shared_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_notifications",
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("destination", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_alert_notifications_open", "alert_notifications", ["destination", "state"])
    # A store adopted at baseline may have the column already (baseline adds the nullable
    # columns of its day's schema): add it only where it is missing.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("rejected")}
    if "raw_sha256" not in columns:
        with op.batch_alter_table("rejected") as batch:
            batch.add_column(sa.Column("raw_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("rejected") as batch:
        batch.drop_column("raw_sha256")
    op.drop_index("ix_alert_notifications_open", table_name="alert_notifications")
    op.drop_table("alert_notifications")
