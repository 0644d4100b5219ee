"""Golden sets: questions with their relevant documents and reference answers.

A golden set is the yardstick an index version is measured with before it is published. Four
on-disk formats load into one shape (:class:`GoldenSet`):

- ``beir``: a folder with ``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv``
  (header ``query-id corpus-id score``), the layout of the BEIR benchmark (Thakur et al., 2021,
  https://github.com/beir-cellar/beir). Only queries that have qrels are kept. When the folder
  also holds ``corpus.jsonl``, the text of each relevant document becomes a reference context.
- ``jsonl`` / ``csv``: one question per line / row with the keys ``question`` (required), ``id``,
  ``relevant_doc_ids`` (a list, an object id → grade, or a ``;``-separated string),
  ``relevant_patterns`` (file-name globs), ``reference_answer``, ``reference_contexts``
  (a list; in CSV a JSON list or one context) and ``question_type``.
- ``sec10q``: the docugami KG-RAG SEC 10-Q question file (columns ``Question``, ``Source Docs``,
  ``Question Type``, ``Source Chunk Type``, ``Answer``). ``Source Docs`` holds file-name globs
  such as ``*2023 Q3 NVDA*``; they give document-level relevance once resolved.

Relevance is stored by the ids the golden file uses (BEIR corpus ids, file-name globs) and mapped
to the platform's document ids by :func:`resolve_relevance` against the documents of an index.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlparse

GoldenFormat = Literal["auto", "jsonl", "csv", "beir", "sec10q"]

#: Columns of the docugami SEC 10-Q question file.
SEC10Q_COLUMNS = ("Question", "Source Docs", "Question Type", "Source Chunk Type", "Answer")

_LIST_SPLIT = re.compile(r"\s*;\s*")
_PATTERN_SPLIT = re.compile(r"\s*[,;\n]\s*")
_SOURCES_LINE = re.compile(r"^\s*SOURCE\(S\):.*$", re.MULTILINE)


@dataclass
class GoldenQuestion:
    """One question of a golden set.

    Attributes:
        qid: stable question id (from the file, or a hash of the question text).
        question: the question as a user would ask it.
        relevant_doc_ids: document id → graded relevance (> 0 is relevant). Before
            :func:`resolve_relevance` these are the ids of the golden file (e.g. BEIR corpus ids);
            after it, platform document ids.
        relevant_patterns: file-name globs (``*2023 Q3 NVDA*``) naming relevant documents.
        reference_contexts: passages that answer the question (ragas ``reference_contexts``).
        reference_answer: the reviewed answer, if any.
        question_type: a category for per-type breakdowns (``Multi-Doc RAG``), if any.
        metadata: anything else the file holds (e.g. ``source_chunk_type``, unresolved ids).
    """

    qid: str
    question: str
    relevant_doc_ids: dict[str, int] = field(default_factory=dict)
    relevant_patterns: list[str] = field(default_factory=list)
    reference_contexts: list[str] = field(default_factory=list)
    reference_answer: str | None = None
    question_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def has_relevance(self) -> bool:
        """True when at least one document is judged relevant (grade > 0)."""
        return any(grade > 0 for grade in self.relevant_doc_ids.values())


@dataclass
class GoldenSet:
    """A named list of golden questions.

    Attributes:
        questions: the questions, in file order.
        name: a display name (the file or folder name).
        format: the format it was loaded from (``beir``, ``jsonl``, ``csv``, ``sec10q``).
        doc_titles: platform document id → title, filled by :func:`resolve_relevance` so reports
            can show what was expected by name.
        resolved: True once :func:`resolve_relevance` turned the relevance into platform ids.
    """

    questions: list[GoldenQuestion]
    name: str
    format: str = ""
    doc_titles: dict[str, str] = field(default_factory=dict)
    resolved: bool = False

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def question_types(self) -> list[str]:
        """Distinct question types, in first-seen order."""
        seen: dict[str, None] = {}
        for q in self.questions:
            if q.question_type:
                seen.setdefault(q.question_type, None)
        return list(seen)


def make_qid(question: str) -> str:
    """A stable id for a question without one: ``q-`` + first 12 hex digits of its SHA-256."""
    return "q-" + hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:12]


def fix_mojibake(text: str) -> str:
    """Repair UTF-8 text that was decoded as Windows-1252 somewhere (``â€™`` → ``'``).

    Uses ftfy (Speer, https://github.com/rspeer/python-ftfy) when installed; otherwise a guarded
    ``encode("cp1252").decode("utf-8")`` round trip that leaves text unchanged when the round trip
    fails or when it holds no mojibake marker.
    """
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is a declared dependency
        if not any(marker in text for marker in ("â€", "Ã", "Â")):
            return text
        try:
            return text.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return text
    return ftfy.fix_text(text, normalization="NFC")


def load_golden_set(
    path: Path,
    format: GoldenFormat = "auto",
    split: str = "train",
    limit: int | None = None,
) -> GoldenSet:
    """Load a golden set from disk.

    Args:
        path: a BEIR folder, a ``.jsonl`` file or a ``.csv`` file.
        format: ``auto`` picks ``beir`` for a folder, ``jsonl`` for ``.jsonl``/``.json``,
            ``sec10q`` for a CSV whose header holds the SEC 10-Q columns, else ``csv``.
        split: the BEIR qrels split (``qrels/<split>.tsv``).
        limit: keep the first ``limit`` questions (file order), or all when None.

    Returns:
        The golden set; relevance is by the file's own ids until :func:`resolve_relevance`.

    Raises:
        FileNotFoundError: the path (or a required file of a BEIR folder) does not exist.
        ValueError: the format cannot be told, or a line / row is malformed (the message names
            the file and line), or the set holds no question.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"golden set not found: {path}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    fmt = _detect_format(path) if format == "auto" else format
    if fmt == "beir":
        questions = _load_beir(path, split)
    elif fmt == "jsonl":
        questions = _load_jsonl(path)
    elif fmt == "csv":
        questions = _load_csv(path)
    elif fmt == "sec10q":
        questions = _load_sec10q(path)
    else:
        raise ValueError(f"unknown golden-set format {fmt!r} for {path}")
    if not questions:
        raise ValueError(f"golden set {path} holds no question")
    _check_unique_ids(questions, path)
    if limit is not None:
        questions = questions[:limit]
    name = path.name if fmt != "beir" else f"{path.name}/{split}"
    return GoldenSet(questions=questions, name=name, format=fmt)


def resolve_relevance(
    golden: GoldenSet,
    documents: Iterable[tuple[str, str, str]],
    doc_id_for: Callable[[str], str | None] | None = None,
    *,
    known_only: bool = False,
) -> GoldenSet:
    """Map the golden file's relevance to platform document ids.

    Each id in ``relevant_doc_ids`` is kept when it already is a platform id of ``documents``,
    else looked up by native id or file name in ``documents``, else passed to ``doc_id_for``
    (typically ``lambda native: make_doc_id(tenant, source_id, native)``). Each glob in
    ``relevant_patterns`` matches the file name (last path component of the native id or URI)
    of every document, case-insensitively (``fnmatch``); matches get relevance 1 unless already
    graded higher. Ids that resolve to nothing are dropped and listed in the question's
    ``metadata["unresolved"]``. On a set resolved before, ids are platform ids already and are
    not mapped again (``known_only`` still applies), so resolving twice changes nothing.

    Args:
        golden: the set as loaded.
        documents: ``(doc_id, native_id_or_uri, title)`` of every document in the index.
        doc_id_for: maps a golden-file id to a platform doc id (None when unknown).
        known_only: drop ids that ``doc_id_for`` produced but that are not in ``documents``
            (use when the index holds a subset of the corpus).

    Returns:
        A new :class:`GoldenSet` with platform ids and ``doc_titles`` filled; the input is not
        modified.
    """
    docs = list(documents)
    titles = {doc_id: title for doc_id, _, title in docs}
    by_native: dict[str, str] = {}
    file_names: list[tuple[str, str]] = []
    for doc_id, native, _ in docs:
        by_native.setdefault(native, doc_id)
        name = _file_name(native)
        by_native.setdefault(name, doc_id)
        file_names.append((doc_id, name.lower()))

    resolved: list[GoldenQuestion] = []
    for q in golden.questions:
        rel: dict[str, int] = {}
        unresolved: list[str] = []
        for gid, grade in q.relevant_doc_ids.items():
            target: str | None
            if gid in titles:
                target = gid
            elif golden.resolved:
                target = None if known_only else gid
            elif gid in by_native:
                target = by_native[gid]
            else:
                target = doc_id_for(gid) if doc_id_for is not None else None
                if target is not None and known_only and target not in titles:
                    target = None
            if target is None:
                unresolved.append(gid)
                continue
            rel[target] = max(rel.get(target, grade), grade)
        for pattern in q.relevant_patterns:
            matched = [d for d, name in file_names if fnmatch.fnmatchcase(name, pattern.lower())]
            if not matched:
                unresolved.append(pattern)
            for doc_id in matched:
                rel[doc_id] = max(rel.get(doc_id, 1), 1)
        metadata = dict(q.metadata)
        if unresolved:
            metadata["unresolved"] = unresolved
        else:
            metadata.pop("unresolved", None)
        resolved.append(replace(q, relevant_doc_ids=rel, metadata=metadata))
    doc_titles = dict(golden.doc_titles)
    doc_titles.update(titles)
    return GoldenSet(
        questions=resolved,
        name=golden.name,
        format=golden.format,
        doc_titles=doc_titles,
        resolved=True,
    )


# Format detection and loaders -------------------------------------------------------------


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "queries.jsonl").exists():
            return "beir"
        raise ValueError(f"{path} is a folder without queries.jsonl: not a BEIR golden set")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
        if {"Question", "Source Docs", "Answer"} <= {h.strip() for h in header}:
            return "sec10q"
        return "csv"
    raise ValueError(
        f"cannot tell the golden-set format of {path}: expected a BEIR folder, .jsonl or .csv"
    )


def _load_beir(folder: Path, split: str) -> list[GoldenQuestion]:
    queries_path = folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not queries_path.exists():
        raise FileNotFoundError(f"BEIR golden set without queries.jsonl: {queries_path}")
    if not qrels_path.exists():
        raise FileNotFoundError(f"BEIR golden set without qrels for split {split!r}: {qrels_path}")

    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t")
            if line_no == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if not line.strip():
                continue
            if len(parts) < 3:
                raise ValueError(
                    f"{qrels_path}:{line_no}: expected 'query-id<TAB>corpus-id<TAB>score', "
                    f"got {line.strip()!r}"
                )
            try:
                grade = int(float(parts[2]))
            except ValueError:
                raise ValueError(
                    f"{qrels_path}:{line_no}: score {parts[2]!r} is not a number"
                ) from None
            qrels.setdefault(parts[0].strip(), {})[parts[1].strip()] = grade

    questions: list[GoldenQuestion] = []
    for line_no, obj in _read_jsonl(queries_path):
        qid = str(obj.get("_id", "")).strip()
        text = obj.get("text")
        if not qid or not isinstance(text, str) or not text.strip():
            raise ValueError(f"{queries_path}:{line_no}: a BEIR query needs '_id' and 'text'")
        if qid not in qrels:
            continue
        questions.append(
            GoldenQuestion(qid=qid, question=text.strip(), relevant_doc_ids=qrels[qid])
        )

    corpus_path = folder / "corpus.jsonl"
    if corpus_path.exists() and questions:
        wanted = {cid for q in questions for cid, g in q.relevant_doc_ids.items() if g > 0}
        texts: dict[str, str] = {}
        for _, obj in _read_jsonl(corpus_path):
            cid = str(obj.get("_id", ""))
            if cid in wanted:
                texts[cid] = str(obj.get("text") or "")
        for q in questions:
            q.reference_contexts = [
                texts[cid] for cid, g in q.relevant_doc_ids.items() if g > 0 and texts.get(cid)
            ]
    return questions


def _load_jsonl(path: Path) -> list[GoldenQuestion]:
    return [_question_from_record(obj, f"{path}:{n}") for n, obj in _read_jsonl(path)]


def _load_csv(path: Path) -> list[GoldenQuestion]:
    questions: list[GoldenQuestion] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "question" not in reader.fieldnames:
            raise ValueError(f"{path}:1: CSV golden set needs a 'question' column")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            record: dict[str, Any] = {k: v for k, v in row.items() if k is not None}
            ctx = (record.get("reference_contexts") or "").strip()
            if ctx.startswith("["):
                try:
                    record["reference_contexts"] = json.loads(ctx)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{where}: reference_contexts is not a JSON list: {exc}"
                    ) from None
            elif ctx:
                record["reference_contexts"] = [ctx]
            questions.append(_question_from_record(record, where))
    return questions


def _load_sec10q(path: Path) -> list[GoldenQuestion]:
    questions: list[GoldenQuestion] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("Question", "Source Docs", "Answer") if c not in header]
        if missing:
            raise ValueError(f"{path}:1: SEC 10-Q golden set lacks column(s) {missing}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            row = {(k or "").strip(): v for k, v in row.items()}
            question = fix_mojibake((row.get("Question") or "").strip())
            if not question:
                raise ValueError(f"{where}: empty Question")
            patterns = [p for p in _PATTERN_SPLIT.split(row.get("Source Docs") or "") if p]
            if not patterns:
                raise ValueError(f"{where}: empty 'Source Docs' (expected globs like *AAPL*)")
            raw_answer = fix_mojibake((row.get("Answer") or "").strip())
            sources = [m.split(":", 1)[1].strip() for m in _SOURCES_LINE.findall(raw_answer)]
            answer = re.sub(r"\n\s*\n+", "\n\n", _SOURCES_LINE.sub("", raw_answer)).strip()
            questions.append(
                GoldenQuestion(
                    qid=make_qid(question),
                    question=question,
                    relevant_patterns=patterns,
                    reference_answer=answer or None,
                    question_type=(row.get("Question Type") or "").strip() or None,
                    metadata={
                        "source_chunk_type": (row.get("Source Chunk Type") or "").strip(),
                        "answer_sources": sources,
                    },
                )
            )
    return questions


# Helpers -----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}"
                )
            yield line_no, obj


def _question_from_record(record: dict[str, Any], where: str) -> GoldenQuestion:
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: missing or empty 'question'")
    question = question.strip()
    qid = str(record.get("id") or "").strip() or make_qid(question)
    answer = record.get("reference_answer")
    if answer is not None and not isinstance(answer, str):
        raise ValueError(f"{where}: 'reference_answer' must be a string")
    contexts = record.get("reference_contexts") or []
    if isinstance(contexts, str):
        contexts = [contexts]
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise ValueError(f"{where}: 'reference_contexts' must be a list of strings")
    qtype = record.get("question_type")
    return GoldenQuestion(
        qid=qid,
        question=question,
        relevant_doc_ids=_parse_relevance(record.get("relevant_doc_ids"), where),
        relevant_patterns=_parse_str_list(
            record.get("relevant_patterns"), "relevant_patterns", where
        ),
        reference_contexts=[c for c in contexts if c.strip()],
        reference_answer=(answer.strip() or None) if isinstance(answer, str) else None,
        question_type=(str(qtype).strip() or None) if qtype else None,
    )


def _parse_relevance(value: Any, where: str) -> dict[str, int]:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        out: dict[str, int] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{where}: relevance grade of {k!r} must be a number, got {v!r}")
            out[str(k)] = int(v)
        return out
    return {doc_id: 1 for doc_id in _parse_str_list(value, "relevant_doc_ids", where)}


def _parse_str_list(value: Any, key: str, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v for v in _LIST_SPLIT.split(value.strip()) if v]
    if isinstance(value, Sequence) and all(isinstance(v, str | int) for v in value):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError(f"{where}: {key!r} must be a list of strings or a ';'-separated string")


def _check_unique_ids(questions: list[GoldenQuestion], path: Path) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.qid in seen:
            raise ValueError(f"{path}: duplicate question id {q.qid!r}")
        seen.add(q.qid)


def _file_name(native_or_uri: str) -> str:
    """Last path component of a native id, path or URI (``file:///a/b%20c.pdf`` → ``b c.pdf``)."""
    value = native_or_uri
    if "://" in value:
        value = unquote(urlparse(value).path)
    value = value.replace("\\", "/").rstrip("/")
    return PurePosixPath(value).name or value
