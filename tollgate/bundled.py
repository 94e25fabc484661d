"""The files tollgate ships inside its package, found through `importlib.resources`.

The wheel carries them as package data; an editable install finds the same files in the checkout
(`tollgate/rules.yaml` is a link to the customer's `rules.yaml` at the top of the tree). Only the
I/O side reads them: the pure core receives their text.
"""

from __future__ import annotations

import os
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path


def rules() -> Traversable:
    """The bundled policy: the default when no rules file is given and none is in the working directory."""
    return files("tollgate") / "rules.yaml"


def rules_path() -> Path:
    """The bundled `rules.yaml` as a file path (the package is installed unzipped, so it is a real file)."""
    with as_file(rules()) as path:
        return Path(path)


def schemas() -> Traversable:
    """The folder of JSON Schemas (`rules.schema.json`, `workflow.schema.json`, `api/*.json`)."""
    return files("tollgate.schemas")


def definitions() -> Traversable:
    """The folder of workflow definitions (`signup.yaml`, `payment_method.yaml`, …)."""
    return files("tollgate.workflows") / "definitions"


def migrations() -> Path:
    """The Alembic script folder (`env.py`, `versions/`)."""
    with as_file(files("tollgate.service.storage") / "migrations") as path:
        return Path(path)


def templates() -> Traversable:
    """The folder of notification templates (`email/<template>.<lang>.{subject,txt,html}.j2`)."""
    return files("tollgate") / "templates"


def templates_path() -> Path:
    """The bundled templates folder as a path (`$TOLLGATE_TEMPLATES_DIR` overrides it file by file)."""
    with as_file(templates()) as path:
        return Path(path)


def default_rules_path() -> str:
    """`$TOLLGATE_RULES`, else `rules.yaml` in the working directory, else the bundled policy (SPEC §5).

    An installed tollgate started in an empty directory runs on the policy it ships."""
    chosen = os.environ.get("TOLLGATE_RULES")
    if chosen:
        return chosen
    return "rules.yaml" if Path("rules.yaml").exists() else str(rules_path())


#: The first line of the bundled rules.yaml: a `$schema` path relative to the checkout.
SCHEMA_LINE = "# yaml-language-server: $schema="


def editable_rules() -> str:
    """The bundled policy's text with its `$schema` line pointing at the installed schema (a file URI),
    so that an editor resolves it wherever the copy is written."""
    text = rules().read_text(encoding="utf-8")
    with as_file(schemas() / "rules.schema.json") as schema:
        line = f"{SCHEMA_LINE}{Path(schema).resolve().as_uri()}"
    first, _, rest = text.partition("\n")
    return f"{line}\n{rest}" if first.startswith(SCHEMA_LINE) else f"{line}\n{text}"


def checkout() -> Path | None:
    """The source checkout this package runs from (an editable install), or None for an installed wheel.

    `bench/` and `tests/` live only there."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "bench" / "suite.py").is_file() else None
