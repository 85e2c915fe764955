"""The device CA: client certificates for enrolled devices (mTLS on the console)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.privatefiles import write_private
from bastion.vault import check_private_file

CA_KEY = "device_ca.key"
CA_CERT = "device_ca.crt"
CA_YEARS = 10
CLIENT_DAYS = 365



def ensure_device_ca(keys_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load the device CA, creating it the first time a certificate is issued."""
    key_path, cert_path = keys_dir / CA_KEY, keys_dir / CA_CERT
    if not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bastion device CA"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bastion gateway")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    check_private_file(key_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


@dataclass(frozen=True)
class IssuedCertificate:
    p12: bytes
    password: str
    fingerprint: str  # sha256 of the DER certificate, hex
    serial: str
    not_after: dt.datetime


def issue_device_certificate(keys_dir: Path, user: str, device: str) -> IssuedCertificate:
    """A client certificate (clientAuth) for user/device, packed as PKCS#12 under a fresh password."""
    ca_key, ca_cert = ensure_device_ca(keys_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_after = now + dt.timedelta(days=CLIENT_DAYS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{user}/{device}"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "bastion-device"),
                         x509.NameAttribute(NameOID.USER_ID, user)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    password = secrets.token_urlsafe(12)
    p12 = pkcs12.serialize_key_and_certificates(
        f"{user}/{device}".encode(), key, cert, [ca_cert],
        serialization.BestAvailableEncryption(password.encode()))
    return IssuedCertificate(p12, password, cert.fingerprint(hashes.SHA256()).hex(), format(cert.serial_number, "x"),
                             not_after)
