"""The lineage facts a ModelVersion records, read from whichever trainer output is at hand.

The trainer writes DIR/lineage.json (snake_case, nested); the publish step sends the same facts
camelCase in its termination message; the train stage's summary has a few of them. `facts()`
reads any of these with one set of spellings, so the operator (termination messages) and the
trainer's report (files) fill the ModelVersion identically.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# fact -> spellings, most specific first ("a.b" is a nested key)
SPELLINGS: dict[str, tuple[str, ...]] = {
    "dataset_sha256": ("datasetSha256", "dataset_sha256", "dataset.sha256"),
    "library_versions": ("libraryVersions", "library_versions", "libraries"),
    "train_seconds": ("trainSeconds", "train_seconds", "wall_time_seconds", "wall_seconds", "seconds"),
    "tokens_seen": ("tokensSeen", "tokens_seen"),
    "world_size": ("worldSize", "world_size"),
    "token_lengths": ("tokenLengths", "token_lengths"),
}


class LineageFacts(BaseModel):
    """What training measured about itself (camelCase on the wire)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    dataset_sha256: str | None = None
    library_versions: dict[str, str] | None = None
    train_seconds: float | None = Field(default=None, ge=0)
    tokens_seen: int | None = Field(default=None, ge=0)
    world_size: int | None = Field(default=None, ge=1)
    token_lengths: dict[str, list[int]] | None = None  # the train split's histograms (api TokenLengths, wire form)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def _get(source: dict[str, Any], spelling: str) -> Any:
    node: Any = source
    for part in spelling.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _valid(fact: str, value: Any) -> Any:
    if fact == "dataset_sha256":
        return value if isinstance(value, str) and value else None
    if fact == "token_lengths":
        return _token_lengths(value)
    if fact == "library_versions":
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if fact == "train_seconds":
        return round(float(value), 1)
    return int(value) if (fact != "world_size" or value >= 1) else None


def _token_lengths(value: Any) -> dict[str, list[int]] | None:
    from tuneloop.api.modelversion import TokenLengths

    if not isinstance(value, dict):
        return None
    try:
        return TokenLengths.model_validate(value).wire()
    except ValueError:
        return None


def facts(*sources: dict[str, Any] | None) -> LineageFacts:
    """Each fact from the first source that has it (in any of its spellings)."""
    out: dict[str, Any] = {}
    for fact, spellings in SPELLINGS.items():
        for source in sources:
            value = next((v for v in (_valid(fact, _get(source or {}, s)) for s in spellings) if v is not None), None)
            if value is not None:
                out[fact] = value
                break
    return LineageFacts(**out)
