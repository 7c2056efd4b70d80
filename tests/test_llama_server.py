"""``ragpress ask`` and ``ragpress pipeline`` against llama.cpp's real OpenAI-compatible server.

The server (``llama-cpp-python[server]``, installed by ``scripts/install.sh server``) serves the
packaged SmolLM2 GGUF on a free localhost port. The CLI runs as a user runs it, in a child process.
The tokens it reports sent are checked against the server's own count of the same messages (a
non-streaming request), TTFT against the total time, and the failures against their one-line errors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

REPO = Path(__file__).resolve().parents[1]
ALIAS = "smollm2"
QUESTION = "What is the capital of France?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _require_server_package() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        message = "llama-cpp-python[server] is not installed: bash scripts/install.sh server"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


class LlamaServer:
    """llama.cpp's server on 127.0.0.1:port serving the SmolLM2 GGUF as ``ALIAS``."""

    def __init__(self, log: Path) -> None:
        from compression.lm import smollm2_gguf_path

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--model_alias", ALIAS,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096", "--n_threads", "1"]
        self.proc = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(log)

    def _wait_ready(self, log: Path, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama.cpp server exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"llama.cpp server not ready after {timeout:.0f} s")

    def prompt_tokens(self, messages: list[dict]) -> int:
        """The server's own count of ``messages``' prompt tokens (non-streaming, one token)."""
        import httpx

        reply = httpx.post(f"{self.url}/chat/completions", timeout=120,
                           json={"model": ALIAS, "messages": messages, "max_tokens": 1, "temperature": 0})
        return reply.json()["usage"]["prompt_tokens"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_server_package()
    running = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    from retrieval.chunkers import make_chunker
    from retrieval.encoder import load_encoder
    from retrieval.indexing import index_paths

    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    (docs / "paris.txt").write_text("Paris is the capital of France. It lies on the Seine. The Louvre is in Paris.\n\n"
                                    "France borders Spain and Italy. Its currency is the euro.\n", encoding="utf-8")
    (docs / "nile.txt").write_text("The Nile is a river in Africa, about 6,650 km long. It flows north into the Mediterranean.\n",
                                   encoding="utf-8")
    index_paths([docs], root / "index", make_chunker("token", chunk_size=32), load_encoder())
    return root / "index"


def ragpress(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "RAGPRESS_RUNS": str(tmp_path / "runs.sqlite")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_ask_against_the_server_reports_its_usage_and_ttft(server, index, tmp_path):
    from generation.messages import chat_messages

    done = ragpress(tmp_path, "ask", QUESTION, "--index", str(index), "-k", "2", "--llm-url", server.url, "--llm-model", ALIAS,
                    "--compression", "extractive", "--rate", "0.33", "--json", "--max-new-tokens", "24")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["answer"].strip() and result["kv_reuse"] == "none" and not result["chunk_caches_reused"]
    assert result["generator"] == {"backend": "openai", "url": server.url, "model": ALIAS}
    assert 0 < result["ttft_s"] < result["total_s"]
    # What was sent: the kept spans of the retrieved contexts; the server counts those messages the same.
    contexts = [hit["text"] for hit in result["contexts"]]
    kept = [(s["context"], s["start"], s["end"]) for s in result["compression"]["kept"]]
    assert 0 < sum(e - s for _, s, e in kept) < sum(map(len, contexts))  # compression really dropped text
    assert result["tokens_sent"] == server.prompt_tokens(chat_messages(contexts, QUESTION, kept))
    full = server.prompt_tokens(chat_messages(contexts, QUESTION))
    assert result["tokens_sent"] < full


def write_sweep(path: Path) -> Path:
    path.write_text("grid:\n  chunker: token\n  chunk_size: 100\n  overlap: 0\n  k: 2\n  retrieval: dense\n"
                    "  compression: [none, extractive]\n  rate: 0.33\n  kv_mode: none\n  max_new_tokens: 12\n", encoding="utf-8")
    return path


def test_pipeline_grid_against_the_server(server, tmp_path):
    sweep = write_sweep(tmp_path / "grid.yaml")
    done = ragpress(tmp_path, "pipeline", "--sweep", str(sweep), "--limit", "2", "--llm-url", server.url, "--llm-model", ALIAS,
                    "--cache-dir", str(tmp_path / "stages"), "--json", str(tmp_path / "out.json"), "--html", str(tmp_path / "d.html"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["results"]
    assert [r["config"]["compression"] for r in results] == ["none", "extractive"]
    for result in results:
        runs = result["questions"]
        assert len(runs) == 2 and all(run["answer"].strip() for run in runs)
        assert all(0 < run["ttft_s"] and run["tokens_sent"] > 0 and run["reused_tokens"] == 0 for run in runs)
    plain, squeezed = (r["questions"] for r in results)
    assert all(s["tokens_sent"] < p["tokens_sent"] for p, s in zip(plain, squeezed))  # the server read fewer tokens
    # A reuse mode is refused before anything runs.
    refused = ragpress(tmp_path, "pipeline", "--config", str(write_config(tmp_path / "one.yaml")), "--llm-url", server.url,
                       "--llm-model", ALIAS)
    assert refused.returncode == 2 and len(error_lines(refused)) == 1 and "use --kv-reuse none" in error_lines(refused)[0]


def write_config(path: Path) -> Path:
    path.write_text("chunker: token\nchunk_size: 100\noverlap: 0\nk: 2\nretrieval: dense\nkv_mode: naive\n", encoding="utf-8")
    return path


def test_a_wrong_model_name_is_one_line_before_any_work(server, index, tmp_path):
    done = ragpress(tmp_path, "ask", QUESTION, "--index", str(index), "--llm-url", server.url, "--llm-model", "gpt-17", "--json")
    assert done.returncode == 2
    assert error_lines(done) == [f"error: model 'gpt-17' is not served at {server.url}; it serves: {ALIAS} (fix --llm-model)"]
    assert done.stdout == ""


def test_a_server_stopped_mid_run_is_one_line_and_a_failed_exit(index, tmp_path):
    _require_server_package()
    doomed = LlamaServer(tmp_path / "doomed.log")
    try:
        sweep = write_sweep(tmp_path / "grid.yaml")
        env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home"),
               "RAGPRESS_RUNS": str(tmp_path / "runs.sqlite")}
        child = subprocess.Popen([sys.executable, "-m", "flows.cli", "pipeline", "--sweep", str(sweep), "--limit", "6",
                                  "--llm-url", doomed.url, "--llm-model", ALIAS, "--cache-dir", str(tmp_path / "stages"),
                                  "--json", str(tmp_path / "out.json"), "--html", str(tmp_path / "d.html")],
                                 cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        answers = tmp_path / "stages" / "answer"
        deadline = time.monotonic() + 900
        while not (answers.is_dir() and any(answers.iterdir())) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.5)
        assert child.poll() is None, child.stderr.read()[-3000:] if child.stderr else ""
        doomed.stop()  # the first answer is stored: the run is under way
        _, stderr = child.communicate(timeout=600)
    finally:
        doomed.stop()
    assert child.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tries)" in errors[0], stderr[-3000:]
    assert errors[0].startswith((f"error: cannot reach the LLM server at {doomed.url}", f"error: the LLM server at {doomed.url}"))
    assert not (tmp_path / "out.json").exists()
