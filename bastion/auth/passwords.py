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


MIN_SCORE = 3  # zxcvbn: 3 = "safely unguessable" for online attacks


def check_policy(password: str, user_inputs: tuple[str, ...] = ()) -> None:
    """Length, no control characters, and not common or guessable (zxcvbn's lists and estimate)."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_LENGTH} characters")
    if any(ord(c) < 32 for c in password):
        raise WeakPassword("password must not contain control characters")
    from zxcvbn import zxcvbn

    # zxcvbn's cost grows with length; its estimate of the first 100 characters is what matters.
    result = zxcvbn(password[:100], user_inputs=list(user_inputs))
    if result["score"] < MIN_SCORE:
        hint = result["feedback"].get("warning") or "it is too easy to guess"
        raise WeakPassword(f"password refused: {hint.rstrip('.')}")


def hash_password(password: str, user_inputs: tuple[str, ...] = ()) -> str:
    check_policy(password, user_inputs)
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
