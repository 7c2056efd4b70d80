"""Run the ephemeral Prefect server so that it ends with the command that started it.

Prefect starts its ephemeral API server as ``python -m uvicorn ...`` and stops it at exit, but
a command killed with SIGKILL never reaches its exit handlers, and the server (~250 MB) lived on.
``guard_ephemeral_server()`` makes Prefect start it as ``python -m flows.server_guard uvicorn
...`` instead: the same server, plus a thread that watches the parent process and, once it is
gone (the server is re-parented), shuts the server down with SIGTERM (and exits hard if that
hangs). A watcher thread rather than PR_SET_PDEATHSIG, which fires when the *thread* that
started the server ends, and Prefect starts it from whichever thread first needs the API.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from typing import Any

POLL_SECONDS = 0.5
GRACE_SECONDS = 15.0


class _GuardedSubprocess:
    """The ``subprocess`` module, except that a ``python -m uvicorn`` Popen runs under the guard."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Any, *rest: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - stands in for subprocess.Popen
        if isinstance(args, list) and args[1:3] == ["-m", "uvicorn"]:
            args = [args[0], "-m", "flows.server_guard", *args[3:]]
        return subprocess.Popen(args, *rest, **kwargs)


SERVER_MODULE = "prefect.server.api.server"


def _guard(module: Any) -> None:
    if not isinstance(module.subprocess, _GuardedSubprocess):
        module.subprocess = _GuardedSubprocess()


class _GuardOnImport(importlib.abc.MetaPathFinder):
    """Guards Prefect's server module when it is first imported (importing it eagerly costs seconds)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            loader, execute = spec.loader, spec.loader.exec_module

            def exec_and_guard(module: Any) -> None:
                execute(module)
                _guard(module)

            loader.exec_module = exec_and_guard  # type: ignore[method-assign]
        return spec


def guard_ephemeral_server() -> None:
    """Make every ephemeral Prefect server this process starts end when this process ends."""
    if SERVER_MODULE in sys.modules:
        _guard(sys.modules[SERVER_MODULE])
    elif not any(isinstance(finder, _GuardOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _GuardOnImport())


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(GRACE_SECONDS)
    os._exit(1)


def main() -> None:
    """``python -m flows.server_guard ARGS``: ``python -m uvicorn ARGS`` that ends with its parent."""
    threading.Thread(target=_watch, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    sys.argv = ["uvicorn", *sys.argv[1:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
