"""The generator options shared by ``ragpress ask`` and ``ragpress pipeline``, and their checks.

A local LM (``--lm``: the packaged SmolLM2, a Hugging Face causal-LM folder or a .gguf file, with
``--dtype``, ``--threads``, ``--device``) or an OpenAI-compatible endpoint (``--llm-url`` with
``--llm-model`` and optionally ``--llm-api-key-env``). Everything here is checked before any model
loads; the result is a dict of JSON values that flows pass as a parameter
(``generation.registry.generator_from_options``).
"""

from __future__ import annotations

import typer

from compression.lm import DEFAULT_LM

LM_OPTION = typer.Option(DEFAULT_LM, "--lm", help="'smollm2', a local Hugging Face causal-LM folder or a .gguf file")
LLM_URL_OPTION = typer.Option(None, "--llm-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (instead of --lm)")
LLM_MODEL_OPTION = typer.Option(None, "--llm-model", help="the model name the --llm-url server serves")
LLM_KEY_OPTION = typer.Option(None, "--llm-api-key-env", help="environment variable holding the --llm-url API key")
DTYPE_OPTION = typer.Option("auto", "--dtype", help="local LM weights: auto (bfloat16 from 0.5B parameters, else float32), "
                                                     "float32, bfloat16 or float16")
THREADS_OPTION = typer.Option(None, "--threads", help="torch threads for the local LM (default: torch's own choice)")
DEVICE_OPTION = typer.Option("cpu", "--device", help="local LM device: cpu, cuda[:N] or mps")


def llm_options(lm: str, url: str | None, model: str | None, api_key_env: str | None, dtype: str, threads: int | None,
                device: str) -> dict:
    """The generator options of the CLI flags; ValueError (one line, naming the fix) for a bad combination."""
    from compression.lm import DTYPES

    if url is None:
        if model or api_key_env:
            raise ValueError("--llm-model and --llm-api-key-env go with --llm-url; for a local model use --lm PATH")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"unknown --dtype '{dtype}'; valid: auto, {', '.join(DTYPES)}")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        return {"backend": "local", "model": lm, "dtype": dtype, "device": device, "threads": threads}
    if lm != DEFAULT_LM:
        raise ValueError("pass --lm (a local model) or --llm-url (a server), not both")
    if not model:
        raise ValueError("--llm-url needs --llm-model NAME (the model name the server serves)")
    return {"backend": "openai", "url": url, "model": model, "api_key_env": api_key_env}


def reuse_available(llm: dict) -> bool:
    """Whether chunk-cache reuse can serve these options (decides the default ``--kv-reuse``); reads only the config."""
    from generation.local import model_config, reuse_refusal

    if llm["backend"] != "local" or llm.get("device", "cpu") != "cpu":
        return False
    return reuse_refusal(model_config(llm["model"]), llm["model"]) is None
