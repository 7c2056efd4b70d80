"""Dev-only (session 9): does the LM *reading* the contexts tell which sentences hold the evidence?

Sessions 3–8 scored candidate sentences against the question only (cosine, BM25, the LM's question
likelihood, ...). The remaining loss is reference sentences that never name the question's terms,
outscored by a top chunk on the same subject (``evidence_tried.md``). A reader sees what a question
scorer does not: here SmolLM2-135M-Instruct answers the question from the top-5 chunks (the answer
prompt of ``compression.kv.prompt``, 40 greedy tokens), and three signals come from that:

* ``reader_cos`` / ``reader_bm25``: each sentence's MiniLM cosine / BM25 score to the generated answer
  (the answer as a second query: it names what the reference says, not what the question asks);
* ``attn``: attention mass from the answer's tokens to each sentence's tokens (mean over heads and
  layers, summed over the sentence's tokens; ``attn_mean`` per token), the reader's own attribution;
* ``hyde_cos`` / ``hyde_bm25``: the same as the first two for an answer written *without* the contexts
  (HyDE, Gao et al. 2022: the LM's guess at the answer's wording).

Cost is ignored here (one generation and one eager attention pass per question); only a win on both
development sets would justify a budget-feasible version (the compressor already runs one LM pass
over the contexts). Judged like ``evidence_late.py``: evidence sentences alone, mean share of the found
reference characters over rates 0.25 / 0.33 / 0.4, on rows[1::6] / rows[3::6]; ``--other`` also
prints rows[5::6] and rows[2::6]+rows[4::6] (means only).

Results: session 9 of ``benchmarks/results/evidence_tried.md``.
Run: ``.venv/bin/python benchmarks/sweeps/evidence_reader.py [--other]`` (features cached in ``$TMPDIR``;
about 28 minutes for the development sets the first time, 17 for ``--other``'s two sets, answers only).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evidence_fit as fit  # noqa: E402  (sets sys.path and the offline environment)
import numpy as np  # noqa: E402

CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "ragpress_evidence_reader_features.pkl"
ANSWER_TOKENS = 40
SIGNALS = ("reader_cos", "reader_bm25", "attn", "attn_mean", "hyde_cos", "hyde_bm25")


def generate(lm, ids: list[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=ANSWER_TOKENS, do_sample=False)
    new = out[0, len(ids):].tolist()
    eos = lm.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


def answer_attention(lm, ids: list[int], answer: list[int]) -> np.ndarray:
    """Attention from the answer's tokens to every prompt token: mean over layers, heads and answer tokens."""
    import torch

    with torch.no_grad():
        out = lm.model(torch.tensor([ids + answer]), output_attentions=True)
    rows = slice(len(ids), len(ids) + len(answer))
    per_layer = [a[0, :, rows, : len(ids)].mean(dim=(0, 1)) for a in out.attentions]
    return torch.stack(per_layer).mean(dim=0).numpy()


def question_features(question: str, hits: list[dict], lm, encoder, every_signal: bool = True) -> dict:
    """The signals of one question's candidate sentences (``evidence_fit``'s pool order); with
    ``every_signal`` false only the reader's answer signals (no attention pass, no HyDE answer)."""
    from compression.kv.prompt import build_prompt, document_block
    from compression.llmlingua.relevance import semantic_scores
    from retrieval.lexical import BM25Index

    contexts = [h["text"] for h in hits]
    pool, spans, pieces = fit.sentence_pool(contexts, lm.tokenizer)

    prompt = build_prompt(lm.tokenizer, contexts, question)
    ids = list(prompt.prefix_ids) + [t for c in prompt.chunk_ids for t in c] + list(prompt.suffix_ids)
    reader = generate(lm, ids)
    attention = answer_attention(lm, ids, reader) if reader and every_signal else np.zeros(len(ids))
    attn, attn_mean = np.zeros(len(pool)), np.zeros(len(pool))
    start = len(prompt.prefix_ids)
    opening = len("Document:\n")
    for c, text in enumerate(contexts):
        enc = lm.tokenizer(document_block(text), add_special_tokens=False, return_offsets_mapping=True)
        assert tuple(enc["input_ids"]) == prompt.chunk_ids[c]
        offsets = np.array(enc["offset_mapping"]) - opening
        weights = attention[start : start + len(offsets)]
        for k, (owner, a, b) in enumerate(spans):
            if owner == c:
                inside = (offsets[:, 0] < b) & (offsets[:, 1] > a)
                attn[k] = weights[inside].sum()
                attn_mean[k] = weights[inside].mean() if inside.any() else 0.0
        start += len(offsets)

    hyde_prompt = build_prompt(lm.tokenizer, [], question, system="Answer the question in two sentences.")
    hyde = generate(lm, list(hyde_prompt.prefix_ids) + list(hyde_prompt.suffix_ids)) if every_signal else []
    texts = {name: lm.tokenizer.decode(toks, skip_special_tokens=True) for name, toks in (("reader", reader), ("hyde", hyde))}
    features = {"attn": attn, "attn_mean": attn_mean, "answers": texts}
    for name, text in texts.items():
        features[f"{name}_cos"] = semantic_scores(text or question, pool, pieces, encoder)
        features[f"{name}_bm25"] = BM25Index(pieces).scores(text) if text.strip() else np.zeros(len(pool))
    return features


def build_reader(names: tuple[str, ...], fit_sets=("dev1", "dev3")) -> dict[str, list[dict]]:
    """Every question's signals for the sets ``names``; all of them only for ``fit_sets`` (the others
    get only the reader's answer signals, the one kind with a variant that won on both development sets)."""
    cache = pickle.loads(CACHE.read_bytes()) if CACHE.exists() else {}
    missing = [n for n in names if n not in cache]
    if missing:
        import torch
        from evidence_dev import MemoEncoder, retrieved

        from compression.extractive.models import default_encoder
        from compression.lm import load_causal_lm

        torch.set_num_threads(2)
        lm = load_causal_lm()
        lm.model.set_attn_implementation("eager")  # output_attentions needs the eager kernel
        encoder = MemoEncoder(default_encoder())
        for name, items in retrieved(missing).items():
            cache[name] = []
            for n, (question, hits) in enumerate(items):
                cache[name].append(question_features(question["question"], hits, lm, encoder, name in fit_sets))
                print(f"{name} {n + 1}/{len(items)}: {cache[name][-1]['answers']['reader'][:70]!r}", flush=True)
        tmp = CACHE.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(cache))
        os.replace(tmp, CACHE)
    return {n: cache[n] for n in names}


def with_signal(weights: dict[str, float]):
    """The current fused score plus ``weight`` x z(signal) for each signal (z over the question's sentences)."""
    from compression.llmlingua.relevance import zscore

    def score(d):
        return fit.current_scores(d) + sum(w * zscore(d[s]) for s, w in weights.items())

    return score


def report(data: dict[str, list[dict]], names: tuple[str, ...], signals=SIGNALS) -> None:
    print(f"{'variant':34s} " + " / ".join(names), flush=True)
    print(f"{'current':34s} " + " / ".join(f"{fit.evaluate(data[n], fit.current_scores):.4f}" for n in names), flush=True)
    variants = [{s: w} for s in signals for w in (0.25, 0.5, 1.0)]
    variants += [{"reader_cos": w, "reader_bm25": w} for w in (0.25, 0.5)]
    if "attn" in signals:
        variants += [{"attn": w, "reader_cos": w} for w in (0.25, 0.5)]
    for weights in variants:
        label = " + ".join(f"{w} {s}" for s, w in weights.items())
        print(f"{label:34s} " + " / ".join(f"{fit.evaluate(data[n], with_signal(weights)):.4f}" for n in names), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", action="store_true", help="also rows[5::6] and rows[2::6]+rows[4::6] (means only)")
    args = parser.parse_args()
    sets = [(("dev1", "dev3"), fit.build())]
    if args.other:
        sets.append((("rows5", "s4"), fit.build_other()))
    for names, base in sets:
        extra = build_reader(names)
        data = {n: [] for n in names}
        for name in names:
            for d, e in fit.paired({name: base[name]}, {name: extra[name]}, "attn"):
                data[name].append({**d, **{s: e[s] for s in SIGNALS}})
        report(data, names, SIGNALS if names == ("dev1", "dev3") else ("reader_cos", "reader_bm25"))


if __name__ == "__main__":
    main()
