"""Stage `prepare`: read → validate every record → dedupe → split (seeded, leak-free) → report.

Writes DIR/data/{train,validation,test}.jsonl and DIR/data/data_report.{json,txt}. Every rejected
record is listed with file, line and reason; the stage fails (DataError, exit 42, never retried)
when fewer than checks.minExamples training records remain or more than
checks.maxRejectedFraction of the records were rejected — before any GPU is requested.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.contract.tokenlengths import token_lengths

from ..dataset import dataio
from ..dataset.records import Rejected, dedupe_key, normalize, prompt_key
from ..dataset.splitting import split_groups
from ..dataset.statistics import length_stats, write_text_report
from ..errors import DataError

if TYPE_CHECKING:
    from ..context import StageContext

SPLITS = ("train", "validation", "test")


class _Collector:
    """Accepted records per split source, rejections, and duplicate/leak bookkeeping."""

    def __init__(self, ctx: StageContext, tok: Any, max_len: int):
        self.ctx, self.tok, self.max_len = ctx, tok, max_len
        self.fmt = ctx.spec.dataset.format
        self.dedupe = ctx.spec.dataset.checks.dedupe
        self.accepted: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self.rejected: list[dict[str, Any]] = []
        self.seen: dict[str, str] = {}
        self.seen_exact: set[str] = set()  # exact keys too, so a normalized dedupe can say "exact duplicate" when it is one
        self.read = 0
        self.read_by: dict[str, int] = {s: 0 for s in SPLITS}  # per source: a separate test file's records are not train's
        self.blank = 0

    def reject(self, raw: dataio.RawRecord, source: str, rule: str, reason: str) -> None:
        self.rejected.append({"source": source, "file": raw.file, "line": raw.line, "rule": rule, "reason": reason})

    def add(self, raw: dataio.RawRecord, source: str) -> None:
        from ..dataset.encoding import EncodingError, count_tokens

        if raw.error == "blank":
            self.blank += 1
            return
        self.read += 1
        self.read_by[source] += 1
        if raw.error:
            self.reject(raw, source, "parse", raw.error)
            return
        try:
            rec = normalize(raw.value, self.fmt)
        except Rejected as r:
            self.reject(raw, source, r.rule, r.reason)
            return
        try:
            n_tokens, n_trained = count_tokens(self.tok, rec)
        except EncodingError as exc:
            raise DataError(str(exc)) from None
        if n_tokens > self.max_len:
            self.reject(raw, source, "too_long", f"{n_tokens} tokens with the chat template > maxSeqLength {self.max_len}")
            return
        if n_trained == 0:
            self.reject(raw, source, "empty", "no assistant tokens to train on")
            return
        if self.dedupe != "none":
            key = dedupe_key(rec, self.dedupe)
            exact = key if self.dedupe == "exact" else dedupe_key(rec, "exact")
            if key in self.seen:
                kind = "exact duplicate" if exact in self.seen_exact else "normalized duplicate (same text up to case and whitespace)"
                self.reject(raw, source, "duplicate", f"{kind} of {self.seen[key]}")
                return
            self.seen[key] = f"{raw.file}:{raw.line}"
            self.seen_exact.add(exact)
        rec.update(source_file=raw.file, source_line=raw.line, num_tokens=n_tokens, num_trained=n_trained)
        self.accepted[source].append(rec)


def _sources(ctx: StageContext) -> dict[str, list[Path]]:
    ds = ctx.spec.dataset
    out = {}
    for name in SPLITS:
        src = getattr(ds, name)
        if src is None:
            continue
        field = f"spec.dataset.{name}"
        out[name] = dataio.list_files(dataio.resolve_source(ctx, src, field), ds.file_type, field)
    return out


def _leakage(col: _Collector) -> None:
    """Separate validation/test sources: reject their records whose prompt is in train (or val for test)."""
    for split, earlier in (("validation", ("train",)), ("test", ("train", "validation"))):
        if not col.accepted[split]:
            continue
        known: dict[str, tuple[str, str]] = {}
        for s in earlier:
            for r in col.accepted[s]:
                known.setdefault(prompt_key(r), (s, f"{r['source_file']}:{r['source_line']}"))
        keep = []
        for r in col.accepted[split]:
            hit = known.get(prompt_key(r))
            if hit:
                col.rejected.append({"source": split, "file": r["source_file"], "line": r["source_line"], "rule": "leakage",
                                     "reason": f"same prompt as {hit[0]} record {hit[1]}"})
            else:
                keep.append(r)
        col.accepted[split] = keep


def run(ctx: StageContext) -> dict[str, Any]:
    from ..modeling import load_tokenizer, locate

    spec = ctx.spec
    ds = spec.dataset
    max_len = ds.checks.max_seq_length or spec.hyperparameters.max_seq_length
    sources = _sources(ctx)  # missing data fails before the tokenizer is loaded
    all_files = [f for files in sources.values() for f in files]
    sha, per_file = dataio.sha256_files(all_files)
    tok = load_tokenizer(ctx)
    col = _Collector(ctx, tok, max_len)
    for name, files in sources.items():
        for f in files:
            for raw in dataio.read_file(f, dataio.file_type_of(f, ds.file_type)):
                col.add(raw, name)

    _leakage(col)
    val_frac, test_frac, splits = _split(ds, col)

    data_dir = ctx.data_dir
    _write_splits(data_dir, splits)

    by_rule: dict[str, int] = dict(Counter(r["rule"] for r in col.rejected))  # in the order first rejected
    frac = len(col.rejected) / col.read if col.read else 0.0
    report = {
        "dataset_sha256": sha,
        "files": [{"file": f, "sha256": h} for f, h in per_file.items()],
        "format": ds.format,
        "tokenizer": locate(ctx).display,
        "max_seq_length": max_len,
        "dedupe": ds.checks.dedupe,
        "split": {"validation": val_frac, "test": test_frac, "seed": ds.split.seed,
                  "separate_sources": [s for s in ("validation", "test") if getattr(ds, s)]},
        "counts": {"read": col.read, "read_by_source": {k: v for k, v in col.read_by.items() if k in sources},
                   "accepted": col.read - len(col.rejected), "rejected": len(col.rejected),
                   "blank_lines": col.blank, **{s: len(v) for s, v in splits.items()}},
        "rejected_fraction": round(frac, 6),
        "rejected_by_rule": by_rule,
        "lengths": {s: length_stats([r["num_tokens"] for r in v]) for s, v in splits.items()},
        # prompt = the chat-templated record minus the tokens trained on; generation = the assistant tokens trained on
        "token_lengths": token_lengths([r["num_tokens"] - r["num_trained"] for r in splits["train"]],
                                       [r["num_trained"] for r in splits["train"]], max_len),
        "rejected": col.rejected,
    }
    failure = _failure(ds, col, sources, len(splits["train"]), frac, by_rule)
    report["outcome"] = "Failed" if failure else "Succeeded"
    if failure:
        report["error"] = failure
    (data_dir / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    write_text_report(data_dir / "data_report.txt", report)
    if failure:
        raise DataError(failure, hint=f"see {data_dir / 'data_report.txt'}")
    return {
        "dataset_sha256": sha,
        "counts": report["counts"],
        "rejected_by_rule": by_rule,
        "token_lengths": report["token_lengths"],
        "data_report": str(data_dir / "data_report.json"),
    }


def _split(ds: Any, col: _Collector) -> tuple[float, float, dict[str, list[dict[str, Any]]]]:
    """(validation fraction, test fraction, records per split): separate sources as they are, else split from train
    by prompt groups (leak-free)."""
    val_frac = 0.0 if ds.validation else ds.split.validation
    test_frac = 0.0 if ds.test else ds.split.test
    parts = split_groups(col.accepted["train"], prompt_key, val_frac, test_frac, ds.split.seed)
    splits = {"train": parts["train"],
              "validation": col.accepted["validation"] if ds.validation else parts["validation"],
              "test": col.accepted["test"] if ds.test else parts["test"]}
    return val_frac, test_frac, splits


def _write_splits(data_dir: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        with (data_dir / f"{name}.jsonl").open("w") as fh:
            for r in recs:
                fh.write(json.dumps({k: v for k, v in r.items() if k not in ("num_tokens", "num_trained")}, ensure_ascii=False) + "\n")


def _failure(ds: Any, col: _Collector, sources: dict[str, list[Path]], train_records: int, frac: float,
             by_rule: dict[str, int]) -> str | None:
    """Why the prepared data cannot be trained on (no train records, too many rejected, too few left), or None."""
    if col.read_by["train"] == 0:
        names = ", ".join(str(f) for f in sources.get("train", [])) or "spec.dataset.train"
        return f"the train data holds no records: {names}" + (" (empty file)" if all(f.stat().st_size == 0 for f in sources.get("train", [])) else "")
    if frac > ds.checks.max_rejected_fraction:
        top = ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items(), key=lambda kv: -kv[1]))
        return (f"{len(col.rejected)} of {col.read} records rejected ({frac:.1%} > maxRejectedFraction "
                f"{ds.checks.max_rejected_fraction:.1%}): {top}; first: {_first(col.rejected)}")
    if train_records < ds.checks.min_examples:
        return f"only {train_records} training records remain after validation and split (< minExamples {ds.checks.min_examples})"
    return None


def _first(rejected: list[dict[str, Any]]) -> str:
    r = rejected[0]
    return f"{Path(r['file']).name}:{r['line']} {r['reason']}"
