"""partner_not_payable holds whatever the order (seed: 파트너의 경우, 결제수단을 등록하여도 해당
결제수단으로 납부하실 수 없습니다): a partner's payment method pays invoices only once support has
enabled it, whether the account was flagged before or after the method was registered.

Both sides of the boundary, on both backends: enabled by support → autopay charges it; not
enabled → autopay is denied (autopay_method_available) and nothing is charged.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant


def _partner_with_card(api: Client, order: str) -> tuple[str, str, str]:
    """(clock, account, payment method) of a partner, flagged before or after registering a card."""
    clock = api.clock(kst_instant(2025, 3, 5, 12))
    account = api.signup(clock=clock)
    if order == "flagged_before_registration":
        api.fire(account, "set_partner", {"partner": True}, role="admin")
    pm = api.register_card(account)
    if order == "flagged_after_registration":
        api.fire(account, "set_partner", {"partner": True}, role="admin")
    return clock, account, pm


def _state(api: Client, instance: str) -> str:
    return str(api.get(f"/instances/{instance}").get_json()["state"])


def _march_invoice_after_first_autopay_day(api: Client, clock: str, account: str) -> str:
    invoice = str(api.create("invoice", {"account": account, "usage_month": "2025-03"})["id"])
    api.fire(invoice, "add_usage", {"amount": 42_000})
    advanced = api.post(f"/clocks/{clock}/advance", json={"to": kst_instant(2025, 4, 10, 9).isoformat()})
    assert advanced.status_code == 200, advanced.get_json()
    return invoice


def _charge_requests(api: Client, invoice: str) -> list[dict[str, Any]]:
    items = api.get(f"/notifications?instance={invoice}").get_json()["items"]
    return [n for n in items if n["template"] == "charge_request"]


ORDERS = ["flagged_before_registration", "flagged_after_registration"]


@pytest.mark.parametrize("order", ORDERS)
def test_partner_not_payable_holds_a_method_until_support_enables_it(api: Client, order: str) -> None:
    clock, account, pm = _partner_with_card(api, order)
    assert _state(api, pm) == "pending_support"
    invoice = _march_invoice_after_first_autopay_day(api, clock, account)
    assert _state(api, invoice) == "issued"
    assert _charge_requests(api, invoice) == [], "a partner's method is charged before support enables it"
    denied = [h for h in api.get(f"/instances/{invoice}/history").get_json()["items"]
              if h["event"] == "start_autopay"]
    assert denied and denied[-1]["outcome"] == "denied"
    assert [r["rule"] for r in denied[-1]["reasons"]] == ["autopay_method_available"]


@pytest.mark.parametrize("order", ORDERS)
def test_partner_not_payable_charges_a_method_support_has_enabled(api: Client, order: str) -> None:
    clock, account, pm = _partner_with_card(api, order)
    api.fire(pm, "enable_payment", role="admin")
    assert _state(api, pm) == "active"
    invoice = _march_invoice_after_first_autopay_day(api, clock, account)
    assert _state(api, invoice) == "autopay"
    assert len(_charge_requests(api, invoice)) == 1


def test_partner_not_payable_records_why_an_active_method_went_back_to_support(api: Client) -> None:
    _, account, pm = _partner_with_card(api, "flagged_after_registration")
    last = api.get(f"/instances/{pm}/history").get_json()["items"][-1]
    assert (last["event"], last["from"], last["to"], last["actor"]) == (
        "account_became_partner", "active", "pending_support", f"signup:{account}")
    assert [n["rule"] for n in last["notes"]] == ["partner_not_payable"]


def test_setting_the_partner_flag_again_keeps_an_enabled_method_payable(api: Client) -> None:
    _, account, pm = _partner_with_card(api, "flagged_after_registration")
    api.fire(pm, "enable_payment", role="admin")
    api.fire(account, "set_partner", {"partner": True}, role="admin")
    api.fire(account, "set_partner", {"partner": False}, role="admin")
    assert _state(api, pm) == "active"


def test_a_member_who_is_not_a_partner_keeps_paying(api: Client) -> None:
    clock = api.clock(kst_instant(2025, 3, 5, 12))
    account = api.signup(clock=clock)
    pm = api.register_card(account)
    api.fire(account, "set_partner", {"partner": False}, role="admin")
    assert _state(api, pm) == "active"
    invoice = _march_invoice_after_first_autopay_day(api, clock, account)
    assert len(_charge_requests(api, invoice)) == 1
