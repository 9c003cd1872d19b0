"""Named users with roles, and the failed sign-ins the lock-out counts (``users`` and
``sign_in_failures``; the policy, hashing and audit are ``stream.access``'s).

Every change goes through a connection the caller holds open with its audit row
(``Store.audited``), so a user change and its audit row are one transaction.

>>> from datetime import UTC, datetime
>>> from state.store import Store
>>> store = Store("sqlite://")
>>> with store.audited("os:root", "user_add", "ann", None) as conn:
...     store.add_user_in(conn, "ann", "viewer", "$argon2id$...", None)
>>> [(u["name"], u["role"]) for u in store.users()]
[('ann', 'viewer')]
>>> "password_hash" in store.users()[0]
False
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from state.store.base import StoreBase
from state.store.schema import as_utc, sign_in_failures, users

_LISTED = (users.c.name, users.c.role, users.c.email, users.c.created_at, users.c.updated_at)


def _row(r: Any) -> dict[str, Any]:
    row = dict(r)
    for k in ("created_at", "updated_at"):
        if k in row:
            row[k] = as_utc(row[k])
    return row


class UsersStore(StoreBase):
    """Users (name, role, password hash, OIDC e-mail) and failed sign-ins."""

    def user(self, name: str) -> dict[str, Any] | None:
        """The user called ``name`` with its password hash (for checking it), or None."""
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(users).where(users.c.name == name)).mappings().first()
        return _row(r) if r is not None else None

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        """The user whose OIDC e-mail is ``email`` (compared case-blind), or None."""
        q = sa.select(users).where(sa.func.lower(users.c.email) == email.strip().lower())
        with self.engine.connect() as conn:
            r = conn.execute(q).mappings().first()
        return _row(r) if r is not None else None

    def users(self) -> list[dict[str, Any]]:
        """Every user by name, without password hashes."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*_LISTED).order_by(users.c.name)).mappings().all()
        return [_row(r) for r in rows]

    def add_user_in(
        self, conn: Connection, name: str, role: str, password_hash: str | None, email: str | None
    ) -> None:
        now = datetime.now(UTC)
        conn.execute(
            users.insert().values(
                name=name,
                role=role,
                password_hash=password_hash,
                email=email,
                created_at=now,
                updated_at=now,
            )
        )

    def update_user_in(self, conn: Connection, name: str, **values: Any) -> bool:
        """Change ``role``, ``password_hash`` or ``email``; False when there is no such user."""
        done = conn.execute(
            users.update()
            .where(users.c.name == name)
            .values(**values, updated_at=datetime.now(UTC))
        )
        return done.rowcount > 0

    def remove_user_in(self, conn: Connection, name: str) -> bool:
        return conn.execute(users.delete().where(users.c.name == name)).rowcount > 0

    # -- failed sign-ins ---------------------------------------------------------------

    def add_sign_in_failure_in(self, conn: Connection, user_name: str, client: str) -> None:
        conn.execute(
            sign_in_failures.insert().values(
                ts=datetime.now(UTC), user_name=user_name[:64], client=client[:128]
            )
        )

    def sign_in_failures_since(
        self, since: datetime, *, user_name: str | None = None, client: str | None = None
    ) -> list[datetime]:
        """When each failure since ``since`` of that user name (or from that client) was, oldest first."""
        q = sa.select(sign_in_failures.c.ts).where(sign_in_failures.c.ts >= since)
        if user_name is not None:
            q = q.where(sign_in_failures.c.user_name == user_name[:64])
        if client is not None:
            q = q.where(sign_in_failures.c.client == client[:128])
        with self.engine.connect() as conn:
            return [as_utc(t) for t in conn.execute(q.order_by(sign_in_failures.c.ts)).scalars()]

    def clear_sign_in_failures(self, user_name: str) -> None:
        """Forget a user name's failures (after it signed in; the audit log keeps them)."""
        with self.engine.begin() as conn:
            conn.execute(
                sign_in_failures.delete().where(sign_in_failures.c.user_name == user_name[:64])
            )
