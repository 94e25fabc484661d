"""API fuzzing from the server's own `/openapi.json`: no request, however odd, gets a 5xx.

Against one real server per backend (SQLite, PostgreSQL):
- schemathesis generates requests for every operation of the OpenAPI description (bodies from
  the request schemas — which name each workflow's context and each event's data —, query
  parameters, headers, path ids, and the negative cases of its coverage phase), admin token;
- schemathesis' stateful phase chains calls along the description's links: a created instance
  is read, fired at, listed and drawn; a created clock gets instances and is advanced;
- hypothesis fuzzers fire every event each workflow declares, with arbitrary JSON data (odd
  numbers, timestamps of any year, deep nesting), at instances of that workflow in several
  states, and send clocks, usage months and cursors of any shape.

Every response is counted by status class; the module prints the tally (run with `-s`). Runs
are derandomized (the same examples each run), and sized to a few minutes for both backends.
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error

from tests.helpers.client import Client
from tests.helpers.server import StartServer, TollgateServer
from tollgate.workflows.limits import MAX_AMOUNT, MAX_JSON_DEPTH, MAX_JSON_INTEGER

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 40
STATEFUL_SCENARIOS = 40
STATEFUL_STEPS = 10
EVENT_EXAMPLES = 500
INPUT_EXAMPLES = 120
FUZZ_SEED = 20261130  # schemathesis' seed: the same requests every run

#: backend → (fuzzer, status class) → responses: printed at the end of the module.
TALLY: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)


def _count(server: TollgateServer, fuzzer: str, status: int) -> None:
    TALLY["postgresql" if on_postgres(server) else "sqlite"][(fuzzer, str(status))] += 1


@pytest.fixture(scope="module", autouse=True)
def tally_report() -> Iterator[None]:
    yield
    for backend, counts in sorted(TALLY.items()):
        fuzzers = sorted({fuzzer for fuzzer, _ in counts})
        for fuzzer in fuzzers:
            row = {status: n for (f, status), n in sorted(counts.items()) if f == fuzzer}
            classes = Counter({f"{status[0]}xx": 0 for status in row})
            for status, n in row.items():
                classes[f"{status[0]}xx"] += n
            print(f"\nfuzz tally {backend:10} {fuzzer:10} {sum(row.values()):5} responses "
                  f"{dict(sorted(classes.items()))} {row}")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzz_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[TollgateServer]:
    from tests.e2e.conftest import running

    with running(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}")) as server:
        yield server


@pytest.fixture(scope="module")
def openapi(fuzz_server: TollgateServer) -> Any:
    document = fuzz_server.client("viewer").ok("GET", "/openapi.json")
    assert document["openapi"].startswith("3.1")
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.seed = FUZZ_SEED  # else schemathesis draws a seed per session (its coverage phase)
    return loaded


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def on_postgres(server: TollgateServer) -> bool:
    return server.database_url.startswith("postgresql")


schema = schemathesis.pytest.from_fixture("openapi")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(
        case: Any, fuzz_server: TollgateServer, http_session: requests.Session) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzz_server.tokens['admin']}"}
    response = case.call(base_url=fuzz_server.url, session=http_session, timeout=30)
    _count(fuzz_server, "operations", response.status_code)
    case.validate_response(response, checks=[not_a_server_error])


def test_linked_call_sequences_never_get_a_server_error(
        openapi: Any, fuzz_server: TollgateServer, http_session: requests.Session) -> None:
    """schemathesis' stateful phase: sequences of calls that follow the description's links.

    The server keeps state between scenarios (an id created once answers 409 the next time), so
    a replayed scenario may draw differently and hypothesis calls it flaky; as schemathesis' own
    runner does, such a run only ends early and the next one goes on (only generation, no
    shrinking). A 5xx is recorded with its request, whether hypothesis could replay it or not.
    """
    headers = {"Authorization": f"Bearer {fuzz_server.tokens['admin']}"}
    server_errors: list[str] = []
    scenarios = 0

    class Sequences(openapi.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            nonlocal scenarios
            scenarios += 1

        def before_call(self, case: Any) -> None:  # the admin token, not a generated one
            case.headers = {**(case.headers or {}), **headers}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": fuzz_server.url, "session": http_session, "timeout": 30}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            _count(fuzz_server, "stateful", response.status_code)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} {case.body!r} → "
                                     f"{response.status_code} {response.text[:300]}")

    runs = 0
    while scenarios < STATEFUL_SCENARIOS and runs < 10:
        runs += 1
        try:
            Sequences.run(settings=settings(
                max_examples=STATEFUL_SCENARIOS - scenarios, stateful_step_count=STATEFUL_STEPS,
                phases=[Phase.generate], deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck)))
        except Flaky:
            continue
    assert server_errors == []
    assert scenarios >= STATEFUL_SCENARIOS, (scenarios, runs)


# ── events with arbitrary data on instances in several states ────────────────────────────────

NUL = "\x00"
WORDS = ["amount", "method", "code", "email", "country", "member_type", "birth_date", "reason",
         "deposited_at", "password", "partner", "card_type", "service_area", "invoice"]
ODD_STRINGS = ["", "KR", "credit_card", "2026-10-15", "2026-10-15T23:00:00+09:00", "25:61", "x@y.z",
               "0001-01-01", "9999-12-31", "1899-12-31", "2199-12-31", "2200-01-01",
               "0001-01-01T00:00:00+09:00", "9999-12-31T23:59:59-14:00", "2199-12-31T23:59:59-14:00",
               "2000-01-01T00:00:00+14:00", "1999-12-31T23:59:59Z", "2026-02-30T00:00:00Z", "9999-11",
               "2026-10-15T10:00:00"]
ODD_INTEGERS = [0, -1, 1, MAX_AMOUNT, MAX_AMOUNT + 1, MAX_JSON_INTEGER, MAX_JSON_INTEGER + 1, 2**63 - 1,
                2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30]


def nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`inner` wrapped in 1 to 300 arrays or objects (deeper than any limit but orjson's parse limit)."""
    def wrap(value: Any, depth: int, as_object: bool) -> Any:
        for _ in range(depth):
            value = {"k": value} if as_object else [value]
        return value
    return st.builds(wrap, inner, st.integers(1, 300), st.booleans())


def event_data(*, nul: bool) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects keyed by data field names or anything, with odd values at any depth."""
    text = st.text(st.characters(exclude_characters=None if nul else NUL), max_size=20)
    leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from(ODD_INTEGERS)
              | st.floats(allow_nan=True) | text | st.sampled_from(ODD_STRINGS))
    json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(text, inner, max_size=3), max_leaves=8)
    return st.dictionaries(text | st.sampled_from(WORDS), json_values | nested(leaves), max_size=4)


def shaped(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Data close to an event's schema: its fields with values near their bounds, often valid, so
    that events get past validation to the guards, actions and timers; now and then an odd key."""
    def value(sub: dict[str, Any]) -> st.SearchStrategy[Any]:
        if "enum" in sub:
            return st.sampled_from(sub["enum"])
        kind = sub.get("type")
        if kind == "integer":
            low, high = sub.get("minimum", -(10**6)), sub.get("maximum", 10**6)
            return st.integers(low, high) | st.sampled_from([low, high, high + 1, low - 1])
        if kind == "boolean":
            return st.booleans()
        if kind == "string" and "pattern" in sub:
            return st.from_regex(sub["pattern"], fullmatch=True) | st.sampled_from(ODD_STRINGS)
        if kind == "string":
            return st.text(max_size=min(sub.get("maxLength", 20), 30)) | st.sampled_from(ODD_STRINGS)
        return st.none()
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    optional = {k: value(v) for k, v in properties.items() if k not in required}
    optional["extra"] = st.sampled_from(ODD_INTEGERS) | nested(st.none())
    return st.fixed_dictionaries({k: value(v) for k, v in properties.items() if k in required},
                                 optional=optional)


def _instances(client: Client) -> dict[str, list[str]]:
    """Instances of every workflow, several of them well along their way."""
    clock = client.clock("2026-10-15T10:00:00+09:00")
    fresh = client.create("signup", clock=clock)["id"]
    halfway = client.create("signup", clock=clock)["id"]
    client.fire(halfway, "select_type", {"country": "KR", "member_type": "business"})
    client.fire(halfway, "submit_email", {"email": f"{halfway}@example.com"})
    account = client.signup(clock=clock, member_type="business")
    pm = client.create("payment_method", {"account": account, "channel": "mobile"})["id"]
    active_pm = client.register_card(account)
    offered = client.create("credit", {"account": account})["id"]
    invoice = client.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    issued = client.create("invoice", {"account": account, "usage_month": "2026-09"})["id"]
    client.fire(issued, "add_usage", {"amount": 5000})
    client.ok("POST", f"/clocks/{clock}/advance", json={"to": "2026-10-20T12:00:00+09:00"})
    return {"signup": [fresh, halfway, account], "payment_method": [pm, active_pm],
            "credit": [offered], "invoice": [invoice, issued]}


@pytest.fixture(scope="module")
def targets(fuzz_server: TollgateServer) -> list[tuple[str, str, dict[str, Any]]]:
    """(instance, event, data schema): every declared event of each workflow on each of its
    instances, those valid in the instance's state at the start three times over (so that more
    events get past the state check to the guards, actions and timers)."""
    admin = fuzz_server.client("admin")
    by_workflow = _instances(admin)
    found = []
    for workflow, ids in by_workflow.items():
        described = admin.ok("GET", f"/workflows/{workflow}")
        for instance in ids:
            state = admin.instance(instance)["state"]
            valid = {t["event"] for t in described["transitions"]
                     if state in (t["from"] if isinstance(t["from"], list) else [t["from"]])}
            for event in described["events"]:
                found += [(instance, event["name"], event["data"])] * (3 if event["name"] in valid else 1)
    assert len(found) > 30
    return found


def test_events_with_arbitrary_data_never_get_a_server_error(
        fuzz_server: TollgateServer, targets: list[tuple[str, str, dict[str, Any]]]) -> None:
    admin = fuzz_server.client("admin")

    @settings(max_examples=EVENT_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target=st.sampled_from(targets), draw=st.data(), dry_run=st.booleans())
    def fire(target: tuple[str, str, dict[str, Any]], draw: st.DataObject, dry_run: bool) -> None:
        instance, event, schema = target
        data = draw.draw(shaped(schema) | event_data(nul=True), label="data")
        query = "?dry_run=true" if dry_run else ""
        response = admin.post(f"/instances/{instance}/events{query}", json={"event": event, "data": data})
        _count(fuzz_server, "events", response.status_code)
        assert response.status_code < 500, (instance, event, data, response)
        assert response.status_code in (200, 400, 409, 422), (instance, event, data, response)

    fire()


# ── clocks, usage months, deposits and cursors of any year or shape ─────────────────────────────

def timestamps() -> st.SearchStrategy[str]:
    """RFC 3339 texts of any year 1–9999 and offset ±23:59, the edges of each more often."""
    years = st.integers(1, 9999) | st.sampled_from([1, 1999, 2000, 2199, 2200, 9998, 9999])
    offsets = st.sampled_from(["Z", "+00:00", "+09:00", "+14:00", "-14:00", "+23:59", "-23:59"])
    def text(y: int, mo: int, d: int, h: int, mi: int, sec: int, off: str) -> str:
        return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}{off}"
    return st.builds(text, years, st.integers(1, 12), st.integers(1, 31), st.integers(0, 23),
                     st.integers(0, 59), st.integers(0, 59), offsets)


def months() -> st.SearchStrategy[str]:
    years = st.integers(0, 9999) | st.sampled_from([1999, 2000, 2199, 2200, 9999])
    return st.builds(lambda y, m: f"{y:04d}-{m:02d}", years, st.integers(1, 12))


def cursors() -> st.SearchStrategy[str]:
    """Base64 of anything: JSON like a real cursor's (naive, far, nested), other JSON, raw bytes."""
    def encode(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    shaped = st.builds(lambda when, ident: json.dumps([when, ident]), timestamps()
                       | st.sampled_from(["2026-01-01T00:00:00", "2026-01-01T00:00:00+00:00"]),
                       st.text(max_size=10) | st.integers())
    deep = st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 1500))  # 4,000 characters in base64
    anything = st.recursive(st.none() | st.integers() | st.text(max_size=5),
                            lambda inner: st.lists(inner, max_size=3), max_leaves=6).map(json.dumps)
    return (st.builds(encode, (shaped | deep | anything).map(str.encode) | st.binary(max_size=40))
            | st.text(max_size=40))


@pytest.fixture(scope="module")
def billing(fuzz_server: TollgateServer) -> dict[str, str]:
    """An account on a clock with an issued invoice, for the deposits and usage months below."""
    admin = fuzz_server.client("admin")
    clock = admin.clock("2026-10-15T10:00:00+09:00")
    account = admin.signup(clock=clock, member_type="business")
    issued = admin.create("invoice", {"account": account, "usage_month": "2026-09"})["id"]
    admin.fire(issued, "add_usage", {"amount": 5000})
    admin.ok("POST", f"/clocks/{clock}/advance", json={"to": "2026-10-20T12:00:00+09:00"})
    return {"account": account, "invoice": issued}


def test_clocks_months_deposits_and_cursors_of_any_year_or_shape_never_get_a_server_error(
        fuzz_server: TollgateServer, billing: dict[str, str]) -> None:
    admin = fuzz_server.client("admin")

    def call(method: str, path: str, body: Any = None) -> Any:
        response = admin.call(method, path, json=body)
        _count(fuzz_server, "inputs", response.status_code)
        assert response.status_code < 500, (method, path, body, response)
        return response

    @settings(max_examples=INPUT_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(now=timestamps(), to=timestamps(), month=months(), deposited_at=timestamps(),
           amount=st.integers(-1, MAX_AMOUNT + 1) | st.sampled_from(ODD_INTEGERS), cursor=cursors(),
           depth=st.integers(MAX_JSON_DEPTH - 2, 1100))
    def odd(now: str, to: str, month: str, deposited_at: str, amount: int, cursor: str, depth: int) -> None:
        clock = call("POST", "/clocks", {"now": now})
        if clock.status_code == 201:
            clock_id = clock.get_json()["id"]
            signup = call("POST", "/workflows/signup/instances", {"context": {}, "clock": clock_id})
            assert signup.status_code == 201, (now, signup)
            advanced = call("POST", f"/clocks/{clock_id}/advance", {"to": to})
            assert advanced.status_code in (200, 400, 422), (now, to, advanced)
        invoice = call("POST", "/workflows/invoice/instances",
                       {"context": {"account": billing["account"], "usage_month": month}})
        assert invoice.status_code in (201, 400, 409), (month, invoice)
        call("POST", f"/instances/{billing['invoice']}/events?dry_run=true",
             {"event": "deposit", "data": {"amount": amount, "deposited_at": deposited_at}})
        listed = call("GET", f"/instances?limit=2&cursor={quote(cursor, safe='')}")
        assert listed.status_code in (200, 400), (cursor, listed)
        deep = "[" * depth + "]" * depth  # level 1 is the body, 2 its data, 3 the outermost array
        body = admin.call("POST", f"/instances/{billing['invoice']}/events?dry_run=true", data=(
            '{"event": "deposit", "data": {"amount": 1, "deposited_at": "2026-10-16T10:00:00+09:00", "x": '
            + deep + "}}"), content_type="application/json")
        _count(fuzz_server, "inputs", body.status_code)
        assert body.status_code == (200 if depth + 2 <= MAX_JSON_DEPTH else 400), (depth, body)

    odd()


# ── NUL characters (PostgreSQL text and JSONB cannot hold U+0000) ──────────────────────────────

NUL_REQUESTS = [
    ("GET", "/instances/a%00b", None),
    ("GET", "/instances?state=a%00", None),
    ("GET", "/notifications?instance=%00", None),
    ("GET", "/clocks/%00", None),
    ("POST", "/workflows/signup/instances", {"context": {"a\x00": 1}}),
    ("POST", "/instances/{account}/events", {"event": "select_type", "data": {"q\x00": 1}}),
]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_nul_characters_are_refused_not_a_server_error(backend: str, start_server: StartServer) -> None:
    server = start_server(backend)
    admin = server.client("admin")
    account = admin.create("signup")["id"]
    answers = {}
    for method, path, body in NUL_REQUESTS:
        answers[(method, path)] = admin.call(method, path.format(account=account), json=body).status_code
    assert all(status == 400 for status in answers.values()), answers
