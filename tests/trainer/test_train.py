"""train on the tiny model: LoRA/full reduce loss, resume after a kill, merge, live metrics, summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from tuneloop_trainer.context import load_context
from tuneloop_trainer.stages.prepare import run as prepare
from tuneloop_trainer.stages.train import run as train

from .conftest import free_port, stage_env

pytestmark = pytest.mark.unit

FAST = {"hyperparameters": {"maxSteps": 12, "saveSteps": 100, "learningRate": 1e-2, "evalSteps": 6}}


def _ctx(spec, work):
    ctx = load_context(spec, work)
    prepare(ctx)
    return ctx


def _progress(work):
    return [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_reduces_loss(write_spec, method):
    spec, work = write_spec(method={"type": method}, **FAST)
    summary = train(_ctx(spec, work))
    rows = [r for r in _progress(work) if r["loss"] is not None]
    assert summary["steps"] == 12
    first, last = [r["loss"] for r in rows[:3]], [r["loss"] for r in rows[-3:]]
    assert sum(last) < 0.9 * sum(first), rows
    assert summary["eval_loss"] < first[0] * 0.9
    art = work / "artifact"
    assert (art / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).exists()
    assert (art / "tokenizer.json").exists()
    lineage = json.loads((work / "lineage.json").read_text())
    assert len(lineage["dataset"]["sha256"]) == 64 and lineage["tokens_seen"] > 0
    assert lineage["hyperparameters"]["maxSteps"] == 12 and lineage["world_size"] == 1 and "torch" in lineage["libraries"]


def test_every_batch_layout_gives_the_same_loss_as_padded(write_spec):
    from transformers import AutoModelForCausalLM
    from tuneloop_trainer.modeling import load_tokenizer
    from tuneloop_trainer.training.collate import FlatCollator, PaddedCollator, load_split, sparse_logits_loss

    spec, work = write_spec()
    ctx = _ctx(spec, work)
    tok = load_tokenizer(ctx)
    ds = load_split(work / "data" / "train.jsonl", tok, 256)
    feats = [ds[i] for i in range(4)]
    model = AutoModelForCausalLM.from_pretrained(str(ctx.resolve(ctx.spec.base_model.path)))
    model.config.use_cache = False
    with torch.no_grad():
        flat = model(**FlatCollator(sparse_logits=False)(feats)).loss
        padded = model(**PaddedCollator(tok.pad_token_id)(feats)).loss
        batch = FlatCollator()(feats)
        labels = batch.pop("labels")
        out = model(**batch)
        n_trained = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats)
        assert out.logits.shape[1] == labels.shape[1] - 1 == n_trained  # the LM head ran on trained positions only
        sparse = sparse_logits_loss(out, labels)
        sparse_sum = sparse_logits_loss(out, labels, num_items_in_batch=torch.tensor(n_trained))
        grouped = PaddedCollator(tok.pad_token_id, sparse_logits=True)(feats)
        g_labels = grouped.pop("labels")
        g_out = model(**grouped)
        assert g_out.logits.shape[1] < grouped["input_ids"].shape[1]  # prompt-only positions skipped the LM head
        assert int((g_labels[:, 1:] != -100).sum()) == n_trained
        grouped_loss = sparse_logits_loss(g_out, g_labels, num_items_in_batch=torch.tensor(n_trained))
    assert torch.allclose(grouped_loss, padded, atol=1e-5), (grouped_loss, padded)
    assert torch.allclose(flat, padded, atol=1e-5), (flat, padded)
    assert torch.allclose(sparse, padded, atol=1e-5) and torch.allclose(sparse_sum, padded, atol=1e-5), (sparse, padded)


def test_loss_only_on_assistant_tokens(tiny_model):
    from transformers import AutoTokenizer
    from tuneloop_trainer.dataset.encoding import encode

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rec = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                        {"role": "assistant", "content": "yes"}, {"role": "user", "content": "more"},
                        {"role": "assistant", "content": "no thanks"}]}
    ids, labels = encode(tok, rec)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "yes<|im_end|>\nno thanks<|im_end|>\n"


def test_killed_run_resumes_from_its_checkpoint(write_spec, tmp_path):
    spec, work = write_spec(hyperparameters={"maxSteps": 60, "saveSteps": 5, "evalSteps": 1000})
    prepare(load_context(spec, work))
    env = stage_env(tmp_path)
    cmd = [sys.executable, "-m", "tuneloop_trainer", "train", "--spec", str(spec), "--workdir", str(work)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (work / "checkpoints" / "checkpoint-10" / ".tuneloop-complete").exists():
            assert proc.poll() is None, "training finished before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first_run = _progress(work)
    killed_at = max(r["step"] for r in first_run)
    assert 10 <= killed_at < 60
    # a torn checkpoint (killed mid-save) must be ignored and cleaned up
    torn = work / "checkpoints" / "checkpoint-59"
    torn.mkdir()
    (torn / "trainer_state.json").write_text("{")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((work / "result.json").read_text())
    assert result["steps"] == 60 and result["resumed_from_step"] >= 10
    assert not torn.exists()
    rows = _progress(work)
    assert rows[: len(first_run)] == first_run
    second_run = rows[len(first_run):]
    assert second_run[0]["step"] == result["resumed_from_step"] + 1, "step count must continue from the checkpoint"
    # the termination message Kubernetes reads: valid JSON under 4 KiB
    raw = (tmp_path / "termination-log").read_bytes()
    assert len(raw) < 4096
    term = json.loads(raw)
    assert term["outcome"] == "Succeeded" and term["steps"] == 60 and term["artifact"].endswith("artifact")
    # trainSeconds counts both runs (issue 10), not only the resumed one
    runs = json.loads((work / "train-time.json").read_text())["runs"]
    lineage = json.loads((work / "lineage.json").read_text())
    assert len(runs) == 2 and all(v > 0 for v in runs.values())
    assert lineage["wall_time_seconds"] == pytest.approx(sum(runs.values()), abs=0.5)
    assert lineage["wall_time_seconds"] > max(runs.values())


def test_merged_model_matches_base_plus_adapter(write_spec):
    from tuneloop_trainer.modeling import load_tuned

    spec, work = write_spec(method={"mergeAdapter": True}, hyperparameters={"maxSteps": 4, "learningRate": 1e-2})
    ctx = _ctx(spec, work)
    summary = train(ctx)
    assert summary["merge_check"]["greedy_match"] and summary["merge_check"]["max_logit_diff"] < 1e-3
    assert (work / "artifact" / "merged" / "model.safetensors").exists()
    adapted, tok = load_tuned(ctx)
    merged, _ = load_tuned(ctx, merged=True)
    for q in ("question 1 what is", "hello world", "please reply with json"):
        x = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        a = adapted.generate(**x, max_new_tokens=12, do_sample=False)
        b = merged.generate(**x, max_new_tokens=12, do_sample=False)
        assert torch.equal(a, b)


def test_metrics_are_served_live_while_training(write_spec, monkeypatch):
    port = free_port()
    monkeypatch.setenv("TUNELOOP_METRICS_PORT", str(port))
    spec, work = write_spec(**FAST)
    ctx = _ctx(spec, work)
    scraped: list[str] = []

    def on_progress(row):
        if row["event"] == "log" and row["step"] == 3:
            scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())

    ctx.on_progress = on_progress
    train(ctx)
    assert scraped, "the endpoint was not scraped during training"
    body = scraped[0]
    labels = '{job="tiny",namespace="test"}'
    assert f"tuneloop_trainer_step{labels} 3.0" in body
    assert f"tuneloop_trainer_total_steps{labels} 12.0" in body
    for name in ("epoch", "loss", "learning_rate", "tokens_per_second", "eta_seconds"):
        line = next(x for x in body.splitlines() if x.startswith(f"tuneloop_trainer_{name}{{"))
        assert float(line.split()[-1]) > 0, line
    with pytest.raises(OSError):  # the endpoint is closed after training
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_early_stopping_stops_on_a_plateau(write_spec):
    spec, work = write_spec(hyperparameters={"maxSteps": 40, "evalSteps": 1, "learningRate": 1e-7, "saveSteps": 100,
                                             "earlyStopping": {"patience": 2, "threshold": 0.5}})
    summary = train(_ctx(spec, work))
    assert summary["stopped_early_at"] == 3 and summary["steps"] == 3


def test_qlora_on_cpu_fails_with_a_clear_cause(write_spec, tmp_path):
    spec, work = write_spec(method={"type": "qlora", "quantization": {"bits": 4}}, resources={"gpusPerNode": 1})
    prepare(load_context(spec, work))
    done = subprocess.run([sys.executable, "-m", "tuneloop_trainer", "train", "--spec", str(spec), "--workdir", str(work)],
                          env=stage_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 42
    assert "method qlora needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["outcome"] == "Failed" and summary["reason"] == "InvalidSpec" and "use method lora" in summary["error"]
    assert len((tmp_path / "termination-log").read_bytes()) < 4096


def test_train_without_prepare_is_a_data_error(write_spec):
    from tuneloop_trainer.errors import DataError

    spec, work = write_spec()
    with pytest.raises(DataError) as err:
        train(load_context(spec, work))
    assert "train.jsonl does not exist (run the prepare stage first)" in err.value.one_line()
