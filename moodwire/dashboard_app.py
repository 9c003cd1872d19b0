"""The dashboard's Streamlit script: settings in, :func:`dashboard.app.main` out.

``moodwire dashboard`` serves this file (``streamlit run moodwire/dashboard_app.py``).
It is the one place the dashboard meets the settings: it builds the pages'
:class:`~dashboard.context.DashboardContext` (store, registry, index, the
operator's action targets) and a lazy query encoder for meaning search, which
loads the embedding model only when an analyst first searches by meaning.
"""

from __future__ import annotations

from typing import Any

from dashboard.context import DashboardContext
from moodwire.settings import Settings


def _query_encoder() -> Any:
    from retrieval.embedder import FrozenEmbedder

    return FrozenEmbedder(device="cpu")


def dashboard_context(settings: Settings) -> DashboardContext:
    """What the pages read from and where their actions land, from the settings."""
    return DashboardContext(
        store_url=settings.resolved_store_url(),
        registry=str(settings.resolved_registry()),
        index_dir=str(settings.resolved_index_dir()),
        operations=settings.operations(origin="dashboard"),  # signs as "dashboard"
        taxonomy=str(settings.taxonomy) if settings.taxonomy else None,
        open_encoder=_query_encoder,
    )


if __name__ == "__main__":  # Streamlit runs this script as __main__ on every page view
    from dashboard import app

    app.main(dashboard_context(Settings()))
