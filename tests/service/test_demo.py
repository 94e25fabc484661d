"""`tollgate demo`: October's invoice is paid through the gateway's round trip — the charge
request out through the relay's signed webhook to a loopback gateway that verifies it, the outcome
back in one batch judged as POST /events judges it (role gateway)."""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy import select

from tests.helpers.paths import RULES_PATH
from tollgate.service.demo import run
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import history, notifications


def test_the_demo_pays_october_through_the_gateway_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = io.StringIO()
    assert run(out, rules=str(RULES_PATH), database_url=url) == 0
    text = out.getvalue()
    assert "the relay posted 1 signed charge request(s)" in text
    assert "the gateway verified 1, refused 0" in text
    assert "POST /events (batch of 1): inv_2026_10 charge_succeeded → 200 paid" in text
    assert "2026-10: usage 134,500 KRW, credit -100,000, due 34,500 (autopay) → paid" in text
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            [(actor, outcome)] = conn.execute(select(history.c.actor, history.c.outcome).where(
                history.c.instance == "inv_2026_10", history.c.event == "charge_succeeded")).all()
            n = notifications.c
            states = conn.execute(select(n.delivery_state).where(
                n.template == "charge_request", n.instance == "inv_2026_10")).scalars()
            assert list(states) == ["delivered"]
    finally:
        db.dispose()
    assert (actor, outcome) == ("gateway", "applied")
