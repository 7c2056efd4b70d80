"""Bad settings end a command in one line naming the key, exit code 2, fast, with nothing written.

Each case runs the real ``ragpress`` command line in its own process (interpreter start included):
the settings are validated by the stage configs before any flow, index write or model load. The
time is the fastest of at most ``RUNS`` runs: on a busy machine waiting for a CPU only adds to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_kill import FakeEncoder, small_chunker
from support import ANIMALS, PLANETS

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 2.0
RUNS = 3

# (command line after ``ragpress``, text the one error line must hold: the key, and the bad value)
# INDEX, SWEEP and CONFIG are replaced by the test's paths; a sweep or config case writes its text first.
CASES = [
    (["index", "DOCS", "--index", "INDEX", "--chunk-size", "-5"], "chunk_size=-5"),
    (["index", "DOCS", "--index", "INDEX", "--chunk-size", "100", "--overlap", "300"], "overlap=300"),
    (["index", "DOCS", "--index", "INDEX", "--chunker", "words"], "chunker='words'"),
    (["index", "DOCS", "--index", "INDEX", "--context-chunks", "-1"], "context_chunks=-1"),
    (["index", "DOCS", "--index", "INDEX", "--commit-every", "0"], "--commit-every"),
    (["query", "cats?", "--index", "INDEX", "-k", "0"], "k=0"),
    (["query", "cats?", "--index", "INDEX", "--retrieval", "sparse"], "retrieval='sparse'"),
    (["query", "cats?", "--index", "INDEX", "--retrieval", "hybrid", "--hybrid-weight", "1.5"], "hybrid_weight=1.5"),
    (["query", "cats?", "--index", "INDEX", "--compress", "zip"], "compression='zip'"),
    (["query", "cats?", "--index", "INDEX", "--compress", "extractive", "--rate", "2"], "rate=2.0"),
    (["ask", "cats?", "--index", "INDEX", "-k", "0"], "k=0"),
    (["ask", "cats?", "--index", "INDEX", "--kv-reuse", "turbo"], "kv_mode='turbo'"),
    (["ask", "cats?", "--index", "INDEX", "--kv-reuse", "blend", "--blend-r", "2"], "blend_r=2.0"),
    (["ask", "cats?", "--index", "INDEX", "--kv-reuse", "blend", "--blend-score", "loudest"], "blend_score='loudest'"),
    (["ask", "cats?", "--index", "INDEX", "--kv-reuse", "edge", "--edge-tokens", "0"], "edge_tokens=0"),
    (["ask", "cats?", "--index", "INDEX", "--max-new-tokens", "0"], "max_new_tokens=0"),
    (["ask", "cats?", "--index", "INDEX", "--compression", "extractive", "--rate", "0"], "rate=0.0"),
    (["ask", "cats?", "--index", "INDEX", "--compression", "zip"], "compression='zip'"),
    (["eval", "--sweep", "SWEEP"], "chunk_size=-5", "grid: {chunker: [token], chunk_size: [100, -5]}\n"),
    (["eval", "--sweep", "SWEEP"], "k='five'", "grid: {k: five}\n"),
    (["eval", "--sweep", "SWEEP"], "unknown key 'chunksize'", "configs:\n  - {chunksize: 100}\n"),
    (["eval", "--sweep", "SWEEP"], "retrieval='colbert'", "grid: {retrieval: [dense, colbert]}\n"),
    (["eval", "--sweep", "SWEEP"], "hybrid_weight=2", "grid: {retrieval: hybrid, hybrid_weight: [0.5, 2]}\n"),
    (["eval", "--sweep", "SWEEP"], "unit='bytes'", "configs:\n  - {unit: bytes}\n"),
    (["pipeline", "--config", "CONFIG"], "kv_mode='turbo'", "kv_mode: turbo\n"),
    (["pipeline", "--config", "CONFIG"], "rate=0", "compression: extractive\nrate: 0\n"),
    (["pipeline", "--config", "CONFIG"], "compression='zip'", "compression: zip\n"),
    (["pipeline", "--config", "CONFIG"], "k='min'", "k: min\n"),
    (["pipeline", "--config", "CONFIG"], "unknown key 'kvmode'", "kvmode: blend\n"),
    (["pipeline", "--config", "CONFIG"], "max_new_tokens=0", "max_new_tokens: 0\n"),
    (["pipeline", "--config", "CONFIG"], "fidelity='yes'", "fidelity: 'yes'\n"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real index (stand-in encoder) and its documents; the cache directory the commands are pointed at."""
    from retrieval.indexing import index_paths

    root = tmp_path_factory.mktemp("cli-config")
    docs = root / "docs"
    docs.mkdir()
    (docs / "animals.txt").write_text(ANIMALS, encoding="utf-8")
    (docs / "planets.txt").write_text(PLANETS, encoding="utf-8")
    index_paths([docs], root / "index", small_chunker(), FakeEncoder())
    (root / "cache").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and modification time."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(root.rglob("*"))}


def command(args: list[str], root: Path) -> list[str]:
    places = {"DOCS": root / "docs", "INDEX": root / "index", "SWEEP": root / "bad-sweep.yaml", "CONFIG": root / "bad-config.yaml"}
    return [str(places.get(arg, arg)) for arg in args]


@pytest.mark.parametrize("case", CASES, ids=[f"{case[0][0]}-{case[1]}" for case in CASES])
def test_a_bad_setting_fails_in_one_line_fast_and_writes_nothing(case: tuple, workspace: Path) -> None:
    args, expected, *text = case
    if text:
        (workspace / ("bad-sweep.yaml" if "--sweep" in args else "bad-config.yaml")).write_text(text[0], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAGPRESS_CACHE": str(workspace / "cache"),
           "PREFECT_HOME": str(workspace / "prefect-home"), "COLUMNS": "400"}
    before = snapshot(workspace)
    times = []
    while len(times) < RUNS and (not times or min(times) >= LIMIT_S):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "flows.cli", *command(args, workspace)], capture_output=True, text=True,
                              env=env, cwd=workspace, timeout=60, check=False)
        times.append(time.monotonic() - started)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
        assert "Traceback" not in done.stdout + done.stderr and not done.stdout.strip()
        assert snapshot(workspace) == before, "the command touched the index, the cache or the working directory"
    print(f"{' '.join(args[:1])} {expected}: {min(times):.2f} s")
    assert min(times) < LIMIT_S, f"{min(times):.2f} s at best ({len(times)} runs) to refuse a bad setting"
