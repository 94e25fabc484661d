"""The I/O side's half of the core's ports (`workflows/ports.py`): the system's entropy, argon2
password hashing, and `new_engine`, which binds both to an `Engine` once. Importing it also keeps
the CEL engine's helper-failure records, which quote their arguments (a password), out of the logs.

Hashes are argon2-cffi's `PasswordHasher()` encoding with its default parameters, as they have
always been stored, so every hash already in a database still verifies.
"""

from __future__ import annotations

import logging
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

from tollgate.workflows.engine import Engine
from tollgate.workflows.guards import CEL_LOGGER, is_helper_failure
from tollgate.workflows.policy import Policy


class Argon2Hasher:
    """`SecretHasher` with argon2id (argon2-cffi's defaults: a salt of its own per hash)."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()

    def hash(self, secret: str, /) -> str:
        return self._hasher.hash(secret)

    def verify(self, hashed: str, secret: str, /) -> bool:
        try:
            return self._hasher.verify(hashed, secret)
        except (Argon2Error, InvalidHashError):  # a mismatch, or not an argon2 hash at all
            return False


def _drop_helper_failures(record: logging.LogRecord) -> bool:
    return not is_helper_failure(record.getMessage())


logging.getLogger(CEL_LOGGER).addFilter(_drop_helper_failures)

#: The operating system's randomness (`os.urandom`): the codes it draws cannot be predicted.
ENTROPY = secrets.SystemRandom()
HASHER = Argon2Hasher()


def verify_password(hashed: str, password: str) -> bool:
    """Whether `password` is the one a stored `password_hash` was made from."""
    return HASHER.verify(hashed, password)


def new_engine(policy: Policy) -> Engine:
    """An engine for `policy` that draws codes from the system and hashes passwords with argon2."""
    return Engine(policy, entropy=ENTROPY, hasher=HASHER)
