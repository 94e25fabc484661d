"""tollgate's pure core: workflow definitions, the policy loader, guards, calendar, engine, diagrams.

Nothing in this package performs I/O, reads the wall clock, draws randomness or logs: callers pass
time, facts and file text in, bind entropy and a password hasher to the `Engine`
(`workflows/ports.py`), and receive an `Outcome` back. ruff (TID251), import-linter and mypy's
strict flags hold it to that (pyproject.toml).
"""
