"""`kubectl tuneloop retrain SCHEDULE`: start a run of a FineTuneSchedule now (the manual trigger).

Sets the annotation tuneloop.dev/retrain to the current time; the operator starts one run per new value (subject to
suspend and concurrencyPolicy, like any trigger) and records the value in status.lastRetrainRequest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from tuneloop.api.schedule import RETRAIN_ANNOTATION
from tuneloop.operator.kube import KubeClient
from tuneloop.operator.kube import resources as r
from tuneloop.operator.kube.cliargs import add_cluster_arguments, run_connected


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("schedule", help="FineTuneSchedule name")
    add_cluster_arguments(p)


async def _retrain(args: argparse.Namespace, client: KubeClient, ns: str) -> int:
    obj = await client.get(r.FINETUNESCHEDULES, ns, args.schedule)
    if obj is None:
        print(f"kubectl tuneloop retrain: FineTuneSchedule {ns}/{args.schedule} not found", file=sys.stderr)
        return 1
    value = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await client.patch(r.FINETUNESCHEDULES, ns, args.schedule, {"metadata": {"annotations": {RETRAIN_ANNOTATION: value}}})
    spec = obj.get("spec") or {}
    note = " (the schedule is suspended: the run starts when it is resumed)" if spec.get("suspend") else ""
    print(f"retrain requested for FineTuneSchedule {ns}/{args.schedule} ({RETRAIN_ANNOTATION}={value}){note}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_connected(args, "retrain", lambda client, ns: _retrain(args, client, ns))
