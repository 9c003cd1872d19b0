"""Pieces every page shares: the sidebar's time range and the sign-in."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

import streamlit as st

from dashboard import context, data
from stream import access
from stream.access import Principal
from stream.errors import NotAllowed
from stream.outage import is_outage

F = TypeVar("F", bound=Callable[..., Any])
RETRY_S = 10  # how often a page waiting for the store tries again

PRESETS = ("15m", "1h", "6h", "24h", "7d", "30d", "all", "custom")


def store_url() -> str:
    return context.current().store_url


@dataclass(frozen=True)
class Range:
    """The sidebar's choice of event-time range, resolved against the store when drawn.

    Ranges end at the newest item, not at the wall clock, so a replayed or
    historical stream shows the same way as a live one; resolving at each
    refresh lets a live page follow the stream.
    """

    preset: str
    custom: tuple[date, date] | None = None

    def resolve(self, url: str) -> tuple[datetime, datetime] | None:
        """``(start, end)``, or None when the store has no items yet."""
        lo, hi = data.time_bounds(url)
        if lo is None or hi is None:
            return None
        end = hi + timedelta(seconds=1)
        if self.preset == "custom" and self.custom is not None:
            start, end = _day(self.custom[0]), _day(self.custom[1]) + timedelta(days=1)
        else:
            start = data.since_preset(self.preset, end) or lo
        return max(start, lo), end


def time_range(url: str, default: str = "all") -> Range:
    """The sidebar's time range widgets."""
    lo, hi = data.time_bounds(url)
    with st.sidebar:
        st.subheader("Time range")
        preset = st.selectbox(
            "Range", PRESETS, index=PRESETS.index(default), key="range_preset",
            help="event time, ending at the newest item",
        )  # fmt: skip
        custom = None
        if preset == "custom" and lo is not None and hi is not None:
            picked = st.date_input(
                "From – to (UTC)", value=(lo.date(), hi.date()), key="range_custom"
            )
            days = list(picked) if isinstance(picked, tuple | list) else [picked]
            if days:
                custom = (days[0], days[-1])
    return Range(preset, custom)


def range_caption(window: tuple[datetime, datetime]) -> None:
    start, end = window
    st.caption(f"Event time {start:%Y-%m-%d %H:%M:%S} → {end:%Y-%m-%d %H:%M:%S} UTC")


def _day(d: date) -> datetime:
    return datetime.combine(d, time(0), tzinfo=UTC)


def live_toggle() -> int | None:
    """Seconds between refreshes of the live parts, or None when paused."""
    with st.sidebar:
        on = st.toggle("Live refresh (every 10 s)", value=True, key="live")
    return 10 if on else None


PRINCIPAL = "moodwire_principal"  # session state only: never a widget's key


def principal() -> Principal | None:
    """Who signed in to this session, or None."""
    who = st.session_state.get(PRINCIPAL)
    return who if isinstance(who, Principal) else None


def can(action: str) -> bool:
    """Whether to show ``action``'s controls (the action checks the role again itself)."""
    who = principal()
    return who is not None and who.can(action)


def _client() -> str:
    """Who is asking, for the lock-out: the connection's address (a proxy's, behind one)."""
    try:
        ip = st.context.ip_address
    except Exception:  # noqa: BLE001 - no request context (bare mode, tests)
        ip = None
    return f"ip:{ip}" if ip else "ip:unknown"


def oidc_configured() -> bool:
    """Whether Streamlit's ``[auth]`` secrets are set, so ``st.login`` can be offered."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def _oidc_sign_in() -> None:
    """Offer the OIDC provider; once it has answered, map its e-mail to a Moodwire user."""
    user = st.user
    if not user.is_logged_in:
        st.button("Sign in with your organisation", key="oidc_login", on_click=st.login)
        return
    store = data.get_store(store_url())
    try:
        who = access.oidc_principal(
            store, user.get("email"), verified=user.get("email_verified", True)
        )
    except NotAllowed as exc:
        st.error(f"Refused: {exc}")
        st.button("Sign out of the provider", key="oidc_logout", on_click=st.logout)
        return
    store.audit(who.name, "sign_in", who.name, None, {"client": _client(), "via": "oidc"})
    st.session_state[PRINCIPAL] = who


def sign_in() -> Principal | None:
    """The sidebar's sign-in (user name and password; OIDC where configured) or who is in."""
    with st.sidebar:
        who = principal()
        if who is not None:
            st.subheader("Signed in")
            st.caption(f"{md(who.name)} · {who.role}")
            if st.button("Sign out", key="sign_out"):
                del st.session_state[PRINCIPAL]
                if who.via == "oidc":
                    st.logout()
                st.rerun()
            return who
        st.subheader("Sign in")
        if oidc_configured():
            _oidc_sign_in()
            if principal() is not None:
                st.rerun()
        with st.form("sign_in_form", clear_on_submit=True):
            name = st.text_input("User name", key="sign_in_name")
            password = st.text_input("Password", type="password", key="sign_in_password")
            submitted = st.form_submit_button("Sign in")
        if submitted:
            ctx = context.current()
            try:
                who = access.sign_in(
                    data.get_store(ctx.store_url),
                    name,
                    password,
                    client=_client(),
                    policy=ctx.operations.sign_in,
                )
            except NotAllowed as exc:
                st.error(f"Refused: {exc}.")
                return None
            st.session_state[PRINCIPAL] = who
            st.rerun()
        st.caption("Viewing needs no role; each action needs one (ask an admin).")
    return None


def require_sign_in() -> None:
    """Stop the page here unless someone signed in (``MOODWIRE_ACCESS__REQUIRE_SIGN_IN``)."""
    if context.current().operations.sign_in.required and principal() is None:
        st.info("Sign in (sidebar) to see Moodwire.", icon=":material/lock:")
        st.stop()


def act(action: Any, *args: Any, success: str, **kwargs: Any) -> Any:
    """Run a state-changing ``action`` as the signed-in user; report either way.

    The action itself checks the user's role in the store before it writes
    anything (``stream.operations``); the audit log names the signed-in user.
    Returns the action's result, or None when it was refused or failed.
    """
    config = context.current().operations
    who = principal()
    try:
        if who is None:
            raise NotAllowed("sign in first")
        result = action(config, *args, by=who, **kwargs)
    except NotAllowed as exc:
        st.error(f"Refused: {exc}.")
        return None
    except Exception as exc:  # noqa: BLE001 - shown to the user, nothing else to do
        st.error(f"Failed: {exc}")
        return None
    st.cache_data.clear()  # what the action changed shows at once
    st.success(success)
    return result if result is not None else True


def severity_dot(severity: str) -> str:
    """A coloured marker for markdown (emoji fonts are not on every machine)."""
    return ":red[●]" if severity == "critical" else ":orange[●]"


def fmt_time(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value:%Y-%m-%d %H:%M:%S}"


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+-.!|$<>~"})


def md(text: str) -> str:
    """User text made literal for Streamlit markdown (``$ACME`` must not start maths).

    >>> md("$ACME up 5% (Q3)")
    '\\\\$ACME up 5% \\\\(Q3\\\\)'
    """
    return text.translate(_MD_SPECIAL)


def weighted_words(words: Sequence[Mapping[str, Any]]) -> str:
    """A text's words as markdown, coloured by their weight towards the label: green
    towards it, red away; the strongest (half the largest weight or more) in bold too,
    the faintest (under a sixth) plain.

    >>> weighted_words([{"word": "$ACME", "attribution": -0.1}, {"word": "beat", "attribution": 0.4},
    ...                 {"word": "on", "attribution": 0.01}])
    ':red-background[\\\\$ACME] :green-background[**beat**] on'
    """
    top = max((abs(w["attribution"]) for w in words), default=0.0) or 1.0
    shown = []
    for w in words:
        weight, word = w["attribution"] / top, md(w["word"])
        if abs(weight) < 1 / 6:
            shown.append(word)
            continue
        colour = "green" if weight > 0 else "red"
        shown.append(f":{colour}-background[{f'**{word}**' if abs(weight) >= 0.5 else word}]")
    return " ".join(shown)


# -- outages ------------------------------------------------------------------------------


def outage_notice(exc: BaseException) -> None:
    """Say the store is unreachable, and come back by itself when it answers again."""
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    st.warning(
        f"The store is unreachable ({type(exc).__name__}: {first}). Nothing is lost: the "
        f"workers wait for it too. This page tries again every {RETRY_S} s by itself.",
        icon=":material/cloud_off:",
    )

    @st.fragment(run_every=RETRY_S)
    def retry() -> None:
        if data.store_reachable(store_url()):
            st.cache_data.clear()
            st.rerun()

    retry()


def survive_outages(fn: F) -> F:
    """A page part that shows :func:`outage_notice` instead of a traceback during an outage."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_outage(exc):
                raise
            outage_notice(exc)
            return None

    return guarded  # type: ignore[return-value]
