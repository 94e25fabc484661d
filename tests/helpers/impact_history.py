"""A small, realistic history for the impact report's tests, driven through the HTTP API on a test
clock: signups on both sides of the minimum age, payment methods on both sides of the restricted
hours, and an unpaid invoice left in its grace period (a `grace_deadline` timer pending).

Times are KST. The bundled policy judges it; `candidate(rules_text, ...)` makes the edits the
tests check the report against.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant


@dataclass(frozen=True)
class History:
    clock: str
    adult: str  # an individual who turned 19 on the day of signing up: allowed at 19, not at 20
    minor: str  # 18 on that day: refused at 19, allowed at 18
    evening: str  # a check card chosen at 22:30: allowed from 23:00, refused from 22:00
    morning: str  # a check card tried at 08:30: refused until 09:00, allowed until 08:00
    invoice: str  # October's invoice, unpaid, in grace: suspension due 2026-12-01 01:00 KST


def advance(api: Client, clock: str, *when: int) -> None:
    api.ok("POST", f"/clocks/{clock}/advance", json={"to": kst_instant(*when).isoformat()})


def build_history(api: Client) -> History:
    clock = api.clock(kst_instant(2026, 9, 28, 10))
    business = api.signup(clock=clock, member_type="business", email="biz@example.com")
    adult = str(api.create("signup", clock=clock)["id"])
    api.fire(adult, "select_type", {"country": "KR", "member_type": "individual", "birth_date": "2007-09-28"})
    minor = str(api.create("signup", clock=clock)["id"])
    api.fire(minor, "select_type", {"country": "KR", "member_type": "individual", "birth_date": "2008-09-28"},
             status=422)
    corporate = {"method": "check_card", "card_type": "corporate", "card_owner": "corporation"}
    advance(api, clock, 2026, 9, 28, 22, 30)
    evening = str(api.create("payment_method", {"account": business, "channel": "web"})["id"])
    api.fire(evening, "select_method", corporate)
    advance(api, clock, 2026, 9, 29, 8, 30)
    morning = str(api.create("payment_method", {"account": business, "channel": "web"})["id"])
    api.fire(morning, "select_method", corporate, status=422)
    invoice = str(api.create("invoice", {"account": business, "usage_month": "2026-10"})["id"])
    advance(api, clock, 2026, 10, 31, 18)
    api.fire(invoice, "add_usage", {"amount": 50_000})
    advance(api, clock, 2026, 11, 20, 12)
    assert api.instance(invoice)["state"] == "grace"
    return History(clock, adult, minor, evening, morning, invoice)


def candidate(rules_text: str, *, start: str = "23:00", end: str = "09:00", min_age: int = 19,
              grace: str = "22:00") -> str:
    """The bundled rules with restricted hours, minimum age and grace deadline replaced."""
    edits = [('      start: "23:00"', f'      start: "{start}"'),
             ('      end: "09:00"', f'      end: "{end}"'),
             ("    min_age: 19", f"    min_age: {min_age}"),
             ('    grace_deadline: "22:00"', f'    grace_deadline: "{grace}"')]
    text = rules_text
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    return text
