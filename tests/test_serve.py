"""Scheduled indexing: the served deployment (``ragpress serve``) and the work-pool one (``prefect.yaml``)
each run once against a real local Prefect server and change the index."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def test_deployment_parameters_and_bad_input(tmp_path: Path) -> None:
    from flows.serve import indexing_deployment, indexing_parameters

    (tmp_path / "corpus").mkdir()
    params = indexing_parameters(tmp_path / "corpus", "idx", chunk_size=64, model=None)
    assert params == {"paths": [str((tmp_path / "corpus").resolve())], "index_dir": str(Path("idx").resolve()), "chunk_size": 64}
    deployment = indexing_deployment(tmp_path / "corpus", tmp_path / "idx", name="t", cron="*/5 * * * *")
    assert deployment.entrypoint == "flows.indexing.index_flow"
    assert [s.schedule.cron for s in deployment.schedules] == ["*/5 * * * *"]
    with pytest.raises(ValueError, match="no such file or folder"):
        indexing_parameters(tmp_path / "missing", "idx")
    with pytest.raises(ValueError, match="Invalid cron"):
        indexing_deployment(tmp_path / "corpus", "idx", cron="every hour")
    with pytest.raises(ValueError, match="unknown indexing option"):
        indexing_parameters(tmp_path / "corpus", "idx", chunksize=3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group we started: SIGINT, then SIGKILL after a grace period."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


@contextmanager
def _local_server(home: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait(healthy, 240, "the Prefect server to start", server)
        yield url, env
    finally:
        _stop(server)
        log.close()


def _run(name: str, url: str, timeout: int = 420, parameters: dict | None = None):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return run_deployment(name=name, parameters=parameters, timeout=timeout, poll_interval=2)


def _deployment_exists(name: str, url: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(name)
                return True
            except Exception:  # noqa: BLE001 - ObjectNotFound until it is registered
                return False


def _corpus(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.txt").write_text("FAISS searches dense vectors quickly. " * 20)
    (folder / "b.txt").write_text("Prefect schedules the indexing flow on a cron. " * 20)


@pytest.mark.slow
@pytest.mark.real_model
def test_served_deployment_run_updates_the_index(tmp_path: Path) -> None:
    from retrieval.index_store import IndexStore

    corpus, index_dir = tmp_path / "corpus", tmp_path / "index"
    _corpus(corpus)
    with _local_server(tmp_path) as (url, env):
        log = open(tmp_path / "serve.log", "wb")
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", str(corpus), "--index", str(index_dir),
             "--cron", "0 3 1 1 *", "--name", "test", "--chunk-size", "64"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(lambda: _deployment_exists("ragpress-index/test", url), 180, "the deployment to register", served)
            first = _run("ragpress-index/test", url)
            assert first.state.is_completed(), first.state
            v1 = IndexStore.open(index_dir)
            assert set(v1.documents) == {"a.txt", "b.txt"}
            (corpus / "c.txt").write_text("Dask spreads the embedding map over worker processes. " * 20)
            second = _run("ragpress-index/test", url)
            assert second.state.is_completed(), second.state
            # Anyone reaching the API can set parameters: paths outside the roots fixed by `serve` are refused.
            _corpus(tmp_path / "elsewhere")
            for parameters in ({"paths": [str(tmp_path / "elsewhere")], "index_dir": str(tmp_path / "stolen")},
                               {"paths": [str(corpus)], "index_dir": str(tmp_path / "stolen")},
                               {"rebuild": True}):
                refused = _run("ragpress-index/test", url, parameters=parameters)
                assert refused.state.is_failed(), (parameters, refused.state)
            assert not (tmp_path / "stolen").exists()
        finally:
            _stop(served)
            log.close()
    v2 = IndexStore.open(index_dir)
    assert v2.version > v1.version and set(v2.documents) == {"a.txt", "b.txt", "c.txt"}
    assert {d: r.chunk_ids for d, r in v2.documents.items() if d != "c.txt"} == \
        {d: r.chunk_ids for d, r in v1.documents.items()}  # unchanged files were not re-embedded


@pytest.mark.slow
@pytest.mark.real_model
def test_prefect_yaml_deploys_to_a_work_pool_and_a_worker_runs_it(tmp_path: Path) -> None:
    from retrieval.index_store import IndexStore

    corpus, index_dir = tmp_path / "corpus", tmp_path / "index"
    _corpus(corpus)
    with _local_server(tmp_path) as (url, env):
        # prefect.yaml's pull step runs from "{{ $PWD }}"; runs may only use paths under the roots given at deploy time
        env = {**env, "PWD": str(REPO), "RAGPRESS_INDEX_ROOTS": str(tmp_path)}

        def prefect(*args: str) -> None:
            done = subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        # the commands of docs/deploy.md, with the folder overridden as documented
        prefect("work-pool", "create", "ragpress-pool", "--type", "process")
        prefect("--no-prompt", "deploy", "--name", "hourly-index")
        prefect("deployment", "run", "ragpress-index/hourly-index", "--param", f"index_dir={index_dir}",
                "--param", f'paths=["{corpus}"]', "--param", "chunk_size=64")
        prefect("worker", "start", "--pool", "ragpress-pool", "--run-once")
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        assert len(runs) == 1 and runs[0].state.is_completed(), [r.state for r in runs]
    assert set(IndexStore.open(index_dir).documents) == {"a.txt", "b.txt"}
