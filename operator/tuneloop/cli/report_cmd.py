"""`kubectl tuneloop report MODELVERSION`: print the experiment report (Markdown) from its ConfigMap, followed by the
online A/B experiment a Rollout decided for it (the ModelVersion's status.experiment), when there is one.

A FineTuneJob name works too: its registered ModelVersion's report is printed. A local run's work
directory (`kubectl tuneloop report runs/quickstart`) or a report.md file prints that report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import ValidationError

from tuneloop.api.experiment import ExperimentResult
from tuneloop.contract import layout
from tuneloop.contract.text import strip_controls
from tuneloop.operator.kube import ApiError, KubeClient
from tuneloop.operator.kube import resources as r
from tuneloop.operator.kube.cliargs import add_cluster_arguments, connect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="ModelVersion name (or the FineTuneJob that registered it), or a local run's work directory")
    add_cluster_arguments(p)


async def fetch(client: KubeClient, ns: str, name: str) -> tuple[str | None, str]:
    """(markdown, explanation when there is none)."""
    mv = await client.get(r.MODELVERSIONS, ns, name)
    if mv is None:
        ftj = await client.get(r.FINETUNEJOBS, ns, name)
        mv_name = ((ftj or {}).get("status") or {}).get("children", {}).get("modelVersion") if ftj else None
        if not mv_name:
            what = f"FineTuneJob {ns}/{name} has not registered a ModelVersion yet" if ftj else f"ModelVersion {ns}/{name} not found"
            return None, what
        mv = await client.get(r.MODELVERSIONS, ns, mv_name)
        if mv is None:
            return None, f"ModelVersion {ns}/{mv_name} (from FineTuneJob {name}) not found"
    report = (mv.get("spec") or {}).get("report") or {}
    where = f" (the report file is at {report['uri']})" if report.get("uri") else ""
    online = experiment_section(mv)
    cm_name = report.get("configMap")
    if not cm_name:
        return (online, "") if online else (None, f"ModelVersion {mv['metadata']['name']} has no report ConfigMap{where}")
    cm = await client.get(r.CONFIGMAPS, ns, cm_name)
    text = ((cm or {}).get("data") or {}).get("report.md")
    if not text:
        return (online, "") if online else (None, f"ConfigMap {ns}/{cm_name} with the report is missing or empty{where}")
    return (text.rstrip("\n") + "\n\n" + online if online else text), ""


def _num(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.4g}" if signed else f"{v:.4g}")


def experiment_section(mv: dict) -> str:
    """The ModelVersion's decided A/B experiment (status.experiment) as a Markdown section; "" without one."""
    raw = (mv.get("status") or {}).get("experiment")
    if not raw:
        return ""
    try:
        ex = ExperimentResult.model_validate(raw)
    except ValidationError:
        return ""
    rollout = (mv.get("status") or {}).get("rollout") or "?"
    direction = "higher is better" if ex.higher_is_better else "lower is better"
    when = f"{ex.started_at:%Y-%m-%d %H:%M} – {ex.decided_at:%Y-%m-%d %H:%M} UTC"
    lines = [
        "## Online A/B experiment",
        "",
        f"Rollout `{rollout}`, step {ex.step}: `{ex.metric}` ({ex.kind}, {direction}), {ex.split} % of traffic to the candidate, {when}.",
        "",
        "| Arm | ModelVersion | Samples | Estimate |",
        "| --- | --- | --- | --- |",
        f"| candidate | {ex.candidate.model_version or '-'} | {ex.candidate.samples:.0f} | {_num(ex.candidate.estimate)} |",
        f"| stable | {ex.stable.model_version or '-'} | {ex.stable.samples:.0f} | {_num(ex.stable.estimate)} |",
        "",
    ]
    if ex.effect is not None:
        level = f"{ex.level * 100:.4g} %" if ex.level is not None else "?"
        lines.append(f"Effect (candidate − stable, positive is better): {_num(ex.effect, True)}, {level} interval "
                     f"[{_num(ex.low)}, {_num(ex.high)}] ({ex.test}); minimumEffect {_num(ex.minimum_effect)}.")
        lines.append("")
    lines.append(f"**Decision: {ex.decision}** — {ex.message}")
    return "\n".join(lines) + "\n"


async def _run(args: argparse.Namespace) -> int:
    client, ns = connect(args)
    try:
        text, why = await fetch(client, ns, args.name)
    except ApiError as exc:
        print(f"kubectl tuneloop report: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    if text is None:
        print(f"kubectl tuneloop report: {strip_controls(why)}", file=sys.stderr)
        return 1
    write_report(text)
    return 0


def write_report(text: str) -> None:
    """The report on stdout, without escape sequences or control characters (its text comes from the evaluation
    pod's log, which runs the job's image)."""
    text = strip_controls(text, keep_newlines=True)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def local_report(name: str) -> Path | None:
    """The report file of a local work directory (DIR/report/report.md), a report directory, or a .md file; None
    when `name` is not a local path (then it names a cluster object)."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir():
        for candidate in (p / layout.REPORT_FILE, p / "report.md"):
            if candidate.is_file():
                return candidate
        return p / layout.REPORT_FILE  # a directory without a report: say so, do not ask the cluster
    return None


def run(args: argparse.Namespace) -> int:
    local = local_report(args.name)
    if local is not None:
        if not local.is_file():
            print(f"kubectl tuneloop report: {local} does not exist (run the report stage: kubectl tuneloop local run FILE)", file=sys.stderr)
            return 1
        write_report(local.read_text())
        return 0
    try:
        return asyncio.run(_run(args))
    except RuntimeError as exc:
        print(f"kubectl tuneloop report: {exc}", file=sys.stderr)
        return 1
