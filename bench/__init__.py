"""Benchmarks: timing goals measured outside the test suite (`python -m bench.<name>`)."""
