"""The OpenAI-compatible HTTP generator against a small fake server (stdlib ``http.server`` on 127.0.0.1).

The fake answers ``GET /v1/models`` and streams ``POST /v1/chat/completions`` as server-sent events
with pauses before and after the first token, so the measured TTFT and total time can be checked
against the times the server really waited; each test scripts the status codes it returns.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from generation.base import GenerationError, ReuseOptions
from generation.openai_http import OpenAIHTTPGenerator

FIRST_DELAY_S = 0.15
LATER_DELAY_S = 0.1
PIECES = ["Paris", " is", " the", " capital."]
USAGE = {"prompt_tokens": 57, "completion_tokens": 4, "total_tokens": 61}


class FakeServer:
    """Serves scripted replies: ``script`` is a list of statuses for successive completion requests
    (200 streams the answer, "cut" closes the connection mid-stream); the last one repeats. The first
    ``count_cuts`` prompt-count requests are dropped without a reply, as by a server that died."""

    def __init__(self, script=(200,), models=("m",), stream_usage=True, count_cuts=0) -> None:
        self.script, self.models, self.stream_usage = list(script), list(models), stream_usage
        self.count_cuts = count_cuts
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                body = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]}).encode()
                self._reply(200, body, "application/json")

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(json.loads(self.rfile.read(length)))
                outer.headers.append(dict(self.headers))
                status = outer.script[min(len(outer.requests) - 1, len(outer.script) - 1)]
                if not outer.requests[-1].get("stream") and outer.count_cuts > 0:
                    outer.count_cuts -= 1
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif not outer.requests[-1].get("stream"):  # a count request: usage only
                    usage = {"prompt_tokens": USAGE["prompt_tokens"], "completion_tokens": 1, "total_tokens": USAGE["prompt_tokens"] + 1}
                    self._reply(200, json.dumps({"choices": [{"message": {"content": "P"}}], "usage": usage}).encode(), "application/json")
                elif status == 200:
                    self._stream(cut=False)
                elif status == "cut":
                    self._stream(cut=True)
                else:
                    body = json.dumps({"error": {"message": f"scripted {status}", "type": "fake"}}).encode()
                    self._reply(status, body, "application/json", {"Retry-After": "0"} if status == 429 else {})

            def _reply(self, status, body, kind, extra=None):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _event(self, payload):
                data = f"data: {payload}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, cut):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._event(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
                time.sleep(FIRST_DELAY_S)
                for piece in PIECES:
                    self._event(json.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}))
                    if cut:
                        self.wfile.write(b"5\r\nda")  # a chunk shorter than announced, then the connection drops
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    time.sleep(LATER_DELAY_S / len(PIECES))
                if outer.stream_usage:
                    self._event(json.dumps({"choices": [], "usage": USAGE}))
                self._event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def generator(url, **options):
    return OpenAIHTTPGenerator(url, "m", retries=2, backoff_s=0.01, timeout_s=5, **options)


CONTEXTS = ["Paris is the capital of France. It lies on the Seine.", "The Nile is long."]


def test_streams_the_answer_with_the_servers_usage_and_a_real_ttft(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sekret")
    with FakeServer() as server:
        started = time.perf_counter()
        answer = generator(server.url, api_key_env="FAKE_KEY").answer(CONTEXTS, "Capital of France?", max_new_tokens=9,
                                                                      kept=[(0, 0, 31)])
        wall = time.perf_counter() - started
    assert answer.text == "".join(PIECES)
    assert (answer.prompt_tokens, answer.completion_tokens) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])
    # The server waited FIRST_DELAY_S before the first token and LATER_DELAY_S more before the end.
    assert FIRST_DELAY_S <= answer.ttft_s < answer.total_s <= wall
    assert answer.total_s - answer.ttft_s >= LATER_DELAY_S * 0.7
    assert not answer.chunk_caches_reused
    body, headers = server.requests[0], server.headers[0]
    assert headers["Authorization"] == "Bearer sekret"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m" and body["max_tokens"] == 9 and body["temperature"] == 0
    # Only the kept span of context 0 is sent; context 1 kept nothing.
    assert body["messages"][1]["content"] == "Document:\nParis is the capital of France.\n\nQuestion: Capital of France?"


def test_a_server_that_streams_no_usage_is_asked_for_the_prompt_count():
    with FakeServer(stream_usage=False) as server:
        answer = generator(server.url).answer(CONTEXTS, "q?", max_new_tokens=9)
    assert answer.text == "".join(PIECES) and answer.prompt_tokens == USAGE["prompt_tokens"] and answer.completion_tokens is None
    streamed, counted = server.requests
    assert counted["messages"] == streamed["messages"] and counted["max_tokens"] == 1 and "stream" not in counted


def one_line_error(url, **options) -> str:
    with pytest.raises(GenerationError) as caught:
        generator(url, **options).answer(CONTEXTS, "q?")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_401_names_the_key_variable_and_is_not_retried(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "wrong")
    with FakeServer(script=[401]) as server:
        message = one_line_error(server.url, api_key_env="FAKE_KEY")
    assert message.startswith("HTTP 401") and "$FAKE_KEY" in message and "scripted 401" in message
    assert len(server.requests) == 1


def test_404_names_the_model_and_is_not_retried():
    with FakeServer(script=[404]) as server:
        message = one_line_error(server.url)
    assert message.startswith("HTTP 404") and "--llm-model 'm'" in message and "/v1" in message
    assert len(server.requests) == 1


def test_429_is_retried_until_the_server_answers():
    with FakeServer(script=[429, 429, 200]) as server:
        answer = generator(server.url).answer(CONTEXTS, "q?")
    assert answer.text == "".join(PIECES) and len(server.requests) == 3


def test_5xx_is_retried_then_reported_with_the_number_of_tries():
    with FakeServer(script=[503]) as server:
        message = one_line_error(server.url)
    assert message.startswith("HTTP 503") and "check its log" in message and message.endswith("(after 3 tries)")
    assert len(server.requests) == 3


def test_a_connection_cut_mid_answer_is_retried_then_reported():
    with FakeServer(script=["cut", 200]) as server:
        assert generator(server.url).answer(CONTEXTS, "q?").text == "".join(PIECES)
    with FakeServer(script=["cut"]) as server:
        message = one_line_error(server.url)
    assert "closed the connection mid-answer" in message and message.endswith("(after 3 tries)")


def test_a_connection_dropped_while_counting_the_prompt_is_retried_then_reported():
    with FakeServer(stream_usage=False, count_cuts=1) as server:
        assert generator(server.url).answer(CONTEXTS, "q?").prompt_tokens == USAGE["prompt_tokens"]
    assert [bool(request.get("stream")) for request in server.requests] == [True, False, False]
    with FakeServer(stream_usage=False, count_cuts=99) as server:
        message = one_line_error(server.url)
    assert "closed the connection" in message and "still running" in message and message.endswith("(after 3 tries)")


def test_an_unreachable_server_is_one_clear_line():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = one_line_error(f"http://127.0.0.1:{port}/v1")
    assert message.startswith(f"cannot reach the LLM server at http://127.0.0.1:{port}/v1") and "--llm-url" in message


def test_a_model_the_server_does_not_serve_is_refused_before_any_completion():
    with FakeServer(models=["smollm2", "other"]) as server, pytest.raises(ValueError) as caught:
        generator(server.url).preflight(ReuseOptions())
    message = str(caught.value)
    assert message == f"model 'm' is not served at {server.url}; it serves: smollm2, other (fix --llm-model)"
    assert server.requests == []


def test_reuse_and_a_missing_key_are_refused_up_front(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    http = OpenAIHTTPGenerator("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ValueError, match="not available with --llm-url.*use --kv-reuse none"):
        http.preflight(ReuseOptions("blend"))
    with pytest.raises(ValueError, match="environment variable NO_SUCH_KEY"):
        OpenAIHTTPGenerator("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY").preflight(ReuseOptions())
    with pytest.raises(ValueError, match="needs --llm-model"):
        OpenAIHTTPGenerator("http://127.0.0.1:9/v1", "")
