"""The chunk quality suite (great-expectations) on real frames: each check fails on the row that
breaks it and only on it."""

from __future__ import annotations

import pandas as pd

from rag_platform.lib.models import CHUNK_COLUMNS
from rag_platform.lib.quality import CHUNK_CHECKS, validate_chunks


def _frame(rows: list[tuple[str, str, int, str]]) -> pd.DataFrame:
    """Chunks of ``(chunk id, text, token count, tenant)``."""
    frame = pd.DataFrame(
        [{"chunk_id": c, "text": t, "token_count": n, "tenant": tenant} for c, t, n, tenant in rows]
    )
    return frame.reindex(columns=CHUNK_COLUMNS)


class TestValidateChunks:
    def test_good_and_empty_frames_pass(self) -> None:
        good = _frame(
            [("1", "Backups are kept for 30 days.", 8, "t"), ("2", "Masked <EMAIL>.", 5, "t")]
        )
        assert all(o.success for o in validate_chunks(good, "t", 200).values())
        empty = validate_chunks(_frame([]), "t", 200)
        assert set(empty) == set(CHUNK_CHECKS) and all(o.success for o in empty.values())

    def test_each_check_names_its_failure(self) -> None:
        bad = _frame(
            [
                ("1", "Fine text.", 3, "t"),
                ("1", "", 0, "t"),  # duplicate id, empty text, 0 tokens
                ("3", "Write to jane.doe@example.com today.", 300, "other"),
            ]
        )
        results = validate_chunks(bad, "t", 200)
        failed = {name for name, o in results.items() if not o.success}
        assert failed == set(CHUNK_CHECKS)
        assert results["chunk_no_residual_pii"].unexpected_count == 1
        assert results["chunk_tenant_matches_partition"].examples == ["other"]
        assert results["chunk_token_counts_in_bounds"].unexpected_count == 2
