"""Stage caches: what is reused, what is pruned, and what survives a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_platform.lib.cache import StageCache, atomic_write, config_hash
from rag_platform.lib.tenants import ChunkingConfig


class TestStageCache:
    def test_reuse_and_prune(self, tmp_path: Path) -> None:
        path = tmp_path / "c.parquet"
        cache = StageCache(path)
        cache.put("a", {"x": 1})
        cache.put("b", {"x": 2})
        cache.save()
        again = StageCache(path)
        assert again.get("a") == {"x": 1}
        again.save()  # only "a" was used in this run
        assert StageCache(path).get("b") is None

    def test_corrupt_file_is_rebuilt_not_fatal(self, tmp_path: Path) -> None:
        path = tmp_path / "c.parquet"
        path.write_bytes(b"not parquet")
        cache = StageCache(path)
        assert cache.get("a") is None
        cache.put("a", [1])
        cache.save()
        assert StageCache(path).get("a") == [1]


class TestAtomicWrite:
    def test_a_failed_write_leaves_the_old_file_and_no_temporary(self, tmp_path: Path) -> None:
        path = tmp_path / "f.txt"
        path.write_text("old")

        def fails(p: Path) -> None:
            p.write_text("half")
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            atomic_write(path, fails)
        assert path.read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


class TestConfigHash:
    def test_equal_configs_hash_alike_and_a_change_shows(self) -> None:
        a = ChunkingConfig(max_tokens=200, overlap_tokens=32)
        assert config_hash(a) == config_hash(ChunkingConfig(overlap_tokens=32, max_tokens=200))
        assert config_hash(a) != config_hash(ChunkingConfig(max_tokens=201, overlap_tokens=32))
        assert len(config_hash({"k": 1})) == 16
