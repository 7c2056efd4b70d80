"""The poisoning probe: cluster the questions into topics, plant each attack's passages in a copy
of the clean index, and measure attack success and clean recall/IoU without and with each defence.

Per attack and ``n``, the passages of every probed topic are planted together in one copy (a
campaign against several topics at once); a target question counts as taken when its top k holds
a passage planted for its own topic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from eval.base import EvalConfig, EvalDataset, Question
from eval.defaults import BEST_CONFIG
from eval.poison.attack_hotflip import HotFlipAttack
from eval.poison.attack_random import RandomPassages
from eval.poison.attack_stuffing import KeywordStuffing, QueryStuffing
from eval.poison.base import Attack, AttackObjective, CleanCell, Defence, PoisonReport, SuccessCell
from eval.poison.defence import QueryLogDefence
from eval.poison.defence_copy import QueryCopyDefence
from eval.poison.defence_either import EitherDefence
from eval.poison.defence_fluency import FluencyDefence, lm_surprisals
from eval.poison.measures import clean_scores, kept, planted_name, success_rate, unjudged
from eval.poison.search import clean_index, index_vectors, planted_copy, rank
from eval.poison.topics import cluster_topics
from retrieval.base import Encoder, Hit, TokenCounter

AttackName = Literal["random", "query-stuffing", "keyword-stuffing", "hotflip"]
ModeName = Literal["dense", "bm25", "hybrid"]
ATTACKS: tuple[AttackName, ...] = ("random", "query-stuffing", "keyword-stuffing", "hotflip")
MODES: tuple[ModeName, ...] = ("dense", "bm25", "hybrid")
DefenceName = Literal["query-log", "query-copy", "fluency", "fluency+copy"]
NO_DEFENCE = "none"
Progress = Callable[[str], None]


class PoisonConfig(BaseModel):
    """The probe's settings (``ragpress eval --poison CONFIG``, YAML or JSON); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attacks: tuple[AttackName, ...] = ATTACKS
    n: tuple[int, ...] = Field(default=(1, 5, 10), description="planted passages per topic")
    k: tuple[int, ...] = Field(default=(5, 10), description="top-k depths measured")
    modes: tuple[ModeName, ...] = MODES
    clusters: int = Field(default=12, ge=2, description="KMeans clusters of the questions")
    topics: int = Field(default=4, ge=1, description="largest clusters probed")
    min_cluster: int = Field(default=6, ge=2)
    attack_share: float = Field(default=0.5, gt=0.0, lt=1.0, description="share of a cluster the attacker aims at")
    length: int = Field(default=64, ge=4, le=120, description="tokens per planted passage")
    hotflip_steps: int = Field(default=10, ge=1, description="gradient steps per topic (at most twice that to get n flips)")
    hotflip_candidates: int = Field(default=12, ge=1, description="exactly evaluated flips per step")
    hotflip_top: int = Field(default=32, ge=1, description="best first-order tokens per position sampled from")
    defences: tuple[DefenceName, ...] = Field(default=("query-log", "query-copy"), description="defences measured")
    defence_top: int = Field(default=3, ge=1, description="query-log: closest logged queries / passages averaged")
    defence_quantile: float = Field(default=0.999, gt=0.0, le=1.0, description="query-log: share of clean passages under the threshold")
    copy_ngram: int = Field(default=3, ge=1, description="query-copy: words per n-gram")
    copy_coverage: float = Field(default=0.8, gt=0.0, le=1.0, description="query-copy: share of a query's n-grams that makes it copied")
    copy_min_queries: int = Field(default=2, ge=1, description="query-copy: copied queries that flag a passage")
    fluency_lm: str = Field(default="smollm2", description="fluency: the causal LM (compression/lm.py names or a local path)")
    fluency_window: int = Field(default=64, ge=4, description="fluency: LM tokens scored per passage (its start)")
    fluency_top_share: float = Field(default=0.25, gt=0.0, le=1.0, description="fluency: share of most surprising tokens averaged")
    fluency_quantile: float = Field(default=0.99, gt=0.0, le=1.0, description="fluency: share of clean passages under the threshold")
    fluency_sample: int = Field(default=100, ge=2, description="fluency: clean chunks calibrated on (as many more measure false alarms)")
    depth: int = Field(default=30, ge=1, description="hits searched per question before the defence filters")
    chunker: str = BEST_CONFIG.chunker
    chunk_size: int = BEST_CONFIG.chunk_size
    overlap: int = BEST_CONFIG.overlap
    context_chunks: int = BEST_CONFIG.context_chunks
    seed: int = 0

    @field_validator("n", "k")
    @classmethod
    def _positive(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if not values or min(values) < 1:
            raise ValueError(f"give positive integers, got {list(values)}")
        return tuple(sorted(set(values)))

    @property
    def chunking(self) -> EvalConfig:
        """The chunking of the probed index (the chunker fields of an evaluation configuration)."""
        return EvalConfig(chunker=self.chunker, chunk_size=self.chunk_size, overlap=self.overlap,
                          context_chunks=self.context_chunks)


def load_poison_config(path: Path) -> PoisonConfig:
    """Read a YAML or JSON probe configuration; a bad file raises ``ValueError`` naming the problem."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"poison config {path} does not exist; pass a YAML or JSON file (see eval/poison/probe.py)")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        return PoisonConfig.model_validate(data or {})
    except (ValueError, yaml.YAMLError, ValidationError) as exc:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) if isinstance(exc, ValidationError) else str(exc)
        raise ValueError(f"poison config {path}: {problem}") from exc


def make_attacks(config: PoisonConfig, encoder: Encoder, counter: TokenCounter, vocab: dict[str, int]) -> dict[str, Attack]:
    """The configured attacks by name."""
    stuffing = QueryStuffing(counter, config.length, config.seed)
    registry: dict[str, Callable[[], Attack]] = {
        "random": lambda: RandomPassages(counter, vocab, config.length, config.seed),
        "query-stuffing": lambda: stuffing,
        "keyword-stuffing": lambda: KeywordStuffing(counter, config.length, config.seed),
        "hotflip": lambda: HotFlipAttack(encoder, stuffing, steps=config.hotflip_steps,
                                         candidates=config.hotflip_candidates, top=config.hotflip_top, seed=config.seed),
    }
    unknown = [name for name in config.attacks if name not in registry]
    if unknown:
        raise ValueError(f"unknown attack {unknown}; valid attacks: {', '.join(registry)}")
    return {name: registry[name]() for name in config.attacks}


def make_defences(config: PoisonConfig, logged: Sequence[tuple[str, np.ndarray]], ids: Sequence[int], texts: Sequence[str],
                  vectors: np.ndarray, docs: Sequence[str]) -> dict[str, Defence]:
    """The configured defences by name, calibrated on the clean index (``logged``: the query log's
    texts and vectors); a combination shares its parts with the defences of their own name."""
    made: dict[str, Defence] = {}

    def fluency() -> Defence:
        from compression.lm import load_causal_lm

        def scorer(batch: Sequence[str]) -> list[np.ndarray]:
            return lm_surprisals(load_causal_lm(config.fluency_lm), batch, config.fluency_window)
        return FluencyDefence.calibrate(scorer, texts, top_share=config.fluency_top_share, quantile=config.fluency_quantile,
                                        sample=config.fluency_sample, seed=config.seed)

    registry: dict[str, Callable[[], Defence]] = {
        "query-log": lambda: QueryLogDefence.calibrate(np.stack([vector for _, vector in logged]), ids, vectors,
                                                       config.defence_top, config.defence_quantile, docs),
        "query-copy": lambda: QueryCopyDefence([text for text, _ in logged], config.copy_ngram, config.copy_coverage,
                                               config.copy_min_queries),
        "fluency": fluency,
        "fluency+copy": lambda: EitherDefence("fluency+copy", (build("fluency"), build("query-copy"))),
    }

    def build(name: str) -> Defence:
        if name not in registry:
            raise ValueError(f"unknown defence '{name}'; valid defences: {', '.join(registry)}")
        if name not in made:
            made[name] = registry[name]()
        return made[name]
    return {name: build(name) for name in config.defences}


class Probe:
    """One probe of one dataset: topics, the clean index, the defences, and the measurements."""

    def __init__(self, config: PoisonConfig, dataset: EvalDataset, encoder: Encoder, index_dir: Path,
                 progress: Progress | None = None) -> None:
        self.config, self.dataset, self.encoder, self.index_dir = config, dataset, encoder, Path(index_dir)
        self.progress = progress or (lambda _message: None)
        questions = dataset.questions
        vectors = encoder.encode([question.text for question in questions])
        self.topics = cluster_topics(questions, vectors, config.clusters, config.topics, config.attack_share,
                                     config.min_cluster, config.seed)
        self.targets: list[Question] = [q for topic in self.topics for q in topic.targets]
        self.target_topics = [topic.topic_id for topic in self.topics for _ in topic.targets]
        held_out = {q.qid for q in self.targets}
        logged = [(question.text, vector) for question, vector in zip(questions, vectors) if question.qid not in held_out]
        ids, texts, clean_vectors, docs = index_vectors(self.index_dir)
        self.n_chunks, self.clean_ids = len(ids), set(ids)
        self.defences = make_defences(config, logged, ids, texts, clean_vectors, docs)
        self.verdicts: dict[str, dict[int, bool]] = {name: {} for name in self.defences}  # clean chunk id -> flagged
        self.defence_info: dict[str, dict[str, float | None]] = {}
        for name, defence in self.defences.items():
            rows = getattr(defence, "held_out", None)
            rows = np.arange(len(ids)) if rows is None else rows
            as_new = defence.flagged_as_new([docs[r] for r in rows], [ids[r] for r in rows], [texts[r] for r in rows],
                                            clean_vectors[rows])
            self.defence_info[name] = {"log_queries": len(logged), "flagged_as_new": float(np.mean(as_new)),
                                       "false_alarm_chunks": len(rows), "threshold": getattr(defence, "threshold", None)}

    def rankings(self, index_dir: Path) -> dict[str, list[list[Hit]]]:
        """Each mode's hits (to ``depth``) for every target question."""
        texts = [question.text for question in self.targets]
        depth = max(self.config.depth, max(self.config.k))
        return {mode: rank(index_dir, texts, mode, depth, self.encoder) for mode in self.config.modes}

    def flagged(self, index_dir: Path, rankings: Mapping[str, list[list[Hit]]]) -> dict[str, set[int]]:
        """Per defence, the flagged chunk ids among those its query-time filter looks at to keep the
        top k of ``rankings`` (the same top k as judging every chunk, at a fraction of the cost of a
        slow defence). Clean chunks are judged once, as indexed; new ones as they arrive."""
        ids, texts, vectors, _ = index_vectors(index_dir)
        row_of = {chunk_id: row for row, chunk_id in enumerate(ids)}
        ranked = [hits for per_mode in rankings.values() for hits in per_mode]
        out: dict[str, set[int]] = {NO_DEFENCE: set()}
        for name, defence in self.defences.items():
            verdicts = dict(self.verdicts[name])
            while todo := unjudged(ranked, verdicts, max(self.config.k)):
                rows = [row_of[chunk_id] for chunk_id in sorted(todo)]
                flags = defence.flagged([ids[r] for r in rows], [texts[r] for r in rows], vectors[rows])
                verdicts.update((ids[r], bool(flag)) for r, flag in zip(rows, flags))
            self.verdicts[name].update((i, flag) for i, flag in verdicts.items() if i in self.clean_ids)
            out[name] = {i for i, flag in verdicts.items() if flag}
        return out

    def clean_cells(self, rankings: Mapping[str, list[list[Hit]]], flagged: Mapping[str, set[int]], attack: str | None,
                    n: int) -> list[CleanCell]:
        """Recall and IoU of the targets, per mode, k and defence (``none`` included)."""
        cells = []
        for mode, ranked in rankings.items():
            for k in self.config.k:
                for defence, skip in flagged.items():
                    scores = [clean_scores(q, kept(hits, skip, k)) for q, hits in zip(self.targets, ranked)]
                    recall, iou = (100.0 * float(np.mean(column)) for column in zip(*scores))
                    cells.append(CleanCell(attack, n, mode, k, defence, recall, iou))
        return cells

    def success_cells(self, rankings: Mapping[str, list[list[Hit]]], flagged: Mapping[str, set[int]], attack: str,
                      n: int) -> list[SuccessCell]:
        """Attack success per mode, k and defence (``none`` included)."""
        return [SuccessCell(attack, n, mode, k, defence,
                            success_rate([kept(hits, skip, k) for hits in ranked], self.target_topics), len(self.targets))
                for mode, ranked in rankings.items() for k in self.config.k for defence, skip in flagged.items()]

    def objectives(self, attack: str, passages: Mapping[int, Sequence[str]]) -> list[AttackObjective]:
        """Mean cosine of each topic's passages to its attack and its target questions."""
        out = []
        for topic in self.topics:
            vectors = self.encoder.encode(list(passages[topic.topic_id]))
            attack_mean = self.encoder.encode([q.text for q in topic.attack]).mean(axis=0)
            target_mean = self.encoder.encode([q.text for q in topic.targets]).mean(axis=0)
            out.append(AttackObjective(attack, topic.topic_id, float((vectors @ attack_mean).mean()),
                                       float((vectors @ target_mean).mean())))
        return out

    def run(self, attacks: Mapping[str, Attack]) -> PoisonReport:
        """Measure the clean index, then every attack × n."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        clean_rankings = self.rankings(self.index_dir)
        clean = self.clean_cells(clean_rankings, self.flagged(self.index_dir, clean_rankings), None, 0)
        timings["clean_s"] = time.perf_counter() - started
        success: list[SuccessCell] = []
        objectives: list[AttackObjective] = []
        for name, attack in attacks.items():
            mark = time.perf_counter()
            self.progress(f"{name}: writing passages for {len(self.topics)} topics")
            passages = {topic.topic_id: attack.passages(topic, max(self.config.n)) for topic in self.topics}
            timings[f"{name}_write_s"] = time.perf_counter() - mark
            objectives += self.objectives(name, passages)
            mark = time.perf_counter()
            for n in self.config.n:
                planted = {planted_name(name, topic_id, number): text
                           for topic_id, texts in passages.items() for number, text in enumerate(texts[:n])}
                self.progress(f"{name}: n={n}, {len(planted)} passages planted in a copy")
                with planted_copy(self.index_dir, planted, self.config.chunking, self.encoder) as copy:
                    rankings = self.rankings(copy)
                    flagged = self.flagged(copy, rankings)
                success += self.success_cells(rankings, flagged, name, n)
                clean += self.clean_cells(rankings, flagged, name, n)
            timings[f"{name}_measure_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        for name, verdicts in self.verdicts.items():  # the clean chunks some top k needed judged, and those flagged
            self.defence_info[name].update(clean_judged=len(verdicts), clean_flagged=sum(verdicts.values()))
        traces = getattr(attacks.get("hotflip"), "traces", [])
        settings = {**self.config.model_dump(mode="json"), "hotflip_traces": [list(t) for t in traces]}
        return PoisonReport(self.dataset.name, self.n_chunks, self.topics, tuple(success), tuple(clean),
                            tuple(objectives), self.defence_info, settings, timings)


def run_probe(config: PoisonConfig, dataset: EvalDataset, encoder: Encoder, counter: TokenCounter, vocab: dict[str, int], *,
              index_dir: Path | None = None, cache: Path | None = None, progress: Progress | None = None) -> PoisonReport:
    """Probe ``dataset``: against ``index_dir`` (only ever copied), or the clean index of the
    dataset's corpora built with the configured chunking (cached under ``cache``)."""
    if index_dir is None:
        index_dir = clean_index(dataset.corpora, config.chunking, encoder, cache)
    probe = Probe(config, dataset, encoder, index_dir, progress)
    return probe.run(make_attacks(config, encoder, counter, vocab))
