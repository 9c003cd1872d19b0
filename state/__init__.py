"""The ground floor: state every process shares, and nothing else.

``state.store`` is the SQL store (items and their outbox, labels, alerts, drift
events, the audit log); ``state.registry`` is the model registry on disk
(stdlib only); ``state.shared_registry`` is the same registry in the database,
for processes on several hosts; ``state.locks`` lets one process of many do a
job (a ``flock``, or a PostgreSQL advisory lock). This package imports nothing
of ours: every other package may import it, and it may import none of them (an
import-linter contract says so).
"""
