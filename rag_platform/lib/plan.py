"""Cost preview of a tenant run: what the next materialization would parse, mask, chunk and
embed, how long it would take and what it would cost, computed from the content caches without
running (or writing) anything.

Each count follows the stage's own cache key (``lib/ingestion/parse.py``, ``mask.py``,
``chunk.py``, ``lib/embedding/stage.py``): a document is counted for a stage when the stage's
cache has no entry for it. Chunks of documents that must be chunked again cannot be known
without chunking them, so ``to_embed`` counts the cached chunks whose vectors are missing plus
an estimate for those documents (their text length over the chunk stride, or the tenant's mean
chunks per document when only files' bytes are known). Seconds come from the per-stage rates of
the tenant's last run (:class:`StageRates`, written by the runner after every run), else of any
tenant's last run, else from :data:`DEFAULT_RATES`; the cost from the price table
(:class:`~rag_platform.lib.costs.PriceTable`): embedding tokens plus compute seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rag_platform.lib.cache import atomic_write, config_hash
from rag_platform.lib.connectors import build_connector
from rag_platform.lib.costs import PriceTable
from rag_platform.lib.embedding.stage import model_slug
from rag_platform.lib.ingestion.parse import PARSER_VERSION
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.progress import STAGES
from rag_platform.lib.tenants import TenantConfig
from rag_platform.settings import Settings

log = logging.getLogger(__name__)

#: File under RAG_HOME holding the per-stage rates of the last runs.
RATES_FILE = "stage_rates.json"

#: Items per second per stage when no run was measured yet: parse, mask and chunk count
#: documents, embed and index chunks, evaluate golden questions. Figures measured on 2 cores
#: (issue #11: embedding ~16 chunks/s with PyTorch, evaluation 64 questions in 91 s, masking
#: ~0.2 s per 10-Q filing), rounded down: an estimate should not promise too much.
DEFAULT_RATES: dict[str, float] = {
    "parse": 5.0,
    "mask": 5.0,
    "chunk": 50.0,
    "embed": 16.0,
    "index": 500.0,
    "evaluate": 0.7,
}

#: Golden questions assumed for a tenant with a golden set but no evaluation measured yet.
DEFAULT_QUESTIONS = 64

#: Characters per token of English text with the MiniLM WordPiece vocabulary (an estimate for
#: documents not chunked yet).
CHARS_PER_TOKEN = 4.0

#: MIME types whose bytes are text (their length estimates their characters); other files'
#: characters are estimated as a quarter of their bytes (PDF, DOCX).
_TEXT_TYPES = ("text/", "application/json", "application/xml")


class StageRates:
    """Per-stage rates (items per second) measured by runs, kept in ``RAG_HOME/stage_rates.json``.

    The file holds ``{"tenants": {tenant: {stage: rate}}, "last": {stage: rate},
    "questions": {tenant: n}}``; a stage that processed nothing in a run keeps its previous rate.
    An unreadable file counts as empty.

    Args:
        home: ``RAG_HOME``.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / RATES_FILE

    def load(self) -> dict[str, Any]:
        """The file's content (empty sections when it does not exist or cannot be read)."""
        data: dict[str, Any] = {"tenants": {}, "last": {}, "questions": {}}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                for key in data:
                    if isinstance(raw.get(key), dict):
                        data[key] = raw[key]
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable stage rates %s: %s", self.path, exc)
        return data

    def rates_for(self, tenant: str) -> dict[str, float]:
        """Per-stage rates for ``tenant``: its own last measurement, else any tenant's last,
        else :data:`DEFAULT_RATES`."""
        data = self.load()
        own = data["tenants"].get(tenant, {})
        out = {}
        for stage in STAGES:
            value = own.get(stage, data["last"].get(stage, DEFAULT_RATES[stage]))
            out[stage] = float(value) if float(value) > 0 else DEFAULT_RATES[stage]
        return out

    def questions_for(self, tenant: str) -> int | None:
        """Golden questions the tenant's last evaluation ran, or None."""
        value = self.load()["questions"].get(tenant)
        return int(value) if value is not None else None

    def record(
        self,
        tenant: str,
        rates: Mapping[str, float],
        questions: int | None = None,
        shared: Mapping[str, float] | None = None,
    ) -> None:
        """Merges one run's measured rates and writes the file atomically.

        Args:
            tenant: the tenant that ran.
            rates: its measured rates (:func:`measured_rates`); they become the tenant's own.
            questions: golden questions its evaluation ran (None: not evaluated).
            shared: the rates other tenants may fall back on (default ``rates``); the runner
                passes only stages with enough items (:data:`MIN_SHARED_ITEMS`), so a
                one-document run's start-up cost does not become every new tenant's estimate.
        """
        data = self.load()

        def clean(values: Mapping[str, float]) -> dict[str, float]:
            return {s: round(float(r), 3) for s, r in values.items() if s in STAGES and r > 0}

        data["tenants"].setdefault(tenant, {}).update(clean(rates))
        data["last"].update(clean(rates if shared is None else shared))
        if questions:
            data["questions"][tenant] = int(questions)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=2, sort_keys=True)
        atomic_write(self.path, lambda p: p.write_text(text))


#: Items a stage must have processed for its rate to be shared with other tenants.
MIN_SHARED_ITEMS = 20


def measured_rates(
    metadata: Mapping[str, Mapping[str, Any]], min_items: int = 1
) -> dict[str, float]:
    """Per-stage rates of one run from its assets' metadata (``PipelineSummary.metadata``):
    items processed now over the stage's seconds; stages that processed fewer than
    ``min_items`` items are left out."""
    sources = {
        "parse": ("parsed_documents", "processed", "seconds"),
        "mask": ("masked_documents", "processed", "seconds"),
        "chunk": ("chunks", "processed", "seconds"),
        "embed": ("chunk_embeddings", "embedded", "seconds"),
        "index": ("search_index", "chunks", "seconds"),
        "evaluate": ("index_evaluation", "questions", "seconds"),
    }
    out: dict[str, float] = {}
    for stage, (asset, count_key, seconds_key) in sources.items():
        values = metadata.get(asset, {})
        if stage == "evaluate" and values.get("reused"):
            continue
        try:
            count = float(values.get(count_key) or 0)
            seconds = float(values.get(seconds_key) or 0)
        except (TypeError, ValueError):
            continue
        if count >= max(1, min_items) and seconds > 0:
            out[stage] = count / seconds
    return out


@dataclass
class IngestPlan:
    """What the next run of a tenant would do (:class:`IngestPlanner`).

    Attributes:
        tenant: tenant id.
        documents: documents the sources list now.
        to_parse, to_mask, to_chunk: documents each stage would process (not in its cache).
        to_embed: chunks that would be embedded (``to_embed_estimated`` of them estimated, for
            documents not chunked yet).
        to_index: chunks a new index version would hold (0 when nothing changed, the
            published version is then reused).
        embedding_tokens: tokens that would be embedded (estimated).
        seconds_by_stage: estimated seconds per stage (:data:`~rag_platform.lib.progress.STAGES`).
        estimated_seconds: their sum.
        estimated_cost: USD, embedding tokens and compute seconds priced by the price table.
        rates: the items-per-second rates used, per stage.
        problems: items the sources could not list (as a sync would report them).
    """

    tenant: str
    documents: int = 0
    to_parse: int = 0
    to_mask: int = 0
    to_chunk: int = 0
    to_embed: int = 0
    to_embed_estimated: int = 0
    to_index: int = 0
    deleted: int = 0
    embedding_tokens: int = 0
    seconds_by_stage: dict[str, float] = field(default_factory=dict)
    estimated_seconds: float = 0.0
    estimated_cost: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready; the CLI's last line."""
        out = asdict(self)
        out["estimated_seconds"] = round(float(self.estimated_seconds), 1)
        out["estimated_cost"] = round(self.estimated_cost, 6)
        out["seconds_by_stage"] = {k: round(v, 1) for k, v in self.seconds_by_stage.items()}
        out["problems"] = self.problems[:20]
        return out


def _read_cache_keys(path: Path, open_value: Callable[[str], str] = str) -> dict[str, str]:
    """A :class:`~rag_platform.lib.cache.StageCache` file's key → JSON text, read-only;
    ``open_value`` opens a value sealed at rest (see :class:`CacheValueOpener`)."""
    if not path.exists():
        return {}
    try:
        frame = pd.read_parquet(path)
        return {k: open_value(v) for k, v in zip(frame["key"], frame["value"], strict=True)}
    except Exception as exc:  # unreadable: the run would rebuild it, so everything is missing
        log.warning("plan: unreadable cache %s: %s", path, exc)
        return {}


class CacheValueOpener:
    """Opens stage-cache values of a tenant sealed at rest (plaintext values as they are).

    The metadata store (for the tenant's data key) is opened only at the first sealed value, so
    a plan over empty caches touches no database and no key file; :meth:`close` closes it again
    (SQLite then removes its ``-wal`` and ``-shm`` files: the plan leaves ``RAG_HOME`` as it
    was).

    Args:
        settings: where the metadata store and master key are.
        tenant: the tenant whose data key seals the values.
    """

    def __init__(self, settings: Settings, tenant: str) -> None:
        self.settings = settings
        self.tenant = tenant
        self._store: Any = None
        self._cipher: Any = None

    def __call__(self, raw: str) -> str:
        """The plaintext of one value.

        Raises:
            rag_platform.lib.crypto.SealedDataError: a value that does not open under the
                tenant's key.
        """
        from rag_platform.lib.crypto import PURPOSE_CACHE, TenantCipher, is_sealed_text

        if not is_sealed_text(raw):
            return raw
        if self._cipher is None:
            from rag_platform.lib.store import MetadataStore

            self._store = MetadataStore.from_settings(self.settings)
            self._cipher = TenantCipher(self.tenant, self._store.keyring)
        return str(self._cipher.open_text(raw, PURPOSE_CACHE))

    def close(self) -> None:
        """Closes the metadata store if it was opened."""
        if self._store is not None:
            self._store.dispose()
            self._store = self._cipher = None


def _embedded_hashes(state_dir: Path, identity: str) -> set[str]:
    """Content hashes with a vector of ``identity`` in the embedding cache or its checkpoint
    segments, read-only (only the ``hashes`` arrays are loaded)."""
    slug = model_slug(identity)
    paths = [state_dir / f"embeddings-{slug}.npz"]
    segments = state_dir / f"embeddings-{slug}.segments"
    if segments.is_dir():
        paths.extend(sorted(segments.glob("*.npz")))
    out: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["model"]) == identity:
                    out.update(str(h) for h in z["hashes"])
        except Exception as exc:
            log.warning("plan: unreadable embedding cache %s: %s", path, exc)
    return out


class IngestPlanner:
    """Counts what a tenant's next run would process, and estimates its time and cost.

    Reads the sources (through the tenant's connectors, as a sync does) and the tenant's stage
    caches; writes nothing: no sync snapshot, no cache, no state file.

    Args:
        state_dir: the tenant's state folder (``RAG_HOME/cache/<tenant>``).
        identity: the embedding identity a run would use
            (:func:`~rag_platform.lib.embedding.embedding_identity`).
        rates: items per second per stage (:meth:`StageRates.rates_for`).
        prices: the price table.
        questions: golden questions an evaluation would run (0: no golden set).
        open_value: opens stage-cache values sealed at rest (:class:`CacheValueOpener`).
    """

    def __init__(
        self,
        state_dir: Path,
        identity: str,
        rates: Mapping[str, float],
        prices: PriceTable,
        questions: int = 0,
        open_value: Callable[[str], str] = str,
    ) -> None:
        self.state_dir = state_dir
        self.open_value = open_value
        self.identity = identity
        self.rates = dict(rates)
        self.prices = prices
        self.questions = questions

    def run(self, tenant: TenantConfig) -> IngestPlan:
        """The plan of ``tenant``'s next run.

        Raises:
            ValueError: the tenant's PII policy or chunking configuration is invalid (as the
                run would).
        """
        plan = IngestPlan(tenant=tenant.id, rates=self.rates)
        parsed = _read_cache_keys(self.state_dir / "parsed.parquet", self.open_value)
        masked = _read_cache_keys(self.state_dir / "masked.parquet", self.open_value)
        chunked = _read_cache_keys(self.state_dir / "chunks.parquet", self.open_value)
        embedded = _embedded_hashes(self.state_dir, self.identity)
        policy_key = config_hash(tenant.pii)
        cfg = tenant.chunking
        cfg_key = config_hash(cfg)
        stride_tokens = max(1, cfg.max_tokens - cfg.overlap_tokens)

        cached_chunks = sum(len(json.loads(v)) for v in chunked.values())
        chunks_per_doc = cached_chunks / len(chunked) if chunked else None
        token_counts: list[int] = []
        missing_hashes: set[str] = set()
        all_hashes: set[str] = set()
        estimated_chunks = 0
        doc_ids: set[str] = set()

        for source in tenant.sources:
            try:
                connector = build_connector(source, tenant.default_acl_groups, tenant.budgets)
                documents = list(connector.list_documents())
                plan.problems.extend(f"{source.id}: {i}: {r}" for i, r in connector.problems)
            except Exception as exc:  # a failing source keeps its documents in a real run
                plan.problems.append(f"{source.id}: {type(exc).__name__}: {exc}")
                continue
            for doc in documents:
                doc_id = make_doc_id(tenant.id, source.id, doc.native_id)
                if doc_id in doc_ids:
                    continue
                doc_ids.add(doc_id)
                plan.documents += 1
                parse_entry = parsed.get(f"{doc.content_hash}:{doc.mime_type}:{PARSER_VERSION}")
                if parse_entry is None:
                    plan.to_parse += 1
                elif "error" in json.loads(parse_entry):
                    continue  # quarantined at parse: never masked, chunked or embedded
                mask_entry = masked.get(f"{doc.content_hash}:{policy_key}")
                chunk_entry = None
                if mask_entry is None:
                    plan.to_mask += 1
                else:
                    sections = json.loads(mask_entry)["sections"]
                    masked_hash = hashlib.sha256(json.dumps(sections).encode()).hexdigest()
                    title_key = hashlib.sha256(doc.title.encode()).hexdigest()[:16]
                    chunk_entry = chunked.get(f"{doc_id}:{masked_hash}:{cfg_key}:{title_key}")
                if chunk_entry is None:
                    plan.to_chunk += 1
                    estimated_chunks += self._estimate_chunks(doc, stride_tokens, chunks_per_doc)
                    continue
                for c in json.loads(chunk_entry):
                    h = str(c["content_hash"])
                    all_hashes.add(h)
                    if h not in embedded and h not in missing_hashes:
                        missing_hashes.add(h)
                        token_counts.append(int(c.get("token_count") or 0))

        plan.to_embed_estimated = estimated_chunks
        plan.to_embed = len(missing_hashes) + estimated_chunks
        mean_tokens = (
            sum(token_counts) / len(token_counts) if token_counts else cfg.max_tokens * 0.75
        )
        plan.embedding_tokens = sum(token_counts) + round(estimated_chunks * mean_tokens)
        previous_ids = self._previous_doc_ids()
        plan.deleted = len(previous_ids - doc_ids) if previous_ids is not None else 0
        changed = (
            plan.to_chunk > 0
            or plan.to_embed > 0
            or previous_ids is None
            or previous_ids != doc_ids
        )
        plan.to_index = len(all_hashes) + estimated_chunks if changed else 0

        counts = {
            "parse": plan.to_parse,
            "mask": plan.to_mask,
            "chunk": plan.to_chunk,
            "embed": plan.to_embed,
            "index": plan.to_index,
            "evaluate": self.questions if changed else 0,
        }
        plan.seconds_by_stage = {s: n / self.rates[s] for s, n in counts.items() if n}
        plan.estimated_seconds = sum(plan.seconds_by_stage.values())
        plan.estimated_cost = (
            plan.embedding_tokens / 1000 * self.prices.embedding_per_1k_tokens
            + plan.estimated_seconds * self.prices.compute_per_second
        )
        return plan

    def _previous_doc_ids(self) -> set[str] | None:
        """Doc ids of the last sync (the sources' manifests), or None before a first sync."""
        try:
            return SourceSync(self.state_dir).known_doc_ids()
        except Exception:  # unreadable sync state: plan as for a first sync
            return None

    @staticmethod
    def _estimate_chunks(doc: Any, stride_tokens: int, chunks_per_doc: float | None) -> int:
        if isinstance(doc.text, str):
            chars = len(doc.text)
        elif isinstance(doc.content, bytes):
            if chunks_per_doc is not None:
                return max(1, round(chunks_per_doc))
            is_text = doc.mime_type.startswith(_TEXT_TYPES)
            chars = len(doc.content) if is_text else len(doc.content) // 4
        else:
            chars = 0
        return max(1, math.ceil(chars / CHARS_PER_TOKEN / stride_tokens))


def plan_tenant(settings: Settings, tenant: TenantConfig) -> IngestPlan:
    """The plan of ``tenant``'s next run under ``settings`` (embedding identity of the configured
    model and backend, rates from ``RAG_HOME/stage_rates.json``, the deployment's price table).
    Reads only; creates no folder or file, not even ``RAG_HOME``.

    Raises:
        ValueError: an invalid price table or embedding backend.
    """
    from rag_platform.lib.embedding import embedding_identity, resolve_backend

    rates = StageRates(settings.home)
    if tenant.golden_set is None:
        questions = 0
    else:
        questions = rates.questions_for(tenant.id) or DEFAULT_QUESTIONS
    identity = embedding_identity(
        settings.embedding_model, resolve_backend(settings.embedding_backend)
    )
    opener = CacheValueOpener(settings, tenant.id)
    planner = IngestPlanner(
        settings.cache_dir / tenant.id,
        identity,
        rates.rates_for(tenant.id),
        PriceTable.load(settings.home),
        questions=questions,
        open_value=opener,
    )
    try:
        return planner.run(tenant)
    finally:
        opener.close()
