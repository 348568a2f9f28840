"""What can go wrong with models, each a ``StableDreamerError`` with its wire code."""

from __future__ import annotations

from ..errors import StableDreamerError


class ModelError(StableDreamerError):
    """A model set cannot be used or fetched; the message says why and what to do."""

    code = "model_unavailable"


class ModelsMissingError(ModelError):
    """A text job's models are not on this machine: it fails at once instead of downloading
    silently. ``set_id``, ``missing`` (hub ids or folders) and ``command`` (what to run)."""

    code = "models_missing"

    def __init__(self, message: str, *, set_id: str, missing: list[str], command: str) -> None:
        super().__init__(message)
        self.set_id, self.missing, self.command = set_id, missing, command


class NoNetworkError(ModelError):
    """The hub cannot be reached (or offline mode is on)."""


class GatedModelError(ModelError):
    """A gated repository whose licence this token has not accepted (or no token)."""

    def __init__(self, message: str, *, repo_id: str, page: str) -> None:
        super().__init__(message)
        self.repo_id, self.page = repo_id, page


class UnknownModelError(ModelError):
    """No such repository or revision on the hub (withdrawn or renamed?)."""


class DownloadCancelled(ModelError):
    """The download was cancelled; completed files stay in the cache, nothing partial does."""

    code = "cancelled"
