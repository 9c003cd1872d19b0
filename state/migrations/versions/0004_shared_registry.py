"""The shared model registry: versions, their files' chunks, and the serving pointer.

For workers and learners on several hosts (``MOODWIRE_REGISTRY_URL``): see
``state/shared_registry.py``. The same tables as ``state/store/schema.py``
(``registry_versions``, ``registry_files``, ``registry_pointer``).

Revision ID: 0004_shared_registry
Revises: 0003_users
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_shared_registry"
down_revision = "0003_users"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_versions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("number", sa.Integer, nullable=False, unique=True),
        sa.Column("card", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "registry_files",
        sa.Column(
            "version",
            sa.String(32),
            sa.ForeignKey("registry_versions.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("chunk", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "registry_pointer",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.String(32), sa.ForeignKey("registry_versions.name")),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("switch", sa.JSON),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registry_pointer")
    op.drop_table("registry_files")
    op.drop_table("registry_versions")
