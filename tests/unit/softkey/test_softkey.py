"""asyncssh enrolls and signs real sk-* keys through CTAP2 on the soft authenticator, with chosen flags and counters."""

from __future__ import annotations

import hashlib

import asyncssh
import pytest
from fido2.attestation import PackedAttestation
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.hid import CTAPHID
from fido2.webauthn import AttestationObject

from tests.support.softkey import (ERR, UP, UV, SoftAuthenticator, SoftHidDevice, parse_sk_signature,
                                   virtual_security_key)

SK_ALGS = ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]


def sign(key: asyncssh.SSHKey, data: bytes) -> bytes:
    return key.sign(data, key.algorithm)


def server_view(key: asyncssh.SSHKey) -> asyncssh.SSHKey:
    """The public key as a server holds it: imported from OpenSSH text, touch required (asyncssh's default)."""
    public = asyncssh.import_public_key(key.export_public_key())
    public.set_touch_required(True)
    return public


@pytest.mark.parametrize("alg", SK_ALGS)
def test_enroll_export_sign_verify(alg):
    with virtual_security_key() as device:
        key = asyncssh.generate_private_key(alg, comment="alice@softkey")
        line = key.export_public_key().decode()
        assert line.split()[0] == alg and line.split()[2] == "alice@softkey"
        assert len(device.enrollments) == 1
        sig = sign(key, b"challenge")

    public = server_view(key)
    assert public.verify(b"challenge", sig)
    assert not public.verify(b"tampered", sig)
    wire = parse_sk_signature(sig)
    assert (wire.algorithm, wire.flags, wire.counter) == (alg, UP, 1)
    assert wire.user_present and not wire.user_verified
    assert device.last_assertion.counter == 1


@pytest.mark.parametrize("alg", SK_ALGS)
def test_chosen_flags_and_counters_are_on_the_wire(alg):
    with virtual_security_key(SoftAuthenticator(counter=10)) as device:
        key = asyncssh.generate_private_key(alg)
        device.next_assertion(flags=UP | UV)
        device.next_assertion(counter=500)
        device.next_assertion(counter=500)  # replayed
        device.next_assertion(counter=7)  # went backwards (cloned or reset key)
        sigs = [sign(key, b"m%d" % i) for i in range(5)]

    public = server_view(key)
    wire = [parse_sk_signature(s) for s in sigs]
    assert [(w.flags, w.counter) for w in wire] == [(UP | UV, 11), (UP, 500), (UP, 500), (UP, 7), (UP, 8)]
    assert all(public.verify(b"m%d" % i, s) for i, s in enumerate(sigs))
    assert wire[0].user_verified
    # The device log agrees with the wire; asyncssh's silent existence probes never move the counter.
    presence = [a for a in device.assertions if a.presence_requested]
    assert [(a.flags, a.counter) for a in presence] == [(w.flags, w.counter) for w in wire]
    assert all(a.flags & UP == 0 for a in device.assertions if not a.presence_requested)


@pytest.mark.parametrize("alg", SK_ALGS)
def test_no_presence_signature_is_valid_but_refused_by_asyncssh(alg):
    with virtual_security_key() as device:
        key = asyncssh.generate_private_key(alg)
        device.next_assertion(flags=0x00)
        sig = sign(key, b"data")
    assert parse_sk_signature(sig).flags == 0
    public = server_view(key)
    assert not public.verify(b"data", sig)  # asyncssh enforces user presence
    public.set_touch_required(False)  # what authorized_keys "no-touch-required" does
    assert public.verify(b"data", sig)  # so the signature itself was genuine


def test_refusal_surfaces_as_signing_error():
    with virtual_security_key() as device:
        key = asyncssh.generate_private_key(SK_ALGS[0])
        device.next_assertion(refuse=ERR.USER_ACTION_TIMEOUT)
        with pytest.raises(ValueError, match="USER_ACTION_TIMEOUT"):
            sign(key, b"x")
        assert device.assertions[-1].refused == ERR.USER_ACTION_TIMEOUT
        device.refuse = ERR.OPERATION_DENIED  # persistent, until cleared
        with pytest.raises(ValueError, match="OPERATION_DENIED"):
            sign(key, b"x")
        device.refuse = None
        assert parse_sk_signature(sign(key, b"x")).counter == 1


def test_key_handles_belong_to_their_device_and_application():
    first, second = SoftAuthenticator(), SoftAuthenticator()
    with virtual_security_key(first):
        key = asyncssh.generate_private_key(SK_ALGS[0], application="ssh:bastion")
    with virtual_security_key(second):
        with pytest.raises(ValueError, match="credential not found"):
            sign(key, b"x")
    with virtual_security_key(second, first):  # asyncssh walks the devices until one knows the handle
        assert server_view(key).verify(b"x", sign(key, b"x"))
    assert parse_sk_signature(sign_with(first, key)).counter == 2


def sign_with(device: SoftAuthenticator, key: asyncssh.SSHKey) -> bytes:
    with virtual_security_key(device):
        return sign(key, b"again")


def test_pin_resident_keys_and_credential_management():
    with virtual_security_key(SoftAuthenticator(pin="4321")) as device:
        with pytest.raises(ValueError, match="PIN required"):
            asyncssh.generate_private_key(SK_ALGS[0])
        with pytest.raises(ValueError, match="Invalid PIN"):
            asyncssh.generate_private_key(SK_ALGS[0], pin="0000")
        ed = asyncssh.generate_private_key(SK_ALGS[0], pin="4321", resident=True, user="alice")
        ec = asyncssh.generate_private_key(SK_ALGS[1], pin="4321", resident=True, user="bob")
        assert len(device.resident_credentials) == 2

        loaded = asyncssh.load_resident_keys("4321")
        assert sorted(k.public_data for k in loaded) == sorted(k.public_data for k in (ed, ec))
        [bob] = asyncssh.load_resident_keys("4321", user="bob")
        assert bob.public_data == ec.public_data and bob.get_comment() == "bob"
        with pytest.raises(ValueError, match="Invalid PIN"):
            asyncssh.load_resident_keys("9999")

        # A key loaded back from the device signs like the original.
        assert server_view(ec).verify(b"m", sign(bob, b"m"))


def test_rk_refused_when_device_has_no_resident_storage():
    with virtual_security_key(SoftAuthenticator(resident_keys=False)):
        with pytest.raises(ValueError, match="UNSUPPORTED_OPTION"):
            asyncssh.generate_private_key(SK_ALGS[0], resident=True)


def test_ctap_device_interface_directly():
    device = SoftAuthenticator(user_verification=False, attestation="packed")
    dev = SoftHidDevice(device)
    assert dev.call(CTAPHID.PING, b"hello") == b"hello"
    dev.call(CTAPHID.WINK)
    assert device.winks == 1
    nonce = b"12345678"
    assert dev.call(CTAPHID.INIT, nonce)[:8] == nonce

    ctap = Ctap2(dev)  # strict CBOR: every answer must be canonical
    assert ctap.info.versions == ["FIDO_2_0"]
    assert ctap.info.options == {"rk": True, "up": True, "uv": False, "plat": False}
    assert ctap.info.aaguid == device.aaguid

    cdh = hashlib.sha256(b"client data").digest()
    made = ctap.make_credential(cdh, {"id": "ssh:"}, {"id": b"u", "name": "u"},
                                [{"type": "public-key", "alg": -7}])
    assert made.fmt == "packed" and made.auth_data.flags & 0x41 == 0x41  # UP | AT
    attestation = AttestationObject.create(made.fmt, made.auth_data, made.att_stmt)
    PackedAttestation().verify(attestation.att_stmt, attestation.auth_data, cdh)  # self attestation

    cred = made.auth_data.credential_data
    assertion = ctap.get_assertion("ssh:", cdh, [{"type": "public-key", "id": cred.credential_id}])
    assertion.verify(cdh, cred.public_key)
    assert assertion.auth_data.rp_id_hash == hashlib.sha256(b"ssh:").digest()
    assert (assertion.auth_data.flags, assertion.auth_data.counter) == (UP, 1)
    # The wrapped handle is bound to its rpIdHash: under another application the device does not know it.
    with pytest.raises(CtapError) as refused:
        ctap.get_assertion("ssh:other", cdh, [{"type": "public-key", "id": cred.credential_id}])
    assert refused.value.code == ERR.NO_CREDENTIALS
    dev.close()


def test_parse_sk_signature_rejects_malformed_blobs():
    with pytest.raises(ValueError):
        parse_sk_signature(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x00")
    with virtual_security_key():
        key = asyncssh.generate_private_key(SK_ALGS[0])
        sig = sign(key, b"x")
    with pytest.raises(ValueError):
        parse_sk_signature(sig[:-1])
    with pytest.raises(ValueError):
        parse_sk_signature(sig + b"\x00")


async def test_real_asyncssh_login_carries_chosen_flags(sk_server_factory):
    with virtual_security_key() as device:
        key = asyncssh.generate_private_key(SK_ALGS[0])
        server = await sk_server_factory(key.export_public_key().decode())

        device.next_assertion(flags=UP | UV, counter=41)
        async with asyncssh.connect("127.0.0.1", server.port, username="alice", client_keys=[key],
                                    known_hosts=None, agent_path=None, preferred_auth="publickey") as conn:
            assert (await conn.run("x")).stdout == "ok\n"
        device.next_assertion(flags=0x00)
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", server.port, username="alice", client_keys=[key],
                                   known_hosts=None, agent_path=None, preferred_auth="publickey")

    assert server.logins == ["alice"]
    assert [(s.flags, s.counter, ok) for s, ok in server.log.entries] == [(UP | UV, 41, True), (0, 42, False)]
