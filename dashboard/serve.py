"""Serve the dashboard, with its heavy libraries imported before the first visitor.

``python -m dashboard.serve APP [streamlit flags]`` is ``streamlit run APP …``,
except that altair, pandas, SQLAlchemy and the store are imported in the server
process first: the first page view then runs the script, not a second of imports.
"""

from __future__ import annotations

import sys


def main() -> None:
    import altair  # noqa: F401
    import pandas  # noqa: F401
    import sqlalchemy  # noqa: F401
    from streamlit.web import cli

    import learner.registry  # noqa: F401
    import moodwire.operations  # noqa: F401
    import moodwire.store  # noqa: F401

    sys.argv = ["streamlit", "run", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
