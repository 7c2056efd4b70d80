"""``ragpress ask``: answer a question from an index with a local LM (reusing chunk KV caches) or an LLM server."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from compression.kv.modes import DEFAULT_BLEND_SCORE  # no heavy imports: the recovery code loads lazily
from flows import cli_llm
from flows.cli_checks import require_at_least, require_index_dir, user_errors
from flows.cli_retrieval import DISTINCT_OPTION, HYBRID_WEIGHT_OPTION, RETRIEVAL_OPTION, copies_label


def ask(
    question: str = typer.Argument(..., help="the question to answer"),
    index: Path = typer.Option(..., "--index", help="index directory built by `ragpress index`"),
    k: int = typer.Option(4, "-k", "--k", help="chunks to retrieve"),
    retrieval: str = RETRIEVAL_OPTION,
    hybrid_weight: float = HYBRID_WEIGHT_OPTION,
    distinct: bool = DISTINCT_OPTION,
    kv_reuse: str | None = typer.Option(None, "--kv-reuse", help="none (full prefill), naive, edge or blend (default: blend "
                                                                 "where the model supports reuse, else none)"),
    compression: str | None = typer.Option(None, "--compression", help="compress the contexts first (e.g. extractive)"),
    rate: float = typer.Option(0.5, "--rate", help="compression rate (kept / original tokens)"),
    blend_r: float = typer.Option(0.15, "--blend-r", help="fraction of context tokens blend recomputes"),
    blend_score: str = typer.Option(DEFAULT_BLEND_SCORE, "--blend-score",
                                    help="which tokens blend recomputes: attention (the question's, default), deviation "
                                         "(CacheBlend's layer-1 value deviation), deviation*attention"),
    edge_tokens: int = typer.Option(16, "--edge-tokens", help="first tokens of each chunk edge recomputes"),
    kv_cache: Path | None = typer.Option(None, "--kv-cache", help="chunk-cache directory (default INDEX/kv-cache)"),
    kv_cache_max_mb: float | None = typer.Option(None, "--kv-cache-max-mb",
                                                    help="afterwards, evict the least recently used chunk caches beyond this size"),
    lm: str = cli_llm.LM_OPTION,
    llm_url: str | None = cli_llm.LLM_URL_OPTION,
    llm_model: str | None = cli_llm.LLM_MODEL_OPTION,
    llm_api_key_env: str | None = cli_llm.LLM_KEY_OPTION,
    dtype: str = cli_llm.DTYPE_OPTION,
    threads: int | None = cli_llm.THREADS_OPTION,
    device: str = cli_llm.DEVICE_OPTION,
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="tokens to generate at most"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Answer QUESTION: retrieve, optionally compress, generate with reused chunk caches."""
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import Pipeline
    from retrieval.config import BEST_RETRIEVAL

    # Every setting goes through the pipeline's config, and the generator is asked whether it can serve
    # it (a model that cannot reuse chunk caches, an LLM option), before the flow and any model start.
    with user_errors():
        retrieval_settings = {**BEST_RETRIEVAL.to_dict(), "k": k, "retrieval": retrieval, "hybrid_weight": hybrid_weight, "distinct": distinct}
        # Without --kv-reuse the values are checked as blend's first: which mode the model allows is read after.
        config = PipelineConfig.from_dict({**retrieval_settings, "compression": compression or "none", "rate": rate,
                                           "kv_mode": kv_reuse or "blend", "blend_r": blend_r, "edge_tokens": edge_tokens,
                                           "blend_score": blend_score, "max_new_tokens": max_new_tokens})
        llm = cli_llm.llm_options(lm, llm_url, llm_model, llm_api_key_env, dtype, threads, device)
        if kv_reuse is None and not cli_llm.reuse_available(llm):
            config = config.replace(kv_mode="none")
        Pipeline(config, llm=llm).preflight()
    require_at_least("--kv-cache-max-mb", kv_cache_max_mb, 0, "500")
    require_index_dir(index, must_exist=True)
    from flows.answer import answer_flow

    with user_errors():
        result = answer_flow(question=question, index=str(index), config=config.to_dict(), cache_dir=str(kv_cache) if kv_cache else None,
                             llm=llm, kv_cache_max_mb=kv_cache_max_mb)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    _print(result)


def _print(result: dict) -> None:
    typer.echo(result["answer"] or "(empty answer)")
    typer.echo("")
    for number, hit in enumerate(result["contexts"], 1):
        preview = hit["text"][:70].replace("\n", " ")
        typer.echo(f"[{number}] {hit['source']} [{hit['start']}:{hit['end']}] score {hit['score']:.3f}  {preview}")
        if hit["copies"]:
            typer.echo(f"    same text also at {copies_label(hit['copies'])}")
    sent = "unknown (no usage reported)" if result["tokens_sent"] is None else result["tokens_sent"]
    typer.echo(f"\nkv-reuse {result['kv_reuse']}: time to first token {result['ttft_s'] * 1000:.0f} ms; "
               f"prompt tokens {sent}, of them reused from chunk caches {result['reused_tokens']}"
               + (f"; {result['chunk_caches_computed']} chunk caches computed first" if result["chunk_caches_computed"] else ""))
    pruned = result.get("kv_cache_pruned")
    if pruned:
        typer.echo(f"chunk-cache: {pruned['kept']} kept ({pruned['kept_bytes'] / 1e6:.1f} MB), "
                   f"{pruned['removed']} least recently used removed ({pruned['freed_bytes'] / 1e6:.1f} MB)")


def register(app: typer.Typer) -> None:
    """Add ``ask`` to the CLI."""
    app.command("ask")(ask)
