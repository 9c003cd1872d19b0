"""Pieces every page shares: the sidebar's time range and the operator sign-in."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

import streamlit as st

from dashboard import context, data
from stream import operations
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


def sign_in() -> None:
    """Name and credential for state-changing actions (viewing needs neither)."""
    with st.sidebar:
        st.subheader("Operator")
        st.text_input("Your name (for the audit log)", key="actor")
        st.text_input("Operator credential", type="password", key="token")
        if context.current().operations.operator_token is None:
            st.caption("Actions are disabled: no MOODWIRE_OPERATOR_TOKEN is configured.")
        else:
            st.caption("Viewing needs nothing; every action asks for the credential.")


def act(action: Any, *args: Any, success: str, **kwargs: Any) -> Any:
    """Run a state-changing ``action`` if the credential checks out; report either way.

    Returns the action's result, or None when it was refused or failed.
    """
    config = context.current().operations
    try:
        operations.check_credential(config, st.session_state.get("token"))
        result = action(config, *args, actor=st.session_state.get("actor") or "", **kwargs)
    except NotAllowed as exc:
        st.error(f"Refused: {exc}. Enter the operator credential in the sidebar.")
        return None
    except Exception as exc:  # noqa: BLE001 - shown to the operator, nothing else to do
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
