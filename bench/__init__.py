"""Benchmarks: each prints its ratio against a raw baseline run in the same process, last."""
