"""Data loading for rlmed: located rows, format conversion, mixing and packing.

Everything here is pure Python so it imports quickly (no torch/transformers).
"""

from rlmed.data.records import DataError, Record, read_records, scan_records

__all__ = ["DataError", "Record", "read_records", "scan_records"]
