"""User-facing errors: each carries one line that says what was wrong and what to do.

The CLI prints ``str(error)`` on a single line and exits non-zero; anything that is not a
``FactoryError`` is a bug and gets a traceback.
"""

from __future__ import annotations


class FactoryError(Exception):
    """An error the user can fix. ``str()`` is a single line."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(FactoryError):
    """A profile, override or environment variable is malformed."""


class StoreError(FactoryError):
    """The run store cannot be read or written."""


class TrackingError(FactoryError):
    """The MLflow tracking server does not answer or refuses writes."""


class ModelUnavailableError(FactoryError):
    """A model reference cannot be resolved (no network, no cache, bad path)."""


class StageError(FactoryError):
    """A stage could not produce its outputs (empty crawl, nothing left after curation...)."""


class DatasetError(FactoryError):
    """A dataset folder or archive handed to us cannot be read as given (unsafe zip, no images)."""
