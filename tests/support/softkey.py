"""A software FIDO2 authenticator at fido2's CtapDevice boundary, so asyncssh enrolls and signs real sk-* keys."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fido2 import cbor
from fido2.cose import CoseKey, EdDSA, ES256
from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.hid import CAPABILITY, CTAPHID
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

UP = 0x01  # user present (touch)
UV = 0x04  # user verified (PIN / biometric)
_AT = 0x40  # attested credential data follows (makeCredential only)

ES256_ALG = ES256.ALGORITHM  # -7, sk-ecdsa-sha2-nistp256@openssh.com
EDDSA_ALG = EdDSA.ALGORITHM  # -8, sk-ssh-ed25519@openssh.com

ERR = CtapError.ERR
DEFAULT_AAGUID = bytes.fromhex("b5a5710e0000400080000000000000b5")  # arbitrary, recognisable in logs

_CMD_MAKE_CREDENTIAL = 0x01
_CMD_GET_ASSERTION = 0x02
_CMD_GET_INFO = 0x04
_CMD_CLIENT_PIN = 0x06
_CMD_GET_NEXT_ASSERTION = 0x08
_CMD_CREDENTIAL_MGMT = 0x0A


class _Refused(Exception):
    """A CTAP2 status other than success, raised inside the authenticator and returned as a status byte."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Touch:
    """How the device answers one presence-requesting assertion; None fields fall back to the device defaults."""

    flags: int | None = None
    counter: int | None = None
    refuse: int | None = None  # a CTAP2 status, e.g. ERR.USER_ACTION_TIMEOUT for "nobody touched it"


@dataclass(frozen=True)
class AssertionRecord:
    """One getAssertion as the device answered it (what a test can compare to the wire)."""

    rp_id: str
    credential_id: bytes = field(repr=False)
    presence_requested: bool
    flags: int
    counter: int
    client_data_hash: bytes = field(repr=False)
    refused: int | None = None


@dataclass
class _Credential:
    alg: int
    private_key: Any
    rp_id: str
    user: Mapping[str, Any] | None = None
    resident: bool = False

    @property
    def cose_public_key(self) -> CoseKey:
        cls = EdDSA if self.alg == EDDSA_ALG else ES256
        return cls.from_cryptography_key(self.private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        if self.alg == EDDSA_ALG:
            return self.private_key.sign(message)
        return self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))  # DER, as CTAP2 specifies for ES256

    def private_bytes(self) -> bytes:
        if self.alg == EDDSA_ALG:
            return self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                  serialization.NoEncryption())
        return self.private_key.private_numbers().private_value.to_bytes(32, "big")


def _load_private(alg: int, raw: bytes):
    if alg == EDDSA_ALG:
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def _generate_private(alg: int):
    if alg == EDDSA_ALG:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _rp_hash(rp_id: str) -> bytes:
    return hashlib.sha256(rp_id.encode("utf-8")).digest()


class SoftAuthenticator:
    """A CTAP2.0 authenticator in memory: ES256 and EdDSA credentials, scriptable flags, counter and refusals.

    Non-resident credential ids wrap the private key under a per-device AES-GCM key bound to the rpIdHash,
    like real U2F key handles, so the device needs no storage for them and rejects handles it did not make.

    Presence-requesting assertions (options.up true, the default) take their answer from the next queued
    :class:`Touch` (see :meth:`next_assertion`), else from ``flags`` / ``refuse`` and the monotonic counter.
    Silent assertions (options.up false: asyncssh's "does this key handle exist" probe before every
    signature) report flags without UP and the current counter *without advancing it*, so the counters a
    test sees on the wire are exactly the ones it chose.
    """

    def __init__(self, *, flags: int = UP, counter: int = 0, refuse: int | None = None,
                 resident_keys: bool = True, user_verification: bool = True, pin: str | None = None,
                 attestation: str = "packed", aaguid: bytes = DEFAULT_AAGUID,
                 product_name: str = "Bastion SoftKey", serial_number: str = "BSK-0001"):
        if attestation not in ("packed", "none"):
            raise ValueError("attestation must be 'packed' (self attestation) or 'none'")
        self.flags = flags
        self.refuse = refuse
        self.resident_keys = resident_keys
        self.user_verification = user_verification
        self.pin = pin
        self.attestation = attestation
        self.aaguid = aaguid
        self.product_name = product_name
        self.serial_number = serial_number
        self.assertions: list[AssertionRecord] = []
        self.enrollments: list[bytes] = []  # credential ids, in order
        self.winks = 0
        self._counter = counter
        self._touches: deque[Touch] = deque()
        self._wrap_key = AESGCM(os.urandom(32))
        self._resident: dict[bytes, _Credential] = {}
        self._pin_agreement = ec.generate_private_key(ec.SECP256R1())
        self._pin_token: bytes | None = None
        self._pending: deque[dict[int, Any]] = deque()  # getNextAssertion / credMgmt "next" results
        self._lock = threading.RLock()  # asyncssh signs in executor threads

    # --- test controls -------------------------------------------------------------------------

    @property
    def counter(self) -> int:
        """The last signature counter the device used (the next default is this + 1)."""
        return self._counter

    @counter.setter
    def counter(self, value: int) -> None:
        self._counter = value

    def next_assertion(self, *, flags: int | None = None, counter: int | None = None,
                       refuse: int | None = None) -> None:
        """Queue the answer to the next presence-requesting assertion (call repeatedly to queue several).

        ``counter`` becomes the device counter, so later defaults continue from it (a cloned/reset key).
        """
        with self._lock:
            self._touches.append(Touch(flags, counter, refuse))

    @property
    def last_assertion(self) -> AssertionRecord:
        """The last presence-requesting assertion (silent probes skipped)."""
        return [a for a in self.assertions if a.presence_requested][-1]

    @property
    def resident_credentials(self) -> list[bytes]:
        return list(self._resident)

    # --- CTAP2 dispatch ------------------------------------------------------------------------

    def handle(self, request: bytes, on_keepalive=None) -> bytes:
        """Answer one CTAPHID_CBOR message: command byte + CBOR map in, status byte + CBOR map out."""
        with self._lock:
            if not request:
                return bytes([ERR.INVALID_LENGTH])
            command, payload = request[0], request[1:]
            handlers = {
                _CMD_GET_INFO: self._get_info,
                _CMD_MAKE_CREDENTIAL: self._make_credential,
                _CMD_GET_ASSERTION: self._get_assertion,
                _CMD_GET_NEXT_ASSERTION: self._get_next,
                _CMD_CLIENT_PIN: self._client_pin,
                _CMD_CREDENTIAL_MGMT: self._credential_mgmt,
            }
            handler = handlers.get(command)
            if handler is None:
                return bytes([ERR.INVALID_COMMAND])
            try:
                params = cbor.decode(payload) if payload else {}
            except (ValueError, IndexError, TypeError):
                return bytes([ERR.INVALID_CBOR])
            if not isinstance(params, dict):
                return bytes([ERR.CBOR_UNEXPECTED_TYPE])
            try:
                result = handler(params, on_keepalive)
            except _Refused as refused:
                return bytes([refused.code])
            except KeyError:
                return bytes([ERR.MISSING_PARAMETER])
            return b"\x00" + (cbor.encode(result) if result is not None else b"")

    def _get_info(self, _params, _keepalive) -> dict[int, Any]:
        options = {"rk": self.resident_keys, "up": True, "uv": self.user_verification, "plat": False}
        if self.pin is not None:
            options["clientPin"] = True
            if self.resident_keys:
                options["credMgmt"] = True
        versions = ["FIDO_2_0", "FIDO_2_1_PRE"] if self.pin is not None and self.resident_keys else ["FIDO_2_0"]
        info: dict[int, Any] = {1: versions, 3: self.aaguid, 4: options, 5: 1200,
                                9: ["usb"], 10: [{"type": "public-key", "alg": EDDSA_ALG},
                                                 {"type": "public-key", "alg": ES256_ALG}]}
        if self.pin is not None:
            info[6] = [1]
        return info

    # --- makeCredential ------------------------------------------------------------------------

    def _make_credential(self, p, keepalive) -> dict[int, Any]:
        client_data_hash, rp, user, key_params = p.get(1), p.get(2), p.get(3), p.get(4)
        if client_data_hash is None or rp is None or user is None or key_params is None:
            raise _Refused(ERR.MISSING_PARAMETER)
        rp_id = rp["id"]
        options = p.get(7) or {}
        if options.get("up") is False:
            raise _Refused(ERR.INVALID_OPTION)  # CTAP2: makeCredential always tests presence
        resident = bool(options.get("rk"))
        if resident and not self.resident_keys:
            raise _Refused(ERR.UNSUPPORTED_OPTION)
        if options.get("uv") and not self.user_verification:
            raise _Refused(ERR.UNSUPPORTED_OPTION)
        verified = self._check_pin_auth(p.get(8), p.get(9), client_data_hash)
        if self.pin is not None and not verified:
            raise _Refused(ERR.PUAT_REQUIRED)  # CTAP2.0: a PIN-protected device enrolls only with the PIN
        for excluded in p.get(5) or []:
            if self._find(rp_id, excluded["id"]) is not None:
                raise _Refused(ERR.CREDENTIAL_EXCLUDED)
        alg = next((kp["alg"] for kp in key_params
                    if kp.get("type") == "public-key" and kp.get("alg") in (EDDSA_ALG, ES256_ALG)), None)
        if alg is None:
            raise _Refused(ERR.UNSUPPORTED_ALGORITHM)
        if keepalive:
            keepalive(STATUS.UPNEEDED)

        cred = _Credential(alg, _generate_private(alg), rp_id, dict(user), resident)
        if resident:
            cred_id = os.urandom(32)
            self._resident[cred_id] = cred
        else:
            cred_id = self._wrap(cred, rp_id)
        self.enrollments.append(cred_id)

        flags = UP | _AT | (UV if verified or options.get("uv") else 0)
        attested = AttestedCredentialData.create(self.aaguid, cred_id, cred.cose_public_key)
        auth_data = AuthenticatorData.create(_rp_hash(rp_id), flags, self._counter, attested)
        if self.attestation == "none":
            return {1: "none", 2: auth_data, 3: {}}
        # Packed self attestation: signed by the credential key itself, no certificate chain.
        return {1: "packed", 2: auth_data, 3: {"alg": alg, "sig": cred.sign(auth_data + client_data_hash)}}

    # --- getAssertion --------------------------------------------------------------------------

    def _get_assertion(self, p, keepalive) -> dict[int, Any]:
        rp_id, client_data_hash = p.get(1), p.get(2)
        if rp_id is None or client_data_hash is None:
            raise _Refused(ERR.MISSING_PARAMETER)
        options = p.get(5) or {}
        if options.get("uv") and not self.user_verification:
            raise _Refused(ERR.UNSUPPORTED_OPTION)
        verified = self._check_pin_auth(p.get(6), p.get(7), client_data_hash) or bool(options.get("uv"))
        presence = options.get("up", True) is not False

        allow = p.get(3) or []
        if allow:
            found = [(d["id"], c) for d in allow if (c := self._find(rp_id, d["id"])) is not None]
        else:
            found = [(cid, c) for cid, c in self._resident.items() if c.rp_id == rp_id]
        if not found:
            raise _Refused(ERR.NO_CREDENTIALS)

        touch = self._touches.popleft() if presence and self._touches else Touch()
        refuse = touch.refuse if touch.refuse is not None else (self.refuse if presence else None)
        cred_id, cred = found[0]
        if refuse is not None:
            self.assertions.append(AssertionRecord(rp_id, cred_id, presence, 0, self._counter,
                                                   client_data_hash, refused=refuse))
            raise _Refused(refuse)
        if presence and keepalive:
            keepalive(STATUS.UPNEEDED)

        answers = [self._assert(rp_id, cid, c, client_data_hash, presence, verified, touch)
                   for cid, c in found[:1 if allow else None]]
        self._pending = deque(answers[1:])
        if len(answers) > 1:
            answers[0][5] = len(answers)
        return answers[0]

    def _assert(self, rp_id, cred_id, cred, client_data_hash, presence, verified, touch) -> dict[int, Any]:
        if presence:
            flags = touch.flags if touch.flags is not None else self.flags | (UV if verified else 0)
            counter = touch.counter if touch.counter is not None else self._counter + 1
            self._counter = counter
        else:
            flags = touch.flags if touch.flags is not None else (UV if verified else 0)
            counter = self._counter
        auth_data = AuthenticatorData.create(_rp_hash(rp_id), flags, counter)
        self.assertions.append(AssertionRecord(rp_id, cred_id, presence, flags, counter, client_data_hash))
        answer: dict[int, Any] = {1: {"type": "public-key", "id": cred_id}, 2: auth_data,
                                  3: cred.sign(auth_data + client_data_hash)}
        if cred.resident and cred.user:
            answer[4] = {"id": cred.user["id"]}
        return answer

    def _get_next(self, _params, _keepalive) -> dict[int, Any]:
        if not self._pending:
            raise _Refused(ERR.NOT_ALLOWED)
        return self._pending.popleft()

    # --- credential ids ------------------------------------------------------------------------

    def _wrap(self, cred: _Credential, rp_id: str) -> bytes:
        nonce = os.urandom(12)
        plain = struct.pack(">b", cred.alg) + cred.private_bytes()
        return b"BSK1" + nonce + self._wrap_key.encrypt(nonce, plain, _rp_hash(rp_id))

    def _find(self, rp_id: str, cred_id: bytes) -> _Credential | None:
        cred_id = bytes(cred_id)
        if cred_id in self._resident:
            cred = self._resident[cred_id]
            return cred if cred.rp_id == rp_id else None
        if not cred_id.startswith(b"BSK1") or len(cred_id) < 16:
            return None
        try:
            plain = self._wrap_key.decrypt(cred_id[4:16], cred_id[16:], _rp_hash(rp_id))
        except InvalidTag:
            return None  # another device's handle, or bound to another application
        alg = struct.unpack(">b", plain[:1])[0]
        return _Credential(alg, _load_private(alg, plain[1:]), rp_id)

    # --- clientPin (protocol 1) and credential management ---------------------------------------

    def _shared_secret(self, platform_key: Mapping[int, Any]) -> bytes:
        peer = ec.EllipticCurvePublicNumbers(int.from_bytes(platform_key[-2], "big"),
                                             int.from_bytes(platform_key[-3], "big"), ec.SECP256R1())
        return hashlib.sha256(self._pin_agreement.exchange(ec.ECDH(), peer.public_key())).digest()

    @staticmethod
    def _aes_cbc(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
        cipher = Cipher(algorithms.AES(key), modes.CBC(b"\0" * 16))  # protocol 1 uses a zero IV
        op = cipher.encryptor() if encrypt else cipher.decryptor()
        return op.update(data) + op.finalize()

    def _client_pin(self, p, _keepalive) -> dict[int, Any]:
        if p.get(1) != 1:
            raise _Refused(ERR.INVALID_PARAMETER)
        sub = p.get(2)
        if sub == 0x01:
            return {3: 8}
        if sub == 0x02:
            pn = self._pin_agreement.public_key().public_numbers()
            return {1: {1: 2, 3: -25, -1: 1, -2: pn.x.to_bytes(32, "big"), -3: pn.y.to_bytes(32, "big")}}
        if sub == 0x05:
            if self.pin is None:
                raise _Refused(ERR.PIN_NOT_SET)
            secret = self._shared_secret(p[3])
            pin_hash = self._aes_cbc(secret, p[6], encrypt=False)
            if not hmac.compare_digest(pin_hash, hashlib.sha256(self.pin.encode()).digest()[:16]):
                raise _Refused(ERR.PIN_INVALID)
            self._pin_token = os.urandom(32)
            return {2: self._aes_cbc(secret, self._pin_token, encrypt=True)}
        raise _Refused(ERR.INVALID_SUBCOMMAND)

    def _check_pin_auth(self, pin_auth: bytes | None, protocol: int | None, message: bytes) -> bool:
        if pin_auth is None:
            return False
        if protocol != 1 or self._pin_token is None:
            raise _Refused(ERR.PIN_AUTH_INVALID)
        expected = hmac.new(self._pin_token, message, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected, pin_auth):
            raise _Refused(ERR.PIN_AUTH_INVALID)
        return True

    def _credential_mgmt(self, p, _keepalive) -> dict[int, Any]:
        sub, params = p.get(1), p.get(2)
        if sub in (0x03, 0x05):  # the "next" subcommands are not authenticated
            return self._get_next({}, None)
        if self.pin is None or not self.resident_keys:
            raise _Refused(ERR.INVALID_COMMAND)
        message = bytes([sub]) + (cbor.encode(params) if params is not None else b"")
        if not self._check_pin_auth(p.get(4), p.get(3), message):
            raise _Refused(ERR.PUAT_REQUIRED)
        creds = list(self._resident.items())
        if sub == 0x01:
            return {1: len(creds), 2: 25 - len(creds)}
        if sub == 0x02:
            rp_ids = sorted({c.rp_id for _, c in creds})
            if not rp_ids:
                raise _Refused(ERR.NO_CREDENTIALS)
            answers = [{3: {"id": r}, 4: _rp_hash(r)} for r in rp_ids]
            answers[0][5] = len(answers)
            self._pending = deque(answers[1:])
            return answers[0]
        if sub == 0x04:
            mine = [(cid, c) for cid, c in creds if _rp_hash(c.rp_id) == params[1]]
            if not mine:
                raise _Refused(ERR.NO_CREDENTIALS)
            answers = [{6: dict(c.user or {}), 7: {"type": "public-key", "id": cid}, 8: c.cose_public_key}
                       for cid, c in mine]
            answers[0][9] = len(answers)
            self._pending = deque(answers[1:])
            return answers[0]
        if sub == 0x06:
            if self._resident.pop(bytes(params[2]["id"]), None) is None:
                raise _Refused(ERR.NO_CREDENTIALS)
            return None
        raise _Refused(ERR.INVALID_SUBCOMMAND)


class SoftHidDevice(CtapDevice):
    """One open handle on a SoftAuthenticator, speaking the CTAPHID commands fido2 sends (no USB framing)."""

    _plugged: list[SoftAuthenticator] = []  # what list_devices() finds; virtual_security_key() fills it

    def __init__(self, authenticator: SoftAuthenticator):
        self.authenticator = authenticator
        self._channel = int.from_bytes(os.urandom(4), "big") | 1
        self.closed = False

    def __repr__(self):
        return f"SoftHidDevice({self.authenticator.product_name!r})"

    @property
    def capabilities(self) -> int:
        return CAPABILITY.CBOR | CAPABILITY.WINK | CAPABILITY.NMSG  # NMSG: no CTAP1/U2F, CTAP2 only

    @property
    def version(self) -> int:
        return 2  # CTAPHID protocol version

    @property
    def device_version(self) -> tuple[int, int, int]:
        return (1, 0, 0)

    @property
    def product_name(self) -> str:
        return self.authenticator.product_name

    @property
    def serial_number(self) -> str:
        return self.authenticator.serial_number

    def call(self, cmd, data=b"", event=None, on_keepalive=None) -> bytes:
        if self.closed:
            raise CtapError(ERR.INVALID_CHANNEL)
        if event is not None and event.is_set():
            raise CtapError(ERR.KEEPALIVE_CANCEL)
        if cmd == CTAPHID.CBOR:
            return self.authenticator.handle(bytes(data), on_keepalive)
        if cmd == CTAPHID.INIT:
            return bytes(data[:8]) + struct.pack(">IBBBBB", self._channel, self.version, *self.device_version,
                                                 self.capabilities)
        if cmd == CTAPHID.PING:
            return bytes(data)
        if cmd == CTAPHID.WINK:
            self.authenticator.winks += 1
            return b""
        raise CtapError(ERR.INVALID_COMMAND)  # MSG (CTAP1), LOCK and vendor commands: not on this device

    def close(self) -> None:
        self.closed = True

    @classmethod
    def list_devices(cls) -> Iterator[SoftHidDevice]:
        for authenticator in list(cls._plugged):
            yield cls(authenticator)


@contextlib.contextmanager
def virtual_security_key(*authenticators: SoftAuthenticator) -> Iterator[SoftAuthenticator]:
    """Plug soft authenticators in for asyncssh (a fresh default one if none given); yields the first.

    The seam is asyncssh.sk's module-level CtapHidDevice: everything above it (Ctap2, ClientPin,
    credential management, asyncssh's enrollment and signing) runs unmodified.
    """
    import asyncssh.sk

    if not asyncssh.sk.sk_available:
        pytest.skip("asyncssh security key support unavailable (fido2 missing)")
    authenticators = authenticators or (SoftAuthenticator(),)
    previous = list(SoftHidDevice._plugged)
    SoftHidDevice._plugged[:] = previous + list(authenticators)
    try:
        with _patched(asyncssh.sk, "CtapHidDevice", SoftHidDevice):
            yield authenticators[0]
    finally:
        SoftHidDevice._plugged[:] = previous


@contextlib.contextmanager
def _patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


@pytest.fixture
def security_key() -> Iterator[SoftAuthenticator]:
    """A default soft authenticator plugged in for the test (import this fixture into a conftest to use it)."""
    with virtual_security_key() as authenticator:
        yield authenticator


# --- the SSH side: sk signature blobs --------------------------------------------------------------

@dataclass(frozen=True)
class SkSignature:
    """An SSH sk-* signature: string alg, string sig, byte flags, uint32 counter [, webauthn fields]."""

    algorithm: str
    signature: bytes
    flags: int
    counter: int
    origin: str | None = None
    client_data: bytes | None = None
    extensions: bytes | None = None

    @property
    def user_present(self) -> bool:
        return bool(self.flags & UP)

    @property
    def user_verified(self) -> bool:
        return bool(self.flags & UV)


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated SSH string length")
    (length,) = struct.unpack_from(">I", blob, offset)
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated SSH string")
    return blob[offset + 4:end], end


def parse_sk_signature(blob: bytes) -> SkSignature:
    """Parse an SSH signature blob made by a security key (sk-* or webauthn-sk-* algorithm)."""
    blob = bytes(blob)
    alg_bytes, offset = _ssh_string(blob, 0)
    algorithm = alg_bytes.decode("ascii")
    if "sk-" not in algorithm:
        raise ValueError(f"not a security key signature: {algorithm}")
    signature, offset = _ssh_string(blob, offset)
    if offset + 5 > len(blob):
        raise ValueError("truncated flags/counter")
    flags, counter = struct.unpack_from(">BI", blob, offset)
    offset += 5
    extra: dict[str, Any] = {}
    if algorithm.startswith("webauthn-"):
        origin, offset = _ssh_string(blob, offset)
        extra["client_data"], offset = _ssh_string(blob, offset)
        extra["extensions"], offset = _ssh_string(blob, offset)
        extra["origin"] = origin.decode("utf-8")
    if offset != len(blob):
        raise ValueError("trailing data after sk signature")
    return SkSignature(algorithm, signature, flags, counter, **extra)


@dataclass
class SignatureLog:
    """SSH sk signatures seen by a server-side key's verify(), parsed, with whether each verified."""

    entries: list[tuple[SkSignature, bool]] = field(default_factory=list)

    @property
    def signatures(self) -> list[SkSignature]:
        return [sig for sig, _ in self.entries]

    @property
    def last(self) -> SkSignature:
        return self.entries[-1][0]


def capture_sk_signatures(conn, log: SignatureLog):
    """Wrap one asyncssh server connection's validate_public_key so every sk signature it checks lands in log.

    Call it from SSHServer.connection_made(conn). Everything else stays asyncssh's own: authorized_client_keys
    and their options (no-touch-required), and its user-presence check; the log records its verdict too.
    """
    validate = conn.validate_public_key

    async def recording_validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        ok = await validate(username, key_data, msg, signature)
        if signature:
            with contextlib.suppress(ValueError):  # not an sk key: not ours to record
                log.entries.append((parse_sk_signature(signature), ok))
        return ok

    conn.validate_public_key = recording_validate
    return conn


def record_sk_signatures(key, log: SignatureLog):
    """Wrap one asyncssh public key object's verify() so every sk signature checked against it lands in log.

    For servers deciding keys in SSHServer.validate_public_key(username, key): asyncssh verifies the
    signature on the very object it passed in, so wrapping that instance captures the blob.
    """
    verify = key.verify

    def recording_verify(data: bytes, sig: bytes) -> bool:
        ok = verify(data, sig)
        with contextlib.suppress(ValueError):
            log.entries.append((parse_sk_signature(sig), ok))
        return ok

    key.verify = recording_verify
    return key
