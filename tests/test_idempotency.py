"""Idempotency-Key at the runtime: a replay answers the first response and changes nothing, also
when two requests with one key race past the first check."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.db import Database
from service.runtime import Runtime, fingerprint_of
from workflows.exceptions import IdempotencyMismatch

RULES = Path(__file__).resolve().parent.parent / "rules.yaml"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'i.db'}"
    else:
        from conftest import _empty_postgres

        url = request.getfixturevalue("postgres_database")
        _empty_postgres(url)
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
                   fingerprint=fingerprint_of("POST", f"/instances/{invoice}/events", body))


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
    real = Runtime._idempotent_replay
    calls = {"n": 0}
    in_transaction_checks = 1 if runtime.db.is_sqlite else 2  # PostgreSQL checks again after the lock

    def blind_then_real(self: Runtime, *args: Any) -> Any:
        calls["n"] += 1
        return None if calls["n"] <= in_transaction_checks else real(self, *args)

    monkeypatch.setattr(Runtime, "_idempotent_replay", blind_then_real)
    raced = _usage(runtime, invoice, 700, "k3")
    assert raced.replayed and raced.body == first.body
    assert runtime.get_instance(invoice)["context"]["usage"] == 700, "the twin's event was rolled back"
    assert sum(h["event"] == "add_usage" for h in runtime.history(invoice)) == 1
