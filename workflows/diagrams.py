"""Workflow diagrams: extract a definition and its policy into a small IR, then render it.

`extract` is the only place that knows definitions and rules.yaml; `to_mermaid` and `to_dot` only
know the IR, so a new format is one more renderer. Pure: no I/O (SVG rendering runs Graphviz and
lives in `service/svg.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from tollgate.workflows.definitions import CREATE_EVENT, Definition, Transition
from tollgate.workflows.exceptions import NotFound
from tollgate.workflows.policy import Policy

__all__ = ["RENDERERS", "Diagram", "Edge", "StateNode", "edge_label", "extract", "render",
           "to_dot", "to_mermaid", "workflow_diagram"]

TIMED_MARK = "⏱"
HIGHLIGHT_FILL = "#ffe08a"
HIGHLIGHT_STROKE = "#b8860b"
UNTESTED_MARK = "✗ untested"
UNTESTED_COLOR = "#d1242f"
LEGEND_UNTESTED = "no scenario takes it (tollgate rules test --coverage)"


@dataclass(frozen=True)
class StateNode:
    """A state as drawn: its name, what it means, and how it is marked."""

    name: str
    description: str = ""
    initial: bool = False
    final: bool = False
    highlighted: bool = False


@dataclass(frozen=True)
class Edge:
    """One arrow: every transition with the same source, target and event, merged.

    `guards` are the enabled guard rules bound to the event; `routes` the route rules that choose
    this branch; `otherwise` marks the branch taken when none of the event's routes holds there.
    """

    source: str
    target: str
    event: str
    internal: bool = False
    timed: bool = False
    guards: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    otherwise: bool = False
    timers: tuple[str, ...] = ()
    untested: bool = False  # drawn with a coverage result that says no scenario takes it


@dataclass(frozen=True)
class Diagram:
    """A workflow ready to draw; `create_guards` are the rules checked when an instance is made."""

    workflow: str
    description: str
    states: tuple[StateNode, ...]
    edges: tuple[Edge, ...]
    create_guards: tuple[str, ...] = ()
    rules_version: str | None = None
    coverage: bool = False  # drawn with a coverage result: untested edges are marked, with a legend

    @property
    def untested(self) -> int:
        return sum(1 for e in self.edges if e.untested)

    @property
    def initial(self) -> str:
        return next(s.name for s in self.states if s.initial)


def _guard_ids(policy: Policy | None, workflow: str, event: str) -> tuple[str, ...]:
    if policy is None:
        return ()
    return tuple(r.id for r in policy.rules_for(workflow, event) if r.kind == "guard" and r.enabled)


def extract(definition: Definition, policy: Policy | None = None, *, highlight: str | None = None,
            untested: Collection[tuple[str, str, str]] | None = None) -> Diagram:
    """The IR of one workflow; without a policy, only what the definition itself says is shown.
    `untested`, from a coverage result, holds the (source, target, event) of each transition no
    scenario took: those edges are marked (None: drawn without coverage)."""
    if highlight is not None and highlight not in definition.state_names:
        raise NotFound(f"The {definition.name} workflow has no state '{highlight}'; its states: "
                       f"{', '.join(definition.state_names)}.")
    states = tuple(StateNode(s.name, s.description, s.name == definition.initial, s.final,
                             s.name == highlight) for s in definition.states)
    timers = policy.timers_of(definition.name) if policy is not None else []
    groups: dict[tuple[str, str, str], list[Transition]] = {}
    for t in definition.transitions:
        groups.setdefault((t.source, t.target, t.event), []).append(t)
    edges = []
    for (source, target, event), merged in groups.items():
        siblings = definition.branches(event, source)
        routed = any(t.when for t in siblings)
        timer_ids = tuple(tr.id for tr in timers if tr.event == event and source in tr.states)
        unconditional = any(t.when is None for t in merged)
        edges.append(Edge(
            source=source, target=target, event=event,
            internal=all(t.dest is None for t in merged),
            timed=definition.events[event].timed or bool(timer_ids),
            guards=_guard_ids(policy, definition.name, event),
            routes=() if unconditional else tuple(dict.fromkeys(t.when for t in merged if t.when)),
            otherwise=unconditional and routed,
            timers=timer_ids,
            untested=untested is not None and (source, target, event) in untested,
        ))
    return Diagram(definition.name, definition.description, states, tuple(edges),
                   _guard_ids(policy, definition.name, CREATE_EVENT),
                   policy.version if policy is not None else None, coverage=untested is not None)


def workflow_diagram(policy: Policy, workflow: str, *, highlight: str | None = None,
                     untested: Collection[tuple[str, str, str]] | None = None) -> Diagram:
    """The IR of the policy's workflow named `workflow`; `NotFound` names the known ones."""
    definition = policy.definitions.get(workflow)
    if definition is None:
        raise NotFound(f"There is no workflow '{workflow}'; choose one of: "
                       f"{', '.join(policy.definitions)}.")
    return extract(definition, policy, highlight=highlight, untested=untested)


def edge_label(edge: Edge, escape: Callable[[str], str] = lambda s: s) -> str:
    """`⏱ issue [guard, …] (when route, internal)`: the text on an arrow, names passed through
    `escape` (the renderers share it, so every format says the same); `✗ untested` first when a
    coverage result says no scenario takes it."""
    parts = [escape(UNTESTED_MARK)] if edge.untested else []
    parts.append(f"{TIMED_MARK} {escape(edge.event)}" if edge.timed else escape(edge.event))
    if edge.guards:
        parts.append("[" + ", ".join(escape(g) for g in edge.guards) + "]")
    notes = []
    if edge.routes:
        notes.append("when " + " or ".join(escape(r) for r in edge.routes))
    elif edge.otherwise:
        notes.append("otherwise")
    if edge.internal:
        notes.append("internal")
    if notes:
        parts.append("(" + ", ".join(notes) + ")")
    return " ".join(parts)


def _coverage_note(diagram: Diagram) -> str:
    edges = len(diagram.edges)
    if not diagram.untested:
        return f"every one of the {edges} transitions is taken by a scenario"
    return f"{diagram.untested} of {edges} transitions untested"


def _create_label(diagram: Diagram, escape: Callable[[str], str]) -> str:
    if not diagram.create_guards:
        return ""
    return f"{CREATE_EVENT} [" + ", ".join(escape(g) for g in diagram.create_guards) + "]"


# ── Mermaid (stateDiagram-v2) ────────────────────────────────────────────────────────────────
# Mermaid ends a label at ';' and has no quoting for arrow labels, but it decodes entity codes
# (`#59;`) when it renders, so everything outside a small safe set becomes one.
_MERMAID_SAFE = re.compile(r"[\w .,()\[\]/+=!?-]")
_MERMAID_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MERMAID_RESERVED = frozenset({
    "state", "note", "end", "direction", "class", "classDef", "style", "click", "hide", "as",
    "left", "right", "of", "accTitle", "accDescr", "default", "stateDiagram", "stateDiagram-v2",
})


def mermaid_text(text: str) -> str:
    """Text safe inside a Mermaid label: unsafe characters as `#NNN;` entity codes."""
    return "".join(ch if _MERMAID_SAFE.fullmatch(ch) else f"#{ord(ch)};"
                   for ch in text.replace("\n", " "))


def mermaid_ids(diagram: Diagram) -> dict[str, str]:
    """State name → Mermaid id; names that are keywords or not plain identifiers get an alias."""
    ids: dict[str, str] = {}
    for i, state in enumerate(diagram.states):
        plain = _MERMAID_ID.fullmatch(state.name) and state.name not in _MERMAID_RESERVED
        ids[state.name] = state.name if plain else f"state_{i}"
    return ids


def to_mermaid(diagram: Diagram) -> str:
    """Mermaid stateDiagram-v2: rule ids on guarded arrows, ⏱ on timed ones, the state highlighted."""
    ids = mermaid_ids(diagram)
    version = f", rules {diagram.rules_version}" if diagram.rules_version else ""
    lines = ["stateDiagram-v2", f"    %% tollgate workflow {mermaid_text(diagram.workflow)}{version}"]
    for state in diagram.states:
        if ids[state.name] != state.name:
            lines.append(f'    state "{mermaid_text(state.name)}" as {ids[state.name]}')
    create = _create_label(diagram, mermaid_text)
    lines.append(f"    [*] --> {ids[diagram.initial]}" + (f" : {create}" if create else ""))
    for edge in diagram.edges:
        lines.append(f"    {ids[edge.source]} --> {ids[edge.target]} : {edge_label(edge, mermaid_text)}")
    for state in diagram.states:
        if state.final:
            lines.append(f"    {ids[state.name]} --> [*]")
    if diagram.coverage:
        lines += [f"    note left of {ids[diagram.initial]}",
                  f"        coverage: {mermaid_text(_coverage_note(diagram))}",
                  f"        {mermaid_text(UNTESTED_MARK + ': ' + LEGEND_UNTESTED)}",
                  "    end note"]
    highlighted = [ids[s.name] for s in diagram.states if s.highlighted]
    if highlighted:
        lines.append(f"    classDef current fill:{HIGHLIGHT_FILL},stroke:{HIGHLIGHT_STROKE},"
                     "stroke-width:3px,font-weight:bold")
        lines.append(f"    class {','.join(highlighted)} current")
    return "\n".join(lines) + "\n"


# ── Graphviz DOT ─────────────────────────────────────────────────────────────────────────────

def dot_string(text: str) -> str:
    """A DOT double-quoted string; backslashes are doubled so no escape sequence survives."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "")
    return f'"{escaped}"'


def to_dot(diagram: Diagram) -> str:
    """Graphviz digraph with the same information; the highlighted state is filled."""
    title = diagram.workflow + (f" (rules {diagram.rules_version})" if diagram.rules_version else "")
    if diagram.coverage:
        title += f"\ncoverage: {_coverage_note(diagram)}"
    lines = [
        f"digraph {dot_string(diagram.workflow)} {{",
        f"  graph [rankdir=LR, labelloc=t, fontname=\"Helvetica\", label={dot_string(title)}];",
        '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
        '  "__start__" [shape=point, width=0.15, label="", tooltip="start"];',
    ]
    for state in diagram.states:
        attrs = [f"label={dot_string(state.name)}"]
        if state.description:
            attrs.append(f"tooltip={dot_string(state.description)}")
        if state.final:
            attrs.append("peripheries=2")
        if state.highlighted:
            attrs.append(f'style="rounded,filled,bold", fillcolor="{HIGHLIGHT_FILL}", '
                         f'color="{HIGHLIGHT_STROKE}", penwidth=2')
        lines.append(f"  {dot_string(state.name)} [{', '.join(attrs)}];")
    create = _create_label(diagram, lambda s: s)
    lines.append(f'  "__start__" -> {dot_string(diagram.initial)}'
                 + (f" [label={dot_string(create)}]" if create else "") + ";")
    for edge in diagram.edges:
        attrs = [f"label={dot_string(edge_label(edge))}"]
        if edge.timed:
            attrs.append('color="#1f6feb", fontcolor="#1f6feb"')
        if edge.untested:
            attrs.append(f'color="{UNTESTED_COLOR}", fontcolor="{UNTESTED_COLOR}", penwidth=2')
        if edge.internal or edge.untested:
            attrs.append("style=dashed")
        lines.append(f"  {dot_string(edge.source)} -> {dot_string(edge.target)} [{', '.join(attrs)}];")
    if diagram.coverage:
        lines += _dot_legend()
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_legend() -> list[str]:
    """A small boxed key: a tested arrow and an untested one, as the diagram draws them."""
    point = 'shape=point, width=0.01, height=0.01, label=""'
    return [
        "  subgraph \"cluster_legend\" {",
        '    label="legend"; fontsize=9; style=dashed; color="#999999";',
        f'    "__legend_1" [{point}]; "__legend_2" [{point}];',
        f'    "__legend_3" [{point}]; "__legend_4" [{point}];',
        '    "__legend_1" -> "__legend_2" [label="taken by a scenario"];',
        f'    "__legend_3" -> "__legend_4" [label={dot_string(UNTESTED_MARK + ": " + LEGEND_UNTESTED)}, '
        f'color="{UNTESTED_COLOR}", fontcolor="{UNTESTED_COLOR}", penwidth=2, style=dashed];',
        "  }",
    ]


RENDERERS: dict[str, Callable[[Diagram], str]] = {"mermaid": to_mermaid, "dot": to_dot}


def render(diagram: Diagram, fmt: str) -> str:
    """The diagram as text in `fmt` (one of RENDERERS)."""
    try:
        renderer = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"The diagram format '{fmt}' is not known; choose one of: "
                         f"{', '.join(RENDERERS)}.") from None
    return renderer(diagram)
