"""Webhook signatures, Stripe's scheme: `Tollgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.

The MAC is HMAC-SHA256 keyed with the shared secret (TOLLGATE_WEBHOOK_SECRET) over the bytes
`<t>.<raw request body>`. A receiver recomputes it over the body exactly as received (before any
JSON parsing), compares in constant time, and refuses a timestamp older (or newer) than its
tolerance, so a captured request cannot be replayed later. This module is what tollgate signs
with and what a Python receiver can verify with (README, "Delivery"; the tests' receivers use it).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Tollgate-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds, as Stripe's libraries


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale, or does not match the body."""


def compute(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={compute(secret, t, body)}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance: int = DEFAULT_TOLERANCE,
           now: float | None = None) -> int:
    """Check `header` against `body`; the signed timestamp, or SignatureError saying what is wrong.

    Several `v1=` entries are accepted (one of them must match), like Stripe's during a secret's
    rotation; unknown schemes are ignored.
    """
    if not header:
        raise SignatureError(f"The {HEADER} header is missing.")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(f"The {HEADER} timestamp t={value!r} is not a whole number.") from None
        elif key == SCHEME:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"The {HEADER} header needs t=<unix seconds> and {SCHEME}=<hex HMAC>.")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"The {HEADER} timestamp is {abs(current - timestamp):.0f} s away from now, "
                             f"more than the {tolerance} s tolerated.")
    expected = compute(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError(f"No {SCHEME} signature in the {HEADER} header matches the body.")
    return timestamp
