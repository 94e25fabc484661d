"""Coverage of a policy by scenarios (`service/application/scenario_coverage.py`) and
`tollgate rules test --coverage | --fail-under N | --coverage-json FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import load_policy_file
from tollgate.service.application.scenario_coverage import measure, untested_transitions
from tollgate.service.application.scenarios import Seen, load_scenarios, run_files
from tollgate.service.cli import main
from tollgate.workflows.policy import Policy

HEADER = "# yaml-language-server: $schema=../../schemas/scenario.schema.json\n"
# A non-partner registers a card at 22:59 (restricted_hours holds), a check card is refused at 23:00.
SCENARIO = HEADER + """\
scenarios:
  - name: a check card at 22:59 and another at 23:00
    clock: "2026-09-28T22:59:00+09:00"
    steps:
      - account: {as: corp, member_type: business, with: no_payment_method}
      - create: {workflow: payment_method, as: card, context: {account: corp, channel: web}}
      - fire: {instance: card, event: select_method,
               data: {method: check_card, card_type: corporate, card_owner: corporation}}
        expect: {applied: true}
      - create: {workflow: payment_method, as: late, context: {account: corp, channel: web}}
      - advance: {by: 1m}
      - fire: {instance: late, event: select_method,
               data: {method: check_card, card_type: corporate, card_owner: corporation}}
        expect: {denied: [restricted_hours]}
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_file(str(RULES_PATH))


def rule(coverage, rule_id: str, event: str):  # type: ignore[no-untyped-def]
    return next(r for r in coverage.rules if (r.rule, r.event) == (rule_id, event))


# ── the computation ───────────────────────────────────────────────────────────────────────────

def test_a_rule_is_covered_only_when_seen_both_holding_and_failing(policy: Policy) -> None:
    only_held = Seen(held={("phone_owner", "verify_phone")})
    only_failed = Seen(failed={("payment_consents", "register")})
    both = [Seen(held={("min_age", "select_type")}), Seen(failed={("min_age", "select_type")})]
    coverage = measure(policy, [only_held, only_failed, *both])
    assert (rule(coverage, "phone_owner", "verify_phone").held,
            rule(coverage, "phone_owner", "verify_phone").covered) == (True, False)
    assert rule(coverage, "payment_consents", "register").covered is False
    assert rule(coverage, "min_age", "select_type").covered is True  # across two scenarios
    assert "rule phone_owner on payment_method.verify_phone: seen holding, never failing" \
        in coverage.never_exercised()
    assert "rule payment_consents on payment_method.register: seen failing, never holding" \
        in coverage.never_exercised()
    assert "rule email_code on signup.verify_email: never judged" in coverage.never_exercised()


def test_a_rule_on_two_events_is_covered_on_each_separately(policy: Policy) -> None:
    coverage = measure(policy, [Seen(held={("restricted_hours", "select_method"),
                                           ("restricted_hours", "register")},
                                     failed={("restricted_hours", "select_method")})])
    assert rule(coverage, "restricted_hours", "select_method").covered is True
    assert rule(coverage, "restricted_hours", "register").covered is False


def test_transitions_and_timers_count_when_taken_and_fired(policy: Policy) -> None:
    seen = Seen(transitions={("credit", "active", "consume", "active"),
                             ("credit", "offered", "apply", "active")},
                timers_fired={"credit_offer_lapses"})
    coverage = measure(policy, [seen])
    taken = {(t.workflow, t.source, t.event, t.target): t.taken for t in coverage.transitions}
    assert taken[("credit", "active", "consume", "active")] is True  # the internal branch
    assert taken[("credit", "active", "consume", "exhausted")] is False  # the routed one
    assert taken[("credit", "offered", "apply", "active")] is True
    fired = {t.timer: t.fired for t in coverage.timers}
    assert fired["credit_offer_lapses"] is True and fired["credit_validity_ends"] is False
    assert "transition credit: active --consume--> exhausted (when credit_used_up): never taken" \
        in coverage.never_exercised()
    assert "timer credit_validity_ends (credit.expire in active): never fired" in coverage.never_exercised()
    assert coverage.counts("transitions") == (2, len(coverage.transitions))
    assert coverage.percent("timers") == pytest.approx(100 / len(coverage.timers))
    assert coverage.below(100) == ["rules", "transitions", "timers"]
    assert coverage.below(0) == []


def test_a_switched_off_rule_is_not_counted(tmp_path: Path) -> None:
    text = RULES_PATH.read_text(encoding="utf-8").replace(
        "    guard: data.owner_match == true\n", "    guard: data.owner_match == true\n    enabled: false\n")
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    coverage = measure(load_policy_file(str(path)), [])
    assert "phone_owner" not in {r.rule for r in coverage.rules}
    assert "restricted_hours" in {r.rule for r in coverage.rules}


def test_the_runner_sees_routes_fail_and_hold_and_timers_fire(tmp_path: Path, policy: Policy) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEADER + """\
scenarios:
  - name: a member's card, then an invoice issued by its timer
    clock: "2026-10-20T10:00:00+09:00"
    steps:
      - account: {as: minsu}
      - create: {workflow: invoice, as: oct, context: {account: minsu, usage_month: "2026-10"}}
      - advance: {to: "2026-11-03T00:00:00+09:00"}
        expect: {state: {oct: paid}}
""", encoding="utf-8")
    [result] = run_files([load_scenarios(path)], RULES_PATH)
    assert result.passed, result.failures
    seen = result.seen
    assert ("partner_not_payable", "register") in seen.failed  # a member, not a partner: → active
    assert ("partner_not_payable", "register") not in seen.held
    assert ("nothing_due", "issue") in seen.held  # nothing used: paid at issue
    assert seen.timers_fired == {"invoice_issue"}
    assert ("invoice", "open", "issue", "paid") in seen.transitions
    coverage = measure(policy, [seen])
    assert rule(coverage, "nothing_due", "issue").gap == "seen holding, never failing"


def test_the_json_result_names_the_untested_transitions_of_a_workflow(policy: Policy) -> None:
    seen = Seen(transitions={("credit", "offered", "apply", "active")})
    result = json.loads(json.dumps(measure(policy, [seen]).as_dict()))
    untested = untested_transitions(result, "credit")
    assert ("offered", "active", "apply") not in untested
    assert ("active", "active", "consume") in untested and ("active", "exhausted", "consume") in untested
    assert all(len(t) == 3 for t in untested) and len(untested) == 6
    with pytest.raises(ValueError, match="not a coverage result"):
        untested_transitions({"transitions": []}, "credit")
    with pytest.raises(ValueError, match=r"transitions\[0\]"):
        untested_transitions({**result, "transitions": [{"workflow": "credit"}]}, "credit")


# ── the command ──────────────────────────────────────────────────────────────────────────────

def write(tmp_path: Path, text: str = SCENARIO) -> Path:
    path = tmp_path / "scenarios.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_coverage_reports_each_item_the_gaps_and_a_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--coverage"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  ✓ restricted_hours on payment_method.select_method") and
               line.endswith("held failed") for line in out)
    assert any(line.startswith("  ✗ restricted_hours on payment_method.register") and
               line.endswith("-    -") for line in out)
    assert "  ✓ payment_method: method_selection --select_method--> phone_verification" in out
    assert "  transition invoice: open --issue--> paid (when nothing_due): never taken" in out
    assert "  timer invoice_issue (invoice.issue in open): never fired" in out
    summary = [line for line in out if line.startswith(("rules ", "transitions ", "timers "))]
    assert [line.split()[0] for line in summary] == ["rules", "transitions", "timers"]
    assert summary[2].split()[1:3] == ["0/9", "0.0%"]


def test_fail_under_exits_1_naming_each_share_below_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--fail-under", "100"]) == 1
    out = capsys.readouterr().out
    assert "1 passed, 0 failed" in out
    line = next(line for line in out.splitlines() if line.startswith("Coverage is under 100%:"))
    assert "rules " in line and "transitions " in line and "timers 0.0%" in line
    assert "  timer grace_deadline (invoice.suspend in grace): never fired" in out.splitlines()
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--fail-under", "0"]) == 0
    assert "Coverage is under" not in capsys.readouterr().out


def test_fail_under_names_only_the_shares_below_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    main(["rules", "test", str(path), "--rules", str(RULES_PATH),
          "--coverage-json", str(tmp_path / "c.json")])
    capsys.readouterr()
    shares = {k: v["percent"] for k, v in json.loads((tmp_path / "c.json").read_text())["summary"].items()}
    assert shares["timers"] == 0.0 < shares["rules"] < shares["transitions"]
    threshold = (shares["rules"] + shares["transitions"]) / 2
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--fail-under", str(threshold)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Coverage is under"))
    assert "rules" in line and "timers" in line and "transitions" not in line


def test_a_failed_scenario_still_exits_1_with_coverage(tmp_path: Path) -> None:
    path = write(tmp_path, SCENARIO.replace("denied: [restricted_hours]", "applied: true"))
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--fail-under", "0"]) == 1


def test_fail_under_must_be_a_percentage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    assert main(["rules", "test", str(path), "--fail-under", "101"]) == 2
    assert "'101' is not a percentage from 0 to 100" in capsys.readouterr().err


def test_coverage_json_is_written_and_an_unwritable_file_is_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    target = tmp_path / "coverage.json"
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--coverage-json", str(target)]) == 0
    result = json.loads(target.read_text(encoding="utf-8"))
    assert result["format"] == "tollgate-coverage/1"
    assert set(result["summary"]) == {"rules", "transitions", "timers"}
    assert {"rule": "restricted_hours", "kind": "guard", "workflow": "payment_method",
            "event": "select_method", "held": True, "failed": True, "covered": True} in result["rules"]
    capsys.readouterr()
    missing = tmp_path / "no" / "such" / "dir" / "c.json"
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH),
                 "--coverage-json", str(missing)]) == 2
    assert f"The file {missing} cannot be written" in capsys.readouterr().err


# ── `applied: [ids]` is exact ─────────────────────────────────────────────────────────────────

EXACT = HEADER + """\
scenarios:
  - name: a member registers a card, then deposits on an invoice
    clock: "2026-10-20T10:00:00+09:00"
    steps:
      - account: {as: minsu, with: no_payment_method}
      - create: {workflow: payment_method, as: card, context: {account: minsu, channel: web}}
      - fire: {instance: card, event: select_method,
               data: {method: credit_card, card_type: personal, card_owner: person}}
        expect: {applied: [APPLIED]}
      - create: {workflow: invoice, as: oct, context: {account: minsu, usage_month: "2026-09"}}
      - fire: {instance: oct, event: add_usage, data: {amount: 1000}}
      - fire: {instance: oct, event: issue}
      - fire: {instance: oct, event: deposit, data: {amount: 1000, deposited_at: "2026-10-20T09:00:00+09:00"}}
        expect: {applied: [DEPOSIT]}
"""
ALL_SELECT = ("restricted_hours, individual_credit_card_only, mobile_card_types, overseas_3ds_only, "
              "corporate_card_owner")


def exact(tmp_path: Path, applied: str, deposit: str) -> list[str]:
    text = EXACT.replace("APPLIED", applied).replace("DEPOSIT", deposit)
    [result] = run_files([load_scenarios(write(tmp_path, text))], RULES_PATH)
    return [f.message for f in result.failures]


def test_applied_lists_exactly_the_guards_and_the_route_that_held(tmp_path: Path) -> None:
    assert exact(tmp_path, ALL_SELECT, "deposit_not_in_future, deposits_cover_due") == []


def test_applied_with_a_rule_left_out_fails_naming_it(tmp_path: Path) -> None:
    """Before, `applied: [ids]` only checked that the ids named were judged: a subset passed."""
    messages = exact(tmp_path, "restricted_hours", "deposit_not_in_future")
    assert messages == [
        "expected exactly the rules restricted_hours holding on card.select_method, got "
        "corporate_card_owner, individual_credit_card_only, mobile_card_types, overseas_3ds_only, "
        "restricted_hours (corporate_card_owner, individual_credit_card_only, mobile_card_types, "
        "overseas_3ds_only held as well)",
        "expected exactly the rules deposit_not_in_future holding on oct.deposit, got "
        "deposit_not_in_future, deposits_cover_due (deposits_cover_due held as well)"]


def test_applied_with_a_rule_that_did_not_hold_fails_naming_it(tmp_path: Path) -> None:
    messages = exact(tmp_path, f"{ALL_SELECT}, phone_owner",
                     "deposit_not_in_future, deposits_cover_due, partner_not_payable")
    assert messages[0].endswith("(phone_owner did not hold there or is not judged there)")
    assert messages[1].endswith("(partner_not_payable did not hold there or is not judged there)")


@pytest.mark.parametrize("paths", [["tests/policy"], ["tests/policy/credit.yaml"]])
def test_the_coverage_file_conforms_to_its_schema(tmp_path: Path, paths: list[str]) -> None:
    """`--coverage-json` writes what schemas/coverage.schema.json describes, whole or with gaps."""
    from jsonschema import Draft202012Validator

    from tests.helpers.paths import ROOT

    out = tmp_path / "coverage.json"
    main(["rules", "test", *(str(ROOT / p) for p in paths), "--rules", str(RULES_PATH),
          "--coverage-json", str(out)])
    schema = json.loads((ROOT / "schemas" / "coverage.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    result = json.loads(out.read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(result)]
    assert errors == []
    assert bool(result["never_exercised"]) == (paths != ["tests/policy"])
