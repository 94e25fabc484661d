"""`POST /events`: a batch of events (a gateway's settlement file), each answered exactly as
`POST /instances/{id}/events` would answer it alone, on both backends.

Mixed batches (applied, denied, refused, unknown instance, replayed key, forbidden for the role),
duplicates inside one batch, malformed bodies named by JSON path, per-event atomicity (a refused
event takes back nothing of the others) and a batch racing single calls on the same instance.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from tests.helpers.client import Client
from tollgate.service.application import events as events_module

DEPOSITED_AT = "2025-03-05T11:00:00+09:00"


def _issued_invoice(api: Client, usage: int = 5000) -> tuple[str, int]:
    """An issued invoice (real time) of a new account with a card; (id, amount due)."""
    account = api.signup()
    api.register_card(account)
    invoice = str(api.create("invoice", {"account": account, "usage_month": "2025-02"})["id"])
    api.fire(invoice, "add_usage", {"amount": usage})
    issued = api.fire(invoice, "issue", role="admin")
    assert issued["state"] == "issued"
    return invoice, int(issued["context"]["amount_due"])


def _batch(api: Client, events: list[dict[str, Any]], role: str = "gateway") -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = api.ok("POST", "/events", json={"events": events}, role=role)["results"]
    assert [r["index"] for r in results] == list(range(len(events)))
    return results


def _deposit(amount: int) -> dict[str, Any]:
    return {"amount": amount, "deposited_at": DEPOSITED_AT}


def _same_but_ids(batch_body: dict[str, Any], single_body: dict[str, Any], ids: dict[str, str]) -> None:
    """The two bodies are equal once the twin instances' ids (and the times they were written) match."""
    if "context" in batch_body and "context" in single_body:
        ids = {**ids, batch_body["context"]["account"]: single_body["context"]["account"]}

    def normal(body: dict[str, Any]) -> str:
        text = repr({k: v for k, v in body.items() if k not in ("created_at", "updated_at")})
        for mine, twin in ids.items():
            text = text.replace(mine, twin)
        return text

    assert normal(batch_body) == normal(single_body)


def test_a_mixed_gateway_batch_answers_each_event_as_the_single_call_would(api: Client) -> None:
    paid, due = _issued_invoice(api)
    twin, twin_due = _issued_invoice(api)
    not_autopay, _ = _issued_invoice(api)
    replayed, _ = _issued_invoice(api)
    first = api.post(f"/instances/{replayed}/events", json={"event": "deposit", "data": _deposit(100)},
                     headers={"Idempotency-Key": "settle-2025-03-05-7"}, role="gateway")
    assert first.status_code == 200
    before = api.history(not_autopay)

    results = _batch(api, [
        {"instance": paid, "event": "deposit", "data": _deposit(due), "idempotency_key": "settle-1"},
        {"instance": not_autopay, "event": "charge_succeeded", "data": {"payment_ref": "pg-1"}},
        {"instance": "inv_nosuch", "event": "deposit", "data": _deposit(1)},
        {"instance": paid, "event": "pay_now", "data": {"amount": due}},
        {"instance": replayed, "event": "deposit", "data": _deposit(100),
         "idempotency_key": "settle-2025-03-05-7"},
    ])

    assert [r["status"] for r in results] == [200, 409, 404, 403, 200]
    assert [r["replayed"] for r in results] == [False, False, False, False, True]
    assert results[0]["body"]["state"] == "paid" and results[0]["instance"] == paid
    single = api.post(f"/instances/{twin}/events", json={"event": "deposit", "data": _deposit(twin_due)},
                      role="gateway")
    assert twin_due == due
    _same_but_ids(results[0]["body"], single.get_json(), {paid: twin})
    assert results[1]["body"]["type"].endswith("/invalid_transition") or results[1]["body"]["status"] == 409
    assert results[2]["body"]["detail"] == "There is no instance 'inv_nosuch'."
    assert "gateway" in results[3]["body"]["detail"] and "'pay_now'" in results[3]["body"]["detail"]
    assert results[4]["body"] == first.get_json(), "a replayed key answers the first response"
    # committed: the paid invoice is paid when read again, the refused ones record nothing
    assert api.instance(paid)["state"] == "paid"
    assert [(h["event"], h["actor"]) for h in api.history(paid)][-1] == ("deposit", "gateway")
    assert api.history(not_autopay) == before
    assert len([h for h in api.history(replayed) if h["event"] == "deposit"]) == 1


def test_denials_stale_versions_and_bad_data_answer_as_the_single_call(api: Client) -> None:
    invoice, due = _issued_invoice(api)
    twin, _ = _issued_invoice(api)
    version = api.instance(invoice)["version"]
    events = [
        {"instance": invoice, "event": "pay_now", "data": {"amount": due - 1}},
        {"instance": invoice, "event": "deposit", "data": _deposit(10), "if_match": version - 1},
        {"instance": invoice, "event": "deposit", "data": {"amount": 10}},
    ]
    results = _batch(api, events, role="operator")
    assert [r["status"] for r in results] == [422, 412, 400]
    # the same three calls one by one on the twin answer the same
    singles = [api.post(f"/instances/{twin}/events", json={"event": e["event"], "data": e["data"]},
                        headers={"If-Match": f'"{version - 1}"'} if "if_match" in e else {},
                        role="operator") for e in events]
    for result, single in zip(results, singles, strict=True):
        assert result["status"] == single.status_code
        _same_but_ids(result["body"], single.get_json(), {invoice: twin})
    reasons = results[0]["body"]["reasons"]
    assert [r["rule"] for r in reasons] == ["pay_now_full_amount"]
    assert api.history(invoice)[-1]["outcome"] == "denied", "a denial is kept in the history"


def test_duplicates_in_one_batch_are_judged_in_order(api: Client) -> None:
    invoice, due = _issued_invoice(api)
    half = due // 2
    results = _batch(api, [
        {"instance": invoice, "event": "deposit", "data": _deposit(half), "idempotency_key": "k-1"},
        {"instance": invoice, "event": "deposit", "data": _deposit(half), "idempotency_key": "k-1"},
        {"instance": invoice, "event": "deposit", "data": _deposit(due - half), "idempotency_key": "k-2"},
        {"instance": invoice, "event": "deposit", "data": _deposit(1), "idempotency_key": "k-2"},
    ])
    assert [r["status"] for r in results] == [200, 200, 200, 409]
    assert [r["replayed"] for r in results] == [False, True, False, False]
    assert results[1]["body"] == results[0]["body"]
    assert results[0]["body"]["state"] == "issued" and results[2]["body"]["state"] == "paid"
    assert results[2]["body"]["version"] == results[0]["body"]["version"] + 1
    assert "different request" in results[3]["body"]["detail"]
    assert len([h for h in api.history(invoice) if h["event"] == "deposit"]) == 2


def test_a_key_used_by_a_batch_replays_on_the_single_route(api: Client) -> None:
    invoice, _ = _issued_invoice(api)
    results = _batch(api, [{"instance": invoice, "event": "deposit", "data": _deposit(7),
                            "idempotency_key": "one-key"}])
    again = api.post(f"/instances/{invoice}/events", json={"event": "deposit", "data": _deposit(7)},
                     headers={"Idempotency-Key": "one-key"}, role="gateway")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == results[0]["body"]


def test_a_malformed_batch_is_refused_whole_naming_the_path(api: Client) -> None:
    invoice, _ = _issued_invoice(api)
    good = {"instance": invoice, "event": "deposit", "data": _deposit(1)}
    before = api.history(invoice)
    response = api.post("/events", json={"events": [good, good, good, {**good, "event": 5}]}, role="gateway")
    assert response.status_code == 400
    assert "$.events[3].event" in response.get_json()["detail"]
    too_many = api.post("/events", json={"events": [good] * 1001}, role="gateway")
    assert too_many.status_code == 400 and "$.events" in too_many.get_json()["detail"]
    for body in ({"events": []}, {"events": [{"event": "deposit"}]}, {"event": "deposit"}):
        assert api.post("/events", json=body, role="gateway").status_code == 400
    assert api.history(invoice) == before, "nothing of a refused batch is applied"


def test_the_batch_needs_the_events_permission(api: Client) -> None:
    assert api.post("/events", json={"events": []}, role="viewer").status_code == 403
    assert api.post("/events", json={"events": []}, role=None).status_code == 401


def test_chunks_commit_on_their_own_and_every_answer_is_durable(api: Client, monkeypatch: Any) -> None:
    """Several chunks per call: every event of every chunk answered and stored, in order."""
    monkeypatch.setattr(events_module, "BATCH_CHUNK", 2)
    invoices = [_issued_invoice(api)[0] for _ in range(3)]
    events = [{"instance": i, "event": "deposit", "data": _deposit(n + 1), "idempotency_key": f"{i}-{n}"}
              for n in range(2) for i in invoices]
    results = _batch(api, [*events, {"instance": "inv_gone", "event": "deposit", "data": _deposit(1)}])
    assert [r["status"] for r in results] == [200] * 6 + [404]
    for invoice in invoices:
        deposits = [h["data"]["amount"] for h in api.history(invoice) if h["event"] == "deposit"]
        assert deposits == [1, 2]
    again = _batch(api, events)
    assert all(r["replayed"] for r in again)
    assert [r["body"] for r in again] == [r["body"] for r in results[:6]]


def test_a_batch_and_single_calls_on_the_same_instance_lose_nothing(app: Flask, api: Client) -> None:
    invoice, _ = _issued_invoice(api, usage=10_000_000)
    rounds, singles = 5, 10
    batch_results: list[list[dict[str, Any]]] = []
    single_statuses: list[int] = []

    def batches() -> None:
        mine = Client.wsgi(app.test_client())
        for r in range(rounds):
            events = [{"instance": invoice, "event": "deposit", "data": _deposit(1),
                       "idempotency_key": f"b-{r}-{n}"} for n in range(10)]
            batch_results.append(_batch(mine, events))

    def single() -> None:
        mine = Client.wsgi(app.test_client())
        for n in range(singles):
            response = mine.post(f"/instances/{invoice}/events",
                                 json={"event": "deposit", "data": _deposit(1)},
                                 headers={"Idempotency-Key": f"s-{n}"}, role="gateway")
            single_statuses.append(response.status_code)

    threads = [threading.Thread(target=batches), threading.Thread(target=single)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert single_statuses == [200] * singles
    assert [r["status"] for results in batch_results for r in results] == [200] * rounds * 10
    deposits = [h for h in api.history(invoice) if h["event"] == "deposit"]
    assert len(deposits) == rounds * 10 + singles
    versions = sorted(r["body"]["version"] for results in batch_results for r in results)
    assert len(set(versions)) == len(versions), "two events answered the same version"
    assert api.instance(invoice)["context"]["paid_amount"] == rounds * 10 + singles
