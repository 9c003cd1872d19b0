"""The ground floor: state every process shares, and nothing else.

``state.store`` is the SQL store (items and their outbox, labels, alerts, drift
events, the audit log); ``state.registry`` is the model registry on disk
(stdlib only). This package imports nothing of ours: every other package may
import it, and it may import none of them (an import-linter contract says so).
"""
