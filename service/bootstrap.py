"""Wiring: a process's database, application services and rules, built in one place from `Settings`.

`create_app` (every gunicorn worker), `tollgate serve` / `worker` / `rules activate`, the demo and
the tests all start here, so that what a process is made of is decided once.
"""

from __future__ import annotations

from tollgate.service.application.rules_versions import RulesVersion
from tollgate.service.application.runtime import Runtime
from tollgate.service.application.times import system_now
from tollgate.service.settings import Settings
from tollgate.service.storage.db import Database


def build_runtime(settings: Settings, *, batch_workers: int | None = None) -> Runtime:
    """The application over the settings' database, nothing read or migrated yet (`batch_workers`:
    instead of the settings', e.g. 1 for a process that never fires big batches)."""
    return Runtime(Database(settings.database_url), now=settings.now or system_now,
                   workers=settings.batch_workers if batch_workers is None else batch_workers,
                   secret_key=settings.secret_key)


def start_runtime(settings: Settings, *, strict: bool = True,
                  batch_workers: int | None = None) -> tuple[Runtime, RulesVersion]:
    """`build_runtime`, then migrate the database and import the rules file if it changed since its
    last import (`Runtime.bootstrap`; `strict` there); the runtime and the active version."""
    runtime = build_runtime(settings, batch_workers=batch_workers)
    try:
        version = runtime.bootstrap(settings.rules_path, strict=strict)
    except BaseException:
        runtime.close()
        raise
    return runtime, version
