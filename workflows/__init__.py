"""tollgate's pure core: workflow definitions, the policy loader, guards, calendar, engine, diagrams.

Nothing in this package performs I/O or reads the wall clock: callers pass time, facts and
randomness in and receive an `Outcome` back.
"""
