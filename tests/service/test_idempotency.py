"""Idempotency-Key at the runtime: a replay answers the first response and changes nothing, also
when two requests with one key race past the first check."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tollgate.service.application.idempotency import Idempotency
from tollgate.service.application.runtime import Runtime
from tollgate.service.exceptions import IdempotencyMismatch
from tollgate.service.storage.db import Database

RULES = Path(__file__).resolve().parents[2] / "rules.yaml"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'i.db'}"
    else:
        from tests.helpers.postgres import empty_postgres

        url = request.getfixturevalue("postgres_database")
        empty_postgres(url)
    rt = Runtime(Database(url), now=lambda: datetime(2026, 10, 20, 3, tzinfo=UTC))
    rt.bootstrap(RULES)
    yield rt
    rt.db.dispose()


def _invoice(rt: Runtime, name: str) -> str:
    account = rt.create_instance("signup", {}, instance_id=f"acct_{name}")["id"]
    return rt.create_instance("invoice", {"account": account, "usage_month": "2026-10"},
                              instance_id=f"inv_{name}")["id"]


def _usage(rt: Runtime, invoice: str, amount: int, key: str) -> Any:
    body = {"event": "add_usage", "data": {"amount": amount}}
    return rt.fire(invoice, "add_usage", body["data"], idempotency_key=key,
                   fingerprint=rt.fingerprint("POST", f"/instances/{invoice}/events", body))


def test_a_replay_returns_the_first_response_and_applies_nothing(runtime: Runtime) -> None:
    invoice = _invoice(runtime, "a")
    first = _usage(runtime, invoice, 500, "k1")
    again = _usage(runtime, invoice, 500, "k1")
    assert (first.status, first.replayed, again.replayed) == (200, False, True)
    assert list(again.body.items()) == list(first.body.items()), "same members, same order"
    assert runtime.get_instance(invoice)["context"]["usage"] == 500
    assert [h["event"] for h in runtime.history(invoice)] == ["create", "add_usage"]


def test_the_same_key_with_another_body_is_refused(runtime: Runtime) -> None:
    invoice = _invoice(runtime, "b")
    _usage(runtime, invoice, 500, "k2")
    with pytest.raises(IdempotencyMismatch):
        _usage(runtime, invoice, 501, "k2")
    assert runtime.get_instance(invoice)["context"]["usage"] == 500


def test_a_request_that_raced_past_the_check_is_undone_and_answers_the_stored_response(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    invoice = _invoice(runtime, "c")
    first = _usage(runtime, invoice, 700, "k3")
    real = Idempotency.replay
    calls = {"n": 0}
    in_transaction_checks = 1 if runtime.db.is_sqlite else 2  # PostgreSQL checks again after the lock

    def blind_then_real(self: Idempotency, *args: Any) -> Any:
        calls["n"] += 1
        return None if calls["n"] <= in_transaction_checks else real(self, *args)

    monkeypatch.setattr(Idempotency, "replay", blind_then_real)
    raced = _usage(runtime, invoice, 700, "k3")
    assert raced.replayed and raced.body == first.body
    assert runtime.get_instance(invoice)["context"]["usage"] == 700, "the twin's event was rolled back"
    assert sum(h["event"] == "add_usage" for h in runtime.history(invoice)) == 1


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_at_0004(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database migrated up to 0004 only (PostgreSQL: the session database, reset after)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from tollgate.service.storage.db import MIGRATIONS

    def reset_schema(db: Database) -> None:
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))

    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'legacy.db'}")
    else:
        db = Database(request.getfixturevalue("postgres_database"))
        reset_schema(db)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    yield db
    if not db.is_sqlite:  # leave the shared PostgreSQL test database migrated for other tests
        reset_schema(db)
        db.migrate()
    db.dispose()


def test_a_key_stored_with_an_unkeyed_digest_still_replays_after_the_upgrade(
        database_at_0004: Database) -> None:
    import hashlib
    import json

    from sqlalchemy import insert, select

    from tollgate.service.storage.tables import idempotency

    body = {"event": "set_password", "data": {"password": "Kp4#vLq9", "password_confirm": "Kp4#vLq9"}}
    request = ["POST", "/instances/acct_old/events", body]
    old_digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
    answer = {"id": "acct_old", "state": "payment_method_required"}
    with database_at_0004.engine.begin() as conn:
        conn.execute(insert(idempotency).values(key="old-key", fingerprint=old_digest, status=200,
                                                body=json.dumps(answer), headers={},
                                                created_at=datetime(2026, 10, 20, tzinfo=UTC)))
    rt = Runtime(database_at_0004, now=lambda: datetime(2026, 10, 20, 3, tzinfo=UTC))
    rt.bootstrap(RULES)  # migrates to the head
    with database_at_0004.read() as conn:
        stored = conn.execute(select(idempotency.c.fingerprint)).scalar_one()
    assert stored != old_digest, "the unkeyed digest is erased"
    replay = rt.fire("acct_old", "set_password", body["data"], idempotency_key="old-key",
                     fingerprint=rt.fingerprint(*request))
    assert (replay.status, replay.body, replay.replayed) == (200, answer, True)


def test_every_server_of_a_database_keys_fingerprints_alike_and_a_configured_key_wins(
        runtime: Runtime) -> None:
    request = ("POST", "/instances/acct_x/events", {"event": "set_password", "data": {"password": "p"}})
    other_server = Runtime(runtime.db)  # another process over the same database, without a key
    assert other_server.fingerprint(*request) == runtime.fingerprint(*request)
    configured = [Runtime(runtime.db, secret_key="cluster-secret") for _ in range(2)]
    assert configured[0].fingerprint(*request) == configured[1].fingerprint(*request)
    assert configured[0].fingerprint(*request) != runtime.fingerprint(*request)
