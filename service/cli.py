"""The `tollgate` command line: one small function per subcommand, registered in `COMMANDS`.

To add a subcommand (`serve`, `worker`, `demo`, `bench`, …) write `_register_NAME(subparsers)`
that adds its parser and sets `handler=` to a function `(args) -> exit code`, and list it in
`COMMANDS`; a larger one lives in its own module (`rules`: service/cli_rules.py). Deliberate
errors (`TollgateError`) print as one sentence on stderr; their exit code comes from `EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollgate import __version__
from tollgate.bundled import default_rules_path
from tollgate.service.cli_rules import load_rules, print_problems, register_rules
from tollgate.service.cli_templates import register_templates
from tollgate.workflows.diagrams import RENDERERS, render, workflow_diagram
from tollgate.workflows.exceptions import NotFound, RulesError, TollgateError

if TYPE_CHECKING:
    from tollgate.service.settings import Settings

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction is private; its API is add_parser().

#: Exit codes: 0 success, 1 something is wrong with the input (invalid rules, Graphviz missing),
#: 2 a usage error (unknown workflow or state, like argparse's own usage errors).
EXIT_CODES: dict[type[TollgateError], int] = {NotFound: 2}
DIAGRAM_FORMATS = (*RENDERERS, "svg")
SUFFIX_FORMATS = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot",
                  ".svg": "svg"}


# ── tollgate diagram WORKFLOW ────────────────────────────────────────────────────────────────

def _diagram(args: argparse.Namespace) -> int:
    """Write one workflow's diagram to stdout or `-o FILE`."""
    rules = args.rules or default_rules_path()
    policy = load_rules(rules)
    if policy is None:
        return 1
    fmt = args.format or SUFFIX_FORMATS.get(Path(args.output or "").suffix.lower(), "mermaid")
    untested = None
    if args.coverage:
        untested = _untested(args.coverage, args.workflow, policy.version)
        if untested is None:
            return 1
    diagram = workflow_diagram(policy, args.workflow, highlight=args.state, untested=untested)
    if fmt == "svg":
        from tollgate.service.svg import render_svg  # runs a subprocess; only needed for this format

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


def _untested(path: str, workflow: str, version: str) -> frozenset[tuple[str, str, str]] | None:
    """The transitions of `workflow` a `rules test --coverage-json` result says no scenario took;
    None after saying why the file cannot serve."""
    import json

    from tollgate.service.application.scenario_coverage import untested_transitions

    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        untested = untested_transitions(result, workflow)
    except OSError as error:
        print(f"tollgate: The coverage result {path} cannot be read: {error.strerror}.", file=sys.stderr)
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        print(f"tollgate: The coverage result {path} is not JSON; write it with `tollgate rules test "
              "--coverage-json FILE`.", file=sys.stderr)
        return None
    except ValueError as error:
        print(f"tollgate: The file {path} cannot mark the diagram: {error}.", file=sys.stderr)
        return None
    if result.get("rules_version") != version:
        print(f"tollgate: note: the coverage result {path} was measured on rules "
              f"{result.get('rules_version')}, the diagram is drawn from rules {version}.", file=sys.stderr)
    return untested


def _register_diagram(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "diagram", help="draw a workflow as Mermaid, Graphviz DOT or SVG",
        description="Draw a workflow: rule ids on guarded transitions, timed events marked ⏱, "
        "--state highlighted, and with --coverage the transitions no scenario takes marked "
        "untested (red, dashed, with a legend).")
    parser.add_argument("workflow", metavar="WORKFLOW", help="signup, payment_method, credit or invoice")
    parser.add_argument("--format", "-f", choices=DIAGRAM_FORMATS,
                        help="output format (default: from the -o suffix, else mermaid)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("--state", metavar="S", help="highlight the state S")
    parser.add_argument("--rules", metavar="PATH",
                        help="the rules file (default: $TOLLGATE_RULES, ./rules.yaml or the bundled one)")
    parser.add_argument("--coverage", metavar="RESULT",
                        help="mark the transitions untested by scenarios, as the JSON result of "
                        "`tollgate rules test --coverage-json RESULT` says")
    parser.set_defaults(handler=_diagram)


# ── tollgate serve / worker / demo ───────────────────────────────────────────────────────────

def _prepare(args: argparse.Namespace, settings: Settings) -> Any:
    """Point the environment at --database/--rules (the gunicorn workers read their settings from
    it), migrate, import the rules file if it changed since its last import; the Runtime."""
    from tollgate.service.bootstrap import start_runtime

    if args.database:
        os.environ["TOLLGATE_DATABASE_URL"] = args.database
    rules = settings.rules_path
    os.environ["TOLLGATE_RULES"] = rules
    if load_rules(rules) is None:  # before the database is touched: a bad file leaves nothing behind
        return None
    try:
        # one process for the start's own work; `tollgate serve`'s workers get theirs from the settings
        runtime, version = start_runtime(settings, batch_workers=1)
    except RulesError as error:
        print_problems(error.problems, rules)
        return None
    print(f"tollgate: database {runtime.db.url.split('@')[-1]}, rules version {version.id} active "
          f"({version.sha256[:12]}, source {version.source})", flush=True)
    return runtime


def _serve(args: argparse.Namespace) -> int:
    """Run the HTTP API on gunicorn with a timer scheduler in each worker."""
    from tollgate.service.server import prepare_metrics_dir

    # first: before anything imports prometheus_client, and before the workers fork
    metrics_dir, made = prepare_metrics_dir()
    master, status = os.getpid(), 2
    try:
        status = _serve_prepared(args, (metrics_dir, made))
    finally:
        # `serve` removes it once it ran; a forked worker's exit unwinds through here too
        if made and status != 0 and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _serve_prepared(args: argparse.Namespace, metrics_dir: tuple[str, bool]) -> int:
    from tollgate.service.logs import configure_logging
    from tollgate.service.server import serve
    from tollgate.service.settings import Settings

    if args.batch_workers is not None:
        if args.batch_workers < 1:
            print("tollgate serve: --batch-workers must be at least 1.", file=sys.stderr)
            return 2
        os.environ["TOLLGATE_BATCH_WORKERS"] = str(args.batch_workers)
    if args.max_body_bytes is not None:
        os.environ["TOLLGATE_MAX_BODY_BYTES"] = str(args.max_body_bytes)
    try:
        settings = Settings.from_environment(database_url=args.database, rules=args.rules, host=args.host,
                                             port=args.port, workers=args.workers, threads=args.threads)
    except ValueError as error:
        print(f"tollgate serve: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    runtime = _prepare(args, settings)
    if runtime is None:
        return 1
    runtime.db.dispose()
    # SQLite has one writer: a second process only adds lock waits (p99 53 ms → 949 ms measured with
    # wrk); PostgreSQL scales with a process per core.
    workers = settings.workers or (1 if runtime.db.dialect.single_writer else max(2, os.cpu_count() or 2))
    return serve(settings.host, settings.port, workers=workers, threads=settings.threads,
                 scheduler=not args.no_scheduler, prepared_metrics_dir=metrics_dir)


def _worker(args: argparse.Namespace) -> int:
    """Fire due real-time timers until SIGTERM or SIGINT (or once, with --once)."""
    from tollgate.service.logs import configure_logging
    from tollgate.service.scheduler import Scheduler, sleep_until_stopped

    settings = _settings(args)
    configure_logging(settings)
    runtime = _prepare(args, settings)
    if runtime is None:
        return 1
    from tollgate.service.bootstrap import build_relay

    relay = build_relay(settings, runtime)
    if settings.worker_metrics_port is not None:
        from tollgate.service.auth import CHALLENGE, allowed, parse_tokens, role_of
        from tollgate.service.metrics import serve_worker_metrics

        tokens = parse_tokens(settings.tokens)

        def authorize(header: str | None) -> int:
            role = role_of(header, tokens)
            return 401 if role is None else 200 if allowed(role, "metrics") else 403

        try:
            if not tokens:
                raise ValueError("--metrics-port needs TOLLGATE_TOKENS with a role that may read metrics "
                                 "(monitor, viewer, operator or admin): the endpoint is never open.")
            served = serve_worker_metrics(settings.worker_metrics_host, settings.worker_metrics_port,
                                          authorize, CHALLENGE)
        except (ValueError, OSError) as error:
            runtime.close()
            print(f"tollgate worker: {error}", file=sys.stderr)
            return 2
        print(f"tollgate worker: metrics on http://{settings.worker_metrics_host}:{served.server_port}"
              "/metrics", flush=True)
    scheduler = Scheduler(runtime, interval=args.interval, batch=args.batch, relay=relay,
                          relay_interval=settings.relay_interval)
    try:
        if args.once:
            print(f"tollgate worker: {scheduler.tick()} timers handled")
            if relay is not None:
                print(f"tollgate worker: {relay.run_once().delivered} notifications delivered")
        elif args.until_idle:
            print(f"tollgate worker: {scheduler.run_until_idle()} timers handled")
            if relay is not None:
                print(f"tollgate worker: {relay.run_until_idle().delivered} notifications delivered")
        else:
            sleep_until_stopped(scheduler)
    finally:
        runtime.close()
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's --database and --rules over them."""
    from tollgate.service.settings import Settings

    return Settings.from_environment(database_url=args.database, rules=args.rules,
                                     worker_metrics_port=getattr(args, "metrics_port", None),
                                     worker_metrics_host=getattr(args, "metrics_host", None))


def _demo(args: argparse.Namespace) -> int:
    """Walk one account through signup, payment, credit and two billing months."""
    from tollgate.service.demo import run

    return run(sys.stdout, rules=args.rules or default_rules_path())


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="URL",
                        help="SQLAlchemy URL (default: $TOLLGATE_DATABASE_URL or sqlite:///tollgate.db)")
    parser.add_argument("--rules", metavar="PATH",
                        help="the rules file (default: $TOLLGATE_RULES, ./rules.yaml or the bundled one)")


def _register_serve(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP API and the timer scheduler",
                                   description="Run the HTTP API on gunicorn with the timer scheduler. "
                                   "Without $TOLLGATE_TOKENS an admin token is generated and printed "
                                   "once, and the server listens on 127.0.0.1 only.")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $TOLLGATE_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $TOLLGATE_PORT, else 8080)")
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn worker processes (default: $TOLLGATE_WORKERS, else 1 on SQLite and "
                        "one per core on PostgreSQL)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default: $TOLLGATE_THREADS, else 8)")
    parser.add_argument("--batch-workers", type=int, default=None, metavar="K",
                        help="on a SQLite file: processes that judge a big clock advance or batch of "
                        "events together (default: $TOLLGATE_BATCH_WORKERS, else auto: one per core, "
                        "at most 2; 1 keeps that work in the server's process)")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="do not fire timers in this server (run `tollgate worker` instead)")
    parser.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                        help="largest request body accepted; longer ones get 413 (default: "
                        "$TOLLGATE_MAX_BODY_BYTES, else 1048576)")
    _add_storage_options(parser)
    parser.set_defaults(handler=_serve)


def _register_worker(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("worker", help="fire due timers and deliver the outbox (scale-out)",
                                   description="Claim and fire due real-time timers in batches, and "
                                   "relay due notifications to the configured channels (README, "
                                   "Delivery); several workers never fire one timer twice, nor send "
                                   "one notification twice at once.")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between idle sweeps")
    parser.add_argument("--batch", type=int, default=1000, help="timers claimed per transaction")
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    parser.add_argument("--until-idle", action="store_true",
                        help="sweep until nothing is due (checked twice, --interval apart), then exit")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve this worker's own /metrics on PORT (0: any free port, printed), behind "
                        "TOLLGATE_TOKENS (default: $TOLLGATE_WORKER_METRICS_PORT, none)")
    parser.add_argument("--metrics-host", metavar="ADDRESS",
                        help="the address of --metrics-port "
                        "(default: $TOLLGATE_WORKER_METRICS_HOST, 127.0.0.1)")
    _add_storage_options(parser)
    parser.set_defaults(handler=_worker)


def _register_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("demo", help="print one account's lifecycle on a test clock",
                                   description="Walk one account through signup, a refused and an "
                                   "accepted payment registration, the discount credit and two billing "
                                   "months on a test clock (in-memory SQLite), and print the timeline.")
    parser.add_argument("--rules", metavar="PATH",
                        help="the rules file (default: $TOLLGATE_RULES, ./rules.yaml or the bundled one)")
    parser.set_defaults(handler=_demo)


# ── tollgate bench ───────────────────────────────────────────────────────────────────────────

def _bench(args: argparse.Namespace) -> int:
    """Run the benchmark suites (bench/suite.py): a table on stdout, progress on stderr.

    `bench/` is not part of the installed package: it runs from a source checkout only."""
    from tollgate.bundled import checkout

    root = checkout()
    if root is None:
        print("tollgate bench: the benchmarks run from a source checkout of tollgate (bench/ is not "
              "installed with the package); clone the repository and run `make bench` there.",
              file=sys.stderr)
        return 1
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.suite import parse_only, run

    try:
        names = parse_only(args.only)
    except ValueError as error:
        print(f"tollgate: {error}", file=sys.stderr)
        return 2
    return run(names, quick=args.quick, json_path=args.json)


def _register_bench(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure the performance figures against their baselines",
        description="Run the benchmarks (core, http, billing, workers, replay, replay_1m, relay); "
        "each figure is a ratio to a baseline measured in the same run. Prints a table, progress "
        "on stderr; exit 1 if a suite could not run.")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every figure at small N (under two minutes)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as a JSON list to FILE")
    parser.add_argument("--only", metavar="LIST",
                        help="comma-separated suites to run: core,http,billing,workers,replay,replay_1m,"
                        "relay (default: all)")
    parser.set_defaults(handler=_bench)


# ── the table and the entry point ────────────────────────────────────────────────────────────

COMMANDS: dict[str, Callable[[Subparsers], None]] = {
    "serve": _register_serve,
    "worker": _register_worker,
    "rules": register_rules,
    "templates": register_templates,
    "diagram": _register_diagram,
    "demo": _register_demo,
    "bench": _register_bench,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tollgate", description="Account-lifecycle workflows driven by rules.yaml.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
        code = handler(args)
        sys.stdout.flush()  # a reader gone early (`| head`) shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except TollgateError as error:
        print(f"tollgate: {error}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), 1)


#: The exit status when the reader of stdout went away (`tollgate rules test | head`): 128 +
#: SIGPIPE, what a shell reports for a command a pipe cut short, without Python's traceback.
EXIT_BROKEN_PIPE = 141


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit finds no closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
