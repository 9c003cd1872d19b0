"""What the dashboard is handed by the process that serves it (``moodwire dashboard``).

The dashboard reads no environment and no settings of its own: the composition
root (``moodwire/dashboard_app.py``) builds one :class:`DashboardContext` from
the settings and hands it over with :func:`configure` before any page runs.
The query encoder for meaning search and the explainer of a score are handed
over as factories, so the dashboard never imports torch or transformers itself;
each is called on first use (a meaning search, an Explain), not before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stream.config import OperationsConfig


class QueryEncoder(Protocol):
    """Embeds search queries into the index's vector space."""

    dim: int
    space_id: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class ExplainError(Exception):
    """A score could not be explained: its version is gone or refused, or the text is empty."""


# A version's explainer: text -> the label it gets and each word's weight towards it, as
# plain data (learner.explain.Explanation.to_dict(): label, probability, words, delta, …).
TextExplainer = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class DashboardContext:
    """Where the pages read from, and where an operator's actions land."""

    store_url: str = field(repr=False)  # it may hold the database password
    registry: str
    index_dir: str
    operations: OperationsConfig
    taxonomy: str | None = None
    open_encoder: Callable[[], QueryEncoder] | None = None
    # A version's name -> its explainer (the model loaded); raises ExplainError. None: no Explain.
    open_explainer: Callable[[str], TextExplainer] | None = None


_current: DashboardContext | None = None


def configure(context: DashboardContext) -> None:
    """Hand the pages their context (the serving process does this on every run)."""
    global _current
    _current = context


def current() -> DashboardContext:
    """The context the pages run in."""
    if _current is None:
        raise RuntimeError(
            "the dashboard was started without its context: serve it with `moodwire dashboard`"
        )
    return _current
