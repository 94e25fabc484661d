"""The pure core's boundary: ruff bans I/O, clocks and randomness in `workflows/`, and the engine
uses only the entropy and password hasher its caller binds to it, outside any shared lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from random import Random

import pytest

from tollgate.service.application.passwords import HASHER, verify_password
from tollgate.workflows.engine import Engine
from tollgate.workflows.outcome import Snapshot
from tollgate.workflows.policy import Policy

REPO = Path(__file__).resolve().parents[2]
NOON = datetime(2026, 12, 1, 3, tzinfo=UTC)  # 12:00 in Seoul
PASSWORD = "Abcdef1!"

#: Each banned name of [tool.ruff.lint.flake8-tidy-imports.banned-api], and a line that uses it.
BANNED_USES = {
    "datetime.datetime.now": "datetime.datetime.now()",
    "datetime.datetime.utcnow": "datetime.datetime.utcnow()",
    "datetime.datetime.today": "datetime.datetime.today()",
    "datetime.date.today": "datetime.date.today()",
    "time": "import time",
    "random": "import random",
    "secrets": "import secrets",
    "uuid": "import uuid",
    "os": "import os",
    "pathlib": "from pathlib import Path",
    "importlib.resources": "from importlib.resources import files",
    "logging": "import logging",
    "threading": "import threading",
    "subprocess": "import subprocess",
    "socket": "import socket",
    "flask": "import flask",
    "sqlalchemy": "from sqlalchemy import select",
    "argon2": "from argon2 import PasswordHasher",
    "tollgate.service": "from tollgate.service import passwords",
    "tollgate.bundled": "from tollgate import bundled",
}


def _banned(tree: Path, file: str) -> dict[str, str]:
    """The TID251 findings of ruff, run with the project's own configuration, on `file` in `tree`:
    banned name → message."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", "--output-format", "json",
         "--exit-zero", file], cwd=tree, capture_output=True, text=True, check=True)
    found = {}
    for finding in json.loads(result.stdout):
        name, _, message = finding["message"].partition(" is banned: ")
        found[name.strip("`")] = message
    return found


def test_ruff_bans_io_clocks_and_randomness_in_the_core_but_not_in_the_service(tmp_path: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    source = "import datetime\n" + "\n".join(BANNED_USES.values()) + "\n"
    for folder in ("workflows", "service"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "module.py").write_text(source, encoding="utf-8")
    in_core = _banned(tmp_path, "workflows/module.py")
    assert set(in_core) == set(BANNED_USES)
    assert all(message.startswith("The core ") for message in in_core.values())  # each says what instead
    assert _banned(tmp_path, "service/module.py") == {}


class _Fixed:
    """Entropy that always draws `value`."""

    def __init__(self, value: int) -> None:
        self.value = value

    def randrange(self, stop: int, /) -> int:
        return self.value % stop


class _Recorder:
    """A fast `SecretHasher` that records what it hashed."""

    def __init__(self) -> None:
        self.hashed: list[str] = []

    def hash(self, secret: str, /) -> str:
        self.hashed.append(secret)
        return f"plain${secret}"

    def verify(self, hashed: str, secret: str, /) -> bool:
        return hashed == f"plain${secret}"


def _signup(state: str, **context: str) -> Snapshot:
    return Snapshot("signup", state, context, id="signup-1", facts={"email_taken": False})


def _emailed_code(engine: Engine) -> str:
    outcome = engine.decide(_signup("login_info", country="KR", member_type="business"), "submit_email",
                            {"email": "member@example.com"}, NOON)
    assert outcome.applied
    (notification,) = outcome.notifications
    code: str = notification.payload["code"]
    return code


def test_codes_come_from_the_entropy_the_engine_was_built_with(policy: Policy) -> None:
    assert _emailed_code(Engine(policy, entropy=_Fixed(42), hasher=_Recorder())) == "000042"
    seeded = [_emailed_code(Engine(policy, entropy=Random(7), hasher=_Recorder())) for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seeded source gives a test the same code every time


def test_passwords_are_hashed_by_the_hasher_the_engine_was_built_with(policy: Policy) -> None:
    hasher = _Recorder()
    engine = Engine(policy, entropy=_Fixed(0), hasher=hasher)
    outcome = engine.decide(_signup("password_setup"), "set_password",
                            {"password": PASSWORD, "password_confirm": PASSWORD}, NOON)
    assert outcome.applied and hasher.hashed == [PASSWORD]
    assert outcome.secrets["password_hash"] == f"plain${PASSWORD}"


def test_a_slow_hash_holds_up_no_other_event_on_the_same_engine(policy: Policy) -> None:
    """Argon2 is slow by design; while one event hashes a password, another event of the same
    workflow on the same engine is judged (the engine shares no lock between calls)."""
    inside, release = threading.Event(), threading.Event()
    waited: list[bool] = []

    class Blocking(_Recorder):
        def hash(self, secret: str, /) -> str:
            inside.set()
            waited.append(release.wait(timeout=30))  # False: nobody released it, i.e. the other event waited
            return super().hash(secret)

    engine = Engine(policy, entropy=_Fixed(0), hasher=Blocking())
    data = {"password": PASSWORD, "password_confirm": PASSWORD}
    setting = (_signup("password_setup"), "set_password", data, NOON)
    hashing = threading.Thread(target=engine.decide, args=setting)
    hashing.start()
    assert inside.wait(timeout=30)
    other = engine.decide(_signup("login_info", country="KR", member_type="business"), "submit_email",
                          {"email": "member@example.com"}, NOON)
    release.set()
    hashing.join()
    assert other.applied and waited == [True]


@pytest.mark.parametrize("stored", [
    # made by argon2-cffi's PasswordHasher() as tollgate has always stored them
    "$argon2id$v=19$m=65536,t=3,p=4$w/6DtSGgqOD/c3CHVZVY5Q$zIexwR4I4puv1EAVgo5qKte5dcQiWjIO3XDdOmp2zjE",
    HASHER.hash(PASSWORD),
])
def test_stored_argon2_hashes_still_verify(stored: str) -> None:
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + "x")
    assert not verify_password("not a hash", PASSWORD)
