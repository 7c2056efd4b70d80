"""An OpenAI-compatible ``/v1/chat/completions`` endpoint: vLLM, llama.cpp's server, Ollama, TGI, hosted APIs.

The answer is streamed so the time to first token is measured where the user sees it: from the
start of the request that succeeded to the first chunk carrying generated text. Token counts come
from the server's own ``usage`` (asked for with ``stream_options.include_usage``). A server that
streams no usage (llama-cpp-python's, for one) is asked once more, without streaming and for one
token, for the same messages: its ``usage.prompt_tokens`` is then the count (the completion's count
stays unknown, None). 429, 5xx and
connection failures are retried with exponential back-off (a ``Retry-After`` header is honoured,
capped); every failure ends in one line naming the cause and the fix. The server keeps its own KV,
so ragpress's chunk-cache reuse is not available here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from generation.base import NO_REUSE, Answer, GenerationError, KeptSpans, ReuseOptions
from generation.messages import chat_messages

T = TypeVar("T")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix; ``message`` is the final error text."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.message, self.wait_s = message, wait_s


class OpenAIHTTPGenerator:
    """Answers through ``POST {url}/chat/completions`` with streaming; ``url`` ends in ``/v1``."""

    name = "openai"

    def __init__(self, url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5,
                 system: str | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--llm-url must start with http:// or https://, got '{url}'")
        if not model:
            raise ValueError("--llm-url needs --llm-model NAME (the model name the server serves)")
        if retries < 0 or timeout_s <= 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0, got {retries} and {timeout_s}")
        self.url, self.model, self.api_key_env = url.rstrip("/"), model, api_key_env
        self.timeout_s, self.connect_timeout_s, self.retries, self.backoff_s = timeout_s, connect_timeout_s, retries, backoff_s
        self.system = system
        self._model_checked = False

    def identity(self) -> dict[str, Any]:
        """The endpoint and model name (what the server serves under that name is its business)."""
        return {"backend": self.name, "url": self.url, "model": self.model}

    def preflight(self, reuse: ReuseOptions) -> None:
        """Refuse reuse (it needs the model's KV in this process), a missing API key, and a model name
        the server does not list; an unreachable server is left to the answer's retries."""
        if reuse.reuses:
            raise ValueError(f"chunk-cache reuse (--kv-reuse {reuse.mode}) is not available with --llm-url: the server "
                             "keeps its own KV cache; use --kv-reuse none")
        if not self._model_checked:
            with self._client() as client:
                self.check_model(client)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ValueError(f"environment variable {self.api_key_env} (--llm-api-key-env) is not set; export the API key in it")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _client(self) -> Any:
        import httpx

        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)
        return httpx.Client(timeout=timeout, headers=self._headers())

    def answer(self, contexts: Sequence[str], question: str, *, reuse: ReuseOptions = NO_REUSE,
               max_new_tokens: int = 64, kept: KeptSpans | None = None) -> Answer:
        """Stream one greedy answer; retried as the module doc says, GenerationError when it cannot."""
        self.preflight(reuse)
        body = {"model": self.model, "messages": chat_messages(contexts, question, kept, self.system),
                "max_tokens": max_new_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        with self._client() as client:
            answer = self._with_retries(lambda: self._stream(client, body))
            if answer.prompt_tokens is None:
                prompt_tokens = self._with_retries(lambda: self._count_prompt(client, body))
                answer = replace(answer, prompt_tokens=prompt_tokens, prefilled_tokens=prompt_tokens)
            return answer

    def check_model(self, client: Any) -> None:
        """Refuse a model name the server does not list in ``GET /models`` (servers without the list are trusted)."""
        import httpx

        try:
            response = client.get(f"{self.url}/models")
        except httpx.HTTPError:
            return  # the completion request reports an unreachable server with its retries
        if response.status_code == 200:
            served = [entry.get("id") for entry in _json(response).get("data", []) if isinstance(entry, dict)]
            if served and self.model not in served:
                raise ValueError(f"model '{self.model}' is not served at {self.url}; it serves: {', '.join(map(str, served))} "
                                      "(fix --llm-model)")
        elif response.status_code in (401, 403):
            raise ValueError(self._status_message(response))
        self._model_checked = True

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        for number in range(self.retries + 1):
            try:
                return attempt()
            except _Retryable as failure:
                if number == self.retries:
                    raise GenerationError(f"{failure.message} (after {number + 1} tries)") from None
                wait = failure.wait_s if failure.wait_s is not None else self.backoff_s * 2**number
                time.sleep(min(wait, MAX_RETRY_AFTER_S))
        raise AssertionError("unreachable")

    def _stream(self, client: Any, body: dict[str, Any]) -> Answer:
        started = time.perf_counter()
        with self._transport_failures():
            with client.stream("POST", f"{self.url}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for(response)
                return self._read_events(response, started)

    @contextmanager
    def _transport_failures(self) -> Iterator[None]:
        """Turn every way a request can fail on the wire into one retryable line naming the fix;
        both requests of an answer go through here, so a server that dies between them is retried too."""
        import httpx

        try:
            yield
        except httpx.ConnectError as exc:
            raise _Retryable(f"cannot reach the LLM server at {self.url} ({_reason(exc)}); start it or fix --llm-url") from None
        except httpx.TimeoutException:
            raise _Retryable(f"no answer from {self.url}/chat/completions within {self.timeout_s:g} s; "
                             "check the server or raise the timeout") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise _Retryable(f"the LLM server at {self.url} closed the connection mid-answer ({_reason(exc)}); "
                             "check that it is still running") from None

    def _count_prompt(self, client: Any, body: dict[str, Any]) -> int | None:
        """The server's prompt-token count of ``body``'s messages, from a one-token non-streaming request."""
        probe = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
        with self._transport_failures():
            response = client.post(f"{self.url}/chat/completions", json={**probe, "max_tokens": 1})
        if response.status_code != 200:
            self._raise_for(response)
        return (_json(response).get("usage") or {}).get("prompt_tokens")

    def _raise_for(self, response: Any) -> None:
        message = self._status_message(response)
        if response.status_code in RETRY_STATUS:
            raise _Retryable(message, _retry_after(response))
        raise GenerationError(message)

    def _status_message(self, response: Any) -> str:
        status, detail = response.status_code, _error_detail(response)
        fixes = {401: f"the server refused the API key; set it in ${self.api_key_env or 'NAME'} and pass --llm-api-key-env NAME",
                 403: "the API key is not allowed to use this model or endpoint",
                 404: f"no such model or endpoint; check --llm-model '{self.model}' and that --llm-url ends in /v1",
                 429: "rate limited; wait, or lower the request rate"}
        fix = fixes.get(status, "the server failed; check its log" if status >= 500 else "the server refused the request")
        return f"HTTP {status} from {self.url}/chat/completions: {fix}" + (f" (server said: {detail})" if detail else "")

    def _read_events(self, response: Any, started: float) -> Answer:
        parts: list[str] = []
        first: float | None = None
        usage: dict[str, Any] = {}
        for event in _events(response.iter_lines()):
            if event.get("error"):
                raise GenerationError(f"the LLM server at {self.url} failed mid-answer: {_one_line(str(event['error']))}")
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text and first is None:
                    first = time.perf_counter()
                parts.append(text)
            usage = event.get("usage") or usage
        total = time.perf_counter() - started
        return Answer(text="".join(parts).strip(), prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens"), ttft_s=(first or time.perf_counter()) - started,
                      total_s=total, chunk_caches_reused=False, prefilled_tokens=usage.get("prompt_tokens"))


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError:
            raise GenerationError(f"the LLM server sent a stream line that is not JSON: {_one_line(data)}") from None


def _json(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_detail(response: Any) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message": ...}}`` or FastAPI's ``detail``), one line."""
    data = _json(response)
    error = data.get("error")
    detail = error.get("message") if isinstance(error, dict) else error or data.get("detail") or response.text
    return _one_line(str(detail or ""))


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    return _one_line(str(exc) or type(exc).__name__)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
