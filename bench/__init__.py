"""Benchmarks (not shipped): run them from the repository root with `python -m bench.<name>`."""
