"""Dev-only (session 7): does the LM's question likelihood, or the retriever's scores, help choose evidence sentences?

UPR (Sachan et al. 2022) ranks a passage by log P(question | passage) under a causal LM. Here every
candidate sentence of a development question's top-5 chunks gets the mean log-probability of the
question's tokens after "Passage: <sentence>\nQuestion:" under SmolLM2-135M-Instruct (and, as a
second feature, after the sentence with its neighbours in the same chunk). The features are added
to ``evidence_fit.py``'s cached cheap features and judged the same way: evidence sentences alone,
mean share of the found reference characters over rates 0.25 / 0.33 / 0.4, on rows[1::6] and
rows[3::6] only (hand-set weights on both sets, then 2-fold cross-validation).

This first measures the LM signal with no regard to cost (one LM pass per sentence, far above the
compressor's 1.3x-floor budget); only a clear win on both sets would justify building a
budget-feasible version (rerank the top candidates only). The script also tries a context prior
from the retriever's scores (each chunk's MiniLM cosine to the question) instead of its ranks.
Results (none adopted): session 7 of ``benchmarks/results/evidence_tried.md``.

Run: ``.venv/bin/python benchmarks/sweeps/evidence_lm.py`` (evidence alone, every variant);
``... evidence_lm.py --full-check 0.5 1.0``: the whole compressor at rate 0.33 with neighbours across
source-adjacent chunks at those weights, against the current compressor (minutes).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evidence_fit as fit  # noqa: E402  (sets sys.path and the offline environment)
import numpy as np  # noqa: E402

CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "ragpress_evidence_lm_features.pkl"
MAX_PASSAGE = 96  # tokens of a passage (longer ones are cut at the end)
BATCH = 16


def candidate_pieces(hits: list[dict], tokenizer) -> tuple[list[str], list[str]]:
    """Each candidate sentence's text and its text with its neighbours, in ``evidence_fit``'s pool order."""
    contexts = [h["text"] for h in hits]
    _, spans, alone = fit.sentence_pool(contexts, tokenizer)
    windows = []
    for k, (c, a, b) in enumerate(spans):
        lo = spans[k - 1][1] if k > 0 and spans[k - 1][0] == c else a
        hi = spans[k + 1][2] if k + 1 < len(spans) and spans[k + 1][0] == c else b
        windows.append(contexts[c][lo:hi])
    return alone, windows


def question_logprob(passages: list[str], question: str, lm) -> np.ndarray:
    """Mean log P(question tokens | 'Passage: p\\nQuestion:') for every passage (batched, right-padded)."""
    import torch

    tok, model = lm.tokenizer, lm.model
    q_ids = tok(" " + question.strip(), add_special_tokens=False)["input_ids"]
    out = np.zeros(len(passages))
    for start in range(0, len(passages), BATCH):
        rows = []
        for p in passages[start : start + BATCH]:
            p_ids = tok("Passage: " + p.strip(), add_special_tokens=False)["input_ids"][:MAX_PASSAGE]
            rows.append(p_ids + tok("\nQuestion:", add_special_tokens=False)["input_ids"])
        width = max(len(r) for r in rows) + len(q_ids)
        ids = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, : len(r) + len(q_ids)] = torch.tensor(r + q_ids)
            mask[j, : len(r) + len(q_ids)] = 1
        with torch.no_grad():
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            for j, r in enumerate(rows):
                h = hidden[j, len(r) - 1 : len(r) - 1 + len(q_ids)]
                logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
                out[start + j] = float(logp[torch.arange(len(q_ids)), torch.tensor(q_ids)].mean())
    return out


def build_lm() -> dict[str, list[dict]]:
    if CACHE.exists():
        return pickle.loads(CACHE.read_bytes())
    import torch
    from evidence_dev import retrieved

    from compression.lm import load_causal_lm

    torch.set_num_threads(2)
    lm = load_causal_lm()
    data = {}
    for name, items in retrieved(["dev1", "dev3"]).items():
        data[name] = []
        for n, (question, hits) in enumerate(items):
            alone, windows = candidate_pieces(hits, lm.tokenizer)
            q = question["question"]
            data[name].append({"upr": question_logprob(alone, q, lm), "upr_window": question_logprob(windows, q, lm)})
            print(f"{name} {n + 1}/{len(items)}", flush=True)
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(data))
    os.replace(tmp, CACHE)
    return data


def rerank(base, n: int, weight: float, feature: str):
    """``base`` plus ``weight`` x the LM feature for the top ``n`` sentences of ``base``; the others get the
    lowest bonus any of those got (the LM never saw them)."""

    def score(d):
        scores = base(d)
        top = np.argsort(-scores, kind="stable")[:n]
        bonus = np.full(len(scores), d[feature][top].min() if len(top) else 0.0)
        bonus[top] = d[feature][top]
        return scores + weight * bonus

    return score


def chunk_cosines() -> dict[str, list[np.ndarray]]:
    """MiniLM cosine of each top-5 chunk to its question (the dense retriever's own score), per development question."""
    from evidence_dev import retrieved

    from compression.extractive.models import default_encoder

    encoder = default_encoder()
    out = {}
    for name, items in retrieved(["dev1", "dev3"]).items():
        out[name] = []
        for question, hits in items:
            vectors = encoder.encode([question["question"]] + [h["text"] for h in hits])
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            out[name].append(vectors[1:] @ vectors[0])
    return out


def softmax_owner(d: dict, temperature: float) -> np.ndarray:
    """Softmax of the chunk cosines over the top 5, rescaled so the best chunk gets 1 (like 1 / (1 + rank) does)."""
    owner = np.array([s.context for s in d["pool"]])
    cos = np.zeros(owner.max() + 1)
    cos[owner] = d["chunk_cos"]
    weights = np.exp((cos - cos.max()) / temperature)
    return weights[owner]


def source_links() -> dict[str, list[list[tuple[int, int]]]]:
    """Per development question: (last sentence of chunk a, first sentence of chunk b) for top-5 chunks a, b
    where b starts at most 4 characters after a ends in the same corpus (pool indices, ``evidence_fit`` order)."""
    from evidence_dev import retrieved

    from compression.lm import load_causal_lm

    tokenizer = load_causal_lm().tokenizer
    out = {}
    for name, items in retrieved(["dev1", "dev3"]).items():
        out[name] = []
        for _, hits in items:
            pool = [s.context for s in fit.sentence_pool([h["text"] for h in hits], tokenizer)[0]]
            first = {c: pool.index(c) for c in set(pool)}
            last = {c: len(pool) - 1 - pool[::-1].index(c) for c in set(pool)}
            pairs = [(last[a], first[b]) for a in first for b in first
                     if a != b and hits[a]["corpus"] == hits[b]["corpus"] and 0 <= hits[b]["start"] - hits[a]["end"] <= 4]
            out[name].append(pairs)
    return out


def cross_scores(d: dict, cross_weight: float) -> np.ndarray:
    """The fused score with the neighbour term taken over in-chunk neighbours and the cross-chunk links
    (a link's neighbour score weighted ``cross_weight`` relative to an in-chunk neighbour's)."""
    from compression.llmlingua.relevance import NEIGHBOUR, PRIOR

    X = d["X"]
    own = X[:, 0] + X[:, 1]
    neighbour = X[:, 3].copy()
    for a, b in d["cross"]:
        neighbour[a] = max(neighbour[a], cross_weight * own[b])
        neighbour[b] = max(neighbour[b], cross_weight * own[a])
    return own + NEIGHBOUR * neighbour + PRIOR * X[:, 4]


def cross_choose_evidence(hits: list[dict], cross_weight: float):
    """``relevance.choose_evidence`` with the neighbour term also across source-adjacent chunks of ``hits``."""
    from compression import relevance
    from retrieval.lexical import BM25Index

    def choose(question, texts, units, order, budget, encoder=None):
        pool, ranks, pieces = fit.candidate_pool(texts, units, order)
        if budget <= 0 or not pool or encoder is None:
            return relevance.choose_evidence(question, texts, units, order, budget, encoder)
        own = relevance.zscore(relevance.semantic_scores(question, pool, pieces, encoder)) + relevance.LEXICAL * relevance.zscore(BM25Index(pieces).scores(question))
        neighbour = relevance.best_neighbour(pool, own)
        first = {s.context: k for k, s in reversed(list(enumerate(pool)))}
        last = {s.context: k for k, s in enumerate(pool)}
        for a in first:
            for b in first:
                if a != b and hits[a]["corpus"] == hits[b]["corpus"] and 0 <= hits[b]["start"] - hits[a]["end"] <= 4:
                    neighbour[last[a]] = max(neighbour[last[a]], cross_weight * own[first[b]])
                    neighbour[first[b]] = max(neighbour[first[b]], cross_weight * own[last[a]])
        scores = own + relevance.NEIGHBOUR * neighbour + relevance.PRIOR / (1.0 + ranks)
        return relevance._greedy(pool, scores, budget, positive_only=False)

    return choose


def full_check(cross_weights: list[float]) -> None:
    """The whole compressor at rate 0.33 with the question on the development sets, current vs cross-chunk neighbours."""
    import statistics

    import compression_llmlingua as bench
    from evidence_dev import MemoEncoder, retrieved

    import compression.llmlingua.compressor as llmlingua
    from compression.base import Budget
    from compression.extractive.models import default_encoder

    corpora, encoder, original = bench.load_corpora(), MemoEncoder(default_encoder()), llmlingua.choose_evidence
    compressor = llmlingua.LLMLinguaCompressor(encoder=encoder)
    for weight in [None, *cross_weights]:
        for name, items in retrieved(["dev1", "dev3"]).items():
            shares = []
            for question, hits in items:
                llmlingua.choose_evidence = original if weight is None else cross_choose_evidence(hits, weight)
                contexts = [h["text"] for h in hits]
                result = compressor.compress(contexts, Budget(rate=0.33), question=question["question"])
                found, kept = bench.survival(question, hits, corpora, bench.ragpress_masks(contexts, result))
                if found:
                    shares.append(kept / found)
            label = "current" if weight is None else f"cross-chunk neighbours x {weight}"
            print(f"full compressor @0.33 {name} {label}: {statistics.mean(shares):.4f} over {len(shares)}", flush=True)
    llmlingua.choose_evidence = original


def main() -> None:
    if sys.argv[1:2] == ["--full-check"]:
        full_check([float(w) for w in sys.argv[2:]])
        return
    from compression.llmlingua.relevance import LEXICAL, NEIGHBOUR, PRIOR, best_neighbour, zscore

    data = fit.build()
    for d, e in fit.paired(data, build_lm(), "upr"):
        d["z_upr"], d["z_uprw"] = zscore(e["upr"]), zscore(e["upr_window"])
        d["nb_upr"] = best_neighbour(d["pool"], d["z_upr"])

    def scorer(w_upr=0.0, w_uprw=0.0, w_nb=0.0, base=1.0):
        def score(d):
            X = d["X"]
            current = X[:, 0] + LEXICAL * X[:, 1] + NEIGHBOUR * X[:, 3] + PRIOR * X[:, 4]
            return base * current + w_upr * d["z_upr"] + w_uprw * d["z_uprw"] + w_nb * d["nb_upr"]
        return score

    variants = {"current": scorer()}
    variants["upr alone + prior"] = lambda d: d["z_upr"] + PRIOR * d["X"][:, 4]
    variants["upr-window alone + prior"] = lambda d: d["z_uprw"] + PRIOR * d["X"][:, 4]
    for w in (0.25, 0.5, 1.0, 2.0):
        variants[f"current + {w} z_upr"] = scorer(w_upr=w)
        variants[f"current + {w} z_upr_window"] = scorer(w_uprw=w)
        variants[f"current + {w} (z_upr + 0.5 nb)"] = scorer(w_upr=w, w_nb=0.5 * w)
    # The retriever's own scores instead of its ranks: the prior from each chunk's cosine to the question.
    chunk_cos = chunk_cosines()
    for name in data:
        for d, cos in zip(data[name], chunk_cos[name], strict=True):
            owner = np.array([s.context for s in d["pool"]])
            d["chunk_cos"], d["z_chunk"] = cos[owner], zscore(cos)[owner]
    for p in (1.0, 2.0, 3.0):
        variants[f"fused + {p} z(chunk cosine), no rank prior"] = lambda d, p=p: scorer()(d) - PRIOR * d["X"][:, 4] + p * d["z_chunk"]
        variants[f"fused + {p} z(chunk cosine) + rank prior"] = lambda d, p=p: scorer()(d) + p * d["z_chunk"]
    for t in (0.02, 0.05, 0.1):
        variants[f"fused, prior {PRIOR} x softmax(chunk cosine / {t})"] = (
            lambda d, t=t: scorer()(d) - PRIOR * d["X"][:, 4] + PRIOR * softmax_owner(d, t)
        )

    # Neighbour smoothing across chunk boundaries: a chunk's last sentence and the first sentence of the
    # top-5 chunk that follows it in the source are neighbours (evidence that runs over a chunk boundary).
    links = source_links()
    for name in data:
        for d, pairs in zip(data[name], links[name], strict=True):
            d["cross"] = pairs
    for w in (0.5, 1.0, 2.0):
        variants[f"fused, neighbours across source-adjacent chunks x {w}"] = lambda d, w=w: cross_scores(d, w)

    # What a budget-feasible version could do: the LM scores only the top n candidates of the current scoring.
    for n in (10, 20, 30):
        for w in (0.5, 1.0):
            variants[f"top-{n} reranked, + {w} z_upr"] = rerank(scorer(), n, w, "z_upr")
            variants[f"top-{n} reranked, + {w} z_upr_window"] = rerank(scorer(), n, w, "z_uprw")
    for label, fn in variants.items():
        print(f"{label:36s} " + " / ".join(f"{fit.evaluate(data[n], fn):.4f}" for n in ("dev1", "dev3")), flush=True)

    # 2-fold CV: the current four terms plus the LM features, listwise-fitted on one set, judged on the other.
    for d in data["dev1"] + data["dev3"]:
        d["X"] = np.column_stack([d["X"], d["z_upr"], d["z_uprw"]])
    fit.FEATURES = fit.FEATURES + ("z_upr", "z_uprw")
    columns = [fit.FEATURES.index(f) for f in ("z_cos", "z_bm25", "nb_fused", "prior", "z_upr", "z_uprw")]
    for train, test in (("dev1", "dev3"), ("dev3", "dev1")):
        for model in ("listwise", "direct"):
            w = fit.MODELS[model](data[train], columns)
            print(f"{model} fit {train} -> {test}: {fit.evaluate(data[test], fit.linear(w, columns)):.4f} "
                  f"(current {fit.evaluate(data[test], fit.current_scores):.4f}) weights {np.round(w, 3).tolist()}", flush=True)


if __name__ == "__main__":
    main()
