"""Builders of tiny local models and tokenizers for tests and benchmarks (no network, no hub)."""
