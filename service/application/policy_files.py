"""Reading the files the pure core judges: rules files, the bundled workflow definitions and schemas.

The core (`workflows/`) parses and checks the text it is handed and reads no file; this module reads
them (the bundled ones through `tollgate.bundled`) and hands over their text, so each problem still
names the file it is in, with its line, column and path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import as_file
from pathlib import Path

from jsonschema import Draft202012Validator

from tollgate import bundled
from tollgate.workflows import policy as core_policy
from tollgate.workflows.definitions import WORKFLOWS, Definition, named_as_files, parse_definition
from tollgate.workflows.documents import validator_for
from tollgate.workflows.exceptions import DefinitionError, Problem, RulesError
from tollgate.workflows.policy import Policy


@cache
def schema(name: str) -> Draft202012Validator:
    """A validator of the bundled JSON Schema `name` (`rules.schema.json`, `workflow.schema.json`)."""
    return validator_for(json.loads((bundled.schemas() / name).read_text(encoding="utf-8")))


def load_definition(path: str | Path) -> Definition:
    """The workflow definition in the file at `path`; `DefinitionError` lists every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        message = f"The file cannot be read: {error.strerror}."
        raise DefinitionError([Problem("$", message, str(path))]) from None
    except UnicodeDecodeError as error:
        message = f"The file is not UTF-8 text ({error.reason})."
        raise DefinitionError([Problem("$", message, str(path))]) from None
    return parse_definition(text, str(path), schema("workflow.schema.json"))


def _bundled_definition(name: str) -> Definition:
    with as_file(bundled.definitions() / f"{name}.yaml") as path:
        return load_definition(Path(path).resolve())


@cache
def definitions() -> Mapping[str, Definition]:
    """The four bundled workflow definitions, read and checked once per process."""
    return named_as_files({name: _bundled_definition(name) for name in WORKFLOWS})


def load_policy(text: str, file: str = "rules.yaml",
                workflow_definitions: Mapping[str, Definition] | None = None) -> Policy:
    """The policy in rules `text` (read from `file`) over the bundled definitions (or the given
    ones); `RulesError` lists every problem."""
    return core_policy.load_policy(text, file, workflow_definitions or definitions(),
                                   schema("rules.schema.json"))


def load_policy_file(path: str | Path) -> Policy:
    """The policy in the rules file at `path`; `RulesError` names the file when it cannot be read."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        message = f"The rules file cannot be read: {error.strerror}."
        raise RulesError([Problem("$", message, str(file))]) from None
    return load_policy(text, str(file))


def check(text: str, file: str) -> list[Problem]:
    """Every problem of a rules text over the bundled definitions (empty when it would activate)."""
    return core_policy.check(text, file, definitions(), schema("rules.schema.json"))
