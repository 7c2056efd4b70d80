"""Validated settings: the base every stage's config model shares, and the retrieval settings.

Each stage keeps its settings next to its code (``retrieval.config``, ``compression.config``,
``generation.config``, ``pipeline.config``), as frozen pydantic models that refuse unknown keys.
Every way in (CLI options, YAML/JSON files, the Python API) builds them, so a bad value is refused
before any index is written or any model loads, in one line that names the key, the value and what
is allowed (``validation_line``).

``BEST_RETRIEVAL`` is the winner of ``benchmarks/eval_grid.py`` on the shared Chroma corpora (see
``benchmarks/results/eval_grid.md`` for the grid, the selection rule and its gain over
``BASELINE_RETRIEVAL``): recursive chunks of 150 tokens, hybrid scoring (0.8 x dense + 0.2 x BM25,
both min-max normalised per query, ``retrieval.lexical.fuse``) and embeddings that mix in two
neighbouring chunks on each side at weight 0.5 (``retrieval.postprocess.with_neighbour_context``),
top 5. It is the default of ``ragpress index``, ``query``, ``ask``, ``eval`` and the demo; changing
it means re-running that benchmark.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

RETRIEVAL_MODES = ("dense", "bm25", "hybrid")
# The chunker registry's names (``retrieval.chunkers.CHUNKERS``; a test keeps the two equal).
CHUNKER_NAMES = ("token", "recursive", "sentence")

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Share = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]


def one_of(choices: Collection[str], what: str) -> AfterValidator:
    """A check for a name that must be one of ``choices`` (a registry's names, known only at run time)."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"unknown {what} '{value}'")
        return value

    return AfterValidator(check)


class ConfigError(ValueError):
    """A configuration value or key was refused; the message is one line naming key, value and fix."""


def _allowed(model: type[BaseModel], key: str, fallback: str) -> str:
    """What ``key`` accepts, from its field description (pydantic's own message otherwise)."""
    field = model.model_fields.get(key) or next(
        (f for f in model.model_fields.values() if isinstance(f.validation_alias, AliasChoices) and key in f.validation_alias.choices), None)
    return field.description if field is not None and field.description else fallback


def validation_line(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line for a refused configuration: each bad key with its value and what it allows.

    Unknown keys list the valid ones; several errors of one key (a union tried member by member)
    are reported once.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"][:1])
        if key in seen:
            continue
        seen.add(key)
        if error["type"] == "extra_forbidden":
            valid = ", ".join(sorted(model.model_fields)) if model is not None else "see the documentation"
            problems.append(f"unknown key '{key}'; valid keys: {valid}")
        elif not key:  # a check across several keys
            problems.append(str(error["msg"]).removeprefix("Value error, "))
        else:
            allowed = _allowed(model, key, str(error["msg"])) if model is not None else str(error["msg"])
            problems.append(f"{key}={error['input']!r} is not allowed; {key} must be {allowed}")
    return "; ".join(problems)


class ConfigModel(BaseModel):
    """A frozen settings model: unknown keys refused, bad values refused in one line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        """Keyword construction (the Python API) refuses bad values in the same one line as ``from_dict``."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_line(exc, type(self))) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a mapping (YAML/JSON/CLI); a refused value raises ``ConfigError`` (one line)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a {cls.__name__} needs a mapping of keys, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(validation_line(exc, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated like any other."""
        return self.from_dict({**self.to_dict(), **changes})


class RetrievalConfig(ConfigModel):
    """How to chunk, embed and retrieve.

    ``retrieval``: ``dense`` (cosine on the embeddings), ``bm25`` (lexical only) or ``hybrid``
    (min-max-normalised dense and BM25 scores mixed with weight ``hybrid_weight`` on dense; the
    weight is ignored, and reset to its default, for the other modes so equal configs compare equal).
    ``context_chunks``: embed each chunk together with this many neighbours on either side while
    still returning only the chunk's own span (small spans, larger semantic context).
    ``merge_adjacent``: after top-k, merge retrieved chunks that overlap or touch into one span.
    ``distinct``: the top k are k different texts; a chunk whose text repeats a better-ranked one
    exactly is collapsed into it (``retrieval.postprocess.first_distinct``).
    """

    chunker: Literal["token", "recursive", "sentence"] = Field("token", description="one of " + ", ".join(CHUNKER_NAMES))
    chunk_size: PositiveInt = Field(200, description="a positive integer (tokens per chunk), e.g. 200")
    overlap: NonNegativeInt = Field(0, description="an integer >= 0 and below chunk_size (tokens), e.g. 0")
    k: PositiveInt | Literal["min"] = Field(5, description="a positive integer (chunks to retrieve), e.g. 5")
    retrieval: Literal["dense", "bm25", "hybrid"] = Field("dense", description="one of " + ", ".join(RETRIEVAL_MODES))
    hybrid_weight: Share = Field(0.5, description="a number in [0, 1] (the weight of dense scores), e.g. 0.8")
    context_chunks: NonNegativeInt = Field(0, description="an integer >= 0 (neighbours on each side), e.g. 2")
    merge_adjacent: bool = Field(False, strict=True, description="true or false")
    chunker_options: dict[str, Any] = Field(default_factory=dict, description="a mapping of chunker options")
    distinct: bool = Field(True, strict=True, description="true or false")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.k == "min" and not self._allows_min_k():
            raise ValueError("k='min' looks at the reference answers and exists only in evaluation; use a positive integer, e.g. k: 5")
        if self.overlap >= self.chunk_size:
            raise ValueError(f"overlap={self.overlap} must be below chunk_size={self.chunk_size}; e.g. overlap: 0")
        if self.retrieval != "hybrid":
            object.__setattr__(self, "hybrid_weight", type(self).model_fields["hybrid_weight"].default)
        return self

    def _allows_min_k(self) -> bool:
        """Only evaluation may size k by the references (``eval.base.EvalConfig``)."""
        return False

    @property
    def fixed_k(self) -> int:
        """``k`` as a number (refused at validation when it is not one)."""
        assert isinstance(self.k, int)
        return self.k

    @property
    def search_weight(self) -> float | None:
        """The ``hybrid_weight`` the search takes: None is plain dense (FAISS) search, 0 BM25 alone."""
        return {"dense": None, "bm25": 0.0}.get(self.retrieval, self.hybrid_weight)

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``token 200/0 k=5 dense``."""
        parts = [f"{self.chunker} {self.chunk_size}/{self.overlap}", f"k={self.k}", self.retrieval]
        if self.retrieval == "hybrid":
            parts[-1] += f"({self.hybrid_weight:g})"
        if self.chunker_options:
            parts[0] += "(" + ",".join(f"{key}={value}" for key, value in sorted(self.chunker_options.items())) + ")"
        if self.context_chunks:
            parts.append(f"ctx±{self.context_chunks}")
        if self.merge_adjacent:
            parts.append("merge")
        if not self.distinct:
            parts.append("with-copies")
        return " ".join(parts)


BASELINE_RETRIEVAL = RetrievalConfig(chunker="token", chunk_size=200, overlap=0, k=5, retrieval="dense")
BEST_RETRIEVAL = RetrievalConfig(
    chunker="recursive", chunk_size=150, overlap=0, k=5, retrieval="hybrid", hybrid_weight=0.8, context_chunks=2
)
BEST_HYBRID_WEIGHT = BEST_RETRIEVAL.search_weight  # what the search takes to serve BEST_RETRIEVAL
