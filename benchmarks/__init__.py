"""Benchmark scripts, run from the repository root as modules: ``python -m benchmarks.ethanol``,
``python -m benchmarks.speed``, … (``make bench`` runs the quick forms of all of them)."""
