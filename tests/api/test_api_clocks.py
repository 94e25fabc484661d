"""Test clocks over HTTP (advancing fires due timers in time order) and the notification outbox."""

from __future__ import annotations

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tests.helpers.schemas import assert_conforms


def test_create_a_clock_201_with_location_then_read_it(api: Client) -> None:
    response = api.post("/clocks", json={"now": "2025-03-05T12:00:00+09:00", "id": "clk_spring"},
                        role="operator")
    assert response.status_code == 201
    assert response.headers["Location"] == "/clocks/clk_spring"
    body = response.get_json()
    assert_conforms(body, "clock")
    assert body == {"id": "clk_spring", "now": "2025-03-05T03:00:00+00:00", "fired": []}
    read = api.get("/clocks/clk_spring", role="viewer")
    assert read.status_code == 200 and read.get_json() == body


def test_clock_errors(api: Client) -> None:
    assert api.get("/clocks/clk_nope").status_code == 404
    naive = api.post("/clocks", json={"now": "2025-03-05T12:00:00"})
    assert naive.status_code == 400
    assert naive.get_json()["errors"][0]["path"] == "$.now"
    assert "offset" in naive.get_json()["errors"][0]["message"]
    api.post("/clocks", json={"now": "2025-03-05T12:00:00Z", "id": "clk_twice"})
    assert api.post("/clocks", json={"now": "2025-03-05T12:00:00Z", "id": "clk_twice"}).status_code == 409
    assert api.post("/clocks/clk_nope/advance", json={"to": "2026-01-01T00:00:00Z"}).status_code == 404
    assert api.post("/clocks/clk_twice/advance", json={"to": "tomorrow"}).status_code == 400


def test_a_clock_cannot_go_backwards(api: Client, clock: str) -> None:
    response = api.post(f"/clocks/{clock}/advance", json={"to": "2025-03-01T00:00:00+09:00"})
    assert response.status_code == 422
    assert response.get_json()["type"].endswith("/clock_error")
    assert api.get(f"/clocks/{clock}").get_json()["now"] == "2025-03-05T03:00:00+00:00"


def test_advancing_fires_every_due_timer_in_time_order_across_instances(api: Client, clock: str) -> None:
    account = api.signup(clock=clock)
    api.register_card(account)
    invoice = api.create("invoice", {"account": account, "usage_month": "2025-03"})["id"]
    api.fire(invoice, "add_usage", {"amount": 50_000})
    abandoned = api.create("signup", clock=clock)["id"]

    response = api.post(f"/clocks/{clock}/advance", json={"to": "2025-04-11T12:00:00+09:00"},
                        role="operator")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "clock")
    fired = [(f["instance"], f["event"], f["from"], f["to"]) for f in body["fired"]]
    assert fired == [
        (abandoned, "expire", "type_selection", "expired"),
        (invoice, "issue", "open", "issued"),
        (invoice, "start_autopay", "issued", "autopay"),
        (invoice, "start_autopay", "autopay", "autopay"),
    ]
    moments = [f["at"] for f in body["fired"]]
    assert moments == sorted(moments)
    assert moments[1] == "2025-04-02T15:00:00+00:00"  # the issue day, 3 April 00:00 KST
    assert body["now"] == "2025-04-11T03:00:00+00:00"
    assert api.get(f"/instances/{invoice}").get_json()["state"] == "autopay"
    history = api.get(f"/instances/{invoice}/history").get_json()["items"]
    assert [h["actor"] for h in history[-3:]] == ["timer"] * 3  # timers fire as themselves


def test_an_instance_runs_on_its_accounts_clock_and_refuses_another(api: Client, clock: str) -> None:
    account = api.create("signup", clock=clock)["id"]
    inherited = api.create("payment_method", {"account": account, "channel": "web"})
    assert inherited["clock"] == clock
    other = api.clock(kst_instant(2025, 6, 1))
    response = api.post("/workflows/payment_method/instances",
                        json={"context": {"account": account, "channel": "web"}, "clock": other})
    assert response.status_code == 422
    assert clock in response.get_json()["detail"]


def test_notifications_list_the_outbox_of_an_instance(api: Client, clock: str) -> None:
    account = api.create("signup", clock=clock)["id"]
    other = api.create("signup", clock=clock)["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    api.fire(account, "submit_email", {"email": "Member@Example.com"})
    response = api.get(f"/notifications?instance={account}", role="viewer")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "notification_list")
    [sent] = body["items"]
    assert (sent["template"], sent["channel"], sent["instance"]) == ("email_verification", "email", account)
    assert sent["recipient"].lower() == "member@example.com"
    assert sent["payload"]["code"] == "[redacted]"  # read-only roles never read codes: tests/test_secrets.py
    assert sent["created_at"] == "2025-03-05T03:00:00+00:00"
    assert api.get(f"/notifications?instance={other}").get_json() == {"items": [], "next_cursor": None}
    assert len(api.get("/notifications").get_json()["items"]) == 1


def test_notifications_for_an_unknown_instance_is_400(api: Client) -> None:
    response = api.get("/notifications?instance=acct_nobody")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
