"""Moodwire dashboard: the pages and their navigation (served by ``moodwire dashboard``).

Four pages: the overview for risk teams, alerts, drift & models for operators,
and explore for analysts. It reads the store, the index and the registry, and
sends commands on Kafka; it never imports training code. The serving script
(``moodwire/dashboard_app.py``) builds the :class:`~dashboard.context.DashboardContext`
and calls :func:`main` on every run.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import context, ui

HERE = Path(__file__).resolve().parent


def main(ctx: context.DashboardContext) -> None:
    """Configure the pages with ``ctx``, then run the one the visitor asked for."""
    context.configure(ctx)
    st.set_page_config(page_title="Moodwire", page_icon=":material/monitoring:", layout="wide")

    pages = [
        st.Page(
            HERE / "views" / "overview.py",
            title="Overview",
            icon=":material/monitoring:",
            default=True,
        ),
        st.Page(
            HERE / "views" / "alerts.py",
            title="Alerts",
            icon=":material/notifications_active:",
            url_path="alerts",
        ),
        st.Page(
            HERE / "views" / "models.py",
            title="Drift & models",
            icon=":material/model_training:",
            url_path="models",
        ),
        st.Page(
            HERE / "views" / "explore.py",
            title="Explore",
            icon=":material/search:",
            url_path="explore",
        ),
    ]
    page = st.navigation(pages)
    ui.sign_in()
    ui.require_sign_in()
    ui.survive_outages(page.run)()
