"""Access control: the role matrix, user changes, sign-in and its lock-out, over a real store."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.store import Store
from stream import access
from stream.access import (
    ACTIONS,
    MIN_PASSWORD_LENGTH,
    InvalidCredential,
    LockedOut,
    Principal,
    parse_password,
    parse_user_name,
)
from stream.config import ROLES, SignInPolicy
from stream.errors import NotAllowed

# What each role may do, written out (not derived from ACTIONS): the matrix.
EXPECTED = {
    "viewer": set(),
    "analyst": {"correct"},
    "operator": {"correct", "retrain", "promote", "rollback", "acknowledge", "mute"},
    "admin": {"correct", "retrain", "promote", "rollback", "acknowledge", "mute", "manage_users"},
}
PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'users.db'}")


def _users(store: Store) -> dict[str, Principal]:
    root = access.os_principal()
    for role in ROLES:
        access.add_user(store, root, f"{role}-1", role, PASSWORD)
    return {role: Principal(f"{role}-1", role) for role in ROLES}


def test_the_matrix_has_every_action() -> None:
    assert set(ACTIONS) == set().union(*EXPECTED.values())


@pytest.fixture(scope="module")
def matrix_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One user of each role (hashing is slow on purpose: made once for the matrix)."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'users.db'}")
    _users(store)
    return store


@pytest.mark.parametrize(("role", "action"), list(itertools.product(ROLES, sorted(ACTIONS))))
def test_every_role_and_action(matrix_store: Store, role: str, action: str) -> None:
    store = matrix_store
    who = Principal(f"{role}-1", role)
    allowed = action in EXPECTED[role]
    assert access.can(role, action) is allowed
    assert who.can(action) is allowed
    if allowed:
        assert access.authorise(store, who, action) == who
    else:
        with pytest.raises(NotAllowed, match=f"{action} needs the"):
            access.authorise(store, who, action)


def test_the_role_is_read_from_the_store_not_the_session(store: Store) -> None:
    who = _users(store)["operator"]
    access.set_role(store, access.os_principal(), who.name, "viewer")
    with pytest.raises(NotAllowed, match="operator-1 is viewer"):
        access.authorise(store, who, "promote")  # the principal still says operator
    access.remove_user(store, access.os_principal(), who.name)
    with pytest.raises(NotAllowed, match="no user"):
        access.authorise(store, who, "correct")


def test_the_os_user_manages_users_and_nothing_else(store: Store) -> None:
    root = access.os_principal()
    assert access.authorise(store, root, "manage_users") == root
    for action in sorted(set(ACTIONS) - {"manage_users"}):
        with pytest.raises(NotAllowed, match="needs a Moodwire user"):
            access.authorise(store, root, action)


def test_user_changes_are_audited_and_no_hash_is_listed(store: Store) -> None:
    users = _users(store)
    admin = users["admin"]
    access.add_user(store, admin, "Zoë", "analyst", "zoë's long password")
    access.set_role(store, admin, "zoë", "operator")
    access.set_password(store, admin, "zoë", "another long password")
    access.remove_user(store, admin, "zoë")
    rows = [(r["actor"], r["action"], r["target"]) for r in store.audit_rows()][-4:]
    assert rows == [
        ("admin-1", "user_add", "zoë"),
        ("admin-1", "user_set_role", "zoë"),
        ("admin-1", "user_set_password", "zoë"),
        ("admin-1", "user_remove", "zoë"),
    ]
    assert all("password_hash" not in u for u in store.users())
    stored = store.user("admin-1")
    assert stored is not None and stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in str(store.audit_rows()) and PASSWORD not in stored["password_hash"]


def test_a_non_admin_cannot_change_users_and_nothing_is_written(store: Store) -> None:
    users = _users(store)
    before = len(store.audit_rows())
    for role in ("viewer", "analyst", "operator"):
        with pytest.raises(NotAllowed):
            access.add_user(store, users[role], "mallory", "admin", "mallory's password")
        with pytest.raises(NotAllowed):
            access.set_role(store, users[role], f"{role}-1", "admin")
    assert store.user("mallory") is None and store.user("viewer-1")["role"] == "viewer"
    assert len(store.audit_rows()) == before


def test_the_last_admin_stays(store: Store) -> None:
    admin = _users(store)["admin"]
    with pytest.raises(InvalidCredential, match="last admin"):
        access.set_role(store, admin, "admin-1", "viewer")
    with pytest.raises(InvalidCredential, match="last admin"):
        access.remove_user(store, admin, "admin-1")
    assert store.user("admin-1")["role"] == "admin"


def test_a_short_password_is_refused_with_its_length(store: Store) -> None:
    with pytest.raises(InvalidCredential, match="at least 12 characters \\(this one has 7\\)"):
        access.add_user(store, access.os_principal(), "ann", "viewer", "hunter2")
    assert store.user("ann") is None


# -- sign-in and the lock-out ----------------------------------------------------------


def test_sign_in_gives_the_stored_role_and_audits(store: Store) -> None:
    _users(store)
    who = access.sign_in(
        store, " Analyst-1 ", PASSWORD, client="ip:10.0.0.1", policy=SignInPolicy()
    )
    assert who == Principal("analyst-1", "analyst", "password")
    assert store.audit_rows("sign_in")[-1]["actor"] == "analyst-1"


def test_failures_lock_the_user_out_even_with_the_right_password(store: Store) -> None:
    _users(store)
    policy = SignInPolicy(max_failures=3, max_client_failures=100, window_s=600)
    for i in range(3):
        with pytest.raises(NotAllowed, match="wrong user name or password"):
            access.sign_in(store, "operator-1", f"guess number {i}", client="ip:a", policy=policy)
    with pytest.raises(LockedOut, match="too many failed sign-ins") as locked:
        access.sign_in(store, "operator-1", PASSWORD, client="ip:b", policy=policy)
    assert locked.value.until > datetime.now(UTC) + timedelta(seconds=590)
    failed = store.audit_rows("sign_in_failed")
    assert [(r["target"], r["details"]["client"]) for r in failed] == [("operator-1", "ip:a")] * 3
    assert all("guess" not in str(r) for r in store.audit_rows())  # never the password
    assert store.audit_rows("sign_in_locked")[-1]["target"] == "operator-1"
    assert not store.audit_rows("sign_in")
    # Another user is not locked by it; once the window has passed, the user is not either.
    access.sign_in(store, "viewer-1", PASSWORD, client="ip:b", policy=policy)
    later = datetime.now(UTC) + timedelta(seconds=601)
    assert access.lock_state(store, "operator-1", "ip:b", policy, now=later) is None


def test_failures_from_one_client_lock_that_client_out(store: Store) -> None:
    _users(store)
    policy = SignInPolicy(max_failures=100, max_client_failures=4, window_s=600)
    for name in ("viewer-1", "analyst-1", "nobody", "admin-1"):
        with pytest.raises(NotAllowed):
            access.sign_in(store, name, "not the password", client="ip:evil", policy=policy)
    with pytest.raises(LockedOut):
        access.sign_in(store, "operator-1", PASSWORD, client="ip:evil", policy=policy)
    assert access.sign_in(store, "operator-1", PASSWORD, client="ip:good", policy=policy)
    unknown = [r for r in store.audit_rows("sign_in_failed") if r["target"] == "nobody"]
    assert unknown and unknown[0]["details"]["known_user"] is False


def test_the_lock_out_is_shared_through_the_database(tmp_path: Path) -> None:
    """Two replicas are two Store objects (two engines) on one database."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = Store(url), Store(url)
    _users(one)
    policy = SignInPolicy(max_failures=2, window_s=600)
    for s in (one, two):
        with pytest.raises(NotAllowed):
            access.sign_in(s, "admin-1", "wrong password!", client="ip:x", policy=policy)
    with pytest.raises(LockedOut):
        access.sign_in(one, "admin-1", PASSWORD, client="ip:y", policy=policy)


def test_a_success_forgets_earlier_failures(store: Store) -> None:
    _users(store)
    policy = SignInPolicy(max_failures=2, window_s=600)
    with pytest.raises(NotAllowed):
        access.sign_in(store, "admin-1", "wrong password!", client="ip:x", policy=policy)
    access.sign_in(store, "admin-1", PASSWORD, client="ip:x", policy=policy)
    with pytest.raises(NotAllowed):
        access.sign_in(store, "admin-1", "wrong password!", client="ip:x", policy=policy)
    assert access.sign_in(store, "admin-1", PASSWORD, client="ip:x", policy=policy)


def test_oidc_maps_a_verified_email_to_a_user(store: Store) -> None:
    access.add_user(store, access.os_principal(), "kim", "analyst", None, email="Kim@Bank.Example")
    assert access.oidc_principal(store, "kim@bank.example") == Principal("kim", "analyst", "oidc")
    with pytest.raises(NotAllowed, match="verified"):
        access.oidc_principal(store, "kim@bank.example", verified=False)
    with pytest.raises(NotAllowed, match="not a Moodwire user"):
        access.oidc_principal(store, "eve@bank.example")
    # No password: a password sign-in as kim fails like any other.
    with pytest.raises(NotAllowed, match="wrong user name or password"):
        access.sign_in(store, "kim", "any password at all", client="c", policy=SignInPolicy())


# -- parsing outside input (hypothesis) ------------------------------------------------


@given(st.text(max_size=200))
def test_a_user_name_parses_to_a_normal_form_or_a_clear_error(raw: str) -> None:
    try:
        name = parse_user_name(raw)
    except InvalidCredential as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 1 <= len(name) <= 64 and name == name.strip()
    assert all(c.isalnum() or c in "._-@" for c in name) and name[0].isalnum()
    assert parse_user_name(name) == name  # idempotent
    assert parse_user_name(raw.upper()) == name or not raw.isascii()


@given(st.text(max_size=2000))
def test_a_password_is_accepted_by_length_or_refused_clearly(raw: str) -> None:
    try:
        password = parse_password(raw)
    except InvalidCredential as exc:
        assert str(exc) and (len(raw) < 4 or raw not in str(exc))  # never echoed back
        return
    assert MIN_PASSWORD_LENGTH <= len(password) <= access.MAX_PASSWORD_LENGTH


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a" * 65, "at most 64"),
        ("ann\x00", "letters, digits"),
        ("ann\u202e", "letters, digits"),
        ("-ann", "starts with a letter"),
    ],
)
def test_bad_user_names(raw: str, message: str) -> None:
    with pytest.raises(InvalidCredential, match=message):
        parse_user_name(raw)


def test_unicode_names_and_passwords_normalise() -> None:
    assert parse_user_name("ＡＮＮ") == "ann"  # full-width letters, NFKC
    assert parse_user_name("Ünal") == parse_user_name("U\u0308nal")  # composed or not
    assert parse_password("ｐａｓｓｗｏｒｄ１２３４") == "password1234"
    with pytest.raises(InvalidCredential, match="at most 1024"):
        parse_password("x" * 1025)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(alphabet=st.characters(categories=["L", "Nd"]), min_size=1, max_size=20),
    password=st.text(min_size=12, max_size=60).filter(lambda p: p.strip() and "\x00" not in p),
)
def test_any_accepted_name_and_password_sign_in(tmp_path: Path, name: str, password: str) -> None:
    try:
        user = parse_user_name(name)
    except InvalidCredential:
        return
    store = Store("sqlite://")
    access.add_user(store, access.os_principal(), name, "viewer", password)
    who = access.sign_in(store, name, password, client="c", policy=SignInPolicy())
    assert who.name == user
    with pytest.raises(NotAllowed):
        access.sign_in(store, name, password + "x", client="c", policy=SignInPolicy())
