"""`tollgate rules impact CANDIDATE`: the report a policy editor reads, with diff's exit codes (0 no
change, 1 changes, 2 trouble), over a history recorded through the API on each database; and
migration 0009 on a database that holds rows written before it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import inspect, text

from tests.helpers.app import dispose_app, make_app
from tests.helpers.client import Client
from tests.helpers.impact_history import History, build_history, candidate
from tests.helpers.migrations import run_migration
from tests.helpers.paths import RULES_PATH
from tollgate.service.application.impact import ARMED_BEFORE, NO_INPUTS, Impact
from tollgate.service.application.policy_files import load_policy
from tollgate.service.application.rules_history import RulesHistory
from tollgate.service.cli import main
from tollgate.service.storage.db import Database

RULES = RULES_PATH.read_text(encoding="utf-8")


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    built = make_app(database_url)
    yield built
    dispose_app(built)


@pytest.fixture
def recorded(app: Flask) -> History:
    return build_history(Client.wsgi(app.test_client()))


def _write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return str(path)


def test_the_active_rules_change_nothing_and_exit_0(
        database_url: str, recorded: History, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "impact", str(RULES_PATH), "--database", database_url, "--since", "all"]) == 0
    out = capsys.readouterr().out
    assert "every recorded verdict reproduced" in out
    assert "under the candidate: no verdict would change" in out
    assert "under the candidate: no due time would move, appear or disappear" in out


def test_changes_are_printed_by_rule_and_timer_and_exit_1(
        database_url: str, recorded: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "candidate.yaml", candidate(RULES, start="22:00", end="08:00", grace="23:00"))
    assert main(["rules", "impact", path, "--database", database_url, "--since", "all"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "  under the candidate: 2 verdicts would change" in out
    assert f"    payment_method.select_method: 1 applied → denied (e.g. {recorded.evening})" in out
    assert f"    payment_method.select_method: 1 denied → applied (e.g. {recorded.morning})" in out
    assert (f"  grace_deadline 2026-12-01 01:00 → 2026-12-01 02:00: 1 moves by +1 h "
            f"(e.g. {recorded.invoice}) [on_new_version: keep — armed timers keep their due time; "
            "only timers armed after activation]") in out


def test_json_is_the_api_report(database_url: str, recorded: History, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "candidate.yaml", candidate(RULES, min_age=20))
    assert main(["rules", "impact", path, "--database", database_url, "--since", "all", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(e["rule"], e["change"], e["examples"]) for e in report["looking_back"]["by_rule"]] == [
        ("min_age", "applied → denied", [recorded.adult])]


def test_trouble_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "bad.yaml", RULES.replace("    min_age: 19", "    min_age: nineteen", 1))
    assert main(["rules", "impact", bad, "--database", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert main(["rules", "impact", str(RULES_PATH), "--database", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "There is no SQLite database file" in capsys.readouterr().err
    assert main(["rules", "impact", str(RULES_PATH), "--since", "soon",
                 "--database", f"sqlite:///{tmp_path / 'none.db'}"]) == 2


# ── migration 0009 ────────────────────────────────────────────────────────────────────────────






def test_0009_leaves_older_rows_unreplayable_and_downgrades(empty_db: Database) -> None:
    run_migration(empty_db, "upgrade", "0008")
    now = datetime(2026, 11, 26, tzinfo=UTC)
    policy = load_policy(RULES, "rules.yaml")
    with empty_db.engine.begin() as conn:
        conn.execute(text("INSERT INTO rules_versions (sha256, yaml, source, activated_at, activated_by) "
                          "VALUES (:s, :y, 'test', :t, 'test')"), {"s": policy.sha256, "y": RULES, "t": now})
        conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                          "history_seq, created_at, updated_at) VALUES ('acct_old', 'signup', 'login_info', "
                          "'{}', '{}', 2, 2, :t, :t)"), {"t": now})
        for seq, event, source, target in ((1, "create", None, "type_selection"),
                                           (2, "select_type", "type_selection", "login_info")):
            conn.execute(text("INSERT INTO history (instance, seq, event, from_state, to_state, outcome, "
                              "reasons, notes, data, at, rules_version, actor) VALUES ('acct_old', :q, :e, "
                              ":f, :o, 'applied', '[]', '[]', '{}', :t, 1, 'test')"),
                         {"q": seq, "e": event, "f": source, "o": target, "t": now})
        conn.execute(text("INSERT INTO timers (instance, name, event, due_at) VALUES ('acct_old', "
                          "'signup_abandoned', 'expire', :t)"), {"t": now})
    run_migration(empty_db, "upgrade", "0009")
    columns = {c["name"] for c in inspect(empty_db.engine).get_columns("timers")}
    assert {"armed_at", "armed_seq"} <= columns
    assert "inputs" in {c["name"] for c in inspect(empty_db.engine).get_columns("history")}
    report = Impact(empty_db, RulesHistory(empty_db)).report(policy, None).as_dict()
    assert report["looking_back"]["not_replayable"] == [
        {"why": NO_INPUTS, "count": 2, "examples": ["acct_old"]}]
    assert report["looking_back"]["replayed"] == 0 and report["changed"] is False
    assert report["looking_ahead"]["not_replannable"] == [
        {"why": ARMED_BEFORE, "count": 1, "examples": ["acct_old"]}]
    run_migration(empty_db, "downgrade", "0008")
    assert "inputs" not in {c["name"] for c in inspect(empty_db.engine).get_columns("history")}
    assert not {"armed_at", "armed_seq"} & {c["name"] for c in inspect(empty_db.engine).get_columns("timers")}
    with empty_db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM history")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM timers")).scalar() == 1


def test_the_demo_history_is_reproduced_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's account (signup with a wrong code and a short password, a payment method refused at
    night, the credit, two billing months to suspension): every attempt replays to its verdict."""
    import io

    from tollgate.service.demo import run

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert run(io.StringIO(), rules=str(RULES_PATH), database_url=url) == 0
    assert main(["rules", "impact", str(RULES_PATH), "--database", url, "--since", "all", "--json"]) == 0
    back = json.loads(capsys.readouterr().out)["looking_back"]
    assert back["attempts"] >= 30
    assert back["self_check"]["reproduced"] == back["replayed"] == back["attempts"]
    assert back["not_replayable"] == [] and back["by_event"] == []
