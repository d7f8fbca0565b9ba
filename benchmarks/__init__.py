"""Benchmarks of the whole delivery pipeline; not part of the test suite (`./dev bench`)."""
