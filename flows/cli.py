"""The ``ragpress`` command line. Each command group lives in its own ``flows/cli_*.py``
module and adds itself with ``register(app)``; heavy imports happen inside the commands."""

from __future__ import annotations

import importlib
import os

import typer

# Offline by default: nothing may download from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # model-loading bars are noise in a CLI
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# FAISS's OpenMP threads spin while waiting; on a small shared machine that starves everything else.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the CLI prints its own summary; run states are in the UI
# A failed run is reported by the command as one `error:` line; Prefect's own console copy of it
# (with a traceback) would bury that line. Run logs still reach the API and the UI.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

COMMAND_MODULES = ("flows.cli_retrieval", "flows.cli_compress", "flows.cli_eval", "flows.cli_ask", "flows.cli_serve", "flows.cli_pipeline",
                   "flows.cli_runs")

# The ephemeral Prefect server a command starts must not outlive it, even under SIGKILL.
importlib.import_module("flows.server_guard").guard_ephemeral_server()

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ragpress: chunk, index, retrieve, compress and evaluate RAG context.")


@app.callback()
def global_options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's log and the traceback of an error"),
) -> None:
    """Options of every command."""
    # Set before any command imports Prefect, which reads its logging settings once.
    importlib.import_module("flows.cli_checks").set_verbose(verbose)


for module_name in COMMAND_MODULES:
    importlib.import_module(module_name).register(app)


def main() -> None:
    """Run the ``ragpress`` command line."""
    app()


if __name__ == "__main__":
    main()
