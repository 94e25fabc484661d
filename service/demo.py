"""`tollgate demo`: one account through signup, payment, credit and two billing months.

Runs the real runtime on a throw-away SQLite database and a test clock, acting as the member and
as the payment gateway (October's charge request goes out through the relay's signed webhook to a
loopback gateway, which reports it back in one batch: `demo_gateway.py`), then prints the
timeline from the history (KST).
"""

from __future__ import annotations

import io
import sys
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import select

from tollgate.service.application.runtime import Runtime
from tollgate.service.bootstrap import start_runtime
from tollgate.service.demo_gateway import round_trip
from tollgate.service.settings import Settings
from tollgate.service.storage.tables import history, instances

KST = ZoneInfo("Asia/Seoul")


def kst(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=KST)


class Member:
    """Drives one account's instances the way the member, support and the gateway would."""

    def __init__(self, runtime: Runtime, clock: str) -> None:
        self.rt, self.clock = runtime, clock

    def at(self, when: datetime) -> None:
        self.rt.advance_clock(self.clock, when)

    def fire(self, instance: str, event: str, data: dict[str, Any] | None = None) -> int:
        return self.rt.fire(instance, event, data or {}, actor="demo").status


def script(rt: Runtime, out: TextIO | None = None) -> str:
    """Run the scenario (the gateway's round trip printed on `out`); return the account id."""
    clock = rt.create_clock(kst(2026, 9, 28, 21, 0), "demo")["id"]
    m = Member(rt, clock)
    account = rt.create_instance("signup", {}, instance_id="acct_demo", clock=clock, actor="demo")["id"]
    m.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    m.fire(account, "submit_email", {"email": "owner@example.co.kr"})
    code = rt.notifications(account)[-1]["payload"]["code"]
    m.fire(account, "verify_email", {"code": "000000" if code != "000000" else "111111"})
    m.fire(account, "verify_email", {"code": code})
    m.fire(account, "set_password", {"password": "short", "password_confirm": "short"})
    m.fire(account, "set_password", {"password": "Cloud#2026ok", "password_confirm": "Cloud#2026ok"})

    m.at(kst(2026, 9, 28, 23, 30))
    pm = rt.create_instance("payment_method", {"account": account, "channel": "web"},
                            instance_id="pm_demo", actor="demo")["id"]
    corporate = {"card_type": "corporate", "card_owner": "corporation"}
    m.fire(pm, "select_method", {"method": "check_card", **corporate})
    m.at(kst(2026, 9, 29, 9, 5))
    m.fire(pm, "select_method", {"method": "credit_card", **corporate})
    m.fire(pm, "verify_phone", {"owner_match": True})
    m.fire(pm, "register", {"agree_payment_info": True, "agree_recurring": True})

    credit = rt.create_instance("credit", {"account": account}, instance_id="cr_demo", actor="demo")["id"]
    answers = {"service_area": "web_service", "signup_path": "search"}
    m.fire(credit, "apply", {**answers, "marketing_consent": False})
    m.fire(credit, "apply", {**answers, "marketing_consent": True})

    october = rt.create_instance("invoice", {"account": account, "usage_month": "2026-10"},
                                 instance_id="inv_2026_10", actor="demo")["id"]
    m.at(kst(2026, 10, 31, 18, 0))
    m.fire(october, "add_usage", {"amount": 134_500})
    november = rt.create_instance("invoice", {"account": account, "usage_month": "2026-11"},
                                  instance_id="inv_2026_11", actor="demo")["id"]
    m.at(kst(2026, 11, 3, 13, 59))
    m.at(kst(2026, 11, 10, 0, 1))
    # the first autopay day wrote a charge request: out through the relay's signed webhook, back in a batch
    round_trip(rt, out or io.StringIO(), "pg-20261110-0001")
    m.at(kst(2026, 11, 30, 20, 0))
    m.fire(november, "add_usage", {"amount": 86_000})
    for day in range(10, 15):
        m.at(kst(2026, 12, day, 0, 5))
        m.fire(november, "charge_failed", {"reason": "card limit exceeded"})
    m.at(kst(2027, 1, 1, 0, 30))
    return account


def timeline(rt: Runtime, account: str) -> list[dict[str, Any]]:
    with rt.db.engine.connect() as conn:
        ids = [account, *conn.execute(select(instances.c.id).where(instances.c.account == account)).scalars()]
        rows = conn.execute(select(history, instances.c.workflow)
                            .join(instances, instances.c.id == history.c.instance)
                            .where(history.c.instance.in_(ids)).order_by(history.c.id))
        return [dict(r._mapping) for r in rows]


def render(rows: list[dict[str, Any]], out: TextIO) -> None:
    out.write(f"{'time (KST)':<17} {'workflow':<15} {'event':<26} transition\n")
    out.write("-" * 96 + "\n")
    for row in rows:
        when = row["at"].astimezone(KST).strftime("%Y-%m-%d %H:%M")
        move = f"{row['from_state'] or '∅'} → {row['to_state']}"
        mark = "" if row["outcome"] == "applied" else "  ✗ refused"
        actor = {"timer": "  (timer)", "gateway": "  (gateway, POST /events batch)"}.get(row["actor"], "")
        out.write(f"{when:<17} {row['workflow']:<15} {row['event']:<26} {move}{mark}{actor}\n")
        for reason in row["reasons"]:
            out.write(f"{'':<17}   ↳ {reason['rule']}: {reason['message']['ko']}\n")
            out.write(f"{'':<17}     {reason['message']['en']}\n")
        for note in row["notes"]:
            out.write(f"{'':<17}   • {note['rule']}: {note['message']['en']}\n")


def run(out: TextIO = sys.stdout, rules: str = "rules.yaml", database_url: str = "sqlite://") -> int:
    runtime, _ = start_runtime(Settings(database_url=database_url, rules=rules))
    account = script(runtime, out)
    render(timeline(runtime, account), out)
    states = {i["id"]: i["state"] for i in runtime.list_instances(account=account, limit=50)["items"]}
    out.write("\ninvoices:\n")
    for item in runtime.list_instances(workflow="invoice", account=account, limit=50)["items"]:
        c = item["context"]
        credit = sum(a["amount"] for a in c.get("credit_applied", []))
        out.write(f"  {c['usage_month']}: usage {c.get('usage', 0):,} KRW, credit -{credit:,}, "
                  f"due {c.get('amount_due', 0):,} ({c.get('payer', '-')}) → {item['state']}\n")
    out.write("\nfinal states: " + ", ".join(f"{k}={v}" for k, v in states.items()) + "\n")
    out.write(f"outbox: {len(runtime.notifications())} notifications "
              f"({', '.join(sorted({n['template'] for n in runtime.notifications()}))})\n")
    return 0
