"""Accounts read up front only for events that read them; the others get theirs on first use.

`Engine.needs_account` says which events name the account in a guard, a route, a timer or an
action; a batch loads the accounts of those events in one query and hands every other event a
`LazyAccount`, which reads the account only if something asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.kst import KST
from tests.helpers.paths import RULES_PATH
from tests.service.test_sweep import ISSUE_AT, Month
from tollgate.service.application.judging import LazyAccount, account_view
from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy_file
from tollgate.service.application.runtime import Runtime
from tollgate.service.storage.db import Database
from tollgate.service.storage.unit_of_work import UnitOfWork
from tollgate.workflows.actions import ACTIONS, reads_account
from tollgate.workflows.engine import Engine
from tollgate.workflows.outcome import Step

AUTOPAY_DAY = datetime(2026, 11, 10, 0, 0, tzinfo=KST)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(Database(f"sqlite:///{tmp_path / 'lazy.db'}"))
    runtime.bootstrap(RULES_PATH)
    yield runtime
    runtime.db.dispose()


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every instance id a unit of work is asked to load, in order."""
    ids: list[str] = []
    original = UnitOfWork.load

    def spy(self: UnitOfWork, wanted: Iterable[str]) -> None:
        wanted = list(wanted)
        ids.extend(wanted)
        original(self, wanted)

    monkeypatch.setattr(UnitOfWork, "load", spy)
    return ids


def test_actions_that_name_the_account_its_email_or_phone_are_found() -> None:
    assert reads_account(ACTIONS["issue_invoice"])  # step.email and step.phone
    assert reads_account(ACTIONS["notify_overdue"]) and reads_account(ACTIONS["notify_suspended"])
    assert not reads_account(ACTIONS["request_charge"])  # step.context["account"] is only an id
    assert not reads_account(ACTIONS["record_deposit"])

    def in_a_comprehension(step: Step) -> None:
        step.context["to"] = [step.email for _ in range(1)]

    def none(step: Step) -> None:
        step.context["account"] = "acct-1"

    assert reads_account(in_a_comprehension) and not reads_account(none)


def test_the_engine_knows_which_events_read_the_account() -> None:
    engine = new_engine(load_policy_file(RULES_PATH))
    policy = engine.policy
    for (workflow, event), _ in engine._plans.items():
        named = any("account" in rule.expression.roots for rule in policy.guards(workflow, event).rules)
        if named:
            assert engine.needs_account(workflow, event), (workflow, event)
    # register's guards name account.member_type; the invoice notices go to the account's email
    assert engine.needs_account("payment_method", "register")
    assert [e for e in ("issue", "start_autopay", "charge_succeeded", "deposit", "mark_overdue",
                        "begin_grace", "suspend") if engine.needs_account("invoice", e)] == [
        "issue", "mark_overdue", "suspend"]


def test_a_batch_of_events_that_do_not_read_accounts_does_not_load_them(
        runtime: Runtime, loaded: list[str]) -> None:
    month = Month(runtime)
    invoices = [month.invoice(n, card=True) for n in range(6)]
    accounts = {f"acct_{month.tag}_{n}" for n in range(6)}
    runtime.sweep(month.clock, ISSUE_AT, batch=100)  # issue notifies the account's email and phone
    assert accounts <= set(loaded)
    emailed = {n["recipient"] for i in invoices for n in runtime.notifications(i) if n["channel"] == "email"}
    assert emailed == {f"{a}@example.com" for a in accounts}
    loaded.clear()
    runtime.advance_clock(month.clock, AUTOPAY_DAY)  # start_autopay: no guard or action reads it
    assert set(invoices) <= set(loaded) and not accounts & set(loaded)
    assert all(month.state(i) == "autopay" for i in invoices)


def test_an_action_that_reads_a_lazy_account_sees_the_same_account(
        runtime: Runtime, loaded: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    eager = Month(runtime)
    eager_invoice = eager.invoice(1)
    runtime.sweep(eager.clock, ISSUE_AT, batch=100)
    # Pretend nothing reads the account: issue's notices must still find the account's address.
    monkeypatch.setattr(Engine, "needs_account", lambda self, workflow, event: False)
    lazy = Month(runtime)
    lazy_invoice = lazy.invoice(1)
    loaded.clear()
    runtime.sweep(lazy.clock, ISSUE_AT, batch=100)
    assert loaded.index(lazy_invoice) < loaded.index(f"acct_{lazy.tag}_1")  # read on first use

    def notices(invoice: str, tag: str) -> list[tuple[str, str, str]]:
        return [(n["template"], n["channel"], n["recipient"].replace(tag, "TAG"))
                for n in runtime.notifications(invoice)]

    assert notices(lazy_invoice, lazy.tag) == notices(eager_invoice, eager.tag)
    assert ("invoice_issued", "email", "acct_TAG_1@example.com") in notices(lazy_invoice, lazy.tag)


def test_a_lazy_account_is_the_account_view_or_empty_when_there_is_none(runtime: Runtime) -> None:
    month = Month(runtime)
    month.invoice(1)
    account_id = f"acct_{month.tag}_1"
    with runtime.db.transaction() as conn:
        uow = runtime.units.open(conn)
        lazy = LazyAccount(uow, account_id)
        assert account_id not in uow.records  # nothing read yet
        assert dict(lazy) == account_view(uow.get(account_id))
        assert lazy["email"] == f"{account_id}@example.com"
        missing: Any = LazyAccount(uow, "acct_nobody")
        assert not missing and dict(missing) == {} and missing.get("email") is None
        assert not LazyAccount(uow, None)
    step = Step(instance_id="inv-1", workflow="invoice", data={}, context={"email": "ctx@example.com"},
                secrets={}, account=missing, facts={}, now=ISSUE_AT, params={}, zone=KST,
                rng=None, hasher=None)  # type: ignore[arg-type]
    assert step.email == "ctx@example.com"  # as with no account at all
