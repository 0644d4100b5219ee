"""Quarantine records: the documents a stage could not process, persisted per tenant and stage.

``<tenant state>/quarantine_<stage>.json`` holds the stage's last run's records (a JSON list of
``{doc_id, uri, stage, reason}``), for operators to read next to the asset metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rag_platform.lib.cache import atomic_write
from rag_platform.lib.models import Quarantined


def save_quarantine(state_dir: Path, stage: str, items: Sequence[Quarantined]) -> Path:
    """Replaces the stage's quarantine file with ``items`` (atomically).

    Args:
        state_dir: the tenant's state folder (``RAG_HOME/cache/<tenant>``).
        stage: ``parse``, ``mask`` or ``chunk``.
        items: this run's quarantined documents (an empty list clears the file's records).

    Returns:
        The path written.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"quarantine_{stage}.json"
    text = json.dumps([asdict(i) for i in items], indent=1)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def quarantined_doc_ids(state_dir: Path) -> set[str]:
    """Ids of the documents every stage's last run quarantined (all ``quarantine_*.json``).

    Args:
        state_dir: the tenant's state folder.

    Returns:
        The document ids; empty when no stage quarantined anything. An unreadable file counts
        as empty (it is rewritten by its stage's next run).
    """
    ids: set[str] = set()
    for path in sorted(state_dir.glob("quarantine_*.json")):
        try:
            ids.update(str(item["doc_id"]) for item in json.loads(path.read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return ids
