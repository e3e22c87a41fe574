"""Benchmarks of stream-infer."""
