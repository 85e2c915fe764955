"""Password hashing (argon2id) with a constant-cost answer for users that do not exist."""

from __future__ import annotations

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bastion.errors import BastionError

MIN_LENGTH = 12
MAX_LENGTH = 1024
_hasher = argon2.PasswordHasher(type=argon2.Type.ID)
# Verified against when the user is unknown, so both paths cost one argon2 verification.
_DUMMY_HASH = _hasher.hash("bastion-dummy-password-for-timing")


class WeakPassword(BastionError):
    """The password does not meet the policy."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_LENGTH} characters")
    if any(ord(c) < 32 for c in password):
        raise WeakPassword("password must not contain control characters")


def hash_password(password: str) -> str:
    check_policy(password)
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True only for the right password; an unknown user (None) costs the same and fails."""
    if len(password) > MAX_LENGTH:
        password = password[:MAX_LENGTH]
    try:
        _hasher.verify(stored_hash or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return stored_hash is not None
