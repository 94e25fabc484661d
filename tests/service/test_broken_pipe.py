"""A reader that goes away early (`tollgate rules test | head`, `tollgate diagram … | true`) ends
the command quietly: no BrokenPipeError traceback, the exit status a shell gives a command a pipe
cut short (128 + SIGPIPE)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT
from tollgate.service.cli import EXIT_BROKEN_PIPE


@pytest.mark.parametrize("argv", [["diagram", "invoice"], ["rules", "check"],
                                  ["rules", "test", "tests/policy/credit.yaml"]],
                         ids=["diagram", "rules-check", "rules-test"])
def test_a_closed_pipe_ends_the_command_without_a_traceback(argv: list[str]) -> None:
    with subprocess.Popen([sys.executable, "-m", "tollgate", *argv], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the command prints anything: every write meets a closed pipe
        stderr = process.stderr.read().decode()
        status = process.wait(timeout=300)
    assert status == EXIT_BROKEN_PIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert stderr == ""
