"""Who may do what: named users with roles, their passwords, sign-in and its lock-out.

Four roles, each with the rights of the one before it:

* ``viewer``: reads every page (nothing to authorise);
* ``analyst``: label and topic corrections;
* ``operator``: retrain, approve/promote, roll back, acknowledge and mute alerts;
* ``admin``: adds, removes and changes users.

A :class:`Principal` is who acts: a user signed in with a password (``password``),
through the dashboard's OIDC provider (``oidc``), or the operating-system user
running ``moodwire users`` (``os``: whoever can run it against the store can
write its tables anyway, so it may manage users and nothing else; its audit
actor is ``os:<login>``). :func:`authorise` re-reads a user's role from the store
before every action, so a role taken away holds at once, on every replica.

Passwords are hashed with Argon2id (``argon2.PasswordHasher``); failed sign-ins
are rows in the store, counted per user name and per client over a window, so
every dashboard replica shares the lock-out. Every sign-in, failed or not, and
every user change is written to the audit log; a password never is.

>>> can("analyst", "correct"), can("analyst", "promote"), can("admin", "promote")
(True, False, True)
>>> parse_user_name("  Ann.Lee ")
'ann.lee'
"""

from __future__ import annotations

import getpass
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from state.store import Store
from stream.config import ROLES, SignInPolicy
from stream.errors import NotAllowed

# Each action and the least role that may do it.
ACTIONS: dict[str, str] = {
    "correct": "analyst",
    "retrain": "operator",
    "promote": "operator",  # approving a candidate awaiting approval is a promotion
    "rollback": "operator",
    "acknowledge": "operator",
    "mute": "operator",
    "manage_users": "admin",
}
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # Argon2 takes any length; this bounds what a form can make us hash
MAX_NAME_LENGTH = 64
_NAME_PUNCTUATION = frozenset("._-@")

_hasher = PasswordHasher()  # Argon2id, the library's (RFC 9106 low-memory) defaults
# Checked against when the user name is unknown, so that answering takes as long either way.
_DUMMY_HASH = _hasher.hash("moodwire: no such user, same work")


class InvalidCredential(ValueError):
    """A user name or password that cannot be used (the message says why)."""


class LockedOut(NotAllowed):
    """Too many failed sign-ins for this user name or from this client: wait."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


@dataclass(frozen=True)
class Principal:
    """Who acts: a user name, its role, and how it proved who it is."""

    name: str
    role: str
    via: Literal["password", "oidc", "os"] = "password"

    @property
    def actor(self) -> str:
        """The audit log's actor: the user name (``os:<login>`` for the OS user)."""
        return f"os:{self.name}" if self.via == "os" else self.name

    def can(self, action: str) -> bool:
        """What the session shows (every action is re-checked by :func:`authorise`)."""
        return action == "manage_users" if self.via == "os" else can(self.role, action)


def os_principal() -> Principal:
    """The operating-system user running a ``moodwire users`` command."""
    return Principal(getpass.getuser(), "admin", via="os")


# -- the role matrix ------------------------------------------------------------------


def can(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (an unknown role or action may do nothing).

    >>> [r for r in ROLES if can(r, "acknowledge")]
    ['operator', 'admin']
    >>> can("root", "promote"), can("admin", "delete_everything")
    (False, False)
    """
    if role not in ROLES or action not in ACTIONS:
        return False
    return ROLES.index(role) >= ROLES.index(ACTIONS[action])


def parse_role(role: str) -> str:
    """A role name, or a clear error.

    >>> parse_role(" Operator ")
    'operator'
    >>> parse_role("root")
    Traceback (most recent call last):
    ...
    stream.access.InvalidCredential: unknown role 'root': choose viewer, analyst, operator or admin
    """
    r = (role or "").strip().lower()
    if r not in ROLES:
        raise InvalidCredential(
            f"unknown role {role[:32]!r}: choose {', '.join(ROLES[:-1])} or {ROLES[-1]}"
        )
    return r


def authorise(store: Store, by: Principal, action: str) -> Principal:
    """``by`` as the store knows it now, if it may do ``action``; else :class:`NotAllowed`.

    The role is read again from the store (not taken from the session that
    signed in): a user removed or demoted since is refused at once.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if by.via == "os":
        if action != "manage_users":
            raise NotAllowed(
                f"{action} needs a Moodwire user's credential, not only an operating-system login"
            )
        return by
    user = store.user(by.name)
    if user is None:
        raise NotAllowed(f"no user {by.name!r} any more: sign in again")
    now = Principal(user["name"], user["role"], by.via)
    if not can(now.role, action):
        raise NotAllowed(f"{action} needs the {ACTIONS[action]} role; {now.name} is {now.role}")
    return now


# -- user names and passwords ---------------------------------------------------------


def parse_user_name(name: object) -> str:
    """A user name as stored: NFKC-normalised, lower-case, trimmed; or a clear error.

    1 to 64 letters or digits (any script) and ``. _ - @``, starting with a letter or digit.

    >>> parse_user_name("Zoë")
    'zoë'
    >>> parse_user_name("ann lee")
    Traceback (most recent call last):
    ...
    stream.access.InvalidCredential: a user name has letters, digits and . _ - @ only, got 'ann lee'
    """
    if not isinstance(name, str):
        raise InvalidCredential("a user name is text")
    n = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).strip().casefold())
    if not n:
        raise InvalidCredential("say who you are: the user name is empty")
    if len(n) > MAX_NAME_LENGTH:
        raise InvalidCredential(f"a user name has at most {MAX_NAME_LENGTH} characters")
    if not all(c.isalnum() or c in _NAME_PUNCTUATION for c in n):
        raise InvalidCredential(
            f"a user name has letters, digits and . _ - @ only, got {n[:MAX_NAME_LENGTH]!r}"
        )
    if not n[0].isalnum():
        raise InvalidCredential("a user name starts with a letter or a digit")
    return n


def parse_password(password: object) -> str:
    """A password fit to set: NFKC-normalised, 12 to 1024 characters; or a clear error.

    >>> parse_password("short")
    Traceback (most recent call last):
    ...
    stream.access.InvalidCredential: a password needs at least 12 characters (this one has 5)
    """
    if not isinstance(password, str):
        raise InvalidCredential("a password is text")
    p = unicodedata.normalize("NFKC", password)
    if "\x00" in p:
        raise InvalidCredential("a password cannot hold a NUL character")
    if len(p) < MIN_PASSWORD_LENGTH:
        raise InvalidCredential(
            f"a password needs at least {MIN_PASSWORD_LENGTH} characters (this one has {len(p)})"
        )
    if len(p) > MAX_PASSWORD_LENGTH:
        raise InvalidCredential(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    if not p.strip():
        raise InvalidCredential("a password cannot be only spaces")
    return p


def hash_password(password: str) -> str:
    """The Argon2id hash (a PHC string) of a password that :func:`parse_password` accepts."""
    return _hasher.hash(parse_password(password))


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# -- sign-in --------------------------------------------------------------------------


def _lock_until(times: list[datetime], most: int, window: timedelta) -> datetime | None:
    """When the lock ends, if ``times`` (oldest first) hold ``most`` or more failures."""
    if most <= 0 or len(times) < most:
        return None
    return times[-most] + window


def lock_state(
    store: Store, name: str, client: str, policy: SignInPolicy, now: datetime | None = None
) -> datetime | None:
    """Until when sign-ins as ``name`` or from ``client`` are refused; None when they are not."""
    now = now or datetime.now(UTC)
    window = timedelta(seconds=policy.window_s)
    since = now - window
    by_user = _lock_until(
        store.sign_in_failures_since(since, user_name=name), policy.max_failures, window
    )
    by_client = _lock_until(
        store.sign_in_failures_since(since, client=client), policy.max_client_failures, window
    )
    until = max((t for t in (by_user, by_client) if t is not None), default=None)
    return until if until is not None and until > now else None


def sign_in(
    store: Store, name: str, password: str, *, client: str, policy: SignInPolicy
) -> Principal:
    """The user ``name`` if ``password`` is theirs and no lock-out holds; else :class:`NotAllowed`.

    A failure is a row of ``sign_in_failures`` and an audit row (the user name
    tried and the client, never the password), in one transaction. During a
    lock-out even the right password is refused (and that refusal audited).
    A success forgets the name's failures and is audited too.
    """
    client = (client or "unknown")[:128]
    raw = name if isinstance(name, str) else ""
    try:
        user_name = parse_user_name(raw)
    except InvalidCredential:
        user_name = unicodedata.normalize("NFKC", raw).strip()[:MAX_NAME_LENGTH] or "(empty)"
    until = lock_state(store, user_name, client, policy)
    if until is not None:
        store.audit(
            "anonymous", "sign_in_locked", user_name, None, {"client": client, "until": str(until)}
        )
        raise LockedOut(
            f"too many failed sign-ins: try again after {until:%H:%M:%S} UTC", until=until
        )
    user = store.user(user_name)
    ok = isinstance(password, str) and len(password) <= MAX_PASSWORD_LENGTH
    ok = _verify(user["password_hash"] if user else None, _norm(password)) if ok else False
    if not ok or user is None:
        with store.audited(
            "anonymous",
            "sign_in_failed",
            user_name,
            None,
            {"client": client, "known_user": user is not None},
        ) as conn:
            store.add_sign_in_failure_in(conn, user_name, client)
        raise NotAllowed("wrong user name or password")
    if _hasher.check_needs_rehash(user["password_hash"]):
        with store.engine.begin() as conn:
            store.update_user_in(conn, user_name, password_hash=_hasher.hash(_norm(password)))
    store.clear_sign_in_failures(user_name)
    store.audit(user_name, "sign_in", user_name, None, {"client": client, "via": "password"})
    return Principal(user_name, user["role"], "password")


def _norm(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def oidc_principal(store: Store, email: str | None, *, verified: bool | None = True) -> Principal:
    """The Moodwire user an OIDC provider's e-mail maps to (``users add --email``), or NotAllowed."""
    if not email or verified is False:
        raise NotAllowed("the identity provider gave no verified e-mail address")
    user = store.user_by_email(email)
    if user is None:
        raise NotAllowed(f"{email} is not a Moodwire user: ask an admin to add it (--email)")
    return Principal(user["name"], user["role"], "oidc")


# -- user management (admin) ----------------------------------------------------------


def _admins(store: Store) -> list[str]:
    return [u["name"] for u in store.users() if u["role"] == "admin"]


def add_user(
    store: Store,
    by: Principal,
    name: str,
    role: str,
    password: str | None,
    *,
    email: str | None = None,
) -> dict[str, Any]:
    """Add a user (a password, an OIDC e-mail, or both); audited with ``by`` as actor."""
    by = authorise(store, by, "manage_users")
    name, role = parse_user_name(name), parse_role(role)
    if password is None and not email:
        raise InvalidCredential("a user needs a password, an OIDC e-mail (--email), or both")
    hashed = hash_password(password) if password is not None else None
    email = email.strip().lower() if email else None
    if store.user(name) is not None:
        raise InvalidCredential(f"a user {name!r} exists already")
    if email and store.user_by_email(email) is not None:
        raise InvalidCredential(f"another user has the e-mail {email}")
    with store.audited(by.actor, "user_add", name, None, {"role": role, "email": email}) as conn:
        store.add_user_in(conn, name, role, hashed, email)
    return {"user": name, "role": role, "email": email}


def remove_user(store: Store, by: Principal, name: str) -> dict[str, Any]:
    by = authorise(store, by, "manage_users")
    name = parse_user_name(name)
    if _admins(store) == [name] and by.via != "os":
        raise InvalidCredential(f"{name} is the last admin: make another admin first")
    with store.audited(by.actor, "user_remove", name, None, {}) as conn:
        if not store.remove_user_in(conn, name):
            raise InvalidCredential(f"no user {name!r} in the store")  # rolls the audit row back
    return {"removed": name}


def set_role(store: Store, by: Principal, name: str, role: str) -> dict[str, Any]:
    by = authorise(store, by, "manage_users")
    name, role = parse_user_name(name), parse_role(role)
    if role != "admin" and _admins(store) == [name] and by.via != "os":
        raise InvalidCredential(f"{name} is the last admin: make another admin first")
    with store.audited(by.actor, "user_set_role", name, None, {"role": role}) as conn:
        if not store.update_user_in(conn, name, role=role):
            raise InvalidCredential(f"no user {name!r} in the store")
    return {"user": name, "role": role}


def set_password(store: Store, by: Principal, name: str, password: str) -> dict[str, Any]:
    by = authorise(store, by, "manage_users")
    name = parse_user_name(name)
    hashed = hash_password(password)
    with store.audited(by.actor, "user_set_password", name, None, {}) as conn:
        if not store.update_user_in(conn, name, password_hash=hashed):
            raise InvalidCredential(f"no user {name!r} in the store")
    store.clear_sign_in_failures(name)
    return {"user": name, "password": "changed"}
