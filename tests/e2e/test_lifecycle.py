"""One account's whole life over HTTP against a real `tollgate serve`, and auth at the door."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.client import Client
from tests.helpers.server import TollgateServer

pytestmark = pytest.mark.e2e

OCTOBER_15_2300 = "2026-10-15T23:00:00+09:00"  # inside restricted_hours (23:00-09:00 KST)
BUSINESS_CARD = {"card_type": "personal", "card_owner": "person"}
INVOICE_TIMERS = ["issue", *["start_autopay"] * 5, "mark_overdue", "begin_grace", "suspend"]


def test_signup_payment_credit_and_an_unpaid_invoice_through_suspension(server: TollgateServer) -> None:
    op = server.client("operator")
    clock = op.clock(OCTOBER_15_2300)

    # signup: the email code comes from the outbox, as a member would read it from the mail
    account = op.create("signup", clock=clock)["id"]
    op.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    op.fire(account, "submit_email", {"email": f"{account}@example.com"})
    [mail] = op.notifications(account)
    assert (mail["template"], mail["channel"]) == ("email_verification", "email")
    assert mail["recipient"] == f"{account}@example.com"
    op.fire(account, "verify_email", {"code": mail["payload"]["code"]})
    op.fire(account, "set_password", {"password": "Cloud#2026ok", "password_confirm": "Cloud#2026ok"})
    assert op.instance(account)["state"] == "payment_method_required"

    # restricted_hours: a check card is refused at 23:00, a credit card goes through
    refused = op.create("payment_method", {"account": account, "channel": "web"})["id"]
    denial = op.fire(refused, "select_method", {"method": "check_card", **BUSINESS_CARD}, status=422)
    assert [r["rule"] for r in denial["reasons"]] == ["restricted_hours"]
    assert op.instance(refused)["state"] == "method_selection"
    pm = op.register_card(account)
    assert op.instance(pm)["state"] == "active"
    assert op.instance(account)["state"] == "active"

    # the discount credit
    credit = op.create("credit", {"account": account})["id"]
    granted = op.fire(credit, "apply", {"service_area": "web_service", "signup_path": "search",
                                        "marketing_consent": True})
    assert (granted["state"], granted["context"]["balance"]) == ("active", 100_000)

    # October's invoice: usage above the credit, never paid
    invoice = op.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    op.fire(invoice, "add_usage", {"amount": 150_000})
    advanced = op.ok("POST", f"/clocks/{clock}/advance", json={"to": "2026-12-01T06:00:00+09:00"})

    fired = advanced["fired"]
    assert [f["at"] for f in fired] == sorted(f["at"] for f in fired), "timers fired out of time order"
    assert [(f["instance"], f["event"]) for f in fired] == [(invoice, e) for e in INVOICE_TIMERS]
    assert [f["at"][:10] for f in fired] == [  # KST midnights are 15:00 UTC the day before
        "2026-11-02", "2026-11-09", "2026-11-10", "2026-11-11", "2026-11-12", "2026-11-13",
        "2026-11-14", "2026-11-14", "2026-11-30"]
    assert op.ok("GET", f"/clocks/{clock}")["now"] == "2026-11-30T21:00:00+00:00"

    final = op.instance(invoice)
    assert final["state"] == "suspended"
    assert final["context"]["amount_due"] == 50_000
    assert final["context"]["credit_applied"] == [{"credit": credit, "amount": 100_000}]
    assert final["timers"] == []
    assert op.instance(credit)["state"] == "exhausted"
    assert [(n["template"], n["channel"]) for n in op.notifications(invoice)] == [
        ("invoice_issued", "email"), ("invoice_issued", "sms"), *[("charge_request", "gateway")] * 5,
        ("invoice_overdue", "email"), ("service_suspended", "email")]

    # the history: every attempt, judged under rules version 1, with who did it
    rows = op.history(invoice)
    assert [r["event"] for r in rows] == ["create", "add_usage", *INVOICE_TIMERS]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert {r["rules_version"] for r in rows} == {1}
    assert all(r["outcome"] == "applied" for r in rows)
    assert [r["actor"] for r in rows[:2]] == ["operator", "operator"]
    # Timer-fired rows name the timer as actor, whoever advanced the clock.
    assert all(r["actor"] == "timer" for r in rows[2:])
    [denied] = [r for r in op.history(refused) if r["outcome"] == "denied"]
    assert (denied["event"], denied["actor"], denied["rules_version"]) == ("select_method", "operator", 1)
    assert [r["rule"] for r in denied["reasons"]] == ["restricted_hours"]
    activation = op.history(account)[-1]
    assert (activation["event"], activation["actor"]) == ("payment_method_registered", f"payment_method:{pm}")


def _routes(client: Client) -> dict[str, tuple[str, str, Any]]:
    """A representative route per permission (method, path, JSON body)."""
    account = client.create("signup")["id"]
    return {
        "read": ("GET", f"/instances/{account}", None),
        "instances": ("POST", "/workflows/signup/instances", {"context": {}}),
        "events": ("POST", f"/instances/{account}/events",
                   {"event": "select_type", "data": {"country": "KR", "member_type": "business"}}),
        "clocks": ("POST", "/clocks", {"now": OCTOBER_15_2300}),
        "rules": ("POST", "/rules/validate", None),
    }


GRANTS = {
    "viewer": {"read"},
    "operator": {"read", "instances", "events", "clocks"},
    "policy_editor": {"read", "rules"},
    "admin": {"read", "instances", "events", "clocks", "rules"},
}


def test_no_token_is_401_a_wrong_role_is_403_and_healthz_is_open(server: TollgateServer) -> None:
    admin = server.client("admin")
    routes = _routes(admin)
    anonymous = server.client(None)
    health = anonymous.get("/healthz")
    assert health.status_code == 200 and health.get_json()["rules_version"] >= 1
    for method, path, body in routes.values():
        missing = anonymous.call(method, path, json=body)
        assert missing.status_code == 401, (method, path, missing)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.headers["content-type"] == "application/problem+json"
        forged = anonymous.call(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert forged.status_code == 401, (method, path, forged)
    for role, granted in GRANTS.items():
        client = server.client(role)
        for permission, (method, path, body) in routes.items():
            if permission == "rules":
                response = client.call(method, path, data="timezone: [", content_type="application/yaml")
            else:
                response = client.call(method, path, json=body)
            if permission in granted:
                assert response.status_code not in (401, 403), (role, method, path, response)
            else:
                assert response.status_code == 403, (role, method, path, response)
                assert response.get_json()["status"] == 403


def test_a_revoked_credit_restricts_the_account_in_the_same_transaction(server: TollgateServer) -> None:
    op = server.client("operator")
    account = op.signup(clock=op.clock("2026-10-15T10:00:00+09:00"), member_type="business")
    op.register_card(account)
    credit = op.create("credit", {"account": account})["id"]
    op.fire(credit, "apply", {"service_area": "ai_ml", "signup_path": "blog_sns", "marketing_consent": True})
    account_version = op.instance(account)["version"]

    refused = op.fire(credit, "revoke", {"reason": "late_payment"}, status=422)
    assert [r["rule"] for r in refused["reasons"]] == ["revocation"]
    assert (op.instance(account)["state"], op.instance(account)["version"]) == ("active", account_version)

    assert op.fire(credit, "revoke", {"reason": "cryptocurrency_mining"})["state"] == "revoked"
    restricted = op.instance(account)
    assert (restricted["state"], restricted["version"]) == ("restricted", account_version + 1)
    last = op.history(account)[-1]
    assert (last["event"], last["outcome"], last["actor"]) == ("restrict", "applied", f"credit:{credit}")
