"""The dashboard's Streamlit script: settings in, :func:`dashboard.app.main` out.

``moodwire dashboard`` serves this file (``streamlit run moodwire/dashboard_app.py``).
It is the one place the dashboard meets the settings: it builds the pages'
:class:`~dashboard.context.DashboardContext` (store, registry, index, the
operator's action targets), a lazy query encoder for meaning search, which
loads the embedding model only when an analyst first searches by meaning, and a
lazy explainer, which loads a version's classifier on its first Explain.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from dashboard.context import DashboardContext, ExplainError, TextExplainer
from moodwire.settings import Settings


def _query_encoder() -> Any:
    from retrieval.embedder import FrozenEmbedder

    return FrozenEmbedder(device="cpu")


def _explainer(settings: Settings, version: str) -> TextExplainer:
    """``version`` loaded from the registry (verified, smoke-tested) on the CPU, as the
    query encoder is, and a function explaining a text with it."""
    from learner.errors import ModelLoadError
    from learner.explain import explain
    from learner.loading import load_version
    from state.registry import RegistryError

    try:
        registry = settings.open_registry()
        classifier = load_version(registry, version, device="cpu", max_length=settings.max_length)
    except (RegistryError, ModelLoadError) as exc:
        raise ExplainError(" ".join(str(exc).split())) from exc
    # captum hooks the model's embedding layer while it runs: one explanation at a time.
    lock = threading.Lock()

    def explain_text(text: str) -> dict[str, Any]:
        with lock:
            try:
                return explain(classifier, text).to_dict()
            except ValueError as exc:
                raise ExplainError(str(exc)) from exc

    return explain_text


def dashboard_context(settings: Settings) -> DashboardContext:
    """What the pages read from and where their actions land, from the settings."""
    return DashboardContext(
        store_url=settings.resolved_store_url(),
        registry=str(settings.resolved_registry()),
        index_dir=str(settings.resolved_index_dir()),
        operations=settings.operations(origin="dashboard"),  # signs as "dashboard"
        taxonomy=str(settings.taxonomy) if settings.taxonomy else None,
        open_encoder=_query_encoder,
        open_explainer=functools.partial(_explainer, settings),
    )


if __name__ == "__main__":  # Streamlit runs this script as __main__ on every page view
    from dashboard import app

    app.main(dashboard_context(Settings()))
