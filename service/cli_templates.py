"""`tollgate templates check [DIR]`: render every email template with sample data, report file:line.

Kept out of service/cli.py (which registers it in `COMMANDS`) like `rules`: one concern per file.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private; its API is add_parser().


def _templates_check(args: argparse.Namespace) -> int:
    """Render each template (both languages) as a delivery would; exit 1 on any problem."""
    from tollgate.service.delivery.templates import Templates

    directory = args.directory or os.environ.get("TOLLGATE_TEMPLATES_DIR") or None
    try:
        templates = Templates(directory)
    except ValueError as error:
        print(f"tollgate: {error}", file=sys.stderr)
        return 1
    problems = templates.check()
    where = f"{directory} over the bundled templates" if directory else "the bundled templates"
    for problem in problems:
        print(problem)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        it = "it" if len(problems) == 1 else "them"
        print(f"{where}: {len(problems)} {noun}; fix {it} before the next email is sent.")
        return 1
    names = templates.names()
    emails = sorted({template for template, _ in names})
    print(f"{where}: OK — {len(emails)} emails in {len(names)} language versions "
          f"({', '.join(emails)}), each rendered with sample data")
    return 0


def register_templates(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("templates", help="work with the email templates")
    actions = parser.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="render every email template with sample data and report every problem",
        description="Render every email template (subject, text and HTML; Korean and English) with "
        "sample data, as the relay would; print each problem as file:line: message and exit 1 if "
        "there is any. A file in DIR wins over the bundled one of the same name.")
    check.add_argument("directory", nargs="?", metavar="DIR",
                       help="a folder of overriding templates (default: $TOLLGATE_TEMPLATES_DIR, "
                            "else the bundled ones only)")
    check.set_defaults(handler=_templates_check)
