"""LeanMachine: transitions' steps, in transitions' order, without the empty ones."""

from __future__ import annotations

from typing import Any

import pytest
from transitions import Machine

from tollgate.workflows.machines import LeanMachine


class _Model:
    state: str


def _recording_machine(cls: type[Machine], calls: list[str], allow: bool) -> _Model:
    model = _Model()

    def record(name: str) -> Any:
        return lambda event_data: calls.append(f"{name}:{event_data.state.name}")

    cls(model=model, states=[{"name": "a", "on_exit": [record("exit")]},
                             {"name": "b", "on_enter": [record("enter")], "final": True}],
        initial="a", auto_transitions=False, send_event=True,
        transitions=[{"trigger": "go", "source": "a", "dest": "b",
                      "prepare": [record("prepare")], "before": [record("before")],
                      "after": [record("after")],
                      "conditions": [lambda event_data: calls.append("condition") or allow]},
                     {"trigger": "stay", "source": "a", "dest": None, "after": [record("internal")]}],
        before_state_change=[record("machine_before")], after_state_change=[record("machine_after")],
        on_final=[record("final")])
    return model


@pytest.mark.parametrize("allow", [True, False])
def test_lean_machine_runs_the_same_steps_as_transitions(allow: bool) -> None:
    runs = []
    for cls in (Machine, LeanMachine):
        calls: list[str] = []
        model = _recording_machine(cls, calls, allow)
        result = model.go()  # type: ignore[attr-defined]
        runs.append((result, model.state, calls))
    assert runs[0] == runs[1]
    assert runs[0][1] == ("b" if allow else "a")


def test_lean_machine_keeps_internal_transitions_internal() -> None:
    calls: list[str] = []
    model = _recording_machine(LeanMachine, calls, True)
    assert model.stay() is True  # type: ignore[attr-defined]
    assert model.state == "a"
    assert calls == ["machine_before:a", "internal:a", "machine_after:a"]
