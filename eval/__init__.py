"""Offline evaluation: suites, metrics, runner, reports and benchmarks."""
