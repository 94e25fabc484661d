"""Keys the workflow definitions declare, kept and enforced by generic storage (`instance_keys`).

signup.yaml declares `email` (from context.email, case-insensitive, released when the signup
expires), read by the `email_unique` rule through the `email_taken` fact; invoice.yaml declares a
unique (account, usage_month), whose second holder is refused with the same 409 as before.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import inspect, text

from tests.helpers.migrations import run_migration
from tollgate.service.application.policy_files import definitions
from tollgate.service.storage.db import Database
from tollgate.workflows.definitions import Key

KR = {"country": "KR", "member_type": "individual", "birth_date": "1990-01-01"}


def test_the_definitions_declare_the_keys_storage_keeps() -> None:
    signup, invoice = definitions()["signup"], definitions()["invoice"]
    assert signup.keys["email"] == Key("email", ("email",), signup.keys["email"].description,
                                       case_insensitive=True, released_in=frozenset({"expired"}))
    assert signup.fact_keys == {"email_taken": "email"}
    assert invoice.keys["account_month"].fields == ("account", "usage_month")
    assert invoice.keys["account_month"].unique


def test_a_key_value_is_normalised_joined_and_released() -> None:
    email = definitions()["signup"].keys["email"]
    assert email.value({"email": "  Owner@Example.COM "}) == "owner@example.com"
    assert email.value({"email": "owner@example.com"}, "expired") is None
    assert email.value({}) is None
    month = definitions()["invoice"].keys["account_month"]
    assert month.value({"account": "acct_1", "usage_month": "2025-03"}) == "acct_1\x1f2025-03"
    assert month.value({"account": "acct_1"}) is None




def test_0008_carries_emails_and_invoice_months_into_instance_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    run_migration(db, "upgrade", "0007")
    now = datetime(2026, 11, 26, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        {"id": "acct_live", "workflow": "signup", "state": "active", "account": None,
         "email": "live@example.com", "month": None},
        {"id": "acct_gone", "workflow": "signup", "state": "expired", "account": None,
         "email": "gone@example.com", "month": None},
        {"id": "inv_1", "workflow": "invoice", "state": "open", "account": "acct_live", "email": None,
         "month": "2026-10"},
        {"id": "pm_1", "workflow": "payment_method", "state": "active", "account": "acct_live", "email": None,
         "month": None}]
    with db.engine.begin() as conn:
        for row in rows:
            conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                              "history_seq, account, email, usage_month, created_at, updated_at) "
                              "VALUES (:id, :workflow, :state, '{}', '{}', 1, 0, :account, :email, :month, "
                              ":t, :t)"),
                         {**row, "t": now})
    run_migration(db, "upgrade", "0008")
    with db.engine.connect() as conn:
        kept = {tuple(r) for r in conn.execute(text("SELECT instance, name, workflow, value, unique_value "
                                                   "FROM instance_keys"))}
    assert kept == {("acct_live", "email", "signup", "live@example.com", None),
                    ("inv_1", "account_month", "invoice", "acct_live\x1f2026-10", "acct_live\x1f2026-10")}
    columns = {c["name"] for c in inspect(db.engine).get_columns("instances")}
    assert not columns & {"email", "usage_month"}
    run_migration(db, "downgrade", "0007")
    with db.engine.connect() as conn:
        back = dict(conn.execute(text("SELECT id, coalesce(email, usage_month) FROM instances")).all())
    assert back == {"acct_live": "live@example.com", "acct_gone": None, "inv_1": "2026-10", "pm_1": None}
    db.dispose()


@pytest.mark.parametrize("edit, problem", [
    (lambda raw: raw["keys"]["email"].update(released_in=["gone"]), "The state 'gone' is not defined."),
    (lambda raw: raw["facts"]["email_taken"].update(key="login"),
     "The key 'login' is not declared under keys."),
])
def test_a_key_in_an_unknown_state_or_an_undeclared_key_is_a_definition_problem(
        edit: Callable[[dict[str, Any]], None], problem: str) -> None:
    from tollgate import bundled
    from tollgate.service.application.policy_files import schema
    from tollgate.workflows.definitions import parse_definition
    from tollgate.workflows.exceptions import DefinitionError

    raw = yaml.safe_load((bundled.definitions() / "signup.yaml").read_text(encoding="utf-8"))
    edit(raw)
    with pytest.raises(DefinitionError) as refused:
        parse_definition(yaml.safe_dump(raw), "signup.yaml", schema("workflow.schema.json"))
    problems = refused.value.problems
    assert problem in [p.message for p in problems]
