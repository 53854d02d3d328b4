"""Repeatable measurements, not run by `make test`; each is `python -m benchmarks.NAME [--json]`
from the repository root (its docstring says what it measures)."""
