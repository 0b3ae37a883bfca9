"""Benchmarks: per-stage latency and FLOPs of the engine, and HTTP throughput of the server.

Run from the repository root, e.g. ``python -m benchmarks.bench_pipeline --help``.
Results (JSON + a markdown table) go to ``benchmarks/results/``; see docs/benchmarks.md.
"""
