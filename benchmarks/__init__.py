"""Benchmark of the autoencoder lab: `python -m benchmarks` (or `make bench`), not part of the tests.

It measures training throughput against a textbook PyTorch loop, the machine's GEMM rate at the
models' layer shapes, the sweep's wall time, the dashboard's latency and memory, and inference
times, prints them and writes benchmarks/out/results.json. docs/benchmarks.md records a full run.
"""
