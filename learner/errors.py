"""The learner's errors, importable without torch (the light commands name them)."""


class MemoryFileError(ValueError):
    """A learner's memory file that cannot be read (damaged, edited, truncated)."""


class ModelLoadError(ValueError):
    """A model directory cannot be used (missing, pickled weights, wrong labels)."""
