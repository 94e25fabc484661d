"""The semantic diff: what an edit of rules.yaml changes in policy terms, and what it does not.

Each test edits the text of the bundled rules.yaml as a policy editor would (or re-dumps its parsed
data) and compares the loaded policies; each kind of change is shown beside an edit of the same
place that changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.policy import Policy
from tollgate.workflows.policy_diff import PolicyDiff, diff_policies

NEW_RULE = """
  consent_given_twice:
    workflow: payment_method
    events: [register]
    guard: data.agree_recurring == true
    message:
      ko: "정기결제 동의가 필요합니다."
      en: "Consent to recurring payment is required."
"""


@pytest.fixture(scope="module")
def edited(rules_text: str) -> Callable[..., Policy]:
    """`edited((old, new), …)`: the bundled rules text with each `old` replaced once, loaded."""

    def build(*replacements: tuple[str, str]) -> Policy:
        text = rules_text
        for old, new in replacements:
            assert text.count(old) >= 1, old
            text = text.replace(old, new, 1)
        return load_policy(text, "edited.yaml")

    return build


def _lines(diff: PolicyDiff) -> list[str]:
    return [line for line in diff.lines() if line]


# ── nothing changed ──────────────────────────────────────────────────────────────────────────

def test_the_same_policy_gives_an_empty_report(policy: Policy) -> None:
    diff = diff_policies(policy, policy)
    assert diff.empty and diff.changes == 0
    assert diff.lines() == []
    assert diff.as_dict() == {"changes": 0, "timezone": None, "params": [], "rules": [], "timers": [],
                              "affected": []}
    assert diff.summary() == "No policy changes."


def test_keys_sorted_comments_and_quoting_gone_is_no_change(
        policy: Policy, rules_data: Callable[[], dict[str, Any]]) -> None:
    data = rules_data()
    data["rules"] = dict(reversed(list(data["rules"].items())))
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=True, default_style='"', width=60)
    assert text != policy.text and "#" not in text
    assert diff_policies(policy, load_policy(text, "resorted.yaml")).empty


def test_cosmetic_edits_of_the_text_are_no_change(policy: Policy, edited: Callable[..., Policy]) -> None:
    cosmetic = edited(
        ("params:\n", "# Policy numbers; see the seed.\nparams:\n"),
        ('      start: "23:00"', "      start: '23:00'   # the bank's rule"),
        ("      methods: [bank_account, check_card]",
         "      methods:\n        - check_card\n        - bank_account"),
        ("    guard: data.owner_match == true\n", "    guard: \"data.owner_match   ==\\n  true\"\n"),
        ('    guard: data.member_type in ["individual", "business"]',
         "    guard: >-\n      data.member_type in\n        ['individual',   'business']"),
        ("    events: [select_method, register]", "    events: [register, select_method]"),
        ("    message:\n      ko: \"이미 가입된",
         "    message:  # shown to the member\n      ko: \"이미 가입된"),
        ("    states: [issued, autopay]", "    states:\n      - autopay\n      - issued"),
        ("    workflow: invoice\n    event: issue\n", "    event: issue\n    workflow: invoice\n"),
    )
    assert cosmetic.text != policy.text
    diff = diff_policies(policy, cosmetic)
    assert diff.empty, diff.lines()


# ── params ───────────────────────────────────────────────────────────────────────────────────

def test_a_changed_param_is_reported_with_its_path_values_and_readers(
        policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(('      start: "23:00"', '      start: "22:00"')))
    assert [(p.path, p.change, p.old, p.new) for p in diff.params] == [
        ("payment.restricted_hours.start", "changed", "23:00", "22:00")]
    assert diff.params[0].used_by == ("rule restricted_hours",)
    assert diff.rules == () and diff.timers == ()
    assert _lines(diff)[0] == ('param payment.restricted_hours.start: "23:00" → "22:00"; '
                               "read by rule restricted_hours")
    assert {(a.workflow, a.event) for a in diff.affected} == {("payment_method", "select_method"),
                                                               ("payment_method", "register")}
    register = next(a for a in diff.affected if a.event == "register")
    assert register.transitions == ("consent → pending_support when partner_not_payable", "consent → active")
    assert register.causes == ("param payment.restricted_hours.start",)


def test_a_param_written_the_same_way_again_is_no_change(
        policy: Policy, edited: Callable[..., Policy]) -> None:
    assert diff_policies(policy, edited(("    min_age: 19", "    min_age: +19  # as before"))).empty
    diff = diff_policies(policy, edited(("    min_age: 19", "    min_age: 20")))
    assert [(p.path, p.old, p.new) for p in diff.params] == [("signup.min_age", 19, 20)]
    assert diff.params[0].used_by == ("rule min_age",)  # its guard and its message read it
    assert [(a.workflow, a.event) for a in diff.affected] == [("signup", "select_type")]


def test_a_list_param_reports_the_items_added_and_removed(
        policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(("countries: [KR, US, JP, CN,", "countries: [KR, US, JP, MX,")))
    (change,) = diff.params
    assert change.path == "signup.countries" and "MX" in change.new and "CN" not in change.new
    assert '(added "MX"; removed "CN")' in _lines(diff)[0]
    reordered = edited(("countries: [KR, US, JP, CN,", "countries: [JP, CN, US, KR,"))
    assert diff_policies(policy, reordered).empty  # a list of params is a set to the rules


def test_a_param_read_by_an_action_and_by_a_timer(policy: Policy, edited: Callable[..., Policy]) -> None:
    credit = diff_policies(policy, edited(("    amount: 100000", "    amount: 50000")))
    assert credit.params[0].used_by == ("action grant_credit",)
    assert [(a.workflow, a.event) for a in credit.affected] == [("credit", "apply")]
    issue = diff_policies(policy, edited(("    issue_day: 3", "    issue_day: 4")))
    readers = {"timer invoice_issue", "rule issue_day_reached", "rule pay_now_window"}
    assert readers <= set(issue.params[0].used_by)
    assert ("invoice", "issue") in {(a.workflow, a.event) for a in issue.affected}


def test_added_and_removed_params(policy: Policy, edited: Callable[..., Policy]) -> None:
    more = edited(("  billing:\n", "  support:\n    hotline: \"1544-5876\"\n  billing:\n"))
    added = diff_policies(policy, more)
    assert [(p.path, p.change, p.old, p.new, p.used_by) for p in added.params] == [
        ("support.hotline", "added", None, "1544-5876", ())]
    assert added.affected == ()
    removed = diff_policies(more, policy)
    assert [(p.path, p.change, p.old, p.new) for p in removed.params] == [
        ("support.hotline", "removed", "1544-5876", None)]
    assert _lines(removed) == ['param support.hotline: removed (was "1544-5876")']


def test_the_time_zone(policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(("timezone: Asia/Seoul", "timezone: Asia/Tokyo")))
    assert diff.timezone == ("Asia/Seoul", "Asia/Tokyo")
    assert diff.as_dict()["timezone"] == {"old": "Asia/Seoul", "new": "Asia/Tokyo"}
    assert diff_policies(policy, edited(("timezone: Asia/Seoul", 'timezone: "Asia/Seoul"'))).empty


# ── rules ────────────────────────────────────────────────────────────────────────────────────

def test_a_rule_switched_off_and_back_on(policy: Policy, edited: Callable[..., Policy]) -> None:
    guard = "    guard: data.owner_match == true\n"
    off = edited((guard, guard + "    enabled: false\n"))
    diff = diff_policies(policy, off)
    assert [(r.rule, r.change) for r in diff.rules] == [("phone_owner", "switched_off")]
    assert _lines(diff)[0] == "rule phone_owner (payment_method): switched off (enabled: false)"
    assert [(a.workflow, a.event, a.transitions, a.causes) for a in diff.affected] == [
        ("payment_method", "verify_phone", ("phone_verification → consent",), ("rule phone_owner",))]
    assert [(r.rule, r.change) for r in diff_policies(off, policy).rules] == [("phone_owner", "switched_on")]
    stated = edited((guard, guard + "    enabled: true\n"))
    assert diff_policies(policy, stated).empty  # enabled: true is the default


def test_a_changed_expression(policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(("    route: account.partner == true",
                                         '    route: account.partner == true && account.country == "KR"')))
    assert [(r.rule, r.change, r.old, r.new) for r in diff.rules] == [
        ("partner_not_payable", "expression", "account.partner == true",
         'account.partner == true && account.country == "KR"')]
    # a route touches the transitions that name it and the branches it chooses between
    assert [(a.event, a.transitions) for a in diff.affected] == [
        ("register", ("consent → pending_support when partner_not_payable", "consent → active")),
        ("account_became_partner", ("active → pending_support when partner_not_payable",
                                    "active → active (internal)"))]


def test_an_expression_spelled_differently_but_a_literal_changed_is_a_change(
        policy: Policy, edited: Callable[..., Policy]) -> None:
    same = edited(('    guard: data.member_type in ["individual", "business"]',
                   "    guard: data.member_type in ['individual','business']"))
    assert diff_policies(policy, same).empty
    changed = edited(('    guard: data.member_type in ["individual", "business"]',
                      "    guard: data.member_type in ['individual', 'Business']"))
    assert [(r.rule, r.change) for r in diff_policies(policy, changed).rules] == [
        ("member_type_valid", "expression")]


def test_changed_messages_each_language_apart(policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(('      en: "Choose a residence country the platform serves."',
                                         '      en: "Choose a country the platform serves."')))
    assert [(r.rule, r.change, r.old, r.new) for r in diff.rules] == [
        ("country_supported", "message.en", "Choose a residence country the platform serves.",
         "Choose a country the platform serves.")]
    requoted = edited(('      en: "Choose a residence country the platform serves."',
                       "      en: >-\n        Choose a residence country\n        the platform serves."))
    assert diff_policies(policy, requoted).empty


def test_a_message_that_shows_a_changed_param_is_not_itself_changed(
        policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(("    min_age: 19", "    min_age: 20")))
    assert diff.rules == ()  # min_age's message says 20 now, through its {params.…} placeholder


def test_a_rule_added_and_removed(policy: Policy, edited: Callable[..., Policy]) -> None:
    more = edited(("\n  # ── discount credit", NEW_RULE + "\n  # ── discount credit"))
    added = diff_policies(policy, more)
    assert [(r.rule, r.workflow, r.change, r.old, r.new) for r in added.rules] == [
        ("consent_given_twice", "payment_method", "added", None, "data.agree_recurring == true")]
    assert [(a.event, a.causes) for a in added.affected] == [("register", ("rule consent_given_twice",))]
    removed = diff_policies(more, policy)
    assert [(r.rule, r.change, r.old, r.new) for r in removed.rules] == [
        ("consent_given_twice", "removed", "data.agree_recurring == true", None)]


def test_a_rule_bound_to_other_events(policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(("    events: [select_method, register]", "    events: [register]")))
    assert [(r.rule, r.change, r.old, r.new) for r in diff.rules] == [
        ("restricted_hours", "events", ["select_method", "register"], ["register"])]
    assert {a.event for a in diff.affected} == {"select_method", "register"}


def test_a_guard_on_creation_touches_the_new_instance(policy: Policy, edited: Callable[..., Policy]) -> None:
    rule = NEW_RULE.replace("events: [register]", "events: [create]").replace(
        "data.agree_recurring == true", 'context.channel == "web"')
    more = edited(("\n  # ── discount credit", rule + "\n  # ── discount credit"))
    (affected,) = diff_policies(policy, more).affected
    assert (affected.workflow, affected.event, affected.transitions) == (
        "payment_method", "create", ("(new) → method_selection",))


# ── timers ───────────────────────────────────────────────────────────────────────────────────

def test_a_timer_schedule_changed(policy: Policy, edited: Callable[..., Policy]) -> None:
    later = edited(("    states: [grace]\n    at: ts(context.suspend_after)",
                    "    states: [grace]\n    at: add_hours(ts(context.suspend_after), 1)"))
    diff = diff_policies(policy, later)
    assert [(t.timer, t.change, t.old, t.new) for t in diff.timers] == [
        ("grace_deadline", "at", "ts(context.suspend_after)", "add_hours(ts(context.suspend_after), 1)")]
    assert _lines(diff)[0] == ("timer grace_deadline (invoice): at ts(context.suspend_after) → "
                               "add_hours(ts(context.suspend_after), 1)")
    assert [(a.workflow, a.event, a.transitions) for a in diff.affected] == [
        ("invoice", "suspend", ("grace → suspended",))]
    spaced = edited(("    states: [grace]\n    at: ts(context.suspend_after)",
                     "    states: [grace]\n    at: ts( context.suspend_after )"))
    assert diff_policies(policy, spaced).empty


def test_a_timer_condition_and_states(policy: Policy, edited: Callable[..., Policy]) -> None:
    when = edited(("    when: local_day(now) < params.billing.autopay_days.last",
                   "    when: local_day(now) <= params.billing.autopay_days.last"))
    assert [(t.timer, t.change) for t in diff_policies(policy, when).timers] == [("autopay_next_day", "when")]
    states = edited(("    states: [issued, autopay]", "    states: [issued]"))
    assert [(t.timer, t.change, t.old, t.new) for t in diff_policies(policy, states).timers] == [
        ("overdue_after_autopay", "states", ["issued", "autopay"], ["issued"])]


def test_a_timer_switched_between_replan_and_keep(policy: Policy, edited: Callable[..., Policy]) -> None:
    """What a new version does to timers already armed is policy: switching it is a change."""
    replan = edited(("    at: ts(context.suspend_after)\n    # keep: the overdue notice told the customer "
                     "this deadline (context.suspend_after).\n    on_new_version: keep",
                     "    at: ts(context.suspend_after)\n    on_new_version: replan"))
    diff = diff_policies(policy, replan)
    assert [(t.timer, t.change, t.old, t.new) for t in diff.timers] == [
        ("grace_deadline", "on_new_version", "keep", "replan")]
    assert _lines(diff)[0] == "timer grace_deadline (invoice): on_new_version keep → replan"
    assert [(a.workflow, a.event) for a in diff.affected] == [("invoice", "suspend")]


def test_a_timer_removed_and_added(policy: Policy, edited: Callable[..., Policy]) -> None:
    block = ("  autopay_next_day:\n    workflow: invoice\n    event: start_autopay\n    states: [autopay]\n"
             "    when: local_day(now) < params.billing.autopay_days.last\n"
             "    at: add_days(start_of_day(now), 1)\n"
             "    # keep: the autopay retries of an issued invoice follow the terms it was issued with.\n"
             "    on_new_version: keep\n")
    fewer = edited((block, ""))
    removed = diff_policies(policy, fewer)
    assert [(t.timer, t.change, t.old) for t in removed.timers] == [
        ("autopay_next_day", "removed", "add_days(start_of_day(now), 1)")]
    assert [(a.event, a.causes) for a in removed.affected] == [("start_autopay", ("timer autopay_next_day",))]
    assert removed.affected[0].transitions == ("autopay → autopay",)
    added = diff_policies(fewer, policy)
    assert [(t.timer, t.change) for t in added.timers] == [("autopay_next_day", "added")]


# ── the JSON form ────────────────────────────────────────────────────────────────────────────

def test_the_json_form_has_stable_keys_and_is_json(policy: Policy, edited: Callable[..., Policy]) -> None:
    diff = diff_policies(policy, edited(('      start: "23:00"', '      start: "22:00"'),
                                        ("    guard: data.owner_match == true\n",
                                         "    guard: data.owner_match == true\n    enabled: false\n")))
    data = json.loads(json.dumps(diff.as_dict()))
    assert list(data) == ["changes", "timezone", "params", "rules", "timers", "affected"]
    assert data["changes"] == 2
    assert data["params"] == [{"path": "payment.restricted_hours.start", "change": "changed", "old": "23:00",
                               "new": "22:00", "used_by": ["rule restricted_hours"]}]
    assert data["rules"] == [{"rule": "phone_owner", "workflow": "payment_method", "change": "switched_off",
                              "old": True, "new": False}]
    assert all(list(a) == ["workflow", "event", "transitions", "causes"] for a in data["affected"])
