"""Files holding patient text are not readable by other users (issue 15 item 8).

The judge cache keeps its folder 0700 and shards 0600 (narrowing older, wider ones) and refuses symbolic links;
the atomic writer never widens mkstemp's 0600 for a private file or inside a folder closed to others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reward.cache import ChatCache, UnsafeCacheError
from rlmed import artifacts
from rlmed.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_jsonl


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def no_cache_key(monkeypatch):
    monkeypatch.delenv("RLMED_CACHE_KEY", raising=False)


# --------------------------------------------------------------------------------------------- cache


def test_a_new_cache_is_a_0700_folder_of_0600_shards(tmp_path):
    folder = tmp_path / "run" / "judge_cache"
    with ChatCache(folder, shard="0") as cache:
        cache.put("k", "患儿发热三天")
    assert mode(folder) == 0o700 and mode(folder / "shard-0.jsonl") == 0o600


def test_an_existing_wide_cache_is_narrowed(tmp_path):
    folder = tmp_path / "judge_cache"
    folder.mkdir()
    os.chmod(folder, 0o755)
    for name in ("shard-0.jsonl", "shard-1.jsonl"):
        (folder / name).write_text('{"key": "k", "text": "t", "usage": {}}\n', encoding="utf-8")
        os.chmod(folder / name, 0o644)
    assert ChatCache(folder, shard="0").get("k") is not None
    assert mode(folder) == 0o700 and mode(folder / "shard-0.jsonl") == 0o600 and mode(folder / "shard-1.jsonl") == 0o600


def test_a_symlinked_shard_is_refused_and_not_written_through(tmp_path):
    folder, elsewhere = tmp_path / "judge_cache", tmp_path / "elsewhere.jsonl"
    folder.mkdir(mode=0o700)
    elsewhere.write_text('{"key": "k", "text": "planted", "usage": {}}\n', encoding="utf-8")
    (folder / "shard-0.jsonl").symlink_to(elsewhere)
    for shard in ("0", "1"):  # our own shard (appended to) and another rank's (read)
        with pytest.raises(UnsafeCacheError, match="symbolic link"):
            ChatCache(folder, shard=shard)
    assert elsewhere.read_text(encoding="utf-8").count("\n") == 1


def test_a_symlinked_cache_folder_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "judge_cache").symlink_to(real)
    with pytest.raises(UnsafeCacheError, match="symbolic link"):
        ChatCache(tmp_path / "judge_cache")
    assert list(real.iterdir()) == []


def test_a_shard_that_is_not_a_regular_file_is_refused(tmp_path):
    (tmp_path / "shard-odd.jsonl").mkdir()
    with pytest.raises(UnsafeCacheError, match="not a regular file"):
        ChatCache(tmp_path)


# --------------------------------------------------------------------------------------------- atomic writer


def test_private_files_are_0600_in_new_0700_folders(tmp_path):
    target = tmp_path / "run" / "fb" / "scored.jsonl"
    atomic_write_jsonl(target, [{"prompt": "患儿咳嗽", "completion": "多喝水"}], private=True)
    assert mode(target) == 0o600 and mode(tmp_path / "run") == 0o700 and mode(tmp_path / "run" / "fb") == 0o700


def test_a_file_in_a_folder_closed_to_others_is_not_widened(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    atomic_write_jsonl(folder / "candidates.jsonl", [{"completion": "答"}])
    assert mode(folder / "candidates.jsonl") == 0o600


def test_shared_artifacts_keep_the_umask_mode(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    os.chmod(folder, 0o755)
    atomic_write_json(folder / "manifest.json", {"a": 1})
    assert mode(folder / "manifest.json") == artifacts.FILE_MODE
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    atomic_write_bytes(closed / "plot.png", b"png", private=False)  # asked for explicitly: the umask's mode
    assert mode(closed / "plot.png") == artifacts.FILE_MODE


def test_private_write_over_an_existing_wide_file_leaves_0600(tmp_path):
    target = tmp_path / "pairs.jsonl"
    target.write_text("old\n", encoding="utf-8")
    os.chmod(target, 0o644)
    atomic_write_jsonl(target, [{"chosen": "甲"}], private=True)
    assert mode(target) == 0o600 and target.read_text(encoding="utf-8").startswith('{"chosen"')
