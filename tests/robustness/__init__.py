"""Robustness tests (issue 5): bad input, hostile clients, faults."""
