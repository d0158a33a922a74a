"""Reading W&B's offline run files (`run-*.wandb`) back, record by record.

The file is a LevelDB-style log: a 7-byte header (':W&B', magic 0xBEE1, version), then 32 KiB blocks of
chunks, each with a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a
serialised `wandb_internal_pb2.Record`. wandb 0.31 ships no Python reader, so the tests carry this one.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer too small for a chunk header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    """Key/value items of a history, summary or config record; keys come as `key` or as `nested_key` parts."""
    import json

    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        if key:
            out[key] = json.loads(item.value_json)
    return out


def summarise(path: Path) -> dict:
    """The run's group/job type/name, config, history rows (by step) and final summary, decoded from JSON."""
    out: dict = {"history": {}, "summary": {}, "config": {}}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, job_type=record.run.job_type, name=record.run.display_name)
            out["config"].update(_items(record.run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "history":
            row = _items(record.history.item)
            step = row.get("_step", record.history.step.num)
            out["history"].setdefault(step, {}).update({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
    return out
