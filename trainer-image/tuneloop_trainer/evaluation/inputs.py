"""Inputs of the evaluate stage: the held-out test split and the forgetting set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError
from ..settings import TrainerSettings

if TYPE_CHECKING:
    from ..context import StageContext

DEFAULT_FORGETTING_SET = "forgetting.jsonl"


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{what} {path}:{n}: not valid JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{what} {path}:{n}: expected a JSON object")
        out.append(rec)
    return out


def load_test_split(data_dir: Path, max_samples: int | None, split: str = "test") -> list[dict[str, Any]]:
    """DIR/data/<split>.jsonl as written by prepare (chat records end with the reference assistant turn): the test
    split, or the validation split for a FineTuneSweep's trials (evaluation.split)."""
    if split not in ("test", "validation"):
        raise ConfigError(f"evaluation.split {split!r} is neither test nor validation")
    path = data_dir / f"{split}.jsonl"
    if not path.exists():
        raise ConfigError(f"no {split} split at {path}",
                          hint=f"run the prepare stage first, with split.{split} > 0 or dataset.{split} set")
    records = read_jsonl(path, f"{split} split")
    if not records:
        raise DataError(f"the {split} split {path} is empty", hint=f"raise dataset.split.{split} or give dataset.{split}")
    for n, rec in enumerate(records, 1):
        msgs = rec.get("messages")
        if msgs is not None and (not msgs or msgs[-1].get("role") != "assistant"):
            raise DataError(f"{split} split {path}:{n}: the last message must be the assistant's reference answer")
        if msgs is None and not isinstance(rec.get("text"), str):
            raise DataError(f"{split} split {path}:{n}: neither messages nor text")
    return records[:max_samples] if max_samples else records


def load_forgetting_set(path: Path | None) -> tuple[list[dict[str, Any]], str]:
    """The forgetting set ({prompt, answers[, caseSensitive]} per line) and where it came from."""
    if path is None:
        source = resources.files("tuneloop_trainer") / "data" / DEFAULT_FORGETTING_SET
        path, label = Path(str(source)), f"tuneloop_trainer/data/{DEFAULT_FORGETTING_SET}"
    else:
        label = str(path)
    items = read_jsonl(path, "forgetting set")
    for n, item in enumerate(items, 1):
        answers = item.get("answers")
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise DataError(f"forgetting set {path}:{n}: 'prompt' must be a non-empty string")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
            raise DataError(f"forgetting set {path}:{n}: 'answers' must be a non-empty list of strings")
        item.setdefault("id", f"item{n}")
    if not items:
        raise DataError(f"forgetting set {path} is empty")
    return items, label


def load_train_answers(data_dir: Path) -> list[str]:
    """The reference answers of DIR/data/train.jsonl (the last assistant turn of each chat record, or a
    text record's completion): what the majority baseline is built from. Empty when there is no train split."""
    path = data_dir / "train.jsonl"
    if not path.exists():
        return []
    out = []
    for rec in read_jsonl(path, "train split"):
        msgs = rec.get("messages")
        if msgs and msgs[-1].get("role") == "assistant":
            out.append(str(msgs[-1].get("content", "")))
        elif isinstance(rec.get("completion"), str):
            out.append(rec["completion"])
    return out


FINGERPRINT_VERSION = 1  # bump when what the evaluation computes changes for the same inputs


def _hash_file(h: Any, path: Path, label: str) -> None:
    h.update(label.encode() + b"\0")
    if not path.is_file():
        h.update(b"<absent>\0")
        return
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(b"\0")


def exports_fingerprint(ctx: StageContext, env: Mapping[str, str] | None = None) -> str:
    """sha256 of what the export stage's result depends on: the evaluation's inputs (`evaluation_fingerprint`) and
    output.exports."""
    import hashlib

    exports = [e.wire() for e in ctx.spec.output.exports or []]
    return hashlib.sha256((evaluation_fingerprint(ctx, env) + json.dumps(exports, sort_keys=True, default=str)).encode()).hexdigest()


def evaluation_fingerprint(ctx: StageContext, env: Mapping[str, str] | None = None) -> str:
    """sha256 of everything the evaluate stage's result depends on: the spec after command-line overrides (the
    weights' settings and every evaluation setting, gates included; `registry` excluded), the prepared test and train
    splits, the trained artifact's files, the forgetting set, the serving version's eval.json, the backend asked for
    (TUNELOOP_EVAL_BACKEND, TUNELOOP_VLLM_ARGS) and tuneloop's version. Equal fingerprints: rerunning the evaluation would compute the same."""
    import hashlib
    import importlib.metadata

    settings = TrainerSettings.from_env(env)  # (None: this process's environment)
    spec = ctx.spec
    wire = spec.wire() if hasattr(spec, "wire") else dict(spec)
    h = hashlib.sha256()
    try:
        version = importlib.metadata.version("tuneloop")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    head = {k: v for k, v in wire.items() if k != "registry"}
    if isinstance(head.get("output"), dict):  # the exports come after the evaluation: they never change its result
        head["output"] = {k: v for k, v in head["output"].items() if k != "exports"}
    h.update(json.dumps({"v": FINGERPRINT_VERSION, "spec": head, "tuneloop": version,
                         "backend": (settings.eval_backend or (head.get("evaluation") or {}).get("backend") or "auto").strip().lower(),
                         "vllmArgs": settings.vllm_args.strip()},
                        sort_keys=True, default=str).encode())
    for name in (f"{getattr(spec.evaluation, 'split', 'test')}.jsonl", "train.jsonl"):
        _hash_file(h, Path(ctx.data_dir) / name, f"data/{name}")
    art = Path(ctx.artifact_dir)
    for p in sorted(q for q in art.rglob("*") if q.is_file()) if art.is_dir() else []:
        _hash_file(h, p, f"artifact/{p.relative_to(art)}")
    ev = spec.evaluation
    if ev.forgetting.enabled:
        if ev.forgetting.path:
            _hash_file(h, Path(ctx.resolve(ev.forgetting.path)), "forgetting")
        else:
            _hash_file(h, Path(str(resources.files("tuneloop_trainer") / "data" / DEFAULT_FORGETTING_SET)), "forgetting")
    serving = getattr(ev, "serving", None)
    if serving is not None:
        _hash_file(h, Path(ctx.resolve(serving.eval_json)), "serving")
    return h.hexdigest()
