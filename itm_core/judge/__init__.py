"""Judging models: retrieval metrics, evaluation, benchmarks and explanations."""
