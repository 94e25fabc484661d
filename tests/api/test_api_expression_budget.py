"""The expression budget over HTTP: rules that crashed, panicked or froze a worker are refused
with 422 and the old version keeps serving.

Each reproduction of issue 11 item 4 that crashed the process before the budget (a segfault in
the CEL engine's Rust parser or evaluator, or a pyo3 PanicException, a BaseException Flask does
not catch) runs in a subprocess, so this test run survives the old behaviour and sees it fail.
The budget itself, rule by rule, is tests/core/test_expression_budget.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_expression_budget import FOUR_HUNDRED, PARENS_70000, guard_line, with_guard
from tests.helpers.client import Client
from tests.helpers.paths import ROOT

YAML = {"Content-Type": "application/yaml"}
SELECT_TYPE = {"country": "KR", "member_type": "business"}
SUM_30000 = " + ".join(["1"] * 30_000) + " == 30000"
MACRO_OVER_A_LONG_SUM = "[1].all(x, " + " + ".join(["x"] * 20_000) + " > 0)"


# ── the reproductions, through the API, each in its own process ─────────────────────────────────

_API_SCRIPT = """
import json, sys
args = json.load(sys.stdin)
sys.path.insert(0, args["root"])
from tests.helpers.app import make_app
from tests.helpers.client import Client
client = Client.wsgi(make_app(args["database"]).test_client())  # as admin
yaml_body = {"Content-Type": "application/yaml"}
out = {}
response = client.post("/rules/validate", data=args["rules"], headers=yaml_body)
out["validate"] = [response.status_code, response.get_json()]
response = client.put("/rules", data=args["rules"], headers=yaml_body)
out["put"] = [response.status_code, response.get_json()]
out["version"] = client.get("/rules").get_json()["version"]
created = client.post("/workflows/signup/instances", json={"context": {}}).get_json()
response = client.post(f"/instances/{created['id']}/events",
                       json={"event": "select_type", "data": args["data"]})
out["fire"] = response.status_code
print(json.dumps(out))
"""


def run_api(tmp_path: Path, rules: str) -> dict[str, Any]:
    """POST /rules/validate, PUT /rules, then fire an event, with the Flask test client in a child
    process over a fresh SQLite file; the child's crash is a test failure, not the run's."""
    args = {"root": str(ROOT), "database": f"sqlite:///{tmp_path / 'tollgate.db'}", "rules": rules,
            "data": SELECT_TYPE}
    done = subprocess.run([sys.executable, "-c", _API_SCRIPT], input=json.dumps(args), text=True,
                          capture_output=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"the worker died ({done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("guard", "message"), [
    pytest.param(SUM_30000, "characters long", id="30000-term-sum-segfaulted-the-parser"),
    pytest.param(PARENS_70000, "characters long", id="70000-parentheses-raised-a-rust-panic"),
    pytest.param(MACRO_OVER_A_LONG_SUM, "characters long",
                 id="macro-over-a-long-sum-segfaulted-the-first-event"),
])
def test_an_expression_that_crashed_a_worker_is_refused_with_422_and_the_old_version_serves(
        tmp_path: Path, guard: str, message: str) -> None:
    result = run_api(tmp_path, with_guard(guard))
    for step in ("validate", "put"):
        status, body = result[step]
        assert status == 422, body
        [error] = body["errors"]
        assert error["path"] == "$.rules.country_supported.guard"
        assert error["line"] == guard_line() and error["column"] is not None
        assert message in error["message"]
    assert result["version"] == 1
    assert result["fire"] == 200  # the bundled guard still judges, in a live process


# ── through the Flask test client, in process, on both databases ────────────────────────────────


def test_validate_answers_422_for_text_that_made_the_engine_panic(api: Client) -> None:
    response = api.post("/rules/validate", data=with_guard(PARENS_70000), headers=YAML,
                        role="policy_editor")
    assert response.status_code == 422
    [error] = response.get_json()["errors"]
    assert (error["path"], error["line"]) == ("$.rules.country_supported.guard", guard_line())


def test_put_of_a_costly_or_non_boolean_guard_is_422_and_the_old_version_stays(api: Client) -> None:
    before = api.get("/rules").get_json()["version"]
    for rules in (with_guard("params.big.all(x, params.big.all(y, x != y || x == y))", big=FOUR_HUNDRED),
                  with_guard("data.country")):
        response = api.put("/rules", data=rules, headers=YAML, role="policy_editor")
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["errors"][0]["path"] == "$.rules.country_supported.guard"
    assert api.get("/rules").get_json()["version"] == before
    account = api.create("signup")["id"]
    api.fire(account, "select_type", SELECT_TYPE)
