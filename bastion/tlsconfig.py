"""The server TLS context: TLS 1.2 minimum, 1.3 preferred, forward-secret AEAD suites only."""

from __future__ import annotations

import ssl
from pathlib import Path

from bastion.errors import ConfigError
from bastion.keys import TLS_CERT, TLS_KEY
from bastion.vault import check_private_file

# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher only, in the server's
# order of preference. TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)


def server_context(keys_dir: Path) -> ssl.SSLContext:
    """Build the context for the HTTPS front-end from keys/tls.crt and keys/tls.key."""
    cert_path, key_path = Path(keys_dir) / TLS_CERT, Path(keys_dir) / TLS_KEY
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(":".join(TLS12_CIPHERS))
    context.options |= (ssl.OP_NO_COMPRESSION  # CRIME
                        | ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a DoS lever
                        | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_SINGLE_ECDH_USE)
    # The console speaks HTTP/1.1 only; saying so spares clients a failed h2 attempt.
    context.set_alpn_protocols(["http/1.1"])
    check_private_file(key_path)
    try:
        context.load_cert_chain(cert_path, key_path)
    except FileNotFoundError:
        raise ConfigError(f"TLS certificate or key missing in {keys_dir} (run `bastion init`)") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate or key in {keys_dir} cannot be used ({exc.reason})") from None
    return context
