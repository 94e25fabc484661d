"""Loading YAML and JSON documents safely, remembering where every value came from.

`load_yaml` uses PyYAML's safe constructor on a composed node tree, so no tag can build Python
objects, and records the line and column of each value by JSON path. `schema_problems` validates
a document against one of our JSON Schemas and returns every error, most relevant first, with
its position. Reading files is the caller's (`service/application/policy_files.py`): this module gets text
and parsed schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from tollgate.workflows.calendar import as_utc, parse_clock_time, parse_instant
from tollgate.workflows.exceptions import Problem
from tollgate.workflows.secrets import touches_secret, value_free_message

PathKey = tuple[str | int, ...]


def json_path(parts: PathKey) -> str:
    """`('params', 'billing', 0)` → `$.params.billing[0]`."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


@dataclass
class Document:
    """A loaded document with the 1-based (line, column) of each value and key by path."""

    data: Any
    file: str
    marks: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    styles: dict[PathKey, str | None] = field(default_factory=dict)
    text: str = ""  # the source, to map positions inside folded scalars back to it
    values: int = 0  # values constructed so far (aliases count each time they are expanded)

    def where(self, path: PathKey, *, key: bool = False) -> tuple[int | None, int | None]:
        """The position of the value at `path`, or of its nearest ancestor that has one."""
        table = self.key_marks if key and path in self.key_marks else self.marks
        probe = tuple(path)
        while probe not in table and probe:
            probe = probe[:-1]
            table = self.marks
        line_col = table.get(probe)
        return line_col if line_col else (None, None)

    def problem(self, path: PathKey, message: str, *, key: bool = False,
                offset: tuple[int, int] | None = None) -> Problem:
        """A Problem at `path`; `offset` is a 1-based (line, column) inside the scalar's value.

        YAML folds plain, quoted and `>` scalars (line breaks become spaces, indentation goes), so
        the offset is mapped back by walking the value and the source text side by side: folding
        only changes whitespace (and quoting adds escapes), never the order of the other characters.
        """
        line, column = self.where(path, key=key)
        value: Any = self.data
        for part in path:
            found = (isinstance(value, dict) and part in value) or (
                isinstance(value, list) and isinstance(part, int) and part < len(value))
            value = value[part] if found else None
        if not (offset and line and column and self.text and isinstance(value, str)):
            return Problem(path=json_path(path), message=message, file=self.file, line=line,
                           column=column)
        sub_line, sub_col = offset
        lines = value.split("\n")
        target = sum(len(part) + 1 for part in lines[:sub_line - 1]) + sub_col - 1
        target = max(0, min(target, len(value)))
        starts = [0]
        for source_line in self.text.splitlines(keepends=True):
            starts.append(starts[-1] + len(source_line))
        j = starts[line - 1] + column - 1
        style = self.styles.get(tuple(path))
        if style in ("|", ">"):  # the value starts on the line after the indicator
            j = starts[line] if line < len(starts) else len(self.text)
        elif style in ('"', "'"):
            j += 1
        text = self.text

        def seek(j: int, ch: str) -> int:
            while j < len(text) and text[j] != ch:
                j += 1
            return j

        for ch in value[:target]:
            if not ch.isspace():
                j = seek(j, ch) + 1
        if target < len(value) and not value[target].isspace():
            j = seek(j, value[target])
        j = min(j, len(text))
        line = max(i for i, start in enumerate(starts) if start <= j) + 1
        return Problem(path=json_path(path), message=message, file=self.file, line=line,
                       column=j - starts[line - 1] + 1)


class _Loader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys (a silent overwrite hides policy mistakes)."""


#: A rules file has a few thousand values; YAML aliases can make a few lines expand to billions
#: ("billion laughs"), so construction stops past this many.
MAX_VALUES = 200_000


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node, self.message = node, message


def _construct(loader: _Loader, node: yaml.Node, path: PathKey, doc: Document,
               problems: list[Problem]) -> Any:
    doc.values += 1
    if doc.values > MAX_VALUES:
        raise _TooLarge(node, f"The document expands to more than {MAX_VALUES:,} values through YAML "
                        "aliases; write the values out or use fewer aliases.")
    if len(path) > 64:
        raise _TooLarge(node, "The document nests more than 64 levels deep (a recursive alias?); "
                        "flatten it.")
    doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | bool) or key is None:
                key = str(key)
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            doc.key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                problems.append(Problem(json_path(child), f"The key '{key}' appears twice; keep one.",
                                        doc.file, key_node.start_mark.line + 1,
                                        key_node.start_mark.column + 1))
            out[key] = _construct(loader, value_node, child, doc, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*path, i), doc, problems) for i, item in enumerate(node.value)]
    doc.styles[path] = getattr(node, "style", None)
    value = loader.construct_object(node, deep=True)
    if hasattr(value, "isoformat") and not isinstance(value, str):
        value = value.isoformat()  # YAML dates become strings, as JSON would carry them
    return value


def load_yaml(text: str, file: str) -> tuple[Document | None, list[Problem]]:
    """Parse YAML text safely; on a syntax error return the problem with its position."""
    problems: list[Problem] = []
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            doc = Document(data=None, file=file, text=text)
            if node is not None:
                doc.data = _construct(loader, node, (), doc, problems)
        finally:
            loader.dispose()
    except _TooLarge as error:
        mark = error.node.start_mark
        problems.append(Problem("$", error.message, file, mark.line + 1, mark.column + 1))
        return None, problems
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = " ".join(filter(None, [error.context, error.problem])) or "invalid YAML"
        problems.append(Problem("$", f"YAML syntax error: {what}.", file,
                                mark.line + 1 if mark else None, mark.column + 1 if mark else None))
        return None, problems
    except yaml.YAMLError as error:
        problems.append(Problem("$", f"YAML error: {error}.", file))
        return None, problems
    return doc, problems


_format_checker = FormatChecker()

#: RFC 3339 `date-time` (section 5.6) with ASCII digits: what `ts()` and the actions can parse.
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                     r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


@_format_checker.checks("date-time", raises=(ValueError, OverflowError))
def _is_date_time(value: object) -> bool:
    """RFC 3339 with an offset that the core can use, checked here rather than by jsonschema's own
    check: that one needs the optional `rfc3339-validator` package and is silently skipped
    without it (a malformed timestamp then reached the guards), and it accepts what the core
    cannot parse (a leap second `23:59:60`) — anything this check passes, `ts()` can read."""
    if not isinstance(value, str):
        return True
    if not RFC3339.fullmatch(value):
        raise ValueError(f"'{value}' is not a date-time")
    as_utc(parse_instant(value))
    return True


@_format_checker.checks("hh:mm", raises=ValueError)
def _is_hhmm(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if len(value) != 5:
        raise ValueError(f"'{value}' is not a time HH:MM")
    parse_clock_time(value)
    return True


def validator_for(sub_schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator with the core's format checks: for one of our JSON Schemas (`rules.schema.json`,
    `workflow.schema.json`, as the caller read it) or one embedded in a definition (event data,
    creation context)."""
    return Draft202012Validator(dict(sub_schema), format_checker=_format_checker)


def _message(error: jsonschema.ValidationError) -> str:
    described = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    if error.validator == "pattern" and isinstance(described, str):
        # a pattern is explained by its schema's description (a noun phrase: "a month YYYY-MM in
        # the supported years 2000-2199"), not by the regular expression
        return f"{error.instance!r} is not {described}"
    if error.validator == "format" and error.validator_value == "hh:mm":
        return f"{error.instance!r} is not a time HH:MM"
    if error.validator == "format" and error.validator_value == "date-time":
        return (f"{error.instance!r} is not an RFC 3339 date-time with an offset; write it like "
                "2025-03-05T12:00:00+09:00")
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "Unknown key(s)") + \
            "; check the spelling against the schema"
    if error.validator == "propertyNames":
        return f"{error.message} (names are lowercase letters, digits and _)"
    return error.message


def _extra_keys(error: jsonschema.ValidationError) -> list[str]:
    """The keys an additionalProperties error is about (those matched by no property or pattern)."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    properties = schema.get("properties", {})
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    keys: Any = error.instance
    return [k for k in keys if k not in properties and not any(p.search(k) for p in patterns)]


def _relevance(error: jsonschema.ValidationError) -> tuple[int, int]:
    return (-len(error.absolute_path), 0 if error.validator in ("required", "type") else 1)


def schema_problems(doc: Document, schema: Draft202012Validator, instance: Any = None,
                    base: PathKey = ()) -> list[Problem]:
    """Every violation of `schema` in the document (or in `instance` found at `base` inside it)."""
    target = doc.data if instance is None else instance
    errors = sorted(schema.iter_errors(target), key=_relevance)
    out = []
    for error in errors:
        if error.validator in ("if", "then", "else") and error.context:
            error = jsonschema.exceptions.best_match(error.context) or error
        path: PathKey = (*base, *error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted(error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {})
            for extra in _extra_keys(error):
                out.append(doc.problem((*path, extra), f"'{extra}' was unexpected here; allowed keys: "
                                       f"{', '.join(allowed) or 'none'}", key=True))
            continue
        if error.validator == "propertyNames" and isinstance(error.instance, str):
            out.append(doc.problem((*path, error.instance), _message(error), key=True))
            continue
        out.append(doc.problem(path, _message(error)))
    return sorted(out, key=lambda p: (p.line or 0, p.column or 0))


def data_problems(validator_: Draft202012Validator, data: Any, what: str,
                  secret: Collection[str] = ()) -> list[Problem]:
    """Schema violations of request data, as problems with JSON paths (no file positions); an
    error that could quote a `secret` field's value is told without it (`workflows/secrets.py`)."""
    out = []
    for error in sorted(validator_.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        message = value_free_message(error) if secret and touches_secret(error, secret) else _message(error)
        out.append(Problem(json_path(tuple(error.absolute_path)), message, file=what))
    return out
