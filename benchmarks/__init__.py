"""Benchmarks and the downstream evaluation harness (not part of the installed package)."""
