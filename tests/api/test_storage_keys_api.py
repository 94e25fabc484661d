"""Declared storage keys over the HTTP API: the 409 of a second invoice for one account and month,
and an email taken case-insensitively until its signup expires (tests/service/test_storage_keys.py
checks the declarations, the normalisation and migration 0008)."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from tests.helpers.client import Client
from tollgate.service.storage.tables import instance_keys

KR = {"country": "KR", "member_type": "individual", "birth_date": "1990-01-01"}


def _keys(app: Flask, instance: str) -> dict[str, tuple[str, str | None]]:
    with app.extensions["tollgate"].db.read() as conn:
        rows = conn.execute(select(instance_keys).where(instance_keys.c.instance == instance))
        return {row.name: (row.value, row.unique_value) for row in rows}


def test_a_second_invoice_for_one_account_and_month_is_409_from_the_declared_unique_key(
        api: Client, app: Flask) -> None:
    account = api.signup()
    first = api.create("invoice", {"account": account, "usage_month": "2025-03"})["id"]
    assert _keys(app, first) == {"account_month": (f"{account}\x1f2025-03",) * 2}
    response = api.post("/workflows/invoice/instances",
                        json={"context": {"account": account, "usage_month": "2025-03"}})
    assert response.status_code == 409
    assert response.get_json()["detail"] == (f"The account '{account}' already has the invoice '{first}' for "
                                             "2025-03; there is one invoice per account and month.")
    api.create("invoice", {"account": account, "usage_month": "2025-04"})  # another month is free


def test_an_email_is_taken_case_insensitively_until_its_signup_expires(api: Client, app: Flask) -> None:
    first = str(api.create("signup")["id"])
    api.fire(first, "select_type", KR)
    api.fire(first, "submit_email", {"email": "Owner@Example.com"})
    assert _keys(app, first) == {"email": ("owner@example.com", None)}
    second = str(api.create("signup")["id"])
    api.fire(second, "select_type", KR)
    refused = api.fire(second, "submit_email", {"email": " OWNER@example.com"}, status=422)
    assert [r["rule"] for r in refused["reasons"]] == ["email_unique"]
    api.fire(first, "expire")  # an admin fires the timer's event by hand: the email is released
    assert _keys(app, first) == {}
    api.fire(second, "submit_email", {"email": "owner@example.com"})
    assert _keys(app, second) == {"email": ("owner@example.com", None)}


def test_a_changed_email_moves_its_key(api: Client, app: Flask) -> None:
    account = str(api.create("signup")["id"])
    api.fire(account, "select_type", KR)
    api.fire(account, "submit_email", {"email": "first@example.com"})
    api.fire(account, "submit_email", {"email": "second@example.com"})  # again, before verifying
    assert _keys(app, account) == {"email": ("second@example.com", None)}


def test_an_instance_must_reference_an_instance_of_the_declared_account_workflow(api: Client) -> None:
    account = api.signup()
    invoice = api.create("invoice", {"account": account, "usage_month": "2025-03"})["id"]
    assert invoice.startswith("inv_") and account.startswith("acct_")  # the declared id prefixes
    response = api.post("/workflows/payment_method/instances",
                        json={"context": {"account": invoice, "channel": "web"}})
    assert response.status_code == 422
    assert response.get_json()["detail"] == (f"The account '{invoice}' does not exist; give the id of a "
                                             "signup instance in context.account.")
    assert api.create("payment_method", {"account": account, "channel": "web"})["id"].startswith("pm_")
