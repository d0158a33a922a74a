"""release_mapped_pages drops the pages a process read from a memory-mapped Arrow file, and the data stays."""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest

from rlmed.data.mapped_pages import release_mapped_pages


def rss_file_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_read_pages_leave_the_resident_set_and_read_back_the_same(tmp_path):
    path = tmp_path / "rows.arrow"
    values = pa.array([f"第{i}行：" + "咳嗽发热" * 20 for i in range(60_000)])  # about 16 MB
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("item", pa.string())])) as writer:
        writer.write_batch(pa.record_batch([values], names=["item"]))
    mapped = pa.memory_map(str(path))
    table = pa.ipc.open_stream(mapped).read_all()
    before = rss_file_kib()
    assert table.column("item").to_pylist() == values.to_pylist()  # every page read
    read = rss_file_kib()
    assert release_mapped_pages(path) >= 1
    released = rss_file_kib()
    assert read - before > 8_000 and released < read - 8_000, (before, read, released)
    assert table.column("item").to_pylist() == values.to_pylist()  # mapped again from the page cache
    assert release_mapped_pages(tmp_path / "not-mapped.arrow") == 0


def resident_kib(path) -> int:
    """Resident KiB of this process's mappings of `path`."""
    target, total, current = str(path.resolve()), 0, None
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):
                current = fields[5] if len(fields) > 5 else None
            elif fields[0] == "Rss:" and current == target:
                total += int(fields[1])
    return total


def many_batches(path, batches: int = 400) -> list[int]:
    """An Arrow stream file of `batches` record batches, each 20 rows of 2 KB of text and a small count: what
    a prepared source or a tokenised set looks like to a process that opens it (headers and small columns
    sparse among big ones); the counts."""
    schema = pa.schema([("text", pa.string()), ("n", pa.int32())])
    counts = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for b in range(batches):
            n = [b * 20 + i for i in range(20)]
            counts += n
            writer.write_batch(pa.record_batch([pa.array(["发热" * 700] * 20), pa.array(n, pa.int32())],
                                               schema=schema))
    return counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_opening_a_prepared_file_and_reading_a_small_column_leave_no_pages_resident(tmp_path):
    """Opening reads every batch's header and a small column touches every batch: without letting go, each
    touch keeps at least a page (the control); open_files and column_values keep RSS flat."""
    from datasets import Dataset

    from rlmed.data.prepared import open_files
    from rlmed.data.tokenized import column_values

    path = tmp_path / "data.arrow"
    counts = many_batches(path)
    control = Dataset.from_file(str(path))
    assert resident_kib(path) >= 400 * 4  # a page per batch header, at least
    del control
    release_mapped_pages(path)

    dataset = open_files(tmp_path, ["data.arrow"])
    assert resident_kib(path) < 64
    assert column_values(dataset, "n").tolist() == counts
    assert resident_kib(path) < 64
    assert dataset[7999]["n"] == counts[7999] and dataset.num_rows == 8000  # still reads
