"""Prompt-injection detection: weighted patterns combined into one score in [0, 1].

A text is matched against :data:`PATTERNS`, each a family of phrasings seen in published
prompt-injection attacks (OWASP LLM01 "Prompt Injection"; Greshake et al., 2023, "Not what
you've signed up for", https://arxiv.org/abs/2302.12173; Perez & Ribeiro, 2022, "Ignore
Previous Prompt", https://arxiv.org/abs/2211.09527): overriding earlier instructions, claiming a
new role or a system prompt, asking for the prompt itself, chat-template tokens, and orders to
answer with a fixed text or link. The score is the noisy-OR of the weights of the families that
match, ``1 - prod(1 - w)``: one strong family (an "ignore all previous instructions") scores
about 0.8 by itself, two weak ones about 0.6, none 0.

Used at ingestion (:class:`InjectionScreen` flags documents, quarantining them when the tenant
asks) and at query time (the question's score goes to the response and the query log). The
retrieved text is never trusted either way: the answerer delimits it and keeps it out of the
system role (:class:`rag_platform.lib.answer.LLMAnswerer`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rag_platform.lib.ingestion.quarantine import save_quarantine
from rag_platform.lib.models import Quarantined, sections_from_json
from rag_platform.lib.tenants import InjectionPolicy

_FLAGS = re.IGNORECASE | re.DOTALL


@dataclass(frozen=True)
class InjectionPattern:
    """One family of injection phrasings.

    Attributes:
        name: a short identifier reported in the matches.
        regex: the compiled pattern.
        weight: the family's contribution to the noisy-OR score, in (0, 1).
    """

    name: str
    regex: re.Pattern[str]
    weight: float


def _p(name: str, pattern: str, weight: float) -> InjectionPattern:
    return InjectionPattern(name, re.compile(pattern, _FLAGS), weight)


_PREVIOUS = r"(?:previous|prior|above|earlier|preceding|foregoing|all|any|your|the)"
_RULES = r"(?:instructions?|prompts?|rules|directions|guidelines|context|messages?)"

#: The pattern families and their weights.
PATTERNS: tuple[InjectionPattern, ...] = (
    _p(
        "override_instructions",
        rf"\b(?:ignore|disregard|forget|override|bypass|skip)\b[\s\w,]{{0,30}}?\b{_PREVIOUS}"
        rf"\b[\s\w]{{0,20}}?\b{_RULES}\b",
        0.8,
    ),
    _p(
        "new_instructions",
        r"\b(?:new|updated|real|actual|following)\s+(?:system\s+)?(?:instructions?|rules|task)\s*:",
        0.5,
    ),
    _p(
        "role_claim",
        r"\b(?:you\s+are\s+now|from\s+now\s+on,?\s+you|act\s+as|pretend\s+(?:to\s+be|you\s+are)"
        r"|roleplay\s+as|switch\s+to)\b[^.\n]{0,60}?\b(?:assistant|ai|model|bot|dan|mode|"
        r"developer|admin|jailbr\w*|unrestricted|unfiltered)\b",
        0.5,
    ),
    _p(
        "system_prompt",
        r"\b(?:system\s+prompt|system\s+message|hidden\s+instructions?|developer\s+mode)\b",
        0.4,
    ),
    _p(
        "prompt_exfiltration",
        r"\b(?:reveal|print|repeat|show|output|leak|tell\s+me)\b[\s\w]{0,20}?\b"
        r"(?:system\s+prompt|your\s+(?:instructions?|prompt|rules)|initial\s+prompt)\b",
        0.6,
    ),
    _p(
        "chat_template",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext)\|>|\[/?INST\]|<</?SYS>>"
        r"|^\s*(?:system|assistant)\s*:",
        0.6,
    ),
    _p(
        "forced_output",
        r"\b(?:respond|reply|answer|say|output|print)\s+(?:only\s+)?(?:with|exactly)\b"
        r"[^.\n]{0,80}?(?:\"|'|http)",
        0.35,
    ),
    _p(
        "do_not_tell",
        r"\b(?:do\s+not|don't|never)\s+(?:tell|mention|reveal|inform)\b[^.\n]{0,30}?"
        r"\b(?:user|anyone|human)\b",
        0.35,
    ),
)

#: Characters of a match kept in the report.
_EXCERPT = 80


@dataclass(frozen=True)
class InjectionReport:
    """The detector's verdict on one text.

    Attributes:
        score: noisy-OR of the matched families' weights, in [0, 1] (0: nothing matched).
        matches: names of the families that matched, in :data:`PATTERNS` order.
        excerpts: the first matching span of each family (at most 80 characters each).
    """

    score: float
    matches: list[str] = field(default_factory=list)
    excerpts: list[str] = field(default_factory=list)

    def flagged(self, threshold: float) -> bool:
        """Whether the score reaches ``threshold``."""
        return self.score >= threshold


def detect_injection(text: str) -> InjectionReport:
    """Scores ``text`` for prompt-injection phrasings (see the module docstring).

    Returns:
        An :class:`InjectionReport`; an empty text scores 0.
    """
    miss = 1.0
    matches: list[str] = []
    excerpts: list[str] = []
    for pattern in PATTERNS:
        m = pattern.regex.search(text or "")
        if m is None:
            continue
        miss *= 1.0 - pattern.weight
        matches.append(pattern.name)
        excerpts.append(" ".join(m.group(0).split())[:_EXCERPT])
    return InjectionReport(round(1.0 - miss, 4), matches, excerpts)


@dataclass(frozen=True)
class FlaggedDocument:
    """A document the screen flagged.

    Attributes:
        doc_id: the document.
        uri: where it came from.
        score: its :func:`detect_injection` score.
        matches: the pattern families that matched.
        quarantined: whether it was left out of the index.
    """

    doc_id: str
    uri: str
    score: float
    matches: list[str]
    quarantined: bool


@dataclass
class ScreenResult:
    """The output of :meth:`InjectionScreen.run`.

    Attributes:
        frame: the documents passed on (the quarantined ones removed).
        flagged: every flagged document, quarantined or not.
        quarantined: the quarantine records (stage ``injection``).
    """

    frame: pd.DataFrame
    flagged: list[FlaggedDocument]
    quarantined: list[Quarantined]


class InjectionScreen:
    """Flags the documents of a masked-documents frame whose text scores at least the tenant's
    ``injection.threshold``; with ``injection.quarantine`` the flagged documents are left out of
    the index and recorded in ``quarantine_injection.json`` (so the reconciliation check counts
    them as quarantined, not missing).

    Args:
        state_dir: the tenant's state folder (``RAG_HOME/cache/<tenant>``).
        policy: the tenant's injection policy.
    """

    def __init__(self, state_dir: Path, policy: InjectionPolicy) -> None:
        self.state_dir = state_dir
        self.policy = policy

    def run(self, frame: pd.DataFrame) -> ScreenResult:
        """Screens every document of ``frame`` (``MASKED_COLUMNS``; ``sections`` as JSON).

        Returns:
            The :class:`ScreenResult`; the quarantine file is rewritten on every run (empty
            when nothing is quarantined).
        """
        flagged: list[FlaggedDocument] = []
        quarantined: list[Quarantined] = []
        drop: set[str] = set()
        for doc in frame.itertuples(index=False):
            parsed = sections_from_json(doc.sections) if doc.sections is not None else []
            text = "\n\n".join([str(doc.title or ""), *(s.text for s in parsed)])
            report = detect_injection(text)
            if not report.flagged(self.policy.threshold):
                continue
            hold = self.policy.quarantine
            flagged.append(FlaggedDocument(doc.doc_id, doc.uri, report.score, report.matches, hold))
            if hold:
                drop.add(doc.doc_id)
                reason = f"prompt injection score {report.score:.2f}: " + json.dumps(
                    report.excerpts, ensure_ascii=False
                )
                quarantined.append(Quarantined(doc.doc_id, doc.uri, "injection", reason))
        save_quarantine(self.state_dir, "injection", quarantined)
        kept = frame[~frame["doc_id"].isin(drop)].reset_index(drop=True) if drop else frame
        return ScreenResult(kept, flagged, quarantined)


def flagged_table(flagged: Sequence[FlaggedDocument]) -> list[tuple[str, str, str, str]]:
    """Rows ``(uri, score, patterns, quarantined)`` for the asset metadata's table."""
    return [
        (f.uri, f"{f.score:.2f}", ", ".join(f.matches), "yes" if f.quarantined else "no")
        for f in flagged
    ]
