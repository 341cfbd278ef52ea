"""Scores to numbers: metrics and the statistics behind intervals and tests."""
