"""Storage: the database, its dialects, the schema, bulk writes and the unit of work (under application)."""
