"""Benchmarks: each prints medians of repeated runs measured side by side."""
