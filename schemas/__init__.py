"""JSON Schemas (data files): rules.yaml, workflow definitions and API request/response bodies."""
