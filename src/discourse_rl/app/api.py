"""The web API's request and response shapes (pydantic): `serve` validates with them and
publishes them in its OpenAPI document (`GET /api/openapi.json`).

Every labels response carries `schema_version` (`labeller.SCHEMA_VERSION`), as does every line of
`predict --format jsonl` and of the page's jsonl downloads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ElementType = Literal[
    "Lead", "Position", "Claim", "Counterclaim", "Rebuttal", "Evidence", "Concluding Statement"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ElementModel(_Model):
    """One discourse element, as the model labelled it (the jsonl schema)."""

    type: ElementType
    word_start: int = Field(ge=0, description="first word, over text.split()")
    word_end: int = Field(ge=0, description="one past the last word (half-open)")
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0, description="text[char_start:char_end] == element text")
    text: str
    confidence: float = Field(ge=0, le=1, description="mean over its words of P(type)")


class CorrectedElement(_Model):
    """An element after the teacher's review: the model's, retyped, or one the teacher marked."""

    type: ElementType
    word_start: int = Field(ge=0)
    word_end: int = Field(ge=0)
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0)
    text: str
    confidence: float | None = Field(
        default=None, ge=0, le=1, description="the model's; null for an element the teacher marked"
    )
    changed: Literal["type", "added"] | None = Field(
        default=None, description="'type': the teacher changed its type; 'added': marked by hand"
    )
    model_type: ElementType | None = Field(default=None, description="the model's type if changed")


class SummaryModel(_Model):
    counts: dict[str, int] = Field(description="elements per type, zeros included")
    missing: list[str] = Field(description="plain sentences: types not found, unsupported claims")
    not_found: list[str] = Field(description="the types with no element in the essay")
    unsure: list[int] = Field(description="indices of elements the model is unsure of")
    reliability: dict[str, str] = Field(description="per type: reliable, fair, a guess, unknown")


class LabelRequest(_Model):
    text: str = Field(description="the essay, plain text")


class LabelResponse(_Model):
    schema_version: int
    stage: str
    n_words: int
    elements: list[ElementModel]
    summary: SummaryModel


class EssayIn(_Model):
    name: str = Field(max_length=300)
    text: str


class BatchRequest(_Model):
    """Either `essays`, or `text` holding several essays split by lines equal to `separator`."""

    essays: list[EssayIn] | None = None
    text: str | None = None
    separator: str = Field(default="===", min_length=1, max_length=100)


class BatchEssay(_Model):
    name: str
    text: str
    n_words: int
    elements: list[ElementModel]
    summary: SummaryModel


class BatchResponse(_Model):
    schema_version: int
    stage: str
    essays: list[BatchEssay]


class SummaryRequest(_Model):
    elements: list[CorrectedElement]


class Skipped(_Model):
    name: str
    reason: str


class UnpackResponse(_Model):
    essays: list[EssayIn]
    skipped: list[Skipped]


class DocxResponse(_Model):
    text: str


class HealthResponse(_Model):
    status: str
    stage: str


class ErrorResponse(_Model):
    error: str = Field(description="one line saying what is wrong")


class ClassSetEssay(_Model):
    name: str = Field(max_length=300)
    text: str
    elements: list[ElementModel] = Field(description="the model's labels")
    corrected: list[CorrectedElement] | None = Field(
        default=None, description="the teacher's corrected labels; null if not reviewed"
    )


class ClassSetIn(_Model):
    schema_version: int = 1
    name: str = Field(min_length=1, max_length=200)
    stage: str
    essays: list[ClassSetEssay] = Field(min_length=1)


class ClassSet(ClassSetIn):
    id: int
    saved_at: float = Field(description="seconds since the epoch")


class ClassSetEntry(_Model):
    id: int
    name: str
    saved_at: float
    stage: str
    n_essays: int
    n_corrected: int


class ClassSetList(_Model):
    class_sets: list[ClassSetEntry]
    where: str = Field(description="where the sets are stored, in words")


class Deleted(_Model):
    deleted: int


class StageScoresModel(_Model):
    macro_f1: float | None
    per_type: dict[str, float]
    source: str
    recall: dict[str, float]
    recall_source: str


class InfoResponse(_Model):
    version: str
    schema_version: int
    stage: str
    stages: list[str]
    scores: dict[str, StageScoresModel]
    colours: dict[str, str]
    definitions: dict[str, str]
    thresholds: dict[str, float]
    limits: dict[str, int]
    max_essay_bytes: int
    licence: str
    privacy: str
    token_required: bool
    store: bool = Field(description="whether class sets can be saved on this server")
