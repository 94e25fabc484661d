#!/usr/bin/env bash
# Check tollgate's Mermaid diagrams with the real Mermaid parser (not part of the pytest suite).
#
# What it installs, and where: the npm packages `mermaid@11` and `jsdom@29` (Mermaid needs a DOM
# to load), into $MERMAID_CHECK_DIR (default: ${TMPDIR:-/tmp}/tollgate-mermaid-check), outside the
# repository. Needs node >= 18 and npm (Debian: apt-get install nodejs npm) and the tollgate package
# importable by python3 (pip install -e .). Nothing is installed globally.
#
# What it checks: for every workflow, unhighlighted and with each state highlighted, plus one
# diagram built from hostile names (Mermaid keywords as state names; ; : # % " < > { } [*] and
# --> inside labels), Mermaid's own parser accepts the text AND its parsed model has exactly the
# expected states, arrows, decoded arrow labels and highlighted state. Exit 0 when all pass.
#
# Usage: scripts/check_mermaid.sh [RULES_FILE]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${MERMAID_CHECK_DIR:-${TMPDIR:-/tmp}/tollgate-mermaid-check}"
rules="${1:-$repo/rules.yaml}"
mkdir -p "$work/diagrams"

if [ ! -f "$work/node_modules/mermaid/package.json" ] || [ ! -f "$work/node_modules/jsdom/package.json" ]; then
  echo "Installing mermaid and jsdom into $work ..."
  (cd "$work" && { [ -f package.json ] || npm init -y >/dev/null; } \
     && npm install --no-audit --no-fund --loglevel=error mermaid@11 jsdom@29)
fi
echo "mermaid $(node -p "require('$work/node_modules/mermaid/package.json').version"), jsdom $(node -p "require('$work/node_modules/jsdom/package.json').version"), node $(node --version)"

# 1. Write every diagram and, beside it, what Mermaid should find in it.
rm -f "$work"/diagrams/*
python3 - "$rules" "$work/diagrams" <<'PY'
import json, sys
from pathlib import Path
from workflows.diagrams import Diagram, Edge, StateNode, edge_label, extract, to_mermaid, mermaid_ids
from workflows.policy import load_policy_file

policy, out = load_policy_file(sys.argv[1]), Path(sys.argv[2])

def write(name, diagram):
    ids = mermaid_ids(diagram)
    relations = [["root_start", ids[diagram.initial]]]
    relations += [[ids[e.source], ids[e.target], edge_label(e)] for e in diagram.edges]
    relations += [[ids[s.name], "root_end"] for s in diagram.states if s.final]
    expected = {"states": sorted([*ids.values(), "root_start", "root_end"]),
                "relations": [r if len(r) == 3 else [*r, ""] for r in relations],
                "highlighted": sorted(ids[s.name] for s in diagram.states if s.highlighted)}
    (out / f"{name}.mmd").write_text(to_mermaid(diagram), encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(expected, ensure_ascii=False), encoding="utf-8")

for workflow, definition in policy.definitions.items():
    write(workflow, extract(definition, policy))
    for state in definition.state_names:
        write(f"{workflow}--{state}", extract(definition, policy, highlight=state))

odd = 'pay;now: #1 %% "q" <b> {c} [*] --> x\nnext'
write("hostile", Diagram("hostile", "", (
    StateNode("state", initial=True), StateNode("note", highlighted=True),
    StateNode("end", final=True), StateNode("open")), (
    Edge("state", "note", odd, timed=True, guards=("g;1", "g:2"), routes=("r#3",)),
    Edge("note", "note", "loop", internal=True, otherwise=True),
    Edge("note", "open", "to open"), Edge("open", "end", "done"))))
print(f"wrote {len(list(out.glob('*.mmd')))} diagrams")
PY

# 2. Parse each with Mermaid and compare its model with the expectation.
cat > "$work/check.mjs" <<'JS'
import { JSDOM } from "jsdom";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
const dom = new JSDOM("<!doctype html><html><body></body></html>", { pretendToBeVisual: true });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });
// Mermaid swaps entity codes (#59;) for placeholders while parsing and decodes them on render.
const decode = (s) => s.replace(/ﬂ°°(\d+)¶ß/g, (_, n) => String.fromCodePoint(Number(n)));
const dir = process.argv[2];
let failures = 0, count = 0;
for (const file of readdirSync(dir).filter((f) => f.endsWith(".mmd")).sort()) {
  count++;
  const text = readFileSync(join(dir, file), "utf8");
  const expected = JSON.parse(readFileSync(join(dir, file.replace(/\.mmd$/, ".json")), "utf8"));
  const problems = [];
  try {
    const parsed = await mermaid.parse(text);
    if (parsed.diagramType !== "stateDiagram") problems.push(`parsed as ${parsed.diagramType}`);
    const db = (await mermaid.mermaidAPI.getDiagramFromText(text)).db;
    const states = [...db.getStates().keys()].sort();
    if (JSON.stringify(states) !== JSON.stringify(expected.states))
      problems.push(`states ${JSON.stringify(states)} != ${JSON.stringify(expected.states)}`);
    const relations = db.getRelations().map((r) => [r.id1, r.id2, decode(r.relationTitle ?? "")]);
    const want = expected.relations.map((r) => [r[0], r[1], r[2].replace(/\n/g, " ")]);
    if (JSON.stringify(relations) !== JSON.stringify(want))
      problems.push(`arrows ${JSON.stringify(relations)} != ${JSON.stringify(want)}`);
    const highlighted = [...db.getStates().values()]
      .filter((s) => (s.classes ?? []).includes("current")).map((s) => s.id).sort();
    if (JSON.stringify(highlighted) !== JSON.stringify(expected.highlighted))
      problems.push(`highlighted ${highlighted} != ${expected.highlighted}`);
  } catch (error) {
    problems.push(String(error?.message ?? error));
  }
  if (problems.length) {
    failures++;
    console.log(`FAIL ${file}\n  ${problems.join("\n  ")}`);
  }
}
console.log(`${count - failures}/${count} Mermaid diagrams parsed and matched.`);
process.exit(failures ? 1 : 0);
JS
node "$work/check.mjs" "$work/diagrams"
