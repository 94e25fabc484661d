"""`tollgate bench`: the JSON it writes, wrk's output parsed, the HTTP baseline app (no real load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import suite
from bench.echo import app as echo_app
from bench.http import LUA, TOKEN, WrkResult, parse_wrk
from tollgate.service.cli import main

REQUIRED = {"name", "value", "unit", "baseline", "ratio", "goal", "met"}

#: Recorded: wrk 4.1 against bench/echo.py, with bench/http.py's Lua script.
WRK_ECHO = """\
Running 1s test @ http://127.0.0.1:37419
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.28ms    3.13ms  26.68ms   89.24%
    Req/Sec     1.45k   298.87     1.88k    75.00%
  Latency Distribution
     50%    2.16ms
     75%    3.62ms
     90%    6.75ms
     99%   16.79ms
  2917 requests in 1.02s, 518.45KB read
Requests/sec:   2845.88
Transfer/sec:    505.81KB
LUA sent=2922 ok=2917 other=0
"""

#: Recorded against a path the server does not have (every answer a 404).
WRK_NOT_FOUND = """\
Running 1s test @ http://127.0.0.1:37419
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.34ms    2.57ms  21.49ms   89.28%
    Req/Sec     2.25k   608.75     2.91k    80.00%
  Latency Distribution
     50%    1.34ms
     75%    2.40ms
     90%    5.15ms
     99%   14.68ms
  2242 requests in 1.00s, 816.67KB read
  Non-2xx or 3xx responses: 2242
Requests/sec:   2240.84
Transfer/sec:    816.24KB
LUA sent=2247 ok=0 other=2242
"""

#: Microseconds and seconds in one output, socket errors, and no Lua line (a plain wrk run).
WRK_UNITS = """\
Running 10s test @ http://127.0.0.1:8080/healthz
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us    1.10ms   1.20s    97.00%
    Req/Sec    10.10k     1.20k   12.00k    70.00%
  Latency Distribution
     50%  640.00us
     75%  900.50us
     90%    1.50ms
     99%    1.02s
  201234 requests in 10.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
Requests/sec:  20117.30
Transfer/sec:      3.00MB
"""


def test_bench_quick_core_writes_a_json_list_with_the_required_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--only", "core", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) >= REQUIRED, row
        assert isinstance(row["met"], bool)
        assert row["name"].startswith("core.")
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=0.01)
    printed = capsys.readouterr()
    assert "core.invoice.pay_now" in printed.out  # the table
    assert "core: done" in printed.err  # progress goes to stderr


def test_bench_only_refuses_an_unknown_suite(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "core,disk"]) == 2
    assert ("Unknown benchmark disk; choose from core, http, billing, workers, replay, replay_1m, relay"
            in capsys.readouterr().err)


def test_a_suite_that_is_not_there_yet_is_a_not_available_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    suites = dict(suite.SUITES)
    suites["billing"] = ("pending", suite._lazy("bench.no_such_module", "billing_figures"))
    monkeypatch.setattr(suite, "SUITES", suites)
    out = tmp_path / "bench.json"
    assert suite.run(["billing"], json_path=out) == 1
    (row,) = json.loads(out.read_text(encoding="utf-8"))
    assert set(row) >= REQUIRED
    assert row["met"] is False and row["available"] is False and row["value"] is None
    assert "billing: not available" in capsys.readouterr().out


def test_parse_wrk_reads_rate_latency_and_the_lua_counters() -> None:
    result = parse_wrk(WRK_ECHO)
    assert result == WrkResult(requests=2917, seconds=1.02, rps=2845.88,
                               percentiles={50.0: 2.16, 75.0: 3.62, 90.0: 6.75, 99.0: 16.79},
                               non_2xx=0, socket_errors={}, sent=2922, ok=2917, other=0)
    assert result.p99 == 16.79


def test_parse_wrk_counts_non_2xx_responses() -> None:
    result = parse_wrk(WRK_NOT_FOUND)
    assert (result.non_2xx, result.ok, result.other, result.sent) == (2242, 0, 2242, 2247)


def test_parse_wrk_converts_microseconds_and_seconds_to_ms_and_reads_socket_errors() -> None:
    result = parse_wrk(WRK_UNITS)
    assert result.percentiles == pytest.approx({50.0: 0.64, 75.0: 0.9005, 90.0: 1.5, 99.0: 1020.0})
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 7}
    assert (result.requests, result.seconds, result.rps) == (201234, 10.0, 20117.30)
    assert result.ok is None and result.sent is None


def test_parse_wrk_refuses_output_without_latency() -> None:
    with pytest.raises(ValueError, match="with --latency"):
        parse_wrk(WRK_ECHO.replace("     99%   16.79ms\n", ""))


def test_the_baseline_app_answers_its_json_post() -> None:
    client = echo_app.test_client()
    response = client.post("/echo", json={"event": "add_usage", "data": {"amount": 1}},
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.get_json() == {"ok": True, "event": "add_usage"}
    assert client.get("/healthz").status_code == 200


def test_the_wrk_script_posts_the_event_with_its_headers() -> None:
    assert "'{\"event\": \"add_usage\", \"data\": {\"amount\": 1}}'" in LUA
    assert f'wrk.headers["Authorization"] = "Bearer {TOKEN}"' in LUA
    assert 'wrk.headers["Content-Type"] = "application/json"' in LUA


def _month(n: int, rate: float, trigger_us: float, rss: float = 80.0) -> dict[str, object]:
    return {"n": n, "seconds": 1.0, "cpu_seconds": 1.0, "transitions": int(rate), "rate": rate,
            "workers": 2, "peak_rss_mib": rss, "trigger_us": trigger_us,
            "trigger_us_before_after": [trigger_us, trigger_us]}


def test_billing_figures_state_each_month_in_bare_triggers_as_well_as_against_the_goal() -> None:
    from bench.billing import GOAL_RATE, _figures

    figures = {f.name: f for f in _figures([_month(100, 16_000.0, 8.0), _month(1_000, 25_000.0, 10.0)], None)}
    small, big = figures["billing.sqlite.N=100"], figures["billing.sqlite.N=1,000"]
    assert (small.baseline, small.met, big.met) == (GOAL_RATE, False, True)
    cost = figures["billing.sqlite.N=100.cost_in_bare_triggers"]
    assert cost.value == pytest.approx(62.5) and cost.baseline == 8.0 and cost.met is None
    assert cost.ratio == pytest.approx(62.5 / 8.0)
    assert figures["billing.sqlite.N=1,000.cost_in_bare_triggers"].ratio == pytest.approx(40.0 / 10.0)
    assert figures["billing.sqlite.rate_at_large_n"].ratio == pytest.approx(25_000 / 16_000)
    assert "with 2 worker process(es)" in small.note
    assert "billing.sqlite.one_process.N=100" not in figures


def test_the_one_process_month_is_compared_with_the_workers_month_side_by_side() -> None:
    from bench.billing import _figures

    alone = dict(_month(100, 10_000.0, 8.0), workers=1)
    figures = {f.name: f for f in _figures([_month(100, 16_000.0, 8.0), _month(1_000, 15_000.0, 8.0)], None,
                                           alone)}
    one = figures["billing.sqlite.one_process.N=100"]
    assert (one.value, one.baseline, one.met) == (10_000.0, 16_000.0, None)
    assert one.ratio == pytest.approx(10_000 / 16_000)


def test_the_bare_trigger_calibration_times_a_transitions_trigger() -> None:
    from bench.billing import bare_trigger_us

    assert 0.1 < bare_trigger_us(seconds=0.05, rounds=3) < 1_000


def test_the_calibration_of_a_month_on_two_workers_times_the_trigger_in_two_processes_at_once() -> None:
    from bench.billing import bare_trigger_us

    assert 0.1 < bare_trigger_us(seconds=0.05, rounds=3, processes=2) < 1_000


def test_the_calibration_can_be_switched_off_for_instruction_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.billing import bare_trigger_us

    monkeypatch.setenv("TOLLGATE_BENCH_CALIBRATE", "0")
    assert bare_trigger_us(processes=2) == 0.0


CACHEGRIND = """\
desc: I1 cache:         32768 B, 64 B, 8-way associative
cmd: python -m bench.billing --child run
events: Ir
fl=/usr/src/Python/ceval.c
fn=_PyEval_EvalFrameDefault
10 {a}
11 {b}
fl=???
fn=sqlite3VdbeExec
0 {c}
summary: {total}
"""


def test_instructions_per_transition_are_the_difference_of_two_months() -> None:
    from bench.instructions import per_transition, read_cachegrind

    small = read_cachegrind(CACHEGRIND.format(a=600, b=400, c=500, total=1_500))
    large = read_cachegrind(CACHEGRIND.format(a=900, b=700, c=1_300, total=2_900))
    assert small.total == 1_500 and small.functions[("ceval.c", "_PyEval_EvalFrameDefault")] == 1_000
    each, ranked = per_transition(small, large, transitions=10)
    assert each == 140.0
    assert ranked == [("???:sqlite3VdbeExec", 80.0), ("ceval.c:_PyEval_EvalFrameDefault", 60.0)]
    with pytest.raises(ValueError, match="more transitions"):
        per_transition(small, large, transitions=0)
    with pytest.raises(ValueError, match="summary"):
        read_cachegrind("events: Ir\n")
