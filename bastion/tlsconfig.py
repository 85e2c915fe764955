"""The server TLS context: TLS 1.2 minimum, 1.3 preferred, forward-secret AEAD suites only."""

from __future__ import annotations

import ctypes
import logging
import ssl
from pathlib import Path

from bastion.errors import ConfigError
from bastion.keys import TLS_CERT, TLS_KEY
from bastion.vault import check_private_file

# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher only, in the server's
# order of preference. TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
SSL_CTRL_SET_GROUPS_LIST = 92
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)


# Key-exchange groups of Mozilla's "intermediate" profile; OpenSSL 3 would also offer P-521 and X448.
GROUPS = "X25519:prime256v1:secp384r1"
log = logging.getLogger("bastion.tls")


def _restrict_groups(context: ssl.SSLContext) -> None:
    if hasattr(context, "set_groups"):  # Python 3.15+
        context.set_groups(GROUPS)
        return
    # Before 3.15 the ssl module has no setter: call OpenSSL's SSL_CTX_ctrl(SSL_CTRL_SET_GROUPS_LIST) on the
    # context's SSL_CTX, which CPython keeps right after the object header. Failing this is not fatal: the
    # extra groups are strong, just outside the profile.
    try:
        library = ctypes.CDLL(ssl._ssl.__file__)
        library.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        library.SSL_CTX_ctrl.restype = ctypes.c_long
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if library.SSL_CTX_ctrl(pointer, SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS.encode()) != 1:
            raise OSError("SSL_CTX_ctrl refused the group list")
    except (OSError, AttributeError, ValueError) as exc:
        log.warning("could not restrict TLS key-exchange groups (%s); OpenSSL's defaults stay", type(exc).__name__)


def server_context(keys_dir: Path, client_ca: bool = False) -> ssl.SSLContext:
    """Build the context for the HTTPS front-end from keys/tls.crt and keys/tls.key.

    With `client_ca`, browsers may present a device certificate issued by keys/device_ca.crt; it is
    optional at the TLS level (device policy decides whether one is required).
    """
    cert_path, key_path = Path(keys_dir) / TLS_CERT, Path(keys_dir) / TLS_KEY
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(":".join(TLS12_CIPHERS))
    _restrict_groups(context)
    context.options |= (ssl.OP_NO_COMPRESSION  # CRIME
                        | ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a DoS lever
                        | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_SINGLE_ECDH_USE)
    # The console speaks HTTP/1.1 only; saying so spares clients a failed h2 attempt.
    context.set_alpn_protocols(["http/1.1"])
    check_private_file(key_path)
    if client_ca:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=str(Path(keys_dir) / "device_ca.crt"))
    try:
        context.load_cert_chain(cert_path, key_path)
    except FileNotFoundError:
        raise ConfigError(f"TLS certificate or key missing in {keys_dir} (run `bastion init`)") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate or key in {keys_dir} cannot be used ({exc.reason})") from None
    return context
