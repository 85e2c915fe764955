"""FIDO2 SSH keys (sk-*): read the flags and counter that the authenticator signed."""

from __future__ import annotations

import struct
from dataclasses import dataclass

SK_ALGORITHMS = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
FLAG_USER_PRESENT = 0x01
FLAG_USER_VERIFIED = 0x04


@dataclass(frozen=True)
class SkAssertion:
    flags: int
    counter: int

    @property
    def user_present(self) -> bool:
        return bool(self.flags & FLAG_USER_PRESENT)

    @property
    def user_verified(self) -> bool:
        return bool(self.flags & FLAG_USER_VERIFIED)


def _string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated signature")
    (length,) = struct.unpack_from(">I", blob, offset)
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated signature")
    return blob[offset + 4:end], end


def parse_sk_signature(blob: bytes) -> SkAssertion:
    """From an SSH signature blob `string alg, string sig, byte flags, uint32 counter`."""
    alg, offset = _string(blob, 0)
    if alg.decode("ascii", "replace") not in SK_ALGORITHMS:
        raise ValueError("not a security-key signature")
    _, offset = _string(blob, offset)
    if offset + 5 != len(blob):
        raise ValueError("malformed security-key signature")
    flags = blob[offset]
    (counter,) = struct.unpack_from(">I", blob, offset + 1)
    return SkAssertion(flags, counter)
