"""Device certificates from the device CA."""

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.pki import CA_KEY, issue_device_certificate


def test_client_certificate_is_signed_by_the_device_ca_and_locked_by_its_password(tmp_path):
    issued = issue_device_certificate(tmp_path, "alice", "laptop")
    key, cert, cas = pkcs12.load_key_and_certificates(issued.p12, issued.password.encode())
    assert cert.fingerprint(hashes.SHA256()).hex() == issued.fingerprint
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    cas[0].public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"])
                               .ECDSA(cert.signature_hash_algorithm))
    assert "alice/laptop" in cert.subject.rfc4514_string()
    assert (tmp_path / CA_KEY).stat().st_mode & 0o077 == 0
    try:
        pkcs12.load_key_and_certificates(issued.p12, b"wrong")
        raise AssertionError("wrong password accepted")
    except ValueError:
        pass
    again = issue_device_certificate(tmp_path, "alice", "phone")
    assert again.fingerprint != issued.fingerprint and again.password != issued.password
