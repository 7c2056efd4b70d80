"""The CLI's live progress (rich on a terminal, plain lines in a pipe, always on stderr) and its one-line errors.

The commands run as real subprocesses: under a pseudo-terminal (``pty``) and with pipes. They use
the session's Prefect server (no ephemeral server of their own) and ``ragpress index`` embeds with
the bag-of-words stand-in, so no model loads.
"""

from __future__ import annotations

import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from fcntl import ioctl
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
N_DOCS = 20
# `ragpress` with the bag-of-words encoder in place of the embedding model.
LAUNCH = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
import retrieval.encoder
from support import BagOfWordsEncoder
retrieval.encoder.load_encoder = lambda *args, **kwargs: BagOfWordsEncoder()
from flows.cli import main
sys.argv = ["ragpress", *sys.argv[1:]]
main()
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    for number in range(N_DOCS):
        words = " ".join(f"word{(number * 7 + i) % 97}" for i in range(60))
        (folder / f"doc{number:02d}.txt").write_text(f"Document {number}. {words}.\n", encoding="utf-8")
    return folder


def cli_env(tmp_path: Path, **more: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the session's Prefect server, a cache of its own."""
    from prefect.settings import get_current_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGPRESS_PROGRESS"))}
    env.update(PYTHONPATH=str(REPO), PREFECT_API_URL=str(get_current_settings().api.url), PREFECT_HOME=str(tmp_path / "prefect"),
               RAGPRESS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", **more)
    return env


def run_cli(tmp_path: Path, *args: str, launch: bool = True, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", LAUNCH] if launch else [sys.executable, "-m", "flows.cli"]
    return subprocess.run([*command, *args], cwd=tmp_path, env=cli_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=600)


def run_in_terminal(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a 200-column pseudo-terminal; its exit code and everything it drew."""
    leader, follower = pty.openpty()
    ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    child = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], cwd=tmp_path, env=cli_env(tmp_path, TERM="xterm", **env),
                             stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return child.wait(timeout=600), drawn.decode("utf-8", errors="replace")


def test_index_on_a_terminal_redraws_live_progress_before_its_summary(prefect_harness, corpus: Path, tmp_path: Path) -> None:
    # A redraw after every document (period 0), so the renderings are counted, not timed.
    code, drawn = run_in_terminal(tmp_path, "index", str(corpus), "--index", str(tmp_path / "idx"),
                                  RAGPRESS_PROGRESS_SECONDS="0")
    assert code == 0, drawn[-3000:]
    summary_at = drawn.index(f"+{N_DOCS} new")
    plain = ANSI.sub("", drawn[:summary_at])
    counts = [int(n) for n in re.findall(rf"documents embedded\s.*?(\d+)/{N_DOCS}\b", plain)]
    assert len(set(counts)) >= 5, plain[-2000:]  # several distinct renderings, all before the summary line
    assert counts == sorted(counts) and counts[-1] == N_DOCS
    assert re.search(r"files read\s.*?\b" + str(N_DOCS) + r"\b", plain)
    assert "\x1b[" in drawn[:summary_at]  # redrawn in place: a live display, not log lines
    assert "progress:" not in drawn and "Traceback" not in drawn


def test_index_in_a_pipe_prints_plain_lines_on_stderr_and_clean_json(prefect_harness, corpus: Path, tmp_path: Path) -> None:
    # A period longer than the run: only the 10 % steps print, so the lines are exact.
    done = run_cli(tmp_path, "index", str(corpus), "--index", str(tmp_path / "idx"), "--json", RAGPRESS_PROGRESS_SECONDS="3600")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["added"] == N_DOCS  # stdout is the JSON alone
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("progress: ") for line in lines), done.stderr
    assert not ANSI.search(done.stderr)
    documents = [line for line in lines if line.startswith("progress: documents embedded ")]
    step = N_DOCS // 10
    assert [int(re.search(r" (\d+)/", line).group(1)) for line in documents] == list(range(step, N_DOCS + 1, step))
    assert documents[0].startswith(f"progress: documents embedded {step}/{N_DOCS} (10 %), ")
    assert re.fullmatch(rf"progress: documents embedded {N_DOCS}/{N_DOCS} \(100 %\), [0-9.]+/(s|min)", documents[-1])
    assert f"progress: files read {N_DOCS}/{N_DOCS} (100 %), " in done.stderr  # its total known once all were read
    chunks = [line for line in lines if line.startswith("progress: chunks embedded ")]
    assert chunks and re.match(r"progress: chunks embedded (\d+)/\1 \(100 %\)", chunks[-1])


@pytest.mark.parametrize("args", [
    ("index", "{corpus}", "--index", "{tmp}/idx", "--factory", "NoSuchFactory"),  # fails inside the flow
    ("ask", "what is it?", "--index", "{tmp}/idx", "--lm", "no-such-lm"),
    ("pipeline", "--lm", "no-such-lm", "--limit", "2"),
])
def test_a_bad_factory_or_lm_is_one_stderr_line(prefect_harness, corpus: Path, tmp_path: Path, args) -> None:
    args = [a.format(corpus=corpus, tmp=tmp_path) for a in args]
    done = run_cli(tmp_path, *args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert ("NoSuchFactory" if "--factory" in args else "no-such-lm") in done.stderr


def test_verbose_shows_the_traceback_and_prefect_log_of_a_failed_flow(prefect_harness, corpus: Path, tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--verbose", "index", str(corpus), "--index", str(tmp_path / "idx"), "--factory", "NoSuchFactory")
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "Encountered exception during execution" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: FAISS cannot build factory 'NoSuchFactory'")


def test_an_unexpected_error_is_one_line_with_exit_code_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import cli_checks

    app = typer.Typer()

    @app.command()
    def broken() -> None:
        with cli_checks.user_errors():
            raise RuntimeError("the disk\nwas eaten")

    @app.command()
    def bad() -> None:
        with cli_checks.user_errors():
            raise ValueError("bad value; give a good one")

    monkeypatch.setattr(cli_checks, "VERBOSE", False)
    result = CliRunner().invoke(app, ["broken"])
    assert result.exit_code == 1
    assert result.output == "error: RuntimeError: the disk was eaten (run with --verbose for the traceback)\n"
    result = CliRunner().invoke(app, ["bad"])
    assert (result.exit_code, result.output) == (2, "error: bad value; give a good one\n")
    monkeypatch.setattr(cli_checks, "VERBOSE", True)
    result = CliRunner().invoke(app, ["broken"])
    assert result.exit_code == 1
    assert "Traceback" in result.output and result.output.endswith("error: RuntimeError: the disk was eaten\n")


def test_counters_without_a_display_do_nothing_and_plain_lines_follow_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from flows import progress

    silent = progress.counter("files read", 3)
    silent(2)
    assert silent.done == 0  # nothing shown, nothing counted
    out = io.StringIO()
    with progress.live_progress(out):
        documents = progress.counter("documents", 20)
        for _ in range(20):
            documents(1)
        progress.counter("files")(5)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"progress: documents {n}/20 ({5 * n} %)" for n in range(2, 21, 2)] + \
        ["progress: files 5"]
    assert progress.counter("documents").board is None  # the display ended with the block

    monkeypatch.setenv(progress.PERIOD_ENV, "0")  # a period of 0: a line at every update
    out = io.StringIO()
    with progress.live_progress(out):
        for _ in range(3):
            progress.counter("questions answered", 50)(1)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == \
        [f"progress: questions answered {n}/50 ({2 * n} %)" for n in (1, 2, 3)]

    monkeypatch.delenv(progress.PERIOD_ENV)
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress.live_progress(out):
        progress.counter("files read")(4)
        raise RuntimeError("failed")
    assert out.getvalue() == ""  # after a failure only the command's error line speaks


def test_a_line_shows_share_rate_from_the_first_update_and_eta() -> None:
    from flows import progress

    count = progress.Counter(None, "questions answered", 30)
    count.first, count.done = (100.0, 2), 12
    count.last = 105.0  # 10 more in the 5 s after the first update
    assert count.line() == "questions answered 12/30 (40 %), 2.0/s, ETA 0:09"
    count.last = 100.0 + 10 * 3600 / 5
    assert count.line() == "questions answered 12/30 (40 %), 5.0/h, ETA 3:36:00"
    count.first = (100.0, 12)  # one update so far: no rate yet
    assert count.line() == "questions answered 12/30 (40 %)"
    assert [progress.rate_text(r) for r in (12.34, 0.05, 0.01)] == ["12.3/s", "3.0/min", "36.0/h"]
