"""API fuzzing from the server's own `/openapi.json`: no request, however odd, gets a 5xx.

Two fuzzers against one real server:
- schemathesis generates requests for every operation of the OpenAPI description (bodies from
  the request schemas, query parameters, headers, path ids), with the admin token;
- a hypothesis fuzzer fires every event each workflow declares, with arbitrary JSON data, at
  instances of that workflow in several states — the event data is an open `object` in the API
  description, so this reaches the guards and actions that schemathesis cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from helpers.server import Client, StartServer, TollgateServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 50
EVENT_EXAMPLES = 300


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzz_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[TollgateServer]:
    from e2e.conftest import running

    with running(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}")) as server:
        yield server


@pytest.fixture(scope="module")
def openapi(fuzz_server: TollgateServer) -> Any:
    document = fuzz_server.client("viewer").ok("GET", "/openapi.json")
    assert document["openapi"].startswith("3.1")
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


schema = schemathesis.pytest.from_fixture("openapi")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(
        case: Any, fuzz_server: TollgateServer, http_session: requests.Session) -> None:
    response = case.call(base_url=fuzz_server.url, session=http_session, timeout=30,
                         headers={"Authorization": f"Bearer {fuzz_server.tokens['admin']}"})
    case.validate_response(response, checks=[not_a_server_error])


# ── events with arbitrary data on instances in several states ────────────────────────────────

NUL = "\x00"
WORDS = ["amount", "method", "code", "email", "country", "member_type", "birth_date", "reason",
         "deposited_at", "password", "partner", "card_type", "service_area"]


def on_postgres(server: TollgateServer) -> bool:
    return server.database_url.startswith("postgresql")


def event_data(*, nul: bool) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects keyed by data field names or anything, with odd values at any depth."""
    text = st.text(st.characters(exclude_characters=None if nul else NUL), max_size=20)
    leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | text
              | st.sampled_from(["", "KR", "credit_card", "2026-10-15", "2026-10-15T23:00:00+09:00",
                                 "25:61", "x@y.z"]))
    json = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(text, inner, max_size=3), max_leaves=8)
    return st.dictionaries(text | st.sampled_from(WORDS), json, max_size=4)


def _instances(client: Client) -> dict[str, list[str]]:
    """Instances of every workflow, several of them well along their way."""
    clock = client.clock("2026-10-15T10:00:00+09:00")
    fresh = client.create("signup", clock=clock)["id"]
    halfway = client.create("signup", clock=clock)["id"]
    client.fire(halfway, "select_type", {"country": "KR", "member_type": "business"})
    client.fire(halfway, "submit_email", {"email": f"{halfway}@example.com"})
    account = client.signup(clock=clock)
    pm = client.create("payment_method", {"account": account, "channel": "mobile"})["id"]
    active_pm = client.register_card(account)
    offered = client.create("credit", {"account": account})["id"]
    invoice = client.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    issued = client.create("invoice", {"account": account, "usage_month": "2026-09"})["id"]
    client.fire(issued, "add_usage", {"amount": 5000})
    client.ok("POST", f"/clocks/{clock}/advance", json_body={"to": "2026-10-20T12:00:00+09:00"})
    return {"signup": [fresh, halfway, account], "payment_method": [pm, active_pm],
            "credit": [offered], "invoice": [invoice, issued]}


@pytest.fixture(scope="module")
def targets(fuzz_server: TollgateServer) -> list[tuple[str, str]]:
    """(instance, event) pairs: every declared event of each workflow on each of its instances."""
    admin = fuzz_server.client("admin")
    by_workflow = _instances(admin)
    pairs = []
    for workflow, ids in by_workflow.items():
        events = admin.ok("GET", f"/workflows/{workflow}")["events"]
        names = list(events) if isinstance(events, dict) else [e["name"] for e in events]
        pairs += [(instance, event) for instance in ids for event in names]
    assert len(pairs) > 30
    return pairs


def test_events_with_arbitrary_data_never_get_a_server_error(
        fuzz_server: TollgateServer, targets: list[tuple[str, str]]) -> None:
    admin = fuzz_server.client("admin")

    @settings(max_examples=EVENT_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target=st.sampled_from(targets), data=event_data(nul=True),
           dry_run=st.booleans())
    def fire(target: tuple[str, str], data: dict[str, Any], dry_run: bool) -> None:
        instance, event = target
        query = "?dry_run=true" if dry_run else ""
        response = admin.post(f"/instances/{instance}/events{query}", {"event": event, "data": data})
        assert response.status < 500, (instance, event, data, response)
        assert response.status in (200, 400, 409, 422), (instance, event, data, response)

    fire()


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
        answers[(method, path)] = admin.call(method, path.format(account=account), json_body=body).status
    assert all(status == 400 for status in answers.values()), answers
