"""Serve the dashboard, with its heavy libraries warmed up before the first visitor.

``python -m moodwire.serve_dashboard APP [streamlit flags]`` is ``streamlit run APP …``,
except that the server process first imports what the pages use (altair, pandas,
pyarrow, SQLAlchemy, the store), opens the store (creating indexes a store made by
an older version lacks) and builds and serialises one chart the way a page does:
the first page view then runs the script, not a second of imports, Altair's first
schema validation, Arrow's first conversion or an index build.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def dashboard_argv(port: int, address: str = "127.0.0.1") -> list[str]:
    """The command line that serves the dashboard (used by ``dashboard`` and ``demo``)."""
    app = Path(__file__).resolve().parent / "dashboard_app.py"
    return [
        sys.executable, "-m", "moodwire.serve_dashboard", str(app),
        "--server.port", str(port), "--server.address", address,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
    ]  # fmt: skip


def warm_up() -> float:
    """Pay the one-time costs of the first chart here; returns the seconds it took."""
    t0 = time.perf_counter()
    import pandas as pd
    import pyarrow  # noqa: F401  (Streamlit imports it lazily, on the first data frame)
    import sqlalchemy  # noqa: F401
    from streamlit import dataframe_util

    import state.registry  # noqa: F401
    import state.store  # noqa: F401
    import stream.operations  # noqa: F401
    from dashboard import charts

    start, end = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-01 01:00", tz="UTC")
    frame = pd.DataFrame(
        {
            "time": [start, end],
            "volume": [1, 2],
            "score": [0.1, -0.1],
            "negative_share": [0.2, 0.3],
        }
    )
    for chart in charts.sentiment_index(frame, "all items", start, end):
        chart.to_dict()  # the first call loads and compiles the Vega-Lite schema
    dataframe_util.convert_anything_to_arrow_bytes(frame)
    try:
        from moodwire.settings import Settings
        from state.store import Store

        Store(Settings().resolved_store_url())
    except Exception as exc:  # the pages say what is wrong with the store; serve anyway
        print(f"dashboard: could not open the store before serving: {exc}", file=sys.stderr)
    return time.perf_counter() - t0


def main() -> None:
    from streamlit.web import cli

    warm_up()
    sys.argv = ["streamlit", "run", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
