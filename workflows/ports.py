"""What the pure core asks of its caller: entropy and a secret hasher, bound once per `Engine`.

The core draws no randomness and runs no deliberately slow hashing of its own. The I/O side
supplies the system's (`service/application/passwords.py`: `secrets.SystemRandom`, argon2); a test may supply
a seeded `random.Random` and a fast hasher.
"""

from __future__ import annotations

from typing import Protocol


class Entropy(Protocol):
    """A source of random integers (codes sent to people); `random.Random` is one."""

    def randrange(self, stop: int, /) -> int:
        """A random integer in [0, stop)."""
        ...


class SecretHasher(Protocol):
    """A one-way, salted, slow hash of a secret such as a password."""

    def hash(self, secret: str, /) -> str:
        """The encoded hash of `secret` (its salt and parameters included)."""
        ...

    def verify(self, hashed: str, secret: str, /) -> bool:
        """Whether `secret` is the one `hashed` was made from (False for a malformed hash)."""
        ...
