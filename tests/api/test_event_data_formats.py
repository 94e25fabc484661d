"""Event data declared `format: date-time` is checked on every install: a malformed timestamp is
400 naming the field, never a policy denial (SPEC §6), on both backends."""

from __future__ import annotations

import pytest

from tests.helpers.client import Client


def _issued_invoice(api: Client) -> str:
    account = api.signup()
    api.register_card(account)
    invoice = str(api.create("invoice", {"account": account, "usage_month": "2025-02"})["id"])
    api.fire(invoice, "add_usage", {"amount": 5000})
    api.fire(invoice, "issue")
    return invoice


@pytest.mark.parametrize("deposited_at", [
    "garbage",
    "2025-03-05T23:59:60+09:00",  # a leap second: RFC 3339 syntax, but no instant `ts()` can read
    "2025-03-05T12:00:00",  # no offset
    "2025-03-05T12:00+09:00",  # no seconds
    "٢٠٢٥-03-05T12:00:00+09:00",  # Arabic-Indic digits
])
def test_a_malformed_deposited_at_is_400_naming_the_field(api: Client, deposited_at: str) -> None:
    invoice = _issued_invoice(api)
    before = api.get(f"/instances/{invoice}/history").get_json()["items"]
    for dry_run in ("?dry_run=true", ""):
        response = api.post(f"/instances/{invoice}/events{dry_run}",
                            json={"event": "deposit", "data": {"amount": 1000, "deposited_at": deposited_at}})
        assert response.status_code == 400, response.get_json()
        assert "deposited_at" in response.get_json()["detail"]
        assert "RFC 3339" in response.get_json()["detail"]
    assert api.get(f"/instances/{invoice}/history").get_json()["items"] == before, "no denial recorded"


def test_a_well_formed_deposited_at_is_judged_by_the_rules(api: Client) -> None:
    invoice = _issued_invoice(api)
    applied = api.fire(invoice, "deposit", {"amount": 1000, "deposited_at": "2025-03-05T11:00:00+09:00"})
    assert applied["context"]["paid_amount"] == 1000
