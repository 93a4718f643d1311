"""Opaque secrets (refresh, reset and client tokens, recovery codes) and TOTP (pyotp)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _secrets
import time

import pyotp

TOTP_INTERVAL = 30
TOTP_DIGITS = 6
RECOVERY_CODES = 10
ISSUER_NAME = "Gatehouse"


def new_token(nbytes: int = 32) -> str:
    """A url-safe random token (256 bits by default)."""
    return _secrets.token_urlsafe(nbytes)


def digest(secret: str) -> str:
    """SHA-256 hex digest: enough for random high-entropy secrets (not for passwords)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(secret: str, stored: str) -> bool:
    return hmac.compare_digest(digest(secret), stored)


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``xxxxx-xxxxx`` codes of 50 random bits each (base32, no ambiguous padding)."""
    out = []
    for _ in range(count):
        raw = base64.b32encode(_secrets.token_bytes(7)).decode()[:10].lower()
        out.append(f"{raw[:5]}-{raw[5:]}")
    return out


def normalize_recovery_code(code: str) -> str:
    raw = code.strip().lower().replace("-", "").replace(" ", "")
    return f"{raw[:5]}-{raw[5:]}" if len(raw) == 10 else code.strip().lower()


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL).provisioning_uri(
        name=email, issuer_name=ISSUER_NAME
    )


def looks_like_totp(code: str) -> bool:
    code = code.strip()
    return len(code) == TOTP_DIGITS and code.isdigit()


def totp_step(secret: str, code: str, *, now: float | None = None, window: int = 1) -> int | None:
    """The time step (counter) ``code`` is valid for within ±``window`` steps, or None."""
    if not looks_like_totp(code):
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)
    now = time.time() if now is None else now
    current = int(now // TOTP_INTERVAL)
    for step in range(current - window, current + window + 1):
        if hmac.compare_digest(totp.generate_otp(step), code.strip()):
            return step
    return None
