"""``moodwire users …``: named users and their roles (access control, see ``stream.access``).

These commands run as the operating-system user who starts them, recorded in the
audit log as ``os:<login>``: whoever can run them against the store holds its
database credentials and could write its tables directly, so no second
credential would protect anything. That is also how the first admin is made.
Passwords are read from a prompt (asked twice) or, with ``--password-stdin``,
from the first line of standard input; never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from moodwire.cmdkit import UserError, command, guard, print_json
from moodwire.settings import Settings
from stream.config import ROLES


def _store(settings: Settings):  # noqa: ANN202 - the store is imported per command
    from state.store import Store

    return Store(settings.resolved_store_url())


def _password(args: argparse.Namespace, name: str) -> str:
    """The new password: stdin's first line with --password-stdin, else asked twice."""
    from stream.access import parse_password

    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UserError("--password-stdin: standard input is empty")
        return parse_password(line.rstrip("\r\n"))
    if sys.stdin is None or not sys.stdin.isatty():
        raise UserError("no terminal to ask for the password on: pass it with --password-stdin")
    first = parse_password(getpass.getpass(f"new password for {name}: "))
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ; nothing was changed")
    return first


def _errors(fn):  # noqa: ANN001, ANN202 - a decorator
    """A refused name, role or password is one line, like every user error."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from stream.access import InvalidCredential

        try:
            return fn(args, settings)
        except InvalidCredential as exc:
            raise UserError(str(exc)) from None

    return run


@command("users add")
@guard
@_errors
def users_add_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import access

    name = access.parse_user_name(args.name)
    access.parse_role(args.role)
    password = None if args.no_password else _password(args, name)
    if args.no_password and not args.email:
        raise UserError("--no-password needs --email: the user signs in through OIDC only")
    result = access.add_user(
        _store(settings), access.os_principal(), name, args.role, password, email=args.email
    )
    print_json(result)
    return 0


@command("users remove")
@guard
@_errors
def users_remove_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import access

    print_json(access.remove_user(_store(settings), access.os_principal(), args.name))
    return 0


@command("users list")
@guard
def users_list_cmd(args: argparse.Namespace, settings: Settings) -> int:
    rows = _store(settings).users()  # no password hashes: the store never lists them
    print_json(
        [
            {
                "user": u["name"],
                "role": u["role"],
                "email": u["email"],
                "created_at": u["created_at"],
                "updated_at": u["updated_at"],
            }
            for u in rows
        ]
    )
    return 0


@command("users set-role")
@guard
@_errors
def users_set_role_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import access

    print_json(access.set_role(_store(settings), access.os_principal(), args.name, args.role))
    return 0


@command("users passwd")
@guard
@_errors
def users_passwd_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import access

    name = access.parse_user_name(args.name)
    password = _password(args, name)
    print_json(access.set_password(_store(settings), access.os_principal(), name, password))
    return 0


def add_parsers(
    commands: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Declare ``users add|remove|list|set-role|passwd`` (called by ``moodwire.cli``)."""
    help_ = "named users and roles: viewer, analyst, operator, admin (run as your OS login)"
    p = commands.add_parser(
        "users",
        help=help_,
        description="Add, remove and list the users who sign in to the dashboard and run operator "
        "actions. viewer reads; analyst also corrects labels and topics; operator also "
        "retrains, approves, promotes, rolls back, acknowledges and mutes; admin also manages "
        "users. These commands act as your operating-system login (audited as os:LOGIN): "
        "anyone who can run them against the store can write its tables anyway.",
    )
    users = p.add_subparsers(dest="users", metavar="ACTION", required=True)

    def sub(name: str, what: str) -> argparse.ArgumentParser:
        q = users.add_parser(name, help=what, description=what)
        common(q)
        return q

    def stdin_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input (default: ask "
            "twice on the terminal; never give it as an argument)",
        )

    q = sub("add", "add a user with a role; the password is asked for (at least 12 characters)")
    q.add_argument("name", help="user name: letters, digits and . _ - @ (stored lower-case)")
    q.add_argument("--role", required=True, choices=ROLES, help="what the user may do")
    q.add_argument(
        "--email", help="the e-mail an OIDC sign-in (Streamlit [auth]) maps to this user"
    )
    q.add_argument(
        "--no-password", action="store_true", help="no password: OIDC sign-in only (needs --email)"
    )
    stdin_flag(q)
    q = sub("remove", "remove a user (the last admin only from here, by your OS login)")
    q.add_argument("name", help="the user to remove")
    sub("list", "list users, their roles and e-mails, as JSON (no password hashes)")
    q = sub("set-role", "change a user's role")
    q.add_argument("name", help="the user")
    q.add_argument("role", choices=ROLES, help="the new role")
    q = sub("passwd", "set a user's password (asked twice, or --password-stdin)")
    q.add_argument("name", help="the user")
    stdin_flag(q)
