"""Repeatable measurements, not run by `make test`; each is `python -m benchmarks.NAME [--json]`
from the repository root (its docstring says what it measures)."""

# Imported first so that the package's OpenMP setting is in place before any benchmark imports
# torch: the benchmarks measure what users run.
import discourse_rl  # noqa: F401
