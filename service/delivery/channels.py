"""The contract between the relay and the delivery adapters (one per channel)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple, Protocol


class Delivery(NamedTuple):
    """One attempt at sending one notification, as the relay hands it to a sender."""

    id: int
    stable_id: str  # the Idempotency-Key receivers de-duplicate on, the same on every attempt
    instance: str
    workflow: str
    template: str
    channel: str
    recipient: str
    payload: Mapping[str, Any]
    context: Mapping[str, Any]  # the instance's context at send time
    account: Mapping[str, Any] | None  # the account (signup) context, with `language` if any
    created_at: datetime
    attempt: int  # 1-based


class SendResult(NamedTuple):
    """What a sender answers: delivered or not, the receiver's status and a short sentence."""

    delivered: bool
    status: str | None  # e.g. "250" (SMTP) or "202" (HTTP); None when there was no answer
    detail: str  # a short sentence, never a secret


class Sender(Protocol):
    """Sends one notification over one channel. Raising counts as a failed attempt (the relay records
    the exception's class and redacted message)."""

    channel: str

    def send(self, delivery: Delivery) -> SendResult: ...
