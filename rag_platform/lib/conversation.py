"""Follow-up questions rewritten into standalone questions, from a conversation's history.

A follow-up ("what about in children?") cannot be retrieved on its own: retrieval sees one
query. :class:`RuleRewriter` (no model) and :class:`LLMRewriter` (an OpenAI-compatible chat
endpoint) both turn ``(history, follow-up)`` into one standalone question, the query-rewriting
step of conversational RAG (as LangChain's ``create_history_aware_retriever`` and LlamaIndex's
``CondenseQuestionChatEngine`` do). Which one is used is decided in
:func:`rag_platform.lib.rag.build_rewriter`.

The rule: the first question, and a question that is self-contained (at least
:data:`MIN_CONTENT_WORDS` content words and no anaphoric word such as *it*, *they*, *this*,
*there* or an opening *and* / *what about*), are kept as they are. Any other follow-up is
anchored to the previous standalone question: ``Regarding "<previous>": <follow-up>``, so both
the sparse (BM25) and the dense query carry the topic the follow-up refers to. A chain of
follow-ups keeps the first anchor and the last :data:`KEPT_FOLLOW_UPS` follow-ups
(``Regarding "<topic>": <follow-up 2> <follow-up 3>``), and a standalone question never exceeds
:data:`MAX_STANDALONE_CHARS` (the anchor is shortened first).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

logger = logging.getLogger(__name__)

#: How a question was made standalone.
RewriteKind = Literal["none", "rule", "llm"]
#: Fewest content words of a self-contained question.
MIN_CONTENT_WORDS = 3
#: Turns of history (user and assistant messages) the LLM sees.
LLM_HISTORY_MESSAGES = 6
#: Longest standalone question (characters; the query API's limit).
MAX_STANDALONE_CHARS = 2000
#: Follow-ups of a chain kept after the anchor by the rule.
KEPT_FOLLOW_UPS = 2

_WORD = re.compile(r"[A-Za-z0-9']+")
_ANCHORED = re.compile(r'^Regarding "(?P<anchor>.*)": (?P<rest>.*)$', re.DOTALL)
_ANAPHORA = frozenset(
    [
        "it",
        "its",
        "it's",
        "they",
        "them",
        "their",
        "theirs",
        "this",
        "that",
        "these",
        "those",
        "he",
        "him",
        "his",
        "she",
        "her",
        "hers",
        "there",
        "such",
        "same",
        "former",
        "latter",
        "one",
        "ones",
    ]
)
_OPENINGS = re.compile(
    r"^\s*(and|but|also|so|then|what about|how about|and what|why not|what else|more)\b",
    re.IGNORECASE,
)
_FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "me",
        "my",
        "we",
        "our",
        "of",
        "on",
        "or",
        "not",
        "no",
        "to",
        "the",
        "than",
        "about",
        "any",
        "some",
        "more",
        "most",
        "tell",
        "explain",
        "give",
        "please",
    ]
)


@dataclass(frozen=True)
class Turn:
    """One message of the history, as stored (PII-masked).

    Attributes:
        role: ``user`` or ``assistant``.
        content: the message text.
        standalone: for a user message, the standalone question it became.
    """

    role: str
    content: str
    standalone: str = ""


@dataclass(frozen=True)
class Rewrite:
    """A standalone question and how it was made."""

    question: str
    kind: RewriteKind


class QuestionRewriter(Protocol):
    """Turns a follow-up into a standalone question."""

    def rewrite(self, history: list[Turn], question: str) -> Rewrite: ...

    def close(self) -> None: ...


def _previous_question(history: list[Turn]) -> str | None:
    for turn in reversed(history):
        if turn.role == "user":
            return turn.standalone or turn.content
    return None


def _follow_ups(history: list[Turn]) -> list[str]:
    """The user's messages since the last one that stood on its own, oldest first."""
    out: list[str] = []
    for turn in reversed(history):
        if turn.role != "user":
            continue
        if not _ANCHORED.match(turn.standalone or ""):
            break
        out.append(turn.content.strip())
    return out[::-1]


def needs_context(question: str) -> bool:
    """Whether ``question`` refers to something said before: an anaphoric word, a follow-up
    opening (*and*, *what about*, ...), or fewer than :data:`MIN_CONTENT_WORDS` content
    words."""
    words = [w.lower() for w in _WORD.findall(question)]
    if _OPENINGS.match(question) or any(w in _ANAPHORA for w in words):
        return True
    return sum(1 for w in words if w not in _FUNCTION_WORDS and w not in _ANAPHORA) < (
        MIN_CONTENT_WORDS
    )


class RuleRewriter:
    """The deterministic rewrite (see the module docstring); never fails."""

    def rewrite(self, history: list[Turn], question: str) -> Rewrite:
        """The standalone form of ``question`` given ``history`` (oldest first)."""
        question = question.strip()[:MAX_STANDALONE_CHARS]
        previous = _previous_question(history)
        if previous is None or not needs_context(question):
            return Rewrite(question, "none")
        anchor, follow_ups = previous.strip(), [question]
        chained = _ANCHORED.match(anchor)
        if chained is not None:
            previous_follow_ups = _follow_ups(history)
            anchor = chained.group("anchor")
            follow_ups = [*previous_follow_ups[-(KEPT_FOLLOW_UPS - 1) :], question]
        tail = " ".join(follow_ups)
        room = MAX_STANDALONE_CHARS - len(tail) - len('Regarding "": ')
        return Rewrite(f'Regarding "{anchor[: max(room, 0)]}": {tail}', "rule")

    def close(self) -> None:
        """Nothing to release."""


REWRITE_PROMPT = (
    "Rewrite the user's last message into one standalone question that can be understood "
    "without the conversation: replace pronouns and references with what they refer to. Keep "
    "the user's language and meaning; do not answer it. Reply with the question only."
)


class LLMRewriter:
    """The rewrite by an OpenAI-compatible ``/v1/chat/completions`` endpoint, falling back to
    :class:`RuleRewriter` when the endpoint fails or answers with something unusable (empty,
    too long). A self-contained first question is never sent to the model.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080/v1`` (with or without ``/v1``).
        model: model name.
        api_key: sent as ``Authorization: Bearer``; None for servers without auth.
        timeout: seconds for connect + read.
        max_tokens: longest rewrite (tokens).
        client: an ``httpx.Client`` to reuse.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_tokens: int = 96,
        client: httpx.Client | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self._client = client or httpx.Client(timeout=timeout)
        self._rule = RuleRewriter()

    def build_messages(self, history: list[Turn], question: str) -> list[dict[str, str]]:
        """System instructions, then the recent history and the follow-up as one user turn."""
        lines = [
            f"{'User' if t.role == 'user' else 'Assistant'}: {t.content.strip()[:1500]}"
            for t in history[-LLM_HISTORY_MESSAGES:]
        ]
        user = (
            "Conversation:\n" + "\n".join(lines) + f"\n\nLast message: {question.strip()}\n\n"
            "Standalone question:"
        )
        return [{"role": "system", "content": REWRITE_PROMPT}, {"role": "user", "content": user}]

    @staticmethod
    def _clean(text: str) -> str:
        text = text.strip().splitlines()[0].strip() if text.strip() else ""
        text = re.sub(r"^(standalone question|question)\s*:\s*", "", text, flags=re.IGNORECASE)
        return text.strip().strip('"').strip()

    def rewrite(self, history: list[Turn], question: str) -> Rewrite:
        """The model's standalone question, or the rule's when the model fails."""
        if _previous_question(history) is None:
            return Rewrite(question.strip(), "none")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {
            "model": self.model,
            "messages": self.build_messages(history, question),
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        try:
            response = self._client.post(self.url, json=body, headers=headers)
            response.raise_for_status()
            text = self._clean(str(response.json()["choices"][0]["message"]["content"] or ""))
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            logger.warning("question rewrite by the LLM failed; using the rule: %s", exc)
            return self._rule.rewrite(history, question)
        if not text or len(text) > MAX_STANDALONE_CHARS:
            return self._rule.rewrite(history, question)
        return Rewrite(text, "llm")

    def close(self) -> None:
        """Closes the HTTP client."""
        self._client.close()
