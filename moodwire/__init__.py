"""Moodwire: a continual-learning streaming monitor for financial text.

This package is the composition root: settings, the store, the CLI and the
wiring of the processes. The working parts live in ``stream``, ``learner``,
``retrieval`` and ``dashboard``.
"""

__version__ = "0.1.0"
