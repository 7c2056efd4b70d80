"""What must survive pruning: forced strings, user-marked spans and cheaply detected spans.

Units get a tier: 0 = must be kept (user-marked spans, forced strings), 1 = evidence (sentences
most relevant to the question, chosen per call by compression/llmlingua/relevance.py), 2 = protected
(numbers, named entities, structure such as newlines and list markers), 3 = pruned by score.
Lower tiers are kept first while the budget allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from compression.llmlingua.units import Unit

MUST, EVIDENCE, PROTECTED, SCORED = 0, 1, 2, 3

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*%?")
# Capitalised words not right after a sentence end, acronyms, and runs of capitalised words.
_ENTITY = re.compile(
    r"(?<![.!?]\s)(?<!^)(?<!\n)\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*"
    r"|\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)+|\b[A-Z]{2,}\b"
)


def find_numbers(text: str) -> list[tuple[int, int]]:
    """Digits with their separators (3.14, 2011, 10:30, 50%)."""
    return [m.span() for m in _NUMBER.finditer(text)]


def find_entities(text: str) -> list[tuple[int, int]]:
    """Capitalised names a regex can find: mid-sentence capitals, multi-word names, acronyms."""
    return [m.span() for m in _ENTITY.finditer(text)]


def _no_spans(text: str) -> list[tuple[int, int]]:
    return []


# "structure" is honoured through Unit.structural; it has no spans of its own.
DETECTORS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "numbers": find_numbers,
    "entities": find_entities,
    "structure": _no_spans,
}


def check_detectors(names: Sequence[str]) -> tuple[str, ...]:
    """Validate detector names; unknown ones raise listing the valid choices."""
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown protect detector(s) {unknown}; valid: {', '.join(sorted(DETECTORS))}")
    return tuple(names)


def find_forced(text: str, forced: Sequence[str]) -> list[tuple[int, int]]:
    """Every occurrence of each forced string."""
    spans: list[tuple[int, int]] = []
    for needle in forced:
        if needle:
            spans.extend((m.start(), m.end()) for m in re.finditer(re.escape(needle), text))
    return spans


def _char_mask(length: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Boolean mask of the characters covered by ``spans`` (linear, not units x spans)."""
    mask = np.zeros(length + 1, dtype=bool)
    for start, end in spans:
        mask[max(0, start) : min(length, end)] = True
    return mask


def unit_tiers(
    text: str,
    units: Sequence[Unit],
    detectors: Sequence[str],
    forced: Sequence[str] = (),
    marked: Sequence[tuple[int, int]] = (),
) -> list[int]:
    """The tier of each unit of ``text``."""
    must = find_forced(text, forced) + [(start, end) for start, end in marked]
    soft: list[tuple[int, int]] = []
    for name in detectors:
        soft.extend(DETECTORS[name](text))
    keep_structure = "structure" in detectors
    must_mask, soft_mask = _char_mask(len(text), must), _char_mask(len(text), soft)
    tiers = []
    for unit in units:
        if must_mask[unit.start : unit.end].any():
            tiers.append(MUST)
        elif (keep_structure and unit.structural) or soft_mask[unit.start : unit.end].any():
            tiers.append(PROTECTED)
        else:
            tiers.append(SCORED)
    return tiers
