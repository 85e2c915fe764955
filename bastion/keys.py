"""Key material of a data directory: SSH host keys, TLS certificate, node signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from bastion.privatefiles import write_private
from bastion.vault import check_private_file

HOST_KEY_FILES = {"ssh-ed25519": "ssh_host_ed25519_key", "ecdsa-sha2-nistp256": "ssh_host_ecdsa_key"}
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
NODE_KEY = "node_ed25519.pem"



def create_host_keys(keys_dir: Path) -> list[Path]:
    paths = []
    for alg, name in HOST_KEY_FILES.items():
        key = asyncssh.generate_private_key(alg, comment="bastion-host")
        path = keys_dir / name
        write_private(path, key.export_private_key())
        (keys_dir / (name + ".pub")).write_bytes(key.export_public_key())
        paths.append(path)
    return paths


def load_host_keys(keys_dir: Path) -> list[asyncssh.SSHKey]:
    keys = []
    for name in HOST_KEY_FILES.values():
        path = keys_dir / name
        check_private_file(path)
        keys.append(asyncssh.read_private_key(str(path)))
    return keys


def create_tls_material(keys_dir: Path, valid_days: int = 365) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for loopback and this host's name."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastion"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bastion gateway")])
    now = dt.datetime.now(dt.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.DNSName(hostname),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            # Key identifiers let path validators (and sslyze's Mozilla profile check) chain the certificate.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = keys_dir / TLS_KEY, keys_dir / TLS_CERT
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def create_node_key(keys_dir: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path = keys_dir / NODE_KEY
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def load_node_key(keys_dir: Path) -> ed25519.Ed25519PrivateKey:
    path = keys_dir / NODE_KEY
    check_private_file(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("node key is not Ed25519")
    return key
