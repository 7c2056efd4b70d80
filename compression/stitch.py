"""Stitch retrieved chunks that are contiguous in their source into one context before compressing.

Evidence cut by a chunk boundary is scored as two half-sentences in two contexts, and the
lower-ranked half gets a weak rank prior. Joining chunks that touch in the source (the usual
"merge adjacent chunks" of RAG pipelines) makes the cut sentence whole again; the stitched context
reads in source order and takes the best rank of its members.

A compressor then works on ``Stitching.texts``; ``Stitching.map_result`` maps its kept spans back
onto the ORIGINAL contexts, so everything that needs per-chunk contexts (KV reuse of chunk caches,
evaluation, the CLI) keeps working. A gap between two chunks (whitespace the splitter stripped) is
filler: read by the compressor, owned by no original context, never mapped back.

Measured in session 6 and NOT adopted as the compression default (figures: compression/relevance.py):
on the development sets the whole compressor kept 0.924 / 0.932 of the evidence stitched (each
sentence with its own chunk's rank, ``Stitching.member_ranks``) vs 0.914 / 0.942 on raw chunks.
It is kept for ``benchmarks/sweeps/evidence_dev.py --stitch`` and for pipelines that want it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from compression.base import CompressionResult, KeptSpan

# Widest gap (characters) between two chunks that still counts as contiguous. Recursive splitters
# strip the separator's whitespace (" ", " \n ", "\n\n"); a wider gap holds text neither hit has.
MAX_GAP = 4
# Filler for a gap whose source text the caller does not have.
UNKNOWN_GAP = "\n"


@dataclass(frozen=True)
class Segment:
    """Characters ``[start, end)`` of original context ``context`` sit at offset ``at`` of the stitched text."""

    context: int
    start: int
    end: int
    at: int


@dataclass(frozen=True)
class Stitched:
    """One stitched context: its text, the original pieces in it (source order), and its members."""

    text: str
    segments: tuple[Segment, ...]
    members: tuple[int, ...]  # original context indices, best rank first (a contained chunk adds no segment)

    @property
    def rank(self) -> int:
        """The best (lowest) rank of its members: the retriever's order is the rank order."""
        return self.members[0]


@dataclass(frozen=True)
class Stitching:
    """Stitched contexts (best rank first) and the map back to the ``n_original`` original contexts."""

    contexts: tuple[Stitched, ...]
    n_original: int

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.contexts]

    @property
    def member_ranks(self) -> list[list[tuple[int, int, int]]]:
        """Per stitched context, its pieces as ``(start, end, rank)``: the rank is the original context's index."""
        return [[(seg.at, seg.at + seg.end - seg.start, seg.context) for seg in c.segments] for c in self.contexts]

    def map_spans(self, kept: Sequence[KeptSpan]) -> tuple[KeptSpan, ...]:
        """Kept spans over the stitched contexts -> kept spans over the originals (sorted, merged)."""
        mapped: list[KeptSpan] = []
        for span in kept:
            if not 0 <= span.context < len(self.contexts):
                raise ValueError(f"kept span names stitched context {span.context}, but there are {len(self.contexts)}")
            for seg in self.contexts[span.context].segments:
                low, high = max(span.start, seg.at), min(span.end, seg.at + seg.end - seg.start)
                if low < high:
                    mapped.append(KeptSpan(seg.context, seg.start + low - seg.at, seg.start + high - seg.at))
        return _merge(mapped)

    def map_result(self, result: CompressionResult) -> CompressionResult:
        """The same compressed text and token counts, its provenance over the original contexts."""
        return replace(result, kept=self.map_spans(result.kept))


def stitch(
    spans: Sequence[tuple[str, int, int]],
    texts: Sequence[str],
    sources: Mapping[str, str] | None = None,
    max_gap: int = MAX_GAP,
) -> Stitching:
    """Join the contexts ``texts`` (best first, located at ``(source, start, end)``) that touch in their source.

    Two chunks of one source are contiguous when they overlap or the gap between them is at most
    ``max_gap`` characters; the gap is filled from ``sources[source]`` when given (and must then be
    whitespace), else with one newline. Overlapping windows contribute each character once.
    """
    _check(spans, texts, max_gap)
    groups: list[list[int]] = []  # original indices per stitched context, in source order
    by_source: dict[str, list[int]] = {}
    for i, (source, start, end) in enumerate(spans):
        if end > start:
            by_source.setdefault(source, []).append(i)
        else:
            groups.append([i])  # an empty chunk joins nothing (it would only bring filler)
    for source, members in by_source.items():
        members.sort(key=lambda i: (spans[i][1], spans[i][2]))
        group, reach = [members[0]], spans[members[0]][2]
        for i in members[1:]:
            if _touches(reach, spans[i][1], source, sources, max_gap):
                group.append(i)
                reach = max(reach, spans[i][2])
            else:
                groups.append(group)
                group, reach = [i], spans[i][2]
        groups.append(group)
    built = [_build(group, spans, texts, sources) for group in groups]
    return Stitching(tuple(sorted(built, key=lambda c: c.rank)), len(texts))


def _touches(reach: int, start: int, source: str, sources: Mapping[str, str] | None, max_gap: int) -> bool:
    """Does a chunk starting at ``start`` continue a group that ends at ``reach``?"""
    gap = start - reach
    if gap > max_gap:
        return False
    if gap <= 0 or sources is None or source not in sources:
        return True
    return not sources[source][reach:start].strip()


def _build(group: list[int], spans: Sequence[tuple[str, int, int]], texts: Sequence[str], sources: Mapping[str, str] | None) -> Stitched:
    """One stitched context from a source-ordered group: each character of the source once."""
    source = spans[group[0]][0]
    parts: list[str] = []
    segments: list[Segment] = []
    at, reach = 0, spans[group[0]][1]  # source position the stitched text has reached
    for i in group:
        _, start, end = spans[i]
        if start > reach:
            filler = sources[source][reach:start] if sources is not None and source in sources else UNKNOWN_GAP
            parts.append(filler)
            at, reach = at + len(filler), start
        if end > reach:  # an overlapping window adds only what is not there yet
            segments.append(Segment(i, reach - start, end - start, at))
            parts.append(texts[i][reach - start :])
            at, reach = at + end - reach, end
    return Stitched("".join(parts), tuple(segments), tuple(sorted(group)))


def _merge(spans: list[KeptSpan]) -> tuple[KeptSpan, ...]:
    """Sorted by (context, start); spans of one context that overlap or touch become one."""
    merged: list[KeptSpan] = []
    for span in sorted(spans, key=lambda s: (s.context, s.start, s.end)):
        last = merged[-1] if merged else None
        if last is not None and last.context == span.context and span.start <= last.end:
            merged[-1] = KeptSpan(last.context, last.start, max(last.end, span.end))
        else:
            merged.append(span)
    return tuple(merged)


def _check(spans: Sequence[tuple[str, int, int]], texts: Sequence[str], max_gap: int) -> None:
    """Bad input names the context and the fix."""
    if len(spans) != len(texts):
        raise ValueError(f"{len(spans)} (source, start, end) spans for {len(texts)} context texts: pass one span per context")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0 characters, got {max_gap}")
    for i, ((_, start, end), text) in enumerate(zip(spans, texts)):
        if not 0 <= start <= end or end - start != len(text):
            raise ValueError(f"context {i}: span [{start}, {end}) does not fit its {len(text)}-character text; pass the hit's exact source span")
