"""The indexing flow's embedding map on a real two-process Dask cluster equals the in-process index."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("prefect_dask")


def _corpus(folder: Path) -> None:
    """Fresh text (a unique token) so no cached embedding from an earlier run is re-used."""
    tag = uuid.uuid4().hex
    folder.mkdir()
    topics = ["FAISS builds inverted file indexes over dense vectors.", "Prefect schedules flows on a cron.",
              "Dask spreads tasks over worker processes.", "LangChain retrievers return documents.",
              "Compression keeps the sentences that answer the question."]
    for number, topic in enumerate(topics):
        (folder / f"doc{number}.txt").write_text(f"{tag} document {number}. " + (topic + " ") * (8 + 3 * number))


def test_bad_address_is_a_clear_error() -> None:
    from flows.dask_runner import dask_task_runner

    with pytest.raises(ValueError, match="tcp://127.0.0.1:8786"):
        dask_task_runner("localhost")


@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.real_model
def test_dask_index_equals_in_process_index(tmp_path: Path, prefect_harness) -> None:
    from distributed import Client, LocalCluster

    from flows.dask_runner import index_on_dask
    from retrieval.chunkers import make_chunker
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore
    from retrieval.indexing import index_config, index_paths

    _corpus(tmp_path / "corpus")
    # the trusted reference: the library's in-process indexing, same chunker and neighbour context
    reference = index_paths([tmp_path / "corpus"], tmp_path / "in-process", make_chunker("token", chunk_size=24),
                            load_encoder(), commit_every=2, context_chunks=1,
                            chunker_config=index_config(make_chunker("token", chunk_size=24), 1))
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = index_on_dask([str(tmp_path / "corpus")], str(tmp_path / "dask"), cluster.scheduler_address,
                                chunker="token", chunk_size=24, overlap=0, commit_every=2, context_chunks=1)
        # the vectors were computed on the workers: each one that ran an embed task loaded the model
        loaded = client.run(lambda: __import__("retrieval.encoder").encoder._load.cache_info().currsize)
    assert sum(loaded.values()) >= 1, loaded
    assert summary.chunks_total == reference.chunks_total and summary.commits == reference.commits == 3

    ours, theirs = IndexStore.open(tmp_path / "dask"), IndexStore.open(tmp_path / "in-process")
    key = lambda c: (c.doc_id, c.start, c.end, c.text, c.n_tokens)  # noqa: E731
    assert ours.chunker_config == theirs.chunker_config
    assert [key(c) for c in ours.chunks()] == [key(c) for c in theirs.chunks()]
    assert {d: r.content_hash for d, r in ours.documents.items()} == {d: r.content_hash for d, r in theirs.documents.items()}
    np.testing.assert_allclose(ours.vectors_of([c.id for c in ours.chunks()]),
                               theirs.vectors_of([c.id for c in theirs.chunks()]), atol=1e-5)
    query = load_encoder().encode(["which tool spreads tasks over workers?"])
    assert [h.text for h in ours.search(query, 3)[0]] == [h.text for h in theirs.search(query, 3)[0]]


def test_ivf_shard_recipe_in_the_docs_runs_as_written() -> None:
    """docs/deploy.md's train-once / add-on-workers / merge recipe, executed verbatim (it asserts
    the merged index answers exactly like one built in a single place)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    block = text.split("<!-- ivf-shard-recipe -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "docs/deploy.md", "exec"), namespace)
    assert namespace["merged"].ntotal == 4000 and len(namespace["shards"]) == 3
