"""Atomic writes, cached content hashes, metrics log truncation on resume."""

from __future__ import annotations

import json
import os

import pytest

from rlmed.artifacts import HashCache, MetricsLog, atomic_write_json, manifest_hash, read_manifest


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"a": 1})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"a": Unserialisable()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind


def test_unreadable_manifest_counts_as_absent(tmp_path):
    (tmp_path / "manifest.json").write_text('{"id": "x", ')  # a torn write from some other tool
    assert read_manifest(tmp_path) is None
    assert manifest_hash(tmp_path / "nope") is None


def test_hash_cache_reuses_hash_until_size_or_mtime_changes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("a\n")
    cache = HashCache(tmp_path / "cache.json")
    first = cache.file_hash(data)
    cache.save()

    # Same size and mtime: the cached hash is returned even though content differs (that is the contract).
    stat = data.stat()
    data.write_text("b\n")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert HashCache(tmp_path / "cache.json").file_hash(data) == first

    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert HashCache(tmp_path / "cache.json").file_hash(data) != first


def test_folder_hash_changes_with_any_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\0" * 10)
    cache = HashCache(tmp_path / "cache.json")
    before = cache.path_hash(folder)
    (folder / "weights.bin").write_bytes(b"\1" * 10)
    assert cache.path_hash(folder) != before


def test_metrics_truncate_after_drops_later_steps(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 7):
        log.log({"loss": 1.0 / step}, step=step)
    log.truncate_after(4)
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4]


def test_metrics_log_keeps_non_finite_values_visible(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log({"loss": float("nan")}, step=1)
    assert log.read() == [{"step": 1, "loss": "nan"}]


def test_atomic_write_gives_the_umask_mode_not_owner_only(tmp_path):
    os.chmod(tmp_path, 0o755)  # pytest's tmp_path is closed (0700), and files in a closed folder stay 0600
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
