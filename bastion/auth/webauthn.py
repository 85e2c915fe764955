"""WebAuthn (browser security keys) via python-fido2: registration, assertion, flags and counters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (AttestedCredentialData, AuthenticationResponse, PublicKeyCredentialRpEntity,
                            PublicKeyCredentialUserEntity, ResidentKeyRequirement, UserVerificationRequirement)

from bastion.errors import BastionError

MAX_RESPONSE = 64 * 1024


class WebAuthnError(BastionError):
    """A WebAuthn response that does not verify (the message is safe to show)."""


@dataclass(frozen=True)
class Assertion:
    credential_id: str   # hex
    user_present: bool
    user_verified: bool
    counter: int


def _checked(response: Any) -> dict:
    if not isinstance(response, dict) or len(json.dumps(response)) > MAX_RESPONSE:
        raise WebAuthnError("malformed WebAuthn response")
    return response


class WebAuthnService:
    """One relying party (the console's host name); state round-trips through the console session."""

    def __init__(self, rp_id: str, rp_name: str = "Bastion"):
        self.server = Fido2Server(PublicKeyCredentialRpEntity(id=rp_id, name=rp_name))

    def register_begin(self, user_id: int, user_name: str, existing: list[bytes]) -> tuple[dict, dict]:
        options, state = self.server.register_begin(
            PublicKeyCredentialUserEntity(id=str(user_id).encode(), name=user_name, display_name=user_name),
            credentials=[AttestedCredentialData(c) for c in existing],
            user_verification=UserVerificationRequirement.PREFERRED,
            resident_key_requirement=ResidentKeyRequirement.DISCOURAGED)
        return dict(options), {"challenge": state["challenge"], "user_verification": str(state["user_verification"])}

    def register_complete(self, state: dict, response: Any) -> tuple[bytes, str, int]:
        """(credential data to store, credential id hex, initial counter)."""
        try:
            auth_data = self.server.register_complete(_state(state), _checked(response))
        except WebAuthnError:
            raise
        except Exception:
            raise WebAuthnError("the security key registration did not verify") from None
        credential = auth_data.credential_data
        return bytes(credential), credential.credential_id.hex(), auth_data.counter

    def authenticate_begin(self, credentials: list[bytes], user_verification: bool) -> tuple[dict, dict]:
        requirement = UserVerificationRequirement.REQUIRED if user_verification else \
            UserVerificationRequirement.DISCOURAGED
        options, state = self.server.authenticate_begin([AttestedCredentialData(c) for c in credentials],
                                                        user_verification=requirement)
        return dict(options), {"challenge": state["challenge"], "user_verification": str(state["user_verification"])}

    def authenticate_complete(self, state: dict, credentials: list[bytes], response: Any) -> Assertion:
        try:
            self.server.authenticate_complete(_state(state), [AttestedCredentialData(c) for c in credentials],
                                              _checked(response))
            data = AuthenticationResponse.from_dict(response).response.authenticator_data
        except WebAuthnError:
            raise
        except Exception:
            raise WebAuthnError("the security key answer did not verify") from None
        return Assertion(AuthenticationResponse.from_dict(response).raw_id.hex(), data.is_user_present(),
                         data.is_user_verified(), data.counter)


def _state(state: dict) -> dict:
    if not isinstance(state, dict) or "challenge" not in state:
        raise WebAuthnError("no WebAuthn ceremony in progress")
    requirement = state.get("user_verification")
    return {"challenge": state["challenge"],
            "user_verification": UserVerificationRequirement(requirement) if requirement else None}


def encode_credential(data: bytes) -> str:
    return websafe_encode(data)


def decode_credential(text: str) -> bytes:
    return websafe_decode(text)
