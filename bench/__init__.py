"""Benchmarks, run with `make bench` (`python -m bench`). They are not tests: they print figures."""
