"""Model routing: an ordered list of OpenAI-compatible model routes, each with retries and a
circuit breaker, falling over to the next route and, when every route fails, to the extractive
answer. A routed answer never fails because a model did.

A route is tried when its circuit is closed, or half-open (one trial call once
``reset_timeout_seconds`` have passed since it opened); an open circuit sends the request to the
next route without a call. Each attempt goes through the route's breaker (pybreaker:
``fail_max`` consecutive failed attempts open it), and a retryable failure (timeout,
connection failure, 5xx, 429; see :attr:`~rag_platform.lib.answer.LLMError.retryable`) is
retried ``max_retries`` times with exponential back-off (tenacity). Any other HTTP error (a 401
of a wrong key, a 404 of an unknown model) goes to the next route at once. Breakers live in the
process (one API process per machine, see DESIGN.md); each process learns an endpoint's failure
by itself.

A stream falls over the same way until its first token: a route whose stream fails before
sending any text is replaced by the next one, unseen by the client. A failure after the first
token ends the stream with that error (the text already sent cannot be taken back).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal, Protocol

from pybreaker import CircuitBreaker, CircuitBreakerError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from rag_platform.lib.answer import Answerer, LLMAnswerer, LLMError, TokenCounter
from rag_platform.lib.models import Answer, Hit
from rag_platform.lib.tenants import BreakerConfig, ModelRoute

logger = logging.getLogger(__name__)

#: What stood in for the first route: a later route, or the extractive answer.
FallbackCode = Literal["next_model", "extractive"]
#: The ``model`` of an answer the extractive answerer gave.
EXTRACTIVE = "extractive"
#: The failure reason of a route whose circuit was open (no call made).
CIRCUIT_OPEN = "circuit_open"
#: Longest back-off between two attempts of one route (seconds).
MAX_BACKOFF_SECONDS = 4.0


class RoutingObserver(Protocol):
    """What the routed answerer reports (e.g. to Prometheus); implementations must not raise."""

    def attempt(self, route: str, outcome: str, seconds: float) -> None:
        """One attempt of ``route``: ``outcome`` ``ok`` or a failure reason (``timeout``,
        ``connection``, ``http_503``, ``circuit_open``...), in ``seconds``."""
        ...

    def fallback(self, code: FallbackCode, reason: str) -> None:
        """An answer a fallback gave (``next_model`` or ``extractive``); ``reason``: the first
        route's failure reason."""
        ...


def failure_reason(exc: BaseException) -> str:
    """The short reason code of a route's failure (an ``LLMError``'s reason, ``circuit_open``)."""
    if isinstance(exc, CircuitBreakerError):
        return CIRCUIT_OPEN
    if isinstance(exc, LLMError):
        return exc.reason
    return type(exc).__name__


def describe_failures(failures: list[tuple[str, str]]) -> str:
    """``"primary: timeout; secondary: circuit open"`` from ``[(route, reason), ...]``."""
    return "; ".join(f"{name}: {reason.replace('_', ' ')}" for name, reason in failures)


@dataclass
class Route:
    """One model route ready to call.

    Attributes:
        name: the route's name (the answer's ``model``).
        answerer: the endpoint's answerer.
        breaker: the route's circuit breaker.
        max_retries: further attempts after a retryable failure.
        retry_backoff_seconds: the first back-off (doubling, up to :data:`MAX_BACKOFF_SECONDS`).
    """

    name: str
    answerer: LLMAnswerer
    breaker: CircuitBreaker
    max_retries: int = 0
    retry_backoff_seconds: float = 0.2


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, LLMError) and exc.retryable


class RoutedAnswerer:
    """Answers with the first route that succeeds, else extractively (flagged).

    Satisfies :class:`~rag_platform.lib.answer.Answerer`. Every answer carries ``model`` (the
    route's name or ``"extractive"``), ``fallback`` and ``fallback_reason`` (see
    :class:`~rag_platform.lib.models.Answer`).

    Args:
        routes: the routes, tried in order (at least one).
        extractive: the answerer of last resort (no LLM).
        observe: told of each attempt of a route and of each fallback (metrics).

    Raises:
        ValueError: no routes.
    """

    mode: Literal["extractive", "llm"] = "llm"

    def __init__(
        self,
        routes: list[Route],
        extractive: Answerer,
        observe: RoutingObserver | None = None,
    ) -> None:
        if not routes:
            raise ValueError("a routed answerer needs at least one route")
        self.routes = routes
        self.extractive = extractive
        self.observe = observe

    def _attempt(self, route: Route, call: Callable[[], object]) -> object:
        """``call`` through the route's breaker, retried on retryable failures.

        Raises:
            LLMError: the last attempt's failure.
            CircuitBreakerError: the circuit is open.
        """
        retrying = Retrying(
            stop=stop_after_attempt(1 + route.max_retries),
            wait=wait_exponential(multiplier=route.retry_backoff_seconds, max=MAX_BACKOFF_SECONDS),
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                t0 = time.perf_counter()
                try:
                    result = route.breaker.call(call)
                except (LLMError, CircuitBreakerError) as exc:
                    self._attempted(route.name, failure_reason(exc), time.perf_counter() - t0)
                    raise
                self._attempted(route.name, "ok", time.perf_counter() - t0)
                return result
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _attempted(self, name: str, outcome: str, seconds: float) -> None:
        if self.observe is not None:
            try:
                self.observe.attempt(name, outcome, seconds)
            except Exception:
                logger.exception("the routing observer failed")

    def _routed(self, answer: Answer, name: str, failures: list[tuple[str, str]]) -> Answer:
        if not failures:
            return replace(answer, model=name, fallback=None, fallback_reason=None)
        self._fell_back("next_model", failures)
        return replace(
            answer,
            model=name,
            fallback="next_model",
            fallback_reason=describe_failures(failures),
        )

    def _extractive(self, answer: Answer, failures: list[tuple[str, str]]) -> Answer:
        logger.warning(
            "every model route failed; answering extractively",
            extra={"reason": describe_failures(failures)},
        )
        self._fell_back("extractive", failures)
        return replace(
            answer,
            mode="extractive",
            model=EXTRACTIVE,
            fallback="extractive",
            fallback_reason="all models failed (" + describe_failures(failures) + ")",
        )

    def _fell_back(self, code: FallbackCode, failures: list[tuple[str, str]]) -> None:
        if self.observe is not None:
            try:
                self.observe.fallback(code, failures[0][1])
            except Exception:
                logger.exception("the routing observer failed")

    def answer(self, question: str, hits: list[Hit], max_sentences: int = 3) -> Answer:
        """The first route's answer that succeeds, else the extractive one.

        Raises:
            ValueError: empty question.
            Exception: whatever the extractive answerer raises when it is the last resort.
        """
        failures: list[tuple[str, str]] = []
        for route in self.routes:
            try:
                result = self._attempt(
                    route, partial(route.answerer.answer, question, hits, max_sentences)
                )
            except (LLMError, CircuitBreakerError) as exc:
                logger.warning(
                    "model route failed", extra={"route": route.name, "error": str(exc)[:300]}
                )
                failures.append((route.name, failure_reason(exc)))
                continue
            assert isinstance(result, Answer)
            return self._routed(result, route.name, failures)
        return self._extractive(self.extractive.answer(question, hits, max_sentences), failures)

    def stream(
        self, question: str, hits: list[Hit], stop: threading.Event | None = None
    ) -> Generator[str, None, Answer]:
        """Streams the first route whose stream starts; falls over before the first token.
        ``stop`` ends the stream early (see ``LLMAnswerer.stream``); set before any route
        started, the answer is empty.

        Yields:
            Text pieces in order.

        Returns:
            The answer (``model``, ``fallback``, ``fallback_reason`` set).

        Raises:
            ValueError: empty question.
            LLMError: the answering route failed after its first token.
        """
        failures: list[tuple[str, str]] = []
        for route in self.routes:
            if stop is not None and stop.is_set():
                return Answer(text="", citations=[], mode="llm", model=route.name)

            def start(r: Route = route) -> tuple[Generator[str, None, Answer] | None, object]:
                pieces = r.answerer.stream(question, hits, stop)
                try:
                    return pieces, next(pieces)
                except StopIteration as end:
                    return None, end.value
                except BaseException:
                    pieces.close()
                    raise

            try:
                started = self._attempt(route, start)
            except (LLMError, CircuitBreakerError) as exc:
                logger.warning(
                    "model route failed before its first token",
                    extra={"route": route.name, "error": str(exc)[:300]},
                )
                failures.append((route.name, failure_reason(exc)))
                continue
            assert isinstance(started, tuple)
            pieces, first = started
            if pieces is None:
                assert isinstance(first, Answer)
                return self._routed(first, route.name, failures)
            try:
                assert isinstance(first, str)
                yield first
                result = yield from pieces
            finally:
                pieces.close()
            return self._routed(result, route.name, failures)
        result = yield from self.extractive.stream(question, hits, stop)
        return self._extractive(result, failures)

    def close(self) -> None:
        """Closes every route's HTTP client."""
        for route in self.routes:
            route.answerer.close()


def build_routes(
    models: list[ModelRoute],
    breaker: BreakerConfig,
    *,
    max_tokens: int,
    count_tokens: TokenCounter | None = None,
) -> list[Route]:
    """The routes of a tenant's model list, each with a new circuit breaker.

    Args:
        models: the tenant's routes, in order.
        breaker: the breaker settings of every route.
        max_tokens: completion length limit of every route.
        count_tokens: the token counter for streams whose endpoint reports no usage.

    Raises:
        KeyError: a route's ``api_key_env`` names an environment variable that is not set.
    """
    routes = []
    for m in models:
        api_key = None
        if m.api_key_env:
            try:
                api_key = os.environ[m.api_key_env]
            except KeyError:
                raise KeyError(
                    f"model route {m.name!r}: environment variable {m.api_key_env} is not set"
                ) from None
        routes.append(
            Route(
                name=m.name,
                answerer=LLMAnswerer(
                    m.base_url,
                    m.model,
                    api_key=api_key,
                    timeout=m.timeout_seconds,
                    max_tokens=max_tokens,
                    count_tokens=count_tokens,
                ),
                breaker=CircuitBreaker(
                    fail_max=breaker.fail_max,
                    reset_timeout=breaker.reset_timeout_seconds,
                    throw_new_error_on_trip=False,  # the failure that trips it is reported
                    exclude=[ValueError],  # a bad question is not the endpoint's failure
                    name=m.name,
                ),
                max_retries=m.max_retries,
                retry_backoff_seconds=m.retry_backoff_seconds,
            )
        )
    return routes
