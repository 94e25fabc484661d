"""`tollgate rules check | activate | init`, and the loading of a rules file with every problem printed.

Kept out of service/cli.py (which registers it in `COMMANDS`) so each file holds one concern; the
other subcommands reuse `load_rules` and `print_problems` from here.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from tollgate.bundled import default_rules_path
from tollgate.service.application.policy_files import load_policy_file
from tollgate.workflows.exceptions import BadRequest, Problem, RulesError
from tollgate.workflows.policy import Policy

__all__ = ["load_rules", "print_problems", "register_rules"]

Subparsers = Any  # argparse's _SubParsersAction is private; its API is add_parser().


def print_problems(problems: list[Problem], path: str) -> None:
    """Print every problem of the rules file at `path`, then one line that counts them."""
    for problem in problems:
        print(problem)
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"{path}: {len(problems)} {noun}; the rules cannot be activated.")


def load_rules(path: str) -> Policy | None:
    """The policy at `path`, or None after printing every problem it has."""
    try:
        return load_policy_file(path)
    except RulesError as error:
        print_problems(error.problems, path)
        return None


# ── tollgate rules check [PATH] ──────────────────────────────────────────────────────────────

def _rules_check(args: argparse.Namespace) -> int:
    """Validate a rules file the way `PUT /rules` would; list every problem, or summarise it."""
    path = args.path or default_rules_path()
    policy = load_rules(path)
    if policy is None:
        return 1
    rules = list(policy.rules.values())
    guards = sum(1 for r in rules if r.kind == "guard")
    print(f"{path}: OK — version {policy.version}, {len(rules)} rules ({guards} guards, "
          f"{len(rules) - guards} routes), {len(policy.timers)} timers")
    return 0


# ── tollgate rules activate PATH [--database URL] ─────────────────────────────────────────────

def _rules_activate(args: argparse.Namespace) -> int:
    """Import a rules file on purpose: activate it as a new version unless it is active already.

    Running servers and workers judge the next event by it (they read the active version from the
    database); a restart does not import the file again unless it changes."""
    from tollgate.service.bootstrap import build_runtime
    from tollgate.service.settings import Settings

    effective_at = None
    if args.effective_at is not None:
        effective_at = _instant(args.effective_at)
        if effective_at is None:
            print(f"tollgate: --effective-at '{args.effective_at}' is not an RFC 3339 timestamp with an "
                  "offset; write it like 2026-12-01T00:00:00+09:00.", file=sys.stderr)
            return 2
    runtime = build_runtime(Settings.from_environment(database_url=args.database), batch_workers=1)
    try:
        runtime.db.migrate()
        version, imported = runtime.import_rules_file(args.path, force=True, actor="cli",
                                                      effective_at=effective_at)
        if imported and effective_at is None:
            runtime.replan_timers()  # armed real-time timers, under the version now in effect
    except RulesError as error:
        print_problems(error.problems, args.path)
        return 1
    except BadRequest as error:  # --effective-at not in the future
        print(f"tollgate: --effective-at: {error.message}", file=sys.stderr)
        return 2
    finally:
        runtime.db.dispose()
    state = "activated as" if imported else "is already the active"
    when = f", in effect from {version.as_dict()['effective_at']}" if imported else ""
    print(f"{args.path}: {state} rules version {version.id} ({version.sha256[:12]}){when} on database "
          f"{runtime.db.url.split('@')[-1]}")
    return 0


def _instant(text: str) -> datetime | None:
    """An aware instant from RFC 3339 text with an offset, or None."""
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None and "T" in text.upper() else None


# ── tollgate rules init [PATH] ───────────────────────────────────────────────────────────────

def _rules_init(args: argparse.Namespace) -> int:
    """Write an editable copy of the bundled policy whose `$schema` line points at the installed schema."""
    from tollgate.bundled import editable_rules

    target = Path(args.path)
    if target.exists() and not args.force:
        print(f"tollgate: {target} exists already; pass --force to replace it with the bundled policy.",
              file=sys.stderr)
        return 1
    try:
        target.write_text(editable_rules(), encoding="utf-8")
    except OSError as error:
        print(f"tollgate: The file {target} cannot be written: {error.strerror}.", file=sys.stderr)
        return 1
    print(f"{target}: the bundled policy, ready to edit; check it with `tollgate rules check {target}`.")
    return 0


# ── tollgate rules diff OLD NEW [--json] [--database URL] ────────────────────────────────────

#: Exit codes of `rules diff`, as diff(1) has them.
DIFF_SAME, DIFF_CHANGED, DIFF_TROUBLE = 0, 1, 2


def _rules_diff(args: argparse.Namespace) -> int:
    """Compare two policies (files, or versions of a database) in policy terms."""
    import json

    from tollgate.workflows.exceptions import TollgateError
    from tollgate.workflows.policy_diff import ARROW, diff_policies

    sides: list[Policy] = []
    history: Any = None
    try:
        for argument in (args.old, args.new):
            if Path(argument).exists() or not argument.strip().isdigit():
                policy = load_rules(argument)
                if policy is None:
                    return DIFF_TROUBLE
            else:
                if history is None:
                    history = _history(args.database)
                policy = history.policy(int(argument))
            sides.append(policy)
    except TollgateError as error:
        print(f"tollgate rules diff: {error}", file=sys.stderr)
        return DIFF_TROUBLE
    finally:
        if history is not None:
            history.db.dispose()
    report = diff_policies(sides[0], sides[1])
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        for line in report.lines():
            print(line)
        if not report.empty:
            print()
        print(f"{args.old} {ARROW} {args.new}: {report.summary()}")
    return DIFF_SAME if report.empty else DIFF_CHANGED


def _history(database: str | None) -> Any:
    from tollgate.service.application.rules_history import open_history
    from tollgate.service.settings import Settings

    overrides: dict[str, Any] = {"database_url": database} if database else {}  # None hides the env's
    return open_history(Settings.from_environment(**overrides).database_url)


def _register_diff(actions: Subparsers) -> None:
    diff = actions.add_parser(
        "diff", help="what changed in policy terms between two rules files or versions",
        description="Compare two policies in policy terms: each param (old → new), each rule added, "
        "removed, switched off or on, or with a changed expression, message or events, each timer "
        "schedule, and the workflow events and transitions they touch. Comments, key order, white "
        "space and quoting are not changes. OLD and NEW are rules files, or version numbers of a "
        "database (an integer that is not an existing file). Exit status as diff(1): 0 the same "
        "policy, 1 changes, 2 trouble (a bad file, an unknown version, an unreadable database).")
    diff.add_argument("old", metavar="OLD", help="the rules file or version number before")
    diff.add_argument("new", metavar="NEW", help="the rules file or version number after")
    diff.add_argument("--json", action="store_true", help="print the report as JSON (as GET /rules/diff)")
    diff.add_argument("--database", metavar="URL",
                      help="for version numbers: SQLAlchemy URL (default: $TOLLGATE_DATABASE_URL or "
                      "sqlite:///tollgate.db)")
    diff.set_defaults(handler=_rules_diff)


def register_rules(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("rules", help="work with rules files")
    actions = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a rules file and report every problem",
                               description="Validate a rules file; print every problem with file, "
                               "line, column and path, and exit 1 if there is any.")
    check.add_argument("path", nargs="?", metavar="PATH",
                       help="the rules file (default: $TOLLGATE_RULES, ./rules.yaml or the bundled one)")
    check.set_defaults(handler=_rules_check)
    activate = actions.add_parser(
        "activate", help="activate a rules file as a new version, now or at --effective-at",
        description="Validate a rules file and activate it as a new rules version on the database "
        "(unless it is the active version already), as PUT /rules does; running servers and workers "
        "judge the next event by it. A start imports the file by itself only when it changed since "
        "its last import.")
    activate.add_argument("path", metavar="PATH", help="the rules file")
    activate.add_argument("--database", metavar="URL",
                          help="SQLAlchemy URL (default: $TOLLGATE_DATABASE_URL or sqlite:///tollgate.db)")
    activate.add_argument("--effective-at", metavar="T",
                          help="schedule the version: it judges events and timers from the instant T "
                          "(RFC 3339 with an offset, after now) on, the earlier version until then")
    activate.set_defaults(handler=_rules_activate)
    init = actions.add_parser(
        "init", help="write an editable copy of the bundled rules",
        description="Write the bundled policy to PATH (default rules.yaml) with a `$schema` line that "
        "points at the installed JSON Schema, so editors complete and check it outside a checkout.")
    init.add_argument("path", nargs="?", default="rules.yaml", metavar="PATH",
                      help="where to write it (default: rules.yaml)")
    init.add_argument("--force", action="store_true", help="replace PATH if it exists")
    init.set_defaults(handler=_rules_init)
    _register_diff(actions)
    _register_test(actions)
    _register_impact(actions)


# ── tollgate rules test [PATH…] [--rules FILE] [--junit FILE] [--coverage] [--fail-under N] ──

DEFAULT_SCENARIOS = "tests/policy"


def _rules_test(args: argparse.Namespace) -> int:
    """Run policy scenarios on the real runtime in memory; exit 1 if one fails, 2 if a file is bad."""
    from tollgate.service.application.scenarios import load_scenarios, run_files, scenario_files

    paths = args.paths or ([DEFAULT_SCENARIOS] if Path(DEFAULT_SCENARIOS).is_dir() else [])
    if not paths:
        print(f"tollgate: No scenario files given and there is no {DEFAULT_SCENARIOS}/ here; name the "
              "files or folders to run.", file=sys.stderr)
        return 2
    files, problems = [], []
    for path in scenario_files(paths):
        try:
            files.append(load_scenarios(path))
        except RulesError as error:
            problems.extend(error.problems)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} {'problem' if len(problems) == 1 else 'problems'} in scenario files; "
              "nothing was run.")
        return 2
    if not files:
        print(f"tollgate: No scenario files (*.yaml) under {', '.join(map(str, paths))}.", file=sys.stderr)
        return 2
    rules = args.rules or default_rules_path()
    policy = load_rules(rules)
    if policy is None:
        return 2
    results = run_files(files, rules)
    for result in results:
        print(f"{'✓' if result.passed else '✗'} {result.file}: {result.name}")
        for failure in result.failures:
            print(f"    {failure}")
    failed = sum(1 for r in results if not r.passed)
    print(f"{len(results) - failed} passed, {failed} failed ({len(results)} scenarios in {len(files)} "
          f"files, rules {rules})")
    if args.junit:
        try:
            _write_junit(args.junit, results)
        except OSError as error:
            print(f"tollgate: The file {args.junit} cannot be written: {error.strerror}.", file=sys.stderr)
            return 2
    if args.coverage or args.fail_under is not None or args.coverage_json:
        covered = _coverage(args, policy, results)
        if covered is None:
            return 2
        if not covered:
            return 1
    return 1 if failed else 0


def _coverage(args: argparse.Namespace, policy: Policy, results: list[Any]) -> bool | None:
    """Print the coverage (with --coverage or --fail-under), write --coverage-json; False when
    a share is under --fail-under, None when the JSON file cannot be written."""
    import json

    from tollgate.service.application.scenario_coverage import measure

    coverage = measure(policy, [r.seen for r in results])
    if args.coverage_json:
        try:
            Path(args.coverage_json).write_text(
                json.dumps(coverage.as_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            print(f"tollgate: The file {args.coverage_json} cannot be written: {error.strerror}.",
                  file=sys.stderr)
            return None
    print()
    if args.coverage:
        for line in coverage.report():
            print(line)
    else:
        for line in coverage.summary():
            print(line)
    below = coverage.below(args.fail_under) if args.fail_under is not None else []
    if below:
        shares = ", ".join(f"{kind} {coverage.percent(kind):.1f}%" for kind in below)
        print(f"Coverage is under {args.fail_under:g}%: {shares}.")
        if not args.coverage:
            print("Never exercised:")
            for gap in coverage.never_exercised():
                print(f"  {gap}")
    return not below


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentage from 0 to 100")
    return value


def _write_junit(path: str, results: list[Any]) -> None:
    """JUnit XML, one test suite per scenario file, one test case per scenario."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="tollgate rules test")
    suites: dict[str, ET.Element] = {}
    for result in results:
        suite = suites.get(result.file)
        if suite is None:
            suite = suites[result.file] = ET.SubElement(root, "testsuite", name=result.file)
        case = ET.SubElement(suite, "testcase", classname=result.file, name=result.name,
                             file=result.file, line=str(result.line or 0))
        if result.failures:
            failure = ET.SubElement(case, "failure", message=str(result.failures[0]))
            failure.text = "\n".join(str(f) for f in result.failures)
    for element in [root, *suites.values()]:
        cases = element.iter("testcase")
        listed = list(cases)
        element.set("tests", str(len(listed)))
        element.set("failures", str(sum(1 for c in listed if c.find("failure") is not None)))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _register_test(actions: Subparsers) -> None:
    test = actions.add_parser(
        "test", help="run policy scenarios on a test clock",
        description="Run policy scenario files (schemas/scenario.schema.json) on the real runtime in "
        "memory, each scenario on its own test clock; print each with ✓ or ✗ and every failed "
        "expectation as file:line. Exit 1 if a scenario fails or coverage is under --fail-under, 2 if "
        "a scenario file is bad.")
    test.add_argument("paths", nargs="*", metavar="PATH",
                      help=f"scenario files or folders (default: {DEFAULT_SCENARIOS}/ if it exists)")
    test.add_argument("--rules", metavar="FILE",
                      help="the rules file (default: $TOLLGATE_RULES, ./rules.yaml or the bundled one)")
    test.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to FILE")
    test.add_argument("--coverage", action="store_true",
                      help="report each rule (seen holding and failing, per event), transition (taken) "
                      "and timer (fired), what was never exercised, and a percentage of each")
    test.add_argument("--fail-under", type=_percent, metavar="N",
                      help="exit 1 when the rules, transitions or timers covered are under N percent")
    test.add_argument("--coverage-json", metavar="FILE",
                      help="write the coverage as JSON to FILE (for `tollgate diagram --coverage`)")
    test.set_defaults(handler=_rules_test)


# ── tollgate rules impact CANDIDATE [--database URL] [--since T] [--json] ───────────────────

def _rules_impact(args: argparse.Namespace) -> int:
    """Replay the recorded attempts and re-plan the live timers under a candidate rules file."""
    import json
    from datetime import UTC, datetime

    from tollgate.service.application.impact import Impact, parse_since
    from tollgate.workflows.exceptions import TollgateError

    candidate = load_rules(args.candidate)
    if candidate is None:
        return DIFF_TROUBLE
    history: Any = None
    try:
        since = parse_since(args.since, datetime.now(UTC))
        history = _history(args.database)
        report = Impact(history.db, history).report(candidate, since, name=args.candidate)
    except TollgateError as error:
        print(f"tollgate rules impact: {error}", file=sys.stderr)
        return DIFF_TROUBLE
    finally:
        if history is not None:
            history.db.dispose()
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        for line in report.lines(candidate.zone):
            print(line)
    if not report.trusted:
        print("tollgate rules impact: replay did not reproduce every recorded verdict or due time "
              "(listed above); the report cannot be trusted.", file=sys.stderr)
        return DIFF_TROUBLE
    return DIFF_CHANGED if report.changed else DIFF_SAME


def _register_impact(actions: Subparsers) -> None:
    impact = actions.add_parser(
        "impact", help="what a candidate rules file would change for recorded attempts and live timers",
        description="Looking back: replay every attempt recorded in the window under the candidate, "
        "with the inputs it was judged on, and count the verdicts that would change by workflow, "
        "event and rule (replaying under the version that judged them must reproduce every recorded "
        "verdict: the self-check). Looking ahead: the pending timers of live instances whose due "
        "time would move, appear or disappear. Read only. Exit status: 0 nothing would change, "
        "1 changes, 2 trouble (a bad file, an unreadable database, a failed self-check).")
    impact.add_argument("candidate", metavar="CANDIDATE", help="the candidate rules file")
    impact.add_argument("--database", metavar="URL",
                        help="SQLAlchemy URL (default: $TOLLGATE_DATABASE_URL or sqlite:///tollgate.db)")
    impact.add_argument("--since", metavar="T",
                        help="the window: a duration (30d, 12h), an RFC 3339 instant, or 'all' "
                        "(default: 30d)")
    impact.add_argument("--json", action="store_true",
                        help="print the report as JSON (as POST /rules/impact)")
    impact.set_defaults(handler=_rules_impact)
