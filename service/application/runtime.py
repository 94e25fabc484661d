"""The application's one front: the services over one database, composed once, for the edges.

`Runtime` holds no logic of its own: each method hands the call to the service that does it
(rules versions, reads, events, clocks, sweeps, batches), each of which takes only what it uses.
The HTTP API, the CLI, the scheduler, the worker processes and the demo get one of these from
`service/bootstrap.py`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tollgate.service.application import facts as fact_providers
from tollgate.service.application.batches import Batches
from tollgate.service.application.clocks import Clocks
from tollgate.service.application.events import Events
from tollgate.service.application.idempotency import Idempotency
from tollgate.service.application.impact import Impact
from tollgate.service.application.judging import Units
from tollgate.service.application.leases import ClockLeases
from tollgate.service.application.parallel import Workers
from tollgate.service.application.policy_files import definitions
from tollgate.service.application.reads import Reads
from tollgate.service.application.relay import Outbox
from tollgate.service.application.replans import Replanned, Replans
from tollgate.service.application.rules_history import RulesHistory
from tollgate.service.application.rules_versions import RulesVersion, RulesVersions
from tollgate.service.application.sweeps import TIMER_ACTOR, Sweeps
from tollgate.service.application.times import system_now
from tollgate.service.storage.db import Database

__all__ = ["RulesVersion", "Runtime", "system_now"]


class Runtime:
    """Everything the HTTP API, the scheduler, the worker and the demo do, over one database."""

    def __init__(self, db: Database, *, now: Callable[[], datetime] = system_now, workers: int = 1,
                 secret_key: str | None = None) -> None:
        """`workers` > 1: big clock sweeps and `fire_many` on a SQLite file run in that many
        worker processes (`service/application/parallel.py`), started on first use; `close()`
        stops them. `secret_key` (TOLLGATE_SECRET_KEY) keys the idempotency fingerprints; without
        it, a random key kept in the database does (`Idempotency.fingerprint`)."""
        missing = fact_providers.missing_providers(definitions())
        if missing:
            raise RuntimeError(f"No provider for the facts {', '.join(missing)} in "
                               "service/application/facts.py.")
        self.db = db
        self.now = now
        self.workers = workers
        self.versions = RulesVersions(db, now)
        self.rules_history = RulesHistory(db, now)
        self.impact = Impact(db, self.rules_history)
        self.units = Units(self.versions, now, row_locks=db.for_update())
        self.reads = Reads(db)
        self.idempotency = Idempotency(db, now, secret_key)
        self.events = Events(db, self.units, self.reads, self.idempotency)
        self.leases = ClockLeases(db)
        self.sweeps = Sweeps(db, self.units, self.leases)
        self.parallel = Workers(db, workers)
        self.replans = Replans(db, self.versions)
        self.clocks = Clocks(db, now, self.sweeps, self.leases, self.parallel, self.replans)
        self.batches = Batches(db, self.sweeps, self.parallel)
        self.outbox = Outbox(db, now)  # delivery bookkeeping; the relay itself is built in bootstrap
        # The services' methods, as the edges call them (bound once: no per-call indirection).
        self.engine_for = self.versions.engine_for
        self.active_rules = self.versions.active_rules
        self.validate_rules = self.versions.validate_rules
        self.scheduled_rules = self.versions.scheduled_rules
        self.list_rules_versions = self.rules_history.versions
        self.diff_rules_versions = self.rules_history.diff
        self.rules_impact = self.impact.report
        self.import_rules_file = self.versions.import_rules_file
        self.get_instance = self.reads.get_instance
        self.list_instances = self.reads.list_instances
        self.history = self.reads.history
        self.notifications = self.reads.notifications
        self.notification_page = self.reads.notification_page
        self.failed_timers = self.reads.failed_timers
        self.create_instance = self.events.create_instance
        self.fire = self.events.fire
        self.fire_batch = self.events.fire_batch
        self.fingerprint = self.idempotency.fingerprint
        self.create_clock = self.clocks.create_clock
        self.get_clock = self.clocks.get_clock
        self.advance_clock = self.clocks.advance_clock
        self.fired_page = self.clocks.fired_page
        self.sweep = self.sweeps.sweep
        self.fire_many = self.batches.fire_many
        self.start_workers = self.parallel.start
        self.redeliver = self.outbox.redeliver

    # ── rules versions that take effect (`replans.py`: armed timers re-planned once) ────────────

    def activate_rules(self, text: str, *, source: str = "api", actor: str = "admin",
                       filename: str = "rules.yaml", effective_at: datetime | None = None) -> RulesVersion:
        """Activate `text` as a new version, now or at `effective_at`; one activated now re-plans
        the real-time timers at once (a scheduled one, when its instant comes)."""
        version = self.versions.activate_rules(text, source=source, actor=actor, filename=filename,
                                               effective_at=effective_at)
        self.replan_timers()
        return version

    def reactivate_rules(self, number: int, *, actor: str = "admin",
                         effective_at: datetime | None = None) -> RulesVersion:
        """Activate the text of the stored version `number` again, as a new version."""
        version = self.versions.reactivate(number, actor=actor, effective_at=effective_at)
        self.replan_timers()
        return version

    def cancel_rules_version(self, number: int, *, actor: str = "admin") -> RulesVersion:
        return self.versions.cancel(number, actor=actor)

    def replan_timers(self, now: datetime | None = None) -> Replanned | None:
        """Re-plan real-time timers if another version took effect since they were planned."""
        return self.replans.real_time(self.now() if now is None else now)

    def run_due_timers(self, *, limit: int = 1000, actor: str = TIMER_ACTOR) -> list[dict[str, Any]]:
        """Fire the real-time timers due now, after re-planning them if a version took effect
        (the same instant for both, so no timer due after a version's instant fires unplanned)."""
        now = self.now()
        self.replans.real_time(now)
        return self.sweeps.run_due_timers(limit=limit, actor=actor, until=now)

    def bootstrap(self, rules_path: str | Path, *, strict: bool = True) -> RulesVersion:
        """Migrate the schema; import the rules file if it changed since its last import
        (`RulesVersions.start`, which says what `strict` does); the active version."""
        self.db.migrate()
        version = self.versions.start(rules_path, strict=strict)
        # Everything alive now (modules, SQLAlchemy, the engine and its compiled rules) lives as
        # long as the process: move it out of the cyclic collector's reach. A full collection
        # walked these ~90,000 objects in ~50 ms; a billing run paid that ~25 times (1.2 of 8.3 s
        # CPU at N=20,000). Reference counting still frees them; only cycles among them would stay.
        # (Sweeps also raise the young-generation threshold while they run: Database.bulk_work.)
        gc.freeze()
        return version

    def close(self) -> None:
        """Stop the worker processes (if any were started) and close the database's connections."""
        self.parallel.close()
        self.db.dispose()
