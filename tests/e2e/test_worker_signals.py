"""`tollgate worker` stops cleanly on SIGTERM (and SIGINT): the batch in progress ends, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT, RULES_PATH

pytestmark = pytest.mark.e2e

WAIT = 120.0  # seconds; generous, the machine is shared


def _tollgate() -> str:
    return str(Path(sys.executable).with_name("tollgate"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_worker_stops_cleanly_on_a_stop_signal(tmp_path: Path, signum: signal.Signals) -> None:
    env = {**os.environ, "TOLLGATE_LOG_LEVEL": "INFO", "TOLLGATE_LOG_FORMAT": "text"}
    worker = subprocess.Popen(
        [_tollgate(), "worker", "--database", f"sqlite:///{tmp_path / 'tollgate.db'}", "--rules",
         str(RULES_PATH), "--interval", "0.2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert worker.stderr is not None
        for line in worker.stderr:
            lines.append(line)
            if "Worker started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(WAIT), f"the worker did not start:\n{''.join(lines)}"
        time.sleep(0.5)  # a sweep or two, so the signal may land while one runs
        worker.send_signal(signum)
        code = worker.wait(WAIT)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    reader.join(WAIT)
    assert worker.stderr is not None
    worker.stderr.close()
    output = "".join(lines)
    assert code == 0, output
    assert f"{signum.name} received: stopping" in output
    assert "Worker stopped" in output and "Traceback" not in output
