"""The CLI's boundary checks: every bad input or environment fault becomes one line, exit code 2.

``fail`` prints ``error: <problem>; <fix>`` and exits 2. ``require`` checks an option before any
heavy work starts. ``user_errors`` turns the library's input errors and the file-system faults a
user can fix (full disk, permissions, a file where a folder belongs) into that one line, so no
command shows a traceback for them; any other error ends the command with one line too, exit 1.
Tracebacks (and Prefect's console log of failed runs) appear only with the global ``--verbose``.
Commands share these instead of each checking on its own.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click
import typer
from pydantic import ValidationError

from retrieval.config import validation_line

# What the user can do about a file-system fault, by errno.
OS_FIXES = {
    errno.ENOSPC: "free disk space (or use a directory on another disk) and retry; nothing stored was changed",
    errno.EDQUOT: "free space within your disk quota and retry; nothing stored was changed",
    errno.EACCES: "check the owner and permissions (ls -l), or use a path you own",
    errno.EPERM: "check the owner and permissions (ls -l), or use a path you own",
    errno.EROFS: "the file system is read-only; use a writable directory",
    errno.ENOTDIR: "a file stands where a directory is needed; give a directory path",
    errno.EISDIR: "a directory stands where a file is needed; give a file path",
}


# Set by the global --verbose option (flows/cli.py).
VERBOSE = False
PREFECT_CONSOLE_ENV = ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "PREFECT_LOGGING_LEVEL")


def set_verbose(verbose: bool) -> None:
    """``--verbose``: Prefect's console log (with the traceback of a failed run) and a traceback with every
    error line. Otherwise a failed run is the command's one ``error:`` line; run logs still reach Prefect's API."""
    global VERBOSE
    VERBOSE = verbose
    console_level, log_level = ("INFO", "INFO") if verbose else ("CRITICAL", os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"))
    os.environ.update(dict(zip(PREFECT_CONSOLE_ENV, (console_level, log_level))))  # read when Prefect is first imported
    if "prefect.logging.handlers" in sys.modules:  # already imported (in-process callers): set its console handlers
        from prefect.logging.handlers import PrefectConsoleHandler

        for name in ("", "uvicorn", "fastapi"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, PrefectConsoleHandler):
                    handler.setLevel(console_level)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` (one line) to stderr and exit with ``code`` (2: bad input or environment)."""
    typer.secho(f"error: {' '.join(str(message).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def require(ok: bool, message: str) -> None:
    """``fail(message)`` unless ``ok``: for option checks before any work starts."""
    if not ok:
        fail(message)


def require_at_least(option: str, value: float | None, minimum: float, example: str) -> None:
    """``option`` (when given) must be >= ``minimum``; the message shows a valid ``example``."""
    require(value is None or value >= minimum, f"{option} must be >= {minimum:g}, got {value}; e.g. {option} {example}")


def require_rate(option: str, value: float | None) -> None:
    """``option`` (when given) must be a share in (0, 1]."""
    require(value is None or 0.0 < value <= 1.0, f"{option} must be in (0, 1], got {value}; e.g. {option} 0.33")


def require_index_dir(path: Path, *, must_exist: bool = False) -> None:
    """``--index`` must be a directory (created on first use), never a regular file."""
    require(not path.exists() or path.is_dir(),
            f"--index {path} is a file, not a directory; give a directory path (it is created if missing)")
    if must_exist:
        from retrieval.index_store import IndexStore

        require(IndexStore.exists(path), f"{path} holds no index; build one with: ragpress index PATH --index {path}")


def os_error_line(exc: OSError) -> str:
    """``<file>: <what happened>; <what to do>`` for a file-system fault."""
    where = exc.filename or "a file"
    fix = OS_FIXES.get(exc.errno or 0, "check the path and the disk, then retry")
    return f"{where}: {exc.strerror or exc}; {fix}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Library errors that mean bad input, a bad index, a missing model or a failing LLM server."""
    from compression.lm import ModelUnavailable
    from generation.base import GenerationError
    from retrieval.errors import IndexStoreError, InputError
    from retrieval.models import EmbeddingModelUnavailable

    return (InputError, IndexStoreError, EmbeddingModelUnavailable, ModelUnavailable, GenerationError, ValueError)


def _traceback_if_verbose() -> None:
    if VERBOSE:
        traceback.print_exc(file=sys.stderr)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command's work; expected errors and file-system faults end it with one line, exit 2;
    any other error with one line naming it, exit 1 (its traceback with ``--verbose``)."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # the command already said what went wrong
    except OSError as exc:
        _traceback_if_verbose()
        fail(os_error_line(exc))
    except ValidationError as exc:  # a config model built directly; from_dict already gives one line
        fail(validation_line(exc))
    except UnicodeDecodeError as exc:  # a ValueError, but its text names neither file nor fix
        _traceback_if_verbose()
        fail(f"input is not valid UTF-8 (byte offset {exc.start}: {exc.reason}); re-encode it as UTF-8")
    except _expected_errors() as exc:
        _traceback_if_verbose()
        fail(str(exc))
    except Exception as exc:
        _traceback_if_verbose()
        fail(f"{type(exc).__name__}: {exc}" + ("" if VERBOSE else " (run with --verbose for the traceback)"), code=1)
