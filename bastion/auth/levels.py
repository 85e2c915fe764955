"""Authentication levels from the factors a login has proven (DESIGN §3)."""

from __future__ import annotations

from typing import Iterable

# Factor names as stored on sessions and in audit events.
PASSWORD = "password"
PUBLICKEY = "publickey"      # an ordinary SSH key or a device key
TOTP = "totp"                # dynamic token
SK = "sk"                    # FIDO2 key, user present (touch)
SK_VERIFIED = "sk-uv"        # FIDO2 key, user verified (fingerprint / PIN)
WEBAUTHN = "webauthn"        # browser security key, user present
WEBAUTHN_VERIFIED = "webauthn-uv"

FIRST_FACTORS = frozenset({PASSWORD, PUBLICKEY})
PRESENCE_FACTORS = frozenset({TOTP, SK, WEBAUTHN})
VERIFIED_FACTORS = frozenset({SK_VERIFIED, WEBAUTHN_VERIFIED})
NEEDS = {1: "a password or an SSH key",
         2: "a second factor: a TOTP code or a FIDO2 security key (touch)",
         3: "a FIDO2 security key with user verification (fingerprint or PIN)"}


def level_of(factors: Iterable[str]) -> int:
    """1: one factor; 2: plus TOTP or a key touched; 3: plus a key with user verification.

    A FIDO2 key used alone is only the first factor: the second must be a different credential.
    """
    proven = set(factors)
    if not proven:
        return 0
    first = bool(proven & FIRST_FACTORS)
    if first and proven & VERIFIED_FACTORS:
        return 3
    if first and proven & (PRESENCE_FACTORS | VERIFIED_FACTORS):
        return 2
    return 1
