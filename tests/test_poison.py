"""The poisoning probe on small cases: random passages almost never reach the top k, query stuffing
does, the gradient attack raises its objective on a tiny random BERT, and the user's index is only
ever copied."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from support import POISON_SMALL as SMALL
from support import BagOfWordsEncoder, poison_dataset

from eval.base import EvalConfig
from eval.poison.probe import PoisonConfig, load_poison_config, run_probe
from eval.poison.search import clean_index


def probe(tmp_path: Path, attacks: tuple[str, ...], index_dir: Path | None = None, encoder=None):
    from retrieval.tokenizer import load_tokenizer

    counter = load_tokenizer()
    config = PoisonConfig(attacks=attacks, **SMALL)
    return run_probe(config, poison_dataset(), encoder or BagOfWordsEncoder(), counter, counter.backend.get_vocab(),
                     index_dir=index_dir, cache=tmp_path / "cache")


def success(report, attack: str) -> list[float]:
    return [cell.success for cell in report.success if cell.attack == attack and cell.defence == "none"]


@pytest.mark.slow
@pytest.mark.real_model
def test_random_passages_rarely_reach_the_top_k_while_query_stuffing_does(tmp_path):
    from retrieval.encoder import load_encoder

    # The real embedding model: hashed bag-of-words vectors collide, so random words would look related.
    report = probe(tmp_path, ("random", "query-stuffing"), encoder=load_encoder())
    assert {topic.topic_id for topic in report.topics} == {0, 1}
    assert sum(len(t.targets) for t in report.topics) >= 6
    random_rates, stuffing_rates = success(report, "random"), success(report, "query-stuffing")
    assert len(random_rates) == 3 * 2 * 2  # modes x n x k
    assert max(random_rates) <= 0.1
    assert np.mean(stuffing_rates) >= 0.5


def file_digests(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_planted_passages_never_reach_the_users_index_files(tmp_path):
    config = PoisonConfig(**SMALL)
    user_index = clean_index(poison_dataset().corpora, config.chunking, BagOfWordsEncoder(), tmp_path / "user")
    before = file_digests(user_index)
    report = probe(tmp_path, ("query-stuffing",), index_dir=user_index)
    assert max(success(report, "query-stuffing")) > 0.5  # the passages were planted, in a copy
    assert file_digests(user_index) == before
    from retrieval.index_store import IndexStore

    assert not any(doc.startswith("planted/") for doc in IndexStore.open(user_index).documents)


def test_the_clean_index_is_built_once_per_content(tmp_path):
    encoder, chunking = BagOfWordsEncoder(), EvalConfig(chunker="recursive", chunk_size=16, overlap=0)
    corpora = poison_dataset().corpora
    first = clean_index(corpora, chunking, encoder, tmp_path)
    encoded = encoder.encoded
    assert clean_index(corpora, chunking, encoder, tmp_path) == first and encoder.encoded == encoded
    assert clean_index({**corpora, "animals": corpora["animals"] + " Bees make honey."}, chunking, encoder, tmp_path) != first


@pytest.mark.parametrize("defence", ["query-log", "query-copy"])
def test_each_defence_flags_stuffed_passages_and_no_clean_recall_is_lost(tmp_path, defence):
    report = probe(tmp_path, ("query-stuffing",))
    undefended = [c.success for c in report.success if c.defence == "none"]
    defended = [c.success for c in report.success if c.defence == defence]
    assert len(defended) == len(undefended) == 3 * 2 * 2
    assert np.mean(defended) <= 0.5 * np.mean(undefended)
    clean = {(c.mode, c.k, c.defence): c.recall for c in report.clean if c.attack is None}
    assert all(clean[(mode, k, defence)] >= clean[(mode, k, "none")] - 1.0 for mode, k, _ in clean)


def test_query_copy_counts_queries_copied_word_for_word():
    from eval.poison.defence_copy import QueryCopyDefence

    defence = QueryCopyDefence(["What is the capital of France?", "Who wrote Hamlet?", "How do rockets fly?"])
    assert defence.copied("Who wrote Hamlet? What is the capital of France? And more.") == 2
    assert defence.copied("Hamlet was written by Shakespeare; Paris is the capital of France.") == 0
    texts = ["Who wrote Hamlet? How do rockets fly?", "Rockets fly by pushing gas out."]
    assert defence.flagged([0, 1], texts, np.zeros((2, 4))).tolist() == [True, False]


def test_query_log_flags_a_new_document_it_would_not_flag_once_indexed():
    from eval.poison.defence import QueryLogDefence

    # Two documents of near-identical neighbouring chunks; the log sits between them.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 16))
    vectors = np.concatenate([base[0] + 0.05 * rng.normal(size=(5, 16)), base[1] + 0.05 * rng.normal(size=(5, 16))])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    log = (base[0] + base[1])[None, :] / np.linalg.norm(base[0] + base[1])
    docs = ["a"] * 5 + ["b"] * 5
    defence = QueryLogDefence.calibrate(log, list(range(10)), vectors, top=2, quantile=1.0, doc_ids=docs)
    assert not defence.flagged(list(range(10)), [""] * 10, vectors).any()
    assert defence.flagged_as_new(docs, list(range(10)), [""] * 10, vectors).all()


def tiny_bert(seed: int = 0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)


def mean_pooled(model, ids: list[int]) -> np.ndarray:
    """The reference embedding: a plain forward of [CLS] ids [SEP], mean-pooled and normalised."""
    import torch

    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([[1, *ids, 2]])).last_hidden_state[0].mean(dim=0)
    vector = hidden.numpy()
    return vector / np.linalg.norm(vector)


def test_hotflip_raises_its_objective_on_a_tiny_random_bert():
    from eval.poison.attack_hotflip import hotflip

    model = tiny_bert()
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(4, 32)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    start = [int(i) for i in rng.integers(5, 120, size=12)]
    result = hotflip(model, start, targets, range(5, 120), steps=8, candidates=16, top=8, cls_id=1, sep_id=2, seed=0,
                     accepted=3)
    trace = np.array(result.objective)
    assert np.all(np.diff(trace) >= 0) and trace[-1] > trace[0] + 0.05
    centre = targets.mean(axis=0)
    assert float(mean_pooled(model, start) @ centre) == pytest.approx(trace[0], abs=1e-5)
    assert float(mean_pooled(model, list(result.token_ids)) @ centre) == pytest.approx(trace[-1], abs=1e-5)
    assert len(result.states) >= 4 and len(set(result.states)) == len(result.states)
    assert all(sum(a != b for a, b in zip(x, y)) == 1 for x, y in zip(result.states, result.states[1:]))


def test_a_bad_poison_config_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "poison.yaml"
    path.write_text("topics: 2\nattackz: [random]\n")
    with pytest.raises(ValueError, match="attackz"):
        load_poison_config(path)
    path.write_text("attacks: [nonsense]\n")
    with pytest.raises(ValueError, match="attacks"):
        load_poison_config(path)
    path.write_text("n: [1, 5]\nk: [5]\n")
    assert load_poison_config(path).n == (1, 5)


def cli_app():
    import typer

    from flows.cli_eval import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: 'eval' stays a sub-command as in ragpress
    return app


def test_cli_rejects_a_bad_poison_config_before_any_work(tmp_path):
    from typer.testing import CliRunner

    config = tmp_path / "poison.yaml"
    config.write_text("length: 1000\n")
    result = CliRunner().invoke(cli_app(), ["eval", "--poison", str(config)])
    assert result.exit_code == 2 and "error: poison config" in result.output and "length" in result.output
    config.write_text("topics: 1\n")
    mixed = CliRunner().invoke(cli_app(), ["eval", "--poison", str(config), "--chunker", "token"])
    assert mixed.exit_code == 2 and "--poison takes its settings from the config file" in mixed.output


@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.real_model
def test_cli_eval_poison_prints_and_saves_the_table(prefect_harness, tmp_path, monkeypatch):
    import json

    import yaml
    from support import write_chroma_files
    from typer.testing import CliRunner

    monkeypatch.setenv("RAGPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RAGPRESS_RUNS", str(tmp_path / "runs.sqlite"))
    questions, corpora = write_chroma_files(poison_dataset(), tmp_path)
    config = tmp_path / "poison.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "n": [1, 3], "k": [2, 3], "attacks": ["random", "query-stuffing"]}))
    out = tmp_path / "poison.json"
    result = CliRunner().invoke(cli_app(), ["eval", "--poison", str(config), "--questions", str(questions),
                                            "--corpora", str(corpora), "--json", str(out), "--html", str(tmp_path / "p.html")])
    assert result.exit_code == 0, result.output
    assert "Poisoning" in result.output and "wrote" in result.output
    table = json.loads(out.read_text())["poisoning"]["table"]
    assert len(table) == 2 * 2 * 3 and {"success@2", "query-log@3", "query-copy@2"} <= set(table[0])
    from eval.run_store import RunStore

    stored = RunStore(tmp_path / "runs.sqlite").probes()
    assert "recorded as probe #1" in result.output and [p["table"] for p in stored] == [table]
    page = (tmp_path / "p.html").read_text()
    assert page.count("<tr>") == len(table) + 1 + 2 * 3 + 1 and "query-stuffing" in page


def test_the_run_store_keeps_probes_and_the_dashboard_shows_the_newest_per_dataset(tmp_path):
    from eval.dashboard import dashboard_data
    from eval.run_store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    reports = [{"dataset": name, "n_chunks": 3, "topics": [{"attack": ["1"], "targets": ["2", "3"]}], "table": [{"n": i}],
                "clean_table": [], "defence": {"query-copy": {"clean_flagged": 0, "clean_judged": 2, "flagged_as_new": 0.0}}}
               for i, name in enumerate(["a", "b", "a"])]
    ids = [store.add_probe(report) for report in reports]
    assert [p["probe_id"] for p in store.probes()] == ids[::-1] and store.probes(1)[0]["table"] == [{"n": 2}]
    shown = dashboard_data([], probes=store.probes())["probes"]
    assert [(p["dataset"], p["probe_id"], p["table"], p["targets"]) for p in shown] == [("a", ids[2], [{"n": 2}], 2),
                                                                                       ("b", ids[1], [{"n": 1}], 2)]
