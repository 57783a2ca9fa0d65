"""Observability: every metric defined once, structured logs."""
