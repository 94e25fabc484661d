"""Idempotency: a request's keyed fingerprint, and the response stored with its Idempotency-Key.

A replay of a key answers the stored response byte for byte; the same key with another request is
refused (IdempotencyMismatch). Fingerprints are HMAC-SHA256 under a server key (`secret_key`, or
a random secret stored once in `server_keys` for the whole cluster).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from tollgate.service.exceptions import IdempotencyMismatch
from tollgate.service.storage.bulk import dumps
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import idempotency, server_keys

#: The fingerprint of a key stored before fingerprints were keyed (migration 0007 erased the
#: old digest): a replay answers its stored response without comparing the request.
LEGACY_FINGERPRINT = "legacy"
IDEMPOTENCY_SECRET = "idempotency"


class KeyTaken(Exception):
    """Another transaction stored the same Idempotency-Key first; this one must roll back."""


@dataclass(frozen=True)
class Result:
    """A response the API returns as it is: status and JSON body (also what idempotency stores)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class Idempotency:
    """Fingerprints and stored responses in `db`; `secret_key` (TOLLGATE_SECRET_KEY) keys the
    fingerprints, else a random key kept in the database does."""

    def __init__(self, db: Database, now: Callable[[], datetime], secret_key: str | None = None) -> None:
        self.db = db
        self.now = now
        self._secret_key = secret_key
        self._fingerprint_key: bytes | None = None

    def fingerprint(self, *parts: Any) -> str:
        """The digest of a request (method, path, body) stored with its Idempotency-Key.

        HMAC-SHA256 under a server key, not a bare hash: a body may carry a password, and an
        unkeyed digest of it could be reversed by trying candidates. The whole request is keyed
        (not a redacted body plus a digest of the secrets) so that a field nobody marked secret is
        protected too, and two requests differing only in a secret still count as different.
        """
        canonical = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode()
        return hmac.new(self._idempotency_key(), canonical, hashlib.sha256).hexdigest()

    def _idempotency_key(self) -> bytes:
        """The fingerprint key: derived from `secret_key` when given, else from a random secret
        stored once in `server_keys` (the first server to need it inserts it; every other server
        and worker of the cluster reads the same row)."""
        key = self._fingerprint_key
        if key is None:
            secret = self._secret_key or self._stored_secret(IDEMPOTENCY_SECRET)
            key = hmac.new(secret.encode(), b"tollgate idempotency fingerprint", hashlib.sha256).digest()
            self._fingerprint_key = key
        return key

    def _stored_secret(self, name: str) -> str:
        query = select(server_keys.c.secret).where(server_keys.c.name == name)
        with self.db.read() as conn:
            found = conn.execute(query).scalar_one_or_none()
        if found is not None:
            return str(found)
        try:
            with self.db.transaction() as conn:
                conn.execute(insert(server_keys).values(name=name, secret=secrets.token_hex(32),
                                                        created_at=self.now()))
        except IntegrityError:
            pass  # another server stored it first: use theirs
        with self.db.read() as conn:
            return str(conn.execute(query).scalar_one())

    def replay(self, conn: Connection, key: str, fingerprint: str) -> Result | None:
        row = conn.execute(select(idempotency).where(idempotency.c.key == key)).first()
        if row is None:
            return None
        if row.fingerprint != LEGACY_FINGERPRINT and not hmac.compare_digest(row.fingerprint, fingerprint):
            raise IdempotencyMismatch(f"The Idempotency-Key '{key}' was already used with a different "
                                      "request; use a new key for a new request.")
        return Result(row.status, orjson.loads(row.body), replayed=True)

    def store(self, conn: Connection, key: str, fingerprint: str, result: Result) -> None:
        conn.execute(insert(idempotency).values(key=key, fingerprint=fingerprint, status=result.status,
                                                body=dumps(result.body), headers={},
                                                created_at=self.now()))
