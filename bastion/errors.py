"""One exception family; each carries a message that is safe to show a user."""

from __future__ import annotations


class BastionError(Exception):
    """Base of every error Bastion raises on purpose.

    `safe_message` never contains secrets; it is what front-ends show.
    """

    exit_code = 1

    def __init__(self, safe_message: str):
        super().__init__(safe_message)
        self.safe_message = safe_message


class ConfigError(BastionError):
    """A setting is missing or invalid (names the key and the reason)."""

    exit_code = 2


class UsageError(BastionError):
    """A command line was wrong."""

    exit_code = 2


class NotFound(BastionError):
    """An object does not exist, or the caller may not know that it does."""


class Conflict(BastionError):
    """An object already exists or the change contradicts the current state."""


class VaultError(BastionError):
    """The master key or an encrypted secret could not be used."""


class RecordingError(BastionError):
    """A recording could not be created, written or read."""


class UpstreamError(BastionError):
    """The target could not be reached or refused the bastion."""


class HostKeyMismatch(UpstreamError):
    """The target presented a host key other than the pinned one."""
