"""Dev-only: fit the evidence-sentence scoring of ``compression/llmlingua/relevance.py`` instead of hand-tuning it.

For every development question (rows[1::6], rows[3::6]) and every candidate sentence of its top-5
chunks, cheap features (no LM pass) and a label (the sentence's reference characters) are computed
once and cached outside the repo. Small linear models are fitted with scikit-learn / scipy (this
script only; the runtime stays numpy) and judged by 2-fold cross-validation: fit on one
development set, choose evidence greedily on the other with the compressor's budget (0.9 of the
rate's target) at rates 0.25 / 0.33 / 0.4, and report the share of found reference characters
inside the chosen sentences (evidence_dev.py's ``evidence`` measure; it reproduces its 0.854 /
0.925 for the current scoring) next to the current scoring on the same questions. Only the
development sets are read. Session 5's figures (none adopted): benchmarks/results/evidence_tried.md.

Runs (session 5):
  ``.venv/bin/python benchmarks/sweeps/evidence_fit.py --features z_cos z_bm25 z_stem nb_fused prior log_len coverage first ctx_rank_cos``
  ``... --features z_cos z_bm25 nb_fused prior --models direct listwise`` (the current terms refitted)
  ``... --features z_cos z_bm25 z_stem nb_fused prior --models direct [--refit]``
  ``... --models listwise --l2 0.3`` (all features), ``... --nested`` (choices made inside each training fold)
  ``... --full-check 1,0.35,0.75,0.5,3`` (the whole compressor at rate 0.33 on both sets, ~25 min on a busy machine)
Session 10: ``... --budget-curve`` (the current scoring's evidence alone at rates 0.2-0.5 on all four sets;
reads rows[5::6] and rows[2::6]+rows[4::6] too, via ``build_other``)
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

RATES = (0.25, 0.33, 0.4)
# The direct fit maximises the measure over a finer grid of rates (a smoother objective than three rates).
FIT_RATES = (0.2, 0.25, 0.3, 0.33, 0.35, 0.4, 0.45, 0.5)
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "ragpress_evidence_fit_features.pkl"
FEATURES = (
    "z_cos", "z_bm25", "z_stem", "nb_fused", "prior", "log_len", "coverage", "first", "ctx_rank_cos", "ctx_max", "ctx_mean", "nb_stem",
)


def question_data(question: dict, hits: list[dict], corpora: dict, tokenizer, encoder, stemmer) -> dict:
    """Features, labels and budgets of one question's candidate sentences (contexts in retrieval order)."""
    import compression_llmlingua as bench

    from compression.base import Budget
    from compression.llmlingua.compressor import LLMLinguaCompressor, _inner
    from compression.llmlingua.relevance import best_neighbour, semantic_scores, zscore
    from compression.llmlingua.units import count_tokens
    from retrieval.lexical import BM25Index, lexical_tokens

    contexts = [h["text"] for h in hits]
    order = list(range(len(contexts)))
    pool, spans, pieces = sentence_pool(contexts, tokenizer)
    q = question["question"]
    ref = bench.reference_mask(question, corpora[question["corpus_id"]])
    found, _ = bench.survival(question, hits, corpora, [np.zeros(len(c), dtype=bool) for c in contexts])
    ref_chars = np.array(
        [int(ref[hits[c]["start"] + a : hits[c]["start"] + b].sum()) if hits[c]["corpus"] == question["corpus_id"] else 0 for c, a, b in spans]
    )
    lexical = BM25Index(pieces).scores(q)
    stem = stem_bm25(pieces, q, stemmer)
    cosine = semantic_scores(q, pool, pieces, encoder)
    z_cos, z_bm = zscore(cosine), zscore(lexical)
    ranks = np.array([s.context for s in pool], dtype=np.float64)
    q_terms = set(lexical_tokens(q))
    coverage = np.array([len(q_terms & set(lexical_tokens(p))) / max(1, len(q_terms)) for p in pieces])
    first = np.array([1.0 if k == 0 or pool[k - 1].context != pool[k].context else 0.0 for k in range(len(pool))])
    ctx_rank = np.zeros(len(pool))
    for c in order:
        idx = [k for k in range(len(pool)) if pool[k].context == c]
        for r, k in enumerate(sorted(idx, key=lambda k: -cosine[k])):
            ctx_rank[k] = 1.0 / (1.0 + r)
    own = z_cos + z_bm
    owner = np.array([s.context for s in pool])
    ctx_max = np.array([own[owner == c].max() for c in owner])  # the context's best sentence (context relevance)
    ctx_mean = np.array([own[owner == c].mean() for c in owner])
    X = np.column_stack(
        [
            z_cos, z_bm, zscore(stem), best_neighbour(pool, own), 1.0 / (1.0 + ranks), np.log([s.n_tokens for s in pool]), coverage, first,
            ctx_rank, ctx_max, ctx_mean, best_neighbour(pool, z_cos + zscore(stem)),
        ]
    )
    n_in = count_tokens(tokenizer, "\n\n".join(contexts))
    rates = sorted(set(RATES) | set(FIT_RATES))
    budgets = {r: int(LLMLinguaCompressor().evidence * _inner(Budget(rate=r).tokens_for(n_in), order)) for r in rates}
    lengths = np.array([b - a for _, a, b in spans])
    return dict(X=X, ref=ref_chars, length=lengths, n_tokens=np.array([s.n_tokens for s in pool]), found=found, budgets=budgets, pool=pool)


def stem_bm25(pieces: list[str], question: str, stemmer) -> np.ndarray:
    from rank_bm25 import BM25Okapi

    from retrieval.lexical import lexical_tokens

    docs = [stemmer.stemWords(lexical_tokens(p)) or ["\0"] for p in pieces]
    return np.asarray(BM25Okapi(docs).get_scores(stemmer.stemWords(lexical_tokens(question))), dtype=np.float64)


def build(names: tuple[str, ...] = ("dev1", "dev3"), cache: Path = CACHE) -> dict[str, list[dict]]:
    """Every question's features for the sets ``names`` (evidence_dev.SETS), cached in ``cache``."""
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    import compression_llmlingua as bench
    import snowballstemmer
    from evidence_dev import MemoEncoder, retrieved

    from compression.extractive.models import default_encoder
    from compression.lm import load_causal_lm

    tokenizer, encoder = load_causal_lm().tokenizer, MemoEncoder(default_encoder())
    corpora = bench.load_corpora()
    stemmer = snowballstemmer.stemmer("english")
    data = {
        name: [question_data(q, hits, corpora, tokenizer, encoder, stemmer) for q, hits in items]
        for name, items in retrieved(list(names)).items()
    }
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(data))
    os.replace(tmp, cache)
    return data


def build_other() -> dict[str, list[dict]]:
    """The same features for rows[5::6] and rows[2::6] + rows[4::6] (looked at since session 8, never tuned on)."""
    return build(("rows5", "s4"), CACHE.with_name("ragpress_evidence_other_features.pkl"))


def paired(data: dict[str, list[dict]], extra: dict[str, list[dict]], key: str):
    """(record, extra features) of every question, checking the extra ``key`` follows the record's pool order."""
    for name in data:
        for d, e in zip(data[name], extra[name], strict=True):
            assert len(e[key]) == len(d["pool"]), "pool order differs from evidence_fit's"
            yield d, e


# -- scoring and evaluation --------------------------------------------------------------------


def current_scores(d: dict) -> np.ndarray:
    """relevance.fused_scores as it is, from the cached features (their neighbour column is z cosine +
    z BM25, i.e. LEXICAL = 1)."""
    from compression.llmlingua.relevance import LEXICAL, NEIGHBOUR, PRIOR

    X = d["X"]
    return X[:, 0] + LEXICAL * X[:, 1] + NEIGHBOUR * X[:, 3] + PRIOR * X[:, 4]


def evaluate(items: list[dict], score_fn, rates=RATES) -> float:
    """Mean over questions and ``rates`` of the found reference characters inside the greedy evidence."""
    from compression.llmlingua.relevance import _greedy

    shares = []
    for d in items:
        if not d["found"]:
            continue
        scores = score_fn(d)
        index = {id(s): k for k, s in enumerate(d["pool"])}
        for rate in rates:
            chosen = _greedy(d["pool"], scores, d["budgets"][rate], positive_only=False)
            shares.append(sum(d["ref"][index[id(s)]] for s in chosen) / d["found"])
    return statistics.mean(shares)


def per_rate(items: list[dict], score_fn) -> str:
    return "(" + " / ".join(f"{evaluate(items, score_fn, (r,)):.3f}" for r in RATES) + f" at {'/'.join(map(str, RATES))})"


def linear(weights: np.ndarray, columns: list[int]):
    return lambda d: d["X"][:, columns] @ weights


# -- models ------------------------------------------------------------------------------------


def fit_logistic(items: list[dict], columns: list[int], c: float = 1.0, threshold: float = 0.5) -> np.ndarray:
    """Logistic regression on 'most of the sentence is reference', balanced classes."""
    from sklearn.linear_model import LogisticRegression

    X = np.vstack([d["X"][:, columns] for d in items])
    y = np.concatenate([d["ref"] / np.maximum(1, d["length"]) >= threshold for d in items])
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(X, y)
    return model.coef_[0]


def fit_listwise(items: list[dict], columns: list[int], l2: float = 0.01, offset=None) -> np.ndarray:
    """Per-question softmax over sentences, target = the share of the question's reference characters.

    ``offset(d)``: a fixed score the linear part is added to (then L2 shrinks towards that scoring).
    """
    from scipy.optimize import minimize

    groups = [
        (d["X"][:, columns], d["ref"] / d["ref"].sum(), offset(d) if offset else np.zeros(len(d["ref"]))) for d in items if d["ref"].sum() > 0
    ]

    def loss(w):
        total, grad = l2 * w @ w, 2 * l2 * w
        for X, t, base in groups:
            s = base + X @ w
            s = s - s.max()
            p = np.exp(s) / np.exp(s).sum()
            total -= t @ np.log(p + 1e-12)
            grad -= X.T @ (t - p)
        return total / len(groups), grad / len(groups)

    return minimize(loss, np.zeros(len(columns)), jac=True, method="L-BFGS-B").x


def fit_pairwise(items: list[dict], columns: list[int], c: float = 1.0) -> np.ndarray:
    """Pairwise logistic ranking within each question: a reference sentence above a non-reference one."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    diffs = []
    for d in items:
        X, share = d["X"][:, columns], d["ref"] / np.maximum(1, d["length"])
        pos, neg = np.flatnonzero(share >= 0.5), np.flatnonzero(share == 0)
        for i in pos:
            for j in rng.choice(neg, size=min(len(neg), 30), replace=False) if len(neg) else []:
                diffs.append(X[i] - X[j])
    diffs = np.array(diffs)
    X = np.vstack([diffs, -diffs])
    y = np.r_[np.ones(len(diffs)), np.zeros(len(diffs))]
    return LogisticRegression(C=c, fit_intercept=False, max_iter=2000).fit(X, y).coef_[0]


def fit_direct(items: list[dict], columns: list[int], rounds: int = 3) -> np.ndarray:
    """Coordinate search maximising the evidence measure itself (FIT_RATES) on the training questions.

    Scores only rank, so the first weight is fixed at 1; the others step over a log-spaced grid
    (with sign and zero), starting from the current scoring where its features are used.
    """
    start = {"z_cos": 1.0, "z_bm25": 1.0, "nb_fused": 0.5, "prior": 3.0}
    w = np.array([start.get(FEATURES[c], 0.0) for c in columns])
    w[0] = 1.0
    grid = [0.0] + [s * v for v in (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0) for s in (1, -1)]
    best = evaluate(items, linear(w, columns), FIT_RATES)
    for _ in range(rounds):
        improved = False
        for i in range(1, len(w)):
            for v in grid:
                trial = w.copy()
                trial[i] = v
                value = evaluate(items, linear(trial, columns), FIT_RATES)
                if value > best + 1e-9:
                    best, w, improved = value, trial, True
        if not improved:
            break
    return w


MODELS = {"logistic": fit_logistic, "listwise": fit_listwise, "pairwise": fit_pairwise, "direct": fit_direct}


# Candidates of the nested selection: feature sets x listwise L2 strengths, chosen inside each training fold.
FEATURE_SETS = {
    "current4": ("z_cos", "z_bm25", "nb_fused", "prior"),
    "stem5": ("z_cos", "z_bm25", "z_stem", "nb_fused", "prior"),
    "all": FEATURES,
}
L2S = (0.03, 0.3, 3.0)


def nested(train: list[dict], test: list[dict]) -> tuple[float, str, np.ndarray]:
    """Pick feature set and L2 by 2-fold CV inside ``train`` (alternate questions), refit on all of it, score ``test``."""
    halves = (train[0::2], train[1::2])
    best = None
    for name, feats in FEATURE_SETS.items():
        columns = [FEATURES.index(f) for f in feats]
        for l2 in L2S:
            inner = statistics.mean(
                evaluate(halves[1 - k], linear(fit_listwise(halves[k], columns, l2), columns)) for k in (0, 1)
            )
            if best is None or inner > best[0]:
                best = (inner, name, l2, columns)
    _, name, l2, columns = best
    w = fit_listwise(train, columns, l2)
    return evaluate(test, linear(w, columns)), f"{name} l2={l2} (inner {best[0]:.4f})", w


def nested_residual(train: list[dict], test: list[dict], l2s=(0.1, 1.0, 10.0)) -> tuple[float, str]:
    """Current scoring + a listwise-fitted correction on all features, shrunk by L2; the current scoring
    itself (no correction) is a candidate too. Chosen by 2-fold CV inside ``train``."""
    columns = list(range(len(FEATURES)))
    halves = (train[0::2], train[1::2])
    candidates = {"current": None} | {f"l2={l2}": l2 for l2 in l2s}

    def scorer(items, l2):
        if l2 is None:
            return current_scores
        w = fit_listwise(items, columns, l2, offset=current_scores)
        return lambda d: current_scores(d) + linear(w, columns)(d)

    inner = {n: statistics.mean(evaluate(halves[1 - k], scorer(halves[k], l2)) for k in (0, 1)) for n, l2 in candidates.items()}
    name = max(inner, key=inner.get)
    return evaluate(test, scorer(train, candidates[name])), f"{name} (inner {', '.join(f'{n} {v:.4f}' for n, v in inner.items())})"


def sentence_pool(contexts: list[str], tokenizer):
    """The candidate sentences of ``contexts`` in retrieval order (the order every sweep's features follow),
    their ``(context, start, end)`` character spans and their texts."""
    from compression.llmlingua.units import split_units, tokenize

    units = [split_units(t, tokenize(tokenizer, t)[1]) for t in contexts]
    pool, _, pieces = candidate_pool(contexts, units, range(len(contexts)))
    spans = [(s.context, units[s.context][s.first].start, units[s.context][s.last].end) for s in pool]
    return pool, spans, pieces


def candidate_pool(texts, units, order):
    """``relevance.choose_evidence``'s candidate sentences (contexts in ``order``), their context ranks and texts."""
    from compression import relevance

    pool = [s for i in order for s in relevance.sentences(i, texts[i], units[i])]
    rank_of = {c: r for r, c in enumerate(order)}
    ranks = np.array([rank_of[s.context] for s in pool], dtype=np.float64)
    pieces = [texts[s.context][units[s.context][s.first].start : units[s.context][s.last].end] for s in pool]
    return pool, ranks, pieces


def fitted_choose_evidence(weights: dict[str, float]):
    """``relevance.choose_evidence`` with the fused score replaced by ``weights`` over z cosine, z BM25
    (words), z BM25 (Snowball stems), the better neighbour's z cosine + z BM25, and 1 / (1 + rank)."""
    import snowballstemmer

    from compression import relevance
    from retrieval.lexical import BM25Index

    stemmer = snowballstemmer.stemmer("english")

    def choose(question, texts, units, order, budget, encoder=None):
        pool, ranks, pieces = candidate_pool(texts, units, order)
        if budget <= 0 or not pool or encoder is None:
            return relevance.choose_evidence(question, texts, units, order, budget, encoder)
        z_bm, z_cos = relevance.zscore(BM25Index(pieces).scores(question)), relevance.zscore(relevance.semantic_scores(question, pool, pieces, encoder))
        z_stem = relevance.zscore(stem_bm25(pieces, question, stemmer))
        scores = (
            weights["z_cos"] * z_cos + weights["z_bm25"] * z_bm + weights["z_stem"] * z_stem
            + weights["nb_fused"] * relevance.best_neighbour(pool, z_cos + z_bm) + weights["prior"] / (1.0 + ranks)
        )
        return relevance._greedy(pool, scores, budget, positive_only=False)

    return choose


def full_check(weights: dict[str, float]) -> None:
    """The whole compressor at rate 0.33 with the question on the development sets, current vs ``weights``."""
    import compression_llmlingua as bench
    from evidence_dev import MemoEncoder, retrieved

    import compression.llmlingua.compressor as llmlingua
    from compression.base import Budget
    from compression.extractive.models import default_encoder

    corpora = bench.load_corpora()
    encoder, original = MemoEncoder(default_encoder()), llmlingua.choose_evidence
    for label, choose in (("current", original), (f"fitted {weights}", fitted_choose_evidence(weights))):
        llmlingua.choose_evidence = choose
        compressor = llmlingua.LLMLinguaCompressor(encoder=encoder)
        for name, items in retrieved(["dev1", "dev3"]).items():
            shares = []
            for question, hits in items:
                contexts = [h["text"] for h in hits]
                result = compressor.compress(contexts, Budget(rate=0.33), question=question["question"])
                found, kept = bench.survival(question, hits, corpora, bench.ragpress_masks(contexts, result))
                if found:
                    shares.append(kept / found)
            print(f"full compressor @0.33 {name} {label}: {statistics.mean(shares):.4f} over {len(shares)}", flush=True)
    llmlingua.choose_evidence = original


def budget_curve() -> None:
    """Evidence alone of the current scoring as the budget grows (session 10): how much a larger
    evidence budget could buy, before any loss from pruning tokens inside the chosen sentences."""
    sets = {**build(), **build_other()}
    for name, items in sets.items():
        print(name, " ".join(f"{rate}: {evaluate(items, current_scores, (rate,)):.3f}" for rate in FIT_RATES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--refit", action="store_true", help="also fit on both development sets and print the weights")
    parser.add_argument("--l2", type=float, default=0.01, help="L2 strength of the listwise model")
    parser.add_argument("--nested", action="store_true", help="listwise with feature set and L2 chosen by CV inside each training fold")
    parser.add_argument("--full-check", metavar="W", help="whole compressor on the dev sets with weights z_cos,z_bm25,z_stem,nb_fused,prior")
    parser.add_argument("--budget-curve", action="store_true", help="current scoring's evidence alone at each rate, all four sets")
    args = parser.parse_args()
    if args.budget_curve:
        budget_curve()
        return
    if args.full_check:
        full_check(dict(zip(("z_cos", "z_bm25", "z_stem", "nb_fused", "prior"), map(float, args.full_check.split(",")))))
        return
    data = build()
    if args.nested:
        for train, test in (("dev1", "dev3"), ("dev3", "dev1")):
            value, chosen, w = nested(data[train], data[test])
            print(f"nested listwise: fit {train} -> {test} {value:.4f} [{chosen}] current {evaluate(data[test], current_scores):.4f}")
            value, chosen = nested_residual(data[train], data[test])
            print(f"nested residual: fit {train} -> {test} {value:.4f} [{chosen}]")
        return
    columns = [FEATURES.index(f) for f in args.features]
    print(f"features: {args.features}")
    for name, items in data.items():
        print(f"current scoring on {name}: {evaluate(items, current_scores):.4f} {per_rate(items, current_scores)}")
    for model in args.models:
        held = []
        for train, test in (("dev1", "dev3"), ("dev3", "dev1")):
            w = MODELS[model](data[train], columns, **({"l2": args.l2} if model == "listwise" else {}))
            held.append(evaluate(data[test], linear(w, columns)))
            rates = per_rate(data[test], linear(w, columns))
            print(f"{model}: fit {train} -> {test} {held[-1]:.4f} {rates} weights {np.round(w / np.abs(w).max(), 3).tolist()}")
        if args.refit:
            w = MODELS[model](data["dev1"] + data["dev3"], columns, **({"l2": args.l2} if model == "listwise" else {}))
            print(f"{model}: refit on both: {dict(zip(args.features, np.round(w, 4).tolist()))}")


if __name__ == "__main__":
    main()
