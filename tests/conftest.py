"""Shared fixtures: the bundled policy and engine, modified policies, KST instants, builders.

Sections: policy and engine · modified rules · time · instances (accounts, snapshots, driving
events) · assertions. Helper fixtures are session-scoped plain functions so that hypothesis
tests may use them too. Fixtures for the HTTP app (`app`, `client`, `clock`) belong in their own
section when the service lands.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from random import Random
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.engine import Engine
from tollgate.workflows.outcome import Outcome, Snapshot
from tollgate.workflows.policy import Policy

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "rules.yaml"
CASES = Path(__file__).resolve().parent / "cases"
KST = ZoneInfo("Asia/Seoul")
HANGUL = re.compile(r"[\uac00-\ud7a3]")


# ── policy and engine ─────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def rules_text() -> str:
    """The bundled rules.yaml, as text."""
    return RULES_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def policy(rules_text: str) -> Policy:
    return load_policy(rules_text, str(RULES_PATH))


@pytest.fixture(scope="session")
def engine(policy: Policy) -> Engine:
    return new_engine(policy)


# ── modified rules ────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def rules_data(rules_text: str) -> Callable[[], dict[str, Any]]:
    """A fresh, mutable copy of rules.yaml as data, for a test to edit."""
    parsed = yaml.safe_load(rules_text)
    return lambda: copy.deepcopy(parsed)


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cases(name): parametrise the `case` argument with the rows of tests/cases/<name>.yaml",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.cases("restricted_hours")` + a `case` argument: one test per YAML row."""
    marker = metafunc.definition.get_closest_marker("cases")
    if marker is not None and "case" in metafunc.fixturenames:
        metafunc.parametrize("case", load_cases(marker.args[0]))


# ── time ──────────────────────────────────────────────────────────────────────────────────────


def kst_instant(y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    """An aware instant given as Korea Standard Time wall-clock time."""
    return datetime(y, m, d, h, mi, s, tzinfo=KST)


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


# ── HTTP app fixtures ─────────────────────────────────────────────────────────────────────────
# `app`, `client` and `api` run every API test on SQLite and on PostgreSQL. PostgreSQL gets one
# fresh database per session (dropped after) and its tables are emptied before each test; when
# the server does not answer, the PostgreSQL half skips with the reason.

import os  # noqa: E402 — this section is appended; its imports stay with it
import secrets  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402
from werkzeug.test import TestResponse  # noqa: E402

API_TOKENS = {"viewer": "tok-viewer", "operator": "tok-operator", "policy_editor": "tok-editor",
              "gateway": "tok-gateway", "admin": "tok-admin"}
API_NOW = kst_instant(2025, 3, 5, 12)  # real time, pinned, for instances without a test clock
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (`TOLLGATE_TEST_POSTGRES_URL` names the server)."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = os.environ.get("TOLLGATE_TEST_POSTGRES_URL") or POSTGRES_URL
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL at {base} does not answer ({' '.join(str(error).split())}); set "
                    "TOLLGATE_TEST_POSTGRES_URL to run the API tests on PostgreSQL too.")
    name = f"tollgate_t_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _empty_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


def _database_url(request: pytest.FixtureRequest, directory: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{directory / 'tollgate.db'}"
    url: str = request.getfixturevalue("postgres_database")
    _empty_postgres(url)
    return url


def make_app(database_url: str, **overrides: Any) -> Flask:
    """An app over `database_url` with the bundled rules, the four test tokens and pinned real time."""
    from tollgate.service.app import create_app

    config = {"TESTING": True, "DATABASE_URL": database_url, "RULES": str(RULES_PATH),
              "TOKENS": ",".join(f"{role}={token}" for role, token in API_TOKENS.items()),
              "NOW": lambda: API_NOW, **overrides}
    return create_app(config)


def _dispose(app: Flask) -> None:
    app.extensions["tollgate"].db.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (SQLite file, or the emptied PostgreSQL test database)."""
    return _database_url(request, tmp_path)


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    built = make_app(database_url)
    yield built
    _dispose(built)


@pytest.fixture(scope="module", params=BACKENDS)
def module_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app per module and backend, for read-mostly tests (don't mix with `app` in a module)."""
    built = make_app(_database_url(request, tmp_path_factory.mktemp("db")))
    yield built
    _dispose(built)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Api:
    """The test client with a role's bearer token, plus shortcuts that assert success."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def call(self, method: str, path: str, *, role: str | None = "admin", **kwargs: Any) -> TestResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if role is not None:
            headers.setdefault("Authorization", f"Bearer {API_TOKENS[role]}")
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("PUT", path, **kwargs)

    def create(self, workflow: str, context: Mapping[str, Any] | None = None,
               **fields: Any) -> dict[str, Any]:
        body = {"context": dict(context or {}), **fields}
        response = self.post(f"/workflows/{workflow}/instances", json=body)
        assert response.status_code == 201, response.get_json()
        created: dict[str, Any] = response.get_json()
        return created

    def fire(self, instance: str, event: str, data: Mapping[str, Any] | None = None, *,
             status: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.post(f"/instances/{instance}/events", json={"event": event, "data": dict(data or {})},
                             **kwargs)
        assert response.status_code == status, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    def clock(self, now: datetime) -> str:
        response = self.post("/clocks", json={"now": now.isoformat()})
        assert response.status_code == 201, response.get_json()
        return str(response.get_json()["id"])

    def signup(self, *, clock: str | None = None, email: str | None = None, password: str = "Secret#2025",
               country: str = "KR", member_type: str = "individual") -> str:
        """A signup driven to `payment_method_required`; returns its id."""
        fields = {"clock": clock} if clock else {}
        account = str(self.create("signup", **fields)["id"])
        self.fire(account, "select_type", {"country": country, "member_type": member_type,
                                           "birth_date": "1990-01-01"})
        self.fire(account, "submit_email", {"email": email or f"{account}@example.com"})
        code = self.get(f"/notifications?instance={account}").get_json()["items"][-1]["payload"]["code"]
        self.fire(account, "verify_email", {"code": code})
        self.fire(account, "set_password", {"password": password, "password_confirm": password})
        return account

    def register_card(self, account: str) -> str:
        """A personal credit card registered on the web for `account`; returns the payment_method id."""
        pm = str(self.create("payment_method", {"account": account, "channel": "web"})["id"])
        self.fire(pm, "select_method", {"method": "credit_card", "card_type": "personal",
                                        "card_owner": "person"})
        self.fire(pm, "verify_phone", {"owner_match": True})
        self.fire(pm, "register", {"agree_payment_info": True, "agree_recurring": True})
        return pm


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


@pytest.fixture
def clock(api: Api) -> str:
    """A test clock at 2025-03-05 12:00 KST."""
    return api.clock(kst_instant(2025, 3, 5, 12))


def assert_conforms(body: Any, schema_name: str) -> None:
    """`body` is valid against `schemas/api/<schema_name>.json` (the schema /openapi.json embeds)."""
    import json

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    directory = ROOT / "schemas" / "api"
    documents = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in directory.glob("*.json")}
    registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in documents.values())
    validator = Draft202012Validator(documents[f"{schema_name}.json"], registry=registry)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"the body does not match {schema_name}.json: {errors}"
