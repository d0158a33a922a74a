"""Reward sources: score(samples) -> scores. Imports nothing from rlmed, so a user can use it alone."""
