"""The timer scheduler: fires due real-time timers in a loop (in `serve` workers and `tollgate worker`).

Claiming is safe with several schedulers at once: a timer row is deleted in the transaction that
fires it, with `FOR UPDATE SKIP LOCKED` on PostgreSQL and `BEGIN IMMEDIATE` on SQLite, so no timer
fires twice and a crash before commit leaves it due. Two sweeps never fire events of one account
at once (SQLite's write lock; on PostgreSQL a lock on the account's row, `Sweeps._take_accounts`),
so one instance's timers fire in due order. A timer whose event the rules fail on is parked, not retried
(`Sweeps.attempt`); a sweep that fails as a whole (the database is down) is retried with a
back-off that doubles up to `MAX_BACKOFF` seconds, so a failing batch never spins the loop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from tollgate.service.application.relay import Relay
from tollgate.service.application.runtime import Runtime

log = logging.getLogger("tollgate.scheduler")

#: The longest pause between retries of a sweep that keeps failing, in seconds.
MAX_BACKOFF = 60.0


class RelayLoop:
    """The delivery relay's own thread beside the timer sweeps (a slow receiver never delays a
    timer): a pass when the last one was full, else a pause of `interval`; a pass that fails as a
    whole (the database is down) backs off like a failing sweep."""

    def __init__(self, relay: Relay, stop: threading.Event, *, interval: float = 1.0) -> None:
        self.relay = relay
        self.interval = interval
        self._stop = stop
        self._thread: threading.Thread | None = None

    def run_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                done = self.relay.run_once()
            except Exception:
                failures += 1
                pause = float(min(self.interval * 2 ** min(failures - 1, 16),
                                  max(MAX_BACKOFF, self.interval)))
                log.exception("The delivery relay failed (%d time(s) in a row); retrying in %.1f s.",
                              failures, pause)
                self._stop.wait(pause)
                continue
            failures = 0
            if done.claimed < self.relay.batch:
                self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="tollgate-relay", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class Scheduler:
    def __init__(self, runtime: Runtime, *, interval: float = 1.0, batch: int = 500,
                 relay: Relay | None = None, relay_interval: float = 1.0) -> None:
        self.runtime = runtime
        self.interval = interval
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Delivery of the outbox, in its own thread (None: no channel configured).
        self.relay = None if relay is None else RelayLoop(relay, self._stop, interval=relay_interval)

    def tick(self) -> int:
        """Fire what is due now; return how many timers were handled."""
        fired = self.runtime.run_due_timers(limit=self.batch)
        for entry in fired:  # DEBUG: at INFO a worker's billing month would log every timer
            log.debug("timer %s fired %s on %s: %s → %s (%s)", entry.get("timer"), entry["event"],
                     entry["instance"], entry["from"], entry["to"], entry.get("outcome"))
        return len(fired)

    def run_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                handled = self.tick()
            except Exception:  # keep the loop alive; a later tick retries what did not commit
                failures += 1
                pause = self.backoff(failures)
                log.exception("The timer sweep failed (%d time(s) in a row); retrying in %.1f s.",
                              failures, pause)
                self._stop.wait(pause)
                continue
            failures = 0
            if handled < self.batch:
                self._stop.wait(self.interval)

    def backoff(self, failures: int) -> float:
        """The pause after `failures` failed sweeps in a row: `interval`, doubled each time."""
        return float(min(self.interval * 2 ** min(failures - 1, 16), max(MAX_BACKOFF, self.interval)))

    def run_until_idle(self) -> int:
        """Sweep until two sweeps `interval` apart find nothing due; return how many were handled.

        The second look covers timers that another worker's open transaction is about to arm
        (they are invisible until it commits, and locked rows are skipped).
        """
        total = idle = 0
        while idle < 2:
            handled = self.tick()
            total += handled
            if handled:
                idle = 0
            else:
                idle += 1
                if idle < 2:
                    time.sleep(self.interval)
        return total

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="tollgate-scheduler", daemon=True)
        self._thread.start()
        if self.relay is not None:
            self.relay.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.relay is not None:
            self.relay.join(timeout)

    def running(self) -> bool:
        """Whether the thread started by `start` is still sweeping."""
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_TIMEOUT = 60.0


def sleep_until_stopped(scheduler: Scheduler) -> None:
    """Sweep until SIGTERM or SIGINT, then return once the sweep in progress is over (`tollgate worker`).

    The sweeps run in the scheduler's thread, so a signal never lands inside a transaction: the
    main thread only waits. On the first signal the thread finishes its batch — which commits
    whole — and stops; a second signal exits at once, abandoning the batch, whose transaction
    is rolled back when the process ends, so its timers stay due for the next worker.
    """
    requests: list[str] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        requests.append(name)
        if len(requests) > 1:
            log.warning("%s again: stopping now; the batch in progress is rolled back and its timers "
                        "stay due.", name)
            raise SystemExit(1)
        log.info("%s received: stopping after the batch in progress.", name)
        scheduler.stop(timeout=0)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        scheduler.start()
        log.info("Worker started: firing due timers (every %.1f s when idle, %d per batch).",
                 scheduler.interval, scheduler.batch)
        while scheduler.running():
            scheduler.join(0.5)
        if scheduler.relay is not None:  # the relay's batch in progress is sent and recorded first
            scheduler.relay.join(STOP_TIMEOUT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("Worker stopped (%s).", requests[0] if requests else "the scheduler ended")
