"""Evaluation: metrics, pairwise judging, contamination, reports."""
