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
