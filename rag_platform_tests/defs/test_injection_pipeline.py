"""Prompt-injection screening through a real Dagster materialization: real SciFact abstracts with
published injection strings planted in two of them, a tenant that quarantines flagged documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform_tests.conftest import SCIFACT
from rag_platform_tests.lib.test_injection import PLANTED

pytestmark = pytest.mark.slow  # a whole materialization: about 2 minutes on 2 shared cores


def test_planted_injections_are_flagged_and_quarantined(
    rag_home, write_tenants, tmp_path: Path
) -> None:
    rows = []
    with (SCIFACT / "corpus.jsonl").open() as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == 12:
                break
    rows[2]["text"] = rows[2]["text"] + " " + PLANTED[0]
    rows[9]["text"] = PLANTED[1] + " " + rows[9]["text"]
    corpus = tmp_path / "planted.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_tenants(
        {
            "id": "inj",
            "sources": [
                {
                    "id": "corpus",
                    "type": "dataset",
                    "path": str(corpus),
                    "id_column": "_id",
                    "title_column": "title",
                    "text_column": "text",
                }
            ],
            "pii": {"ner": False},
            "injection": {"quarantine": True, "threshold": 0.5},
        }
    )
    summary = materialize_tenant("inj", rag_home)
    assert summary.success and summary.published, summary.failed_checks
    masked = summary.metadata["masked_documents"]
    assert masked["injection_flagged"] == 2 and masked["injection_quarantined"] == 2
    assert masked["documents"] == 10 and summary.quarantined == 2
    planted_ids = {make_doc_id("inj", "corpus", str(rows[i]["_id"])) for i in (2, 9)}
    store = MetadataStore.from_settings(rag_home)
    try:
        published = store.get_published_version("inj")
    finally:
        store.dispose()
    assert published is not None
    with EdgeIndexReader(Path(published.path)) as reader:
        indexed = {p["doc_id"] for _, p in reader.scroll()}
    assert len(indexed) == 10 and not planted_ids & indexed
