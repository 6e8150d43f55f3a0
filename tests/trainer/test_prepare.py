"""prepare: every rule rejects its record with file, line and reason; formats; split; failures."""

from __future__ import annotations

import json

import pytest
from tuneloop_trainer.context import load_context
from tuneloop_trainer.errors import DataError
from tuneloop_trainer.stages.prepare import run as prepare
from tuneloop_trainer.testing import chat_records, write_jsonl

pytestmark = pytest.mark.unit


def _run(spec_path, workdir):
    ctx = load_context(spec_path, workdir)
    return ctx, prepare(ctx)


def _report(workdir):
    return json.loads((workdir / "data" / "data_report.json").read_text())


def _split(workdir, name):
    return [json.loads(x) for x in (workdir / "data" / f"{name}.jsonl").read_text().splitlines()]


LONG = " ".join(["kubernetes"] * 400)

# (bad record or raw line, rule, words the reason must contain)
BAD = [
    ("{not json", "parse", "invalid JSON"),
    ('["a list"]', "schema", "JSON object"),
    ({"prompt": "x"}, "schema", "missing field(s) messages"),
    ({"messages": []}, "schema", "non-empty list"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}, "schema", "must be a string"),
    ({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "a"}]}, "role", "'bot'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "role", "end with an assistant"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "role", "expected user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]},
     "role", "alternate"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "c"}]},
     "role", "only the first message may be system"),
    ({"messages": [{"role": "user", "content": "  \n"}, {"role": "assistant", "content": "a"}]}, "empty", "empty or whitespace"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "empty", "empty or whitespace"),
    ({"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "a"}]}, "too_long", "> maxSeqLength 256"),
    ("DUP_EXACT", "duplicate", "exact duplicate of"),
    ("DUP_NORMALIZED", "duplicate", "normalized duplicate (same text up to case and whitespace) of"),
]


def test_every_rule_rejects_its_record_with_line_and_reason(write_spec, tmp_path):
    good = chat_records(40)
    records = list(good)
    for bad, _, _ in BAD:
        if bad == "DUP_EXACT":
            bad = good[3]
        elif bad == "DUP_NORMALIZED":
            m = good[5]["messages"]
            bad = {"messages": [{"role": r["role"], "content": "  " + r["content"].upper().replace(" ", "\t ") + " "} for r in m]}
        records.append(bad)
    spec, work = write_spec(records, dataset={"checks": {"maxRejectedFraction": 0.5}})
    _, summary = _run(spec, work)
    report = _report(work)
    rejected = {r["line"]: r for r in report["rejected"]}
    assert len(rejected) == len(BAD)
    for i, (_, rule, words) in enumerate(BAD):
        line = 41 + i
        assert line in rejected, f"record on line {line} ({rule}) was not rejected"
        assert rejected[line]["rule"] == rule, rejected[line]
        assert words in rejected[line]["reason"], rejected[line]
        assert rejected[line]["file"].endswith("train.jsonl")
    assert report["counts"]["accepted"] == 40 and summary["counts"]["rejected"] == len(BAD)
    text = (work / "data" / "data_report.txt").read_text()
    assert "train.jsonl:41  [parse]" in text and "rejected by rule" in text
    # nothing dropped silently: every line is accepted into a split or listed as rejected
    kept = sum(len(_split(work, s)) for s in ("train", "validation", "test"))
    assert kept + len(report["rejected"]) == len(records)


def test_exact_dedupe_keeps_case_variants(write_spec):
    recs = chat_records(20)
    variant = {"messages": [{**m, "content": m["content"].upper()} for m in recs[0]["messages"]]}
    spec, work = write_spec(recs + [recs[1], variant], dataset={"checks": {"dedupe": "exact", "maxRejectedFraction": 0.5}})
    _run(spec, work)
    rep = _report(work)
    assert [r["line"] for r in rep["rejected"]] == [21]
    assert "exact duplicate of" in rep["rejected"][0]["reason"] and rep["rejected"][0]["reason"].endswith("train.jsonl:2")


def test_split_is_deterministic_for_a_seed_and_leak_free(write_spec, tmp_path):
    recs = chat_records(60)
    # the same prompt with different answers must land in one split only
    for k in range(10):
        recs.append({"messages": [{"role": "user", "content": f"shared prompt {k % 3}"}, {"role": "assistant", "content": f"answer {k}"}]})
    spec, work = write_spec(recs, dataset={"split": {"validation": 0.2, "test": 0.2, "seed": 7}})
    _run(spec, work)
    first = {s: _split(work, s) for s in ("train", "validation", "test")}
    assert len(first["validation"]) >= 12 and len(first["test"]) >= 12
    _run(spec, work)
    assert {s: _split(work, s) for s in first} == first
    prompts = {s: {json.dumps(r["messages"][:-1]) for r in recs_} for s, recs_ in first.items()}
    assert not prompts["train"] & prompts["validation"] and not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    spec2, work2 = write_spec(recs, dataset={"split": {"validation": 0.2, "test": 0.2, "seed": 8}})
    _run(spec2, work2)
    assert _split(work2, "test") != first["test"]


def test_separate_test_source_rejects_leaked_prompts(write_spec, tmp_path):
    train = chat_records(30)
    test = chat_records(35, seed=5)[30:] + [{"messages": [train[2]["messages"][0], {"role": "assistant", "content": "other"}]}]
    test_file = write_jsonl(tmp_path / "test.jsonl", test)
    spec, work = write_spec(train, dataset={"test": {"path": str(test_file)}, "checks": {"maxRejectedFraction": 0.5}})
    _run(spec, work)
    rep = _report(work)
    leaks = [r for r in rep["rejected"] if r["rule"] == "leakage"]
    assert len(leaks) == 1 and leaks[0]["line"] == 6 and leaks[0]["file"].endswith("test.jsonl")
    assert "same prompt as train record" in leaks[0]["reason"] and leaks[0]["reason"].endswith("train.jsonl:3")
    assert len(_split(work, "test")) == 5 and rep["split"]["test"] == 0.0


@pytest.mark.parametrize("fmt,record,bad,reason", [
    ("prompt-completion", {"prompt": "what is {i}", "completion": "it is {i}"}, {"prompt": "x"}, "missing field(s) completion"),
    ("instruction", {"instruction": "say {i}", "input": "ctx", "output": "said {i}"}, {"instruction": "x", "output": " "}, "output is empty"),
    ("text", {"text": "the story number {i} of the cat"}, {"text": ["x"]}, "text must be a string"),
])
def test_formats_normalize_to_chat_or_text(write_spec, fmt, record, bad, reason):
    recs = [{k: v.format(i=i) for k, v in record.items()} for i in range(20)] + [bad]
    spec, work = write_spec(recs, dataset={"format": fmt, "checks": {"maxRejectedFraction": 0.2}})
    _run(spec, work)
    rep = _report(work)
    assert rep["rejected"][0]["line"] == 21 and reason in rep["rejected"][0]["reason"]
    out = _split(work, "train")[0]
    if fmt == "text":
        assert out["text"].startswith("the story")
    else:
        assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
        if fmt == "instruction":
            assert out["messages"][0]["content"].endswith("\n\nctx")
    assert "source_line" in out


def test_json_array_parquet_and_directory(write_spec, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = chat_records(30)
    d = tmp_path / "ds"
    d.mkdir()
    (d / "a.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in recs[:10] + [{"messages": []}]) + "\n]\n")
    pq.write_table(pa.Table.from_pylist(recs[10:] + [{"messages": [{"role": "user", "content": "only"}]}]), d / "b.parquet")
    (d / "notes.txt").write_text("ignored: not a data file")
    spec, work = write_spec(data_file=d, dataset={"checks": {"maxRejectedFraction": 0.2}})
    _, summary = _run(spec, work)
    rep = _report(work)
    by_file = {r["file"].rsplit("/", 1)[1]: r for r in rep["rejected"]}
    assert by_file["a.json"]["line"] == 12  # the 11th element starts on line 12 of the array file
    assert by_file["b.parquet"]["line"] == 21 and by_file["b.parquet"]["rule"] == "role"
    assert summary["counts"]["accepted"] == 30 and len(rep["files"]) == 2
    assert len(summary["dataset_sha256"]) == 64


def test_sha256_changes_with_the_data(write_spec):
    spec, work = write_spec(chat_records(20))
    _, a = _run(spec, work)
    _, b = _run(spec, work)
    spec2, work2 = write_spec(chat_records(21))
    _, c = _run(spec2, work2)
    assert a["dataset_sha256"] == b["dataset_sha256"] != c["dataset_sha256"]


def test_fails_fast_when_too_many_rejected(write_spec):
    recs = chat_records(20) + [{"messages": [{"role": "user", "content": "x"}]}] * 5
    spec, work = write_spec(recs)  # default maxRejectedFraction 0.1
    with pytest.raises(DataError) as err:
        _run(spec, work)
    assert "5 of 25 records rejected (20.0% > maxRejectedFraction 10.0%)" in str(err.value)
    assert "train.jsonl:21" in str(err.value) and err.value.exit_code == 42
    assert _report(work)["outcome"] == "Failed"


def test_fails_fast_below_min_examples(write_spec):
    spec, work = write_spec(chat_records(8), dataset={"checks": {"minExamples": 10}})
    with pytest.raises(DataError, match=r"only 6 training records remain .*minExamples 10"):
        _run(spec, work)


def test_missing_dataset_and_unsupported_type(write_spec, tmp_path):
    spec, work = write_spec(data_file=tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        _run(spec, work)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    spec, work = write_spec(data_file=csv)
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        _run(spec, work)


def test_token_length_histograms_in_vllm_buckets(write_spec, tmp_path):
    """The train split's prompt and generation lengths, counted in vLLM's request_*_tokens buckets."""
    from tuneloop.contract.tokenlengths import vllm_buckets

    spec_path, wd = write_spec(chat_records(40))
    ctx, summary = _run(spec_path, wd)
    rep = _report(wd)
    hist = rep["token_lengths"]
    assert hist["le"] == vllm_buckets(rep["max_seq_length"]) and hist["le"][:4] == [1, 2, 5, 10]
    n = rep["counts"]["train"]
    assert sum(hist["prompt"]) == n and sum(hist["generation"]) == n
    assert summary["token_lengths"] == hist  # in the termination message, for the ModelVersion
    assert "num_trained" not in _split(wd, "train")[0]
    assert "train token lengths in vLLM's buckets" in (wd / "data" / "data_report.txt").read_text()
