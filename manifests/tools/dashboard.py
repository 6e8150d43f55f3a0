"""The tuneloop Grafana dashboard, built in code (source of truth for files/dashboards/tuneloop.json).

    python manifests/tools/generate.py      # rewrites the chart's dashboard JSON and the copies

Panels use only metric names from the operator's registry, the trainer's and vLLM's
(tests/deploy/test_metric_names.py checks every PromQL expression).
"""

from __future__ import annotations

from typing import Any

UID = "tuneloop-overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
JOB = f'{NS}, name=~"$finetunejob"'
RO = f'{NS}, rollout=~"$rollout"'
# vLLM series get the Rollout's pod labels through the vLLM PodMonitor's podTargetLabels.
VLLM = f'{NS}, tuneloop_dev_rollout=~"$rollout"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str, instant: bool = False) -> dict[str, Any]:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t |= {"instant": True, "range": False, "format": "table"}
    return t


def _panel(kind: str, title: str, targets: list[tuple[str, str]], grid: tuple[int, int, int, int], *,
           unit: str = "short", description: str = "", instant: bool = False, **extra: Any) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": extra.pop("options", {}),
        "targets": [_target(e, legend, chr(ord("A") + i), instant) for i, (e, legend) in enumerate(targets)],
        **extra,
    }


def _row(title: str, y: int) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def _var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
    }


def _p(q: float, metric: str, sel: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[{RATE}])))"


def _vllm_ratio(num: str, den: str) -> str:
    return f"sum by (tuneloop_dev_role) ({num})\n/\nsum by (tuneloop_dev_role) ({den})"


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Training -------------------------------------------------------------------------------------
    out.append(_row("Training", 0))
    out.append(_panel("stat", "FineTuneJobs by phase", [("sum by (phase) (tuneloop_finetunejobs)", "{{phase}}")], (0, 1, 8, 5),
                      description="FineTuneJobs the operator knows, by phase.", options={"colorMode": "background", "graphMode": "none",
                      "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}))
    out.append(_panel("bargauge", "Progress", [(f"100 * tuneloop_finetunejob_step{{{JOB}}} / tuneloop_finetunejob_total_steps{{{JOB}}}",
                      "{{namespace}}/{{name}}")], (8, 1, 8, 5), unit="percent", description="step / total steps of each job (rank 0).",
                      options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}))
    out.append(_panel("table", "ETA", [(f"tuneloop_finetunejob_eta_seconds{{{JOB}}}", "{{namespace}}/{{name}}")], (16, 1, 8, 5),
                      unit="s", instant=True, description="Estimated time to the end of training, per job."))
    out.append(_panel("timeseries", "Training loss", [(f"tuneloop_finetunejob_loss{{{JOB}}}", "{{namespace}}/{{name}}"),
                      (f'tuneloop_trainer_eval_loss{{{NS}, job=~"$finetunejob"}}', "{{namespace}}/{{job}} eval")], (0, 6, 8, 8),
                      description="Training loss from the operator's progress poll; validation loss straight from rank 0."))
    out.append(_panel("timeseries", "Tokens / s", [(f"tuneloop_finetunejob_tokens_per_second{{{JOB}}}", "{{namespace}}/{{name}}")],
                      (8, 6, 8, 8), unit="short", description="Training throughput (non-padding tokens per second)."))
    out.append(_panel("timeseries", "Learning rate", [(f'tuneloop_trainer_learning_rate{{{NS}, job=~"$finetunejob"}}', "{{namespace}}/{{job}}")],
                      (16, 6, 8, 8), unit="sci", description="Scheduler learning rate reported by rank 0."))
    out.append(_panel("timeseries", "Create → training Job latency", [
        (f"histogram_quantile(0.5, sum by (le) (rate(tuneloop_create_to_training_job_seconds_bucket[{RATE}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(tuneloop_create_to_training_job_seconds_bucket[{RATE}])))", "p99"),
    ], (0, 14, 12, 7), unit="s", description="From FineTuneJob creation to its training Job being created (includes data preparation)."))
    out.append(_panel("timeseries", "Seconds since progress was read", [
        (f"time() - tuneloop_finetunejob_progress_updated_timestamp_seconds{{{JOB}}}", "{{namespace}}/{{name}}")],
        (12, 14, 12, 7), unit="s", description="Grows when rank 0 stops answering; TuneloopTrainingStalled fires past the threshold."))
    # Rollouts -------------------------------------------------------------------------------------
    out.append(_row("Rollouts", 21))
    out.append(_panel("timeseries", "Canary weight", [(f"tuneloop_rollout_canary_weight{{{RO}}}", "{{namespace}}/{{rollout}}")],
                      (0, 22, 8, 8), unit="percent", description="Percent of traffic on the candidate.",
                      fieldConfig_max=100))
    out.append(_panel("state-timeline", "Rollout phase", [(f"max by (namespace, rollout, phase) (tuneloop_rollout_phase{{{RO}}}) == 1",
                      "{{namespace}}/{{rollout}} {{phase}}")], (8, 22, 8, 8), description="Waiting (nothing to serve yet), Progressing, Paused, Promoted, RolledBack, Degraded or Aborted."))
    out.append(_panel("timeseries", "Analysis measurements", [(f"tuneloop_analysis_measurement_value{{{RO}}}", "{{rollout}} {{metric}}")],
                      (16, 22, 8, 8), description="Latest canary value of each analysis metric."))
    out.append(_panel("timeseries", "Measurement verdicts", [
        (f"sum by (rollout, metric, phase) (increase(tuneloop_analysis_measurements_total{{{RO}}}[{RATE}]))", "{{rollout}} {{metric}} {{phase}}")],
        (0, 30, 12, 7), description="Successful / Failed / Inconclusive / Error measurements over time."))
    out.append(_panel("timeseries", "Time to rollback", [
        (f"histogram_quantile(0.5, sum by (le) (rate(tuneloop_rollout_time_to_rollback_seconds_bucket[{RATE}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(tuneloop_rollout_time_to_rollback_seconds_bucket[{RATE}])))", "p99"),
    ], (12, 30, 12, 7), unit="s", description="From the first failing measurement to canary weight 0."))
    # Serving --------------------------------------------------------------------------------------
    out.append(_row("Serving (vLLM): stable vs canary", 37))
    completions = 'handler=~"/v1/(chat/)?completions"'
    out.append(_panel("timeseries", "Error rate (5xx)", [(_vllm_ratio(
        f'rate(http_requests_total{{{VLLM}, {completions}, status="5xx"}}[{RATE}])',
        f"rate(http_requests_total{{{VLLM}, {completions}}}[{RATE}])"), "{{tuneloop_dev_role}}")], (0, 38, 8, 8), unit="percentunit",
        description="Share of completion requests answered 5xx, by role."))
    out.append(_panel("timeseries", "Time to first token p95", [(_p(0.95, "vllm:time_to_first_token_seconds", VLLM, "tuneloop_dev_role"),
                      "{{tuneloop_dev_role}}")], (8, 38, 8, 8), unit="s"))
    out.append(_panel("timeseries", "End-to-end latency p95", [(_p(0.95, "vllm:e2e_request_latency_seconds", VLLM, "tuneloop_dev_role"),
                      "{{tuneloop_dev_role}}")], (16, 38, 8, 8), unit="s"))
    out.append(_panel("timeseries", "Aborted requests", [(_vllm_ratio(
        f'rate(vllm:request_success_total{{{VLLM}, finished_reason="abort"}}[{RATE}])',
        f"rate(vllm:request_success_total{{{VLLM}}}[{RATE}])"), "{{tuneloop_dev_role}}")], (0, 46, 8, 8), unit="percentunit"))
    out.append(_panel("timeseries", "Requests running / waiting", [
        (f"sum by (tuneloop_dev_role) (vllm:num_requests_running{{{VLLM}}})", "{{tuneloop_dev_role}} running"),
        (f"sum by (tuneloop_dev_role) (vllm:num_requests_waiting{{{VLLM}}})", "{{tuneloop_dev_role}} waiting")], (8, 46, 8, 8)))
    out.append(_panel("timeseries", "Tokens / s", [
        (f"sum by (tuneloop_dev_role) (rate(vllm:generation_tokens_total{{{VLLM}}}[{RATE}]))", "{{tuneloop_dev_role}} generated"),
        (f"sum by (tuneloop_dev_role) (rate(vllm:prompt_tokens_total{{{VLLM}}}[{RATE}]))", "{{tuneloop_dev_role}} prompt")], (16, 46, 8, 8)))
    # Drift watch ----------------------------------------------------------------------------------
    out.append(_row("Serving version: drift and degradation since promotion", 54))
    out.append(_panel("timeseries", "Token-length drift (PSI vs training data)", [
        (f'tuneloop_serving_drift{{{RO}, signal=~"prompt_tokens|generation_tokens"}}', "{{rollout}} {{model_version}} {{signal}}"),
        (f'max by (rollout) (tuneloop_serving_drift_threshold{{{RO}, signal="prompt_tokens"}})', "{{rollout}} threshold")],
        (0, 55, 12, 7), description="Population-stability index of served prompt / generation token lengths (vLLM's "
        "request_*_tokens histograms over driftWatch.window) against the train split's. No point: too few requests."))
    out.append(_panel("timeseries", "Degradation since promotion", [
        (f'tuneloop_serving_drift{{{RO}, signal=~"error_rate|e2e_latency_p95"}}', "{{rollout}} {{model_version}} {{signal}}")],
        (12, 55, 12, 7), description="error_rate: 5xx-rate increase over the rate at promotion; e2e_latency_p95: p95 over the "
        "p95 at promotion (limits: driftWatch.maxErrorRateIncrease, maxLatencyRatio)."))
    # Operator -------------------------------------------------------------------------------------
    out.append(_row("Operator", 62))
    out.append(_panel("stat", "Operator up", [('sum(up{container="operator", endpoint="metrics"})', "up")], (0, 63, 4, 7),
                      description="Scraped operator targets that answer (1 expected).",
                      options={"colorMode": "background", "graphMode": "none", "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}))
    out.append(_panel("timeseries", "Reconcile latency", [
        (_p(0.5, "tuneloop_reconcile_duration_seconds", "", "resource"), "{{resource}} p50"),
        (_p(0.99, "tuneloop_reconcile_duration_seconds", "", "resource"), "{{resource}} p99")], (4, 63, 10, 7), unit="s"))
    out.append(_panel("timeseries", "Reconcile errors", [
        (f"sum by (resource) (rate(tuneloop_reconcile_errors_total[{RATE}]))", "{{resource}}")], (14, 63, 10, 7), unit="reqps",
        description="Failed reconcile handler runs per second (retried or permanent)."))
    # Sweeps ---------------------------------------------------------------------------------------
    sw = f"{NS}"
    out.append(_row("Hyperparameter sweeps", 70))
    out.append(_panel("bargauge", "Trials by state", [(f"sum by (namespace, name, state) (tuneloop_sweep_trials{{{sw}}})",
                      "{{namespace}}/{{name}} {{state}}")], (0, 71, 8, 7), description="Each FineTuneSweep's trials: Running, Complete, Pruned, Failed.",
                      options={"displayMode": "basic", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}))
    out.append(_panel("timeseries", "Best objective (validation)", [(f"tuneloop_sweep_best_objective{{{sw}}}", "{{namespace}}/{{name}} {{metric}}")],
                      (8, 71, 8, 7), description="The best complete trial's objective on the validation split, as the sweep goes."))
    out.append(_panel("timeseries", "Trial duration", [
        (f"histogram_quantile(0.5, sum by (le, state) (rate(tuneloop_sweep_trial_duration_seconds_bucket[{RATE}])))", "{{state}} p50"),
        (f"time() - tuneloop_sweep_last_progress_timestamp_seconds{{{sw}}} and on (namespace, name) tuneloop_sweep_active == 1",
         "{{namespace}}/{{name}} since progress")], (16, 71, 8, 7), unit="s",
        description="Median trial duration by how trials ended; seconds since a running sweep's last progress (TuneloopSweepStalled)."))
    for p in out:
        if "fieldConfig_max" in p:
            p["fieldConfig"]["defaults"]["max"] = p.pop("fieldConfig_max")
    return out


def dashboard() -> dict[str, Any]:
    panels_ = panels()
    for i, p in enumerate(panels_, start=1):
        p["id"] = i
    return {
        "uid": UID,
        "title": "tuneloop",
        "description": "Fine-tuning progress, Rollout canaries and analysis, vLLM stable vs canary, operator health.",
        "tags": ["tuneloop", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {"selected": False, "text": "Prometheus", "value": "prometheus"}, "hide": 0},
            _var("namespace", "Namespace", 'label_values({__name__=~"tuneloop_finetunejob_phase|tuneloop_rollout_phase"}, namespace)'),
            _var("finetunejob", "FineTuneJob", 'label_values(tuneloop_finetunejob_phase{namespace=~"$namespace"}, name)'),
            _var("rollout", "Rollout", 'label_values(tuneloop_rollout_canary_weight{namespace=~"$namespace"}, rollout)'),
        ]},
        "panels": panels_,
    }
