"""Evaluation: zero-shot classification, linear probe, retrieval, ..."""
