"""Policy hot swap seen by a running server, and real-time timers fired by its own scheduler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.client import Client
from tests.helpers.paths import RULES_PATH
from tests.helpers.server import StartServer, TollgateServer, poll

pytestmark = pytest.mark.e2e

AT_2230 = "2026-10-15T22:30:00+09:00"
CHECK_CARD = {"method": "check_card", "card_type": "personal", "card_owner": "person"}


def _rules_with(edit: Callable[[dict[str, Any]], None]) -> str:
    data = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    edit(data)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _restricted_from_2200(data: dict[str, Any]) -> None:
    data["params"]["payment"]["restricted_hours"]["start"] = "22:00"


def _broken(data: dict[str, Any]) -> None:
    data["params"]["payment"]["restricted_hours"]["start"] = "25:61"
    data["params"]["signup"]["min_age"] = "nineteen"


def _business_account(op: Client, clock: str) -> str:
    return op.signup(clock=clock, member_type="business")


def test_put_rules_applies_to_the_next_event_and_broken_rules_keep_the_old_version(
        server: TollgateServer) -> None:
    op, editor = server.client("operator"), server.client("policy_editor")
    before = editor.ok("GET", "/rules")
    clock = op.clock(AT_2230)
    account = _business_account(op, clock)

    allowed = op.create("payment_method", {"account": account, "channel": "web"})["id"]
    op.fire(allowed, "select_method", CHECK_CARD)  # 22:30 is outside 23:00-09:00

    text = _rules_with(_restricted_from_2200)
    assert op.put("/rules", data=text, content_type="application/yaml").status_code == 403
    activated = editor.ok("PUT", "/rules", data=text, content_type="application/yaml")
    assert activated["version"] == before["version"] + 1
    assert activated["sha256"] != before["sha256"]
    assert server.client(None).get("/healthz").get_json()["rules_version"] == activated["version"]

    # the next event, on whichever gunicorn worker takes it, is judged by the new window
    for _ in range(4):
        refused = op.create("payment_method", {"account": account, "channel": "web"})["id"]
        denial = op.fire(refused, "select_method", CHECK_CARD, status=422)
        assert [r["rule"] for r in denial["reasons"]] == ["restricted_hours"]
        assert "22:00" in denial["reasons"][0]["message"]["en"]
        [row] = [r for r in op.history(refused) if r["event"] == "select_method"]
        assert (row["outcome"], row["rules_version"]) == ("denied", activated["version"])
    assert [r["rules_version"] for r in op.history(allowed)] == [before["version"]] * 2

    # broken rules: 422 with every problem located; the new version keeps serving
    broken = _rules_with(_broken)
    rejected = editor.put("/rules", data=broken, content_type="application/yaml")
    assert rejected.status_code == 422, rejected
    assert rejected.headers["content-type"] == "application/problem+json"
    errors = rejected.get_json()["errors"]
    paths = {e["path"] for e in errors}
    assert "$.params.payment.restricted_hours.start" in paths, errors
    assert any("min_age" in p for p in paths), errors
    assert all(e["line"] >= 1 and e["column"] >= 1 for e in errors)
    unparsable = editor.put("/rules", data="params: [unclosed", content_type="application/yaml")
    assert unparsable.status_code == 422, unparsable
    assert editor.ok("GET", "/rules")["version"] == activated["version"]
    assert editor.ok("GET", "/rules")["yaml"] == text
    again = op.create("payment_method", {"account": account, "channel": "web"})["id"]
    op.fire(again, "select_method", CHECK_CARD, status=422)
    assert op.history(again)[-1]["rules_version"] == activated["version"]


def _signups_expire_at_once(data: dict[str, Any]) -> None:
    data["timers"]["signup_abandoned"]["at"] = "add_hours(now, 0)"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_server_scheduler_fires_real_time_timers(
        backend: str, start_server: StartServer, tmp_path: Path) -> None:
    rules = tmp_path / "rules-expire-now.yaml"
    rules.write_text(_rules_with(_signups_expire_at_once), encoding="utf-8")
    server = start_server(backend, rules=rules)
    op = server.client("operator")

    created = op.create("signup")  # real time: no clock
    assert created["clock"] is None
    [timer] = created["timers"]
    assert (timer["name"], timer["event"]) == ("signup_abandoned", "expire")
    on_clock = op.create("signup", clock=op.clock("2026-10-15T10:00:00+09:00"))  # only moves when advanced

    expired = poll(lambda: (i := op.instance(created["id"]))["state"] == "expired" and i,
                   what="the abandoned signup expiring by the server's scheduler")
    assert expired["timers"] == []
    last = op.history(created["id"])[-1]
    assert (last["event"], last["from"], last["to"], last["outcome"]) == (
        "expire", "type_selection", "expired", "applied")
    assert last["actor"] == "timer"
    assert [r["event"] for r in op.history(created["id"])].count("expire") == 1
    assert op.instance(on_clock["id"])["state"] == "type_selection"
