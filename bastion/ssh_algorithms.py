"""The SSH algorithm policy: strong kex, AEAD/ETM only, no SHA-1, no CBC (both directions)."""

from __future__ import annotations

# Post-quantum hybrid first. The classic ones stay by default because OpenSSH before 9.9, PuTTY and
# paramiko have no ML-KEM (and asyncssh has sntrup761 only with liboqs); `ssh.post_quantum_only` drops them.
PQ_KEX = ("mlkem768x25519-sha256",)
KEX = PQ_KEX + ("curve25519-sha256", "curve25519-sha256@libssh.org", "diffie-hellman-group16-sha512",
                "diffie-hellman-group18-sha512")
# AES-GCM first: with AES instructions it is about twice as fast as ChaCha20 here. The order decides only
# where the gateway is the client (its connections to targets): the client's order picks (RFC 4253, 7.1),
# so a stock OpenSSH client connecting to the gateway gets chacha20-poly1305, its own first choice, unless
# the operator narrows what the port offers (`ssh.ciphers`, checked against this list).
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "umac-128-etm@openssh.com")
SERVER_HOST_KEYS = ("ssh-ed25519",)
# Targets may have RSA or ECDSA host keys; SHA-1 signatures (ssh-rsa) are still refused.
CLIENT_HOST_KEYS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                    "rsa-sha2-512", "rsa-sha2-256")
USER_SIGNATURES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                   "ecdsa-sha2-nistp521", "sk-ecdsa-sha2-nistp256@openssh.com", "rsa-sha2-512", "rsa-sha2-256")
COMPRESSION = ("none",)


def server_algorithm_options(post_quantum_only: bool = False,
                             ciphers: tuple[str, ...] = CIPHERS) -> dict[str, list[str]]:
    """What the gateway's port offers clients; `ciphers` must be drawn from CIPHERS (the config checks it)."""
    if not ciphers or any(name not in CIPHERS for name in ciphers):
        raise ValueError("ciphers must be a non-empty selection of the allowed ones")  # fail closed
    return {"kex_algs": list(PQ_KEX if post_quantum_only else KEX), "encryption_algs": list(ciphers), "mac_algs": list(MACS),
            "compression_algs": list(COMPRESSION), "signature_algs": list(USER_SIGNATURES)}


def client_algorithm_options() -> dict[str, list[str]]:
    return {"kex_algs": list(KEX), "encryption_algs": list(CIPHERS), "mac_algs": list(MACS),
            "compression_algs": list(COMPRESSION), "server_host_key_algs": list(CLIENT_HOST_KEYS),
            "signature_algs": list(USER_SIGNATURES)}
