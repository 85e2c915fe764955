"""Three small seams in asyncssh for multi-factor logins (asyncssh has no AuthenticationMethods).

1. After asyncssh verified a public-key signature, the server object sees the signature blob
   (security keys sign their flags and counter into it) and decides: login complete, or only
   this factor accepted.
2. A refused request can be answered with `partial_success` set (RFC 4252 §5.1), which is how
   OpenSSH learns that a factor succeeded and it should continue with the methods now listed.
3. A client may ask for the "ssh-userauth" service again while authentication is still going on
   (paramiko does before every method, so its key-then-TOTP logins need it); OpenSSH's sshd accepts
   that, asyncssh disconnects. Servers that opt in accept it while no login has completed yet.

Both act only for server objects that define the hooks (the gateway); any other asyncssh server
in the process (tests, the embedded demo target) behaves exactly as before.
"""

from __future__ import annotations

from asyncssh.connection import SSHConnection, SSHServerConnection
from asyncssh.constants import MSG_SERVICE_ACCEPT, MSG_SERVICE_REQUEST
from asyncssh.packet import String

_USERAUTH = b"ssh-userauth"

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

    original_service_request = SSHConnection._packet_handlers[MSG_SERVICE_REQUEST]

    def service_request(self, pkttype: int, pktid: int, packet) -> None:
        if self.is_server() and getattr(self._owner, "accepts_repeated_userauth_service", False) \
                and self._next_service is None and self._auth_in_progress and not self._auth_complete:
            service = packet.get_string()
            packet.check_end()
            if service == _USERAUTH:
                self.send_packet(MSG_SERVICE_ACCEPT, String(service))
                return
            packet = type(packet)(String(service))  # anything else: asyncssh decides, as before
        original_service_request(self, pkttype, pktid, packet)

    SSHServerConnection.validate_public_key = validate_public_key
    SSHServerConnection.send_userauth_failure = send_userauth_failure
    SSHConnection._packet_handlers[MSG_SERVICE_REQUEST] = service_request
    _installed = True
