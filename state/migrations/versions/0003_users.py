"""Named users with roles, and failed sign-ins (access control).

The same two tables as ``state.store.schema.users`` and ``sign_in_failures``
(which today's ``create_all`` also makes): ``users`` holds each user's role and
Argon2id password hash (never the password), ``sign_in_failures`` one row per
failed sign-in, counted per user name and per client by the lock-out that every
dashboard replica shares.

Revision ID: 0003_users
Revises: 0002_audit_chain
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_users"
down_revision = "0002_audit_chain"
branch_labels = None
depends_on = None


def _seq() -> sa.Column:
    return sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "users",
        _seq(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(512)),
        sa.Column("email", sa.String(320)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "sign_in_failures",
        _seq(),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
    )
    op.create_index("ix_sign_in_failures_user_ts", "sign_in_failures", ["user_name", "ts"])
    op.create_index("ix_sign_in_failures_client_ts", "sign_in_failures", ["client", "ts"])


def downgrade() -> None:
    op.drop_index("ix_sign_in_failures_client_ts", table_name="sign_in_failures")
    op.drop_index("ix_sign_in_failures_user_ts", table_name="sign_in_failures")
    op.drop_table("sign_in_failures")
    op.drop_table("users")
