"""Diagrams: every state and event drawn, rule ids on guarded arrows, timed events marked, the
current state highlighted — in Mermaid and DOT, from the library (SVG through Graphviz and the
`tollgate diagram` command: tests/service/test_diagram_rendering.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tollgate.service.application.policy_files import load_policy_file
from tollgate.workflows.definitions import Transition
from tollgate.workflows.diagrams import (
    Diagram,
    Edge,
    StateNode,
    extract,
    mermaid_text,
    to_dot,
    to_mermaid,
    workflow_diagram,
)
from tollgate.workflows.exceptions import NotFound
from tollgate.workflows.policy import Policy

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules.yaml"
WORKFLOWS = ("signup", "payment_method", "credit", "invoice")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_file(RULES)


def edges(policy: Policy, workflow: str, event: str) -> list[Edge]:
    return [e for e in workflow_diagram(policy, workflow).edges if e.event == event]


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_every_state_and_event_appears(policy: Policy, workflow: str) -> None:
    definition = policy.definitions[workflow]
    diagram = workflow_diagram(policy, workflow)
    assert [s.name for s in diagram.states] == list(definition.state_names)
    assert {e.event for e in diagram.edges} == set(definition.events)
    mermaid, dot = to_mermaid(diagram), to_dot(diagram)
    for state in definition.state_names:
        assert re.search(rf"^\s+{state} --> |--> {state} ", mermaid, re.M), state
        assert f'"{state}" [label="{state}"' in dot
    for event in definition.events:
        assert re.search(rf" : (⏱ )?{event}\b", mermaid), event
        assert re.search(rf'label="(⏱ )?{event}\b', dot), event


def test_restricted_hours_is_on_the_register_arrows(policy: Policy) -> None:
    register = edges(policy, "payment_method", "register")
    assert {(e.source, e.target) for e in register} == {("consent", "active"),
                                                         ("consent", "pending_support")}
    assert all(e.guards == ("restricted_hours", "payment_consents") for e in register)
    mermaid = to_mermaid(workflow_diagram(policy, "payment_method"))
    assert ("consent --> pending_support : register [restricted_hours, payment_consents] "
            "(when partner_not_payable)") in mermaid
    assert "consent --> active : register [restricted_hours, payment_consents] (otherwise)" in mermaid
    dot = to_dot(workflow_diagram(policy, "payment_method"))
    assert ('"consent" -> "active" [label="register [restricted_hours, payment_consents] '
            '(otherwise)"]') in dot


def test_disabled_rules_are_not_drawn(policy: Policy) -> None:
    rules = dict(policy.rules)
    rules["restricted_hours"] = dataclasses.replace(rules["restricted_hours"], enabled=False)
    changed = dataclasses.replace(policy, rules=rules)
    assert all(e.guards == ("payment_consents",) for e in edges(changed, "payment_method", "register"))


@pytest.mark.parametrize("event", ["issue", "mark_overdue"])
def test_invoice_timer_events_are_marked_timed(policy: Policy, event: str) -> None:
    arrows = edges(policy, "invoice", event)
    assert arrows and all(e.timed and e.timers for e in arrows)
    assert f": ⏱ {event} [" in to_mermaid(workflow_diagram(policy, "invoice"))
    assert f'label="⏱ {event} [' in to_dot(workflow_diagram(policy, "invoice"))


def test_an_event_fired_by_a_rules_timer_is_timed_even_if_the_definition_does_not_say_so(
        policy: Policy) -> None:
    invoice = policy.definitions["invoice"]
    untimed = {name: dataclasses.replace(e, timed=False) for name, e in invoice.events.items()}
    definition = dataclasses.replace(invoice, events=untimed)
    diagram = extract(definition, policy)
    timed = {e.event for e in diagram.edges if e.timed}
    assert timed == {"issue", "start_autopay", "mark_overdue", "begin_grace", "suspend"}
    assert not any(e.timed for e in extract(definition).edges), "no policy, no timers"


def test_people_events_are_not_marked_timed(policy: Policy) -> None:
    mermaid = to_mermaid(workflow_diagram(policy, "invoice"))
    assert ": pay_now [pay_now_window, pay_now_full_amount]" in mermaid
    assert "⏱ pay_now" not in mermaid and "⏱ deposit" not in mermaid


def test_internal_self_loops_are_marked(policy: Policy) -> None:
    [usage] = edges(policy, "invoice", "add_usage")
    assert (usage.source, usage.target, usage.internal) == ("open", "open", True)
    assert "open --> open : add_usage (internal)" in to_mermaid(workflow_diagram(policy, "invoice"))
    [retry] = [e for e in edges(policy, "invoice", "start_autopay") if e.source == e.target]
    assert not retry.internal, "an external self-transition exits and re-enters (re-arming timers)"
    [resend] = [e for e in edges(policy, "signup", "submit_email") if e.source == e.target]
    assert resend.internal, "a new email code keeps the abandonment timer running"


def test_transitions_with_the_same_source_target_and_event_are_merged(policy: Policy) -> None:
    credit = policy.definitions["credit"]
    doubled = dataclasses.replace(credit, transitions=(
        *credit.transitions, Transition("apply", "offered", "active")))
    assert len([e for e in extract(doubled, policy).edges if e.event == "apply"]) == 1


@pytest.mark.parametrize(("workflow", "state"), [("invoice", "grace"), ("signup", "active")])
def test_the_given_state_is_highlighted(policy: Policy, workflow: str, state: str) -> None:
    diagram = workflow_diagram(policy, workflow, highlight=state)
    assert [s.name for s in diagram.states if s.highlighted] == [state]
    mermaid = to_mermaid(diagram)
    assert "classDef current fill:" in mermaid
    assert mermaid.rstrip().endswith(f"class {state} current")
    filled = [line for line in to_dot(diagram).splitlines() if "filled" in line]
    assert len(filled) == 1 and filled[0].startswith(f'  "{state}" [')
    plain = workflow_diagram(policy, workflow)
    assert "current" not in to_mermaid(plain) and "filled" not in to_dot(plain)


def test_unknown_state_or_workflow_is_not_found(policy: Policy) -> None:
    with pytest.raises(NotFound, match="The invoice workflow has no state 'gracee'; its states: open"):
        workflow_diagram(policy, "invoice", highlight="gracee")
    with pytest.raises(NotFound, match="There is no workflow 'invoices'; choose one of: signup"):
        workflow_diagram(policy, "invoices")


HOSTILE = 'pay;now: #1 %% "q" <b> {c} [*] --> x\\n\nnext'


def hostile_diagram() -> Diagram:
    return Diagram("hostile \"one\"", "", (
        StateNode("state", initial=True), StateNode('odd "name" {x}', highlighted=True),
        StateNode("end", final=True)), (
        Edge("state", 'odd "name" {x}', HOSTILE, timed=True, guards=("g;1",)),
        Edge('odd "name" {x}', "end", "done")))


def test_mermaid_labels_are_escaped() -> None:
    mermaid = to_mermaid(hostile_diagram())
    arrow = next(line for line in mermaid.splitlines() if "pay" in line)
    label = arrow.split(" : ", 1)[1]
    assert not set(re.sub(r"#\d+;", "", label)) & set(';:"<>{}%*#\\'), label
    assert "pay#59;now#58; #35;1" in label
    assert 'state "state" as state_0' in mermaid, "Mermaid keywords are aliased"
    assert 'state "odd #34;name#34; #123;x#125;" as state_1' in mermaid
    assert "class state_1 current" in mermaid
    assert mermaid_text("a_b.c-d (e) [f]") == "a_b.c-d (e) [f]"
