"""Lineage: DIR/lineage.json (`LineageFile`) and the facts a ModelVersion records (`LineageFacts`).

One model per document, one spelling per field:

- `LineageFile` is DIR/lineage.json exactly as the train stage has always written it (snake_case, nested:
  `dataset.sha256`, `libraries`, `wall_time_seconds`, ...). The trainer writes it with `LineageFile.write` and
  every reader (the report, the publish step, the ModelVersion manifest) reads it with `LineageFile.read`/`of`;
  `LineageFile.facts()` is the one conversion from the file to the facts. Every lineage.json any trainer version
  wrote has these spellings (git history: the writer's keys have not changed since the train stage was added),
  so reading an older file needs no conversion beyond fields that did not exist yet being None.
- `LineageFacts` is what a ModelVersion's spec.lineage records. Its field name is the fact's one spelling;
  on the Kubernetes wire (the publish step's termination message, status.dataReport, the ModelVersion) it is
  the name's camelCase alias, the API's convention for every field. The stage summaries (prepare's
  `dataset_sha256`/`token_lengths`, train's `world_size`/`train_seconds`) use the name.

Reading is tolerant: a value of the wrong type is not a fact (it is left out, never a failure), so a report is
still written from a damaged file. Names nothing ever wrote (`wall_seconds`, `hardware`/`devices`,
`effective_hyperparameters`, `trainer_image`, lineage `warnings`) are no longer read; the one conversion kept is a
stage summary's `seconds` as the training time when the train stage's summary lost `train_seconds` (`LineageFacts.read`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

__all__ = ["LineageBase", "LineageDataset", "LineageFacts", "LineageFile", "LineageJob", "facts"]

M = TypeVar("M", bound=BaseModel)


def lenient(model: type[M], doc: Mapping[str, Any] | None) -> M:
    """`doc` as `model`, leaving out every value that does not validate (at the deepest mapping key that holds it)."""
    data: dict[str, Any] = json.loads(json.dumps(dict(doc or {}), default=str))
    for _ in range(64):  # each round removes at least one value
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            removed = [_remove(data, err["loc"]) for err in exc.errors()]
            if not any(removed):
                break
    return model()


def _remove(data: dict[str, Any], loc: tuple[int | str, ...]) -> bool:
    node: Any = data
    for i, key in enumerate(loc):
        if not isinstance(node, dict) or key not in node:
            return False
        if i == len(loc) - 1 or not isinstance(node[key], dict):
            del node[key]
            return True
        node = node[key]
    return False


# --- the facts a ModelVersion records ------------------------------------------------------------
class LineageFacts(BaseModel):
    """What training measured about itself (the name in summaries, camelCase on the wire)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    dataset_sha256: str | None = Field(default=None, min_length=1, strict=True)
    library_versions: dict[str, str] | None = None
    train_seconds: float | None = Field(default=None, ge=0, strict=True)
    tokens_seen: int | None = Field(default=None, ge=0, strict=True)
    world_size: int | None = Field(default=None, ge=1, strict=True)
    token_lengths: dict[str, list[int]] | None = None  # the train split's histograms (api TokenLengths, wire form)

    @field_validator("library_versions", mode="before")
    @classmethod
    def _versions_as_text(cls, value: Any) -> Any:
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("train_seconds")
    @classmethod
    def _tenths(cls, value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    @field_validator("token_lengths", mode="before")
    @classmethod
    def _histograms(cls, value: Any) -> Any:
        from tuneloop.api.modelversion import TokenLengths

        return None if value is None else TokenLengths.model_validate(value).wire()

    @classmethod
    def read(cls, doc: Mapping[str, Any] | None) -> LineageFacts:
        """The facts in a summary or a wire document (other keys are ignored; wrong types are left out).

        One conversion: a stage summary's `seconds` (its wall time, contract/results.StageResult) is the training
        time of a summary that has no train_seconds — the train stage's termination message when fitting dropped
        its train_seconds (the operator reads it so)."""
        found = lenient(cls, doc)
        if found.train_seconds is None:
            stage = lenient(_StageTime, doc).seconds
            if stage is not None:
                found = found.model_copy(update={"train_seconds": round(stage, 1)})
        return found

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class _StageTime(BaseModel):
    seconds: float | None = Field(default=None, ge=0, strict=True)


def facts(*sources: LineageFacts | Mapping[str, Any] | None) -> LineageFacts:
    """Each fact from the first source that has it; a source is a `LineageFacts` or a summary/wire document."""
    out: dict[str, Any] = {}
    for source in sources:
        found = source if isinstance(source, LineageFacts) else LineageFacts.read(source)
        for name, value in found:
            if value is not None:
                out.setdefault(name, value)
    return LineageFacts(**out)


# --- DIR/lineage.json ----------------------------------------------------------------------------
class _FileModel(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer writer's fields are kept (and hashed), never an error


class LineageJob(_FileModel):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None


class LineageDataset(_FileModel):
    sha256: str | None = None
    format: str | None = None
    counts: dict[str, Any] | None = None  # the data report's counts
    files: list[dict[str, Any]] | None = None  # [{file, sha256}]


class LineageBase(_FileModel):
    source: str | None = None  # where the base model was loaded from (ModelLocation.display)
    revision: str | None = None


class LineageFile(_FileModel):
    """DIR/lineage.json (written by the train stage's rank 0 after the artifact is saved)."""

    job: LineageJob | None = None
    dataset: LineageDataset | None = None
    base_model: LineageBase | None = None
    method: dict[str, Any] | None = None  # spec.method, wire form
    hyperparameters: dict[str, Any] | None = None  # spec.hyperparameters, wire form
    deepspeed: dict[str, Any] | None = None
    libraries: dict[str, str] | None = None  # package -> version
    python: str | None = None
    finished_at: str | None = None  # %Y-%m-%dT%H:%M:%SZ
    world_size: int | None = None
    wall_time_seconds: float | None = None  # training time, summed over resumed runs
    tokens_seen: int | None = None
    steps: int | None = None
    resumed_from_step: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    batch_layout: str | None = None

    @field_validator("libraries", mode="before")
    @classmethod
    def _versions_as_text(cls, value: Any) -> Any:
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value

    @classmethod
    def of(cls, doc: LineageFile | Mapping[str, Any] | None) -> LineageFile:
        """`doc` as the model (a parsed lineage.json, or the model itself)."""
        return doc if isinstance(doc, LineageFile) else lenient(cls, doc)

    @classmethod
    def read(cls, path: str | Path) -> LineageFile:
        """DIR/lineage.json; an unreadable file reads as an empty lineage."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return cls()
        return cls.of(doc if isinstance(doc, dict) else None)

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        out.write_text(json.dumps(self.model_dump(mode="json"), indent=2, default=str))
        return out

    def doc(self) -> dict[str, Any]:
        """The document as read (fields absent from it stay absent)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def facts(self) -> LineageFacts:
        """The ModelVersion facts this file holds (the one conversion from the file's names to the facts)."""
        return LineageFacts.read({
            "dataset_sha256": self.dataset.sha256 if self.dataset else None,
            "library_versions": self.libraries,
            "train_seconds": self.wall_time_seconds,
            "tokens_seen": self.tokens_seen,
            "world_size": self.world_size,
        })
