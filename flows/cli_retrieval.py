"""CLI commands of the retrieval stage: chunk, index, query, demo."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import typer

from flows.cli_checks import fail, require, require_at_least, require_index_dir, user_errors
from retrieval.config import BEST_RETRIEVAL, RetrievalConfig

CHUNKER_HELP = "chunker: token, recursive or sentence"


def chunk(
    file: Path = typer.Argument(..., help="a UTF-8 text file"),
    chunker: str = typer.Option(BEST_RETRIEVAL.chunker, "--chunker", help=CHUNKER_HELP),
    chunk_size: int = typer.Option(BEST_RETRIEVAL.chunk_size, "--chunk-size", help="tokens per chunk (embedding tokenizer)"),
    overlap: int = typer.Option(BEST_RETRIEVAL.overlap, "--overlap", help="tokens shared by neighbouring chunks"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of {start, end, n_tokens}"),
) -> None:
    """Chunk FILE and print the chunks' exact character spans."""
    from retrieval.chunkers import chunks_to_json, make_chunker
    from retrieval.documents import load_document
    from retrieval.errors import InputError

    try:
        document = load_document(file)
        chunks = make_chunker(chunker, chunk_size=chunk_size, overlap=overlap).chunk(document.text)
    except (InputError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        json.dump(chunks_to_json(chunks), sys.stdout)
        sys.stdout.write("\n")
        return
    for number, piece in enumerate(chunks):
        preview = piece.text[:60].replace("\n", " ")
        typer.echo(f"{number:5d} [{piece.start}:{piece.end}] {piece.n_tokens:4d} tok  {preview}")


def check_chunking(chunker: str, chunk_size: int, overlap: int, context_chunks: int) -> RetrievalConfig:
    """The chunking options every command shares, validated (``retrieval.config``) before any work starts."""
    with user_errors():
        return BEST_RETRIEVAL.replace(chunker=chunker, chunk_size=chunk_size, overlap=overlap, context_chunks=context_chunks)


def rollback(index_dir: Path) -> None:
    """Make the newest intact version other than the current one current again."""
    from retrieval.index_store import IndexStore, current_version

    require_index_dir(index_dir, must_exist=True)
    with user_errors():
        before = current_version(index_dir)
        after = IndexStore.rollback(index_dir)
    typer.echo(f"index {index_dir}: rolled back from v{before} to v{after}")


def index(
    paths: list[Path] = typer.Argument(None, help="files or folders of UTF-8 text"),
    index_dir: Path = typer.Option(..., "--index", help="index directory (created if missing)"),
    chunker: str = typer.Option(BEST_RETRIEVAL.chunker, "--chunker", help=CHUNKER_HELP),
    chunk_size: int = typer.Option(BEST_RETRIEVAL.chunk_size, "--chunk-size", help="tokens per chunk"),
    overlap: int = typer.Option(BEST_RETRIEVAL.overlap, "--overlap", help="tokens shared by neighbouring chunks"),
    context_chunks: int = typer.Option(BEST_RETRIEVAL.context_chunks, "--context-chunks",
                                       help="mix this many neighbouring chunks on each side into a chunk's vector"),
    model: str | None = typer.Option(None, "--model", help="sentence-transformers dir or cached name"),
    factory: str = typer.Option("Flat", "--factory", help="FAISS index factory: Flat, HNSW32, IVF64,Flat, IVF64,PQ16 ..."),
    commit_every: int = typer.Option(64, "--commit-every", help="documents per atomic commit"),
    rebuild: bool = typer.Option(False, "--rebuild", help="replace the index instead of updating it"),
    kv_cache: Path | None = typer.Option(None, "--kv-cache", help="also precompute every chunk's LM KV cache into this dir (for `ragpress ask`)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    rollback_index: bool = typer.Option(False, "--rollback", help="instead of indexing, make the last intact earlier version current"),
) -> None:
    """Index (incrementally) the text files under PATHS into --index (or --rollback a bad version)."""
    if rollback_index:
        require(not paths, "--rollback takes no PATHS; run: ragpress index --rollback --index DIR")
        return rollback(index_dir)
    require(bool(paths), "give the files or folders to index, e.g. ragpress index docs --index .ragpress/index")
    require_index_dir(index_dir)
    settings = check_chunking(chunker, chunk_size, overlap, context_chunks)
    require_at_least("--commit-every", commit_every, 1, "64")
    from flows.indexing import index_flow
    from flows.progress import live_progress

    with user_errors(), live_progress():
        summary = index_flow([str(p) for p in paths], str(index_dir), settings.chunker, settings.chunk_size, settings.overlap, model,
                             factory, commit_every, rebuild, settings.context_chunks, str(kv_cache) if kv_cache else None)
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps(asdict(summary), indent=2))
        return
    typer.echo(
        f"index {summary.index_dir} v{summary.version}: +{summary.added} new, {summary.updated} changed, "
        f"-{summary.deleted} deleted, {summary.relocated} moved, {summary.unchanged} unchanged docs; {summary.chunks_total} chunks "
        f"({summary.chunks_added} embedded) in {summary.timings['total']:.1f}s"
    )
    for skipped in summary.skipped:
        typer.secho(f"skipped {skipped.path}: {skipped.reason}", fg=typer.colors.YELLOW, err=True)
    if summary.skipped:
        typer.secho(f"{len(summary.skipped)} files skipped (reasons above)", fg=typer.colors.YELLOW, err=True)


# Retrieval options shared by `query` and `ask` (defaults: the evaluated BEST_RETRIEVAL).
RETRIEVAL_OPTION = typer.Option(BEST_RETRIEVAL.retrieval, "--retrieval", help="dense (FAISS), bm25 or hybrid (dense + BM25)")
HYBRID_WEIGHT_OPTION = typer.Option(BEST_RETRIEVAL.hybrid_weight, "--hybrid-weight", help="weight of dense scores in hybrid retrieval")
DISTINCT_OPTION = typer.Option(BEST_RETRIEVAL.distinct, "--distinct/--with-copies",
                               help="k different texts (identical ones listed as copies of the best-ranked) or the plain top k")


def copies_label(copies) -> str:
    """``a.txt [10:20], b.txt [0:10]``: where else a hit's exact text was found."""
    return ", ".join(f"{source} [{start}:{end}]" for source, start, end in copies)


def query(
    text: str = typer.Argument(..., help="the question"),
    index_dir: Path = typer.Option(..., "--index", help="an index made by `ragpress index`"),
    k: int = typer.Option(5, "-k", help="number of chunks to return"),
    model: str | None = typer.Option(None, "--model", help="must be the model the index was built with"),
    retrieval: str = RETRIEVAL_OPTION,
    hybrid_weight: float = HYBRID_WEIGHT_OPTION,
    compress: str | None = typer.Option(None, "--compress", help="compress the hits: extractive, llmlingua, ..."),
    rate: float | None = typer.Option(None, "--rate", help="compression rate with --compress (default 0.33)"),
    distinct: bool = DISTINCT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print hits as JSON"),
) -> None:
    """Return the top-k chunks of --index for TEXT, with their exact source spans."""
    from compression.config import DEFAULT_RATE, CompressionConfig

    require(rate is None or compress is not None, "--rate applies only with --compress; add e.g. --compress extractive, or drop --rate")
    with user_errors():
        settings = BEST_RETRIEVAL.replace(k=k, retrieval=retrieval, hybrid_weight=hybrid_weight, distinct=distinct)
        compression = CompressionConfig.from_dict({"compression": compress or "none", "rate": DEFAULT_RATE if rate is None else rate})
    require_index_dir(index_dir, must_exist=True)
    from flows.query import query_flow

    with user_errors():
        method = None if compression.method == "none" else compression.method  # --compress none: the hits as they are
        (answered,) = query_flow([text], str(index_dir), settings.fixed_k, model, method, compression.rate,
                                 settings.search_weight, settings.distinct)
    if as_json:
        payload = {"question": text, "hits": [asdict(h) for h in answered.hits], "seconds": answered.seconds}
        if answered.compressed is not None:
            payload["compressed"] = {"text": answered.compressed.text, "rate": answered.compressed.rate,
                                     "kept_spans": [[s.context, s.start, s.end] for s in answered.compressed.kept]}
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    print_hits(answered)


def print_hits(answered) -> None:
    """A question's hits, one line each, with the places their text was also found."""
    typer.secho(f"? {answered.question}   ({answered.seconds['search'] * 1000:.0f} ms)", bold=True)
    for rank, hit in enumerate(answered.hits, 1):
        preview = " ".join(hit.text.split())[:110]
        typer.echo(f"  {rank}. {hit.score:.3f} {hit.source} [{hit.start}:{hit.end}]  {preview}")
        if hit.copies:
            typer.echo(f"     same text also at {copies_label(hit.copies)}")
    if answered.compressed is not None:
        typer.echo(f"  compressed ({answered.compressed.method}, rate {answered.compressed.rate:.2f}): "
                   f"{' '.join(answered.compressed.text.split())[:200]}")


def demo(
    workdir: Path = typer.Option(Path(".ragpress/demo"), "--workdir", help="where the corpus, index and report go"),
    k: int = typer.Option(5, "-k", help="hits per question"),
) -> None:
    """Index Python's help topics, query, evaluate retrieval, run the answer pipeline, write the reports."""
    with user_errors():
        k = BEST_RETRIEVAL.replace(k=k).fixed_k  # refused before the demo starts
    from flows.demo import demo_flow
    from flows.progress import live_progress

    typer.echo("ragpress demo: indexing Python's help topics (pydoc_data.topics) ...")
    with user_errors(), live_progress():
        result = demo_flow(str(workdir), k)
    summary = result.index
    typer.echo(f"indexed {summary.added + summary.updated + summary.relocated + summary.unchanged} topics into {summary.chunks_total} chunks "
               f"({summary.chunks_added} embedded now) in {summary.timings['total']:.1f}s\n")
    for answered in result.answers:
        print_hits(answered)
    overall = result.evaluation.overall
    typer.echo(f"\nevaluation on {overall.n_questions} pydoc questions ({result.evaluation.config.label}): "
               f"recall {overall.recall:.1f}  precision {overall.precision:.1f}  "
               f"PΩ {overall.precision_omega:.1f}  IoU {overall.iou:.1f}")
    best = result.pipeline.results[result.pipeline.recommended]
    s = best.summary
    typer.echo(f"pipeline on {s.n_questions} of them ({best.config.label}): reference recall sent to the LM "
               f"{s.compression.recall:.1f}, {s.compression.mean_retrieved_tokens:.0f} context tokens ({s.reused_tokens:.0f} reused from chunk caches), "
               f"TTFT median {s.ttft_median_s:.2f}s, answer F1 {s.answer_f1:.1f}")
    for run in best.questions[:2]:
        typer.echo(f"  answer: {run.answer[:160]}")
    typer.echo(f"index:     {summary.index_dir}")
    typer.echo(f"results:   {result.report_json} (retrieval), {result.pipeline.json} (pipeline)")
    typer.echo(f"total {result.seconds:.1f}s")
    typer.echo(f"dashboard: {Path(result.report_html).resolve().as_uri()}  (every recorded run, served: ragpress dashboard)")


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``chunk``, ``index`` and ``query`` to the CLI."""
    app.command("demo")(demo)
    app.command("chunk")(chunk)
    app.command("index")(index)
    app.command("query")(query)
