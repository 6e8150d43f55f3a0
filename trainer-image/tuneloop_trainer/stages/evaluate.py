"""The evaluate stage: base vs tuned on the held-out test split and the forgetting set, then the gates.

    python -m tuneloop_trainer evaluate --spec FILE --workdir DIR

Reads DIR/data/test.jsonl (prepare) and DIR/artifact (train); writes DIR/eval.json with the
EvaluationRecord (the ModelVersion's `spec.evaluation`), both models' scores and generation
performance, per-example predictions and the qualitative samples the report shows. Returns the
compact summary the runner writes to the termination log. Metric libraries are used directly
(rouge-score, sacrebleu, jsonschema) — nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.api.evaluation import METRICS, EvaluationRecord, MetricName, Verdict
from tuneloop.contract import layout

from ..errors import ConfigError, TrainerError
from ..evaluation import analysis as eval_analysis
from ..evaluation import metrics as eval_metrics
from ..evaluation import topic as eval_topic
from ..evaluation.compare import CONFIDENCE_LEVEL, METHOD
from ..evaluation.inputs import evaluation_fingerprint, load_train_answers
from ..evaluation.vllm_backend import BACKEND_ENV, Choice, VllmUnavailable
from ..evaluation.vllm_backend import fallback as vllm_fallback

if TYPE_CHECKING:
    from ..context import StageContext

FORGETTING_MAX_NEW_TOKENS = 48
ENFORCED = "enforced"  # the tuned model's test answers with the output contract enforced (vLLM structured outputs)


def extra_rows() -> list[str]:
    """Rows of the record after the selected metrics, in registry order, when measured: the registered
    metrics nobody selects (allFieldsExact, latency, throughput, …)."""
    return [i.name for i in METRICS.values() if not i.selectable]


def _progress(ctx: StageContext, phase: str, done: int, total: int) -> None:
    if ctx.on_progress:
        ctx.on_progress({"stage": "evaluate", "phase": phase, "done": done, "total": total})


def wanted_metrics(ev: Any) -> list[str]:
    """Metrics to compute: those asked for, those the gates read, schema metrics when a schema is given."""
    names = {m if isinstance(m, str) else m.value for m in ev.metrics}
    names |= {g.metric if isinstance(g.metric, str) else g.metric.value for g in ev.gates}
    if ev.json_schema is not None:
        names |= {MetricName("schemaCompliance").value, MetricName("fieldAccuracy").value}
    if ev.forgetting.enabled:
        names.add(MetricName("forgettingAccuracy").value)
    return [m.value for m in MetricName if m.value in names]


def _check_schema(schema: dict[str, Any] | None) -> None:
    if schema is None:
        return
    import jsonschema

    try:
        eval_metrics.schema_validator(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"evaluation.jsonSchema is not a valid JSON Schema: {exc.message}") from None


def _evaluate_model(
    ctx: StageContext,
    label: str,
    loader: Callable[[], tuple[Any, Any]],
    records: list[dict[str, Any]],
    forgetting: list[dict[str, Any]] | None,
    *,
    task: bool,
    nll: bool,
) -> dict[str, Any]:
    """Generate and score what this model needs; the model is freed before returning."""
    from ..evaluation.generate import chat_prompt, generate, reference_nll, reference_pair

    ev = ctx.spec.evaluation
    seed = ctx.spec.hyperparameters.seed
    t0 = time.perf_counter()
    model, tok = loader()
    out: dict[str, Any] = {"loadSeconds": round(time.perf_counter() - t0, 2)}
    # One tiny untimed call first, so one-off costs (lazy init, allocator warm-up) don't land in the first model's latency.
    generate(model, tok, [chat_prompt(tok, [{"role": "user", "content": "hi"}])], batch_size=1, max_new_tokens=2)
    chat = [r for r in records if "messages" in r]
    if task and chat:
        prompts = [chat_prompt(tok, r["messages"][:-1]) for r in chat]
        gen = generate(
            model, tok, prompts, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, decoding=ev.decoding, seed=seed,
            on_batch=lambda d, n: _progress(ctx, f"{label}: test set", d, n),
        )
        out["predictions"] = gen.texts
        out["generation"] = gen.stats()
        out["batchSeconds"] = [round(x, 4) for x in gen.batch_seconds]
    if nll:
        pairs = [reference_pair(tok, r) for r in records]
        _progress(ctx, f"{label}: perplexity", 0, 1)
        per_item: list[tuple[float, int]] = []
        out["nll"] = reference_nll(model, tok, pairs, batch_size=ev.batch_size, per_item=per_item)
        out["nllItems"] = per_item
        _progress(ctx, f"{label}: perplexity", 1, 1)
    if forgetting:
        prompts = [chat_prompt(tok, [{"role": "user", "content": f["prompt"]}]) for f in forgetting]
        fgen = generate(
            model, tok, prompts, batch_size=ev.batch_size, max_new_tokens=min(ev.max_new_tokens, FORGETTING_MAX_NEW_TOKENS),
            decoding=ev.decoding, seed=seed, on_batch=lambda d, n: _progress(ctx, f"{label}: forgetting set", d, n),
        )
        out["forgetting"] = fgen.texts
    if task and ev.sample_prompts:
        prompts = [chat_prompt(tok, [*_system(chat), {"role": "user", "content": p}]) for p in ev.sample_prompts]
        out["samplePrompts"] = generate(model, tok, prompts, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, decoding=ev.decoding, seed=seed).texts
    out["seconds"] = round(time.perf_counter() - t0, 2)
    del model, tok
    gc.collect()
    return out


def _log(message: str) -> None:
    print(f"tuneloop evaluate: {message}", file=sys.stderr, flush=True)


def choose_backend(ctx: StageContext, *, base_needed: bool, env: Mapping[str, str] | None = None) -> Choice:
    """vLLM or transformers for this evaluation (evaluation/vllm_backend.choose), from TUNELOOP_EVAL_BACKEND, where a
    vLLM Python is found and whether vLLM can serve the models here."""
    from ..evaluation import vllm_backend as vb
    from ..modeling import base_serving_location, is_adapter, use_cuda

    env = os.environ if env is None else env
    try:
        requested = vb.requested_backend(env, ctx.spec.evaluation.backend)
    except ValueError as exc:
        raise ConfigError(str(exc), hint=f"unset {BACKEND_ENV} for auto") from None
    if requested == "transformers":
        return vb.choose(requested, None, [], {})
    interpreter, notes = vb.find_interpreter(env, Path.cwd(), vb.repo_root())
    problems: dict[str, list[str]] = {}
    if interpreter is not None:
        cuda = use_cuda()
        base_dir, _ = base_serving_location(ctx)
        base_cfg = vb.read_config(base_dir) if Path(base_dir).is_dir() else {}  # a hub id: vLLM reads its config itself
        art = ctx.artifact_dir
        tuned_cfg = base_cfg if is_adapter(art) else vb.read_config(art)
        if base_needed:
            problems["base"] = vb.model_problems(base_cfg, cuda=cuda) if base_cfg != {} else []
        problems["tuned"] = vb.model_problems(tuned_cfg, cuda=cuda) if tuned_cfg != {} else []
    try:
        return vb.choose(requested, interpreter, notes, problems)
    except ValueError as exc:
        raise ConfigError(str(exc), hint=f"install vLLM (make vllm) or set {BACKEND_ENV}=auto") from None


def _eos_ids(model_dir: str | Path) -> list[int]:
    """eos ids of a model directory's generation_config.json (else config.json): what transformers' model.generation_config holds."""
    for name in ("generation_config.json", "config.json"):
        try:
            eos = json.loads((Path(model_dir) / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if eos is not None:
            return [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
    return []


@contextlib.contextmanager
def _sigterm_raises() -> Any:
    """While vLLM servers run, SIGTERM (a pod being deleted) unwinds like Ctrl-C, so they are stopped, not orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# long: one ExitStack owns every vLLM server's lifetime, and the transformers perplexity passes run inside it while the
# servers start; split further, the start/stop order would be spread over several functions
def _evaluate_vllm(ctx: StageContext, records: list[dict[str, Any]], forgetting: list[dict[str, Any]] | None, *, need_nll: bool,
                   details: dict[str, Any], choice: Choice) -> dict[str, dict[str, Any] | None]:
    """Both models through vLLM's OpenAI server: one server per model, both at once on their own CPUs (or one after the
    other when there is a single CPU). The tuned model is served merged (vLLM's CPU LoRA path is slower than generating
    with transformers). Perplexity (one forward pass per record) stays with transformers, while the servers start.
    Prompts, stop tokens, limits and decoding of the answers are those of the transformers path."""
    from ..evaluation import vllm_backend as vb
    from ..evaluation.generate import chat_prompt, stop_token_ids
    from ..modeling import (
        base_serving_location,
        is_adapter,
        load_base,
        load_tokenizer,
        load_tuned,
        load_tuned_tokenizer,
        save_merged,
        use_cuda,
    )

    ev = ctx.spec.evaluation
    seed = ctx.spec.hyperparameters.seed
    base_task = bool(ev.baseline)
    base_needed = bool(ev.baseline or forgetting)
    contract = output_contract(ev)
    t0 = time.perf_counter()
    out: dict[str, dict[str, Any] | None] = {"base": None, "tuned": None}
    art = ctx.artifact_dir
    work = Path(tempfile.mkdtemp(prefix=".vllm-eval-", dir=ctx.workdir))
    dtype = "auto" if use_cuda() else "float32"  # CPU: the weights as transformers evaluates them (fp32), not vLLM's bf16 default
    try:
        more_args = vb.extra_args(os.environ)
    except ValueError as exc:
        raise ConfigError(f"{vb.ARGS_ENV}: {exc}") from None
    try:
        tokenizers = {"tuned": load_tuned_tokenizer(ctx)}
        dirs: dict[str, tuple[str, str | None]] = {}
        if base_needed:
            tokenizers["base"] = load_tokenizer(ctx)
            dirs["base"] = base_serving_location(ctx)
        merge = is_adapter(art) and not (art / "merged" / "config.json").exists()
        dirs["tuned"] = (str(work / "tuned-merged") if merge else str(art / "merged" if is_adapter(art) else art), None)

        phases = {label: _prompt_phases(tok, ev, records, forgetting, task=label == "tuned" or base_task, enforce=label == "tuned")
                  for label, tok in tokenizers.items()}
        longest = max((len(i) + n for items in phases.values() for _, i, n in items), default=0)
        labels: list[str] = [m for m in ("base", "tuned") if m in dirs]
        binds = vb.cpu_sets(len(labels))
        # one at a time on a GPU (each engine takes most of its memory) or a single CPU; else both at once, on their own CPUs
        together = len(labels) == 1 or (not use_cuda() and all(b is not None for b in binds))
        assert choice.interpreter is not None, "choose() picks vLLM only with an interpreter"
        servers = {m: vb.Server(choice.interpreter.python, dirs[m][0], f"tuneloop-{m}", ctx.workdir / f"vllm-{m}.log", dtype=dtype,
                                max_model_len=max(512, -(-(longest + 8) // 256) * 256), max_num_seqs=ev.batch_size, seed=seed,
                                cpu_bind=binds[i] if together and not use_cuda() else None, revision=dirs[m][1], extra_args=more_args)
                   for i, m in enumerate(labels)}
        for s in servers.values():
            s.log_path.unlink(missing_ok=True)
        details.update({"dtype": dtype, "extraArgs": more_args, "concurrency": ev.batch_size, "servers": {}, "mergedAdapter": merge,
                        "schedule": "together" if together and len(labels) > 1 else "one after the other"})
        nll: dict[str, tuple[Any, Any]] = {}
        started: list[Any] = []
        with _sigterm_raises(), contextlib.ExitStack() as stack:
            def start(label: str) -> None:
                stack.enter_context(vb.serving([servers[label]]))
                started.append(servers[label])

            if "base" in servers and together:
                start("base")
            model = tok = None
            if need_nll or merge:  # one transformers load of the tuned model: the merged weights, then its perplexity
                t1 = time.perf_counter()
                model, tok = load_tuned(ctx)
                if merge:  # from a copy: the perplexity below is the unmerged model's, as on the transformers path
                    save_merged(copy.deepcopy(model), tok, dirs["tuned"][0])
                details["transformersSeconds"] = {"tuned": round(time.perf_counter() - t1, 2)}
            problems = vb.model_problems(vb.read_config(dirs["tuned"][0]), cuda=use_cuda())
            if problems:
                raise VllmUnavailable(f"tuned: {'; '.join(problems)}")
            if together:  # the tuned server starts now, before the perplexity passes: they run while both servers load
                start("tuned")
            if need_nll and model is not None:
                t1 = time.perf_counter()
                nll["tuned"] = _perplexity(ctx, "tuned", model, tok, records)
                details["transformersSeconds"]["tuned"] = round(details["transformersSeconds"]["tuned"] + time.perf_counter() - t1, 2)
            del model, tok
            gc.collect()
            if need_nll and base_task:
                t1 = time.perf_counter()
                model, tok = load_base(ctx)
                nll["base"] = _perplexity(ctx, "base", model, tok, records)
                del model, tok
                gc.collect()
                details.setdefault("transformersSeconds", {})["base"] = round(time.perf_counter() - t1, 2)
            jobs: dict[str, list[Any]] = {}
            for label in labels:
                if not together:
                    start(label)
                s = servers[label]
                ready = s.wait_ready()
                details["servers"][label] = {"model": s.model, "readySeconds": ready, "cpus": s.cpu_bind, "log": str(s.log_path)}
                stops = stop_token_ids(tokenizers[label]) + [e for e in _eos_ids(s.model) if e not in stop_token_ids(tokenizers[label])]
                warm = tokenizers[label](chat_prompt(tokenizers[label], [{"role": "user", "content": "hi"}]), add_special_tokens=False)["input_ids"]
                s.complete(warm, max_tokens=2, stop_ids=stops, decoding="greedy", seed=seed)  # untimed, as in the transformers path
                jobs[label] = [vb.Job(s, ids, n, stops, ev.decoding, seed, structured=contract if ph == ENFORCED else None)
                               for ph, ids, n in phases[label]]
                if not together:
                    _send(ctx, {label: jobs[label]}, {label: phases[label]}, ev.batch_size, out, tokenizers)
                    s.stop()
            if together:
                _send(ctx, jobs, phases, ev.batch_size, out, tokenizers)
        for label in labels:
            res = out.get(label) or {}
            res["loadSeconds"] = details["servers"][label]["readySeconds"]
            if label in nll:
                res["nll"], res["nllItems"] = nll[label]
            res["seconds"] = round(time.perf_counter() - t0, 2)
            out[label] = res
        details["seconds"] = round(time.perf_counter() - t0, 2)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def output_contract(ev: Any) -> dict[str, Any] | None:
    """vLLM's structured-outputs request field for the evaluation's output contract (evaluation.jsonSchema), or None."""
    return {"json": ev.json_schema} if ev.json_schema is not None else None


def _prompt_phases(tok: Any, ev: Any, records: list[dict[str, Any]], forgetting: list[dict[str, Any]] | None, *,
                   task: bool, enforce: bool = False) -> list[tuple[str, list[int], int]]:
    """(phase, prompt token ids, max new tokens) of one model's generations: the test split and the sample prompts when
    it is evaluated on the task, the forgetting set when there is one — the transformers path's prompts; with `enforce`
    and an output contract, the test split once more with the contract enforced (phase ENFORCED)."""
    from ..evaluation.generate import chat_prompt

    chat = [r for r in records if "messages" in r]
    prompts: list[tuple[str, str, int]] = []
    if chat and task:
        prompts += [("test", chat_prompt(tok, r["messages"][:-1]), ev.max_new_tokens) for r in chat]
    if chat and task and enforce and output_contract(ev) is not None:
        prompts += [(ENFORCED, chat_prompt(tok, r["messages"][:-1]), ev.max_new_tokens) for r in chat]
    if forgetting:
        prompts += [("forgetting", chat_prompt(tok, [{"role": "user", "content": f["prompt"]}]), min(ev.max_new_tokens, FORGETTING_MAX_NEW_TOKENS))
                    for f in forgetting]
    if chat and ev.sample_prompts and task:
        prompts += [("samples", chat_prompt(tok, [*_system(chat), {"role": "user", "content": p}]), ev.max_new_tokens) for p in ev.sample_prompts]
    ids = tok([p for _, p, _ in prompts], add_special_tokens=False)["input_ids"] if prompts else []
    return [(ph, i, n) for (ph, _, n), i in zip(prompts, ids)]


def _perplexity(ctx: StageContext, label: str, model: Any, tok: Any, records: list[dict[str, Any]]) -> tuple[Any, list[tuple[float, int]]]:
    """(summed NLL, per-item NLL) of the references under one model (transformers), with progress."""
    from ..evaluation.generate import reference_nll, reference_pair

    _progress(ctx, f"{label}: perplexity", 0, 1)
    items: list[tuple[float, int]] = []
    total = reference_nll(model, tok, [reference_pair(tok, r) for r in records], batch_size=ctx.spec.evaluation.batch_size, per_item=items)
    _progress(ctx, f"{label}: perplexity", 1, 1)
    return total, items


def _send(ctx: StageContext, jobs: dict[str, list[Any]], phases: dict[str, list[tuple[str, list[int], int]]], concurrency: int,
          out: dict[str, dict[str, Any] | None], tokenizers: dict[str, Any]) -> None:
    """Send every model's jobs (all models at once), then turn them into the transformers path's results per model."""
    from ..evaluation import vllm_backend as vb
    from ..evaluation.generate import Generations

    t0 = time.perf_counter()
    done: dict[tuple[str, str], int] = {}
    totals: dict[tuple[str, str], int] = {}
    finished: dict[tuple[str, str], float] = {}
    owner = {}
    for label, js in jobs.items():
        for job, (phase, _, _) in zip(js, phases[label]):
            owner[id(job)] = (label, phase)
            totals[(label, phase)] = totals.get((label, phase), 0) + 1
    names = {"test": "test set", "forgetting": "forgetting set", "samples": "sample prompts", ENFORCED: "test set, contract enforced"}

    def on_done(job: Any) -> None:
        key = owner[id(job)]
        done[key] = done.get(key, 0) + 1
        finished[key] = time.perf_counter() - t0
        _progress(ctx, f"{key[0]}: {names[key[1]]} (vLLM)", done[key], totals[key])

    vb.run_jobs([j for js in jobs.values() for j in js], {js[0].server.name: concurrency for js in jobs.values() if js}, on_done)
    for label, js in jobs.items():
        res: dict[str, Any] = dict(out.get(label) or {})
        tok = tokenizers[label]
        by_phase: dict[str, Generations] = {}
        for phase in ("test", "forgetting", "samples", ENFORCED):
            mine = [j for j, (ph, _, _) in zip(js, phases[label]) if ph == phase]
            if not mine:
                continue
            texts, counts = [], []
            for j in mine:
                kept, n = vb.trim(j.tokens, j.stop_ids, j.finish_reason)
                texts.append(tok.decode(kept, skip_special_tokens=True).strip())
                counts.append(n)
            lat = [j.seconds for j in mine]
            by_phase[phase] = Generations(texts, counts, finished.get((label, phase), 0.0), list(lat), list(lat))
        if "test" in by_phase:
            res["predictions"] = by_phase["test"].texts
            res["generation"] = {**by_phase["test"].stats(), "backend": "vllm"}
            res["batchSeconds"] = [round(x, 4) for x in by_phase["test"].batch_seconds]
        if "forgetting" in by_phase:
            res["forgetting"] = by_phase["forgetting"].texts
        if "samples" in by_phase:
            res["samplePrompts"] = by_phase["samples"].texts
        if ENFORCED in by_phase:
            res["enforcedPredictions"] = by_phase[ENFORCED].texts
            res["enforcedGeneration"] = {**by_phase[ENFORCED].stats(), "backend": "vllm"}
        out[label] = res


def _system(chat: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The test set's system prompt (when its records share one), so sample prompts see the same instructions."""
    first = chat[0]["messages"][0] if chat else None
    if first and first.get("role") == "system" and all(r["messages"][0] == first for r in chat):
        return [first]
    return []


def _scores(result: dict[str, Any] | None, references: list[str], schema: dict | None, forgetting: list[dict] | None) -> dict[str, Any]:
    if not result:
        return {}
    scores: dict[str, Any] = {}
    if "predictions" in result:
        scores = eval_metrics.score_task(result["predictions"], references, schema=schema, nll=result.get("nll"))
    elif "nll" in result:
        scores["perplexity"] = eval_metrics.perplexity(*result["nll"])
    if "details" in scores:
        scores["allFieldsExact"] = scores["details"]["allFieldsExact"]
    if forgetting and "forgetting" in result:
        hits = [eval_metrics.answer_found(g, f["answers"], f.get("caseSensitive", False)) for g, f in zip(result["forgetting"], forgetting)]
        scores["forgettingAccuracy"] = sum(hits) / len(hits)
        scores["forgettingHits"] = hits
    gen = result.get("generation") or {}
    scores["latencySeconds"] = gen.get("latencyMeanSeconds")
    scores["tokensPerSecond"] = gen.get("tokensPerSecond")
    return scores


def _serving_doc(ctx: StageContext, ev: Any) -> dict[str, Any] | None:
    """The serving ModelVersion's eval.json (evaluation.serving.evalJson), read whole."""
    serving = getattr(ev, "serving", None)
    if serving is None:
        return None
    path = ctx.resolve(serving.eval_json)
    if not path.exists():
        raise ConfigError(f"evaluation.serving.evalJson: {path} does not exist",
                          hint="point it at the eval.json next to the serving ModelVersion's artifact")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"evaluation.serving.evalJson: {path} is not JSON ({exc})") from None


def _not_evaluated(out_path: Any, started: datetime) -> dict[str, Any]:
    record = EvaluationRecord(verdict=Verdict.NOT_EVALUATED)
    out_path.write_text(json.dumps({"record": record.wire(), "enabled": False, "startedAt": started.isoformat()}, indent=2))
    return {"verdict": Verdict.NOT_EVALUATED.value, "evalJson": str(out_path), "message": "evaluation.enabled is false"}


def _with_topic_profile(ctx: StageContext, record: Any, test_records: list[dict[str, Any]] | None,
                        forgetting: list[dict[str, Any]] | None) -> tuple[Any, Any]:
    """The output guard's topic rule: DIR/topic-profile.json from the training prompts (ModelVersion
    spec.topicProfile); the record with it, and the profile's document for eval.json."""
    topic_record, topic_doc = eval_topic.write_profile(
        ctx.data_dir, ctx.workdir / layout.TOPIC_PROFILE_FILE, ctx.spec.evaluation.json_schema, test_records,
        general=[f["prompt"] for f in forgetting or []], seed=ctx.spec.hyperparameters.seed)
    _log(eval_topic.summary_line(topic_doc))
    if topic_record is not None:
        record = record.model_copy(update={"topic_profile": topic_record})
    return record, topic_doc


def run(ctx: StageContext) -> dict[str, Any]:
    from ..evaluation.gates import decide
    from ..evaluation.inputs import load_forgetting_set, load_test_split

    ev = ctx.spec.evaluation
    started = datetime.now(UTC)
    out_path = ctx.workdir / layout.EVAL_FILE
    if not ev.enabled:
        return _not_evaluated(out_path, started)
    _check_schema(ev.json_schema)
    inputs_fingerprint = evaluation_fingerprint(ctx)
    split = getattr(ev, "split", "test")
    records = load_test_split(ctx.data_dir, ev.max_samples, split)
    references = [r["messages"][-1]["content"] for r in records if "messages" in r]
    forgetting, forgetting_source = (None, None)
    if ev.forgetting.enabled:
        forgetting, forgetting_source = load_forgetting_set(ctx.resolve(ev.forgetting.path) if ev.forgetting.path else None)
    metrics = wanted_metrics(ev)
    results, choice, vllm_details = _generate_all(ctx, records, forgetting, need_nll=MetricName("perplexity").value in metrics)

    base_scores = _scores(results["base"], references, ev.json_schema, forgetting)
    tuned_scores = _scores(results["tuned"], references, ev.json_schema, forgetting)
    extra = [m for m in extra_rows() if m != "allFieldsExact" or ev.json_schema is not None or "allFieldsExact" in tuned_scores]
    analysis = eval_analysis.analyse(
        records=records, references=references, schema=ev.json_schema, results=results, scores={"base": base_scores, "tuned": tuned_scores},
        forgetting=forgetting, train_answers=load_train_answers(ctx.data_dir) if getattr(ev, "baselines", True) else [],
        serving_doc=_serving_doc(ctx, ev), serving_name=champion.model_version if (champion := getattr(ev, "serving", None)) else None,
    )
    rows = eval_analysis.metric_rows(metrics + extra, analysis)
    serving = eval_analysis.serving_outcome(rows, analysis, ev.gates)
    record = decide(rows, ev.gates, ev.forgetting if forgetting else None, test_examples=len(records), serving=serving,
                    interval_method=METHOD, confidence_level=CONFIDENCE_LEVEL)
    if split != "test":
        record = record.model_copy(update={"split": split})
    record, topic_doc = _with_topic_profile(ctx, record, records if split == "test" else None, forgetting)

    doc = {
        "record": record.wire(),
        "startedAt": started.isoformat(),
        "finishedAt": datetime.now(UTC).isoformat(),
        "settings": {
            "testExamples": len(records),
            "decoding": ev.decoding,
            "maxNewTokens": ev.max_new_tokens,
            "batchSize": ev.batch_size,
            "metrics": metrics,
            "jsonSchema": ev.json_schema is not None,
            "forgettingSet": forgetting_source,
            "forgettingItems": len(forgetting or []),
            "backend": choice.backend,
        },
        "backend": {**choice.wire(), **vllm_details},
        "inputsFingerprint": inputs_fingerprint,
        "topicProfile": topic_doc,
        **_results_doc(ev, records, results, analysis, (base_scores, tuned_scores), forgetting),
    }
    if ev.json_schema is not None:
        doc["enforcement"] = enforcement_doc(results["tuned"], tuned_scores, references, ev.json_schema, choice.backend)
    out_path.write_text(json.dumps(doc, indent=2, default=str))
    return {**summary(record, out_path), "backend": choice.backend}


ENFORCEMENT_METRICS = ("jsonValid", "schemaCompliance", "fieldAccuracy", "allFieldsExact", "exactMatch")


def enforcement_doc(tuned: dict[str, Any] | None, tuned_scores: dict[str, Any], references: list[str], schema: dict[str, Any],
                    backend: str) -> dict[str, Any]:
    """The tuned model's answer metrics without and with the output contract enforced (vLLM structured outputs on the same
    prompts), and the contract-violation rate (answers that are not valid JSON following the schema) of each. Enforcement
    can hide a model that has not learned the format: the report shows both."""
    unenforced: dict[str, float] = {m: tuned_scores[m] for m in ENFORCEMENT_METRICS if tuned_scores.get(m) is not None}
    if "schemaCompliance" in unenforced:
        unenforced["violationRate"] = round(1 - unenforced["schemaCompliance"], 6)
    doc: dict[str, Any] = {"contract": {"jsonSchema": True}, "unenforced": unenforced}
    preds = (tuned or {}).get("enforcedPredictions")
    if preds is None:
        doc.update(measured=False, reason=f"enforcement is measured through vLLM's structured outputs; this evaluation ran on {backend}")
        return doc
    scores = _scores({"predictions": preds}, references, schema, None)
    enforced: dict[str, float] = {m: scores[m] for m in ENFORCEMENT_METRICS if scores.get(m) is not None}
    if "schemaCompliance" in enforced:
        enforced["violationRate"] = round(1 - enforced["schemaCompliance"], 6)
    doc.update(measured=True, backend="vllm", structuredOutputs={"json": "evaluation.jsonSchema"}, enforced=enforced,
               generation=(tuned or {}).get("enforcedGeneration"), predictions=preds)
    return doc


def _generate_all(ctx: StageContext, records: list[dict[str, Any]], forgetting: list[dict[str, Any]] | None, *,
                  need_nll: bool) -> tuple[dict[str, dict[str, Any] | None], Choice, dict[str, Any]]:
    """(results per model, the backend that produced them, its details): vLLM where chosen, else (or when vLLM turns
    out unusable under auto) transformers."""
    from ..modeling import load_base, load_tuned

    ev = ctx.spec.evaluation
    choice = choose_backend(ctx, base_needed=bool(ev.baseline or forgetting))
    _log(f"backend {choice.backend} ({choice.reason})")
    results: dict[str, dict[str, Any] | None] | None = None
    vllm_details: dict[str, Any] = {}
    if choice.backend == "vllm":
        try:
            results = _evaluate_vllm(ctx, records, forgetting, need_nll=need_nll, details=vllm_details, choice=choice)
        except VllmUnavailable as exc:
            if choice.requested == "vllm":
                raise TrainerError(f"{BACKEND_ENV}=vllm: {exc}", hint=f"unset {BACKEND_ENV} (auto) to fall back to transformers") from None
            choice = vllm_fallback(choice, str(exc))
            _log(f"backend {choice.backend} ({choice.reason})")
    if results is None:
        results = {"base": None, "tuned": None}
        if ev.baseline or forgetting:
            results["base"] = _evaluate_model(ctx, "base", lambda: load_base(ctx), records, forgetting, task=ev.baseline, nll=ev.baseline and need_nll)
        results["tuned"] = _evaluate_model(ctx, "tuned", lambda: load_tuned(ctx), records, forgetting, task=True, nll=need_nll)
    return results, choice, vllm_details


def _results_doc(ev: Any, records: list[dict[str, Any]], results: dict[str, dict[str, Any] | None], analysis: Any,
                 scores: tuple[dict[str, Any], dict[str, Any]], forgetting: list[dict[str, Any]] | None) -> dict[str, Any]:
    """eval.json's measurements: scores, generations, baselines, per-item scores, examples, forgetting, sample prompts."""
    base_scores, tuned_scores = scores
    return {
        "scores": {
            label: {k: v for k, v in s.items() if k not in ("forgettingHits",)} for label, s in (("base", base_scores), ("tuned", tuned_scores))
        },
        "generation": {label: (r or {}).get("generation") for label, r in results.items()},
        "baselines": analysis.baseline_doc(),
        "itemKeys": analysis.keys,
        "itemScores": analysis.items_doc(),
        "perFieldItems": analysis.per_field_doc(),
        "timingSpread": analysis.timing_spread,
        "seconds": {label: (r or {}).get("seconds") for label, r in results.items()},
        "examples": _examples(records, results),
        "forgetting": _forgetting_rows(forgetting, results, base_scores, tuned_scores),
        "samplePrompts": [
            {"prompt": p, "base": (results["base"] or {}).get("samplePrompts", [None] * len(ev.sample_prompts))[i], "tuned": (results["tuned"] or {})["samplePrompts"][i]}
            for i, p in enumerate(ev.sample_prompts)
        ]
        if ev.sample_prompts and "samplePrompts" in (results["tuned"] or {})
        else [],
    }


def _examples(records: list[dict[str, Any]], results: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    chat = [r for r in records if "messages" in r]
    base_preds = (results["base"] or {}).get("predictions")
    tuned_preds = (results["tuned"] or {}).get("predictions") or []
    rows = []
    for i, (rec, tuned) in enumerate(zip(chat, tuned_preds)):
        user = [m["content"] for m in rec["messages"][:-1] if m["role"] == "user"]
        rows.append(
            {
                "sourceLine": rec.get("source_line"),
                "prompt": user[-1] if user else "",
                "reference": rec["messages"][-1]["content"],
                "base": base_preds[i] if base_preds else None,
                "tuned": tuned,
                "exactMatch": {"base": eval_metrics.exact_match(base_preds[i], rec["messages"][-1]["content"]) if base_preds else None,
                               "tuned": eval_metrics.exact_match(tuned, rec["messages"][-1]["content"])},
            }
        )
    return rows


def _forgetting_rows(forgetting, results, base_scores, tuned_scores) -> list[dict[str, Any]]:
    if not forgetting:
        return []
    rows = []
    for i, item in enumerate(forgetting):
        rows.append(
            {
                "id": item["id"],
                "prompt": item["prompt"],
                "answers": item["answers"],
                "base": (results["base"] or {}).get("forgetting", [None] * len(forgetting))[i],
                "tuned": (results["tuned"] or {}).get("forgetting", [None] * len(forgetting))[i],
                "baseCorrect": (base_scores.get("forgettingHits") or [None] * len(forgetting))[i],
                "tunedCorrect": (tuned_scores.get("forgettingHits") or [None] * len(forgetting))[i],
            }
        )
    return rows


def summary(record: EvaluationRecord, path: Any) -> dict[str, Any]:
    """The compact summary for the termination log: verdict, tuned/base per metric, failed gates."""
    return {
        "verdict": record.verdict if isinstance(record.verdict, str) else record.verdict.value,
        "testExamples": record.test_examples,
        **({"split": record.split} if record.split else {}),
        "metrics": {m.name: _summary_row(m) for m in record.metrics},
        "gates": {"passed": sum(g.passed for g in record.gates), "total": len(record.gates)},
        "failedGates": [g.reason for g in record.gates if not g.passed],
        "evalJson": str(path),
    }


def _summary_row(m: Any) -> dict[str, Any]:
    """base, tuned, the majority baseline, the serving version (champion) and the tuned score's 95 % interval, when measured."""
    row: dict[str, Any] = {"base": m.base, "tuned": m.tuned}
    for ref in ("majority", "serving"):
        found = next((r for r in m.references or [] if r.reference == ref), None)
        if found is not None and found.value is not None:
            row[ref] = found.value
    if m.tuned_interval is not None:
        row["tunedInterval"] = [m.tuned_interval.low, m.tuned_interval.high]
    return row
