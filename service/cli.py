"""The `tollgate` command line: one small function per subcommand, registered in `COMMANDS`.

To add a subcommand (`serve`, `worker`, `demo`, `bench`, …) write `_register_NAME(subparsers)`
that adds its parser and sets `handler=` to a function `(args) -> exit code`, and list it in
`COMMANDS`. Deliberate errors (`TollgateError`) print as one sentence on stderr; their exit code
comes from `EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workflows.diagrams import RENDERERS, render, workflow_diagram
from workflows.exceptions import NotFound, Problem, RulesError, TollgateError
from workflows.policy import Policy, load_policy_file

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction is private; its API is add_parser().

#: Exit codes: 0 success, 1 something is wrong with the input (invalid rules, Graphviz missing),
#: 2 a usage error (unknown workflow or state, like argparse's own usage errors).
EXIT_CODES: dict[type[TollgateError], int] = {NotFound: 2}
DIAGRAM_FORMATS = (*RENDERERS, "svg")
SUFFIX_FORMATS = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot",
                  ".svg": "svg"}


def default_rules_path() -> str:
    """`$TOLLGATE_RULES`, else `rules.yaml` in the working directory (SPEC §5)."""
    return os.environ.get("TOLLGATE_RULES") or "rules.yaml"


def _print_problems(problems: list[Problem], path: str) -> None:
    for problem in problems:
        print(problem)
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"{path}: {len(problems)} {noun}; the rules cannot be activated.")


def _load_rules(path: str) -> Policy | None:
    """The policy at `path`, or None after printing every problem it has."""
    try:
        return load_policy_file(path)
    except RulesError as error:
        _print_problems(error.problems, path)
        return None


# ── tollgate rules check [PATH] ──────────────────────────────────────────────────────────────

def _rules_check(args: argparse.Namespace) -> int:
    """Validate a rules file the way `PUT /rules` would; list every problem, or summarise it."""
    path = args.path or default_rules_path()
    policy = _load_rules(path)
    if policy is None:
        return 1
    rules = list(policy.rules.values())
    guards = sum(1 for r in rules if r.kind == "guard")
    print(f"{path}: OK — version {policy.version}, {len(rules)} rules ({guards} guards, "
          f"{len(rules) - guards} routes), {len(policy.timers)} timers")
    return 0


def _register_rules(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("rules", help="work with rules files")
    actions = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a rules file and report every problem",
                               description="Validate a rules file; print every problem with file, "
                               "line, column and path, and exit 1 if there is any.")
    check.add_argument("path", nargs="?", metavar="PATH",
                       help="the rules file (default: $TOLLGATE_RULES or rules.yaml)")
    check.set_defaults(handler=_rules_check)


# ── tollgate diagram WORKFLOW ────────────────────────────────────────────────────────────────

def _diagram(args: argparse.Namespace) -> int:
    """Write one workflow's diagram to stdout or `-o FILE`."""
    rules = args.rules or default_rules_path()
    policy = _load_rules(rules)
    if policy is None:
        return 1
    fmt = args.format or SUFFIX_FORMATS.get(Path(args.output or "").suffix.lower(), "mermaid")
    diagram = workflow_diagram(policy, args.workflow, highlight=args.state)
    if fmt == "svg":
        from service.svg import render_svg  # runs a subprocess; only needed for this format

        output = render_svg(render(diagram, "dot"))
    else:
        output = render(diagram, fmt).encode("utf-8")
    if args.output:
        try:
            Path(args.output).write_bytes(output)
        except OSError as error:
            print(f"tollgate: The file {args.output} cannot be written: {error.strerror}.",
                  file=sys.stderr)
            return 1
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    return 0


def _register_diagram(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "diagram", help="draw a workflow as Mermaid, Graphviz DOT or SVG",
        description="Draw a workflow: rule ids on guarded transitions, timed events marked ⏱, "
        "and --state highlighted.")
    parser.add_argument("workflow", metavar="WORKFLOW", help="signup, payment_method, credit or invoice")
    parser.add_argument("--format", "-f", choices=DIAGRAM_FORMATS,
                        help="output format (default: from the -o suffix, else mermaid)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("--state", metavar="S", help="highlight the state S")
    parser.add_argument("--rules", metavar="PATH",
                        help="the rules file (default: $TOLLGATE_RULES or rules.yaml)")
    parser.set_defaults(handler=_diagram)


# ── the table and the entry point ────────────────────────────────────────────────────────────

COMMANDS: dict[str, Callable[[Subparsers], None]] = {
    "rules": _register_rules,
    "diagram": _register_diagram,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tollgate", description="Account-lifecycle workflows driven by rules.yaml.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS.values():
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `tollgate` command; returns the exit code (also for argparse's usage errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help and usage errors: argparse has printed why
        return stop.code if isinstance(stop.code, int) else 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except TollgateError as error:
        print(f"tollgate: {error}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), 1)


if __name__ == "__main__":
    sys.exit(main())
