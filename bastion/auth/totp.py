"""Time-based one-time codes: enrolment URI, ±1 step tolerance, each code accepted once."""

from __future__ import annotations

import datetime as dt
import hmac

import pyotp

DIGITS = 6
STEP = 30
TOLERANCE_STEPS = 1


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, user: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(name=user, issuer_name=issuer)


def matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step whose code equals `code` (within ±1 step of now), or None."""
    code = (code or "").strip().replace(" ", "")
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    current = int(now.timestamp()) // STEP
    found = None
    for step in range(current - TOLERANCE_STEPS, current + TOLERANCE_STEPS + 1):
        # compare every candidate, so the time taken does not tell which step matched
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def qr_text(uri: str) -> str:
    """The URI as a QR code drawn with terminal block characters."""
    import qrcode

    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(uri)
    qr.make(fit=True)
    rows = qr.get_matrix()
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2] + [[False] * len(rows[0])]):
        lines.append("".join("\u2588" if t and b else "\u2580" if t else "\u2584" if b else " "
                             for t, b in zip(top, bottom)))
    return "\n".join(lines)
