"""Two small seams in asyncssh for multi-factor logins (asyncssh has no AuthenticationMethods).

1. After asyncssh verified a public-key signature, the server object sees the signature blob
   (security keys sign their flags and counter into it) and decides: login complete, or only
   this factor accepted.
2. A refused request can be answered with `partial_success` set (RFC 4252 §5.1), which is how
   OpenSSH learns that a factor succeeded and it should continue with the methods now listed.

Both act only for server objects that define the hooks (the gateway); any other asyncssh server
in the process (tests, the embedded demo target) behaves exactly as before.
"""

from __future__ import annotations

from asyncssh.connection import SSHServerConnection

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    original_validate = SSHServerConnection.validate_public_key
    original_failure = SSHServerConnection.send_userauth_failure

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        valid = await original_validate(self, username, key_data, msg, signature)
        hook = getattr(self._owner, "public_key_signature_verified", None)
        if hook is None or not msg or not valid:
            return valid
        return await hook(key_data, signature)

    def send_userauth_failure(self, partial_success: bool) -> None:
        hook = getattr(self._owner, "take_partial_success", None)
        if hook is not None and hook():
            partial_success = True
        original_failure(self, partial_success)

    SSHServerConnection.validate_public_key = validate_public_key
    SSHServerConnection.send_userauth_failure = send_userauth_failure
    _installed = True
