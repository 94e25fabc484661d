"""The pure core's fixtures: the bundled policy and engine, modified policies, KST instants,
snapshots and the steps that drive them, and the assertions on denials. No database, no app.

Sections: policy and engine · modified rules · time · instances (accounts, snapshots, driving
events) · assertions. Helper fixtures are session-scoped plain functions so that hypothesis
tests may use them too. `@pytest.mark.cases("name")` parametrises `case` with tests/cases/name.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from random import Random
from typing import Any

import pytest
import yaml

from tests.helpers.kst import kst_instant
from tests.helpers.paths import CASES, RULES_PATH
from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.engine import Engine
from tollgate.workflows.outcome import Outcome, Snapshot
from tollgate.workflows.policy import Policy

HANGUL = re.compile(r"[\uac00-\ud7a3]")


# ── policy and engine ─────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def policy(rules_text: str) -> Policy:
    return load_policy(rules_text, str(RULES_PATH))


@pytest.fixture(scope="session")
def engine(policy: Policy) -> Engine:
    return new_engine(policy)


# ── modified rules ────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def engine_with(rules_data: Callable[[], dict[str, Any]]) -> Callable[..., Engine]:
    """`engine_with(edit)`: an Engine over a copy of rules.yaml changed by `edit(data)`.

    The copy goes through YAML text and `load_policy`, exactly like a policy editor's file.
    """

    def build(edit: Callable[[dict[str, Any]], None]) -> Engine:
        data = rules_data()
        edit(data)
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        return new_engine(load_policy(text, "modified-rules.yaml"))

    return build


def load_cases(name: str) -> list[Any]:
    """The cases of `tests/cases/<name>.yaml` as pytest params with their `id`."""
    with (CASES / f"{name}.yaml").open(encoding="utf-8") as handle:
        cases = yaml.safe_load(handle)
    return [pytest.param(case, id=case["id"]) for case in cases]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.cases("restricted_hours")` + a `case` argument: one test per YAML row."""
    marker = metafunc.definition.get_closest_marker("cases")
    if marker is not None and "case" in metafunc.fixturenames:
        metafunc.parametrize("case", load_cases(marker.args[0]))


# ── time ──────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def kst() -> Callable[..., datetime]:
    """`kst(y, m, d, h=0, mi=0, s=0)`: an instant in Korea Standard Time."""
    return kst_instant


# ── instances ─────────────────────────────────────────────────────────────────────────────────


def make_account(**overrides: Any) -> dict[str, Any]:
    """The flat account map guards read: an active Korean business member by default."""
    account = {
        "id": "acct-1",
        "state": "active",
        "country": "KR",
        "member_type": "business",
        "partner": False,
        "email": "member@example.com",
        "phone": "010-0000-0000",
    }
    account.update(overrides)
    return account


@pytest.fixture(scope="session")
def account() -> Callable[..., dict[str, Any]]:
    """`account(**overrides)`: a referenced account map (see `make_account`)."""
    return make_account


@pytest.fixture(scope="session")
def snapshot() -> Callable[..., Snapshot]:
    """`snapshot(workflow, state, context=None, *, account=None, facts=None, ...)`.

    Every workflow but signup references an account; it defaults to `make_account()` and the
    context's `account` field defaults to its id.
    """

    def build(
        workflow: str,
        state: str,
        context: Mapping[str, Any] | None = None,
        *,
        account: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        id: str = "",
    ) -> Snapshot:
        ctx = dict(context or {})
        if workflow != "signup":
            account = account if account is not None else make_account()
            ctx.setdefault("account", account["id"])
        return Snapshot(
            workflow,
            state,
            ctx,
            id=id or f"{workflow}-1",
            account=account,
            facts=dict(facts or {}),
            secrets=dict(secrets or {}),
        )

    return build


@pytest.fixture(scope="session")
def advance(engine: Engine) -> Callable[..., tuple[Snapshot, Outcome]]:
    """`advance(snapshot, event, data, now, engine=..., rng=..., facts=...)`: decide the event,
    require that it applies, and return the next snapshot with the outcome."""

    def step(
        snap: Snapshot,
        event: str,
        data: Mapping[str, Any],
        now: datetime,
        *,
        engine: Engine = engine,
        rng: Random | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> tuple[Snapshot, Outcome]:
        if facts is not None:
            snap = Snapshot(
                snap.workflow,
                snap.state,
                snap.context,
                id=snap.id,
                account=snap.account,
                facts=dict(facts),
                secrets=snap.secrets,
            )
        outcome = engine.decide(snap, event, data, now, rng=rng)
        assert outcome.applied, f"{event} in {snap.state} was denied: {outcome.reasons}"
        following = Snapshot(
            snap.workflow,
            outcome.target,
            dict(outcome.context),
            id=snap.id,
            account=snap.account,
            facts=snap.facts,
            secrets=dict(outcome.secrets),
        )
        return following, outcome

    return step


# ── assertions ────────────────────────────────────────────────────────────────────────────────


def assert_reasons_bilingual(outcome: Outcome) -> None:
    """Every reason of a denial names a rule and carries a Korean and an English message."""
    assert outcome.reasons, "a denial must name at least one rule"
    for reason in outcome.reasons:
        assert reason.rule
        assert HANGUL.search(reason.ko), f"{reason.rule}: no Korean message: {reason.ko!r}"
        assert reason.en.strip() and not HANGUL.search(reason.en), (
            f"{reason.rule}: no English message: {reason.en!r}"
        )
        assert "{params." not in reason.ko + reason.en, f"{reason.rule}: placeholder left unfilled"


def assert_denied_by(outcome: Outcome, *rules: str) -> None:
    """The event was denied by exactly `rules` (in any order), each with ko and en messages.

    Exactly, not "at least", so a test for one rule also proves no other rule misfires.
    """
    assert not outcome.applied, f"expected a denial by {rules}, but {outcome.event} applied"
    assert outcome.target == outcome.source
    assert sorted(r.rule for r in outcome.reasons) == sorted(rules)
    assert_reasons_bilingual(outcome)


@pytest.fixture(scope="session")
def denied_by() -> Callable[..., None]:
    """`denied_by(outcome, *rule_ids)`: see `assert_denied_by`."""
    return assert_denied_by


@pytest.fixture(scope="session")
def bilingual() -> Callable[[Outcome], None]:
    """`bilingual(outcome)`: see `assert_reasons_bilingual`."""
    return assert_reasons_bilingual
