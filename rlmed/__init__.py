"""rlmed: preference training for medical assistants, one recipe per pipeline."""

__version__ = "0.1.0"
