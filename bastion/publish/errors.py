"""Errors of the publishing core; each carries a message that is safe to show (no data, no secrets)."""

from __future__ import annotations

from bastion.errors import BastionError, NotFound, UsageError

# What every front-end shows for a dataset or file the caller may not reach, whatever the reason.
NO_SUCH_DATASET = "no such dataset"


class InputError(UsageError):
    """A file or upload cannot be published: missing, too large, empty, cut off, malformed."""


class BlobError(BastionError):
    """Stored content is missing, damaged or tampered with (names the blob and the chunk)."""


class RenderError(BastionError):
    """A file cannot be shown: malformed CSV, wrong encoding, image too large, empty."""


class Refused(NotFound):
    """Access refused at the serving boundary; looks exactly like a dataset that does not exist.

    `reason` is for the audit log and the operator, never for the user.
    """

    def __init__(self, reason: str):
        super().__init__(NO_SUCH_DATASET)
        self.reason = reason
