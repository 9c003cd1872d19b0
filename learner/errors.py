"""The learner's errors, importable without torch (the light commands name them)."""


class ModelLoadError(ValueError):
    """A model directory cannot be used (missing, pickled weights, wrong labels)."""
