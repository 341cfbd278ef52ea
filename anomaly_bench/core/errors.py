"""Exceptions with messages a user can act on."""


class BenchError(Exception):
    """Base class: every message names the file or setting at fault and what to do."""


class ConfigError(BenchError):
    """A YAML key or value is wrong (unknown key, wrong type, unknown name)."""


class DataError(BenchError):
    """Input data is missing, empty, unreadable or inconsistent."""


class TrainingError(BenchError):
    """Training failed (non-finite loss, out of memory). Carries the last good checkpoint if any."""

    def __init__(self, message: str, last_checkpoint: str | None = None):
        super().__init__(message)
        self.last_checkpoint = last_checkpoint
