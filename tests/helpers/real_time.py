"""Real time pinned for a test and moved by it: pass an instance as the app's or runtime's `now`."""

from __future__ import annotations

from datetime import datetime


class RealTime:
    """The server's real time, pinned at `start`; a test sets `now` to move it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now
