"""The long-running processes, side by side: the scoring worker (``worker``) and the
continual learner (``learner``), each built from the settings and wired to Kafka, the
store and the registry."""
