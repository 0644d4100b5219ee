"""Golden sets: the real SciFact BEIR train split and the SEC 10-Q question file, plus the JSONL
and CSV formats and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_platform.lib.evaluation.golden import (
    GoldenQuestion,
    GoldenSet,
    fix_mojibake,
    load_golden_set,
    resolve_relevance,
)
from rag_platform.lib.models import make_doc_id
from rag_platform_tests.conftest import DATA_DIR, SCIFACT, SEC_DOCS

SEC_CSV = DATA_DIR / "sec10q" / "qna_dev.csv"


def sec_documents(tenant: str = "sec-filings") -> list[tuple[str, str, str]]:
    """The 20 real filings as (doc_id, native id, title), ids as the filesystem connector makes."""
    return [
        (make_doc_id(tenant, "filings", p.name), p.name, p.stem)
        for p in sorted(SEC_DOCS.glob("*.pdf"))
    ]


class TestLoadGoldenSet:
    def test_scifact_train_has_809_queries_with_qrels(self) -> None:
        golden = load_golden_set(SCIFACT, format="beir", split="train")
        assert len(golden) == 809
        assert golden.format == "beir" and golden.name == "scifact/train"
        first = golden.questions[0]
        assert first.qid == "0"
        assert first.question == "0-dimensional biomaterials lack inductive properties."
        assert first.relevant_doc_ids == {"31715818": 1}
        assert all(q.has_relevance for q in golden.questions)
        # corpus.jsonl beside the queries gives the relevant abstracts as reference contexts
        assert first.reference_contexts
        assert first.reference_contexts[0].startswith("Nanotechnologies")

    def test_auto_detects_beir_and_limit_keeps_file_order(self) -> None:
        golden = load_golden_set(SCIFACT, limit=5)
        assert golden.format == "beir"
        assert [q.qid for q in golden.questions] == ["0", "2", "4", "6", "9"]

    def test_missing_split_names_the_file(self) -> None:
        with pytest.raises(FileNotFoundError, match="qrels/test.tsv"):
            load_golden_set(SCIFACT, split="test")

    def test_sec10q_csv_64_rows_without_mojibake(self) -> None:
        golden = load_golden_set(SEC_CSV)
        assert golden.format == "sec10q"
        assert len(golden) == 64
        types = [q.question_type for q in golden.questions]
        assert types.count("Single-Doc Single-Chunk RAG") == 25
        assert types.count("Multi-Doc RAG") == 21
        assert types.count("Single-Doc Multi-Chunk RAG") == 18
        for q in golden.questions:
            text = q.question + (q.reference_answer or "")
            assert "â€" not in text and "Â" not in text
            assert q.relevant_patterns and q.reference_answer
            assert "SOURCE(S):" not in (q.reference_answer or "")
        first = golden.questions[0]
        assert first.relevant_patterns == ["*AAPL*"]
        assert "Company's total net sales" in (first.reference_answer or "")
        assert first.metadata["source_chunk_type"] == "Table"
        assert first.metadata["answer_sources"][0].startswith("2023 Q1 AAPL.pdf")

    def test_jsonl_accepts_lists_grades_and_separated_strings(self, tmp_path: Path) -> None:
        path = tmp_path / "golden.jsonl"
        rows = [
            {
                "id": "a",
                "question": "Q one?",
                "relevant_doc_ids": ["d1", "d2"],
                "reference_answer": "A one.",
                "question_type": "lookup",
            },
            {
                "question": "Q two?",
                "relevant_doc_ids": {"d3": 2, "d4": 0},
                "reference_contexts": ["ctx"],
            },
            {"question": "Q three?", "relevant_doc_ids": "d5; d6", "relevant_patterns": "*X*"},
        ]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
        golden = load_golden_set(path)
        assert golden.format == "jsonl"
        a, b, c = golden.questions
        assert (a.qid, a.relevant_doc_ids, a.question_type) == ("a", {"d1": 1, "d2": 1}, "lookup")
        assert b.qid.startswith("q-") and b.relevant_doc_ids == {"d3": 2, "d4": 0}
        assert b.reference_contexts == ["ctx"] and b.reference_answer is None
        assert c.relevant_doc_ids == {"d5": 1, "d6": 1} and c.relevant_patterns == ["*X*"]

    def test_jsonl_errors_name_the_line(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.jsonl"
        path.write_text('{"question": "fine?"}\n{"id": "x"}\n')
        with pytest.raises(ValueError, match=r"bad.jsonl:2: missing or empty 'question'"):
            load_golden_set(path)
        path.write_text('{"question": "fine?"}\n\n{not json\n')
        with pytest.raises(ValueError, match=r"bad.jsonl:3: invalid JSON"):
            load_golden_set(path)
        path.write_text('{"question": "q?", "relevant_doc_ids": {"d": "high"}}\n')
        with pytest.raises(ValueError, match=r"bad.jsonl:1: relevance grade"):
            load_golden_set(path)

    def test_csv_columns_and_errors(self, tmp_path: Path) -> None:
        path = tmp_path / "golden.csv"
        path.write_text(
            "id,question,relevant_doc_ids,reference_answer,reference_contexts\n"
            'q1,"What, exactly?",d1;d2,An answer.,"[""c1"", ""c2""]"\n'
            "q2,Second?,,,one context\n"
        )
        golden = load_golden_set(path)
        assert golden.format == "csv"
        q1, q2 = golden.questions
        assert q1.question == "What, exactly?" and q1.relevant_doc_ids == {"d1": 1, "d2": 1}
        assert q1.reference_contexts == ["c1", "c2"] and q1.reference_answer == "An answer."
        assert q2.relevant_doc_ids == {} and q2.reference_contexts == ["one context"]

        path.write_text("id,question\nq1,\n")
        with pytest.raises(ValueError, match=r"golden.csv:2: missing or empty 'question'"):
            load_golden_set(path)
        path.write_text("id,query\nq1,hello\n")
        with pytest.raises(ValueError, match="needs a 'question' column"):
            load_golden_set(path)

    def test_duplicate_ids_and_unknown_layouts_are_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "dup.jsonl"
        path.write_text('{"id": "a", "question": "x?"}\n{"id": "a", "question": "y?"}\n')
        with pytest.raises(ValueError, match="duplicate question id 'a'"):
            load_golden_set(path)
        (tmp_path / "folder").mkdir()
        with pytest.raises(ValueError, match="without queries.jsonl"):
            load_golden_set(tmp_path / "folder")
        with pytest.raises(FileNotFoundError):
            load_golden_set(tmp_path / "missing.csv")

    def test_fix_mojibake(self) -> None:
        fixed = fix_mojibake("the Companyâ€™s net sales â€” up 5%")
        assert "â€" not in fixed
        assert fixed.startswith("the Company") and "s net sales" in fixed
        assert fix_mojibake("plain ASCII") == "plain ASCII"


class TestResolveRelevance:
    def test_sec10q_patterns_against_the_20_real_file_names(self) -> None:
        docs = sec_documents()
        assert len(docs) == 20
        golden = resolve_relevance(load_golden_set(SEC_CSV), docs)
        id_of = {native: doc_id for doc_id, native, _ in docs}
        for q in golden.questions:
            assert q.relevant_doc_ids, q.question
            assert "unresolved" not in q.metadata
        by_pattern = {tuple(q.relevant_patterns): q for q in golden.questions}
        aapl = by_pattern[("*AAPL*",)].relevant_doc_ids
        assert set(aapl) == {
            id_of[n]
            for n in (
                "2022 Q3 AAPL.pdf",
                "2023 Q1 AAPL.pdf",
                "2023 Q2 AAPL.pdf",
                "2023 Q3 AAPL.pdf",
            )
        }
        assert by_pattern[("*2023 Q3 NVDA*",)].relevant_doc_ids == {id_of["2023 Q3 NVDA.pdf"]: 1}
        assert golden.doc_titles[id_of["2023 Q3 NVDA.pdf"]] == "2023 Q3 NVDA"

    def test_patterns_match_file_names_of_uris_case_insensitively(self) -> None:
        question = GoldenQuestion("q", "?", relevant_patterns=["*2023 q3 nvda*", "*TSLA*"])
        golden = GoldenSet([question], "g")
        docs = [
            ("d1", "file:///data/10q/2023%20Q3%20NVDA.pdf", "t1"),
            ("d2", "/data/10q/2023 Q3 AAPL.pdf", "t2"),
        ]
        (q,) = resolve_relevance(golden, docs).questions
        assert q.relevant_doc_ids == {"d1": 1}
        assert q.metadata["unresolved"] == ["*TSLA*"]

    def test_beir_ids_map_through_doc_id_for(self) -> None:
        golden = load_golden_set(SCIFACT, limit=20)
        corpus_ids = sorted({cid for q in golden.questions for cid in q.relevant_doc_ids})

        def doc_id_for(native: str) -> str:
            return make_doc_id("scifact", "corpus", native)

        indexed = corpus_ids[:5]  # an index holding a subset of the corpus
        docs = [(doc_id_for(c), c, f"title {c}") for c in indexed]
        every = resolve_relevance(golden, docs, doc_id_for)
        expected = {make_doc_id("scifact", "corpus", c) for c in corpus_ids}
        assert {d for q in every.questions for d in q.relevant_doc_ids} == expected
        subset = resolve_relevance(golden, docs, doc_id_for, known_only=True)
        kept = {d for q in subset.questions for d in q.relevant_doc_ids}
        assert kept == {doc_id for doc_id, _, _ in docs}
        assert sum(1 for q in subset.questions if q.metadata.get("unresolved")) > 0
        # the input set is left as it was, and resolving twice changes nothing
        assert golden.questions[0].relevant_doc_ids == {"31715818": 1}
        again = resolve_relevance(every, docs, doc_id_for)
        assert [q.relevant_doc_ids for q in again.questions] == [
            q.relevant_doc_ids for q in every.questions
        ]
