"""Benchmarks of lst_fast: scripts (python -m bench.bench_step, ...) on one harness (bench/harness.py) and
pytest-benchmark files (python -m pytest bench). See the README's Performance section."""
