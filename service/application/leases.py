"""The lease that serializes the advances of one test clock, held on the clock's row.

One advance of a clock runs at a time (any thread or process): it takes the lease, every batch it
writes renews and checks it (`hold`), and a lease whose holder died lapses `LEASE_SECONDS` after
its last batch. Leases run on real time, never a test clock's nor an injected `now`.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, or_, select, update

from tollgate.service.exceptions import ClockBusy
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import clocks
from tollgate.workflows.exceptions import NotFound

log = logging.getLogger("tollgate.timers")


def _wall_now() -> datetime:
    """Real time for leases (never a test clock's, nor an injected `now`)."""
    return datetime.now(UTC)


class ClockLeases:
    """Leases on the clocks of `db`."""

    #: An advance's lease on its clock lapses this long after the advance's last batch: an advance
    #: whose process died holds the clock no longer than this. Every batch renews it.
    LEASE_SECONDS = 60.0
    #: How long an advance waits for the advance holding its clock before answering 409 ClockBusy.
    ADVANCE_WAIT_SECONDS = 30.0

    def __init__(self, db: Database) -> None:
        self.db = db

    def take(self, clock_id: str) -> str:
        """Take the clock for one advance, waiting for the advance that holds it (up to
        `ADVANCE_WAIT_SECONDS`, then ClockBusy); returns the lease's token. A lease lapses
        `LEASE_SECONDS` after its holder's last batch, so a dead holder frees the clock."""
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self.ADVANCE_WAIT_SECONDS
        pause = 0.005
        while True:
            wall = _wall_now()
            with self.db.transaction() as conn:
                taken = conn.execute(update(clocks).where(
                    clocks.c.id == clock_id,
                    or_(clocks.c.lease_owner.is_(None), clocks.c.lease_expires < wall))
                    .values(lease_owner=token, lease_expires=wall + timedelta(seconds=self.LEASE_SECONDS))
                ).rowcount
                exists = taken or conn.execute(select(clocks.c.id).where(clocks.c.id == clock_id)).first()
            if taken:
                return token
            if not exists:
                raise NotFound(f"There is no clock '{clock_id}'.")
            if time.monotonic() >= deadline:
                raise ClockBusy(f"The clock '{clock_id}' is being advanced by another request, still after "
                                f"{self.ADVANCE_WAIT_SECONDS:g} s; retry once it has finished (GET "
                                f"/clocks/{clock_id} shows where it is).")
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def hold(self, conn: Connection, clock_id: str, lease: str) -> None:
        """Renew the lease inside a batch's transaction, or undo the batch if it was lost."""
        held = conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.lease_owner == lease)
                            .values(lease_expires=_wall_now() + timedelta(seconds=self.LEASE_SECONDS))
                            ).rowcount
        if held != 1:
            raise ClockBusy(f"The advance of the clock '{clock_id}' lost its lease (none of its batches "
                            f"committed for {self.LEASE_SECONDS:g} s, so another advance took the clock); "
                            "what it fired stays fired. Read the clock and advance it again if needed.")

    def release(self, clock_id: str, lease: str) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.lease_owner == lease)
                             .values(lease_owner=None, lease_expires=None))
        except Exception:  # the lease lapses by itself; the advance's own error is what matters
            log.exception("The lease on the clock '%s' could not be released; it lapses in %g s.",
                          clock_id, self.LEASE_SECONDS)
