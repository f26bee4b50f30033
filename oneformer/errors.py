"""Errors a user can act on: each names the file, key or value and says what to do."""

from __future__ import annotations


class OneFormerError(Exception):
    """Base of every error the CLI reports as a clean message instead of a traceback."""


class SpecError(OneFormerError):
    """The experiment spec is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        head = f"invalid spec {source}" if source else "invalid spec"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


class DataError(OneFormerError):
    """A dataset file is missing, malformed or inconsistent with the spec."""


class CheckpointError(OneFormerError):
    """A checkpoint cannot be found, resolved or loaded."""


class ConversionError(OneFormerError):
    """An export, quantization or engine build failed or did not match its source closely enough."""


class StorageError(OneFormerError):
    """The storage (S3, HTTP) failed mid-request after the client's own retries: the data may be fine, so a retry
    (the Prefect task's) is worth it; nothing partial is kept."""
