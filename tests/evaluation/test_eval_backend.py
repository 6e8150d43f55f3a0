"""The evaluate stage's backend choice (vLLM or transformers) and the vLLM server's life cycle, without vLLM.

The server is `tests/support/fake_vllm.py` behind a fake Python: it answers like vLLM's OpenAI server, or dies
during start-up, or hangs — what the backend must survive.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.cli.main import main as cli
from tuneloop_trainer.evaluation import vllm_backend as vb
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

from tests.support.fake_vllm import write_fake_python

pytestmark = pytest.mark.unit


# ---- which backend (pure) -------------------------------------------------------------------------------------------

def test_requested_backend_defaults_to_auto_and_rejects_unknown_values():
    assert vb.requested_backend({}) == "auto"
    assert vb.requested_backend({vb.BACKEND_ENV: ""}) == "auto"
    assert vb.requested_backend({vb.BACKEND_ENV: " VLLM "}) == "vllm"
    assert vb.requested_backend({vb.BACKEND_ENV: "Transformers"}) == "transformers"
    with pytest.raises(ValueError, match="expected one of auto, vllm, transformers"):
        vb.requested_backend({vb.BACKEND_ENV: "tgi"})


def test_the_specs_evaluation_backend_applies_unless_the_environment_overrides_it():
    assert vb.requested_backend({}, "transformers") == "transformers"
    assert vb.requested_backend({vb.BACKEND_ENV: ""}, "vllm") == "vllm"
    assert vb.requested_backend({vb.BACKEND_ENV: "transformers"}, "vllm") == "transformers"  # the environment wins
    from pydantic import ValidationError
    from tuneloop.api.evaluation import EvaluationSpec

    assert EvaluationSpec().backend == "auto"
    with pytest.raises(ValidationError):
        EvaluationSpec.model_validate({"backend": "tgi"})


def test_lookup_order_explicit_python_then_cwd_venv_then_repo_venv(tmp_path):
    cwd, root = tmp_path / "cwd", tmp_path / "repo"
    assert vb.candidates({}, cwd, root) == [(str(cwd / ".venv-vllm/bin/python"), "./.venv-vllm"),
                                            (str(root / ".venv-vllm/bin/python"), f"{root}/.venv-vllm")]
    assert vb.candidates({}, root, root) == [(str(root / ".venv-vllm/bin/python"), "./.venv-vllm")]  # the same path once
    assert vb.candidates({vb.PYTHON_ENV: "/opt/v/bin/python"}, cwd, root) == [("/opt/v/bin/python", "$TUNELOOP_VLLM_PYTHON")]


def test_find_interpreter_takes_the_first_that_imports_vllm_and_says_why_others_were_passed_over(tmp_path):
    cwd, root = tmp_path / "cwd", tmp_path / "repo"
    good = {str(root / ".venv-vllm/bin/python"): "0.32.0", "/usr/bin/python3": "0.31.0"}

    def prober(python):
        return (good[python], "") if python in good else (None, f"{python} cannot import vllm")

    found, notes = vb.find_interpreter({}, cwd, root, prober=prober, current="/usr/bin/python3")
    assert found == vb.Interpreter(str(root / ".venv-vllm/bin/python"), f"{root}/.venv-vllm", "0.32.0")
    assert notes == [f"./.venv-vllm: {cwd}/.venv-vllm/bin/python cannot import vllm"]
    # neither venv: the current interpreter (the official vLLM image)
    found, notes = vb.find_interpreter({}, tmp_path / "a", tmp_path / "b", prober=prober, current="/usr/bin/python3")
    assert found is not None and found.source == "this interpreter" and len(notes) == 2
    # an explicit TUNELOOP_VLLM_PYTHON is the only candidate: a broken one is not replaced by another
    found, notes = vb.find_interpreter({vb.PYTHON_ENV: "/nope/python"}, cwd, root, prober=prober, current="/usr/bin/python3")
    assert found is None and notes == ["$TUNELOOP_VLLM_PYTHON: /nope/python cannot import vllm"]


def test_probe_of_a_missing_or_non_vllm_python_says_why(tmp_path):
    assert vb.probe(str(tmp_path / "none"))[1].endswith("is not an executable file")
    import sys

    version, why = vb.probe(sys.executable)  # the trainer's venv: no vllm there
    assert version is None and "cannot import vllm" in why
    assert vb.probe(str(write_fake_python(tmp_path / "fake")))[0] == "0.32.0-fake"


@pytest.mark.parametrize(("config", "cuda", "problem"), [
    ({"hidden_size": 64, "num_attention_heads": 4}, False, "head_dim 16 is not supported by vLLM's CPU attention"),
    ({"hidden_size": 256, "num_attention_heads": 4}, False, None),
    ({"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64}, False, None),
    ({"hidden_size": 64, "num_attention_heads": 4}, True, None),  # GPU attention backends take head size 16
    ({"text_config": {"head_dim": 72}}, False, "head_dim 72"),
    ({"model_type": "x"}, False, "names no head size"),
    (None, False, "no config.json"),
])
def test_model_problems_name_the_cpu_attention_head_size_limit(config, cuda, problem):
    found = vb.model_problems(config, cuda=cuda)
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0])


INTERP = vb.Interpreter("/v/bin/python", "./.venv-vllm", "0.32.0")


@settings(max_examples=60, deadline=None)
@given(requested=st.sampled_from(vb.BACKENDS), found=st.booleans(),
       problems=st.dictionaries(st.sampled_from(["base", "tuned"]), st.lists(st.sampled_from(["head_dim 16", "no config.json"]), max_size=2)))
def test_choice_is_vllm_exactly_when_allowed_found_and_servable_and_a_required_vllm_never_falls_back(requested, found, problems):
    usable = found and not any(problems.values())
    try:
        choice = vb.choose(requested, INTERP if found else None, ["./.venv-vllm: missing"], problems)
    except ValueError as exc:
        assert requested == "vllm" and not usable  # only a required vLLM that cannot be used is an error
        assert vb.BACKEND_ENV in str(exc)
        return
    assert choice.requested == requested and choice.reason
    assert choice.backend == ("vllm" if requested != "transformers" and usable else "transformers")
    if choice.backend == "transformers" and requested == "auto":  # the fallback says why
        assert ("not found" in choice.reason) if not found else ("cannot serve" in choice.reason)
    assert choice.wire()["used"] == choice.backend


def test_fallback_keeps_the_request_and_says_what_failed():
    choice = vb.choose("auto", INTERP, [], {})
    fb = vb.fallback(choice, "the vLLM server for tuneloop-base exited with code 1")
    assert fb.backend == "transformers" and fb.requested == "auto"
    assert fb.wire() == {"used": "transformers", "requested": "auto", "vllmPython": "/v/bin/python", "vllmVersion": "0.32.0",
                         "reason": "vLLM failed, fell back to transformers: the vLLM server for tuneloop-base exited with code 1"}


def test_trim_counts_tokens_as_the_transformers_path_does():
    assert vb.trim([5, 6, 2, 9], [2], "stop") == ([5, 6], 3)  # up to and including the stop token
    assert vb.trim([5, 6], [2], "stop") == ([5, 6], 3)  # the server left the stop token out
    assert vb.trim([5, 6], [2], "length") == ([5, 6], 2)


def test_cpu_sets_split_this_process_cpus_between_engines(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert vb.cpu_sets(2) == ["0", "1"]
    assert vb.cpu_sets(1) == ["0,1"]  # one engine: every CPU (vLLM's auto binding would leave it one of two)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert vb.cpu_sets(2) == ["0,1", "2,3,4"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert vb.cpu_sets(2) == [None, None]  # one CPU: the engines must take turns


# ---- the server's life cycle ----------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pids: list[int], timeout: float = 10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_server_answers_and_stop_leaves_no_process_behind(tmp_path, monkeypatch):
    py = write_fake_python(tmp_path / "fake")
    monkeypatch.setenv("FAKE_VLLM_PIDS", str(tmp_path / "pids"))
    server = vb.Server(str(py), "/models/m", "tuneloop-tuned", tmp_path / "log")
    with vb.serving([server]):
        assert server.wait_ready(timeout=30) >= 0
        tokens, reason = server.complete([7, 8, 9, 10], max_tokens=8, stop_ids=[2], decoding="greedy", seed=0)
        assert (tokens, reason) == ([8, 9, 10, 2], "stop")
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        assert all(_alive(p) for p in pids)
    assert _wait_dead(pids), "the server or its engine child outlived the block"


def test_an_exception_inside_the_block_still_stops_the_server(tmp_path, monkeypatch):
    py = write_fake_python(tmp_path / "fake")
    monkeypatch.setenv("FAKE_VLLM_PIDS", str(tmp_path / "pids"))
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    server = vb.Server(str(py), "/models/m", "m", tmp_path / "log")
    with pytest.raises(vb.VllmUnavailable, match="not ready after 2 s"), vb.serving([server]):
        server.wait_ready(timeout=2)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert _wait_dead(pids)


def test_a_server_that_dies_during_start_up_is_reported_with_its_exit_code_and_log(tmp_path, monkeypatch):
    py = write_fake_python(tmp_path / "fake")
    monkeypatch.setenv("FAKE_VLLM_MODE", "exit")
    server = vb.Server(str(py), "/models/m", "tuneloop-base", tmp_path / "vllm-base.log")
    with pytest.raises(vb.VllmUnavailable) as err, vb.serving([server]):
        server.wait_ready(timeout=30)
    assert "exited with code 3 during start-up" in str(err.value) and "engine failed to start" in str(err.value)


def test_the_server_command_is_what_vllm_accepts(tmp_path):
    s = vb.Server("/v/bin/python", "/m", "tuneloop-base", tmp_path / "log", dtype="float32", max_model_len=1024, max_num_seqs=16,
                  seed=42, port=8123, revision="abc")
    cmd = s.command()
    assert cmd[:3] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(zip(cmd[3::1], cmd[4::1]))
    assert pairs["--model"] == "/m" and pairs["--served-model-name"] == "tuneloop-base" and pairs["--port"] == "8123"
    assert pairs["--dtype"] == "float32" and pairs["--max-num-seqs"] == "16" and pairs["--revision"] == "abc"
    assert pairs["--generation-config"] == "vllm"  # our sampling settings, not the checkpoint's defaults
    assert "--enforce-eager" in cmd
    more = vb.Server("/v/bin/python", "/m", "b", tmp_path / "log", extra_args=vb.extra_args({vb.ARGS_ENV: "--dtype bfloat16 --no-enforce-eager"}))
    assert more.command()[-3:] == ["--dtype", "bfloat16", "--no-enforce-eager"]  # after ours: the last of a repeated flag wins
    with pytest.raises(ValueError):
        vb.extra_args({vb.ARGS_ENV: "--x 'unclosed"})


# ---- the evaluate stage with a fake vLLM ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> Path:
    """A tiny model vLLM's CPU attention can serve (hidden 256, 4 heads: head_dim 64)."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny64", hidden=256)


@pytest.fixture(scope="module")
def tiny16(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny16")


def job(tmp: Path, model: Path, **evaluation) -> Path:
    write_jsonl(tmp / "data" / "train.jsonl", chat_records(48, system=True))
    spec = tiny_spec(model, "data/train.jsonl", "out", **{
        "hyperparameters": {"maxSteps": 2},
        "evaluation": {"maxNewTokens": 6, "batchSize": 8, "metrics": ["exactMatch", "perplexity"], "forgetting": {"enabled": False},
                       "samplePrompts": ["question 99 what is cat dog"], **evaluation},
    })
    spec["output"] = {"pvc": {"claimName": "models", "path": "tiny"}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "tiny-job", "namespace": "ml"}, "spec": spec}))
    return path


def _run(path: Path, wd: Path, *extra: str) -> int:
    return cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", *extra])


def test_auto_falls_back_to_transformers_when_the_vllm_server_dies_and_says_why(tmp_path, tiny64, monkeypatch):
    monkeypatch.setenv(vb.BACKEND_ENV, "auto")
    monkeypatch.setenv(vb.PYTHON_ENV, str(write_fake_python(tmp_path / "fake")))
    monkeypatch.setenv("FAKE_VLLM_MODE", "exit")
    wd = tmp_path / "wd"
    assert _run(job(tmp_path, tiny64), wd) == 0
    ev = json.loads((wd / "eval.json").read_text())
    assert ev["backend"]["used"] == "transformers" and ev["settings"]["backend"] == "transformers"
    assert ev["backend"]["reason"].startswith("vLLM failed, fell back to transformers: the vLLM server for tuneloop-")
    assert "exited with code 3" in ev["backend"]["reason"]
    assert all(e["tuned"] is not None for e in ev["examples"])  # the transformers pass ran in full
    assert not list(wd.glob(".vllm-eval-*")), "the merged weights' temporary directory was left behind"
    report = (wd / "report" / "report.md").read_text()
    assert "Answers generated with transformers (vLLM failed" in report


def test_a_required_vllm_that_fails_fails_the_stage(tmp_path, tiny64, monkeypatch, capsys):
    monkeypatch.setenv(vb.BACKEND_ENV, "vllm")
    monkeypatch.setenv(vb.PYTHON_ENV, str(write_fake_python(tmp_path / "fake")))
    monkeypatch.setenv("FAKE_VLLM_MODE", "exit")
    assert _run(job(tmp_path, tiny64), tmp_path / "wd") == 1
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "TUNELOOP_EVAL_BACKEND=vllm: the vLLM server for tuneloop-" in err and "exited with code 3 during start-up" in err


def test_a_required_vllm_that_is_missing_is_a_config_error(tmp_path, tiny64, monkeypatch, capsys):
    monkeypatch.setenv(vb.BACKEND_ENV, "vllm")
    monkeypatch.setenv(vb.PYTHON_ENV, str(tmp_path / "no-such-python"))
    assert _run(job(tmp_path, tiny64), tmp_path / "wd") == 42
    assert "TUNELOOP_EVAL_BACKEND=vllm but vLLM not found" in " ".join(capsys.readouterr().err.split())


def test_a_head_size_vllm_cannot_serve_on_cpu_is_evaluated_with_transformers_without_starting_vllm(tmp_path, tiny16, monkeypatch):
    monkeypatch.setenv(vb.BACKEND_ENV, "auto")
    monkeypatch.setenv(vb.PYTHON_ENV, str(write_fake_python(tmp_path / "fake")))
    wd = tmp_path / "wd"
    assert _run(job(tmp_path, tiny16), wd) == 0
    ev = json.loads((wd / "eval.json").read_text())
    assert ev["backend"]["used"] == "transformers"
    assert "head_dim 16 is not supported by vLLM's CPU attention" in ev["backend"]["reason"]
    assert not list(wd.glob("vllm-*.log"))  # no server was started


def test_answers_through_vllm_use_the_transformers_prompts_stop_tokens_and_decoding(tmp_path, tiny64, monkeypatch):
    """The fake server answers each prompt with its own last 3 tokens, then the first stop token: the predictions
    are then exactly those tokens decoded by the trainer's tokenizer — same chat template, same trimming."""
    from transformers import AutoTokenizer

    monkeypatch.setenv(vb.BACKEND_ENV, "auto")
    monkeypatch.setenv(vb.PYTHON_ENV, str(write_fake_python(tmp_path / "fake")))
    monkeypatch.setenv("FAKE_VLLM_PIDS", str(tmp_path / "pids"))
    wd = tmp_path / "wd"
    assert _run(job(tmp_path, tiny64), wd) == 0
    ev = json.loads((wd / "eval.json").read_text())
    assert ev["backend"]["used"] == "vllm", ev["backend"]
    assert ev["backend"]["vllmVersion"] == "0.32.0-fake" and ev["backend"]["mergedAdapter"] is True
    assert set(ev["backend"]["servers"]) == {"base", "tuned"}
    tok = AutoTokenizer.from_pretrained(str(wd / "artifact"))
    tests = [json.loads(line) for line in (wd / "data" / "test.jsonl").read_text().splitlines()]
    for rec, example in zip(tests, ev["examples"]):
        ids = tok(tok.apply_chat_template(rec["messages"][:-1], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        assert example["tuned"] == tok.decode(ids[-3:], skip_special_tokens=True).strip() == example["base"]
    assert ev["generation"]["tuned"]["generatedTokens"] == 4 * len(tests) and ev["generation"]["tuned"]["backend"] == "vllm"
    assert ev["samplePrompts"][0]["tuned"] is not None
    assert ev["scores"]["tuned"]["perplexity"] > 1  # perplexity still computed (transformers)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 4 and _wait_dead(pids)  # two servers, each with its engine child: all gone
    assert not list(wd.glob(".vllm-eval-*"))
    assert "Answers generated with vLLM 0.32.0-fake" in (wd / "report" / "report.md").read_text()


# ---- a rerun reuses the evaluation ----------------------------------------------------------------------------------

def test_a_rerun_of_a_finished_spec_reuses_its_evaluation(tmp_path, tiny16, capsys):
    path, wd = job(tmp_path, tiny16), tmp_path / "wd"
    assert _run(path, wd) == 0
    first = (wd / "eval.json").read_text()
    capsys.readouterr()
    t0 = time.perf_counter()
    assert _run(path, wd) == 0
    out = capsys.readouterr().out
    assert "evaluation already done" in out and "reused" in out
    assert (wd / "eval.json").read_text() == first
    log = json.loads((wd / "local-run.json").read_text())
    assert [s["stage"] for s in log["stages"]] == ["report"] and log["evaluationReused"]["evalJson"].endswith("eval.json")
    assert "Exact match" in out or "exactMatch" in out  # the metrics table is still shown
    assert time.perf_counter() - t0 < 60


def test_a_changed_evaluation_setting_re_evaluates_without_retraining(tmp_path, tiny16, capsys):
    wd = tmp_path / "wd"
    assert _run(job(tmp_path, tiny16), wd) == 0
    first, train = json.loads((wd / "eval.json").read_text()), (wd / "result-train.json").read_text()
    capsys.readouterr()
    assert _run(job(tmp_path, tiny16, maxNewTokens=5), wd) == 0
    out = capsys.readouterr().out
    assert "not retrained" in out and "evaluation already done" not in out
    second = json.loads((wd / "eval.json").read_text())
    assert second["inputsFingerprint"] != first["inputsFingerprint"] and second["settings"]["maxNewTokens"] == 5
    assert (wd / "result-train.json").read_text() == train


def test_changed_test_data_or_backend_request_re_evaluates(tmp_path, tiny16, capsys, monkeypatch):
    path, wd = job(tmp_path, tiny16), tmp_path / "wd"
    assert _run(path, wd) == 0
    fp = json.loads((wd / "eval.json").read_text())["inputsFingerprint"]
    test = wd / "data" / "test.jsonl"
    test.write_text("\n".join(test.read_text().splitlines()[:-1]) + "\n")  # one test record fewer
    capsys.readouterr()
    assert _run(path, wd, "--from-stage", "evaluate") == 0
    assert "evaluation already done" not in capsys.readouterr().out
    fp2 = json.loads((wd / "eval.json").read_text())["inputsFingerprint"]
    assert fp2 != fp
    monkeypatch.setenv(vb.BACKEND_ENV, "auto")  # the suite runs with transformers (tests/conftest.py)
    assert _run(path, wd, "--from-stage", "evaluate") == 0
    assert "evaluation already done" not in capsys.readouterr().out
    assert json.loads((wd / "eval.json").read_text())["inputsFingerprint"] != fp2
    assert _run(path, wd, "--from-stage", "evaluate") == 0
    assert "evaluation already done" in capsys.readouterr().out
